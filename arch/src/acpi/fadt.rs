//! FADT (with the FACS it points at): a hardware-reduced machine's sleep
//! control/status registers (power off), its reset register and boot flags.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{SdtHeader, finish};

/// Generic Address Structure (§5.2.3.2).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct Gas {
    address_space_id: u8,
    register_bit_width: u8,
    register_bit_offset: u8,
    access_size: u8,
    address: U64,
}
const _: () = assert!(size_of::<Gas>() == 12);

const GAS_SYSTEM_IO: u8 = 1;
const GAS_ACCESS_BYTE: u8 = 1;

impl Gas {
    fn io(port: u16, bit_width: u8, access_size: u8) -> Self {
        Gas {
            address_space_id: GAS_SYSTEM_IO,
            register_bit_width: bit_width,
            register_bit_offset: 0,
            access_size,
            address: U64::new(u64::from(port)),
        }
    }
}

/// Firmware ACPI Control Structure (§5.2.10). No checksum, 64-byte aligned.
/// Optional under HW_REDUCED_ACPI (FIRMWARE_CTRL may then be 0) and not needed
/// for boot or S5. It is kept, empty (no global lock, no waking vector), so the
/// table layout and what ACPICA installs stay as they were.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub(super) struct Facs {
    signature: [u8; 4],
    length: U32,
    hardware_signature: U32,
    firmware_waking_vector: U32,
    global_lock: U32,
    flags: U32,
    x_firmware_waking_vector: U64,
    version: u8,
    reserved0: [u8; 3],
    ospm_flags: U32,
    reserved1: [u8; 24],
}
const _: () = assert!(size_of::<Facs>() == 64);
pub(super) const FACS_ALIGN: u64 = 64;

pub(super) fn facs() -> Vec<u8> {
    let f = Facs {
        signature: *b"FACS",
        length: U32::new(size_of::<Facs>() as u32),
        version: 2,
        ..Default::default()
    };
    f.as_bytes().to_vec()
}

/// Fixed ACPI Description Table, revision 6 layout (§5.2.9, 276 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub(super) struct Fadt {
    header: SdtHeader,
    firmware_ctrl: U32,
    dsdt: U32,
    reserved0: u8,
    preferred_pm_profile: u8,
    sci_int: U16,
    smi_cmd: U32,
    acpi_enable: u8,
    acpi_disable: u8,
    s4bios_req: u8,
    pstate_cnt: u8,
    pm1a_evt_blk: U32,
    pm1b_evt_blk: U32,
    pm1a_cnt_blk: U32,
    pm1b_cnt_blk: U32,
    pm2_cnt_blk: U32,
    pm_tmr_blk: U32,
    gpe0_blk: U32,
    gpe1_blk: U32,
    pm1_evt_len: u8,
    pm1_cnt_len: u8,
    pm2_cnt_len: u8,
    pm_tmr_len: u8,
    gpe0_blk_len: u8,
    gpe1_blk_len: u8,
    gpe1_base: u8,
    cst_cnt: u8,
    p_lvl2_lat: U16,
    p_lvl3_lat: U16,
    flush_size: U16,
    flush_stride: U16,
    duty_offset: u8,
    duty_width: u8,
    day_alrm: u8,
    mon_alrm: u8,
    century: u8,
    iapc_boot_arch: U16,
    reserved1: u8,
    flags: U32,
    reset_reg: Gas,
    reset_value: u8,
    arm_boot_arch: U16,
    fadt_minor_version: u8,
    x_firmware_ctrl: U64,
    x_dsdt: U64,
    x_pm1a_evt_blk: Gas,
    x_pm1b_evt_blk: Gas,
    x_pm1a_cnt_blk: Gas,
    x_pm1b_cnt_blk: Gas,
    x_pm2_cnt_blk: Gas,
    x_pm_tmr_blk: Gas,
    x_gpe0_blk: Gas,
    x_gpe1_blk: Gas,
    sleep_control_reg: Gas,
    sleep_status_reg: Gas,
    hypervisor_vendor_identity: U64,
}
const _: () = assert!(size_of::<Fadt>() == 276);

/// The hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG): byte +6 of
/// the ACPI PM device at 0x600 (devices::acpi_pm, which must use the same port). The
/// guest powers off by writing `SLP_TYP << 2 | SLP_EN (1 << 5)` here, SLP_TYP from
/// the DSDT's `\_S5`.
pub const SLEEP_CONTROL_PORT: u16 = 0x606;
/// The hardware-reduced sleep status register (FADT SLEEP_STATUS_REG): byte +7 of the
/// same device. ACPICA clears WAK_STS here before sleeping, and will not enter any
/// sleep state, S5 included, unless both sleep registers are given.
pub const SLEEP_STATUS_PORT: u16 = 0x607;
/// The PCI-style reset control register.
pub const RESET_PORT: u16 = 0xcf9;
/// Written to [`RESET_PORT`] to reset: bit 1 "system reset" | bit 2 "reset CPU".
pub const RESET_VALUE: u8 = 0x06;

