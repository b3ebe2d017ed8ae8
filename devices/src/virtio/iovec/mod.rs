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
//!
//! [`GuestSpans`] and the error type are here; the host view is in `host_view`, the system
//! calls in `syscalls`, both re-exported from this module.
//!
//! [`VolatileSlice`]: vm_memory::VolatileSlice

use vm_memory::{Address, GuestAddress, GuestMemoryError};

use super::DescriptorChain;

mod host_view;
mod syscalls;

pub use host_view::{DeviceReadable, DeviceWritable};
pub use syscalls::{preadv, pwritev, readv, recvmsg_trunc, writev};

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

#[cfg(test)]
mod tests {
    //! Tests of the spans, and the helpers the other files' tests share.

    use vm_memory::{GuestMemoryMmap, VolatileSlice};

    use super::super::Descriptor;
    use super::*;

    pub(super) fn memory(regions: &[(u64, usize)]) -> GuestMemoryMmap {
        let ranges: Vec<_> = regions.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    pub(super) fn spans(list: &[(u64, u32)]) -> GuestSpans {
        let mut spans = GuestSpans::new();
        for &(addr, len) in list {
            spans.push(GuestAddress(addr), len).unwrap();
        }
        spans
    }

    fn pairs(spans: &GuestSpans) -> Vec<(u64, u32)> {
        spans.iter().map(|s| (s.addr.0, s.len)).collect()
    }

    pub(super) fn lens(bufs: &[VolatileSlice<'_>]) -> Vec<usize> {
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
}
