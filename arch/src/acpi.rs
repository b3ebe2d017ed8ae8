//! The ACPI tables the guest kernel reads at boot, written into guest memory
//! at [`ACPI_TABLES_START`]:
//!
//! - RSDP (revision 2) pointing at the XSDT; first, 16-byte aligned and inside
//!   0xe0000..0x100000, so Linux's legacy BIOS-area scan finds it;
//! - XSDT listing the FADT and the MADT;
//! - FACS (empty: no global lock, no waking vector), referenced by the FADT;
//! - FADT describing a non-hardware-reduced PC: SCI on IRQ 9, PM1a event and
//!   control blocks at I/O 0x600/0x604 (power off), reset via I/O 0xcf9;
//! - DSDT with the `\_S5` sleep-type package (so Linux can power off) and the PCI root
//!   bridge (so Linux scans PCI bus 0);
//! - MADT with one local APIC per vCPU, the I/O APIC and the SCI override.
//!
//! Devices the VMM must provide to match: a PM1 block at 0x600 (status/enable,
//! 2 bytes each) and 0x604 (control; poweroff is a 16-bit write of
//! `SLP_TYP = 5 << 10 | SLP_EN = 1 << 13` = 0x3400), and port 0xcf9 resetting
//! on value 0x06. SMI_CMD is 0, which tells the OS ACPI mode is always on.
//!
//! Every table is a `#[repr(C)]` zerocopy struct of byte-aligned fields
//! (little-endian wrappers), so its layout is exactly the spec's and its
//! size is checked at compile time.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::layout::{ACPI_TABLES_START, HIMEM_START, IOAPIC_ADDR, LAPIC_ADDR};

/// Failures while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vCPU count cannot be described: APIC ids are 8 bits, 0xff is the
    /// broadcast id, and the I/O APIC takes the id after the last vCPU.
    #[error("cannot describe {0} vCPUs in the MADT: use 1 to {MAX_CPUS}")]
    InvalidCpuCount(u8),
    /// The tables would run past the BIOS area into high memory.
    #[error("ACPI tables would end at {end:#x}, past the BIOS area end {HIMEM_START:#x}")]
    TablesTooLarge {
        /// Guest address one past the last table byte.
        end: u64,
    },
    /// Guest memory rejected a table write.
    #[error(
        "cannot write ACPI table {name} at {addr:#x}; guest RAM must cover 0xe0000..0x100000: {source}"
    )]
    WriteTable {
        /// The table's signature.
        name: &'static str,
        /// Where it was being written.
        addr: u64,
        /// The memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The most vCPUs the MADT can describe (APIC ids 0..=253, I/O APIC 254).
pub const MAX_CPUS: u8 = 254;

const OEM_ID: [u8; 6] = *b"VMM   ";
const CREATOR_ID: [u8; 4] = *b"VMM ";
const OEM_REVISION: u32 = 1;
const CREATOR_REVISION: u32 = 1;

/// Tables start on 16-byte boundaries (the RSDP must; the rest follow suit).
const TABLE_ALIGN: u64 = 16;

/// Common header of every system description table (ACPI 6.0 §5.2.6).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct SdtHeader {
    signature: [u8; 4],
    length: U32,
    revision: u8,
    checksum: u8,
    oem_id: [u8; 6],
    oem_table_id: [u8; 8],
    oem_revision: U32,
    creator_id: [u8; 4],
    creator_revision: U32,
}
const _: () = assert!(size_of::<SdtHeader>() == 36);
/// Offset of `checksum` within [`SdtHeader`].
const SDT_CHECKSUM_OFFSET: usize = 9;

impl SdtHeader {
    /// A header for a table of `length` bytes; the checksum is filled later.
    fn new(signature: &[u8; 4], length: usize, revision: u8) -> Self {
        let mut oem_table_id = *b"VMM     ";
        oem_table_id[3..7].copy_from_slice(signature);
        SdtHeader {
            signature: *signature,
            length: U32::new(length as u32),
            revision,
            checksum: 0,
            oem_id: OEM_ID,
            oem_table_id,
            oem_revision: U32::new(OEM_REVISION),
            creator_id: CREATOR_ID,
            creator_revision: U32::new(CREATOR_REVISION),
        }
    }
}

