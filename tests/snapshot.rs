//! `vmm snapshot` and `vmm run --restore` end to end on this host, jailed as by default,
//! with a tiny guest that counts: it prints each count as eight hex digits and a newline
//! on COM1, forever, keeping the count in a register. A restored VM that goes on from
//! where the snapshot was taken prints the very next digits, so the serial log of the
//! original and the restored VM together is `1, 2, 3, ...` without a gap or a repeat.
//!
//! Each bad input has its own test: a restore from a truncated, corrupted or foreign
//! file, or with a memory file of the wrong size, exits 1 with one line and runs nothing;
//! a snapshot refused (registered memory) or failing (a full disk) leaves the VM counting.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::{Scratch, describe, require_kvm, run_with_timeout, tiny_elf, vmm, wait_until};

/// Longest a control subcommand or a failing `vmm run` may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// How long to wait for a VM's socket, or for its guest to print.
const START_LIMIT: Duration = Duration::from_secs(20);

/// The counting guest: `inc ebx`, then the eight hex digits of ebx (rotating it by four
/// bits each time, so it is whole again after the last), a newline, and again.
const COUNTER: [u8; 37] = [
    0xff, 0xc3, //                   0: inc ebx
    0xb9, 0x08, 0x00, 0x00, 0x00, // 2: mov ecx, 8
    0xba, 0xf8, 0x03, 0x00, 0x00, // 7: mov edx, 0x3f8
    0xc1, 0xc3, 0x04, //            12: rol ebx, 4
    0x89, 0xd8, //                  15: mov eax, ebx
    0x24, 0x0f, //                  17: and al, 0xf
    0x04, 0x30, //                  19: add al, '0'
    0x3c, 0x39, //                  21: cmp al, '9'
    0x76, 0x02, //                  23: jbe 27
    0x04, 0x07, //                  25: add al, 'A' - '9' - 1
    0xee, //                        27: out dx, al
    0xff, 0xc9, //                  28: dec ecx
    0x75, 0xec, //                  30: jnz 12
    0xb0, 0x0a, //                  32: mov al, '\n'
    0xee, //                        34: out dx, al
    0xeb, 0xdb, //                  35: jmp 0
];

/// One `vmm run` (booted or restored), serial to `log`, control socket at `socket`.
struct Vmm {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Vmm {
    /// `vmm run --mem 32 --serial file=LOG --socket SOCKET GUEST` in `scratch`.
    fn boot(scratch: &Scratch, name: &str) -> Vmm {
        let kernel = scratch.write(&format!("{name}.elf"), &tiny_elf(&COUNTER));
        let (socket, log) = (
            scratch.path(&format!("{name}.sock")),
            scratch.path(&format!("{name}.log")),
        );
        let mut command = vmm();
        command.args(["run", "--mem", "32"]);
        command
            .arg("--serial")
            .arg(format!("file={}", log.display()));
        command.arg("--socket").arg(&socket).arg(&kernel);
        Vmm::spawn(command, socket, log)
    }

    /// `vmm run --restore SNAPSHOT --socket SOCKET [--serial file=LOG] EXTRA...`; without
    /// `log` the serial output goes where the snapshot recorded (`recorded_log`).
    fn restore(
        scratch: &Scratch,
        snapshot: &Path,
        name: &str,
        log: Option<&Path>,
        recorded_log: &Path,
        extra: &[&str],
    ) -> Vmm {
        let socket = scratch.path(&format!("{name}.sock"));
        let mut command = vmm();
        command.arg("run").arg("--restore").arg(snapshot);
        command.arg("--socket").arg(&socket).args(extra);
        if let Some(log) = log {
            command
                .arg("--serial")
                .arg(format!("file={}", log.display()));
        }
        let log = log.unwrap_or(recorded_log).to_path_buf();
        Vmm::spawn(command, socket, log)
    }

