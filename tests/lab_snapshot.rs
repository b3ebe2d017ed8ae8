//! Lab tests of `vmm snapshot` and `vmm run --restore` with Debian's stock kernel and its
//! own virtio modules (tools/lab, docs/lab.md), issue 17: a guest runs a counter that
//! prints `count-N pid=P up=U` on its console (N its count, P the counting shell's PID,
//! U the guest's `/proc/uptime`) and appends `log-N` to a file on an ext2 file system on
//! its disk, syncing every time. The VM is snapshotted, ended, and brought back in a new
//! `vmm` process; what a user would check afterwards is checked: the same counter goes on
//! from where it was, its clock has not gone back, its disk holds what it wrote before and
//! takes more, its network, balloon and rng work, and the control socket answers.
//!
//! Each lab script starts `vmm run --socket ...` in the background with the guest console
//! in a file (common::lab::start_vmm), and restores with the console recorded in the
//! snapshot, appending to the same file.

mod common;

use common::lab::{
    CONSOLE_FILE, LabRun, WAIT_IN, guest_params, require_lab, run_in_lab, start_vmm,
    start_vmm_with_cpus,
};

const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.2";
/// 16 MiB, the TCP transfer after a restore.
const BYTES: u64 = 16 << 20;

/// The guest's counter: `count-N pid=P up=U` on the console and `log-N` appended to
/// /mnt/log (synced) when `disk` is set, every 0.3 s, forever. `tag` prefixes the count
/// (for several counters).
fn counter_loop(tag: &str, disk: bool) -> String {
    let log = if disk {
        format!("echo {tag}log-$i >> /mnt/log; sync; ")
    } else {
        String::new()
    };
    format!(
        "i=0; while :; do i=$((i+1)); read u x < /proc/uptime; echo {tag}count-$i pid=$$ up=$u; {log}sleep 0.3; done"
    )
}

/// Guest prelude: an ext2 file system on /dev/vda mounted on /mnt.
const MOUNT_DISK: &str =
    "mke2fs /dev/vda >/dev/null && mount /dev/vda /mnt && echo guest-disk-mounted\n";

/// Shell: restore `/tmp/s.snap` (`$1`, default) in a new vmm with socket `$2` and any
/// further options; `$vmm` becomes its pid; waits (bounded) for the socket.
const RESTORE: &str = r#"restore() {
    r_snap=$1; r_sock=$2; shift 2
    rm -f $r_sock
    vmm run --restore $r_snap --socket $r_sock "$@" &
    vmm=$!
    i=0
    while [ ! -S $r_sock ]; do
        i=$((i + 1))
        if ! kill -0 $vmm 2>/dev/null; then wait $vmm; echo "lab-script: restored vmm exited with $? before its socket was up"; exit 95; fi
        if [ $i -gt 300 ]; then echo "lab-script: no control socket after 30 s"; kill $vmm; exit 95; fi
        sleep 0.1
    done
    echo "lab-script: restored, socket $r_sock is up"
}
# The last count in file $1 (with tag $2).
last_count() { grep -o "$2count-[0-9]*" $1 | tail -n 1 | sed 's/.*-//'; }
"#;

/// One `count-N pid=P up=U` line of the console.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Count {
    n: u64,
    pid: u64,
    up: f64,
}

/// Every count line (with `tag`) in `text`, in order. The kernel's messages may follow a
/// count on its line (the guest's console is shared); a line that does not parse is
/// skipped.
fn counts(text: &str, tag: &str) -> Vec<Count> {
    let prefix = format!("{tag}count-");
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix(&prefix)?;
            let mut words = rest.split_whitespace();
            let n = words.next()?.parse().ok()?;
            let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
            // The kernel may print into the line right after the number.
            let up = words.next()?.strip_prefix("up=")?;
            let end = up
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(up.len());
            let up = up[..end].parse().ok()?;
            Some(Count { n, pid, up })
        })
        .collect()
}

/// The guest console of a run (what start_vmm's trap prints).
fn console(run: &LabRun) -> &str {
    let start = run
        .output
        .find("--- guest console ---")
        .unwrap_or_else(|| panic!("no guest console; lab output:\n{}", run.output));
    &run.output[start..]
}

