//! virtio-balloon (device type 5): guest memory the host can reclaim.
//!
//! [`Balloon`] owns the balloon's configuration space (the host's target in `num_pages`,
//! the driver's progress in `actual`), its three queues and the giving back of inflated
//! pages, served on its [`DeviceWorker`]:
//!
//! - inflate (queue 0): chains of little-endian u32 page frame numbers (4 KiB pages). Each
//!   page that lies inside a guest RAM region handed over at activation is discarded with
//!   `madvise(MADV_DONTNEED)`; guest RAM is private anonymous memory, so the host frees it
//!   and a later guest access faults in a zero page. Runs of contiguous frames are
//!   discarded with one call. Nothing outside those regions is ever touched, so memory the
//!   VMM maps into the guest later (and which is not in that `GuestMemoryMmap`) is safe.
//! - deflate (queue 1): only consumed; a discarded page needs nothing to come back.
//! - statistics (queue 2, with `VIRTIO_BALLOON_F_STATS_VQ`): the driver posts one buffer
//!   of statistics and the device keeps it; returning it asks the driver to refresh it.
//!
//! The host side talks to the device through a [`BalloonHandle`]: it sets the target
//! (which raises a configuration interrupt while the driver runs), reads the target and
//! actual sizes and the latest statistics, and watches [`BalloonHandle::changed`].
//! Nothing the handle does waits for the worker, and neither does a configuration access
//! on a vCPU thread.
//!
//! Whatever the guest puts in a queue is untrusted: frame numbers outside guest RAM,
//! truncated arrays and odd statistics are skipped and logged (at a bounded rate, so a
//! guest cannot flood the host log); malformed rings are reported as DEVICE_NEEDS_RESET by
//! [`ServedQueue`].
//!
//! The parts: `inflate` gives back the pages an inflate chain lists, `stats` reads the
//! driver's statistics buffers into [`BalloonStats`], and both read their chains through
//! `records`; this module is the device the transport sees, its [`BalloonHandle`] and the
//! worker side that serves the queues; [`state`] is its part of a snapshot.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::worker::{ActiveDevice, DeviceWorker, ServedQueue, lock};
use super::{ActivateError, ActiveQueue, Interrupt, VIRTIO_ID_BALLOON, VirtioDevice};

mod inflate;
mod records;
pub mod state;
mod stats;

use inflate::inflate_chain;
pub use stats::BalloonStats;
use stats::read_stats;

/// Feature bit: the device has a statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature bit: the driver may deflate the balloon when the guest runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;

/// The page size balloon frame numbers count in, whatever the guest's own page size.
pub const BALLOON_PAGE_SIZE: u64 = 4096;

/// Size of each queue.
pub const BALLOON_QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [BALLOON_QUEUE_SIZE; 3];

/// Queue indexes.
const INFLATE_QUEUE: usize = 0;
const DEFLATE_QUEUE: usize = 1;
const STATS_QUEUE: usize = 2;
/// Epoll tokens: each queue's notification, and the host's "refresh the statistics".
const INFLATE_TOKEN: u32 = 0;
const DEFLATE_TOKEN: u32 = 1;
const STATS_TOKEN: u32 = 2;
const STATS_REQUEST_TOKEN: u32 = 3;

/// Most frame numbers read from one inflate chain. Linux and FreeBSD send 256; the bound
/// keeps the work of one chain (and so a reset, which waits for the worker) small whatever
/// the guest posts. Frames beyond it stay in the guest's balloon but are not reclaimed.
pub const MAX_PFNS_PER_CHAIN: usize = 4096;

/// Configuration space layout (virtio 1.2 section 5.5.4).
const CONFIG_NUM_PAGES: usize = 0;
const CONFIG_ACTUAL: usize = 4;
/// `num_pages`, `actual`, `free_page_hint_cmd_id`, `poison_val`; the last two stay zero
/// because free page hinting and page poisoning are not offered.
const CONFIG_SIZE: usize = 16;

