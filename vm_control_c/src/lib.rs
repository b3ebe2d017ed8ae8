//! `libvmm_control`: the vmm control socket for C and C++ host daemons.
//!
//! A C ABI over the blocking [`vm_control::client::Client`], so C speaks the protocol
//! through the same code as `vmm`'s own subcommands and never re-implements the wire
//! format. `include/vmm_control.h` is the contract, hand-written and documented;
//! `tests/header.rs` compiles C against it to prove that every structure's size and field
//! offsets, every constant and every function signature there match this crate.
//!
//! How the entry points are built:
//!
//! * every one runs its body inside [`std::panic::catch_unwind`] ([`guard`]), and the body
//!   is written not to panic at all (the workspace's release profile aborts on panic): no
//!   `unwrap`, `expect` or indexing (denied below), every pointer checked for null;
//! * every one returns 0 or a negative errno and records the calling thread's last error
//!   ([`error`]), so the VMM's refusal reaches C with its error kind, errno and detail;
//! * a handle holds its [`Client`] behind a [`Mutex`] taken with `try_lock`: two threads
//!   using one handle at once get `-EBUSY`, never a data race;
//! * every blocking call is bounded by the handle's timeout (one deadline per request,
//!   see [`Client::set_timeout`]); reading events never blocks.

#![deny(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod error;
pub mod types;

use std::ffi::{CStr, c_char, c_int};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use vm_control::client::{Client, ClientError};
use vm_control::socket;
use vm_control::wire::{PAGE_SIZE, Request, Response, snapshot_flags};

use error::Failure;
use types::{
    Sized32, VmmControlError, VmmControlEvent, VmmControlMemoryList, VmmControlQueues,
    VmmControlStats, fill,
};

/// `struct vmm_control`: a connection for requests. Opaque to C.
#[derive(Debug)]
pub struct VmmControl {
    client: Mutex<Client>,
    path: PathBuf,
}

/// `struct vmm_control_subscription`: a connection that receives events. Opaque to C.
#[derive(Debug)]
pub struct VmmControlSubscription {
    client: Mutex<Client>,
    fd: RawFd,
}

/// Runs an entry point's body: catches a panic (none is expected), records the outcome as
/// the thread's last error and turns it into 0 or a negative errno.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            error::clear();
            0
        }
        Ok(Err(failure)) => error::record(failure),
        Err(_) => error::record(Failure::local(
            libc::EIO,
            "internal error in libvmm_control (a Rust panic was caught); please report it",
        )),
    }
}

fn lock(client: &Mutex<Client>) -> Result<MutexGuard<'_, Client>, Failure> {
    match client.try_lock() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::WouldBlock) => Err(Failure::local(
            libc::EBUSY,
            "the handle is in use by another thread (one call at a time per handle)",
        )),
        // Only a caught panic poisons, and the client's state stays consistent across one.
        Err(TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
    }
}

/// The handle behind `ptr`.
///
/// # Safety
/// `ptr` must be null or a live handle from this library (the header's ownership rules).
unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: by the caller's contract a non-null `ptr` is a live handle.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// Checks that an out-pointer is not null.
fn non_null<T>(ptr: *mut T, what: &str) -> Result<(), Failure> {
    if ptr.is_null() {
        Err(Failure::invalid(format!("{what} is NULL")))
    } else {
        Ok(())
    }
}

/// Writes `value` through an out-pointer checked with [`non_null`].
///
/// # Safety
/// `ptr` must be null or valid for a write of a `T`.
unsafe fn put<T>(ptr: *mut T, value: T, what: &str) -> Result<(), Failure> {
    non_null(ptr, what)?;
    // SAFETY: non-null and, by the caller's contract, writable; unaligned writes are fine.
    unsafe { ptr.write_unaligned(value) };
    Ok(())
}

