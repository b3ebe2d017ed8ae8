//! The control protocol's wire format: the raw little-endian message layouts and the typed
//! messages built on them.
//!
//! This module owns every byte that crosses the control socket. Nothing else in the crate (or
//! in an embedder) should read or write a message except through [`Request::encode`],
//! [`Request::decode`], [`ServerMessage::encode`] and [`ServerMessage::decode`].
//!
//! * A request is exactly [`REQUEST_SIZE`] (64) bytes, a server message (reply or event) exactly
//!   [`RESPONSE_SIZE`] (1024) bytes. Both start with the same 16-byte header whose layout is frozen
//!   for every protocol version: `version: u16, type: u16, flags: u32 (zero), id: u64`.
//! * Every integer is little-endian (`zerocopy::little_endian`), every struct is `repr(C)` with
//!   alignment 1 and derives [`IntoBytes`], which refuses to compile if the compiler would insert
//!   any padding; all padding is an explicit `reserved` field that must be zero. The size of each
//!   struct is asserted at compile time.
//! * Decoding validates everything a peer controls and reports the first problem as a
//!   [`DecodeError`], which maps onto the error reply a server sends back ([`reject`]).
//!
//! ```
//! use std::num::NonZeroU64;
//! use vm_control::wire::{Request, Response, ServerMessage};
//!
//! let id = NonZeroU64::new(7).unwrap();
//! let bytes = Request::Pause.encode(id);
//! assert_eq!(Request::decode(&bytes), Ok((id, Request::Pause)));
//!
//! let reply = ServerMessage::Reply { id, response: Response::Ok };
//! assert_eq!(ServerMessage::decode(&reply.encode()), Ok(reply));
//! ```

use std::num::NonZeroU64;

use thiserror::Error;

mod memory_list;
pub use memory_list::{
    MAX_MEMORY_LIST_ENTRIES, MemoryList, MemoryListFull, RawMemoryEntry, RawMemoryListPayload,
    RegisteredRegion,
};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The protocol version this crate speaks when it sends, unless the peer needs an older one.
///
/// Version 2 added [`Request::GetQueues`] and its [`Response::Queues`] reply, and device
/// kind [`device_kind::RNG`]; every message of version 1 means the same in version 2.
/// Version 3 added [`Request::ListMemory`] and its [`Response::MemoryList`] reply, and the
/// counts of device counters and queues a full `Stats` or `Queues` reply left out.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol version this crate accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The newest protocol version this crate accepts.
pub const MAX_PROTOCOL_VERSION: u16 = 3;

/// Size in bytes of every request datagram.
pub const REQUEST_SIZE: usize = 64;
/// Size in bytes of every server-to-client datagram (reply or event).
pub const RESPONSE_SIZE: usize = 1024;
/// Size in bytes of the header shared by requests and responses; frozen across versions.
pub const HEADER_SIZE: usize = 16;

/// The guest page size the protocol counts in (balloon pages, registered memory alignment).
pub const PAGE_SIZE: u64 = 4096;
/// Largest balloon target or adjustment, in pages (256 TiB of 4 KiB pages). Keeps every balloon
/// computation in the VMM far from overflow.
pub const MAX_BALLOON_PAGES: u64 = 1 << 36;
/// Largest region [`Request::RegisterMemory`] accepts, in bytes (1 TiB).
pub const MAX_REGISTER_MEMORY_SIZE: u64 = 1 << 40;
/// Maximum number of per-device counters one [`Stats`] reply carries.
pub const MAX_DEVICE_COUNTERS: usize = 48;
/// Number of VM-exit kinds [`VmExits`] counts.
pub const VM_EXIT_KINDS: usize = 8;
/// Maximum number of queues one [`Response::Queues`] reply describes.
pub const MAX_QUEUE_STATUSES: usize = 24;

/// A client-chosen request id. Zero is reserved for events, so ids are never zero.
pub type RequestId = NonZeroU64;

