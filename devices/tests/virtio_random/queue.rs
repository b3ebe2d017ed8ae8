//! Queue level: random and mutated-valid descriptor tables, avail rings and indirect
//! tables, with random ring placement and sizes, driven straight into a [`Queue`]. `pop`
//! must agree with the reference walk of each chain, and the used ring and notification
//! decisions must follow the spec.

use crate::common::{F_INDIRECT, F_NEXT, F_WRITE};
use devices::virtio::queue::{
    MAX_INDIRECT_DESCRIPTORS, MAX_QUEUE_SIZE, VIRTQ_AVAIL_F_NO_INTERRUPT,
};
use devices::virtio::{Descriptor, Queue, QueueError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::support::*;

/// Guest RAM of the queue-level tests: two regions with a hole between them.
const Q_REGIONS: [(u64, u64); 2] = [(0, 0x8000), (0x9000, 0xa000)];

/// The driver-visible state a correct device must produce.
struct Model {
    next_avail: u16,
    next_used: u16,
    signalled_used: u16,
}

/// A validated queue and the model it is checked against.
struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    queue: Queue,
    model: Model,
    outstanding: Vec<u16>,
    stats: QueueStats,
}

/// What the iterations exercised, to show the generator reaches both outcomes.
#[derive(Debug, Default)]
struct QueueStats {
    chains: u64,
    bad_chains: u64,
    bad_avail: u64,
    indirect_chains: u64,
}

impl Harness<'_> {
    fn size(&self) -> u16 {
        self.queue.size
    }

    fn pop(&mut self) {
        let avail = read_u16(self.mem, self.queue.avail_ring + 2);
        let pending = avail.wrapping_sub(self.model.next_avail);
        let result = self.queue.pop(self.mem);
        if pending == 0 {
            assert!(matches!(result, Ok(None)), "nothing pending: {result:?}");
            return;
        }
        if pending > self.size() {
            self.stats.bad_avail += 1;
            assert!(
                matches!(result, Err(QueueError::InvalidAvailIndex { .. })),
                "avail {avail} next {}: {result:?}",
                self.model.next_avail
            );
            return;
        }
        let slot = u64::from(self.model.next_avail & (self.size() - 1));
        let head = read_u16(self.mem, self.queue.avail_ring + 4 + 2 * slot);
        self.model.next_avail = self.model.next_avail.wrapping_add(1);
        let walk = reference_walk(
            self.mem,
            &Q_REGIONS,
            (self.queue.desc_table, u32::from(self.size())),
            u32::from(head),
            self.queue.indirect,
        );
        match (result, walk.chain) {
            (Ok(Some(chain)), Some(expected)) => {
                self.stats.chains += 1;
                if !walk.tables.is_empty() {
                    self.stats.indirect_chains += 1;
                }
                assert_eq!(chain.head, head);
                assert_eq!(chain.descriptors, expected, "chain {head} differs");
                check_chain_invariants(&chain.descriptors, self.size());
                self.outstanding.push(head);
            }
            (Err(_), None) => self.stats.bad_chains += 1,
            (result, expected) => {
                panic!("chain {head}: queue says {result:?}, reference says {expected:?}")
            }
        }
    }

    fn add_used(&mut self, pick: u64, len: u32) {
        let head = if self.outstanding.is_empty() {
            pick as u16
        } else {
            let i = (pick % self.outstanding.len() as u64) as usize;
            self.outstanding.swap_remove(i)
        };
        self.queue.add_used(self.mem, head, len).unwrap();
        let slot = u64::from(self.model.next_used & (self.size() - 1));
        self.model.next_used = self.model.next_used.wrapping_add(1);
        let used = self.queue.used_ring;
        let elem: [u8; 8] = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * slot))
            .unwrap();
        assert_eq!(read_u16(self.mem, used + 2), self.model.next_used);
        assert_eq!(elem[..4], u32::from(head).to_le_bytes());
        assert_eq!(elem[4..], len.to_le_bytes());
    }

    fn enable_notification(&mut self) {
        let more = self.queue.enable_notification(self.mem).unwrap();
        if self.queue.event_idx {
            let at = self.queue.used_ring + 4 + 8 * u64::from(self.size());
            assert_eq!(read_u16(self.mem, at), self.model.next_avail, "avail_event");
        }
        let avail = read_u16(self.mem, self.queue.avail_ring + 2);
        assert_eq!(more, avail != self.model.next_avail, "enable_notification");
    }

    fn needs_notification(&mut self) {
        let q = &self.queue;
        let new = self.model.next_used;
        let old = std::mem::replace(&mut self.model.signalled_used, new);
        let expected = if q.event_idx {
            let used_event = read_u16(self.mem, q.avail_ring + 4 + 2 * u64::from(q.size));
            new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = read_u16(self.mem, q.avail_ring);
            new != old && flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        let got = self.queue.needs_notification(self.mem).unwrap();
        assert_eq!(got, expected, "needs_notification new {new} old {old}");
    }
}