/// Checks, before a request is sent, that a `struct_size` structure can be filled, so a bad
/// pointer never costs the caller a reply (or an event).
///
/// # Safety
/// As [`fill`].
unsafe fn check_fillable<T: Sized32>(out: *mut T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid("the structure pointer is NULL"));
    }
    // SAFETY: non-null, and by the caller's contract it starts with its u32 struct_size.
    let size = unsafe { out.cast::<u32>().read_unaligned() };
    if (4..=types::MAX_STRUCT_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(Failure::invalid(
            "struct_size must be set to sizeof the structure (4 to 65536 bytes)",
        ))
    }
}

fn timeout_of(timeout_ms: u32) -> Result<Duration, Failure> {
    if timeout_ms == 0 {
        return Err(Failure::invalid("the timeout must be at least 1 ms"));
    }
    Ok(Duration::from_millis(timeout_ms.into()))
}

fn unexpected(request: &str, response: &Response) -> Failure {
    Failure::local(
        libc::EPROTO,
        format!("the VMM answered {request} with an unexpected reply: {response:?}"),
    )
}

/// Sends `request` on `ctl`'s connection and returns the reply.
///
/// # Safety
/// `ctl` must be null or a live `struct vmm_control`.
unsafe fn call(ctl: *const VmmControl, request: Request) -> Result<Response, Failure> {
    // SAFETY: forwarded from the caller.
    let ctl = unsafe { handle(ctl, "the handle")? };
    Ok(lock(&ctl.client)?.request(request)?)
}

/// Sends a request whose success reply is `Ok`.
///
/// # Safety
/// As [`call`].
unsafe fn call_ok(ctl: *const VmmControl, request: Request, name: &str) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        match unsafe { call(ctl, request)? } {
            Response::Ok => Ok(()),
            other => Err(unexpected(name, &other)),
        }
    })
}

/// See `vmm_control_connect` in vmm_control.h.
///
/// # Safety
/// `path` null or a NUL-terminated string; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_connect(
    path: *const c_char,
    timeout_ms: u32,
    out: *mut *mut VmmControl,
) -> c_int {
    guard(|| {
        // SAFETY: `out` is null or writable (contract).
        unsafe { put(out, std::ptr::null_mut(), "out")? };
        if path.is_null() {
            return Err(Failure::invalid("path is NULL"));
        }
        // SAFETY: non-null and NUL-terminated (contract); only read during this call.
        let path = Path::new(std::ffi::OsStr::from_bytes(
            unsafe { CStr::from_ptr(path) }.to_bytes(),
        ));
        let client = Client::connect_timeout(path, timeout_of(timeout_ms)?)?;
        let handle = Box::new(VmmControl {
            client: Mutex::new(client),
            path: path.to_owned(),
        });
        // SAFETY: checked writable above.
        unsafe { out.write_unaligned(Box::into_raw(handle)) };
        Ok(())
    })
}

/// See `vmm_control_close`.
///
/// # Safety
/// `ctl` null or a live handle that no other thread is using, never used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_close(ctl: *mut VmmControl) {
    let _ = catch_unwind(|| {
        if !ctl.is_null() {
            // SAFETY: a live handle from Box::into_raw in vmm_control_connect, given back
            // exactly once (contract); dropping it closes its socket.
            drop(unsafe { Box::from_raw(ctl) });
        }
    });
}

/// See `vmm_control_set_timeout`.
///
/// # Safety
/// `ctl` null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_set_timeout(ctl: *mut VmmControl, timeout_ms: u32) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let ctl = unsafe { handle(ctl, "the handle")? };
        let timeout = timeout_of(timeout_ms)?;
        Ok(lock(&ctl.client)?.set_timeout(Some(timeout))?)
    })
}