/// Asserts that `counts` is one counter (one PID) counting 1, 2, 3, ... with an uptime
/// that never goes back, except that `restarts` (count, at) pairs say where a restore of
/// an older snapshot takes the count back to `at` (the next line is count `at + 1` again,
/// with the uptime it had then or later).
fn assert_one_counter(counts: &[Count], output: &str) {
    assert!(!counts.is_empty(), "no counts: {output}");
    let pid = counts[0].pid;
    for pair in counts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert_eq!(
            b.pid, pid,
            "the same counting process: {a:?} then {b:?}: {output}"
        );
        assert_eq!(
            b.n,
            a.n + 1,
            "no count lost or repeated: {a:?} then {b:?}: {output}"
        );
        assert!(
            b.up >= a.up,
            "the guest's uptime never goes back: {a:?} then {b:?}: {output}"
        );
    }
}

/// Shell that waits (at most 30 s) until a TCP socket listens on `port` in this system.
fn wait_listening(port: u16) -> String {
    format!(
        r#"i=0
until grep -qs ':{port:04X} [0-9A-F]*:0000 0A ' /proc/net/tcp /proc/net/tcp6; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "host: nothing listens on port {port}"; break; fi
    sleep 0.1
done"#
    )
}

/// `log-N` entries on the disk image `image`, as the host reads the raw file after the
/// VM has ended: how many distinct ones and the largest N.
fn disk_log_check(image: &str, name: &str) -> String {
    format!(
        "echo {name}-distinct: $(grep -a -o 'log-[0-9]*' {image} | sort -u | wc -l)\n\
         echo {name}-max: $(grep -a -o 'log-[0-9]*' {image} | cut -d- -f2 | sort -n | tail -n 1)\n"
    )
}

fn number(run: &LabRun, prefix: &str) -> u64 {
    run.value(prefix)
        .parse()
        .unwrap_or_else(|_| panic!("{prefix} is not a number; lab output:\n{}", run.output))
}