    fn spawn(mut command: std::process::Command, socket: PathBuf, log: PathBuf) -> Vmm {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm run");
        let mut vmm = Vmm {
            child: Some(child),
            socket,
            log,
        };
        let ready = wait_until(START_LIMIT, || vmm.socket.exists() || !vmm.running());
        if !ready || !vmm.socket.exists() {
            let output = vmm.take_output();
            panic!("vmm run never created its socket\n{}", describe(&output));
        }
        vmm
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn take_output(&mut self) -> Output {
        let mut child = self.child.take().expect("vmm run is ours");
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        child.wait_with_output().expect("collect vmm run")
    }

    /// `vmm SUBCOMMAND SOCKET ARGS...`.
    fn ctl(&self, subcommand: &str, args: &[&str]) -> Output {
        let mut command = vmm();
        command.arg(subcommand).arg(&self.socket).args(args);
        run_with_timeout(command, COMMAND_LIMIT)
    }

    fn ctl_ok(&self, subcommand: &str, args: &[&str]) -> Output {
        let output = self.ctl(subcommand, args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "vmm {subcommand}: {}",
            describe(&output)
        );
        output
    }

    /// `vmm snapshot SOCKET FILE [--stop]`, asserting it succeeded.
    fn snapshot(&self, file: &Path, stop: bool) {
        let file = file.to_str().expect("UTF-8 path");
        let args: &[&str] = if stop { &[file, "--stop"] } else { &[file] };
        self.ctl_ok("snapshot", args);
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits for the guest to print `bytes` more.
    fn wait_for_output(&self, bytes: u64) {
        let from = self.log_len();
        assert!(
            wait_until(START_LIMIT, || self.log_len() >= from + bytes),
            "the guest printed {} bytes in {START_LIMIT:?}, expected {bytes} more",
            self.log_len() - from
        );
    }

    /// Waits for `vmm run` to exit by itself, and returns its output.
    fn wait_exit(&mut self) -> Output {
        assert!(
            wait_until(COMMAND_LIMIT, || !self.running()),
            "vmm run did not exit"
        );
        self.take_output()
    }

    /// `vmm stop`, then the exit of `vmm run`, which must be 0.
    fn stop(mut self) {
        self.ctl_ok("stop", &[]);
        let output = self.wait_exit();
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The counts in a serial log: every complete line as a number.
fn counts(log: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(log);
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop(); // the line being printed, or "" after the last newline
    lines
        .iter()
        .map(|line| u32::from_str_radix(line, 16).unwrap_or_else(|_| panic!("line {line:?}")))
        .collect()
}

/// Asserts the counts are exactly `first, first + 1, ...`.
fn assert_consecutive(counts: &[u32], first: u32, what: &str) {
    for (i, &count) in counts.iter().enumerate() {
        let expected = first + u32::try_from(i).expect("few lines");
        assert_eq!(
            count, expected,
            "{what}: line {i} is {count:#x}, expected {expected:#x}"
        );
    }
}

/// A counting VM's snapshot taken with `--stop`: (snapshot path, the VM's serial log).
fn stopped_snapshot(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let mut vm = Vmm::boot(scratch, "first");
    vm.wait_for_output(900);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, true);
    let output = vm.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    (snapshot, vm.log.clone())
}

#[test]
fn a_restored_vm_counts_on_from_where_the_snapshot_stopped_it() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-continue");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let before = std::fs::read(&log).expect("log");
    let last = *counts(&before).last().expect("the guest counted");
    // The restore appends to the serial file the snapshot recorded.
    let vm = Vmm::restore(&scratch, &snapshot, "restored", None, &log, &[]);
    vm.wait_for_output(900);
    let stats = vm.ctl_ok("stats", &[]);
    assert!(String::from_utf8_lossy(&stats.stdout).contains("vcpus"));
    vm.stop();
    let all = counts(&std::fs::read(&log).expect("log"));
    assert!(
        all.len() as u32 > last + 50,
        "the restored VM counted on: {} lines",
        all.len()
    );
    // One sequence from 1, across the snapshot: not restarted at 0, nothing lost or repeated.
    assert_consecutive(&all, 1, "the original then the restored VM");
}

#[test]
fn two_restores_of_one_snapshot_run_side_by_side() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-twice");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let last = *counts(&std::fs::read(&log).expect("log"))
        .last()
        .expect("counted");
    let (log_a, log_b) = (scratch.path("a.log"), scratch.path("b.log"));
    let a = Vmm::restore(&scratch, &snapshot, "a", Some(&log_a), &log, &[]);
    let b = Vmm::restore(&scratch, &snapshot, "b", Some(&log_b), &log, &[]);
    a.wait_for_output(900);
    b.wait_for_output(900);
    a.stop();
    b.stop();
    for restored in [&log_a, &log_b] {
        let text = std::fs::read(restored).expect("log");
        // The first line completes the one the snapshot cut; the next is last + 2.
        let after_first = text.iter().position(|&b| b == b'\n').expect("a line") + 1;
        assert_consecutive(&counts(&text[after_first..]), last + 2, "a restored VM");
    }
}

#[test]
fn a_snapshot_without_stop_leaves_the_vm_counting_and_its_memory_file_sparse() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-running");
    let vm = Vmm::boot(&scratch, "vm");
    vm.wait_for_output(900);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, false);
    vm.wait_for_output(900);
    let memory = std::fs::metadata(scratch.path("vm.snap.mem")).expect("FILE.mem by default");
    assert_eq!(memory.len(), 32 << 20, "the memory file is as long as RAM");
    // The guest touched its code, its page tables and the boot data: a few pages. The
    // rest is holes (slack for file system block granularity).
    let allocated = memory.blocks() * 512;
    assert!(
        allocated <= 1 << 20,
        "{allocated} bytes allocated for 32 MiB of mostly zeros"
    );
    vm.stop();
    assert_consecutive(
        &counts(&std::fs::read(scratch.path("vm.log")).expect("log")),
        1,
        "a VM snapshotted while it ran",
    );
}

