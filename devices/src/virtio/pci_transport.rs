//! The modern (virtio 1.x) PCI transport.
//!
//! [`VirtioPciDevice`] wraps a [`VirtioDevice`] as a PCI function: vendor
//! 0x1af4, device 0x1040 + type, revision 1. It owns the configuration space
//! with the virtio vendor capabilities and the MSI-X capability, BAR 0 with
//! the common config, ISR, device config, notify and MSI-X regions, the
//! feature negotiation and device status state machine, the queues until
//! activation, one notify [`EventFd`] per queue the VMM can register as
//! an ioeventfd, and one [`QueueStatus`] per queue, for the device's whole
//! life, that the VMM reads to see how each queue is doing. Register layouts
//! follow virtio 1.2 section 4.1.

use std::sync::{Arc, Mutex, PoisonError};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::pci::config::{COMMAND, COMMAND_INTX_DISABLE, COMMAND_MEMORY_SPACE};
use crate::pci::msix::{MSIX_CAPABILITY_ID, MsixConfig};
use crate::pci::{BarRegion, BarType, PciConfiguration, PciDevice, PciError, PciIds};

pub use super::pci_interrupt::PciInterrupt;
use super::{ActiveQueue, Interrupt, Queue, QueueStatus, VirtioDevice};
use common::CommonConfig;

mod common;
mod state;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Device ID of a modern device of type 0.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID (non-transitional devices use 0x40 or higher, 4.1.2.1).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// The one BAR, a 64-bit memory BAR holding every region below.
pub const VIRTIO_BAR: usize = 0;
/// Size of [`VIRTIO_BAR`].
pub const VIRTIO_BAR_SIZE: u64 = 0x8000;
/// Common configuration structure.
pub const COMMON_CONFIG_OFFSET: u64 = 0x0000;
/// Size reserved for it.
pub const COMMON_CONFIG_SIZE: u64 = 0x1000;
/// ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Size reserved for it.
pub const ISR_SIZE: u64 = 0x1000;
/// Device-specific configuration.
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
/// Size reserved for it.
pub const DEVICE_CONFIG_SIZE: u64 = 0x1000;
/// Queue notify addresses: queue `n` at `NOTIFY_OFFSET + n * multiplier`.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Size reserved for them.
pub const NOTIFY_SIZE: u64 = 0x1000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Most vectors that fit between table and PBA.
/// [`NOTIFY_OFF_MULTIPLIER`] as a `u64`, for dividing BAR offsets.
const NOTIFY_OFF_MULTIPLIER_U64: u64 = NOTIFY_OFF_MULTIPLIER as u64;
const MAX_VECTORS: usize = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / 16) as usize;

/// Vendor-specific capability ID used by virtio.
const PCI_CAP_ID_VNDR: u8 = 0x09;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// Configuration space or BAR set-up failed.
    #[error("PCI set-up: {0}")]
    Pci(#[from] PciError),
    /// MSI-X set-up failed.
    #[error("MSI-X set-up: {0}")]
    Msix(#[from] crate::pci::MsixError),
    /// An eventfd could not be created or cloned.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The device declares no queues or more than the vector table holds.
    #[error("device has {0} queues")]
    QueueCount(usize),
}

/// Where the VMM should register a queue's ioeventfd.
#[derive(Debug)]
pub struct QueueNotifier {
    /// Queue index.
    pub queue: usize,
    /// Guest-physical notify address (valid once BAR 0 is assigned).
    pub addr: u64,
    /// Width of the driver's notify write (a 16-bit queue index).
    pub len: u64,
    /// Clone of the queue's notify eventfd.
    pub eventfd: EventFd,
}

/// Where the guest moved the virtio BAR: the VMM moves the MMIO bus range and the queue
/// notification ioeventfds from `old` to `new` (both bases of a [`VIRTIO_BAR_SIZE`] range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// Where the BAR decoded until now.
    pub old: u64,
    /// Where the guest programmed it.
    pub new: u64,
}

/// Carries out a [`BarMove`] in the VMM; an error (a range outside the MMIO window, one
/// overlapping another device) leaves the BAR where it was.
pub type BarMover = Box<dyn FnMut(BarMove) -> Result<(), String> + Send>;

