//! The Xen PVH boot protocol's start-of-day structures.
//!
//! Owns the layouts from Xen's `xen/include/public/arch-x86/hvm/start_info.h`
//! (`hvm_start_info`, `hvm_modlist_entry`, `hvm_memmap_table_entry`) and
//! writing them, with the module list and memory map placed right after the
//! start info, to guest memory. A PVH kernel finds the start info via EBX.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use vm_memory::{GuestAddress, GuestMemory};

use crate::{E820Entry, Error, mem};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `hvm_start_info.version` written by this crate (has the memory map).
pub const HVM_START_INFO_VERSION: u32 = 1;

/// `struct hvm_start_info`.
#[repr(C, packed)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}
const _: () = assert!(size_of::<HvmStartInfo>() == 56);
const _: () = assert!(offset_of!(HvmStartInfo, nr_modules) == 12);
const _: () = assert!(offset_of!(HvmStartInfo, modlist_paddr) == 16);
const _: () = assert!(offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(offset_of!(HvmStartInfo, rsdp_paddr) == 32);
const _: () = assert!(offset_of!(HvmStartInfo, memmap_paddr) == 40);
const _: () = assert!(offset_of!(HvmStartInfo, memmap_entries) == 48);

/// `struct hvm_modlist_entry`.
#[repr(C, packed)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}
const _: () = assert!(size_of::<HvmModlistEntry>() == 32);

/// `struct hvm_memmap_table_entry`. Types are the e820 ones.
#[repr(C, packed)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmMemmapTableEntry {
    pub addr: u64,
    pub size: u64,
    pub type_: u32,
    pub reserved: u32,
}
const _: () = assert!(size_of::<HvmMemmapTableEntry>() == 24);

/// What [`write_pvh_start_info`] describes to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct PvhConfig<'a> {
    /// Where [`crate::write_cmdline`] put the command line.
    pub cmdline_addr: GuestAddress,
    /// Initrd start and length, if any (becomes the single module).
    pub initrd: Option<(GuestAddress, u64)>,
    /// The guest memory map.
    pub memmap: &'a [E820Entry],
    /// Physical address of the ACPI RSDP, if any.
    pub rsdp_addr: Option<GuestAddress>,
}

fn align8(x: u64) -> Option<u64> {
    Some(x.checked_add(7)? & !7)
}

/// Writes `hvm_start_info` at `addr`, followed (8-byte aligned) by the module
/// list (one entry for the initrd, if any) and the memory map table, and
/// points the start info at them. Nothing is written unless the whole block
/// fits in guest memory.
pub fn write_pvh_start_info<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    cfg: &PvhConfig,
) -> Result<(), Error> {
    const WHAT: &str = "PVH start info";
    let count = cfg.memmap.len();
    let memmap_entries = u32::try_from(count).map_err(|_| Error::TooManyMemmapEntries { count })?;
    let overflow = || Error::OutOfGuestMemory {
        what: WHAT,
        addr: addr.0,
        size: u64::MAX,
    };

    let modules: Vec<HvmModlistEntry> = cfg
        .initrd
        .iter()
        .map(|&(paddr, size)| HvmModlistEntry {
            paddr: paddr.0,
            size,
            ..Default::default()
        })
        .collect();
    let memmap: Vec<HvmMemmapTableEntry> = cfg
        .memmap
        .iter()
        .map(|e| HvmMemmapTableEntry {
            addr: e.addr,
            size: e.size,
            type_: e.type_,
            reserved: 0,
        })
        .collect();
    let modules_bytes = modules.as_slice().as_bytes();
    let memmap_bytes = memmap.as_slice().as_bytes();

    let info_len = size_of::<HvmStartInfo>() as u64;
    let modlist_addr =
        align8(addr.0.checked_add(info_len).ok_or_else(overflow)?).ok_or_else(overflow)?;
    let memmap_addr = align8(
        modlist_addr
            .checked_add(modules_bytes.len() as u64)
            .ok_or_else(overflow)?,
    )
    .ok_or_else(overflow)?;
    let end = memmap_addr
        .checked_add(memmap_bytes.len() as u64)
        .ok_or_else(overflow)?;
    mem::require_range(mem, WHAT, addr, end.saturating_sub(addr.0))?;

    let info = HvmStartInfo {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        flags: 0,
        nr_modules: u32::from(!modules.is_empty()),
        modlist_paddr: if modules.is_empty() { 0 } else { modlist_addr },
        cmdline_paddr: cfg.cmdline_addr.0,
        rsdp_paddr: cfg.rsdp_addr.map_or(0, |a| a.0),
        memmap_paddr: if memmap.is_empty() { 0 } else { memmap_addr },
        memmap_entries,
        reserved: 0,
    };
    mem::write(mem, WHAT, addr, info.as_bytes())?;
    mem::write(mem, WHAT, GuestAddress(modlist_addr), modules_bytes)?;
    mem::write(mem, WHAT, GuestAddress(memmap_addr), memmap_bytes)
}
