//! Lab tests of `vmm console` with a real Linux guest (Debian's stock kernel under `vmm`
//! inside the nested lab, tools/lab and docs/lab.md):
//!
//! - its console on the UART (`ttyS0`): a watcher attached after boot gets the kernel's
//!   boot log from the VMM's ring, then live output; a writer's typed line reaches the
//!   guest's shell, which answers; when the guest powers off both clients are told and
//!   exit 0;
//! - its console on the virtio-console alone (`console=hvc0`): the kernel's messages reach
//!   the `--console` file from the moment the `virtio_console` module gives hvc0 a device
//!   (Debian builds it as a module: what the kernel printed before that went to hvc0's
//!   early, still deviceless console and is only in `dmesg`, under any VMM); a watcher
//!   attached after boot sees the ring's history, then new lines; a command typed into a writer runs in the guest; and a client that stopped
//!   reading (its output pipe full) does not stall the guest, which keeps printing through
//!   a 2 MiB burst and after it.

mod common;

use common::lab::{WAIT_IN, base64, require_lab, run_in_lab, start_vmm};

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

#[test]
fn on_hvc0_the_ring_the_writer_and_a_stalled_reader_behave() {
    if !require_lab() {
        return;
    }
    // The guest's console is hvc0 alone; the script talks through /dev/hvc0 (init's own
    // /dev/console was opened before the module gave hvc0 a device). A ticker prints ten lines a second;
    // the loop runs what the writer types, `burst` being 2 MiB of output at once.
    let guest = r#"exec </dev/hvc0 >/dev/hvc0 2>&1
echo guest-ready
( i=0; while :; do echo tick-$i; i=$((i + 1)); sleep 0.1; done ) &
while read -r line; do
    case "$line" in
        burst) dd if=/dev/zero bs=1024 count=2048 2>/dev/null | tr '\0' x; echo; echo burst-done ;;
        *) eval "$line" ;;
    esac
done
"#;
    let params = format!("console=hvc0 guest.run={}", base64(guest.as_bytes()));
    let script = format!(
        r#"{WAIT_IN}rm -f /tmp/vmm.sock /tmp/serial.log /tmp/hvc.log
vmm run --socket /tmp/vmm.sock --serial file=/tmp/serial.log --console file=/tmp/hvc.log \
    --console-ring 1024 --mem 256 --cpus 1 --initrd /guest/initrd.img \
    --params "{params}" /guest/vmlinuz > /tmp/vmm.out 2>&1 &
vmm=$!
trap 'echo "--- vmm ---"; cat /tmp/vmm.out; echo "--- hvc0 (head) ---"; head -c 3000 /tmp/hvc.log; echo "--- hvc0 (tail, no burst) ---"; tr -s x < /tmp/hvc.log | tail -c 3000; echo "--- hvc0 (the typed line) ---"; grep -n -e burst-done -e guest-ran /tmp/hvc.log | tail -5; echo "--- watch (tail, no burst) ---"; tr -s x < /tmp/watch.out | tail -c 2000; echo "--- watch.err ---"; cat /tmp/watch.err; echo "--- write.err ---"; cat /tmp/write.err; echo "--- end ---"' EXIT
wait_in /tmp/hvc.log 3000 guest-ready
echo "lab-script: kernel messages on hvc0=$(grep -c '^\[ *[0-9]*\.[0-9]*\] ' /tmp/hvc.log | sed 's/^[1-9][0-9]*$/yes/')"
# A client that stops reading at once: its stdout is a pipe nobody reads.
vmm console --read-only /tmp/vmm.sock | sleep 600 &
stalled=$!
vmm console --read-only /tmp/vmm.sock > /tmp/watch.out 2> /tmp/watch.err &
watch=$!
wait_in /tmp/watch.out 300 guest-ready
(sleep 2; printf 'burst\r'; sleep 2; printf 'echo guest-ran-$((6 * 7))\r') \
    | vmm console /tmp/vmm.sock > /tmp/write.out 2> /tmp/write.err &
writer=$!
wait_in /tmp/hvc.log 600 burst-done
wait_in /tmp/watch.out 600 guest-ran-42
before=$(grep -c tick- /tmp/hvc.log)
sleep 3
after=$(grep -c tick- /tmp/hvc.log)
echo "lab-script: ticks after the burst advanced=$([ "$after" -gt $((before + 10)) ] && echo yes || echo no) ($before, $after)"
echo "lab-script: watch saw the ticks live=$(grep -c tick- /tmp/watch.out | sed 's/^[1-9][0-9]*$/yes/')"
vmm stats /tmp/vmm.sock > /dev/null && echo "lab-script: stats answered"
vmm stop /tmp/vmm.sock
wait $vmm
status=$?
kill $stalled
wait $watch
echo "lab-script: watch exit=$?"
wait $writer
echo "lab-script: writer exit=$?"
echo "lab-script: writer live guest-ran=$(grep -c guest-ran-42 /tmp/write.out)"
echo "--- watch.err ---"; cat /tmp/watch.err; echo "--- write.err ---"; cat /tmp/write.err
echo "lab-script: vmm exit=$status"
exit $status
"#
    );

    let run = run_in_lab("lab-console-hvc0", &script);

    for line in [
        "lab-script: kernel messages on hvc0=yes",
        "lab-script: ticks after the burst advanced=yes",
        "lab-script: watch saw the ticks live=yes",
        "lab-script: stats answered",
        "lab-script: watch exit=0",
        "lab-script: writer exit=0",
        "lab-script: writer live guest-ran=1",
    ] {
        assert!(
            run.output.contains(line),
            "no {line:?}; lab output:\n{}",
            run.output
        );
    }
    run.assert_vmm_exited_0();
}
