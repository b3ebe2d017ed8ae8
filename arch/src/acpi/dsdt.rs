//! DSDT: the AML namespace (the S5 sleep type, the PCI root bridge, and the ISA
//! devices that interrupt: COM1 and the CMOS RTC).

use zerocopy::IntoBytes;

use super::{SdtHeader, finish};
use crate::aml::{self, AddressSpace};

/// COM1's base port and ports: src/builder.rs's `COM1_PORT`, devices' `SERIAL_PORT_LEN`.
const COM1_PORT: u16 = 0x3f8;
const COM1_PORT_LEN: u8 = 8;
/// COM1's ISA IRQ, which is also its GSI (IOAPIC pin): src/builder.rs's `COM1_GSI`.
const COM1_IRQ: u8 = 4;
/// The CMOS RTC's index port and ports: devices' `CMOS_INDEX_PORT` and `CMOS_PORT_LEN`.
const RTC_PORT: u16 = 0x70;
const RTC_PORT_LEN: u8 = 2;
/// The RTC's ISA IRQ (and GSI), by PC convention.
const RTC_IRQ: u8 = 8;

/// The DSDT's AML body:
///
/// - `Name (\_S5, Package (4) { 5, 5, 0, 0 })`: the sleep type for S5 (power off). The
///   value 5 is what devices::acpi_pm acts on, written with SLP_EN to the FADT's sleep
///   control register (or PM1a_CNT, for a guest with the older full-hardware FADT).
///   Linux registers ACPI power-off only if `\_S5` exists, reduced hardware or not.
/// - `Device (\_SB.PCI0)`: the PCI root bridge (`PNP0A03`). With ACPI on, Linux scans
///   only the root bridges the DSDT declares, so without it no PCI device is ever found.
///   Its `_CRS` gives bus numbers 0-255, the configuration ports 0xCF8-0xCFF, the rest of
///   the I/O space, and the 32-bit MMIO window where the VMM places BARs
///   ([`MMIO_HOLE_START`](crate::layout::MMIO_HOLE_START) up to the IOAPIC). Its `_PRT`
///   routes INTA# of every slot to the GSI [`pci_intx_gsi`](crate::layout::pci_intx_gsi)
///   gives it: a driver that cannot use MSI-X (Linux with `pci=nomsi`) gets its device's
///   interrupts there.
/// - `Device (\_SB.COM1)` (`PNP0501`, the 16550 at 0x3F8, IRQ 4) and `Device (\_SB.RTC)`
///   (`PNP0B00`, the CMOS RTC at 0x70, IRQ 8). Under a hardware-reduced FADT Linux has
///   no legacy PIC and maps no ISA IRQ by default: a legacy device's interrupt
///   reaches its driver only through its `_CRS` (PNP-ACPI maps the GSI, then 8250_pnp
///   and rtc_cmos bind). ISA IRQ n is GSI n, IOAPIC pin n. The i8042 is deliberately
///   not described (see the FADT's IAPC_BOOT_ARCH).
pub fn dsdt_aml() -> Vec<u8> {
    [s5(), pci0(), com1(), rtc()].concat()
}

/// `Name (\_S5, Package (4) { 5, 5, 0, 0 })`.
fn s5() -> Vec<u8> {
    aml::name(
        b"\\_S5_",
        &aml::package(&[
            aml::integer(5),
            aml::integer(5),
            aml::integer(0),
            aml::integer(0),
        ]),
    )
}

/// `Device (\_SB.PCI0)`, the PCI root bridge.
fn pci0() -> Vec<u8> {
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
    aml::device(b"\\\x2e_SB_PCI0", &pci0_body)
}

/// `ResourceTemplate () { IO (Decode16, port, port, 0x00, len) IRQNoFlags () {irq} }`:
/// a legacy ISA device's fixed ports and edge-triggered, active-high interrupt.
fn isa_crs(port: u16, len: u8, irq: u8) -> Vec<u8> {
    aml::resource_template(&[aml::io_port(port, 0, len), aml::irq_no_flags(irq)])
}

/// `Device (\_SB.COM1)`: the UART, for 8250_pnp (which gives ttyS0 its interrupt).
fn com1() -> Vec<u8> {
    let body = [
        aml::name(b"_HID", &aml::eisa_id(b"PNP0501")),
        aml::name(b"_UID", &aml::integer(1)),
        aml::name(b"_CRS", &isa_crs(COM1_PORT, COM1_PORT_LEN, COM1_IRQ)),
    ]
    .concat();
    aml::device(b"\\\x2e_SB_COM1", &body)
}