/// Root System Description Pointer, ACPI 2.0+ form (§5.2.5.3).
#[repr(C)]
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct Rsdp {
    signature: [u8; 8],
    /// Covers the first 20 bytes (the ACPI 1.0 part).
    checksum: u8,
    oem_id: [u8; 6],
    revision: u8,
    /// No RSDT: an OS that understands revision 2 uses the XSDT.
    rsdt_address: U32,
    length: U32,
    xsdt_address: U64,
    /// Covers all 36 bytes.
    extended_checksum: u8,
    reserved: [u8; 3],
}
const _: () = assert!(size_of::<Rsdp>() == 36);

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
const GAS_ACCESS_WORD: u8 = 2;

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
/// Not strictly needed for boot and S5, but a full-hardware (non-reduced)
/// FADT is expected to point at one: ACPICA looks for the global lock and
/// the waking vector there.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct Facs {
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
const FACS_ALIGN: u64 = 64;

fn facs() -> Vec<u8> {
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
struct Fadt {
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

/// The SCI's ISA IRQ (and GSI): the PC convention, and what QEMU uses.
pub const SCI_IRQ: u8 = 9;
/// PM1a event block (PM1_STS at +0, PM1_EN at +2).
pub const PM1A_EVT_BLK: u16 = 0x600;
/// PM1a control block (SLP_TYP / SLP_EN live here).
pub const PM1A_CNT_BLK: u16 = 0x604;
/// The PCI-style reset control register.
pub const RESET_PORT: u16 = 0xcf9;
/// Written to [`RESET_PORT`] to reset: bit 1 "system reset" | bit 2 "reset CPU".
pub const RESET_VALUE: u8 = 0x06;
const PM1_EVT_LEN: u8 = 4;
const PM1_CNT_LEN: u8 = 2;

// FADT flags (§5.2.9 table 5-35).
const FADT_WBINVD: u32 = 1 << 0;
/// Set means "no fixed-feature power button" (the bit is inverted).
const FADT_PWR_BUTTON: u32 = 1 << 4;
/// Set means "no fixed-feature sleep button".
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
// IA-PC boot architecture flags (§5.2.9.3).
// Bit 1 (8042) is deliberately left clear. The VM's i8042 exists only for its reset
// line: Linux's reboot path writes 0xFE to port 0x64 without needing the driver, and the
// ACPI reset register comes first anyway. Advertising the controller would make Linux's
// i8042 driver probe a keyboard and mouse that are not there, which costs boot time
// waiting for answers that never come.
/// No VGA: keeps the kernel from probing legacy VGA ports/memory.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// Builds the FADT pointing at the DSDT at `dsdt_addr` and the FACS at
/// `facs_addr`.
fn fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let t = Fadt {
        header: SdtHeader::new(b"FACP", size_of::<Fadt>(), 6),
        // Only the 32-bit field: the FACS is below 4 GiB, and filling both makes ACPICA
        // install (and Linux list) the same FACS twice.
        firmware_ctrl: U32::new(facs_addr as u32),
        // The 32-bit field may only be used if the table is below 4 GiB,
        // which it always is; filling both satisfies old and new parsers.
        dsdt: U32::new(dsdt_addr as u32),
        sci_int: U16::new(u16::from(SCI_IRQ)),
        pm1a_evt_blk: U32::new(u32::from(PM1A_EVT_BLK)),
        pm1a_cnt_blk: U32::new(u32::from(PM1A_CNT_BLK)),
        pm1_evt_len: PM1_EVT_LEN,
        pm1_cnt_len: PM1_CNT_LEN,
        iapc_boot_arch: U16::new(IAPC_VGA_NOT_PRESENT),
        flags: U32::new(FADT_WBINVD | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP),
        reset_reg: Gas::io(RESET_PORT, 8, GAS_ACCESS_BYTE),
        reset_value: RESET_VALUE,
        x_dsdt: U64::new(dsdt_addr),
        x_pm1a_evt_blk: Gas::io(PM1A_EVT_BLK, PM1_EVT_LEN * 8, GAS_ACCESS_WORD),
        x_pm1a_cnt_blk: Gas::io(PM1A_CNT_BLK, PM1_CNT_LEN * 8, GAS_ACCESS_WORD),
        ..Default::default()
    };
    finish(t.as_bytes().to_vec())
}

/// The DSDT's AML body:
///
/// - `Name (\_S5, Package (4) { 5, 5, 0, 0 })`: the sleep type for S5 (power off), written
///   with SLP_EN to PM1a_CNT; the value 5 is what devices::acpi_pm acts on.
/// - `Device (\_SB.PCI0)`: the PCI root bridge (`PNP0A03`). With ACPI on, Linux scans
///   only the root bridges the DSDT declares, so without it no PCI device is ever found.
///   Its `_CRS` gives bus numbers 0-255, the configuration ports 0xCF8-0xCFF, the rest of
///   the I/O space, and the 32-bit MMIO window where the VMM places BARs
///   ([`MMIO_HOLE_START`](crate::layout::MMIO_HOLE_START) up to the IOAPIC). Its `_PRT`
///   routes INTA# of every slot to the GSI [`pci_intx_gsi`](crate::layout::pci_intx_gsi)
///   gives it: a driver that cannot use MSI-X (Linux with `pci=nomsi`) gets its device's
///   interrupts there.
pub fn dsdt_aml() -> Vec<u8> {
    use crate::aml::{self, AddressSpace};
    let s5 = aml::name(
        b"\\_S5_",
        &aml::package(&[
            aml::integer(5),
            aml::integer(5),
            aml::integer(0),
            aml::integer(0),
        ]),
    );
    // Type-specific flags 3 for I/O: the window covers ISA and non-ISA ranges.
    let crs = aml::resource_template(&[
        aml::word_address_space(AddressSpace::BusNumber, 0, 0, 0xff),
        aml::io_port(0xcf8, 8),
        aml::word_address_space(AddressSpace::Io, 3, 0x0000, 0x0cf7),
        aml::word_address_space(AddressSpace::Io, 3, 0x0d00, 0xffff),
        aml::dword_memory(
            crate::layout::MMIO_HOLE_START as u32,
            (crate::layout::IOAPIC_ADDR - 1) as u32,
        ),
    ]);
    let pci0_body = [
        aml::name(b"_HID", &aml::eisa_id(b"PNP0A03")),
        aml::name(b"_UID", &aml::integer(0)),
        aml::name(b"_BBN", &aml::integer(0)),
        aml::name(b"_SEG", &aml::integer(0)),
        aml::name(b"_CRS", &crs),
        aml::name(b"_PRT", &pci_routing_table()),
    ]
    .concat();
    // \_SB.PCI0: root prefix, dual-name prefix, two NameSegs.
    let pci0 = aml::device(b"\\\x2e_SB_PCI0", &pci0_body);
    [s5, pci0].concat()
}

/// `Package () { Package () { 0xSSSSFFFF, 0, 0, GSI }, ... }`: INTA# (pin 0) of each slot
/// 1-31 of bus 0 goes straight to a global system interrupt (source 0). The host bridge
/// in slot 0 raises no interrupt.
fn pci_routing_table() -> Vec<u8> {
    use crate::aml;
    let entries: Vec<Vec<u8>> = (1..32u8)
        .map(|slot| {
            aml::package(&[
                aml::integer((u64::from(slot) << 16) | 0xffff),
                aml::integer(0),
                aml::integer(0),
                aml::integer(u64::from(crate::layout::pci_intx_gsi(slot))),
            ])
        })
        .collect();
    aml::package(&entries)
}

/// Builds the DSDT. Revision 2 means AML integers are 64-bit.
fn dsdt() -> Vec<u8> {
    let body = dsdt_aml();
    let len = size_of::<SdtHeader>() + body.len();
    let mut bytes = SdtHeader::new(b"DSDT", len, 2).as_bytes().to_vec();
    bytes.extend_from_slice(&body);
    finish(bytes)
}

/// MADT fixed part (§5.2.12).
#[repr(C)]
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct MadtHeader {
    header: SdtHeader,
    local_apic_address: U32,
    flags: U32,
}
const _: () = assert!(size_of::<MadtHeader>() == 44);
/// The system also has 8259 PICs, which the OS must mask when using the APICs.
const MADT_PCAT_COMPAT: u32 = 1 << 0;

/// MADT entry type 0: Processor Local APIC.
#[repr(C)]
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct MadtLocalApic {
    kind: u8,
    length: u8,
    processor_uid: u8,
    apic_id: u8,
    flags: U32,
}
const _: () = assert!(size_of::<MadtLocalApic>() == 8);
const LAPIC_ENABLED: u32 = 1 << 0;

/// MADT entry type 1: I/O APIC.
#[repr(C)]
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct MadtIoApic {
    kind: u8,
    length: u8,
    io_apic_id: u8,
    reserved: u8,
    address: U32,
    gsi_base: U32,
}
const _: () = assert!(size_of::<MadtIoApic>() == 12);

/// MADT entry type 2: Interrupt Source Override.
#[repr(C)]
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct MadtIntSrcOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32,
    flags: U16,
}
const _: () = assert!(size_of::<MadtIntSrcOverride>() == 10);
/// MPS INTI flags: polarity (bits 1..0) 01 = active high; trigger (bits 3..2)
/// 11 = level.
const INTI_ACTIVE_HIGH_LEVEL: u16 = 0b1101;

