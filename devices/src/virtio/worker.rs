//! The worker thread behind a virtio device, and the serving of one queue on it.
//!
//! A [`DeviceWorker`] is created with its device, while the VM is built, and parks until
//! the driver activates the device. Activation and reset happen on a vCPU thread in the
//! middle of a register write; they only hand the worker an [`ActiveDevice`] (the queues
//! and whatever else the device serves) or take it back, and wait until the worker has
//! done so. No thread is ever created then. That is what lets a sandboxed VMM confine each
//! worker with its own seccomp policy (the `start` hook of [`DeviceWorker::spawn`] runs
//! first thing on the thread): a thread spawned from a vCPU thread would inherit the vCPU's
//! filter as well. And because a reset is not done until the worker has let go (the
//! transport reports it pending until [`DeviceWorker::idle`]), a reset really stops the
//! device before the driver may reuse its rings.
//!
//! [`ServedQueue`] is the common part of serving a queue: drain its notification, serve
//! the available chains, interrupt the driver if it asked, and on a malformed queue report
//! DEVICE_NEEDS_RESET once and leave the queue alone until reset. It serves at most
//! [`MAX_CHAINS_PER_WAKE`] chains or [`MAX_BYTES_PER_WAKE`] bytes at a time and then
//! notifies itself, so the worker gets
//! back to its other events (a reset, another queue) however busy the guest keeps it.
//! A device with a single queue implements [`SingleQueueDevice`] and gets its
//! [`ActiveDevice`] side from it.
//!
//! For a snapshot, [`DeviceWorker::pause`] stops the worker between two events (so
//! between requests: a device finishes the request it is serving before it looks at its
//! mailbox) and has the active device describe its queues ([`ActiveDevice::save_queues`]);
//! [`DeviceWorker::resume`] serves it again. A paused device keeps its queues and guest
//! memory: only its notifications go unwatched.
//!
//! [`ServedQueue`] also keeps the queue's [`QueueStatus`] up to date (the chains it takes
//! and publishes, the notifications it consumes, the interrupts it raises, a malformed
//! queue), which is why devices take chains, publish them, consume notifications, re-arm
//! and interrupt through it rather than through its [`Queue`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::log_limit::LogLimiter;
use super::{ActiveQueue, DescriptorChain, Interrupt, Queue, QueueError, QueueStatus};

/// Epoll token of the command mailbox; device tokens are `u32`, so they never collide.
const COMMAND_TOKEN: u64 = u64::MAX;
/// How long a command waits for the worker before giving up on it. Devices bound the work
/// one event may do, so a healthy worker answers in far less.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reset waits on the vCPU thread for the worker to let go. A worker still busy
/// after that lets go later, by itself: the transport keeps the reset pending (the driver
/// reads a non-zero device status) until [`DeviceWorker::idle`] says it has.
const DEACTIVATE_WAIT: Duration = Duration::from_millis(500);
/// Events taken from epoll per wake.
const EVENTS_PER_WAKE: usize = 16;
/// Most chains [`ServedQueue::serve`] serves before it lets the worker look at its other
/// events (a reset command among them). A guest that keeps a queue full would otherwise
/// keep the worker draining past the command timeout, and a reset would not stop it.
pub const MAX_CHAINS_PER_WAKE: usize = 64;
/// Most bytes of chains (the sum of their buffers' lengths) [`ServedQueue::serve`] serves
/// before it lets the worker look at its other events, for the same reason: 64 chains of
/// whole-disk reads would otherwise fit in one turn. A turn always serves at least one
/// chain; what one chain may hold is the device's to bound (virtio-blk's `seg_max` and
/// `size_max`).
pub const MAX_BYTES_PER_WAKE: u64 = 16 << 20;

/// The part of a device that runs on its worker while the device is active.
pub trait ActiveDevice: Send {
    /// The descriptors to watch while active, each with the token [`handle_event`] gets.
    /// They must stay open as long as this value lives.
    ///
    /// [`handle_event`]: ActiveDevice::handle_event
    fn event_sources(&self) -> Vec<(RawFd, u32)>;

    /// Called on activation, before any event: the driver may have posted buffers before
    /// the notification that DRIVER_OK's queue setup implies. Called again when the worker
    /// resumes the device after a pause ([`DeviceWorker::resume`]).
    fn start(&mut self);

