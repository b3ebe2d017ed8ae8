//! The ELF64 `vmlinux` loader, including Xen PVH entry discovery.
//!
//! Validates the ELF header and program header table against the file,
//! copies every `PT_LOAD` segment to its physical address (`p_paddr`),
//! zero-fills the part of each segment beyond its file contents, and looks
//! through `PT_NOTE` segments for a `Xen` / `XEN_ELFNOTE_PHYS32_ENTRY` note.
//! With that note the kernel is started through PVH at the note's address;
//! without it, through the 64-bit Linux protocol at `e_entry`.
//!
//! All segments are validated before anything is written to guest memory.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use vm_memory::{GuestAddress, GuestMemory};

use crate::bootparam::{
    BOOT_FLAG_MAGIC, HDRS_MAGIC, LOADED_HIGH, LOADER_TYPE_UNDEFINED, SetupHeader, XLF_KERNEL_64,
};
use crate::bzimage::DEFAULT_INITRD_ADDR_MAX;
use crate::{BootProtocol, Error, ImageSource, LoadedKernel, mem};

const ELFMAG: &[u8; 4] = b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Most program headers accepted; a vmlinux has about five.
pub(crate) const MAX_PHNUM: u16 = 64;
/// Command line limit used for ELF kernels (Linux's COMMAND_LINE_SIZE on x86).
pub(crate) const ELF_CMDLINE_MAX: usize = 2048;
/// `initrd_addr_max` written into the synthesized setup header.
const ELF_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;
const _: () = assert!(ELF_INITRD_ADDR_MAX as u64 == DEFAULT_INITRD_ADDR_MAX);
/// `cmdline_size` written into the synthesized setup header.
const ELF_CMDLINE_SIZE: u32 = 2048;
const _: () = assert!(ELF_CMDLINE_SIZE as usize == ELF_CMDLINE_MAX);
/// `kernel_alignment` written into the synthesized setup header.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Boot protocol version claimed by the synthesized setup header (2.15).
const ELF_PROTOCOL_VERSION: u16 = 0x020f;

/// Xen note name, including its NUL.
const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";
/// `XEN_ELFNOTE_PHYS32_ENTRY`: 32-bit physical PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Size of an ELF note header (namesz, descsz, type).
const NOTE_HEADER: usize = 12;

/// `Elf64_Ehdr`.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Elf64Ehdr {
    pub e_ident: [u8; 16],
    pub e_type: u16,
    pub e_machine: u16,
    pub e_version: u32,
    pub e_entry: u64,
    pub e_phoff: u64,
    pub e_shoff: u64,
    pub e_flags: u32,
    pub e_ehsize: u16,
    pub e_phentsize: u16,
    pub e_phnum: u16,
    pub e_shentsize: u16,
    pub e_shnum: u16,
    pub e_shstrndx: u16,
}
const _: () = assert!(size_of::<Elf64Ehdr>() == 64);

/// `Elf64_Phdr`.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Elf64Phdr {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}
const _: () = assert!(size_of::<Elf64Phdr>() == 56);

pub(crate) fn is_elf(image: &[u8]) -> bool {
    image.starts_with(ELFMAG)
}

/// Where a segment's file bytes lie in the image (start, size), bounds-checked against it.
fn segment_range(len: usize, index: usize, ph: &Elf64Phdr) -> Result<(usize, usize), Error> {
    let (offset, filesz) = (ph.p_offset, ph.p_filesz);
    let out_of_file = || Error::ElfSegmentOutOfFile {
        index,
        offset,
        filesz,
        len,
    };
    let start = usize::try_from(offset).map_err(|_| out_of_file())?;
    let size = usize::try_from(filesz).map_err(|_| out_of_file())?;
    let end = start.checked_add(size).ok_or_else(out_of_file)?;
    if end > len {
        return Err(out_of_file());
    }
    Ok((start, size))
}

