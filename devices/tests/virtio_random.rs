//! Randomized robustness of the split virtqueue and the virtio device models against a
//! malicious guest: the stable, deterministic counterpart of `fuzz/fuzz_targets/
//! virtio_queue.rs` that runs in CI.
//!
//! An xorshift64* generator drives everything, one seed per iteration. A failure prints
//! its seed; `VIRTIO_RANDOM_SEED=<seed> cargo test -p devices --test virtio_random <test>`
//! replays just that iteration, and `VIRTIO_RANDOM_SCALE=<n>` runs n times as many
//! iterations (for a longer soak).
//!
//! - Queue level: random and mutated-valid descriptor tables, avail rings and indirect
//!   tables, with random ring placement and sizes. `pop` must agree with an independent
//!   reference walk of each chain (accepted chains lie in guest memory, readable before
//!   writable, same buffers), and the used ring and notification decisions must follow
//!   the spec. Nothing may panic or loop.
//! - Device level (Block on a temp image, Balloon, Rng, Console, through the queue-level test
//!   driver): mostly valid-looking chains with random flags, lengths (0 and `u32::MAX`
//!   among them), addresses near and past the end of memory, looping `next` indices and
//!   indirect tables. The reference walk predicts, before the kick, which chains are
//!   valid: the device must complete every chain before the first invalid one of a queue
//!   and then report NEEDS_RESET, or complete them all and not report it; it must then
//!   still serve a valid request (after reset and re-activation if it asked for one).
//!   Block must never write outside the image's capacity, and a read-only image must
//!   stay byte-for-byte unchanged.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use common::{DATA, DriverQueue, F_INDIRECT, F_NEXT, F_WRITE, MEM_SIZE, TestDevice, ro, wo};
use devices::virtio::balloon::{Balloon, VIRTIO_BALLOON_F_STATS_VQ};
use devices::virtio::block::{
    Block, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use devices::virtio::console::{Console, HostInput, RECEIVEQ, TRANSMITQ};
use devices::virtio::queue::{
    MAX_INDIRECT_DESCRIPTORS, MAX_QUEUE_SIZE, VIRTQ_AVAIL_F_NO_INTERRUPT,
};
use devices::virtio::rng::MAX_BYTES_PER_REQUEST;
use devices::virtio::{
    Descriptor, Queue, QueueError, Rng as RngDevice, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// ---------------------------------------------------------------------------------------
// Randomness, seeds and failure reports.

/// xorshift64*: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The seeds of a test's iterations: `count` (times `VIRTIO_RANDOM_SCALE`) derived from
/// `base`, or the one in `VIRTIO_RANDOM_SEED`.
fn seeds(base: u64, count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("VIRTIO_RANDOM_SEED") {
        let seed = seed.trim();
        let parsed = match seed.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => seed.parse(),
        };
        return vec![parsed.expect("VIRTIO_RANDOM_SEED must be a number")];
    }
    let scale: u64 = std::env::var("VIRTIO_RANDOM_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut master = Rng::new(base);
    (0..count * scale.max(1)).map(|_| master.next()).collect()
}

/// Prints how to replay the current iteration if it panics.
struct SeedReport {
    test: &'static str,
    seed: u64,
}

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n*** {} failed at seed {:#x}; replay with\n    VIRTIO_RANDOM_SEED={:#x} \
                 cargo test -p devices --test virtio_random {}\n",
                self.test, self.seed, self.seed, self.test
            );
        }
    }
}

/// Names of device worker threads that panicked (they would otherwise die quietly).
static WORKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Worker threads of the devices under test are named with this prefix (the Rng's own
/// worker is called "virtio-rng").
const WORKER_PREFIX: &str = "random-";

fn watch_worker_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            if name.starts_with(WORKER_PREFIX) || name == "virtio-rng" {
                WORKER_PANICS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{name}: {info}"));
            }
            default(info);
        }));
    });
}

fn assert_no_worker_panic() {
    let panics = WORKER_PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(panics.is_empty(), "device worker panicked: {panics:?}");
}

// ---------------------------------------------------------------------------------------
// The reference chain walk, shared by both levels.

/// `[addr, addr + len)` lies in one of `regions` (which are not adjacent). An empty
/// buffer touches no memory, and the queue accepts it at any address.
fn inside(regions: &[(u64, u64)], addr: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    regions.iter().any(|&(s, e)| addr >= s && end <= e)
}

/// What walking a chain found.
#[derive(Debug, Default)]
struct Walk {
    /// The chain's buffers, or `None` if the chain is invalid.
    chain: Option<Vec<Descriptor>>,
    /// Indirect tables the walk read from (address, bytes).
    tables: Vec<(u64, u64)>,
}

/// What virtio 1.2 section 2.7.5 allows, written independently of `queue.rs` (a visited
/// set rather than a length bound).
fn reference_walk(
    mem: &GuestMemoryMmap,
    regions: &[(u64, u64)],
    table: (u64, u32),
    head: u32,
    allow_indirect: bool,
) -> Walk {
    let mut walk = Walk::default();
    walk.chain = walk_into(mem, regions, table, head, allow_indirect, &mut walk.tables);
    walk
}

