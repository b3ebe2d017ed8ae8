//! `SOCK_SEQPACKET` system-call helpers: one datagram in or out, with `SCM_RIGHTS` file
//! descriptors, truncation detection and peer credentials.
//!
//! This module owns every `unsafe` block of the crate that talks to the kernel. It knows nothing
//! about message formats: [`recv_datagram`] reports the datagram's real size even when it did
//! not fit the buffer, and returns every descriptor it received as an [`OwnedFd`], so an excess
//! one is closed as soon as the caller drops it.
//!
//! ```
//! use vm_control::socket::{recv_datagram, send_datagram, seqpacket_pair, Received};
//! use std::os::fd::AsFd;
//!
//! let (a, b) = seqpacket_pair().unwrap();
//! send_datagram(a.as_fd(), b"hello", &[], false).unwrap();
//! let mut buf = [0u8; 3];
//! match recv_datagram(b.as_fd(), &mut buf, 1, false).unwrap() {
//!     Received::Datagram(d) => assert_eq!((d.len, d.truncated()), (5, true)),
//!     Received::HungUp => unreachable!(),
//! }
//! ```

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Most descriptors [`recv_datagram`] will accept in one datagram; more are discarded by the
/// kernel (and reported through [`Datagram::fds_truncated`]).
pub const MAX_FDS: usize = 8;

/// Credentials of the process at the other end of a connection (`SO_PEERCRED`), as of the time
/// it called `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    /// The datagram's real size in bytes, which may exceed the buffer it was read into.
    pub len: usize,
    /// Descriptors that came with it, close-on-exec; closed when dropped.
    pub fds: Vec<OwnedFd>,
    /// More descriptors were sent than fitted; the kernel discarded the rest.
    pub fds_truncated: bool,
    buf_len: usize,
}

impl Datagram {
    /// Whether the datagram was longer than the buffer (only `buf_len` bytes were kept).
    pub fn truncated(&self) -> bool {
        self.len > self.buf_len
    }
}

/// The outcome of [`recv_datagram`].
#[derive(Debug)]
pub enum Received {
    /// A datagram (possibly empty or truncated).
    Datagram(Datagram),
    /// The peer closed its end; no more datagrams will come.
    HungUp,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor the kernel just handed us.
///
/// # Safety
/// `fd` must be open and owned by nobody else: one just returned by a successful
/// socket(2), accept4(2), socketpair(2) or received with SCM_RIGHTS.
unsafe fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and ours alone.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Builds a `sockaddr_un` for `path`.
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Leave room for the terminating NUL (already zero).
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path is empty, contains NUL or is longer than 107 bytes",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Creates an unbound `SOCK_SEQPACKET` socket, close-on-exec, optionally non-blocking.
pub fn seqpacket_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_SEQPACKET
        | libc::SOCK_CLOEXEC
        | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket(2) has no memory arguments.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, flags, 0) })?;
    // SAFETY: socket(2) just returned it.
    Ok(unsafe { own(fd) })
}

/// A connected pair of `SOCK_SEQPACKET` sockets, close-on-exec and blocking.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair(2) to fill.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair(2) just returned both.
    Ok(unsafe { (own(fds[0]), own(fds[1])) })
}

/// Connects a new blocking `SOCK_SEQPACKET` socket to `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    connect_with(path, false)
}

/// Connects a new blocking `SOCK_SEQPACKET` socket to `path`, waiting at most `timeout` for
/// room in the listener's backlog (connect(2) on a UNIX socket waits for that as long as
/// `SO_SNDTIMEO` allows, then fails with `EAGAIN`). The socket keeps `timeout` as its send
/// timeout.
pub fn connect_timeout(path: &Path, timeout: Duration) -> io::Result<OwnedFd> {
    let (addr, len) = sockaddr(path)?;
    let fd = seqpacket_socket(false)?;
    set_timeout(fd.as_fd(), libc::SO_SNDTIMEO, Some(timeout))?;
    // SAFETY: `addr` is an initialized sockaddr_un and `len` does not exceed its size.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    Ok(fd)
}

