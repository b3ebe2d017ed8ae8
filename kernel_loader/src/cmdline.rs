//! Writing the kernel command line into guest memory.
//!
//! Owns the command line rules shared by both boot protocols: no interior
//! NUL, a length limit from the kernel, and a terminating NUL in the guest.

use vm_memory::{GuestAddress, GuestMemory};

use crate::{Error, mem};

/// Writes `cmdline` followed by a NUL at `addr`.
///
/// `max_len` is the longest command line the kernel accepts, NUL excluded
/// ([`crate::LoadedKernel::cmdline_max`]). Fails without writing anything if
/// the command line contains a NUL, is longer than `max_len`, or the
/// `len + 1` bytes at `addr` are not all guest memory.
pub fn write_cmdline<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    cmdline: &str,
    max_len: usize,
) -> Result<(), Error> {
    let bytes = cmdline.as_bytes();
    if let Some(position) = bytes.iter().position(|&b| b == 0) {
        return Err(Error::CmdlineContainsNul { position });
    }
    if bytes.len() > max_len {
        return Err(Error::CmdlineTooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    let len = bytes.len() as u64;
    let with_nul = len.saturating_add(1);
    mem::require_range(mem, "kernel command line", addr, with_nul)?;
    mem::write(mem, "kernel command line", addr, bytes)?;
    // The range check above covered addr + len: no saturation happens.
    mem::write(
        mem,
        "kernel command line",
        GuestAddress(addr.0.saturating_add(len)),
        &[0],
    )
}
