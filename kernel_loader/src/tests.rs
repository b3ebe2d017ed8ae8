//! Behavioural tests for the whole crate, on synthetic images.

use vm_memory::{Bytes, GuestAddress};
use zerocopy::{FromBytes, IntoBytes};

use crate::bootparam::{
    CAN_USE_HEAP, LOADED_HIGH, SetupHeader, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64, hdr_off,
};
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

// ---------------------------------------------------------------- bzImage

#[test]
fn bzimage_relocatable_loads_at_pref_address_with_entry_plus_0x200() {
    let mem = mem(64 * MIB);
    let bz = BzImage::default();
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.kernel_start, GuestAddress(0x100_0000));
    assert_eq!(k.entry_addr, GuestAddress(0x100_0200));
    // init_size (2 MiB) is larger than the payload: it decides kernel_end.
    assert_eq!(k.kernel_end, GuestAddress(0x100_0000 + 0x20_0000));
    assert_eq!(read(&mem, 0x100_0000, bz.payload_len), bz.payload());
    assert_eq!(k.setup_header, bz.header());
    assert_eq!(k.cmdline_max, 2047);
    assert_eq!(k.initrd_addr_max, 0x7fff_ffff);
}

#[test]
fn bzimage_kernel_end_uses_payload_when_larger_than_init_size() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        init_size: 0x1000,
        ..Default::default()
    };
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!(
        k.kernel_end,
        GuestAddress(0x100_0000 + bz.payload_len as u64)
    );
}

#[test]
fn bzimage_non_relocatable_loads_at_1mib() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        relocatable_kernel: 0,
        pref_address: 0x123_4567, // ignored when not relocatable
        ..Default::default()
    };
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!(k.kernel_start, GuestAddress(0x10_0000));
    assert_eq!(k.entry_addr, GuestAddress(0x10_0200));
    assert_eq!(read(&mem, 0x10_0000, bz.payload_len), bz.payload());
}

#[test]
fn bzimage_setup_sects_zero_means_four() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        setup_sects: 0,
        ..Default::default()
    };
    let img = bz.build();
    assert_eq!(bz.payload_offset(), 5 * 512);
    load_kernel(&mem, &img).unwrap();
    assert_eq!(read(&mem, 0x100_0000, 16), img[5 * 512..5 * 512 + 16]);
}

#[test]
fn bzimage_truncated_header_is_rejected_at_several_lengths() {
    let mem = mem(64 * MIB);
    let img = BzImage::default().build();
    for len in [0x200, 0x201, 0x206, 0x230, 0x26b] {
        match load_kernel(&mem, &img[..len]) {
            Err(Error::HeaderTruncated { len: l, .. }) => assert_eq!(l, len),
            other => panic!("len {len:#x}: {other:?}"),
        }
    }
    // Too short to carry any signature: not recognisable at all.
    for len in [0, 1, 4, 0x100, 0x1fe] {
        assert!(
            matches!(load_kernel(&mem, &img[..len]), Err(Error::UnknownFormat)),
            "len {len:#x}"
        );
    }
}

#[test]
fn bzimage_truncated_before_payload_is_rejected() {
    let mem = mem(64 * MIB);
    let bz = BzImage::default();
    let img = bz.build();
    for len in [0x26c, 0x400, bz.payload_offset() - 1, bz.payload_offset()] {
        match load_kernel(&mem, &img[..len]) {
            Err(Error::Truncated {
                setup_sects,
                payload_offset,
                len: l,
            }) => {
                assert_eq!((setup_sects, payload_offset, l), (4, 0xa00, len));
            }
            other => panic!("len {len:#x}: {other:?}"),
        }
    }
}

#[test]
fn bzimage_setup_sects_past_eof_is_rejected_with_an_actionable_message() {
    let mem = mem(64 * MIB);
    let mut img = BzImage::default().build();
    img.truncate(4096);
    img[hdr_off!(setup_sects)] = 33;
    let err = load_kernel(&mem, &img).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                setup_sects: 33,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("33 setup sectors") && msg.contains("4096 bytes"),
        "{msg}"
    );
}