/// Request type numbers (offset 2 of a request). Stable: never renumbered.
pub mod request_type {
    /// [`Request::GetVersion`](super::Request::GetVersion).
    pub const GET_VERSION: u16 = 1;
    /// [`Request::Exit`](super::Request::Exit).
    pub const EXIT: u16 = 2;
    /// [`Request::Pause`](super::Request::Pause).
    pub const PAUSE: u16 = 3;
    /// [`Request::Resume`](super::Request::Resume).
    pub const RESUME: u16 = 4;
    /// [`Request::BalloonAdjust`](super::Request::BalloonAdjust).
    pub const BALLOON_ADJUST: u16 = 5;
    /// [`Request::BalloonSetTarget`](super::Request::BalloonSetTarget).
    pub const BALLOON_SET_TARGET: u16 = 6;
    /// [`Request::RegisterMemory`](super::Request::RegisterMemory).
    pub const REGISTER_MEMORY: u16 = 7;
    /// [`Request::UnregisterMemory`](super::Request::UnregisterMemory).
    pub const UNREGISTER_MEMORY: u16 = 8;
    /// [`Request::GetStats`](super::Request::GetStats).
    pub const GET_STATS: u16 = 9;
    /// [`Request::Subscribe`](super::Request::Subscribe).
    pub const SUBSCRIBE: u16 = 10;
    /// [`Request::GetQueues`](super::Request::GetQueues); protocol version 2 and later.
    pub const GET_QUEUES: u16 = 11;
    /// [`Request::ListMemory`](super::Request::ListMemory) (version 3).
    pub const LIST_MEMORY: u16 = 12;
}

/// Response type numbers (offset 2 of a server message). Stable: never renumbered.
pub mod response_type {
    /// [`Response::Ok`](super::Response::Ok).
    pub const OK: u16 = 1;
    /// [`Response::Err`](super::Response::Err).
    pub const ERR: u16 = 2;
    /// [`Response::MemoryRegistered`](super::Response::MemoryRegistered).
    pub const MEMORY_REGISTERED: u16 = 3;
    /// [`Response::Version`](super::Response::Version).
    pub const VERSION: u16 = 4;
    /// [`Response::Stats`](super::Response::Stats).
    pub const STATS: u16 = 5;
    /// [`ServerMessage::Event`](super::ServerMessage::Event); always carries id 0.
    pub const EVENT: u16 = 6;
    /// [`Response::Queues`](super::Response::Queues); protocol version 2 and later.
    pub const QUEUES: u16 = 7;
    /// [`Response::MemoryList`](super::Response::MemoryList) (version 3).
    pub const MEMORY_LIST: u16 = 8;
}

/// The header every message starts with. Its layout is the same in every protocol version.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RawHeader {
    /// Protocol version the message is written in (offset 0).
    pub version: U16,
    /// Message type, from [`request_type`] or [`response_type`] (offset 2).
    pub kind: U16,
    /// Flags; none are defined, must be zero (offset 4).
    pub flags: U32,
    /// Request id; 0 only in events and unattributable errors (offset 8).
    pub id: U64,
}

/// A request as it is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawRequest {
    /// Offsets 0..16.
    pub header: RawHeader,
    /// The one argument of the request types that have one (offset 16); zero otherwise.
    pub arg: U64,
    /// Must be zero (offsets 24..64).
    pub reserved: [u8; 40],
}

/// A reply or event as it is on the wire: the header and a type-specific payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawResponse {
    /// Offsets 0..16.
    pub header: RawHeader,
    /// One of the `Raw*Payload` structs, or all zero (offsets 16..1024).
    pub payload: [u8; RESPONSE_SIZE - HEADER_SIZE],
}

/// Payload of [`Response::Err`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawErrorPayload {
    /// [`ErrorKind`] number (offset 16).
    pub kind: U32,
    /// Positive errno (offset 20).
    pub errno: U32,
    /// Kind-specific detail, e.g. the size received for `BadSize` (offset 24).
    pub detail: U64,
    /// Oldest protocol version the server accepts (offset 32).
    pub min_version: U16,
    /// Newest protocol version the server accepts (offset 34).
    pub max_version: U16,
    /// Must be zero (offsets 36..1024).
    pub reserved: [u8; 988],
}