fn walk_into(
    mem: &GuestMemoryMmap,
    regions: &[(u64, u64)],
    (table, table_len): (u64, u32),
    head: u32,
    allow_indirect: bool,
    tables: &mut Vec<(u64, u64)>,
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
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & F_INDIRECT != 0 {
            let count = len / 16;
            if !allow_indirect
                || flags & F_NEXT != 0
                || len == 0
                || len % 16 != 0
                || count > MAX_INDIRECT_DESCRIPTORS
                || !inside(regions, addr, u64::from(len))
            {
                return None;
            }
            tables.push((addr, u64::from(len)));
            let inner = walk_into(mem, regions, (addr, count), 0, false, tables)?;
            for d in inner {
                push_ordered(&mut out, d)?;
            }
            return Some(out);
        }
        if !inside(regions, addr, u64::from(len)) {
            return None;
        }
        let d = Descriptor {
            addr: GuestAddress(addr),
            len,
            writable: flags & F_WRITE != 0,
        };
        push_ordered(&mut out, d)?;
        if flags & F_NEXT == 0 {
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

fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    u16::from_le(mem.read_obj(GuestAddress(addr)).unwrap())
}

fn write_desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_obj(d, GuestAddress(at)).unwrap();
}

/// An interesting descriptor length.
fn random_len(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0 => 0,
        1 => u32::MAX,
        2 => rng.pick(&[1, 15, 16, 17, 511, 512, 513, 0x8000_0000, u32::MAX - 511]),
        3 => rng.next() as u32,
        _ => rng.below(0x2000) as u32,
    }
}

// ---------------------------------------------------------------------------------------
// Queue level.

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

// ---------------------------------------------------------------------------------------
// Device level.

/// Rings of the test driver's queues (three at most) and the indirect tables we write:
/// no device may write there, and no buffer of a chain we publish may cover it, so that
/// what the reference walk predicted before the kick stays true while the device runs.
const PROTECTED: (u64, u64) = (0x8000, 0x4_0000);
/// Where indirect tables go (inside [`PROTECTED`]).
const TABLES: (u64, u64) = (0x8000, 0x1_0000);
/// Buffers of the random chains.
const ARENA: (u64, u64) = (DATA, 0xe0_0000);
/// Buffers of the valid request sent after the random ones.
const CANARY: u64 = 0xf0_0000;
const MEM_END: u64 = MEM_SIZE as u64;
const DEV_REGIONS: [(u64, u64); 1] = [(0, MEM_END)];
/// How long a device may take to answer; far more than it needs.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

fn overlaps(addr: u64, len: u64, (start, end): (u64, u64)) -> bool {
    len > 0 && addr < end && addr.saturating_add(len) > start
}

/// A buffer address for a chain a driver means to be valid: in the arena, rarely
/// somewhere hostile.
fn buf_addr(rng: &mut Rng, len: u32) -> u64 {
    if rng.chance(4) {
        hostile_addr(rng, len)
    } else {
        ARENA.0 + rng.below(ARENA.1 - ARENA.0)
    }
}

/// A buffer address a hostile driver might use: the edges of memory or past them,
/// wrapping, anywhere. Never a range in memory that covers [`PROTECTED`].
fn hostile_addr(rng: &mut Rng, len: u32) -> u64 {
    let len64 = u64::from(len);
    let addr = match rng.below(12) {
        0 => MEM_END - rng.below(64),
        1 => MEM_END.wrapping_sub(len64),
        2 => MEM_END + rng.below(0x10_0000),
        3 => u64::MAX - rng.below(64),
        4 => (u64::MAX - len64).wrapping_add(1),
        5 => rng.next(),
        6 => rng.below(PROTECTED.0),
        _ => ARENA.0 + rng.below(ARENA.1 - ARENA.0),
    };
    if inside(&DEV_REGIONS, addr, len64) && overlaps(addr, len64, PROTECTED) {
        ARENA.0 + rng.below(0x10_0000)
    } else {
        addr
    }
}

/// A buffer of a chain to write, before it becomes a descriptor.
#[derive(Clone, Copy, Debug)]
struct Piece {
    addr: u64,
    len: u32,
    writable: bool,
}

/// Writes chains into one queue of a test device and remembers what a driver would.
struct Poster<'a> {
    mem: &'a GuestMemoryMmap,
    desc: u64,
    size: u16,
    next_slot: u16,
    /// Descriptors written: (address, index in its table, index of its chain's head).
    slots: Vec<(u64, u16, u16)>,
    heads: Vec<u16>,
}