fn madt_len(num_cpus: u8) -> usize {
    size_of::<MadtHeader>()
        + usize::from(num_cpus) * size_of::<MadtLocalApic>()
        + size_of::<MadtIoApic>()
        + size_of::<MadtIntSrcOverride>()
}

/// Builds the MADT for `num_cpus` vCPUs (already validated).
///
/// Interrupt routing: ISA IRQs map to the same-numbered GSI (I/O APIC pin),
/// which is what KVM's default GSI routing does for its in-kernel PIT, PIC
/// and IOAPIC (GSI n -> PIC IRQ n and IOAPIC pin n, for n < 16). So no
/// IRQ0 -> GSI2 override: QEMU adds one only because its boards wire the
/// PIT to pin 2 and reroute; with KVM's defaults that override would send
/// Linux looking for the timer on a pin it never fires on. Firecracker and
/// crosvm rely on the identity mapping too. The one override is for the SCI,
/// to declare it level-triggered active-high (without it Linux assumes the
/// ACPI default for the SCI: level, active-low).
fn madt(num_cpus: u8) -> Vec<u8> {
    let len = madt_len(num_cpus);
    let mut bytes = Vec::with_capacity(len);
    let header = MadtHeader {
        header: SdtHeader::new(b"APIC", len, 3),
        local_apic_address: U32::new(LAPIC_ADDR as u32),
        flags: U32::new(MADT_PCAT_COMPAT),
    };
    bytes.extend_from_slice(header.as_bytes());
    for id in 0..num_cpus {
        let lapic = MadtLocalApic {
            kind: 0,
            length: size_of::<MadtLocalApic>() as u8,
            processor_uid: id,
            apic_id: id,
            flags: U32::new(LAPIC_ENABLED),
        };
        bytes.extend_from_slice(lapic.as_bytes());
    }
    let ioapic = MadtIoApic {
        kind: 1,
        length: size_of::<MadtIoApic>() as u8,
        // The first id after the vCPUs', so APIC ids stay unique.
        io_apic_id: num_cpus,
        reserved: 0,
        address: U32::new(IOAPIC_ADDR as u32),
        gsi_base: U32::new(0),
    };
    bytes.extend_from_slice(ioapic.as_bytes());
    let sci = MadtIntSrcOverride {
        kind: 2,
        length: size_of::<MadtIntSrcOverride>() as u8,
        bus: 0, // ISA
        source: SCI_IRQ,
        gsi: U32::new(u32::from(SCI_IRQ)),
        flags: U16::new(INTI_ACTIVE_HIGH_LEVEL),
    };
    bytes.extend_from_slice(sci.as_bytes());
    finish(bytes)
}