    /// Called on the worker when it pauses the device, before
    /// [`save_queues`](ActiveDevice::save_queues): a device whose queues something else
    /// serves (the kernel's vhost) stops that here, so the positions it then gives stay
    /// put. Nothing by default: a paused device's notifications already go unwatched.
    fn pause(&mut self) {}

    /// The descriptor registered under `token` is readable.
    fn handle_event(&mut self, token: u32);

    /// Where the device is in each of its queues, for a snapshot; called on the worker while
    /// it is paused. `None` (the default): the device cannot be snapshotted, and a snapshot
    /// of it fails with a clear error rather than losing state. A device implements this by
    /// listing its [`ServedQueue`]s ([`ServedQueue::save`]).
    ///
    /// Chains the device took and still holds without having used them (a stashed receive
    /// buffer, a frame the backend could not take yet, the balloon's statistics buffer) are
    /// given back by rewinding `next_avail` over them ([`ServedQueue::save_unpopped`]): they
    /// are the last ones it took from that queue, their avail ring entries are still
    /// there (the driver cannot reuse a slot while its chain is outstanding), so the
    /// restored device takes them again. Nothing a device holds is lost that way, and no
    /// device needs state of its own for it.
    fn save_queues(&self) -> Option<Vec<SavedQueue>> {
        None
    }
}

/// A queue's ring positions, as the device left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedQueue {
    /// Queue index.
    pub index: usize,
    /// The next avail entry the restored device takes.
    pub next_avail: u16,
    /// The `used.idx` the device published.
    pub next_used: u16,
    /// `next_used` when the device last decided whether to interrupt (EVENT_IDX state).
    pub signalled_used: u16,
}

/// A device with one queue, served whenever it is notified (and once on activation): all
/// such a device has to say is how to serve its queue; [`ActiveDevice`] follows.
pub trait SingleQueueDevice: Send {
    /// The queue the device serves.
    fn queue(&self) -> &ServedQueue;

    /// Serves what the driver made available.
    fn serve(&mut self);
}

impl<T: SingleQueueDevice> ActiveDevice for T {
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![(self.queue().notify.as_raw_fd(), 0)]
    }

    fn start(&mut self) {
        self.serve();
    }

    fn handle_event(&mut self, _token: u32) {
        self.queue().clear_notification();
        self.serve();
    }

    fn save_queues(&self) -> Option<Vec<SavedQueue>> {
        Some(vec![self.queue().save()])
    }
}

/// What the device asks of its worker.
enum Command {
    /// Serve this device.
    Activate(Box<dyn ActiveDevice>),
    /// Drop the active device (reset).
    Deactivate,
    /// Stop watching the active device's events and describe its queues.
    Pause,
    /// Watch the paused device's events again.
    Resume,
    /// Return (device dropped).
    Exit,
}

/// The mailbox between the device and its worker: one command at a time with its sequence
/// number, a wake-up eventfd the worker sleeps on, and the sequence number of the last
/// command carried out, which the sender waits for. A command sent before the worker took
/// the previous one replaces it (each command drops the active device first, so the last
/// one is all that matters), and carrying it out answers for both.
struct Link {
    command: Mutex<(Option<Command>, u64)>,
    wake: EventFd,
    done: Mutex<u64>,
    done_changed: Condvar,
    /// What the last pause found: `None` before any, `Some(None)` if no device was
    /// active, `Some(Some(None))` for a device that cannot describe its queues.
    paused: Mutex<Option<Option<Option<Vec<SavedQueue>>>>>,
}

/// How long [`DeviceWorker::pause`] waits for the worker to finish what it is doing.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`DeviceWorker::pause`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paused {
    /// No device was active (never activated, or reset): there are no queues to save.
    Inactive,
    /// The active device stopped; here are its queues.
    Active(Vec<SavedQueue>),
    /// The active device stopped but cannot describe its queues (no snapshot support).
    Unsupported,
}

