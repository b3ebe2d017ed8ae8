//! The frozen little-endian layouts of every message: the header, the request, the
//! response and each reply or event payload, with their compile-time size checks. Owns
//! the helpers that read and write a payload and check its reserved bytes; the typed
//! messages built on them are the other `wire` modules'.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{
    DecodeError, HEADER_SIZE, MAX_DEVICE_COUNTERS, MAX_QUEUE_STATUSES, REQUEST_SIZE, RESPONSE_SIZE,
    VM_EXIT_KINDS,
};
#[cfg(doc)]
use super::{
    ErrorKind, Response, ServerMessage, VmExits, counter_id, device_kind, event_kind, queue_state,
    request_type, response_type,
};

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

pub(super) const PAYLOAD_SIZE: usize = RESPONSE_SIZE - HEADER_SIZE;
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

pub(super) fn check_reserved(bytes: &[u8], base_offset: usize) -> Result<(), DecodeError> {
    match bytes.iter().position(|b| *b != 0) {
        None => Ok(()),
        Some(i) => Err(DecodeError::ReservedNonZero {
            offset: base_offset + i,
        }),
    }
}

pub(super) fn put<T: IntoBytes + Immutable>(payload: &mut [u8; PAYLOAD_SIZE], value: &T) {
    payload.copy_from_slice(value.as_bytes());
}

pub(super) fn read_payload<T: FromBytes>(payload: &[u8]) -> Result<T, DecodeError> {
    // Every payload struct is exactly PAYLOAD_SIZE bytes (asserted above), so this cannot fail;
    // the error path exists only to avoid a panic.
    T::read_from_bytes(payload).map_err(|_| DecodeError::BadSize {
        received: payload.len() + HEADER_SIZE,
        expected: RESPONSE_SIZE,
    })
}

/// What a reply in `version` says was left out: nothing before version 3, which has no
/// field for it.
pub(super) fn omitted_in(version: u16, omitted: u32) -> U32 {
    U32::new(if version >= 3 { omitted } else { 0 })
}

/// The omitted count at `offset` of a reply in `version`: reserved (0) before version 3.
pub(super) fn decode_omitted(raw: U32, version: u16, offset: usize) -> Result<u32, DecodeError> {
    match raw.get() {
        n if version >= 3 => Ok(n),
        0 => Ok(0),
        _ => Err(DecodeError::ReservedNonZero { offset }),
    }
}
