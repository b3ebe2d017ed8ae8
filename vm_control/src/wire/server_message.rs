//! Server messages, a server's side of the protocol: [`Response`], [`Event`] and the
//! [`ServerMessage`] that carries either, with their encoding and validation. The larger
//! payloads are encoded by the modules that own them (`stats`, `queues`, `memory_list`).

use std::num::NonZeroU64;

use zerocopy::FromBytes;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use super::console::{decode_attached, encode_attached};
use super::queues::{decode_queues, encode_queues};
use super::raw::{PAYLOAD_SIZE, check_reserved, put, read_payload};
use super::stats::{decode_stats, encode_stats};
use super::{
    ConsoleAttached, DecodeError, ErrorKind, ErrorReply, HEADER_SIZE, MAX_PROTOCOL_VERSION,
    MIN_PROTOCOL_VERSION, MemoryList, PROTOCOL_VERSION, QueueStatuses, RESPONSE_SIZE,
    RawErrorPayload, RawEventPayload, RawHeader, RawMemoryRegisteredPayload, RawResponse,
    RawVersionPayload, RequestId, Stats, event_kind, memory_list, response_type, version_supported,
};

/// A reply to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The request was carried out.
    Ok,
    /// The request was refused or failed.
    Err(ErrorReply),
    /// Answer to `RegisterMemory`.
    MemoryRegistered {
        /// Guest page frame number of the start of the region.
        pfn: u64,
        /// Slot to pass to `UnregisterMemory`.
        slot: u32,
    },
    /// Answer to `GetVersion`: the versions the server accepts.
    Version {
        /// Oldest accepted version.
        min: u16,
        /// Newest accepted version.
        max: u16,
    },
    /// Answer to `GetStats` (boxed: it is much larger than the other replies).
    Stats(Box<Stats>),
    /// Answer to `GetQueues` (boxed, like `Stats`). Protocol version 2 and later.
    Queues(Box<QueueStatuses>),
    /// Answer to `ListMemory` (boxed, like `Stats`). Protocol version 3 and later.
    MemoryList(Box<MemoryList>),
    /// Answer to `ConsoleAttach`: the stream runs on the descriptor the request passed.
    /// Protocol version 4 and later.
    ConsoleAttached(ConsoleAttached),
}

impl Response {
    /// The `Version` reply for this crate's supported range.
    pub fn version() -> Response {
        Response::Version {
            min: MIN_PROTOCOL_VERSION,
            max: MAX_PROTOCOL_VERSION,
        }
    }

    /// An `Err` reply of `kind` with `errno` and no detail.
    pub fn error(kind: ErrorKind, errno: i32) -> Response {
        Response::Err(ErrorReply::new(kind, errno, 0))
    }
}

/// Something that happened to the VM, sent to subscribed connections with id 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The guest powered off.
    PoweredOff,
    /// The guest asked for a reset.
    ResetRequested,
    /// The guest or a vCPU crashed (e.g. triple fault, internal error).
    Crashed,
    /// The VM was paused.
    Paused,
    /// The VM was resumed.
    Resumed,
    /// The balloon's target or actual size changed.
    BalloonChanged {
        /// Target, pages.
        target_pages: u64,
        /// Pages actually held.
        actual_pages: u64,
    },
}

/// Any datagram a server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// The reply to the request with id `id`.
    Reply {
        /// The id of the request answered.
        id: RequestId,
        /// The answer.
        response: Response,
    },
    /// An error about a datagram whose id could not be read (id 0 on the wire).
    Unattributed(ErrorReply),
    /// An event (id 0 on the wire).
    Event(Event),
}

fn encode_error(payload: &mut [u8; PAYLOAD_SIZE], e: &ErrorReply) {
    put(
        payload,
        &RawErrorPayload {
            kind: U32::new(e.kind as u32),
            errno: U32::new(e.errno.unsigned_abs()),
            detail: U64::new(e.detail),
            min_version: U16::new(e.min_version),
            max_version: U16::new(e.max_version),
            reserved: [0; 988],
        },
    );
}

impl ServerMessage {
    /// Encodes the message in [`PROTOCOL_VERSION`].
    pub fn encode(&self) -> [u8; RESPONSE_SIZE] {
        self.encode_in(PROTOCOL_VERSION)
    }

