//! ACPI power-management registers: the hardware-reduced sleep control and
//! status registers the FADT points at, and the fixed-hardware PM1a event and
//! control blocks (as on QEMU's PIIX4 PM) that older FADTs pointed at.
//!
//! One device at [`PM1A_EVT_BLK_PORT`] with length 8: bytes +0..+4 are the
//! event block (PM1_STS u16, PM1_EN u16), +4..+6 the control block (PM1_CNT
//! u16), +6 the sleep control register ([`SLEEP_CONTROL_PORT`], write-only,
//! reads 0) and +7 the sleep status register ([`SLEEP_STATUS_PORT`]: reads 0,
//! writes ignored). Registers are decoded per byte so both ACPICA's single
//! 16-bit accesses and byte-wise accesses work. The FADT's SMI_CMD is 0, so
//! ACPI mode is always on: SCI_EN reads 1.
//!
//! A guest given a hardware-reduced FADT powers off through the sleep control
//! register: ACPICA writes one byte `SLP_TYP << 2 | SLP_EN (1 << 5)` after
//! clearing WAK_STS in the status register. The PM1 registers stay for a guest
//! given the older full-hardware FADT, which powers off with SLP_TYP | SLP_EN in
//! PM1_CNT: a VM restored from a snapshot taken before the switch still has
//! those tables in its RAM.
//!
//! Either way, SLP_EN with SLP_TYP = [`SLEEP_TYPE_S5`] powers the VM off by
//! writing `poweroff_evt`. Other sleep states are not supported and ignored.
//! Nothing here raises an SCI (no power button or timer events yet), and
//! WAK_STS never reads set: a guest that asked for S5 is never woken.

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Port of the PM1a event block (PM1_STS, PM1_EN); the device's base.
pub const PM1A_EVT_BLK_PORT: u16 = 0x600;
/// Port of the PM1a control block (PM1_CNT).
pub const PM1A_CNT_BLK_PORT: u16 = 0x604;
/// Length of the PM1a event block in bytes (FADT PM1_EVT_LEN).
pub const PM1_EVT_LEN: u8 = 4;
/// Length of the PM1a control block in bytes (FADT PM1_CNT_LEN).
pub const PM1_CNT_LEN: u8 = 2;
/// Port of the hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG).
/// `arch::acpi::SLEEP_CONTROL_PORT` must agree (arch's tests check it).
pub const SLEEP_CONTROL_PORT: u16 = 0x606;
/// Port of the hardware-reduced sleep status register (FADT SLEEP_STATUS_REG).
/// `arch::acpi::SLEEP_STATUS_PORT` must agree (arch's tests check it).
pub const SLEEP_STATUS_PORT: u16 = 0x607;
/// SLP_TYP value for S5 (soft off); the DSDT's `\_S5` package must give it.
pub const SLEEP_TYPE_S5: u16 = 5;
/// Number of ports to insert the device with.
pub const ACPI_PM_LEN: u64 = 8;

const STS_OFFSET: u64 = 0;
const EN_OFFSET: u64 = 2;
const CNT_OFFSET: u64 = (PM1A_CNT_BLK_PORT - PM1A_EVT_BLK_PORT) as u64;
const SLEEP_CONTROL_OFFSET: u64 = (SLEEP_CONTROL_PORT - PM1A_EVT_BLK_PORT) as u64;
const SLEEP_STATUS_OFFSET: u64 = (SLEEP_STATUS_PORT - PM1A_EVT_BLK_PORT) as u64;
// Both sleep registers sit in the bytes the PM1 blocks leave free.
const _: () = assert!(
    SLEEP_CONTROL_OFFSET >= CNT_OFFSET + PM1_CNT_LEN as u64
        && SLEEP_CONTROL_OFFSET < ACPI_PM_LEN
        && SLEEP_STATUS_OFFSET > SLEEP_CONTROL_OFFSET
        && SLEEP_STATUS_OFFSET < ACPI_PM_LEN
);
// `read_byte` and `write_byte` take the byte within a register from bit 0 of
// the offset, which needs every register to start at an even offset.
const _: () = assert!(STS_OFFSET % 2 == 0 && EN_OFFSET % 2 == 0 && CNT_OFFSET % 2 == 0);

