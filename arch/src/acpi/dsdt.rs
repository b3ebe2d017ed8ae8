//! DSDT: the AML namespace (sleep states, PCI root bridge).

use zerocopy::IntoBytes;

use super::{SdtHeader, finish};

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
        aml::io_port(0xcf8, 1, 8),
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
pub(super) fn dsdt() -> Vec<u8> {
    let body = dsdt_aml();
    let len = size_of::<SdtHeader>() + body.len();
    let mut bytes = SdtHeader::new(b"DSDT", len, 2).as_bytes().to_vec();
    bytes.extend_from_slice(&body);
    finish(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_support::*;

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
        assert!(contains(&crate::aml::io_port(0xcf8, 1, 8)));
    }
}
