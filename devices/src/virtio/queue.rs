//! The split virtqueue (virtio 1.2 section 2.7), device side.
//!
//! [`Queue`] owns one queue's driver-programmed layout (size and ring
//! addresses, set through the transport), the device's ring cursors, and the
//! parsing of descriptor chains. Everything in guest memory is untrusted:
//! ring addresses are checked for alignment and placement at activation,
//! every descriptor's `addr + len` is checked for overflow and placement,
//! chains are bounded by the table size (which also rules out loops),
//! indirect tables are checked the same way and may not nest. Any violation
//! is a [`QueueError`] the device turns into a failed request or
//! DEVICE_NEEDS_RESET; nothing here panics or loops on guest data.
//!
//! EVENT_IDX (virtio 1.2 section 2.7.7) is supported: the device publishes
//! `avail_event` when it goes idle and honours the driver's `used_event`.

use std::sync::atomic::{Ordering, fence};

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

/// Descriptor continues via the `next` field.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Buffer is device write-only (otherwise device read-only).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Buffer holds a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Driver asks not to be interrupted (ignored once EVENT_IDX is negotiated).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Bytes per descriptor.
const DESC_SIZE: u64 = 16;
/// [`DESC_SIZE`] as the `u32` descriptor lengths are measured in.
const DESC_SIZE_U32: u32 = 16;
const _: () = assert!(DESC_SIZE_U32 as u64 == DESC_SIZE);

/// Byte offsets and lengths in the split-virtqueue rings (virtio 1.2 section
/// 2.7). Every input is a `u16` (a queue size or a ring slot), so none of
/// these can come near overflowing a `u64`: the largest is 6 + 8 * 65535.
#[allow(clippy::arithmetic_side_effects)]
mod layout {
    use super::DESC_SIZE;

    /// Bytes of a descriptor table of `size` entries.
    pub(super) fn desc_table_len(size: u16) -> u64 {
        DESC_SIZE * u64::from(size)
    }

    /// Bytes of an available ring of `size` entries: flags, idx, ring, used_event.
    pub(super) fn avail_ring_len(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }

    /// Bytes of a used ring of `size` entries: flags, idx, ring, avail_event.
    pub(super) fn used_ring_len(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }

    /// Offset of available-ring entry `slot`.
    pub(super) fn avail_entry(slot: u16) -> u64 {
        4 + 2 * u64::from(slot)
    }

    /// Offset of used-ring element `slot`.
    pub(super) fn used_entry(slot: u16) -> u64 {
        4 + 8 * u64::from(slot)
    }

    /// Offset of `used_event` in the available ring: just past its `size` entries.
    pub(super) fn used_event(size: u16) -> u64 {
        avail_entry(size)
    }

    /// Offset of `avail_event` in the used ring: just past its `size` elements.
    pub(super) fn avail_event(size: u16) -> u64 {
        used_entry(size)
    }
}
/// Largest split queue the spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest indirect table we accept, in descriptors. The spec bounds it only
/// by `len`; this keeps one request's parse time bounded.
pub const MAX_INDIRECT_DESCRIPTORS: u32 = 1024;

