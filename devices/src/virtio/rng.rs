//! virtio-rng (device type 4): an entropy source for the guest.
//!
//! [`Rng`] owns one request queue and a worker thread that fills every device-writable
//! buffer posted to the queue with bytes from the host's `getrandom(2)`.
//!
//! The worker lives as long as the device: it is created with it and parks until the
//! driver activates the device. Activation and reset (which happen on a vCPU thread, in
//! the middle of a register write) only hand the worker its queue or take it back; no
//! thread is ever created then. That is what lets a sandboxed VMM confine the worker with
//! its own seccomp policy (the start hook of [`Rng::with_worker_start`]): a thread spawned
//! from a vCPU thread would inherit the vCPU's filter as well. A reset waits until the
//! worker has let go of the queue, so a reset really stops the device. A malformed chain
//! makes the worker report DEVICE_NEEDS_RESET and leave the queue alone until reset.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    ActivateError, ActiveQueue, DescriptorChain, Interrupt, Queue, QueueError, VIRTIO_ID_RNG,
    VirtioDevice,
};

/// Size of the single request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes served per request: keeps one request (and so a reset, which
/// waits for the worker) quick even if the guest posts gigabytes.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [RNG_QUEUE_SIZE];
const COMMAND_TOKEN: u64 = 0;
const QUEUE_TOKEN: u64 = 1;
/// How long a command waits for the worker before giving up on it (it only ever serves
/// at most one request, bounded by [`MAX_BYTES_PER_REQUEST`], before it looks).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// What the device asks of its worker.
enum Command {
    /// Serve this queue.
    Activate(Box<ActiveState>),
    /// Let go of the queue (device reset).
    Deactivate,
    /// Return (device dropped).
    Exit,
}

/// The mailbox between the device and its worker: one command at a time, a wake-up
/// eventfd the worker sleeps on, and a count of commands done that the sender waits for.
struct Link {
    command: Mutex<Option<Command>>,
    wake: EventFd,
    done: Mutex<u64>,
    done_changed: Condvar,
}

/// The virtio-rng device; see the module docs.
pub struct Rng {
    link: Arc<Link>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng").finish_non_exhaustive()
    }
}

impl Rng {
    /// Creates an inactive device and its parked worker.
    pub fn new() -> io::Result<Rng> {
        Rng::with_worker_start(|| {})
    }

    /// Like [`Rng::new`], with `start` run first thing on the worker thread, before it
    /// can ever see guest memory (the VMM installs the worker's seccomp policy there).
    pub fn with_worker_start(start: impl FnOnce() + Send + 'static) -> io::Result<Rng> {
        let link = Arc::new(Link {
            command: Mutex::new(None),
            wake: EventFd::new(EFD_NONBLOCK)?,
            done: Mutex::new(0),
            done_changed: Condvar::new(),
        });
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            link.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, COMMAND_TOKEN),
        )?;
        let worker_link = link.clone();
        let worker = std::thread::Builder::new()
            .name("virtio-rng".into())
            .spawn(move || {
                start();
                run_worker(&worker_link, &epoll);
            })?;
        Ok(Rng {
            link,
            worker: Some(worker),
        })
    }

    /// Hands `command` to the worker and waits until it has been carried out.
    fn send(&self, command: Command) -> Result<(), io::Error> {
        let alive = self.worker.as_ref().is_some_and(|w| !w.is_finished());
        if !alive {
            return Err(io::Error::other("the virtio-rng worker is gone"));
        }
        let before = *lock(&self.link.done);
        *lock(&self.link.command) = Some(command);
        self.link.wake.write(1)?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut done = lock(&self.link.done);
        while *done == before {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the virtio-rng worker did not answer",
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Rng {
    fn drop(&mut self) {
        if let Err(err) = self.send(Command::Exit) {
            log::error!("virtio-rng: cannot stop the worker: {err}");
            return;
        }
        if self.worker.take().is_some_and(|w| w.join().is_err()) {
            log::error!("virtio-rng: worker panicked");
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let active = queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::MissingQueue(0))?;
        let state = ActiveState {
            mem,
            interrupt,
            queue: active.queue,
            notify: active.notify,
            broken: false,
        };
        self.send(Command::Activate(Box::new(state)))
            .map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        if let Err(err) = self.send(Command::Deactivate) {
            log::error!("virtio-rng: reset did not reach the worker: {err}");
        }
    }
}

/// The worker: sleeps until a command or a queue notification comes, serves the queue
/// while it has one.
fn run_worker(link: &Link, epoll: &Epoll) {
    let mut active: Option<Box<ActiveState>> = None;
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio-rng: epoll failed, worker exits: {e}");
                return;
            }
        };
        for event in events.iter().take(n) {
            if event.data() == COMMAND_TOKEN {
                let _ = link.wake.read();
                let command = lock(&link.command).take();
                let exit = matches!(command, Some(Command::Exit));
                if let Some(command) = command {
                    obey(command, &mut active, epoll);
                }
                *lock(&link.done) += 1;
                link.done_changed.notify_all();
                if exit {
                    return;
                }
            } else if let Some(state) = active.as_mut() {
                let _ = state.notify.read();
                state.serve_unless_broken();
            }
        }
    }
}

