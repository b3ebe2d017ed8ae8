//! The serial console as a person uses it: keys typed on the terminal reach the guest,
//! and the terminal comes back exactly as it was when `vmm` exits.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{
    GuestCode, Scratch, open_pty, require_kvm, termios_of, tiny_elf, vmm_run, wait_with_timeout,
};

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