#[test]
fn a_stopped_snapshot_restored_in_a_new_process_goes_on_counting_with_disk_net_balloon_and_rng() {
    if !require_lab() {
        return;
    }
    // The guest: ext2 on vda, eth0 up, a TCP listener that survives the snapshot and, once
    // 16 MiB arrived (after the restore), sends them back to the host and reads the rng.
    let guest = format!(
        r#"{MOUNT_DISK}ifconfig eth0 {GUEST_IP} netmask 255.255.255.0 up
: > /tmp/in
(sleep 900 | nc -l -p 5002 > /tmp/in) &
(until [ $(wc -c < /tmp/in) -ge {BYTES} ]; do sleep 0.2; done; echo guest-rx-sum: $(sha256sum < /tmp/in | cut -c1-64); nc {HOST_IP} 5001 < /tmp/in; echo guest-rng-bytes: $(timeout 60 dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c); echo 3 > /proc/sys/vm/drop_caches; echo guest-disk-log: $(head -n 1 /mnt/log) $(wc -l < /mnt/log)) &
{counter}
"#,
        counter = counter_loop("", true)
    );
    let script = format!(
        r#"{RESTORE}{WAIT_IN}dd if=/dev/zero of=/tmp/disk.img bs=1M count=32 2>/dev/null
{start}
wait_for 'count-8 '
vmm snapshot /tmp/vmm.sock /tmp/s.snap --stop
echo "snapshot-exit: $?"
wait $vmm
echo "first-vmm-exit: $?"
echo "snapshot-count: $(last_count {CONSOLE_FILE})"
echo "snapshot-files: $(ls -l /tmp/s.snap /tmp/s.snap.mem | tr -s ' ' | cut -d' ' -f5 | tr '\n' ' ')"
echo "snapshot-mem-allocated-kib: $(du -k /tmp/s.snap.mem | cut -f1)"
: > /tmp/from-guest
(sleep 900 | nc -l -p 5001 > /tmp/from-guest) &
{wait_listening_5001}
restore /tmp/s.snap /tmp/vmm2.sock
wait_for "count-$(( $(last_count {CONSOLE_FILE}) + 3 )) "
echo host-ping: $(ping -c 3 -W 5 {GUEST_IP} >/dev/null 2>&1 && echo ok || echo failed)
dd if=/dev/urandom of=/tmp/to-guest bs=1M count=16 2>/dev/null
echo host-sent-sum: $(sha256sum /tmp/to-guest | cut -d' ' -f1)
nc {GUEST_IP} 5002 < /tmp/to-guest
wait_for guest-disk-log:
i=0
while [ "$(wc -c < /tmp/from-guest)" -lt {BYTES} ] && [ $i -lt 3000 ]; do i=$((i + 1)); sleep 0.1; done
echo host-received-sum: $(sha256sum /tmp/from-guest | cut -d' ' -f1)
vmm stats /tmp/vmm2.sock
echo "stats-exit: $?"
vmm balloon --target 32 /tmp/vmm2.sock
echo "balloon-exit: $?"
i=0
until vmm stats --json /tmp/vmm2.sock | grep -q '"balloon_actual_pages":8192,'; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then echo "lab-script: balloon never reached 8192 pages"; vmm stats /tmp/vmm2.sock; break; fi
    sleep 0.5
done
echo "balloon-pages: $(vmm stats --json /tmp/vmm2.sock | grep -o '"balloon_actual_pages":[0-9]*' | cut -d: -f2)"
wait_for "count-$(( $(last_count {CONSOLE_FILE}) + 2 )) "
vmm stop /tmp/vmm2.sock
echo "stop-exit: $?"
wait $vmm
status=$?
echo "final-count: $(last_count {CONSOLE_FILE})"
{disk_check}echo "lab-script: vmm exit=$status"
exit $status
"#,
        start = start_vmm(
            &[
                "--disk",
                "/tmp/disk.img",
                "--net",
                &format!("host-ip={HOST_IP},netmask=255.255.255.0"),
                "--balloon",
                "--rng",
            ],
            256,
            &guest,
            "file"
        ),
        wait_listening_5001 = wait_listening(5001),
        disk_check = disk_log_check("/tmp/disk.img", "disk"),
    );

    let run = run_in_lab("lab-snapshot", &script);
    let output = &run.output;

    assert_eq!(run.value("snapshot-exit:"), "0", "{output}");
    assert_eq!(run.value("first-vmm-exit:"), "0", "{output}");
    let snapshot_count = number(&run, "snapshot-count:");
    let final_count = number(&run, "final-count:");
    let counts = counts(console(&run), "");
    assert_one_counter(&counts, output);
    assert!(
        final_count >= snapshot_count + 5,
        "the counter went on after the restore ({snapshot_count} -> {final_count}): {output}"
    );
    assert_eq!(
        run.value("host-ping:"),
        "ok",
        "host pings the restored guest: {output}"
    );
    assert_eq!(
        run.value("guest-rx-sum:"),
        run.value("host-sent-sum:"),
        "host to guest over TCP after the restore: {output}"
    );
    assert_eq!(
        run.value("host-received-sum:"),
        run.value("host-sent-sum:"),
        "and back to the host: {output}"
    );
    assert_eq!(run.value("guest-rng-bytes:"), "64", "{output}");
    // The guest read its log back from the disk after dropping its caches: it starts at
    // the first count and holds more than there were at the snapshot.
    let disk_log = run.value("guest-disk-log:");
    let (first, lines) = disk_log.split_once(' ').unwrap_or(("", ""));
    assert_eq!(first, "log-1", "{output}");
    assert!(
        lines.parse::<u64>().unwrap_or(0) > snapshot_count,
        "guest's log: {disk_log}: {output}"
    );
    // The host reads the image after the end: every count from 1 on, before and after.
    let max = number(&run, "disk-max:");
    assert_eq!(
        number(&run, "disk-distinct:"),
        max,
        "no count missing on disk: {output}"
    );
    assert!(
        max > snapshot_count + 2,
        "{max} <= {snapshot_count}: {output}"
    );
    assert_eq!(run.value("stats-exit:"), "0", "{output}");
    assert_eq!(run.value("balloon-exit:"), "0", "{output}");
    assert_eq!(
        run.value("balloon-pages:"),
        "8192",
        "the balloon works: {output}"
    );
    assert_eq!(run.value("stop-exit:"), "0", "{output}");
    run.assert_vmm_exited_0();
    eprintln!(
        "snapshot at count {snapshot_count}, last count {final_count}; snapshot files {}; \
         memory file allocated {} KiB",
        run.value("snapshot-files:"),
        run.value("snapshot-mem-allocated-kib:")
    );
}

