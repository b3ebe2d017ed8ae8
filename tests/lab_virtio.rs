//! Lab tests of the virtio devices with Debian's stock kernel and its own virtio modules
//! (tools/lab, docs/lab.md): the guest finds every device on PCI and on the virtio bus,
//! reads and writes disks (a read-only one refuses writes), and the balloon takes memory
//! from the guest and gives it back to the host.
//!
//! Each test ships a shell script into the outer VM that prepares the images, starts
//! `vmm run --socket ...` in the background, drives it with the control subcommands, and
//! checks on the host side what the guest did. The lab is slow (QEMU TCG around a nested
//! KVM), so the tests take turns on one lock.

mod common;

use common::lab::{CONSOLE_FILE, WAIT_VMM, require_lab, run_in_lab, start_vmm};

#[test]
fn guest_reads_writes_and_flushes_disks_and_a_read_only_disk_refuses_writes() {
    if !require_lab() {
        return;
    }
    // /dev/vda: 64 MiB whose first 4 MiB are a host-written random pattern; the guest
    // checks it, then writes its own 2 MiB pattern at 8 MiB and fsyncs the device (which
    // Linux turns into a FLUSH). /dev/vdb: 8 MiB,
    // read-only, holding a marker the guest must not be able to change.
    let guest = r#"echo pci: $(ls /sys/bus/pci/devices)
echo virtio: $(for d in /sys/bus/virtio/devices/*; do cat $d/device; done)
echo vda-sectors: $(cat /sys/block/vda/size)
echo vdb-ro: $(cat /sys/block/vdb/ro)
echo guest-read: $(dd if=/dev/vda bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)
dd if=/dev/urandom of=/tmp/w bs=1M count=2 2>/dev/null
echo guest-wrote: $(sha256sum /tmp/w | cut -d' ' -f1)
dd if=/tmp/w of=/dev/vda bs=1M seek=8 conv=fsync 2>/dev/null
echo guest-synced
if dd if=/tmp/w of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; then echo ro-write: accepted; else echo ro-write: refused; fi
echo ro-read: $(dd if=/dev/vdb bs=16 count=1 2>/dev/null)
echo guest-done
sleep 600
"#;
    let script = format!(
        r#"dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
echo host-pattern: $(sha256sum /tmp/pattern | cut -d' ' -f1)
cp /tmp/pattern /tmp/disk.img
dd if=/dev/zero of=/tmp/disk.img bs=1M seek=4 count=60 2>/dev/null
dd if=/dev/zero of=/tmp/ro.img bs=1M count=8 2>/dev/null
printf 'read-only-marker' | dd of=/tmp/ro.img conv=notrunc 2>/dev/null
ro_before=$(sha256sum /tmp/ro.img | cut -d' ' -f1)
{start}
wait_for guest-done
# The guest idles once done, so the VM is still there to be asked.
vmm stats /tmp/vmm.sock
vmm stop /tmp/vmm.sock
wait $vmm
status=$?
echo host-read-back: $(dd if=/tmp/disk.img bs=1M skip=8 count=2 2>/dev/null | sha256sum | cut -d' ' -f1)
echo host-ro-unchanged: $([ "$(sha256sum /tmp/ro.img | cut -d' ' -f1)" = "$ro_before" ] && echo yes || echo no)
echo "lab-script: vmm exit=$status"
exit $status
"#,
        start = start_vmm(
            &["--disk", "/tmp/disk.img", "--disk", "/tmp/ro.img,ro"],
            256,
            guest,
            "file"
        ),
    );

    let run = run_in_lab("lab-disk", &script);

    assert_eq!(
        run.value("pci:"),
        "0000:00:00.0 0000:00:01.0 0000:00:02.0",
        "host bridge and two disks"
    );
    assert_eq!(
        run.value("virtio:"),
        "0x0002 0x0002",
        "two virtio-blk devices"
    );
    assert_eq!(run.value("vda-sectors:"), (64 * 2048).to_string());
    assert_eq!(run.value("vdb-ro:"), "1", "the guest sees vdb read-only");
    assert_eq!(
        run.value("guest-read:"),
        run.value("host-pattern:"),
        "the guest read the host's pattern"
    );
    assert_eq!(
        run.value("host-read-back:"),
        run.value("guest-wrote:"),
        "the host file holds what the guest wrote"
    );
    assert_eq!(run.value("ro-write:"), "refused");
    assert_eq!(run.value("ro-read:"), "read-only-marker");
    assert_eq!(run.value("host-ro-unchanged:"), "yes");
    assert!(
        run.stats_counter("block", "flushes") >= 1,
        "the guest's fsync reached the device as a flush"
    );
    run.assert_vmm_exited_0();
}

#[test]
fn balloon_takes_256_mib_from_a_512_mib_guest_and_the_host_and_gives_it_back() {
    if !require_lab() {
        return;
    }
    // The guest first dirties most of its RAM (so the host really backs it), then reports
    // MemAvailable every half second until it is told to stop.
    let guest = r#"mount -t tmpfs -o size=400m tmpfs /mnt
dd if=/dev/zero of=/mnt/fill bs=1M count=360 2>/dev/null
rm /mnt/fill
echo guest-filled
i=0
while [ $i -lt 1200 ]; do
    echo "meminfo $(grep MemAvailable /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
    i=$((i + 1))
    sleep 0.5
done
"#;
    // `snapshot NAME`: once the guest has reported its MemAvailable twice more (so the
    // figure is one taken after the balloon settled), print the latest one and vmm's RSS,
    // both in KiB.
    let script = format!(
        r#"{start}
wait_for guest-filled
reports() {{ grep -c meminfo {CONSOLE_FILE}; }}
snapshot() {{
    seen=$(reports)
    i=0
    until [ "$(reports)" -ge $((seen + 2)) ]; do
        i=$((i + 1))
        if [ $i -gt 600 ]; then echo "lab-script: the guest stopped reporting"; kill $vmm; exit 93; fi
        sleep 0.1
    done
    echo "$1-guest-avail-kb: $(grep meminfo {CONSOLE_FILE} | tail -n 1 | cut -d' ' -f2)"
    echo "$1-host-rss-kb: $(grep VmRSS /proc/$(vmm_proc)/status | tr -s ' ' | cut -d' ' -f2)"
}}
# Waits until the balloon holds $1 pages (vmm stats), for at most 5 minutes.
wait_actual() {{
    i=0
    until vmm stats --json /tmp/vmm.sock | grep -q "\"balloon_actual_pages\":$1,"; do
        i=$((i + 1))
        if [ $i -gt 600 ]; then echo "lab-script: balloon never reached $1 pages"; vmm stats /tmp/vmm.sock; kill $vmm; exit 92; fi
        sleep 0.5
    done
}}
# The subscriber is in place once it has seen the events of a pause and a resume.
vmm events /tmp/vmm.sock > /tmp/events.log 2>&1 &
events=$!
i=0
until grep -q resumed /tmp/events.log; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "lab-script: vmm events never subscribed"; kill $vmm; exit 94; fi
    vmm pause /tmp/vmm.sock && vmm resume /tmp/vmm.sock
    sleep 0.1
done
snapshot before
vmm balloon --target 256 /tmp/vmm.sock
echo "lab-script: inflate exit=$?"
wait_actual 65536
snapshot inflated
vmm balloon --pages -65536 /tmp/vmm.sock
echo "lab-script: deflate exit=$?"
wait_actual 0
snapshot deflated
vmm stats /tmp/vmm.sock
kill $events
echo "balloon-events: $(grep -c balloon-changed /tmp/events.log)"
vmm stop /tmp/vmm.sock
{WAIT_VMM}"#,
        start = start_vmm(&["--balloon"], 512, guest, "file"),
    );

    let run = run_in_lab("lab-balloon", &script);

    let kib = |name: &str| -> i64 {
        run.value(&format!("{name}:"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number; lab output:\n{}", run.output))
    };
    let (avail_before, avail_inflated, avail_deflated) = (
        kib("before-guest-avail-kb"),
        kib("inflated-guest-avail-kb"),
        kib("deflated-guest-avail-kb"),
    );
    let (rss_before, rss_inflated) = (kib("before-host-rss-kb"), kib("inflated-host-rss-kb"));
    eprintln!(
        "guest MemAvailable KiB: {avail_before} -> {avail_inflated} -> {avail_deflated}; \
         vmm RSS KiB: {rss_before} -> {rss_inflated}"
    );
    assert_eq!(run.value("lab-script: inflate exit="), "0");
    assert_eq!(run.value("lab-script: deflate exit="), "0");
    // 256 MiB is 262144 KiB; allow for what the guest's own allocations move meanwhile.
    let guest_lost = avail_before - avail_inflated;
    assert!(
        (200_000..=300_000).contains(&guest_lost),
        "the guest's MemAvailable fell by {guest_lost} KiB, not about 256 MiB; lab output:\n{}",
        run.output
    );
    let host_freed = rss_before - rss_inflated;
    assert!(
        host_freed >= 200_000,
        "vmm's RSS fell by only {host_freed} KiB; lab output:\n{}",
        run.output
    );
    let guest_regained = avail_deflated - avail_inflated;
    assert!(
        guest_regained >= 200_000,
        "deflating gave the guest back only {guest_regained} KiB; lab output:\n{}",
        run.output
    );
    // The statistics queue: the guest's own view of its memory, in bytes.
    let guest_total = run.stats_counter("balloon", "guest_memory_total");
    assert!(
        (400 << 20..=512 << 20).contains(&guest_total),
        "the guest reported {guest_total} bytes of total memory"
    );
    let events: u32 = run.value("balloon-events:").parse().unwrap_or(0);
    assert!(
        events >= 2,
        "subscribers saw {events} BalloonChanged events"
    );
    assert_eq!(run.values("lab-script: vmm exit=").last(), Some(&"0"));
    assert_eq!(run.status, Some(0), "lab output:\n{}", run.output);
}
