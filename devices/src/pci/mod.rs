//! Conventional PCI: configuration space, bus 0, BARs and MSI-X.
//!
//! This module owns what every PCI function model shares: the
//! [`PciDevice`] trait the bus talks to, the type-0
//! [`PciConfiguration`] helper, the [`PciRoot`] that implements
//! configuration mechanism #1 on ports 0xcf8..=0xcff, BAR placement
//! ([`BarAllocator`]) and routing of guest MMIO to BARs
//! ([`PciBarBusDevice`]), and MSI-X ([`MsixConfig`]).
//!
//! Devices never see KVM: interrupts leave them as eventfds and BAR accesses
//! arrive through the VMM's MMIO [`Bus`](crate::Bus).

use std::sync::{Arc, Mutex, PoisonError};

pub mod bar;
pub mod config;
pub mod msix;
pub mod root;
pub mod state;

pub use bar::{BarAllocator, BarRegion, BarType, MMIO_HOLE_END, MMIO_HOLE_START, PciBarBusDevice};
pub use config::{PciConfiguration, PciIds};
pub use msix::{
    MsiMessage, MsixConfig, MsixEntry, MsixError, MsixRouteHandler, MsixRouteUpdate, MsixState,
};
pub use root::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciAddress, PciHostBridge, PciRoot};

/// Errors setting up PCI functions and BARs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// BAR register index out of range or not a BAR of this device.
    #[error("invalid BAR index {0}")]
    InvalidBarIndex(usize),
    /// BAR size not a power of two of at least 16 (or too large for 32 bits).
    #[error("invalid BAR size {0:#x}")]
    InvalidBarSize(u64),
    /// BAR register already declared.
    #[error("BAR {0} already in use")]
    BarInUse(usize),
    /// Address not aligned to the BAR size or out of the BAR's reach.
    #[error("address {addr:#x} is not valid for BAR {index}")]
    MisalignedBar {
        /// BAR index.
        index: usize,
        /// Rejected address.
        addr: u64,
    },
    /// The MMIO window has no room for a BAR of this size.
    #[error("no room for a BAR of size {0:#x}")]
    BarSpaceExhausted(u64),
    /// Configuration space has no room for another capability.
    #[error("no room for another capability")]
    CapabilitySpaceFull,
    /// All 32 slots of bus 0 are taken.
    #[error("PCI bus 0 is full")]
    BusFull,
}

/// A PCI function as seen by [`PciRoot`] and the MMIO bus.
///
/// Every method takes guest-controlled offsets and lengths and must treat
/// them as untrusted: out-of-range reads return all ones or zeros, writes are
/// dropped, nothing panics.
pub trait PciDevice: Send {
    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at
    /// `offset`; the access never crosses a dword boundary.
    fn config_read(&mut self, offset: usize, data: &mut [u8]);

    /// Writes configuration space at `offset`, like [`Self::config_read`].
    fn config_write(&mut self, offset: usize, data: &[u8]);

    /// The memory BARs this function needs.
    fn bar_regions(&self) -> Vec<BarRegion>;

    /// Programs BAR `index` with the address the VMM chose for it.
    fn assign_bar(&mut self, index: usize, addr: u64) -> Result<(), PciError>;

    /// Handles a guest read at `offset` within BAR `index`.
    fn bar_read(&mut self, index: usize, offset: u64, data: &mut [u8]);

    /// Handles a guest write at `offset` within BAR `index`.
    fn bar_write(&mut self, index: usize, offset: u64, data: &[u8]);
}

/// A BAR placed by [`allocate_bars`]: insert `bus_device` into the MMIO bus
/// at `base` with length `size`.
pub struct AssignedBar {
    /// BAR register index.
    pub index: usize,
    /// Guest-physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Forwards MMIO accesses to the device's BAR.
    pub bus_device: Arc<Mutex<PciBarBusDevice>>,
}

/// Allocates and assigns every BAR of `device` from `allocator`.
pub fn allocate_bars(
    device: &Arc<Mutex<dyn PciDevice>>,
    allocator: &mut BarAllocator,
) -> Result<Vec<AssignedBar>, PciError> {
    let mut guard = device.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    for region in guard.bar_regions() {
        let base = allocator.allocate(region.size)?;
        guard.assign_bar(region.index, base)?;
        out.push(AssignedBar {
            index: region.index,
            base,
            size: region.size,
            bus_device: Arc::new(Mutex::new(PciBarBusDevice::new(
                device.clone(),
                region.index,
            ))),
        });
    }
    Ok(out)
}