#[test]
fn the_older_of_two_snapshots_restores_to_its_own_count() {
    if !require_lab() {
        return;
    }
    let guest = counter_loop("", false);
    let script = format!(
        r#"{RESTORE}{start}
wait_for 'count-5 '
# The snapshot holds the count between these two: the VM runs on after it.
echo "old-pre: $(last_count {CONSOLE_FILE})"
vmm snapshot /tmp/vmm.sock /tmp/old.snap
echo "snapshot-old-exit: $?"
echo "old-post: $(last_count {CONSOLE_FILE})"
old=$(last_count {CONSOLE_FILE})
wait_for "count-$((old + 6)) "
vmm snapshot /tmp/vmm.sock /tmp/new.snap --stop
echo "snapshot-new-exit: $?"
wait $vmm
echo "first-vmm-exit: $?"
echo "new-count: $(last_count {CONSOLE_FILE})"
echo "--- first console ---"
cat {CONSOLE_FILE}
echo "--- end of first console ---"
: > {CONSOLE_FILE}
restore /tmp/old.snap /tmp/vmm2.sock
wait_for "count-$((old + 4)) "
vmm stop /tmp/vmm2.sock
echo "stop-exit: $?"
wait $vmm
status=$?
echo "lab-script: vmm exit=$status"
exit $status
"#,
        start = start_vmm(&["--rng"], 256, &guest, "file"),
    );

    let run = run_in_lab("lab-snapshot-two", &script);
    let output = &run.output;

    assert_eq!(run.value("snapshot-old-exit:"), "0", "{output}");
    assert_eq!(run.value("snapshot-new-exit:"), "0", "{output}");
    assert_eq!(run.value("first-vmm-exit:"), "0", "{output}");
    let pre = number(&run, "old-pre:");
    let old = number(&run, "old-post:");
    let new = number(&run, "new-count:");
    assert!(
        new >= old + 6,
        "the VM ran on after the first snapshot: {output}"
    );
    let first = &output[output.find("--- first console ---").expect("first console")
        ..output.find("--- end of first console ---").expect("end")];
    let before = counts(first, "");
    assert_one_counter(&before, output);
    let after = counts(console(&run), "");
    assert_one_counter(&after, output);
    // The restored VM's first count follows the older snapshot's: after the last count
    // printed before the snapshot was asked for, at most one after the last printed when it
    // was done; far from the newer snapshot's. The same process, its uptime not behind
    // what it was at the count before.
    let resumed = after[0];
    assert!(
        resumed.n > pre && resumed.n <= old + 1,
        "restored counter starts after {pre}, by {old} + 1: {resumed:?}: {output}"
    );
    assert!(
        resumed.n + 4 < new,
        "{resumed:?} is well before {new}: {output}"
    );
    let then = before
        .iter()
        .find(|c| c.n == resumed.n - 1)
        .unwrap_or_else(|| panic!("no count before {resumed:?}: {output}"));
    assert_eq!(resumed.pid, then.pid, "the same process: {output}");
    assert!(
        resumed.up >= then.up,
        "{resumed:?} after {then:?}: {output}"
    );
    assert!(after.last().expect("counts").n >= old + 4, "{output}");
    assert_eq!(run.value("stop-exit:"), "0", "{output}");
    run.assert_vmm_exited_0();
    eprintln!(
        "snapshots at counts {pre}..={old} and {new}; restored the older: {resumed:?} after {then:?}"
    );
}