const LOG_NAME: &str = "virtio-balloon";
/// Warnings about guest data allowed per [`LOG_WINDOW`].
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// What the host side asked of the balloon that it cannot do.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The target exceeds guest RAM (or the 32-bit `num_pages` field).
    #[error("balloon target of {requested} pages exceeds the limit of {max} pages")]
    TargetTooLarge {
        /// Pages asked for.
        requested: u64,
        /// Largest target accepted.
        max: u64,
    },
}

/// State shared by the device, its worker and the handles. Only atomics and short locks:
/// the vCPU thread and the VMM's main thread never wait for the worker.
struct Shared {
    /// Guest RAM in balloon pages; the largest target accepted.
    guest_pages: u64,
    /// `num_pages`: the host's target.
    target: AtomicU32,
    /// `actual`: what the driver last reported.
    actual: AtomicU32,
    /// Written whenever the target or actual changes.
    changed: EventFd,
    /// Written by [`BalloonHandle::request_stats`]; watched by the worker.
    stats_request: EventFd,
    /// The last statistics the driver sent since reset.
    stats: Mutex<Option<BalloonStats>>,
    /// The driver's interrupt while the device is active, for configuration changes.
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
}

impl Shared {
    fn signal_changed(&self) {
        // A nonblocking eventfd write fails only if the counter is about to overflow, and
        // then the fd is readable anyway.
        let _ = self.changed.write(1);
    }

    fn set_actual(&self, pages: u32) {
        if self.actual.swap(pages, Ordering::AcqRel) != pages {
            self.signal_changed();
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("guest_pages", &self.guest_pages)
            .field("target", &self.target)
            .field("actual", &self.actual)
            .finish_non_exhaustive()
    }
}

/// The host's side of the balloon; see the module docs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BalloonHandle {
    shared: Arc<Shared>,
}

impl BalloonHandle {
    /// Sets the balloon's target to `pages` (4 KiB each) and, if the driver is running,
    /// tells it the configuration changed. An inactive device just keeps the target: the
    /// driver reads it when it starts.
    pub fn set_target(&self, pages: u64) -> Result<(), BalloonError> {
        let max = self.shared.guest_pages.min(u64::from(u32::MAX));
        let target = u32::try_from(pages).ok().filter(|_| pages <= max).ok_or(
            BalloonError::TargetTooLarge {
                requested: pages,
                max,
            },
        )?;
        if self.shared.target.swap(target, Ordering::AcqRel) == target {
            return Ok(());
        }
        self.shared.signal_changed();
        // The target is stored before the slot is looked at, and activation fills the slot
        // before the driver can read the configuration: either the driver sees the new
        // target when it starts, or it gets the interrupt. The interrupt is raised with
        // the slot unlocked, so no transport lock is ever taken under it.
        let interrupt = lock(&self.shared.interrupt).clone();
        if let Some(interrupt) = interrupt {
            interrupt.signal_config_changed();
        }
        Ok(())
    }

    /// The current target, in 4 KiB pages.
    pub fn target_pages(&self) -> u64 {
        u64::from(self.shared.target.load(Ordering::Acquire))
    }

    /// The balloon size the driver last reported (`actual`), in 4 KiB pages; 0 after reset.
    pub fn actual_pages(&self) -> u64 {
        u64::from(self.shared.actual.load(Ordering::Acquire))
    }

    /// A nonblocking eventfd that becomes readable whenever the target or the actual size
    /// changed. Reading it clears it, so a burst of changes reads as one; the reader then
    /// looks at [`target_pages`](Self::target_pages) and
    /// [`actual_pages`](Self::actual_pages).
    pub fn changed(&self) -> &EventFd {
        &self.shared.changed
    }