fn obey(command: Command, active: &mut Option<Box<ActiveState>>, epoll: &Epoll) {
    if let Some(old) = active.take() {
        let _ = epoll.ctl(
            ControlOperation::Delete,
            old.notify.as_raw_fd(),
            EpollEvent::default(),
        );
    }
    if let Command::Activate(mut state) = command {
        let watched = epoll.ctl(
            ControlOperation::Add,
            state.notify.as_raw_fd(),
            EpollEvent::new(EventSet::IN, QUEUE_TOKEN),
        );
        if let Err(err) = watched {
            log::error!("virtio-rng: cannot watch the queue: {err}");
            state.interrupt.set_needs_reset();
            return;
        }
        // The driver may have posted buffers before DRIVER_OK's notify.
        state.serve_unless_broken();
        *active = Some(state);
    }
}

/// A queue the worker serves, and what it needs to do so.
struct ActiveState {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    queue: Queue,
    notify: EventFd,
    /// A malformed queue is not touched again until reset.
    broken: bool,
}

impl ActiveState {
    fn serve_unless_broken(&mut self) {
        if !self.broken {
            self.broken = self.serve().is_err();
        }
    }

    /// Serves every available request, interrupting the driver if it asked;
    /// on a malformed queue reports NEEDS_RESET.
    fn serve(&mut self) -> Result<(), QueueError> {
        let result = self.drain();
        if let Err(e) = &result {
            log::warn!("virtio-rng: invalid queue, device needs reset: {e}");
            self.interrupt.set_needs_reset();
        }
        match self.queue.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.signal_used_queue(0),
            Ok(false) => {}
            Err(e) => log::warn!("virtio-rng: cannot read notification state: {e}"),
        }
        result
    }

    fn drain(&mut self) -> Result<(), QueueError> {
        loop {
            while let Some(chain) = self.queue.pop(&self.mem)? {
                let written = fill_chain(&self.mem, &chain);
                self.queue.add_used(&self.mem, chain.head, written)?;
            }
            if !self.queue.enable_notification(&self.mem)? {
                return Ok(());
            }
        }
    }
}

/// Fills the chain's writable buffers with random bytes; returns how many
/// were written (short if getrandom or a memory write failed).
fn fill_chain(mem: &GuestMemoryMmap, chain: &DescriptorChain) -> u32 {
    let mut written: u32 = 0;
    let mut buf = vec![0u8; 4096];
    for desc in chain.writable() {
        let mut done: u32 = 0;
        while done < desc.len && written < MAX_BYTES_PER_REQUEST {
            let want = (desc.len - done)
                .min(MAX_BYTES_PER_REQUEST - written)
                .min(buf.len() as u32) as usize;
            let Some(chunk) = buf.get_mut(..want) else {
                return written;
            };
            if let Err(e) = getrandom(chunk) {
                log::warn!("virtio-rng: getrandom failed: {e}");
                return written;
            }
            let Some(addr) = desc.addr.0.checked_add(u64::from(done)) else {
                return written;
            };
            if mem
                .write_slice(chunk, vm_memory::GuestAddress(addr))
                .is_err()
            {
                return written;
            }
            // `want` <= 4096.
            done += want as u32;
            written += want as u32;
        }
    }
    written
}

/// Fills `buf` from the kernel CSPRNG, retrying on EINTR and short reads.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes
        // for the duration of the call; getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // n >= 0 and <= rest.len().
        filled += n as usize;
    }
    Ok(())
}
