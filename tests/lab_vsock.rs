//! Lab tests of virtio-vsock on the outer VM's vhost-vsock, with Debian's stock kernel and
//! its own vsock modules (tools/lab, docs/lab.md): 64 MiB each way between the guest and
//! the outer VM over AF_VSOCK stream sockets, checksummed at both ends; `vmm stop` with a
//! connection open; a second VM refused the CID the first holds while the first keeps
//! running; the guest's driver unloaded and loaded again, after which the device works as
//! before and the VMM holds no more descriptors than it did (its worker is under its own
//! seccomp policy, as the test hook shows); and a guest without MSI (`pci=nomsi`), whose
//! interrupts the worker relays to INTA#, on a `/dev/vhost-vsock` handed over as `fd=5`.
//! Registered memory goes into vhost's memory table: with the device running, regions are
//! registered until vhost's `max_mem_regions` (counting guest RAM) refuses one with
//! `E2BIG`, the vsock works on with the full table and after every region is unregistered,
//! and `vmm queues` shows the device's queues (the kernel's two as `vhost`).
//!
//! Both sides use `lab-vsock` (tools/lab-vsock.c, built by the kit into the guest and the
//! outer VM), which prints `lab-vsock: sent=N fnv=HEX mbps=X` or `received=...`. A sender
//! retries its connect for 30 s while nobody listens, so the sides need no handshake
//! beyond the markers the guest prints on its console.

mod common;

use common::lab::{
    LabRun, WAIT_VMM, guest_params, require_lab, run_in_lab, start_vmm, start_vmm_with_params,
};

/// 64 MiB, each way in the first test.
const BYTES: u64 = 64 << 20;
/// 16 MiB, for the transfers around the driver reload.
const RELOAD_BYTES: u64 = 16 << 20;

/// The `key=` field of a `lab-vsock:` result line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in '{line}'"))
}

/// Asserts the `sent` line and the `received` line report the same bytes and checksum.
fn assert_same_stream(run: &LabRun, sent_prefix: &str, received_prefix: &str, bytes: u64) {
    let output = &run.output;
    let sent = run.value(sent_prefix);
    let received = run.value(received_prefix);
    assert_eq!(field(sent, "sent="), bytes.to_string(), "{sent}: {output}");
    assert_eq!(
        field(received, "received="),
        bytes.to_string(),
        "{received}: {output}"
    );
    assert_eq!(
        field(sent, "fnv="),
        field(received, "fnv="),
        "{sent_prefix} arrived intact: {output}"
    );
    eprintln!(
        "{sent_prefix} {} MB/s, {received_prefix} {} MB/s",
        field(sent, "mbps="),
        field(received, "mbps=")
    );
}

#[test]
fn host_and_guest_move_64_mib_each_way_and_vmm_stop_ends_an_open_connection() {
    if !require_lab() {
        return;
    }
    let guest = format!(
        r#"echo guest-pci-ids: $(cat /sys/bus/pci/devices/*/device | tr '\n' ' ')
echo guest-cid-listening
echo "guest-recv: $(lab-vsock listen 5000 {BYTES} 2>/dev/null)"
echo "guest-send: $(lab-vsock send 2 5001 {BYTES})"
lab-vsock listen 5003 1000000000000 >/dev/null 2>&1 &
echo guest-holding
sleep 600
"#
    );
    let script = format!(
        r#"lab-vsock listen 5001 {BYTES} >/tmp/host-rx 2>/dev/null &
{start}
wait_for guest-cid-listening
echo "host-send: $(lab-vsock send 3 5000 {BYTES})"
wait_for guest-send:
i=0; until grep -q received= /tmp/host-rx || [ $i -gt 300 ]; do i=$((i + 1)); sleep 0.1; done
echo "host-recv: $(cat /tmp/host-rx)"
wait_for guest-holding
lab-vsock hold 3 5003 >/tmp/hold 2>&1 &
hold=$!
i=0; until grep -q connected /tmp/hold || [ $i -gt 300 ]; do i=$((i + 1)); sleep 0.1; done
echo "host-hold-before-stop: $(cat /tmp/hold)"
vmm stop /tmp/vmm.sock
wait $vmm
status=$?
i=0; while kill -0 $hold 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
echo "host-hold-after-stop: $(tail -n1 /tmp/hold)"
echo "lab-script: vmm exit=$status"
exit $status
"#,
        start = start_vmm(&["--vsock", "cid=3"], 512, &guest, "file"),
    );

    let run = run_in_lab("lab-vsock", &script);
    let output = &run.output;

    // 0x1053 is a modern virtio-vsock (0x1040 + 19).
    assert!(
        run.value("guest-pci-ids:").contains("0x1053"),
        "the guest sees a virtio-vsock on PCI: {output}"
    );
    assert_same_stream(&run, "host-send:", "guest-recv:", BYTES);
    assert_same_stream(&run, "guest-send:", "host-recv:", BYTES);
    assert!(
        run.value("host-hold-before-stop:").contains("connected"),
        "{output}"
    );
    eprintln!("{}", run.value("host-hold-after-stop:"));
    assert!(
        run.value("host-hold-after-stop:").contains("held, ended"),
        "the open connection ended with the VM: {output}"
    );
    run.assert_vmm_exited_0();
}

