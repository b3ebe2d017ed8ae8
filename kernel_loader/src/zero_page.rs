//! Filling in `boot_params` (the "zero page") for the 64-bit Linux boot
//! protocol.
//!
//! Owns which zero page fields the loader sets and how 64-bit addresses are
//! split across the legacy 32-bit fields and their `ext_*` high halves.

use zerocopy::IntoBytes;

use vm_memory::{GuestAddress, GuestMemory};

use crate::bootparam::{
    BootParams, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE, E820Entry, LOADER_TYPE_UNDEFINED,
    SetupHeader,
};
use crate::{Error, mem};

/// `vid_mode` value meaning "normal" (no mode change requested).
const VID_MODE_NORMAL: u16 = 0xffff;
/// `heap_end_ptr`: end of the setup heap, relative to the real-mode segment.
const HEAP_END_PTR: u16 = 0xfe00;

/// What [`write_zero_page`] puts in `boot_params`.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPageConfig<'a> {
    /// The kernel's setup header ([`crate::LoadedKernel::setup_header`]).
    pub setup_header: SetupHeader,
    /// Where [`crate::write_cmdline`] put the command line.
    pub cmdline_addr: GuestAddress,
    /// Command line length without its NUL; checked against
    /// `setup_header.cmdline_size`.
    pub cmdline_size: usize,
    /// Initrd start and length, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// The guest memory map (at most 128 entries).
    pub e820: &'a [E820Entry],
    /// Physical address of the ACPI RSDP, if the VMM built ACPI tables.
    pub acpi_rsdp_addr: Option<GuestAddress>,
}

fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

fn hi32(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(0)
}

/// Builds the `boot_params` described by `cfg` (exposed for tests), on the heap: the
/// main thread's stack pages a 4 KiB frame touches would stay resident for the VMM's
/// whole life.
pub(crate) fn build_boot_params(cfg: &ZeroPageConfig) -> Result<Box<BootParams>, Error> {
    let count = cfg.e820.len();
    let too_many = || Error::TooManyE820Entries {
        count,
        max: E820_MAX_ENTRIES_ZEROPAGE,
    };
    if count > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(too_many());
    }
    let max = cfg.setup_header.cmdline_size as usize;
    if cfg.cmdline_size > max {
        return Err(Error::CmdlineTooLong {
            len: cfg.cmdline_size,
            max,
        });
    }

    let mut bp = Box::<BootParams>::default();
    bp.hdr = cfg.setup_header;
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    bp.hdr.vid_mode = VID_MODE_NORMAL;
    bp.hdr.loadflags |= CAN_USE_HEAP;
    bp.hdr.heap_end_ptr = HEAP_END_PTR;

    let cmdline = cfg.cmdline_addr.0;
    bp.hdr.cmd_line_ptr = lo32(cmdline);
    bp.ext_cmd_line_ptr = hi32(cmdline);

    let (image, size) = cfg.initrd.map_or((0, 0), |(a, s)| (a.0, s));
    bp.hdr.ramdisk_image = lo32(image);
    bp.ext_ramdisk_image = hi32(image);
    bp.hdr.ramdisk_size = lo32(size);
    bp.ext_ramdisk_size = hi32(size);

    for (slot, entry) in bp.e820_table.iter_mut().zip(cfg.e820) {
        *slot = *entry;
    }
    bp.e820_entries = u8::try_from(count).map_err(|_| too_many())?;

    bp.acpi_rsdp_addr = cfg.acpi_rsdp_addr.map_or(0, |a| a.0);
    Ok(bp)
}

/// Writes a zeroed `boot_params` at `addr` and fills in the setup header, the
/// command line and initrd pointers, the e820 map and the ACPI RSDP address.
///
/// Nothing is written if the configuration is invalid or the 4 KiB at `addr`
/// are not all guest memory.
pub fn write_zero_page<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    cfg: &ZeroPageConfig,
) -> Result<(), Error> {
    let bp = build_boot_params(cfg)?;
    let bytes = bp.as_bytes();
    mem::require_range(mem, "zero page (boot_params)", addr, bytes.len() as u64)?;
    mem::write(mem, "zero page (boot_params)", addr, bytes)
}
