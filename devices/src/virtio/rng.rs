//! virtio-rng (device type 4): an entropy source for the guest.
//!
//! [`Rng`] owns one request queue and, while the driver has it activated, a
//! worker thread that fills every device-writable buffer posted to the queue
//! with bytes from the host's `getrandom(2)`. The worker sleeps in epoll on
//! the queue's notify eventfd and a kill eventfd; reset and drop write the
//! kill eventfd and join it, so a reset really stops the device. A malformed
//! chain makes the worker report DEVICE_NEEDS_RESET and stop using the
//! queue until the driver resets the device.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

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
const QUEUE_TOKEN: u64 = 0;
const KILL_TOKEN: u64 = 1;

/// The virtio-rng device; see the module docs.
#[derive(Debug, Default)]
pub struct Rng {
    worker: Option<Worker>,
}

#[derive(Debug)]
struct Worker {
    kill: EventFd,
    handle: JoinHandle<()>,
}

impl Rng {
    /// Creates an inactive device.
    pub fn new() -> Rng {
        Rng::default()
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            if let Err(e) = worker.kill.write(1) {
                log::error!("virtio-rng: cannot stop worker: {e}");
                return;
            }
            if worker.handle.join().is_err() {
                log::error!("virtio-rng: worker panicked");
            }
        }
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        self.stop_worker();
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
        self.stop_worker();
        let active = queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::MissingQueue(0))?;
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let epoll = worker_epoll(&active.notify, &kill).map_err(ActivateError::Worker)?;
        let worker_kill = kill.try_clone().map_err(ActivateError::Worker)?;
        let state = WorkerState {
            mem,
            interrupt,
            queue: active.queue,
            notify: active.notify,
            kill: worker_kill,
            epoll,
        };
        let handle = std::thread::Builder::new()
            .name("virtio-rng".into())
            .spawn(move || state.run())
            .map_err(ActivateError::Worker)?;
        self.worker = Some(Worker { kill, handle });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

fn worker_epoll(notify: &EventFd, kill: &EventFd) -> io::Result<Epoll> {
    use std::os::fd::AsRawFd;
    let epoll = Epoll::new()?;
    for (fd, token) in [(notify, QUEUE_TOKEN), (kill, KILL_TOKEN)] {
        epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    Ok(epoll)
}

struct WorkerState {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    queue: Queue,
    notify: EventFd,
    kill: EventFd,
    epoll: Epoll,
}

impl WorkerState {
    fn run(mut self) {
        // The driver may have posted buffers before DRIVER_OK's notify.
        let mut broken = self.serve().is_err();
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-rng: epoll failed, worker exits: {e}");
                    return;
                }
            };
            for event in events.iter().take(n) {
                match event.data() {
                    KILL_TOKEN => {
                        let _ = self.kill.read();
                        return;
                    }
                    _ => {
                        let _ = self.notify.read();
                        // A broken queue is not touched again until reset.
                        if !broken {
                            broken = self.serve().is_err();
                        }
                    }
                }
            }
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