#[test]
fn bzimage_bad_boot_flag_is_rejected() {
    let mem = mem(64 * MIB);
    let mut img = BzImage::default().build();
    img[0x1fe] = 0x55;
    img[0x1ff] = 0x55;
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::BadBootFlag { found: 0x5555 })
    ));
}

#[test]
fn bzimage_bad_hdrs_magic_is_rejected() {
    let mem = mem(64 * MIB);
    let mut img = BzImage::default().build();
    img[0x202..0x206].copy_from_slice(b"HdrX");
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::BadHeaderMagic { found }) if &found == b"HdrX"
    ));
}

#[test]
fn bzimage_protocol_2_11_is_rejected_and_2_12_accepted() {
    let mem = mem(64 * MIB);
    let old = BzImage {
        version: 0x020b,
        ..Default::default()
    };
    let err = load_kernel(&mem, &old.build()).unwrap_err();
    assert!(matches!(err, Error::ProtocolTooOld { version: 0x020b }));
    assert!(err.to_string().contains("2.11"), "{err}");
    let ok = BzImage {
        version: 0x020c,
        jump_disp: 0x66,
        ..Default::default()
    };
    load_kernel(&mem, &ok.build()).unwrap();
}

#[test]
fn bzimage_fields_past_declared_header_end_are_zeroed() {
    let mem = mem(64 * MIB);
    // Protocol 2.12 headers end at 0x268: kernel_info_offset is setup code.
    let bz = BzImage {
        version: 0x020c,
        jump_disp: 0x66,
        ..Default::default()
    };
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!({ k.setup_header.kernel_info_offset }, 0);
    assert_eq!({ k.setup_header.init_size }, bz.init_size);
}

#[test]
fn bzimage_without_xlf_kernel_64_is_rejected() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        xloadflags: XLF_CAN_BE_LOADED_ABOVE_4G,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &bz.build()),
        Err(Error::NotA64BitKernel { xloadflags: 2 })
    ));
}

#[test]
fn bzimage_huge_init_size_reports_kernel_does_not_fit() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        init_size: u32::MAX,
        ..Default::default()
    };
    let err = load_kernel(&mem, &bz.build()).unwrap_err();
    match err {
        Error::KernelDoesNotFit { start, needed_end } => {
            assert_eq!(start, 0x100_0000);
            assert_eq!(needed_end, 0x100_0000 + u64::from(u32::MAX));
        }
        ref other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("--mem"));
    // Nothing was written.
    assert_eq!(read(&mem, 0x100_0000, 16), vec![0; 16]);
}

#[test]
fn bzimage_too_little_guest_memory_reports_kernel_does_not_fit() {
    let mem = mem(17 * MIB); // kernel needs [16 MiB, 18 MiB)
    assert!(matches!(
        load_kernel(&mem, &BzImage::default().build()),
        Err(Error::KernelDoesNotFit {
            needed_end: 0x120_0000,
            ..
        })
    ));
}

#[test]
fn bzimage_load_address_overflow_is_an_error_not_a_panic() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        pref_address: 0xffff_ffff_ff00_0000,
        kernel_alignment: 0x100_0000,
        init_size: u32::MAX,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &bz.build()),
        Err(Error::KernelAddressOverflow { .. })
    ));
}

#[test]
fn bzimage_bad_alignment_is_rejected() {
    let mem = mem(64 * MIB);
    let misaligned = BzImage {
        pref_address: 0x100_1000,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &misaligned.build()),
        Err(Error::MisalignedLoadAddress { .. })
    ));
    for alignment in [0, 3, 0x30_0000] {
        let bad = BzImage {
            kernel_alignment: alignment,
            ..Default::default()
        };
        assert!(matches!(
            load_kernel(&mem, &bad.build()),
            Err(Error::InvalidKernelAlignment { .. })
        ));
    }
}

