//! Byte-exact mirrors of the Linux x86 boot protocol structures.
//!
//! This module owns the layouts of `struct setup_header`, `struct boot_params`
//! (the "zero page") and `struct boot_e820_entry` from Linux's
//! `arch/x86/include/uapi/asm/bootparam.h`, plus the flag constants the
//! loaders need. Field names follow the C header so they can be grepped for.
//! Nested structures the loader never touches (`screen_info`, `edid_info`,
//! ...) are kept as opaque byte arrays of the right size.
//!
//! Every struct is `#[repr(C, packed)]` and derives the zerocopy traits, so it
//! can be parsed from and serialised to raw bytes without `unsafe`. Sizes and
//! the offsets the loaders depend on are checked at compile time.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `boot_flag` value: the classic boot sector signature.
pub const BOOT_FLAG_MAGIC: u16 = 0xAA55;
/// `header` value: the ASCII bytes "HdrS" read as a little-endian `u32`.
pub const HDRS_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");

/// `loadflags`: protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 0x01;
/// `loadflags`: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 0x80;

/// `xloadflags`: the kernel has the legacy 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags`: kernel/boot_params/cmdline/ramdisk may live above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// `type_of_loader` value for a boot loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved, not usable by the OS.
pub const E820_RESERVED: u32 = 2;
/// ACPI reclaimable memory (ACPI tables).
pub const E820_ACPI: u32 = 3;

/// Number of `e820_table` slots in `boot_params` (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Offset of `struct setup_header` in both the bzImage file and `boot_params`.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;

/// `struct setup_header`: the kernel/boot loader negotiation block found at
/// offset 0x1f1 of a bzImage and embedded in `boot_params`.
#[repr(C, packed)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SetupHeader {
    pub setup_sects: u8,
    pub root_flags: u16,
    pub syssize: u32,
    pub ram_size: u16,
    pub vid_mode: u16,
    pub root_dev: u16,
    pub boot_flag: u16,
    pub jump: u16,
    pub header: u32,
    pub version: u16,
    pub realmode_swtch: u32,
    pub start_sys_seg: u16,
    pub kernel_version: u16,
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub setup_move_size: u16,
    pub code32_start: u32,
    pub ramdisk_image: u32,
    pub ramdisk_size: u32,
    pub bootsect_kludge: u32,
    pub heap_end_ptr: u16,
    pub ext_loader_ver: u8,
    pub ext_loader_type: u8,
    pub cmd_line_ptr: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: u8,
    pub min_alignment: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub hardware_subarch: u32,
    pub hardware_subarch_data: u64,
    pub payload_offset: u32,
    pub payload_length: u32,
    pub setup_data: u64,
    pub pref_address: u64,
    pub init_size: u32,
    pub handover_offset: u32,
    pub kernel_info_offset: u32,
}

/// Offset (relative to the start of the image / `boot_params`) of a
/// `SetupHeader` field.
macro_rules! hdr_off {
    ($field:ident) => {{
        const OFFSET: usize = $crate::bootparam::SETUP_HEADER_OFFSET
            + ::core::mem::offset_of!($crate::bootparam::SetupHeader, $field);
        OFFSET
    }};
}
pub(crate) use hdr_off;

const _: () = assert!(size_of::<SetupHeader>() == 0x26c - SETUP_HEADER_OFFSET);
const _: () = assert!(hdr_off!(boot_flag) == 0x1fe);
const _: () = assert!(hdr_off!(header) == 0x202);
const _: () = assert!(hdr_off!(version) == 0x206);
const _: () = assert!(hdr_off!(type_of_loader) == 0x210);
const _: () = assert!(hdr_off!(loadflags) == 0x211);
const _: () = assert!(hdr_off!(ramdisk_image) == 0x218);
const _: () = assert!(hdr_off!(ramdisk_size) == 0x21c);
const _: () = assert!(hdr_off!(heap_end_ptr) == 0x224);
const _: () = assert!(hdr_off!(cmd_line_ptr) == 0x228);
const _: () = assert!(hdr_off!(initrd_addr_max) == 0x22c);
const _: () = assert!(hdr_off!(kernel_alignment) == 0x230);
const _: () = assert!(hdr_off!(relocatable_kernel) == 0x234);
const _: () = assert!(hdr_off!(xloadflags) == 0x236);
const _: () = assert!(hdr_off!(cmdline_size) == 0x238);
const _: () = assert!(hdr_off!(pref_address) == 0x258);
const _: () = assert!(hdr_off!(init_size) == 0x260);
const _: () = assert!(hdr_off!(kernel_info_offset) == 0x268);

