//! Saving and restoring a virtio PCI function: pause, capture, check, apply. The record's
//! layout and what it holds are in `virtio::state`; this module owns how the transport
//! gets it from, and puts it back into, its configuration space, MSI-X state, common
//! configuration, interrupt state, queues and device.

use std::io;
use std::sync::PoisonError;

use super::super::state::{QueueState, VirtioPciState, device_name};
use super::super::worker::Paused;
use super::super::{Interrupt, Queue, VIRTIO_CONFIG_S_FEATURES_OK};
use super::VirtioPciDevice;
use super::common::CommonConfig;
use crate::pci::MsixConfig;
use crate::pci::config::{COMMAND, COMMAND_INTX_DISABLE};
use crate::pci::state::check_config;
use crate::state::StateError;

impl VirtioPciDevice {
    fn name(&self) -> &'static str {
        device_name(self.device.device_type())
    }

    /// Stops the device at a request boundary for a snapshot (waiting at most
    /// `worker::PAUSE_TIMEOUT` for the request being served) and keeps where its queues
    /// are. Call with the vCPUs stopped, so the driver cannot change the transport
    /// meanwhile. A worker that does not stop in time is resumed and the error says so;
    /// a device without snapshot support is refused by name.
    pub fn pause(&mut self) -> Result<(), StateError> {
        if self.poll_pending_reset() {
            return Err(StateError::Worker {
                device: self.name(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a device reset is still waiting for the worker",
                ),
            });
        }
        if !self.common.activated {
            // The worker has nothing to serve: nothing to stop.
            self.paused = Some(Paused::Inactive);
            return Ok(());
        }
        match self.device.pause() {
            Ok(paused) => {
                self.paused = Some(paused);
                Ok(())
            }
            Err(e) => {
                // The pause may still happen later: undo it then.
                let _ = self.device.resume();
                Err(e)
            }
        }
    }

    /// Lets a paused device serve again (after a snapshot, or a failed one).
    pub fn resume(&mut self) -> Result<(), StateError> {
        match self.paused.take() {
            Some(Paused::Active(_)) | Some(Paused::Unsupported) => self.device.resume(),
            Some(Paused::Inactive) | None => Ok(()),
        }
    }

    /// Captures the function's whole state; only between [`Self::pause`] and
    /// [`Self::resume`].
    pub fn save_state(&self) -> Result<VirtioPciState, StateError> {
        let name = self.name();
        let running = match &self.paused {
            None => return Err(StateError::NotPaused(name)),
            Some(Paused::Unsupported) => return Err(StateError::Unsupported(name)),
            Some(Paused::Inactive) => None,
            Some(Paused::Active(queues)) => Some(queues),
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                let live = running.and_then(|saved| saved.iter().find(|s| s.index == index));
                let (next_avail, next_used, signalled_used) = match live {
                    Some(s) => (s.next_avail, s.next_used, s.signalled_used),
                    None => (q.next_avail(), q.next_used(), q.signalled_used()),
                };
                QueueState {
                    size: q.size,
                    ready: q.ready,
                    vector: self.interrupt.queue_vector(index),
                    desc_table: q.desc_table,
                    avail_ring: q.avail_ring,
                    used_ring: q.used_ring,
                    next_avail,
                    next_used,
                    signalled_used,
                }
            })
            .collect();
        let c = &self.common;
        Ok(VirtioPciState {
            device_type: self.device.device_type(),
            config: self.config.image(),
            msix: self
                .msix
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .save_state(),
            offered_features: self.offered_features(),
            acked_features: c.driver_features,
            device_feature_select: c.device_feature_select,
            driver_feature_select: c.driver_feature_select,
            status: c.status,
            config_generation: c.config_generation,
            queue_select: c.queue_select,
            activated: c.activated,
            running: running.is_some(),
            isr: self.interrupt.isr(),
            needs_reset: self.interrupt.needs_reset(),
            config_vector: self.interrupt.config_vector(),
            queues,
            device: self.device.save_device_state()?,
        })
    }

    /// Checks `state` against this function, freshly built for the restore, and its guest
    /// memory: same device type and queue count, the configuration space and MSI-X table
    /// of this device with BARs inside the MMIO window, acked features this device offers,
    /// queue sizes within its maxima and rings inside guest memory, and the device's own
    /// state. No side effects.
    pub fn check_state(&self, state: &VirtioPciState) -> Result<(), StateError> {
        let name = self.name();
        let bad = |problem: String| Err(StateError::invalid(name, problem));
        if state.device_type != self.device.device_type() {
            return bad(format!(
                "the record is a {}'s, this device is a {name}",
                device_name(state.device_type)
            ));
        }
        if self.common.activated || self.reset_pending {
            return bad("the device to restore into has already been started".to_string());
        }
        if state.queues.len() != self.queues.len() {
            return bad(format!(
                "{} queues saved, this device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        check_config(name, &self.config, &state.config)?;
        self.msix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check_state(&state.msix)
            .or_else(bad)?;
        let control_at = self.msix_cap_offset.saturating_add(2);
        let control = state
            .config
            .get(control_at..control_at.saturating_add(2))
            .map_or(0, |b| {
                b.iter().rev().fold(0u16, |v, &x| v << 8 | u16::from(x))
            });
        if !MsixConfig::control_matches(control, &state.msix) {
            return bad(format!(
                "MSI-X message control {control:#06x} in the configuration space disagrees with the saved MSI-X enable and mask"
            ));
        }
        let offered = self.offered_features();
        if state.acked_features & !offered != 0 {
            return bad(format!(
                "acked features {:#x} include {:#x}, which this device does not offer",
                state.acked_features,
                state.acked_features & !offered
            ));
        }
        for (index, (saved, queue)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.size > queue.max_size() {
                return bad(format!(
                    "queue {index} size {} is above its maximum {}",
                    saved.size,
                    queue.max_size()
                ));
            }
            if saved.ready {
                restored_queue(queue.max_size(), saved)
                    .validate(&self.mem)
                    .or_else(|e| bad(format!("queue {index}: {e}")))?;
            }
        }
        self.device.check_device_state(&state.device)
    }

    /// Writes a checked `state` into this function: configuration space, MSI-X, interrupt
    /// state, transport registers and queues; the device's own state; and for a device that
    /// was running, activates it with its queues at the saved positions (the transport is
    /// then in DRIVER_OK, as the guest left it). Fails only if the device cannot be
    /// started (its worker is gone); the device then reports NEEDS_RESET to the guest too.
    pub fn apply_state(&mut self, state: VirtioPciState) -> Result<(), StateError> {
        let name = self.name();
        self.config.set_image(&state.config);
        self.msix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply_state(&state.msix);
        let vectors: Vec<u16> = state.queues.iter().map(|q| q.vector).collect();
        self.interrupt.restore(
            state.isr,
            state.needs_reset,
            state.config_vector,
            &vectors,
            self.config.read_u16(COMMAND) & COMMAND_INTX_DISABLE != 0,
        );
        self.common = CommonConfig {
            device_feature_select: state.device_feature_select,
            driver_feature_select: state.driver_feature_select,
            driver_features: state.acked_features,
            status: state.status,
            config_generation: state.config_generation,
            queue_select: state.queue_select,
            activated: state.activated,
        };
        for (queue, saved) in self.queues.iter_mut().zip(&state.queues) {
            *queue = restored_queue(queue.max_size(), saved);
        }
        self.paused = None;
        // A guest that moved its BAR gets it where it put it (if the VMM can move it).
        self.follow_bar();
        if state.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.device.ack_features(state.acked_features);
        }
        self.device.apply_device_state(state.device)?;
        if state.running && !self.activate() {
            self.interrupt.set_needs_reset();
            return Err(StateError::Apply {
                device: name,
                problem: "the device could not be started with its restored queues".to_string(),
            });
        }
        Ok(())
    }
}

/// A queue as `saved` describes it.
fn restored_queue(max_size: u16, saved: &QueueState) -> Queue {
    let mut queue = Queue::new(max_size);
    queue.size = saved.size;
    queue.ready = saved.ready;
    queue.desc_table = saved.desc_table;
    queue.avail_ring = saved.avail_ring;
    queue.used_ring = saved.used_ring;
    queue.set_positions(saved.next_avail, saved.next_used, saved.signalled_used);
    queue
}