#[test]
fn bzimage_load_address_below_1mib_is_rejected() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        pref_address: 0,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &bz.build()),
        Err(Error::LoadAddressBelow1MiB { addr: 0 })
    ));
}

#[test]
fn bzimage_initrd_addr_max_defaults_and_above_4g() {
    let mem = mem(64 * MIB);
    let zero = BzImage {
        initrd_addr_max: 0,
        ..Default::default()
    };
    assert_eq!(
        load_kernel(&mem, &zero.build()).unwrap().initrd_addr_max,
        0x37ff_ffff
    );
    let high = BzImage {
        xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
        ..Default::default()
    };
    assert_eq!(
        load_kernel(&mem, &high.build()).unwrap().initrd_addr_max,
        u64::MAX
    );
}

// ---------------------------------------------------------------- ELF

#[test]
fn elf_with_pvh_note_uses_pvh_entry() {
    let mem = mem(64 * MIB);
    let elf = Elf {
        pvh_desc: Some(0x100_0100u32.to_le_bytes().to_vec()),
        ..Default::default()
    };
    let k = load_kernel(&mem, &elf.build()).unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(k.entry_addr, GuestAddress(0x100_0100));
    assert_eq!(k.initrd_addr_max, u64::MAX);
    assert_eq!(read(&mem, 0x100_0000, elf.filesz as usize), elf.segment());
}

#[test]
fn elf_with_8_byte_pvh_note_is_accepted() {
    let mem = mem(64 * MIB);
    let elf = Elf {
        pvh_desc: Some(0x100_0180u64.to_le_bytes().to_vec()),
        ..Default::default()
    };
    let k = load_kernel(&mem, &elf.build()).unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(k.entry_addr, GuestAddress(0x100_0180));
}

#[test]
fn elf_pvh_note_with_bad_descriptor_is_rejected() {
    let mem = mem(64 * MIB);
    let short = Elf {
        pvh_desc: Some(vec![1, 2]),
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &short.build()),
        Err(Error::InvalidPvhNote { descsz: 2 })
    ));
    let high = Elf {
        pvh_desc: Some((1u64 << 32).to_le_bytes().to_vec()),
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &high.build()),
        Err(Error::PvhEntryAbove4G { .. })
    ));
}

#[test]
fn elf_without_pvh_note_uses_linux64_e_entry_and_zero_fills_bss() {
    let mem = mem(64 * MIB);
    let elf = Elf::default();
    mem.write_slice(&[0xff; 0x2000], GuestAddress(0x100_0000))
        .unwrap();
    let k = load_kernel(&mem, &elf.build()).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry_addr, GuestAddress(0x100_0000));
    assert_eq!(k.kernel_start, GuestAddress(0x100_0000));
    assert_eq!(k.kernel_end, GuestAddress(0x100_2000));
    assert_eq!(k.cmdline_max, 2048);
    assert_eq!(k.initrd_addr_max, 0x37ff_ffff);
    assert_eq!(read(&mem, 0x100_0000, 0x300), elf.segment());
    assert_eq!(read(&mem, 0x100_0300, 0x1d00), vec![0; 0x1d00]);

    let h = k.setup_header;
    assert_eq!({ h.boot_flag }, 0xaa55);
    assert_eq!({ h.header }, u32::from_le_bytes(*b"HdrS"));
    assert_eq!({ h.version }, 0x020f);
    assert_eq!({ h.kernel_alignment }, 0x100_0000);
    assert_eq!({ h.type_of_loader }, 0xff);
    assert_eq!({ h.cmdline_size }, 2048);
    assert_ne!(h.loadflags & LOADED_HIGH, 0);
}