    /// Asks the driver to refresh its statistics by returning the buffer it left with the
    /// device. Does nothing visible if the driver has no buffer posted (no statistics
    /// queue, or a refresh already under way); the result shows in
    /// [`latest_stats`](Self::latest_stats) once the driver posts it back.
    pub fn request_stats(&self) {
        let _ = self.shared.stats_request.write(1);
    }

    /// The statistics the driver last sent since the device was reset, if any.
    pub fn latest_stats(&self) -> Option<BalloonStats> {
        *lock(&self.shared.stats)
    }
}

/// The virtio-balloon device; see the module docs.
#[derive(Debug)]
pub struct Balloon {
    shared: Arc<Shared>,
    acked_features: u64,
    worker: DeviceWorker,
}

impl Balloon {
    /// Creates an inactive balloon for a guest with `guest_pages` 4 KiB pages of RAM
    /// (targets above it are refused) and its parked worker thread `worker_name`;
    /// `worker_start` runs first thing on that thread, before it can ever see guest memory
    /// (the VMM installs the worker's seccomp policy there).
    pub fn new(
        guest_pages: u64,
        worker_name: &str,
        worker_start: impl FnOnce() + Send + 'static,
    ) -> io::Result<Balloon> {
        let shared = Arc::new(Shared {
            guest_pages,
            target: AtomicU32::new(0),
            actual: AtomicU32::new(0),
            changed: EventFd::new(EFD_NONBLOCK)?,
            stats_request: EventFd::new(EFD_NONBLOCK)?,
            stats: Mutex::new(None),
            interrupt: Mutex::new(None),
        });
        Ok(Balloon {
            shared,
            acked_features: 0,
            worker: DeviceWorker::spawn(worker_name, worker_start)?,
        })
    }

    /// A handle for the host side.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle {
            shared: self.shared.clone(),
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut config = [0u8; CONFIG_SIZE];
        let target = self.shared.target.load(Ordering::Acquire).to_le_bytes();
        let actual = self.shared.actual.load(Ordering::Acquire).to_le_bytes();
        config[CONFIG_NUM_PAGES..CONFIG_NUM_PAGES + 4].copy_from_slice(&target);
        config[CONFIG_ACTUAL..CONFIG_ACTUAL + 4].copy_from_slice(&actual);
        config
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        // The transport has a fixed queue count, so the statistics queue is always there
        // and only used when the driver negotiated and enabled it.
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        // Not VIRTIO_BALLOON_F_MUST_TELL_HOST: deflating needs nothing from the host, so
        // the driver may reuse deflated pages at once.
        (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = config_index(offset, i)
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; a partial write changes just its bytes.
        let mut actual = self.shared.actual.load(Ordering::Acquire).to_le_bytes();
        let mut touched = false;
        for (i, byte) in data.iter().enumerate() {
            let slot = config_index(offset, i)
                .and_then(|at| at.checked_sub(CONFIG_ACTUAL))
                .and_then(|at| actual.get_mut(at));
            if let Some(slot) = slot {
                *slot = *byte;
                touched = true;
            }
        }
        if touched {
            self.shared.set_actual(u32::from_le_bytes(actual));
        }
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let (mut inflate, mut deflate, mut stats) = (None, None, None);
        for queue in queues {
            match queue.index {
                INFLATE_QUEUE => inflate = Some(queue),
                DEFLATE_QUEUE => deflate = Some(queue),
                STATS_QUEUE => stats = Some(queue),
                _ => {}
            }
        }
        let inflate = inflate.ok_or(ActivateError::MissingQueue(INFLATE_QUEUE))?;
        let deflate = deflate.ok_or(ActivateError::MissingQueue(DEFLATE_QUEUE))?;
        let stats_negotiated = self.acked_features & (1 << VIRTIO_BALLOON_F_STATS_VQ) != 0;
        let stats = match stats {
            Some(queue) if stats_negotiated => Some(ServedQueue::new(queue)),
            Some(queue) => {
                // Enabled without the feature that gives it a meaning: nothing serves it,
                // so its status must not say the device runs on it.
                queue.status.deactivated();
                None
            }
            None => None,
        };
        let active = ActiveBalloon {
            mem,
            interrupt: interrupt.clone(),
            shared: self.shared.clone(),
            inflate: ServedQueue::new(inflate),
            deflate: ServedQueue::new(deflate),
            stats,
            held_stats: None,
            log: LogBudget::new(),
        };
        self.worker
            .activate(Box::new(active))
            .map_err(ActivateError::Worker)?;
        *lock(&self.shared.interrupt) = Some(interrupt);
        Ok(())
    }