#[test]
fn two_restores_of_one_snapshot_run_side_by_side_on_their_own_disks() {
    if !require_lab() {
        return;
    }
    let guest = format!(
        "{MOUNT_DISK}ifconfig eth0 {GUEST_IP} netmask 255.255.255.0 up\n{}\n",
        counter_loop("", true)
    );
    let script = format!(
        r#"{RESTORE}{WAIT_IN}dd if=/dev/zero of=/tmp/disk.img bs=1M count=32 2>/dev/null
{start}
wait_for 'count-6 '
vmm snapshot /tmp/vmm.sock /tmp/s.snap --stop
echo "snapshot-exit: $?"
wait $vmm
echo "first-vmm-exit: $?"
snap=$(last_count {CONSOLE_FILE})
echo "snapshot-count: $snap"
cp /tmp/disk.img /tmp/a.img
cp /tmp/disk.img /tmp/b.img
# A: the recorded tap (a new vmm0 at {HOST_IP}); B: a tap of its own on another subnet.
restore /tmp/s.snap /tmp/a.sock --disk /tmp/a.img --serial file=/tmp/a.log
a=$vmm
restore /tmp/s.snap /tmp/b.sock --disk /tmp/b.img --serial file=/tmp/b.log --net host-ip=10.0.3.1,netmask=255.255.255.0
b=$vmm
vmm=$a; wait_in /tmp/a.log 6000 "count-$((snap + 5)) "
vmm=$b; wait_in /tmp/b.log 6000 "count-$((snap + 5)) "
echo "both-alive: $(kill -0 $a && kill -0 $b && echo yes)"
echo "a-ping: $(ping -c 3 -W 5 {GUEST_IP} >/dev/null 2>&1 && echo ok || echo failed)"
vmm stop /tmp/a.sock; echo "a-stop-exit: $?"
vmm stop /tmp/b.sock; echo "b-stop-exit: $?"
wait $a; echo "a-vmm-exit: $?"
wait $b; echo "b-vmm-exit: $?"
{disk_a}{disk_b}{disk_orig}for f in a b; do echo "--- $f console ---"; cat /tmp/$f.log; echo "--- end of $f console ---"; done
"#,
        start = start_vmm(
            &[
                "--disk",
                "/tmp/disk.img",
                "--net",
                &format!("host-ip={HOST_IP},netmask=255.255.255.0"),
            ],
            256,
            &guest,
            "file"
        ),
        disk_a = disk_log_check("/tmp/a.img", "a-disk"),
        disk_b = disk_log_check("/tmp/b.img", "b-disk"),
        disk_orig = disk_log_check("/tmp/disk.img", "orig-disk"),
    );

    let run = run_in_lab("lab-snapshot-twins", &script);
    let output = &run.output;

    assert_eq!(run.value("snapshot-exit:"), "0", "{output}");
    assert_eq!(run.value("first-vmm-exit:"), "0", "{output}");
    let snap = number(&run, "snapshot-count:");
    assert_eq!(run.value("both-alive:"), "yes", "{output}");
    assert_eq!(run.value("a-ping:"), "ok", "{output}");
    let first = counts(console(&run), "");
    for twin in ["a", "b"] {
        let start = output
            .find(&format!("--- {twin} console ---"))
            .unwrap_or_else(|| panic!("no {twin} console: {output}"));
        let end = output
            .find(&format!("--- end of {twin} console ---"))
            .unwrap_or_else(|| panic!("no end of {twin} console: {output}"));
        let after = counts(&output[start..end], "");
        assert_one_counter(&after, output);
        let resumed = after[0];
        assert!(
            resumed.n == snap + 1 || resumed.n == snap + 2,
            "{twin} goes on from {snap}: {resumed:?}: {output}"
        );
        assert_eq!(
            resumed.pid, first[0].pid,
            "{twin}: the same process: {output}"
        );
        assert!(after.last().expect("counts").n >= snap + 5, "{output}");
        assert_eq!(run.value(&format!("{twin}-stop-exit:")), "0", "{output}");
        assert_eq!(run.value(&format!("{twin}-vmm-exit:")), "0", "{output}");
        // Each disk copy holds every count from 1 to past the snapshot.
        let max = number(&run, &format!("{twin}-disk-max:"));
        assert_eq!(
            number(&run, &format!("{twin}-disk-distinct:")),
            max,
            "{output}"
        );
        assert!(max > snap + 2, "{twin}: {max}: {output}");
    }
    // The original image was not written after the snapshot.
    assert!(number(&run, "orig-disk-max:") <= snap, "{output}");
    assert_eq!(run.status, Some(0), "{output}");
}