/// The ELF header from `head`, the image's first bytes (`len` in all).
fn parse_ehdr(head: &[u8], len: usize) -> Result<Elf64Ehdr, Error> {
    let (ehdr, _) = Elf64Ehdr::read_from_prefix(head).map_err(|_| Error::ElfHeaderTruncated {
        needed: size_of::<Elf64Ehdr>(),
        len,
    })?;
    let class = ehdr.e_ident.get(EI_CLASS).copied().unwrap_or(0);
    let data = ehdr.e_ident.get(EI_DATA).copied().unwrap_or(0);
    if class != ELFCLASS64 || data != ELFDATA2LSB {
        return Err(Error::ElfNot64BitLittleEndian { class, data });
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(Error::ElfWrongMachine {
            machine: ehdr.e_machine,
        });
    }
    if ehdr.e_type != ET_EXEC {
        return Err(Error::ElfNotExecutable {
            e_type: ehdr.e_type,
        });
    }
    Ok(ehdr)
}

fn parse_phdrs<S: ImageSource + ?Sized>(
    image: &S,
    ehdr: &Elf64Ehdr,
) -> Result<Vec<Elf64Phdr>, Error> {
    let (phoff, phnum, phentsize) = (ehdr.e_phoff, ehdr.e_phnum, ehdr.e_phentsize);
    if phnum > MAX_PHNUM {
        return Err(Error::ElfTooManyProgramHeaders {
            phnum,
            max: MAX_PHNUM,
        });
    }
    if phnum == 0 {
        return Err(Error::ElfNoLoadableSegments);
    }
    if usize::from(phentsize) < size_of::<Elf64Phdr>() {
        return Err(Error::ElfBadPhentsize { phentsize });
    }
    let out_of_file = || Error::ElfProgramHeadersOutOfFile {
        phoff,
        phnum,
        phentsize,
        len: image.len(),
    };
    // phnum <= 64 and phentsize <= 65535: the product cannot overflow.
    let table_len = usize::from(phnum).saturating_mul(usize::from(phentsize));
    let table_start = usize::try_from(phoff).map_err(|_| out_of_file())?;
    let table_end = table_start.checked_add(table_len).ok_or_else(out_of_file)?;
    if table_end > image.len() {
        return Err(out_of_file());
    }
    let table = image.read(table_start, table_len)?;

    table
        .chunks_exact(usize::from(phentsize))
        .map(|entry| {
            Elf64Phdr::read_from_prefix(entry)
                .map(|(ph, _)| ph)
                .map_err(|_| out_of_file())
        })
        .collect()
}

