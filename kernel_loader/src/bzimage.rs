//! The bzImage loader: Linux x86 boot protocol 2.12+ with the 64-bit entry.
//!
//! Parses and validates the setup header at offset 0x1f1, copies the
//! protected-mode payload (everything after the `setup_sects + 1` real-mode
//! sectors) to its load address and reports the 64-bit entry point
//! (load address + 0x200). The real-mode setup code is not used: the VMM
//! builds `boot_params` itself and enters the kernel in long mode.

use zerocopy::FromBytes;

use vm_memory::{GuestAddress, GuestMemory};

use crate::bootparam::{
    BOOT_FLAG_MAGIC, HDRS_MAGIC, SETUP_HEADER_OFFSET, SetupHeader, XLF_CAN_BE_LOADED_ABOVE_4G,
    XLF_KERNEL_64, hdr_off,
};
use crate::{BootProtocol, Error, ImageSource, LoadedKernel, mem};

/// Oldest supported protocol: 2.12 introduced `xloadflags` (XLF_KERNEL_64).
pub(crate) const MIN_PROTOCOL_VERSION: u16 = 0x020c;
/// Load address of non-relocatable kernels.
pub(crate) const DEFAULT_LOAD_ADDR: u64 = 0x10_0000;
/// `initrd_addr_max` to assume when the header leaves it 0.
pub(crate) const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Offset of the 64-bit entry point from the load address.
pub(crate) const ENTRY_64_OFFSET: u64 = 0x200;
/// Sector size used for `setup_sects`.
const SECTOR: usize = 512;
/// End of the setup header as this crate knows it (protocol 2.15).
const HEADER_END: usize = SETUP_HEADER_OFFSET + size_of::<SetupHeader>();

fn read_u16(image: &[u8], off: usize) -> Option<u16> {
    let b = image.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

/// Byte range of the "HdrS" magic (`header` is followed by `version`).
const HDRS_RANGE: core::ops::Range<usize> = hdr_off!(header)..hdr_off!(version);

/// True if `image` carries either bzImage signature, so that errors about the
/// other one are reported as a broken bzImage rather than an unknown format.
pub(crate) fn is_bzimage(image: &[u8]) -> bool {
    let hdrs = image.get(HDRS_RANGE) == Some(b"HdrS".as_slice());
    let flag = read_u16(image, hdr_off!(boot_flag)) == Some(BOOT_FLAG_MAGIC);
    hdrs || flag
}

/// Parses and validates the setup header. Fields past the end the header
/// declares (0x202 + byte at 0x201) belong to setup code and are zeroed.
/// `image` is the file's first bytes (up to [`HEADER_END`]), `len` its whole length.
fn parse_header(image: &[u8], len: usize) -> Result<SetupHeader, Error> {
    let raw = image
        .get(SETUP_HEADER_OFFSET..HEADER_END)
        .ok_or(Error::HeaderTruncated {
            needed: HEADER_END,
            len,
        })?;
    let mut raw_hdr = [0u8; size_of::<SetupHeader>()];
    raw_hdr.copy_from_slice(raw);

    let boot_flag = read_u16(image, hdr_off!(boot_flag)).unwrap_or(0);
    if boot_flag != BOOT_FLAG_MAGIC {
        return Err(Error::BadBootFlag { found: boot_flag });
    }
    let magic_bytes: [u8; 4] = image
        .get(HDRS_RANGE)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; 4]);
    if u32::from_le_bytes(magic_bytes) != HDRS_MAGIC {
        return Err(Error::BadHeaderMagic { found: magic_bytes });
    }
    let version = read_u16(image, hdr_off!(version)).unwrap_or(0);
    if version < MIN_PROTOCOL_VERSION {
        return Err(Error::ProtocolTooOld { version });
    }

    // The jump at 0x200 is `jmp short`; its displacement marks the header end.
    let declared_end = usize::from(image.get(0x201).copied().unwrap_or(0)).saturating_add(0x202);
    if declared_end > len {
        return Err(Error::HeaderTruncated {
            needed: declared_end,
            len,
        });
    }
    if let Some(tail) = declared_end
        .checked_sub(SETUP_HEADER_OFFSET)
        .and_then(|start| raw_hdr.get_mut(start..))
    {
        tail.fill(0);
    }
    SetupHeader::read_from_bytes(&raw_hdr).map_err(|_| Error::HeaderTruncated {
        needed: HEADER_END,
        len,
    })
}

