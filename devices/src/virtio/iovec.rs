//! From descriptor chains to the host iovecs the kernel reads and writes guest memory
//! through, for devices that move data straight between guest memory and a host file.
//!
//! This module owns that one path, in two steps, and the system calls at its end:
//!
//! 1. [`GuestSpans`]: the non-empty buffers of one direction of a chain, by guest address,
//!    with their byte total summed once, without overflow. Spans split at any byte (a request
//!    header in front, a status byte at the end, even inside one descriptor), shrink to a byte
//!    cap, and borrow nothing, so a device can keep them across wake-ups.
//! 2. [`DeviceReadable`] and [`DeviceWritable`]: the host view of spans, one [`VolatileSlice`]
//!    per guest memory region a span touches (a span across two adjacent regions becomes two
//!    slices), every bound checked once when the view is built. The type says which way bytes
//!    go: the device only reads guest memory through a `DeviceReadable` (into a file: `pwritev`,
//!    `writev`) and only writes it through a `DeviceWritable` (from a file: `preadv`, `readv`).
//!
//! The vectored system calls ([`preadv`], [`pwritev`], [`readv`], [`writev`],
//! [`recvmsg_trunc`]) are the module's only `unsafe` code. [`DeviceWritable::read_exact_at`]
//! and [`DeviceReadable::write_all_at`] move a whole view from or to a file offset: in batches
//! of at most [`MAX_IOVECS`], continuing after short transfers, retrying on EINTR.
//!
//! Everything here comes from the guest: nothing panics, overflows or loops on it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, VolatileSlice,
};

use super::DescriptorChain;

/// Linux rejects vectored I/O with more iovecs than this (UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

/// Why guest buffers cannot be used as asked.
#[derive(Debug, thiserror::Error)]
pub enum IovecError {
    /// A buffer is not (entirely) in guest memory.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    /// A buffer's end is past the top of the guest address space.
    #[error("guest buffer of {len} bytes at {addr:#x} wraps around the address space")]
    Wraps {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The buffers add up to more bytes than a u64 counts.
    #[error("guest buffers add up to more than 2^64 bytes")]
    TooLong,
    /// An access reaches past the end of the buffers.
    #[error("{len} bytes at offset {offset} are beyond the {total} bytes of guest buffers")]
    OutOfRange {
        /// Where the access starts, in bytes from the start of the buffers.
        offset: u64,
        /// Its length.
        len: usize,
        /// The bytes the buffers hold.
        total: u64,
    },
}

/// One guest buffer: `len` bytes from `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSpan {
    /// Guest address of its first byte.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Guest buffers in order, none empty, none wrapping around the address space, with their
/// byte total; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestSpans {
    spans: Vec<GuestSpan>,
    len: u64,
}

impl GuestSpans {
    /// No buffers.
    pub fn new() -> GuestSpans {
        GuestSpans::default()
    }

    /// The device-readable buffers of `chain`, in order, empty ones left out.
    pub fn readable(chain: &DescriptorChain) -> Result<GuestSpans, IovecError> {
        Self::of_direction(chain, false)
    }

    /// The device-writable buffers of `chain`, in order, empty ones left out.
    pub fn writable(chain: &DescriptorChain) -> Result<GuestSpans, IovecError> {
        Self::of_direction(chain, true)
    }

    fn of_direction(chain: &DescriptorChain, writable: bool) -> Result<GuestSpans, IovecError> {
        let mut spans = GuestSpans::new();
        for d in chain.descriptors.iter().filter(|d| d.writable == writable) {
            spans.push(d.addr, d.len)?;
        }
        Ok(spans)
    }

