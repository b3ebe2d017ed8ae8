//! Writing guest RAM into the memory file: the page extents to write, worked out while the
//! VM is paused, and the loop that writes them, run either in this process (a snapshot that
//! stops the VM) or in a child forked while the VM is paused (every other snapshot), which
//! writes from its copy-on-write view of guest RAM while the VM runs on.
//!
//! Guest RAM is mapped privately (`MAP_PRIVATE`, [`crate::guest_ram`]; never
//! `MADV_DONTFORK`), so a fork gives the child the pages as they were at the fork: from then
//! on, every page the guest, a device worker or the kernel's vhost writes in the VMM is
//! copied first, and the child keeps the old one. That is how Redis's `BGSAVE` works. The
//! cost is memory: each page written while the child runs exists twice until the child
//! exits (docs/snapshot-format.md, "What the VMM does, in order").
//!
//! The child of a multi-threaded process may only make async-signal-safe calls: it gets
//! one thread, and any lock another thread held at the fork stays held forever. So the
//! child allocates nothing, takes no lock and logs nothing: everything it needs (the
//! extents, the memory file's descriptor, the report page) is made before the fork, and it
//! makes only raw system calls, all allowed by the main thread's seccomp policy, which it
//! inherits: `prctl(PR_SET_PDEATHSIG)` and `getppid` (so it never outlives the VMM),
//! `pwrite64`, `fdatasync`, `clock_nanosleep` (the test hook's delay) and `exit_group`. It
//! says how it ended in its exit status (which step failed) and in a page shared with the
//! VMM (`MAP_SHARED | MAP_ANONYMOUS`, mapped before the fork): the errno, and the bytes it
//! wrote.
//!
//! The fork is a raw `clone(CLONE_PIDFD | SIGCHLD)`: no glibc fork handlers, no
//! `set_robust_list` in the child, and a pidfd the run loop watches in its epoll set. The
//! seccomp policy allows `clone` with exactly those flags (no thread, no namespace).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The page size, the granularity of holes.
const PAGE: usize = 4096;

/// Longest run of non-zero pages one `pwrite(2)` writes.
const MAX_RUN: usize = 8 << 20;

/// The writer's `clone(2)` flags: a new process (no `CLONE_VM`, no `CLONE_THREAD`, no
/// namespace), a pidfd for its parent, and `SIGCHLD` at its exit, as `fork(2)` sends.
pub const CLONE_FLAGS: libc::c_ulong = (libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;

/// A part of guest RAM to write: `len` bytes at host address `host` (in this process, and
/// so in a child forked from it), at `file_offset` in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    file_offset: u64,
    host: usize,
    len: usize,
}

impl Extent {
    /// An extent of `len` bytes at `host`, written at `file_offset`.
    ///
    /// # Safety
    ///
    /// `[host, host + len)` must be readable memory of this process for as long as the
    /// extent is used, `host` and `len` multiples of 4096 (guest RAM: mapped for the
    /// process's life, `crate::guest_ram`).
    pub unsafe fn new(file_offset: u64, host: usize, len: usize) -> Extent {
        Extent {
            file_offset,
            host,
            len,
        }
    }

    /// The extent's length in bytes.
    pub fn byte_len(&self) -> usize {
        self.len
    }

    /// Where it goes in the memory file.
    #[cfg(test)]
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }
}

/// Writes the non-zero pages of `extents` into `fd` at their offsets (a page of zeros is
/// left a hole) and returns the bytes written, or the errno of the write that failed.
///
/// Async-signal-safe: no allocation, no lock, no panic; only `pwrite64`. This is the
/// forked writer's loop, and the one a snapshot that stops the VM runs in place.
pub fn write_extents(extents: &[Extent], fd: RawFd) -> Result<u64, i32> {
    let mut written = 0u64;
    for extent in extents {
        written = written.saturating_add(write_extent(extent, fd)?);
    }
    Ok(written)
}

