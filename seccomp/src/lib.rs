//! `vmm`'s seccomp sandbox: one allow-list policy per kind of thread, and the report a
//! violation leaves behind.
//!
//! The policies are JSON files in `seccomp/policies/` in seccompiler's format (the one
//! Firecracker's `resources/seccomp/*.json` use), compiled into classic BPF by the rust-vmm
//! `seccompiler` crate when this crate is built (`build.rs`): a policy that does not parse
//! or names an unknown system call fails the build, and nothing parses JSON at run time.
//!
//! Each thread calls [`install`] for its [`ThreadKind`] before it touches guest input. That
//! sets `no_new_privs` and attaches the filter to the calling thread only (threads it
//! starts later inherit it). A system call the policy does not list makes the kernel send
//! the thread `SIGSYS` (`SECCOMP_RET_TRAP`); the handler [`install_sigsys_handler`] puts in
//! place writes one line naming the thread and the system call to stderr, then ends the
//! whole process with [`EXIT_BAD_SYSCALL`]. The handler only formats into a stack buffer,
//! calls `write(2)` and `_exit(2)`: it is async-signal-safe, and both calls are in every
//! policy.
//!
//! A test-only hook proves the path end to end: when the environment variable
//! [`TEST_VIOLATION_ENV`] names a thread kind, that kind's threads make one system call no
//! policy allows (`uname`) right after installing their filter.

use std::cell::Cell;
use std::io;

use thiserror::Error;

mod policies {
    include!(concat!(env!("OUT_DIR"), "/policies.rs"));
}

/// Exit status of a `vmm` stopped by its sandbox. 31 is `SIGSYS`'s number, the signal that
/// reports the violation, but as a plain status: 128 + 31 = 159 would read as "killed by
/// a host SIGSYS" under the shell's convention, and 0, 1, 2, 32 and 33 already have
/// meanings. It stays below 126, so it is never confused with a shell's own statuses.
pub const EXIT_BAD_SYSCALL: i32 = 31;

/// Environment variable of the test-only hook: a [`ThreadKind::name`] (or `all`).
pub const TEST_VIOLATION_ENV: &str = "VMM_SANDBOX_TEST_VIOLATION";

/// The system call the test hook makes: harmless, and in no policy.
pub const TEST_VIOLATION_SYSCALL: &str = "uname";

/// A kind of thread, each with its own policy file in `seccomp/policies/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: `KVM_RUN` and device emulation on the port/MMIO buses.
    Vcpu,
    /// The main thread once the guest runs: the run loop (signals, console input, guest
    /// requests) and the control-socket server, which today are one thread.
    Main,
    /// The virtio-rng device's worker: `epoll_wait`, eventfds, `getrandom`.
    VirtioRng,
    /// A virtio-blk device's worker: `epoll_wait`, eventfds, `preadv`/`pwritev` on its
    /// image, `fdatasync`.
    VirtioBlock,
    /// The virtio-balloon device's worker: `epoll_wait`, eventfds, `madvise(MADV_DONTNEED)`
    /// on guest RAM.
    VirtioBalloon,
    /// A virtio-net device's worker: `epoll_wait`, eventfds, `readv`/`writev` on its tap,
    /// `ioctl(TUNSETOFFLOAD)`.
    VirtioNet,
    /// The virtio-console device's worker: `epoll_wait`, eventfds, locks; guest output goes
    /// into the console's bounded buffer (the `console-writer` thread writes it out).
    VirtioConsole,
    /// The virtio-vsock device's worker: `epoll_wait`, eventfds, the vhost-vsock ioctls
    /// that set up and stop the kernel's backend.
    VirtioVsock,
    /// The serial console's writer: waits for guest output and writes it to stdout or the
    /// `--serial` file, so no other thread ever waits on the console's reader.
    ConsoleWriter,
    /// The console streamer (`vmm console`): copies the console ring to attached clients'
    /// sockets without blocking; `epoll_wait`, eventfds, `sendmsg`.
    ConsoleStream,
    /// The jail's reaper, outside the jail: waits for the jailed VMM, forwards the stop
    /// signals, removes the socket file, and ends as the VMM ended.
    Reaper,
}

