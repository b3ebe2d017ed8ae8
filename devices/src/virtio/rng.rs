//! virtio-rng (device type 4): an entropy source for the guest.
//!
//! [`Rng`] owns one request queue, served on its [`DeviceWorker`]: every device-writable
//! buffer posted to the queue is filled with bytes from the host's `getrandom(2)`, at most
//! [`MAX_BYTES_PER_REQUEST`] per request so one request (and so a reset, which waits for
//! the worker) stays quick even if the guest posts gigabytes.

use std::io;
use std::sync::Arc;

use vm_memory::{Bytes, GuestMemoryMmap};

use super::state::VirtioDeviceState;
use super::worker::{DeviceWorker, ServedQueue, SingleQueueDevice};
use super::{ActivateError, ActiveQueue, DescriptorChain, Interrupt, VIRTIO_ID_RNG, VirtioDevice};
use crate::state::StateError;

/// Size of the single request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes served per request.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [RNG_QUEUE_SIZE];
const LOG_NAME: &str = "virtio-rng";

/// The virtio-rng device; see the module docs.
#[derive(Debug)]
pub struct Rng {
    worker: DeviceWorker,
}

impl Rng {
    /// Creates an inactive device and its parked worker.
    pub fn new() -> io::Result<Rng> {
        Rng::with_worker_start(|| {})
    }

    /// Like [`Rng::new`], with `start` run first thing on the worker thread, before it
    /// can ever see guest memory (the VMM installs the worker's seccomp policy there).
    pub fn with_worker_start(start: impl FnOnce() + Send + 'static) -> io::Result<Rng> {
        Ok(Rng {
            worker: DeviceWorker::spawn(LOG_NAME, start)?,
        })
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
        let requests = queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::MissingQueue(0))?;
        let active = ActiveRng {
            mem,
            interrupt,
            requests: ServedQueue::new(requests),
        };
        self.worker
            .activate(Box::new(active))
            .map_err(ActivateError::Worker)
    }

    fn quiesced(&self) -> bool {
        self.worker.idle()
    }

    fn reset(&mut self) {
        self.worker.deactivate_for_reset();
    }

    super::state::worker_snapshot_hooks!(LOG_NAME);
}

impl Rng {
    fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Rng
    }

    fn check_state(&self, saved: &VirtioDeviceState) -> Result<(), StateError> {
        match saved {
            VirtioDeviceState::Rng => Ok(()),
            _ => Err(StateError::invalid(
                LOG_NAME,
                "the saved state is another device's",
            )),
        }
    }

    fn apply_state(&mut self, _saved: VirtioDeviceState) {}
}

/// The device while the driver drives it, on the worker.
struct ActiveRng {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    requests: ServedQueue,
}

impl SingleQueueDevice for ActiveRng {
    fn queue(&self) -> &ServedQueue {
        &self.requests
    }

    fn serve(&mut self) {
        let mem = &*self.mem;
        self.requests
            .serve(LOG_NAME, mem, &*self.interrupt, |chain| {
                fill_chain(mem, chain)
            });
    }
}

/// Fills the chain's writable buffers with random bytes; returns how many
/// were written (short if getrandom or a memory write failed).
fn fill_chain(mem: &GuestMemoryMmap, chain: &DescriptorChain) -> u32 {
    const CHUNK_LEN: u32 = 4096;
    let mut written: u32 = 0;
    let mut buf = vec![0u8; 4096];
    for desc in chain.writable() {
        let mut done: u32 = 0;
        while done < desc.len && written < MAX_BYTES_PER_REQUEST {
            // The loop condition keeps both differences positive.
            let want = desc
                .len
                .saturating_sub(done)
                .min(MAX_BYTES_PER_REQUEST.saturating_sub(written))
                .min(CHUNK_LEN);
            let Some(chunk) = usize::try_from(want).ok().and_then(|w| buf.get_mut(..w)) else {
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
            // Cannot saturate: `done + want <= desc.len` and
            // `written + want <= MAX_BYTES_PER_REQUEST`.
            done = done.saturating_add(want);
            written = written.saturating_add(want);
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
        // A negative return is an error; otherwise n <= rest.len().
        let Ok(n) = usize::try_from(n) else {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        };
        filled = filled.saturating_add(n);
    }
    Ok(())
}
