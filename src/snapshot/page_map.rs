//! Which pages of guest RAM can hold anything, so a snapshot reads only those: the
//! process's own `/proc/self/pagemap` (one 64-bit entry per virtual page), and for RAM
//! mapped from a file, the file's data and holes (`SEEK_DATA`/`SEEK_HOLE`).
//!
//! A page of a private anonymous mapping that is neither present nor swapped out has never
//! been written since it was last dropped (never touched, or given back through the
//! balloon): it reads as zeros, so the memory file leaves it a hole without reading it.
//! A guest that touched a tenth of its RAM costs a tenth of the reads. For RAM mapped
//! privately from a snapshot's memory file (a restored VM), a page that is not in the
//! process holds whatever the file holds there: zeros only where the file has a hole.
//!
//! The pagemap is opened by the process that runs the VM (after the jail's fork, before
//! its empty root hides /proc): its entries describe the address space of whoever opened
//! it. Without one (no /proc, a kernel without `CONFIG_PROC_PAGE_MONITOR`), every page is
//! read, as before.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Page size of every x86-64 Linux host, the pagemap's granularity.
const PAGE_SIZE: usize = 4096;
/// Bytes of one pagemap entry.
const ENTRY_BYTES: usize = 8;
/// Entry bit 63: the page is in RAM.
const PRESENT: u64 = 1 << 63;
/// Entry bit 62: the page is in swap (or being migrated).
const SWAPPED: u64 = 1 << 62;

/// Pages whose entries one read fetches: 16 MiB of guest RAM per 32 KiB read (the reads
/// run while a snapshot pauses the VM: 4 GiB took 7.0 ms in 512-page batches, 4.7 ms in
/// these).
pub const BATCH_PAGES: usize = 4096;

/// The VMM's own pagemap.
#[derive(Debug)]
pub struct PageMap {
    file: File,
    /// The process that opened it, whose address space its entries describe.
    opener: u32,
}

impl PageMap {
    /// Opens `/proc/self/pagemap` and checks that it reports pages: a page this function
    /// has just written must read as present (a kernel that hides the flags would make
    /// every page look untouched).
    pub fn open_own() -> io::Result<PageMap> {
        let map = PageMap {
            file: File::open("/proc/self/pagemap")?,
            opener: std::process::id(),
        };
        let probe = std::hint::black_box([1u8; 1]);
        let mut entry = [0u64; 1];
        map.read_entries(probe.as_ptr() as usize & !(PAGE_SIZE - 1), &mut entry)?;
        if entry[0] & PRESENT == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "/proc/self/pagemap does not report present pages",
            ));
        }
        Ok(map)
    }

    /// Whether this process opened it. After a fork the child would read its parent's
    /// entries, which know nothing of mappings made since: every page of them would look
    /// untouched and a snapshot would lose them.
    pub fn describes_this_process(&self) -> bool {
        std::process::id() == self.opener
    }

    /// Fills `entries` with the entries of the pages from host address `page_addr`
    /// (page-aligned) on.
    fn read_entries(&self, page_addr: usize, entries: &mut [u64]) -> io::Result<()> {
        let mut bytes = [0u8; BATCH_PAGES * ENTRY_BYTES];
        let wanted = entries.len().min(BATCH_PAGES);
        let bytes = bytes
            .get_mut(..wanted.saturating_mul(ENTRY_BYTES))
            .unwrap_or_default();
        let offset = u64::try_from(page_addr / PAGE_SIZE)
            .unwrap_or(u64::MAX)
            .saturating_mul(ENTRY_BYTES as u64);
        self.file.read_exact_at(bytes, offset)?;
        for (entry, raw) in entries.iter_mut().zip(bytes.chunks_exact(ENTRY_BYTES)) {
            // The kernel writes native-endian u64s; every chunk is ENTRY_BYTES long.
            *entry = u64::from_ne_bytes(raw.try_into().unwrap_or_default());
        }
        Ok(())
    }

    /// For each of `populated.len()` (at most [`BATCH_PAGES`]) pages from host address
    /// `page_addr`, whether it is present or swapped out: whether it may hold something
    /// other than what its mapping would give a fresh fault.
    pub fn populated(&self, page_addr: usize, populated: &mut [bool]) -> io::Result<()> {
        let mut entries = [0u64; BATCH_PAGES];
        let count = populated.len().min(BATCH_PAGES);
        let entries = entries.get_mut(..count).unwrap_or_default();
        self.read_entries(page_addr, entries)?;
        for (flag, entry) in populated.iter_mut().zip(entries.iter()) {
            *flag = entry & (PRESENT | SWAPPED) != 0;
        }
        Ok(())
    }
}

