//! The guest physical memory map: where boot-time structures live, which guest
//! physical ranges are RAM, and the e820 map the kernel is given.
//!
//! Low memory (below 1 MiB) follows the PC conventions Linux expects:
//!
//! ```text
//! 0x0000_0000 ..0x0000_0500  real-mode IVT + BIOS data area (left untouched)
//! 0x0000_0500                boot GDT            (BOOT_GDT_START)
//! 0x0000_0530                boot IDT (empty)    (BOOT_IDT_START)
//! 0x0000_6000                PVH hvm_start_info  (PVH_INFO_START)
//! 0x0000_7000                Linux zero page     (ZERO_PAGE_START)
//! 0x0000_8000 ..0x0000_8ff0  boot stack, grows down from BOOT_STACK_POINTER
//! 0x0000_9000                PML4, then PDPT at 0xa000, 4 PDs at 0xb000..0xf000
//! 0x0002_0000 ..0x0003_0000  kernel command line (CMDLINE_START)
//! 0x0009_fc00 ..0x000a_0000  EBDA (reserved)
//! 0x000a_0000 ..0x0010_0000  VGA hole / option ROMs / BIOS (reserved);
//!                            ACPI tables at 0xe0000 so Linux's legacy RSDP scan finds them
//! 0x0010_0000                high memory: the kernel is loaded here
//! 0xc000_0000 ..4 GiB        32-bit MMIO hole (devices, IOAPIC, LAPIC); no RAM
//! 4 GiB ..                   the RAM that did not fit below the hole
//! ```

use vm_memory::GuestAddress;

/// The boot GDT (see `gdt`). Six 8-byte slots: the long-mode GDT has a
/// 16-byte TSS descriptor at selector 0x20, so it spans 0x500..0x530.
pub const BOOT_GDT_START: u64 = 0x500;
/// The (empty) boot IDT. Placed right after the 48-byte long-mode GDT so the
/// two never overlap.
pub const BOOT_IDT_START: u64 = 0x530;
/// The PVH `hvm_start_info` structure (and whatever follows it, e.g. the
/// memory map table) is written here; `rbx` points at it on PVH entry.
pub const PVH_INFO_START: u64 = 0x6000;
/// The Linux `boot_params` ("zero page"); `rsi` points at it on 64-bit entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer: top of the page below the page tables, 16-byte
/// aligned with a little headroom.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// The single page-directory-pointer table (covers 512 GiB; we use 4 entries).
pub const PDPTE_START: u64 = 0xa000;
/// The first of the four page directories, each mapping 1 GiB with 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line (NUL-terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// Room reserved for the command line including its NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area; conventional RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of the RAM usable below 1 MiB.
pub const LOW_RAM_END: u64 = EBDA_START;
/// The ACPI tables, starting with the RSDP. Within 0xe0000..0x100000 so that
/// Linux's legacy BIOS-area scan finds the RSDP even without `acpi_rsdp=`.
pub const ACPI_TABLES_START: u64 = 0xe0000;
/// First byte above the legacy BIOS area.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit PCI / MMIO hole. RAM never lives in the hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB); RAM resumes here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The in-kernel I/O APIC's MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO base (architectural default).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Where the VMM should put KVM's 3-page TSS (`VmFd::set_tss_address`; on Intel
/// without unrestricted guest KVM also puts its identity map page just below it).
/// The IOAPIC pins PCI INTx lines use: GSIs 16..24, above the ISA IRQs (0-15), which the
/// legacy devices use. Eight lines shared by up to 31 slots, as INTx lines are
/// (level-triggered, so sharing is safe).
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// How many IOAPIC pins PCI INTx lines share.
pub const PCI_INTX_GSI_COUNT: u32 = 8;

/// The GSI that INTA# of the PCI device in `slot` of bus 0 is wired to (the DSDT's `_PRT`
/// says the same, and the device's Interrupt Line register holds it).
pub fn pci_intx_gsi(slot: u8) -> u32 {
    PCI_INTX_GSI_BASE + u32::from(slot) % PCI_INTX_GSI_COUNT
}

/// Inside the IOAPIC..4 GiB range that e820 reports reserved, so the guest
/// never uses those pages as RAM or places a PCI BAR over them.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

// The page tables are written as consecutive pages, and KVM's TSS must sit in
// the range e820 reserves.
const _: () = assert!(PDPTE_START == PML4_START + 0x1000 && PDE_START == PDPTE_START + 0x1000);
const _: () = assert!(KVM_TSS_ADDRESS >= IOAPIC_ADDR && KVM_TSS_ADDRESS + 0x3000 <= MMIO_HOLE_END);
const _: () = assert!(ACPI_TABLES_START >= EBDA_START && ACPI_TABLES_START < HIMEM_START);