#[test]
fn a_two_vcpu_guest_keeps_both_cpus_online_and_counting_across_a_restore() {
    if !require_lab() {
        return;
    }
    // Two counters, one pinned to each CPU; each line says which CPUs are online.
    let guest = format!(
        "echo guest-online: $(cat /sys/devices/system/cpu/online)\n\
         taskset -c 0 sh -c '{}' &\n\
         taskset -c 1 sh -c '{}' &\n\
         sleep 900\n",
        counter_loop("c0-", false).replace(
            "pid=$$",
            "pid=$$ cpus=$(cat /sys/devices/system/cpu/online)"
        ),
        counter_loop("c1-", false).replace(
            "pid=$$",
            "pid=$$ cpus=$(cat /sys/devices/system/cpu/online)"
        ),
    );
    let script = format!(
        r#"{RESTORE}{start}
wait_for 'c0-count-4 '
wait_for 'c1-count-4 '
vmm snapshot /tmp/vmm.sock /tmp/s.snap --stop
echo "snapshot-exit: $?"
wait $vmm
echo "first-vmm-exit: $?"
echo "c0-snapshot: $(last_count {CONSOLE_FILE} c0-)"
echo "c1-snapshot: $(last_count {CONSOLE_FILE} c1-)"
c0=$(last_count {CONSOLE_FILE} c0-)
c1=$(last_count {CONSOLE_FILE} c1-)
restore /tmp/s.snap /tmp/vmm2.sock
wait_for "c0-count-$((c0 + 5)) "
wait_for "c1-count-$((c1 + 5)) "
echo "restored-cpus: $(grep -o 'c1-count-[0-9]* pid=[0-9]* cpus=[0-9-]*' {CONSOLE_FILE} | tail -n 1 | cut -d= -f3)"
vmm stop /tmp/vmm2.sock
echo "stop-exit: $?"
wait $vmm
status=$?
echo "lab-script: vmm exit=$status"
exit $status
"#,
        start = start_vmm_with_cpus(2, &[], 256, &guest_params(&guest), "file"),
    );

    let run = run_in_lab("lab-snapshot-smp", &script);
    let output = &run.output;

    assert_eq!(run.value("guest-online:"), "0-1", "{output}");
    assert_eq!(run.value("snapshot-exit:"), "0", "{output}");
    assert_eq!(run.value("first-vmm-exit:"), "0", "{output}");
    assert_eq!(run.value("restored-cpus:"), "0-1", "{output}");
    for cpu in ["c0-", "c1-"] {
        let at = number(&run, &format!("{cpu}snapshot:"));
        let all: Vec<Count> = console(&run)
            .lines()
            .filter_map(|l| {
                // Drop the `cpus=` word so that `counts` parses the line.
                let l = l.replace(" cpus=0-1", "");
                counts(&l, cpu).first().copied()
            })
            .collect();
        assert_one_counter(&all, output);
        assert!(
            all.last().expect("counts").n >= at + 5,
            "{cpu} counted on after the restore: {output}"
        );
    }
    assert_eq!(run.value("stop-exit:"), "0", "{output}");
    run.assert_vmm_exited_0();
}

/// The `key=` field of a `lab-vsock:` result line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in '{line}'"))
}

/// Asserts the `sent` line and the `received` line report `bytes` and the same checksum.
fn assert_same_stream(run: &LabRun, sent_prefix: &str, received_prefix: &str, bytes: u64) {
    let output = &run.output;
    let (sent, received) = (run.value(sent_prefix), run.value(received_prefix));
    assert_eq!(field(sent, "sent="), bytes.to_string(), "{sent}: {output}");
    assert_eq!(field(received, "received="), bytes.to_string(), "{output}");
    assert_eq!(
        field(sent, "fnv="),
        field(received, "fnv="),
        "{sent_prefix} arrived intact: {output}"
    );
}

