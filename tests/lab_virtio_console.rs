//! Lab tests of `--console` (the virtio-console, the guest's `hvc0`) with Debian's stock
//! kernel, whose guest init loads `virtio_console` as a module (tools/lab, docs/lab.md).
//!
//! - With the default command line (`console=ttyS0 console=hvc0`), `--console stdio` on a
//!   terminal and no `guest.run`: the boot log goes to ttyS0 (Debian 6.1 does not replay
//!   it on hvc0 when the module registers the console; kernel messages from then on reach
//!   both), init's interactive shell comes up on hvc0, and a command typed on the terminal
//!   runs in the guest; `poweroff -f` typed the same way ends the VM with status 0. The
//!   terminal is a pty: util-linux `script` (shipped into the outer VM) runs vmm, and the
//!   lab script types into `script`'s stdin through a FIFO.
//! - With `--console file=PATH`, what the guest writes to `/dev/hvc0` lands in the file,
//!   with the kernel messages logged after the driver bound, and `vmm stats` counts it.

mod common;

use common::Scratch;
use common::lab::{WAIT_IN, base64, require_lab, run, run_in_lab};

#[test]
fn a_command_typed_on_the_terminal_runs_in_the_guests_hvc0_shell() {
    if !require_lab() {
        return;
    }
    let script = format!(
        r#"{WAIT_IN}rm -f /tmp/vmm.sock /tmp/serial.log /tmp/ts /tmp/in
trap 'echo "--- serial ---"; cat /tmp/serial.log; echo "--- terminal ---"; cat /tmp/ts; echo "--- end ---"' EXIT
mkfifo /tmp/in
script -qfec "vmm run --socket /tmp/vmm.sock --serial file=/tmp/serial.log --console stdio \
    --mem 256 --cpus 1 --initrd /guest/initrd.img /guest/vmlinuz" /tmp/ts < /tmp/in > /dev/null &
vmm=$!
exec 3>/tmp/in
wait_in /tmp/serial.log 3000 'vmm-guest:'
# init's shell on hvc0 (cttyhack finds it as the active console) prints its prompt there.
wait_in /tmp/ts 600 ' # '
printf 'echo typed-$((6*7))\r' >&3
wait_in /tmp/ts 600 'typed-42'
echo "lab-script: typed command ran"
vmm stats /tmp/vmm.sock
printf 'poweroff -f\r' >&3
wait $vmm
status=$?
exec 3>&-
echo "lab-script: vmm exit=$status"
exit $status
"#
    );
    let scratch = Scratch::new("lab-console-tty");
    let host_script = scratch.write("script.sh", script.as_bytes());
    let run = run(
        &[
            "--file".to_string(),
            "/usr/bin/script=/usr/bin/script".to_string(),
            "--file".to_string(),
            format!("{}=/lab-script.sh", host_script.display()),
        ],
        &["sh".to_string(), "/lab-script.sh".to_string()],
    );

    let terminal = section(&run.output, "--- terminal ---", "--- end ---");
    let serial = section(&run.output, "--- serial ---", "--- terminal ---");
    assert!(
        serial.contains("Linux version") && serial.contains("vmm-guest: cpus=1"),
        "the boot log and init's own output went to ttyS0; lab output:\n{}",
        run.output
    );
    assert!(
        terminal.contains("NET: Registered PF_VSOCK"),
        "a kernel message logged after virtio_console bound (the kit loads vsock after it) \
         reached hvc0; lab output:\n{}",
        run.output
    );
    assert!(
        terminal.contains("typed-42"),
        "the typed command ran; lab output:\n{}",
        run.output
    );
    assert!(
        run.stats_counter("console", "bytes_in") >= 14,
        "the typed bytes went through the virtio-console"
    );
    assert!(run.stats_counter("console", "bytes_out") > 100);
    assert_eq!(run.stats_counter("console", "bytes_dropped"), 0);
    run.assert_vmm_exited_0();
}

#[test]
fn guest_output_on_hvc0_lands_in_the_console_file_with_the_kernel_log() {
    if !require_lab() {
        return;
    }
    // 64 KiB through hvc0, then a marker line.
    let guest = r#"head -c 65536 /dev/zero | tr '\0' x > /dev/hvc0
echo > /dev/hvc0
echo hvc-says-$((6*7)) > /dev/hvc0
sleep 600
"#;
    let params = format!(
        "console=ttyS0 console=hvc0 panic=-1 guest.run={}",
        base64(guest.as_bytes())
    );
    let script = format!(
        r#"{WAIT_IN}rm -f /tmp/vmm.sock /tmp/serial.log /tmp/hvc.log
trap 'echo "--- serial ---"; cat /tmp/serial.log; echo "--- hvc ---"; grep -v xxxx /tmp/hvc.log; echo "--- end ---"' EXIT
vmm run --socket /tmp/vmm.sock --serial file=/tmp/serial.log --console file=/tmp/hvc.log \
    --mem 256 --cpus 1 --initrd /guest/initrd.img --params "{params}" /guest/vmlinuz &
vmm=$!
wait_in /tmp/hvc.log 3000 'hvc-says-42'
echo "hvc-x-bytes: $(tr -cd x < /tmp/hvc.log | wc -c)"
vmm stats /tmp/vmm.sock
vmm stop /tmp/vmm.sock
wait $vmm
status=$?
echo "lab-script: vmm exit=$status"
exit $status
"#
    );

    let run = run_in_lab("lab-console-file", &script);

    let hvc = section(&run.output, "--- hvc ---", "--- end ---");
    assert!(
        hvc.contains("NET: Registered PF_VSOCK"),
        "kernel messages logged after the driver bound reached hvc0; lab output:\n{}",
        run.output
    );
    assert!(hvc.contains("hvc-says-42"), "lab output:\n{}", run.output);
    let serial = section(&run.output, "--- serial ---", "--- hvc ---");
    assert!(
        serial.contains("vmm-guest: cpus=1"),
        "init's own output stays on ttyS0 (its /dev/console); lab output:\n{}",
        run.output
    );
    assert!(
        run.value("hvc-x-bytes:").parse::<u64>().unwrap() >= 65536,
        "every byte arrived"
    );
    assert!(run.stats_counter("console", "bytes_out") >= 65536);
    assert_eq!(run.stats_counter("console", "bytes_dropped"), 0);
    run.assert_vmm_exited_0();
}

/// The text between the last `start` line and the `end` line after it.
fn section<'a>(output: &'a str, start: &str, end: &str) -> &'a str {
    let from = output.rfind(start).map_or(0, |i| i + start.len());
    let rest = &output[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}
