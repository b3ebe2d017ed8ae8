//! The VMM's descriptor budget: at start-up, before the sandbox, makes sure
//! `RLIMIT_NOFILE` leaves room for every control connection the server admits
//! (`MAX_CONNECTIONS`), the descriptors a request may carry, and headroom for the VMM's
//! own needs while it runs, raising the soft limit towards the hard one if it must. With
//! that room a hoarding client meets the connection cap long before the VMM meets
//! `EMFILE`.

use std::io;

use thiserror::Error;
use vm_control::server::MAX_CONNECTIONS;
use vm_control::socket::MAX_FDS;

/// Descriptors kept free beyond the connections: one datagram's worth of passed fds, the
/// one being accepted, and spares for the VMM's own work (a device activation that must
/// clone an eventfd, a log file reopened).
pub const HEADROOM: u64 = MAX_FDS as u64 + 24;

/// Why the descriptor budget cannot be met.
#[derive(Debug, Error)]
pub enum FdBudgetError {
    #[error("cannot read the descriptor limit or count: {0}")]
    Io(#[source] io::Error),
    #[error(
        "the descriptor limit (RLIMIT_NOFILE, hard {hard}) is below the {needed} the control \
         socket needs ({open} open, {MAX_CONNECTIONS} connections, attached consoles, {HEADROOM} \
         spare); raise it (ulimit -n)"
    )]
    TooLow { hard: u64, needed: u64, open: u64 },
}

/// Makes sure the soft descriptor limit is at least what is open now plus
/// `MAX_CONNECTIONS`, the attached consoles' descriptors
/// ([`crate::console_stream::DESCRIPTORS`]) and [`HEADROOM`]; returns the limit in force.
pub fn ensure_control_headroom() -> Result<u64, FdBudgetError> {
    let open = open_descriptors().map_err(FdBudgetError::Io)?;
    let needed = open
        .saturating_add(MAX_CONNECTIONS as u64)
        .saturating_add(crate::console_stream::DESCRIPTORS as u64)
        .saturating_add(HEADROOM);
    let mut limit = nofile_limit().map_err(FdBudgetError::Io)?;
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    if limit.rlim_max < needed {
        return Err(FdBudgetError::TooLow {
            hard: limit.rlim_max,
            needed,
            open,
        });
    }
    limit.rlim_cur = needed;
    // SAFETY: a valid resource and an initialized rlimit whose soft value is below its hard.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(FdBudgetError::Io(io::Error::last_os_error()));
    }
    Ok(needed)
}

fn nofile_limit() -> io::Result<libc::rlimit> {
    // SAFETY: rlimit is plain data for which all-zero bytes are valid.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Descriptors this process has open (`/proc/self/fd`, less the one listing it). In the
/// jail, where `/proc` does not resolve, every number below the soft limit is probed
/// instead: the jail sets that limit to a few hundred.
pub fn open_descriptors() -> io::Result<u64> {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => Ok((entries.count() as u64).saturating_sub(1)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => probe_descriptors(),
        Err(err) => Err(err),
    }
}

fn probe_descriptors() -> io::Result<u64> {
    let limit = nofile_limit()?.rlim_cur;
    let limit = libc::c_int::try_from(limit).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_GETFD only reads a descriptor's flags; an unused number gives EBADF.
    let open = (0..limit)
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .count();
    Ok(open as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_least_open_plus_connections_plus_headroom() {
        let limit = ensure_control_headroom().expect("this test runs with room to spare");
        let open = open_descriptors().expect("count descriptors");
        assert!(limit >= open + MAX_CONNECTIONS as u64 + HEADROOM);
    }
}