/// A device's worker thread; see the module docs. Dropping it stops the thread.
pub struct DeviceWorker {
    name: String,
    link: Arc<Link>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DeviceWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceWorker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DeviceWorker {
    /// Starts the parked worker thread `name`; `start` runs first thing on it, before it
    /// can ever see guest memory (the VMM installs the worker's seccomp policy there).
    pub fn spawn(name: &str, start: impl FnOnce() + Send + 'static) -> io::Result<DeviceWorker> {
        let link = Arc::new(Link {
            command: Mutex::new((None, 0)),
            wake: EventFd::new(EFD_NONBLOCK)?,
            done: Mutex::new(0),
            done_changed: Condvar::new(),
            paused: Mutex::new(None),
        });
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            link.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, COMMAND_TOKEN),
        )?;
        let worker_link = link.clone();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                start();
                run(&thread_name, &worker_link, &epoll);
            })?;
        Ok(DeviceWorker {
            name: name.to_owned(),
            link,
            thread: Some(thread),
        })
    }

    /// Hands `device` to the worker, replacing any active one, and waits until the worker
    /// serves it.
    pub fn activate(&self, device: Box<dyn ActiveDevice>) -> io::Result<()> {
        self.send(Command::Activate(device), COMMAND_TIMEOUT)
    }

    /// Takes the active device back (dropping it on the worker) and waits a little for the
    /// worker to let go of it. A worker in the middle of a long request answers
    /// [`io::ErrorKind::TimedOut`] and lets go as soon as it is done: [`DeviceWorker::idle`]
    /// says when.
    pub fn deactivate(&self) -> io::Result<()> {
        self.send(Command::Deactivate, DEACTIVATE_WAIT)
    }

    /// Stops serving the active device once the worker is between two events (so after the
    /// request it is serving, if any), and has it describe its queues. Waits at most
    /// [`PAUSE_TIMEOUT`]; a worker still busy then answers [`io::ErrorKind::TimedOut`],
    /// and the caller should [`DeviceWorker::resume`] it (the pause may still happen later;
    /// the resume undoes it). While paused the device keeps its queues: notifications wait
    /// in their eventfds.
    pub fn pause(&self) -> io::Result<Paused> {
        *lock(&self.link.paused) = None;
        self.send(Command::Pause, PAUSE_TIMEOUT)?;
        match lock(&self.link.paused).take() {
            Some(None) => Ok(Paused::Inactive),
            Some(Some(Some(queues))) => Ok(Paused::Active(queues)),
            Some(Some(None)) => Ok(Paused::Unsupported),
            // Carried out (done was bumped) without an answer: a later command replaced
            // the pause in the mailbox.
            None => Err(io::Error::other(format!(
                "the {} worker did not pause: another command replaced the pause",
                self.name
            ))),
        }
    }

    /// Serves the paused device again (looking at its queues at once, as on activation).
    /// Nothing happens if no device is paused.
    pub fn resume(&self) -> io::Result<()> {
        self.send(Command::Resume, COMMAND_TIMEOUT)
    }

    /// [`DeviceWorker::deactivate`] for a device reset: a worker still busy is normal (the
    /// reset stays pending until [`DeviceWorker::idle`]), a worker that is gone is logged.
    pub fn deactivate_for_reset(&self) {
        match self.deactivate() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                log::debug!(
                    "{}: reset waits for the worker to finish a request",
                    self.name
                );
            }
            Err(e) => log::error!("{}: reset did not reach the worker: {e}", self.name),
        }
    }

    /// Whether the worker has carried out every command sent to it (so after
    /// [`DeviceWorker::deactivate`], whether it has let go of the device), or is gone.
    pub fn idle(&self) -> bool {
        let sent = lock(&self.link.command).1;
        *lock(&self.link.done) >= sent || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Hands `command` to the worker and waits (at most `wait`) until it has been carried
    /// out.
    fn send(&self, command: Command, wait: Duration) -> io::Result<()> {
        let alive = self.thread.as_ref().is_some_and(|t| !t.is_finished());
        if !alive {
            return Err(io::Error::other(format!(
                "the {} worker is gone",
                self.name
            )));
        }
        let seq = {
            let mut mailbox = lock(&self.link.command);
            // One per host command: 2^64 of them cannot happen.
            mailbox.1 = mailbox.1.saturating_add(1);
            mailbox.0 = Some(command);
            mailbox.1
        };
        self.link.wake.write(1)?;
        // A `wait` too long for an `Instant` means no deadline.
        let deadline = Instant::now().checked_add(wait);
        let mut done = lock(&self.link.done);
        while *done < seq {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the {} worker did not answer", self.name),
                ));
            }
            done = self
                .link
                .done_changed
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        if let Err(err) = self.send(Command::Exit, COMMAND_TIMEOUT) {
            log::error!("{}: cannot stop the worker: {err}", self.name);
            return;
        }
        if self.thread.take().is_some_and(|t| t.join().is_err()) {
            log::error!("{}: worker panicked", self.name);
        }
    }
}