#[test]
fn elf_segment_beyond_file_is_rejected() {
    let mem = mem(64 * MIB);
    let mut img = Elf::default().build();
    img.truncate(ELF_DATA_OFFSET + 0x100);
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::ElfSegmentOutOfFile { index: 0, .. })
    ));
    // p_offset + p_filesz overflowing u64 is the same error, not a panic.
    let mut img = Elf::default().build();
    img[phdr_field(0, 8)..phdr_field(0, 16)].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::ElfSegmentOutOfFile { .. })
    ));
}

#[test]
fn elf_segment_beyond_memory_is_rejected() {
    let mem = mem(64 * MIB);
    let elf = Elf {
        paddr: 64 * MIB - 0x1000,
        e_entry: 64 * MIB - 0x1000,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &elf.build()),
        Err(Error::KernelDoesNotFit {
            start: 0x3fff000,
            needed_end: 0x4001000
        })
    ));
    let huge = Elf {
        memsz: u64::MAX,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &huge.build()),
        Err(Error::KernelAddressOverflow { .. })
    ));
}

#[test]
fn elf_filesz_larger_than_memsz_is_rejected() {
    let mem = mem(64 * MIB);
    let elf = Elf {
        memsz: 0x100,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &elf.build()),
        Err(Error::ElfSegmentFileszExceedsMemsz { index: 0, .. })
    ));
}

#[test]
fn elf_absurd_program_header_table_is_rejected() {
    let mem = mem(64 * MIB);
    let mut img = Elf::default().build();
    img[56..58].copy_from_slice(&0xffffu16.to_le_bytes()); // e_phnum
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::ElfTooManyProgramHeaders { phnum: 0xffff, .. })
    ));
    let mut img = Elf::default().build();
    img[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes()); // e_phoff
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::ElfProgramHeadersOutOfFile { .. })
    ));
    let mut img = Elf::default().build();
    img[54..56].copy_from_slice(&8u16.to_le_bytes()); // e_phentsize
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::ElfBadPhentsize { phentsize: 8 })
    ));
    let mut img = Elf::default().build();
    img[56..58].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::ElfNoLoadableSegments)
    ));
}

#[test]
fn elf_wrong_class_machine_or_type_is_rejected() {
    let mem = mem(64 * MIB);
    let e32 = Elf {
        class: 1,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &e32.build()),
        Err(Error::ElfNot64BitLittleEndian { class: 1, data: 1 })
    ));
    let arm = Elf {
        machine: 183,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &arm.build()),
        Err(Error::ElfWrongMachine { machine: 183 })
    ));
    let dyn_ = Elf {
        e_type: 3,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &dyn_.build()),
        Err(Error::ElfNotExecutable { e_type: 3 })
    ));
    assert!(matches!(
        load_kernel(&mem, b"\x7fELF\x02\x01"),
        Err(Error::ElfHeaderTruncated { len: 6, .. })
    ));
}

#[test]
fn elf_malformed_note_is_rejected() {
    let mem = mem(64 * MIB);
    let mut img = Elf::default().build();
    let notes_off = phdr_field(2, 0);
    // GNU note's namesz: absurdly large.
    img[notes_off..notes_off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::ElfNoteMalformed {
            index: 1,
            offset: 0
        })
    ));
}

#[test]
fn elf_entry_outside_kernel_is_rejected() {
    let mem = mem(64 * MIB);
    let elf = Elf {
        e_entry: 0xffff_ffff_8100_0000, // a virtual address
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &elf.build()),
        Err(Error::EntryOutsideKernel { .. })
    ));
}

#[test]
fn unknown_format_is_rejected() {
    let mem = mem(MIB);
    assert!(matches!(load_kernel(&mem, b""), Err(Error::UnknownFormat)));
    assert!(matches!(
        load_kernel(&mem, &[0x4d; 8192]),
        Err(Error::UnknownFormat)
    ));
    assert!(matches!(
        load_kernel(&mem, b"#!/bin/sh\necho not a kernel\n"),
        Err(Error::UnknownFormat)
    ));
}