impl ThreadKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [ThreadKind; 11] = [
        ThreadKind::Vcpu,
        ThreadKind::Main,
        ThreadKind::VirtioRng,
        ThreadKind::VirtioBlock,
        ThreadKind::VirtioBalloon,
        ThreadKind::VirtioNet,
        ThreadKind::VirtioConsole,
        ThreadKind::VirtioVsock,
        ThreadKind::ConsoleWriter,
        ThreadKind::ConsoleStream,
        ThreadKind::Reaper,
    ];

    /// The name used in log lines and by the test hook.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Main => "main",
            ThreadKind::VirtioRng => "virtio-rng",
            ThreadKind::VirtioBlock => "virtio-blk",
            ThreadKind::VirtioBalloon => "virtio-balloon",
            ThreadKind::VirtioNet => "virtio-net",
            ThreadKind::VirtioConsole => "virtio-console",
            ThreadKind::VirtioVsock => "virtio-vsock",
            ThreadKind::ConsoleWriter => "console-writer",
            ThreadKind::ConsoleStream => "console-stream",
            ThreadKind::Reaper => "reaper",
        }
    }

    /// The policy file, relative to `seccomp/`.
    pub fn policy_file(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "policies/vcpu.json",
            ThreadKind::Main => "policies/main.json",
            ThreadKind::VirtioRng => "policies/virtio_rng.json",
            ThreadKind::VirtioBlock => "policies/virtio_block.json",
            ThreadKind::VirtioBalloon => "policies/virtio_balloon.json",
            ThreadKind::VirtioNet => "policies/virtio_net.json",
            ThreadKind::VirtioConsole => "policies/virtio_console.json",
            ThreadKind::VirtioVsock => "policies/virtio_vsock.json",
            ThreadKind::ConsoleWriter => "policies/console_writer.json",
            ThreadKind::ConsoleStream => "policies/console_stream.json",
            ThreadKind::Reaper => "policies/reaper.json",
        }
    }

    fn program(self) -> Vec<seccompiler::sock_filter> {
        let raw = match self {
            ThreadKind::Vcpu => policies::VCPU,
            ThreadKind::Main => policies::MAIN,
            ThreadKind::VirtioRng => policies::VIRTIO_RNG,
            ThreadKind::VirtioBlock => policies::VIRTIO_BLOCK,
            ThreadKind::VirtioBalloon => policies::VIRTIO_BALLOON,
            ThreadKind::VirtioNet => policies::VIRTIO_NET,
            ThreadKind::VirtioConsole => policies::VIRTIO_CONSOLE,
            ThreadKind::VirtioVsock => policies::VIRTIO_VSOCK,
            ThreadKind::ConsoleWriter => policies::CONSOLE_WRITER,
            ThreadKind::ConsoleStream => policies::CONSOLE_STREAM,
            ThreadKind::Reaper => policies::REAPER,
        };
        raw.iter()
            .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
            .collect()
    }
}

/// Why the sandbox could not be set up.
#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot install the SIGSYS handler: {0}")]
    SigsysHandler(#[source] io::Error),
    #[error("cannot install the {kind} seccomp filter ({file}): {source}")]
    Install {
        kind: &'static str,
        file: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// Most bytes of a thread label kept for the SIGSYS report (Linux thread names are 15).
const LABEL_MAX: usize = 24;

thread_local! {
    /// This thread's label and kind, set by [`install`] and read by the SIGSYS handler.
    /// Const-initialised and without a destructor, so reading it is a plain TLS load:
    /// no allocation, no lock, safe in a signal handler.
    static LABEL: Cell<([u8; LABEL_MAX], usize, &'static str)> =
        const { Cell::new(([0; LABEL_MAX], 0, "unfiltered")) };
}

/// Installs the process-wide `SIGSYS` handler that reports a policy violation and exits
/// with [`EXIT_BAD_SYSCALL`]. Call once, before the first [`install`].
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: sigaction is plain old data; all zeroes is a valid (empty) value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised and `on_sigsys` has the SA_SIGINFO signature;
    // the old action is not asked for (null).
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(SeccompError::SigsysHandler(io::Error::last_os_error()));
    }
    Ok(())
}

/// Confines the calling thread to `kind`'s policy: sets `no_new_privs`, then installs the
/// filter. `label` names the thread in a violation report (e.g. `vcpu0`). Irreversible.
pub fn install(kind: ThreadKind, label: &str) -> Result<(), SeccompError> {
    let mut bytes = [0u8; LABEL_MAX];
    let len = label.len().min(LABEL_MAX);
    bytes[..len].copy_from_slice(&label.as_bytes()[..len]);
    LABEL.with(|cell| cell.set((bytes, len, kind.name())));
    // Read before the filter is on: the environment lock and the allocation are calls
    // the policies need not list.
    let violate = test_hook_names(kind);
    let program = kind.program();
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        file: kind.policy_file(),
        source,
    })?;
    if violate {
        // SAFETY: uname with a null buffer only fails (EFAULT); here the filter traps it first.
        unsafe { libc::syscall(libc::SYS_uname, std::ptr::null_mut::<libc::utsname>()) };
    }
    Ok(())
}