/// Locks `mutex`, ignoring poisoning: every value behind these locks stays consistent
/// between statements, so a panic elsewhere cannot leave it half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The worker's loop: sleeps until a command or an event of the active device comes.
fn run(name: &str, link: &Link, epoll: &Epoll) {
    let mut active: Option<Box<dyn ActiveDevice>> = None;
    let mut parked: Option<Box<dyn ActiveDevice>> = None;
    let mut events = [EpollEvent::default(); EVENTS_PER_WAKE];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{name}: epoll failed, worker exits: {e}");
                return;
            }
        };
        for event in events.iter().take(n) {
            if event.data() == COMMAND_TOKEN {
                let _ = link.wake.read();
                let (command, seq) = {
                    let mut mailbox = lock(&link.command);
                    (mailbox.0.take(), mailbox.1)
                };
                let exit = matches!(command, Some(Command::Exit));
                match command {
                    Some(Command::Pause) => {
                        let found = pause(&mut active, &mut parked, epoll);
                        *lock(&link.paused) = Some(found);
                    }
                    Some(Command::Resume) => {
                        if let Some(device) = parked.take() {
                            obey(name, Command::Activate(device), &mut active, epoll);
                        }
                    }
                    Some(command) => {
                        parked = None;
                        obey(name, command, &mut active, epoll);
                    }
                    None => {}
                }
                let mut done = lock(&link.done);
                *done = (*done).max(seq);
                drop(done);
                link.done_changed.notify_all();
                if exit {
                    return;
                }
            } else if let (Some(device), Ok(token)) = (active.as_mut(), u32::try_from(event.data()))
            {
                device.handle_event(token);
            }
        }
    }
}

