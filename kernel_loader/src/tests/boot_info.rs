//! The boot information the guest reads: the zero page's fields at their boot-protocol
//! offsets (e820 map, split high addresses, limits) and PVH's start info in Xen's layout.

use vm_memory::{Bytes, GuestAddress};
use zerocopy::{FromBytes, IntoBytes};

use crate::bootparam::{CAN_USE_HEAP, SetupHeader};
use crate::pvh::XEN_HVM_START_MAGIC_VALUE;
use crate::test_util::*;
use crate::*;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn e820_map() -> Vec<E820Entry> {
    vec![
        E820Entry {
            addr: 0,
            size: 0x9fc00,
            type_: E820_RAM,
        },
        E820Entry {
            addr: 0xf0000,
            size: 0x10000,
            type_: E820_RESERVED,
        },
        E820Entry {
            addr: 0x10_0000,
            size: 63 * MIB,
            type_: E820_RAM,
        },
    ]
}

#[test]
fn zero_page_fields_land_at_boot_protocol_offsets() {
    let mem = mem(64 * MIB);
    let bz = BzImage::default();
    let k = load_kernel(&mem, &bz.build()).unwrap();
    let e820 = e820_map();
    let cfg = ZeroPageConfig {
        setup_header: k.setup_header,
        cmdline_addr: GuestAddress(0x2_0000),
        cmdline_size: 100,
        initrd: Some((GuestAddress(0x300_0000), 0x12345)),
        e820: &e820,
        acpi_rsdp_addr: Some(GuestAddress(0xe_0000)),
    };
    mem.write_slice(&[0xee; 4096], GuestAddress(0x7000))
        .unwrap();
    write_zero_page(&mem, GuestAddress(0x7000), &cfg).unwrap();
    let zp = read(&mem, 0x7000, 4096);

    // The setup header bytes come from the kernel, except the loader fields.
    let mut hdr = bz.header();
    assert_eq!(zp[0x1f1], hdr.setup_sects);
    assert_eq!(u16_at(&zp, 0x1fe), 0xaa55);
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(&zp, 0x206), 0x020f);
    assert_eq!(zp[0x210], 0xff, "type_of_loader");
    assert_ne!(zp[0x211] & CAN_USE_HEAP, 0, "loadflags");
    assert_eq!(u16_at(&zp, 0x1fa), 0xffff, "vid_mode");
    assert_eq!(u16_at(&zp, 0x224), 0xfe00, "heap_end_ptr");
    assert_eq!(u32_at(&zp, 0x228), 0x2_0000, "cmd_line_ptr");
    assert_eq!(u32_at(&zp, 0xc8), 0, "ext_cmd_line_ptr");
    assert_eq!(u32_at(&zp, 0x218), 0x300_0000, "ramdisk_image");
    assert_eq!(u32_at(&zp, 0x21c), 0x12345, "ramdisk_size");
    assert_eq!(u32_at(&zp, 0x238), 2047, "cmdline_size untouched");
    assert_eq!(u64_at(&zp, 0x070), 0xe_0000, "acpi_rsdp_addr");
    assert_eq!(zp[0x1e8], 3, "e820_entries");
    for (i, e) in e820.iter().enumerate() {
        let off = 0x2d0 + i * 20;
        assert_eq!(u64_at(&zp, off), { e.addr });
        assert_eq!(u64_at(&zp, off + 8), { e.size });
        assert_eq!(u32_at(&zp, off + 16), { e.type_ });
    }
    assert!(zp[0x2d0 + 3 * 20..0xcd0].iter().all(|&b| b == 0));
    assert_eq!(zp[0x1ef], 0, "sentinel");

    // Whole header equals the kernel's with exactly the loader fields changed.
    hdr.type_of_loader = 0xff;
    hdr.vid_mode = 0xffff;
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = 0x2_0000;
    hdr.ramdisk_image = 0x300_0000;
    hdr.ramdisk_size = 0x12345;
    assert_eq!(
        SetupHeader::read_from_bytes(&zp[0x1f1..0x26c]).unwrap(),
        hdr
    );
    assert_eq!(
        BootParams::read_from_bytes(&zp).unwrap().hdr.as_bytes(),
        hdr.as_bytes()
    );
}

#[test]
fn zero_page_splits_high_addresses_into_ext_fields() {
    let mem = mem(MIB);
    let cfg = ZeroPageConfig {
        setup_header: BzImage::default().header(),
        cmdline_addr: GuestAddress(0x1_2345_6000),
        cmdline_size: 0,
        initrd: Some((GuestAddress(0x2_8000_0000), 0x1_0000_1000)),
        e820: &[],
        acpi_rsdp_addr: None,
    };
    write_zero_page(&mem, GuestAddress(0x7000), &cfg).unwrap();
    let zp = read(&mem, 0x7000, 4096);
    assert_eq!(u32_at(&zp, 0x228), 0x2345_6000);
    assert_eq!(u32_at(&zp, 0xc8), 1, "ext_cmd_line_ptr");
    assert_eq!(u32_at(&zp, 0x218), 0x8000_0000);
    assert_eq!(u32_at(&zp, 0xc0), 2, "ext_ramdisk_image");
    assert_eq!(u32_at(&zp, 0x21c), 0x1000);
    assert_eq!(u32_at(&zp, 0xc4), 1, "ext_ramdisk_size");
    assert_eq!(u64_at(&zp, 0x070), 0);
}