/// Payload of [`Response::MemoryRegistered`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawMemoryRegisteredPayload {
    /// Guest page frame number the region was mapped at (offset 16).
    pub pfn: U64,
    /// Memory slot to pass to `UnregisterMemory` (offset 24).
    pub slot: U32,
    /// Must be zero (offsets 28..1024).
    pub reserved: [u8; 996],
}

/// Payload of [`Response::Version`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawVersionPayload {
    /// Oldest protocol version the server accepts (offset 16).
    pub min_version: U16,
    /// Newest protocol version the server accepts (offset 18).
    pub max_version: U16,
    /// Must be zero (offsets 20..1024).
    pub reserved: [u8; 1004],
}

/// One per-device counter in a [`RawStatsPayload`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RawDeviceCounter {
    /// Device kind, from [`device_kind`] (offset +0).
    pub device_kind: U16,
    /// Instance number among devices of that kind (offset +2).
    pub device_id: U16,
    /// Counter number, from [`counter_id`] (offset +4).
    pub counter: U32,
    /// Counter value (offset +8).
    pub value: U64,
}

/// Payload of [`Response::Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawStatsPayload {
    /// Offset 16.
    pub uptime_ns: U64,
    /// Offset 24.
    pub guest_memory_bytes: U64,
    /// Offset 32.
    pub balloon_target_pages: U64,
    /// Offset 40.
    pub balloon_actual_pages: U64,
    /// Offset 48.
    pub vcpu_count: U32,
    /// Number of valid entries in `devices` (offset 52), at most [`MAX_DEVICE_COUNTERS`].
    pub device_counter_count: U32,
    /// VM exits by kind, in [`VmExits`] field order (offsets 56..120).
    pub exits: [U64; VM_EXIT_KINDS],
    /// Offset 120.
    pub utime_us: U64,
    /// Offset 128.
    pub stime_us: U64,
    /// Offset 136.
    pub maxrss_kib: U64,
    /// Offset 144.
    pub minflt: U64,
    /// Offset 152.
    pub majflt: U64,
    /// Device counters left out because the reply was full (offset 160; version 3, else 0).
    pub device_counters_omitted: U32,
    /// Must be zero (offsets 164..256): room for new scalar statistics.
    pub reserved: [u8; 92],
    /// Per-device counters (offsets 256..1024); entries past the count must be zero.
    pub devices: [RawDeviceCounter; MAX_DEVICE_COUNTERS],
}

/// One queue in a [`RawQueuesPayload`] (offsets relative to the entry).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RawQueueStatus {
    /// Device kind, from [`device_kind`] (offset +0).
    pub device_kind: U16,
    /// Instance number among devices of that kind (offset +2).
    pub device_id: U16,
    /// Queue index as the driver numbers it (offset +4).
    pub queue: U16,
    /// Queue size the driver set; 0 while inactive (offset +6).
    pub size: U16,
    /// [`queue_state`] bits (offset +8).
    pub state: U32,
    /// Must be zero (offset +12).
    pub reserved: U32,
    /// The driver's `avail.idx`, read from guest memory when the reply was built (offset +16).
    pub driver_avail: U16,
    /// Index of the next available entry the device will take (offset +18).
    pub device_avail: U16,
    /// The `used.idx` the device published (offset +20).
    pub device_used: U16,
    /// The driver's `used_event` with EVENT_IDX, else 0 (offset +22).
    pub used_event: U16,
    /// Notifications the device consumed, since the VM started (offset +24).
    pub notifications: U64,
    /// Interrupts the device raised for the queue, since the VM started (offset +32).
    pub interrupts: U64,
}

/// Payload of [`Response::Queues`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawQueuesPayload {
    /// Number of valid entries in `queues`, at most [`MAX_QUEUE_STATUSES`] (offset 16).
    pub count: U32,
    /// Queues left out because the reply was full (offset 20; version 3, else 0).
    pub omitted: U32,
    /// Must be zero (offsets 24..32).
    pub reserved0: [u8; 8],
    /// The queues (offsets 32..992); entries past the count must be zero.
    pub queues: [RawQueueStatus; MAX_QUEUE_STATUSES],
    /// Must be zero (offsets 992..1024).
    pub reserved: [u8; 32],
}

