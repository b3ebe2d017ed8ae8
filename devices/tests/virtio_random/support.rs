//! What both levels of `virtio_random` share: the seeded xorshift generator, the seeds of
//! a test's iterations and the replay hint printed when one fails, the watch for panicking
//! device workers, and the reference chain walk (virtio 1.2 section 2.7.5, written
//! independently of `queue.rs`) with the raw descriptor and ring accessors it relies on.

use std::collections::HashSet;
use std::sync::{Mutex, Once};

use crate::common::{F_INDIRECT, F_NEXT, F_WRITE};
use devices::virtio::Descriptor;
use devices::virtio::queue::MAX_INDIRECT_DESCRIPTORS;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// ---------------------------------------------------------------------------------------
// Randomness, seeds and failure reports.

/// xorshift64*: small, deterministic, good enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The seeds of a test's iterations: `count` (times `VIRTIO_RANDOM_SCALE`) derived from
/// `base`, or the one in `VIRTIO_RANDOM_SEED`.
pub fn seeds(base: u64, count: u64) -> Vec<u64> {
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
pub struct SeedReport {
    pub test: &'static str,
    pub seed: u64,
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
pub static WORKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Worker threads of the devices under test are named with this prefix (the Rng's own
/// worker is called "virtio-rng").
pub const WORKER_PREFIX: &str = "random-";

pub fn watch_worker_panics() {
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

pub fn assert_no_worker_panic() {
    let panics = WORKER_PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(panics.is_empty(), "device worker panicked: {panics:?}");
}

// ---------------------------------------------------------------------------------------
// The reference chain walk, shared by both levels.

/// `[addr, addr + len)` lies in one of `regions` (which are not adjacent). An empty
/// buffer touches no memory, and the queue accepts it at any address.
pub fn inside(regions: &[(u64, u64)], addr: u64, len: u64) -> bool {
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
pub struct Walk {
    /// The chain's buffers, or `None` if the chain is invalid.
    pub chain: Option<Vec<Descriptor>>,
    /// Indirect tables the walk read from (address, bytes).
    pub tables: Vec<(u64, u64)>,
}

/// What virtio 1.2 section 2.7.5 allows, written independently of `queue.rs` (a visited
/// set rather than a length bound).
pub fn reference_walk(
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

pub fn walk_into(
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

pub fn push_ordered(out: &mut Vec<Descriptor>, d: Descriptor) -> Option<()> {
    if !d.writable && out.last().is_some_and(|l| l.writable) {
        return None;
    }
    out.push(d);
    Some(())
}

pub fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    u16::from_le(mem.read_obj(GuestAddress(addr)).unwrap())
}

pub fn write_desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_obj(d, GuestAddress(at)).unwrap();
}

/// An interesting descriptor length.
pub fn random_len(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0 => 0,
        1 => u32::MAX,
        2 => rng.pick(&[1, 15, 16, 17, 511, 512, 513, 0x8000_0000, u32::MAX - 511]),
        3 => rng.next() as u32,
        _ => rng.below(0x2000) as u32,
    }
}
