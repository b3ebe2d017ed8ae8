//! The jail's resource limits and its cgroup.
//!
//! - `RLIMIT_NOFILE`, soft and hard: what is open when the jail is entered, what building
//!   the VM opens (a generous bound from the configuration, [`build_descriptors`]), and the
//!   control socket's budget (`fd_budget`: every connection the server admits plus
//!   headroom). The run loop checks the budget again once the VM is built.
//! - `RLIMIT_FSIZE`: no file grows past the largest writable disk image (the guest's writes
//!   never extend one) or a console file (`--serial file=`, `--console file=`, or stdout/stderr
//!   redirected to a file) by more than [`CONSOLE_FILE_GROWTH`], and none past what a snapshot
//!   writes (the memory file is as long as guest RAM; the stream is at most 16 MiB).
//!   `SIGXFSZ` is ignored, so a write beyond that fails with `EFBIG` (counted by the console
//!   writer, reported to the snapshot's client) instead of killing the VMM.
//! - `RLIMIT_CORE` 0: a VMM's memory holds the guest's; it never goes to a core file.
//! - `--cgroup PATH`: the process joins the cgroup v2 directory `PATH` (writes its pid to
//!   `PATH/cgroup.procs`) before the mount namespace hides it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use log::debug;
use vm_control::server::MAX_CONNECTIONS;

use super::{JailError, step};
use crate::config::VmConfig;
use crate::fd_budget::{self, HEADROOM};
use crate::opened::HostFiles;

/// How much a console file may grow while the VM runs.
pub const CONSOLE_FILE_GROWTH: u64 = 4 << 30;

/// The limits the jail sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nofile: u64,
    pub fsize: u64,
}

/// Computes the limits from what is open now (read from `/proc`, so before the jail).
pub fn plan(config: &VmConfig, files: &HostFiles) -> Result<Limits, JailError> {
    let open = fd_budget::open_descriptors()
        .map_err(|source| step("count the open descriptors", source))?;
    let hard = current(libc::RLIMIT_NOFILE)
        .map_err(|source| step("read RLIMIT_NOFILE", source))?
        .rlim_max;
    let wanted = open
        .saturating_add(build_descriptors(config))
        .saturating_add(MAX_CONNECTIONS as u64)
        .saturating_add(HEADROOM);
    let nofile = wanted.min(hard);
    let fsize = largest_writable_size(files)
        .map_err(|source| step("size the files", source))?
        .max(snapshot_size(config));
    Ok(Limits { nofile, fsize })
}

/// An upper bound on the descriptors building and running the VM opens on top of those
/// open before (measured: 31 for one vCPU and no devices, about 14 per virtio device; the
/// bound doubles that).
pub fn build_descriptors(config: &VmConfig) -> u64 {
    // At most 24 disks, 4 interfaces, an rng, a balloon, a console (which may add a
    // second console writer, well inside its device's share) and a vsock: none of this comes near
    // overflowing, but it saturates rather than wrap.
    let devices = config
        .disks
        .len()
        .saturating_add(config.nets.len())
        .saturating_add(usize::from(config.rng))
        .saturating_add(usize::from(config.balloon))
        .saturating_add(usize::from(config.console.is_some()))
        .saturating_add(usize::from(config.vsock.is_some()));
    let devices = u64::try_from(devices).unwrap_or(u64::MAX);
    64u64
        .saturating_add(u64::from(config.cpus).saturating_mul(2))
        .saturating_add(devices.saturating_mul(32))
}

/// The largest file a snapshot of this VM writes: the memory file (all of guest RAM) or
/// the stream, whichever is larger.
fn snapshot_size(config: &VmConfig) -> u64 {
    let stream = u64::try_from(snapshot::MAX_STREAM_LEN).unwrap_or(u64::MAX);
    config.mem_bytes.max(stream)
}

fn largest_writable_size(files: &HostFiles) -> io::Result<u64> {
    let mut largest = 0;
    for disk in files.disks.iter().filter(|disk| !disk.read_only) {
        largest = largest.max(disk.file.metadata()?.len());
    }
    let stdout = io::stdout();
    let stderr = io::stderr();
    let consoles = [
        files.serial.as_ref().map(|file| file.as_fd()),
        files.console.as_ref().map(|file| file.as_fd()),
        Some(stdout.as_fd()),
        Some(stderr.as_fd()),
    ];
    for fd in consoles.into_iter().flatten() {
        if let Some(size) = regular_file_size(fd) {
            largest = largest.max(size.saturating_add(CONSOLE_FILE_GROWTH));
        }
    }
    Ok(largest)
}

/// The size of the file behind `fd` if it is a regular file.
fn regular_file_size(fd: BorrowedFd<'_>) -> Option<u64> {
    let file = File::from(fd.try_clone_to_owned().ok()?);
    let meta = file.metadata().ok()?;
    meta.is_file().then_some(meta.len())
}

/// Sets the limits (soft and hard, so they cannot be raised again) and ignores `SIGXFSZ`.
pub fn apply(limits: Limits) -> Result<(), JailError> {
    set(libc::RLIMIT_NOFILE, limits.nofile, "set RLIMIT_NOFILE")?;
    set(libc::RLIMIT_FSIZE, limits.fsize, "set RLIMIT_FSIZE")?;
    set(libc::RLIMIT_CORE, 0, "set RLIMIT_CORE to 0")?;
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; no handler code is involved.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(step("ignore SIGXFSZ", io::Error::last_os_error()));
    }
    debug!("jail: limits {limits:?}, no core files");
    Ok(())
}

fn current(resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and a writable rlimit.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

fn set(resource: libc::__rlimit_resource_t, value: u64, what: &str) -> Result<(), JailError> {
    let old = current(resource).map_err(|source| step(what, source))?;
    // Never raise: the hard limit the VMM was given stays an upper bound.
    let value = value.min(old.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid resource and an initialized rlimit, not above the hard limit.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(step(what, io::Error::last_os_error()));
    }
    Ok(())
}

/// Moves this process into the cgroup v2 directory `dir`.
pub fn join_cgroup(dir: &Path) -> Result<(), JailError> {
    let procs = dir.join("cgroup.procs");
    let cgroup_error = |source| JailError::Cgroup {
        path: procs.clone(),
        source,
    };
    let mut file = File::options()
        .write(true)
        .open(&procs)
        .map_err(cgroup_error)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(cgroup_error)?;
    debug!("jail: joined cgroup {}", dir.display());
    Ok(())
}