/// Writes the runs of non-zero pages of one extent; returns the bytes written.
fn write_extent(extent: &Extent, fd: RawFd) -> Result<u64, i32> {
    let mut written = 0u64;
    // Offset in the extent of the first page of the current run of non-zero pages.
    let mut run: Option<usize> = None;
    let mut offset = 0usize;
    while offset < extent.len {
        let len = PAGE.min(extent.len.saturating_sub(offset));
        let addr = extent.host.saturating_add(offset);
        // SAFETY: [addr, addr + len) lies inside the extent, readable by `Extent::new`'s
        // contract, and page-aligned (so u64-aligned).
        let zero = unsafe { is_zero(addr, len) };
        match run {
            Some(start) if zero || offset.saturating_sub(start) >= MAX_RUN => {
                written = written.saturating_add(write_run(extent, start, offset, fd)?);
                run = (!zero).then_some(offset);
            }
            None if !zero => run = Some(offset),
            _ => {}
        }
        offset = offset.saturating_add(len);
    }
    if let Some(start) = run {
        written = written.saturating_add(write_run(extent, start, extent.len, fd)?);
    }
    Ok(written)
}

/// Writes bytes `[start, end)` of `extent` at their place in the file.
fn write_run(extent: &Extent, start: usize, end: usize, fd: RawFd) -> Result<u64, i32> {
    let len = end.saturating_sub(start);
    let file_offset = extent.file_offset.saturating_add(start as u64);
    pwrite_all(fd, extent.host.saturating_add(start), len, file_offset)?;
    Ok(len as u64)
}

/// Whether the `len` bytes at `addr` are all zeros, eight words at a time.
///
/// # Safety
///
/// `[addr, addr + len)` must be readable and `addr` 8-byte aligned.
unsafe fn is_zero(addr: usize, len: usize) -> bool {
    // SAFETY: the caller's contract; u64 has no invalid bit patterns.
    let words = unsafe { std::slice::from_raw_parts(addr as *const u64, len / 8) };
    words
        .chunks(8)
        .all(|chunk| chunk.iter().fold(0, |acc, &word| acc | word) == 0)
}

/// `pwrite(2)` of all `len` bytes at `addr`, retried on `EINTR` and short writes.
fn pwrite_all(fd: RawFd, mut addr: usize, mut len: usize, mut offset: u64) -> Result<(), i32> {
    while len > 0 {
        let file_offset = libc::off64_t::try_from(offset).map_err(|_| libc::EFBIG)?;
        // SAFETY: [addr, addr + len) is readable (the callers' extents); pwrite only reads it.
        let done = unsafe { libc::pwrite64(fd, addr as *const libc::c_void, len, file_offset) };
        match usize::try_from(done) {
            Err(_) => match errno() {
                libc::EINTR => continue,
                err => return Err(err),
            },
            // No progress and no error: the file takes no more.
            Ok(0) => return Err(libc::EIO),
            Ok(done) => {
                addr = addr.saturating_add(done);
                len = len.saturating_sub(done);
                offset = offset.saturating_add(done as u64);
            }
        }
    }
    Ok(())
}

/// The calling thread's errno (async-signal-safe: a thread-local read).
fn errno() -> i32 {
    // SAFETY: glibc's errno location is valid for the calling thread's whole life.
    unsafe { *libc::__errno_location() }
}

/// The step a forked writer failed at: its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `prctl(PR_SET_PDEATHSIG)`, or the VMM was already gone.
    Confine = 1,
    /// Writing a page run.
    Write = 2,
    /// `fdatasync(2)` of the memory file.
    Sync = 3,
}

impl Step {
    fn from_status(code: i32) -> Option<Step> {
        [Step::Confine, Step::Write, Step::Sync]
            .into_iter()
            .find(|step| *step as i32 == code)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Confine => "tie itself to the VMM (PR_SET_PDEATHSIG)",
            Step::Write => "write the memory file",
            Step::Sync => "fdatasync the memory file",
        })
    }
}