#[test]
fn a_paused_restore_runs_only_once_resumed() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-paused");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let restored_log = scratch.path("restored.log");
    let vm = Vmm::restore(
        &scratch,
        &snapshot,
        "r",
        Some(&restored_log),
        &log,
        &["--paused"],
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(vm.log_len(), 0, "a --paused restore printed before Resume");
    vm.ctl_ok("resume", &[]);
    vm.wait_for_output(900);
    vm.stop();
}

/// `vmm run --restore` that must fail: exit status 1, one line naming `problem`.
fn assert_restore_refused(snapshot: &Path, memory: Option<&Path>, problem: &str) {
    let mut command = vmm();
    command.arg("run").arg("--restore").arg(snapshot);
    if let Some(memory) = memory {
        command.arg("--memory").arg(memory);
    }
    let output = run_with_timeout(command, COMMAND_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vmm: error:"))
        .collect();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains(problem), "{problem:?} not in {stderr}");
}

/// A good snapshot's files, copied to `name` and `name.mem` for one test to damage.
fn copy_of_snapshot(scratch: &Scratch, name: &str) -> (PathBuf, PathBuf) {
    let (snapshot, _) = stopped_snapshot(scratch);
    let copy = scratch.path(name);
    let memory = scratch.path(&format!("{name}.mem"));
    std::fs::copy(&snapshot, &copy).expect("copy snapshot");
    std::fs::copy(scratch.path("vm.snap.mem"), &memory).expect("copy memory file");
    (copy, memory)
}

#[test]
fn a_truncated_snapshot_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-truncated");
    let (snapshot, _) = copy_of_snapshot(&scratch, "cut.snap");
    let len = std::fs::metadata(&snapshot).expect("snapshot").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&snapshot)
        .expect("open");
    file.set_len(len / 2).expect("truncate");
    assert_restore_refused(&snapshot, None, "truncated");
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-flipped");
    let (snapshot, _) = copy_of_snapshot(&scratch, "flipped.snap");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&snapshot, bytes).expect("write");
    assert_restore_refused(&snapshot, None, "checksum mismatch");
}

#[test]
fn a_file_that_is_not_a_snapshot_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-magic");
    let snapshot = scratch.write("text.snap", &[b'x'; 4096]);
    scratch.write("text.snap.mem", &[]);
    assert_restore_refused(&snapshot, None, "wrong magic");
}

