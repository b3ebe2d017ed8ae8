//! Guest RAM in a snapshot: the memory file, and the `MEMORY` record that says where each
//! RAM range lies in it.
//!
//! The memory file is the guest's RAM ranges laid end to end (range `i` at the sum of the
//! lengths before it), exactly as long as all of them together. It is written sparse: a
//! page that holds only zeros (never touched, given back through the balloon, or zeroed by
//! the guest) is left a hole, so the file occupies no more disk than the pages that hold
//! something. Restore maps it privately (`MAP_PRIVATE`, [`crate::guest_ram`]): nothing is
//! read up front, pages come in from the page cache as the guest touches them, and the
//! guest's writes never reach the file.
//!
//! Which pages are read: those the process's pagemap calls present or swapped out, and,
//! for RAM mapped from a restored snapshot's memory file, those where that file has data
//! ([`super::page_map`]); a page that is neither reads as zeros and is left a hole unread.
//! Residency alone (`mincore(2)`) would not do: a swapped-out page reads as not resident,
//! and a restored VM's untouched pages live in its memory file. Without a pagemap every
//! page is read. A page that is read and holds only zeros is a hole too.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use snapshot::payload::{Decoder, Encoder};

use super::page_map::{BATCH_PAGES, DataExtents, PageMap};
use super::ram_writer::{Extent, write_extents};
use snapshot::{RecordType, kind};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// The `MEMORY` record type this module writes.
pub const MEMORY_RECORD: RecordType = RecordType::required(kind::MEMORY, 1);

/// Granularity of holes: the host page size of every x86-64 Linux host.
pub const PAGE_SIZE: u64 = 4096;

/// Most RAM ranges a layout may have (today's VMs have one or two: below and above the
/// 32-bit PCI hole).
pub const MAX_RANGES: usize = 8;

/// Most guest RAM a layout may describe: 1 TiB, far above what `vmm run --mem` accepts and
/// far below what overflows any sum of it.
pub const MAX_TOTAL_BYTES: u64 = 1 << 40;