/// Why the forked writer did not write the memory file whole.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("cannot start the memory file's writer process: {0}")]
    Spawn(#[source] io::Error),
    #[error("the memory file's writer process could not {step}: {source}")]
    Failed {
        step: Step,
        #[source]
        source: io::Error,
    },
    #[error("the memory file's writer process exited with status {0}")]
    Exited(i32),
    #[error("the memory file's writer process was killed by signal {0}")]
    Killed(i32),
    #[error("cannot reap the memory file's writer process: {0}")]
    Wait(#[source] io::Error),
}

impl WriterError {
    /// The errno a control client gets.
    pub fn errno(&self) -> i32 {
        match self {
            WriterError::Spawn(source)
            | WriterError::Failed { source, .. }
            | WriterError::Wait(source) => source.raw_os_error().unwrap_or(libc::EIO),
            WriterError::Exited(_) | WriterError::Killed(_) => libc::EIO,
        }
    }
}

/// What the writer tells the VMM beside its exit status, in a page both share.
#[repr(C)]
struct Report {
    /// The errno of the failed step.
    errno: AtomicI32,
    /// Bytes written, once all are.
    written: AtomicU64,
    /// Set once the writer has started (a sanity mark for the tests).
    started: AtomicU32,
}

/// One page mapped `MAP_SHARED | MAP_ANONYMOUS` before the fork: the parent and the writer
/// see the same [`Report`].
struct SharedReport {
    page: NonNull<Report>,
}

impl SharedReport {
    fn new() -> io::Result<SharedReport> {
        // SAFETY: a fresh shared anonymous page at an address of the kernel's choosing.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(page.cast::<Report>())
            .map(|page| SharedReport { page })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    fn get(&self) -> &Report {
        // SAFETY: the page is mapped (zero-filled: valid atomics) until `self` drops,
        // page-aligned, and larger than a Report.
        unsafe { self.page.as_ref() }
    }
}

impl Drop for SharedReport {
    fn drop(&mut self) {
        // SAFETY: the page mapped in `new`; no reference into it outlives `self`.
        unsafe { libc::munmap(self.page.as_ptr().cast(), PAGE) };
    }
}

/// A forked process writing guest RAM into the memory file. Dropping it before it has
/// been reaped kills and reaps it: the VMM never leaves a zombie or an orphan writer.
pub struct RamWriter {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    report: SharedReport,
    reaped: bool,
}

impl RamWriter {
    /// Forks the writer of `extents` into `memory` (already sized), which then syncs it.
    /// `delay` (a test hook) makes the writer wait before it writes.
    pub fn spawn(
        extents: &[Extent],
        memory: BorrowedFd<'_>,
        delay: Option<Duration>,
    ) -> Result<RamWriter, WriterError> {
        let report = SharedReport::new().map_err(WriterError::Spawn)?;
        let delay = delay.map(|d| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(d.subsec_nanos()),
        });
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut pidfd: libc::c_int = -1;
        // SAFETY: clone without CLONE_VM is fork: the child gets a copy of this thread's
        // stack and of the whole address space, and returns here with 0 on its own copy.
        // With CLONE_PIDFD the kernel stores the new pidfd at the third argument (the
        // parent_tid slot), which points at `pidfd`; stack, child_tid and tls are unused
        // (0) without CLONE_CHILD_* and CLONE_SETTLS. The child is a copy of a
        // multi-threaded process with one thread: it goes straight into `child_main`,
        // which never returns (no destructor runs on the copy) and makes only raw system
        // calls on memory made before the fork (no allocation, no lock another thread
        // may have held).
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                CLONE_FLAGS,
                0usize,
                &mut pidfd as *mut libc::c_int,
                0usize,
                0usize,
            )
        };
        if pid == 0 {
            // The child: see `child_main` for what it may do.
            child_main(extents, memory.as_raw_fd(), report.get(), parent, delay);
        }
        if pid < 0 {
            return Err(WriterError::Spawn(io::Error::last_os_error()));
        }
        // SAFETY: clone succeeded, so CLONE_PIDFD stored a new descriptor (close-on-exec)
        // that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok(RamWriter {
            pid: libc::pid_t::try_from(pid).unwrap_or(libc::pid_t::MAX),
            pidfd,
            report,
            reaped: false,
        })
    }

    /// The writer's pidfd: readable once it has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The writer's process id (in the VMM's PID namespace).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Reaps the writer if it has exited: `None` while it runs, else the bytes it wrote or
    /// why it failed.
    pub fn try_wait(&mut self) -> Option<Result<u64, WriterError>> {
        if self.reaped {
            return Some(Err(WriterError::Wait(io::Error::from_raw_os_error(
                libc::ECHILD,
            ))));
        }
        let mut status = 0;
        // SAFETY: wait4 on our own child with a valid status pointer and no rusage.
        let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, std::ptr::null_mut()) };
        if rc == 0 {
            return None;
        }
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return None;
            }
            // ECHILD: nobody else reaps our children; treat it as gone.
            self.reaped = true;
            return Some(Err(WriterError::Wait(err)));
        }
        self.reaped = true;
        Some(self.outcome(status))
    }

    /// What a wait status says.
    fn outcome(&self, status: libc::c_int) -> Result<u64, WriterError> {
        let report = self.report.get();
        if libc::WIFSIGNALED(status) {
            return Err(WriterError::Killed(libc::WTERMSIG(status)));
        }
        match libc::WEXITSTATUS(status) {
            0 => Ok(report.written.load(Ordering::Acquire)),
            code => match Step::from_status(code) {
                Some(step) => Err(WriterError::Failed {
                    step,
                    source: io::Error::from_raw_os_error(report.errno.load(Ordering::Acquire)),
                }),
                None => Err(WriterError::Exited(code)),
            },
        }
    }

    /// Kills the writer (`SIGKILL` through its pidfd) and reaps it, waiting for it to die.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc != 0 {
            log::warn!(
                "cannot kill the snapshot writer {}: {}",
                self.pid,
                io::Error::last_os_error()
            );
        }
        loop {
            let mut status = 0;
            // SAFETY: as in `try_wait`, blocking this time.
            let rc = unsafe { libc::wait4(self.pid, &mut status, 0, std::ptr::null_mut()) };
            if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        self.reaped = true;
    }
}

