//! MADT: the local APICs and the I/O APIC (no interrupt source overrides).

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

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

pub(super) fn madt_len(num_cpus: u8) -> usize {
    size_of::<MadtHeader>()
        + usize::from(num_cpus) * size_of::<MadtLocalApic>()
        + size_of::<MadtIoApic>()
}

/// Builds the MADT for `num_cpus` vCPUs (already validated): one local APIC per
/// vCPU and the I/O APIC with GSI base 0, so GSI n is I/O APIC pin n, as KVM's
/// default GSI routing wires it.
///
/// No interrupt source overrides. There is no PIT, so no IRQ0 -> GSI2 override (QEMU
/// has one only because its boards wire the PIT to pin 2), and the FADT is
/// hardware-reduced, so there is no SCI to override. With no legacy PIC Linux pre-maps
/// no ISA IRQ: the ISA devices that interrupt (COM1 on IRQ 4, the RTC on IRQ 8) are
/// described in the DSDT with their IRQ, which is their GSI, and Linux maps that GSI
/// when it binds their drivers.
///
/// PCAT_COMPAT stays set because KVM's in-kernel 8259s do exist. Linux neither
/// programs nor masks them in reduced mode (null_legacy_pic), so they keep KVM's reset
/// state (vector base 0, nothing masked): whatever reaches them through the GSI
/// routing (src/irq_routing.rs routes GSIs 0-15 to them too) gets to the boot CPU as
/// ExtINT for as long as its LINT0 is left unmasked.
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
    finish(bytes)
}

#[cfg(test)]
mod tests {
    use crate::acpi::test_support::*;

    #[test]
    fn madt_describes_cpus_and_the_ioapic_only() {
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
        assert!(
            entries.iter().all(|e| e.0 != 2),
            "no interrupt source override: no SCI, no PIT"
        );
        assert_eq!(entries.len(), 4, "3 LAPICs and the IOAPIC, nothing else");
        assert_eq!(m.len(), 44 + 3 * 8 + 12);
    }
}
