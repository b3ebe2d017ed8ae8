//! virtio-blk through the queue-level test driver, as a guest driver and a user would see
//! it: data reaches the right sectors both ways, read-only disks stay untouched, invalid
//! requests get the status the spec asks for, a hostile guest cannot stop the device, host
//! I/O errors fail only their request, and images are locked against a second user.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Buf, DATA, TestDevice, ro, wo};
use devices::virtio::VirtioDevice;
use devices::virtio::block::{
    Block, BlockError, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const SECTOR: u64 = 512;
/// Request header.
const HDR: u64 = DATA;
/// Status byte.
const STATUS: u64 = DATA + 0x100;
/// Data buffers.
const BUF: u64 = DATA + 0x1_0000;
/// Features a Linux driver acknowledges.
const DRIVER_FEATURES: u64 = 1 << VIRTIO_BLK_F_SIZE_MAX
    | 1 << VIRTIO_BLK_F_SEG_MAX
    | 1 << VIRTIO_BLK_F_BLK_SIZE
    | 1 << VIRTIO_BLK_F_FLUSH;

/// A disk image under the temp dir, removed on drop.
struct Image {
    path: PathBuf,
}

impl Image {
    fn new(contents: &[u8]) -> Image {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-virtio-block-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        Image { path }
    }

    /// An image of `sectors` sectors, each byte derived from its offset.
    fn patterned(sectors: u64) -> Image {
        Image::new(&pattern(0, sectors * SECTOR))
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn open(&self, read_only: bool) -> Block {
        Block::open(&self.path, read_only, "virtio-blk-test", || {}).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `len` bytes as they sit at `offset` of a patterned image.
fn pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i % 251) as u8 ^ (i / 512) as u8)
        .collect()
}

fn write_header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn read_guest(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
    buf
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

/// Sends one request and waits for it; returns (status, used length). The status byte is
/// poisoned first so a request that never set it cannot pass.
fn request(t: &mut TestDevice<Block>, kind: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
    write_header(&t.mem, HDR, kind, sector);
    t.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut chain = vec![ro(HDR, 16)];
    chain.extend_from_slice(data);
    chain.push(wo(STATUS, 1));
    let before = t.queues[0].used_idx(&t.mem);
    let head = t.queues[0].send(&t.mem, &chain);
    t.wait_used(0, before + 1);
    let (id, len) = t.queues[0].used_elem(&t.mem, before);
    assert_eq!(id, u32::from(head), "completed a different chain");
    (status(&t.mem), len)
}

/// [`request`] with the header, `data` and the status in one indirect table, as Linux
/// sends requests with many segments.
fn indirect_request(t: &mut TestDevice<Block>, kind: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
    const TABLE: u64 = DATA + 0x80_0000;
    write_header(&t.mem, HDR, kind, sector);
    t.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut bufs = vec![ro(HDR, 16)];
    bufs.extend_from_slice(data);
    bufs.push(wo(STATUS, 1));
    for (i, buf) in bufs.iter().enumerate() {
        let last = i + 1 == bufs.len();
        let flags =
            if buf.writable { common::F_WRITE } else { 0 } | if last { 0 } else { common::F_NEXT };
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&buf.addr.to_le_bytes());
        d[8..12].copy_from_slice(&buf.len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&u16::try_from(i + 1).unwrap().to_le_bytes());
        t.mem
            .write_obj(d, GuestAddress(TABLE + 16 * i as u64))
            .unwrap();
    }
    let table_len = u32::try_from(16 * bufs.len()).unwrap();
    let before = t.queues[0].used_idx(&t.mem);
    let head = t.queues[0].add_chain(&t.mem, &[ro(TABLE, table_len)]);
    t.queues[0].write_desc(&t.mem, head, TABLE, table_len, common::F_INDIRECT, 0);
    t.queues[0].post(&t.mem, head);
    t.wait_used(0, before + 1);
    let (id, len) = t.queues[0].used_elem(&t.mem, before);
    assert_eq!(id, u32::from(head), "completed a different chain");
    (status(&t.mem), len)
}

fn read_config(block: &Block, offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0xaa; len];
    block.read_config(offset, &mut data);
    data
}

