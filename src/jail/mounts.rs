//! The jail's namespaces and its root: new mount, IPC, UTS and network namespaces, and
//! `pivot_root` into an empty, read-only tmpfs (or, on a host that runs from its
//! initramfs, which pivot_root cannot move, the new root moved over it and chrooted into),
//! so that `/` holds nothing and no path the VMM could be made to open resolves to anything.

use std::ffi::CString;
use std::io;
use std::path::Path;

use log::debug;

use super::{JailError, step};

/// Directories the new root's tmpfs may be mounted on, in order of preference. The mount
/// is private to the jail's mount namespace; the host never sees it.
const MOUNT_POINTS: [&str; 3] = ["/tmp", "/mnt", "/run"];

/// The tmpfs's options: a tiny, empty, read-only-after-setup directory.
const ROOT_TMPFS_OPTIONS: &str = "size=4k,nr_inodes=2,mode=0555";

/// New mount, IPC, UTS and network namespaces. Descriptors opened before stay usable:
/// a tap keeps its interface in the host's network namespace, the control socket its file.
pub fn unshare_namespaces() -> Result<(), JailError> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare(2) takes only flags.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(step(
            "create the mount, IPC, UTS and network namespaces",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Makes every mount private, mounts an empty tmpfs, pivots into it, detaches the old
/// root and makes the new one read-only.
pub fn pivot_to_empty_root() -> Result<(), JailError> {
    mount(
        None,
        "/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "make the jail's mounts private",
    )?;
    let new_root = MOUNT_POINTS
        .iter()
        .copied()
        .find(|dir| Path::new(dir).is_dir())
        .ok_or_else(|| {
            step(
                "find a directory to mount the jail's root on (/tmp, /mnt or /run)",
                io::Error::from_raw_os_error(libc::ENOENT),
            )
        })?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTIONS),
        "mount the jail's empty root (tmpfs)",
    )?;
    std::env::set_current_dir(new_root)
        .map_err(|source| step("enter the jail's new root", source))?;
    let dot = c_path(".")?;
    // SAFETY: pivot_root(2) reads two NUL-terminated paths that live across the call.
    // With both "." the old root ends up mounted on top of the new one, at "/".
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } == 0 {
        // SAFETY: umount2(2) reads a NUL-terminated path that lives across the call.
        if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(step(
                "detach the host's root from the jail",
                io::Error::last_os_error(),
            ));
        }
    } else {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(step("pivot_root into the jail", err));
        }
        move_onto_initramfs_root()?;
    }
    std::env::set_current_dir("/").map_err(|source| step("enter the jail's root", source))?;
    mount(
        None,
        "/",
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
        "make the jail's root read-only",
    )?;
    debug!("jail: in an empty read-only root (the tmpfs mounted on {new_root})");
    Ok(())
}

/// pivot_root(2) refuses to move the initial ramfs (EINVAL: a host that runs from its
/// initramfs, as the nested lab's outer VM does). Then the new root is moved over `/` and
/// chrooted into, as switch_root(8) does: the ramfs stays mounted underneath, unreachable
/// once the capabilities (CAP_SYS_CHROOT among them) are dropped, since nothing open points
/// into it.
fn move_onto_initramfs_root() -> Result<(), JailError> {
    mount(
        Some("."),
        "/",
        None,
        libc::MS_MOVE,
        None,
        "move the jail's root over the initial ramfs",
    )?;
    let dot = c_path(".")?;
    // SAFETY: chroot(2) reads a NUL-terminated path that lives across the call.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(step(
            "chroot into the jail's root",
            io::Error::last_os_error(),
        ));
    }
    debug!("jail: the host runs from its initramfs; moved the new root over it and chrooted");
    Ok(())
}

fn c_path(path: &str) -> Result<CString, JailError> {
    CString::new(path).map_err(|_| {
        step(
            "name a path for mount(2)",
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    what: &str,
) -> Result<(), JailError> {
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    let fstype = fstype.map(c_path).transpose()?;
    let data = data.map(c_path).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: mount(2) reads NUL-terminated strings (or null where allowed) that live
    // across the call; `data` is a NUL-terminated option string for tmpfs, or null.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        return Err(step(what, io::Error::last_os_error()));
    }
    Ok(())
}
