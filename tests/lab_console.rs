//! Lab test of `vmm console` with a real Linux guest (Debian's stock kernel under `vmm`
//! inside the nested lab, tools/lab and docs/lab.md), its console on the UART (`ttyS0`):
//! a watcher attached after boot gets the kernel's boot log from the VMM's ring, then
//! live output; a writer's typed line reaches the guest's shell, which answers; when the
//! guest powers off both clients are told and exit 0.

mod common;

use common::lab::{require_lab, run_in_lab, start_vmm};

#[test]
fn vmm_console_shows_a_linux_guests_boot_log_and_types_a_line_into_it() {
    if !require_lab() {
        return;
    }
    // The guest's script reads one line from its console (the UART, canonical mode: the
    // writer's CR ends the line) and answers it, then init powers off.
    let guest = r#"echo guest-ready
read -r line
echo "guest-got: $line"
"#;
    let script = format!(
        r#"{start}
wait_for guest-ready
vmm console --read-only /tmp/vmm.sock > /tmp/watch.out 2> /tmp/watch.err &
watch=$!
# The writer's stdin ends after the line: vmm console stays attached until the VM ends.
# (Nothing of the pipeline may outlive the VM: busybox sh's `wait` waits for all of it.)
(sleep 3; printf 'typed-in-console\r') | vmm console /tmp/vmm.sock > /tmp/write.out 2> /tmp/write.err &
writer=$!
wait_for guest-got
wait $vmm
status=$?
wait $watch
echo "lab-script: watch exit=$?"
wait $writer
echo "lab-script: writer exit=$?"
echo "lab-script: watch history linux-version=$(grep -c 'Linux version' /tmp/watch.out)"
echo "lab-script: watch live guest-got=$(grep -c 'guest-got: typed-in-console' /tmp/watch.out)"
echo "lab-script: writer live guest-got=$(grep -c 'guest-got: typed-in-console' /tmp/write.out)"
echo "--- watch.err ---"; cat /tmp/watch.err; echo "--- write.err ---"; cat /tmp/write.err
echo "lab-script: vmm exit=$status"
exit $status
"#,
        // 1 MiB: the whole boot log fits, whatever the kernel prints.
        start = start_vmm(&["--console-ring", "1024"], 256, guest, "file"),
    );

    let run = run_in_lab("lab-console", &script);

    for line in [
        "lab-script: watch exit=0",
        "lab-script: writer exit=0",
        "lab-script: watch history linux-version=1",
        "lab-script: watch live guest-got=1",
        "lab-script: writer live guest-got=1",
        "[vmm console: the VM ended]",
    ] {
        assert!(
            run.output.contains(line),
            "no {line:?}; lab output:\n{}",
            run.output
        );
    }
    run.assert_vmm_exited_0();
}