/// Why the memory file could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Writing or sizing the memory file failed (a full disk, a read-only file).
    #[error("cannot write the memory file: {0}")]
    Write(#[source] io::Error),
    /// The memory file's size is not the snapshot's RAM size.
    #[error("the memory file is {actual} bytes, the snapshot's guest RAM is {expected} bytes")]
    WrongSize {
        /// The snapshot's RAM, in bytes.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// The memory file's size could not be read.
    #[error("cannot read the memory file's size: {0}")]
    Stat(#[source] io::Error),
    /// The `MEMORY` record is malformed or out of range.
    #[error(transparent)]
    Record(#[from] snapshot::Error),
}

/// One RAM range and where it lies in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Guest-physical start, page-aligned.
    pub guest_addr: u64,
    /// Length in bytes, a non-zero multiple of [`PAGE_SIZE`].
    pub len: u64,
    /// Offset of its first byte in the memory file.
    pub file_offset: u64,
}

/// Guest RAM as a snapshot records it: the ranges, ascending, not overlapping, laid end to
/// end in the memory file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    ranges: Vec<RamRange>,
}

impl MemoryLayout {
    /// The layout of `mem`'s regions.
    pub fn of(mem: &GuestMemoryMmap) -> MemoryLayout {
        let mut file_offset = 0;
        let ranges = mem
            .iter()
            .map(|region| {
                let range = RamRange {
                    guest_addr: region.start_addr().0,
                    len: region.len(),
                    file_offset,
                };
                file_offset = file_offset.saturating_add(region.len());
                range
            })
            .collect();
        MemoryLayout { ranges }
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// The ranges as `map_guest_ram_from_file` takes them (guest address, length, offset
    /// in the memory file).
    pub fn file_ranges(&self) -> io::Result<Vec<(GuestAddress, usize, u64)>> {
        self.ranges
            .iter()
            .map(|r| {
                let len = usize::try_from(r.len).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "RAM range too large")
                })?;
                Ok((GuestAddress(r.guest_addr), len, r.file_offset))
            })
            .collect()
    }

    /// All RAM, in bytes: the memory file's size.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// The `MEMORY` record's payload: the range count (u32), then per range guest address,
    /// length and file offset (u64 each).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        // At most MAX_RANGES ranges, see `decode`; `of` makes one per vm-memory region.
        e.u32(u32::try_from(self.ranges.len()).unwrap_or(u32::MAX));
        for r in &self.ranges {
            e.u64(r.guest_addr).u64(r.len).u64(r.file_offset);
        }
        e.into_vec()
    }

    /// Reads a `MEMORY` payload and checks it: 1 to [`MAX_RANGES`] ranges, page-aligned,
    /// non-empty, ascending without overlap or wrap-around, laid end to end from offset 0,
    /// at most [`MAX_TOTAL_BYTES`] in all.
    pub fn decode(mut d: Decoder<'_>) -> Result<MemoryLayout, snapshot::Error> {
        let count = d.count("RAM range count", MAX_RANGES)?;
        if count == 0 {
            return Err(d.out_of_range("RAM range count", 0));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut next_offset = 0u64;
        let mut lowest_free = 0u64;
        for _ in 0..count {
            let range = RamRange {
                guest_addr: d.u64()?,
                len: d.u64()?,
                file_offset: d.u64()?,
            };
            if range.guest_addr % PAGE_SIZE != 0 || range.guest_addr < lowest_free {
                return Err(d.out_of_range("RAM range address", range.guest_addr));
            }
            if range.len == 0 || range.len % PAGE_SIZE != 0 {
                return Err(d.out_of_range("RAM range length", range.len));
            }
            if range.file_offset != next_offset {
                return Err(d.out_of_range("RAM range file offset", range.file_offset));
            }
            let end = range.guest_addr.checked_add(range.len);
            let total = next_offset.checked_add(range.len);
            let (Some(end), Some(total)) = (end, total) else {
                return Err(d.out_of_range("RAM range length", range.len));
            };
            if total > MAX_TOTAL_BYTES {
                return Err(d.out_of_range("guest RAM size", total));
            }
            lowest_free = end;
            next_offset = total;
            ranges.push(range);
        }
        d.finish()?;
        Ok(MemoryLayout { ranges })
    }

    /// Checks that `file` is exactly as long as this layout's RAM.
    pub fn check_file(&self, file: &File) -> Result<(), MemoryFileError> {
        let actual = file.metadata().map_err(MemoryFileError::Stat)?.len();
        let expected = self.total_bytes();
        if actual != expected {
            return Err(MemoryFileError::WrongSize { expected, actual });
        }
        Ok(())
    }
}

/// What writing the memory file did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Bytes of guest RAM (the file's size).
    pub ram_bytes: u64,
    /// Bytes written (non-zero pages); the rest of the file is holes.
    pub written_bytes: u64,
}

/// Writes all of `mem` into `file` (emptied first), zero pages as holes, and returns its
/// layout, in this process. The guest must not run meanwhile (its vCPUs paused, device
/// workers quiesced), or the file would mix moments. With `page_map`, pages that cannot
/// hold data are not read. (A snapshot that lets the VM run on hands the same extents to a
/// forked writer instead, `super::ram_writer`.)
pub fn write_memory_file(
    mem: &GuestMemoryMmap,
    page_map: Option<&PageMap>,
    file: &File,
) -> Result<(MemoryLayout, WriteSummary), MemoryFileError> {
    let layout = MemoryLayout::of(mem);
    prepare_file(file, &layout)?;
    let extents = plan_extents(mem, page_map);
    let written = write_extents(&extents, file.as_raw_fd())
        .map_err(|errno| MemoryFileError::Write(io::Error::from_raw_os_error(errno)))?;
    let summary = WriteSummary {
        ram_bytes: layout.total_bytes(),
        written_bytes: written,
    };
    Ok((layout, summary))
}

/// Empties `file` and sizes it for `layout`: all holes, ready for the pages.
pub fn prepare_file(file: &File, layout: &MemoryLayout) -> Result<(), MemoryFileError> {
    file.set_len(0).map_err(MemoryFileError::Write)?;
    file.set_len(layout.total_bytes())
        .map_err(MemoryFileError::Write)
}

