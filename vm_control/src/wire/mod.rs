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

mod console;
mod error;
mod memory_list;
mod queues;
mod raw;
mod request;
mod server_message;
mod stats;

pub use console::{
    CONSOLE_FRAME_HEADER, CONSOLE_FRAME_VERSION, ConsoleAttached, ConsoleFrame, MAX_CONSOLE_FRAME,
    MAX_CONSOLE_PAYLOAD, RawConsoleAttachedPayload, attach_flags, detach_reason, frame_kind,
};
pub use error::{DecodeError, ErrorKind, ErrorReply};
pub use memory_list::{
    MAX_MEMORY_LIST_ENTRIES, MemoryList, MemoryListFull, RawMemoryEntry, RawMemoryListPayload,
    RegisteredRegion,
};
pub use queues::{QueueStatus, QueueStatuses, QueuesFull};
pub use raw::{
    RawDeviceCounter, RawErrorPayload, RawEventPayload, RawHeader, RawMemoryRegisteredPayload,
    RawQueueStatus, RawQueuesPayload, RawRequest, RawResponse, RawStatsPayload, RawVersionPayload,
};
pub use request::{Request, check_fds, peek_request_id, reject, reply_version};
pub use server_message::{Event, Response, ServerMessage};
pub use stats::{CountersFull, DeviceCounter, DeviceCounters, ProcessUsage, Stats, VmExits};
#[cfg(doc)]
use zerocopy::IntoBytes;

/// The protocol version this crate speaks when it sends, unless the peer needs an older one.
///
/// Version 2 added [`Request::GetQueues`] and its [`Response::Queues`] reply, and device
/// kind [`device_kind::RNG`]; every message of version 1 means the same in version 2.
/// Version 3 added [`Request::ListMemory`] and its [`Response::MemoryList`] reply, and the
/// counts of device counters and queues a full `Stats` or `Queues` reply left out.
/// Version 4 added [`Request::ConsoleAttach`] and its [`Response::ConsoleAttached`] reply.
/// Version 5 added [`Request::Snapshot`] (answered by [`Response::Ok`]).
/// Version 6 added the [`queue_state::VHOST`] bit of a `Queues` reply's entries (queues
/// the host kernel serves, such as virtio-vsock's); replies in older versions leave such
/// queues out.
pub const PROTOCOL_VERSION: u16 = 6;
/// The oldest protocol version this crate accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The newest protocol version this crate accepts.
pub const MAX_PROTOCOL_VERSION: u16 = 6;

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
    /// [`Request::ConsoleAttach`](super::Request::ConsoleAttach) (version 4).
    pub const CONSOLE_ATTACH: u16 = 13;
    /// [`Request::Snapshot`](super::Request::Snapshot) (version 5).
    pub const SNAPSHOT: u16 = 14;
}

/// Bits of a [`Request::Snapshot`]'s `flags`. Stable.
pub mod snapshot_flags {
    /// End the VM after a snapshot that was written whole (the reply comes first); without
    /// it the VM resumes (or stays paused, if it was paused before the request).
    pub const STOP: u32 = 1;
    /// Every bit defined so far.
    pub const ALL: u32 = STOP;
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
    /// [`Response::ConsoleAttached`](super::Response::ConsoleAttached) (version 4).
    pub const CONSOLE_ATTACHED: u16 = 9;
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
    /// Virtio console (`--console`, the guest's `hvc0`). Added within protocol version 3:
    /// a client that does not know it shows it by number, as any unknown kind.
    pub const CONSOLE: u16 = 9;
    /// Virtio vsock (`--vsock`), served by the host kernel's vhost-vsock; its queues are
    /// in `Queues` replies from protocol version 6 on (see [`super::queue_state::VHOST`]).
    pub const VSOCK: u16 = 10;
}

/// Bits of a queue's [`QueueStatus`] state (`state` in the wire entry). Stable.
pub mod queue_state {
    /// The device is running on the queue (the driver set it up and the device started).
    pub const ACTIVE: u32 = 1;
    /// The driver negotiated EVENT_IDX (`used_event` is meaningful).
    pub const EVENT_IDX: u32 = 2;
    /// The device found the queue malformed and asked for a reset (DEVICE_NEEDS_RESET).
    pub const BROKEN: u32 = 4;
    /// The host kernel (vhost) serves the queue, not the VMM: what the device has taken
    /// (`device_avail`) and the notifications it consumed are not known to the VMM and
    /// are sent as 0; `device_used` is the `used.idx` the kernel published in guest
    /// memory, read when the reply is made, and `interrupts` the ones the VMM relayed.
    /// Protocol version 6 and later: a reply in an older version leaves such queues out.
    pub const VHOST: u32 = 8;
    /// Every bit defined so far.
    pub const ALL: u32 = ACTIVE | EVENT_IDX | BROKEN | VHOST;
    /// The bits a reply in protocol `version` may carry.
    pub const fn known_in(version: u16) -> u32 {
        if version >= 6 { ALL } else { ALL & !VHOST }
    }
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

fn version_supported(version: u16) -> bool {
    (MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).contains(&version)
}