/// How many bytes of guest RAM live below the MMIO hole.
pub fn ram_below_4g(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

/// How many bytes of guest RAM are relocated above 4 GiB because they did not
/// fit below the MMIO hole.
pub fn ram_above_4g(mem_bytes: u64) -> u64 {
    mem_bytes.saturating_sub(MMIO_HOLE_START)
}

/// The guest RAM regions to register with KVM and to mmap: everything up to
/// the MMIO hole, then the remainder starting at 4 GiB.
///
/// The low region deliberately includes 0xa0000..0x100000: it is backed by RAM
/// (so the ACPI tables can be written there) and marked reserved in e820.
/// A `mem_bytes` of 0 yields no regions; rejecting it is the caller's job.
pub fn guest_ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let mut regions = Vec::with_capacity(2);
    let low = ram_below_4g(mem_bytes);
    if low > 0 {
        regions.push((GuestAddress(0), to_usize(low)));
    }
    let high = ram_above_4g(mem_bytes);
    if high > 0 {
        regions.push((GuestAddress(MMIO_HOLE_END), to_usize(high)));
    }
    regions
}

// The crate only builds for x86_64 (see lib.rs), where usize is 64 bits wide,
// so this conversion is lossless.
fn to_usize(v: u64) -> usize {
    v as usize
}

/// The type of an e820 entry, as the kernel understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Not usable by the OS (firmware areas, MMIO).
    Reserved,
    /// ACPI tables the OS may reclaim after reading them.
    Acpi,
}

impl E820Kind {
    /// The numeric type used in `boot_params.e820_table` and PVH's memmap.
    pub fn e820_type(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
            E820Kind::Acpi => 3,
        }
    }
}

/// One entry of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Region {
    /// Guest physical start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

impl E820Region {
    /// One past the last byte of the region.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// The e820 map for a guest with `mem_bytes` of RAM, sorted and
/// non-overlapping:
///
/// - RAM `0..EBDA_START` (clipped to `mem_bytes`);
/// - reserved `EBDA_START..HIMEM_START`, which also covers the ACPI tables at
///   0xe0000 (Linux reads ACPI tables from reserved ranges fine);
/// - RAM `HIMEM_START..min(mem_bytes, MMIO_HOLE_START)`;
/// - reserved `IOAPIC_ADDR..4 GiB`: the IOAPIC, the LAPIC and KVM's TSS /
///   identity-map pages ([`KVM_TSS_ADDRESS`]). Like QEMU and Firecracker we do
///   *not* reserve `MMIO_HOLE_START..IOAPIC_ADDR`: Linux looks for the largest
///   e820 gap below 4 GiB to place PCI BARs ("[mem ...] available for PCI
///   devices"), and that gap must be the hole. Devices placed there are still
///   never mistaken for RAM;
/// - RAM `4 GiB..4 GiB + ram_above_4g(mem_bytes)`.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Region> {
    let mut map = Vec::with_capacity(5);
    let low_ram_end = ram_below_4g(mem_bytes);
    push_nonempty(&mut map, 0, low_ram_end.min(LOW_RAM_END), E820Kind::Ram);
    push_nonempty(&mut map, EBDA_START, HIMEM_START, E820Kind::Reserved);
    push_nonempty(&mut map, HIMEM_START, low_ram_end, E820Kind::Ram);
    push_nonempty(&mut map, IOAPIC_ADDR, MMIO_HOLE_END, E820Kind::Reserved);
    push_nonempty(
        &mut map,
        MMIO_HOLE_END,
        MMIO_HOLE_END + ram_above_4g(mem_bytes),
        E820Kind::Ram,
    );
    map
}

