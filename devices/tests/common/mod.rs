//! A test driver for virtio device models, without PCI: lays out split queues in guest
//! memory as Linux's virtio_ring does, posts chains, activates the device with them, and
//! records the interrupts the device raises.

#![allow(dead_code)] // Each test binary uses part of it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::{ActiveQueue, Interrupt, Queue, QueueSnapshot, QueueStatus, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Descriptor flag: the chain continues at `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: buffer holds an indirect table.
pub const F_INDIRECT: u16 = 4;

/// Size of each test queue, unless a test asks for another with
/// [`TestDevice::inactive_sized`].
pub const QSIZE: u16 = 16;
/// Guest memory of the test VM.
pub const MEM_SIZE: usize = 16 << 20;
/// Where queue `i`'s rings live: 0x10000 * (i + 1), descriptor table first.
fn ring_base(index: usize) -> u64 {
    0x1_0000 * (index as u64 + 1)
}
/// Data buffers start here.
pub const DATA: u64 = 0x10_0000;

/// Interrupts the device raised, as counters a test can wait on.
#[derive(Default)]
pub struct RecordingInterrupt {
    pub used: Mutex<Vec<u32>>,
    pub config_changes: AtomicU32,
    pub needs_reset: AtomicBool,
}

impl RecordingInterrupt {
    pub fn used_count(&self, queue: usize) -> u32 {
        self.used.lock().unwrap().get(queue).copied().unwrap_or(0)
    }
}

impl Interrupt for RecordingInterrupt {
    fn signal_used_queue(&self, queue_index: usize) {
        let mut used = self.used.lock().unwrap();
        if used.len() <= queue_index {
            used.resize(queue_index + 1, 0);
        }
        used[queue_index] += 1;
    }

    fn signal_config_changed(&self) {
        self.config_changes.fetch_add(1, Ordering::SeqCst);
    }

    fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

/// One buffer of a chain to post: guest address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A device-readable buffer.
pub fn ro(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        writable: false,
    }
}

/// A device-writable buffer.
pub fn wo(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        writable: true,
    }
}

/// The driver side of one split queue.
pub struct DriverQueue {
    pub index: usize,
    /// Entries in the queue.
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub notify: EventFd,
    /// The status the device updates as it serves the queue. Only a transport marks it
    /// active (and records the size), so here those read as inactive; the device's indices
    /// and counters are live all the same.
    pub status: Arc<QueueStatus>,
    avail_idx: u16,
    next_desc: u16,
}

impl DriverQueue {
    fn new(index: usize, size: u16) -> DriverQueue {
        let base = ring_base(index);
        DriverQueue {
            index,
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            status: Arc::new(QueueStatus::new()),
            avail_idx: 0,
            next_desc: 0,
        }
    }

    /// The device's view of this queue, as the transport hands it over at DRIVER_OK.
    fn active(&self, mem: &GuestMemoryMmap, event_idx: bool) -> ActiveQueue {
        let mut queue = Queue::new(self.size);
        queue.size = self.size;
        queue.desc_table = self.desc;
        queue.avail_ring = self.avail;
        queue.used_ring = self.used;
        queue.event_idx = event_idx;
        queue.indirect = true;
        queue.ready = true;
        queue.validate(mem).unwrap();
        ActiveQueue {
            index: self.index,
            queue,
            notify: self.notify.try_clone().unwrap(),
            status: self.status.clone(),
        }
    }

    /// What the queue's status says now.
    pub fn snapshot(&self, mem: &GuestMemoryMmap) -> QueueSnapshot {
        self.status.snapshot(mem)
    }

