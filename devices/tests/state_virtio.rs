//! Snapshot records of virtio PCI functions: a device with an active queue is paused
//! mid-stream, saved, restored into a new device on the same guest memory, and goes on
//! from the right ring position; records round-trip byte for byte; every out-of-range
//! value is refused with its message before anything is applied; and a fresh virtio-rng
//! record is pinned byte for byte (docs/snapshot-format.md gives the offsets).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::StateError;
use devices::pci::PciDevice;
use devices::virtio::net::{Net, PacketBackend};
use devices::virtio::state::{self, VirtioPciState};
use devices::virtio::worker::{ActiveDevice, DeviceWorker, PAUSE_TIMEOUT, Paused};
use devices::virtio::{Balloon, BalloonHandle, Block, Rng, VirtioDevice, VirtioPciDevice};
use snapshot::Record;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 1 << 20;
const BAR: u64 = 0xc000_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x10000;
const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// VERSION_1, EVENT_IDX, INDIRECT_DESC.
const FEATURES: u64 = 1 << 32 | 1 << 29 | 1 << 28;
/// The instance of the tests' function: 00:01.0.
const INSTANCE: u32 = 1 << 3;

fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

/// A transport with its BAR placed and memory decoding on, as the VMM and Linux leave it.
fn transport(device: Box<dyn VirtioDevice>, mem: &Arc<GuestMemoryMmap>) -> VirtioPciDevice {
    let mut dev = VirtioPciDevice::new(device, mem.clone()).unwrap();
    dev.assign_bar(0, BAR).unwrap();
    dev.config_write(4, &[0x06, 0x00]);
    dev
}

fn rng(mem: &Arc<GuestMemoryMmap>) -> VirtioPciDevice {
    transport(Box::new(Rng::new().unwrap()), mem)
}

fn wr(dev: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
    dev.bar_write(0, offset, &value.to_le_bytes()[..len]);
}