/// See `vmm_control_version`.
///
/// # Safety
/// `ctl` null or a live handle; `min_version`, `max_version` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_version(
    ctl: *mut VmmControl,
    min_version: *mut u16,
    max_version: *mut u16,
) -> c_int {
    guard(|| {
        non_null(min_version, "min_version")?;
        non_null(max_version, "max_version")?;
        // SAFETY: forwarded from the caller.
        match unsafe { call(ctl, Request::GetVersion)? } {
            Response::Version { min, max } => {
                // SAFETY: checked non-null above; writable by contract.
                unsafe {
                    put(min_version, min, "min_version")?;
                    put(max_version, max, "max_version")
                }
            }
            other => Err(unexpected("GetVersion", &other)),
        }
    })
}

/// See `vmm_control_stop`.
///
/// # Safety
/// `ctl` null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_stop(ctl: *mut VmmControl) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { call_ok(ctl, Request::Exit, "Exit") }
}

/// See `vmm_control_pause`.
///
/// # Safety
/// `ctl` null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_pause(ctl: *mut VmmControl) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { call_ok(ctl, Request::Pause, "Pause") }
}

/// See `vmm_control_resume`.
///
/// # Safety
/// `ctl` null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_resume(ctl: *mut VmmControl) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { call_ok(ctl, Request::Resume, "Resume") }
}

/// See `vmm_control_balloon_set_target`.
///
/// # Safety
/// `ctl` null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_balloon_set_target(ctl: *mut VmmControl, pages: u64) -> c_int {
    let request = Request::BalloonSetTarget { pages };
    // SAFETY: forwarded from the caller.
    unsafe { call_ok(ctl, request, "BalloonSetTarget") }
}

/// See `vmm_control_balloon_adjust`.
///
/// # Safety
/// `ctl` null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_balloon_adjust(
    ctl: *mut VmmControl,
    delta_pages: i64,
) -> c_int {
    let request = Request::BalloonAdjust { delta_pages };
    // SAFETY: forwarded from the caller.
    unsafe { call_ok(ctl, request, "BalloonAdjust") }
}

/// See `vmm_control_get_stats`.
///
/// # Safety
/// `ctl` null or a live handle; `out` null or `out->struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_get_stats(
    ctl: *mut VmmControl,
    out: *mut VmmControlStats,
) -> c_int {
    guard(|| {
        // SAFETY: `out` per the caller's contract, here and below.
        unsafe { check_fillable(out)? };
        // SAFETY: forwarded from the caller.
        match unsafe { call(ctl, Request::GetStats)? } {
            // SAFETY: as above.
            Response::Stats(stats) => unsafe { fill(out, &VmmControlStats::from_stats(&stats)) },
            other => Err(unexpected("GetStats", &other)),
        }
    })
}

/// See `vmm_control_get_queues`.
///
/// # Safety
/// `ctl` null or a live handle; `out` null or `out->struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_get_queues(
    ctl: *mut VmmControl,
    out: *mut VmmControlQueues,
) -> c_int {
    guard(|| {
        // SAFETY: `out` per the caller's contract, here and below.
        unsafe { check_fillable(out)? };
        // SAFETY: forwarded from the caller.
        match unsafe { call(ctl, Request::GetQueues)? } {
            // SAFETY: as above.
            Response::Queues(q) => unsafe { fill(out, &VmmControlQueues::from_queues(&q)) },
            other => Err(unexpected("GetQueues", &other)),
        }
    })
}

