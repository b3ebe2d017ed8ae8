//! The `MemoryList` reply (protocol version 3): the memory regions registered with the
//! VMM, so a region whose client went away can be found and unregistered. Owns the
//! payload's layout; the rest of the message is `wire`'s.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 16 | 4 | `total`: regions registered in all |
//! | 20 | 4 | `count`: entries that follow, at most [`MAX_MEMORY_LIST_ENTRIES`] |
//! | 24 | 8 | reserved |
//! | 32 | 41 × 24 | entries: `slot: u32`, reserved `u32`, `guest_addr: u64`, `size: u64` |
//! | 1016 | 8 | reserved |

use thiserror::Error;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::DecodeError;
use super::raw::{PAYLOAD_SIZE, check_reserved, read_payload};

/// Most regions one [`MemoryList`] reply carries; a client asks for the rest with
/// `ListMemory { from_slot }` past the last slot it got.
pub const MAX_MEMORY_LIST_ENTRIES: usize = 41;

/// One registered region on the wire.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawMemoryEntry {
    /// The region's KVM slot.
    pub slot: U32,
    /// Reserved, 0.
    pub reserved: U32,
    /// Guest physical address of its first byte.
    pub guest_addr: U64,
    /// Its size in bytes.
    pub size: U64,
}

/// The `MemoryList` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawMemoryListPayload {
    /// Regions registered in all.
    pub total: U32,
    /// Valid entries.
    pub count: U32,
    /// Reserved, 0.
    pub reserved0: [u8; 8],
    /// Entries, in slot order; those past `count` are all 0.
    pub entries: [RawMemoryEntry; MAX_MEMORY_LIST_ENTRIES],
    /// Reserved, 0.
    pub reserved: [u8; 8],
}

const _: () = assert!(size_of::<RawMemoryEntry>() == 24);
const _: () = assert!(size_of::<RawMemoryListPayload>() == PAYLOAD_SIZE);

/// One registered region as `ListMemory` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisteredRegion {
    /// The slot to pass to `UnregisterMemory`.
    pub slot: u32,
    /// Guest physical address of its first byte.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The answer to `ListMemory`: up to [`MAX_MEMORY_LIST_ENTRIES`] regions and how many are
/// registered in all (more than the entries when the list did not fit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryList {
    /// Regions registered in all, listed here or not.
    pub total: u32,
    len: usize,
    entries: [RegisteredRegion; MAX_MEMORY_LIST_ENTRIES],
}

impl Default for MemoryList {
    fn default() -> Self {
        MemoryList {
            total: 0,
            len: 0,
            entries: [RegisteredRegion::default(); MAX_MEMORY_LIST_ENTRIES],
        }
    }
}

/// [`MemoryList::push`] found the list full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("a reply lists at most {MAX_MEMORY_LIST_ENTRIES} regions")]
pub struct MemoryListFull;

impl MemoryList {
    /// Appends a region, or reports that the reply is full.
    pub fn push(&mut self, region: RegisteredRegion) -> Result<(), MemoryListFull> {
        let slot = self.entries.get_mut(self.len).ok_or(MemoryListFull)?;
        *slot = region;
        self.len += 1;
        Ok(())
    }

    /// The regions listed.
    pub fn as_slice(&self) -> &[RegisteredRegion] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Whether regions exist beyond those listed (ask again from the last slot + 1).
    pub fn truncated(&self) -> bool {
        self.total as usize > self.len
    }
}

pub(super) fn encode(payload: &mut [u8; PAYLOAD_SIZE], list: &MemoryList) {
    let mut entries = [RawMemoryEntry::default(); MAX_MEMORY_LIST_ENTRIES];
    for (raw, region) in entries.iter_mut().zip(list.as_slice()) {
        *raw = RawMemoryEntry {
            slot: U32::new(region.slot),
            reserved: U32::ZERO,
            guest_addr: U64::new(region.guest_addr),
            size: U64::new(region.size),
        };
    }
    let raw = RawMemoryListPayload {
        total: U32::new(list.total),
        count: U32::new(list.len as u32),
        reserved0: [0; 8],
        entries,
        reserved: [0; 8],
    };
    payload.copy_from_slice(raw.as_bytes());
}

pub(super) fn decode(payload: &[u8]) -> Result<MemoryList, DecodeError> {
    let raw = read_payload::<RawMemoryListPayload>(payload)?;
    check_reserved(&raw.reserved0, 24)?;
    check_reserved(&raw.reserved, 1016)?;
    let count = raw.count.get() as usize;
    if count > MAX_MEMORY_LIST_ENTRIES || count > raw.total.get() as usize {
        return Err(DecodeError::InvalidArgument(
            "memory list count exceeds its bound or its total",
        ));
    }
    let mut list = MemoryList {
        total: raw.total.get(),
        ..MemoryList::default()
    };
    for (i, entry) in raw.entries.iter().enumerate() {
        let base = 32 + 24 * i;
        if i >= count {
            check_reserved(entry.as_bytes(), base)?;
            continue;
        }
        if entry.reserved.get() != 0 {
            return Err(DecodeError::ReservedNonZero { offset: base + 4 });
        }
        list.push(RegisteredRegion {
            slot: entry.slot.get(),
            guest_addr: entry.guest_addr.get(),
            size: entry.size.get(),
        })
        .map_err(|_| DecodeError::InvalidArgument("too many memory regions"))?;
    }
    Ok(list)
}
