//! Linux x86-64 boot-protocol loading as pure functions over guest memory.
//!
//! This crate knows nothing about KVM or vCPUs: it parses kernel images,
//! copies them into any [`vm_memory::GuestMemory`], and writes the data
//! structures a booting kernel reads. The VMM decides where things go and
//! programs the vCPU from the returned [`LoadedKernel`].
//!
//! Modules:
//! - [`bootparam`]: byte-exact `setup_header` / `boot_params` / e820 layouts.
//! - `bzimage`: the bzImage loader (Linux boot protocol >= 2.12, 64-bit entry).
//! - `elf`: the ELF64 `vmlinux` loader, including the Xen PVH entry note.
//! - `initrd`: placing the initial ramdisk.
//! - `cmdline`: writing the kernel command line.
//! - `zero_page`: filling in `boot_params` for the 64-bit Linux boot protocol.
//! - [`pvh`]: `hvm_start_info` and friends for the PVH boot protocol.
//! - `error`: the crate's [`Error`] type.
//!
//! Every input-controlled size and offset is checked with checked arithmetic
//! and bounds-checked slice access; malformed images produce an [`Error`],
//! never a panic, a huge allocation or a partially written guest.

#![forbid(unsafe_code)]
// Input reaches almost every function here: keep panicking shortcuts out of
// non-test code (tests may unwrap freely).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation
    )
)]

pub mod bootparam;
mod bzimage;
mod cmdline;
mod elf;
mod error;
mod initrd;
mod mem;
pub mod pvh;
mod source;
mod zero_page;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

pub use bootparam::{BootParams, E820_ACPI, E820_RAM, E820_RESERVED, E820Entry, SetupHeader};
pub use cmdline::write_cmdline;
pub use error::Error;
pub use initrd::load_initrd;
pub use pvh::{PvhConfig, write_pvh_start_info};
pub use source::ImageSource;
pub use vm_memory::GuestAddress;
pub use zero_page::{ZeroPageConfig, write_zero_page};

use vm_memory::GuestMemory;

/// How the boot vCPU must be started for a loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit long mode entry with identity-mapped page tables; the address of
    /// `boot_params` (the zero page) goes in RSI.
    Linux64,
    /// 32-bit flat protected mode entry, paging off; the address of
    /// `hvm_start_info` goes in EBX.
    Pvh,
}

/// The result of [`load_kernel`]: where the kernel went and how to start it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Which boot protocol the entry point expects.
    pub protocol: BootProtocol,
    /// Where the boot vCPU starts executing (bzImage: load address + 0x200).
    pub entry_addr: GuestAddress,
    /// Lowest guest byte the kernel occupies.
    pub kernel_start: GuestAddress,
    /// One past the highest byte the kernel needs while booting
    /// (bzImage: load address + max(init_size, payload size)).
    pub kernel_end: GuestAddress,
    /// bzImage: the file's setup header; ELF: a synthesized one. Pass it to
    /// [`write_zero_page`].
    pub setup_header: SetupHeader,
    /// Highest guest address (inclusive) any initrd byte may occupy.
    pub initrd_addr_max: u64,
    /// Longest command line the kernel accepts, NUL excluded.
    pub cmdline_max: usize,
}

/// Loads a kernel image (bzImage or ELF64 `vmlinux`) into guest memory.
///
/// The format is detected from the image's magic numbers; anything that is
/// neither gives [`Error::UnknownFormat`]. On error nothing has been written
/// to guest memory.
pub fn load_kernel<M: GuestMemory>(mem: &M, image: &[u8]) -> Result<LoadedKernel, Error> {
    load_kernel_from(mem, image)
}

/// [`load_kernel`] over any [`ImageSource`]: only the headers (and an ELF's note
/// segments) are read into buffers; the kernel itself (an ELF's `PT_LOAD` segments, a
/// bzImage's payload) goes from the source straight into guest memory. A VMM gives its
/// kernel file as the source so that the image is not read whole into a buffer and
/// copied again (for an ELF, not read whole at all: most of a vmlinux is symbols).
/// Validation is the same and comes first: an invalid image writes nothing (a source
/// that fails to read part-way through a copy can leave a partial copy behind).
pub fn load_kernel_from<M: GuestMemory, S: ImageSource + ?Sized>(
    mem: &M,
    image: &S,
) -> Result<LoadedKernel, Error> {
    let head = image.read(0, image.len().min(bzimage::HEAD_LEN))?;
    if elf::is_elf(&head) {
        elf::load(mem, image)
    } else if bzimage::is_bzimage(&head) {
        bzimage::load(mem, image)
    } else {
        Err(Error::UnknownFormat)
    }
}