/// Payload of [`ServerMessage::Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawEventPayload {
    /// [`event_kind`] number (offset 16).
    pub kind: U32,
    /// Must be zero (offset 20).
    pub reserved0: U32,
    /// First kind-specific value (offset 24).
    pub arg0: U64,
    /// Second kind-specific value (offset 32).
    pub arg1: U64,
    /// Must be zero (offsets 40..1024).
    pub reserved: [u8; 984],
}

const PAYLOAD_SIZE: usize = RESPONSE_SIZE - HEADER_SIZE;
const _: () = assert!(size_of::<RawHeader>() == HEADER_SIZE);
const _: () = assert!(size_of::<RawRequest>() == REQUEST_SIZE);
const _: () = assert!(size_of::<RawResponse>() == RESPONSE_SIZE);
const _: () = assert!(size_of::<RawErrorPayload>() == PAYLOAD_SIZE);
const _: () = assert!(size_of::<RawMemoryRegisteredPayload>() == PAYLOAD_SIZE);
const _: () = assert!(size_of::<RawVersionPayload>() == PAYLOAD_SIZE);
const _: () = assert!(size_of::<RawDeviceCounter>() == 16);
const _: () = assert!(size_of::<RawStatsPayload>() == PAYLOAD_SIZE);
const _: () = assert!(size_of::<RawEventPayload>() == PAYLOAD_SIZE);
const _: () = assert!(size_of::<RawQueueStatus>() == 40);
const _: () = assert!(size_of::<RawQueuesPayload>() == PAYLOAD_SIZE);
const _: () = assert!(align_of::<RawRequest>() == 1 && align_of::<RawResponse>() == 1);

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

/// Event kind numbers (offset 16 of an event). Stable: never renumbered.
pub mod event_kind {
    /// [`Event::PoweredOff`](super::Event::PoweredOff).
    pub const POWERED_OFF: u32 = 1;
    /// [`Event::ResetRequested`](super::Event::ResetRequested).
    pub const RESET_REQUESTED: u32 = 2;
    /// [`Event::Crashed`](super::Event::Crashed).
    pub const CRASHED: u32 = 3;
    /// [`Event::Paused`](super::Event::Paused).
    pub const PAUSED: u32 = 4;
    /// [`Event::Resumed`](super::Event::Resumed).
    pub const RESUMED: u32 = 5;
    /// [`Event::BalloonChanged`](super::Event::BalloonChanged).
    pub const BALLOON_CHANGED: u32 = 6;
}

/// Device kind numbers used in [`DeviceCounter::device_kind`]. Stable: never renumbered.
pub mod device_kind {
    /// 16550 UART.
    pub const SERIAL: u16 = 1;
    /// i8042 keyboard controller.
    pub const I8042: u16 = 2;
    /// CMOS / RTC.
    pub const CMOS: u16 = 3;
    /// ACPI power management block.
    pub const ACPI_PM: u16 = 4;
    /// Virtio balloon.
    pub const BALLOON: u16 = 5;
    /// Virtio block.
    pub const BLOCK: u16 = 6;
    /// Virtio net.
    pub const NET: u16 = 7;
    /// Virtio entropy source; protocol version 2 and later.
    pub const RNG: u16 = 8;
}

/// Bits of a queue's [`QueueStatus`] state (`state` in the wire entry). Stable.
pub mod queue_state {
    /// The device is running on the queue (the driver set it up and the device started).
    pub const ACTIVE: u32 = 1;
    /// The driver negotiated EVENT_IDX (`used_event` is meaningful).
    pub const EVENT_IDX: u32 = 2;
    /// The device found the queue malformed and asked for a reset (DEVICE_NEEDS_RESET).
    pub const BROKEN: u32 = 4;
    /// Every bit defined so far.
    pub const ALL: u32 = ACTIVE | EVENT_IDX | BROKEN;
}

