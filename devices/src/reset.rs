//! The PCI reset control register at port 0xcf9.
//!
//! The FADT's RESET_REG names this register (with RESET_VALUE 0x06), and
//! Linux's `reboot=pci` path writes 0x02 then 0x06 (or 0x0e) to it. Bit 2 ("reset
//! CPU") is what starts the reset; bit 1 (system vs. soft reset) and bit 3
//! (full reset) only choose its kind, which makes no difference to a VM
//! whose reset means "tear down and boot again".

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Port of the reset control register.
pub const RESET_CONTROL_PORT: u64 = 0xcf9;
/// Number of ports to insert the device with.
pub const RESET_CONTROL_LEN: u64 = 1;
/// Bit that starts the reset.
const RST_CPU: u8 = 0x04;

/// The 0xcf9 reset control register; see the module documentation.
pub struct ResetControl {
    reset_evt: EventFd,
    value: u8,
    resets: u64,
}

impl ResetControl {
    /// Creates the register; `reset_evt` is written when the guest resets.
    pub fn new(reset_evt: EventFd) -> ResetControl {
        ResetControl {
            reset_evt,
            value: 0,
            resets: 0,
        }
    }

    /// Number of resets the guest has requested through this register.
    pub fn resets(&self) -> u64 {
        self.resets
    }
}

impl BusDevice for ResetControl {
    /// Returns the last value written with bit 2 clear: the bit is
    /// self-clearing on hardware once the reset has been issued. Only a 1-byte
    /// read at offset 0 is decoded; anything else reads all-ones.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = self.value,
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, [value]) = (offset, data) else {
            return;
        };
        self.value = value & !RST_CPU;
        if value & RST_CPU != 0 {
            // Guest-triggered: saturate rather than wrap the statistic.
            self.resets = self.resets.saturating_add(1);
            if let Err(e) = self.reset_evt.write(1) {
                warn!("reset: failed to signal reset: {e}");
            }
        }
    }
}

/// The register a snapshot holds (record `RESET_CONTROL`): its value, bit 2 (RST_CPU)
/// always clear. The reset counter is the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetControlState {
    /// The value last written, RST_CPU cleared.
    pub value: u8,
}

impl crate::state::StateRecord for ResetControlState {
    const RECORD: snapshot::RecordType =
        snapshot::RecordType::required(snapshot::kind::RESET_CONTROL, 1);
    const NAME: &'static str = "reset_control";

    fn encode(&self, enc: &mut snapshot::payload::Encoder) {
        enc.u8(self.value);
    }

    fn decode(dec: &mut snapshot::payload::Decoder<'_>) -> Result<Self, crate::state::StateError> {
        let value = dec.u8()?;
        if value & RST_CPU != 0 {
            return Err(crate::state::StateError::invalid(
                Self::NAME,
                format!("value {value:#04x} has the self-clearing RST_CPU bit set"),
            ));
        }
        Ok(ResetControlState { value })
    }
}

impl crate::state::DeviceState for ResetControl {
    type State = ResetControlState;

    fn save_state(&self) -> Result<ResetControlState, crate::state::StateError> {
        Ok(ResetControlState { value: self.value })
    }

    fn check_state(&self, _state: &ResetControlState) -> Result<(), crate::state::StateError> {
        Ok(())
    }

    fn apply_state(&mut self, state: ResetControlState) -> Result<(), crate::state::StateError> {
        self.value = state.value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (ResetControl, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (ResetControl::new(evt.try_clone().unwrap()), evt)
    }

    #[test]
    fn writes_with_rst_cpu_bit_trigger_reset() {
        for value in [0x06u8, 0x0e] {
            let (mut dev, evt) = setup();

            dev.write(0, &[value]);

            assert_eq!(evt.read().unwrap(), 1, "value {value:#04x}");
            assert_eq!(dev.resets(), 1);
        }
    }

    #[test]
    fn write_without_rst_cpu_bit_does_not_reset() {
        let (mut dev, evt) = setup();

        dev.write(0, &[0x02]);

        assert!(evt.read().is_err());
        assert_eq!(dev.resets(), 0);
    }

    #[test]
    fn read_returns_last_write_with_rst_cpu_clear() {
        let (mut dev, _evt) = setup();
        let mut b = [0u8];

        dev.write(0, &[0x0e]);
        dev.read(0, &mut b);

        assert_eq!(b, [0x0a]);
    }
}