#[test]
fn a_cid_in_use_is_refused_and_the_driver_reloads_without_leaking_descriptors() {
    if !require_lab() {
        return;
    }
    let guest = format!(
        r#"echo guest-ready
echo "guest-recv1: $(lab-vsock listen 5000 {RELOAD_BYTES} 2>/dev/null)"
rmmod vmw_vsock_virtio_transport && echo guest-rmmod: ok
insmod /lib/modules/vmw_vsock_virtio_transport.ko && echo guest-insmod: ok
echo guest-reloaded
echo "guest-recv2: $(lab-vsock listen 5001 {RELOAD_BYTES} 2>/dev/null)"
echo "guest-send: $(lab-vsock send 2 5002 {RELOAD_BYTES})"
echo guest-done
sleep 600
"#
    );
    let script = format!(
        r#"lab-vsock listen 5002 {RELOAD_BYTES} >/tmp/host-rx 2>/dev/null &
{start}
wait_for guest-ready
# A second VM asking for the same CID fails at start, saying why; the first runs on.
vmm run --vsock cid=5 --mem 64 --serial file=/tmp/second.log /guest/vmlinuz 2>/tmp/second.err
echo "second-exit: $?"
echo "second-error: $(grep error /tmp/second.err)"
# The worker's seccomp policy is on: the test hook's call in that thread stops the VMM.
VMM_SANDBOX_TEST_VIOLATION=virtio-vsock vmm run --vsock cid=9 --mem 64 \
    --serial file=/tmp/third.log /guest/vmlinuz 2>/tmp/third.err
echo "violation-exit: $?"
echo "violation-line: $(grep 'sandbox: thread' /tmp/third.err)"
echo "first-alive: $(kill -0 $vmm && echo yes || echo no)"
echo "host-send1: $(lab-vsock send 5 5000 {RELOAD_BYTES})"
wait_for guest-recv1:
fds() {{ ls /proc/$(vmm_proc)/fd | wc -l; }}
echo "fds-active: $(fds)"
wait_for guest-reloaded
echo "fds-reactivated: $(fds)"
echo "host-send2: $(lab-vsock send 5 5001 {RELOAD_BYTES})"
wait_for guest-done
i=0; until grep -q received= /tmp/host-rx || [ $i -gt 300 ]; do i=$((i + 1)); sleep 0.1; done
echo "host-recv: $(cat /tmp/host-rx)"
vmm stop /tmp/vmm.sock
{WAIT_VMM}"#,
        start = start_vmm(&["--vsock", "cid=5"], 256, &guest, "file"),
    );

    let run = run_in_lab("lab-vsock-reload", &script);
    let output = &run.output;

    assert_eq!(run.value("second-exit:"), "1", "{output}");
    let error = run.value("second-error:");
    assert!(
        error.contains("guest CID 5 is already in use"),
        "one clear line: {error}: {output}"
    );
    assert_eq!(run.value("violation-exit:"), "31", "{output}");
    let violation = run.value("violation-line:");
    assert!(
        violation.contains("thread virtio-vsock (virtio-vsock policy) made system call uname"),
        "{violation}: {output}"
    );
    assert_eq!(run.value("first-alive:"), "yes", "{output}");
    assert_same_stream(&run, "host-send1:", "guest-recv1:", RELOAD_BYTES);
    assert_eq!(run.value("guest-rmmod:"), "ok", "{output}");
    assert_eq!(run.value("guest-insmod:"), "ok", "{output}");
    assert_same_stream(&run, "host-send2:", "guest-recv2:", RELOAD_BYTES);
    assert_same_stream(&run, "guest-send:", "host-recv:", RELOAD_BYTES);
    let fds: u32 = run
        .value("fds-active:")
        .parse()
        .unwrap_or_else(|e| panic!("fds-active: {e}: {output}"));
    assert!(fds > 10, "the VMM's descriptors were counted: {output}");
    eprintln!("vmm descriptors with vsock active: {fds}");
    assert_eq!(
        run.value("fds-reactivated:"),
        run.value("fds-active:"),
        "a reset and reactivation leave the VMM's descriptors as they were: {output}"
    );
    run.assert_vmm_exited_0();
}