/// Counter numbers used in [`DeviceCounter::counter`]. Stable: never renumbered.
pub mod counter_id {
    /// Guest reads of the device's registers.
    pub const REG_READS: u32 = 1;
    /// Guest writes to the device's registers.
    pub const REG_WRITES: u32 = 2;
    /// Interrupts the device raised.
    pub const INTERRUPTS: u32 = 3;
    /// Bytes the device received from the host side (e.g. serial input).
    pub const BYTES_IN: u32 = 4;
    /// Bytes the device sent to the host side (e.g. serial output).
    pub const BYTES_OUT: u32 = 5;
    /// Bytes dropped (e.g. a full FIFO).
    pub const BYTES_DROPPED: u32 = 6;
    /// Requests the device served (e.g. block reads, writes and flushes).
    pub const REQUESTS: u32 = 7;
    /// Requests that failed on the host side (e.g. an I/O error on a disk image).
    pub const IO_ERRORS: u32 = 8;
    /// Free guest memory in bytes, as the guest last reported it (balloon statistics).
    pub const GUEST_MEMORY_FREE: u32 = 9;
    /// Total guest memory in bytes, as the guest last reported it (balloon statistics).
    pub const GUEST_MEMORY_TOTAL: u32 = 10;
    /// Guest memory available to start new applications, in bytes, as the guest last
    /// reported it (balloon statistics; Linux's MemAvailable).
    pub const GUEST_MEMORY_AVAILABLE: u32 = 11;
    /// Cache flushes the device carried out (a disk's `fdatasync` on the guest's FLUSH).
    pub const FLUSHES: u32 = 12;
    /// Packets the device received from the host side and delivered to the guest.
    pub const PACKETS_IN: u32 = 13;
    /// Packets the guest sent that the device passed to the host side.
    pub const PACKETS_OUT: u32 = 14;
    /// Packets dropped, either way (e.g. a frame larger than the guest's buffers).
    pub const PACKETS_DROPPED: u32 = 15;
    /// Chains the guest posted malformed, rejected without touching the host side.
    pub const INVALID_CHAINS: u32 = 16;
}

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
        }
    }

    /// The oldest protocol version that has this request.
    pub fn min_version(&self) -> u16 {
        match self {
            Request::GetQueues => 2,
            Request::ListMemory { .. } => 3,
            _ => 1,
        }
    }

    /// Number of file descriptors this request must carry (0 or 1).
    pub fn fds_expected(&self) -> usize {
        match self {
            Request::RegisterMemory { .. } => 1,
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

fn version_supported(version: u16) -> bool {
    (MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).contains(&version)
}

fn check_reserved(bytes: &[u8], base_offset: usize) -> Result<(), DecodeError> {
    match bytes.iter().position(|b| *b != 0) {
        None => Ok(()),
        Some(i) => Err(DecodeError::ReservedNonZero {
            offset: base_offset + i,
        }),
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

/// VM exits counted by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmExits {
    /// Port I/O exits.
    pub io: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// HLT exits.
    pub hlt: u64,
    /// Shutdown (triple fault) exits.
    pub shutdown: u64,
    /// System events (reset, power off).
    pub system_event: u64,
    /// Failed VM entries.
    pub fail_entry: u64,
    /// KVM internal errors.
    pub internal_error: u64,
    /// Every other exit reason.
    pub other: u64,
}

impl VmExits {
    fn to_array(self) -> [u64; VM_EXIT_KINDS] {
        [
            self.io,
            self.mmio,
            self.hlt,
            self.shutdown,
            self.system_event,
            self.fail_entry,
            self.internal_error,
            self.other,
        ]
    }

    fn from_array(a: [u64; VM_EXIT_KINDS]) -> VmExits {
        let [
            io,
            mmio,
            hlt,
            shutdown,
            system_event,
            fail_entry,
            internal_error,
            other,
        ] = a;
        VmExits {
            io,
            mmio,
            hlt,
            shutdown,
            system_event,
            fail_entry,
            internal_error,
            other,
        }
    }
}

/// The VMM process's resource usage (`getrusage(RUSAGE_SELF)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User CPU time, microseconds.
    pub utime_us: u64,
    /// System CPU time, microseconds.
    pub stime_us: u64,
    /// Peak resident set size, KiB.
    pub maxrss_kib: u64,
    /// Minor page faults.
    pub minflt: u64,
    /// Major page faults.
    pub majflt: u64,
}

/// One per-device counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounter {
    /// Device kind, from [`device_kind`].
    pub device_kind: u16,
    /// Instance number among devices of that kind.
    pub device_id: u16,
    /// Counter number, from [`counter_id`].
    pub counter: u32,
    /// Value.
    pub value: u64,
}

/// At most [`MAX_DEVICE_COUNTERS`] device counters: a bounded list, so a [`Stats`] always
/// fits its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCounters {
    len: usize,
    entries: [DeviceCounter; MAX_DEVICE_COUNTERS],
    omitted: u32,
}

