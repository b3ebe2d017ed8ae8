//! `--vsock` on this host: what is refused at the command line (reserved CIDs, malformed
//! values, exit status 2), and what fails at start with one clear line and exit status 1
//! (no `/dev/vhost-vsock`: the message names the module to load; a handed-over descriptor
//! that is not vhost-vsock). The device itself is tested in the lab (tests/lab_vsock.rs),
//! whose outer VM has vhost-vsock.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{GuestCode, Scratch, require_kvm, run_with_timeout, skip, tiny_elf, vmm, vmm_run};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs vmm and returns (exit status, stderr), asserting it failed without a panic.
fn fails_with(command: Command) -> (Option<i32>, String) {
    let output = run_with_timeout(command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "vmm panicked: {stderr}");
    assert!(!output.status.success(), "vmm succeeded: {stderr}");
    (output.status.code(), stderr)
}

/// A guest that powers off at once, should the VM ever get that far.
fn kernel(scratch: &Scratch) -> std::path::PathBuf {
    scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    )
}

#[test]
fn reserved_and_out_of_range_cids_are_refused_at_the_command_line() {
    for cid in [
        "0",
        "1",
        "2",
        "4294967295",
        "4294967296",
        "18446744073709551616",
    ] {
        let mut command = vmm();
        command.args(["run", "--mem", "32", "--vsock", &format!("cid={cid}"), "k"]);
        let (code, stderr) = fails_with(command);
        assert_eq!(code, Some(2), "cid={cid}: {stderr}");
        assert!(
            stderr.contains("a guest CID is a number from 3 to 4294967294"),
            "cid={cid}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn malformed_vsock_options_are_refused_saying_what_is_wrong() {
    for (value, wanted) in [
        ("", "not KEY=VALUE"),
        ("3", "not KEY=VALUE"),
        ("cid=x", "not a number"),
        ("cid=3,port=9", "unknown key 'port'"),
        ("fd=4", "has no cid"),
        ("cid=3,cid=4", "given twice"),
        ("cid=3,fd=x", "not a descriptor number"),
        ("cid=3,fd=2", "stdin, stdout or stderr"),
    ] {
        let mut command = vmm();
        command.args(["run", "--mem", "32", "--vsock", value, "k"]);
        let (code, stderr) = fails_with(command);
        assert_eq!(code, Some(2), "--vsock '{value}': {stderr}");
        assert!(stderr.contains(wanted), "--vsock '{value}': {stderr}");
    }
}

#[test]
fn a_host_without_vhost_vsock_is_told_which_module_to_load() {
    if !require_kvm() {
        return;
    }
    if Path::new("/dev/vhost-vsock").exists() {
        skip(
            "this host has /dev/vhost-vsock, so the missing-module case cannot be shown here \
             (the descriptor tests below still run; tests/lab_vsock.rs tests the device)",
        );
        return;
    }
    let scratch = Scratch::new("vsock-nomodule");
    let (code, stderr) = fails_with(vmm_run(&kernel(&scratch), &["--vsock", "cid=3"]));
    assert_eq!(code, Some(1), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error.len(), 1, "one error line: {stderr}");
    assert!(error[0].contains("modprobe vhost_vsock"), "{stderr}");
    assert!(error[0].contains("/dev/vhost-vsock"), "{stderr}");
}

/// `vmm run --mem 32 --vsock cid=3,fd=5 KERNEL` with `file` as descriptor 5.
fn run_with_vhost_fd(file: &std::fs::File, kernel: &Path) -> Command {
    let mut command = vmm_run(kernel, &["--vsock", "cid=3,fd=5"]);
    let raw: RawFd = file.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (fcntl, dup2) on integers it owns.
    unsafe {
        command.pre_exec(move || {
            let moved = libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 100);
            if moved < 0 || libc::dup2(moved, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    command
}

#[test]
fn a_handed_over_descriptor_that_is_not_a_character_device_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("vsock-fd-kind");
    let kernel = kernel(&scratch);
    let regular = std::fs::File::open(&kernel).unwrap();
    let (code, stderr) = fails_with(run_with_vhost_fd(&regular, &kernel));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "--vsock cid=3,fd=5: descriptor 5 is a regular file, not an open /dev/vhost-vsock"
        ),
        "{stderr}"
    );
}

#[test]
fn a_handed_over_character_device_that_is_not_vhost_vsock_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("vsock-fd-null");
    let kernel = kernel(&scratch);
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let (code, stderr) = fails_with(run_with_vhost_fd(&null, &kernel));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--vsock: cannot query vhost-vsock (is it /dev/vhost-vsock?)"),
        "{stderr}"
    );
    let read_only = std::fs::File::open("/dev/null").unwrap();
    let (code, stderr) = fails_with(run_with_vhost_fd(&read_only, &kernel));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("descriptor 5 is not open for reading and writing"),
        "{stderr}"
    );
}
