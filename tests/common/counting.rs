//! The counting guest of the snapshot tests and a handle on one `vmm run` of it (booted or
//! restored): it prints each count as eight hex digits and a newline on COM1, forever,
//! keeping the count in a register, so a restored VM that goes on from where the snapshot
//! was taken prints the very next digits. Also what the bad-file tests share: a good
//! snapshot to damage, re-sealing an edited stream, and the check of a refused restore.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use super::{Scratch, describe, run_with_timeout, tiny_elf, vmm, wait_until};

/// Longest a control subcommand or a failing `vmm run` may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// How long to wait for a VM's socket, or for its guest to print.
pub const START_LIMIT: Duration = Duration::from_secs(20);

/// The counting guest: `inc ebx`, then the eight hex digits of ebx (rotating it by four
/// bits each time, so it is whole again after the last), a newline, and again.
pub const COUNTER: [u8; 37] = [
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

/// The counting guest with its count in memory too: `inc ebx`, `inc dword [0x200000]`,
/// and unless both still agree, `X` and a newline and a halt; else the count's digits as
/// [`COUNTER`] prints them. It writes a page of RAM on every count, and a snapshot whose
/// memory is from another moment than its registers restores to a guest that prints `X`.
pub const MEMORY_COUNTER: [u8; 67] = [
    0xff, 0xc3, //                                  0: inc ebx
    0xff, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, //    2: inc dword [0x200000]
    0x3b, 0x1c, 0x25, 0x00, 0x00, 0x20, 0x00, //    9: cmp ebx, [0x200000]
    0x75, 0x23, //                                 16: jne 53
    0xb9, 0x08, 0x00, 0x00, 0x00, //               18: mov ecx, 8
    0xba, 0xf8, 0x03, 0x00, 0x00, //               23: mov edx, 0x3f8
    0xc1, 0xc3, 0x04, //                           28: rol ebx, 4
    0x89, 0xd8, //                                 31: mov eax, ebx
    0x24, 0x0f, //                                 33: and al, 0xf
    0x04, 0x30, //                                 35: add al, '0'
    0x3c, 0x39, //                                 37: cmp al, '9'
    0x76, 0x02, //                                 39: jbe 43
    0x04, 0x07, //                                 41: add al, 'A' - '9' - 1
    0xee, //                                       43: out dx, al
    0xff, 0xc9, //                                 44: dec ecx
    0x75, 0xec, //                                 46: jnz 28
    0xb0, 0x0a, //                                 48: mov al, '\n'
    0xee, //                                       50: out dx, al
    0xeb, 0xcb, //                                 51: jmp 0
    0xba, 0xf8, 0x03, 0x00, 0x00, //               53: mov edx, 0x3f8
    0xb0, 0x58, //                                 58: mov al, 'X'
    0xee, //                                       60: out dx, al
    0xb0, 0x0a, //                                 61: mov al, '\n'
    0xee, //                                       63: out dx, al
    0xf4, //                                       64: hlt
    0xeb, 0xfd, //                                 65: jmp 64
];

/// The environment variable that makes a snapshot's forked RAM writer wait this many
/// milliseconds before it writes (the VMM's test hook, `src/snapshot/save.rs`).
pub const WRITER_DELAY_ENV: &str = "VMM_SNAPSHOT_TEST_WRITER_DELAY_MS";

/// One `vmm run` (booted or restored), serial to `log`, control socket at `socket`.
pub struct Vmm {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Vmm {
    /// `vmm run --mem 32 --serial file=LOG --socket SOCKET GUEST` in `scratch`.
    pub fn boot(scratch: &Scratch, name: &str) -> Vmm {
        Vmm::boot_with(scratch, name, &COUNTER, None, &[])
    }

    /// As [`Vmm::boot`], with the guest `code`, `extra` options for `vmm run`, and with a
    /// snapshot's RAM writer waiting `writer_delay_ms` before it writes.
    pub fn boot_with(
        scratch: &Scratch,
        name: &str,
        code: &[u8],
        writer_delay_ms: Option<u64>,
        extra: &[&str],
    ) -> Vmm {
        let kernel = scratch.write(&format!("{name}.elf"), &tiny_elf(code));
        let (socket, log) = (
            scratch.path(&format!("{name}.sock")),
            scratch.path(&format!("{name}.log")),
        );
        let mut command = vmm();
        if let Some(delay) = writer_delay_ms {
            command.env(WRITER_DELAY_ENV, delay.to_string());
        }
        command.args(["run", "--mem", "32"]).args(extra);
        command
            .arg("--serial")
            .arg(format!("file={}", log.display()));
        command.arg("--socket").arg(&socket).arg(&kernel);
        Vmm::spawn(command, socket, log)
    }

    /// `vmm run --restore SNAPSHOT --socket SOCKET [--serial file=LOG] EXTRA...`; without
    /// `log` the serial output goes where the snapshot recorded (`recorded_log`).
    pub fn restore(
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

    pub fn spawn(mut command: std::process::Command, socket: PathBuf, log: PathBuf) -> Vmm {
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

    /// The pid of `vmm run`.
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("vmm run is ours");
        i32::try_from(child.id()).expect("a pid")
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn take_output(&mut self) -> Output {
        let mut child = self.child.take().expect("vmm run is ours");
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        child.wait_with_output().expect("collect vmm run")
    }

    /// The processes the VMM of this `vmm run` has forked and not yet reaped (a snapshot's
    /// RAM writer).
    pub fn vmm_children(&self) -> Vec<u32> {
        let vmm = super::vmm_process(u32::try_from(self.pid()).expect("a pid"));
        std::fs::read_to_string(format!("/proc/{vmm}/task/{vmm}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    /// `vmm snapshot SOCKET FILE` started, not waited for.
    pub fn start_snapshot(&self, file: &Path) -> Child {
        let mut command = vmm();
        command.arg("snapshot").arg(&self.socket).arg(file);
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm snapshot")
    }

    /// `vmm SUBCOMMAND SOCKET ARGS...`.
    pub fn ctl(&self, subcommand: &str, args: &[&str]) -> Output {
        let mut command = vmm();
        command.arg(subcommand).arg(&self.socket).args(args);
        run_with_timeout(command, COMMAND_LIMIT)
    }

    pub fn ctl_ok(&self, subcommand: &str, args: &[&str]) -> Output {
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
    pub fn snapshot(&self, file: &Path, stop: bool) {
        let file = file.to_str().expect("UTF-8 path");
        let args: &[&str] = if stop { &[file, "--stop"] } else { &[file] };
        self.ctl_ok("snapshot", args);
    }

    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits for the guest to print `bytes` more.
    pub fn wait_for_output(&self, bytes: u64) {
        let from = self.log_len();
        assert!(
            wait_until(START_LIMIT, || self.log_len() >= from + bytes),
            "the guest printed {} bytes in {START_LIMIT:?}, expected {bytes} more",
            self.log_len() - from
        );
    }

    /// Waits for `vmm run` to exit by itself, and returns its output.
    pub fn wait_exit(&mut self) -> Output {
        assert!(
            wait_until(COMMAND_LIMIT, || !self.running()),
            "vmm run did not exit"
        );
        self.take_output()
    }

    /// `vmm stop`, then the exit of `vmm run`, which must be 0.
    pub fn stop(mut self) {
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
pub fn counts(log: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(log);
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop(); // the line being printed, or "" after the last newline
    lines
        .iter()
        .map(|line| u32::from_str_radix(line, 16).unwrap_or_else(|_| panic!("line {line:?}")))
        .collect()
}

/// Asserts the counts are exactly `first, first + 1, ...`.
pub fn assert_consecutive(counts: &[u32], first: u32, what: &str) {
    for (i, &count) in counts.iter().enumerate() {
        let expected = first + u32::try_from(i).expect("few lines");
        assert_eq!(
            count, expected,
            "{what}: line {i} is {count:#x}, expected {expected:#x}"
        );
    }
}

/// A counting VM's snapshot taken with `--stop`: (snapshot path, the VM's serial log).
pub fn stopped_snapshot(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let mut vm = Vmm::boot(scratch, "first");
    vm.wait_for_output(900);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, true);
    let output = vm.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    (snapshot, vm.log.clone())
}

/// `vmm run --restore` that must fail: exit status 1, one line naming `problem`.
pub fn assert_restore_refused(snapshot: &Path, memory: Option<&Path>, problem: &str) {
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
pub fn copy_of_snapshot(scratch: &Scratch, name: &str) -> (PathBuf, PathBuf) {
    let (snapshot, _) = stopped_snapshot(scratch);
    let copy = scratch.path(name);
    let memory = scratch.path(&format!("{name}.mem"));
    std::fs::copy(&snapshot, &copy).expect("copy snapshot");
    std::fs::copy(scratch.path("vm.snap.mem"), &memory).expect("copy memory file");
    (copy, memory)
}

/// Re-seals a stream edited in place: the end record's count becomes `records` and its
/// CRC-32C the one of everything before it, so the edit reaches the checks after the CRC.
pub fn reseal(bytes: &mut [u8], records: u32) {
    let len = bytes.len();
    bytes[len - 8..len - 4].copy_from_slice(&records.to_le_bytes());
    let crc = snapshot::crc32c::checksum(&bytes[..len - 4]);
    bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
}

pub fn record_count(bytes: &[u8]) -> u32 {
    let len = bytes.len();
    u32::from_le_bytes(bytes[len - 8..len - 4].try_into().expect("4 bytes"))
}
