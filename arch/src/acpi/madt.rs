//! MADT: local APICs, the I/O APIC and interrupt source overrides.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::fadt::SCI_IRQ;
use super::{SdtHeader, finish};
use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR};

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

pub(super) fn madt_len(num_cpus: u8) -> usize {
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
pub(super) fn madt(num_cpus: u8) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use crate::acpi::test_support::*;

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
}
