//! Requests, a client's side of the protocol: [`Request`] and its encoding and
//! validation, and what a server needs around them ([`check_fds`], [`peek_request_id`],
//! [`reject`], [`reply_version`]).

use std::num::NonZeroU64;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

#[cfg(doc)]
use super::Event;
use super::raw::check_reserved;
use super::{
    DecodeError, MAX_BALLOON_PAGES, MAX_PROTOCOL_VERSION, MAX_REGISTER_MEMORY_SIZE, PAGE_SIZE,
    PROTOCOL_VERSION, REQUEST_SIZE, RawHeader, RawRequest, RequestId, Response, ServerMessage,
    attach_flags, request_type, snapshot_flags, version_supported,
};

/// A request from a client to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Ask for the server's supported version range; answered by [`Response::Version`].
    /// Accepted at any version number: its layout is frozen.
    GetVersion,
    /// Stop the VM and the VMM.
    Exit,
    /// Pause all vCPUs.
    Pause,
    /// Resume paused vCPUs.
    Resume,
    /// Move the balloon target by `delta_pages` from its current target: positive inflates
    /// (takes memory from the guest), negative deflates. `|delta_pages| <= MAX_BALLOON_PAGES`.
    BalloonAdjust {
        /// Pages to add to (or, negative, remove from) the current target.
        delta_pages: i64,
    },
    /// Set the balloon target to `pages` (at most [`MAX_BALLOON_PAGES`]).
    BalloonSetTarget {
        /// New absolute target, in pages.
        pages: u64,
    },
    /// Map the memory behind the one fd sent with the request into the guest. `size` is a
    /// non-zero multiple of [`PAGE_SIZE`], at most [`MAX_REGISTER_MEMORY_SIZE`]. Answered by
    /// [`Response::MemoryRegistered`].
    RegisterMemory {
        /// Bytes to map from offset 0 of the fd.
        size: u64,
    },
    /// Remove a region added by `RegisterMemory`.
    UnregisterMemory {
        /// The slot from [`Response::MemoryRegistered`].
        slot: u32,
    },
    /// Ask for statistics; answered by [`Response::Stats`].
    GetStats,
    /// Receive [`Event`]s on this connection from now on; answered by [`Response::Ok`].
    /// Events are written in the protocol version of this request.
    Subscribe,
    /// Ask for the state of every virtqueue; answered by [`Response::Queues`]. Protocol
    /// version 2 and later.
    GetQueues,
    /// List the registered memory regions with slots at or above `from_slot`; answered by
    /// [`Response::MemoryList`]. Protocol version 3 and later.
    ListMemory {
        /// The lowest slot to list (0 for the first page; the last slot listed + 1 next).
        from_slot: u32,
    },
    /// Attach to the console through the one descriptor sent with the request: a
    /// connected `AF_UNIX` `SOCK_SEQPACKET` socket on which the VMM then streams
    /// [`ConsoleFrame`](super::ConsoleFrame)s. `flags` are [`attach_flags`] bits.
    /// Answered by [`Response::ConsoleAttached`]. Protocol version 4 and later.
    ConsoleAttach {
        /// [`attach_flags`] bits.
        flags: u32,
    },
    /// Write the VM's whole state: the snapshot stream to the first of the two descriptors
    /// sent with the request, guest RAM to the second (both opened for writing by the
    /// client; the VMM opens no path). The VM is paused while it is written, then resumed
    /// (or ended, with [`snapshot_flags::STOP`]). Answered by [`Response::Ok`] once both
    /// are written whole. Protocol version 5 and later.
    Snapshot {
        /// [`snapshot_flags`] bits.
        flags: u32,
    },
}

impl Request {
    /// The request's type number.
    pub fn type_number(&self) -> u16 {
        use request_type::*;
        match self {
            Request::GetVersion => GET_VERSION,
            Request::Exit => EXIT,
            Request::Pause => PAUSE,
            Request::Resume => RESUME,
            Request::BalloonAdjust { .. } => BALLOON_ADJUST,
            Request::BalloonSetTarget { .. } => BALLOON_SET_TARGET,
            Request::RegisterMemory { .. } => REGISTER_MEMORY,
            Request::UnregisterMemory { .. } => UNREGISTER_MEMORY,
            Request::GetStats => GET_STATS,
            Request::Subscribe => SUBSCRIBE,
            Request::GetQueues => GET_QUEUES,
            Request::ListMemory { .. } => LIST_MEMORY,
            Request::ConsoleAttach { .. } => CONSOLE_ATTACH,
            Request::Snapshot { .. } => SNAPSHOT,
        }
    }