/// A virtio device behind the modern PCI transport; see the module docs.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    msix_cap_offset: usize,
    msix: Arc<Mutex<MsixConfig>>,
    interrupt: Arc<PciInterrupt>,
    common: CommonConfig,
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// A clone of each queue's notify eventfd made while the VM is built, handed to the
    /// device at the next activation and remade at reset (when the old worker has closed
    /// its clone), so a guest's (re)activation never needs a free descriptor a control
    /// client may have used up.
    notify_spares: Vec<Option<EventFd>>,
    /// One per queue, handed to the device with the queue at each activation.
    queue_statuses: Vec<Arc<QueueStatus>>,
    mem: Arc<GuestMemoryMmap>,
    bar_addr: Option<u64>,
    /// Moves the BAR's decoding when the guest reprograms it (see [`BarMove`]).
    bar_mover: Option<BarMover>,
    /// The driver reset the device, but its worker had not let go of the queues yet: the
    /// reset completes (and the status reads 0) once it has. Until then the driver's writes
    /// are ignored and the status reads as it did.
    reset_pending: bool,
    /// What the device's pause found, between [`Self::pause`] and [`Self::resume`].
    paused: Option<super::worker::Paused>,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device_type", &self.device.device_type())
            .field("common", &self.common)
            .field("bar_addr", &self.bar_addr)
            .finish()
    }
}

/// [`VIRTIO_BAR`] as the one-byte BAR field of a capability.
const VIRTIO_BAR_U8: u8 = 0;
const _: () = assert!(VIRTIO_BAR_U8 as usize == VIRTIO_BAR);
// Every offset and length in the BAR is below VIRTIO_BAR_SIZE, which fits the
// 32-bit fields capabilities carry them in: `bar_field` never clamps.
const _: () = assert!(VIRTIO_BAR_SIZE <= u32::MAX as u64);

/// A BAR layout constant (an offset or length inside the BAR) as a 32-bit
/// capability field; see the assertion above for why it always fits.
fn bar_field(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Builds a virtio vendor capability body (after ID and next pointer).
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut body = vec![cap_len, cfg_type, VIRTIO_BAR_U8, 0, 0, 0];
    body.extend_from_slice(&bar_field(offset).to_le_bytes());
    body.extend_from_slice(&bar_field(length).to_le_bytes());
    if let Some(extra) = extra {
        body.extend_from_slice(&extra.to_le_bytes());
    }
    body
}

/// The low 16 bits of `v`, bit for bit.
fn low_u16(v: u32) -> u16 {
    let [b0, b1, ..] = v.to_le_bytes();
    u16::from_le_bytes([b0, b1])
}

fn class_for(device_type: u32) -> (u8, u8) {
    match device_type {
        1 => (0x02, 0x00), // network controller
        2 => (0x01, 0x80), // mass storage, other
        _ => (0xff, 0x00), // unclassified
    }
}