// FADT flags (§5.2.9 table 5-35).
const FADT_WBINVD: u32 = 1 << 0;
/// Set means "no fixed-feature power button" (the bit is inverted).
const FADT_PWR_BUTTON: u32 = 1 << 4;
/// Set means "no fixed-feature sleep button".
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// No PM1/GPE/PM-timer fixed hardware and no SCI: power off goes through the sleep
/// registers. There is no in-kernel PIT, and in this mode Linux sets up no legacy
/// timer and uses no legacy PIC (acpi_generic_reduced_hw_init), so it neither waits
/// for a PIT tick nor pre-maps ISA IRQs; the DSDT gives the ISA devices' IRQs.
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
// IA-PC boot architecture flags (§5.2.9.3).
// Bit 1 (8042) is deliberately left clear. The VM's i8042 exists only for its reset
// line: Linux's reboot path writes 0xFE to port 0x64 without needing the driver, and the
// ACPI reset register comes first anyway. Advertising the controller would make Linux's
// i8042 driver probe a keyboard and mouse that are not there, which costs boot time
// waiting for answers that never come.
/// No VGA: keeps the kernel from probing legacy VGA ports/memory.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// Builds the FADT pointing at the DSDT at `dsdt_addr` and the FACS at
/// `facs_addr`. Hardware-reduced: the SCI, PM1, PM2, PM timer and GPE fields are
/// zero, as §5.2.9 asks and as ACPICA ignores them anyway; SMI_CMD is 0 too (no
/// ACPI mode switch).
pub(super) fn fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let t = Fadt {
        header: SdtHeader::new(b"FACP", size_of::<Fadt>(), 6),
        // Only the 32-bit field: the FACS is below 4 GiB, and filling both makes ACPICA
        // install (and Linux list) the same FACS twice.
        firmware_ctrl: U32::new(facs_addr as u32),
        // The 32-bit field may only be used if the table is below 4 GiB,
        // which it always is; filling both satisfies old and new parsers.
        dsdt: U32::new(dsdt_addr as u32),
        iapc_boot_arch: U16::new(IAPC_VGA_NOT_PRESENT),
        flags: U32::new(
            FADT_WBINVD
                | FADT_PWR_BUTTON
                | FADT_SLP_BUTTON
                | FADT_RESET_REG_SUP
                | FADT_HW_REDUCED_ACPI,
        ),
        reset_reg: Gas::io(RESET_PORT, 8, GAS_ACCESS_BYTE),
        reset_value: RESET_VALUE,
        x_dsdt: U64::new(dsdt_addr),
        // ACPICA writes and reads these one byte at a time.
        sleep_control_reg: Gas::io(SLEEP_CONTROL_PORT, 8, GAS_ACCESS_BYTE),
        sleep_status_reg: Gas::io(SLEEP_STATUS_PORT, 8, GAS_ACCESS_BYTE),
        ..Default::default()
    };
    finish(t.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use crate::acpi::test_support::*;

    fn fadt_bytes() -> Vec<u8> {
        get(&build(1), "FACP").bytes.clone()
    }

    #[test]
    fn fadt_keeps_its_pointers_reset_register_and_boot_flags() {
        let t = build(1);
        let f = &get(&t, "FACP").bytes;
        let dsdt = get(&t, "DSDT").addr;
        assert_eq!(f.len(), 276);
        assert_eq!((f[8], f[131]), (6, 0), "revision 6.0");
        let facs = get(&t, "FACS").addr;
        assert_eq!(u32_at(f, 36) as u64, facs, "FIRMWARE_CTRL");
        assert_eq!(u64_at(f, 132), 0, "X_FIRMWARE_CTRL");
        assert_eq!(u32_at(f, 40) as u64, dsdt, "DSDT");
        assert_eq!(u64_at(f, 140), dsdt, "X_DSDT");
        assert_eq!(u32_at(f, 48), 0, "SMI_CMD");
        assert_eq!(
            u16_at(f, 109),
            0b100,
            "IAPC_BOOT_ARCH: VGA absent, 8042 hidden"
        );
        assert_eq!(
            &f[116..120],
            &[1, 8, 0, 1],
            "RESET_REG: I/O, 8 bits, byte access"
        );
        assert_eq!(u64_at(f, 120), 0xcf9);
        assert_eq!(f[128], 6, "RESET_VALUE");
    }

    #[test]
    fn fadt_is_hardware_reduced() {
        let f = fadt_bytes();
        let flags = u32_at(&f, 112);
        assert_eq!(flags & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
        assert_eq!(
            flags,
            1 | 1 << 4 | 1 << 5 | 1 << 10 | 1 << 20,
            "WBINVD, PWR_BUTTON, SLP_BUTTON, RESET_REG_SUP, HW_REDUCED_ACPI"
        );
    }

    #[test]
    fn fadt_has_no_sci_pm1_pm_timer_or_gpe() {
        let f = fadt_bytes();
        assert_eq!(u16_at(&f, 46), 0, "SCI_INT");
        // PM1a/b EVT and CNT, PM2_CNT, PM_TMR, GPE0/1 blocks (56..88), then their
        // lengths, GPE1_BASE and CST_CNT (88..96).
        assert_eq!(&f[56..96], &[0; 40]);
        // X_PM1a_EVT_BLK .. X_GPE1_BLK: eight GASes.
        assert_eq!(&f[148..244], &[0; 96]);
    }

    #[test]
    fn fadt_sleep_registers_are_byte_wide_io_ports() {
        let f = fadt_bytes();
        // Space 1 (system I/O), 8 bits wide, offset 0, access size 1 (byte).
        assert_eq!(&f[244..248], &[1, 8, 0, 1], "SLEEP_CONTROL_REG");
        assert_eq!(u64_at(&f, 248), 0x606);
        assert_eq!(&f[256..260], &[1, 8, 0, 1], "SLEEP_STATUS_REG");
        assert_eq!(u64_at(&f, 260), 0x607);
        assert_eq!(u64_at(&f, 268), 0, "HYPERVISOR_VENDOR_IDENTITY");
    }
}
