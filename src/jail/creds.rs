//! Who the jailed VMM is: the identity it runs as, the user namespace an unprivileged
//! `vmm` makes for itself, and the dropping of every capability, bounding set included.

use std::io;

use log::debug;

use super::{JailConfig, JailError, step};

/// The uid and gid the jail uses when started as root without `--jail-uid`/`--jail-gid`:
/// the traditional `nobody`/`nogroup`. A dedicated id per VM is better (docs/security.md).
pub const DEFAULT_JAIL_ID: u32 = 65534;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words of each set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// How the jail gets rid of privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Started as root: switch to this unprivileged uid and gid.
    Switch { uid: u32, gid: u32 },
    /// Started as an ordinary user: stay this uid and gid, inside a user namespace that
    /// maps only them, so no privilege is needed for the other namespaces.
    UserNamespace { uid: u32, gid: u32 },
}

/// Chooses the identity from the effective uid `vmm` started with and the options.
pub fn plan(config: &JailConfig, euid: u32, egid: u32) -> Result<Identity, JailError> {
    if euid == 0 {
        return Ok(Identity::Switch {
            uid: config.uid.unwrap_or(DEFAULT_JAIL_ID),
            gid: config.gid.unwrap_or(DEFAULT_JAIL_ID),
        });
    }
    if config.uid.is_some() || config.gid.is_some() {
        return Err(JailError::IdsNeedRoot);
    }
    Ok(Identity::UserNamespace {
        uid: euid,
        gid: egid,
    })
}

/// The effective uid and gid of this process.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid(2) and getegid(2) take no arguments and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Makes a user namespace that maps only `uid` and `gid` (to themselves). The process
/// gets every capability inside it, which the later steps use and then drop.
pub fn enter_user_namespace(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: unshare(2) takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(JailError::UserNamespace(io::Error::last_os_error()));
    }
    write_id_file("setgroups", "deny")?;
    write_id_file("uid_map", &format!("{uid} {uid} 1\n"))?;
    write_id_file("gid_map", &format!("{gid} {gid} 1\n"))?;
    debug!("jail: user namespace mapping uid {uid} and gid {gid} only");
    Ok(())
}

fn write_id_file(file: &'static str, contents: &str) -> Result<(), JailError> {
    std::fs::write(format!("/proc/self/{file}"), contents)
        .map_err(|source| JailError::IdMap { file, source })
}

/// Drops the bounding set and the ambient set, switches identity (with
/// [`Identity::Switch`]), clears every capability set, turns keep-caps off and sets
/// `no_new_privs`; then checks that nothing is left.
pub fn drop_privileges(identity: Identity) -> Result<(), JailError> {
    drop_bounding_set()?;
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(rc, "clear the ambient capabilities")?;
    if let Identity::Switch { uid, gid } = identity {
        switch_ids(uid, gid)?;
    }
    clear_capability_sets()?;
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    check(rc, "turn PR_SET_KEEPCAPS off")?;
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc, "set no_new_privs")?;
    verify_no_capabilities()
}

fn check(rc: libc::c_int, what: &str) -> Result<(), JailError> {
    if rc != 0 {
        return Err(step(what, io::Error::last_os_error()));
    }
    Ok(())
}

/// Every capability the kernel knows, as `PR_CAPBSET_READ` numbers them (it fails past
/// the last one).
fn known_capabilities() -> impl Iterator<Item = (libc::c_ulong, bool)> {
    (0..64).map_while(|cap: libc::c_ulong| {
        // SAFETY: prctl(2) with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        (rc >= 0).then_some((cap, rc == 1))
    })
}

fn drop_bounding_set() -> Result<(), JailError> {
    for (cap, present) in known_capabilities() {
        if !present {
            continue;
        }
        // SAFETY: prctl(2) with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let source = io::Error::last_os_error();
            return Err(step(
                &format!("drop capability {cap} from the bounding set"),
                source,
            ));
        }
    }
    Ok(())
}

/// Root only: no supplementary groups, then the gid, then the uid (which, with keep-caps
/// off, also empties the permitted and effective sets).
fn switch_ids(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: a zero-length list needs no valid pointer.
    let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
    check(rc, "drop the supplementary groups")?;
    // SAFETY: setresgid(2) with integer arguments only.
    let rc = unsafe { libc::setresgid(gid, gid, gid) };
    check(rc, &format!("switch to gid {gid} (--jail-gid)"))?;
    // SAFETY: setresuid(2) with integer arguments only.
    let rc = unsafe { libc::setresuid(uid, uid, uid) };
    check(rc, &format!("switch to uid {uid} (--jail-uid)"))?;
    debug!("jail: running as uid {uid} gid {gid}");
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn clear_capability_sets() -> Result<(), JailError> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset(2) reads a version-3 header and the two data words it names, both
    // valid for the call; pid 0 is this thread (the only one).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(step(
            "clear the capability sets (capset)",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn verify_no_capabilities() -> Result<(), JailError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) writes the two data words of a version-3 header, both valid and
    // writable for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(step(
            "read the capability sets back (capget)",
            io::Error::last_os_error(),
        ));
    }
    if data != [CapData::default(); 2] {
        return Err(JailError::CapabilityLeft(format!("{data:?}")));
    }
    if let Some((cap, _)) = known_capabilities().find(|&(_, present)| present) {
        return Err(JailError::CapabilityLeft(format!(
            "capability {cap} in the bounding set"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uid: Option<u32>, gid: Option<u32>) -> JailConfig {
        JailConfig {
            uid,
            gid,
            cgroup: None,
        }
    }

    #[test]
    fn root_switches_to_the_default_ids_unless_told_otherwise() {
        assert_eq!(
            plan(&config(None, None), 0, 0).ok(),
            Some(Identity::Switch {
                uid: DEFAULT_JAIL_ID,
                gid: DEFAULT_JAIL_ID
            })
        );
        assert_eq!(
            plan(&config(Some(1234), Some(4321)), 0, 0).ok(),
            Some(Identity::Switch {
                uid: 1234,
                gid: 4321
            })
        );
    }

    #[test]
    fn an_ordinary_user_keeps_its_ids_in_a_user_namespace() {
        assert_eq!(
            plan(&config(None, None), 1000, 100).ok(),
            Some(Identity::UserNamespace {
                uid: 1000,
                gid: 100
            })
        );
    }

    #[test]
    fn an_ordinary_user_cannot_ask_for_other_ids() {
        assert!(matches!(
            plan(&config(Some(1234), None), 1000, 100),
            Err(JailError::IdsNeedRoot)
        ));
    }
}