// ---------------------------------------------------------------- initrd

#[test]
fn initrd_is_placed_page_aligned_as_high_as_possible() {
    let mem = mem(64 * MIB);
    let initrd = pattern(10_000, 1);
    let at = load_initrd(
        &mem,
        &initrd,
        GuestAddress(0x20_0000),
        GuestAddress(64 * MIB - 1),
    )
    .unwrap();
    // 10_000 bytes ending at or below 64 MiB - 1, page aligned.
    assert_eq!(at, GuestAddress((64 * MIB - 10_000) & !0xfff));
    assert_eq!(read(&mem, at.0, initrd.len()), initrd);
}

#[test]
fn initrd_respects_highest() {
    let mem = mem(64 * MIB);
    let at = load_initrd(&mem, &[1; 4096], GuestAddress(0), GuestAddress(0x37ff_ffff)).unwrap();
    assert!(at.0 + 4096 - 1 <= 0x37ff_ffff);
    let at = load_initrd(&mem, &[1; 4096], GuestAddress(0), GuestAddress(0x10_0fff)).unwrap();
    assert_eq!(at, GuestAddress(0x10_0000));
    let at = load_initrd(&mem, &[1; 4097], GuestAddress(0), GuestAddress(0x10_0fff)).unwrap();
    assert_eq!(at, GuestAddress(0xf_f000));
}

#[test]
fn initrd_above_guest_memory_window_uses_top_of_memory() {
    let mem = mem(64 * MIB);
    let at = load_initrd(&mem, &[7; 100], GuestAddress(0), GuestAddress(u64::MAX)).unwrap();
    assert_eq!(at, GuestAddress(64 * MIB - 0x1000));
}

#[test]
fn initrd_skips_holes_in_guest_memory() {
    let mem = Mem::from_ranges(&[
        (GuestAddress(0), (16 * MIB) as usize),
        (GuestAddress(32 * MIB), 0x1000),
    ])
    .unwrap();
    let at = load_initrd(&mem, &[7; 0x2000], GuestAddress(0), GuestAddress(u64::MAX)).unwrap();
    assert_eq!(at, GuestAddress(16 * MIB - 0x2000));
}

#[test]
fn initrd_that_does_not_fit_is_rejected() {
    let mem = mem(64 * MIB);
    let big = vec![0u8; 0x3000];
    let err = load_initrd(&mem, &big, GuestAddress(0x10_0000), GuestAddress(0x10_1fff));
    assert!(matches!(
        err,
        Err(Error::InitrdDoesNotFit {
            size: 0x3000,
            lowest: GuestAddress(0x10_0000),
            highest: GuestAddress(0x10_1fff),
        })
    ));
    // Lowest above highest, and a window entirely outside memory.
    assert!(load_initrd(&mem, &[1], GuestAddress(0x20_0000), GuestAddress(0x10_0000)).is_err());
    assert!(matches!(
        load_initrd(&mem, &[1], GuestAddress(128 * MIB), GuestAddress(u64::MAX)),
        Err(Error::InitrdDoesNotFit { .. })
    ));
}

#[test]
fn empty_initrd_is_rejected() {
    let mem = mem(MIB);
    assert!(matches!(
        load_initrd(&mem, &[], GuestAddress(0), GuestAddress(MIB - 1)),
        Err(Error::InitrdEmpty)
    ));
}

// ---------------------------------------------------------------- cmdline

#[test]
fn cmdline_is_written_with_nul_terminator() {
    let mem = mem(MIB);
    mem.write_slice(&[0xff; 32], GuestAddress(0x2_0000))
        .unwrap();
    write_cmdline(&mem, GuestAddress(0x2_0000), "console=ttyS0", 13).unwrap();
    assert_eq!(read(&mem, 0x2_0000, 14), b"console=ttyS0\0");
}