/// The parts of `mem` that may hold something other than zeros, each with its place in
/// the memory file ([`MemoryLayout::of`]'s), adjacent pages merged: what a snapshot
/// writes. With `page_map`, only pages present or swapped out (or, for RAM mapped from a
/// file, where the file has data); without, all of RAM. Reads no guest page: cheap enough
/// to run while the VM is paused (a pagemap read per 2 MiB).
pub fn plan_extents(mem: &GuestMemoryMmap, page_map: Option<&PageMap>) -> Vec<Extent> {
    let page_map = page_map.filter(|map| {
        let ours = map.describes_this_process();
        if !ours {
            log::warn!("the pagemap was opened by another process: reading every page");
        }
        ours
    });
    let layout = MemoryLayout::of(mem);
    let mut extents = Vec::new();
    for (region, range) in mem.iter().zip(layout.ranges()) {
        plan_region(region, range, page_map, &mut extents);
    }
    extents
}

/// Adds the runs of candidate pages of one region to `extents`.
fn plan_region(
    region: &GuestRegionMmap,
    range: &RamRange,
    page_map: Option<&PageMap>,
    extents: &mut Vec<Extent>,
) {
    let mut candidates = CandidatePages::new(region, page_map);
    let mut run: Option<u64> = None;
    let mut offset = 0;
    while offset < range.len {
        match (candidates.may_hold_data(offset), run) {
            (true, None) => run = Some(offset),
            (false, Some(start)) => {
                push_extent(region, range, start, offset, extents);
                run = None;
            }
            _ => {}
        }
        offset = offset.saturating_add(PAGE_SIZE);
    }
    if let Some(start) = run {
        push_extent(region, range, start, range.len, extents);
    }
}

/// Adds region offsets `[start, end)` as an extent.
fn push_extent(
    region: &GuestRegionMmap,
    range: &RamRange,
    start: u64,
    end: u64,
    extents: &mut Vec<Extent>,
) {
    let host = usize::try_from(start)
        .ok()
        .and_then(|start| (region.as_ptr() as usize).checked_add(start));
    let len = usize::try_from(end.saturating_sub(start)).ok();
    let (Some(host), Some(len)) = (host, len) else {
        return;
    };
    // SAFETY: [start, end) lies inside the region (end <= its length), whose mapping
    // lives as long as the process (`crate::guest_ram`), is readable, and is page-aligned
    // like both offsets.
    extents.push(unsafe { Extent::new(range.file_offset.saturating_add(start), host, len) });
}

/// Which pages of one region may hold data, a pagemap batch at a time, asked in
/// ascending order.
struct CandidatePages<'a> {
    page_map: Option<&'a PageMap>,
    /// The region's host address.
    host: usize,
    len: u64,
    /// The file the region maps privately, and its offset there (a restored VM's RAM).
    source: Option<(DataExtents<'a>, u64)>,
    /// Region offset of the batch in `populated`.
    batch_start: u64,
    populated: [bool; BATCH_PAGES],
    /// Whether `populated` holds the batch at `batch_start`.
    loaded: bool,
}