    /// Appends `len` bytes at `addr`; an empty buffer is left out.
    pub fn push(&mut self, addr: GuestAddress, len: u32) -> Result<(), IovecError> {
        if len == 0 {
            return Ok(());
        }
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(IovecError::Wraps { addr: addr.0, len });
        }
        self.len = self
            .len
            .checked_add(u64::from(len))
            .ok_or(IovecError::TooLong)?;
        self.spans.push(GuestSpan { addr, len });
        Ok(())
    }

    /// Bytes in all the buffers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no bytes (and so no buffers).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many buffers.
    pub fn count(&self) -> usize {
        self.spans.len()
    }

    /// The buffers, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, GuestSpan> {
        self.spans.iter()
    }

    /// The first `at` bytes and the rest; a buffer that straddles `at` is cut in two.
    pub fn split_at(&self, at: u64) -> Result<(GuestSpans, GuestSpans), IovecError> {
        if at > self.len {
            return Err(IovecError::OutOfRange {
                offset: 0,
                len: usize::try_from(at).unwrap_or(usize::MAX),
                total: self.len,
            });
        }
        let (mut head, mut tail) = (GuestSpans::new(), GuestSpans::new());
        let mut left = at;
        for &GuestSpan { addr, len } in &self.spans {
            if let Some(after) = left.checked_sub(u64::from(len)) {
                left = after;
                head.push(addr, len)?;
            } else {
                // left < len, a u32, so the conversion cannot fail; 0 when the
                // cut is behind us.
                let cut = u32::try_from(left).unwrap_or(len);
                left = 0;
                head.push(addr, cut)?;
                let rest = addr
                    .checked_add(u64::from(cut))
                    .ok_or(IovecError::Wraps { addr: addr.0, len })?;
                tail.push(rest, len.saturating_sub(cut))?;
            }
        }
        Ok((head, tail))
    }

    /// Keeps only the first `max` bytes.
    pub fn truncate(&mut self, max: u64) {
        // `kept <= max` throughout, and `kept` is at most `self.len`: nothing
        // here can saturate.
        let mut kept = 0u64;
        let mut count = 0usize;
        for span in &mut self.spans {
            let left = max.saturating_sub(kept);
            if left == 0 {
                break;
            }
            // min(left, len) <= len, a u32, so the conversion cannot fail.
            span.len = u32::try_from(left.min(u64::from(span.len))).unwrap_or(span.len);
            kept = kept.saturating_add(u64::from(span.len));
            count = count.saturating_add(1);
        }
        self.spans.truncate(count);
        self.len = kept;
    }
}

impl<'a> IntoIterator for &'a GuestSpans {
    type Item = &'a GuestSpan;
    type IntoIter = std::slice::Iter<'a, GuestSpan>;

    fn into_iter(self) -> Self::IntoIter {
        self.spans.iter()
    }
}

/// The host view of guest buffers, shared by [`DeviceReadable`] and [`DeviceWritable`].
#[derive(Debug, Clone, Default)]
struct HostSlices<'m> {
    slices: Vec<VolatileSlice<'m>>,
    len: u64,
}

impl<'m> HostSlices<'m> {
    fn new<'s>(
        mem: &'m GuestMemoryMmap,
        spans: impl IntoIterator<Item = &'s GuestSpan>,
    ) -> Result<HostSlices<'m>, IovecError> {
        let mut slices = Vec::new();
        let mut len = 0u64;
        for span in spans {
            // A u32 always fits in usize on the 64-bit hosts KVM runs on.
            let span_len = span.len as usize;
            // One slice per region the span touches; regions a span crosses are adjacent, or
            // get_slices reports the hole.
            for slice in GuestMemoryBackend::get_slices(mem, span.addr, span_len) {
                let slice = slice?;
                len = len
                    .checked_add(slice.len() as u64)
                    .ok_or(IovecError::TooLong)?;
                slices.push(slice);
            }
        }
        Ok(HostSlices { slices, len })
    }

    fn truncate_iovecs(&mut self, max: usize) {
        self.slices.truncate(max);
        // Sums of what was summed without overflow before.
        self.len = self.slices.iter().map(|s| s.len() as u64).sum();
    }

    /// Calls `each(piece, at)` for the pieces of the slices that hold `len` bytes from
    /// `offset`, in order; `at` is the piece's position within those bytes.
    fn for_range(
        &self,
        offset: u64,
        len: usize,
        mut each: impl FnMut(VolatileSlice<'m>, usize),
    ) -> Result<(), IovecError> {
        let out_of_range = || IovecError::OutOfRange {
            offset,
            len,
            total: self.len,
        };
        let end = offset.checked_add(len as u64).ok_or_else(out_of_range)?;
        if end > self.len {
            return Err(out_of_range());
        }
        let mut skip = offset;
        let mut done = 0;
        for slice in &self.slices {
            if done == len {
                break;
            }
            let slice_len = slice.len() as u64;
            if let Some(after) = skip.checked_sub(slice_len) {
                skip = after;
                continue;
            }
            // skip < slice.len(), a usize, so the conversion cannot fail.
            let start = usize::try_from(skip).unwrap_or(slice.len());
            skip = 0;
            // start < slice.len() and done < len: neither saturates, nor does
            // `done + take <= len`.
            let take = slice
                .len()
                .saturating_sub(start)
                .min(len.saturating_sub(done));
            let piece = slice
                .subslice(start, take)
                .map_err(GuestMemoryError::from)?;
            each(piece, done);
            done = done.saturating_add(take);
        }
        Ok(())
    }
}