impl Drop for RamWriter {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The forked writer: ties its life to the VMM's, waits `delay` if any, writes `extents`
/// into `fd`, syncs it, and exits with 0 or the [`Step`] that failed (errno in `report`).
/// Runs in the child of a multi-threaded process: raw system calls only (see the module
/// docs), and it never returns.
fn child_main(
    extents: &[Extent],
    fd: RawFd,
    report: &Report,
    parent: libc::pid_t,
    delay: Option<libc::timespec>,
) -> ! {
    report.started.store(1, Ordering::Release);
    // SAFETY: prctl with integer arguments only; getppid has no preconditions.
    let confined = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) == 0
            && libc::getppid() == parent
    };
    if !confined {
        fail(report, Step::Confine, errno());
    }
    if let Some(delay) = delay {
        // SAFETY: a valid timespec and a null remainder; an interrupted sleep is cut short.
        unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &delay, std::ptr::null_mut()) };
    }
    match write_extents(extents, fd) {
        Ok(written) => report.written.store(written, Ordering::Release),
        Err(err) => fail(report, Step::Write, err),
    }
    // SAFETY: fdatasync on the memory file's descriptor, open in this process.
    if unsafe { libc::fdatasync(fd) } != 0 {
        fail(report, Step::Sync, errno());
    }
    // SAFETY: _exit ends the process at once: no destructor, no atexit handler, no flush.
    unsafe { libc::_exit(0) }
}

