//! What goes wrong with a datagram and how a server says so: [`ErrorKind`], the wire's
//! closed set of error numbers; [`DecodeError`], why decoding refused a datagram; and
//! [`ErrorReply`], the body of an error reply.

use thiserror::Error;

#[cfg(doc)]
use super::Response;
use super::{MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION};

/// Error kinds carried by [`Response::Err`]. A closed set with stable numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorKind {
    /// The datagram had the wrong size; detail = the size received.
    BadSize = 1,
    /// Unknown message type; detail = the type number.
    InvalidType = 2,
    /// Protocol version outside the server's range; detail = the version received.
    UnsupportedVersion = 3,
    /// The request needs a file descriptor and none came with it.
    ExpectFd = 4,
    /// File descriptors came with a request that takes fewer; detail = the number received.
    /// They were closed unused.
    UnexpectedFd = 5,
    /// The request id was 0, which is reserved for events.
    ZeroId = 6,
    /// A reserved field or flag was not zero; detail = its byte offset.
    ReservedNonZero = 7,
    /// A field is out of range for its request type (see the errno and docs).
    InvalidArgument = 8,
    /// The request was valid but carrying it out failed; the errno says why.
    Failed = 9,
    /// The request is valid but this VMM does not support it (e.g. no balloon device).
    Unsupported = 10,
}

impl ErrorKind {
    /// The kind with wire number `n`, if there is one.
    pub fn from_u32(n: u32) -> Option<ErrorKind> {
        use ErrorKind::*;
        Some(match n {
            1 => BadSize,
            2 => InvalidType,
            3 => UnsupportedVersion,
            4 => ExpectFd,
            5 => UnexpectedFd,
            6 => ZeroId,
            7 => ReservedNonZero,
            8 => InvalidArgument,
            9 => Failed,
            10 => Unsupported,
            _ => return None,
        })
    }
}

/// Why a datagram was rejected. Each variant maps to one [`ErrorKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The datagram is not the size its direction requires.
    #[error("datagram is {received} bytes, expected {expected}")]
    BadSize {
        /// Bytes received (the real size, even when the datagram was truncated).
        received: usize,
        /// Bytes required.
        expected: usize,
    },
    /// The type number is not defined.
    #[error("unknown message type {kind}")]
    InvalidType {
        /// The type number received.
        kind: u16,
    },
    /// The protocol version is outside the supported range.
    #[error(
        "protocol version {version} unsupported (supported {MIN_PROTOCOL_VERSION}..={MAX_PROTOCOL_VERSION})"
    )]
    UnsupportedVersion {
        /// The version received.
        version: u16,
    },
    /// A request that needs a file descriptor came without one.
    #[error("request needs a file descriptor and none was sent")]
    ExpectFd,
    /// More file descriptors came than the request takes.
    #[error("{received} file descriptors sent with a request that takes fewer")]
    UnexpectedFd {
        /// Number of descriptors received.
        received: usize,
    },
    /// A request (or reply) carried id 0, which is reserved for events.
    #[error("request id 0 is reserved for events")]
    ZeroId,
    /// An event carried a non-zero id.
    #[error("event carries non-zero id {id}")]
    EventWithId {
        /// The id received.
        id: u64,
    },
    /// A reserved field or flag is not zero.
    #[error("reserved byte at offset {offset} is not zero")]
    ReservedNonZero {
        /// Byte offset of the first non-zero reserved byte.
        offset: usize,
    },
    /// A field is out of range for its message type.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl DecodeError {
    /// The error kind a server reports for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::BadSize { .. } => ErrorKind::BadSize,
            DecodeError::InvalidType { .. } => ErrorKind::InvalidType,
            DecodeError::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            DecodeError::ExpectFd => ErrorKind::ExpectFd,
            DecodeError::UnexpectedFd { .. } => ErrorKind::UnexpectedFd,
            DecodeError::ZeroId => ErrorKind::ZeroId,
            DecodeError::ReservedNonZero { .. } => ErrorKind::ReservedNonZero,
            DecodeError::EventWithId { .. } | DecodeError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
        }
    }

    /// The errno a server reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::BadSize { .. } => libc::EMSGSIZE,
            DecodeError::InvalidType { .. } => libc::ENOSYS,
            DecodeError::UnsupportedVersion { .. } => libc::EPROTONOSUPPORT,
            DecodeError::ExpectFd => libc::EBADF,
            DecodeError::UnexpectedFd { .. } => libc::E2BIG,
            DecodeError::ZeroId
            | DecodeError::EventWithId { .. }
            | DecodeError::ReservedNonZero { .. }
            | DecodeError::InvalidArgument(_) => libc::EINVAL,
        }
    }

    /// The kind-specific detail a server reports (see [`ErrorKind`]).
    pub fn detail(&self) -> u64 {
        match *self {
            DecodeError::BadSize { received, .. } => received as u64,
            DecodeError::InvalidType { kind } => u64::from(kind),
            DecodeError::UnsupportedVersion { version } => u64::from(version),
            DecodeError::UnexpectedFd { received } => received as u64,
            DecodeError::ReservedNonZero { offset } => offset as u64,
            DecodeError::EventWithId { id } => id,
            DecodeError::ExpectFd | DecodeError::ZeroId | DecodeError::InvalidArgument(_) => 0,
        }
    }

    /// The error reply describing this error.
    pub fn to_error_reply(&self) -> ErrorReply {
        ErrorReply::new(self.kind(), self.errno(), self.detail())
    }
}

/// The body of [`Response::Err`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A positive errno value refining `kind` (a negative one is sent as its absolute value).
    pub errno: i32,
    /// Kind-specific detail (see [`ErrorKind`]).
    pub detail: u64,
    /// Oldest protocol version the server accepts.
    pub min_version: u16,
    /// Newest protocol version the server accepts.
    pub max_version: u16,
}

impl ErrorReply {
    /// An error reply carrying this crate's supported version range.
    pub fn new(kind: ErrorKind, errno: i32, detail: u64) -> ErrorReply {
        ErrorReply {
            kind,
            errno,
            detail,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: MAX_PROTOCOL_VERSION,
        }
    }

    /// A `Failed` reply for an operation that failed with `error` (EIO if it has no errno).
    pub fn failed(error: &std::io::Error) -> ErrorReply {
        ErrorReply::new(
            ErrorKind::Failed,
            error.raw_os_error().unwrap_or(libc::EIO),
            0,
        )
    }
}