fn rd(dev: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.bar_read(0, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The driver's side of one queue: what Linux's virtio_pci_modern does, register by
/// register. Queue `i`'s rings are at `DESC`, `AVAIL`, `USED` + `i * QUEUE_STRIDE`.
struct Ring {
    base: u64,
    avail_idx: u16,
    next_desc: u16,
}

const QUEUE_STRIDE: u64 = 0x4000;

/// Negotiates `features` and sets up `queues` queues, then DRIVER_OK.
fn set_up_queues(dev: &mut VirtioPciDevice, features: u64, queues: u16) -> Vec<Ring> {
    wr(dev, 0x14, 1, 1);
    wr(dev, 0x14, 3, 1);
    wr(dev, 0x08, 0, 4);
    wr(dev, 0x0c, features & 0xffff_ffff, 4);
    wr(dev, 0x08, 1, 4);
    wr(dev, 0x0c, features >> 32, 4);
    wr(dev, 0x14, 0xb, 1);
    assert_eq!(rd(dev, 0x14, 1), 0xb, "FEATURES_OK accepted");
    let mut rings = Vec::new();
    for q in 0..queues {
        let base = u64::from(q) * QUEUE_STRIDE;
        wr(dev, 0x16, u64::from(q), 2);
        wr(dev, 0x18, u64::from(QSIZE), 2);
        wr(dev, 0x20, DESC + base, 8);
        wr(dev, 0x28, AVAIL + base, 8);
        wr(dev, 0x30, USED + base, 8);
        wr(dev, 0x1c, 1, 2);
        rings.push(Ring {
            base,
            avail_idx: 0,
            next_desc: 0,
        });
    }
    wr(dev, 0x14, 0xf, 1);
    assert_eq!(rd(dev, 0x14, 1), 0xf, "DRIVER_OK");
    rings
}

impl Ring {
    /// Negotiates `FEATURES` and sets up queue 0, then DRIVER_OK.
    fn set_up(dev: &mut VirtioPciDevice) -> Ring {
        set_up_queues(dev, FEATURES, 1).remove(0)
    }

    /// Publishes a chain of one device-writable buffer of `len` bytes at `addr`.
    fn publish_write(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u32) -> u16 {
        self.publish(mem, &[(addr, len, F_WRITE)])
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (n, &(addr, len, flags)) in bufs.iter().enumerate() {
            let i = (head + n as u16) % QSIZE;
            let last = n + 1 == bufs.len();
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            let flags = if last { flags } else { flags | F_NEXT };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&((i + 1) % QSIZE).to_le_bytes());
            mem.write_obj(d, GuestAddress(self.base + DESC + 16 * u64::from(i)))
                .unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(self.base + AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.base + AVAIL + 2))
            .unwrap();
        head
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.base + USED + 2)).unwrap()
    }

    fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.base + USED + 4 + 8 * u64::from(i % QSIZE);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    fn wait_used(&self, mem: &GuestMemoryMmap, count: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(mem) != count {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for used.idx {count}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

fn used_elem(mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
    let at = USED + 4 + 8 * u64::from(i % QSIZE);
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

fn wait_used(mem: &GuestMemoryMmap, count: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx(mem) != count {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for used.idx {count}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Saves a paused `dev` as record bytes.
fn save(dev: &VirtioPciDevice) -> (snapshot::RecordType, Vec<u8>) {
    state::encode_record(INSTANCE, &dev.save_state().unwrap()).unwrap()
}

fn decode(ty: snapshot::RecordType, bytes: &[u8]) -> Result<VirtioPciState, StateError> {
    state::decode_record(&Record { ty, payload: bytes }).map(|(instance, s)| {
        assert_eq!(instance, INSTANCE);
        s
    })
}

#[test]
fn rng_paused_mid_stream_goes_on_from_the_next_avail_entry_after_restore() {
    let mem = memory();
    let mut a = rng(&mem);
    let mut ring = Ring::set_up(&mut a);
    for n in 0..3 {
        ring.publish_write(&mem, BUF + n * 0x100, 16);
        a.notify_queue(0);
    }
    wait_used(&mem, 3);

    a.pause().unwrap();
    // Posted and notified while paused: the paused worker does not serve them.
    let h3 = ring.publish_write(&mem, BUF + 0x300, 32);
    let h4 = ring.publish_write(&mem, BUF + 0x400, 8);
    a.notify_queue(0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(used_idx(&mem), 3, "a paused device serves nothing");
    let (ty, bytes) = save(&a);
    drop(a);

    let mut b = rng(&mem);
    b.check_state(&decode(ty, &bytes).unwrap()).unwrap();
    b.apply_state(decode(ty, &bytes).unwrap()).unwrap();
    assert_eq!(
        rd(&mut b, 0x14, 1),
        0xf,
        "restored in DRIVER_OK, no renegotiation"
    );
    // The restored device serves what was posted while it was saved, in order...
    wait_used(&mem, 5);
    assert_eq!(used_elem(&mem, 3), (u32::from(h3), 32));
    assert_eq!(used_elem(&mem, 4), (u32::from(h4), 8));
    // ...and then the next request.
    let h5 = ring.publish_write(&mem, BUF + 0x500, 4);
    b.notify_queue(0);
    wait_used(&mem, 6);
    assert_eq!(used_elem(&mem, 5), (u32::from(h5), 4));
}

#[test]
fn virtio_record_round_trips_byte_for_byte() {
    let mem = memory();
    let mut a = rng(&mem);
    let mut ring = Ring::set_up(&mut a);
    // MSI-X on, a vector for config and queue, a masked entry, a pending bit.
    wr(&mut a, 0x4000, 0xfee0_0000, 4);
    wr(&mut a, 0x4008, 0x41, 4);
    wr(&mut a, 0x400c, 0, 4);
    wr(&mut a, 0x4018, 0x42, 4);
    wr(&mut a, 0x10, 0, 2);
    wr(&mut a, 0x16, 0, 2);
    wr(&mut a, 0x1a, 1, 2);
    ring.publish_write(&mem, BUF, 16);
    a.notify_queue(0);
    wait_used(&mem, 1);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    a.resume().unwrap();

    let mut b = rng(&mem);
    b.check_state(&decode(ty, &bytes).unwrap()).unwrap();
    b.apply_state(decode(ty, &bytes).unwrap()).unwrap();
    b.pause().unwrap();
    let (ty2, again) = save(&b);
    assert_eq!(ty2, ty);
    assert_eq!(again, bytes);
    assert_eq!(ty.kind, 0x0144, "virtio-rng's kind is 0x0140 + 4");
}

#[test]
fn fresh_rng_record_golden_bytes() {
    let mem = memory();
    let mut dev = rng(&mem);
    dev.pause().unwrap();
    let (ty, bytes) = save(&dev);
    assert_eq!(ty.to_word(), 0x0001_0144);
    assert_eq!(bytes.len(), 364);
    assert_eq!(&bytes[..4], &INSTANCE.to_le_bytes());
    // Configuration space: vendor 0x1af4, device 0x1044, COMMAND 0x0006, BAR 0.
    assert_eq!(&bytes[4..10], &[0xf4, 0x1a, 0x44, 0x10, 0x06, 0x00]);
    assert_eq!(&bytes[4 + 0x10..4 + 0x18], &[0x04, 0, 0, 0xc0, 0, 0, 0, 0]);
    let tail = &bytes[260..];
    #[rustfmt::skip]
    let expected: &[u8] = &[
        // MSI-X: 2 vectors, each address, data 0, masked; no pending; off, not masked.
        0x02, 0x00,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        0x00,
        0, 0,
        // Offered features: VERSION_1, EVENT_IDX, INDIRECT_DESC; acked none.
        0x00, 0x00, 0x00, 0x30, 0x01, 0x00, 0x00, 0x00,
        0, 0, 0, 0, 0, 0, 0, 0,
        // Feature selects, status, generation, queue select.
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // Activated, running, ISR, needs-reset, config vector 0xffff.
        0, 0, 0, 0, 0xff, 0xff,
        // One queue: size 256, not ready, no vector, rings at 0, positions 0.
        1, 0, 0, 0,
        0x00, 0x01, 0, 0xff, 0xff,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(tail, expected);
}

/// Saves a running virtio-rng, returns its bytes and where its fields are.
fn saved_running_rng() -> (Arc<GuestMemoryMmap>, snapshot::RecordType, Vec<u8>) {
    let mem = memory();
    let mut a = rng(&mem);
    Ring::set_up(&mut a);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    (mem, ty, bytes)
}

/// Offsets in a virtio-rng record (2 MSI-X vectors, 1 queue).
const MSIX: usize = 4 + 256;
const MSIX_ENTRY0: usize = MSIX + 2;
const OFFERED: usize = MSIX + 2 + 2 * 13 + 1 + 2;
const ACKED: usize = OFFERED + 8;
const STATUS: usize = ACKED + 8 + 8;
const RUNNING: usize = STATUS + 4 + 1;
const ISR: usize = RUNNING + 1;
const CONFIG_VECTOR: usize = ISR + 2;
const QUEUE0: usize = CONFIG_VECTOR + 2 + 4;
const Q_SIZE: usize = QUEUE0;
const Q_VECTOR: usize = QUEUE0 + 3;
const Q_DESC: usize = QUEUE0 + 5;

#[test]
fn out_of_range_values_are_refused_when_decoded() {
    let (_mem, ty, good) = saved_running_rng();
    assert_eq!(good[STATUS], 0xf, "offsets line up with the status");
    let cases: Vec<(usize, Vec<u8>, &str)> = vec![
        (
            MSIX,
            vec![0, 0],
            "virtio-rng state: MSI-X vector count 0 is outside 1-2048",
        ),
        (
            MSIX_ENTRY0,
            vec![2],
            "virtio-rng state: MSI-X vector 0 address 0x2 is not dword aligned",
        ),
        (
            ACKED + 7,
            vec![0x80],
            "virtio-rng state: acked features 0x8000000130000000 include 0x8000000000000000, which the device did not offer",
        ),
        (
            STATUS,
            vec![0x4f],
            "virtio-rng state: device status 0x4f has bits that are not stored",
        ),
        (
            STATUS,
            vec![0x07],
            "virtio-rng state: device status 0x07 skips a step of initialization",
        ),
        (
            RUNNING,
            vec![2],
            "virtio-rng state: running flag is 2, not 0 or 1",
        ),
        (
            ISR,
            vec![4],
            "virtio-rng state: ISR 0x04 has bits other than queue and config",
        ),
        (
            CONFIG_VECTOR,
            vec![2, 0],
            "virtio-rng state: config vector 2 is outside the 2-entry MSI-X table",
        ),
        (
            Q_SIZE,
            vec![24, 0],
            "virtio-rng state: queue 0 size 24 is not a power of two up to 32768",
        ),
        (
            Q_SIZE,
            vec![0, 0x81],
            "virtio-rng state: queue 0 size 33024 is not a power of two up to 32768",
        ),
        (
            Q_VECTOR,
            vec![7, 0],
            "virtio-rng state: queue 0 vector 7 is outside the 2-entry MSI-X table",
        ),
    ];
    for (offset, patch, message) in cases {
        let mut bad = good.clone();
        bad[offset..offset + patch.len()].copy_from_slice(&patch);
        assert_eq!(
            decode(ty, &bad).unwrap_err().to_string(),
            message,
            "offset {offset}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        decode(ty, &long),
        Err(StateError::Snapshot(snapshot::Error::PayloadTrailing {
            extra: 1,
            ..
        }))
    ));
    let other = snapshot::RecordType::required(0x0143, 1);
    assert_eq!(
        decode(other, &good).unwrap_err().to_string(),
        "virtio-pci cannot read a record of type 0x0143 version 1"
    );
}

#[test]
fn values_that_do_not_fit_the_rebuilt_device_are_refused_and_nothing_applied() {
    let (mem, ty, good) = saved_running_rng();
    let bar_low = 4 + 0x10;
    let cases: Vec<(usize, Vec<u8>, &str)> = vec![
        // A ring outside the 1 MiB of guest RAM.
        (
            Q_DESC,
            vec![0, 0, 0x10, 0, 0, 0, 0, 0],
            "virtio-rng state: queue 0: descriptor ring at 0x100000 is misaligned or outside guest memory",
        ),
        (
            Q_DESC,
            vec![8, 0x10, 0, 0, 0, 0, 0, 0],
            "virtio-rng state: queue 0: descriptor ring at 0x1008 is misaligned or outside guest memory",
        ),
        // Above the queue's maximum (256) though a power of two.
        (
            Q_SIZE,
            vec![0, 2],
            "virtio-rng state: queue 0 size 512 is above its maximum 256",
        ),
        // A BAR below the MMIO window.
        (
            bar_low,
            vec![0x04, 0, 0, 0x80],
            "virtio-rng state: BAR 0 at 0x80000000 (size 0x8000) is outside the MMIO window 0xc0000000-0xfec00000",
        ),
        // Another device ID: read-only bits.
        (
            4 + 2,
            vec![0x42],
            "virtio-rng state: configuration space byte 0x02 differs from this device's in read-only bits",
        ),
        // MSI-X enabled in the saved state but not in the saved configuration space.
        (
            OFFERED - 2,
            vec![1],
            "virtio-rng state: MSI-X message control 0x0001 in the configuration space disagrees with the saved MSI-X enable and mask",
        ),
        // A feature the device did offer in the record, but this rebuilt one does not.
        (OFFERED + 7, vec![0x40], ""),
    ];
    for (offset, patch, message) in cases {
        let mut bad = good.clone();
        bad[offset..offset + patch.len()].copy_from_slice(&patch);
        if message.is_empty() {
            bad[ACKED + 7] = 0x40;
        }
        let state = decode(ty, &bad).unwrap();
        let mut fresh = rng(&mem);
        let err = fresh.check_state(&state).unwrap_err().to_string();
        if message.is_empty() {
            assert_eq!(
                err,
                "virtio-rng state: acked features 0x4000000130000000 include 0x4000000000000000, which this device does not offer"
            );
        } else {
            assert_eq!(err, message);
        }
        // Nothing was applied: the fresh device is still fresh.
        assert_eq!(rd(&mut fresh, 0x14, 1), 0);
        fresh.pause().unwrap();
        let (_, untouched) = save(&fresh);
        fresh.resume().unwrap();
        let pristine = {
            let mut p = rng(&mem);
            p.pause().unwrap();
            save(&p).1
        };
        assert_eq!(untouched, pristine);
    }
    // A record of another device type into this one.
    let block_state = {
        let mut s = decode(ty, &good).unwrap();
        s.device_type = 2;
        s
    };
    assert_eq!(
        rng(&mem).check_state(&block_state).unwrap_err().to_string(),
        "virtio-rng state: the record is a virtio-blk's, this device is a virtio-rng"
    );
}

#[test]
fn a_device_whose_activation_failed_comes_back_needing_a_reset_and_not_running() {
    let mem = memory();
    let mut a = rng(&mem);
    // A used ring past the end of guest RAM: DRIVER_OK sticks, the device needs a reset.
    wr(&mut a, 0x14, 3, 1);
    wr(&mut a, 0x0c, FEATURES & 0xffff_ffff, 4);
    wr(&mut a, 0x08, 1, 4);
    wr(&mut a, 0x0c, FEATURES >> 32, 4);
    wr(&mut a, 0x14, 0xb, 1);
    wr(&mut a, 0x18, u64::from(QSIZE), 2);
    wr(&mut a, 0x20, DESC, 8);
    wr(&mut a, 0x28, AVAIL, 8);
    wr(&mut a, 0x30, MEM_SIZE as u64, 8);
    wr(&mut a, 0x1c, 1, 2);
    wr(&mut a, 0x14, 0xf, 1);
    assert_eq!(rd(&mut a, 0x14, 1), 0x4f);
    a.pause().unwrap();
    let s = a.save_state().unwrap();
    assert!(s.activated && !s.running && s.needs_reset);
    let (ty, bytes) = state::encode_record(INSTANCE, &s).unwrap();
    // The bad ring was the guest's, and it is still refused on the way back in.
    let b = rng(&mem);
    assert_eq!(
        b.check_state(&decode(ty, &bytes).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-rng state: queue 0: used ring at 0x100000 is misaligned or outside guest memory"
    );
}

#[test]
fn a_device_the_driver_only_started_to_set_up_round_trips() {
    let mem = memory();
    let mut a = rng(&mem);
    wr(&mut a, 0x14, 3, 1);
    wr(&mut a, 0x08, 1, 4);
    wr(&mut a, 0x0c, 1, 4);
    wr(&mut a, 0x16, 0, 2);
    wr(&mut a, 0x18, 8, 2);
    wr(&mut a, 0x20, DESC, 8);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    let mut b = rng(&mem);
    let state = decode(ty, &bytes).unwrap();
    assert!(!state.activated && !state.running);
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    // The driver goes on where it was: the queue's size and address read back.
    assert_eq!(rd(&mut b, 0x14, 1), 3);
    assert_eq!(rd(&mut b, 0x18, 2), 8);
    assert_eq!(rd(&mut b, 0x20, 8), DESC);
    b.pause().unwrap();
    assert_eq!(save(&b).1, bytes);
}

#[test]
fn save_needs_a_pause_and_a_started_device_is_not_a_restore_target() {
    let (mem, ty, good) = saved_running_rng();
    let mut dev = rng(&mem);
    Ring::set_up(&mut dev);
    assert_eq!(
        dev.save_state().unwrap_err().to_string(),
        "virtio-rng must be paused before its state is saved"
    );
    assert_eq!(
        dev.check_state(&decode(ty, &good).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-rng state: the device to restore into has already been started"
    );
}

// --- virtio-blk: a read after the restore returns the disk's data. ---

struct Image(PathBuf);

impl Image {
    fn new(contents: &[u8]) -> Image {
        let path = std::env::temp_dir().join(format!(
            "vmm-state-virtio-{}-{:?}.img",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, contents).unwrap();
        Image(path)
    }

    fn open(&self) -> Box<dyn VirtioDevice> {
        Box::new(Block::open(&self.0, false, "virtio-blk-state", || {}).unwrap())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const HDR: u64 = 0x20000;
const DATA: u64 = 0x21000;
const STATUS_BYTE: u64 = 0x22000;

/// Publishes a read of `sector` (one sector) as header, data, status.
fn publish_read(mem: &GuestMemoryMmap, ring: &mut Ring, sector: u64) -> u16 {
    let mut hdr = [0u8; 16];
    hdr[8..].copy_from_slice(&sector.to_le_bytes()); // type 0: IN
    mem.write_obj(hdr, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS_BYTE)).unwrap();
    ring.publish(
        mem,
        &[
            (HDR, 16, 0),
            (DATA, 512, F_WRITE),
            (STATUS_BYTE, 1, F_WRITE),
        ],
    )
}

#[test]
fn block_read_after_restore_returns_the_right_data() {
    let disk: Vec<u8> = (0..8 * 512).map(|i| (i / 512 * 16 + i % 7) as u8).collect();
    let image = Image::new(&disk);
    let mem = memory();
    let mut a = transport(image.open(), &mem);
    let mut ring = Ring::set_up(&mut a);
    publish_read(&mem, &mut ring, 1);
    a.notify_queue(0);
    wait_used(&mem, 1);
    let mut got = [0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..], &disk[512..1024]);

    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);
    assert_eq!(ty.kind, 0x0142);
    // The device's part: capacity 8 sectors, size_max 1 MiB, seg_max, no geometry, 512.
    let seg_max = (devices::virtio::block::BLOCK_QUEUE_SIZE as u32 - 2).to_le_bytes();
    #[rustfmt::skip]
    let expected = [
        8, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0x10, 0,
        seg_max[0], seg_max[1], seg_max[2], seg_max[3],
        0, 0, 0, 0,
        0, 2, 0, 0,
    ];
    assert_eq!(&bytes[bytes.len() - 24..], &expected);

    let mut b = transport(image.open(), &mem);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    let head = publish_read(&mem, &mut ring, 5);
    b.notify_queue(0);
    wait_used(&mem, 2);
    assert_eq!(used_elem(&mem, 1).0, u32::from(head));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS_BYTE)).unwrap(),
        0,
        "VIRTIO_BLK_S_OK"
    );
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..], &disk[5 * 512..6 * 512]);

    // A disk of another size is refused.
    let smaller = Image(image.0.with_extension("small"));
    std::fs::write(&smaller.0, &disk[..4 * 512]).unwrap();
    let c = transport(smaller.open(), &mem);
    assert_eq!(
        c.check_state(&decode(ty, &bytes).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-blk state: saved configuration (capacity 8 sectors) differs from this disk's (capacity 4 sectors)"
    );
}

// --- virtio-balloon: target, actual, statistics and the held statistics buffer. ---

const GUEST_PAGES: u64 = (MEM_SIZE as u64) / 4096;
const STATS_VQ: u64 = 1 << 1;

fn balloon(mem: &Arc<GuestMemoryMmap>) -> (VirtioPciDevice, BalloonHandle) {
    let b = Balloon::new(GUEST_PAGES, "balloon-state", || {}).unwrap();
    let handle = b.handle();
    (transport(Box::new(b), mem), handle)
}

#[test]
fn balloon_restore_keeps_target_stats_and_the_held_stats_buffer() {
    let mem = memory();
    let (mut a, handle) = balloon(&mem);
    let mut rings = set_up_queues(&mut a, 1 << 32 | STATS_VQ, 3);
    handle.set_target(100).unwrap();
    wr(&mut a, 0x2004, 40, 4); // the driver reports `actual`
    // The driver posts its statistics; the device holds the buffer until the host asks.
    let mut stats = Vec::new();
    for (tag, value) in [(4u16, 1u64 << 20), (5, 1 << 24)] {
        stats.extend_from_slice(&tag.to_le_bytes());
        stats.extend_from_slice(&value.to_le_bytes());
    }
    mem.write_slice(&stats, GuestAddress(BUF)).unwrap();
    let head = rings[2].publish(&mem, &[(BUF, stats.len() as u32, 0)]);
    a.notify_queue(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.latest_stats().is_none() {
        assert!(Instant::now() < deadline, "statistics never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let latest = handle.latest_stats();

    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);
    assert_eq!(ty.kind, 0x0145);

    let (mut b, handle2) = balloon(&mem);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    assert_eq!(handle2.target_pages(), 100);
    assert_eq!(handle2.actual_pages(), 40);
    assert_eq!(
        rd(&mut b, 0x2000, 4),
        100,
        "num_pages as the driver reads it"
    );
    assert_eq!(handle2.latest_stats(), latest);
    // The restored device holds the same buffer and hands it back on request.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rings[2].used_idx(&mem), 0);
    handle2.request_stats();
    rings[2].wait_used(&mem, 1);
    assert_eq!(rings[2].used_elem(&mem, 0), (u32::from(head), 0));
    rings.clear();

    // A target larger than the rebuilt guest is refused.
    let small = Balloon::new(10, "balloon-small", || {}).unwrap();
    let c = transport(Box::new(small), &mem);
    assert_eq!(
        c.check_state(&decode(ty, &bytes).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-balloon state: target 100 pages is more than this guest's 10 pages"
    );
}

#[test]
fn balloon_device_part_golden_bytes_and_refusals() {
    let mem = memory();
    let (mut a, handle) = balloon(&mem);
    handle.set_target(0xfe).unwrap();
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    // The device's part is last: target, actual, stats flag, tag mask, 10 values.
    let tail = &bytes[bytes.len() - 91..];
    let mut expected = vec![0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&[0; 80]);
    assert_eq!(tail, &expected[..]);
    let at = bytes.len() - 91;
    let mut bad = bytes.clone();
    bad[at + 8] = 0;
    bad[at + 9] = 0x01; // a tag without the statistics flag
    assert_eq!(
        decode(ty, &bad).unwrap_err().to_string(),
        "virtio-balloon state: statistics tag mask 0x0001 names tags that do not exist"
    );
    let mut bad = bytes.clone();
    bad[at + 8] = 1;
    bad[at + 10] = 0x04; // tag 10 does not exist
    assert_eq!(
        decode(ty, &bad).unwrap_err().to_string(),
        "virtio-balloon state: statistics tag mask 0x0400 names tags that do not exist"
    );
    let mut bad = bytes.clone();
    bad[at + 11] = 1; // swap_in absent but valued
    assert_eq!(
        decode(ty, &bad).unwrap_err().to_string(),
        "virtio-balloon state: statistics tag 0 is absent but has a value"
    );
}

// --- virtio-net: the MAC must match; acked offloads go back to the backend. ---

struct Backend {
    fd: OwnedFd,
    set_offload: Arc<Mutex<Vec<u32>>>,
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl PacketBackend for Backend {
    fn read_packet(&self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.fd.read_packet(bufs)
    }

    fn write_packet(&self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.fd.write_packet(bufs)
    }

    fn offloads(&self) -> u32 {
        // TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        0x1 | 0x2 | 0x4
    }

    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.set_offload.lock().unwrap().push(flags);
        Ok(())
    }
}

fn net(
    mem: &Arc<GuestMemoryMmap>,
    mac: [u8; 6],
) -> (VirtioPciDevice, Arc<Mutex<Vec<u32>>>, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which we then own.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0);
    // SAFETY: both were just created and nothing else owns them.
    let (dev_end, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let set_offload = Arc::new(Mutex::new(Vec::new()));
    let backend = Backend {
        fd: dev_end,
        set_offload: set_offload.clone(),
    };
    let dev = Net::new(backend, mac, "net-state", || {}).unwrap();
    (transport(Box::new(dev), mem), set_offload, peer)
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[test]
fn net_restore_reapplies_acked_offloads_and_refuses_another_mac() {
    let mem = memory();
    let (mut a, _, _peer) = net(&mem, MAC);
    // VERSION_1, MAC (5), MRG_RXBUF (15), GUEST_CSUM (1), GUEST_TSO4 (7).
    let features = 1 << 32 | 1 << 5 | 1 << 15 | 1 << 1 | 1 << 7;
    let _rings = set_up_queues(&mut a, features, 2);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);
    assert_eq!(ty.kind, 0x0141);
    // The device's part: MAC, then status LINK_UP.
    assert_eq!(
        &bytes[bytes.len() - 8..],
        &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x01, 0x00]
    );

    let (mut b, offloads, _peer2) = net(&mem, MAC);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while offloads.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "offloads never set");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Net::new clears them, the restored activation sets CSUM | TSO4 again.
    assert_eq!(*offloads.lock().unwrap(), vec![0, 0x1 | 0x2]);

    let (c, _, _peer3) = net(&mem, [0x52, 0x54, 0, 0, 0, 1]);
    assert_eq!(
        c.check_state(&decode(ty, &bytes).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-net state: saved MAC 52:54:00:12:34:56 and link status differ from this device's (MAC 52:54:00:00:00:01)"
    );
}

// --- The worker's pause: bounded, and clear about devices that cannot be saved. ---

/// An active device that spends `busy` in each event, and cannot describe its queues.
struct Slow {
    evt: EventFd,
    busy: Duration,
    /// Written when the long request starts.
    started: EventFd,
}

impl ActiveDevice for Slow {
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![(self.evt.as_raw_fd(), 0)]
    }

    fn start(&mut self) {}

    fn handle_event(&mut self, _token: u32) {
        let _ = self.evt.read();
        self.started.write(1).unwrap();
        std::thread::sleep(self.busy);
    }
}

#[test]
fn pause_waits_for_the_request_in_progress_within_a_bound() {
    let worker = DeviceWorker::spawn("slow-worker", || {}).unwrap();
    assert_eq!(worker.pause().unwrap(), Paused::Inactive);
    worker.resume().unwrap();

    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let started = EventFd::new(0).unwrap();
    let busy = PAUSE_TIMEOUT + Duration::from_millis(500);
    worker
        .activate(Box::new(Slow {
            evt: evt.try_clone().unwrap(),
            busy,
            started: started.try_clone().unwrap(),
        }))
        .unwrap();
    evt.write(1).unwrap();
    started.read().unwrap(); // blocks until the worker is in its long request
    let started = Instant::now();
    let err = worker.pause().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(err.to_string(), "the slow-worker worker did not answer");
    assert!(started.elapsed() < busy, "the wait is bounded");
    // Undone by a resume; a later pause gets through once the request is done, and a
    // device without snapshot support says so.
    worker.resume().unwrap();
    assert_eq!(worker.pause().unwrap(), Paused::Unsupported);
    worker.resume().unwrap();
}

#[test]
fn a_device_model_without_snapshot_hooks_is_refused_by_name() {
    struct Plain;
    impl VirtioDevice for Plain {
        fn device_type(&self) -> u32 {
            3
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn ack_features(&mut self, _features: u64) {}
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: Arc<GuestMemoryMmap>,
            _interrupt: Arc<dyn devices::virtio::Interrupt>,
            _queues: Vec<devices::virtio::ActiveQueue>,
        ) -> Result<(), devices::virtio::ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn quiesced(&self) -> bool {
            true
        }
    }
    let mem = memory();
    let mut dev = transport(Box::new(Plain), &mem);
    Ring::set_up(&mut dev);
    assert_eq!(
        dev.pause().unwrap_err().to_string(),
        "virtio-console does not support snapshots"
    );
}

#[test]
fn a_paused_net_device_sends_nothing_until_resumed() {
    let mem = memory();
    let (mut a, _, peer) = net(&mem, MAC);
    let mut rings = set_up_queues(&mut a, 1 << 32 | 1 << 5, 2);
    a.pause().unwrap();
    let frame: Vec<u8> = (0..12).map(|_| 0).chain(0..60u8).collect();
    mem.write_slice(&frame, GuestAddress(BUF)).unwrap();
    rings[1].publish(&mem, &[(BUF, frame.len() as u32, 0)]);
    a.notify_queue(1);
    let mut got = [0u8; 256];
    let recv = |buf: &mut [u8]| {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, valid for the call.
        unsafe {
            libc::recv(
                peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        }
    };
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(recv(&mut got), -1, "nothing sent while paused");
    a.resume().unwrap();
    rings[1].wait_used(&mem, 1);
    let n = recv(&mut got);
    assert!(n >= 60, "the frame went out after the resume ({n})");
    assert_eq!(&got[n as usize - 60..n as usize], &frame[12..]);
}
