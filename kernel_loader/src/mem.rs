//! Small, checked helpers over `vm_memory::GuestMemory` shared by the loaders.
//!
//! Everything that writes to the guest goes through here so that ranges are
//! validated *before* the first byte is written (no partially loaded images)
//! and address arithmetic never overflows.

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::Error;

/// Size of the chunk used to zero-fill guest memory without a big allocation.
const ZERO_CHUNK: usize = 4096;

/// True if every byte of `[addr, addr + len)` is guest memory. An empty range
/// is "in memory" only if its start address would be.
pub(crate) fn range_in_memory<M: GuestMemory>(mem: &M, addr: GuestAddress, len: u64) -> bool {
    if addr.0.checked_add(len).is_none() {
        return false;
    }
    let Ok(len) = usize::try_from(len.max(1)) else {
        return false;
    };
    mem.check_range(addr, len, Permissions::Write)
}

/// Fails with `OutOfGuestMemory` unless `[addr, addr + len)` is guest memory.
pub(crate) fn require_range<M: GuestMemory>(
    mem: &M,
    what: &'static str,
    addr: GuestAddress,
    len: u64,
) -> Result<(), Error> {
    if range_in_memory(mem, addr, len) {
        Ok(())
    } else {
        Err(Error::OutOfGuestMemory {
            what,
            addr: addr.0,
            size: len,
        })
    }
}

/// Writes `buf` at `addr`; the caller has already validated the range.
pub(crate) fn write<M: GuestMemory>(
    mem: &M,
    what: &'static str,
    addr: GuestAddress,
    buf: &[u8],
) -> Result<(), Error> {
    mem.write_slice(buf, addr)
        .map_err(|source| Error::GuestMemory {
            what,
            addr: addr.0,
            source,
        })
}

/// Zeroes `len` bytes at `addr` in fixed-size chunks (no allocation
/// proportional to `len`); the caller has already validated the range.
pub(crate) fn zero<M: GuestMemory>(
    mem: &M,
    what: &'static str,
    addr: GuestAddress,
    len: u64,
) -> Result<(), Error> {
    static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
    let mut done: u64 = 0;
    while let Some(left) = len.checked_sub(done).filter(|&l| l > 0) {
        let chunk = usize::try_from(left).map_or(ZERO_CHUNK, |l| l.min(ZERO_CHUNK));
        let at = addr.0.checked_add(done).ok_or(Error::OutOfGuestMemory {
            what,
            addr: addr.0,
            size: len,
        })?;
        let buf = ZEROES.get(..chunk).unwrap_or(&ZEROES);
        write(mem, what, GuestAddress(at), buf)?;
        done = done.saturating_add(chunk as u64);
    }
    Ok(())
}
