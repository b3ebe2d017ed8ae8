//! Just enough of an AML encoder (ACPI 6.x, §20) for the DSDT this VMM needs: named
//! integers, strings, packages and buffers, `Device` scopes, and the resource
//! descriptors (§6.4) of a PCI root bridge's and an ISA device's `_CRS`. Encoding by function keeps the
//! package lengths right, which hand-counted byte arrays do not.

/// A `PkgLength` (§20.2.4) for a body of `body_len` bytes: the encoding counts its own
/// bytes, so the value depends on how many bytes it takes.
pub fn pkg_length(body_len: usize) -> Vec<u8> {
    for extra in 1..=4usize {
        let total = body_len + extra;
        let fits = match extra {
            1 => total < 0x40,
            2 => total < 0x1000,
            3 => total < 0x10_0000,
            _ => total < 0x1000_0000,
        };
        if !fits {
            continue;
        }
        if extra == 1 {
            return vec![total as u8];
        }
        let mut out = vec![(((extra - 1) as u8) << 6) | (total & 0x0f) as u8];
        let mut rest = total >> 4;
        for _ in 1..extra {
            out.push((rest & 0xff) as u8);
            rest >>= 8;
        }
        return out;
    }
    // ACPI tables are far smaller than 256 MiB; this is unreachable for our DSDT.
    vec![0xff, 0xff, 0xff, 0xff]
}

/// An integer, in the shortest encoding.
pub fn integer(value: u64) -> Vec<u8> {
    match value {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, value as u8],
        0x100..=0xffff => [&[0x0b][..], &(value as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0x0c][..], &(value as u32).to_le_bytes()].concat(),
        _ => [&[0x0e][..], &value.to_le_bytes()].concat(),
    }
}

/// A compressed EISA id such as `PNP0A03` (§19.6.35), as a DWord.
pub fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
    let letter = |c: u8| u32::from(c.wrapping_sub(b'@') & 0x1f);
    let hex = |c: u8| {
        u32::from(if c.is_ascii_digit() {
            c - b'0'
        } else {
            (c | 0x20) - b'a' + 10
        })
    };
    let value = (letter(id[0]) << 26)
        | (letter(id[1]) << 21)
        | (letter(id[2]) << 16)
        | (hex(id[3]) << 12)
        | (hex(id[4]) << 8)
        | (hex(id[5]) << 4)
        | hex(id[6]);
    // The id is stored big-endian inside a little-endian DWord.
    [&[0x0c][..], &value.swap_bytes().to_le_bytes()].concat()
}

/// `Name (path, data)`; `path` is raw NameString bytes such as `b"_HID"` or `b"\\_S5_"`.
pub fn name(path: &[u8], data: &[u8]) -> Vec<u8> {
    [&[0x08][..], path, data].concat()
}

/// `Package () { elements }`.
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![elements.len() as u8];
    for element in elements {
        body.extend_from_slice(element);
    }
    [&[0x12][..], &pkg_length(body.len()), &body].concat()
}

/// `Buffer () { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let body = [&integer(bytes.len() as u64)[..], bytes].concat();
    [&[0x11][..], &pkg_length(body.len()), &body].concat()
}

/// `Device (path) { body }`; `path` is raw NameString bytes such as `b"\\/_SB_PCI0"`.
pub fn device(path: &[u8], body: &[u8]) -> Vec<u8> {
    let inner = [path, body].concat();
    [&[0x5b, 0x82][..], &pkg_length(inner.len()), &inner].concat()
}

/// A resource template: the descriptors followed by the end tag (checksum 0 = none).
pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes: Vec<u8> = descriptors.concat();
    bytes.extend_from_slice(&[0x79, 0x00]);
    buffer(&bytes)
}

/// Resource types of an address-space descriptor.
#[derive(Clone, Copy)]
pub enum AddressSpace {
    Memory = 0,
    Io = 1,
    BusNumber = 2,
}

/// Word (16-bit) Address Space Descriptor (§6.4.3.5.3), fixed min and max, producer.
pub fn word_address_space(space: AddressSpace, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    let len = max.wrapping_sub(min).wrapping_add(1);
    let mut d = vec![0x88, 0x0d, 0x00, space as u8, 0x0c, type_flags];
    for field in [0, min, max, 0, len] {
        d.extend_from_slice(&field.to_le_bytes());
    }
    d
}