/// Searches one PT_NOTE segment's bytes for the PVH entry note.
fn find_pvh_note(notes: &[u8], index: usize) -> Result<Option<u64>, Error> {
    let malformed = |offset| Error::ElfNoteMalformed { index, offset };
    let align4 = |x: usize| x.checked_add(3).map(|v| v & !3);
    let mut off = 0usize;
    // Each iteration advances by at least NOTE_HEADER bytes.
    while let Some(hdr) = off
        .checked_add(NOTE_HEADER)
        .and_then(|end| notes.get(off..end))
    {
        let mut words = hdr
            .chunks_exact(4)
            .map(|b| b.try_into().map(u32::from_le_bytes).unwrap_or(0));
        let mut word = || words.next().unwrap_or(0);
        let (namesz, descsz, ntype) = (word(), word(), word());
        let name_start = off.checked_add(NOTE_HEADER).ok_or_else(|| malformed(off))?;
        let name_end = name_start
            .checked_add(namesz as usize)
            .ok_or_else(|| malformed(off))?;
        let desc_start = align4(name_end).ok_or_else(|| malformed(off))?;
        let desc_end = desc_start
            .checked_add(descsz as usize)
            .ok_or_else(|| malformed(off))?;
        let name = notes
            .get(name_start..name_end)
            .ok_or_else(|| malformed(off))?;
        let desc = notes
            .get(desc_start..desc_end)
            .ok_or_else(|| malformed(off))?;

        if name == XEN_NOTE_NAME && ntype == XEN_ELFNOTE_PHYS32_ENTRY {
            let entry = match desc.len() {
                4 => desc.try_into().ok().map(u32::from_le_bytes).map(u64::from),
                8 => desc.try_into().ok().map(u64::from_le_bytes),
                _ => None,
            }
            .ok_or(Error::InvalidPvhNote { descsz })?;
            if entry > u64::from(u32::MAX) {
                return Err(Error::PvhEntryAbove4G { entry });
            }
            return Ok(Some(entry));
        }
        off = match align4(desc_end) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(None)
}

/// The setup header handed to `write_zero_page` for an ELF kernel, which has
/// none of its own: just enough for the kernel to accept `boot_params`.
pub(crate) fn synthesized_setup_header() -> SetupHeader {
    SetupHeader {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        version: ELF_PROTOCOL_VERSION,
        type_of_loader: LOADER_TYPE_UNDEFINED,
        loadflags: LOADED_HIGH,
        kernel_alignment: ELF_KERNEL_ALIGNMENT,
        xloadflags: XLF_KERNEL_64,
        initrd_addr_max: ELF_INITRD_ADDR_MAX,
        cmdline_size: ELF_CMDLINE_SIZE,
        ..SetupHeader::default()
    }
}

pub(crate) fn load<M: GuestMemory, S: ImageSource + ?Sized>(
    mem: &M,
    image: &S,
) -> Result<LoadedKernel, Error> {
    let head = image.read(0, image.len().min(size_of::<Elf64Ehdr>()))?;
    let ehdr = parse_ehdr(&head, image.len())?;
    let phdrs = parse_phdrs(image, &ehdr)?;

    // Validation pass: nothing is written until every segment checks out.
    let mut span: Option<(u64, u64)> = None;
    let mut pvh_entry = None;
    for (index, ph) in phdrs.iter().enumerate() {
        match ph.p_type {
            PT_LOAD => {
                segment_range(image.len(), index, ph)?;
                let (paddr, filesz, memsz) = (ph.p_paddr, ph.p_filesz, ph.p_memsz);
                if filesz > memsz {
                    return Err(Error::ElfSegmentFileszExceedsMemsz {
                        index,
                        filesz,
                        memsz,
                    });
                }
                if memsz == 0 {
                    continue;
                }
                let end = paddr
                    .checked_add(memsz)
                    .ok_or(Error::KernelAddressOverflow {
                        start: paddr,
                        size: memsz,
                    })?;
                if !mem::range_in_memory(mem, GuestAddress(paddr), memsz) {
                    return Err(Error::KernelDoesNotFit {
                        start: paddr,
                        needed_end: end,
                    });
                }
                span = Some(match span {
                    None => (paddr, end),
                    Some((lo, hi)) => (lo.min(paddr), hi.max(end)),
                });
            }
            PT_NOTE if pvh_entry.is_none() => {
                let (start, size) = segment_range(image.len(), index, ph)?;
                pvh_entry = find_pvh_note(&image.read(start, size)?, index)?;
            }
            _ => {}
        }
    }
    let (start, end) = span.ok_or(Error::ElfNoLoadableSegments)?;

    let (protocol, entry, initrd_addr_max) = match pvh_entry {
        Some(entry) => (BootProtocol::Pvh, entry, u64::MAX),
        None => (BootProtocol::Linux64, ehdr.e_entry, DEFAULT_INITRD_ADDR_MAX),
    };
    if !(start..end).contains(&entry) {
        return Err(Error::EntryOutsideKernel { entry, start, end });
    }

    // Copy pass.
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let (start, size) = segment_range(image.len(), index, ph)?;
        let paddr = ph.p_paddr;
        image.copy_to_guest(mem, "kernel segment", GuestAddress(paddr), start, size)?;
        // Validated above: paddr + memsz does not overflow and filesz <= memsz,
        // so neither saturating operation saturates.
        let bss = ph.p_memsz.saturating_sub(ph.p_filesz);
        if bss > 0 {
            let bss_start = GuestAddress(paddr.saturating_add(ph.p_filesz));
            mem::zero(mem, "kernel segment", bss_start, bss)?;
        }
    }

    Ok(LoadedKernel {
        protocol,
        entry_addr: GuestAddress(entry),
        kernel_start: GuestAddress(start),
        kernel_end: GuestAddress(end),
        setup_header: synthesized_setup_header(),
        initrd_addr_max,
        cmdline_max: ELF_CMDLINE_MAX,
    })
}
