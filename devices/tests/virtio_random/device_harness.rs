//! The device-level driver: where random chains may point (the arena, the protected rings
//! and tables, hostile addresses), writing and publishing them on one queue of a test
//! device ([`Poster`], [`publish`]), predicting with the reference walk what the device
//! must do ([`Expectation`]), checking that it did ([`check_outcome`]), and the loop
//! that runs one device's [`Scenario`] for a test's iterations ([`run_device`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{DATA, DriverQueue, F_INDIRECT, F_NEXT, F_WRITE, MEM_SIZE, TestDevice};
use devices::virtio::{Descriptor, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::support::*;

/// Rings of the test driver's queues (three at most) and the indirect tables we write:
/// no device may write there, and no buffer of a chain we publish may cover it, so that
/// what the reference walk predicted before the kick stays true while the device runs.
pub const PROTECTED: (u64, u64) = (0x8000, 0x4_0000);
/// Where indirect tables go (inside [`PROTECTED`]).
pub const TABLES: (u64, u64) = (0x8000, 0x1_0000);
/// Buffers of the random chains.
pub const ARENA: (u64, u64) = (DATA, 0xe0_0000);
/// Buffers of the valid request sent after the random ones.
pub const CANARY: u64 = 0xf0_0000;
pub const MEM_END: u64 = MEM_SIZE as u64;
pub const DEV_REGIONS: [(u64, u64); 1] = [(0, MEM_END)];
/// How long a device may take to answer; far more than it needs.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn overlaps(addr: u64, len: u64, (start, end): (u64, u64)) -> bool {
    len > 0 && addr < end && addr.saturating_add(len) > start
}

/// A buffer address for a chain a driver means to be valid: in the arena, rarely
/// somewhere hostile.
pub fn buf_addr(rng: &mut Rng, len: u32) -> u64 {
    if rng.chance(4) {
        hostile_addr(rng, len)
    } else {
        ARENA.0 + rng.below(ARENA.1 - ARENA.0)
    }
}

/// A buffer address a hostile driver might use: the edges of memory or past them,
/// wrapping, anywhere. Never a range in memory that covers [`PROTECTED`].
pub fn hostile_addr(rng: &mut Rng, len: u32) -> u64 {
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
pub struct Piece {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// Writes chains into one queue of a test device and remembers what a driver would.
pub struct Poster<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub desc: u64,
    pub size: u16,
    pub next_slot: u16,
    /// Descriptors written: (address, index in its table, index of its chain's head).
    pub slots: Vec<(u64, u16, u16)>,
    pub heads: Vec<u16>,
}

impl Poster<'_> {
    /// Writes `pieces` as one chain, direct or through an indirect table; returns false
    /// if the queue has no room left.
    pub fn chain(&mut self, rng: &mut Rng, tables: &mut u64, pieces: &[Piece]) -> bool {
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
    pub fn mutate(&mut self, rng: &mut Rng) {
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
pub struct Expectation {
    pub queue: usize,
    pub heads: Vec<u16>,
    /// Position of the first invalid chain (or of a bad avail.idx), if any.
    pub first_bad: Option<usize>,
    /// The valid chains' buffers, in publication order up to `first_bad`.
    pub chains: Vec<Vec<Descriptor>>,
    /// The device keeps the newest buffer (the balloon's statistics queue).
    pub holds_one: bool,
}

impl Expectation {
    pub fn used_target(&self) -> u16 {
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
pub fn hazardous(mem: &GuestMemoryMmap, walk: &Walk, inflate: bool) -> bool {
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
pub fn publish(
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
pub fn check_outcome<D: VirtioDevice>(
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
pub trait Scenario<D: VirtioDevice> {
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
pub fn run_device<D: VirtioDevice>(
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
pub fn post_queue<D: VirtioDevice>(
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
pub fn order(rng: &mut Rng, mut pieces: Vec<Piece>) -> Vec<Piece> {
    if rng.chance(90) {
        pieces.sort_by_key(|p| p.writable);
    }
    pieces
}

/// Writes `bytes` at `addr` if that is inside memory (and not protected).
pub fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    if !overlaps(addr, bytes.len() as u64, PROTECTED) {
        let _ = mem.write_slice(bytes, GuestAddress(addr));
    }
}

pub fn wait_used_or_fail<D: VirtioDevice>(t: &TestDevice<D>, queue: usize, count: u16) {
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