/// Device-readable guest buffers as host slices: what the device may read (and send to a
/// file), never write. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct DeviceReadable<'m>(HostSlices<'m>);

impl<'m> DeviceReadable<'m> {
    /// The host view of `spans` (device-readable buffers) in `mem`.
    pub fn new<'s>(
        mem: &'m GuestMemoryMmap,
        spans: impl IntoIterator<Item = &'s GuestSpan>,
    ) -> Result<DeviceReadable<'m>, IovecError> {
        HostSlices::new(mem, spans).map(DeviceReadable)
    }

    /// Bytes in the buffers.
    pub fn len(&self) -> u64 {
        self.0.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The slices, one per buffer and memory region; possibly more than [`MAX_IOVECS`].
    pub fn slices(&self) -> &[VolatileSlice<'m>] {
        &self.0.slices
    }

    /// Copies the `buf.len()` bytes at `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IovecError> {
        self.0.for_range(offset, buf.len(), |piece, at| {
            if let Some(dst) = at
                .checked_add(piece.len())
                .and_then(|end| buf.get_mut(at..end))
            {
                piece.copy_to(dst);
            }
        })
    }

    /// Writes all the bytes to a file from byte `offset` on, with `write` (one `pwritev`-like
    /// attempt over at most [`MAX_IOVECS`] slices that may write less than asked): continues
    /// after short writes, retries on EINTR, fails on a write of nothing.
    pub fn write_all_at(
        &self,
        offset: u64,
        write: impl FnMut(&[VolatileSlice<'m>], u64) -> io::Result<usize>,
    ) -> io::Result<()> {
        transfer_all(&self.0.slices, offset, write, io::ErrorKind::WriteZero)
    }
}

/// Device-writable guest buffers as host slices: what the device may fill (from a file or
/// with bytes of its own). See the module docs.
#[derive(Debug, Clone, Default)]
pub struct DeviceWritable<'m>(HostSlices<'m>);

