//! The virtio-rng worker's policy allows what the worker does (devices/src/virtio/rng.rs):
//! wait in epoll on eventfds, read them, fill buffers with getrandom, signal an eventfd,
//! and end its thread. A thread runs exactly that under the policy; a missing entry would
//! stop this test process with the sandbox's report on stderr.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn the_virtio_rng_worker_policy_allows_the_workers_system_calls() {
    seccomp::install_sigsys_handler().expect("SIGSYS handler");
    let notify = eventfd();
    let interrupt = eventfd();
    // SAFETY: epoll_create1 takes no pointers; the result is checked and owned below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0);
    // SAFETY: `epoll` was just created and nothing else owns it.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 1,
    };
    // SAFETY: both descriptors are open; `event` is a valid epoll_event.
    let added = unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            notify.as_raw_fd(),
            &mut event,
        )
    };
    assert_eq!(added, 0);

    let notify_writer = notify.try_clone().expect("dup the notify eventfd");
    let worker = std::thread::spawn(move || {
        seccomp::install(seccomp::ThreadKind::VirtioRng, "virtio-rng").expect("install");
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `events` has room for 4 entries; the epoll descriptor is open.
        let ready = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 4, 5000) };
        assert_eq!(ready, 1);
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from an open eventfd.
        let n = unsafe { libc::read(notify.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
        let mut bytes = vec![0u8; 4096];
        // SAFETY: `bytes` is writable for its whole length.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        assert_eq!(n, 4096);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from an 8-byte buffer to an open eventfd.
        let n = unsafe { libc::write(interrupt.as_raw_fd(), one.as_ptr().cast(), 8) };
        assert_eq!(n, 8);
        drop(bytes);
        // Descriptors close, and the thread exits, under the policy too.
    });
    let one = 1u64.to_ne_bytes();
    // SAFETY: writing 8 bytes from an 8-byte buffer to an open eventfd.
    let n = unsafe { libc::write(notify_writer.as_raw_fd(), one.as_ptr().cast(), 8) };
    assert_eq!(n, 8);
    worker.join().expect("the worker ran under its policy");
}
