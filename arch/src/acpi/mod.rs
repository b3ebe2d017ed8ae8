//! The ACPI tables the guest kernel reads at boot, written into guest memory
//! at [`ACPI_TABLES_START`]:
//!
//! - RSDP (revision 2) pointing at the XSDT; first, 16-byte aligned and inside
//!   0xe0000..0x100000, so Linux's legacy BIOS-area scan finds it;
//! - XSDT listing the FADT and the MADT;
//! - FACS (empty: no global lock, no waking vector), referenced by the FADT;
//! - FADT describing a hardware-reduced machine (no PIT, no SCI, no PM1/GPE
//!   blocks, no PM timer): power off through the sleep control/status registers
//!   at I/O 0x606/0x607, reset via I/O 0xcf9;
//! - DSDT with the `\_S5` sleep-type package (so Linux can power off), the PCI
//!   root bridge (so Linux scans PCI bus 0), and COM1 and the CMOS RTC with their
//!   ISA IRQs (with no legacy PIC, Linux learns them only from there);
//! - MADT with one local APIC per vCPU and the I/O APIC, no overrides.
//!
//! Devices the VMM must provide to match: the sleep control register at 0x606
//! (poweroff is a byte write of `SLP_TYP = 5 << 2 | SLP_EN = 1 << 5` = 0x34) and
//! the sleep status register at 0x607, both in devices::acpi_pm (with the PM1
//! registers older FADTs used, at 0x600..0x606); port 0xcf9 resetting on value
//! 0x06; COM1 at 0x3f8 on GSI 4 and the CMOS at 0x70. SMI_CMD is 0, which tells
//! the OS ACPI mode is always on.
//!
//! Every table is a `#[repr(C)]` zerocopy struct of byte-aligned fields
//! (little-endian wrappers), so its layout is exactly the spec's and its
//! size is checked at compile time.
//!
//! This module owns what every table shares (the SDT header, checksums), the
//! RSDP and XSDT, where each table goes ([`build_acpi_tables`]) and writing
//! them ([`setup_acpi_tables`]); `fadt`, `dsdt` and `madt` each build one
//! table (the FACS with the FADT that points at it).

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::layout::{ACPI_TABLES_START, HIMEM_START};

mod dsdt;
mod fadt;
mod madt;

pub use dsdt::dsdt_aml;
pub use fadt::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};

use dsdt::dsdt;
use fadt::{FACS_ALIGN, Facs, Fadt, facs, fadt};
use madt::{madt, madt_len};

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
pub(super) struct SdtHeader {
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
    pub(super) fn new(signature: &[u8; 4], length: usize, revision: u8) -> Self {
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
pub(super) fn finish(mut table: Vec<u8>) -> Vec<u8> {
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

/// Helpers the table tests of every submodule share.
#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) fn build(num_cpus: u8) -> AcpiTables {
        build_acpi_tables(ACPI_TABLES_START, num_cpus).unwrap()
    }

    pub(super) fn get<'a>(t: &'a AcpiTables, name: &str) -> &'a AcpiTable {
        t.tables.iter().find(|x| x.name == name).unwrap()
    }

    pub(super) fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    pub(super) fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    pub(super) fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Walks the MADT's variable-length entries: (type, bytes).
    pub(super) fn madt_entries(m: &[u8]) -> Vec<(u8, &[u8])> {
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
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use vm_memory::GuestMemoryMmap;

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

    /// arch and devices are separate crates, so each names the ports; a table that
    /// points at a port nothing decodes would fail only in a booted guest.
    #[test]
    fn fadt_ports_are_the_ones_the_devices_decode() {
        assert_eq!(SLEEP_CONTROL_PORT, devices::SLEEP_CONTROL_PORT);
        assert_eq!(SLEEP_STATUS_PORT, devices::SLEEP_STATUS_PORT);
        assert_eq!(u64::from(RESET_PORT), devices::RESET_CONTROL_PORT);
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