impl Default for DeviceCounters {
    fn default() -> Self {
        DeviceCounters {
            len: 0,
            entries: [DeviceCounter::default(); MAX_DEVICE_COUNTERS],
            omitted: 0,
        }
    }
}

/// [`DeviceCounters::push`] found the list full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("stats carry at most {MAX_DEVICE_COUNTERS} device counters")]
pub struct CountersFull;

impl DeviceCounters {
    /// Appends a counter, or reports that all [`MAX_DEVICE_COUNTERS`] slots are used (and
    /// counts it as [omitted](DeviceCounters::omitted)).
    pub fn push(&mut self, counter: DeviceCounter) -> Result<(), CountersFull> {
        let Some(slot) = self.entries.get_mut(self.len) else {
            self.omitted = self.omitted.saturating_add(1);
            return Err(CountersFull);
        };
        *slot = counter;
        self.len += 1;
        Ok(())
    }

    /// The counters pushed so far.
    pub fn as_slice(&self) -> &[DeviceCounter] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no counters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counters that did not fit (reported from protocol version 3 on).
    pub fn omitted(&self) -> u32 {
        self.omitted
    }
}

/// Statistics answered to [`Request::GetStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Time since the VM was created, nanoseconds.
    pub uptime_ns: u64,
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Guest RAM, bytes.
    pub guest_memory_bytes: u64,
    /// Balloon target, pages.
    pub balloon_target_pages: u64,
    /// Pages the balloon actually holds.
    pub balloon_actual_pages: u64,
    /// VM exits by kind, summed over vCPUs.
    pub exits: VmExits,
    /// The VMM process's resource usage.
    pub rusage: ProcessUsage,
    /// Per-device counters.
    pub devices: DeviceCounters,
}

/// The state of one virtqueue, as [`Request::GetQueues`] reports it.
///
/// `driver_avail - device_avail` (wrapping) is how many chains the driver made available
/// that the device has not taken yet: more than 0 for long, while the device is idle, is a
/// missed notification. `device_avail - device_used` is how many the device holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStatus {
    /// Device kind, from [`device_kind`].
    pub device_kind: u16,
    /// Instance number among devices of that kind.
    pub device_id: u16,
    /// Queue index as the driver numbers it.
    pub queue: u16,
    /// Queue size the driver set; 0 while inactive.
    pub size: u16,
    /// [`queue_state`] bits.
    pub state: u32,
    /// The driver's `avail.idx` in guest memory.
    pub driver_avail: u16,
    /// Index of the next available entry the device will take.
    pub device_avail: u16,
    /// The `used.idx` the device published.
    pub device_used: u16,
    /// The driver's `used_event` with EVENT_IDX, else 0.
    pub used_event: u16,
    /// Notifications the device consumed, since the VM started.
    pub notifications: u64,
    /// Interrupts the device raised for the queue, since the VM started.
    pub interrupts: u64,
}

impl QueueStatus {
    /// Chains the driver made available that the device has not taken yet.
    pub fn waiting(&self) -> u16 {
        self.driver_avail.wrapping_sub(self.device_avail)
    }

    /// Chains the device took and has not returned yet.
    pub fn in_flight(&self) -> u16 {
        self.device_avail.wrapping_sub(self.device_used)
    }
}

/// At most [`MAX_QUEUE_STATUSES`] queue states: a bounded list, so a reply always fits its
/// message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStatuses {
    len: usize,
    entries: [QueueStatus; MAX_QUEUE_STATUSES],
    omitted: u32,
}

impl Default for QueueStatuses {
    fn default() -> Self {
        QueueStatuses {
            len: 0,
            entries: [QueueStatus::default(); MAX_QUEUE_STATUSES],
            omitted: 0,
        }
    }
}

