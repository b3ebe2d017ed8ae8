//! Interrupt delivery of the virtio-pci transport.
//!
//! [`PciInterrupt`] owns the vector assignment the driver programmed
//! (`msix_config` and each `queue_msix_vector`), the ISR status byte and the
//! DEVICE_NEEDS_RESET flag. With MSI-X enabled a signal raises the assigned
//! vector through [`MsixConfig`]; otherwise it sets the ISR bit and writes
//! the INTx eventfd (virtio 1.2 section 4.1.4.5).
//!
//! INTx is a level: the VMM backs the INTx eventfd with a KVM irqfd on a
//! level-triggered IOAPIC pin with a resample eventfd. KVM holds the line
//! asserted from the eventfd write until the guest's EOI, then lowers it and
//! signals the resample eventfd; the VMM then calls
//! [`PciInterrupt::intx_resample`], which raises it again while the ISR still
//! has bits the driver has not read (a signal that came while the line was
//! up would otherwise be lost). The COMMAND register's INTx-disable bit holds
//! the line down ([`PciInterrupt::set_intx_disabled`]).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use crate::pci::MsixConfig;

use super::{Interrupt, VIRTIO_MSI_NO_VECTOR};

/// ISR bit: a queue has used buffers.
pub const VIRTIO_PCI_ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
pub const VIRTIO_PCI_ISR_CONFIG: u8 = 2;

/// Interrupt state shared by the transport and the running device.
pub struct PciInterrupt {
    msix: Arc<Mutex<MsixConfig>>,
    intx: EventFd,
    intx_resample: EventFd,
    intx_disabled: AtomicBool,
    isr: AtomicU8,
    needs_reset: AtomicBool,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl std::fmt::Debug for PciInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciInterrupt")
            .field("isr", &self.isr)
            .field("needs_reset", &self.needs_reset)
            .finish()
    }
}

impl PciInterrupt {
    /// Creates the state for `num_queues` queues, all vectors unassigned.
    pub fn new(
        msix: Arc<Mutex<MsixConfig>>,
        intx: EventFd,
        intx_resample: EventFd,
        num_queues: usize,
    ) -> PciInterrupt {
        PciInterrupt {
            msix,
            intx,
            intx_resample,
            intx_disabled: AtomicBool::new(false),
            isr: AtomicU8::new(0),
            needs_reset: AtomicBool::new(false),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..num_queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
        }
    }

    /// The eventfd written for INTx when MSI-X is off.
    pub fn intx_eventfd(&self) -> &EventFd {
        &self.intx
    }

    /// The eventfd KVM signals when the guest has acknowledged the INTx line (the VMM
    /// then calls [`Self::intx_resample`]).
    pub fn intx_resample_eventfd(&self) -> &EventFd {
        &self.intx_resample
    }

    /// After the guest's EOI lowered the INTx line: raises it again while the ISR holds
    /// bits the driver has not read yet.
    pub fn intx_resample(&self) {
        let _ = self.intx_resample.read();
        self.raise_intx_if_pending();
    }

    /// Applies the COMMAND register's INTx-disable bit; enabling it again raises the line
    /// if an interrupt is pending.
    pub fn set_intx_disabled(&self, disabled: bool) {
        let was = self.intx_disabled.swap(disabled, Ordering::AcqRel);
        if was && !disabled {
            self.raise_intx_if_pending();
        }
    }

    fn raise_intx_if_pending(&self) {
        if self.isr.load(Ordering::Acquire) != 0 && !lock(&self.msix).enabled() {
            self.raise_intx();
        }
    }

    fn raise_intx(&self) {
        if self.intx_disabled.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.intx.write(1) {
            static FAILED: super::log_limit::LogLimiter = super::log_limit::LogLimiter::new();
            if let Some(n) = FAILED.admit() {
                log::warn!("virtio-pci: cannot raise INTx ({n} so far): {e}");
            }
        }
    }

    /// Reads and clears the ISR byte (virtio 1.2 section 4.1.4.5.1).
    pub fn read_and_clear_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// Whether the device reported an unrecoverable error since reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Vector for configuration changes.
    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    /// Vector of queue `index`, or no vector for a queue that doesn't exist.
    pub fn queue_vector(&self, index: usize) -> u16 {
        self.queue_vectors
            .get(index)
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    /// Assigns the configuration vector; returns what reads back (no vector
    /// if it is out of the table, per 4.1.5.1.2).
    pub fn set_config_vector(&self, vector: u16) -> u16 {
        let vector = self.checked_vector(vector);
        self.config_vector.store(vector, Ordering::Release);
        vector
    }

    /// Assigns the vector of queue `index`, like [`Self::set_config_vector`].
    pub fn set_queue_vector(&self, index: usize, vector: u16) -> u16 {
        let vector = self.checked_vector(vector);
        if let Some(v) = self.queue_vectors.get(index) {
            v.store(vector, Ordering::Release);
        }
        vector
    }

    fn checked_vector(&self, vector: u16) -> u16 {
        let table = lock(&self.msix).num_vectors();
        if vector < table {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    /// The ISR byte, without clearing it (for a snapshot).
    pub fn isr(&self) -> u8 {
        self.isr.load(Ordering::Acquire)
    }

    /// Puts saved interrupt state back: ISR, needs-reset, the vectors (already checked
    /// against the table) and COMMAND's INTx-disable bit. A pending ISR raises INTx again
    /// (while MSI-X is off), as a level-triggered line that was up stays up.
    pub fn restore(
        &self,
        isr: u8,
        needs_reset: bool,
        config_vector: u16,
        queue_vectors: &[u16],
        intx_disabled: bool,
    ) {
        self.isr.store(isr, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
        self.config_vector.store(config_vector, Ordering::Release);
        for (v, &saved) in self.queue_vectors.iter().zip(queue_vectors) {
            v.store(saved, Ordering::Release);
        }
        self.intx_disabled.store(intx_disabled, Ordering::Release);
        self.raise_intx_if_pending();
    }

    /// Returns to the post-reset state. MSI-X table state is PCI-level and
    /// survives a virtio reset.
    pub fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
        self.config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
    }

    fn signal(&self, vector: u16, isr_bit: u8) {
        let mut msix = lock(&self.msix);
        if msix.enabled() {
            if vector == VIRTIO_MSI_NO_VECTOR {
                return;
            }
            if let Err(e) = msix.trigger(vector) {
                log::warn!("virtio-pci: cannot raise MSI-X vector {vector}: {e}");
            }
            return;
        }
        drop(msix);
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        self.raise_intx();
    }
}

fn lock(msix: &Mutex<MsixConfig>) -> std::sync::MutexGuard<'_, MsixConfig> {
    msix.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Interrupt for PciInterrupt {
    fn signal_used_queue(&self, queue_index: usize) {
        self.signal(self.queue_vector(queue_index), VIRTIO_PCI_ISR_QUEUE);
    }

    fn signal_config_changed(&self) {
        self.signal(self.config_vector(), VIRTIO_PCI_ISR_CONFIG);
    }

    fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.signal_config_changed();
    }
}