const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;
// Sleep control register (ACPI 6.x §4.8.3.7): SLP_TYPx in bits 4:2, SLP_EN bit 5.
const X_SLP_TYP_SHIFT: u8 = 2;
const X_SLP_TYP_MASK: u8 = 0b111 << X_SLP_TYP_SHIFT;
const X_SLP_EN: u8 = 1 << 5;
/// PM1_CNT bits that hold state; SCI_EN is hard-wired, GBL_RLS and SLP_EN
/// are write-only triggers.
const CNT_STORED: u16 = BM_RLD | SLP_TYP_MASK;

/// The PM1a registers; see the module documentation.
pub struct AcpiPm {
    poweroff_evt: EventFd,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    unsupported_sleep_logged: bool,
    poweroffs: u64,
}

/// Replaces byte `index` (0 = low, 1 = high; only bit 0 is used) of `reg`
/// with `byte`.
fn set_byte(reg: u16, index: u64, byte: u8) -> u16 {
    let [lo, hi] = reg.to_le_bytes();
    if index & 1 == 0 {
        u16::from_le_bytes([byte, hi])
    } else {
        u16::from_le_bytes([lo, byte])
    }
}

/// Byte `index` (0 = low, 1 = high; only bit 0 is used) of `reg`.
fn get_byte(reg: u16, index: u64) -> u8 {
    let [lo, hi] = reg.to_le_bytes();
    if index & 1 == 0 { lo } else { hi }
}

impl AcpiPm {
    /// Creates the registers; `poweroff_evt` is written when the guest enters
    /// S5.
    pub fn new(poweroff_evt: EventFd) -> AcpiPm {
        AcpiPm {
            poweroff_evt,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            unsupported_sleep_logged: false,
            poweroffs: 0,
        }
    }

    /// Number of S5 (power-off) requests the guest has made.
    pub fn poweroffs(&self) -> u64 {
        self.poweroffs
    }

    fn read_byte(&self, offset: u64) -> u8 {
        // The registers start at even offsets, so the byte within the
        // register is bit 0 of the offset.
        let reg = match offset {
            0..=1 => self.pm1_sts,
            2..=3 => self.pm1_en,
            4..=5 => self.pm1_cnt | SCI_EN,
            // Also sleep control, which is write-only, and sleep status, whose
            // only bit (WAK_STS) is never set: nothing wakes a guest from S5.
            _ => return 0,
        };
        get_byte(reg, offset)
    }

    /// Applies one byte of a write. Returns the SLP_TYP requested when the
    /// byte holding SLP_EN was written with SLP_EN set.
    fn write_byte(&mut self, offset: u64, byte: u8) -> Option<u16> {
        match offset {
            // Write-1-to-clear.
            0..=1 => {
                let mask = set_byte(0, offset, byte);
                self.pm1_sts &= !mask;
            }
            2..=3 => self.pm1_en = set_byte(self.pm1_en, offset, byte),
            4..=5 => {
                let written = set_byte(self.pm1_cnt, offset, byte);
                self.pm1_cnt = written & CNT_STORED;
                // SLP_TYP and SLP_EN both live in the high byte, so acting
                // when it is written is right for 16-bit and byte-wise writes.
                if offset == CNT_OFFSET + 1 && written & SLP_EN != 0 {
                    return Some((written & SLP_TYP_MASK) >> SLP_TYP_SHIFT);
                }
            }
            // Holds no state: SLP_TYP only matters together with SLP_EN.
            SLEEP_CONTROL_OFFSET if byte & X_SLP_EN != 0 => {
                return Some(u16::from((byte & X_SLP_TYP_MASK) >> X_SLP_TYP_SHIFT));
            }
            // Sleep control without SLP_EN, sleep status (WAK_STS is
            // write-1-to-clear and never set), and past the end: nothing to do.
            _ => {}
        }
        None
    }

