//! virtio-vsock's own part of its snapshot record, and the device's snapshot hooks.
//!
//! The record holds what the transport saves for every virtio function (features, status,
//! the three queues' layouts and positions: queues 0 and 1 where the kernel's vhost-vsock
//! stopped, queue 2 where the VMM is) and, as the device's part, the guest's CID, which the
//! device built for the restore must have too: the guest's sockets are bound to it, and
//! the CID is given to the kernel when the device is built, so a restore cannot change it.
//!
//! Connections do not survive: vhost-vsock's sockets live in the kernel of the host that
//! ran the snapshotted VM. The restored device sends the driver
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` instead (see the parent module).

use snapshot::payload::{Decoder, Encoder};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    ActiveVsock, FIRST_GUEST_CID, LOG_NAME, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, VMADDR_CID_ANY,
    Vsock, lock,
};
use crate::state::StateError;
use crate::virtio::DescriptorChain;
use crate::virtio::log_limit::LogLimiter;
use crate::virtio::state::{VirtioDeviceState, pause_worker};
use crate::virtio::worker::{MAX_CHAINS_PER_WAKE, Paused, SavedQueue};

/// What a virtio-vsock record holds beyond the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockState {
    /// The guest's CID.
    pub cid: u64,
}

impl VsockState {
    /// The CID (`u64`).
    pub(crate) fn encode(&self, enc: &mut Encoder) {
        enc.u64(self.cid);
    }

    pub(crate) fn decode(dec: &mut Decoder<'_>) -> Result<Self, StateError> {
        let cid = dec.u64()?;
        if !(FIRST_GUEST_CID..VMADDR_CID_ANY).contains(&cid) {
            return Err(StateError::invalid(
                LOG_NAME,
                format!(
                    "guest CID {cid} is not a guest's (from {FIRST_GUEST_CID} to {})",
                    VMADDR_CID_ANY - 1
                ),
            ));
        }
        Ok(VsockState { cid })
    }
}

impl Vsock {
    /// Pauses the worker, which stops the backend and reads its positions; a backend that
    /// could not be stopped, or whose positions could not be read, fails the pause with
    /// the reason (the transport then resumes the device).
    pub(super) fn pause_for_snapshot(&mut self) -> Result<Paused, StateError> {
        *lock(&self.pause_error) = None;
        let paused = pause_worker(LOG_NAME, &self.worker)?;
        if let Some(problem) = lock(&self.pause_error).take() {
            return Err(StateError::Worker {
                device: LOG_NAME,
                source: std::io::Error::other(format!(
                    "cannot stop vhost-vsock for a snapshot: {problem}"
                )),
            });
        }
        Ok(paused)
    }

    pub(super) fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Vsock(VsockState { cid: self.cid })
    }

    pub(super) fn check_state(&self, saved: &VirtioDeviceState) -> Result<(), StateError> {
        match saved {
            VirtioDeviceState::Vsock(saved) if saved.cid == self.cid => Ok(()),
            VirtioDeviceState::Vsock(saved) => Err(StateError::invalid(
                LOG_NAME,
                format!(
                    "the snapshot's guest CID is {}, this device's is {}: restore with \
                     --vsock cid={}",
                    saved.cid, self.cid, saved.cid
                ),
            )),
            _ => Err(StateError::invalid(
                LOG_NAME,
                "the saved state is another device's",
            )),
        }
    }

    /// The CID is this device's already; what a restore adds is the transport reset the
    /// next activation sends the driver.
    pub(super) fn apply_state(&mut self, _saved: VirtioDeviceState) {
        self.reset_event = true;
    }
}

/// The worker's side: stopping the backend for a pause, and the reset event.
impl ActiveVsock {
    /// Stops the backend and reads where it is in queues 0 and 1: the next avail index from
    /// the kernel, the used index from guest memory (where the kernel keeps it). A backend
    /// that was never set up (its set-up failed) has not moved from the activation's
    /// positions.
    pub(super) fn stop_and_locate(&mut self) -> Result<[SavedQueue; 2], String> {
        if self.running {
            self.vhost.set_running(false).map_err(|e| e.to_string())?;
            self.running = false;
        }
        let mut saved = [SavedQueue {
            index: 0,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
        }; 2];
        for (slot, queue) in saved.iter_mut().zip(&self.rings) {
            let q = &queue.queue;
            *slot = if self.configured {
                let index = u32::try_from(queue.index).unwrap_or(u32::MAX);
                let next_avail = self
                    .vhost
                    .get_vring_base(index)
                    .map_err(|e| e.to_string())?;
                let used_idx = q
                    .used_ring
                    .checked_add(2)
                    .and_then(|at| self.mem.read_obj::<u16>(GuestAddress(at)).ok())
                    .ok_or_else(|| format!("cannot read queue {}'s used index", queue.index))?;
                SavedQueue {
                    index: queue.index,
                    next_avail,
                    next_used: used_idx,
                    // vhost keeps its EVENT_IDX state to itself and starts afresh from
                    // used.idx when it is set up again.
                    signalled_used: used_idx,
                }
            } else {
                SavedQueue {
                    index: queue.index,
                    next_avail: q.next_avail(),
                    next_used: q.next_used(),
                    signalled_used: q.signalled_used(),
                }
            };
        }
        Ok(saved)
    }

    /// Sends the owed transport reset, if any, in the next buffer the driver posted on the
    /// event queue, and interrupts it; with none posted yet, waits for one (the event
    /// queue's notification brings it here again).
    pub(super) fn send_reset_event(&mut self) {
        if !self.reset_event {
            return;
        }
        let (Some(event), mem, interrupt) = (self.event.as_mut(), &*self.mem, &*self.interrupt)
        else {
            return;
        };
        // Bounded: a guest flipping avail.idx, or posting unusable buffers, cannot keep
        // the worker here.
        for _ in 0..MAX_CHAINS_PER_WAKE {
            let Some(chain) = event.pop(LOG_NAME, mem, interrupt) else {
                if event.is_broken() || !event.enable_notification(LOG_NAME, mem, interrupt) {
                    return;
                }
                continue;
            };
            let written = write_reset_event(mem, &chain);
            event.publish_batch(LOG_NAME, mem, interrupt, &[(chain.head, written)]);
            event.interrupt_if_wanted(LOG_NAME, mem, interrupt);
            if written > 0 {
                self.reset_event = false;
                log::info!("{LOG_NAME}: sent the driver a transport reset after the restore");
                return;
            }
            static TOO_SMALL: LogLimiter = LogLimiter::new();
            if let Some(n) = TOO_SMALL.admit() {
                log::warn!(
                    "{LOG_NAME}: event buffer {} has no device-writable 4 bytes, returned \
                     empty ({n} so far)",
                    chain.head
                );
            }
        }
        let _ = event.notify.write(1);
    }
}

/// Writes `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (`struct virtio_vsock_event`: `id`, a
/// little-endian u32) into the first device-writable buffer of `chain` that holds it;
/// returns the bytes written (0 if none does).
fn write_reset_event(mem: &GuestMemoryMmap, chain: &DescriptorChain) -> u32 {
    let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
    for desc in chain.writable() {
        if desc.len >= 4 && mem.write_slice(&event, desc.addr).is_ok() {
            return 4;
        }
    }
    0
}
