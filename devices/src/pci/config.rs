//! The 256-byte configuration space of a type-0 PCI function.
//!
//! [`PciConfiguration`] owns the register image, which bits of it the guest
//! may write, which are write-1-to-clear, the BARs and the capability list.
//! Every register is modelled with two per-byte masks, so a guest access of
//! any width at any offset is handled the same way: read-only bits keep their
//! value, writable bits take the written value, and W1C bits are cleared where
//! a one is written. BAR size probing falls out of this for free: the address
//! bits below the BAR size are read-only zero, so writing all ones reads back
//! the size mask plus the read-only type bits, exactly as hardware does.

use super::PciError;
use super::bar::{BarRegion, BarType};

/// Size of the conventional configuration space reachable through mechanism #1.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Offset of the first BAR register.
pub const BAR0_OFFSET: usize = 0x10;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
/// Command register offset.
pub const COMMAND: usize = 0x04;
/// Status register offset.
pub const STATUS: usize = 0x06;
const REVISION_ID: usize = 0x08;
const PROG_IF: usize = 0x09;
const SUBCLASS: usize = 0x0a;
const CLASS_CODE: usize = 0x0b;
const HEADER_TYPE: usize = 0x0e;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;

/// Command register: I/O space enable.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command register: memory space enable.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
const COMMAND_SERR_ENABLE: u16 = 1 << 8;
/// Command register: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR_ENABLE
    | COMMAND_INTX_DISABLE;

/// Status register: a capability list is present.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status register error bits, all write-1-to-clear (PCI 3.0 section 6.2.3):
/// master data parity error, signaled/received target abort, received master
/// abort, signaled system error, detected parity error.
const STATUS_W1C: u16 = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);

/// First byte usable for capabilities: right after the standard header.
const CAPABILITY_START: usize = 0x40;

/// Identity of a PCI function, written into the read-only header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Base class code.
    pub class: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// The configuration space of one type-0 function; see the module docs.
#[derive(Clone)]
pub struct PciConfiguration {
    regs: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest may change with a plain write.
    writable: [u8; CONFIG_SPACE_SIZE],
    /// Bits a guest write of one clears.
    w1c: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<BarRegion>; NUM_BARS],
    /// Offset of the last capability added, to chain the next one to it.
    last_capability: Option<usize>,
    /// First free byte for the next capability.
    next_capability: usize,
}

impl std::fmt::Debug for PciConfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfiguration")
            .field("vendor_id", &self.read_u16(VENDOR_ID))
            .field("device_id", &self.read_u16(DEVICE_ID))
            .field("bars", &self.bars)
            .finish()
    }
}

impl PciConfiguration {
    /// Creates a header for a single-function type-0 device with no BARs.
    pub fn new(ids: PciIds) -> PciConfiguration {
        let mut config = PciConfiguration {
            regs: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            w1c: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            last_capability: None,
            next_capability: CAPABILITY_START,
        };
        config.set_u16(VENDOR_ID, ids.vendor_id);
        config.set_u16(DEVICE_ID, ids.device_id);
        config.regs[REVISION_ID] = ids.revision_id;
        config.regs[PROG_IF] = ids.prog_if;
        config.regs[SUBCLASS] = ids.subclass;
        config.regs[CLASS_CODE] = ids.class;
        config.regs[HEADER_TYPE] = 0;
        config.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        config.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        config.set_mask(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        config.w1c[STATUS..STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        // Software uses the interrupt line byte as scratch for the IRQ it
        // routed; it must read back what was written.
        config.writable[INTERRUPT_LINE] = 0xff;
        config
    }

    /// Declares the legacy interrupt pin (1 = INTA#); 0 means none.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.regs[INTERRUPT_PIN] = pin;
    }

    /// Records the interrupt line (the IOAPIC input) the pin is wired to, as firmware
    /// does for an OS that does not read ACPI's `_PRT`.
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.regs[INTERRUPT_LINE] = line;
    }