impl VirtioPciDevice {
    /// Wraps `device`; guest memory is what its queues will live in.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<VirtioPciDevice, VirtioPciError> {
        let num_queues = device.queue_max_sizes().len();
        if num_queues == 0 || num_queues >= MAX_VECTORS {
            return Err(VirtioPciError::QueueCount(num_queues));
        }
        let device_type = device.device_type();
        let (class, subclass) = class_for(device_type);
        let mut config = PciConfiguration::new(PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            // Device types are small; anything that would not fit is not a
            // virtio device we model. (The low 16 bits, wrapping, as before.)
            device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(low_u16(device_type)),
            revision_id: 1,
            class,
            subclass,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.set_interrupt_pin(1);
        config.add_bar(BarRegion {
            index: VIRTIO_BAR,
            size: VIRTIO_BAR_SIZE,
            bar_type: BarType::Memory64,
            prefetchable: false,
        })?;
        let caps = [
            virtio_cap(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CONFIG_OFFSET,
                COMMON_CONFIG_SIZE,
                None,
            ),
            virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, ISR_SIZE, None),
            virtio_cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CONFIG_OFFSET,
                DEVICE_CONFIG_SIZE,
                None,
            ),
            virtio_cap(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                NOTIFY_SIZE,
                Some(NOTIFY_OFF_MULTIPLIER),
            ),
        ];
        for body in caps {
            config.add_capability(PCI_CAP_ID_VNDR, &body, &[])?;
        }
        // One vector per queue plus one for configuration changes.
        let vectors = num_queues
            .checked_add(1)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or(VirtioPciError::QueueCount(num_queues))?;
        let msix = MsixConfig::new(vectors)?;
        let body = msix.capability_body(
            VIRTIO_BAR_U8,
            bar_field(MSIX_TABLE_OFFSET),
            bar_field(MSIX_PBA_OFFSET),
        );
        let msix_cap_offset = config.add_capability(
            MSIX_CAPABILITY_ID,
            &body,
            &MsixConfig::capability_writable_mask(),
        )?;
        let msix = Arc::new(Mutex::new(msix));
        let intx = EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd)?;
        let intx_resample = EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd)?;
        let interrupt = Arc::new(PciInterrupt::new(
            msix.clone(),
            intx,
            intx_resample,
            num_queues,
        ));
        let queues: Vec<Queue> = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max))
            .collect();
        let queue_evts = (0..num_queues)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let kernel_served = device.kernel_served_queues();
        let queue_statuses = (0..num_queues)
            .map(|index| {
                Arc::new(if kernel_served.contains(&index) {
                    QueueStatus::served_by_kernel()
                } else {
                    QueueStatus::new()
                })
            })
            .collect();
        let notify_spares = queue_evts
            .iter()
            .map(|evt| evt.try_clone().map(Some).map_err(VirtioPciError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioPciDevice {
            config,
            msix_cap_offset,
            msix,
            interrupt,
            common: CommonConfig::default(),
            device,
            queues,
            queue_evts,
            notify_spares,
            queue_statuses,
            mem,
            bar_addr: None,
            bar_mover: None,
            reset_pending: false,
            paused: None,
        })
    }

    /// The MSI-X state: per-vector eventfds for irqfd, the messages the
    /// guest programmed, and the route-change hook.
    pub fn msix(&self) -> Arc<Mutex<MsixConfig>> {
        self.msix.clone()
    }

    /// The interrupt state (INTx eventfd, ISR, vector assignment).
    pub fn interrupt(&self) -> Arc<PciInterrupt> {
        self.interrupt.clone()
    }

    /// Where to register each queue's ioeventfd; `None` before BAR 0 is
    /// assigned.
    pub fn queue_notifiers(&self) -> Result<Option<Vec<QueueNotifier>>, VirtioPciError> {
        let Some(bar) = self.bar_addr else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (queue, evt) in self.queue_evts.iter().enumerate() {
            // The guest places the BAR, but only aligned to its size, and the
            // notify area lies inside it: none of this can overflow.
            let Some(addr) = (queue as u64)
                .checked_mul(u64::from(NOTIFY_OFF_MULTIPLIER))
                .and_then(|o| o.checked_add(NOTIFY_OFFSET))
                .and_then(|o| bar.checked_add(o))
            else {
                continue;
            };
            out.push(QueueNotifier {
                queue,
                addr,
                len: 2,
                eventfd: evt.try_clone().map_err(VirtioPciError::EventFd)?,
            });
        }
        Ok(Some(out))
    }

    /// The live status of each queue, in queue index order: the same ones for the
    /// device's whole life, so the VMM can take them once and read them from any thread.
    pub fn queue_statuses(&self) -> Vec<Arc<QueueStatus>> {
        self.queue_statuses.clone()
    }

    /// Notifies queue `index`, as a driver write to its notify address does.
    pub fn notify_queue(&self, index: usize) {
        match self.queue_evts.get(index) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    static NOTIFY_FAILED: super::log_limit::LogLimiter =
                        super::log_limit::LogLimiter::new();
                    if let Some(n) = NOTIFY_FAILED.admit() {
                        log::warn!("virtio-pci: cannot notify queue {index} ({n} so far): {e}");
                    }
                }
            }
            None => log::debug!("virtio-pci: notify of missing queue {index}"),
        }
    }

    /// The device status as the driver reads it.
    pub fn device_status(&self) -> u8 {
        let status = self.common.status(&self.interrupt);
        // A pending reset never reads as done, even from a device that was not running.
        if self.reset_pending {
            status.max(1)
        } else {
            status
        }
    }

    fn device_config_access(&mut self, offset: u64, read: Option<&mut [u8]>, write: &[u8]) {
        match read {
            Some(data) => self.device.read_config(offset, data),
            None => self.device.write_config(offset, write),
        }
    }

    /// Starts the device with the enabled queues, or flags NEEDS_RESET.
    fn activate(&mut self) -> bool {
        let features = self.common.driver_features;
        let mut active = Vec::new();
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if !queue.ready {
                continue;
            }
            queue.event_idx = features & (1 << super::VIRTIO_RING_F_EVENT_IDX) != 0;
            queue.indirect = features & (1 << super::VIRTIO_RING_F_INDIRECT_DESC) != 0;
            let spare = self.notify_spares.get_mut(index).and_then(Option::take);
            let notify = match spare {
                Some(evt) => Some(Ok(evt)),
                None => self.queue_evts.get(index).map(EventFd::try_clone),
            };
            let status = self.queue_statuses.get(index);
            match (queue.validate(&self.mem), notify, status) {
                (Ok(()), Some(Ok(notify)), Some(status)) => active.push(ActiveQueue {
                    index,
                    queue: queue.clone(),
                    notify,
                    status: status.clone(),
                }),
                (Err(e), _, _) => {
                    static QUEUE_REJECTED: super::log_limit::LogLimiter =
                        super::log_limit::LogLimiter::new();
                    if let Some(n) = QUEUE_REJECTED.admit() {
                        log::warn!("virtio-pci: queue {index} rejected ({n} so far): {e}");
                    }
                    return false;
                }
                (_, _, _) => return false,
            }
        }
        // Recorded only once every queue passed, and before the device (whose worker
        // updates the statuses from then on) gets them.
        for queue in &active {
            queue.status.activated(&queue.queue);
        }
        let statuses: Vec<Arc<QueueStatus>> = active.iter().map(|q| q.status.clone()).collect();
        let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
        match self.device.activate(self.mem.clone(), interrupt, active) {
            Ok(()) => true,
            Err(e) => {
                static ACTIVATION_FAILED: super::log_limit::LogLimiter =
                    super::log_limit::LogLimiter::new();
                if let Some(n) = ACTIVATION_FAILED.admit() {
                    log::warn!("virtio-pci: activation failed ({n} so far): {e}");
                }
                for status in statuses {
                    status.deactivated();
                }
                false
            }
        }
    }

    /// Device reset (status 0): stops the device and forgets all driver
    /// state except PCI-level configuration (BARs, MSI-X table). A device
    /// whose worker is still busy with a request keeps the reset pending
    /// until it lets go (see [`Self::poll_pending_reset`]): the driver must
    /// not reuse the rings while a worker may still complete chains into them,
    /// and it waits for the status to read 0 before it does (virtio 1.2
    /// section 4.1.4.3.2).
    fn reset(&mut self) {
        if self.reset_pending {
            return;
        }
        self.device.reset();
        if self.device.quiesced() {
            self.finish_reset();
        } else {
            self.reset_pending = true;
        }
    }

    /// Completes a pending reset once the device has let go; returns whether a reset is
    /// still pending.
    fn poll_pending_reset(&mut self) -> bool {
        if self.reset_pending && self.device.quiesced() {
            self.reset_pending = false;
            self.finish_reset();
        }
        self.reset_pending
    }

    fn finish_reset(&mut self) {
        for queue in &mut self.queues {
            queue.reset();
        }
        // After the device reset: its worker has let go of the queues and no longer
        // updates their statuses (unless the reset never reached it, which the device
        // logs as an error; then a late update may still land here).
        for status in &self.queue_statuses {
            status.deactivated();
        }
        // The worker closed its clones: remake the spares now, reusing those descriptors.
        for (spare, evt) in self.notify_spares.iter_mut().zip(&self.queue_evts) {
            if spare.is_none() {
                *spare = evt.try_clone().ok();
            }
        }
        self.common = CommonConfig::default();
        self.interrupt.reset();
        // Notifications that arrived for the old queues are left in their eventfds: after
        // the next activation they only make the device look at its queue once more and
        // find it empty. Draining them here would be a read(2) on the vCPU thread, which
        // its seccomp policy rightly does not allow.
    }

    /// Records the IOAPIC input INTA# is wired to in the Interrupt Line register.
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.config.set_interrupt_line(line);
    }

    /// Installs what moves the BAR's decoding when the guest reprograms the BAR.
    pub fn set_bar_mover(&mut self, mover: BarMover) {
        self.bar_mover = Some(mover);
    }

    /// Whether the guest enabled memory decoding (COMMAND's memory space bit): until it
    /// does, and while it turns it off (as Linux does while sizing BARs), the BAR answers
    /// as no device would. Queue notifications are KVM ioeventfds, which KVM signals
    /// whatever the bit says: they only make the device look at its queues.
    fn memory_decoding(&self) -> bool {
        self.config.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Follows a BAR the guest reprogrammed, once memory decoding is on (so never in the
    /// middle of sizing, which writes all ones with decoding off, nor half-way through
    /// the two halves of a 64-bit address, written with decoding off too). A move the VMM
    /// refuses puts the old address back in the register, so the guest reads where the
    /// BAR really decodes.
    fn follow_bar(&mut self) {
        let (Some(old), Some(new)) = (self.bar_addr, self.config.bar_address(VIRTIO_BAR)) else {
            return;
        };
        if old == new || !self.memory_decoding() {
            return;
        }
        let moved = match self.bar_mover.as_mut() {
            Some(mover) => mover(BarMove { old, new }),
            None => Err("this VMM does not move BARs".to_string()),
        };
        match moved {
            Ok(()) => self.bar_addr = Some(new),
            Err(e) => {
                // The guest can reprogram its BAR as often as it likes.
                static REFUSED: super::log_limit::LogLimiter = super::log_limit::LogLimiter::new();
                if let Some(n) = REFUSED.admit() {
                    log::warn!(
                        "virtio-pci: the guest moved a BAR to {new:#x}; it stays at {old:#x}: \
                         {e} (refusal {n})"
                    );
                }
                // `old` was a valid address of this BAR, so this cannot fail.
                let _ = self.config.set_bar_address(VIRTIO_BAR, old);
            }
        }
    }

    fn msix_control_touched(&self, offset: usize, len: usize) -> bool {
        // Guest offsets and lengths: saturate rather than wrap (an access at
        // the very top would not reach the control register anyway).
        let control = self.msix_cap_offset.saturating_add(2);
        offset < control.saturating_add(2) && control < offset.saturating_add(len)
    }

    fn bar_access(&mut self, offset: u64, read: Option<&mut [u8]>, write: &[u8]) {
        if self.poll_pending_reset() && read.is_none() {
            // Nothing the driver writes may reach a device that has not stopped yet.
            return;
        }
        let in_region = |base: u64, size: u64| offset.checked_sub(base).filter(|o| *o < size);
        if let Some(o) = in_region(COMMON_CONFIG_OFFSET, COMMON_CONFIG_SIZE) {
            match read {
                Some(data) => self.common_read(o, data),
                None => self.common_write(o, write),
            }
        } else if let Some(o) = in_region(ISR_OFFSET, ISR_SIZE) {
            if let Some(data) = read {
                data.fill(0);
                if let (0, Some(b)) = (o, data.first_mut()) {
                    *b = self.interrupt.read_and_clear_isr();
                }
            }
        } else if let Some(o) = in_region(DEVICE_CONFIG_OFFSET, DEVICE_CONFIG_SIZE) {
            self.device_config_access(o, read, write);
        } else if let Some(o) = in_region(NOTIFY_OFFSET, NOTIFY_SIZE) {
            match read {
                Some(data) => data.fill(0),
                // o < NOTIFY_SIZE, so the queue index converts; usize::MAX
                // would name no queue.
                None => self.notify_queue(
                    usize::try_from(o / NOTIFY_OFF_MULTIPLIER_U64).unwrap_or(usize::MAX),
                ),
            }
        } else {
            self.msix_access(offset, read, write);
        }
    }

    fn msix_access(&mut self, offset: u64, read: Option<&mut [u8]>, write: &[u8]) {
        let mut msix = self.msix.lock().unwrap_or_else(PoisonError::into_inner);
        let table = offset
            .checked_sub(MSIX_TABLE_OFFSET)
            .filter(|o| *o < msix.table_size());
        let pba = offset
            .checked_sub(MSIX_PBA_OFFSET)
            .filter(|o| *o < msix.pba_size());
        match (read, table, pba) {
            (Some(data), Some(o), _) => msix.read_table(o, data),
            (Some(data), None, Some(o)) => msix.read_pba(o, data),
            (Some(data), None, None) => data.fill(0),
            (None, Some(o), _) => msix.write_table(o, write),
            (None, _, _) => {}
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        if self.msix_control_touched(offset, data.len()) {
            let control = self.config.read_u16(self.msix_cap_offset.saturating_add(2));
            self.msix
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_control(control);
        }
        if offset < COMMAND + 2 && COMMAND < offset.saturating_add(data.len()) {
            self.interrupt
                .set_intx_disabled(self.config.command() & COMMAND_INTX_DISABLE != 0);
        }
        self.follow_bar();
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    fn assign_bar(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        self.config.set_bar_address(index, addr)?;
        self.bar_addr = Some(addr);
        Ok(())
    }

    fn bar_read(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        if index != VIRTIO_BAR || !self.memory_decoding() {
            // What a read that no device claims returns on PCI (master abort).
            data.fill(0xff);
            return;
        }
        self.bar_access(offset, Some(data), &[]);
    }

    fn bar_write(&mut self, index: usize, offset: u64, data: &[u8]) {
        if index == VIRTIO_BAR && self.memory_decoding() {
            self.bar_access(offset, None, data);
        }
    }
}