/// Where a file holds data, asked in ascending order of offset.
pub struct DataExtents<'a> {
    file: &'a File,
    /// The data extent that ends after the last offset asked about (empty before the
    /// first question, `MAX..MAX` past the file's last data).
    current: Range<u64>,
}

impl<'a> DataExtents<'a> {
    pub fn new(file: &'a File) -> DataExtents<'a> {
        DataExtents {
            file,
            current: 0..0,
        }
    }

    /// Whether any of `[offset, offset + len)` may hold data. Offsets must not go back.
    /// A file system that cannot say (an error other than "no data after this") is taken
    /// to hold data everywhere.
    pub fn has_data(&mut self, offset: u64, len: u64) -> bool {
        if self.current.end <= offset {
            self.current = self.extent_from(offset);
        }
        self.current.start < offset.saturating_add(len)
    }

    /// The first data extent that ends after `offset`.
    fn extent_from(&self, offset: u64) -> Range<u64> {
        let start = match self.seek(offset, libc::SEEK_DATA) {
            Ok(start) => start,
            Err(err) if err.raw_os_error() == Some(libc::ENXIO) => return u64::MAX..u64::MAX,
            Err(_) => return offset..u64::MAX,
        };
        match self.seek(start, libc::SEEK_HOLE) {
            Ok(end) if end > start => start..end,
            _ => start..u64::MAX,
        }
    }

    fn seek(&self, offset: u64, whence: i32) -> io::Result<u64> {
        let offset =
            libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::ENXIO))?;
        // SAFETY: lseek on a descriptor this struct borrows; it moves only the file's
        // position, which nothing uses (the memory file is mapped, never read by position).
        let found = unsafe { libc::lseek(self.file.as_raw_fd(), offset, whence) };
        if found < 0 {
            return Err(io::Error::last_os_error());
        }
        u64::try_from(found).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_pages_are_populated_and_untouched_ones_are_not() {
        let map = PageMap::open_own().expect("this host's pagemap");
        let len = 16 * PAGE_SIZE;
        // SAFETY: a fresh private anonymous mapping, unmapped at the end of the test.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED);
        let base = host as usize;
        // SAFETY: pages 3 and 9 lie inside the mapping made above.
        unsafe {
            *(base as *mut u8).add(3 * PAGE_SIZE) = 1;
            *(base as *mut u8).add(9 * PAGE_SIZE + 100) = 2;
        }
        let mut populated = [false; 16];
        map.populated(base, &mut populated).expect("read");
        let touched: Vec<usize> = (0..16).filter(|&i| populated[i]).collect();
        assert_eq!(touched, [3, 9]);

        // Dropped pages (what the balloon does) read as zeros again: not populated.
        // SAFETY: page 3 of the mapping above.
        let rc = unsafe {
            libc::madvise(
                (base + 3 * PAGE_SIZE) as *mut _,
                PAGE_SIZE,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
        map.populated(base, &mut populated).expect("read");
        let touched: Vec<usize> = (0..16).filter(|&i| populated[i]).collect();
        assert_eq!(touched, [9]);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(host, len) };
    }

    #[test]
    fn data_extents_follow_the_files_holes() {
        let path = std::env::temp_dir().join(format!("vmm-extents-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch file");
        let mib = 1u64 << 20;
        file.set_len(8 * mib).expect("size");
        file.write_all_at(&[7; 4096], 2 * mib).expect("write");
        file.write_all_at(&[7; 4096], 6 * mib).expect("write");
        let mut extents = DataExtents::new(&file);
        let page = PAGE_SIZE as u64;
        let with_data: Vec<u64> = (0..8 * mib / page)
            .filter(|&p| extents.has_data(p * page, page))
            .map(|p| p * page)
            .collect();
        // A file system may round extents up (tmpfs and ext4 keep 4 KiB), but must name
        // both written pages and must not name the whole file.
        assert!(with_data.contains(&(2 * mib)) && with_data.contains(&(6 * mib)));
        assert!(with_data.len() < 64, "{} pages of data", with_data.len());
        let _ = std::fs::remove_file(path);
    }
}
