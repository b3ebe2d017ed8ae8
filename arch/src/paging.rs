//! The identity-mapped page tables the 64-bit boot protocol requires: the
//! kernel is entered with paging on, and the protocol only promises it an
//! identity mapping of the memory it was loaded into, the zero page and the
//! command line. We map the whole first 4 GiB with 2 MiB pages: every boot
//! structure lives there, and the kernel builds its own tables immediately.
//!
//! 2 MiB rather than 1 GiB pages because 1 GiB pages need the PDPE1GB CPUID
//! bit, which not every host (or nested setup) offers; the cost is 4 pages.

use crate::layout::{PDE_START, PDPTE_START, PML4_START};

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_RW: u64 = 1 << 1;
/// Page size: in a PD entry, maps a 2 MiB frame instead of pointing at a PT.
pub const PTE_PS: u64 = 1 << 7;

/// Number of page directories: one per GiB mapped.
pub const NUM_PDS: usize = 4;
const ENTRIES: usize = 512;
const PAGE_2M: u64 = 2 << 20;

/// The boot page tables, ready to be written at their `layout` addresses.
pub struct PageTables {
    /// Written at `PML4_START`; entry 0 points at the PDPT.
    pub pml4: [u64; ENTRIES],
    /// Written at `PDPTE_START`; entries 0..4 point at the PDs.
    pub pdpt: [u64; ENTRIES],
    /// Written back to back from `PDE_START`.
    pub pds: [[u64; ENTRIES]; NUM_PDS],
}

impl PageTables {
    /// Builds the 4 GiB identity map, on the heap: the tables are 24 KiB, and the main
    /// thread's stack pages that a frame this size touches (stack probes write every
    /// page of it) would stay resident for the VMM's whole life, in every VM.
    pub fn identity_4g() -> Box<Self> {
        let mut tables = Box::new(PageTables {
            pml4: [0; ENTRIES],
            pdpt: [0; ENTRIES],
            pds: [[0; ENTRIES]; NUM_PDS],
        });
        tables.pml4[0] = PDPTE_START | PTE_P | PTE_RW;
        for (i, e) in tables.pdpt.iter_mut().take(NUM_PDS).enumerate() {
            *e = pd_address(i) | PTE_P | PTE_RW;
        }
        for (i, pd) in tables.pds.iter_mut().enumerate() {
            for (j, e) in pd.iter_mut().enumerate() {
                let frame = ((i * ENTRIES + j) as u64) * PAGE_2M;
                *e = frame | PTE_PS | PTE_RW | PTE_P;
            }
        }
        tables
    }
}

/// Guest physical address of page directory `i`.
pub fn pd_address(i: usize) -> u64 {
    PDE_START + (i as u64) * 0x1000
}

/// The value for CR3.
pub const CR3: u64 = PML4_START;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pml4_points_at_pdpt() {
        let t = PageTables::identity_4g();
        assert_eq!(t.pml4[0], 0xa000 | PTE_P | PTE_RW);
        assert!(t.pml4[1..].iter().all(|&e| e == 0));
    }

    #[test]
    fn pdpt_points_at_four_pds() {
        let t = PageTables::identity_4g();
        for i in 0..NUM_PDS {
            assert_eq!(t.pdpt[i], (0xb000 + 0x1000 * i as u64) | PTE_P | PTE_RW);
        }
        assert!(t.pdpt[NUM_PDS..].iter().all(|&e| e == 0));
    }

    #[test]
    fn pds_map_2m_frames_identity() {
        let t = PageTables::identity_4g();
        assert_eq!(t.pds[0][0], PTE_PS | PTE_RW | PTE_P);
        assert_eq!(t.pds[0][1], 0x20_0000 | PTE_PS | PTE_RW | PTE_P);
        assert_eq!(t.pds[1][0], 0x4000_0000 | PTE_PS | PTE_RW | PTE_P);
        assert_eq!(
            t.pds[3][511],
            (0x1_0000_0000 - 0x20_0000) | PTE_PS | PTE_RW | PTE_P
        );
        for pd in &t.pds {
            assert!(pd.iter().all(|e| e & (PTE_PS | PTE_RW | PTE_P) == 0x83));
        }
    }
}
