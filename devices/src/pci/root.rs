//! PCI bus 0 and configuration mechanism #1.
//!
//! [`PciRoot`] owns the devices on bus 0 (slot 0 is always the
//! [`PciHostBridge`], the others are numbered in insertion order from 1) and
//! the two port-I/O registers of configuration mechanism #1: CONFIG_ADDRESS
//! at 0xcf8 (dword access only) and CONFIG_DATA at 0xcfc..=0xcff (any width,
//! any offset). It is a [`BusDevice`] to insert at [`PCI_CONFIG_IO_BASE`]
//! with length [`PCI_CONFIG_IO_LEN`].

use std::sync::{Arc, Mutex, PoisonError};

use crate::BusDevice;

use super::config::{PciConfiguration, PciIds};
use super::{BarRegion, PciDevice, PciError};

/// Port of CONFIG_ADDRESS; CONFIG_DATA follows at +4.
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Length of the two registers together.
pub const PCI_CONFIG_IO_LEN: u64 = 8;

/// Devices per bus.
const MAX_SLOTS: usize = 32;
/// CONFIG_ADDRESS bits that hold state: enable (31), bus (23:16), device
/// (15:11), function (10:8), dword register (7:2). The rest read as zero.
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;
const CONFIG_ENABLE: u32 = 1 << 31;
const DATA_OFFSET: u64 = 4;

/// Location of a function on the PCI bus hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl PciAddress {
    /// The function's instance field in snapshot records: `bus << 8 | device << 3 |
    /// function`, as in a CONFIG_ADDRESS.
    pub fn instance(self) -> u32 {
        u32::from(self.bus) << 8 | u32::from(self.device & 0x1f) << 3 | u32::from(self.function & 7)
    }
}

/// A host bridge at 00:00.0: class 0x06/0x00, no BARs.
///
/// Linux's `pci_sanity_check` looks for a host bridge (or an Intel/Compaq
/// vendor) on bus 0 before trusting mechanism #1, so one must exist.
#[derive(Debug)]
pub struct PciHostBridge {
    config: PciConfiguration,
}

/// Vendor ID used for the host bridge.
const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// A host bridge id Linux has no quirks for (Cloud Hypervisor uses the same). The 440FX's
/// 0x1237 made Linux run quirk_natoma at boot, which cost about 30 ms in the lab and
/// limits PCI-to-PCI transfers for no reason in a VM.
const HOST_BRIDGE_DEVICE: u16 = 0x0d57;