    fn quiesced(&self) -> bool {
        self.worker.idle()
    }

    fn reset(&mut self) {
        // No configuration interrupt may follow the reset.
        *lock(&self.shared.interrupt) = None;
        self.worker.deactivate_for_reset();
        self.acked_features = 0;
        // `actual` and the statistics describe the driver, which is gone; the target is
        // the host's wish and stays, so a rebooted guest inflates to it again.
        self.shared.set_actual(0);
        *lock(&self.shared.stats) = None;
    }

    super::state::worker_snapshot_hooks!(LOG_NAME);
}

/// Index into the configuration space of byte `i` of an access at `offset`, if it can be
/// one.
fn config_index(offset: u64, i: usize) -> Option<usize> {
    usize::try_from(offset).ok()?.checked_add(i)
}

/// Limits warnings about guest data to [`LOG_BURST`] per [`LOG_WINDOW`], counting the
/// rest.
struct LogBudget {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget {
            window_start: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        if self.window_start.elapsed() >= LOG_WINDOW {
            if self.suppressed > 0 {
                log::warn!(
                    "{LOG_NAME}: {} similar warnings suppressed",
                    self.suppressed
                );
            }
            *self = LogBudget::new();
        }
        if self.used < LOG_BURST {
            self.used = self.used.saturating_add(1);
            log::warn!("{LOG_NAME}: {message}");
        } else {
            // Guest-driven: saturate rather than wrap.
            self.suppressed = self.suppressed.saturating_add(1);
        }
    }
}

/// The device while the driver drives it, on the worker.
struct ActiveBalloon {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    shared: Arc<Shared>,
    inflate: ServedQueue,
    deflate: ServedQueue,
    stats: Option<ServedQueue>,
    /// Head of the statistics chain the device holds until the host wants fresh numbers.
    held_stats: Option<u16>,
    log: LogBudget,
}

impl ActiveBalloon {
    fn serve_inflate(&mut self) {
        let Self {
            mem,
            interrupt,
            inflate,
            log,
            ..
        } = self;
        inflate.serve(LOG_NAME, mem, &**interrupt, |chain| {
            inflate_chain(mem, chain, log);
            0
        });
    }

    fn serve_deflate(&mut self) {
        // Discarded pages come back as zero pages on the guest's next touch, so there is
        // nothing to undo: the chains are only returned.
        self.deflate
            .serve(LOG_NAME, &self.mem, &*self.interrupt, |_chain| 0);
    }

    /// Takes every statistics buffer the driver posted, keeping the newest.
    fn serve_stats(&mut self) {
        let Self {
            mem,
            interrupt,
            shared,
            stats,
            held_stats,
            log,
            ..
        } = self;
        let Some(queue) = stats.as_mut() else {
            return;
        };
        loop {
            while let Some(chain) = queue.pop(LOG_NAME, mem, &**interrupt) {
                read_stats(mem, &chain, shared, log);
                // A driver keeps one buffer posted; an extra one goes straight back
                // rather than being held forever.
                if let Some(older) = held_stats.replace(chain.head) {
                    queue.complete(LOG_NAME, mem, &**interrupt, older, 0);
                }
            }
            // Publishes avail_event when EVENT_IDX is on; without it the driver would stop
            // notifying after its first buffer. False on a broken queue too.
            if !queue.enable_notification(LOG_NAME, mem, &**interrupt) {
                return;
            }
        }
    }