/// `struct boot_e820_entry`: one entry of the zero page memory map.
#[repr(C, packed)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    /// `type` in C (a Rust keyword): one of `E820_RAM`, `E820_RESERVED`, `E820_ACPI`, ...
    pub type_: u32,
}

const _: () = assert!(size_of::<E820Entry>() == 20);

/// `struct boot_params`: the 4 KiB "zero page" handed to the kernel in RSI.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootParams {
    pub screen_info: [u8; 0x40],
    pub apm_bios_info: [u8; 0x14],
    pub _pad2: [u8; 4],
    pub tboot_addr: u64,
    pub ist_info: [u8; 0x10],
    pub acpi_rsdp_addr: u64,
    pub _pad3: [u8; 8],
    pub hd0_info: [u8; 16],
    pub hd1_info: [u8; 16],
    pub sys_desc_table: [u8; 0x10],
    pub olpc_ofw_header: [u8; 0x10],
    pub ext_ramdisk_image: u32,
    pub ext_ramdisk_size: u32,
    pub ext_cmd_line_ptr: u32,
    pub _pad4: [u8; 112],
    pub cc_blob_address: u32,
    pub edid_info: [u8; 0x80],
    pub efi_info: [u8; 0x20],
    pub alt_mem_k: u32,
    pub scratch: u32,
    pub e820_entries: u8,
    pub eddbuf_entries: u8,
    pub edd_mbr_sig_buf_entries: u8,
    pub kbd_status: u8,
    pub secure_boot: u8,
    pub _pad5: [u8; 2],
    pub sentinel: u8,
    pub _pad6: [u8; 1],
    pub hdr: SetupHeader,
    pub _pad7: [u8; 0x290 - 0x26c],
    pub edd_mbr_sig_buffer: [u32; 16],
    pub e820_table: [E820Entry; E820_MAX_ENTRIES_ZEROPAGE],
    pub _pad8: [u8; 48],
    /// `struct edd_info eddbuf[EDDMAXNR]`: 6 entries of 82 bytes.
    pub eddbuf: [u8; 6 * 82],
    pub _pad9: [u8; 276],
}

impl Default for BootParams {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

const _: () = assert!(size_of::<BootParams>() == 4096);
const _: () = assert!(offset_of!(BootParams, acpi_rsdp_addr) == 0x070);
const _: () = assert!(offset_of!(BootParams, ext_ramdisk_image) == 0x0c0);
const _: () = assert!(offset_of!(BootParams, ext_ramdisk_size) == 0x0c4);
const _: () = assert!(offset_of!(BootParams, ext_cmd_line_ptr) == 0x0c8);
const _: () = assert!(offset_of!(BootParams, cc_blob_address) == 0x13c);
const _: () = assert!(offset_of!(BootParams, e820_entries) == 0x1e8);
const _: () = assert!(offset_of!(BootParams, sentinel) == 0x1ef);
const _: () = assert!(offset_of!(BootParams, hdr) == SETUP_HEADER_OFFSET);
const _: () = assert!(offset_of!(BootParams, edd_mbr_sig_buffer) == 0x290);
const _: () = assert!(offset_of!(BootParams, e820_table) == 0x2d0);
const _: () = assert!(offset_of!(BootParams, eddbuf) == 0xd00);
