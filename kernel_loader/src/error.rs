//! The crate's single error type.
//!
//! Every way loading can fail has its own variant carrying the numbers a user
//! needs to understand and fix the problem (sizes, offsets, addresses).

use vm_memory::{GuestAddress, GuestMemoryError};

/// Everything that can go wrong while loading a kernel or writing boot data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- format detection ----
    #[error(
        "kernel image format not recognised: expected a bzImage \
         (\"HdrS\" at offset 0x202) or an uncompressed ELF64 vmlinux (\"\\x7fELF\" at offset 0)"
    )]
    UnknownFormat,

    // ---- bzImage ----
    #[error(
        "kernel image is truncated: a bzImage setup header needs {needed} bytes but the file has {len} bytes"
    )]
    HeaderTruncated { needed: usize, len: usize },
    #[error("not a bootable bzImage: boot_flag at offset 0x1fe is {found:#06x}, expected 0xaa55")]
    BadBootFlag { found: u16 },
    #[error(
        "not a Linux bzImage: boot sector signature present but the \"HdrS\" magic at offset 0x202 \
         is missing (found {found:02x?}); this looks like a zImage or a non-Linux boot sector"
    )]
    BadHeaderMagic { found: [u8; 4] },
    #[error(
        "kernel boot protocol {}.{:02} is too old: 2.12 or newer (Linux 3.8+) is required for the \
         64-bit entry point",
        version >> 8,
        version & 0xff
    )]
    ProtocolTooOld { version: u16 },
    #[error(
        "kernel is not a 64-bit kernel: XLF_KERNEL_64 is not set in xloadflags ({xloadflags:#06x}); \
         build or use an x86_64 kernel"
    )]
    NotA64BitKernel { xloadflags: u16 },
    #[error(
        "kernel image is truncated: setup header claims {setup_sects} setup sectors, so the \
         protected-mode payload starts at byte {payload_offset}, but the file has {len} bytes"
    )]
    Truncated {
        setup_sects: u8,
        payload_offset: usize,
        len: usize,
    },
    #[error(
        "kernel header is invalid: kernel_alignment {alignment:#x} is not a non-zero power of two"
    )]
    InvalidKernelAlignment { alignment: u32 },
    #[error(
        "kernel header is invalid: pref_address {addr:#x} is not aligned to kernel_alignment {alignment:#x}"
    )]
    MisalignedLoadAddress { addr: u64, alignment: u32 },

    #[error(
        "kernel header is invalid: load address {addr:#x} is below 1 MiB, where the VMM keeps \
         boot data; a relocatable kernel must have a sane pref_address"
    )]
    LoadAddressBelow1MiB { addr: u64 },

    // ---- ELF ----
    #[error(
        "ELF kernel is truncated: the ELF64 header needs {needed} bytes but the file has {len} bytes"
    )]
    ElfHeaderTruncated { needed: usize, len: usize },
    #[error(
        "ELF kernel is not a 64-bit little-endian ELF (EI_CLASS={class}, EI_DATA={data}); \
         use an x86_64 vmlinux"
    )]
    ElfNot64BitLittleEndian { class: u8, data: u8 },
    #[error("ELF kernel is built for machine {machine} (e_machine), not x86_64 (62)")]
    ElfWrongMachine { machine: u16 },
    #[error("ELF kernel has e_type {e_type}, expected ET_EXEC (2): a vmlinux is an executable")]
    ElfNotExecutable { e_type: u16 },
    #[error(
        "ELF kernel has e_phentsize {phentsize}, smaller than an ELF64 program header (56 bytes)"
    )]
    ElfBadPhentsize { phentsize: u16 },
    #[error("ELF kernel has {phnum} program headers; at most {max} are supported")]
    ElfTooManyProgramHeaders { phnum: u16, max: u16 },
    #[error(
        "ELF kernel is truncated: program header table at offset {phoff:#x} ({phnum} x {phentsize} bytes) \
         extends past the end of the {len}-byte file"
    )]
    ElfProgramHeadersOutOfFile {
        phoff: u64,
        phnum: u16,
        phentsize: u16,
        len: usize,
    },
    #[error(
        "ELF kernel is truncated: segment {index} claims {filesz:#x} bytes at file offset {offset:#x} \
         but the file has {len} bytes"
    )]
    ElfSegmentOutOfFile {
        index: usize,
        offset: u64,
        filesz: u64,
        len: usize,
    },
    #[error(
        "ELF kernel is malformed: segment {index} has p_filesz {filesz:#x} larger than p_memsz {memsz:#x}"
    )]
    ElfSegmentFileszExceedsMemsz {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("ELF kernel has no PT_LOAD segment with a non-zero size: nothing to load")]
    ElfNoLoadableSegments,
    #[error(
        "ELF kernel is malformed: note in PT_NOTE segment {index} at byte {offset} runs past the segment"
    )]
    ElfNoteMalformed { index: usize, offset: usize },
    #[error(
        "ELF kernel has a Xen PHYS32_ENTRY note with a {descsz}-byte descriptor; expected 4 or 8 bytes"
    )]
    InvalidPvhNote { descsz: u32 },
    #[error("ELF kernel's PVH entry point {entry:#x} is above 4 GiB; PVH enters in 32-bit mode")]
    PvhEntryAbove4G { entry: u64 },
    #[error("kernel entry point {entry:#x} is outside the loaded kernel [{start:#x}, {end:#x})")]
    EntryOutsideKernel { entry: u64, start: u64, end: u64 },

    // ---- placement ----
    #[error(
        "kernel does not fit in guest memory: it needs [{start:#x}, {needed_end:#x}) \
         ({size_mib} MiB from its load address) and that range is not all guest RAM; \
         give the VM more memory (--mem)",
        size_mib = needed_end.saturating_sub(*start).div_ceil(1 << 20)
    )]
    KernelDoesNotFit { start: u64, needed_end: u64 },
    #[error(
        "kernel does not fit in the address space: {size:#x} bytes at {start:#x} run past 2^64"
    )]
    KernelAddressOverflow { start: u64, size: u64 },
    #[error("initrd is empty: pass a non-empty initrd file or none at all")]
    InitrdEmpty,
    #[error(
        "initrd of {size} bytes does not fit in guest memory between {lo:#x} and {hi:#x} (inclusive); \
         give the VM more memory (--mem) or use a smaller initrd",
        lo = lowest.0,
        hi = highest.0
    )]
    InitrdDoesNotFit {
        size: u64,
        lowest: GuestAddress,
        highest: GuestAddress,
    },
    #[error("kernel command line is {len} bytes but the kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte at position {position}")]
    CmdlineContainsNul { position: usize },
    #[error("too many memory map entries: {count}, the zero page holds at most {max}")]
    TooManyE820Entries { count: usize, max: usize },
    #[error("too many memory map entries for PVH: {count}")]
    TooManyMemmapEntries { count: usize },
    #[error("{what} ({size} bytes at {addr:#x}) does not fit in guest memory")]
    OutOfGuestMemory {
        what: &'static str,
        addr: u64,
        size: u64,
    },
    #[error("reading {size} bytes at offset {offset:#x} of the kernel image failed: {source}")]
    ImageRead {
        offset: usize,
        size: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{size} bytes at offset {offset:#x} are outside the {len}-byte kernel image")]
    ImageRangeOutOfFile {
        offset: usize,
        size: usize,
        len: usize,
    },
    #[error("writing {what} to guest memory at {addr:#x} failed: {source}")]
    GuestMemory {
        what: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}