fn push_nonempty(map: &mut Vec<E820Region>, start: u64, end: u64, kind: E820Kind) {
    if end > start {
        map.push(E820Region {
            addr: start,
            size: end - start,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const PAGE: u64 = 4096;

    fn assert_sorted_disjoint(map: &[E820Region]) {
        for pair in map.windows(2) {
            assert!(pair[0].end() <= pair[1].addr, "overlap/unsorted: {map:#x?}");
        }
        for r in map {
            assert!(r.size > 0, "empty entry: {map:#x?}");
        }
    }

    fn ram_total(map: &[E820Region]) -> u64 {
        map.iter()
            .filter(|r| r.kind == E820Kind::Ram)
            .map(|r| r.size)
            .sum()
    }

    fn assert_no_ram_in_hole(map: &[E820Region]) {
        for r in map.iter().filter(|r| r.kind == E820Kind::Ram) {
            assert!(
                r.end() <= MMIO_HOLE_START || r.addr >= MMIO_HOLE_END,
                "RAM in hole: {r:#x?}"
            );
            assert!(
                r.end() <= EBDA_START || r.addr >= HIMEM_START,
                "RAM in BIOS area: {r:#x?}"
            );
        }
    }

    fn check(mem: u64) -> Vec<E820Region> {
        let map = e820_map(mem);
        assert_sorted_disjoint(&map);
        assert_no_ram_in_hole(&map);
        // All RAM except the reserved EBDA/BIOS window is reported usable.
        assert_eq!(ram_total(&map), mem - (HIMEM_START - EBDA_START));
        map
    }

    #[test]
    fn e820_256m() {
        let map = check(256 * MIB);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[0],
            E820Region {
                addr: 0,
                size: EBDA_START,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(map[1].kind, E820Kind::Reserved);
        assert_eq!((map[1].addr, map[1].end()), (EBDA_START, HIMEM_START));
        assert_eq!((map[2].addr, map[2].end()), (HIMEM_START, 256 * MIB));
        assert_eq!((map[3].addr, map[3].end()), (IOAPIC_ADDR, MMIO_HOLE_END));
        assert_eq!(map[3].kind, E820Kind::Reserved);
    }

    #[test]
    fn e820_exactly_3g_fills_below_hole() {
        let map = check(3 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].end(), MMIO_HOLE_START);
        assert!(map.iter().all(|r| r.addr < MMIO_HOLE_END));
    }

    #[test]
    fn e820_3g_plus_page_goes_above_4g() {
        let map = check(3 * GIB + PAGE);
        let last = *map.last().unwrap();
        assert_eq!(
            last,
            E820Region {
                addr: MMIO_HOLE_END,
                size: PAGE,
                kind: E820Kind::Ram
            }
        );
    }

    #[test]
    fn e820_8g() {
        let map = check(8 * GIB);
        let last = *map.last().unwrap();
        assert_eq!(last.kind, E820Kind::Ram);
        assert_eq!((last.addr, last.size), (4 * GIB, 5 * GIB));
    }

    #[test]
    fn e820_tiny_guest_is_clipped() {
        let map = e820_map(512 * 1024);
        assert_sorted_disjoint(&map);
        assert_eq!(map[0].size, 512 * 1024);
    }

    #[test]
    fn ram_regions() {
        assert!(guest_ram_regions(0).is_empty());
        assert_eq!(
            guest_ram_regions(256 * MIB),
            vec![(GuestAddress(0), (256 * MIB) as usize)]
        );
        assert_eq!(
            guest_ram_regions(3 * GIB),
            vec![(GuestAddress(0), (3 * GIB) as usize)]
        );
        assert_eq!(
            guest_ram_regions(8 * GIB),
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (5 * GIB) as usize)
            ]
        );
        assert_eq!(ram_below_4g(8 * GIB) + ram_above_4g(8 * GIB), 8 * GIB);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, end) of every fixed low-memory structure.
        let gdt_end = BOOT_GDT_START + 6 * 8;
        let spans = [
            (BOOT_GDT_START, gdt_end),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_INFO_START + PAGE),
            (ZERO_PAGE_START, ZERO_PAGE_START + PAGE),
            (BOOT_STACK_POINTER - PAGE + 0x10, BOOT_STACK_POINTER),
            (PML4_START, PDE_START + 4 * PAGE),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
        ];
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:#x?} overlaps {:#x?}",
                pair[0],
                pair[1]
            );
        }
        assert!(spans.last().unwrap().1 <= EBDA_START);
    }
}

/// Where memory that host tools add to a running guest (the control socket's
/// `RegisterMemory`) may go: from the first 1 GiB boundary at or above the end of RAM
/// above 4 GiB (so never in the 32-bit MMIO hole, never overlapping RAM) ...
pub fn registered_memory_base(mem_bytes: u64) -> u64 {
    let ram_end = MMIO_HOLE_END.saturating_add(ram_above_4g(mem_bytes));
    ram_end.next_multiple_of(1 << 30)
}

/// ... up to 512 GiB: 39 physical address bits, the smallest any x86-64 CPU vmm runs on
/// offers, so the guest can always reach what it is given.
pub const REGISTERED_MEMORY_END: u64 = 1 << 39;

#[cfg(test)]
mod registered_memory_tests {
    use super::*;

    #[test]
    fn registered_memory_starts_at_4_gib_for_small_guests() {
        assert_eq!(registered_memory_base(256 << 20), 1 << 32);
        assert_eq!(registered_memory_base(3 << 30), 1 << 32);
    }

    #[test]
    fn registered_memory_starts_above_high_ram_on_a_gib_boundary() {
        // 6 GiB: 3 GiB below the hole, 3 GiB from 4 GiB to 7 GiB.
        assert_eq!(registered_memory_base(6 << 30), 7 << 30);
        // 6 GiB + 1 MiB: RAM ends just past 7 GiB, so the next boundary is 8 GiB.
        assert_eq!(registered_memory_base((6 << 30) + (1 << 20)), 8 << 30);
    }
}
