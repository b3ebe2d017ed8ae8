//! Loading ELF kernels (vmlinux): the PVH note or the 64-bit Linux entry, segments
//! and headers refused when malformed, and an image of no known format.

use vm_memory::{Bytes, GuestAddress};

use crate::bootparam::LOADED_HIGH;
use crate::test_util::*;
use crate::*;

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