/// [`QueueStatuses::push`] found the list full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("a reply describes at most {MAX_QUEUE_STATUSES} queues")]
pub struct QueuesFull;

impl QueueStatuses {
    /// Appends a queue's state, or reports that all [`MAX_QUEUE_STATUSES`] slots are used
    /// (and counts it as [omitted](QueueStatuses::omitted)).
    pub fn push(&mut self, status: QueueStatus) -> Result<(), QueuesFull> {
        let Some(slot) = self.entries.get_mut(self.len) else {
            self.omitted = self.omitted.saturating_add(1);
            return Err(QueuesFull);
        };
        *slot = status;
        self.len += 1;
        Ok(())
    }

    /// The queue states pushed so far.
    pub fn as_slice(&self) -> &[QueueStatus] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Number of queues.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no queues.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues that did not fit (reported from protocol version 3 on).
    pub fn omitted(&self) -> u32 {
        self.omitted
    }
}

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

fn put<T: IntoBytes + Immutable>(payload: &mut [u8; PAYLOAD_SIZE], value: &T) {
    payload.copy_from_slice(value.as_bytes());
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

/// What a reply in `version` says was left out: nothing before version 3, which has no
/// field for it.
fn omitted_in(version: u16, omitted: u32) -> U32 {
    U32::new(if version >= 3 { omitted } else { 0 })
}

fn encode_queues(payload: &mut [u8; PAYLOAD_SIZE], q: &QueueStatuses, version: u16) {
    let mut queues = [RawQueueStatus::default(); MAX_QUEUE_STATUSES];
    for (raw, s) in queues.iter_mut().zip(q.as_slice()) {
        *raw = RawQueueStatus {
            device_kind: U16::new(s.device_kind),
            device_id: U16::new(s.device_id),
            queue: U16::new(s.queue),
            size: U16::new(s.size),
            state: U32::new(s.state),
            reserved: U32::ZERO,
            driver_avail: U16::new(s.driver_avail),
            device_avail: U16::new(s.device_avail),
            device_used: U16::new(s.device_used),
            used_event: U16::new(s.used_event),
            notifications: U64::new(s.notifications),
            interrupts: U64::new(s.interrupts),
        };
    }
    put(
        payload,
        &RawQueuesPayload {
            count: U32::new(q.len() as u32),
            omitted: omitted_in(version, q.omitted),
            reserved0: [0; 8],
            queues,
            reserved: [0; 32],
        },
    );
}

fn encode_stats(payload: &mut [u8; PAYLOAD_SIZE], s: &Stats, version: u16) {
    let mut devices = [RawDeviceCounter::default(); MAX_DEVICE_COUNTERS];
    for (raw, c) in devices.iter_mut().zip(s.devices.as_slice()) {
        *raw = RawDeviceCounter {
            device_kind: U16::new(c.device_kind),
            device_id: U16::new(c.device_id),
            counter: U32::new(c.counter),
            value: U64::new(c.value),
        };
    }
    put(
        payload,
        &RawStatsPayload {
            uptime_ns: U64::new(s.uptime_ns),
            guest_memory_bytes: U64::new(s.guest_memory_bytes),
            balloon_target_pages: U64::new(s.balloon_target_pages),
            balloon_actual_pages: U64::new(s.balloon_actual_pages),
            vcpu_count: U32::new(s.vcpu_count),
            device_counter_count: U32::new(s.devices.len() as u32),
            exits: s.exits.to_array().map(U64::new),
            utime_us: U64::new(s.rusage.utime_us),
            stime_us: U64::new(s.rusage.stime_us),
            maxrss_kib: U64::new(s.rusage.maxrss_kib),
            minflt: U64::new(s.rusage.minflt),
            majflt: U64::new(s.rusage.majflt),
            device_counters_omitted: omitted_in(version, s.devices.omitted),
            reserved: [0; 92],
            devices,
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

fn read_payload<T: FromBytes>(payload: &[u8]) -> Result<T, DecodeError> {
    // Every payload struct is exactly PAYLOAD_SIZE bytes (asserted above), so this cannot fail;
    // the error path exists only to avoid a panic.
    T::read_from_bytes(payload).map_err(|_| DecodeError::BadSize {
        received: payload.len() + HEADER_SIZE,
        expected: RESPONSE_SIZE,
    })
}

/// The omitted count at `offset` of a reply in `version`: reserved (0) before version 3.
fn decode_omitted(raw: U32, version: u16, offset: usize) -> Result<u32, DecodeError> {
    match raw.get() {
        n if version >= 3 => Ok(n),
        0 => Ok(0),
        _ => Err(DecodeError::ReservedNonZero { offset }),
    }
}

fn decode_queues(payload: &[u8], version: u16) -> Result<QueueStatuses, DecodeError> {
    let q = read_payload::<RawQueuesPayload>(payload)?;
    let omitted = decode_omitted(q.omitted, version, 20)?;
    check_reserved(&q.reserved0, 24)?;
    check_reserved(&q.reserved, 992)?;
    let count = q.count.get() as usize;
    if count > MAX_QUEUE_STATUSES {
        return Err(DecodeError::InvalidArgument(
            "queue count exceeds MAX_QUEUE_STATUSES",
        ));
    }
    let mut queues = QueueStatuses {
        omitted,
        ..QueueStatuses::default()
    };
    for (i, raw) in q.queues.iter().enumerate() {
        let base = 32 + 40 * i;
        if i >= count {
            check_reserved(raw.as_bytes(), base)?;
            continue;
        }
        if raw.reserved.get() != 0 {
            return Err(DecodeError::ReservedNonZero { offset: base + 12 });
        }
        let state = raw.state.get();
        if state & !queue_state::ALL != 0 {
            return Err(DecodeError::ReservedNonZero { offset: base + 8 });
        }
        queues
            .push(QueueStatus {
                device_kind: raw.device_kind.get(),
                device_id: raw.device_id.get(),
                queue: raw.queue.get(),
                size: raw.size.get(),
                state,
                driver_avail: raw.driver_avail.get(),
                device_avail: raw.device_avail.get(),
                device_used: raw.device_used.get(),
                used_event: raw.used_event.get(),
                notifications: raw.notifications.get(),
                interrupts: raw.interrupts.get(),
            })
            .map_err(|_| DecodeError::InvalidArgument("too many queues"))?;
    }
    Ok(queues)
}

fn decode_stats(payload: &[u8], version: u16) -> Result<Stats, DecodeError> {
    let s = read_payload::<RawStatsPayload>(payload)?;
    let omitted = decode_omitted(s.device_counters_omitted, version, 160)?;
    check_reserved(&s.reserved, 164)?;
    let count = s.device_counter_count.get() as usize;
    if count > MAX_DEVICE_COUNTERS {
        return Err(DecodeError::InvalidArgument(
            "device counter count exceeds MAX_DEVICE_COUNTERS",
        ));
    }
    let mut devices = DeviceCounters {
        omitted,
        ..DeviceCounters::default()
    };
    for (i, raw) in s.devices.iter().enumerate() {
        if i < count {
            devices
                .push(DeviceCounter {
                    device_kind: raw.device_kind.get(),
                    device_id: raw.device_id.get(),
                    counter: raw.counter.get(),
                    value: raw.value.get(),
                })
                .map_err(|_| DecodeError::InvalidArgument("too many device counters"))?;
        } else {
            check_reserved(raw.as_bytes(), 256 + 16 * i)?;
        }
    }
    Ok(Stats {
        uptime_ns: s.uptime_ns.get(),
        vcpu_count: s.vcpu_count.get(),
        guest_memory_bytes: s.guest_memory_bytes.get(),
        balloon_target_pages: s.balloon_target_pages.get(),
        balloon_actual_pages: s.balloon_actual_pages.get(),
        exits: VmExits::from_array(s.exits.map(|v| v.get())),
        rusage: ProcessUsage {
            utime_us: s.utime_us.get(),
            stime_us: s.stime_us.get(),
            maxrss_kib: s.maxrss_kib.get(),
            minflt: s.minflt.get(),
            majflt: s.majflt.get(),
        },
        devices,
    })
}
