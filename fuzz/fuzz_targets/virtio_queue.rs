//! Fuzzes the split virtqueue (`devices::virtio::Queue`) against a malicious driver.
//!
//! The input is the queue's configuration (size, ring addresses, EVENT_IDX and
//! INDIRECT_DESC), a list of operations, and the guest memory contents: descriptor
//! table, available ring (flags, idx, ring, used_event), indirect tables and data all
//! come from the fuzzer. The target validates the queue and runs the operations
//! (pop, add_used, enable_notification, needs_notification, guest writes), then drains
//! the queue, all in bounded loops.
//!
//! Invariants checked: nothing panics; every chain `pop` returns lies in guest memory,
//! has readable buffers before writable ones and is bounded in length; `pop` agrees with
//! an independent reference walk of the chain (accept exactly the chains the spec allows,
//! with the same buffers); the used ring and the notification decisions follow virtio 1.2
//! sections 2.7.8 and 2.7.10. A queue that fails validation is still driven, and must
//! only return errors, never panic.
//!
//! Run with: cargo +nightly fuzz run virtio_queue

#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use devices::virtio::queue::{
    MAX_INDIRECT_DESCRIPTORS, MAX_QUEUE_SIZE, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use devices::virtio::{Descriptor, Queue, QueueError};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: two regions with a hole between them, so buffers can straddle a hole or
/// run off the end of either region.
const REGIONS: [(u64, u64); 2] = [(0, 0x8000), (0x9000, 0xa000)];
/// Addresses the fuzzer picks from a small number range up to a little beyond memory.
const ADDR_SPAN: u64 = 0xb000;
/// Most operations run per input.
const MAX_OPS: usize = 64;
/// Bytes of header before the operations (mode, size, operation count, ring addresses as
/// three u16 or, in raw mode, three u64; the rest reserved).
const HEADER_LEN: usize = 32;
/// Most chains popped when draining at the end.
const MAX_DRAIN: u16 = 512;

fn guest_memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> = REGIONS
            .iter()
            .map(|&(start, end)| (GuestAddress(start), (end - start) as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).expect("failed to allocate fuzzer guest memory")
    })
}

/// Reads the input front to back; past the end everything reads as zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// `[addr, addr + len)` lies in one region (regions are not adjacent). An empty buffer
/// touches no memory, and the queue accepts it anywhere.
fn inside(addr: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    REGIONS.iter().any(|&(s, e)| addr >= s && end <= e)
}

fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> Option<u16> {
    mem.read_obj::<u16>(GuestAddress(addr))
        .ok()
        .map(u16::from_le)
}

/// The reference walk: what virtio 1.2 section 2.7.5 allows, written independently of
/// `queue.rs` (a visited set instead of a length bound). `None`: the chain is invalid.
fn reference_chain(
    mem: &GuestMemoryMmap,
    table: u64,
    table_len: u32,
    head: u32,
    allow_indirect: bool,
) -> Option<Vec<Descriptor>> {
    let mut out: Vec<Descriptor> = Vec::new();
    let mut seen = HashSet::new();
    let mut index = head;
    loop {
        if index >= table_len || !seen.insert(index) {
            return None;
        }
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, GuestAddress(table + 16 * u64::from(index)))
            .ok()?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().ok()?);
        let len = u32::from_le_bytes(raw[8..12].try_into().ok()?);
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            let count = len / 16;
            if !allow_indirect
                || flags & VIRTQ_DESC_F_NEXT != 0
                || len == 0
                || len % 16 != 0
                || count > MAX_INDIRECT_DESCRIPTORS
                || !inside(addr, u64::from(len))
            {
                return None;
            }
            let inner = reference_chain(mem, addr, count, 0, false)?;
            for d in inner {
                push_ordered(&mut out, d)?;
            }
            return Some(out);
        }
        if !inside(addr, u64::from(len)) {
            return None;
        }
        let d = Descriptor {
            addr: GuestAddress(addr),
            len,
            writable: flags & VIRTQ_DESC_F_WRITE != 0,
        };
        push_ordered(&mut out, d)?;
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            return Some(out);
        }
        index = u32::from(next);
    }
}

fn push_ordered(out: &mut Vec<Descriptor>, d: Descriptor) -> Option<()> {
    if !d.writable && out.last().is_some_and(|l| l.writable) {
        return None;
    }
    out.push(d);
    Some(())
}

/// The driver-visible state a correct device must produce.
struct Model {
    next_avail: u16,
    next_used: u16,
    signalled_used: u16,
}

