//! The host view of guest buffers: [`DeviceReadable`] and [`DeviceWritable`], one
//! [`VolatileSlice`] per guest memory region a span touches, bounds checked once when the
//! view is built, and the loop that moves a whole view to or from a file offset in batches
//! of at most [`MAX_IOVECS`] ([`transfer_all`]).

use std::io;

use vm_memory::{GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, VolatileSlice};

use super::{GuestSpan, IovecError, MAX_IOVECS};

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

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::super::GuestSpans;
    use super::super::tests::{lens, memory, spans};
    use super::*;

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
}