    /// Waits up to 5 s until the queue's status satisfies `cond` and returns it; the worker
    /// updates it right after the guest-visible effect a test may have waited for.
    pub fn wait_status(
        &self,
        mem: &GuestMemoryMmap,
        what: &str,
        mut cond: impl FnMut(&QueueSnapshot) -> bool,
    ) -> QueueSnapshot {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let snapshot = self.snapshot(mem);
            if cond(&snapshot) {
                return snapshot;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for queue {} to show {what}: {snapshot:?}",
                self.index
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Writes raw descriptor `i`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(i)))
            .unwrap();
    }

    /// Writes `bufs` as a chain in free descriptors and returns its head (not yet posted).
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(self.size));
        let head = self.next_desc;
        for (n, buf) in bufs.iter().enumerate() {
            let i = (head + n as u16) % self.size;
            let last = n + 1 == bufs.len();
            let mut flags = if buf.writable { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.write_desc(mem, i, buf.addr, buf.len, flags, (i + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        head
    }

    /// Makes chain `head` available (without notifying).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Publishes chain `head` and notifies the device.
    pub fn post(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.publish(mem, head);
        self.kick();
    }

    /// Writes `bufs` as a chain, publishes and notifies; returns the head.
    pub fn send(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.add_chain(mem, bufs);
        self.post(mem, head);
        head
    }

    /// Notifies the device.
    pub fn kick(&self) {
        self.notify.write(1).unwrap();
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (chain head, bytes written).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id = mem.read_obj(GuestAddress(at)).unwrap();
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}

/// A device under test, activated with `num_queues` test queues.
pub struct TestDevice<D: VirtioDevice> {
    pub device: D,
    pub mem: Arc<GuestMemoryMmap>,
    pub interrupt: Arc<RecordingInterrupt>,
    pub queues: Vec<DriverQueue>,
}

impl<D: VirtioDevice> TestDevice<D> {
    /// Acknowledges `features` and activates `device` with fresh queues, one per entry of
    /// its `queue_max_sizes`.
    pub fn activate(device: D, features: u64) -> TestDevice<D> {
        let mut t = TestDevice::inactive(device);
        t.start(features);
        t
    }

    /// Lays out the queues without activating the device, so a test can post buffers
    /// first; [`TestDevice::start`] activates it.
    pub fn inactive(device: D) -> TestDevice<D> {
        TestDevice::inactive_sized(device, QSIZE)
    }

    /// [`TestDevice::inactive`] with queues of `size` entries (at most 256: the rings of
    /// consecutive queues are 64 KiB apart).
    pub fn inactive_sized(device: D, size: u16) -> TestDevice<D> {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let queues = (0..device.queue_max_sizes().len())
            .map(|index| DriverQueue::new(index, size))
            .collect();
        TestDevice {
            device,
            mem,
            interrupt: Arc::new(RecordingInterrupt::default()),
            queues,
        }
    }

    /// Acknowledges `features` and activates the device (DRIVER_OK).
    pub fn start(&mut self, features: u64) {
        let event_idx = features & (1 << 29) != 0;
        self.device.ack_features(features);
        let active = self
            .queues
            .iter()
            .map(|q| q.active(&self.mem, event_idx))
            .collect();
        self.device
            .activate(self.mem.clone(), self.interrupt.clone(), active)
            .unwrap();
    }

    /// Resets the device, lays its queues out afresh (zeroed rings, new notifiers) and
    /// activates it again, as a driver that re-initialises the device does.
    pub fn restart(&mut self, features: u64) {
        self.device.reset();
        wait_for("the reset to complete", || self.device.quiesced());
        for q in &mut self.queues {
            let fresh = DriverQueue::new(q.index, q.size);
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(fresh.desc))
                .unwrap();
            *q = fresh;
        }
        self.start(features);
    }

    /// Waits until queue `queue` has `count` used entries.
    pub fn wait_used(&self, queue: usize, count: u16) {
        let q = &self.queues[queue];
        wait_for(&format!("{count} used entries on queue {queue}"), || {
            q.used_idx(&self.mem) == count
        });
    }

    /// Waits until the device reported NEEDS_RESET.
    pub fn wait_needs_reset(&self) {
        wait_for("NEEDS_RESET", || {
            self.interrupt.needs_reset.load(Ordering::SeqCst)
        });
    }
}

/// Polls `cond` for up to 5 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