    /// Encodes the message in protocol `version`: a server answers each request in the
    /// version it was written in, and sends events in the version of the `Subscribe`.
    pub fn encode_in(&self, version: u16) -> [u8; RESPONSE_SIZE] {
        let mut payload = [0u8; PAYLOAD_SIZE];
        let (kind, id) = match self {
            ServerMessage::Reply { id, response } => {
                let kind = match response {
                    Response::Ok => response_type::OK,
                    Response::Err(e) => {
                        encode_error(&mut payload, e);
                        response_type::ERR
                    }
                    Response::MemoryRegistered { pfn, slot } => {
                        put(
                            &mut payload,
                            &RawMemoryRegisteredPayload {
                                pfn: U64::new(*pfn),
                                slot: U32::new(*slot),
                                reserved: [0; 996],
                            },
                        );
                        response_type::MEMORY_REGISTERED
                    }
                    Response::Version { min, max } => {
                        put(
                            &mut payload,
                            &RawVersionPayload {
                                min_version: U16::new(*min),
                                max_version: U16::new(*max),
                                reserved: [0; 1004],
                            },
                        );
                        response_type::VERSION
                    }
                    Response::Stats(s) => {
                        encode_stats(&mut payload, s, version);
                        response_type::STATS
                    }
                    Response::Queues(q) => {
                        encode_queues(&mut payload, q, version);
                        response_type::QUEUES
                    }
                    Response::MemoryList(list) => {
                        memory_list::encode(&mut payload, list);
                        response_type::MEMORY_LIST
                    }
                    Response::ConsoleAttached(attached) => {
                        encode_attached(&mut payload, attached);
                        response_type::CONSOLE_ATTACHED
                    }
                };
                (kind, id.get())
            }
            ServerMessage::Unattributed(e) => {
                encode_error(&mut payload, e);
                (response_type::ERR, 0)
            }
            ServerMessage::Event(event) => {
                let (kind, arg0, arg1) = match *event {
                    Event::PoweredOff => (event_kind::POWERED_OFF, 0, 0),
                    Event::ResetRequested => (event_kind::RESET_REQUESTED, 0, 0),
                    Event::Crashed => (event_kind::CRASHED, 0, 0),
                    Event::Paused => (event_kind::PAUSED, 0, 0),
                    Event::Resumed => (event_kind::RESUMED, 0, 0),
                    Event::BalloonChanged {
                        target_pages,
                        actual_pages,
                    } => (event_kind::BALLOON_CHANGED, target_pages, actual_pages),
                };
                put(
                    &mut payload,
                    &RawEventPayload {
                        kind: U32::new(kind),
                        reserved0: U32::ZERO,
                        arg0: U64::new(arg0),
                        arg1: U64::new(arg1),
                        reserved: [0; 984],
                    },
                );
                (response_type::EVENT, 0)
            }
        };
        let raw = RawResponse {
            header: RawHeader {
                version: U16::new(version),
                kind: U16::new(kind),
                flags: U32::ZERO,
                id: U64::new(id),
            },
            payload,
        };
        let mut out = [0u8; RESPONSE_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes and validates one server datagram (a client's side of the protocol).
    pub fn decode(datagram: &[u8]) -> Result<ServerMessage, DecodeError> {
        let raw = RawResponse::read_from_bytes(datagram).map_err(|_| DecodeError::BadSize {
            received: datagram.len(),
            expected: RESPONSE_SIZE,
        })?;
        let version = raw.header.version.get();
        if !version_supported(version) {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        if raw.header.flags.get() != 0 {
            return Err(DecodeError::ReservedNonZero { offset: 4 });
        }
        let id = raw.header.id.get();
        let kind = raw.header.kind.get();
        let p = &raw.payload;
        let reply = |response: Response| {
            let id = NonZeroU64::new(id).ok_or(DecodeError::ZeroId)?;
            Ok(ServerMessage::Reply { id, response })
        };
        match kind {
            response_type::OK => {
                check_reserved(p, HEADER_SIZE)?;
                reply(Response::Ok)
            }
            response_type::ERR => {
                let e = read_payload::<RawErrorPayload>(p)?;
                check_reserved(&e.reserved, 36)?;
                let err = ErrorReply {
                    kind: ErrorKind::from_u32(e.kind.get())
                        .ok_or(DecodeError::InvalidArgument("unknown error kind"))?,
                    errno: i32::try_from(e.errno.get())
                        .map_err(|_| DecodeError::InvalidArgument("errno out of range"))?,
                    detail: e.detail.get(),
                    min_version: e.min_version.get(),
                    max_version: e.max_version.get(),
                };
                if id == 0 {
                    Ok(ServerMessage::Unattributed(err))
                } else {
                    reply(Response::Err(err))
                }
            }
            response_type::MEMORY_REGISTERED => {
                let m = read_payload::<RawMemoryRegisteredPayload>(p)?;
                check_reserved(&m.reserved, 28)?;
                reply(Response::MemoryRegistered {
                    pfn: m.pfn.get(),
                    slot: m.slot.get(),
                })
            }
            response_type::VERSION => {
                let v = read_payload::<RawVersionPayload>(p)?;
                check_reserved(&v.reserved, 20)?;
                reply(Response::Version {
                    min: v.min_version.get(),
                    max: v.max_version.get(),
                })
            }
            response_type::STATS => reply(Response::Stats(Box::new(decode_stats(p, version)?))),
            response_type::QUEUES if version >= 2 => {
                reply(Response::Queues(Box::new(decode_queues(p, version)?)))
            }
            response_type::MEMORY_LIST if version >= 3 => {
                reply(Response::MemoryList(Box::new(memory_list::decode(p)?)))
            }
            response_type::CONSOLE_ATTACHED if version >= 4 => reply(decode_attached(p)?),
            response_type::EVENT => {
                if id != 0 {
                    return Err(DecodeError::EventWithId { id });
                }
                let e = read_payload::<RawEventPayload>(p)?;
                if e.reserved0.get() != 0 {
                    return Err(DecodeError::ReservedNonZero { offset: 20 });
                }
                check_reserved(&e.reserved, 40)?;
                let (arg0, arg1) = (e.arg0.get(), e.arg1.get());
                let no_args = |event: Event| {
                    if arg0 == 0 && arg1 == 0 {
                        Ok(ServerMessage::Event(event))
                    } else {
                        Err(DecodeError::ReservedNonZero {
                            offset: if arg0 != 0 { 24 } else { 32 },
                        })
                    }
                };
                match e.kind.get() {
                    event_kind::POWERED_OFF => no_args(Event::PoweredOff),
                    event_kind::RESET_REQUESTED => no_args(Event::ResetRequested),
                    event_kind::CRASHED => no_args(Event::Crashed),
                    event_kind::PAUSED => no_args(Event::Paused),
                    event_kind::RESUMED => no_args(Event::Resumed),
                    event_kind::BALLOON_CHANGED => {
                        Ok(ServerMessage::Event(Event::BalloonChanged {
                            target_pages: arg0,
                            actual_pages: arg1,
                        }))
                    }
                    _ => Err(DecodeError::InvalidArgument("unknown event kind")),
                }
            }
            _ => Err(DecodeError::InvalidType { kind }),
        }
    }
}
