//! Virtio devices: the split virtqueue, the modern PCI transport and the
//! device models behind it.
//!
//! This module owns the contract between a transport and a device model:
//! the [`VirtioDevice`] trait (the device-specific part: type, features,
//! config space, activation with queues and reset) and the [`Interrupt`]
//! trait a running device uses to tell the driver about used buffers,
//! configuration changes and fatal errors. Device models know neither PCI
//! nor KVM: notifications arrive on [`EventFd`]s and interrupts leave
//! through [`Interrupt`]. Each queue's live state, for the VMM to inspect, is a
//! [`QueueStatus`] the transport hands the device with the queue.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::state::StateError;

pub mod balloon;
pub mod block;
pub mod console;
pub mod iovec;
pub mod log_limit;
pub mod net;
pub mod pci_interrupt;
pub mod pci_transport;
pub mod queue;
pub mod queue_status;
pub mod rng;
pub mod state;
pub mod vsock;
pub mod worker;

pub use balloon::{Balloon, BalloonHandle};
pub use block::{Block, BlockCounters};
pub use console::{Console, ConsoleCounters, HostInput};
pub use rng::Rng;
pub use vsock::Vsock;
pub use worker::{ActiveDevice, DeviceWorker, ServedQueue};

pub use pci_transport::{PciInterrupt, QueueNotifier, VirtioPciDevice, VirtioPciError};
pub use queue::{Descriptor, DescriptorChain, Queue, QueueError, VIRTIO_MSI_NO_VECTOR};
pub use queue_status::{QueueSnapshot, QueueStatus};

/// Device status: the guest noticed the device.
pub const VIRTIO_CONFIG_S_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest knows how to drive it.
pub const VIRTIO_CONFIG_S_DRIVER: u8 = 2;
/// Device status: the driver is ready.
pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const VIRTIO_CONFIG_S_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error it cannot recover from.
pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const VIRTIO_CONFIG_S_FAILED: u8 = 0x80;

/// Feature bit: the driver supports indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Feature bit: virtio 1.x compliance (mandatory for modern PCI).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// The ring and version features the transport offers with every device's own.
pub const TRANSPORT_FEATURES: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// Device type of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Device type of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Device type of an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Device type of a memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;

/// Reads `data.len()` bytes at `offset` of a device configuration space held as `config`;
/// bytes past its end read as 0, as the transport's contract asks.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not enable a queue the device needs.
    #[error("queue {0} is required but not enabled")]
    MissingQueue(usize),
    /// The worker thread or its event loop could not be set up.
    #[error("cannot start device worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// A queue handed to a device on activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Queue index as the driver numbers it.
    pub index: usize,
    /// The validated queue.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue.
    pub notify: EventFd,
    /// The queue's live status, kept up to date by whoever serves the queue (see
    /// [`ServedQueue`]); the transport owns it and the control thread reads it.
    pub status: Arc<QueueStatus>,
}

/// How a running device reaches the driver. Implemented by each transport.
pub trait Interrupt: Send + Sync {
    /// Used buffers were added to queue `queue_index`.
    fn signal_used_queue(&self, queue_index: usize);
    /// The device configuration space changed.
    fn signal_config_changed(&self);
    /// The device hit an unrecoverable error (e.g. an invalid descriptor
    /// chain): sets DEVICE_NEEDS_RESET and sends a configuration interrupt.
    fn set_needs_reset(&self);
}

/// The device-specific half of a virtio device.
pub trait VirtioDevice: Send {
    /// Virtio device type (e.g. [`VIRTIO_ID_RNG`]).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device-specific feature bits; the transport adds the ring and
    /// version bits it implements.
    fn features(&self) -> u64;

    /// The features the driver accepted at FEATURES_OK (a subset of the
    /// offered ones).
    fn ack_features(&mut self, features: u64);

    /// Reads the device configuration space; out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space; out-of-range bytes are
    /// dropped.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device once the driver set DRIVER_OK.
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;

    /// Stops the device and forgets all driver state. A device whose worker is in the
    /// middle of a request may not have let go of its queues when this returns:
    /// [`VirtioDevice::quiesced`] says when it has.
    fn reset(&mut self);

    /// Whether the device holds nothing of its last activation any more (its worker has
    /// dropped the queues and the guest memory): until then the transport keeps a reset
    /// pending and the driver, which waits for the device status to read 0 before it
    /// reuses the rings, waits.
    fn quiesced(&self) -> bool;

    /// The queues the host kernel serves rather than this device's worker (vhost): their
    /// statuses say so and read the used index from guest memory (see
    /// [`QueueStatus::served_by_kernel`]). None by default.
    fn kernel_served_queues(&self) -> &[usize] {
        &[]
    }

    // Snapshots (see `state`). The defaults refuse, naming the device, so a model without
    // snapshot support makes a snapshot fail rather than lose its state.

    /// Stops serving at a request boundary (bounded wait) and says where the queues are:
    /// usually [`state::pause_worker`] on the device's worker.
    fn pause(&mut self) -> Result<worker::Paused, StateError> {
        Err(StateError::Unsupported(state::device_name(
            self.device_type(),
        )))
    }

    /// Serves again after [`VirtioDevice::pause`].
    fn resume(&mut self) -> Result<(), StateError> {
        Err(StateError::Unsupported(state::device_name(
            self.device_type(),
        )))
    }

    /// The device's own state (configuration, host-side values), while paused.
    fn save_device_state(&self) -> Result<state::VirtioDeviceState, StateError> {
        Err(StateError::Unsupported(state::device_name(
            self.device_type(),
        )))
    }

    /// Checks a saved device state against this freshly built device; no side effects.
    fn check_device_state(&self, _state: &state::VirtioDeviceState) -> Result<(), StateError> {
        Err(StateError::Unsupported(state::device_name(
            self.device_type(),
        )))
    }

    /// Applies a checked device state, before the transport activates the device.
    fn apply_device_state(&mut self, _state: state::VirtioDeviceState) -> Result<(), StateError> {
        Err(StateError::Unsupported(state::device_name(
            self.device_type(),
        )))
    }
}
