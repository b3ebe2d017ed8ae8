//! Lab tests of the control socket with a real Linux guest (Debian's stock kernel under
//! `vmm` inside the nested lab, tools/lab and docs/lab.md): memory registered with
//! `vmm register-memory` while the guest runs is visible to it at the address printed,
//! and `vmm stop` ends a running Linux guest with status 0.
//!
//! Each test ships a shell script into the outer VM (`tools/lab --file`) that starts
//! `vmm run --socket /tmp/vmm.sock ... &`, drives it with the control subcommands, and
//! exits with vmm's status. The guest kit's init runs the `guest.run=<base64>` script.
//! The lab is slow (QEMU TCG around a nested KVM), so the tests take turns on one lock.

mod common;

use common::lab::{WAIT_VMM, guest_params, require_lab, run_in_lab, start_vmm};

/// The word the host writes at the start of the registered memory, and how the guest's
/// busybox devmem prints it.
const PATTERN_BYTES_OCTAL: &str = r"\015\360\336\300"; // 0xc0def00d, little-endian
const PATTERN_DEVMEM: &str = "0xC0DEF00D";

#[test]
fn memory_registered_while_linux_runs_is_visible_to_the_guest_at_4_gib() {
    if !require_lab() {
        return;
    }
    // The guest polls the first word of the registered range's guest physical address
    // (0x1_0000_0000: the first registration with 256 MiB of RAM) until the host's
    // pattern shows up, for at most about 5 minutes.
    let guest = format!(
        r#"i=0
while [ $i -lt 1500 ]; do
    v=$(devmem 0x100000000 32 2>&1)
    if [ "$v" = "{PATTERN_DEVMEM}" ]; then echo "guest-read: $v after $i polls"; exit 0; fi
    i=$((i + 1))
    sleep 0.2
done
echo "guest-read: gave up, last read: $v"
exit 1
"#
    );
    let script = format!(
        r#"{start}
dd if=/dev/zero of=/tmp/shared.mem bs=1048576 count=2 2>/dev/null
printf '{PATTERN_BYTES_OCTAL}' | dd of=/tmp/shared.mem conv=notrunc 2>/dev/null
vmm register-memory /tmp/vmm.sock /tmp/shared.mem
echo "lab-script: register-memory exit=$?"
{WAIT_VMM}"#,
        start = start_vmm(&[], 256, &guest, "stdio"),
    );

    let run = run_in_lab("lab-register", &script);

    assert!(
        run.output
            .lines()
            .any(|line| line.starts_with("pfn 0x100000 slot ")
                && line.ends_with(" guest physical address 0x100000000")),
        "register-memory did not map at 4 GiB; lab output:\n{}",
        run.output
    );
    assert!(
        run.output.contains("lab-script: register-memory exit=0"),
        "lab output:\n{}",
        run.output
    );
    assert!(
        run.output
            .contains(&format!("guest-read: {PATTERN_DEVMEM} after")),
        "the guest never saw the pattern; lab output:\n{}",
        run.output
    );
    run.assert_vmm_exited_0();
}

#[test]
fn vmm_stop_ends_a_running_linux_guest_with_status_0() {
    if !require_lab() {
        return;
    }
    // The guest announces itself, then would idle for 10 minutes: only `vmm stop` ends it
    // within the test's time.
    let guest = "echo guest-idling; sleep 600; echo guest-not-stopped";
    let script = format!(
        r#"{start}
wait_for guest-idling
vmm stats /tmp/vmm.sock
vmm stop /tmp/vmm.sock
echo "lab-script: stop exit=$?"
{WAIT_VMM}"#,
        start = start_vmm(&[], 256, guest, "file"),
    );

    let run = run_in_lab("lab-stop", &script);

    assert!(
        run.output.contains("guest-idling"),
        "the guest never reached its script; lab output:\n{}",
        run.output
    );
    assert!(
        run.output.contains("lab-script: stop exit=0"),
        "lab output:\n{}",
        run.output
    );
    assert!(
        !run.output.contains("guest-not-stopped"),
        "lab output:\n{}",
        run.output
    );
    run.assert_vmm_exited_0();
}

#[test]
fn scripts_start_vmm_with_the_guest_script_encoded_on_the_command_line() {
    let prelude = start_vmm(&["--balloon"], 512, "true", "stdio");

    assert!(prelude.contains(&guest_params("true")));
    assert!(prelude.contains("--socket /tmp/vmm.sock"));
    assert!(prelude.contains("--balloon --mem 512 "));
}