    /// Handles a guest read of `data.len()` bytes at `offset`.
    ///
    /// Bytes past the end of the space read as all ones, like a master abort.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Handles a guest write of `data` at `offset`, honouring the masks.
    ///
    /// Bytes past the end of the space are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i) else {
                return;
            };
            let (Some(&writable), Some(&w1c), Some(reg)) =
                (self.writable.get(o), self.w1c.get(o), self.regs.get_mut(o))
            else {
                return;
            };
            let cleared = w1c & value;
            *reg = ((*reg & !writable) | (value & writable)) & !cleared;
        }
    }

    /// Reads a little-endian `u16` register (device-side helper).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a little-endian `u32` register (device-side helper).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The command register as the guest last wrote it.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Sets status bits from the device side (e.g. an error it detected).
    pub fn set_status_bits(&mut self, bits: u16) {
        let status = self.read_u16(STATUS) | bits;
        self.set_u16(STATUS, status);
    }

    /// Declares BAR `region.index` with its size and type.
    ///
    /// A 64-bit BAR also claims the register after it for the upper half.
    pub fn add_bar(&mut self, region: BarRegion) -> Result<(), PciError> {
        let index = region.index;
        let pair = match region.bar_type {
            BarType::Memory32 => index,
            BarType::Memory64 => index
                .checked_add(1)
                .ok_or(PciError::InvalidBarIndex(index))?,
        };
        if pair >= NUM_BARS {
            return Err(PciError::InvalidBarIndex(index));
        }
        if region.size < 16 || !region.size.is_power_of_two() {
            return Err(PciError::InvalidBarSize(region.size));
        }
        if region.bar_type == BarType::Memory32 && region.size > 1 << 31 {
            return Err(PciError::InvalidBarSize(region.size));
        }
        // `pair < NUM_BARS` was checked above, so the slots exist.
        let slots = self
            .bars
            .get(index..=pair)
            .ok_or(PciError::InvalidBarIndex(index))?;
        if slots.iter().any(Option::is_some) || self.is_upper_half(index) {
            return Err(PciError::BarInUse(index));
        }
        let low_offset = bar_offset(index);
        // `size` is a power of two >= 16 (checked above).
        let (mask_low, mask_high) = halves(!(region.size.saturating_sub(1)));
        // Low 4 bits of a memory BAR are read-only type bits; the address
        // bits below the size are read-only zero, which is what makes size
        // probing work.
        let mut type_bits: u32 = if region.prefetchable { 1 << 3 } else { 0 };
        if region.bar_type == BarType::Memory64 {
            type_bits |= 0b10 << 1;
            self.set_mask(low_offset.saturating_add(4), &mask_high.to_le_bytes());
        }
        self.set_mask(low_offset, &(mask_low & !0xf).to_le_bytes());
        self.set_u32(low_offset, type_bits);
        if let Some(slot) = self.bars.get_mut(index) {
            *slot = Some(region);
        }
        Ok(())
    }

    /// Whether `index` is the upper half of a 64-bit BAR.
    fn is_upper_half(&self, index: usize) -> bool {
        index
            .checked_sub(1)
            .and_then(|lower| self.bars.get(lower).copied().flatten())
            .is_some_and(|bar| bar.bar_type == BarType::Memory64)
    }

    /// The BARs declared with [`Self::add_bar`].
    pub fn bar_regions(&self) -> Vec<BarRegion> {
        self.bars.iter().flatten().copied().collect()
    }

    /// Programs BAR `index` with `addr` (the VMM's pre-assignment).
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        let region = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(PciError::InvalidBarIndex(index))?;
        // Declared BARs have a power-of-two size >= 16.
        if addr & region.size.saturating_sub(1) != 0 {
            return Err(PciError::MisalignedBar { index, addr });
        }
        if region.bar_type == BarType::Memory32 && addr > u64::from(u32::MAX) {
            return Err(PciError::MisalignedBar { index, addr });
        }
        let low_offset = bar_offset(index);
        let type_bits = self.read_u32(low_offset) & 0xf;
        let (low, high) = halves(addr);
        self.set_u32(low_offset, (low & !0xf) | type_bits);
        if region.bar_type == BarType::Memory64 {
            self.set_u32(low_offset.saturating_add(4), high);
        }
        Ok(())
    }

    /// The address BAR `index` currently decodes, as the guest programmed it.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let region = self.bars.get(index).copied().flatten()?;
        let low_offset = bar_offset(index);
        let low = u64::from(self.read_u32(low_offset) & !0xf);
        let high = match region.bar_type {
            BarType::Memory32 => 0,
            BarType::Memory64 => u64::from(self.read_u32(low_offset.saturating_add(4))),
        };
        Some((high << 32) | low)
    }

    /// Appends a capability and returns its offset.
    ///
    /// `body` is everything after the ID and next-pointer bytes.
    /// `writable` gives, for each byte of `body`, the bits the guest may
    /// change; it may be shorter than `body` (the rest is read-only).
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciError> {
        let offset = self.next_capability;
        let end = body
            .len()
            .checked_add(2)
            .and_then(|len| offset.checked_add(len))
            .filter(|&end| end <= CONFIG_SPACE_SIZE && writable.len() <= body.len())
            .ok_or(PciError::CapabilitySpaceFull)?;
        // `offset` < CONFIG_SPACE_SIZE (256), checked just above.
        let pointer = u8::try_from(offset).map_err(|_| PciError::CapabilitySpaceFull)?;
        let Some([cap_id, next, rest @ ..]) = self.regs.get_mut(offset..end) else {
            return Err(PciError::CapabilitySpaceFull);
        };
        *cap_id = id;
        *next = 0;
        rest.copy_from_slice(body);
        self.set_mask(offset.saturating_add(2), writable);
        match self.last_capability {
            None => self.set_bytes(CAPABILITIES_POINTER, &[pointer]),
            Some(last) => self.set_bytes(last.saturating_add(1), &[pointer]),
        }
        self.last_capability = Some(offset);
        // Capabilities are dword aligned (PCI 3.0 section 6.7); `end` is at
        // most CONFIG_SPACE_SIZE, so rounding up cannot overflow.
        self.next_capability = end.checked_next_multiple_of(4).unwrap_or(end);
        self.set_status_bits(STATUS_CAPABILITIES_LIST);
        Ok(offset)
    }

    /// Overwrites bytes from the device side, ignoring the guest masks.
    ///
    /// Panics never: out-of-range bytes are dropped.
    pub fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(r) = offset.checked_add(i).and_then(|o| self.regs.get_mut(o)) {
                *r = b;
            }
        }
    }

    /// The register image, for a snapshot.
    pub fn image(&self) -> [u8; CONFIG_SPACE_SIZE] {
        self.regs
    }

    /// Checks that `image` (a saved register image) differs from this space only in bits
    /// the guest can change (writable or write-1-to-clear): the same device, with the
    /// same capabilities and BAR types. Returns the first offending offset.
    pub fn check_image(&self, image: &[u8; CONFIG_SPACE_SIZE]) -> Result<(), usize> {
        for (o, ((&saved, &now), (&writable, &w1c))) in image
            .iter()
            .zip(&self.regs)
            .zip(self.writable.iter().zip(&self.w1c))
            .enumerate()
        {
            let fixed = !(writable | w1c);
            if (saved ^ now) & fixed != 0 {
                return Err(o);
            }
        }
        Ok(())
    }

    /// Puts a register image checked with [`Self::check_image`] in place.
    pub fn set_image(&mut self, image: &[u8; CONFIG_SPACE_SIZE]) {
        self.regs = *image;
    }

    /// The address BAR `index` decodes in `image`, read as [`Self::bar_address`] does.
    pub fn bar_address_in(&self, image: &[u8; CONFIG_SPACE_SIZE], index: usize) -> Option<u64> {
        let mut copy = self.clone();
        copy.regs = *image;
        copy.bar_address(index)
    }

    fn set_mask(&mut self, offset: usize, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            if let Some(w) = offset.checked_add(i).and_then(|o| self.writable.get_mut(o)) {
                *w = m;
            }
        }
    }

    fn set_u16(&mut self, offset: usize, value: u16) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        self.set_bytes(offset, &value.to_le_bytes());
    }
}

/// Config-space offset of BAR register `index`. Callers pass an index below
/// `NUM_BARS`; a bogus one saturates to an offset past the end of config
/// space, where reads float and writes are dropped.
fn bar_offset(index: usize) -> usize {
    index.saturating_mul(4).saturating_add(BAR0_OFFSET)
}

/// The low and high 32-bit halves of `v`, bit for bit.
fn halves(v: u64) -> (u32, u32) {
    let [l0, l1, l2, l3, h0, h1, h2, h3] = v.to_le_bytes();
    (
        u32::from_le_bytes([l0, l1, l2, l3]),
        u32::from_le_bytes([h0, h1, h2, h3]),
    )
}