/// One validated queue under test, with the model it is checked against.
struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    queue: Queue,
    model: Model,
    /// Heads popped and not yet returned.
    outstanding: Vec<u16>,
}

impl Harness<'_> {
    fn size(&self) -> u16 {
        self.queue.size
    }

    fn pop(&mut self) {
        let q = &self.queue;
        let avail = read_u16(self.mem, q.avail_ring + 2).expect("validated avail ring");
        let pending = avail.wrapping_sub(self.model.next_avail);
        let result = self.queue.pop(self.mem);
        if pending == 0 {
            assert!(matches!(result, Ok(None)), "nothing pending: {result:?}");
            return;
        }
        if pending > self.size() {
            assert!(
                matches!(result, Err(QueueError::InvalidAvailIndex { .. })),
                "avail {avail} next {}: {result:?}",
                self.model.next_avail
            );
            return;
        }
        let slot = u64::from(self.model.next_avail & (self.size() - 1));
        let head =
            read_u16(self.mem, self.queue.avail_ring + 4 + 2 * slot).expect("validated avail ring");
        self.model.next_avail = self.model.next_avail.wrapping_add(1);
        let expected = reference_chain(
            self.mem,
            self.queue.desc_table,
            u32::from(self.size()),
            u32::from(head),
            self.queue.indirect,
        );
        match (result, expected) {
            (Ok(Some(chain)), Some(expected)) => {
                assert_eq!(chain.head, head);
                assert_eq!(chain.descriptors, expected, "chain {head} differs");
                check_chain_invariants(&chain.descriptors, self.size());
                self.outstanding.push(head);
            }
            (Err(_), None) => {}
            (result, expected) => {
                panic!("chain {head}: queue says {result:?}, reference says {expected:?}")
            }
        }
    }

    fn add_used(&mut self, pick: u8, len: u32) {
        let head = if self.outstanding.is_empty() {
            // A buggy device could return anything; the ring must still be written.
            u16::from(pick)
        } else {
            self.outstanding
                .swap_remove(usize::from(pick) % self.outstanding.len())
        };
        self.queue
            .add_used(self.mem, head, len)
            .expect("add_used on a validated queue");
        let slot = u64::from(self.model.next_used & (self.size() - 1));
        self.model.next_used = self.model.next_used.wrapping_add(1);
        let used = self.queue.used_ring;
        let elem: [u8; 8] = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * slot))
            .expect("validated used ring");
        let idx = read_u16(self.mem, used + 2).expect("validated used ring");
        assert_eq!(idx, self.model.next_used, "used.idx");
        // The idx store comes last, so it may only clobber the element if the rings
        // overlap each other, which the used ring cannot do with itself.
        assert_eq!(elem[..4], u32::from(head).to_le_bytes());
        assert_eq!(elem[4..], len.to_le_bytes());
    }

    fn enable_notification(&mut self) {
        let more = self
            .queue
            .enable_notification(self.mem)
            .expect("enable_notification on a validated queue");
        if self.queue.event_idx {
            let at = self.queue.used_ring + 4 + 8 * u64::from(self.size());
            let avail_event = read_u16(self.mem, at).expect("validated used ring");
            assert_eq!(avail_event, self.model.next_avail, "avail_event");
        }
        let avail = read_u16(self.mem, self.queue.avail_ring + 2).expect("validated avail ring");
        assert_eq!(more, avail != self.model.next_avail, "enable_notification");
    }

    fn needs_notification(&mut self) {
        let q = &self.queue;
        let new = self.model.next_used;
        let old = std::mem::replace(&mut self.model.signalled_used, new);
        let expected = if q.event_idx {
            let at = q.avail_ring + 4 + 2 * u64::from(q.size);
            let used_event = read_u16(self.mem, at).expect("validated avail ring");
            // vring_need_event(event, new, old)
            new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = read_u16(self.mem, q.avail_ring).expect("validated avail ring");
            new != old && flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        let got = self
            .queue
            .needs_notification(self.mem)
            .expect("needs_notification on a validated queue");
        assert_eq!(got, expected, "needs_notification new {new} old {old}");
    }
}

/// What any chain handed to a device must satisfy, whatever the guest wrote.
fn check_chain_invariants(descriptors: &[Descriptor], size: u16) {
    assert!(!descriptors.is_empty(), "empty chain");
    assert!(
        descriptors.len() <= usize::from(size) + MAX_INDIRECT_DESCRIPTORS as usize,
        "chain of {} descriptors",
        descriptors.len()
    );
    let mut seen_writable = false;
    for d in descriptors {
        assert!(
            d.addr.0.checked_add(u64::from(d.len)).is_some(),
            "{d:?} wraps"
        );
        assert!(inside(d.addr.0, u64::from(d.len)), "{d:?} outside memory");
        assert!(!seen_writable || d.writable, "readable after writable");
        seen_writable |= d.writable;
    }
}