/// `Device (\_SB.RTC)`: the CMOS RTC, for rtc_cmos. Without the IRQ in `_CRS` rtc_cmos
/// would run without one: on a PC with no legacy PIC it assumes no IRQ 8.
fn rtc() -> Vec<u8> {
    let body = [
        aml::name(b"_HID", &aml::eisa_id(b"PNP0B00")),
        aml::name(b"_CRS", &isa_crs(RTC_PORT, RTC_PORT_LEN, RTC_IRQ)),
    ]
    .concat();
    // NameSegs are four characters: RTC is padded with '_'.
    aml::device(b"\\\x2e_SB_RTC_", &body)
}

/// `Package () { Package () { 0xSSSSFFFF, 0, 0, GSI }, ... }`: INTA# (pin 0) of each slot
/// 1-31 of bus 0 goes straight to a global system interrupt (source 0). The host bridge
/// in slot 0 raises no interrupt.
fn pci_routing_table() -> Vec<u8> {
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

    #[test]
    fn dsdt_declares_com1_and_the_rtc_with_their_irqs() {
        let t = build(1);
        let d = &get(&t, "DSDT").bytes;
        let contains = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"\\\x2e_SB_COM1"));
        assert!(contains(b"\\\x2e_SB_RTC_"));
        // _HID EisaId ("PNP0501"), _UID One, and _HID EisaId ("PNP0B00"), as iasl emits.
        assert!(contains(&[
            b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x05, 0x01, 0x08, b'_', b'U', b'I', b'D',
            0x01
        ]));
        assert!(contains(&[
            b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0b, 0x00
        ]));
        // Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3F8, 0x3F8, 0x00, 8)
        // IRQNoFlags () {4} }), byte for byte as iasl 20200925 compiles it.
        let com1_crs = [
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x10, 0x0a, 0x0d, // Buffer (13)
            0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, // IO
            0x22, 0x10, 0x00, // IRQNoFlags () {4}
            0x79, 0x00, // EndTag
        ];
        assert!(contains(&com1_crs));
        // The RTC's: IO (Decode16, 0x70, 0x70, 0x00, 2) IRQNoFlags () {8}.
        let rtc_crs = [
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x10, 0x0a, 0x0d, // Buffer (13)
            0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x00, 0x02, // IO
            0x22, 0x00, 0x01, // IRQNoFlags () {8}
            0x79, 0x00, // EndTag
        ];
        assert!(contains(&rtc_crs));
    }

    /// The paths of the top-level `Device`s after the 15-byte `\_S5` Name, found by
    /// following each Device's PkgLength (§20.2.4) as an AML parser does.
    fn top_level_devices(aml: &[u8]) -> Vec<&[u8]> {
        let mut off = 15;
        let mut paths = Vec::new();
        while off < aml.len() {
            assert_eq!(&aml[off..off + 2], &[0x5b, 0x82], "DeviceOp at {off}");
            let lead = aml[off + 2];
            let extra = usize::from(lead >> 6);
            let mut len = usize::from(lead & if extra == 0 { 0x3f } else { 0x0f });
            for i in 0..extra {
                len |= usize::from(aml[off + 3 + i]) << (4 + 8 * i);
            }
            let path = off + 3 + extra;
            paths.push(&aml[path..path + 10]);
            off += 2 + len;
        }
        assert_eq!(off, aml.len(), "the last Device ends the body");
        paths
    }

    #[test]
    fn dsdt_names_what_the_devices_decode() {
        assert_eq!(u64::from(RTC_PORT), devices::CMOS_INDEX_PORT);
        assert_eq!(u64::from(RTC_PORT_LEN), devices::CMOS_PORT_LEN);
        assert_eq!(u64::from(COM1_PORT_LEN), devices::SERIAL_PORT_LEN);
        // \_S5's first element, which devices::acpi_pm acts on.
        assert_eq!(s5()[9..11], [0x0a, 5]);
        assert_eq!(devices::SLEEP_TYPE_S5, 5);
    }

    #[test]
    fn dsdt_devices_are_whole_and_in_order() {
        let aml = dsdt_aml();
        assert_eq!(aml[0], 0x08, "\\_S5 comes first");
        assert_eq!(
            top_level_devices(&aml),
            [b"\\\x2e_SB_PCI0", b"\\\x2e_SB_COM1", b"\\\x2e_SB_RTC_"]
        );
    }
}