/// Why a queue or one of its chains is unusable.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The driver set a size that is zero, not a power of two or too big.
    #[error("invalid queue size {size} (max {max})")]
    InvalidSize {
        /// Size written by the driver.
        size: u16,
        /// Largest size the device supports.
        max: u16,
    },
    /// A ring is misaligned or not entirely inside guest memory.
    #[error("{ring} ring at {addr:#x} is misaligned or outside guest memory")]
    InvalidRing {
        /// Which ring.
        ring: &'static str,
        /// Its guest address.
        addr: u64,
    },
    /// The queue was used before it was set up and enabled.
    #[error("queue is not ready")]
    NotReady,
    /// `avail.idx` moved more than a full ring past what the device consumed.
    #[error("avail index {avail} is more than a ring ahead of {next}")]
    InvalidAvailIndex {
        /// Index the driver published.
        avail: u16,
        /// Next index the device would consume.
        next: u16,
    },
    /// A descriptor index is outside its table.
    #[error("descriptor index {index} outside table of {len}")]
    DescriptorIndex {
        /// Offending index.
        index: u32,
        /// Table length in descriptors.
        len: u32,
    },
    /// The chain visits more descriptors than its table holds: a loop.
    #[error("descriptor chain longer than its table ({0} descriptors)")]
    ChainTooLong(u32),
    /// `addr + len` wraps around the address space.
    #[error("descriptor {addr:#x}+{len:#x} overflows")]
    DescriptorOverflow {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The buffer is not entirely inside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    DescriptorOutOfMemory {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// Indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC, or inside an
    /// indirect table.
    #[error("indirect descriptor not allowed here")]
    IndirectNotAllowed,
    /// Indirect descriptor that also has NEXT set (forbidden by 2.7.5.3.1).
    #[error("indirect descriptor with NEXT flag")]
    IndirectWithNext,
    /// Indirect table length zero, not a multiple of 16, or too long.
    #[error("invalid indirect table length {0}")]
    InvalidIndirectLength(u32),
    /// A device-readable buffer follows a device-writable one (2.7.4.2).
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// One validated buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest address; `addr..addr + len` lies in guest memory.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device may write (otherwise only read) it.
    pub writable: bool,
}

/// A validated chain, with indirect tables flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorChain {
    /// Head index, to hand back in the used ring.
    pub head: u16,
    /// Buffers in order: all readable ones, then all writable ones.
    pub descriptors: Vec<Descriptor>,
}

impl DescriptorChain {
    /// The bytes of all its buffers, readable and writable.
    pub fn len(&self) -> u64 {
        self.descriptors.iter().map(|d| u64::from(d.len)).sum()
    }

    /// Whether its buffers hold no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| d.writable)
    }
}

/// Where a descriptor table lives and how many entries it has.
#[derive(Clone, Copy)]
struct Table {
    addr: GuestAddress,
    len: u32,
}

/// One split virtqueue; see the module docs.
#[derive(Debug, Clone)]
pub struct Queue {
    max_size: u16,
    /// Size the driver chose (defaults to `max_size`).
    pub size: u16,
    /// Driver wrote `queue_enable = 1`.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Driver (available) ring address.
    pub avail_ring: u64,
    /// Device (used) ring address.
    pub used_ring: u64,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    next_avail: u16,
    next_used: u16,
    /// `next_used` when we last decided whether to interrupt.
    signalled_used: u16,
}

/// Value of an unassigned MSI-X vector (virtio 1.2 section 4.1.5.1.2).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