    /// Acts on SLP_EN written with `slp_typ`, from either sleep register.
    fn sleep_requested(&mut self, slp_typ: u16) {
        if slp_typ == SLEEP_TYPE_S5 {
            // Guest-triggered: saturate rather than wrap the statistic.
            self.poweroffs = self.poweroffs.saturating_add(1);
            if let Err(e) = self.poweroff_evt.write(1) {
                warn!("acpi_pm: failed to signal power-off: {e}");
            }
        } else if !self.unsupported_sleep_logged {
            self.unsupported_sleep_logged = true;
            warn!("acpi_pm: ignoring request for unsupported sleep type {slp_typ}");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .map_or(0, |o| self.read_byte(o));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Apply the whole access before acting so a 16-bit write is seen as
        // one value.
        let mut sleep = None;
        for (i, &byte) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            if let Some(slp_typ) = self.write_byte(o, byte) {
                sleep = Some(slp_typ);
            }
        }
        if let Some(slp_typ) = sleep {
            self.sleep_requested(slp_typ);
        }
    }
}

/// The PM1 registers a snapshot holds (record `ACPI_PM`). The power-off counter and the
/// logging flag are the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPmState {
    /// PM1_STS.
    pub pm1_sts: u16,
    /// PM1_EN.
    pub pm1_en: u16,
    /// PM1_CNT's stored bits (BM_RLD, SLP_TYP).
    pub pm1_cnt: u16,
}

impl crate::state::StateRecord for AcpiPmState {
    const RECORD: snapshot::RecordType = snapshot::RecordType::required(snapshot::kind::ACPI_PM, 1);
    const NAME: &'static str = "acpi_pm";

    fn encode(&self, enc: &mut snapshot::payload::Encoder) {
        enc.u16(self.pm1_sts).u16(self.pm1_en).u16(self.pm1_cnt);
    }

    fn decode(dec: &mut snapshot::payload::Decoder<'_>) -> Result<Self, crate::state::StateError> {
        let pm1_sts = dec.u16()?;
        let pm1_en = dec.u16()?;
        let pm1_cnt = dec.u16()?;
        if pm1_cnt & !CNT_STORED != 0 {
            return Err(crate::state::StateError::invalid(
                Self::NAME,
                format!("PM1_CNT {pm1_cnt:#06x} has bits that are not stored"),
            ));
        }
        Ok(AcpiPmState {
            pm1_sts,
            pm1_en,
            pm1_cnt,
        })
    }
}

impl crate::state::DeviceState for AcpiPm {
    type State = AcpiPmState;

    fn save_state(&self) -> Result<AcpiPmState, crate::state::StateError> {
        Ok(AcpiPmState {
            pm1_sts: self.pm1_sts,
            pm1_en: self.pm1_en,
            pm1_cnt: self.pm1_cnt,
        })
    }

    fn check_state(&self, _state: &AcpiPmState) -> Result<(), crate::state::StateError> {
        Ok(())
    }

