//! Lab tests of virtio-net with Debian's stock kernel and its own virtio_net module
//! (tools/lab, docs/lab.md): `vmm run --net host-ip=...` creates a tap in the outer VM, the
//! guest's eth0 comes up with the configured MAC, the guest and the outer VM ping each
//! other, and 64 MiB go each way over TCP (busybox `nc`) intact.
//!
//! The lab script starts `vmm run --socket ...` in the background with the guest console in
//! a file, and the two sides meet through markers the guest prints there.

mod common;

use common::lab::{WAIT_VMM, require_lab, run_in_lab, start_vmm};

const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.2";
const GUEST_MAC: &str = "52:54:00:12:34:56";
/// 64 MiB, the size of each transfer.
const BYTES: u64 = 64 << 20;

#[test]
fn guest_and_host_ping_each_other_and_move_64_mib_each_way_over_tcp() {
    if !require_lab() {
        return;
    }
    // The guest: bring eth0 up, ping the host, send 64 MiB to the host's listener, then
    // receive 64 MiB from the host, and report checksums. busybox nc ends a connection
    // when its own stdin ends, so each receiver reads from a `sleep` that outlasts the
    // transfer, and the receiving side waits for all the bytes.
    let wait_listening_5002 = wait_listening(5002, "guest");
    let guest = format!(
        r#"echo guest-mac: $(cat /sys/class/net/eth0/address)
ifconfig eth0 {GUEST_IP} netmask 255.255.255.0 up
echo guest-ping: $(ping -c 3 -W 5 {HOST_IP} >/dev/null 2>&1 && echo ok || echo failed)
echo guest-net-up
dd if=/dev/urandom of=/tmp/out bs=1M count=64 2>/dev/null
echo guest-sent-sum: $(sha256sum /tmp/out | cut -d' ' -f1)
nc {HOST_IP} 5001 < /tmp/out
rm /tmp/out
: > /tmp/in
(sleep 900 | nc -l -p 5002 > /tmp/in) &
{wait_listening_5002}
echo guest-listening
i=0
while [ "$(wc -c < /tmp/in)" -lt {BYTES} ] && [ $i -lt 3000 ]; do i=$((i + 1)); sleep 0.1; done
echo guest-received-sum: $(sha256sum /tmp/in | cut -d' ' -f1)
echo guest-received-bytes: $(wc -c < /tmp/in)
echo guest-done
sleep 600
"#
    );
    let script = format!(
        r#": > /tmp/from-guest
(sleep 900 | nc -l -p 5001 > /tmp/from-guest) &
{wait_listening_5001}
{start}
echo host-tap: $(ls /sys/class/net | grep '^vmm')
wait_for guest-net-up
echo host-ping: $(ping -c 3 -W 5 {GUEST_IP} >/dev/null 2>&1 && echo ok || echo failed)
i=0
while [ "$(wc -c < /tmp/from-guest)" -lt {BYTES} ] && [ $i -lt 3000 ]; do i=$((i + 1)); sleep 0.1; done
echo host-received-sum: $(sha256sum /tmp/from-guest | cut -d' ' -f1)
echo host-received-bytes: $(wc -c < /tmp/from-guest)
dd if=/dev/urandom of=/tmp/to-guest bs=1M count=64 2>/dev/null
echo host-sent-sum: $(sha256sum /tmp/to-guest | cut -d' ' -f1)
wait_for guest-listening
nc {GUEST_IP} 5002 < /tmp/to-guest
wait_for guest-done
# The guest idles once done, so the VM is still there to be asked.
echo "queues-json: $(vmm queues --json /tmp/vmm.sock)"
vmm stats /tmp/vmm.sock
vmm stop /tmp/vmm.sock
{WAIT_VMM}"#,
        wait_listening_5001 = wait_listening(5001, "host"),
        start = start_vmm(
            &[
                "--net",
                &format!("host-ip={HOST_IP},netmask=255.255.255.0,mac={GUEST_MAC}"),
            ],
            512,
            &guest,
            "file"
        ),
    );

    let run = run_in_lab("lab-net", &script);
    let output = &run.output;

    assert_eq!(run.value("guest-mac:"), GUEST_MAC, "{output}");
    assert!(
        run.value("host-tap:").starts_with("vmm"),
        "vmm created a tap; lab output:\n{}",
        run.output
    );
    assert_eq!(
        run.value("guest-ping:"),
        "ok",
        "guest pings the host: {output}"
    );
    assert_eq!(
        run.value("host-ping:"),
        "ok",
        "host pings the guest: {output}"
    );
    let mib64 = BYTES.to_string();
    assert_eq!(run.value("host-received-bytes:"), mib64, "{output}");
    assert_eq!(
        run.value("host-received-sum:"),
        run.value("guest-sent-sum:"),
        "guest to host arrived intact: {output}"
    );
    assert_eq!(run.value("guest-received-bytes:"), mib64, "{output}");
    assert_eq!(
        run.value("guest-received-sum:"),
        run.value("host-sent-sum:"),
        "host to guest arrived intact: {output}"
    );
    let packets_in = run.stats_counter("net", "packets_in");
    assert!(
        packets_in > 1000,
        "{packets_in} packets reached the guest: {output}"
    );
    // The guest was interrupted, but far less than once per frame: bursts share one
    // interrupt and the driver suppresses more (EVENT_IDX, NAPI).
    let packets = packets_in + run.stats_counter("net", "packets_out");
    let interrupts = run.stats_counter("net", "interrupts");
    assert!(
        interrupts > 0 && interrupts < packets / 2,
        "{interrupts} interrupts for {packets} packets: {output}"
    );
    check_idle_net_queues(&run, output);
    assert_eq!(run.value("lab-script: vmm exit="), "0", "{output}");
    assert_eq!(run.status, Some(0), "lab output:\n{}", run.output);
}