#[test]
fn a_memory_file_of_the_wrong_size_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-memsize");
    let (snapshot, memory) = copy_of_snapshot(&scratch, "short.snap");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .expect("open");
    file.set_len(16 << 20).expect("shorten");
    assert_restore_refused(
        &snapshot,
        Some(&memory),
        "the memory file is 16777216 bytes, the snapshot's guest RAM is 33554432 bytes",
    );
}

#[test]
fn a_snapshot_is_refused_while_a_client_s_memory_is_registered() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-registered");
    let vm = Vmm::boot(&scratch, "vm");
    let region = scratch.write("region", &[0u8; 8192]);
    let registered = vm.ctl_ok("register-memory", &[region.to_str().expect("UTF-8")]);
    let registered = String::from_utf8_lossy(&registered.stdout).into_owned();
    let slot = registered
        .split_whitespace()
        .skip_while(|word| *word != "slot")
        .nth(1)
        .expect("register-memory prints the slot")
        .to_string();
    let snapshot = scratch.path("vm.snap");
    let output = vm.ctl("snapshot", &[snapshot.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unsupported (Device or resource busy)"),
        "{stderr}"
    );
    assert!(
        !snapshot.exists(),
        "a refused snapshot leaves no file behind"
    );
    vm.wait_for_output(900);
    vm.ctl_ok("unregister-memory", &[&slot]);
    vm.snapshot(&snapshot, false);
    vm.stop();
}

