//! What a BAR is, where it may live, and how guest MMIO reaches it.
//!
//! [`BarRegion`] describes a memory BAR a device needs; [`BarAllocator`]
//! hands out naturally aligned guest-physical ranges for them inside the
//! 32-bit MMIO hole; [`PciBarBusDevice`] is the [`BusDevice`] the VMM inserts
//! into its MMIO bus for each assigned BAR, forwarding accesses to the
//! owning [`PciDevice`] as `(bar, offset)`.

use std::sync::{Arc, Mutex, PoisonError};

use crate::BusDevice;

use super::{PciDevice, PciError};

/// Start of the 32-bit MMIO hole the VMM leaves free for BARs.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of that hole: the IOAPIC/LAPIC live from here on.
pub const MMIO_HOLE_END: u64 = 0xfec0_0000;

/// Address width of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarType {
    /// One register, 32-bit address.
    Memory32,
    /// Two consecutive registers, 64-bit address.
    Memory64,
}

/// A memory BAR a device wants: its register index, size and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    /// BAR register index (0..=5; the lower index of a 64-bit pair).
    pub index: usize,
    /// Size in bytes; a power of two of at least 16.
    pub size: u64,
    /// Address width.
    pub bar_type: BarType,
    /// Whether reads have no side effects (may be prefetched).
    pub prefetchable: bool,
}

/// Hands out naturally aligned ranges from a fixed window, bump style.
///
/// BARs are placed once at boot and never freed, so a bump allocator that
/// aligns each request to its own size is all that is needed.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator::new(MMIO_HOLE_START, MMIO_HOLE_END)
    }
}

impl BarAllocator {
    /// Allocates from `[start, end)`.
    pub fn new(start: u64, end: u64) -> BarAllocator {
        BarAllocator { next: start, end }
    }

    /// Returns a `size`-aligned range of `size` bytes.
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        if size == 0 || !size.is_power_of_two() {
            return Err(PciError::InvalidBarSize(size));
        }
        let base = self
            .next
            .checked_next_multiple_of(size)
            .ok_or(PciError::BarSpaceExhausted(size))?;
        let end = base
            .checked_add(size)
            .filter(|&end| end <= self.end)
            .ok_or(PciError::BarSpaceExhausted(size))?;
        self.next = end;
        Ok(base)
    }
}

/// Routes MMIO accesses for one BAR of one device; insert at the BAR's
/// address with the BAR's size.
pub struct PciBarBusDevice {
    device: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl PciBarBusDevice {
    /// Forwards accesses to BAR `bar` of `device`.
    pub fn new(device: Arc<Mutex<dyn PciDevice>>, bar: usize) -> PciBarBusDevice {
        PciBarBusDevice { device, bar }
    }
}

impl BusDevice for PciBarBusDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_write(self.bar, offset, data);
    }
}