#[test]
fn cmdline_too_long_is_rejected() {
    let mem = mem(MIB);
    let err = write_cmdline(&mem, GuestAddress(0x2_0000), "console=ttyS0", 12).unwrap_err();
    assert!(matches!(err, Error::CmdlineTooLong { len: 13, max: 12 }));
    assert_eq!(read(&mem, 0x2_0000, 1), [0]);
}

#[test]
fn cmdline_with_nul_is_rejected() {
    let mem = mem(MIB);
    assert!(matches!(
        write_cmdline(&mem, GuestAddress(0x2_0000), "a\0b", 100),
        Err(Error::CmdlineContainsNul { position: 1 })
    ));
}

#[test]
fn cmdline_outside_guest_memory_is_rejected() {
    let mem = mem(MIB);
    assert!(matches!(
        write_cmdline(&mem, GuestAddress(MIB - 4), "abcd", 100),
        Err(Error::OutOfGuestMemory { .. })
    ));
    assert!(matches!(
        write_cmdline(&mem, GuestAddress(u64::MAX), "abcd", 100),
        Err(Error::OutOfGuestMemory { .. })
    ));
}

// ---------------------------------------------------------------- zero page

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

// ---------------------------------------------------------------- PVH

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

// ---------------------------------------------------------------- robustness

/// Mutates `base` in ways aimed at header fields and sizes.
fn mutate(rng: &mut Rng, base: &[u8], hot: &[usize]) -> Vec<u8> {
    let mut img = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 => {
                let i = rng.below(img.len());
                if let Some(b) = img.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            1 | 2 => {
                // Overwrite a header field with an extreme or random value.
                let off = hot[rng.below(hot.len())];
                let v: u64 = match rng.below(5) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => 1 << (rng.below(64)),
                    3 => rng.next() >> rng.below(64),
                    _ => rng.next(),
                };
                let width = [1, 2, 4, 8][rng.below(4)];
                for (k, byte) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(b) = img.get_mut(off + k) {
                        *b = *byte;
                    }
                }
            }
            3 => {
                let len = rng.below(img.len() + 1);
                img.truncate(len);
            }
            4 => {
                let extra = rng.below(64);
                img.extend((0..extra).map(|_| rng.next() as u8));
            }
            _ => {
                let i = rng.below(img.len());
                if let Some(b) = img.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
    }
    img
}

#[test]
fn mutated_and_truncated_images_never_panic() {
    let mem = mem(20 * MIB);
    let bz = BzImage {
        init_size: 0x10_0000,
        ..Default::default()
    }
    .build();
    let bz_hot: Vec<usize> = (0x1f1..0x26c).collect();
    let elf = Elf {
        pvh_desc: Some(0x100_0010u32.to_le_bytes().to_vec()),
        ..Default::default()
    }
    .build();
    let elf_hot: Vec<usize> = (0..ELF_DATA_OFFSET).collect();

    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for round in 0..6000 {
        let (base, hot) = if round % 2 == 0 {
            (&bz, &bz_hot)
        } else {
            (&elf, &elf_hot)
        };
        let img = mutate(&mut rng, base, hot);
        match load_kernel(&mem, &img) {
            Ok(k) => {
                ok += 1;
                assert!(k.kernel_start <= k.entry_addr && k.entry_addr < k.kernel_end);
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("robustness: {ok} loaded, {err} rejected");
    assert!(ok > 100 && err > 100, "ok {ok} err {err}");
}

// ---------------------------------------------------------------- real kernel

/// Loads the lab's Debian kernel if another job has built it; skipped otherwise.
#[test]
fn real_debian_bzimage_loads_when_present() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/lab/guest/vmlinuz");
    let Ok(image) = std::fs::read(path) else {
        eprintln!("skipping: {path} not present");
        return;
    };
    let mem = mem(512 * MIB);
    let k = load_kernel(&mem, &image).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry_addr.0, k.kernel_start.0 + 0x200);
    assert!({ k.setup_header.version } >= 0x020c);
    assert!(k.cmdline_max >= 255);
}

/// Loads the lab's uncompressed Debian `vmlinux` if present; skipped otherwise.
#[test]
fn real_debian_vmlinux_loads_when_present() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/lab/guest/vmlinux");
    let Ok(image) = std::fs::read(path) else {
        eprintln!("skipping: {path} not present");
        return;
    };
    let mem = mem(512 * MIB);
    let k = load_kernel(&mem, &image).unwrap();
    eprintln!(
        "vmlinux: {:?} entry {:#x} kernel [{:#x}, {:#x})",
        k.protocol, k.entry_addr.0, k.kernel_start.0, k.kernel_end.0
    );
    assert!(k.kernel_start <= k.entry_addr && k.entry_addr < k.kernel_end);
    assert_eq!(k.cmdline_max, 2048);
}