    /// The oldest protocol version that has this request.
    pub fn min_version(&self) -> u16 {
        match self {
            Request::GetQueues => 2,
            Request::ListMemory { .. } => 3,
            Request::ConsoleAttach { .. } => 4,
            Request::Snapshot { .. } => 5,
            _ => 1,
        }
    }

    /// Number of file descriptors this request must carry (0 or 1).
    pub fn fds_expected(&self) -> usize {
        match self {
            Request::RegisterMemory { .. } | Request::ConsoleAttach { .. } => 1,
            Request::Snapshot { .. } => 2,
            _ => 0,
        }
    }

    /// Encodes the request with id `id` in [`PROTOCOL_VERSION`].
    pub fn encode(&self, id: RequestId) -> [u8; REQUEST_SIZE] {
        self.encode_in(id, PROTOCOL_VERSION)
    }

    /// Encodes the request with id `id` in protocol `version` (see [`Request::min_version`]:
    /// a request older versions do not have is still written, and a server refuses it).
    pub fn encode_in(&self, id: RequestId, version: u16) -> [u8; REQUEST_SIZE] {
        let arg = match *self {
            Request::BalloonAdjust { delta_pages } => delta_pages as u64,
            Request::BalloonSetTarget { pages } => pages,
            Request::RegisterMemory { size } => size,
            Request::UnregisterMemory { slot } => u64::from(slot),
            Request::ListMemory { from_slot } => u64::from(from_slot),
            Request::ConsoleAttach { flags } => u64::from(flags),
            Request::Snapshot { flags } => u64::from(flags),
            _ => 0,
        };
        let raw = RawRequest {
            header: RawHeader {
                version: U16::new(version),
                kind: U16::new(self.type_number()),
                flags: U32::ZERO,
                id: U64::new(id.get()),
            },
            arg: U64::new(arg),
            reserved: [0; 40],
        };
        let mut out = [0u8; REQUEST_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes and validates one request datagram, returning its id and the request.
    ///
    /// The checks, in order: at least a header's worth of bytes; the version is supported
    /// (except for `GetVersion`, accepted at any version); exactly [`REQUEST_SIZE`] bytes;
    /// zero flags; non-zero id; a known type; the type's field rules; zero reserved bytes.
    /// File descriptors are checked separately by [`check_fds`].
    pub fn decode(datagram: &[u8]) -> Result<(RequestId, Request), DecodeError> {
        Request::decode_with_len(datagram, datagram.len())
    }

    /// [`Request::decode`] for a datagram of which only the first bytes were kept: `prefix` is
    /// what was read, `real_len` the datagram's real size (e.g. [`Datagram::len`] after a
    /// truncated receive). Any `real_len` other than [`REQUEST_SIZE`] is `BadSize`.
    ///
    /// [`Datagram::len`]: crate::socket::Datagram::len
    pub fn decode_with_len(
        prefix: &[u8],
        real_len: usize,
    ) -> Result<(RequestId, Request), DecodeError> {
        let bad_size = || DecodeError::BadSize {
            received: real_len,
            expected: REQUEST_SIZE,
        };
        let (header, _) = RawHeader::read_from_prefix(prefix).map_err(|_| bad_size())?;
        let kind = header.kind.get();
        let version = header.version.get();
        if kind != request_type::GET_VERSION && !version_supported(version) {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        if real_len != REQUEST_SIZE {
            return Err(bad_size());
        }
        let raw = RawRequest::read_from_bytes(prefix).map_err(|_| bad_size())?;
        if raw.header.flags.get() != 0 {
            return Err(DecodeError::ReservedNonZero { offset: 4 });
        }
        let id = NonZeroU64::new(raw.header.id.get()).ok_or(DecodeError::ZeroId)?;
        let arg = raw.arg.get();
        let no_arg = |request: Request| {
            if arg == 0 {
                Ok(request)
            } else {
                Err(DecodeError::ReservedNonZero { offset: 16 })
            }
        };
        let request = match kind {
            request_type::GET_VERSION => no_arg(Request::GetVersion)?,
            request_type::EXIT => no_arg(Request::Exit)?,
            request_type::PAUSE => no_arg(Request::Pause)?,
            request_type::RESUME => no_arg(Request::Resume)?,
            request_type::GET_STATS => no_arg(Request::GetStats)?,
            request_type::SUBSCRIBE => no_arg(Request::Subscribe)?,
            request_type::GET_QUEUES if version >= 2 => no_arg(Request::GetQueues)?,
            request_type::BALLOON_ADJUST => {
                let delta_pages = arg as i64;
                if delta_pages.unsigned_abs() > MAX_BALLOON_PAGES {
                    return Err(DecodeError::InvalidArgument(
                        "balloon adjustment exceeds MAX_BALLOON_PAGES",
                    ));
                }
                Request::BalloonAdjust { delta_pages }
            }
            request_type::BALLOON_SET_TARGET => {
                if arg > MAX_BALLOON_PAGES {
                    return Err(DecodeError::InvalidArgument(
                        "balloon target exceeds MAX_BALLOON_PAGES",
                    ));
                }
                Request::BalloonSetTarget { pages: arg }
            }
            request_type::REGISTER_MEMORY => {
                if arg == 0 {
                    return Err(DecodeError::InvalidArgument("memory size is zero"));
                }
                if arg % PAGE_SIZE != 0 {
                    return Err(DecodeError::InvalidArgument(
                        "memory size is not a multiple of the page size",
                    ));
                }
                if arg > MAX_REGISTER_MEMORY_SIZE {
                    return Err(DecodeError::InvalidArgument(
                        "memory size exceeds MAX_REGISTER_MEMORY_SIZE",
                    ));
                }
                Request::RegisterMemory { size: arg }
            }
            request_type::UNREGISTER_MEMORY => {
                let slot = u32::try_from(arg)
                    .map_err(|_| DecodeError::InvalidArgument("memory slot exceeds u32"))?;
                Request::UnregisterMemory { slot }
            }
            request_type::LIST_MEMORY if version >= 3 => {
                let from_slot = u32::try_from(arg)
                    .map_err(|_| DecodeError::InvalidArgument("memory slot exceeds u32"))?;
                Request::ListMemory { from_slot }
            }
            request_type::CONSOLE_ATTACH if version >= 4 => {
                let flags = u32::try_from(arg)
                    .ok()
                    .filter(|flags| flags & !attach_flags::ALL == 0)
                    .ok_or(DecodeError::InvalidArgument("unknown console attach flags"))?;
                Request::ConsoleAttach { flags }
            }
            request_type::SNAPSHOT if version >= 5 => {
                let flags = u32::try_from(arg)
                    .ok()
                    .filter(|flags| flags & !snapshot_flags::ALL == 0)
                    .ok_or(DecodeError::InvalidArgument("unknown snapshot flags"))?;
                Request::Snapshot { flags }
            }
            _ => return Err(DecodeError::InvalidType { kind }),
        };
        check_reserved(&raw.reserved, 24)?;
        Ok((id, request))
    }
}

/// Checks that a decoded request came with the number of file descriptors it needs.
pub fn check_fds(request: &Request, fds_received: usize) -> Result<(), DecodeError> {
    let expected = request.fds_expected();
    if fds_received < expected {
        Err(DecodeError::ExpectFd)
    } else if fds_received > expected {
        Err(DecodeError::UnexpectedFd {
            received: fds_received,
        })
    } else {
        Ok(())
    }
}

/// Reads the request id from a datagram that may be otherwise invalid, so an error reply can
/// echo it. `None` when the datagram is shorter than a header or the id is 0.
pub fn peek_request_id(datagram: &[u8]) -> Option<RequestId> {
    let (header, _) = RawHeader::read_from_prefix(datagram).ok()?;
    NonZeroU64::new(header.id.get())
}

/// The message a server sends back for a datagram that failed validation with `error`:
/// a reply echoing the id when it could be read, otherwise an unattributed error.
pub fn reject(datagram: &[u8], error: &DecodeError) -> ServerMessage {
    let reply = error.to_error_reply();
    match peek_request_id(datagram) {
        Some(id) => ServerMessage::Reply {
            id,
            response: Response::Err(reply),
        },
        None => ServerMessage::Unattributed(reply),
    }
}

/// The version a server answers a datagram in: the datagram's own when it is one the server
/// speaks, else the newest it speaks (a client newer than the server reads that; an older
/// client sent a version the server speaks).
///
/// The version is read from the first two bytes even of a datagram too short for a
/// header, so a short version-1 datagram is answered in version 1.
pub fn reply_version(datagram: &[u8]) -> u16 {
    match datagram {
        [lo, hi, ..] if version_supported(u16::from_le_bytes([*lo, *hi])) => {
            u16::from_le_bytes([*lo, *hi])
        }
        _ => MAX_PROTOCOL_VERSION,
    }
}
