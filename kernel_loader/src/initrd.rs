//! Placing the initial ramdisk in guest memory.
//!
//! Owns the placement policy: page-aligned, as high as possible inside the
//! window the caller allows (which encodes the kernel's `initrd_addr_max`,
//! the end of low RAM and the end of the kernel), entirely in guest memory.

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion};

use crate::{Error, mem};

/// Initrd start addresses are aligned to this.
const PAGE_SIZE: u64 = 4096;

/// Highest page-aligned start `s` with `lo <= s` and `s + len - 1 <= hi`.
fn highest_start(len: u64, lo: u64, hi: u64) -> Option<u64> {
    let top = hi.checked_sub(len.checked_sub(1)?)?;
    let start = top & !(PAGE_SIZE - 1);
    (start >= lo).then_some(start)
}

/// Copies `initrd` into guest memory and returns its start address.
///
/// The initrd is placed page-aligned as high as possible such that
/// `lowest <= start` and `start + len - 1 <= highest` (both inclusive), with
/// every byte in guest memory. Pass `lowest = kernel_end` and
/// `highest = min(initrd_addr_max, end of low RAM - 1)`.
pub fn load_initrd<M: GuestMemory>(
    mem: &M,
    initrd: &[u8],
    lowest: GuestAddress,
    highest: GuestAddress,
) -> Result<GuestAddress, Error> {
    if initrd.is_empty() {
        return Err(Error::InitrdEmpty);
    }
    let len = initrd.len() as u64;
    let does_not_fit = Error::InitrdDoesNotFit {
        size: len,
        lowest,
        highest,
    };

    // Fast path: the top of the window is guest memory.
    let mut best = highest_start(len, lowest.0, highest.0)
        .filter(|&s| mem::range_in_memory(mem, GuestAddress(s), len));

    // Otherwise (a hole at the top of the window) try the top of each region
    // that intersects the window.
    if best.is_none() {
        best = mem.physical_memory().and_then(|phys| {
            phys.iter()
                .filter_map(|region| {
                    let lo = lowest.0.max(region.start_addr().0);
                    let hi = highest.0.min(region.last_addr().0);
                    highest_start(len, lo, hi)
                })
                .filter(|&s| mem::range_in_memory(mem, GuestAddress(s), len))
                .max()
        });
    }

    let start = GuestAddress(best.ok_or(does_not_fit)?);
    mem::write(mem, "initrd", start, initrd)?;
    Ok(start)
}
