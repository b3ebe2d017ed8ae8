//! PCI state in snapshots: the encoding of a function's configuration space and MSI-X
//! state (sections of the records of the devices that own them, such as the virtio
//! records), and the `PCI_ROOT` record (the 0xcf8 address latch and the host bridge).
//!
//! A configuration space is saved as its 256-byte register image, the layout PCI itself
//! defines. A restore refuses an image that differs from the rebuilt function in any bit
//! the guest cannot write (another device, other capabilities, another BAR type), and a BAR
//! whose programmed range is not inside the MMIO window.

use snapshot::payload::{Decoder, Encoder};
use snapshot::{RecordType, kind};

use super::bar::{MMIO_HOLE_END, MMIO_HOLE_START};
use super::config::{CONFIG_SPACE_SIZE, PciConfiguration};
use super::msix::{MAX_MSIX_VECTORS, MsixEntry, MsixState};
use super::root::{PciHostBridge, PciRoot};
use crate::state::{DeviceState, StateError, StateRecord, decode_bool};

/// Writes a configuration space image.
pub fn encode_config(enc: &mut Encoder, image: &[u8; CONFIG_SPACE_SIZE]) {
    enc.bytes(image);
}

/// Reads a configuration space image.
pub fn decode_config(dec: &mut Decoder<'_>) -> Result<[u8; CONFIG_SPACE_SIZE], StateError> {
    Ok(dec.array::<CONFIG_SPACE_SIZE>()?)
}

/// Checks a saved image against `config` (see the module docs): read-only bits equal, and
/// every BAR decoding inside the MMIO window. `device` names it in errors.
pub fn check_config(
    device: &'static str,
    config: &PciConfiguration,
    image: &[u8; CONFIG_SPACE_SIZE],
) -> Result<(), StateError> {
    if let Err(offset) = config.check_image(image) {
        return Err(StateError::invalid(
            device,
            format!(
                "configuration space byte {offset:#04x} differs from this device's in read-only bits"
            ),
        ));
    }
    for region in config.bar_regions() {
        let Some(addr) = config.bar_address_in(image, region.index) else {
            continue;
        };
        let inside = addr >= MMIO_HOLE_START
            && addr
                .checked_add(region.size)
                .is_some_and(|end| end <= MMIO_HOLE_END);
        if !inside {
            return Err(StateError::invalid(
                device,
                format!(
                    "BAR {} at {addr:#x} (size {:#x}) is outside the MMIO window {MMIO_HOLE_START:#x}-{MMIO_HOLE_END:#x}",
                    region.index, region.size
                ),
            ));
        }
    }
    Ok(())
}

/// Writes an MSI-X state: vector count `u16`, per vector address low, address high, data
/// (`u32`) and mask (`u8`), the pending bits packed 8 a byte (vector 0 in bit 0 of the
/// first), enable and function mask (`u8`).
pub fn encode_msix(enc: &mut Encoder, state: &MsixState) {
    // At most MAX_MSIX_VECTORS (2048) entries.
    enc.u16(u16::try_from(state.entries.len()).unwrap_or(u16::MAX));
    for e in &state.entries {
        enc.u32(e.address_lo)
            .u32(e.address_hi)
            .u32(e.data)
            .u8(u8::from(e.masked));
    }
    for chunk in state.pending.chunks(8) {
        let byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |acc, (i, &p)| acc | (u8::from(p) << i));
        enc.u8(byte);
    }
    enc.u8(u8::from(state.enabled))
        .u8(u8::from(state.function_masked));
}

/// Reads what [`encode_msix`] wrote; refuses a count above 2048, reserved address bits,
/// pending bits past the table and flags other than 0 or 1.
pub fn decode_msix(dec: &mut Decoder<'_>, device: &'static str) -> Result<MsixState, StateError> {
    let count = dec.u16()?;
    if count == 0 || count > MAX_MSIX_VECTORS {
        return Err(StateError::invalid(
            device,
            format!("MSI-X vector count {count} is outside 1-{MAX_MSIX_VECTORS}"),
        ));
    }
    let mut entries = Vec::with_capacity(usize::from(count));
    for vector in 0..count {
        let address_lo = dec.u32()?;
        let address_hi = dec.u32()?;
        let data = dec.u32()?;
        let masked = decode_bool(dec, device, "MSI-X vector mask")?;
        if address_lo & 3 != 0 {
            return Err(StateError::invalid(
                device,
                format!("MSI-X vector {vector} address {address_lo:#x} is not dword aligned"),
            ));
        }
        entries.push(MsixEntry {
            address_lo,
            address_hi,
            data,
            masked,
        });
    }
    let bytes = dec.bytes(usize::from(count).div_ceil(8))?;
    let mut pending = Vec::with_capacity(usize::from(count));
    for (i, byte) in bytes.iter().enumerate() {
        for bit in 0..8u8 {
            let vector = i.saturating_mul(8).saturating_add(usize::from(bit));
            let set = byte & (1 << bit) != 0;
            if vector < usize::from(count) {
                pending.push(set);
            } else if set {
                return Err(StateError::invalid(
                    device,
                    format!("MSI-X pending bit {vector} is past the {count}-vector table"),
                ));
            }
        }
    }
    let enabled = decode_bool(dec, device, "MSI-X enable")?;
    let function_masked = decode_bool(dec, device, "MSI-X function mask")?;
    Ok(MsixState {
        entries,
        pending,
        enabled,
        function_masked,
    })
}

/// The PCI root's state (record `PCI_ROOT`): the configuration address latch at 0xcf8 and
/// the host bridge's configuration space. The functions behind it are saved by their
/// owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciRootState {
    /// The value at 0xcf8 (enable bit, bus, device, function, register).
    pub config_address: u32,
    /// The host bridge's configuration space.
    pub host_bridge: [u8; CONFIG_SPACE_SIZE],
}

impl StateRecord for PciRootState {
    const RECORD: RecordType = RecordType::required(kind::PCI_ROOT, 1);
    const NAME: &'static str = "pci root";

    fn encode(&self, enc: &mut Encoder) {
        enc.u32(self.config_address);
        encode_config(enc, &self.host_bridge);
    }

    fn decode(dec: &mut Decoder<'_>) -> Result<Self, StateError> {
        let config_address = dec.u32()?;
        if config_address & !PciRoot::CONFIG_ADDRESS_MASK != 0 {
            return Err(StateError::invalid(
                Self::NAME,
                format!("configuration address {config_address:#010x} has reserved bits set"),
            ));
        }
        Ok(PciRootState {
            config_address,
            host_bridge: decode_config(dec)?,
        })
    }
}

impl DeviceState for PciRoot {
    type State = PciRootState;

    fn save_state(&self) -> Result<PciRootState, StateError> {
        Ok(PciRootState {
            config_address: self.config_address(),
            host_bridge: self.with_host_bridge(PciHostBridge::image),
        })
    }

    fn check_state(&self, state: &PciRootState) -> Result<(), StateError> {
        self.with_host_bridge(|bridge| {
            check_config("pci host bridge", bridge.config(), &state.host_bridge)
        })
    }

    fn apply_state(&mut self, state: PciRootState) -> Result<(), StateError> {
        self.set_config_address(state.config_address);
        self.with_host_bridge(|bridge| bridge.set_image(&state.host_bridge));
        Ok(())
    }
}
