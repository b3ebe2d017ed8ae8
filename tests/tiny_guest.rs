//! Host-native end-to-end tests: `vmm run` on tiny hand-assembled guests. They prove the VM
//! core works on this host's KVM — serial output reaches stdout, and each way a guest can
//! stop gives its documented exit status — without needing a Linux guest.

mod common;

use std::time::Duration;

use common::{
    GUEST_LOAD_ADDR, GuestCode, Scratch, require_kvm, run_with_timeout, tiny_elf, vmm_run,
};

const LIMIT: Duration = Duration::from_secs(60);

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(output: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn guest_serial_output_reaches_stdout_and_poweroff_exits_zero() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("serial");
    let code = GuestCode::new()
        .print("hello from the guest\n")
        .acpi_poweroff();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));

    let output = run_with_timeout(vmm_run(&kernel, &[]), LIMIT);

    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stdout_of(&output).contains("hello from the guest"),
        "{}",
        describe(&output)
    );
}

#[test]
fn serial_output_can_go_to_a_file() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("serial-file");
    let code = GuestCode::new().print("to the file\n").acpi_poweroff();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));
    let log = scratch.path("console.log");
    let serial = format!("file={}", log.display());

    let output = run_with_timeout(vmm_run(&kernel, &["--serial", &serial]), LIMIT);

    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let written = std::fs::read_to_string(&log).expect("console log exists");
    assert!(written.contains("to the file"), "console log: {written:?}");
    assert!(!stdout_of(&output).contains("to the file"));
}

#[test]
fn i8042_reset_command_exits_with_the_reset_code() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("i8042");
    let code = GuestCode::new()
        .print("resetting\n")
        .i8042_reset()
        .halt_forever();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));

    let output = run_with_timeout(vmm_run(&kernel, &[]), LIMIT);

    assert_eq!(output.status.code(), Some(32), "{}", describe(&output));
    assert!(stdout_of(&output).contains("resetting"));
}

#[test]
fn cf9_reset_register_exits_with_the_reset_code() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("cf9");
    let code = GuestCode::new().cf9_reset().halt_forever();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));

    let output = run_with_timeout(vmm_run(&kernel, &[]), LIMIT);

    assert_eq!(output.status.code(), Some(32), "{}", describe(&output));
}

/// The machine has no PIT unless asked for: the guest's reads of channel 0 stand still
/// without `--pit` and count down with it.
#[test]
fn the_pit_counts_only_with_pit() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("pit");
    let code = GuestCode::new()
        .print_whether_the_pit_counts()
        .cf9_reset()
        .halt_forever();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));

    let without = run_with_timeout(vmm_run(&kernel, &[]), LIMIT);
    assert_eq!(stdout_of(&without), "S", "{}", describe(&without));
    let with = run_with_timeout(vmm_run(&kernel, &["--pit"]), LIMIT);
    assert_eq!(stdout_of(&with), "M", "{}", describe(&with));
    assert_eq!(with.status.code(), Some(32), "{}", describe(&with));
}

#[test]
fn triple_fault_exits_with_the_reset_code() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("triple");
    let before = GuestCode::new().print("faulting\n");
    let fault_rip = GUEST_LOAD_ADDR + before.bytes().len() as u64;
    let code = before.triple_fault();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));

    let mut vmm = vmm_run(&kernel, &[]);
    vmm.env("VMM_LOG", "debug");
    let output = run_with_timeout(vmm, LIMIT);

    assert_eq!(output.status.code(), Some(32), "{}", describe(&output));
    assert!(stdout_of(&output).contains("faulting"));
    // A triple fault leaves no trace in the guest: the VMM says where the vCPU was (the
    // faulting ud2), unless KVM reset the vCPU first, as it does on AMD.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("vCPU 0: triple fault")
            && (stderr.contains(&format!(" rip={fault_rip:#x} "))
                || stderr.contains("KVM has already reset the vCPU")),
        "{}",
        describe(&output)
    );
    // Into a pipe or a log file, lines end in a plain newline (no raw-terminal \r).
    assert!(!stderr.contains('\r'), "{}", describe(&output));
    // The exit tally logged at the end counts it.
    assert!(stderr.contains(" shutdown 1 "), "{}", describe(&output));
}

#[test]
fn sigterm_stops_a_running_vm_with_128_plus_signal() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("sigterm");
    let code = GuestCode::new().print("parked\n").halt_forever();
    let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));
    let mut command = vmm_run(&kernel, &["--cpus", "2"]);
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vmm");

    // Wait until the guest has run (its output arrived), then ask the VMM to stop.
    let stdout = common::PipeReader::start(child.stdout.take());
    stdout.wait_for("parked", LIMIT);
    // SAFETY: sending a signal to our own child process by pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let output = common::wait_with_timeout(child, LIMIT);

    assert_eq!(
        output.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        describe(&output)
    );
}
