//! Device level: each device model's scenario under random traffic (Block on a temp image,
//! read-write and read-only, Balloon, Rng, Console) and its tests. Each scenario builds
//! the chains a driver of that device would send, says what used lengths it defines,
//! and checks a valid request afterwards.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::{TestDevice, ro, wo};
use devices::virtio::balloon::{Balloon, VIRTIO_BALLOON_F_STATS_VQ};
use devices::virtio::block::{
    Block, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use devices::virtio::console::{Console, HostInput, RECEIVEQ, TRANSMITQ};
use devices::virtio::rng::MAX_BYTES_PER_REQUEST;
use devices::virtio::{Descriptor, Rng as RngDevice, VIRTIO_RING_F_EVENT_IDX};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device_harness::*;
use super::support::*;

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
                crate::common::Buf {
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
