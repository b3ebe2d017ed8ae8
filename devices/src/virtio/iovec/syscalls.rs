//! The vectored system calls at the end of the path, the module's only `unsafe` code:
//! [`preadv`], [`pwritev`], [`readv`], [`writev`] and [`recvmsg_trunc`], each one attempt
//! over at most [`MAX_IOVECS`] slices, their memory kept mapped for the call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::VolatileSlice;

use super::MAX_IOVECS;

/// `preadv(2)`: one attempt to read from byte `offset` of `fd` into `bufs`, in order.
pub fn preadv(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
    let offset = file_offset(offset)?;
    with_writable_iovecs(bufs, |iovecs, count| {
        // SAFETY: `iovecs` holds `count` iovecs, each `len` writable bytes of memory that a
        // VolatileSlice (and its guard) keeps mapped until after the call; the kernel writes
        // only inside them. That memory is guest memory (or a buffer the slice borrows
        // mutably): no Rust reference to it is invalidated by the guest-visible write. `fd`
        // is open for the call (borrowed).
        unsafe { libc::preadv(fd.as_raw_fd(), iovecs.as_ptr(), count, offset) }
    })
}

/// `pwritev(2)`: one attempt to write `bufs`, in order, at byte `offset` of `fd`.
pub fn pwritev(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
    let offset = file_offset(offset)?;
    with_readable_iovecs(bufs, |iovecs, count| {
        // SAFETY: `iovecs` holds `count` iovecs, each `len` readable bytes of memory that a
        // VolatileSlice (and its guard) keeps mapped until after the call; pwritev only reads
        // through them. `fd` is open for the call (borrowed).
        unsafe { libc::pwritev(fd.as_raw_fd(), iovecs.as_ptr(), count, offset) }
    })
}

/// `readv(2)`: one attempt to read from `fd` into `bufs`, in order.
pub fn readv(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    with_writable_iovecs(bufs, |iovecs, count| {
        // SAFETY: as for `preadv`: `count` iovecs of writable memory kept mapped for the
        // call, written only inside; `fd` is open for the call.
        unsafe { libc::readv(fd.as_raw_fd(), iovecs.as_ptr(), count) }
    })
}

/// `writev(2)`: one attempt to write `bufs`, in order, to `fd`.
pub fn writev(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    with_readable_iovecs(bufs, |iovecs, count| {
        // SAFETY: as for `pwritev`: `count` iovecs of readable memory kept mapped for the
        // call, only read; `fd` is open for the call.
        unsafe { libc::writev(fd.as_raw_fd(), iovecs.as_ptr(), count) }
    })
}

/// `recvmsg(2)` with MSG_TRUNC: one packet from socket `fd` into `bufs`, in order; returns
/// the packet's full length even when the buffers held less.
pub fn recvmsg_trunc(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    with_writable_iovecs(bufs, |iovecs, _count| {
        // SAFETY: msghdr is plain old data; all-zero (no name, no control data) is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len();
        // SAFETY: `msg` points to `iovecs`, each `len` writable bytes of memory kept mapped
        // for the call; both outlive it. The kernel writes only inside the iovecs and into
        // `msg`'s flags. `fd` is open for the call.
        unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) }
    })
}

/// Calls `call` with iovecs through which the kernel may write into `bufs`, and their count;
/// turns what the system call returned into bytes or the errno.
fn with_writable_iovecs(
    bufs: &[VolatileSlice<'_>],
    call: impl FnOnce(&mut [libc::iovec], libc::c_int) -> libc::ssize_t,
) -> io::Result<usize> {
    let count = iovec_count(bufs)?;
    // The guards keep the slices' memory mapped (they matter for Xen-style mappings) until
    // they drop, after the system call has returned.
    let guards: Vec<_> = bufs.iter().map(VolatileSlice::ptr_guard_mut).collect();
    let mut iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    // Read errno before anything (dropping) can change it.
    syscall_result(call(&mut iovecs, count))
}

/// Calls `call` with iovecs through which the kernel may read `bufs`, and their count;
/// turns what the system call returned into bytes or the errno.
fn with_readable_iovecs(
    bufs: &[VolatileSlice<'_>],
    call: impl FnOnce(&mut [libc::iovec], libc::c_int) -> libc::ssize_t,
) -> io::Result<usize> {
    let count = iovec_count(bufs)?;
    let guards: Vec<_> = bufs.iter().map(VolatileSlice::ptr_guard).collect();
    let mut iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast_mut().cast(),
            iov_len: g.len(),
        })
        .collect();
    syscall_result(call(&mut iovecs, count))
}