#[test]
fn a_guest_without_msi_gets_interrupts_on_intx_from_a_handed_over_vhost_vsock() {
    if !require_lab() {
        return;
    }
    let guest = format!(
        r#"echo guest-ready
echo "guest-recv: $(lab-vsock listen 5000 {RELOAD_BYTES} 2>/dev/null)"
echo "guest-send: $(lab-vsock send 2 5001 {RELOAD_BYTES})"
echo "guest-irq: $(grep virtio0 /proc/interrupts)"
echo guest-done
sleep 600
"#
    );
    let params = format!("pci=nomsi {}", guest_params(&guest));
    let script = format!(
        r#"lab-vsock listen 5001 {RELOAD_BYTES} >/tmp/host-rx 2>/dev/null &
{start}
wait_for guest-ready
echo "host-send: $(lab-vsock send 7 5000 {RELOAD_BYTES})"
wait_for guest-done
i=0; until grep -q received= /tmp/host-rx || [ $i -gt 300 ]; do i=$((i + 1)); sleep 0.1; done
echo "host-recv: $(cat /tmp/host-rx)"
vmm stop /tmp/vmm.sock
{WAIT_VMM}"#,
        // The device handed over as a descriptor, as a supervisor would: the shell opens
        // /dev/vhost-vsock read-write as descriptor 5 of vmm (a redirection may stand
        // anywhere in the command).
        start = start_vmm_with_params(
            &["--vsock", "cid=7,fd=5", "5<>/dev/vhost-vsock"],
            256,
            &params,
            "file"
        ),
    );

    let run = run_in_lab("lab-vsock-intx", &script);
    let output = &run.output;

    let irq = run.value("guest-irq:");
    assert!(
        irq.contains("IO-APIC") && !irq.contains("MSI"),
        "the device's interrupt is a pin: {irq}: {output}"
    );
    let count: u64 = irq
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in '{irq}': {output}"));
    assert!(count > 0, "{irq}: {output}");
    assert_same_stream(&run, "host-send:", "guest-recv:", RELOAD_BYTES);
    assert_same_stream(&run, "guest-send:", "host-recv:", RELOAD_BYTES);
    run.assert_vmm_exited_0();
}