/// What any chain handed to a device must satisfy, whatever the guest wrote.
fn check_chain_invariants(descriptors: &[Descriptor], size: u16) {
    assert!(!descriptors.is_empty(), "empty chain");
    assert!(descriptors.len() <= usize::from(size) + MAX_INDIRECT_DESCRIPTORS as usize);
    let mut seen_writable = false;
    for d in descriptors {
        assert!(d.addr.0.checked_add(u64::from(d.len)).is_some(), "{d:?}");
        assert!(inside(&Q_REGIONS, d.addr.0, u64::from(d.len)), "{d:?}");
        assert!(!seen_writable || d.writable, "readable after writable");
        seen_writable |= d.writable;
    }
}

/// An address a hostile driver might use in the queue-level memory.
fn q_random_addr(rng: &mut Rng, len: u32) -> u64 {
    let len = u64::from(len);
    match rng.below(9) {
        0 => 0x8000 - rng.below(64),           // end of the first region
        1 => 0x8000u64.wrapping_sub(len),      // exactly up to the hole
        2 => 0x8000 + rng.below(0x1000),       // in the hole
        3 => 0xa000 - rng.below(64),           // end of memory
        4 => 0xa000 + rng.below(0x10000),      // beyond
        5 => u64::MAX - rng.below(64),         // wraps
        6 => (u64::MAX - len).wrapping_add(1), // ends exactly at 2^64
        7 => rng.next(),                       // anywhere
        _ => 0x3000 + rng.below(0x4800),       // the data area
    }
}

/// Lays out a queue in the queue-level memory: mostly the usual places, sometimes
/// anywhere (overlapping, misaligned, outside memory).
fn q_layout(rng: &mut Rng, q: &mut Queue) {
    let size = u64::from(q.size);
    if rng.chance(85) {
        q.desc_table = 0;
        q.avail_ring = 0x1000;
        q.used_ring = 0x2000;
        if rng.chance(30) {
            // Region B, or packed right after each other as legacy drivers do.
            q.desc_table = rng.pick(&[0, 0x9000]);
            q.avail_ring = q.desc_table + 16 * size;
            q.used_ring = (q.avail_ring + 6 + 2 * size).next_multiple_of(4);
        }
    } else {
        let mut any = |align: u64| match rng.below(4) {
            0 => rng.next(),
            1 => rng.below(0xb000),
            _ => rng.below(0xb000) & !(align - 1),
        };
        q.desc_table = any(16);
        q.avail_ring = any(2);
        q.used_ring = any(4);
    }
}