impl Poster<'_> {
    /// Writes `pieces` as one chain, direct or through an indirect table; returns false
    /// if the queue has no room left.
    fn chain(&mut self, rng: &mut Rng, tables: &mut u64, pieces: &[Piece]) -> bool {
        let n = pieces.len() as u16;
        if self.next_slot >= self.size {
            return false;
        }
        let head = self.next_slot;
        let table_bytes = 16 * u64::from(n);
        if rng.chance(25) && *tables + table_bytes <= TABLES.1 {
            let table = *tables;
            *tables += table_bytes;
            for (i, p) in pieces.iter().enumerate() {
                let i = i as u16;
                let flags =
                    if p.writable { F_WRITE } else { 0 } | if i + 1 < n { F_NEXT } else { 0 };
                let at = table + 16 * u64::from(i);
                write_desc(self.mem, at, p.addr, p.len, flags, i + 1);
                self.slots.push((at, i, 0));
            }
            let at = self.desc + 16 * u64::from(head);
            write_desc(self.mem, at, table, table_bytes as u32, F_INDIRECT, 0);
            self.slots.push((at, head, head));
            self.next_slot += 1;
        } else {
            if self.next_slot + n > self.size {
                return false;
            }
            for (i, p) in pieces.iter().enumerate() {
                let i = i as u16;
                let flags =
                    if p.writable { F_WRITE } else { 0 } | if i + 1 < n { F_NEXT } else { 0 };
                let at = self.desc + 16 * u64::from(head + i);
                write_desc(self.mem, at, p.addr, p.len, flags, head + i + 1);
                self.slots.push((at, head + i, head));
            }
            self.next_slot += n;
        }
        self.heads.push(head);
        true
    }

    /// Changes one descriptor field, keeping buffers off [`PROTECTED`] (the reference
    /// walk below still drops any chain that reaches it).
    fn mutate(&mut self, rng: &mut Rng) {
        let Some(&(at, own, head)) = self.slots.get(rng.below(self.slots.len() as u64) as usize)
        else {
            return;
        };
        let mut d: [u8; 16] = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        match rng.below(4) {
            0 => {
                let flags = rng.below(8) as u16;
                d[12..14].copy_from_slice(&flags.to_le_bytes());
            }
            1 => {
                let len = random_len(rng);
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[..8].copy_from_slice(&hostile_addr(rng, len).to_le_bytes());
            }
            2 => d[..8].copy_from_slice(&hostile_addr(rng, len).to_le_bytes()),
            _ => {
                let next = match rng.below(4) {
                    0 => own,
                    1 => head,
                    2 => rng.below(u64::from(self.size)) as u16,
                    _ => rng.next() as u16,
                };
                d[14..].copy_from_slice(&next.to_le_bytes());
            }
        }
        self.mem.write_obj(d, GuestAddress(at)).unwrap();
    }
}

/// What a device must do with the chains published on one queue.
#[derive(Debug)]
struct Expectation {
    queue: usize,
    heads: Vec<u16>,
    /// Position of the first invalid chain (or of a bad avail.idx), if any.
    first_bad: Option<usize>,
    /// The valid chains' buffers, in publication order up to `first_bad`.
    chains: Vec<Vec<Descriptor>>,
    /// The device keeps the newest buffer (the balloon's statistics queue).
    holds_one: bool,
}

impl Expectation {
    fn used_target(&self) -> u16 {
        let served = self.first_bad.unwrap_or(self.heads.len());
        let served = if self.holds_one {
            served.saturating_sub(1)
        } else {
            served
        };
        served as u16
    }
}

/// Whether a valid chain could change what the device or the reference sees while the
/// device runs (a buffer over rings or tables, a table outside the protected area, or a
/// balloon frame number in the protected area).
fn hazardous(mem: &GuestMemoryMmap, walk: &Walk, inflate: bool) -> bool {
    if walk
        .tables
        .iter()
        .any(|&(a, l)| a < TABLES.0 || a + l > TABLES.1)
    {
        return true;
    }
    let Some(chain) = &walk.chain else {
        return false;
    };
    if chain
        .iter()
        .any(|d| overlaps(d.addr.0, u64::from(d.len), PROTECTED))
    {
        return true;
    }
    if inflate {
        let mut bytes = Vec::new();
        for d in chain.iter().filter(|d| !d.writable) {
            let mut b = vec![0u8; d.len.min(0x4000) as usize];
            mem.read_slice(&mut b, d.addr).unwrap();
            bytes.extend(b);
        }
        let protected_pfns = (PROTECTED.0 >> 12)..(PROTECTED.1 >> 12);
        return bytes
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_le_bytes(c.try_into().unwrap())))
            .any(|pfn| protected_pfns.contains(&pfn));
    }
    false
}

/// Publishes the safe chains of `poster` on `q` (in one or two kicks, sometimes with a
/// bogus head or an avail.idx more than a ring ahead) and returns what the device must do.
fn publish(
    rng: &mut Rng,
    mem: &GuestMemoryMmap,
    q: &mut DriverQueue,
    poster: Poster<'_>,
    inflate: bool,
    holds_one: bool,
) -> Expectation {
    let mut heads: Vec<u16> = Vec::new();
    for &head in &poster.heads {
        heads.push(head);
        if rng.chance(5) {
            heads.push(head); // The same chain twice.
        }
        if rng.chance(4) {
            let any = rng.next() as u16;
            heads.push(rng.pick(&[q.size, u16::MAX, any]));
        }
    }
    let mut exp = Expectation {
        queue: q.index,
        heads: Vec::new(),
        first_bad: None,
        chains: Vec::new(),
        holds_one,
    };
    for head in heads {
        let walk = reference_walk(
            mem,
            &DEV_REGIONS,
            (q.desc, u32::from(q.size)),
            u32::from(head),
            true,
        );
        if hazardous(mem, &walk, inflate) {
            continue;
        }
        if exp.heads.len() == usize::from(q.size) {
            break;
        }
        match walk.chain {
            Some(chain) if exp.first_bad.is_none() => exp.chains.push(chain),
            Some(_) => {}
            None => {
                exp.first_bad.get_or_insert(exp.heads.len());
            }
        }
        exp.heads.push(head);
    }
    let bogus_idx = rng.chance(5);
    let split = if bogus_idx || exp.heads.len() < 2 || rng.chance(50) {
        exp.heads.len()
    } else {
        1 + rng.below(exp.heads.len() as u64 - 1) as usize
    };
    for (i, &head) in exp.heads.iter().enumerate() {
        if i == split {
            q.kick();
        }
        q.publish(mem, head);
    }
    if bogus_idx {
        // Publish so many that avail.idx is more than a ring ahead.
        for _ in exp.heads.len()..=usize::from(q.size) {
            q.publish(mem, 0);
        }
        exp.first_bad = Some(0);
        exp.chains.clear();
    }
    q.kick();
    exp
}