/// Builds the XSDT listing `tables`.
fn xsdt(tables: &[u64]) -> Vec<u8> {
    let len = size_of::<SdtHeader>() + size_of_val(tables);
    let mut bytes = SdtHeader::new(b"XSDT", len, 1).as_bytes().to_vec();
    for addr in tables {
        bytes.extend_from_slice(&addr.to_le_bytes());
    }
    finish(bytes)
}

/// Builds the RSDP pointing at the XSDT at `xsdt_addr`.
fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Rsdp {
        signature: *b"RSD PTR ",
        checksum: 0,
        oem_id: OEM_ID,
        revision: 2,
        rsdt_address: U32::new(0),
        length: U32::new(size_of::<Rsdp>() as u32),
        xsdt_address: U64::new(xsdt_addr),
        extended_checksum: 0,
        reserved: [0; 3],
    };
    r.checksum = checksum(&r.as_bytes()[..20]);
    r.extended_checksum = checksum(r.as_bytes());
    r.as_bytes().to_vec()
}

/// The byte that makes `bytes` (with it added) sum to 0 mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// Fills in the SDT header checksum of a complete table.
fn finish(mut table: Vec<u8>) -> Vec<u8> {
    table[SDT_CHECKSUM_OFFSET] = 0;
    table[SDT_CHECKSUM_OFFSET] = checksum(&table);
    table
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// One table and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTable {
    /// The table signature ("RSD PTR " is shortened to "RSDP").
    pub name: &'static str,
    /// Guest physical address.
    pub addr: u64,
    /// The complete table, checksums included.
    pub bytes: Vec<u8>,
}

