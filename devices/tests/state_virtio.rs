//! Snapshot records of virtio PCI functions: a device with an active queue is paused
//! mid-stream, saved, restored into a new device on the same guest memory, and goes on
//! from the right ring position (virtio-rng; virtio-blk reads the right data); records
//! round-trip byte for byte; every out-of-range value is refused with its message before
//! anything is applied; and a fresh virtio-rng record is pinned byte for byte
//! (docs/snapshot-format.md gives the offsets). Balloon, net and the worker's pause are in
//! state_virtio_devices.rs.

mod state_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use devices::StateError;
use devices::virtio::state;
use devices::virtio::{Block, VirtioDevice};
use state_support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
    let other = snapshot::RecordType::required(0x0150, 1);
    assert_eq!(
        decode(other, &good).unwrap_err().to_string(),
        "virtio-pci cannot read a record of type 0x0150 version 1"
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