/// Parks the active device (unwatched, kept) and describes its queues; a device already
/// parked is described again.
fn pause(
    active: &mut Option<Box<dyn ActiveDevice>>,
    parked: &mut Option<Box<dyn ActiveDevice>>,
    epoll: &Epoll,
) -> Option<Option<Vec<SavedQueue>>> {
    if let Some(mut device) = active.take() {
        for (fd, _) in device.event_sources() {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        device.pause();
        *parked = Some(device);
    }
    parked.as_ref().map(|device| device.save_queues())
}

/// Carries out `command`: any active device is unwatched and dropped first.
fn obey(name: &str, command: Command, active: &mut Option<Box<dyn ActiveDevice>>, epoll: &Epoll) {
    if let Some(old) = active.take() {
        for (fd, _) in old.event_sources() {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }
    let Command::Activate(mut device) = command else {
        return;
    };
    let mut watched = Vec::new();
    for (fd, token) in device.event_sources() {
        let event = EpollEvent::new(EventSet::IN, u64::from(token));
        if let Err(err) = epoll.ctl(ControlOperation::Add, fd, event) {
            log::error!("{name}: cannot watch an event source, device stays inactive: {err}");
            for fd in watched {
                let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            return;
        }
        watched.push(fd);
    }
    device.start();
    *active = Some(device);
}

/// One queue of an active device, with what serving it needs; see the module docs.
#[derive(Debug)]
pub struct ServedQueue {
    /// Queue index as the driver numbers it (also the interrupt it signals).
    pub index: usize,
    /// The validated queue.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue.
    pub notify: EventFd,
    /// A malformed queue is not touched again until reset.
    broken: bool,
    /// The live status the control thread reads; updated as the queue is served.
    status: Arc<QueueStatus>,
}

impl ServedQueue {
    /// Wraps a queue the transport handed over at activation.
    pub fn new(active: ActiveQueue) -> ServedQueue {
        ServedQueue {
            index: active.index,
            queue: active.queue,
            notify: active.notify,
            broken: false,
            status: active.status,
        }
    }

    /// The queue's ring positions, for [`ActiveDevice::save_queues`].
    pub fn save(&self) -> SavedQueue {
        SavedQueue {
            index: self.index,
            next_avail: self.queue.next_avail(),
            next_used: self.queue.next_used(),
            signalled_used: self.queue.signalled_used(),
        }
    }

    /// [`ServedQueue::save`] with the last `held` chains taken given back: see
    /// [`ActiveDevice::save_queues`].
    pub fn save_unpopped(&self, held: usize) -> SavedQueue {
        let mut saved = self.save();
        // A queue holds at most 32768 chains; a count beyond u16 cannot happen.
        saved.next_avail = saved
            .next_avail
            .wrapping_sub(u16::try_from(held).unwrap_or(u16::MAX));
        saved
    }

    /// Whether the queue was found malformed (and NEEDS_RESET reported).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Consumes the pending notifications and counts them in the queue's status: the
    /// eventfd sums its writes, so its value is the number of notifications since the last
    /// read. That includes the ones the device sends itself to come back to a busy queue
    /// after [`MAX_CHAINS_PER_WAKE`] chains: they cannot be told apart from the driver's.
    pub fn clear_notification(&self) {
        if let Ok(count) = self.notify.read() {
            self.status.add_notifications(count);
        }
    }

    /// Serves the available chains with `serve`, which returns the bytes it wrote into
    /// the chain; then interrupts the driver if it wants. After [`MAX_CHAINS_PER_WAKE`]
    /// chains it stops and signals its own notification, to be woken for the rest once the
    /// worker has seen its other events. A malformed queue is reported to the driver as
    /// NEEDS_RESET (logged with `device`) and left alone until reset.
    pub fn serve(
        &mut self,
        device: &str,
        mem: &GuestMemoryMmap,
        interrupt: &dyn Interrupt,
        mut serve: impl FnMut(&DescriptorChain) -> u32,
    ) {
        if self.broken {
            return;
        }
        let result = self.drain(mem, &mut serve);
        if let Err(e) = &result {
            self.mark_broken(device, interrupt, e);
        }
        self.interrupt_if_wanted(device, mem, interrupt);
    }

    /// Returns chain `head` with `len` bytes written, outside of [`ServedQueue::serve`]
    /// (for devices that hold on to a chain, like the balloon's statistics queue), and
    /// interrupts the driver if it wants.
    pub fn complete(
        &mut self,
        device: &str,
        mem: &GuestMemoryMmap,
        interrupt: &dyn Interrupt,
        head: u16,
        len: u32,
    ) {
        self.complete_batch(device, mem, interrupt, &[(head, len)]);
    }

    /// Returns several chains, as `(head, len)`, published together (see
    /// [`Queue::add_used_batch`]), then interrupts the driver once if it wants.
    pub fn complete_batch(
        &mut self,
        device: &str,
        mem: &GuestMemoryMmap,
        interrupt: &dyn Interrupt,
        used: &[(u16, u32)],
    ) {
        if self.broken || used.is_empty() {
            return;
        }
        self.publish_batch(device, mem, interrupt, used);
        self.interrupt_if_wanted(device, mem, interrupt);
    }

    /// Returns several chains, as `(head, len)`, published together (see
    /// [`Queue::add_used_batch`]), without interrupting the driver: a device that returns
    /// chains one by one in a loop calls [`ServedQueue::interrupt_if_wanted`] once after
    /// it, so a burst costs the guest at most one interrupt (as vhost-net and Firecracker
    /// do), while the driver still sees each chain as soon as it is done.
    pub fn publish_batch(
        &mut self,
        device: &str,
        mem: &GuestMemoryMmap,
        interrupt: &dyn Interrupt,
        used: &[(u16, u32)],
    ) {
        if self.broken || used.is_empty() {
            return;
        }
        if let Err(e) = self.give_back(mem, used) {
            self.mark_broken(device, interrupt, &e);
        }
    }

    /// [`Queue::pop`], recording the device's new avail index in the status.
    fn take(&mut self, mem: &GuestMemoryMmap) -> Result<Option<DescriptorChain>, QueueError> {
        let popped = self.queue.pop(mem);
        // Recorded whatever the outcome: an invalid chain was consumed too.
        self.status.set_device_avail(self.queue.next_avail());
        popped
    }

    /// [`Queue::add_used_batch`], recording the published used index in the status.
    fn give_back(&mut self, mem: &GuestMemoryMmap, used: &[(u16, u32)]) -> Result<(), QueueError> {
        self.queue.add_used_batch(mem, used)?;
        self.status.set_device_used(self.queue.next_used());
        Ok(())
    }

    /// Takes the next available chain, or `None` when there is none or the queue is
    /// malformed (then reported as NEEDS_RESET).
    pub fn pop(
        &mut self,
        device: &str,
        mem: &GuestMemoryMmap,
        interrupt: &dyn Interrupt,
    ) -> Option<DescriptorChain> {
        if self.broken {
            return None;
        }
        match self.take(mem) {
            Ok(chain) => chain,
            Err(e) => {
                self.mark_broken(device, interrupt, &e);
                None
            }
        }
    }

    fn drain(
        &mut self,
        mem: &GuestMemoryMmap,
        serve: &mut impl FnMut(&DescriptorChain) -> u32,
    ) -> Result<(), QueueError> {
        let mut chains = MAX_CHAINS_PER_WAKE;
        let mut bytes = MAX_BYTES_PER_WAKE;
        loop {
            while let Some(chain) = self.take(mem)? {
                let written = serve(&chain);
                self.give_back(mem, &[(chain.head, written)])?;
                // Starts at MAX_CHAINS_PER_WAKE and the loop ends at 0.
                chains = chains.saturating_sub(1);
                bytes = bytes.saturating_sub(chain.len());
                if chains == 0 || bytes == 0 {
                    // More may be waiting: come back to it after the other events. If
                    // the write fails the eventfd's counter is saturated, which wakes us
                    // just the same.
                    let _ = self.notify.write(1);
                    return Ok(());
                }
            }
            if !self.queue.enable_notification(mem)? {
                return Ok(());
            }
            // The driver posted more while notifications were off. A guest that moves
            // avail.idx back and forth could make this look true forever with nothing to
            // take: each look costs the budget a chain, so the worker still yields.
            chains = chains.saturating_sub(1);
            if chains == 0 {
                let _ = self.notify.write(1);
                return Ok(());
            }
        }
    }

    fn mark_broken(&mut self, device: &str, interrupt: &dyn Interrupt, error: &QueueError) {
        // A driver can break a queue, reset and break it again forever; each activation
        // is a new ServedQueue, so the budget lives in a static.
        static BROKEN_QUEUES: LogLimiter = LogLimiter::new();
        if let Some(n) = BROKEN_QUEUES.admit() {
            log::warn!(
                "{device}: invalid queue {}, device needs reset ({n} so far): {error}",
                self.index
            );
        }
        self.broken = true;
        self.status.set_broken();
        interrupt.set_needs_reset();
    }

    /// Publishes that the device goes idle on the queue (`avail_event` with EVENT_IDX) and
    /// returns whether the driver posted more meanwhile, so the caller must look again
    /// before it sleeps (see [`Queue::enable_notification`]). A malformed queue is reported
    /// as NEEDS_RESET (logged with `device`) and reads as nothing more.
    pub fn enable_notification(
        &mut self,
        device: &str,
        mem: &GuestMemoryMmap,
        interrupt: &dyn Interrupt,
    ) -> bool {
        if self.broken {
            return false;
        }
        match self.queue.enable_notification(mem) {
            Ok(more) => more,
            Err(e) => {
                self.mark_broken(device, interrupt, &e);
                false
            }
        }
    }

    /// Interrupts the driver if chains were returned since the last interrupt and its
    /// suppression state (EVENT_IDX's used_event, or the NO_INTERRUPT flag) asks for one;
    /// returns whether it did.
    pub fn interrupt_if_wanted(
        &mut self,
        device: &str,
        mem: &GuestMemoryMmap,
        interrupt: &dyn Interrupt,
    ) -> bool {
        match self.queue.needs_notification(mem) {
            Ok(true) => {
                interrupt.signal_used_queue(self.index);
                self.status.add_interrupt();
                true
            }
            Ok(false) => false,
            Err(e) => {
                static UNREADABLE_NOTIFICATION_STATE: LogLimiter = LogLimiter::new();
                if let Some(n) = UNREADABLE_NOTIFICATION_STATE.admit() {
                    log::warn!(
                        "{device}: cannot read queue {} notification state ({n} so far): {e}",
                        self.index
                    );
                }
                false
            }
        }
    }
}