/// See `vmm_control_register_memory`.
///
/// # Safety
/// `ctl` null or a live handle; `slot`, `guest_addr` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_register_memory(
    ctl: *mut VmmControl,
    fd: c_int,
    size: u64,
    slot: *mut u32,
    guest_addr: *mut u64,
) -> c_int {
    guard(|| {
        non_null(slot, "slot")?;
        non_null(guest_addr, "guest_addr")?;
        // SAFETY: F_GETFD reads only the descriptor table entry; it fails with EBADF for a
        // number that is not an open descriptor.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(Failure::local(
                libc::EBADF,
                format!("{fd} is not an open file descriptor"),
            ));
        }
        // SAFETY: `fd` is open (checked just above) and the caller keeps it open for the
        // duration of the call (contract); it is only passed to sendmsg(2) as SCM_RIGHTS,
        // never closed here.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // SAFETY: forwarded from the caller.
        let ctl = unsafe { handle(ctl, "the handle")? };
        let reply = lock(&ctl.client)?.request_with_fd(Request::RegisterMemory { size }, fd)?;
        match reply {
            Response::MemoryRegistered { pfn, slot: s } => {
                let addr = pfn.checked_mul(PAGE_SIZE).ok_or_else(|| {
                    Failure::local(libc::EPROTO, format!("the VMM answered pfn {pfn:#x}"))
                })?;
                // SAFETY: checked non-null above; writable by contract.
                unsafe {
                    put(slot, s, "slot")?;
                    put(guest_addr, addr, "guest_addr")
                }
            }
            other => Err(unexpected("RegisterMemory", &other)),
        }
    })
}

/// See `vmm_control_unregister_memory`.
///
/// # Safety
/// `ctl` null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_unregister_memory(ctl: *mut VmmControl, slot: u32) -> c_int {
    let request = Request::UnregisterMemory { slot };
    // SAFETY: forwarded from the caller.
    unsafe { call_ok(ctl, request, "UnregisterMemory") }
}

/// See `vmm_control_list_memory`.
///
/// # Safety
/// `ctl` null or a live handle; `out` null or `out->struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_list_memory(
    ctl: *mut VmmControl,
    from_slot: u32,
    out: *mut VmmControlMemoryList,
) -> c_int {
    guard(|| {
        // SAFETY: `out` per the caller's contract, here and below.
        unsafe { check_fillable(out)? };
        // SAFETY: forwarded from the caller.
        match unsafe { call(ctl, Request::ListMemory { from_slot })? } {
            // SAFETY: as above.
            Response::MemoryList(l) => unsafe { fill(out, &VmmControlMemoryList::from_list(&l)) },
            other => Err(unexpected("ListMemory", &other)),
        }
    })
}

/// See `vmm_control_console_attach`.
///
/// # Safety
/// `ctl` null or a live handle; `fd_out`, `granted` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_console_attach(
    ctl: *mut VmmControl,
    flags: u32,
    fd_out: *mut c_int,
    granted: *mut u32,
) -> c_int {
    guard(|| {
        non_null(fd_out, "fd_out")?;
        non_null(granted, "granted")?;
        let (ours, theirs) = socket::seqpacket_pair().map_err(|err| {
            Failure::local(
                err.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot create the console's socket pair: {err}"),
            )
        })?;
        // SAFETY: forwarded from the caller.
        let ctl = unsafe { handle(ctl, "the handle")? };
        let reply =
            lock(&ctl.client)?.request_with_fd(Request::ConsoleAttach { flags }, theirs.as_fd())?;
        // The VMM has its own copy; the attachment lives on `ours` alone.
        drop(theirs);
        match reply {
            Response::ConsoleAttached(attached) => {
                // SAFETY: both checked non-null above; writable by contract. The
                // descriptor becomes the caller's.
                unsafe {
                    put(granted, attached.flags, "granted")?;
                    put(fd_out, std::os::fd::IntoRawFd::into_raw_fd(ours), "fd_out")
                }
            }
            other => Err(unexpected("ConsoleAttach", &other)),
        }
    })
}

