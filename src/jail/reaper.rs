//! The jail's PID namespace, and the minimal parent that stays outside it.
//!
//! A PID namespace applies to children only, so the jail forks once: the child becomes
//! process 1 of a new PID namespace and goes on to be the VMM; the parent becomes the
//! reaper. The reaper closes every descriptor but stdin, stdout and stderr (so it holds no
//! disk, tap, `/dev/kvm` or control socket), forwards the stop signals (SIGTERM, SIGINT,
//! SIGHUP) to the VMM, waits for it, removes the control socket's file if the VMM bound it
//! (the jailed VMM can no longer name it; a socket a supervisor handed over is left alone),
//! and ends exactly as the VMM ended: the same exit status, or
//! the same signal. It reads nothing from the guest or from clients: its only inputs are
//! signals and the VMM's wait status. The VMM dies with it (`PR_SET_PDEATHSIG`).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use log::debug;
use vm_control::server::Listener;

use super::{JailError, step};

/// Signals the reaper passes on to the VMM (the ones the VMM stops cleanly on).
const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The control socket's file, as bound: the reaper removes it if it is still that file.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// The file `listener` bound and must remove; `None` for a listener a supervisor
    /// handed over (`--socket-fd`, socket activation), whose file, if any, is the
    /// supervisor's to remove.
    pub fn of(listener: &Listener) -> Result<Option<SocketFile>, JailError> {
        let Some(path) = listener.path() else {
            return Ok(None);
        };
        let meta = fs::symlink_metadata(path)
            .map_err(|source| step("look at the control socket's file", source))?;
        Ok(Some(SocketFile {
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        }))
    }

    fn remove(&self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The VMM's end of a pipe whose other end only the reaper holds: it reads end-of-file
/// once the reaper is gone.
#[derive(Debug)]
pub struct ParentLink {
    read_end: OwnedFd,
}

impl ParentLink {
    /// Makes the kernel kill the VMM when the reaper dies, and checks that it has not died
    /// already. Call after the last credential change, which would reset the setting.
    pub fn die_with_parent(self) -> Result<(), JailError> {
        // SAFETY: prctl(2) with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            return Err(step(
                "ask to die with the reaper (PR_SET_PDEATHSIG)",
                io::Error::last_os_error(),
            ));
        }
        let mut poll = libc::pollfd {
            fd: self.read_end.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready != 0 {
            return Err(step(
                "start: the jail's reaper has gone",
                io::Error::from_raw_os_error(libc::ESRCH),
            ));
        }
        Ok(())
    }
}

/// Creates the PID namespace and forks. Returns in the child (process 1 of the new
/// namespace, the VMM to be); the parent becomes the reaper and never returns.
pub fn fork_into_pid_namespace(socket: Option<SocketFile>) -> Result<ParentLink, JailError> {
    // SAFETY: unshare(2) takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(step("create the PID namespace", io::Error::last_os_error()));
    }
    // Blocked before the fork, so the child's exit is never missed.
    set_blocked(libc::SIG_BLOCK, &[libc::SIGCHLD])
        .map_err(|source| step("block SIGCHLD", source))?;
    let (read_end, write_end) = pipe().map_err(|source| step("create a pipe", source))?;
    use std::io::Write;
    let _ = io::stdout().flush();
    // SAFETY: the process is single-threaded here (the jail checks it), so the child
    // starts with consistent state; both sides go on with their own copies.
    match unsafe { libc::fork() } {
        -1 => Err(step("fork the VMM", io::Error::last_os_error())),
        0 => {
            drop(write_end);
            set_blocked(libc::SIG_UNBLOCK, &[libc::SIGCHLD])
                .map_err(|source| step("unblock SIGCHLD", source))?;
            Ok(ParentLink { read_end })
        }
        child => {
            drop(read_end);
            reap(child, write_end.as_raw_fd(), socket)
        }
    }
}

/// The reaper's whole life.
fn reap(child: libc::pid_t, keep: RawFd, socket: Option<SocketFile>) -> ! {
    close_descriptors_except(keep);
    crate::sandbox::enter_reaper();
    debug!("jail: the VMM runs as pid {child}; waiting for it");
    let status = wait_forwarding_signals(child);
    if let Some(socket) = socket {
        socket.remove();
    }
    end_like(status)
}

/// Closes every descriptor above stderr but `keep`. The owners of those descriptors in
/// this process are never used or dropped again: the reaper only exits.
fn close_descriptors_except(keep: RawFd) {
    let keep = u32::try_from(keep).unwrap_or(u32::MAX);
    // SAFETY: close_range(2) with integer arguments; see the function's comment for why
    // closing descriptors other objects own is sound here.
    unsafe {
        if keep > 3 {
            // keep > 3, so keep - 1 >= 3.
            libc::syscall(libc::SYS_close_range, 3u32, keep.saturating_sub(1), 0u32);
        }
        libc::syscall(
            libc::SYS_close_range,
            keep.saturating_add(1),
            u32::MAX,
            0u32,
        );
    }
}

/// Waits for `child`, passing on the stop signals; returns its wait status.
fn wait_forwarding_signals(child: libc::pid_t) -> libc::c_int {
    let set = signal_set(&[FORWARDED[0], FORWARDED[1], FORWARDED[2], libc::SIGCHLD]);
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child, writing a valid int.
        let waited = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if waited == child {
            return status;
        }
        if waited < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // No child to wait for: nothing more can be learned.
            return 1 << 8;
        }
        // SAFETY: `set` is an initialised sigset_t; a null siginfo pointer is allowed.
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if FORWARDED.contains(&signal) {
            // SAFETY: kill(2) on our own child, not yet reaped, so its pid is not reused.
            unsafe { libc::kill(child, signal) };
        }
    }
}

/// Ends this process as the VMM ended: its exit status, or its signal.
fn end_like(status: libc::c_int) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit with a valid rlimit (no core file of the reaper); signal with
        // SIG_DFL; unblocking and raising a valid signal number on this process.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(signal, libc::SIG_DFL);
        }
        let _ = set_blocked(libc::SIG_UNBLOCK, &[signal]);
        // SAFETY: raise(3) with a valid signal number.
        unsafe { libc::raise(signal) };
        // A signal number is below 65: no overflow.
        std::process::exit(signal.saturating_add(128));
    }
    std::process::exit(1)
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

fn set_blocked(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<()> {
    let set = signal_set(signals);
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