#[test]
fn guest_reads_what_the_host_wrote_into_two_buffers() {
    let image = Image::patterned(16);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    // Sectors 3..7 into buffers of 1 and 3 sectors at unrelated addresses.
    let second = BUF + 0x8000;
    let (st, len) = request(
        &mut t,
        VIRTIO_BLK_T_IN,
        3,
        &[wo(BUF, 512), wo(second, 3 * 512)],
    );
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 4 * 512 + 1));
    assert_eq!(read_guest(&t.mem, BUF, 512), pattern(3 * SECTOR, 512));
    assert_eq!(
        read_guest(&t.mem, second, 3 * 512),
        pattern(4 * SECTOR, 3 * 512)
    );
    let counters = t.device.counters();
    assert_eq!(counters.read_requests.load(Ordering::Relaxed), 1);
    assert_eq!(counters.bytes_read.load(Ordering::Relaxed), 4 * 512);
}

#[test]
fn the_queue_status_counts_each_request_its_kick_and_its_interrupt() {
    let image = Image::patterned(16);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    for sector in 0..3 {
        let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, sector, &[wo(BUF, 512)]);
        assert_eq!(st, VIRTIO_BLK_S_OK);
    }
    // Without EVENT_IDX or NO_INTERRUPT every completion interrupts.
    let s = t.queues[0].wait_status(&t.mem, "3 requests and 3 interrupts", |s| {
        s.device_used == 3 && s.interrupts == 3
    });
    assert_eq!((s.device_avail, s.notifications, s.broken), (3, 3, false));
    assert_eq!(t.interrupt.used_count(0), 3);
}

#[test]
fn guest_write_lands_in_the_image() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 1) as u8).collect();
    t.mem.write_slice(&data[..512], GuestAddress(BUF)).unwrap();
    t.mem
        .write_slice(&data[512..], GuestAddress(BUF + 0x4000))
        .unwrap();
    let (st, len) = request(
        &mut t,
        VIRTIO_BLK_T_OUT,
        5,
        &[ro(BUF, 512), ro(BUF + 0x4000, 512)],
    );
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1));

    let mut expected = pattern(0, 8 * SECTOR);
    expected[5 * 512..7 * 512].copy_from_slice(&data);
    assert_eq!(image.contents(), expected);
    assert_eq!(
        t.device.counters().bytes_written.load(Ordering::Relaxed),
        1024
    );
}