#[test]
fn zero_page_rejects_too_many_e820_entries_and_long_cmdline() {
    let mem = mem(MIB);
    let e820 = vec![E820Entry::default(); 129];
    let mut cfg = ZeroPageConfig {
        setup_header: BzImage::default().header(),
        cmdline_addr: GuestAddress(0x2_0000),
        cmdline_size: 10,
        initrd: None,
        e820: &e820,
        acpi_rsdp_addr: None,
    };
    assert!(matches!(
        write_zero_page(&mem, GuestAddress(0x7000), &cfg),
        Err(Error::TooManyE820Entries {
            count: 129,
            max: 128
        })
    ));
    cfg.e820 = &e820[..128];
    write_zero_page(&mem, GuestAddress(0x7000), &cfg).unwrap();
    cfg.cmdline_size = 2048;
    assert!(matches!(
        write_zero_page(&mem, GuestAddress(0x7000), &cfg),
        Err(Error::CmdlineTooLong {
            len: 2048,
            max: 2047
        })
    ));
    cfg.cmdline_size = 0;
    assert!(matches!(
        write_zero_page(&mem, GuestAddress(MIB - 100), &cfg),
        Err(Error::OutOfGuestMemory { .. })
    ));
}

#[test]
fn pvh_start_info_layout_matches_xen_abi() {
    let mem = mem(MIB);
    let memmap = e820_map();
    let cfg = PvhConfig {
        cmdline_addr: GuestAddress(0x2_0000),
        initrd: Some((GuestAddress(0x8_0000), 0x4321)),
        memmap: &memmap,
        rsdp_addr: Some(GuestAddress(0xe_0000)),
    };
    write_pvh_start_info(&mem, GuestAddress(0x6000), &cfg).unwrap();
    let si = read(&mem, 0x6000, 56);
    assert_eq!(u32_at(&si, 0), XEN_HVM_START_MAGIC_VALUE);
    assert_eq!(u32_at(&si, 0), 0x336e_c578);
    assert_eq!(u32_at(&si, 4), 1, "version");
    assert_eq!(u32_at(&si, 8), 0, "flags");
    assert_eq!(u32_at(&si, 12), 1, "nr_modules");
    let modlist = u64_at(&si, 16);
    assert_eq!(modlist, 0x6000 + 56);
    assert_eq!(u64_at(&si, 24), 0x2_0000, "cmdline_paddr");
    assert_eq!(u64_at(&si, 32), 0xe_0000, "rsdp_paddr");
    let memmap_paddr = u64_at(&si, 40);
    assert_eq!(memmap_paddr % 8, 0);
    assert_eq!(memmap_paddr, modlist + 32);
    assert_eq!(u32_at(&si, 48), 3, "memmap_entries");

    let m = read(&mem, modlist, 32);
    assert_eq!(u64_at(&m, 0), 0x8_0000);
    assert_eq!(u64_at(&m, 8), 0x4321);
    assert_eq!(u64_at(&m, 16), 0);
    let mm = read(&mem, memmap_paddr, 3 * 24);
    for (i, e) in memmap.iter().enumerate() {
        assert_eq!(u64_at(&mm, i * 24), { e.addr });
        assert_eq!(u64_at(&mm, i * 24 + 8), { e.size });
        assert_eq!(u32_at(&mm, i * 24 + 16), { e.type_ });
        assert_eq!(u32_at(&mm, i * 24 + 20), 0);
    }
}

#[test]
fn pvh_start_info_without_initrd_has_no_modules() {
    let mem = mem(MIB);
    let memmap = e820_map();
    let cfg = PvhConfig {
        cmdline_addr: GuestAddress(0x2_0000),
        initrd: None,
        memmap: &memmap,
        rsdp_addr: None,
    };
    write_pvh_start_info(&mem, GuestAddress(0x6004), &cfg).unwrap();
    let si = read(&mem, 0x6004, 56);
    assert_eq!(u32_at(&si, 12), 0);
    assert_eq!(u64_at(&si, 16), 0);
    assert_eq!(u64_at(&si, 32), 0);
    // 0x6004 + 56 = 0x603c, rounded up to 8.
    assert_eq!(u64_at(&si, 40), 0x6040);
    assert!(matches!(
        write_pvh_start_info(&mem, GuestAddress(MIB - 64), &cfg),
        Err(Error::OutOfGuestMemory { .. })
    ));
}
