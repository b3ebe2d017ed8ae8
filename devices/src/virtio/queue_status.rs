//! The live status of each virtqueue, for the VMM's control thread.
//!
//! This module owns [`QueueStatus`], one per queue of a transport, and the
//! [`QueueSnapshot`] it gives. It exists so an operator can tell, while the VM runs, where
//! a stalled queue is stuck: a driver `avail.idx` ahead of the device's next avail index
//! on a device that sleeps is a missed notification; both equal means the guest stopped
//! posting; a device used index behind its avail index means requests in flight; a broken
//! queue waits for a reset.
//!
//! Three parties share a status, each writing its own part:
//! - the transport creates it with the device and, on activation and reset, records what
//!   the driver set up (size, avail ring, EVENT_IDX) and where the device starts;
//! - the device worker, through [`ServedQueue`](super::ServedQueue), records each chain it
//!   takes and publishes, each notification it consumes, each interrupt it raises, and a
//!   malformed queue;
//! - the control thread reads it with [`QueueStatus::snapshot`], which also reads the
//!   driver's side (`avail.idx`, `used_event`) from guest memory at that moment.
//!
//! A queue the host kernel serves (vhost: virtio-vsock's receive and transmit queues) has
//! a status made with [`QueueStatus::served_by_kernel`]: no worker records what it takes,
//! so the snapshot says so ([`QueueSnapshot::vhost`]), reports the device's next avail
//! index and its notifications as 0 (unknown), and reads the used index the kernel
//! published from the used ring in guest memory.
//!
//! Only atomics are involved, so neither the worker nor a vCPU thread ever waits for a
//! query. The transport's part changes rarely and together (activation, reset), so it sits
//! behind a sequence counter a snapshot retries on; the worker's part is read in an order
//! that keeps the indices meaningful (see [`QueueStatus::snapshot`]).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Queue;

/// How long [`QueueStatus::snapshot`] keeps retrying while the transport rewrites the
/// queue's set-up. The transport's writes are a handful of stores with nothing that blocks
/// between them, so only a writer descheduled mid-way keeps a snapshot waiting, and then
/// for a scheduling delay, not the 100 yields it takes another thread (tests saw that
/// limit run out on a busy two-CPU host).
const SNAPSHOT_PATIENCE: Duration = Duration::from_millis(100);
/// Retries that only yield the CPU before [`QueueStatus::snapshot`] sleeps between them.
const SNAPSHOT_YIELDS: u32 = 16;
/// Sleep between later retries.
const SNAPSHOT_BACKOFF: Duration = Duration::from_micros(50);

/// Live state of one virtqueue, shared by the transport (which creates it, one per queue,
/// for the device's whole life), the device worker (which updates it as it serves the
/// queue) and the VMM's control thread (which reads it). Lock-free: atomics only.
///
/// See the module docs for who writes what.
#[derive(Debug, Default)]
pub struct QueueStatus {
    /// The host kernel serves the queue (fixed when the status is made).
    vhost: bool,
    /// Sequence counter over what the transport writes (`active` to `device_used`): odd
    /// while it writes, bumped by two per change.
    seq: AtomicU32,
    /// The transport handed the queue to the running device.
    active: AtomicBool,
    /// Queue size the driver set.
    size: AtomicU16,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    event_idx: AtomicBool,
    /// Guest address of the available ring, to read the driver's side from.
    avail_ring: AtomicU64,
    /// Guest address of the used ring, to read a kernel-served queue's used index from.
    used_ring: AtomicU64,
    /// The device marked the queue malformed (NEEDS_RESET) since activation.
    broken: AtomicBool,
    /// Index of the next avail entry the device takes.
    device_avail: AtomicU16,
    /// `used.idx` the device published last.
    device_used: AtomicU16,
    /// Driver notifications the device consumed, cumulative.
    notifications: AtomicU64,
    /// Used-buffer interrupts the device raised, cumulative.
    interrupts: AtomicU64,
}