impl<'m> DeviceWritable<'m> {
    /// The host view of `spans` (device-writable buffers) in `mem`.
    pub fn new<'s>(
        mem: &'m GuestMemoryMmap,
        spans: impl IntoIterator<Item = &'s GuestSpan>,
    ) -> Result<DeviceWritable<'m>, IovecError> {
        HostSlices::new(mem, spans).map(DeviceWritable)
    }

    /// Bytes in the buffers.
    pub fn len(&self) -> u64 {
        self.0.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The slices, one per buffer and memory region; possibly more than [`MAX_IOVECS`].
    pub fn slices(&self) -> &[VolatileSlice<'m>] {
        &self.0.slices
    }

    /// Keeps only the first `max` slices (and the bytes they hold), so that one system call
    /// can take them all.
    pub fn truncate_iovecs(&mut self, max: usize) {
        self.0.truncate_iovecs(max);
    }

    /// Copies `bytes` into the buffers at `offset`.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), IovecError> {
        self.0.for_range(offset, bytes.len(), |piece, at| {
            if let Some(src) = at
                .checked_add(piece.len())
                .and_then(|end| bytes.get(at..end))
            {
                piece.copy_from(src);
            }
        })
    }

    /// Fills all the bytes from a file from byte `offset` on, with `read` (one `preadv`-like
    /// attempt over at most [`MAX_IOVECS`] slices that may read less than asked): continues
    /// after short reads, retries on EINTR, fails on a read of nothing (end of file).
    pub fn read_exact_at(
        &self,
        offset: u64,
        read: impl FnMut(&[VolatileSlice<'m>], u64) -> io::Result<usize>,
    ) -> io::Result<()> {
        transfer_all(&self.0.slices, offset, read, io::ErrorKind::UnexpectedEof)
    }
}

/// Moves all of `bufs` to or from a file at `offset` with `op`, which may move less than
/// asked: batches of at most [`MAX_IOVECS`], retries on EINTR, continues after short
/// transfers, and fails with `stalled` on a transfer of 0 bytes.
fn transfer_all<'m>(
    bufs: &[VolatileSlice<'m>],
    mut offset: u64,
    mut op: impl FnMut(&[VolatileSlice<'m>], u64) -> io::Result<usize>,
    stalled: io::ErrorKind,
) -> io::Result<()> {
    let mut pending: Vec<VolatileSlice<'m>> =
        bufs.iter().filter(|b| !b.is_empty()).copied().collect();
    let mut first = 0;
    while first < pending.len() {
        let end = pending.len().min(first.saturating_add(MAX_IOVECS));
        let batch = pending.get(first..end).unwrap_or_default();
        let asked: usize = batch.iter().map(VolatileSlice::len).sum();
        let done = match op(batch, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    stalled,
                    format!("no bytes moved at offset {offset}"),
                ));
            }
            Ok(n) if n > asked => {
                return Err(io::Error::other(format!(
                    "{n} bytes moved of {asked} asked"
                )));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        offset = offset
            .checked_add(done as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        first = advance(&mut pending, first, done)?;
    }
    Ok(())
}

/// Consumes `done` bytes of `bufs[first..]`; returns the index of the first buffer with
/// bytes left (shortened in place).
fn advance(bufs: &mut [VolatileSlice<'_>], mut first: usize, mut done: usize) -> io::Result<usize> {
    while done > 0 {
        let Some(buf) = bufs.get_mut(first) else {
            return Err(io::Error::other("moved more bytes than the buffers hold"));
        };
        if done < buf.len() {
            *buf = buf.offset(done).map_err(io::Error::other)?;
            return Ok(first);
        }
        // done >= buf.len() here; a `first` past the end fails the `get_mut` above.
        done = done.saturating_sub(buf.len());
        first = first.saturating_add(1);
    }
    Ok(first)
}

/// `preadv(2)`: one attempt to read from byte `offset` of `fd` into `bufs`, in order.
pub fn preadv(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
    let offset = file_offset(offset)?;
    with_writable_iovecs(bufs, |iovecs, count| {
        // SAFETY: `iovecs` holds `count` iovecs, each `len` writable bytes of memory that a
        // VolatileSlice (and its guard) keeps mapped until after the call; the kernel writes
        // only inside them. That memory is guest memory (or a buffer the slice borrows
        // mutably): no Rust reference to it is invalidated by the guest-visible write. `fd`
        // is open for the call (borrowed).
        unsafe { libc::preadv(fd.as_raw_fd(), iovecs.as_ptr(), count, offset) }
    })
}

/// `pwritev(2)`: one attempt to write `bufs`, in order, at byte `offset` of `fd`.
pub fn pwritev(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
    let offset = file_offset(offset)?;
    with_readable_iovecs(bufs, |iovecs, count| {
        // SAFETY: `iovecs` holds `count` iovecs, each `len` readable bytes of memory that a
        // VolatileSlice (and its guard) keeps mapped until after the call; pwritev only reads
        // through them. `fd` is open for the call (borrowed).
        unsafe { libc::pwritev(fd.as_raw_fd(), iovecs.as_ptr(), count, offset) }
    })
}

/// `readv(2)`: one attempt to read from `fd` into `bufs`, in order.
pub fn readv(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    with_writable_iovecs(bufs, |iovecs, count| {
        // SAFETY: as for `preadv`: `count` iovecs of writable memory kept mapped for the
        // call, written only inside; `fd` is open for the call.
        unsafe { libc::readv(fd.as_raw_fd(), iovecs.as_ptr(), count) }
    })
}

/// `writev(2)`: one attempt to write `bufs`, in order, to `fd`.
pub fn writev(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    with_readable_iovecs(bufs, |iovecs, count| {
        // SAFETY: as for `pwritev`: `count` iovecs of readable memory kept mapped for the
        // call, only read; `fd` is open for the call.
        unsafe { libc::writev(fd.as_raw_fd(), iovecs.as_ptr(), count) }
    })
}

/// `recvmsg(2)` with MSG_TRUNC: one packet from socket `fd` into `bufs`, in order; returns
/// the packet's full length even when the buffers held less.
pub fn recvmsg_trunc(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    with_writable_iovecs(bufs, |iovecs, _count| {
        // SAFETY: msghdr is plain old data; all-zero (no name, no control data) is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len();
        // SAFETY: `msg` points to `iovecs`, each `len` writable bytes of memory kept mapped
        // for the call; both outlive it. The kernel writes only inside the iovecs and into
        // `msg`'s flags. `fd` is open for the call.
        unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) }
    })
}

/// Calls `call` with iovecs through which the kernel may write into `bufs`, and their count;
/// turns what the system call returned into bytes or the errno.
fn with_writable_iovecs(
    bufs: &[VolatileSlice<'_>],
    call: impl FnOnce(&mut [libc::iovec], libc::c_int) -> libc::ssize_t,
) -> io::Result<usize> {
    let count = iovec_count(bufs)?;
    // The guards keep the slices' memory mapped (they matter for Xen-style mappings) until
    // they drop, after the system call has returned.
    let guards: Vec<_> = bufs.iter().map(VolatileSlice::ptr_guard_mut).collect();
    let mut iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    // Read errno before anything (dropping) can change it.
    syscall_result(call(&mut iovecs, count))
}

/// Calls `call` with iovecs through which the kernel may read `bufs`, and their count;
/// turns what the system call returned into bytes or the errno.
fn with_readable_iovecs(
    bufs: &[VolatileSlice<'_>],
    call: impl FnOnce(&mut [libc::iovec], libc::c_int) -> libc::ssize_t,
) -> io::Result<usize> {
    let count = iovec_count(bufs)?;
    let guards: Vec<_> = bufs.iter().map(VolatileSlice::ptr_guard).collect();
    let mut iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast_mut().cast(),
            iov_len: g.len(),
        })
        .collect();
    syscall_result(call(&mut iovecs, count))
}

/// The iovec count the system calls take; more than [`MAX_IOVECS`] is EINVAL, as the
/// kernel would say.
fn iovec_count(bufs: &[VolatileSlice<'_>]) -> io::Result<libc::c_int> {
    if bufs.len() > MAX_IOVECS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    libc::c_int::try_from(bufs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn file_offset(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a `ssize_t` system call return into bytes moved or the errno.
fn syscall_result(n: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    use vm_memory::Bytes;

    use super::super::Descriptor;
    use super::*;

    fn memory(regions: &[(u64, usize)]) -> GuestMemoryMmap {
        let ranges: Vec<_> = regions.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    fn spans(list: &[(u64, u32)]) -> GuestSpans {
        let mut spans = GuestSpans::new();
        for &(addr, len) in list {
            spans.push(GuestAddress(addr), len).unwrap();
        }
        spans
    }

    fn pairs(spans: &GuestSpans) -> Vec<(u64, u32)> {
        spans.iter().map(|s| (s.addr.0, s.len)).collect()
    }

    fn lens(bufs: &[VolatileSlice<'_>]) -> Vec<usize> {
        bufs.iter().map(VolatileSlice::len).collect()
    }

    fn desc(addr: u64, len: u32, writable: bool) -> Descriptor {
        Descriptor {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    #[test]
    fn a_chain_gives_its_non_empty_buffers_of_one_direction() {
        let chain = DescriptorChain {
            head: 3,
            descriptors: vec![
                desc(0x1000, 16, false),
                desc(0x1100, 0, false),
                desc(0x2000, 100, false),
                desc(0x3000, 0, true),
                desc(0x4000, 50, true),
                desc(0x5000, 1, true),
            ],
        };
        let readable = GuestSpans::readable(&chain).unwrap();
        assert_eq!(pairs(&readable), [(0x1000, 16), (0x2000, 100)]);
        assert_eq!((readable.len(), readable.count()), (116, 2));
        let writable = GuestSpans::writable(&chain).unwrap();
        assert_eq!(pairs(&writable), [(0x4000, 50), (0x5000, 1)]);
        assert_eq!(writable.len(), 51);
        let nothing = GuestSpans::readable(&DescriptorChain {
            head: 0,
            descriptors: vec![desc(0, 0, false)],
        })
        .unwrap();
        assert!(nothing.is_empty());
        assert_eq!(nothing.count(), 0);
    }

    #[test]
    fn a_header_and_a_status_byte_split_inside_one_buffer() {
        // Header, data and status all in one readable and one writable descriptor.
        let readable = spans(&[(0x1000, 528)]);
        let (header, data) = readable.split_at(16).unwrap();
        assert_eq!(pairs(&header), [(0x1000, 16)]);
        assert_eq!(pairs(&data), [(0x1010, 512)]);

        let writable = spans(&[(0x2000, 10), (0x3000, 513)]);
        let (data, status) = writable.split_at(writable.len() - 1).unwrap();
        assert_eq!(pairs(&data), [(0x2000, 10), (0x3000, 512)]);
        assert_eq!(pairs(&status), [(0x3200, 1)]);

        // A cut on a buffer boundary cuts nothing in two.
        let (a, b) = writable.split_at(10).unwrap();
        assert_eq!(
            (pairs(&a), pairs(&b)),
            (vec![(0x2000, 10)], vec![(0x3000, 513)])
        );
        // Both ends.
        let (none, all) = writable.split_at(0).unwrap();
        assert_eq!((none.count(), all), (0, writable.clone()));
        let (all, none) = writable.split_at(523).unwrap();
        assert_eq!((all, none.count()), (writable.clone(), 0));
        assert!(matches!(
            writable.split_at(524),
            Err(IovecError::OutOfRange { total: 523, .. })
        ));
    }

    #[test]
    fn truncate_caps_the_bytes() {
        let mut s = spans(&[(0x1000, 100), (0x2000, 100), (0x3000, 100)]);
        s.truncate(150);
        assert_eq!(
            (pairs(&s), s.len()),
            (vec![(0x1000, 100), (0x2000, 50)], 150)
        );
        s.truncate(1000);
        assert_eq!(s.len(), 150);
        s.truncate(0);
        assert!(s.is_empty() && s.count() == 0);
    }

    #[test]
    fn sums_and_offsets_cannot_overflow() {
        let mut s = GuestSpans {
            spans: Vec::new(),
            len: u64::MAX - 3,
        };
        assert!(matches!(
            s.push(GuestAddress(0), 4),
            Err(IovecError::TooLong)
        ));
        assert!(matches!(
            GuestSpans::new().push(GuestAddress(u64::MAX - 1), 4),
            Err(IovecError::Wraps { .. })
        ));
        assert!(GuestSpans::new().split_at(u64::MAX).is_err());

        let mem = memory(&[(0, 0x1000)]);
        let view = DeviceWritable::new(&mem, &spans(&[(0x100, 16)])).unwrap();
        for offset in [u64::MAX, u64::MAX - 1, 16, 15] {
            assert!(
                matches!(
                    view.write_at(offset, &[1, 2]),
                    Err(IovecError::OutOfRange { .. })
                ),
                "{offset}"
            );
        }
        let mut buf = [0u8; 2];
        let readable = DeviceReadable::new(&mem, &spans(&[(0x100, 16)])).unwrap();
        assert!(readable.read_at(u64::MAX, &mut buf).is_err());

        // A file offset that would pass u64::MAX after a transfer.
        let err = view
            .read_exact_at(u64::MAX - 4, |bufs, _| Ok(lens(bufs).iter().sum()))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOVERFLOW));
    }

    #[test]
    fn a_span_across_two_regions_becomes_one_slice_per_region() {
        let mem = memory(&[(0, 0x1000), (0x1000, 0x1000)]);
        let s = spans(&[(0xf00, 0x200), (0x1800, 0x10)]);
        let view = DeviceWritable::new(&mem, &s).unwrap();
        assert_eq!(lens(view.slices()), [0x100, 0x100, 0x10]);
        assert_eq!(view.len(), 0x210);

        // Bytes written across the boundary land where the guest expects them.
        let bytes: Vec<u8> = (0..0x20).collect();
        view.write_at(0xf0, &bytes).unwrap();
        let mut back = [0u8; 0x20];
        mem.read_slice(&mut back, GuestAddress(0xff0)).unwrap();
        assert_eq!(back[..], bytes[..]);
        // And read back across both the region and the buffer boundary.
        let readable = DeviceReadable::new(&mem, &s).unwrap();
        mem.write_slice(&[7; 0x10], GuestAddress(0x1800)).unwrap();
        let mut out = [0u8; 0x14];
        readable.read_at(0x1fc, &mut out).unwrap();
        assert_eq!(out[..4], [0; 4]);
        assert_eq!(out[4..], [7; 0x10]);
    }

    #[test]
    fn buffers_outside_guest_memory_are_an_error_not_a_panic() {
        let mem = memory(&[(0, 0x1000), (0x2000, 0x1000)]);
        for (addr, len) in [(0x1000, 1), (0xfff, 2), (0x2f00, 0x200), (u64::MAX, 1)] {
            let s = GuestSpans {
                spans: vec![GuestSpan {
                    addr: GuestAddress(addr),
                    len,
                }],
                len: u64::from(len),
            };
            assert!(DeviceReadable::new(&mem, &s).is_err(), "{addr:#x}+{len}");
        }
    }

    #[test]
    fn more_buffers_than_iov_max_are_moved_in_several_batches() {
        let mem = memory(&[(0, 1 << 20)]);
        let s = spans(&[(0x2000, 512)]);
        let one = DeviceWritable::new(&mem, &s).unwrap();
        let view = DeviceWritable(HostSlices {
            slices: vec![one.slices()[0]; 1100],
            len: 1100 * 512,
        });
        let mut calls = Vec::new();
        view.read_exact_at(0, |batch, at| {
            calls.push((batch.len(), at));
            Ok(lens(batch).iter().sum())
        })
        .unwrap();
        assert_eq!(calls, [(1024, 0), (76, 1024 * 512)]);

        let mut truncated = view.clone();
        truncated.truncate_iovecs(MAX_IOVECS);
        assert_eq!(
            (truncated.slices().len(), truncated.len()),
            (1024, 1024 * 512)
        );
    }

    #[test]
    fn short_transfers_continue_where_they_stopped_and_eintr_is_retried() {
        let mem = memory(&[(0, 1 << 20)]);
        let view = DeviceReadable::new(&mem, &spans(&[(0x1000, 512), (0x3000, 512)])).unwrap();
        let mut calls = Vec::new();
        let mut interrupted = false;
        view.write_all_at(4096, |batch, at| {
            calls.push((lens(batch), at));
            if !interrupted {
                interrupted = true;
                return Err(io::Error::from_raw_os_error(libc::EINTR));
            }
            Ok(lens(batch).iter().sum::<usize>().min(300))
        })
        .unwrap();
        assert_eq!(
            calls,
            [
                (vec![512, 512], 4096),
                (vec![512, 512], 4096),
                (vec![212, 512], 4396),
                (vec![424], 4696),
                (vec![124], 4996),
            ]
        );
    }

    #[test]
    fn a_transfer_that_stalls_or_overshoots_fails() {
        let mem = memory(&[(0, 1 << 20)]);
        let s = spans(&[(0x1000, 512)]);
        let writable = DeviceWritable::new(&mem, &s).unwrap();
        let eof = writable.read_exact_at(0, |_, _| Ok(0)).unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
        let readable = DeviceReadable::new(&mem, &s).unwrap();
        let zero = readable.write_all_at(0, |_, _| Ok(0)).unwrap_err();
        assert_eq!(zero.kind(), io::ErrorKind::WriteZero);
        assert!(readable.write_all_at(0, |_, _| Ok(513)).is_err());
        let failed = readable
            .write_all_at(0, |_, _| Err(io::Error::from_raw_os_error(libc::EIO)))
            .unwrap_err();
        assert_eq!(failed.raw_os_error(), Some(libc::EIO));
        // Nothing to move: no call at all.
        DeviceReadable::default()
            .write_all_at(0, |_, _| panic!("called"))
            .unwrap();
    }

    #[test]
    fn preadv_and_pwritev_move_guest_bytes_across_regions() {
        let path = std::env::temp_dir().join(format!("vmm-iovec-unit-{}.img", std::process::id()));
        let contents: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mem = memory(&[(0, 0x1000), (0x1000, 0x1000)]);
        let s = spans(&[(0xf00, 0x200)]);

        let into = DeviceWritable::new(&mem, &s).unwrap();
        into.read_exact_at(1000, |bufs, at| preadv(file.as_fd(), bufs, at))
            .unwrap();
        let mut got = vec![0u8; 0x200];
        mem.read_slice(&mut got, GuestAddress(0xf00)).unwrap();
        assert_eq!(got, contents[1000..1000 + 0x200]);

        mem.write_slice(&[0xab; 0x200], GuestAddress(0xf00))
            .unwrap();
        let from = DeviceReadable::new(&mem, &s).unwrap();
        from.write_all_at(100, |bufs, at| pwritev(file.as_fd(), bufs, at))
            .unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(on_disk[100..100 + 0x200], [0xab; 0x200]);
        assert_eq!(on_disk[..100], contents[..100]);

        // Past EOF a read stalls.
        let eof = into
            .read_exact_at(4096, |bufs, at| preadv(file.as_fd(), bufs, at))
            .unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn readv_writev_and_recvmsg_move_packets() {
        let mem = memory(&[(0, 0x1000), (0x1000, 0x1000)]);
        let s = spans(&[(0xff8, 0x10), (0x1800, 8)]);
        let out = DeviceReadable::new(&mem, &s).unwrap();
        let into = DeviceWritable::new(&mem, &spans(&[(0x1900, 6), (0x1a00, 0x40)])).unwrap();
        let packet: Vec<u8> = (1..=24).collect();
        mem.write_slice(&packet[..16], GuestAddress(0xff8)).unwrap();
        mem.write_slice(&packet[16..], GuestAddress(0x1800))
            .unwrap();

        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(writev(a.as_fd(), out.slices()).unwrap(), 24);
        assert_eq!(readv(b.as_fd(), into.slices()).unwrap(), 24);
        let mut got = [0u8; 24];
        mem.read_slice(&mut got[..6], GuestAddress(0x1900)).unwrap();
        mem.read_slice(&mut got[6..], GuestAddress(0x1a00)).unwrap();
        assert_eq!(got[..], packet[..]);

        // A datagram longer than the buffers: its full length, the buffers full.
        let (a, b) = UnixDatagram::pair().unwrap();
        assert_eq!(writev(a.as_fd(), out.slices()).unwrap(), 24);
        let small = DeviceWritable::new(&mem, &spans(&[(0x1c00, 10)])).unwrap();
        assert_eq!(recvmsg_trunc(b.as_fd(), small.slices()).unwrap(), 24);
        let mut head = [0u8; 10];
        mem.read_slice(&mut head, GuestAddress(0x1c00)).unwrap();
        assert_eq!(head[..], packet[..10]);
    }

    #[test]
    fn more_iovecs_than_the_kernel_takes_are_refused_before_the_call() {
        let mem = memory(&[(0, 0x1000)]);
        let one = DeviceWritable::new(&mem, &spans(&[(0, 1)])).unwrap();
        let bufs = vec![one.slices()[0]; MAX_IOVECS + 1];
        let (a, _b) = UnixStream::pair().unwrap();
        for result in [
            readv(a.as_fd(), &bufs),
            writev(a.as_fd(), &bufs),
            preadv(a.as_fd(), &bufs, 0),
        ] {
            assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        }
    }
}