/// Checks a descriptor given to `vmm_control_snapshot` before anything is sent: open
/// (else `EBADF`), open for writing (else `EBADF`, as write(2) answers) and without
/// `O_APPEND` (else `EINVAL`: Linux's pwrite(2) appends to such a file whatever the offset,
/// so the VMM's writes at offsets would scramble it). Returns the file's device and inode.
fn snapshot_file(fd: c_int, what: &str) -> Result<(u64, u64), Failure> {
    let not_open = || {
        Failure::local(
            libc::EBADF,
            format!("{what} {fd} is not an open file descriptor"),
        )
    };
    if fd < 0 {
        return Err(not_open());
    }
    // SAFETY: F_GETFL reads only the flags of the descriptor's open file description; it
    // fails with EBADF for a number that is not an open descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(not_open());
    }
    if flags & libc::O_PATH != 0 || flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(Failure::local(
            libc::EBADF,
            format!("{what} {fd} is not open for writing"),
        ));
    }
    if flags & libc::O_APPEND != 0 {
        return Err(Failure::invalid(format!(
            "{what} {fd} is open with O_APPEND: the VMM writes at offsets, which O_APPEND \
             would turn into appends"
        )));
    }
    let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `fd` is open (checked above) and `stat` is a writable, properly sized and
    // aligned `struct stat` that fstat(2) fills on success.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(Failure::local(
            err.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot fstat {what} {fd}: {err}"),
        ));
    }
    // SAFETY: fstat(2) succeeded, so it filled `stat` (and zeroed memory is a valid
    // `struct stat` in any case: it has only integer fields).
    let stat = unsafe { stat.assume_init() };
    Ok((stat.st_dev, stat.st_ino))
}

/// See `vmm_control_snapshot`.
///
/// # Safety
/// `ctl` null or a live handle; `stream_fd` and `memory_fd` stay open during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_snapshot(
    ctl: *mut VmmControl,
    stream_fd: c_int,
    memory_fd: c_int,
    flags: u32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let ctl = unsafe { handle(ctl, "the handle")? };
        if flags & !snapshot_flags::ALL != 0 {
            return Err(Failure::invalid(format!(
                "unknown snapshot flags {:#x} (only VMM_CONTROL_SNAPSHOT_STOP is defined)",
                flags & !snapshot_flags::ALL
            )));
        }
        let stream = snapshot_file(stream_fd, "the stream descriptor")?;
        let memory = snapshot_file(memory_fd, "the memory descriptor")?;
        if stream == memory {
            return Err(Failure::invalid(
                "the stream and memory descriptors are the same file: each needs its own",
            ));
        }
        // SAFETY: both are open (checked just above) and the caller keeps them open for the
        // duration of the call (contract); they are only passed to sendmsg(2) as
        // SCM_RIGHTS, never closed here.
        let fds = unsafe {
            [
                BorrowedFd::borrow_raw(stream_fd),
                BorrowedFd::borrow_raw(memory_fd),
            ]
        };
        match lock(&ctl.client)?.request_with_fds(Request::Snapshot { flags }, &fds)? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Snapshot", &other)),
        }
    })
}

/// See `vmm_control_subscribe`.
///
/// # Safety
/// `ctl` null or a live handle; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_subscribe(
    ctl: *mut VmmControl,
    out: *mut *mut VmmControlSubscription,
) -> c_int {
    guard(|| {
        // SAFETY: `out` is null or writable (contract).
        unsafe { put(out, std::ptr::null_mut(), "out")? };
        // SAFETY: forwarded from the caller.
        let ctl = unsafe { handle(ctl, "the handle")? };
        let timeout = lock(&ctl.client)?
            .timeout()
            .unwrap_or(Duration::from_secs(5));
        // Events get a connection of their own: its descriptor is readable exactly when an
        // event (or the VMM's hang-up) waits, with no request replies mixed in.
        let mut client = Client::connect_timeout(&ctl.path, timeout)?;
        match client.request(Request::Subscribe)? {
            Response::Ok => {}
            other => return Err(unexpected("Subscribe", &other)),
        }
        socket::set_nonblocking(client.as_fd(), true).map_err(ClientError::Io)?;
        let fd = client.as_fd().as_raw_fd();
        let sub = Box::new(VmmControlSubscription {
            client: Mutex::new(client),
            fd,
        });
        // SAFETY: checked writable above.
        unsafe { out.write_unaligned(Box::into_raw(sub)) };
        Ok(())
    })
}