impl<'a> CandidatePages<'a> {
    fn new(region: &'a GuestRegionMmap, page_map: Option<&'a PageMap>) -> CandidatePages<'a> {
        CandidatePages {
            page_map,
            host: region.as_ptr() as usize,
            len: region.len(),
            source: region
                .file_offset()
                .map(|source| (DataExtents::new(source.file()), source.start())),
            batch_start: 0,
            populated: [true; BATCH_PAGES],
            loaded: false,
        }
    }

    /// Whether the page at region offset `offset` may hold something other than zeros.
    fn may_hold_data(&mut self, offset: u64) -> bool {
        let Some(page_map) = self.page_map else {
            return true;
        };
        let batch_bytes = PAGE_SIZE.saturating_mul(BATCH_PAGES as u64);
        if !self.loaded || offset >= self.batch_start.saturating_add(batch_bytes) {
            let into_batch = offset.checked_rem(batch_bytes).unwrap_or(0);
            self.load(page_map, offset.saturating_sub(into_batch));
        }
        let index =
            usize::try_from(offset.saturating_sub(self.batch_start) / PAGE_SIZE).unwrap_or(0);
        if self.populated.get(index).copied().unwrap_or(true) {
            return true;
        }
        match &mut self.source {
            Some((extents, start)) => extents.has_data(start.saturating_add(offset), PAGE_SIZE),
            None => false,
        }
    }

    /// Reads the batch of entries from region offset `batch_start`; a failed read makes
    /// every page of the batch a candidate.
    fn load(&mut self, page_map: &PageMap, batch_start: u64) {
        let pages = usize::try_from(self.len.saturating_sub(batch_start) / PAGE_SIZE)
            .unwrap_or(BATCH_PAGES)
            .min(BATCH_PAGES);
        let host = usize::try_from(batch_start)
            .ok()
            .and_then(|start| self.host.checked_add(start));
        let read = match (host, self.populated.get_mut(..pages)) {
            (Some(host), Some(flags)) => page_map.populated(host, flags),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        if let Err(err) = read {
            log::debug!(
                "pagemap unreadable at region offset {batch_start:#x} ({err}): reading every page"
            );
            self.populated.fill(true);
        }
        self.batch_start = batch_start;
        self.loaded = true;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use snapshot::payload::Decoder;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::guest_ram::{map_guest_ram, map_guest_ram_from_file};
    use crate::snapshot::page_map::PageMap;

    const PAGE_BYTES: usize = 4096;
    const LOW: u64 = 8 << 20;
    const HIGH_BASE: u64 = 0x1_0000_0000;
    const HIGH: u64 = 2 << 20;

    fn scratch_file(name: &str) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("vmm-memory-file-{}-{name}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch file");
        (path, file)
    }

    fn two_ranges() -> GuestMemoryMmap {
        map_guest_ram(&[
            (GuestAddress(0), LOW as usize),
            (GuestAddress(HIGH_BASE), HIGH as usize),
        ])
        .expect("guest RAM")
    }

    #[test]
    fn ram_round_trips_through_a_sparse_file_mapped_privately() {
        let mem = two_ranges();
        // Three scattered non-zero pages, one page the guest zeroed after touching it, and
        // a run of two pages crossing nothing.
        mem.write_obj(0x1111u64, GuestAddress(0x1000)).expect("w");
        mem.write_obj(0x2222u64, GuestAddress(0x7f_fff8))
            .expect("w");
        mem.write_slice(&[0x33; 8192], GuestAddress(0x20_0000))
            .expect("w");
        mem.write_obj(0x4444u64, GuestAddress(HIGH_BASE + HIGH - 8))
            .expect("w");
        mem.write_obj(0u64, GuestAddress(0x30_0000)).expect("w");
        let (path, file) = scratch_file("round-trip");

        let (layout, summary) = write_memory_file(&mem, None, &file).expect("write");

        assert_eq!(summary.ram_bytes, LOW + HIGH);
        assert_eq!(
            summary.written_bytes,
            5 * PAGE_SIZE,
            "only the non-zero pages"
        );
        let meta = file.metadata().expect("stat");
        assert_eq!(meta.len(), LOW + HIGH, "the file is as long as RAM");
        assert!(
            meta.blocks() * 512 <= 5 * PAGE_SIZE + 64 * 1024,
            "the file is sparse: {} bytes allocated",
            meta.blocks() * 512
        );
        assert_eq!(layout.ranges()[1].file_offset, LOW);

        layout.check_file(&file).expect("right size");
        let restored =
            map_guest_ram_from_file(&layout.file_ranges().expect("ranges"), &file).expect("map");
        let read = |addr| restored.read_obj::<u64>(GuestAddress(addr)).expect("read");
        assert_eq!(read(0x1000), 0x1111);
        assert_eq!(read(0x7f_fff8), 0x2222);
        assert_eq!(read(0x20_1ff8), 0x3333_3333_3333_3333);
        assert_eq!(read(HIGH_BASE + HIGH - 8), 0x4444);
        assert_eq!(read(0x30_0000), 0);
        assert_eq!(read(0x40_0000), 0, "a hole reads as zeros");

        // The guest's writes after restore stay in the process: the file keeps the snapshot.
        restored
            .write_obj(0x5555u64, GuestAddress(0x1000))
            .expect("w");
        let mut on_disk = [0u8; 8];
        file.read_exact_at(&mut on_disk, 0x1000).expect("pread");
        assert_eq!(u64::from_le_bytes(on_disk), 0x1111);
        let _ = std::fs::remove_file(path);
    }

    /// Pages of `mem`'s regions the pagemap calls populated.
    fn populated_pages(mem: &GuestMemoryMmap, map: &PageMap) -> usize {
        let mut count = 0;
        for region in mem.iter() {
            let host = region.as_ptr() as usize;
            let mut offset = 0;
            while (offset as u64) < region.len() {
                let mut flags = [false; BATCH_PAGES];
                let pages = ((region.len() as usize - offset) / PAGE_BYTES).min(BATCH_PAGES);
                map.populated(host + offset, &mut flags[..pages])
                    .expect("pagemap");
                count += flags[..pages].iter().filter(|&&f| f).count();
                offset += pages * PAGE_BYTES;
            }
        }
        count
    }

    #[test]
    fn with_the_pagemap_untouched_pages_are_holes_and_are_not_read() {
        let map = PageMap::open_own().expect("this host's pagemap");
        let mem = two_ranges();
        mem.write_obj(0x1111u64, GuestAddress(0x1000)).expect("w");
        mem.write_slice(&[0x33; 8192], GuestAddress(0x20_0000))
            .expect("w");
        mem.write_obj(0x4444u64, GuestAddress(HIGH_BASE + 8))
            .expect("w");
        // Touched, then zeroed by the guest: read, and still a hole.
        mem.write_obj(0u64, GuestAddress(0x30_0000)).expect("w");
        let before = populated_pages(&mem, &map);
        let (path, file) = scratch_file("pagemap");

        let (layout, summary) = write_memory_file(&mem, Some(&map), &file).expect("write");

        assert_eq!(summary.written_bytes, 4 * PAGE_SIZE);
        assert_eq!(
            populated_pages(&mem, &map),
            before,
            "saving populated no page of guest RAM (untouched pages were never read)"
        );
        let restored =
            map_guest_ram_from_file(&layout.file_ranges().expect("ranges"), &file).expect("map");
        let read = |addr| restored.read_obj::<u64>(GuestAddress(addr)).expect("read");
        assert_eq!(read(0x1000), 0x1111);
        assert_eq!(read(0x20_1ff8), 0x3333_3333_3333_3333);
        assert_eq!(read(HIGH_BASE + 8), 0x4444);
        assert_eq!(read(0x30_0000), 0);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_extents_to_write_are_the_populated_runs_at_their_file_offsets() {
        let map = PageMap::open_own().expect("this host's pagemap");
        // Transparent huge pages would populate whole 2 MiB pages: 4 KiB pages here.
        let mem = two_ranges();
        for region in mem.iter() {
            // SAFETY: the region's own mapping; MADV_NOHUGEPAGE changes only its backing.
            let rc = unsafe {
                libc::madvise(
                    region.as_ptr().cast(),
                    region.len() as usize,
                    libc::MADV_NOHUGEPAGE,
                )
            };
            assert_eq!(rc, 0);
        }
        mem.write_obj(1u64, GuestAddress(0x1000)).expect("w");
        mem.write_obj(2u64, GuestAddress(0x2000)).expect("w");
        mem.write_obj(3u64, GuestAddress(0x5000)).expect("w");
        mem.write_obj(4u64, GuestAddress(HIGH_BASE + 0x3000))
            .expect("w");

        let extents = plan_extents(&mem, Some(&map));

        let spans: Vec<(u64, usize)> = extents
            .iter()
            .map(|e| (e.file_offset(), e.byte_len()))
            .collect();
        assert_eq!(
            spans,
            [
                (0x1000, 2 * PAGE_BYTES),
                (0x5000, PAGE_BYTES),
                (LOW + 0x3000, PAGE_BYTES)
            ],
            "two adjacent pages merged; the second range's page after the first range's RAM"
        );
        assert_eq!(
            plan_extents(&mem, None)
                .iter()
                .map(|e| e.byte_len() as u64)
                .sum::<u64>(),
            LOW + HIGH,
            "without a pagemap, all of RAM"
        );
    }

    #[test]
    fn a_restored_vms_pages_that_stayed_in_its_memory_file_are_saved_again() {
        let map = PageMap::open_own().expect("this host's pagemap");
        let mem = two_ranges();
        mem.write_obj(0x1111u64, GuestAddress(0x1000)).expect("w");
        mem.write_obj(0x2222u64, GuestAddress(0x50_0000))
            .expect("w");
        mem.write_obj(0x4444u64, GuestAddress(HIGH_BASE + 8))
            .expect("w");
        let (first_path, first) = scratch_file("first");
        let (layout, _) = write_memory_file(&mem, Some(&map), &first).expect("first");
        let restored =
            map_guest_ram_from_file(&layout.file_ranges().expect("ranges"), &first).expect("map");
        // The restored guest changes one page and never touches the others: they are not
        // in the process, only in the first memory file.
        restored
            .write_obj(0x5555u64, GuestAddress(0x1000))
            .expect("w");
        restored
            .write_obj(0x6666u64, GuestAddress(0x60_0000))
            .expect("w");
        let (second_path, second) = scratch_file("second");

        let (layout, summary) = write_memory_file(&restored, Some(&map), &second).expect("second");

        assert_eq!(summary.written_bytes, 4 * PAGE_SIZE);
        let again =
            map_guest_ram_from_file(&layout.file_ranges().expect("ranges"), &second).expect("map");
        let read = |addr| again.read_obj::<u64>(GuestAddress(addr)).expect("read");
        assert_eq!(read(0x1000), 0x5555, "the page the restored guest changed");
        assert_eq!(read(0x50_0000), 0x2222, "a page only the first file held");
        assert_eq!(read(HIGH_BASE + 8), 0x4444, "the same, in the second range");
        assert_eq!(
            read(0x60_0000),
            0x6666,
            "a page the restored guest wrote first"
        );
        let _ = std::fs::remove_file(first_path);
        let _ = std::fs::remove_file(second_path);
    }

    #[test]
    fn a_memory_file_of_the_wrong_size_is_refused() {
        let layout = MemoryLayout::of(&two_ranges());
        let (path, file) = scratch_file("wrong-size");
        file.set_len(LOW).expect("truncate");
        let err = layout.check_file(&file).expect_err("short file");
        assert_eq!(
            err.to_string(),
            format!(
                "the memory file is {LOW} bytes, the snapshot's guest RAM is {} bytes",
                LOW + HIGH
            )
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_that_cannot_take_the_pages_is_an_error() {
        let mem = two_ranges();
        mem.write_obj(1u64, GuestAddress(0)).expect("w");
        let full = File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let err = write_memory_file(&mem, None, &full).expect_err("/dev/full");
        assert!(matches!(err, MemoryFileError::Write(_)), "{err}");
    }

    fn decode(payload: &[u8]) -> Result<MemoryLayout, snapshot::Error> {
        MemoryLayout::decode(Decoder::new(MEMORY_RECORD, payload))
    }

    fn payload(ranges: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u32(ranges.len() as u32);
        for &(a, l, o) in ranges {
            e.u64(a).u64(l).u64(o);
        }
        e.into_vec()
    }

    #[test]
    fn the_record_round_trips_and_pins_its_bytes() {
        let layout = MemoryLayout::of(&two_ranges());
        let bytes = layout.encode();
        assert_eq!(
            bytes,
            payload(&[(0, LOW, 0), (HIGH_BASE, HIGH, LOW)]),
            "count, then address, length, offset per range, little-endian"
        );
        // The example in docs/snapshot-format.md.
        let golden = "02000000\
                      0000000000000000 0000800000000000 0000000000000000\
                      0000000001000000 0000200000000000 0000800000000000";
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, golden.replace(' ', ""));
        assert_eq!(decode(&bytes).expect("decode"), layout);
    }

    #[test]
    fn out_of_range_layouts_are_refused() {
        let p = PAGE_SIZE;
        let cases: [(&str, Vec<u8>); 9] = [
            ("RAM range count", payload(&[])),
            ("RAM range count", payload(&[(0, p, 0); 9])),
            ("RAM range address", payload(&[(1, p, 0)])),
            ("RAM range length", payload(&[(0, 0, 0)])),
            ("RAM range length", payload(&[(0, p + 1, 0)])),
            ("RAM range file offset", payload(&[(0, p, p)])),
            (
                "RAM range address",
                payload(&[(0, 2 * p, 0), (p, p, 2 * p)]),
            ),
            ("RAM range length", payload(&[(u64::MAX - p + 1, 2 * p, 0)])),
            ("guest RAM size", payload(&[(0, MAX_TOTAL_BYTES + p, 0)])),
        ];
        for (what, bytes) in cases {
            let err = decode(&bytes).expect_err(what);
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        let mut trailing = payload(&[(0, p, 0)]);
        trailing.push(0);
        assert!(decode(&trailing).is_err(), "trailing bytes");
        assert!(decode(&[1, 0]).is_err(), "truncated");
    }
}