#[test]
fn read_only_disk_refuses_writes_without_touching_the_image() {
    let image = Image::patterned(8);
    let mtime = || std::fs::metadata(&image.path).unwrap().modified().unwrap();
    let before = mtime();
    // Coarse filesystem timestamps must not hide a write.
    std::thread::sleep(Duration::from_millis(20));
    let block = image.open(true);
    assert_ne!(block.features() & 1 << VIRTIO_BLK_F_RO, 0);
    let mut t = TestDevice::activate(block, DRIVER_FEATURES | 1 << VIRTIO_BLK_F_RO);
    t.mem.write_slice(&[0x5a; 512], GuestAddress(BUF)).unwrap();

    let (st, _) = request(&mut t, VIRTIO_BLK_T_OUT, 0, &[ro(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    let (st, _) = request(&mut t, VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    // Reads still work.
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 1, &[wo(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    assert_eq!(read_guest(&t.mem, BUF, 512), pattern(SECTOR, 512));

    assert_eq!(image.contents(), pattern(0, 8 * SECTOR));
    assert_eq!(mtime(), before);
}

#[test]
fn flush_succeeds_on_a_writable_disk() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    let (st, len) = request(&mut t, VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(
        t.device.counters().flush_requests.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn get_id_returns_20_ascii_bytes_stable_per_image() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    t.mem.write_slice(&[0u8; 32], GuestAddress(BUF)).unwrap();
    let (st, len) = request(&mut t, VIRTIO_BLK_T_GET_ID, 0, &[wo(BUF, 20)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 21));
    let id = read_guest(&t.mem, BUF, 20);
    assert!(
        id.iter().all(|b| b.is_ascii_graphic()),
        "id is not printable ASCII: {id:?}"
    );

    // A shorter buffer gets a prefix.
    t.mem.write_slice(&[0u8; 32], GuestAddress(BUF)).unwrap();
    let (st, len) = request(&mut t, VIRTIO_BLK_T_GET_ID, 0, &[wo(BUF, 8)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 9));
    assert_eq!(read_guest(&t.mem, BUF, 8), id[..8]);
    assert_eq!(read_guest(&t.mem, BUF + 8, 1), [0]);

    // The same image keeps its id across opens; another image has another id.
    drop(t);
    let mut again = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    request(&mut again, VIRTIO_BLK_T_GET_ID, 0, &[wo(BUF, 20)]);
    assert_eq!(read_guest(&again.mem, BUF, 20), id);
    let other = Image::patterned(8);
    let mut u = TestDevice::activate(other.open(false), DRIVER_FEATURES);
    request(&mut u, VIRTIO_BLK_T_GET_ID, 0, &[wo(BUF, 20)]);
    assert_ne!(read_guest(&u.mem, BUF, 20), id);
}

#[test]
fn requests_beyond_the_end_fail() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    // The last sector is fine; one more is not.
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 7, &[wo(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    let (st, len) = request(&mut t, VIRTIO_BLK_T_IN, 7, &[wo(BUF, 1024)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_IOERR, 1));
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 8, &[wo(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    // A sector number whose byte offset overflows u64.
    let (st, _) = request(&mut t, VIRTIO_BLK_T_OUT, u64::MAX / 256, &[ro(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    assert_eq!(image.contents(), pattern(0, 8 * SECTOR));
    assert_eq!(
        t.device.counters().invalid_requests.load(Ordering::Relaxed),
        3
    );
}

#[test]
fn data_that_is_not_whole_sectors_fails() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 0, &[wo(BUF, 511)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    let (st, _) = request(&mut t, VIRTIO_BLK_T_OUT, 0, &[ro(BUF, 513)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    assert_eq!(image.contents(), pattern(0, 8 * SECTOR));
}

#[test]
fn requests_beyond_seg_max_or_size_max_fail_without_touching_the_image() {
    // 3 MiB of disk; the guest memory holds 16 MiB.
    let image = Image::patterned(6 * 1024);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    // One 2 MiB segment: more than size_max (1 MiB), though well inside the disk.
    let (st, len) = request(&mut t, VIRTIO_BLK_T_IN, 0, &[wo(BUF, 2 << 20)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_IOERR, 1));
    let (st, _) = request(&mut t, VIRTIO_BLK_T_OUT, 0, &[ro(BUF, 2 << 20)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    // 255 one-sector segments (an indirect table: the ring has only 16 descriptors) are
    // more than seg_max (254); 254 of them are fine.
    let many: Vec<_> = (0..255).map(|i| wo(BUF + 512 * i, 512)).collect();
    let (st, _) = indirect_request(&mut t, VIRTIO_BLK_T_IN, 0, &many);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    let (st, len) = indirect_request(&mut t, VIRTIO_BLK_T_IN, 0, &many[..254]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 254 * 512 + 1));
    // Exactly size_max is fine.
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 0, &[wo(BUF, 1 << 20)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    assert_eq!(image.contents(), pattern(0, 6 * 1024 * SECTOR));
    assert_eq!(
        t.device.counters().invalid_requests.load(Ordering::Relaxed),
        3
    );
}

#[test]
fn unknown_request_type_is_unsupported() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    // 11 is DISCARD, which we do not offer.
    let (st, len) = request(&mut t, 11, 0, &[ro(BUF, 16)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_UNSUPP, 1));
    let (st, _) = request(&mut t, 0xdead_beef, 0, &[]);
    assert_eq!(st, VIRTIO_BLK_S_UNSUPP);
    let counters = t.device.counters();
    assert_eq!(counters.invalid_requests.load(Ordering::Relaxed), 2);
    assert_eq!(counters.io_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn many_requests_posted_before_one_notification_all_complete() {
    let image = Image::patterned(16);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    // Eight reads of two sectors each, every one with its header, its data and, as the
    // last byte of the same writable buffer, its status: two descriptors per request fill
    // the 16-entry test queue.
    let heads: Vec<u16> = (0..8u64)
        .map(|i| {
            let hdr = HDR + 0x20 * i;
            let buf = BUF + 0x1000 * i;
            let sector = 14 - 2 * i;
            write_header(&t.mem, hdr, VIRTIO_BLK_T_IN, sector);
            t.mem.write_obj(0xffu8, GuestAddress(buf + 1024)).unwrap();
            let head = t.queues[0].add_chain(&t.mem, &[ro(hdr, 16), wo(buf, 1025)]);
            t.queues[0].publish(&t.mem, head);
            head
        })
        .collect();
    t.queues[0].kick();
    t.wait_used(0, 8);
    for (i, head) in heads.into_iter().enumerate() {
        let i = i as u64;
        let buf = BUF + 0x1000 * i;
        assert_eq!(
            t.queues[0].used_elem(&t.mem, i as u16),
            (u32::from(head), 1025),
            "request {i} completed out of order or with the wrong length"
        );
        let sector = 14 - 2 * i;
        assert_eq!(
            read_guest(&t.mem, buf, 1024),
            pattern(sector * SECTOR, 1024),
            "request {i}"
        );
        assert_eq!(read_guest(&t.mem, buf + 1024, 1), [VIRTIO_BLK_S_OK]);
    }
}

#[test]
fn header_split_across_descriptors_is_gathered() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    // Type and reserved in one buffer, sector in another, far away, after an empty one.
    let sector_at = HDR + 0x80;
    write_header(&t.mem, HDR, VIRTIO_BLK_T_IN, 0);
    t.mem.write_obj(6u64, GuestAddress(sector_at)).unwrap();
    t.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    t.queues[0].send(
        &t.mem,
        &[
            ro(HDR, 8),
            ro(HDR + 0x40, 0),
            ro(sector_at, 8),
            wo(BUF, 512),
            wo(STATUS, 1),
        ],
    );
    t.wait_used(0, 1);
    assert_eq!(t.queues[0].used_elem(&t.mem, 0).1, 513);
    assert_eq!(status(&t.mem), VIRTIO_BLK_S_OK);
    assert_eq!(read_guest(&t.mem, BUF, 512), pattern(6 * SECTOR, 512));

    // Header and write data in one readable buffer.
    drop(t);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    write_header(&t.mem, HDR, VIRTIO_BLK_T_OUT, 2);
    t.mem
        .write_slice(&[0x77; 512], GuestAddress(HDR + 16))
        .unwrap();
    t.queues[0].send(&t.mem, &[ro(HDR, 16 + 512), wo(STATUS, 1)]);
    t.wait_used(0, 1);
    assert_eq!(status(&t.mem), VIRTIO_BLK_S_OK);
    assert_eq!(image.contents()[2 * 512..3 * 512], [0x77; 512]);
}

#[test]
fn config_space_describes_the_disk() {
    // 8 sectors and a 100-byte tail the guest cannot reach.
    let mut contents = pattern(0, 8 * SECTOR);
    contents.extend_from_slice(&[1; 100]);
    let image = Image::new(&contents);
    let mut block = image.open(false);
    assert_eq!(block.capacity_bytes(), 8 * SECTOR);
    assert_eq!(block.device_type(), 2);
    assert_eq!(block.queue_max_sizes(), [256]);
    let features = block.features();
    for bit in [
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ] {
        assert_ne!(features & 1 << bit, 0, "feature {bit} not offered");
    }
    assert_eq!(features & 1 << VIRTIO_BLK_F_RO, 0);

    assert_eq!(read_config(&block, 0, 8), 8u64.to_le_bytes());
    assert_eq!(read_config(&block, 8, 4), (1u32 << 20).to_le_bytes());
    assert_eq!(read_config(&block, 12, 4), 254u32.to_le_bytes());
    assert_eq!(read_config(&block, 20, 4), 512u32.to_le_bytes());
    // Byte-wise access and the upper half of capacity.
    assert_eq!(read_config(&block, 4, 4), [0; 4]);
    assert_eq!(read_config(&block, 0, 1), [8]);
    // Past the end, and far past it, reads 0.
    assert_eq!(read_config(&block, 22, 8), [0; 8]);
    assert_eq!(read_config(&block, 4096, 4), [0; 4]);
    assert_eq!(read_config(&block, u64::MAX, 4), [0; 4]);
    // Writes are ignored.
    block.write_config(0, &[0xff; 24]);
    assert_eq!(read_config(&block, 0, 8), 8u64.to_le_bytes());

    // The tail really is unreachable.
    let mut t = TestDevice::activate(block, DRIVER_FEATURES);
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 8, &[wo(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);

    let ro_block = Image::patterned(4).open(true);
    assert_eq!(read_config(&ro_block, 0, 8), 4u64.to_le_bytes());
    assert_ne!(ro_block.features() & 1 << VIRTIO_BLK_F_RO, 0);
}

#[test]
fn malformed_requests_are_returned_empty_and_the_device_keeps_serving() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    t.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    write_header(&t.mem, HDR, VIRTIO_BLK_T_IN, 0);
    let bad: [&[Buf]; 4] = [
        // No writable buffer: nowhere to put a status.
        &[ro(HDR, 16)],
        // Only empty writable buffers.
        &[ro(HDR, 16), wo(BUF, 0), wo(STATUS, 0)],
        // Header cut short.
        &[ro(HDR, 8), wo(STATUS, 1)],
        // No header at all.
        &[ro(HDR, 0), wo(STATUS, 1)],
    ];
    for (i, chain) in bad.iter().enumerate() {
        let head = t.queues[0].send(&t.mem, chain);
        t.wait_used(0, i as u16 + 1);
        assert_eq!(
            t.queues[0].used_elem(&t.mem, i as u16),
            (u32::from(head), 0),
            "malformed request {i}"
        );
        assert_eq!(status(&t.mem), 0xff, "malformed request {i} got a status");
    }
    assert!(!t.interrupt.needs_reset.load(Ordering::SeqCst));
    assert_eq!(
        t.device.counters().invalid_requests.load(Ordering::Relaxed),
        4
    );

    let (st, len) = request(&mut t, VIRTIO_BLK_T_IN, 2, &[wo(BUF, 512)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 513));
    assert_eq!(read_guest(&t.mem, BUF, 512), pattern(2 * SECTOR, 512));
}

#[test]
fn descriptor_loop_needs_reset() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    write_header(&t.mem, HDR, VIRTIO_BLK_T_OUT, 0);
    // Descriptor 0 points at itself.
    t.queues[0].write_desc(&t.mem, 0, HDR, 16, common::F_NEXT, 0);
    t.queues[0].post(&t.mem, 0);
    t.wait_needs_reset();
    assert_eq!(t.queues[0].used_idx(&t.mem), 0);
    assert_eq!(image.contents(), pattern(0, 8 * SECTOR));
}

#[test]
fn host_read_error_fails_the_request_and_the_next_one_works() {
    let image = Image::patterned(8);
    let mut t = TestDevice::activate(image.open(false), DRIVER_FEATURES);
    // The image shrinks under the device (another program truncates it): reads find EOF.
    OpenOptions::new()
        .write(true)
        .open(&image.path)
        .unwrap()
        .set_len(2 * SECTOR)
        .unwrap();
    let (st, len) = request(&mut t, VIRTIO_BLK_T_IN, 1, &[wo(BUF, 1024)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_IOERR, 1));
    let counters = t.device.counters();
    assert_eq!(counters.io_errors.load(Ordering::Relaxed), 1);
    assert_eq!(counters.bytes_read.load(Ordering::Relaxed), 0);

    // What is still there reads fine, and writes go on working.
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 0, &[wo(BUF, 1024)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    assert_eq!(read_guest(&t.mem, BUF, 1024), pattern(0, 1024));
    t.mem.write_slice(&[0x42; 512], GuestAddress(BUF)).unwrap();
    let (st, _) = request(&mut t, VIRTIO_BLK_T_OUT, 7, &[ro(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    let mut file = File::open(&image.path).unwrap();
    let mut last = [0u8; 512];
    file.seek(SeekFrom::Start(7 * SECTOR)).unwrap();
    file.read_exact(&mut last).unwrap();
    assert_eq!(last, [0x42; 512]);
    assert_eq!(counters.io_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn a_locked_image_is_refused() {
    let image = Image::patterned(8);
    let first = image.open(false);
    for read_only in [false, true] {
        let err = Block::open(&image.path, read_only, "virtio-blk-test", || {}).unwrap_err();
        assert!(
            matches!(err, BlockError::InUse { .. }),
            "read_only {read_only}: {err:?}"
        );
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&*image.path.to_string_lossy()),
            "{err}"
        );
    }
    drop(first);

    // Readers share; a writer is refused while they hold it.
    let reader = image.open(true);
    let second_reader = image.open(true);
    let err = Block::open(&image.path, false, "virtio-blk-test", || {}).unwrap_err();
    assert!(matches!(err, BlockError::InUse { .. }), "{err:?}");
    drop((reader, second_reader));
    image.open(false);
}

#[test]
fn only_files_and_block_devices_are_disks() {
    for path in [Path::new("/dev/null"), &std::env::temp_dir()] {
        let err = Block::open(path, true, "virtio-blk-test", || {}).unwrap_err();
        assert!(
            matches!(err, BlockError::NotADisk { .. }),
            "{path:?}: {err:?}"
        );
    }
    let missing = std::env::temp_dir().join(format!("vmm-no-such-image-{}", std::process::id()));
    let err = Block::open(&missing, false, "virtio-blk-test", || {}).unwrap_err();
    assert!(matches!(err, BlockError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "{err}"
    );
}

#[test]
fn worker_start_runs_on_the_named_worker_thread() {
    let image = Image::patterned(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let _block = Block::open(&image.path, false, "virtio-blk7", move || {
        let name = std::thread::current().name().map(str::to_owned);
        tx.send(name).unwrap();
    })
    .unwrap();
    let name = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(name.as_deref(), Some("virtio-blk7"));
}

#[test]
fn an_empty_image_is_a_zero_sized_disk() {
    let image = Image::new(&[]);
    let block = image.open(false);
    assert_eq!(block.capacity_bytes(), 0);
    let mut t = TestDevice::activate(block, DRIVER_FEATURES);
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 0, &[wo(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    let mut f = OpenOptions::new().append(true).open(&image.path).unwrap();
    f.write_all(&[0; 512]).unwrap();
    // Capacity is fixed at open: growing the file later shows the guest nothing.
    let (st, _) = request(&mut t, VIRTIO_BLK_T_IN, 0, &[wo(BUF, 512)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
}
