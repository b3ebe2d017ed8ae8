//! Driving the nested lab (tools/lab, docs/lab.md) from tests: whether it can run, one
//! run at a time per test binary, and the guest kit's `guest.run=<base64>` contract.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The lab is slow (QEMU TCG around a nested KVM): tests in one binary take turns.
static LAB: Mutex<()> = Mutex::new(());

/// How long one lab run may take before the test fails (tools/lab has its own timeout).
const LAB_LIMIT: Duration = Duration::from_secs(900);
const LAB_TIMEOUT_ARG: &str = "800";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the lab can run here; says so loudly when not, and fails under CI.
pub fn require_lab() -> bool {
    let kit = repo().join("target/lab/guest/vmlinuz");
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let ready = kit.exists() && qemu.exists();
    if !ready {
        let message = "THIS TEST NEEDS THE NESTED LAB: run `tools/lab kit` (tools/test does) first";
        if std::env::var_os("CI").is_some() {
            panic!("{message}; CI must be able to run every test");
        }
        eprintln!("\n!!! SKIPPED: {message} !!!\n");
    }
    ready
}

/// Standard base64 with padding, as busybox `base64 -d` in the guest init expects.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kernel command line that makes the guest kit's init run `script`.
pub fn guest_params(script: &str) -> String {
    format!("console=ttyS0 guest.run={}", base64(script.as_bytes()))
}

/// The result of one lab run.
pub struct LabRun {
    pub status: Option<i32>,
    pub output: String,
}

impl LabRun {
    /// The numbers of the guest init's `vmm-guest: cpus=N memtotal_kb=M` line.
    pub fn guest_report(&self) -> Option<(u32, u64)> {
        let line = self
            .output
            .lines()
            .find(|l| l.contains("vmm-guest: cpus="))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .map(|value| value.trim().to_string())
        };
        Some((
            field("cpus=")?.parse().ok()?,
            field("memtotal_kb=")?.parse().ok()?,
        ))
    }
}

/// Runs `tools/lab [extra] -- command...` with the vmm under test, waiting its turn.
pub fn run(lab_args: &[String], command: &[String]) -> LabRun {
    let _turn = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Command::new(repo().join("tools/lab"));
    lab.env("VMM_BIN", env!("CARGO_BIN_EXE_vmm"))
        .args(["--timeout", LAB_TIMEOUT_ARG])
        .args(lab_args)
        .arg("--")
        .args(command);
    let output = super::run_with_timeout(lab, LAB_LIMIT);
    LabRun {
        status: output.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