#[test]
fn registered_memory_fills_vhost_s_table_to_its_limit_and_the_vsock_works_throughout() {
    if !require_lab() {
        return;
    }
    let guest = format!(
        r#"echo guest-listening
echo "guest-recv1: $(lab-vsock listen 5000 {RELOAD_BYTES} 2>/dev/null)"
echo "guest-recv2: $(lab-vsock listen 5001 {RELOAD_BYTES} 2>/dev/null)"
echo "guest-recv3: $(lab-vsock listen 5002 {RELOAD_BYTES} 2>/dev/null)"
echo guest-done
sleep 600
"#
    );
    let script = format!(
        r#"{start}
wait_for guest-listening
echo "host-send1: $(lab-vsock send 7 5000 {RELOAD_BYTES})"
wait_for guest-recv1:
vmm queues /tmp/vmm.sock >/tmp/queues 2>&1
sed 's/^/queues: /' /tmp/queues
echo "max-mem-regions: $(cat /sys/module/vhost/parameters/max_mem_regions)"
# Register 2 MiB regions until the VMM refuses one (bounded well past vhost's default).
n=0
: >/tmp/slots
while [ $n -lt 100 ]; do
    truncate -s 2M /tmp/region$n
    if ! vmm register-memory /tmp/vmm.sock /tmp/region$n >/tmp/reg.out 2>/tmp/reg.err; then
        break
    fi
    sed -n 's/.* slot \([0-9]*\) .*/\1/p' /tmp/reg.out >>/tmp/slots
    n=$((n + 1))
done
echo "registered: $n"
echo "refusal: $(cat /tmp/reg.err)"
echo "vmm-alive: $(kill -0 $vmm && echo yes || echo no)"
echo "host-send2: $(lab-vsock send 7 5001 {RELOAD_BYTES})"
wait_for guest-recv2:
failed=0
for slot in $(cat /tmp/slots); do
    vmm unregister-memory /tmp/vmm.sock $slot || failed=$((failed + 1))
done
echo "unregister-failures: $failed"
echo "listed-after: $(vmm list-memory /tmp/vmm.sock | grep -c 'slot')"
echo "host-send3: $(lab-vsock send 7 5002 {RELOAD_BYTES})"
wait_for guest-done
vmm stop /tmp/vmm.sock
{WAIT_VMM}"#,
        start = start_vmm(&["--vsock", "cid=7"], 256, &guest, "file"),
    );

    let run = run_in_lab("lab-vsock-memory", &script);
    let output = &run.output;

    // vmm queues: the vsock's three queues, the kernel's two marked vhost with the
    // unknown figures as `-`; the receive queue has used what the host sent.
    let rows: Vec<Vec<&str>> = run
        .values("queues:")
        .into_iter()
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.first() == Some(&"vsock"))
        .collect();
    assert_eq!(rows.len(), 3, "three vsock queues: {output}");
    for row in &rows[..2] {
        assert!(row[4].ends_with("vhost"), "{row:?}: {output}");
        assert_eq!(
            (row[6], row[8], row[9], row[10]),
            ("-", "-", "-", "-"),
            "{output}"
        );
    }
    assert!(
        !rows[2][4].contains("vhost"),
        "the event queue is the VMM's: {output}"
    );
    let rx_used: u32 = rows[0][7].parse().unwrap_or(0);
    assert!(
        rx_used > 0,
        "the receive queue's used index moved: {output}"
    );
    assert!(
        run.values("queues:")
            .iter()
            .any(|l| l.contains("not known to vmm")),
        "{output}"
    );

    // One region of guest RAM (256 MiB) plus the registered ones fill vhost's table.
    let limit: u32 = run
        .value("max-mem-regions:")
        .parse()
        .unwrap_or_else(|e| panic!("max_mem_regions: {e}: {output}"));
    let registered: u32 = run.value("registered:").parse().unwrap_or(0);
    assert_eq!(registered, limit - 1, "{output}");
    let refusal = run.value("refusal:");
    assert!(
        refusal.contains("Argument list too long") && refusal.contains("max_mem_regions"),
        "{refusal}: {output}"
    );
    assert_eq!(run.value("vmm-alive:"), "yes", "{output}");
    assert_eq!(run.value("unregister-failures:"), "0", "{output}");
    assert_eq!(run.value("listed-after:"), "0", "{output}");
    assert_same_stream(&run, "host-send1:", "guest-recv1:", RELOAD_BYTES);
    assert_same_stream(&run, "host-send2:", "guest-recv2:", RELOAD_BYTES);
    assert_same_stream(&run, "host-send3:", "guest-recv3:", RELOAD_BYTES);
    run.assert_vmm_exited_0();
}