/// What a queue looked like at one moment; see [`QueueStatus::snapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The device is running on this queue (activated, not reset since).
    pub active: bool,
    /// Queue size the driver set (0 while inactive).
    pub size: u16,
    /// VIRTIO_RING_F_EVENT_IDX is on.
    pub event_idx: bool,
    /// The device marked the queue malformed (NEEDS_RESET) since activation.
    pub broken: bool,
    /// The host kernel serves the queue: `device_avail` and `notifications` are not known
    /// (0), `device_used` is `used.idx` read from guest memory.
    pub vhost: bool,
    /// `avail.idx` in guest memory (0 while inactive).
    pub driver_avail: u16,
    /// Index of the next avail entry the device will take.
    pub device_avail: u16,
    /// `used.idx` the device published.
    pub device_used: u16,
    /// The driver's `used_event` (0 without EVENT_IDX or while inactive).
    pub used_event: u16,
    /// Driver notifications consumed since the VM started (cumulative across resets).
    /// Includes the notifications a device sends itself to come back to a busy queue
    /// after a bounded burst ([`MAX_CHAINS_PER_WAKE`](super::worker::MAX_CHAINS_PER_WAKE)
    /// chains), which look the same as a driver's.
    pub notifications: u64,
    /// Interrupts raised for this queue since the VM started (cumulative). Counts what the
    /// device signalled; the transport may still hold one pending behind a masked vector.
    pub interrupts: u64,
}

impl QueueStatus {
    /// Inactive, all zero.
    pub fn new() -> QueueStatus {
        QueueStatus::default()
    }

    /// The status of a queue the host kernel serves (see the module docs).
    pub fn served_by_kernel() -> QueueStatus {
        QueueStatus {
            vhost: true,
            ..QueueStatus::default()
        }
    }

    /// What the queue looks like now; reads the driver's `avail.idx` and `used_event` from
    /// `mem` (a failed read, e.g. rings outside memory, gives 0 and is not an error).
    ///
    /// The transport's part (active, size, EVENT_IDX, the device's starting indices) is
    /// not torn: a snapshot taken across an activation or a reset is retried, so it shows
    /// one configuration. The wait is bounded: should the transport stay mid-change for
    /// 100 ms (a vCPU thread descheduled that long between two stores), one more read is
    /// returned as it comes, possibly torn ([`QueueStatus::try_snapshot`] gives up instead).
    ///
    /// The worker's part is live and read without stopping it, in an order that keeps the
    /// indices consistent with each other: `device_used` first, then `device_avail`, then
    /// the driver's `avail.idx`, each at least as new as the one before. So neither
    /// `driver_avail.wrapping_sub(device_avail)` (chains waiting for the device) nor
    /// `device_avail.wrapping_sub(device_used)` (chains the device holds) comes out
    /// "negative" (close to 65536) because of the read itself; only a driver that moves
    /// `avail.idx` backwards makes the first one do so. Each may be stale by the time it is
    /// looked at, and the counters, read after the indices, may have moved on from them.
    pub fn snapshot(&self, mem: &GuestMemoryMmap) -> QueueSnapshot {
        self.try_snapshot(mem).unwrap_or_else(|| self.read(mem))
    }