#[test]
fn error_is_send_sync_and_static_for_use_in_other_error_types() {
    fn assert_bounds<T: std::error::Error + Send + Sync + 'static>() {}
    assert_bounds::<Error>();
}

// ---------------------------------------------------------------- ImageSource

/// A source over a slice that records what the loader reads into buffers and what it has
/// copied to guest memory, as (offset, length).
struct Recording<'a> {
    image: &'a [u8],
    reads: std::cell::RefCell<Vec<(usize, usize)>>,
    copies: std::cell::RefCell<Vec<(usize, usize)>>,
}

impl<'a> Recording<'a> {
    fn new(image: &'a [u8]) -> Self {
        Recording {
            image,
            reads: Default::default(),
            copies: Default::default(),
        }
    }
}

impl ImageSource for Recording<'_> {
    fn len(&self) -> usize {
        self.image.len()
    }
    fn read(&self, start: usize, len: usize) -> Result<Vec<u8>, Error> {
        self.reads.borrow_mut().push((start, len));
        self.image.read(start, len)
    }
    fn copy_to_guest<M: vm_memory::GuestMemory>(
        &self,
        mem: &M,
        what: &'static str,
        addr: GuestAddress,
        start: usize,
        len: usize,
    ) -> Result<(), Error> {
        self.copies.borrow_mut().push((start, len));
        self.image.copy_to_guest(mem, what, addr, start, len)
    }
}

#[test]
fn a_source_gives_headers_and_notes_to_buffers_and_the_kernel_straight_to_guest_memory() {
    let elf = Elf {
        pvh_desc: Some(0x100_0100u32.to_le_bytes().to_vec()),
        ..Default::default()
    };
    let image = elf.build();
    let mem_a = mem(64 * MIB);
    let source = Recording::new(&image);
    let k = load_kernel_from(&mem_a, &source).unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(read(&mem_a, 0x100_0000, elf.filesz as usize), elf.segment());
    // Only the first bytes (format detection), the headers and the notes were read into
    // buffers.
    assert_eq!(
        *source.reads.borrow(),
        vec![(0, 620), (0, 64), (64, 112), (176, 56)]
    );
    assert_eq!(
        *source.copies.borrow(),
        vec![(ELF_DATA_OFFSET, elf.filesz as usize)]
    );

    let bz = BzImage::default();
    let image = bz.build();
    let mem_b = mem(64 * MIB);
    let source = Recording::new(&image);
    let from_source = load_kernel_from(&mem_b, &source).unwrap();
    let mem_c = mem(64 * MIB);
    let from_slice = load_kernel(&mem_c, &image).unwrap();
    assert_eq!(format!("{from_source:?}"), format!("{from_slice:?}"));
    assert_eq!(
        *source.copies.borrow(),
        vec![(bz.payload_offset(), image.len() - bz.payload_offset())]
    );
    assert!(source.reads.borrow().iter().all(|&(_, len)| len <= 0x300));
    let load = from_slice.kernel_start.0;
    let payload = bz.payload();
    assert_eq!(read(&mem_b, load, payload.len()), payload);
}