/// Writes mostly valid chains (direct and indirect) and publishes them.
fn q_write_valid(rng: &mut Rng, mem: &GuestMemoryMmap, q: &Queue) -> Vec<(u64, u16, u16)> {
    let size = q.size;
    // (address of a descriptor, its index in its table, the head of its chain)
    let mut slots = Vec::new();
    let mut next_slot: u16 = 0;
    let mut heads = Vec::new();
    let mut tables = 0x6000u64;
    while next_slot < size && heads.len() < usize::from(size) {
        let n = 1 + rng.below(4) as u16;
        let readable = rng.below(u64::from(n) + 1) as u16;
        let bufs: Vec<(u64, u32, bool)> = (0..n)
            .map(|i| {
                let len = rng.below(0x200) as u32;
                (0x3000 + rng.below(0x2000), len, i >= readable)
            })
            .collect();
        let head = next_slot;
        if q.indirect && rng.chance(30) && tables + 16 * u64::from(n) <= 0x8000 {
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let last = i + 1 == bufs.len();
                let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
                let at = tables + 16 * i as u64;
                write_desc(mem, at, addr, len, flags, i as u16 + 1);
                slots.push((at, i as u16, 0));
            }
            let at = q.desc_table + 16 * u64::from(head);
            write_desc(mem, at, tables, 16 * u32::from(n), F_INDIRECT, 0);
            slots.push((at, head, head));
            tables += 16 * u64::from(n);
            next_slot += 1;
        } else {
            if next_slot + n > size {
                break;
            }
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let i = i as u16;
                let last = i + 1 == n;
                let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
                let at = q.desc_table + 16 * u64::from(head + i);
                write_desc(mem, at, addr, len, flags, head + i + 1);
                slots.push((at, head + i, head));
            }
            next_slot += n;
        }
        heads.push(head);
    }
    for (i, head) in heads.iter().enumerate() {
        let slot = (i as u64) % u64::from(size);
        mem.write_obj(head.to_le(), GuestAddress(q.avail_ring + 4 + 2 * slot))
            .unwrap();
    }
    let flags: u16 = if rng.chance(30) {
        VIRTQ_AVAIL_F_NO_INTERRUPT
    } else {
        0
    };
    mem.write_obj(flags.to_le(), GuestAddress(q.avail_ring))
        .unwrap();
    mem.write_obj((heads.len() as u16).to_le(), GuestAddress(q.avail_ring + 2))
        .unwrap();
    let used_event = rng.below(u64::from(size) + 2) as u16;
    mem.write_obj(
        used_event.to_le(),
        GuestAddress(q.avail_ring + 4 + 2 * u64::from(size)),
    )
    .unwrap();
    slots
}

/// Changes one field of a descriptor the way a hostile driver would.
fn mutate_desc(rng: &mut Rng, mem: &GuestMemoryMmap, (at, own, head): (u64, u16, u16), size: u16) {
    let mut d: [u8; 16] = mem.read_obj(GuestAddress(at)).unwrap();
    let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
    match rng.below(5) {
        0 => {
            let flags: u16 = if rng.chance(80) {
                rng.below(8) as u16
            } else {
                rng.next() as u16
            };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
        }
        1 => d[8..12].copy_from_slice(&random_len(rng).to_le_bytes()),
        2 => d[..8].copy_from_slice(&q_random_addr(rng, len).to_le_bytes()),
        3 => {
            let next = match rng.below(4) {
                0 => own,
                1 => head,
                2 => rng.below(u64::from(size)) as u16,
                _ => rng.next() as u16,
            };
            d[14..].copy_from_slice(&next.to_le_bytes());
        }
        _ => {
            // Turn it into an indirect descriptor pointing somewhere.
            let len = rng.pick(&[16, 32, 48, 16 * 1024, 16 * 1025, 8, 0]);
            d[..8].copy_from_slice(&q_random_addr(rng, len).to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&(F_INDIRECT | rng.below(8) as u16).to_le_bytes());
        }
    }
    mem.write_obj(d, GuestAddress(at)).unwrap();
}