/// Ends the writer with `step` as its status and `errno` in the report.
fn fail(report: &Report, step: Step, errno: i32) -> ! {
    report.errno.store(errno, Ordering::Release);
    // SAFETY: as in `child_main`.
    unsafe { libc::_exit(step as i32) }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use super::*;

    fn scratch(name: &str) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("vmm-ram-writer-{}-{name}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch file");
        (path, file)
    }

    /// 16 pages, page-aligned: pages 1, 2 and 9 hold data, the rest zeros.
    fn buffer() -> Vec<[u8; PAGE]> {
        let mut pages = vec![[0u8; PAGE]; 16];
        pages[1][0] = 1;
        pages[2][PAGE - 1] = 2;
        pages[9][100] = 9;
        pages
    }

    fn extent_of(pages: &[[u8; PAGE]], first: usize, count: usize, file_offset: u64) -> Extent {
        // `[u8; PAGE]` arrays in a Vec are not page-aligned in general, but the loop only
        // needs u64 alignment, which the allocator gives a buffer this large.
        let host = pages[first..].as_ptr() as usize;
        assert_eq!(host % 8, 0);
        // SAFETY: the pages borrowed above outlive the extent's use in the test.
        unsafe { Extent::new(file_offset, host, count * PAGE) }
    }

    #[test]
    fn only_non_zero_pages_are_written_at_their_offsets() {
        let pages = buffer();
        let (path, file) = scratch("runs");
        file.set_len(32 * PAGE as u64).expect("size");
        let extents = [
            extent_of(&pages, 0, 8, 0),
            extent_of(&pages, 8, 8, 16 * PAGE as u64),
        ];

        let written = write_extents(&extents, file.as_raw_fd()).expect("write");

        assert_eq!(written, 3 * PAGE as u64, "pages 1, 2 and 9");
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, PAGE as u64).expect("read");
        assert_eq!(byte[0], 1);
        file.read_exact_at(&mut byte, 3 * PAGE as u64 - 1)
            .expect("read");
        assert_eq!(byte[0], 2);
        file.read_exact_at(&mut byte, 17 * PAGE as u64 + 100)
            .expect("read");
        assert_eq!(byte[0], 9, "the second extent lands at its file offset");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_failed_write_returns_its_errno() {
        let pages = buffer();
        let full = File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let extents = [extent_of(&pages, 0, 4, 0)];
        assert_eq!(write_extents(&extents, full.as_raw_fd()), Err(libc::ENOSPC));
    }

    #[test]
    fn a_forked_writer_writes_what_ram_held_at_the_fork() {
        let pages = buffer();
        let (path, file) = scratch("fork");
        file.set_len(16 * PAGE as u64).expect("size");
        let extents = [extent_of(&pages, 0, 16, 0)];
        let mut writer = RamWriter::spawn(&extents, file.as_fd(), Some(Duration::from_millis(200)))
            .expect("spawn");
        // Written after the fork: the writer keeps the page as it was.
        let mut pages = pages;
        pages[1][0] = 0x55;
        pages[3][0] = 0x66;
        let pidfd = writer.pidfd().as_raw_fd();
        let mut poll = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(
            unsafe { libc::poll(&mut poll, 1, 10_000) },
            1,
            "the pidfd became readable"
        );
        let written = writer.try_wait().expect("exited").expect("wrote");
        assert_eq!(written, 3 * PAGE as u64);
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, PAGE as u64).expect("read");
        assert_eq!(byte[0], 1, "the page as it was at the fork");
        file.read_exact_at(&mut byte, 3 * PAGE as u64)
            .expect("read");
        assert_eq!(byte[0], 0, "a page written after the fork stays a hole");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_forked_writers_failure_names_the_step_and_the_errno() {
        let pages = buffer();
        let full = File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let extents = [extent_of(&pages, 0, 4, 0)];
        let mut writer = RamWriter::spawn(&extents, full.as_fd(), None).expect("spawn");
        let err = loop {
            if let Some(result) = writer.try_wait() {
                break result.expect_err("/dev/full takes nothing");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(err.errno(), libc::ENOSPC);
        assert_eq!(
            err.to_string(),
            "the memory file's writer process could not write the memory file: No space left \
             on device (os error 28)"
        );
    }

    #[test]
    fn dropping_a_running_writer_kills_and_reaps_it() {
        let pages = buffer();
        let (path, file) = scratch("kill");
        let extents = [extent_of(&pages, 0, 16, 0)];
        let writer =
            RamWriter::spawn(&extents, file.as_fd(), Some(Duration::from_secs(60))).expect("spawn");
        let pid = writer.pid();
        drop(writer);
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0;
        assert!(gone, "no zombie and no orphan: process {pid} is gone");
        let _ = std::fs::remove_file(path);
    }
}