/// The complete set of tables and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Address of the RSDP, the OS's entry point into the tables.
    pub rsdp_addr: u64,
    /// Every table including the RSDP, in address order.
    pub tables: Vec<AcpiTable>,
}

/// Lays out and builds all tables for `num_cpus` vCPUs starting at `base`
/// (the RSDP comes first, at `base` rounded up to 16). Pure: nothing is
/// written.
pub fn build_acpi_tables(base: u64, num_cpus: u8) -> Result<AcpiTables> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::InvalidCpuCount(num_cpus));
    }
    let rsdp_addr = align_up(base);
    let xsdt_addr = align_up(rsdp_addr + size_of::<Rsdp>() as u64);
    let xsdt_len = size_of::<SdtHeader>() + 2 * size_of::<u64>();
    let fadt_addr = align_up(xsdt_addr + xsdt_len as u64);
    let facs_addr = (fadt_addr + size_of::<Fadt>() as u64).div_ceil(FACS_ALIGN) * FACS_ALIGN;
    let dsdt_addr = align_up(facs_addr + size_of::<Facs>() as u64);
    let dsdt_len = size_of::<SdtHeader>() + dsdt_aml().len();
    let madt_addr = align_up(dsdt_addr + dsdt_len as u64);
    let end = madt_addr + madt_len(num_cpus) as u64;
    if end > HIMEM_START {
        return Err(Error::TablesTooLarge { end });
    }
    let table = |name, addr, bytes| AcpiTable { name, addr, bytes };
    let tables = vec![
        table("RSDP", rsdp_addr, rsdp(xsdt_addr)),
        table("XSDT", xsdt_addr, xsdt(&[fadt_addr, madt_addr])),
        table("FACP", fadt_addr, fadt(dsdt_addr, facs_addr)),
        table("FACS", facs_addr, facs()),
        table("DSDT", dsdt_addr, dsdt()),
        table("APIC", madt_addr, madt(num_cpus)),
    ];
    Ok(AcpiTables { rsdp_addr, tables })
}