/// Waits until every queue reached its used target and NEEDS_RESET matches; checks the
/// used elements. Err describes what the device did instead.
fn check_outcome<D: VirtioDevice>(
    t: &TestDevice<D>,
    exps: &[Expectation],
    len_of: impl Fn(&[Descriptor]) -> Option<u32>,
) -> Result<(), String> {
    let expect_reset = exps.iter().any(|e| e.first_bad.is_some());
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    let done = || {
        exps.iter()
            .all(|e| t.queues[e.queue].used_idx(&t.mem) == e.used_target())
            && (!expect_reset || t.interrupt.needs_reset.load(Ordering::SeqCst))
    };
    while !done() {
        if Instant::now() > deadline {
            let used: Vec<u16> = exps
                .iter()
                .map(|e| t.queues[e.queue].used_idx(&t.mem))
                .collect();
            return Err(format!(
                "device stuck: used {used:?}, needs_reset {}, expected {exps:?}",
                t.interrupt.needs_reset.load(Ordering::SeqCst)
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    if !expect_reset && t.interrupt.needs_reset.load(Ordering::SeqCst) {
        return Err(format!("NEEDS_RESET without an invalid chain: {exps:?}"));
    }
    for e in exps.iter().filter(|e| !e.holds_one) {
        let q = &t.queues[e.queue];
        for (i, chain) in e.chains.iter().enumerate() {
            let (id, len) = q.used_elem(&t.mem, i as u16);
            if id != u32::from(e.heads[i]) {
                return Err(format!(
                    "used[{i}] of queue {} is chain {id}: {e:?}",
                    e.queue
                ));
            }
            if let Some(want) = len_of(chain)
                && want != len
            {
                return Err(format!(
                    "used[{i}] of queue {} has len {len}, not {want}",
                    e.queue
                ));
            }
        }
    }
    Ok(())
}

/// One device under random traffic: how to configure, load and check it.
trait Scenario<D: VirtioDevice> {
    /// Features the driver acknowledges this iteration.
    fn features(&mut self, rng: &mut Rng) -> u64;
    /// Writes and publishes random chains; returns what the device must do with them.
    fn post(&mut self, rng: &mut Rng, t: &mut TestDevice<D>) -> Vec<Expectation>;
    /// The used length a valid chain must get, if the device defines it exactly.
    fn used_len(&self, chain: &[Descriptor]) -> Option<u32>;
    /// Checks the device still serves a valid request (and anything else about it).
    fn canary(&mut self, rng: &mut Rng, t: &mut TestDevice<D>);
}

/// Runs `count` iterations of random traffic on one device, re-activated each time on
/// fresh memory: the device must do what [`check_outcome`] expects, and afterwards serve
/// a valid request (after reset and re-activation if it asked for a reset).
fn run_device<D: VirtioDevice>(
    test: &'static str,
    base: u64,
    count: u64,
    mut device: D,
    scenario: &mut impl Scenario<D>,
) -> D {
    watch_worker_panics();
    let (mut completed, mut resets) = (0u64, 0u64);
    let seeds = seeds(base, count);
    let count = seeds.len() as u64;
    for seed in seeds {
        let _report = SeedReport { test, seed };
        let mut rng = Rng::new(seed);
        let features = scenario.features(&mut rng);
        let mut t = TestDevice::inactive(device);
        t.start(features);
        let exps = scenario.post(&mut rng, &mut t);
        if let Err(e) = check_outcome(&t, &exps, |c| scenario.used_len(c)) {
            panic!("{e}");
        }
        assert_no_worker_panic();
        completed += exps.iter().map(|e| e.chains.len() as u64).sum::<u64>();
        if t.interrupt.needs_reset.load(Ordering::SeqCst) {
            resets += 1;
            t.device.reset();
            t = TestDevice::inactive(t.device);
            t.start(features);
        }
        scenario.canary(&mut rng, &mut t);
        assert_no_worker_panic();
        t.device.reset();
        device = t.device;
    }
    eprintln!("{test}: {completed} valid chains served, {resets} resets");
    if std::env::var("VIRTIO_RANDOM_SEED").is_err() {
        // The generator must reach both outcomes often.
        assert!(completed > count, "too few valid chains: {completed}");
        assert!(resets > count / 10, "too few resets: {resets}");
        assert!(resets < count * 9 / 10, "too many resets: {resets}");
    }
    device
}

/// Posts chains built by `pieces` on queue `queue` until it is full or `chains` are
/// written, mutates some descriptors, and publishes.
fn post_queue<D: VirtioDevice>(
    rng: &mut Rng,
    t: &mut TestDevice<D>,
    queue: usize,
    tables: &mut u64,
    inflate: bool,
    holds_one: bool,
    mut pieces: impl FnMut(&mut Rng, &GuestMemoryMmap) -> Vec<Piece>,
) -> Expectation {
    let mem = &*t.mem;
    let q = &mut t.queues[queue];
    let mut poster = Poster {
        mem,
        desc: q.desc,
        size: q.size,
        next_slot: 0,
        slots: Vec::new(),
        heads: Vec::new(),
    };
    let chains = 1 + rng.below(6);
    for _ in 0..chains {
        let p = pieces(rng, mem);
        if p.is_empty() || !poster.chain(rng, tables, &p) {
            break;
        }
    }
    if rng.chance(60) {
        for _ in 0..1 + rng.below(3) {
            poster.mutate(rng);
        }
    }
    publish(rng, mem, q, poster, inflate, holds_one)
}

/// Puts readable pieces before writable ones, except now and then.
fn order(rng: &mut Rng, mut pieces: Vec<Piece>) -> Vec<Piece> {
    if rng.chance(90) {
        pieces.sort_by_key(|p| p.writable);
    }
    pieces
}

/// Writes `bytes` at `addr` if that is inside memory (and not protected).
fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    if !overlaps(addr, bytes.len() as u64, PROTECTED) {
        let _ = mem.write_slice(bytes, GuestAddress(addr));
    }
}

fn wait_used_or_fail<D: VirtioDevice>(t: &TestDevice<D>, queue: usize, count: u16) {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    while t.queues[queue].used_idx(&t.mem) != count {
        assert!(
            Instant::now() < deadline,
            "valid request on queue {queue} not completed (used {}, want {count}, \
             needs_reset {})",
            t.queues[queue].used_idx(&t.mem),
            t.interrupt.needs_reset.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

// --- Block.

const SECTOR: u64 = 512;
/// Image size: 1 MiB of sectors plus a tail the guest cannot see (it must stay as is).
const IMAGE_SECTORS: u64 = 2048;
const IMAGE_TAIL: usize = 300;

/// A disk image under the temp dir, removed on drop.
struct Image {
    path: PathBuf,
    original: Vec<u8>,
}

impl Image {
    fn new(name: &str) -> Image {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-virtio-random-{name}-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let len = (IMAGE_SECTORS * SECTOR) as usize + IMAGE_TAIL;
        let original: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ (i >> 9) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        Image { path, original }
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct BlockScenario<'a> {
    image: &'a Image,
    read_only: bool,
    /// Iterations done, to compare the whole image only now and then.
    iteration: u64,
}

fn block_header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn block_pieces(rng: &mut Rng, mem: &GuestMemoryMmap) -> Vec<Piece> {
    let kind = match rng.below(20) {
        0..=6 => VIRTIO_BLK_T_IN,
        7..=12 => VIRTIO_BLK_T_OUT,
        13 | 14 => VIRTIO_BLK_T_FLUSH,
        15 | 16 => VIRTIO_BLK_T_GET_ID,
        _ => rng.next() as u32,
    };
    let sector = match rng.below(8) {
        0 => IMAGE_SECTORS - rng.below(4),
        1 => IMAGE_SECTORS + rng.below(4),
        2 => u64::MAX / SECTOR - rng.below(2),
        3 => u64::MAX - rng.below(2),
        4 => rng.next(),
        _ => rng.below(IMAGE_SECTORS),
    };
    let mut pieces = Vec::new();
    let header = buf_addr(rng, 16);
    put(mem, header, &block_header(kind, sector));
    if rng.chance(10) {
        pieces.push(Piece {
            addr: header,
            len: 7,
            writable: false,
        });
        pieces.push(Piece {
            addr: header + 7,
            len: 9,
            writable: false,
        });
    } else if rng.chance(95) {
        pieces.push(Piece {
            addr: header,
            len: 16,
            writable: false,
        });
    }
    let data_writable = kind != VIRTIO_BLK_T_OUT;
    let buffers = match kind {
        VIRTIO_BLK_T_FLUSH => rng.below(2),
        VIRTIO_BLK_T_GET_ID => 1,
        _ => rng.below(4),
    };
    for _ in 0..buffers {
        let len = if rng.chance(85) {
            (SECTOR * rng.below(9)) as u32
        } else if kind == VIRTIO_BLK_T_GET_ID && rng.chance(50) {
            20
        } else {
            random_len(rng)
        };
        let addr = buf_addr(rng, len);
        pieces.push(Piece {
            addr,
            len,
            writable: data_writable ^ rng.chance(5),
        });
    }
    if rng.chance(95) {
        let len = if rng.chance(95) { 1 } else { random_len(rng) };
        pieces.push(Piece {
            addr: buf_addr(rng, len),
            len,
            writable: true,
        });
    }
    order(rng, pieces)
}

impl Scenario<Block> for BlockScenario<'_> {
    fn features(&mut self, rng: &mut Rng) -> u64 {
        let mut f = 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE;
        // Without FLUSH every write is synced: keep that rare, it is slow.
        if rng.chance(85) {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if rng.chance(50) {
            f |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        f
    }

    fn post(&mut self, rng: &mut Rng, t: &mut TestDevice<Block>) -> Vec<Expectation> {
        let mut tables = TABLES.0;
        vec![post_queue(
            rng,
            t,
            0,
            &mut tables,
            false,
            false,
            block_pieces,
        )]
    }

    fn used_len(&self, _chain: &[Descriptor]) -> Option<u32> {
        None
    }

    fn canary(&mut self, rng: &mut Rng, t: &mut TestDevice<Block>) {
        self.iteration += 1;
        let sector = rng.below(IMAGE_SECTORS - 8);
        let len = 8 * SECTOR as u32;
        let (hdr, data, status) = (CANARY, CANARY + 0x1000, CANARY + 0x100);
        let request = |t: &mut TestDevice<Block>, kind: u32| {
            put(&t.mem, hdr, &block_header(kind, sector));
            put(&t.mem, status, &[0xff]);
            let writable = kind == VIRTIO_BLK_T_IN;
            let before = t.queues[0].used_idx(&t.mem);
            let chain = [
                ro(hdr, 16),
                common::Buf {
                    addr: data,
                    len,
                    writable,
                },
                wo(status, 1),
            ];
            t.queues[0].send(&t.mem, &chain);
            wait_used_or_fail(t, 0, before.wrapping_add(1));
            let got: u8 = t.mem.read_obj(GuestAddress(status)).unwrap();
            assert_eq!(got, VIRTIO_BLK_S_OK, "valid request type {kind} failed");
        };
        let at = (sector * SECTOR) as usize;
        let expected: Vec<u8> = if self.read_only {
            self.image.original[at..at + len as usize].to_vec()
        } else {
            let pattern: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            put(&t.mem, data, &pattern);
            request(t, VIRTIO_BLK_T_OUT);
            put(&t.mem, data, &vec![0u8; len as usize]);
            pattern
        };
        request(t, VIRTIO_BLK_T_IN);
        let mut got = vec![0u8; len as usize];
        t.mem.read_slice(&mut got, GuestAddress(data)).unwrap();
        assert!(got == expected, "sectors {sector}.. read back wrong");

        // Nothing past the capacity: same length, same invisible tail.
        let meta = std::fs::metadata(&self.image.path).unwrap();
        assert_eq!(
            meta.len(),
            self.image.original.len() as u64,
            "image size changed"
        );
        if self.read_only || self.iteration % 10 == 0 {
            let now = self.image.contents();
            let tail = (IMAGE_SECTORS * SECTOR) as usize;
            assert!(
                now[tail..] == self.image.original[tail..],
                "image tail changed"
            );
            if self.read_only {
                assert!(now == self.image.original, "read-only image changed");
            }
        }
    }
}

fn block_random_traffic(test: &'static str, base: u64, count: u64, read_only: bool) {
    let image = Image::new(if read_only { "ro" } else { "rw" });
    let block = Block::open(&image.path, read_only, "random-blk", || {}).unwrap();
    assert_eq!(block.capacity_bytes(), IMAGE_SECTORS * SECTOR);
    let counters = block.counters();
    let mut scenario = BlockScenario {
        image: &image,
        read_only,
        iteration: 0,
    };
    let block = run_device(test, base, count, block, &mut scenario);
    drop(block);
    let now = image.contents();
    assert_eq!(now.len(), image.original.len());
    let tail = (IMAGE_SECTORS * SECTOR) as usize;
    assert!(now[tail..] == image.original[tail..], "image tail changed");
    if read_only {
        assert!(now == image.original, "read-only image changed");
        assert_eq!(counters.write_requests.load(Ordering::Relaxed), 0);
    }
    eprintln!("{test}: {counters:?}");
}

#[test]
fn block_survives_random_chains_and_stays_inside_its_image() {
    block_random_traffic(
        "block_survives_random_chains_and_stays_inside_its_image",
        0x5eed_b10c,
        120,
        false,
    );
}

#[test]
fn read_only_block_image_is_unchanged_by_random_chains() {
    block_random_traffic(
        "read_only_block_image_is_unchanged_by_random_chains",
        0x5eed_0b10,
        80,
        true,
    );
}

// --- Balloon.

const PAGE: u64 = 4096;

fn random_pfn(rng: &mut Rng) -> u32 {
    let pfn = match rng.below(8) {
        0 => rng.below(PROTECTED.0 / PAGE),
        1 => MEM_END / PAGE + rng.below(64),
        2 => u64::from(u32::MAX) - rng.below(4),
        3 => rng.next() & 0xffff_ffff,
        _ => ARENA.0 / PAGE + rng.below((ARENA.1 - ARENA.0) / PAGE),
    };
    let protected = (PROTECTED.0 / PAGE)..(PROTECTED.1 / PAGE);
    if protected.contains(&pfn) {
        0
    } else {
        pfn as u32
    }
}

fn pfn_pieces(rng: &mut Rng, mem: &GuestMemoryMmap) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for _ in 0..1 + rng.below(2) {
        let count = rng.below(48);
        let mut first = random_pfn(rng);
        let bytes: Vec<u8> = (0..count)
            .flat_map(|_| {
                // Runs of consecutive frames, as Linux sends.
                first = if rng.chance(70) {
                    first.wrapping_add(1)
                } else {
                    random_pfn(rng)
                };
                let pfn = if (PROTECTED.0 / PAGE..PROTECTED.1 / PAGE).contains(&u64::from(first)) {
                    0
                } else {
                    first
                };
                pfn.to_le_bytes()
            })
            .collect();
        let mut len = bytes.len() as u32;
        if rng.chance(10) {
            len = len.saturating_sub(rng.below(4) as u32); // A truncated array.
        }
        let addr = buf_addr(rng, len);
        put(mem, addr, &bytes[..len as usize]);
        pieces.push(Piece {
            addr,
            len,
            writable: rng.chance(5),
        });
    }
    order(rng, pieces)
}

fn stats_pieces(rng: &mut Rng, mem: &GuestMemoryMmap) -> Vec<Piece> {
    let count = rng.below(12);
    let bytes: Vec<u8> = (0..count)
        .flat_map(|_| {
            let mut e = (rng.below(12) as u16).to_le_bytes().to_vec();
            e.extend_from_slice(&rng.next().to_le_bytes());
            e
        })
        .collect();
    let len = if rng.chance(10) {
        random_len(rng)
    } else {
        bytes.len() as u32
    };
    let addr = buf_addr(rng, len);
    put(mem, addr, &bytes[..bytes.len().min(len as usize)]);
    vec![Piece {
        addr,
        len,
        writable: rng.chance(5),
    }]
}

struct BalloonScenario {
    handle: devices::virtio::BalloonHandle,
    /// The statistics queue was negotiated this iteration.
    stats: bool,
}

impl Scenario<Balloon> for BalloonScenario {
    fn features(&mut self, rng: &mut Rng) -> u64 {
        let mut f = 0;
        self.stats = rng.chance(60);
        if self.stats {
            f |= 1 << VIRTIO_BALLOON_F_STATS_VQ;
        }
        if rng.chance(50) {
            f |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        f
    }

    fn post(&mut self, rng: &mut Rng, t: &mut TestDevice<Balloon>) -> Vec<Expectation> {
        let mut tables = TABLES.0;
        let stats = self.stats;
        let mut exps = vec![
            post_queue(rng, t, 0, &mut tables, true, false, pfn_pieces),
            post_queue(rng, t, 1, &mut tables, false, false, pfn_pieces),
        ];
        if stats && rng.chance(70) {
            exps.push(post_queue(
                rng,
                t,
                2,
                &mut tables,
                false,
                true,
                stats_pieces,
            ));
        }
        exps
    }

    fn used_len(&self, _chain: &[Descriptor]) -> Option<u32> {
        Some(0)
    }

    fn canary(&mut self, rng: &mut Rng, t: &mut TestDevice<Balloon>) {
        // A held statistics buffer comes back on request.
        let stats_q = &t.queues[2];
        let posted = read_u16(&t.mem, stats_q.avail + 2);
        if stats_q.used_idx(&t.mem) != posted {
            self.handle.request_stats();
            wait_used_or_fail(t, 2, posted);
        }
        // Inflating a page gives it back (it reads as zero); deflating it is accepted.
        let pfn = (ARENA.0 / PAGE + rng.below((ARENA.1 - ARENA.0) / PAGE)) as u32;
        let page = u64::from(pfn) * PAGE;
        put(&t.mem, page, &[0xaa; PAGE as usize]);
        put(&t.mem, CANARY, &pfn.to_le_bytes());
        for queue in [0, 1] {
            let before = t.queues[queue].used_idx(&t.mem);
            t.queues[queue].send(&t.mem, &[ro(CANARY, 4)]);
            wait_used_or_fail(t, queue, before.wrapping_add(1));
        }
        let mut got = [0xffu8; PAGE as usize];
        t.mem.read_slice(&mut got, GuestAddress(page)).unwrap();
        assert!(
            got.iter().all(|&b| b == 0),
            "inflated page {pfn:#x} kept its data"
        );
    }
}

#[test]
fn balloon_survives_random_chains() {
    let balloon = Balloon::new(MEM_END / PAGE, "random-balloon", || {}).unwrap();
    let handle = balloon.handle();
    let mut scenario = BalloonScenario {
        handle,
        stats: false,
    };
    run_device(
        "balloon_survives_random_chains",
        0x5eed_ba11,
        200,
        balloon,
        &mut scenario,
    );
}

// --- Rng.

fn rng_pieces(rng: &mut Rng, _mem: &GuestMemoryMmap) -> Vec<Piece> {
    let mut pieces = Vec::new();
    if rng.chance(10) {
        let len = random_len(rng);
        pieces.push(Piece {
            addr: buf_addr(rng, len),
            len,
            writable: false,
        });
    }
    for _ in 0..1 + rng.below(3) {
        let len = match rng.below(10) {
            0 => 0x2_0000 + rng.below(0x1_0000) as u32,
            1 => random_len(rng),
            _ => rng.below(0x1000) as u32,
        };
        pieces.push(Piece {
            addr: buf_addr(rng, len),
            len,
            writable: rng.chance(95),
        });
    }
    order(rng, pieces)
}

struct RngScenario;

impl Scenario<RngDevice> for RngScenario {
    fn features(&mut self, rng: &mut Rng) -> u64 {
        if rng.chance(50) {
            1 << VIRTIO_RING_F_EVENT_IDX
        } else {
            0
        }
    }

    fn post(&mut self, rng: &mut Rng, t: &mut TestDevice<RngDevice>) -> Vec<Expectation> {
        let mut tables = TABLES.0;
        vec![post_queue(rng, t, 0, &mut tables, false, false, rng_pieces)]
    }

    fn used_len(&self, chain: &[Descriptor]) -> Option<u32> {
        let writable: u64 = chain
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum();
        Some(writable.min(u64::from(MAX_BYTES_PER_REQUEST)) as u32)
    }

    fn canary(&mut self, _rng: &mut Rng, t: &mut TestDevice<RngDevice>) {
        put(&t.mem, CANARY, &[0u8; 256]);
        let before = t.queues[0].used_idx(&t.mem);
        t.queues[0].send(&t.mem, &[wo(CANARY, 256)]);
        wait_used_or_fail(t, 0, before.wrapping_add(1));
        assert_eq!(t.queues[0].used_elem(&t.mem, before).1, 256);
        let mut got = [0u8; 256];
        t.mem.read_slice(&mut got, GuestAddress(CANARY)).unwrap();
        assert!(got.iter().any(|&b| b != 0), "no entropy delivered");
    }
}

#[test]
fn rng_survives_random_chains() {
    run_device(
        "rng_survives_random_chains",
        0x5eed_0e27,
        200,
        RngDevice::new().unwrap(),
        &mut RngScenario,
    );
}

// --- Console.

/// A console output sink that counts what it takes and keeps the last bytes.
#[derive(Clone, Default)]
struct TailSink(std::sync::Arc<Mutex<(u64, Vec<u8>)>>);

impl std::io::Write for TailSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.lock().unwrap();
        state.0 += buf.len() as u64;
        state.1.extend_from_slice(buf);
        let excess = state.1.len().saturating_sub(64);
        state.1.drain(..excess);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Transmit chains: mostly readable buffers of any length, now and then a writable one
/// (which the device must hand back untouched, without a reset).
fn console_pieces(rng: &mut Rng, _mem: &GuestMemoryMmap) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let len = match rng.below(10) {
            0 => 0x2_0000 + rng.below(0x1_0000) as u32,
            1 => random_len(rng),
            _ => rng.below(0x1000) as u32,
        };
        pieces.push(Piece {
            addr: buf_addr(rng, len),
            len,
            writable: rng.chance(5),
        });
    }
    order(rng, pieces)
}

struct ConsoleScenario {
    sink: TailSink,
    input: HostInput,
}

impl Scenario<Console> for ConsoleScenario {
    fn features(&mut self, rng: &mut Rng) -> u64 {
        if rng.chance(50) {
            1 << VIRTIO_RING_F_EVENT_IDX
        } else {
            0
        }
    }

    fn post(&mut self, rng: &mut Rng, t: &mut TestDevice<Console>) -> Vec<Expectation> {
        let mut tables = TABLES.0;
        vec![post_queue(
            rng,
            t,
            TRANSMITQ,
            &mut tables,
            false,
            false,
            console_pieces,
        )]
    }

    fn used_len(&self, _chain: &[Descriptor]) -> Option<u32> {
        // The device writes nothing into a transmit buffer.
        Some(0)
    }

    fn canary(&mut self, _rng: &mut Rng, t: &mut TestDevice<Console>) {
        put(&t.mem, CANARY, b"canary-transmit!");
        let before = t.queues[TRANSMITQ].used_idx(&t.mem);
        t.queues[TRANSMITQ].send(&t.mem, &[ro(CANARY, 16)]);
        wait_used_or_fail(t, TRANSMITQ, before.wrapping_add(1));
        assert!(
            self.sink.0.lock().unwrap().1.ends_with(b"canary-transmit!"),
            "the canary's bytes did not reach the output"
        );

        let before = t.queues[RECEIVEQ].used_idx(&t.mem);
        assert_eq!(self.input.offer(b"ping"), 4);
        t.queues[RECEIVEQ].send(&t.mem, &[wo(CANARY + 0x100, 16)]);
        wait_used_or_fail(t, RECEIVEQ, before.wrapping_add(1));
        assert_eq!(t.queues[RECEIVEQ].used_elem(&t.mem, before).1, 4);
        let mut got = [0u8; 4];
        t.mem
            .read_slice(&mut got, GuestAddress(CANARY + 0x100))
            .unwrap();
        assert_eq!(&got, b"ping");
    }
}

#[test]
fn console_survives_random_chains() {
    let sink = TailSink::default();
    let console = Console::new(Box::new(sink.clone()), "random-console", || {}).unwrap();
    let mut scenario = ConsoleScenario {
        sink,
        input: console.input(),
    };
    run_device(
        "console_survives_random_chains",
        0x5eed_c0de,
        200,
        console,
        &mut scenario,
    );
}