/// One queue-level iteration: set up memory and a queue from `seed`, then drive it.
fn queue_iteration(mem: &GuestMemoryMmap, seed: u64, half_random: bool, stats: &mut QueueStats) {
    let mut rng = Rng::new(seed);
    for &(start, end) in &Q_REGIONS {
        mem.write_slice(&vec![0u8; (end - start) as usize], GuestAddress(start))
            .unwrap();
    }
    let max_size = if rng.chance(10) { MAX_QUEUE_SIZE } else { 256 };
    let mut queue = Queue::new(max_size);
    queue.size = match rng.below(20) {
        0 => rng.next() as u16,
        1 => 0,
        _ => 1 << rng.below(7),
    };
    queue.event_idx = rng.chance(50);
    queue.indirect = rng.chance(70);
    queue.ready = true;
    q_layout(&mut rng, &mut queue);

    let mut slots = Vec::new();
    if half_random && queue.size.is_power_of_two() && queue.size <= 256 {
        // The chains are written where the rings are; if they are outside memory the
        // writes are simply lost.
        if queue.validate(mem).is_ok() {
            slots = q_write_valid(&mut rng, mem, &queue);
        }
        let mutations = rng.below(5);
        for _ in 0..mutations {
            if slots.is_empty() {
                break;
            }
            let slot = slots[rng.below(slots.len() as u64) as usize];
            mutate_desc(&mut rng, mem, slot, queue.size);
        }
        if rng.chance(10) && queue.validate(mem).is_ok() {
            let idx = rng.next() as u16;
            mem.write_obj(idx.to_le(), GuestAddress(queue.avail_ring + 2))
                .unwrap();
        }
    } else {
        // Random bytes over the rings and the data.
        let len = rng.below(0x8000) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // Small bytes make short chains with in-range indices more likely.
                if rng.chance(50) {
                    rng.below(4) as u8
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        mem.write_slice(&bytes, GuestAddress(0)).unwrap();
        if rng.chance(70) && queue.validate(mem).is_ok() {
            // A plausible avail.idx, so that the random chains get walked.
            let idx = 1 + rng.below(u64::from(queue.size)) as u16;
            mem.write_obj(idx.to_le(), GuestAddress(queue.avail_ring + 2))
                .unwrap();
        }
    }

    if queue.validate(mem).is_err() {
        // Out of contract (the transport refuses such a queue): only errors, no panic.
        for _ in 0..8 {
            let _ = queue.pop(mem);
            let _ = queue.add_used(mem, rng.next() as u16, rng.next() as u32);
            let _ = queue.enable_notification(mem);
            let _ = queue.needs_notification(mem);
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
        stats: QueueStats::default(),
    };
    for _ in 0..rng.below(48) {
        match rng.below(8) {
            0..=2 => h.pop(),
            3 => h.add_used(rng.next(), random_len(&mut rng)),
            4 => h.enable_notification(),
            5 => h.needs_notification(),
            6 => {
                // The driver moves avail.idx, possibly too far.
                let at = h.queue.avail_ring + 2;
                let step = rng.below(2 * u64::from(h.size()) + 2) as u16;
                let idx = read_u16(mem, at).wrapping_add(step);
                mem.write_obj(idx.to_le(), GuestAddress(at)).unwrap();
            }
            _ => {
                // The driver scribbles over a descriptor meanwhile.
                if !slots.is_empty() {
                    let slot = slots[rng.below(slots.len() as u64) as usize];
                    mutate_desc(&mut rng, mem, slot, h.size());
                }
            }
        }
    }
    for _ in 0..=h.size() {
        h.pop();
    }
    while !h.outstanding.is_empty() {
        h.add_used(0, 0);
    }
    h.needs_notification();
    stats.chains += h.stats.chains;
    stats.bad_chains += h.stats.bad_chains;
    stats.bad_avail += h.stats.bad_avail;
    stats.indirect_chains += h.stats.indirect_chains;
}

fn queue_memory() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = Q_REGIONS
        .iter()
        .map(|&(s, e)| (GuestAddress(s), (e - s) as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

fn run_queue_iterations(test: &'static str, base: u64, count: u64, half_random: bool) {
    let mem = queue_memory();
    let mut stats = QueueStats::default();
    let seeds = seeds(base, count);
    let count = seeds.len() as u64;
    for seed in seeds {
        let _report = SeedReport { test, seed };
        queue_iteration(&mem, seed, half_random, &mut stats);
    }
    eprintln!("{test}: {stats:?}");
    if std::env::var("VIRTIO_RANDOM_SEED").is_err() {
        // The generator must reach both outcomes often.
        assert!(stats.chains > count / 4, "too few valid chains: {stats:?}");
        assert!(
            stats.bad_chains > count / 5,
            "too few bad chains: {stats:?}"
        );
    }
}

#[test]
fn queue_agrees_with_the_reference_on_mutated_valid_rings() {
    run_queue_iterations(
        "queue_agrees_with_the_reference_on_mutated_valid_rings",
        0x5eed_0001,
        3000,
        true,
    );
}

#[test]
fn queue_agrees_with_the_reference_on_random_rings() {
    run_queue_iterations(
        "queue_agrees_with_the_reference_on_random_rings",
        0x5eed_0002,
        2000,
        false,
    );
}
