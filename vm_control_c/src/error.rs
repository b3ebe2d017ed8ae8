//! Failures as the C API reports them: a negative errno from every call, and the calling
//! thread's last failure (message, and the VMM's error kind, errno and detail when the VMM
//! refused) kept in thread-local storage for `vmm_control_last_error*`.
//!
//! A plain struct and a `match`, no error-derive crate: the mapping from
//! [`ClientError`] to an errno is the whole of what C sees, so it is spelled out here.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_int};
use std::io;

use vm_control::client::ClientError;

use crate::types::VmmControlError;

/// One failed call: what it returns (`-errnum`) and what `vmm_control_last_error*` report.
#[derive(Debug)]
pub struct Failure {
    /// Positive errno; the call returns its negation.
    pub errnum: i32,
    /// The VMM's error kind when the VMM refused the request, else 0.
    pub kind: u32,
    /// The refusal's detail, else 0.
    pub detail: u64,
    /// The VMM's oldest protocol version (refusals only).
    pub min_version: u16,
    /// The VMM's newest protocol version (refusals only).
    pub max_version: u16,
    /// What went wrong, for a person.
    pub message: String,
}

impl Failure {
    /// A failure on this side with `errnum`.
    pub fn local(errnum: i32, message: impl Into<String>) -> Failure {
        Failure {
            errnum,
            kind: 0,
            detail: 0,
            min_version: 0,
            max_version: 0,
            message: message.into(),
        }
    }

    /// A bad argument from the caller (`EINVAL`).
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::local(libc::EINVAL, message)
    }
}

fn errno_of(e: &io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if n > 0 => n,
        _ => libc::EINVAL,
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let errnum = match &e {
            // A UNIX connect that ran out of its SO_SNDTIMEO reports EAGAIN.
            ClientError::Connect { source, .. } if source.raw_os_error() == Some(libc::EAGAIN) => {
                libc::ETIMEDOUT
            }
            ClientError::Connect { source, .. } => errno_of(source),
            ClientError::Io(source) => match source.raw_os_error() {
                Some(n) if n > 0 => n,
                _ => libc::EIO,
            },
            ClientError::Disconnected => libc::ECONNRESET,
            ClientError::Timeout => libc::ETIMEDOUT,
            ClientError::Protocol(_) | ClientError::UnexpectedId { .. } => libc::EPROTO,
            ClientError::FdCount { .. } => libc::EINVAL,
            ClientError::VersionTooOld { .. } => libc::EPROTONOSUPPORT,
            ClientError::Vmm(reply) if reply.errno > 0 => reply.errno,
            ClientError::Vmm(_) => libc::EIO,
        };
        let mut failure = Failure::local(errnum, e.to_string());
        if let ClientError::Vmm(reply) = e {
            failure.kind = reply.kind as u32;
            failure.detail = reply.detail;
            failure.min_version = reply.min_version;
            failure.max_version = reply.max_version;
        }
        failure
    }
}

/// The calling thread's last outcome.
struct Last {
    info: VmmControlError,
    message: CString,
}

thread_local! {
    static LAST: RefCell<Last> = RefCell::new(Last {
        info: VmmControlError::default(),
        message: CString::default(),
    });
}

/// Records `failure` as the calling thread's last error and returns what the call returns.
pub fn record(failure: Failure) -> c_int {
    let errnum = failure.errnum;
    // A message with a NUL in it (it cannot have one: it comes from Display impls and
    // paths given as C strings) would become empty rather than fail.
    let message = CString::new(failure.message).unwrap_or_default();
    let info = VmmControlError {
        struct_size: size_of::<VmmControlError>() as u32,
        kind: failure.kind,
        errnum,
        min_version: failure.min_version,
        max_version: failure.max_version,
        detail: failure.detail,
    };
    // try_with/try_borrow_mut: during thread teardown, or re-entered, the record is skipped
    // rather than panicking; the return value still says what happened.
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = Last { info, message };
        }
    });
    -errnum
}

/// Clears the calling thread's last error (after a call that succeeded).
pub fn clear() {
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            last.info = VmmControlError {
                struct_size: size_of::<VmmControlError>() as u32,
                ..VmmControlError::default()
            };
            last.message = CString::default();
        }
    });
}

/// The calling thread's last error message; valid until this thread's next call into the
/// library. Never null.
pub fn last_message() -> *const libc::c_char {
    static EMPTY: &CStr = c"";
    LAST.try_with(|last| match last.try_borrow() {
        // The CString's buffer lives in this thread's storage until the next record/clear.
        Ok(last) => last.message.as_ptr(),
        Err(_) => EMPTY.as_ptr(),
    })
    .unwrap_or(EMPTY.as_ptr())
}

/// The calling thread's last error's details.
pub fn last_info() -> VmmControlError {
    LAST.try_with(|last| last.try_borrow().map(|l| l.info).unwrap_or_default())
        .unwrap_or_default()
}
