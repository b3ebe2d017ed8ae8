//! Giving back inflated pages: the frame numbers of an inflate chain, gathered into runs
//! of contiguous frames, each run clipped to the guest RAM regions handed over at
//! activation and discarded there with `madvise(MADV_DONTNEED)`. Nothing outside those
//! regions is ever touched; what could not be given back is counted and logged.

use std::io;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use super::records::{Records, stream_readable};
use super::{BALLOON_PAGE_SIZE, LogBudget, MAX_PFNS_PER_CHAIN};
use crate::virtio::DescriptorChain;

/// log2 of [`BALLOON_PAGE_SIZE`]: turns a frame number into a guest address.
const PAGE_SHIFT: u32 = 12;
/// Bytes of one frame number in an inflate chain: a little-endian u32.
const PFN_SIZE: usize = 4;

/// What came of one inflate chain, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
struct InflateOutcome {
    /// Pages given back to the host.
    released: u64,
    /// Pages not (wholly) inside guest RAM.
    outside: u64,
    /// Pages madvise refused.
    failed: u64,
    /// Why madvise refused, the last time it did.
    errno: Option<i32>,
}

/// Gives back the pages an inflate chain lists, then logs anything odd about it.
pub(super) fn inflate_chain(mem: &GuestMemoryMmap, chain: &DescriptorChain, log: &mut LogBudget) {
    let mut pfns = Records::<PFN_SIZE>::new();
    let mut release = Release::new(mem);
    let mut count = 0;
    let mut truncated = false;
    let readable = stream_readable(mem, chain, |bytes| {
        pfns.feed(bytes, |pfn| {
            if count == MAX_PFNS_PER_CHAIN {
                truncated = true;
                return false;
            }
            // Below MAX_PFNS_PER_CHAIN (checked above): cannot saturate.
            count = count.saturating_add(1);
            release.push(u32::from_le_bytes(pfn));
            true
        })
    });
    let outcome = release.finish();
    let leftover = pfns.leftover();
    if !readable || truncated || leftover != 0 || outcome.outside != 0 || outcome.failed != 0 {
        log.warn(format_args!(
            "inflate chain {}: {} pages outside guest RAM, {} not released (errno {:?}), \
             {leftover} trailing bytes, truncated: {truncated}, readable: {readable}",
            chain.head, outcome.outside, outcome.failed, outcome.errno
        ));
    }
}

/// Gives back pages as their frame numbers come, one madvise per run of contiguous
/// frames (Linux often sends hundreds in a row).
struct Release<'m> {
    mem: &'m GuestMemoryMmap,
    /// The current run: first frame and length in pages.
    run: Option<(u64, u64)>,
    outcome: InflateOutcome,
}

impl<'m> Release<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Release<'m> {
        Release {
            mem,
            run: None,
            outcome: InflateOutcome::default(),
        }
    }

    fn push(&mut self, pfn: u32) {
        let pfn = u64::from(pfn);
        self.run = match self.run {
            // `first` is a u32 frame and `len` at most MAX_PFNS_PER_CHAIN:
            // neither addition can overflow a u64.
            Some((first, len)) if first.checked_add(len) == Some(pfn) => {
                Some((first, len.saturating_add(1)))
            }
            Some((first, len)) => {
                release_run(self.mem, first, len, &mut self.outcome);
                Some((pfn, 1))
            }
            None => Some((pfn, 1)),
        };
    }

    fn finish(mut self) -> InflateOutcome {
        if let Some((first, len)) = self.run.take() {
            release_run(self.mem, first, len, &mut self.outcome);
        }
        self.outcome
    }
}

/// Gives back the `pages` pages from frame `first` that lie wholly inside a guest RAM
/// region, a piece per region; counts the rest as outside.
fn release_run(mem: &GuestMemoryMmap, first: u64, pages: u64, outcome: &mut InflateOutcome) {
    // A run holds consecutive u32 frames, so `first + pages <= 2^32` and `end <= 2^44`.
    let start = first << PAGE_SHIFT;
    let end = first.saturating_add(pages) << PAGE_SHIFT;
    let mut inside = 0u64;
    for region in mem.iter() {
        let Some((offset, len)) = page_span_in_region(region, start, end) else {
            continue;
        };
        let len_pages = len >> PAGE_SHIFT;
        // Page counts stay below 2^32 (see above): the sums cannot saturate.
        inside = inside.saturating_add(len_pages);
        match discard(region, offset, len) {
            Ok(()) => outcome.released = outcome.released.saturating_add(len_pages),
            Err(e) => {
                outcome.failed = outcome.failed.saturating_add(len_pages);
                outcome.errno = e.raw_os_error();
            }
        }
    }
    // Regions are disjoint, so the pages inside them are at most `pages`.
    outcome.outside = outcome.outside.saturating_add(pages.saturating_sub(inside));
}

