//! The socket file's POSIX access ACL: how `Listener::bind` admits uids other than its own
//! to a socket whose mode is 0600. connect(2) on a UNIX socket needs write permission on
//! its file, so `SO_PEERCRED` alone can never admit another uid; an ACL entry
//! `user:UID:rw-` per admitted uid (with mask `rw-`) does, without widening the mode for
//! anyone else.
//!
//! The ACL is written with `setxattr("system.posix_acl_access")` in the kernel's binary
//! format (`include/uapi/linux/posix_acl_xattr.h`), so no libacl is needed: a 4-byte
//! version (2), then 8-byte entries `tag: u16, perm: u16, id: u32`, sorted by tag and then
//! id.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const XATTR_NAME: &std::ffi::CStr = c"system.posix_acl_access";
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
/// The id of entries that name no user or group.
const ACL_UNDEFINED_ID: u32 = u32::MAX;
const READ_WRITE: u16 = 0o6;

/// The binary access ACL `user::rw-`, `user:UID:rw-` for each of `uids`, `group::---`,
/// `mask::rw-`, `other::---`.
pub fn socket_acl(uids: &[u32]) -> Vec<u8> {
    let mut uids = uids.to_vec();
    uids.sort_unstable();
    uids.dedup();
    let mut entries = vec![(ACL_USER_OBJ, READ_WRITE, ACL_UNDEFINED_ID)];
    entries.extend(uids.iter().map(|&uid| (ACL_USER, READ_WRITE, uid)));
    entries.extend([
        (ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID),
        (ACL_MASK, READ_WRITE, ACL_UNDEFINED_ID),
        (ACL_OTHER, 0, ACL_UNDEFINED_ID),
    ]);
    let mut bytes = ACL_VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        bytes.extend_from_slice(&tag.to_le_bytes());
        bytes.extend_from_slice(&perm.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    bytes
}

/// Grants each of `uids` read/write on the file at `path` through its access ACL.
/// Fails with `EOPNOTSUPP` where the filesystem has no POSIX ACLs.
pub fn grant_read_write(path: &Path, uids: &[u32]) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let acl = socket_acl(uids);
    // SAFETY: `path` and XATTR_NAME are NUL-terminated strings and `acl` is a buffer of
    // acl.len() readable bytes; all outlive the call, which only reads them.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            XATTR_NAME.as_ptr(),
            acl.as_ptr().cast::<libc::c_void>(),
            acl.len(),
            0,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_lists_each_uid_once_in_order_between_owner_and_group() {
        let acl = socket_acl(&[1001, 65534, 1001]);
        let entry = |tag: u16, perm: u16, id: u32| {
            [tag.to_le_bytes(), perm.to_le_bytes()]
                .concat()
                .into_iter()
                .chain(id.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let expected: Vec<u8> = [
            vec![2, 0, 0, 0],
            entry(0x01, 6, u32::MAX),
            entry(0x02, 6, 1001),
            entry(0x02, 6, 65534),
            entry(0x04, 0, u32::MAX),
            entry(0x10, 6, u32::MAX),
            entry(0x20, 0, u32::MAX),
        ]
        .concat();
        assert_eq!(acl, expected);
    }
}