/// How many of an image's first bytes [`is_bzimage`] and [`load`]'s header parsing look at.
pub(crate) const HEAD_LEN: usize = HEADER_END;

pub(crate) fn load<M: GuestMemory, S: ImageSource + ?Sized>(
    mem: &M,
    image: &S,
) -> Result<LoadedKernel, Error> {
    let len = image.len();
    let hdr = parse_header(&image.read(0, len.min(HEADER_END))?, len)?;

    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::NotA64BitKernel { xloadflags });
    }

    let setup_sects = hdr.setup_sects;
    let real_sects = if setup_sects == 0 { 4 } else { setup_sects };
    // At most 256 * 512: cannot overflow.
    let payload_offset = usize::from(real_sects)
        .saturating_add(1)
        .saturating_mul(SECTOR);
    let payload_size = len
        .checked_sub(payload_offset)
        .filter(|&size| size > 0)
        .ok_or(Error::Truncated {
            setup_sects,
            payload_offset,
            len,
        })?;

    let load_addr = if hdr.relocatable_kernel != 0 {
        let alignment = hdr.kernel_alignment;
        if !alignment.is_power_of_two() {
            return Err(Error::InvalidKernelAlignment { alignment });
        }
        let pref = hdr.pref_address;
        // alignment is a non-zero power of two.
        if pref & u64::from(alignment).saturating_sub(1) != 0 {
            return Err(Error::MisalignedLoadAddress {
                addr: pref,
                alignment,
            });
        }
        pref
    } else {
        DEFAULT_LOAD_ADDR
    };
    if load_addr < DEFAULT_LOAD_ADDR {
        return Err(Error::LoadAddressBelow1MiB { addr: load_addr });
    }

    let payload_len = payload_size as u64;
    let needed = payload_len.max(u64::from(hdr.init_size));
    let kernel_end = load_addr
        .checked_add(needed)
        .ok_or(Error::KernelAddressOverflow {
            start: load_addr,
            size: needed,
        })?;
    if !mem::range_in_memory(mem, GuestAddress(load_addr), needed) {
        return Err(Error::KernelDoesNotFit {
            start: load_addr,
            needed_end: kernel_end,
        });
    }
    // Both sums are <= kernel_end, which did not overflow, once the entry
    // is known to lie inside the payload.
    let entry = load_addr.saturating_add(ENTRY_64_OFFSET);
    if ENTRY_64_OFFSET >= payload_len {
        return Err(Error::EntryOutsideKernel {
            entry,
            start: load_addr,
            end: load_addr.saturating_add(payload_len),
        });
    }

    image.copy_to_guest(
        mem,
        "kernel payload",
        GuestAddress(load_addr),
        payload_offset,
        payload_size,
    )?;

    let initrd_addr_max = if xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
        u64::MAX
    } else if hdr.initrd_addr_max == 0 {
        DEFAULT_INITRD_ADDR_MAX
    } else {
        u64::from(hdr.initrd_addr_max)
    };

    Ok(LoadedKernel {
        protocol: BootProtocol::Linux64,
        entry_addr: GuestAddress(entry),
        kernel_start: GuestAddress(load_addr),
        kernel_end: GuestAddress(kernel_end),
        setup_header: hdr,
        initrd_addr_max,
        cmdline_max: hdr.cmdline_size as usize,
    })
}