/// Whether the test-only hook asks `kind`'s threads to break their policy.
fn test_hook_names(kind: ThreadKind) -> bool {
    std::env::var(TEST_VIOLATION_ENV).is_ok_and(|wanted| wanted == kind.name() || wanted == "all")
}

/// The part of the kernel's `siginfo_t` that `SIGSYS` fills in (`_sigsys` in
/// `<asm-generic/siginfo.h>`): three ints, then, pointer-aligned, the union.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a `SIGSYS` sent by seccomp.
const SYS_SECCOMP: libc::c_int = 1;

extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut message = Message::new();
    message.push(b"vmm: sandbox: thread ");
    let (label, len, kind) = LABEL.with(Cell::get);
    message.push(&label[..len.min(LABEL_MAX)]);
    message.push(b" (");
    message.push(kind.as_bytes());
    message.push(b" policy) made system call ");
    // SAFETY: the handler is installed with SA_SIGINFO, so `info` points to the kernel's
    // siginfo_t for this signal, which for SIGSYS has the `_sigsys` layout of SigsysInfo
    // (a prefix of siginfo_t, which is 128 bytes). Null is checked first.
    let report = unsafe { info.cast::<SigsysInfo>().as_ref() };
    match report {
        Some(report) if report.code == SYS_SECCOMP => {
            let number = i64::from(report.syscall);
            if let Some(name) = syscall_name(number) {
                message.push(name.as_bytes());
                message.push(b" (");
                message.push_number(number);
                message.push(b")");
            } else {
                message.push(b"number ");
                message.push_number(number);
            }
            message.push(b", which its seccomp policy does not allow");
        }
        _ => message.push(b"(unknown: SIGSYS not sent by seccomp)"),
    }
    message.push(b"; stopping the VMM (exit status 31; --disable-sandbox turns the sandbox off)\n");
    let bytes = message.as_bytes();
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by every policy;
    // `bytes` is a live buffer of that length.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(EXIT_BAD_SYSCALL);
    }
}

/// A fixed-size, allocation-free line buffer for the signal handler.
struct Message {
    buf: [u8; 320],
    len: usize,
}