/// The iovec count the system calls take; more than [`MAX_IOVECS`] is EINVAL, as the
/// kernel would say.
fn iovec_count(bufs: &[VolatileSlice<'_>]) -> io::Result<libc::c_int> {
    if bufs.len() > MAX_IOVECS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    libc::c_int::try_from(bufs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn file_offset(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a `ssize_t` system call return into bytes moved or the errno.
fn syscall_result(n: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    use vm_memory::{Bytes, GuestAddress};

    use super::super::tests::{memory, spans};
    use super::super::{DeviceReadable, DeviceWritable};
    use super::*;

    #[test]
    fn preadv_and_pwritev_move_guest_bytes_across_regions() {
        let path = std::env::temp_dir().join(format!("vmm-iovec-unit-{}.img", std::process::id()));
        let contents: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mem = memory(&[(0, 0x1000), (0x1000, 0x1000)]);
        let s = spans(&[(0xf00, 0x200)]);

        let into = DeviceWritable::new(&mem, &s).unwrap();
        into.read_exact_at(1000, |bufs, at| preadv(file.as_fd(), bufs, at))
            .unwrap();
        let mut got = vec![0u8; 0x200];
        mem.read_slice(&mut got, GuestAddress(0xf00)).unwrap();
        assert_eq!(got, contents[1000..1000 + 0x200]);

        mem.write_slice(&[0xab; 0x200], GuestAddress(0xf00))
            .unwrap();
        let from = DeviceReadable::new(&mem, &s).unwrap();
        from.write_all_at(100, |bufs, at| pwritev(file.as_fd(), bufs, at))
            .unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(on_disk[100..100 + 0x200], [0xab; 0x200]);
        assert_eq!(on_disk[..100], contents[..100]);

        // Past EOF a read stalls.
        let eof = into
            .read_exact_at(4096, |bufs, at| preadv(file.as_fd(), bufs, at))
            .unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn readv_writev_and_recvmsg_move_packets() {
        let mem = memory(&[(0, 0x1000), (0x1000, 0x1000)]);
        let s = spans(&[(0xff8, 0x10), (0x1800, 8)]);
        let out = DeviceReadable::new(&mem, &s).unwrap();
        let into = DeviceWritable::new(&mem, &spans(&[(0x1900, 6), (0x1a00, 0x40)])).unwrap();
        let packet: Vec<u8> = (1..=24).collect();
        mem.write_slice(&packet[..16], GuestAddress(0xff8)).unwrap();
        mem.write_slice(&packet[16..], GuestAddress(0x1800))
            .unwrap();

        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(writev(a.as_fd(), out.slices()).unwrap(), 24);
        assert_eq!(readv(b.as_fd(), into.slices()).unwrap(), 24);
        let mut got = [0u8; 24];
        mem.read_slice(&mut got[..6], GuestAddress(0x1900)).unwrap();
        mem.read_slice(&mut got[6..], GuestAddress(0x1a00)).unwrap();
        assert_eq!(got[..], packet[..]);

        // A datagram longer than the buffers: its full length, the buffers full.
        let (a, b) = UnixDatagram::pair().unwrap();
        assert_eq!(writev(a.as_fd(), out.slices()).unwrap(), 24);
        let small = DeviceWritable::new(&mem, &spans(&[(0x1c00, 10)])).unwrap();
        assert_eq!(recvmsg_trunc(b.as_fd(), small.slices()).unwrap(), 24);
        let mut head = [0u8; 10];
        mem.read_slice(&mut head, GuestAddress(0x1c00)).unwrap();
        assert_eq!(head[..], packet[..10]);
    }

    #[test]
    fn more_iovecs_than_the_kernel_takes_are_refused_before_the_call() {
        let mem = memory(&[(0, 0x1000)]);
        let one = DeviceWritable::new(&mem, &spans(&[(0, 1)])).unwrap();
        let bufs = vec![one.slices()[0]; MAX_IOVECS + 1];
        let (a, _b) = UnixStream::pair().unwrap();
        for result in [
            readv(a.as_fd(), &bufs),
            writev(a.as_fd(), &bufs),
            preadv(a.as_fd(), &bufs, 0),
        ] {
            assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        }
    }
}