/// Shell that waits (at most 30 s) until a TCP socket listens on `port`, as
/// /proc/net/tcp or tcp6 shows it (state 0A), so that nobody connects before the listener
/// is there.
fn wait_listening(port: u16, who: &str) -> String {
    format!(
        r#"i=0
until grep -qs ':{port:04X} [0-9A-F]*:0000 0A ' /proc/net/tcp /proc/net/tcp6; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "{who}: nothing listens on port {port}"; break; fi
    sleep 0.1
done"#
    )
}

/// What `vmm queues` says of the NIC once the transfers are over and the guest idles: both
/// queues active with EVENT_IDX, kicked and interrupting; nothing waits on or is held by
/// the TX queue, whose used index counts every frame sent.
fn check_idle_net_queues(run: &common::lab::LabRun, output: &str) {
    let queues: serde_json::Value =
        serde_json::from_str(run.value("queues-json:")).unwrap_or_else(|e| panic!("{e}: {output}"));
    let net: Vec<&serde_json::Value> = queues
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {output}"))
        .iter()
        .filter(|q| q["kind"] == "net")
        .collect();
    assert_eq!(net.len(), 2, "RX and TX: {output}");
    for q in &net {
        assert_eq!(q["active"], true, "{q}");
        assert_eq!(q["event_idx"], true, "{q}");
        assert_eq!(q["broken"], false, "{q}");
        assert!(q["notifications"].as_u64() > Some(0), "{q}");
        assert!(q["interrupts"].as_u64() > Some(0), "{q}");
    }
    let tx = net
        .iter()
        .find(|q| q["queue"] == 1)
        .unwrap_or_else(|| panic!("no TX queue: {output}"));
    assert_eq!(tx["waiting"], 0, "{tx}");
    assert_eq!(tx["in_flight"], 0, "{tx}");
    let packets_out = run.stats_counter("net", "packets_out");
    assert_eq!(
        tx["device_used"].as_u64(),
        Some(packets_out % 65536),
        "every frame sent went back through the used ring: {tx}"
    );
}