/// See `vmm_control_subscription_fd`.
///
/// # Safety
/// `sub` null or a live subscription.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_subscription_fd(sub: *const VmmControlSubscription) -> c_int {
    let mut fd = -1;
    let ret = guard(|| {
        // SAFETY: forwarded from the caller.
        fd = unsafe { handle(sub, "the subscription")? }.fd;
        Ok(())
    });
    if ret < 0 { ret } else { fd }
}

/// See `vmm_control_next_event`.
///
/// # Safety
/// `sub` null or a live subscription; `out` null or `out->struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_next_event(
    sub: *mut VmmControlSubscription,
    out: *mut VmmControlEvent,
) -> c_int {
    guard(|| {
        // SAFETY: `out` per the caller's contract, here and below.
        unsafe { check_fillable(out)? };
        // SAFETY: forwarded from the caller.
        let sub = unsafe { handle(sub, "the subscription")? };
        // The socket is non-blocking: an empty queue reads as the client's Timeout.
        match lock(&sub.client)?.next_event() {
            // SAFETY: as above.
            Ok(event) => unsafe { fill(out, &VmmControlEvent::from_event(&event)) },
            Err(ClientError::Timeout) => Err(Failure::local(libc::EAGAIN, "no event is waiting")),
            Err(e) => Err(e.into()),
        }
    })
}

/// See `vmm_control_subscription_close`.
///
/// # Safety
/// `sub` null or a live subscription that no other thread is using, never used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_subscription_close(sub: *mut VmmControlSubscription) {
    let _ = catch_unwind(|| {
        if !sub.is_null() {
            // SAFETY: a live subscription from Box::into_raw in vmm_control_subscribe,
            // given back exactly once (contract); dropping it closes its socket.
            drop(unsafe { Box::from_raw(sub) });
        }
    });
}

/// See `vmm_control_last_error`.
#[unsafe(no_mangle)]
pub extern "C" fn vmm_control_last_error() -> *const c_char {
    catch_unwind(error::last_message).unwrap_or(c"".as_ptr())
}

/// See `vmm_control_last_error_info`.
///
/// # Safety
/// `out` null or `out->struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmm_control_last_error_info(out: *mut VmmControlError) -> c_int {
    // Not through `guard`: reading the last error must not replace it.
    let info = catch_unwind(error::last_info).unwrap_or_default();
    // SAFETY: `out` per the caller's contract.
    match catch_unwind(AssertUnwindSafe(|| unsafe { fill(out, &info) })) {
        Ok(Ok(())) => 0,
        Ok(Err(f)) => -f.errnum,
        Err(_) => -libc::EIO,
    }
}

/// Where this build put `libvmm_control.{a,so}` and `vmm_control.pc`
/// (`target/x86_64-unknown-linux-gnu/{debug,release}`), for tests that link C against them.
pub const LIB_DIR: &str = env!("VMM_CONTROL_LIB_DIR");

/// The directory holding `vmm_control.h`.
pub const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");

/// Every function the header declares, for the tests that check it (`tests/header.rs`).
pub const EXPORTED_FUNCTIONS: &[&str] = &[
    "vmm_control_connect",
    "vmm_control_close",
    "vmm_control_set_timeout",
    "vmm_control_version",
    "vmm_control_stop",
    "vmm_control_pause",
    "vmm_control_resume",
    "vmm_control_balloon_set_target",
    "vmm_control_balloon_adjust",
    "vmm_control_get_stats",
    "vmm_control_get_queues",
    "vmm_control_register_memory",
    "vmm_control_unregister_memory",
    "vmm_control_list_memory",
    "vmm_control_console_attach",
    "vmm_control_snapshot",
    "vmm_control_subscribe",
    "vmm_control_subscription_fd",
    "vmm_control_next_event",
    "vmm_control_subscription_close",
    "vmm_control_last_error",
    "vmm_control_last_error_info",
];