    fn apply_state(&mut self, state: AcpiPmState) -> Result<(), crate::state::StateError> {
        self.pm1_sts = state.pm1_sts;
        self.pm1_en = state.pm1_en;
        self.pm1_cnt = state.pm1_cnt;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DeviceState;

    const S5_SLP_EN: u16 = (SLEEP_TYPE_S5 << SLP_TYP_SHIFT) | SLP_EN;

    fn setup() -> (AcpiPm, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (AcpiPm::new(evt.try_clone().unwrap()), evt)
    }

    fn read_u16(dev: &mut AcpiPm, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        dev.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn s5_with_slp_en_as_one_16bit_write_powers_off() {
        let (mut dev, evt) = setup();

        dev.write(CNT_OFFSET, &S5_SLP_EN.to_le_bytes());

        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(dev.poweroffs(), 1);
    }

    #[test]
    fn s5_with_slp_en_as_two_byte_writes_powers_off() {
        let (mut dev, evt) = setup();
        let [lo, hi] = (S5_SLP_EN | SCI_EN).to_le_bytes();

        dev.write(CNT_OFFSET, &[lo]);
        dev.write(CNT_OFFSET + 1, &[hi]);

        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn slp_typ_without_slp_en_does_not_power_off() {
        let (mut dev, evt) = setup();

        // ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN.
        dev.write(CNT_OFFSET, &(SLEEP_TYPE_S5 << SLP_TYP_SHIFT).to_le_bytes());

        assert!(evt.read().is_err());
        assert_eq!(
            read_u16(&mut dev, CNT_OFFSET) & SLP_TYP_MASK,
            SLEEP_TYPE_S5 << SLP_TYP_SHIFT
        );
    }

    #[test]
    fn other_sleep_type_with_slp_en_is_ignored() {
        let (mut dev, evt) = setup();

        dev.write(CNT_OFFSET, &((3 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes());

        assert!(evt.read().is_err());
        assert_eq!(dev.poweroffs(), 0);
    }

    #[test]
    fn sci_en_reads_back_set_and_slp_en_reads_back_clear() {
        let (mut dev, _evt) = setup();
        assert_eq!(read_u16(&mut dev, CNT_OFFSET) & SCI_EN, SCI_EN);

        dev.write(CNT_OFFSET, &[0, 0]);
        dev.write(CNT_OFFSET, &(3 << SLP_TYP_SHIFT | SLP_EN).to_le_bytes());

        let cnt = read_u16(&mut dev, CNT_OFFSET);
        assert_eq!(cnt & SCI_EN, SCI_EN);
        assert_eq!(cnt & SLP_EN, 0);
    }

    /// What ACPICA's acpi_hw_extended_sleep writes for SLP_TYP `slp_typ`.
    fn sleep_control(slp_typ: u16) -> u8 {
        (u8::try_from(slp_typ).unwrap() << X_SLP_TYP_SHIFT) & X_SLP_TYP_MASK | X_SLP_EN
    }

    #[test]
    fn s5_in_sleep_control_powers_off() {
        let (mut dev, evt) = setup();
        assert_eq!(sleep_control(SLEEP_TYPE_S5), 0x34);

        // ACPICA clears WAK_STS first, then writes the sleep control byte.
        dev.write(SLEEP_STATUS_OFFSET, &[0x80]);
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34]);

        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(dev.poweroffs(), 1);
    }

    #[test]
    fn other_sleep_type_in_sleep_control_is_ignored() {
        let (mut dev, evt) = setup();

        dev.write(SLEEP_CONTROL_OFFSET, &[sleep_control(3)]);
        dev.write(SLEEP_CONTROL_OFFSET, &[sleep_control(3)]);

        assert!(evt.read().is_err());
        assert_eq!(dev.poweroffs(), 0);
        assert!(dev.unsupported_sleep_logged, "warned once");
    }

    #[test]
    fn sleep_control_without_slp_en_does_not_power_off() {
        let (mut dev, evt) = setup();

        dev.write(SLEEP_CONTROL_OFFSET, &[0x34 & !X_SLP_EN]);

        assert!(evt.read().is_err());
        assert_eq!(dev.poweroffs(), 0);
    }

    #[test]
    fn sleep_registers_read_zero_and_hold_no_state() {
        let (mut dev, _evt) = setup();
        dev.write(CNT_OFFSET, &(SLEEP_TYPE_S5 << SLP_TYP_SHIFT).to_le_bytes());
        let before = dev.save_state().unwrap();

        dev.write(SLEEP_CONTROL_OFFSET, &[0x14, 0xff]);

        assert_eq!(read_u16(&mut dev, SLEEP_CONTROL_OFFSET), 0);
        assert_eq!(dev.save_state().unwrap(), before, "PM1 untouched");
    }

    #[test]
    fn pm1_sts_is_write_one_to_clear() {
        let (mut dev, _evt) = setup();
        dev.pm1_sts = 0x8101;

        dev.write(STS_OFFSET, &0x0100u16.to_le_bytes());

        assert_eq!(read_u16(&mut dev, STS_OFFSET), 0x8001);
    }

    #[test]
    fn pm1_en_is_read_write_bytewise_and_wordwise() {
        let (mut dev, _evt) = setup();

        dev.write(EN_OFFSET, &0x0120u16.to_le_bytes());
        dev.write(EN_OFFSET + 1, &[0x03]);

        assert_eq!(read_u16(&mut dev, EN_OFFSET), 0x0320);
    }
}