impl Queue {
    /// Creates a queue supporting up to `max_size` entries (a power of two).
    pub fn new(max_size: u16) -> Queue {
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            event_idx: false,
            indirect: false,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
        }
    }

    /// Largest size the device supports.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// Index of the next avail entry the device takes.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Index of the next used entry the device fills: the `used.idx` it published.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// `next_used` when the device last decided whether to interrupt the driver.
    pub fn signalled_used(&self) -> u16 {
        self.signalled_used
    }

    /// Puts the device's ring positions back, as a snapshot saved them: the next avail
    /// entry to take, the `used.idx` published, and the EVENT_IDX signalling state. Any
    /// values are safe: the ring arithmetic wraps, and a driver index more than a ring
    /// ahead is reported by [`Queue::pop`].
    pub fn set_positions(&mut self, next_avail: u16, next_used: u16, signalled_used: u16) {
        self.next_avail = next_avail;
        self.next_used = next_used;
        self.signalled_used = signalled_used;
    }

    /// Returns the queue to its state after device reset.
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Checks the driver's configuration against guest memory: power-of-two
    /// size within bounds and each ring aligned and fully inside memory.
    pub fn validate(&self, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size || size > MAX_QUEUE_SIZE {
            return Err(QueueError::InvalidSize {
                size,
                max: self.max_size,
            });
        }
        check_ring(
            mem,
            "descriptor",
            self.desc_table,
            16,
            layout::desc_table_len(size),
        )?;
        check_ring(
            mem,
            "available",
            self.avail_ring,
            2,
            layout::avail_ring_len(size),
        )?;
        check_ring(mem, "used", self.used_ring, 4, layout::used_ring_len(size))?;
        Ok(())
    }

    /// Guards the ring arithmetic: the transport only hands out validated
    /// queues, but a zero size must never reach a `size - 1`.
    fn check_usable(&self) -> Result<(), QueueError> {
        if !self.ready || self.size == 0 || !self.size.is_power_of_two() {
            return Err(QueueError::NotReady);
        }
        Ok(())
    }

    /// The ring slot of free-running index `idx`. Only after
    /// [`Queue::check_usable`]: `size` is then a power of two, so `size - 1`
    /// is the mask (and cannot underflow).
    fn slot(&self, idx: u16) -> u16 {
        idx & self.size.saturating_sub(1)
    }

    fn avail_idx(&self, mem: &GuestMemoryMmap) -> Result<u16, QueueError> {
        let idx: u16 = mem.load(
            GuestAddress(self.avail_ring.wrapping_add(2)),
            Ordering::Acquire,
        )?;
        Ok(u16::from_le(idx))
    }

    /// Takes the next available chain, if any.
    ///
    /// The chain is consumed even when it is invalid, so one bad chain is
    /// reported once rather than forever.
    pub fn pop(&mut self, mem: &GuestMemoryMmap) -> Result<Option<DescriptorChain>, QueueError> {
        self.check_usable()?;
        let avail = self.avail_idx(mem)?;
        let pending = avail.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::InvalidAvailIndex {
                avail,
                next: self.next_avail,
            });
        }
        let slot = self.slot(self.next_avail);
        let entry = self.avail_ring.wrapping_add(layout::avail_entry(slot));
        let head = u16::from_le(mem.read_obj::<u16>(GuestAddress(entry))?);
        self.next_avail = self.next_avail.wrapping_add(1);
        let table = Table {
            addr: GuestAddress(self.desc_table),
            len: u32::from(self.size),
        };
        let descriptors = walk_chain(mem, table, u32::from(head), self.indirect)?;
        Ok(Some(DescriptorChain { head, descriptors }))
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.add_used_batch(mem, &[(head, len)])
    }

    /// Returns several chains, as `(head, len)`, and publishes them with one `used.idx`
    /// store, so the driver sees all or none of them: a received frame spread over several
    /// buffers (VIRTIO_NET_F_MRG_RXBUF) must not show up one buffer at a time.
    pub fn add_used_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        used: &[(u16, u32)],
    ) -> Result<(), QueueError> {
        self.check_usable()?;
        let mut next_used = self.next_used;
        for &(head, len) in used {
            let slot = self.slot(next_used);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            mem.write_obj(
                elem,
                GuestAddress(self.used_ring.wrapping_add(layout::used_entry(slot))),
            )?;
            next_used = next_used.wrapping_add(1);
        }
        self.next_used = next_used;
        // The elements must be visible before the index that publishes them.
        mem.store(
            self.next_used.to_le(),
            GuestAddress(self.used_ring.wrapping_add(2)),
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Publishes `avail_event` and re-checks for buffers that raced with it.
    ///
    /// Returns whether more chains are available: the caller must drain
    /// again before sleeping, or it could miss a notification the driver
    /// suppressed because it saw the old `avail_event`.
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.check_usable()?;
        if self.event_idx {
            let avail_event =
                GuestAddress(self.used_ring.wrapping_add(layout::avail_event(self.size)));
            mem.store(self.next_avail.to_le(), avail_event, Ordering::Relaxed)?;
        }
        // Order the avail_event store before the avail.idx load (the driver
        // does the mirror image), as in Linux's virtqueue_enable_cb.
        fence(Ordering::SeqCst);
        Ok(self.avail_idx(mem)? != self.next_avail)
    }

    /// Whether the driver wants an interrupt for the entries added since the
    /// last call (virtio 1.2 section 2.7.7.2 / 2.7.10).
    pub fn needs_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.check_usable()?;
        let new = self.next_used;
        let old = std::mem::replace(&mut self.signalled_used, new);
        // Our used.idx store must be visible before we read the driver's
        // suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let used_event_addr =
                GuestAddress(self.avail_ring.wrapping_add(layout::used_event(self.size)));
            let used_event = u16::from_le(mem.load(used_event_addr, Ordering::Relaxed)?);
            // vring_need_event(): did new_idx step past used_event?
            return Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old));
        }
        let flags = u16::from_le(mem.load(GuestAddress(self.avail_ring), Ordering::Relaxed)?);
        Ok(new != old && flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }
}