/// Limits how long a blocking send (`option` = `SO_SNDTIMEO`) or receive (`SO_RCVTIMEO`) on
/// `fd` may wait; `None`: forever. A duration under 1 µs becomes 1 µs (a zero `timeval`
/// would mean forever).
pub(crate) fn set_timeout(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let tv = match timeout {
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        Some(d) => libc::timeval {
            tv_sec: d.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: if d.as_secs() == 0 {
                d.subsec_micros().max(1).into()
            } else {
                d.subsec_micros().into()
            },
        },
    };
    // SAFETY: `tv` is a valid timeval and the length passed is its exact size, as
    // SO_RCVTIMEO/SO_SNDTIMEO expect.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const tv).cast::<libc::c_void>(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

pub(crate) fn connect_with(path: &Path, nonblocking: bool) -> io::Result<OwnedFd> {
    let (addr, len) = sockaddr(path)?;
    let fd = seqpacket_socket(nonblocking)?;
    // SAFETY: `addr` is an initialized sockaddr_un and `len` does not exceed its size.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    Ok(fd)
}

/// Binds `fd` to `path` and listens with `backlog`.
pub(crate) fn bind_listen(fd: BorrowedFd<'_>, path: &Path, backlog: i32) -> io::Result<()> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is an initialized sockaddr_un and `len` does not exceed its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    // SAFETY: listen(2) has no memory arguments.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// Accepts one connection as a non-blocking, close-on-exec socket.
pub(crate) fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed by accept4(2) when the peer address is unwanted.
    let conn = cvt(unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    })?;
    // SAFETY: accept4(2) just returned it.
    Ok(unsafe { own(conn) })
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an int argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) })?;
    Ok(())
}

/// Why a descriptor cannot be a control socket's listener (see [`check_listening_seqpacket`]).
#[derive(Debug, thiserror::Error)]
pub enum ListeningSocketError {
    /// The descriptor is not a socket at all.
    #[error("it is not a socket")]
    NotASocket,
    /// A socket of another address family.
    #[error("it is not an AF_UNIX socket (address family {0})")]
    NotUnix(i32),
    /// A socket of another type.
    #[error("it is a {0} socket, not SOCK_SEQPACKET")]
    NotSeqpacket(&'static str),
    /// A socket nobody called listen(2) on.
    #[error("it is not listening (listen(2) was not called on it)")]
    NotListening,
    /// getsockopt(2) failed for another reason (e.g. `EBADF`).
    #[error("cannot examine it: {0}")]
    Io(io::Error),
}

/// Checks that `fd` is a listening `AF_UNIX` `SOCK_SEQPACKET` socket: what a server
/// handed its listener (systemd socket activation, a supervisor) must be given.
pub fn check_listening_seqpacket(fd: BorrowedFd<'_>) -> Result<(), ListeningSocketError> {
    check_seqpacket(fd)?;
    if socket_option(fd, libc::SO_ACCEPTCONN).map_err(ListeningSocketError::Io)? == 0 {
        return Err(ListeningSocketError::NotListening);
    }
    Ok(())
}

/// Why a descriptor is not an `AF_UNIX` `SOCK_SEQPACKET` socket ([`check_seqpacket`]
/// never reports `NotListening`).
pub type SeqpacketCheckError = ListeningSocketError;

/// Checks that `fd` is an `AF_UNIX` `SOCK_SEQPACKET` socket (e.g. the one a client passes
/// with `ConsoleAttach`), with `getsockopt` only.
pub fn check_seqpacket(fd: BorrowedFd<'_>) -> Result<(), SeqpacketCheckError> {
    let option = |name| match socket_option(fd, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => Err(ListeningSocketError::NotASocket),
        other => other.map_err(ListeningSocketError::Io),
    };
    let domain = option(libc::SO_DOMAIN)?;
    if domain != libc::AF_UNIX {
        return Err(ListeningSocketError::NotUnix(domain));
    }
    match option(libc::SO_TYPE)? {
        libc::SOCK_SEQPACKET => {}
        libc::SOCK_STREAM => return Err(ListeningSocketError::NotSeqpacket("SOCK_STREAM")),
        libc::SOCK_DGRAM => return Err(ListeningSocketError::NotSeqpacket("SOCK_DGRAM")),
        _ => return Err(ListeningSocketError::NotSeqpacket("another type of")),
    }
    Ok(())
}

/// One integer `SOL_SOCKET` option of `fd`.
fn socket_option(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable c_int and `len` holds its exact size; SO_DOMAIN, SO_TYPE
    // and SO_ACCEPTCONN each write one int.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The credentials of the process connected to `fd`.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    // SAFETY: ucred is plain old data for which all-zero bytes are a valid value.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` holds its exact size, as SO_PEERCRED needs.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// An 8-byte aligned buffer big enough for one `SCM_RIGHTS` message of [`MAX_FDS`] fds.
#[repr(C, align(8))]
struct CmsgBuffer([u8; 64]);
const _: () = assert!(
    size_of::<libc::cmsghdr>() + MAX_FDS * size_of::<RawFd>() + 8 <= size_of::<CmsgBuffer>()
);

/// Sends `bytes` as one datagram on `fd`, with `fds` attached (at most [`MAX_FDS`]).
///
/// Never raises `SIGPIPE` (a hung-up peer gives `EPIPE`). With `nonblocking`, a full socket
/// buffer gives an error of kind [`io::ErrorKind::WouldBlock`] and nothing is sent.
pub fn send_datagram(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one datagram",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cmsg_buf = CmsgBuffer([0; 64]);
    // SAFETY: msghdr is plain old data for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = (fds.len() * size_of::<RawFd>()) as libc::c_uint;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        msg.msg_control = cmsg_buf.0.as_mut_ptr().cast::<libc::c_void>();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `cmsg_buf`, 8-byte aligned and at least `space` bytes
        // (asserted above for MAX_FDS), so CMSG_FIRSTHDR returns a valid, writable header
        // pointer; CMSG_DATA of it has room for `fds.len()` ints inside the same buffer. The
        // fd values are written unaligned-safely with write_unaligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    let flags = libc::MSG_NOSIGNAL | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: `msg` points at `iov` (describing `bytes`, only read by sendmsg) and at the
    // control buffer built above; all outlive the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "datagram only partly sent",
        ));
    }
    Ok(())
}