impl Default for PciHostBridge {
    fn default() -> Self {
        PciHostBridge {
            config: PciConfiguration::new(PciIds {
                vendor_id: HOST_BRIDGE_VENDOR,
                device_id: HOST_BRIDGE_DEVICE,
                revision_id: 2,
                class: 0x06,
                subclass: 0x00,
                prog_if: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl PciHostBridge {
    /// Its configuration space.
    pub fn config(&self) -> &PciConfiguration {
        &self.config
    }

    /// Its configuration space image, for a snapshot.
    pub fn image(&mut self) -> [u8; super::config::CONFIG_SPACE_SIZE] {
        self.config.image()
    }

    /// Puts a checked image in place.
    pub fn set_image(&mut self, image: &[u8; super::config::CONFIG_SPACE_SIZE]) {
        self.config.set_image(image);
    }
}

impl PciDevice for PciHostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn assign_bar(&mut self, index: usize, _addr: u64) -> Result<(), PciError> {
        Err(PciError::InvalidBarIndex(index))
    }

    fn bar_read(&mut self, _index: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _index: usize, _offset: u64, _data: &[u8]) {}
}

/// Bus 0 and the mechanism #1 port registers; see the module docs.
pub struct PciRoot {
    config_address: u32,
    /// Index = slot number.
    devices: Vec<Arc<Mutex<dyn PciDevice>>>,
    /// Slot 0, typed, for its snapshot state.
    host_bridge: Arc<Mutex<PciHostBridge>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field(
                "config_address",
                &format_args!("{:#x}", self.config_address),
            )
            .field("slots", &self.devices.len())
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        PciRoot::new()
    }
}

impl PciRoot {
    /// Creates bus 0 with the host bridge at slot 0.
    pub fn new() -> PciRoot {
        let host_bridge = Arc::new(Mutex::new(PciHostBridge::default()));
        PciRoot {
            config_address: 0,
            devices: vec![host_bridge.clone()],
            host_bridge,
        }
    }

    /// Plugs `device` into the next free slot and returns its address.
    pub fn add_device(
        &mut self,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<PciAddress, PciError> {
        let slot = self.devices.len();
        // `slot` < MAX_SLOTS (32) fits a u8; the conversion cannot fail.
        let device_number = match u8::try_from(slot) {
            Ok(n) if slot < MAX_SLOTS => n,
            _ => return Err(PciError::BusFull),
        };
        self.devices.push(device);
        Ok(PciAddress {
            bus: 0,
            device: device_number,
            function: 0,
        })
    }

    /// Reads configuration space of `address` directly (as the VMM, not the
    /// guest); absent functions read as all ones.
    pub fn config_read(&self, address: PciAddress, offset: usize, data: &mut [u8]) {
        match self.device_at(address) {
            Some(device) => lock(device).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space of `address`; writes to absent functions
    /// are dropped.
    pub fn config_write(&self, address: PciAddress, offset: usize, data: &[u8]) {
        if let Some(device) = self.device_at(address) {
            lock(device).config_write(offset, data);
        }
    }

    /// CONFIG_ADDRESS bits that hold state.
    pub const CONFIG_ADDRESS_MASK: u32 = CONFIG_ADDRESS_MASK;

    /// The value latched at 0xcf8.
    pub fn config_address(&self) -> u32 {
        self.config_address
    }

    /// Latches `value` at 0xcf8, as a guest's dword write does.
    pub fn set_config_address(&mut self, value: u32) {
        self.config_address = value & CONFIG_ADDRESS_MASK;
    }

    /// Runs `f` on the host bridge.
    pub fn with_host_bridge<R>(&self, f: impl FnOnce(&mut PciHostBridge) -> R) -> R {
        f(&mut self
            .host_bridge
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    fn device_at(&self, address: PciAddress) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        // Only single-function devices on bus 0 exist.
        if address.bus != 0 || address.function != 0 {
            return None;
        }
        self.devices.get(usize::from(address.device))
    }

    /// Decodes CONFIG_ADDRESS into the target function and register, or
    /// `None` while the enable bit is clear.
    fn decode_address(&self) -> Option<(PciAddress, usize)> {
        let a = self.config_address;
        if a & CONFIG_ENABLE == 0 {
            return None;
        }
        let address = PciAddress {
            bus: ((a >> 16) & 0xff) as u8,
            device: ((a >> 11) & 0x1f) as u8,
            function: ((a >> 8) & 0x7) as u8,
        };
        Some((address, (a & 0xfc) as usize))
    }

    /// Splits a CONFIG_DATA access at `offset` (4..8) into the target and the
    /// byte offset within configuration space. Bytes past 0xcff are cut off.
    fn data_target(&self, offset: u64, len: usize) -> Option<(PciAddress, usize, usize)> {
        let byte = usize::try_from(offset.checked_sub(DATA_OFFSET)?).ok()?;
        let (address, register) = self.decode_address()?;
        let len = len.min(4usize.saturating_sub(byte));
        // `byte` is 0..=3 for a data-port access, but the offset is the
        // caller's: do not let a bogus one wrap.
        Some((address, register.checked_add(byte)?, len))
    }
}

fn lock(device: &Arc<Mutex<dyn PciDevice>>) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.config_address.to_le_bytes());
            return;
        }
        if let Some((address, reg, len)) = self.data_target(offset, data.len()) {
            // `len` <= data.len() by construction.
            if let Some(part) = data.get_mut(..len) {
                self.config_read(address, reg, part);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            // Only a dword write is CONFIG_ADDRESS; Linux's type-1 probe pokes
            // 0xcfb with a byte first and expects that to be ignored.
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.config_address = u32::from_le_bytes(bytes) & CONFIG_ADDRESS_MASK;
            }
            return;
        }
        let target = self
            .data_target(offset, data.len())
            .and_then(|(address, reg, len)| Some((address, reg, data.get(..len)?)));
        if let Some((address, reg, part)) = target {
            self.config_write(address, reg, part);
        }
    }
}