    /// [`QueueStatus::snapshot`], but `None` rather than a possibly torn read when the
    /// transport stays mid-change for longer than the patience.
    pub(crate) fn try_snapshot(&self, mem: &GuestMemoryMmap) -> Option<QueueSnapshot> {
        let mut deadline = None;
        let mut retries = 0u32;
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 0 {
                let snapshot = self.read(mem);
                // Pairs with the release fence in `write_setup`: if any load above saw a
                // store of a later change, this load sees that change's odd count.
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == before {
                    return Some(snapshot);
                }
            }
            // SNAPSHOT_PATIENCE is a short constant; `None` (an `Instant` at
            // the end of time) would only mean giving up at once.
            let deadline =
                (*deadline.get_or_insert_with(|| Instant::now().checked_add(SNAPSHOT_PATIENCE)))?;
            if Instant::now() >= deadline {
                return None;
            }
            if retries < SNAPSHOT_YIELDS {
                std::thread::yield_now();
            } else {
                std::thread::sleep(SNAPSHOT_BACKOFF);
            }
            retries = retries.saturating_add(1);
        }
    }

    /// One unvalidated read of everything; see [`QueueStatus::snapshot`] for the order.
    fn read(&self, mem: &GuestMemoryMmap) -> QueueSnapshot {
        let active = self.active.load(Ordering::Relaxed);
        let size = self.size.load(Ordering::Relaxed);
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let avail_ring = self.avail_ring.load(Ordering::Relaxed);
        let used_ring = self.used_ring.load(Ordering::Relaxed);
        let broken = self.broken.load(Ordering::Relaxed);
        let (device_used, device_avail) = if self.vhost {
            // The kernel's `used.idx`, read before the driver's `avail.idx` (below), so
            // the chains not returned yet never come out "negative" because of the read.
            let used = if active {
                read_u16(mem, used_ring, 2, Ordering::Acquire)
            } else {
                0
            };
            (used, 0)
        } else {
            // Acquire pairs with the worker's release stores: a `device_used` of n means
            // the pop that took chain n - 1 (and its `device_avail` store) is visible, and
            // a `device_avail` of n means the driver's `avail.idx` the worker read is too.
            (
                self.device_used.load(Ordering::Acquire),
                self.device_avail.load(Ordering::Acquire),
            )
        };
        let (driver_avail, used_event) = if active {
            // avail ring: flags, idx, ring[size], used_event (virtio 1.2 section 2.7.6).
            let idx = read_u16(mem, avail_ring, 2, Ordering::Acquire);
            let used_event = if event_idx {
                // At most 4 + 2 * 65535: cannot overflow.
                #[allow(clippy::arithmetic_side_effects)]
                let used_event_offset = 4 + 2 * u64::from(size);
                read_u16(mem, avail_ring, used_event_offset, Ordering::Relaxed)
            } else {
                0
            };
            (idx, used_event)
        } else {
            (0, 0)
        };
        QueueSnapshot {
            active,
            size,
            event_idx,
            broken,
            vhost: self.vhost,
            driver_avail,
            device_avail,
            device_used,
            used_event,
            notifications: self.notifications.load(Ordering::Relaxed),
            interrupts: self.interrupts.load(Ordering::Relaxed),
        }
    }

    /// Runs the transport's `write` as one change snapshots never see half of. There is one
    /// writer at a time: the transport, under its `&mut self`.
    fn write_setup(&self, write: impl FnOnce()) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd count before the stores of `write` (see `snapshot`).
        fence(Ordering::Release);
        write();
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The transport hands `queue`, validated, to the device: records its set-up and the
    /// device's starting indices, and clears `broken`.
    pub(crate) fn activated(&self, queue: &Queue) {
        self.write_setup(|| {
            self.avail_ring.store(queue.avail_ring, Ordering::Relaxed);
            self.used_ring.store(queue.used_ring, Ordering::Relaxed);
            self.size.store(queue.size, Ordering::Relaxed);
            self.event_idx.store(queue.event_idx, Ordering::Relaxed);
            self.broken.store(false, Ordering::Relaxed);
            self.device_avail
                .store(queue.next_avail(), Ordering::Relaxed);
            self.device_used.store(queue.next_used(), Ordering::Relaxed);
            self.active.store(true, Ordering::Relaxed);
        });
    }

    /// The device no longer runs on the queue (device reset, or an activation that
    /// failed): set-up and indices go back to 0, the counters stay.
    pub(crate) fn deactivated(&self) {
        self.write_setup(|| {
            self.active.store(false, Ordering::Relaxed);
            self.avail_ring.store(0, Ordering::Relaxed);
            self.used_ring.store(0, Ordering::Relaxed);
            self.size.store(0, Ordering::Relaxed);
            self.event_idx.store(false, Ordering::Relaxed);
            self.broken.store(false, Ordering::Relaxed);
            self.device_avail.store(0, Ordering::Relaxed);
            self.device_used.store(0, Ordering::Relaxed);
        });
    }

    /// The device took avail entries up to (not including) `next_avail`.
    pub(crate) fn set_device_avail(&self, next_avail: u16) {
        // Release: makes the worker's read of `avail.idx` visible before this index (see
        // `read`).
        self.device_avail.store(next_avail, Ordering::Release);
    }

    /// The device published `used.idx` = `next_used`.
    pub(crate) fn set_device_used(&self, next_used: u16) {
        // Release: makes the `device_avail` store of every chain used here visible first.
        self.device_used.store(next_used, Ordering::Release);
    }

    /// The device consumed `count` notifications.
    pub(crate) fn add_notifications(&self, count: u64) {
        self.notifications.fetch_add(count, Ordering::Relaxed);
    }

    /// The device raised an interrupt for the queue.
    pub(crate) fn add_interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
    }

    /// The device found the queue malformed and reported NEEDS_RESET.
    pub(crate) fn set_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }
}