/// The whole balloon pages of guest range `start..end` inside `region`, as an offset into
/// the region and a length, or `None` if there are none.
fn page_span_in_region<R: GuestMemoryRegion>(
    region: &R,
    start: u64,
    end: u64,
) -> Option<(u64, u64)> {
    let region_start = region.start_addr().0;
    let region_end = region_start.saturating_add(region.len());
    // `start` and `end` are page aligned; clipping to an unaligned region edge leaves
    // a page partly outside the region, which must not be discarded.
    let lo = start
        .max(region_start)
        .checked_next_multiple_of(BALLOON_PAGE_SIZE)?;
    let hi = end.min(region_end) & !(BALLOON_PAGE_SIZE - 1);
    // region_start <= lo < hi.
    (lo < hi).then(|| (lo.saturating_sub(region_start), hi.saturating_sub(lo)))
}

/// Discards `len` bytes at `offset` in `region` with `madvise(MADV_DONTNEED)`.
///
/// Inside a transparent huge page this splits its mapping and frees the host memory once
/// all of the huge page is discarded (or the kernel's deferred split runs); the guest
/// sees zero pages either way.
fn discard<R: GuestMemoryRegion>(region: &R, offset: u64, len: u64) -> io::Result<()> {
    let in_region = offset
        .checked_add(len)
        .is_some_and(|end| len > 0 && end <= region.len());
    if !in_region {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(io::Error::other)?;
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: `region` is a guest RAM region of the `GuestMemoryMmap` handed over at
    // activation, and `host` the host address of its byte `offset` (vm-memory checked
    // that offset is inside it). We checked `offset + len <= region.len()` above, and a
    // region's length is that of its mapping, so `host..host + len` lies inside the
    // mapping, which lives as long as the memory our caller borrows. madvise does not
    // unmap anything: with
    // MADV_DONTNEED the pages of this private anonymous guest RAM read as zero on their
    // next access, which is what the guest asked for by putting them in the balloon. No
    // Rust reference points into guest memory (it is only accessed volatilely), so no
    // Rust-visible value changes under anyone's feet. No other memory is touched.
    let ret = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    fn fill(mem: &GuestMemoryMmap, addr: u64, len: usize) {
        mem.write_slice(&vec![0xAA; len], GuestAddress(addr))
            .unwrap();
    }

    fn is_zero(mem: &GuestMemoryMmap, addr: u64, len: usize) -> bool {
        let mut buf = vec![0xFF; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().all(|b| *b == 0)
    }

    fn release_pfns(mem: &GuestMemoryMmap, pfns: &[u32]) -> InflateOutcome {
        let mut release = Release::new(mem);
        for pfn in pfns {
            release.push(*pfn);
        }
        release.finish()
    }

    #[test]
    fn a_run_across_two_regions_is_released_in_both() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x2000), 0x2000),
        ])
        .unwrap();
        fill(&mem, 0, 0x4000);
        let outcome = release_pfns(&mem, &[0, 1, 2, 3]);
        assert_eq!(
            outcome,
            InflateOutcome {
                released: 4,
                ..Default::default()
            }
        );
        assert!(is_zero(&mem, 0, 0x4000));
    }

    #[test]
    fn pages_in_gaps_or_past_the_end_are_counted_outside() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x4000), 0x1000),
        ])
        .unwrap();
        let outcome = release_pfns(&mem, &[0, 1, 2, 3, 4, 5, u32::MAX]);
        assert_eq!(
            outcome,
            InflateOutcome {
                released: 3,
                outside: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_page_straddling_an_unaligned_region_end_is_not_released() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2800)]).unwrap();
        fill(&mem, 0, 0x2800);
        let outcome = release_pfns(&mem, &[1, 2]);
        assert_eq!(
            outcome,
            InflateOutcome {
                released: 1,
                outside: 1,
                ..Default::default()
            }
        );
        assert!(is_zero(&mem, 0x1000, 0x1000));
        assert!(!is_zero(&mem, 0x2000, 0x800));
    }
}