/// A ring address: mostly a small multiple of `unit` in or just beyond memory, or any
/// u64 when the input asks for raw addresses.
fn ring_addr(input: &mut Input<'_>, raw: bool, unit: u64) -> u64 {
    if raw {
        input.u64()
    } else {
        u64::from(input.u16()) * unit % ADDR_SPAN
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let mut input = Input(data);

    // Header: configuration as the driver programs it through the transport.
    let mode = input.u8();
    let event_idx = mode & 1 != 0;
    let indirect = mode & 2 != 0;
    let raw_size = mode & 4 != 0;
    let raw_addrs = mode & 8 != 0;
    let max_size = if mode & 16 != 0 { MAX_QUEUE_SIZE } else { 256 };
    let size_byte = input.u8();
    let size_hi = input.u8();
    let size = if raw_size {
        u16::from_le_bytes([size_byte, size_hi])
    } else {
        1u16 << (size_byte % 10)
    };
    let op_count = usize::from(input.u8()) % (MAX_OPS + 1);
    let desc_table = ring_addr(&mut input, raw_addrs, 16);
    let avail_ring = ring_addr(&mut input, raw_addrs, 2);
    let used_ring = ring_addr(&mut input, raw_addrs, 4);
    // The rest of the fixed header is reserved so the layout below stays put.
    let mut input = Input(data.get(HEADER_LEN..).unwrap_or_default());
    let ops: Vec<[u8; 4]> = (0..op_count)
        .map(|_| [input.u8(), input.u8(), input.u8(), input.u8()])
        .collect();

    // Guest memory: the remaining bytes, region by region; the rest is zero.
    let mut image = input.0;
    for &(start, end) in &REGIONS {
        let len = (end - start) as usize;
        let take = image.len().min(len);
        let mut region = vec![0u8; len];
        region[..take].copy_from_slice(&image[..take]);
        image = &image[take..];
        mem.write_slice(&region, GuestAddress(start))
            .expect("region write");
    }

    let mut queue = Queue::new(max_size);
    queue.size = size;
    queue.desc_table = desc_table;
    queue.avail_ring = avail_ring;
    queue.used_ring = used_ring;
    queue.event_idx = event_idx;
    queue.indirect = indirect;
    queue.ready = true;

    if queue.validate(mem).is_err() {
        // Out of contract (the transport refuses to start such a queue), but it must
        // still only fail, never panic.
        for op in &ops {
            let _ = match op[0] % 4 {
                0 => queue.pop(mem).map(|_| ()),
                1 => queue.add_used(mem, u16::from(op[1]), u32::from(op[2])),
                2 => queue.enable_notification(mem).map(|_| ()),
                _ => queue.needs_notification(mem).map(|_| ()),
            };
        }
        return;
    }

    let mut h = Harness {
        mem,
        queue,
        model: Model {
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
        },
        outstanding: Vec::new(),
    };
    for op in &ops {
        let [kind, a, b, c] = *op;
        match kind % 8 {
            0 | 1 => h.pop(),
            2 => h.add_used(a, u32::from_le_bytes([b, c, a, kind])),
            3 => h.enable_notification(),
            4 => h.needs_notification(),
            5 => {
                // The driver publishes more (or bogus) entries: avail.idx moves.
                let at = h.queue.avail_ring + 2;
                let idx = read_u16(mem, at).expect("validated avail ring");
                let idx = idx.wrapping_add(u16::from_le_bytes([a, b]) % (2 * h.size() + 2));
                mem.write_obj(idx.to_le(), GuestAddress(at))
                    .expect("validated avail ring");
            }
            6 => {
                // The driver rewrites guest memory under the device's feet.
                let at = u64::from(u16::from_le_bytes([a, b])) % ADDR_SPAN;
                let _ = mem.write_obj(c, GuestAddress(at));
            }
            _ => {
                // Return everything outstanding, as a device finishing its work does.
                while !h.outstanding.is_empty() {
                    h.add_used(0, u32::from(c));
                }
                h.needs_notification();
            }
        }
    }
    // Drain what is left: every pop consumes an entry or fails, so this ends.
    for _ in 0..=h.size().min(MAX_DRAIN) {
        h.pop();
    }
});