#[test]
fn vsock_works_again_after_a_restore_and_the_guest_sees_its_old_connection_reset() {
    if !require_lab() {
        return;
    }
    const VSOCK_BYTES: u64 = 4 << 20;
    // Before the snapshot: host -> guest on 5000, and the guest holds a connection to the
    // host's 5003. Its listener on 5001 and its sender to 5002 wait across the snapshot.
    let guest = format!(
        r#"echo "guest-recv1: $(lab-vsock listen 5000 {VSOCK_BYTES} 2>/dev/null)"
lab-vsock hold 2 5003 > /tmp/hold &
until grep -q connected /tmp/hold; do sleep 0.1; done
(until grep -q ended /tmp/hold; do sleep 0.1; done; echo "guest-hold: $(tail -n 1 /tmp/hold)") &
(echo "guest-recv2: $(lab-vsock listen 5001 {VSOCK_BYTES} 2>/dev/null)"; echo "guest-send: $(lab-vsock send 2 5002 {VSOCK_BYTES})") &
echo guest-holding
{counter}
"#,
        counter = counter_loop("", false)
    );
    let script = format!(
        r#"{RESTORE}{WAIT_IN}lab-vsock listen 5003 1000000000000 >/tmp/host-hold 2>&1 &
lab-vsock listen 5002 {VSOCK_BYTES} >/tmp/host-rx 2>/dev/null &
{start}
echo "host-send1: $(lab-vsock send 3 5000 {VSOCK_BYTES})"
wait_for guest-holding
wait_for "count-3 "
vmm snapshot /tmp/vmm.sock /tmp/s.snap --stop
echo "snapshot-exit: $?"
wait $vmm
echo "first-vmm-exit: $?"
echo "snapshot-count: $(last_count {CONSOLE_FILE})"
restore /tmp/s.snap /tmp/vmm2.sock
wait_for "count-$(( $(last_count {CONSOLE_FILE}) + 2 )) "
echo "host-send2: $(lab-vsock send 3 5001 {VSOCK_BYTES})"
wait_for guest-send:
i=0; until grep -q received= /tmp/host-rx || [ $i -gt 300 ]; do i=$((i + 1)); sleep 0.1; done
echo "host-recv: $(cat /tmp/host-rx)"
wait_in {CONSOLE_FILE} 600 guest-hold:
vmm stop /tmp/vmm2.sock
echo "stop-exit: $?"
wait $vmm
status=$?
echo "lab-script: vmm exit=$status"
exit $status
"#,
        start = start_vmm(&["--vsock", "cid=3"], 256, &guest, "file"),
    );

    let run = run_in_lab("lab-snapshot-vsock", &script);
    let output = &run.output;

    assert_same_stream(&run, "host-send1:", "guest-recv1:", VSOCK_BYTES);
    assert_eq!(run.value("snapshot-exit:"), "0", "{output}");
    assert_eq!(run.value("first-vmm-exit:"), "0", "{output}");
    let snapshot_count = number(&run, "snapshot-count:");
    let counts = counts(console(&run), "");
    assert_one_counter(&counts, output);
    assert!(
        counts.last().expect("counts").n > snapshot_count + 1,
        "{output}"
    );
    // The connection the guest held across the snapshot was reset (the transport reset
    // event), and new connections work both ways.
    assert!(
        run.value("guest-hold:").contains("held, ended"),
        "the guest's old connection ended: {output}"
    );
    assert_same_stream(&run, "host-send2:", "guest-recv2:", VSOCK_BYTES);
    assert_same_stream(&run, "guest-send:", "host-recv:", VSOCK_BYTES);
    assert_eq!(run.value("stop-exit:"), "0", "{output}");
    run.assert_vmm_exited_0();
    eprintln!(
        "snapshot at count {snapshot_count}; guest's old connection: {}; after: {} / {}",
        run.value("guest-hold:"),
        run.value("guest-recv2:"),
        run.value("host-recv:")
    );
}