    /// Hands the held statistics buffer back, which the driver takes as a request to
    /// refresh it.
    fn return_stats_buffer(&mut self) {
        let _ = self.shared.stats_request.read();
        // A broken queue takes nothing back: `complete` leaves it alone.
        if let (Some(queue), Some(head)) = (self.stats.as_mut(), self.held_stats.take()) {
            queue.complete(LOG_NAME, &self.mem, &*self.interrupt, head, 0);
        }
    }
}

impl ActiveDevice for ActiveBalloon {
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        let mut sources = vec![
            (self.inflate.notify.as_raw_fd(), INFLATE_TOKEN),
            (self.deflate.notify.as_raw_fd(), DEFLATE_TOKEN),
        ];
        if let Some(stats) = &self.stats {
            sources.push((stats.notify.as_raw_fd(), STATS_TOKEN));
            sources.push((self.shared.stats_request.as_raw_fd(), STATS_REQUEST_TOKEN));
        }
        sources
    }

    fn save_queues(&self) -> Option<Vec<super::worker::SavedQueue>> {
        Some(self.saved_queues())
    }

    fn start(&mut self) {
        // A request made before the driver started is answered by the buffer it posts now.
        let _ = self.shared.stats_request.read();
        self.serve_inflate();
        self.serve_deflate();
        self.serve_stats();
    }

    fn handle_event(&mut self, token: u32) {
        match token {
            INFLATE_TOKEN => {
                self.inflate.clear_notification();
                self.serve_inflate();
            }
            DEFLATE_TOKEN => {
                self.deflate.clear_notification();
                self.serve_deflate();
            }
            STATS_TOKEN => {
                if let Some(stats) = &self.stats {
                    stats.clear_notification();
                }
                self.serve_stats();
            }
            STATS_REQUEST_TOKEN => self.return_stats_buffer(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::super::{Queue, QueueStatus};
    use super::*;

    /// Takes nothing: activation here never gets as far as serving.
    struct NoInterrupt;

    impl Interrupt for NoInterrupt {
        fn signal_used_queue(&self, _queue_index: usize) {}
        fn signal_config_changed(&self) {}
        fn set_needs_reset(&self) {}
    }

    #[test]
    fn a_stats_queue_enabled_without_the_feature_reads_inactive() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let queues: Vec<ActiveQueue> = [INFLATE_QUEUE, DEFLATE_QUEUE, STATS_QUEUE]
            .into_iter()
            .map(|index| {
                let base = 0x1_0000 * (index as u64 + 1);
                let mut queue = Queue::new(16);
                queue.desc_table = base;
                queue.avail_ring = base + 0x1000;
                queue.used_ring = base + 0x2000;
                queue.ready = true;
                let status = Arc::new(QueueStatus::new());
                // As the transport does before handing the queues over.
                status.activated(&queue);
                ActiveQueue {
                    index,
                    queue,
                    notify: EventFd::new(EFD_NONBLOCK).unwrap(),
                    status,
                }
            })
            .collect();
        let statuses: Vec<_> = queues.iter().map(|q| q.status.clone()).collect();
        let mut balloon = Balloon::new(256, "test-balloon-status", || {}).unwrap();
        balloon.ack_features(0);
        balloon
            .activate(mem.clone(), Arc::new(NoInterrupt), queues)
            .unwrap();
        let active: Vec<bool> = statuses.iter().map(|s| s.snapshot(&mem).active).collect();
        assert_eq!(
            active,
            [true, true, false],
            "nothing serves the statistics queue"
        );
        balloon.reset();
    }

    #[test]
    fn config_index_never_overflows() {
        assert_eq!(config_index(u64::MAX, 1), None);
        assert_eq!(config_index(4, 2), Some(6));
    }
}
