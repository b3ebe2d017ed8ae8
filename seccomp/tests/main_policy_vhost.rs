//! The main thread's policy lets it give vhost-vsock a new memory table (register-memory
//! and unregister-memory with `--vsock`; src/memory_registry.rs) and no other vhost
//! request: the call is made under the policy, on a descriptor that is not vhost (there
//! is no vhost-vsock where the tests run), and answers ENOTTY instead of the sandbox's
//! SIGSYS, which would stop this test process with exit status 31.

use std::os::fd::AsRawFd;

/// `VHOST_SET_MEM_TABLE` (`_IOW(0xAF, 0x03, struct vhost_memory)`).
const VHOST_SET_MEM_TABLE: libc::c_ulong = 0x4008_af03;

#[test]
fn the_main_policy_allows_vhost_set_mem_table() {
    seccomp::install_sigsys_handler().expect("SIGSYS handler");
    let null = std::fs::File::open("/dev/null").expect("open /dev/null");
    let (tx, rx) = std::sync::mpsc::channel();
    // The main thread never ends a thread (its policy has no `exit`): this one reports and
    // then waits for the test process to end.
    std::thread::spawn(move || {
        seccomp::install(seccomp::ThreadKind::Main, "main").expect("install");
        // An empty table: the header (nregions 0, padding 0).
        let table = [0u64; 1];
        // SAFETY: /dev/null takes no ioctls and reads nothing from the pointer; `table`
        // outlives the call anyway.
        let ret = unsafe { libc::ioctl(null.as_raw_fd(), VHOST_SET_MEM_TABLE, table.as_ptr()) };
        let _ = tx.send((ret, std::io::Error::last_os_error().raw_os_error()));
        loop {
            std::thread::park();
        }
    });
    let (ret, errno) = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the call ran under the main policy");
    assert_eq!((ret, errno), (-1, Some(libc::ENOTTY)));
}

#[test]
fn the_main_policy_names_no_other_vhost_request() {
    let policy = include_str!("../policies/main.json");
    // Every vhost request is `_IO*(0xAF, nr, ..)`: bits 8..16 of the number are 0xAF.
    let vhost_values: Vec<u64> = policy
        .lines()
        .filter_map(|line| line.trim().strip_prefix("\"val\": "))
        .filter_map(|v| v.trim_end_matches(',').parse::<u64>().ok())
        .filter(|v| (v >> 8) & 0xff == 0xaf && v >> 32 == 0)
        .collect();
    assert_eq!(vhost_values, [VHOST_SET_MEM_TABLE]);
}