/// Writes the ACPI tables for `num_cpus` vCPUs at [`ACPI_TABLES_START`] and
/// returns the RSDP's address (for `boot_params.acpi_rsdp_addr` or PVH's
/// `rsdp_paddr`).
pub fn setup_acpi_tables<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<GuestAddress> {
    let built = build_acpi_tables(ACPI_TABLES_START, num_cpus)?;
    for t in &built.tables {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|source| Error::WriteTable {
                name: t.name,
                addr: t.addr,
                source,
            })?;
    }
    Ok(GuestAddress(built.rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn build(num_cpus: u8) -> AcpiTables {
        build_acpi_tables(ACPI_TABLES_START, num_cpus).unwrap()
    }

    fn get<'a>(t: &'a AcpiTables, name: &str) -> &'a AcpiTable {
        t.tables.iter().find(|x| x.name == name).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_and_length() {
        let t = build(4);
        for table in &t.tables {
            if table.name == "FACS" {
                // The only table without a checksum.
                assert_eq!((table.bytes.len(), table.addr % 64), (64, 0));
                assert_eq!(&table.bytes[0..4], b"FACS");
                assert_eq!(u32_at(&table.bytes, 4), 64);
                continue;
            }
            assert_eq!(sum(&table.bytes), 0, "{} checksum", table.name);
            if table.name != "RSDP" {
                assert_eq!(&table.bytes[0..4], table.name.as_bytes());
                assert_eq!(
                    u32_at(&table.bytes, 4) as usize,
                    table.bytes.len(),
                    "{}",
                    table.name
                );
                assert_eq!(&table.bytes[10..16], b"VMM   ");
            }
        }
        for pair in t.tables.windows(2) {
            assert!(pair[0].addr + pair[0].bytes.len() as u64 <= pair[1].addr);
        }
        let last = t.tables.last().unwrap();
        assert!(last.addr + last.bytes.len() as u64 <= HIMEM_START);
    }

    #[test]
    fn rsdp() {
        let t = build(1);
        let r = get(&t, "RSDP");
        assert_eq!(t.rsdp_addr, r.addr);
        assert_eq!(r.addr % 16, 0);
        assert!((0xe0000..0x100000).contains(&r.addr));
        assert_eq!(&r.bytes[0..8], b"RSD PTR ");
        assert_eq!(r.bytes.len(), 36);
        assert_eq!(sum(&r.bytes[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&r.bytes), 0, "extended checksum");
        assert_eq!(r.bytes[15], 2, "revision");
        assert_eq!(u32_at(&r.bytes, 20), 36);
        assert_eq!(u64_at(&r.bytes, 24), get(&t, "XSDT").addr);
    }

    #[test]
    fn xsdt_lists_fadt_and_madt() {
        let t = build(2);
        let x = &get(&t, "XSDT").bytes;
        assert_eq!(x.len(), 36 + 16);
        assert_eq!(u64_at(x, 36), get(&t, "FACP").addr);
        assert_eq!(u64_at(x, 44), get(&t, "APIC").addr);
    }

    #[test]
    fn fadt_fields_at_spec_offsets() {
        let t = build(1);
        let f = &get(&t, "FACP").bytes;
        let dsdt = get(&t, "DSDT").addr;
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "revision");
        let facs = get(&t, "FACS").addr;
        assert_eq!(u32_at(f, 36) as u64, facs, "FIRMWARE_CTRL");
        assert_eq!(u64_at(f, 132), 0, "X_FIRMWARE_CTRL");
        assert_eq!(u32_at(f, 40) as u64, dsdt, "DSDT");
        assert_eq!(u16_at(f, 46), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "SMI_CMD");
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0, "PM_TMR_BLK");
        assert_eq!(
            (f[88], f[89], f[91]),
            (4, 2, 0),
            "PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN"
        );
        assert_eq!(
            u16_at(f, 109),
            0b100,
            "IAPC_BOOT_ARCH: VGA absent, 8042 hidden"
        );
        assert_eq!(u32_at(f, 112), 1 | 1 << 4 | 1 << 5 | 1 << 10, "flags");
        assert_eq!(
            &f[116..120],
            &[1, 8, 0, 1],
            "RESET_REG: I/O, 8 bits, byte access"
        );
        assert_eq!(u64_at(f, 120), 0xcf9);
        assert_eq!(f[128], 6, "RESET_VALUE");
        assert_eq!(u64_at(f, 140), dsdt, "X_DSDT");
        assert_eq!(&f[148..152], &[1, 32, 0, 2], "X_PM1a_EVT_BLK");
        assert_eq!(u64_at(f, 152), 0x600);
        assert_eq!(&f[172..176], &[1, 16, 0, 2], "X_PM1a_CNT_BLK");
        assert_eq!(u64_at(f, 176), 0x604);
        assert_eq!(&f[208..220], &[0; 12], "no X_PM_TMR_BLK");
    }

    #[test]
    fn dsdt_has_s5_package() {
        let t = build(1);
        let d = &get(&t, "DSDT").bytes;
        assert_eq!(d[8], 2, "revision 2: 64-bit AML integers");
        let s5 = [
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0,
        ];
        assert!(d.windows(s5.len()).any(|w| w == s5));
    }

    #[test]
    fn dsdt_routes_every_slots_inta_to_its_gsi() {
        let aml = dsdt_aml();
        let prt = b"_PRT";
        let at = aml
            .windows(4)
            .position(|w| w == prt)
            .expect("the root bridge has a _PRT");
        // Slot 1: Package (4) { 0x0001FFFF, Zero, Zero, 17 } as AML bytes.
        let slot1 = [
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0a, 0x11,
        ];
        assert!(
            aml[at..].windows(slot1.len()).any(|w| w == slot1),
            "slot 1's INTA# goes to GSI 17"
        );
        assert_eq!(crate::layout::pci_intx_gsi(1), 17);
        assert_eq!(crate::layout::pci_intx_gsi(8), 16);
        assert_eq!(crate::layout::pci_intx_gsi(31), 23);
    }

    #[test]
    fn dsdt_declares_the_pci_root_bridge_with_its_windows() {
        let t = build(1);
        let d = &get(&t, "DSDT").bytes;
        let contains = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        // Device (\_SB.PCI0) and its _HID PNP0A03.
        assert!(contains(&[0x5b, 0x82]));
        assert!(contains(b"\\\x2e_SB_PCI0"));
        assert!(contains(&[
            b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03
        ]));
        // The BAR window: 0xC0000000..=0xFEBFFFFF.
        assert!(contains(&crate::aml::dword_memory(
            0xc000_0000,
            0xfebf_ffff
        )));
        // The config ports.
        assert!(contains(&crate::aml::io_port(0xcf8, 8)));
    }

    /// Walks the MADT's variable-length entries: (type, bytes).
    fn madt_entries(m: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < m.len() {
            let len = usize::from(m[off + 1]);
            assert!(len >= 2 && off + len <= m.len(), "bad entry at {off}");
            out.push((m[off], &m[off..off + len]));
            off += len;
        }
        out
    }

    #[test]
    fn madt_describes_cpus_ioapic_and_sci() {
        let t = build(3);
        let m = &get(&t, "APIC").bytes;
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
        let entries = madt_entries(m);
        let lapics: Vec<_> = entries.iter().filter(|e| e.0 == 0).collect();
        assert_eq!(lapics.len(), 3);
        for (i, (_, e)) in lapics.iter().enumerate() {
            assert_eq!((e[2], e[3], u32_at(e, 4)), (i as u8, i as u8, 1));
        }
        let ioapics: Vec<_> = entries.iter().filter(|e| e.0 == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let io = ioapics[0].1;
        assert_eq!((io[2], u32_at(io, 4), u32_at(io, 8)), (3, 0xfec0_0000, 0));
        let isos: Vec<_> = entries.iter().filter(|e| e.0 == 2).collect();
        assert_eq!(
            isos.len(),
            1,
            "only the SCI override; IRQ0 is identity-mapped"
        );
        let iso = isos[0].1;
        assert_eq!(
            (iso[2], iso[3], u32_at(iso, 4), u16_at(iso, 8)),
            (0, 9, 9, 0xd)
        );
    }

    #[test]
    fn cpu_count_limits() {
        assert!(matches!(
            build_acpi_tables(ACPI_TABLES_START, 0),
            Err(Error::InvalidCpuCount(0))
        ));
        assert!(matches!(
            build_acpi_tables(ACPI_TABLES_START, 255),
            Err(Error::InvalidCpuCount(255))
        ));
        let t = build(MAX_CPUS);
        let m = &get(&t, "APIC").bytes;
        assert_eq!(madt_entries(m).iter().filter(|e| e.0 == 0).count(), 254);
        assert!(matches!(
            build_acpi_tables(0xfff00, 8),
            Err(Error::TablesTooLarge { .. })
        ));
    }

    /// What Linux's legacy scan does: look on 16-byte boundaries in the BIOS
    /// area for "RSD PTR " with a valid checksum.
    fn scan_for_rsdp(mem: &GuestMemoryMmap) -> Option<u64> {
        (0xe0000..0x100000u64).step_by(16).find(|&addr| {
            let mut buf = [0u8; 20];
            mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            &buf[..8] == b"RSD PTR " && sum(&buf) == 0
        })
    }

    #[test]
    fn setup_writes_tables_findable_by_legacy_scan() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = setup_acpi_tables(&mem, 2).unwrap();
        assert_eq!(scan_for_rsdp(&mem), Some(rsdp.0));
        let xsdt: u64 = mem.read_obj(GuestAddress(rsdp.0 + 24)).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(xsdt)).unwrap();
        assert_eq!(&sig, b"XSDT");
    }

    #[test]
    fn setup_fails_without_bios_area_ram() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x80000)]).unwrap();
        assert!(matches!(
            setup_acpi_tables(&mem, 1),
            Err(Error::WriteTable { name: "RSDP", .. })
        ));
    }
}