impl Message {
    fn new() -> Message {
        Message {
            buf: [0; 320],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let take = bytes.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
    }

    fn push_number(&mut self, mut value: i64) {
        if value < 0 {
            self.push(b"-");
            value = value.saturating_neg();
        }
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            // In 0..=9 by construction.
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 || at == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Names of the x86-64 system calls a `vmm` thread may plausibly make; others are
/// reported by number (see `ausyscall --dump` or `<asm/unistd_64.h>`).
const SYSCALL_NAMES: &[(i64, &str)] = &[
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_open, "open"),
    (libc::SYS_close, "close"),
    (libc::SYS_stat, "stat"),
    (libc::SYS_fstat, "fstat"),
    (libc::SYS_lstat, "lstat"),
    (libc::SYS_poll, "poll"),
    (libc::SYS_lseek, "lseek"),
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_munmap, "munmap"),
    (libc::SYS_brk, "brk"),
    (libc::SYS_rt_sigaction, "rt_sigaction"),
    (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    (libc::SYS_rt_sigreturn, "rt_sigreturn"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_access, "access"),
    (libc::SYS_pipe, "pipe"),
    (libc::SYS_select, "select"),
    (libc::SYS_sched_yield, "sched_yield"),
    (libc::SYS_mremap, "mremap"),
    (libc::SYS_madvise, "madvise"),
    (libc::SYS_dup, "dup"),
    (libc::SYS_dup2, "dup2"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_getpid, "getpid"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_accept, "accept"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_shutdown, "shutdown"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_getsockname, "getsockname"),
    (libc::SYS_getpeername, "getpeername"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_setsockopt, "setsockopt"),
    (libc::SYS_getsockopt, "getsockopt"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_exit, "exit"),
    (libc::SYS_wait4, "wait4"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_uname, "uname"),
    (libc::SYS_fcntl, "fcntl"),
    (libc::SYS_ftruncate, "ftruncate"),
    (libc::SYS_getcwd, "getcwd"),
    (libc::SYS_chdir, "chdir"),
    (libc::SYS_rename, "rename"),
    (libc::SYS_mkdir, "mkdir"),
    (libc::SYS_unlink, "unlink"),
    (libc::SYS_chmod, "chmod"),
    (libc::SYS_fchmod, "fchmod"),
    (libc::SYS_getrlimit, "getrlimit"),
    (libc::SYS_getrusage, "getrusage"),
    (libc::SYS_sysinfo, "sysinfo"),
    (libc::SYS_getuid, "getuid"),
    (libc::SYS_getgid, "getgid"),
    (libc::SYS_geteuid, "geteuid"),
    (libc::SYS_getppid, "getppid"),
    (libc::SYS_sigaltstack, "sigaltstack"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_arch_prctl, "arch_prctl"),
    (libc::SYS_gettid, "gettid"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_sched_getaffinity, "sched_getaffinity"),
    (libc::SYS_epoll_create, "epoll_create"),
    (libc::SYS_getdents64, "getdents64"),
    (libc::SYS_set_tid_address, "set_tid_address"),
    (libc::SYS_clock_gettime, "clock_gettime"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_exit_group, "exit_group"),
    (libc::SYS_epoll_wait, "epoll_wait"),
    (libc::SYS_epoll_ctl, "epoll_ctl"),
    (libc::SYS_tgkill, "tgkill"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_mkdirat, "mkdirat"),
    (libc::SYS_newfstatat, "newfstatat"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_set_robust_list, "set_robust_list"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    (libc::SYS_signalfd4, "signalfd4"),
    (libc::SYS_eventfd2, "eventfd2"),
    (libc::SYS_epoll_create1, "epoll_create1"),
    (libc::SYS_dup3, "dup3"),
    (libc::SYS_pipe2, "pipe2"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_prlimit64, "prlimit64"),
    (libc::SYS_getrandom, "getrandom"),
    (libc::SYS_memfd_create, "memfd_create"),
    (libc::SYS_statx, "statx"),
    (libc::SYS_rseq, "rseq"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_seccomp, "seccomp"),
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_pidfd_open, "pidfd_open"),
    (libc::SYS_pidfd_send_signal, "pidfd_send_signal"),
    (libc::SYS_close_range, "close_range"),
];

/// The name of x86-64 system call `number`, if it is one `vmm` knows by name.
pub fn syscall_name(number: i64) -> Option<&'static str> {
    SYSCALL_NAMES
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_compiles_to_a_nonempty_program() {
        for kind in ThreadKind::ALL {
            assert!(!kind.program().is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn syscall_names_are_unique_and_found() {
        for (number, name) in SYSCALL_NAMES {
            assert_eq!(syscall_name(*number), Some(*name));
        }
        assert_eq!(syscall_name(libc::SYS_uname), Some(TEST_VIOLATION_SYSCALL));
        assert_eq!(syscall_name(100_000), None);
    }

    #[test]
    fn message_formats_numbers_without_allocating() {
        let mut message = Message::new();
        message.push_number(0);
        message.push(b" ");
        message.push_number(110);
        message.push(b" ");
        message.push_number(-5);
        assert_eq!(message.as_bytes(), b"0 110 -5");
    }

    #[test]
    fn message_truncates_instead_of_overflowing() {
        let mut message = Message::new();
        for _ in 0..100 {
            message.push(b"0123456789");
        }
        assert_eq!(message.as_bytes().len(), 320);
    }
}
