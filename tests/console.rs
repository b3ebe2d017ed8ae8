//! The serial console as a person uses it: keys typed on the terminal reach the guest,
//! and the terminal comes back exactly as it was when `vmm` exits.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use common::{GuestCode, Scratch, require_kvm, tiny_elf, vmm_run, wait_with_timeout};

/// A pseudo-terminal pair: (master, slave).
fn open_pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the provided ints; the name,
    // termios and window-size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by openpty and are owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn termios_of(fd: &OwnedFd) -> libc::termios {
    // SAFETY: termios is plain data; tcgetattr fills it from a valid descriptor.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal descriptor and termios is writable.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut termios) }, 0);
    termios
}

#[test]
fn typed_keys_reach_the_guest_and_the_terminal_is_restored() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("console");
    let code = GuestCode::new()
        .print("ready\n")
        .echo_until(b'q')
        .acpi_poweroff();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));
    let (mut master, slave) = open_pty();
    let before = termios_of(&slave);
    assert_ne!(
        before.c_lflag & libc::ICANON,
        0,
        "a new pty starts in canonical mode"
    );

    let mut command = vmm_run(&kernel, &[]);
    command
        .stdin(Stdio::from(slave.try_clone().expect("dup pty slave")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn vmm");
    let stdout = common::PipeReader::start(child.stdout.take());
    // In raw mode the newline-free keys go through at once, unbuffered.
    stdout.wait_for("ready", Duration::from_secs(60));
    master.write_all(b"hello-q").expect("type on the terminal");
    stdout.wait_for("hello-q", Duration::from_secs(60));
    let output = wait_with_timeout(child, Duration::from_secs(60));

    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = termios_of(&slave);
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    assert_eq!(after.c_oflag, before.c_oflag, "output modes restored");
}