/// Receives one datagram from `fd` into `buf`, with up to `max_fds` descriptors (capped at
/// [`MAX_FDS`]).
///
/// Uses `MSG_TRUNC` so [`Datagram::len`] is the datagram's real size even if `buf` was too
/// small, and `MSG_CMSG_CLOEXEC` so received descriptors never leak into children. With
/// `nonblocking`, an empty queue gives an error of kind [`io::ErrorKind::WouldBlock`].
///
/// A zero-length read is reported as [`Received::HungUp`] when the peer has shut down, and as
/// an empty datagram otherwise.
pub fn recv_datagram(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    nonblocking: bool,
) -> io::Result<Received> {
    let max_fds = max_fds.min(MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<libc::c_void>(),
        iov_len: buf.len(),
    };
    let mut cmsg_buf = CmsgBuffer([0; 64]);
    // SAFETY: msghdr is plain old data for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if max_fds > 0 {
        // SAFETY: CMSG_SPACE only computes a size.
        let space =
            unsafe { libc::CMSG_SPACE((max_fds * size_of::<RawFd>()) as libc::c_uint) } as usize;
        msg.msg_control = cmsg_buf.0.as_mut_ptr().cast::<libc::c_void>();
        msg.msg_controllen = space as _;
    }
    let flags =
        libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: `msg` describes `buf` (writable, buf.len() bytes) and `cmsg_buf` (writable,
    // msg_controllen <= 64 bytes); both outlive the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    if !msg.msg_control.is_null() && msg.msg_controllen > 0 {
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed
        // cmsghdrs inside `cmsg_buf`; CMSG_FIRSTHDR/CMSG_NXTHDR walk only within that length
        // and return null at its end. Each SCM_RIGHTS payload holds
        // (cmsg_len - CMSG_LEN(0)) / 4 descriptors now installed in this process, which we
        // read unaligned-safely and take ownership of exactly once.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let header = libc::CMSG_LEN(0) as usize;
                    let count =
                        ((*cmsg).cmsg_len as usize).saturating_sub(header) / size_of::<RawFd>();
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        fds.push(own(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    let fds_truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    let len = n as usize;
    if len == 0 && fds.is_empty() && !fds_truncated && peer_hung_up(fd)? {
        return Ok(Received::HungUp);
    }
    Ok(Received::Datagram(Datagram {
        len,
        fds,
        fds_truncated,
        buf_len: buf.len(),
    }))
}

/// Whether the peer of `fd` has shut down its sending side.
fn peer_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd; a zero timeout never blocks.
    cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok(pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
}