fn check_ring(
    mem: &GuestMemoryMmap,
    ring: &'static str,
    addr: u64,
    align: u64,
    len: u64,
) -> Result<(), QueueError> {
    let err = QueueError::InvalidRing { ring, addr };
    if addr.checked_rem(align) != Some(0) || addr.checked_add(len).is_none() {
        return Err(err);
    }
    let len = usize::try_from(len).map_err(|_| QueueError::InvalidRing { ring, addr })?;
    if !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len) {
        return Err(err);
    }
    Ok(())
}

/// A descriptor as the driver wrote it.
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_descriptor(
    mem: &GuestMemoryMmap,
    table: Table,
    index: u32,
) -> Result<RawDescriptor, QueueError> {
    if index >= table.len {
        return Err(QueueError::DescriptorIndex {
            index,
            len: table.len,
        });
    }
    let addr = table.addr.checked_add(u64::from(index) * DESC_SIZE).ok_or(
        QueueError::DescriptorIndex {
            index,
            len: table.len,
        },
    )?;
    let b: [u8; 16] = mem.read_obj(addr)?;
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        l0,
        l1,
        l2,
        l3,
        f0,
        f1,
        n0,
        n1,
    ] = b;
    Ok(RawDescriptor {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

/// Walks the chain starting at `head` in `table`, flattening at most one
/// level of indirection when `allow_indirect`.
fn walk_chain(
    mem: &GuestMemoryMmap,
    table: Table,
    head: u32,
    allow_indirect: bool,
) -> Result<Vec<Descriptor>, QueueError> {
    let mut out: Vec<Descriptor> = Vec::new();
    let mut index = head;
    // A loop-free chain visits each table entry at most once, so a walk
    // longer than the table has a loop.
    for _ in 0..table.len {
        let raw = read_descriptor(mem, table, index)?;
        if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if !allow_indirect {
                return Err(QueueError::IndirectNotAllowed);
            }
            if raw.flags & VIRTQ_DESC_F_NEXT != 0 {
                return Err(QueueError::IndirectWithNext);
            }
            let inner = indirect_table(mem, &raw)?;
            let nested = walk_chain(mem, inner, 0, false)?;
            push_ordered(&mut out, nested)?;
            return Ok(out);
        }
        let descriptor = checked_buffer(mem, &raw)?;
        push_ordered(&mut out, vec![descriptor])?;
        if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(out);
        }
        index = u32::from(raw.next);
    }
    Err(QueueError::ChainTooLong(table.len))
}

/// Appends `more`, enforcing readable-before-writable order.
fn push_ordered(out: &mut Vec<Descriptor>, more: Vec<Descriptor>) -> Result<(), QueueError> {
    for d in more {
        if !d.writable && out.last().is_some_and(|last| last.writable) {
            return Err(QueueError::ReadableAfterWritable);
        }
        out.push(d);
    }
    Ok(())
}

fn indirect_table(mem: &GuestMemoryMmap, raw: &RawDescriptor) -> Result<Table, QueueError> {
    let count = raw.len / DESC_SIZE_U32;
    if raw.len == 0 || raw.len % DESC_SIZE_U32 != 0 || count > MAX_INDIRECT_DESCRIPTORS {
        return Err(QueueError::InvalidIndirectLength(raw.len));
    }
    checked_buffer(mem, raw)?;
    Ok(Table {
        addr: GuestAddress(raw.addr),
        len: count,
    })
}

/// Checks that `addr..addr + len` neither wraps nor leaves guest memory.
fn checked_buffer(mem: &GuestMemoryMmap, raw: &RawDescriptor) -> Result<Descriptor, QueueError> {
    let (addr, len) = (raw.addr, raw.len);
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(QueueError::DescriptorOverflow { addr, len });
    }
    let ulen = usize::try_from(len).map_err(|_| QueueError::DescriptorOverflow { addr, len })?;
    if !GuestMemoryBackend::check_range(mem, GuestAddress(addr), ulen) {
        return Err(QueueError::DescriptorOutOfMemory { addr, len });
    }
    Ok(Descriptor {
        addr: GuestAddress(addr),
        len,
        writable: raw.flags & VIRTQ_DESC_F_WRITE != 0,
    })
}
