//! Who may use the control socket, end to end with real second uids: `--socket-allow-uid`
//! admits a uid (a POSIX ACL entry on the 0600 socket file lets its connect(2) through,
//! and `SO_PEERCRED` checks it again), and any other uid is refused. Needs /dev/kvm for
//! the tiny guest and root to run clients as other uids.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::hostile::{ParkedVm, arg};
use common::{Scratch, describe, require_kvm, require_root, run_with_timeout};

/// `nobody` on Debian: the admitted uid.
const ADMITTED_UID: u32 = 65534;
/// A uid with no account, never admitted.
const OTHER_UID: u32 = 65533;

/// A copy of the `vmm` binary any uid can run: the build directory may sit in a 0700
/// directory.
fn vmm_anyone_can_run(scratch: &Scratch) -> PathBuf {
    let copy = scratch.path("vmm-client");
    std::fs::copy(env!("CARGO_BIN_EXE_vmm"), &copy).expect("copy vmm");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod vmm");
    copy
}

/// `vmm version SOCKET` as `uid` (and the same gid).
fn version_as(uid: u32, vmm: &Path, socket: &Path) -> Output {
    let mut command = Command::new(vmm);
    command.arg("version").arg(socket).uid(uid).gid(uid);
    run_with_timeout(command, Duration::from_secs(30))
}

#[test]
fn an_allowed_uid_can_use_the_socket_and_another_uid_cannot() {
    if !require_kvm() || !require_root() {
        return;
    }
    let admitted = ADMITTED_UID.to_string();
    let vm = ParkedVm::start("access", &["--socket-allow-uid", &admitted]);
    let tools = Scratch::new("access-tools");
    std::fs::set_permissions(vm.scratch.path(""), std::fs::Permissions::from_mode(0o755))
        .expect("make the socket's directory traversable");
    let vmm = vmm_anyone_can_run(&tools);
    std::fs::set_permissions(tools.path(""), std::fs::Permissions::from_mode(0o755))
        .expect("make the tools directory traversable");

    let allowed = version_as(ADMITTED_UID, &vmm, &vm.socket);
    let other = version_as(OTHER_UID, &vmm, &vm.socket);
    let mode = std::fs::symlink_metadata(&vm.socket)
        .expect("socket")
        .permissions()
        .mode();

    assert_eq!(
        allowed.status.code(),
        Some(0),
        "uid {ADMITTED_UID}: {}",
        describe(&allowed)
    );
    assert!(
        String::from_utf8_lossy(&allowed.stdout).contains("VMM protocol versions"),
        "{}",
        describe(&allowed)
    );
    assert_eq!(
        other.status.code(),
        Some(1),
        "uid {OTHER_UID}: {}",
        describe(&other)
    );
    let refusal = String::from_utf8_lossy(&other.stderr);
    assert!(
        refusal.starts_with(&format!(
            "vmm: error: cannot reach the VMM at {}",
            arg(&vm.socket)
        )) && refusal.contains("Permission denied"),
        "{}",
        describe(&other)
    );
    assert_eq!(
        mode & 0o007,
        0,
        "others have no bits on the socket: {mode:o}"
    );
    assert_eq!(vm.stop().status.code(), Some(0));
}