/// The little-endian `u16` at guest address `base + offset`, or 0 if it cannot be read
/// (or the sum overflows): a status query must not fail because the driver's rings are not
/// where it said.
fn read_u16(mem: &GuestMemoryMmap, base: u64, offset: u64, order: Ordering) -> u16 {
    base.checked_add(offset)
        .and_then(|addr| mem.load::<u16>(GuestAddress(addr), order).ok())
        .map(u16::from_le)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    //! The snapshot against guest memory directly; the statuses of running devices are
    //! tested in `devices/tests/virtio_pci.rs` and the device tests.

    use super::*;

    const MEM_SIZE: usize = 0x10000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn queue(avail_ring: u64, size: u16, event_idx: bool) -> Queue {
        let mut queue = Queue::new(size);
        queue.avail_ring = avail_ring;
        queue.event_idx = event_idx;
        queue.ready = true;
        queue
    }

    #[test]
    fn snapshot_reads_the_driver_side_from_guest_memory() {
        let mem = memory();
        let avail = 0x2000;
        mem.write_obj(7u16.to_le(), GuestAddress(avail + 2))
            .unwrap();
        mem.write_obj(5u16.to_le(), GuestAddress(avail + 4 + 2 * 16))
            .unwrap();
        let status = QueueStatus::new();
        status.activated(&queue(avail, 16, true));
        let s = status.snapshot(&mem);
        assert!(s.active && s.event_idx && !s.broken);
        assert_eq!((s.size, s.driver_avail, s.used_event), (16, 7, 5));
    }

    #[test]
    fn snapshot_of_rings_outside_guest_memory_reads_zeros() {
        let mem = memory();
        // What a read that wrapped around to address 0 would see instead.
        mem.write_obj(0x7777u16, GuestAddress(0)).unwrap();
        mem.write_obj(0x7777u16, GuestAddress(2)).unwrap();
        // Wholly outside, straddling the end, and where `addr + offset` wraps.
        for avail in [MEM_SIZE as u64 + 0x1000, MEM_SIZE as u64 - 2, u64::MAX - 1] {
            let status = QueueStatus::new();
            status.activated(&queue(avail, 16, true));
            status.set_device_avail(3);
            let s = status.snapshot(&mem);
            assert_eq!(
                s,
                QueueSnapshot {
                    active: true,
                    size: 16,
                    event_idx: true,
                    device_avail: 3,
                    ..QueueSnapshot::default()
                },
                "avail ring at {avail:#x}"
            );
        }
    }

    #[test]
    fn a_kernel_served_queue_reads_the_used_index_from_guest_memory_and_knows_no_more() {
        let mem = memory();
        let (avail, used) = (0x2000, 0x3000);
        mem.write_obj(9u16.to_le(), GuestAddress(avail + 2))
            .unwrap();
        mem.write_obj(4u16.to_le(), GuestAddress(avail + 4 + 2 * 16))
            .unwrap();
        mem.write_obj(7u16.to_le(), GuestAddress(used + 2)).unwrap();
        let status = QueueStatus::served_by_kernel();
        assert_eq!(
            status.snapshot(&mem),
            QueueSnapshot {
                vhost: true,
                ..QueueSnapshot::default()
            },
            "inactive: nothing read"
        );
        let mut q = queue(avail, 16, true);
        q.used_ring = used;
        status.activated(&q);
        status.add_interrupt();
        let s = status.snapshot(&mem);
        assert_eq!(
            s,
            QueueSnapshot {
                active: true,
                size: 16,
                event_idx: true,
                broken: false,
                vhost: true,
                driver_avail: 9,
                device_avail: 0,
                device_used: 7,
                used_event: 4,
                notifications: 0,
                interrupts: 1,
            }
        );
        // The kernel moves on: the next snapshot reads where it is now.
        mem.write_obj(9u16.to_le(), GuestAddress(used + 2)).unwrap();
        assert_eq!(status.snapshot(&mem).device_used, 9);
        status.deactivated();
        assert_eq!(status.snapshot(&mem).device_used, 0);
        // A queue the VMM serves does not read the used ring.
        let own = QueueStatus::new();
        own.activated(&q);
        assert_eq!(own.snapshot(&mem).device_used, 0);
        assert!(!own.snapshot(&mem).vhost);
    }

    #[test]
    fn inactive_queue_does_not_read_guest_memory() {
        let mem = memory();
        mem.write_obj(7u16.to_le(), GuestAddress(2)).unwrap();
        let status = QueueStatus::new();
        assert_eq!(status.snapshot(&mem), QueueSnapshot::default());
        status.activated(&queue(0, 16, false));
        assert_eq!(status.snapshot(&mem).driver_avail, 7);
        status.deactivated();
        assert_eq!(status.snapshot(&mem).driver_avail, 0);
    }

    #[test]
    fn deactivation_clears_the_set_up_and_keeps_the_counters() {
        let mem = memory();
        let status = QueueStatus::new();
        status.activated(&queue(0x2000, 16, true));
        status.set_device_avail(4);
        status.set_device_used(3);
        status.add_notifications(2);
        status.add_interrupt();
        status.set_broken();
        assert!(status.snapshot(&mem).broken);
        status.deactivated();
        assert_eq!(
            status.snapshot(&mem),
            QueueSnapshot {
                notifications: 2,
                interrupts: 1,
                ..QueueSnapshot::default()
            }
        );
    }

    #[test]
    fn snapshots_taken_during_activations_and_resets_are_never_half_of_one() {
        let status = std::sync::Arc::new(QueueStatus::new());
        let writer = {
            let status = status.clone();
            std::thread::spawn(move || {
                let (a, b) = (queue(0x2000, 16, true), queue(0x4000, 256, false));
                // Changes far apart compared to their own length, as a guest's resets are
                // (each takes many exits), yet often enough to overlap many snapshots.
                let pause = || {
                    let start = std::time::Instant::now();
                    while start.elapsed() < std::time::Duration::from_micros(2) {
                        std::hint::spin_loop();
                    }
                };
                for _ in 0..20_000 {
                    status.activated(&a);
                    pause();
                    status.deactivated();
                    pause();
                    status.activated(&b);
                    pause();
                }
            })
        };
        let mem = memory();
        let whole = |s: QueueSnapshot| {
            matches!(
                (s.active, s.size, s.event_idx),
                (false, 0, false) | (true, 16, true) | (true, 256, false)
            )
        };
        // Only validated reads are checked: on an overloaded host the writer can be
        // descheduled mid-change for longer than the patience, and then `snapshot` owns up
        // to returning whatever it reads. Most reads must validate, or nothing was tested.
        let (mut validated, mut gave_up) = (0u64, 0u64);
        while !writer.is_finished() {
            match status.try_snapshot(&mem) {
                Some(s) => {
                    assert!(whole(s), "torn snapshot {s:?}");
                    validated += 1;
                }
                None => gave_up += 1,
            }
        }
        writer.join().unwrap();
        assert!(
            validated > gave_up,
            "too few validated snapshots: {validated}, gave up on {gave_up}"
        );
    }
}