#[test]
fn a_snapshot_to_a_full_disk_fails_and_the_vm_counts_on() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-full");
    let full = scratch.path("full");
    std::fs::create_dir(&full).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(&full)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        common::skip("THIS TEST NEEDS TO MOUNT A TINY TMPFS (root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(full.clone());
    let vm = Vmm::boot(&scratch, "vm");
    vm.wait_for_output(900);
    let snapshot = scratch.path("vm.snap");
    let memory = full.join("vm.mem");
    let output = vm.ctl(
        "snapshot",
        &[
            snapshot.to_str().expect("UTF-8"),
            "--memory",
            memory.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        !snapshot.exists() && !memory.exists(),
        "the failed snapshot's files are removed"
    );
    vm.wait_for_output(900);
    vm.stop();
    assert_consecutive(
        &counts(&std::fs::read(scratch.path("vm.log")).expect("log")),
        1,
        "a VM whose snapshot failed",
    );
}

#[test]
fn a_snapshot_to_a_device_is_refused_before_anything_is_touched() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-device");
    let vm = Vmm::boot(&scratch, "vm");
    let snapshot = scratch.path("vm.snap");
    let output = vm.ctl(
        "snapshot",
        &[snapshot.to_str().expect("UTF-8"), "--memory", "/dev/full"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/dev/full: not a regular file"), "{stderr}");
    assert!(Path::new("/dev/full").exists(), "the device is left alone");
    assert!(!snapshot.exists());
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn a_device_without_snapshot_support_is_refused_by_the_vmm() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-unsupported");
    let kernel = scratch.write("vm.elf", &tiny_elf(&COUNTER));
    let (socket, log) = (scratch.path("vm.sock"), scratch.path("vm.log"));
    let mut command = vmm();
    command.args(["run", "--mem", "32"]);
    command
        .arg("--serial")
        .arg(format!("file={}", log.display()));
    command
        .arg("--console")
        .arg(format!("file={}", scratch.path("hvc.log").display()));
    command.arg("--socket").arg(&socket).arg(&kernel);
    let vm = Vmm::spawn(command, socket, log);
    let snapshot = scratch.path("vm.snap");
    let output = vm.ctl("snapshot", &[snapshot.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a device of this VM cannot be saved"),
        "{stderr}"
    );
    assert!(!snapshot.exists() && !scratch.path("vm.snap.mem").exists());
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn a_snapshot_handed_over_as_descriptors_restores() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-fds");
    let (snapshot, _) = stopped_snapshot(&scratch);
    let stream = std::fs::File::open(&snapshot).expect("open snapshot");
    let memory = std::fs::File::open(scratch.path("vm.snap.mem")).expect("open memory file");
    let (stream_fd, memory_fd) = (stream.as_raw_fd(), memory.as_raw_fd());
    let restored_log = scratch.path("restored.log");
    let socket = scratch.path("fds.sock");
    let mut command = vmm();
    command.args(["run", "--restore", "fd=5", "--memory", "fd=6", "--socket"]);
    command.arg(&socket);
    command
        .arg("--serial")
        .arg(format!("file={}", restored_log.display()));
    // SAFETY: between fork and exec only async-signal-safe calls on integers: each file is
    // copied above 100 (close-on-exec), then placed at 5 and 6 (dup2 clears close-on-exec).
    unsafe {
        command.pre_exec(move || {
            let high = [
                libc::fcntl(stream_fd, libc::F_DUPFD_CLOEXEC, 100),
                libc::fcntl(memory_fd, libc::F_DUPFD_CLOEXEC, 100),
            ];
            for (fd, number) in high.into_iter().zip([5, 6]) {
                if fd < 0 || libc::dup2(fd, number) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let vm = Vmm::spawn(command, socket, restored_log);
    vm.wait_for_output(900);
    vm.stop();
}

/// Re-seals a stream edited in place: the end record's count becomes `records` and its
/// CRC-32C the one of everything before it, so the edit reaches the checks after the CRC.
fn reseal(bytes: &mut [u8], records: u32) {
    let len = bytes.len();
    bytes[len - 8..len - 4].copy_from_slice(&records.to_le_bytes());
    let crc = snapshot::crc32c::checksum(&bytes[..len - 4]);
    bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
}

fn record_count(bytes: &[u8]) -> u32 {
    let len = bytes.len();
    u32::from_le_bytes(bytes[len - 8..len - 4].try_into().expect("4 bytes"))
}

#[test]
fn a_snapshot_from_a_future_vmm_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-future");
    let (snapshot, _) = copy_of_snapshot(&scratch, "future.snap");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    let records = record_count(&bytes);
    reseal(&mut bytes, records);
    std::fs::write(&snapshot, bytes).expect("write");
    assert_restore_refused(
        &snapshot,
        None,
        "format version 2 is newer than this vmm reads",
    );
}

#[test]
fn an_unknown_required_record_is_refused_and_an_unknown_skippable_one_ignored() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-unknown");
    let (snapshot, memory) = copy_of_snapshot(&scratch, "unknown.snap");
    let good = std::fs::read(&snapshot).expect("snapshot");
    let with_record = |type_word: u32| {
        // An empty record just before the end record.
        let end = good.len() - snapshot::END_RECORD_LEN;
        let mut bytes = good[..end].to_vec();
        bytes.extend_from_slice(&type_word.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&good[end..]);
        reseal(&mut bytes, record_count(&good) + 1);
        bytes
    };
    // Kind 0x0250 (control-side range, not allocated), version 1.
    std::fs::write(&snapshot, with_record(0x0001_0250)).expect("write");
    assert_restore_refused(&snapshot, Some(&memory), "unknown required record type 592");
    // The same record marked skippable: a newer vmm's optional extra, restored without it.
    std::fs::write(&snapshot, with_record(0x8001_0250)).expect("write");
    let log = scratch.path("restored.log");
    let vm = Vmm::restore(
        &scratch,
        &snapshot,
        "skip",
        Some(&log),
        &log,
        &["--memory", memory.to_str().expect("UTF-8")],
    );
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn an_out_of_range_value_is_refused_by_name() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-range");
    let (snapshot, _) = copy_of_snapshot(&scratch, "range.snap");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    // The CONFIG record comes first: its type word, then RAM (u64), then the vCPU count.
    assert_eq!(
        &bytes[16..20],
        &0x0001_0200u32.to_le_bytes(),
        "CONFIG first"
    );
    bytes[32..36].copy_from_slice(&0u32.to_le_bytes());
    let records = record_count(&bytes);
    reseal(&mut bytes, records);
    std::fs::write(&snapshot, bytes).expect("write");
    assert_restore_refused(&snapshot, None, "vCPU count is 0x0, out of range");
}

#[test]
fn a_jailed_vm_whose_only_output_is_a_pipe_can_write_a_memory_file_as_large_as_its_ram() {
    if !require_kvm() {
        return;
    }
    // The jail's RLIMIT_FSIZE used to come from the writable files alone: with the serial
    // console on a pipe and no disk, no file could grow at all.
    let scratch = Scratch::new("snapshot-fsize");
    let kernel = scratch.write("vm.elf", &tiny_elf(&COUNTER));
    let socket = scratch.path("vm.sock");
    let mut command = vmm();
    command
        .args(["run", "--mem", "32", "--socket"])
        .arg(&socket)
        .arg(&kernel);
    let mut vm = Vmm::spawn(command, socket, scratch.path("unused.log"));
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, true);
    let output = vm.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let memory = std::fs::metadata(scratch.path("vm.snap.mem")).expect("memory file");
    assert_eq!(memory.len(), 32 << 20);
    // Its serial output was recorded as stdio: give a file at restore.
    let log = scratch.path("restored.log");
    let restored = Vmm::restore(&scratch, &snapshot, "r", Some(&log), &log, &[]);
    restored.wait_for_output(900);
    restored.stop();
}

#[test]
fn a_restored_vm_is_snapshotted_and_restored_again() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-again");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let mut second = Vmm::restore(&scratch, &snapshot, "second", None, &log, &[]);
    second.wait_for_output(900);
    // Its RAM is the first memory file, mapped privately: saved again page by page.
    let again = scratch.path("again.snap");
    second.snapshot(&again, true);
    let output = second.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let third = Vmm::restore(&scratch, &again, "third", None, &log, &[]);
    third.wait_for_output(900);
    third.stop();
    assert_consecutive(
        &counts(&std::fs::read(&log).expect("log")),
        1,
        "three processes, one count",
    );
}

#[test]
fn recorded_devices_come_back_and_a_disk_given_at_restore_replaces_the_recorded_one() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-devices");
    let disk = scratch.write("disk.img", &vec![0u8; 1 << 20]);
    let other = scratch.write("other.img", &vec![0u8; 1 << 20]);
    let kernel = scratch.write("vm.elf", &tiny_elf(&COUNTER));
    let (socket, log) = (scratch.path("vm.sock"), scratch.path("vm.log"));
    let mut command = vmm();
    command.args(["run", "--mem", "32", "--rng", "--balloon"]);
    command.arg("--disk").arg(&disk);
    command
        .arg("--serial")
        .arg(format!("file={}", log.display()));
    command.arg("--socket").arg(&socket).arg(&kernel);
    let mut vm = Vmm::spawn(command, socket, log.clone());
    vm.ctl_ok("balloon", &["--target", "4"]);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, true);
    let output = vm.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    // The recorded disk (free again: the first VM ended) and the balloon's target.
    let restored = Vmm::restore(&scratch, &snapshot, "r1", None, &log, &[]);
    let stats = restored.ctl_ok("stats", &[]);
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    assert!(stats.contains("target 1024 pages"), "{stats}");
    assert!(
        stats.contains("disk0") || stats.contains("block"),
        "{stats}"
    );
    // While it holds the recorded image's lock, a second restore takes another image.
    let log2 = scratch.path("r2.log");
    let other_arg = other.to_str().expect("UTF-8");
    let second = Vmm::restore(
        &scratch,
        &snapshot,
        "r2",
        Some(&log2),
        &log,
        &["--disk", other_arg],
    );
    second.wait_for_output(900);
    second.stop();
    restored.stop();
    // Without it, the second restore is refused on the lock, naming the image.
    let _holder = Vmm::restore(&scratch, &snapshot, "r3", None, &log, &[]);
    let mut command = vmm();
    command.arg("run").arg("--restore").arg(&snapshot);
    command
        .arg("--serial")
        .arg(format!("file={}", log2.display()));
    let output = run_with_timeout(command, COMMAND_LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("disk.img"),
        "{}",
        describe(&output)
    );
}
