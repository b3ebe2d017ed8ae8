//! What the virtio state tests share: guest memory, a transport with its BAR placed, a
//! driver that negotiates and lays out queues register by register as Linux's
//! virtio_pci_modern does, and saving and decoding records.

#![allow(dead_code)] // Each test binary uses part of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::StateError;
use devices::pci::PciDevice;
use devices::virtio::state::{self, VirtioPciState};
use devices::virtio::{Rng, VirtioDevice, VirtioPciDevice};
use snapshot::Record;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM_SIZE: usize = 1 << 20;
pub const BAR: u64 = 0xc000_0000;
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x2000;
pub const USED: u64 = 0x3000;
pub const BUF: u64 = 0x10000;
pub const QSIZE: u16 = 16;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
/// VERSION_1, EVENT_IDX, INDIRECT_DESC.
pub const FEATURES: u64 = 1 << 32 | 1 << 29 | 1 << 28;
/// The instance of the tests' function: 00:01.0.
pub const INSTANCE: u32 = 1 << 3;

pub fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

/// A transport with its BAR placed and memory decoding on, as the VMM and Linux leave it.
pub fn transport(device: Box<dyn VirtioDevice>, mem: &Arc<GuestMemoryMmap>) -> VirtioPciDevice {
    let mut dev = VirtioPciDevice::new(device, mem.clone()).unwrap();
    dev.assign_bar(0, BAR).unwrap();
    dev.config_write(4, &[0x06, 0x00]);
    dev
}

pub fn rng(mem: &Arc<GuestMemoryMmap>) -> VirtioPciDevice {
    transport(Box::new(Rng::new().unwrap()), mem)
}

pub fn wr(dev: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
    dev.bar_write(0, offset, &value.to_le_bytes()[..len]);
}

pub fn rd(dev: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.bar_read(0, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The driver's side of one queue: what Linux's virtio_pci_modern does, register by
/// register. Queue `i`'s rings are at `DESC`, `AVAIL`, `USED` + `i * QUEUE_STRIDE`.
pub struct Ring {
    base: u64,
    avail_idx: u16,
    next_desc: u16,
}

pub const QUEUE_STRIDE: u64 = 0x4000;

/// Negotiates `features` and sets up `queues` queues, then DRIVER_OK.
pub fn set_up_queues(dev: &mut VirtioPciDevice, features: u64, queues: u16) -> Vec<Ring> {
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
    pub fn set_up(dev: &mut VirtioPciDevice) -> Ring {
        set_up_queues(dev, FEATURES, 1).remove(0)
    }

    /// Publishes a chain of one device-writable buffer of `len` bytes at `addr`.
    pub fn publish_write(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u32) -> u16 {
        self.publish(mem, &[(addr, len, F_WRITE)])
    }

    pub fn publish(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) -> u16 {
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

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.base + USED + 2)).unwrap()
    }

    pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.base + USED + 4 + 8 * u64::from(i % QSIZE);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    pub fn wait_used(&self, mem: &GuestMemoryMmap, count: u16) {
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

pub fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

pub fn used_elem(mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
    let at = USED + 4 + 8 * u64::from(i % QSIZE);
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

pub fn wait_used(mem: &GuestMemoryMmap, count: u16) {
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
pub fn save(dev: &VirtioPciDevice) -> (snapshot::RecordType, Vec<u8>) {
    state::encode_record(INSTANCE, &dev.save_state().unwrap()).unwrap()
}

pub fn decode(ty: snapshot::RecordType, bytes: &[u8]) -> Result<VirtioPciState, StateError> {
    state::decode_record(&Record { ty, payload: bytes }).map(|(instance, s)| {
        assert_eq!(instance, INSTANCE);
        s
    })
}
