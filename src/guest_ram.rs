//! Guest RAM: host mappings placed at 2 MiB-aligned addresses, wrapped as a vm-memory
//! `GuestMemoryMmap`: anonymous for a new VM, a snapshot's memory file mapped privately
//! for a restored one.
//!
//! Why not let vm-memory map it: mmap only promises 4 KiB alignment, and KVM can back a
//! guest page with a 2 MiB host page only when the guest address and the host address
//! share the same offset within 2 MiB. Every guest RAM range starts 2 MiB-aligned, so
//! aligning the host side lets transparent huge pages reach the guest's nested page
//! tables: fewer host faults while loading the kernel and shorter nested page walks for
//! the guest's whole life (QEMU aligns its RAM the same way).
//!
//! The mappings live as long as the process: a `vmm` process runs exactly one VM, and
//! clones of the memory handle may sit in any thread, so unmapping early could never be
//! proven safe. The kernel reclaims them at exit.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// The alignment that lets a 2 MiB host page back a 2 MiB guest page.
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Maps `ranges` of guest RAM (guest address, length) and returns the guest memory.
pub fn map_guest_ram(ranges: &[(GuestAddress, usize)]) -> io::Result<GuestMemoryMmap> {
    let regions = ranges
        .iter()
        .map(|&(guest_base, len)| map_region(guest_base, len))
        .collect::<io::Result<Vec<_>>>()?;
    GuestMemoryMmap::from_regions(regions)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))
}

fn map_region(guest_base: GuestAddress, len: usize) -> io::Result<GuestRegionMmap> {
    let host = map_aligned_anonymous(len)?;
    advise_huge_pages(host, len);
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    wrap_region(guest_base, host, len, flags, None)
}

/// Maps guest RAM from a snapshot's memory file: each of `ranges` (guest address, length,
/// offset in `file`) privately, so pages are read from the page cache only when the guest
/// touches them and its writes never reach the file. The caller has checked the file's
/// size against the ranges.
pub fn map_guest_ram_from_file(
    ranges: &[(GuestAddress, usize, u64)],
    file: &File,
) -> io::Result<GuestMemoryMmap> {
    // Each region records the file it maps (one shared descriptor), so a later snapshot
    // can tell the file's holes from its data ([`crate::snapshot::page_map`]).
    let shared = Arc::new(file.try_clone()?);
    let regions = ranges
        .iter()
        .map(|&(guest_base, len, offset)| map_file_region(guest_base, len, &shared, offset))
        .collect::<io::Result<Vec<_>>>()?;
    GuestMemoryMmap::from_regions(regions)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))
}

fn map_file_region(
    guest_base: GuestAddress,
    len: usize,
    file: &Arc<File>,
    file_offset: u64,
) -> io::Result<GuestRegionMmap> {
    let offset = libc::off_t::try_from(file_offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memory file offset too large"))?;
    // The 2 MiB-aligned reservation keeps guest and host addresses congruent, as for
    // anonymous RAM; the file mapping then replaces it in place.
    let host = map_aligned_anonymous(len)?;
    let flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
    // SAFETY: [host, host + len) is the reservation made just above, which nothing else
    // uses: MAP_FIXED replaces exactly it with the file's pages. The file is open for
    // reading (checked by the caller's metadata call and by mmap itself).
    let mapped = unsafe {
        libc::mmap(
            host.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            file.as_raw_fd(),
            offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        let err = io::Error::last_os_error();
        // SAFETY: the reservation made above, which nothing uses.
        unsafe { libc::munmap(host.cast(), len) };
        return Err(err);
    }
    let source = FileOffset::from_arc(Arc::clone(file), file_offset);
    wrap_region(guest_base, host, len, flags, Some(source))
}

/// Wraps the mapping [host, host + len), made with `flags` (from `source`, for a file
/// mapping), as guest RAM at `guest_base`.
fn wrap_region(
    guest_base: GuestAddress,
    host: *mut u8,
    len: usize,
    flags: i32,
    source: Option<FileOffset>,
) -> io::Result<GuestRegionMmap> {
    // SAFETY: the callers pass [host, host + len), a readable and writable mapping they
    // made, never unmapped (see the module comment), so it stays valid for as long as the
    // region can be used.
    let mut builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(host) };
    if let Some(source) = source {
        builder = builder.with_file_offset(source);
    }
    let mapping = builder
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .build()
        .map_err(|err| io::Error::other(err.to_string()))?;
    GuestRegionMmap::new(mapping, guest_base).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("guest RAM at {:#x} + {len:#x} overflows", guest_base.0),
        )
    })
}

/// Maps `len` bytes of private anonymous memory at a 2 MiB-aligned address: reserve
/// `len` + 2 MiB of address space, then give back the unaligned head and the tail.
fn map_aligned_anonymous(len: usize) -> io::Result<*mut u8> {
    let reserve_len = len
        .checked_add(HUGE_PAGE_SIZE)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "guest RAM too large"))?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it
    // cannot alias anything the process uses.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = reserved as usize;
    // The reservation spans start..start + len + HUGE_PAGE_SIZE, a range the
    // kernel gave us, so neither the aligned start nor its end can overflow;
    // `aligned - start` is below HUGE_PAGE_SIZE.
    let Some(aligned) = start.checked_next_multiple_of(HUGE_PAGE_SIZE) else {
        // SAFETY: exactly the reservation made above, which nothing uses yet.
        unsafe { libc::munmap(reserved, reserve_len) };
        return Err(io::Error::other(
            "guest RAM reservation at the top of the address space",
        ));
    };
    let head = aligned.saturating_sub(start);
    let tail = HUGE_PAGE_SIZE.saturating_sub(head);
    let kept_end = aligned.saturating_add(len);
    // SAFETY: both ranges lie inside the reservation made above and outside
    // [aligned, aligned + len), which is what we keep.
    unsafe {
        if head > 0 {
            libc::munmap(reserved, head);
        }
        if tail > 0 {
            libc::munmap(kept_end as *mut libc::c_void, tail);
        }
    }
    Ok(aligned as *mut u8)
}

/// Asks for transparent huge pages behind guest RAM. Only advice: where THP is off, the
/// kernel ignores it and the VM runs on 4 KiB pages.
fn advise_huge_pages(host: *mut u8, len: usize) {
    // SAFETY: [host, host + len) is one anonymous mapping we own; MADV_HUGEPAGE changes
    // only how the kernel backs it, never its contents or validity.
    let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        log::debug!(
            "transparent huge pages unavailable for guest RAM: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    #[test]
    fn guest_ram_is_2mib_aligned_on_the_host_and_usable() {
        let ranges = [
            (GuestAddress(0), 64 << 20),
            (GuestAddress(0x1_0000_0000), 6 << 20),
        ];
        let memory = map_guest_ram(&ranges).expect("map guest RAM");

        for (guest, len) in ranges {
            let host = memory.get_host_address(guest).expect("mapped") as usize;
            assert_eq!(host % HUGE_PAGE_SIZE, 0, "region at {:#x}", guest.0);
            let last = GuestAddress(guest.0 + len as u64 - 8);
            memory
                .write_obj(0x1122_3344_5566_7788u64, last)
                .expect("write");
            assert_eq!(
                memory.read_obj::<u64>(last).expect("read"),
                0x1122_3344_5566_7788
            );
        }
        assert!(
            memory.write_obj(1u8, GuestAddress(64 << 20)).is_err(),
            "hole stays unmapped"
        );
    }
}