/// DWord (32-bit) Address Space Descriptor (§6.4.3.5.2), fixed min and max, producer.
pub fn dword_memory(min: u32, max: u32) -> Vec<u8> {
    let len = max.wrapping_sub(min).wrapping_add(1);
    // Type-specific flags: read-write, not cacheable (device memory).
    let mut d = vec![0x87, 0x17, 0x00, AddressSpace::Memory as u8, 0x0c, 0x01];
    for field in [0, min, max, 0, len] {
        d.extend_from_slice(&field.to_le_bytes());
    }
    d
}

/// I/O Port Descriptor (§6.4.2.5), 16-bit decode, fixed at `base` for `len` ports:
/// `IO (Decode16, base, base, alignment, len)`. With minimum = maximum the alignment
/// is moot; it is a parameter so the bytes match the ASL each caller mirrors.
pub fn io_port(base: u16, alignment: u8, len: u8) -> Vec<u8> {
    let b = base.to_le_bytes();
    vec![0x47, 0x01, b[0], b[1], b[0], b[1], alignment, len]
}

/// IRQ Descriptor without its information byte (§6.4.2.1): `IRQNoFlags () {irq}`,
/// which means edge-triggered, active-high, exclusive: an ISA interrupt.
/// `irq` must be below 16 (the mask has 16 bits); a larger one yields an empty mask.
pub fn irq_no_flags(irq: u8) -> Vec<u8> {
    let mask = 1u16.checked_shl(u32::from(irq)).unwrap_or(0);
    let m = mask.to_le_bytes();
    // Small resource, item name 0x04 (IRQ), length 2.
    vec![0x22, m[0], m[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_counts_its_own_bytes() {
        assert_eq!(pkg_length(6), vec![7]);
        assert_eq!(pkg_length(62), vec![63]);
        // 63 + 2 = 65 = 0x41: two bytes, low nibble 1 with bit 6 set, then 0x04.
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0x58 - 2), vec![0x48, 0x05]);
    }

    #[test]
    fn integers_use_the_shortest_encoding() {
        assert_eq!(integer(0), vec![0x00]);
        assert_eq!(integer(1), vec![0x01]);
        assert_eq!(integer(5), vec![0x0a, 0x05]);
        assert_eq!(integer(0x1234), vec![0x0b, 0x34, 0x12]);
        assert_eq!(integer(0xc000_0000), vec![0x0c, 0x00, 0x00, 0x00, 0xc0]);
    }

    #[test]
    fn eisa_id_matches_the_well_known_encoding() {
        // PNP0A03 is 0x030AD041 as iasl emits it.
        assert_eq!(eisa_id(b"PNP0A03"), vec![0x0c, 0x41, 0xd0, 0x0a, 0x03]);
    }

    #[test]
    fn s5_package_matches_the_hand_decoded_bytes() {
        let s5 = name(
            b"\\_S5_",
            &package(&[integer(5), integer(5), integer(0), integer(0)]),
        );
        assert_eq!(
            s5,
            vec![
                0x08, 0x5c, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00,
                0x00
            ]
        );
    }

    #[test]
    fn address_space_descriptors_have_their_spec_lengths() {
        let bus = word_address_space(AddressSpace::BusNumber, 0, 0, 0xff);
        assert_eq!(bus.len(), 16);
        assert_eq!(&bus[14..16], &0x100u16.to_le_bytes(), "range length");
        let mem = dword_memory(0xc000_0000, 0xfebf_ffff);
        assert_eq!(mem.len(), 26);
        assert_eq!(&mem[22..26], &0x3ec0_0000u32.to_le_bytes(), "range length");
        assert_eq!(
            io_port(0xcf8, 1, 8),
            vec![0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]
        );
    }

    #[test]
    fn isa_descriptors_match_iasl() {
        // IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08) and IRQNoFlags () {4}, as iasl emits
        // them.
        assert_eq!(
            io_port(0x3f8, 0, 8),
            vec![0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08]
        );
        assert_eq!(irq_no_flags(4), vec![0x22, 0x10, 0x00]);
        assert_eq!(irq_no_flags(8), vec![0x22, 0x00, 0x01]);
        assert_eq!(irq_no_flags(15), vec![0x22, 0x00, 0x80]);
        assert_eq!(irq_no_flags(16), vec![0x22, 0x00, 0x00], "no such ISA IRQ");
    }
}
