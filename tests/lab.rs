//! Lab tests: Debian's stock cloud kernel boots under `vmm` inside the nested lab
//! (tools/lab, docs/lab.md), where /dev/kvm has hardware-virtualisation semantics.
//!
//! The guest kit's init prints `vmm-guest: cpus=N memtotal_kb=M`, runs the script passed
//! base64-encoded as `guest.run=` on the kernel command line, prints
//! `vmm-guest: run exit=S`, and powers off with `poweroff -f`.
//!
//! The lab is slow (QEMU TCG around a nested KVM), so the tests take turns on one lock.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

static LAB: Mutex<()> = Mutex::new(());

/// How long one lab run may take before the test fails (tools/lab has its own timeout).
const LAB_LIMIT: Duration = Duration::from_secs(900);
const LAB_TIMEOUT_ARG: &str = "800";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the lab can run here; says so loudly when not, and fails under CI.
fn require_lab() -> bool {
    let kit = repo().join("target/lab/guest/vmlinuz");
    let qemu = std::path::Path::new("/usr/bin/qemu-system-x86_64");
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

fn base64(input: &[u8]) -> String {
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

/// The result of one lab run.
struct LabRun {
    status: Option<i32>,
    output: String,
}

impl LabRun {
    /// The `vmm-guest: cpus=N memtotal_kb=M` line's numbers.
    fn guest_report(&self) -> Option<(u32, u64)> {
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

/// Boots `kernel` (a path inside the lab, e.g. /guest/vmlinuz) under vmm in the lab with
/// the guest running `script`.
fn boot_in_lab(kernel: &str, mem_mib: u32, cpus: u32, script: &str) -> LabRun {
    let _turn = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let params = format!("console=ttyS0 guest.run={}", base64(script.as_bytes()));
    let mut command = Command::new(repo().join("tools/lab"));
    command
        .env("VMM_BIN", env!("CARGO_BIN_EXE_vmm"))
        .args(["--timeout", LAB_TIMEOUT_ARG, "--", "vmm", "run"])
        .args(["--mem", &mem_mib.to_string(), "--cpus", &cpus.to_string()])
        .args(["--initrd", "/guest/initrd.img", "--params", &params, kernel]);
    let output = common::run_with_timeout(command, LAB_LIMIT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    LabRun {
        status: output.status.code(),
        output: text,
    }
}

#[test]
fn debian_kernel_boots_with_two_cpus_and_the_requested_memory_then_powers_off() {
    if !require_lab() {
        return;
    }
    let run = boot_in_lab("/guest/vmlinuz", 256, 2, "dmesg | grep -m1 'Memory:'");

    let (cpus, memtotal_kb) = run
        .guest_report()
        .unwrap_or_else(|| panic!("no vmm-guest report line; lab output:\n{}", run.output));
    assert_eq!(cpus, 2, "lab output:\n{}", run.output);
    // MemTotal is RAM less what the kernel keeps for itself (its image, page tables,
    // memmap): for 256 MiB that is about 8 %; more than 15 % missing means lost RAM.
    let requested_kb = 256 * 1024;
    assert!(
        memtotal_kb <= requested_kb && memtotal_kb >= requested_kb * 85 / 100,
        "MemTotal {memtotal_kb} kB is not close to 256 MiB; lab output:\n{}",
        run.output
    );
    assert!(
        run.output.contains("vmm-guest: run exit=0"),
        "lab output:\n{}",
        run.output
    );
    assert_eq!(
        run.status,
        Some(0),
        "poweroff -f must end vmm with 0; lab output:\n{}",
        run.output
    );
}

#[test]
fn guest_reboot_ends_vmm_with_the_reset_code() {
    if !require_lab() {
        return;
    }
    let run = boot_in_lab("/guest/vmlinuz", 256, 1, "reboot -f");

    assert!(
        run.guest_report().is_some(),
        "guest never reached init; lab output:\n{}",
        run.output
    );
    assert_eq!(
        run.status,
        Some(32),
        "reboot -f must end vmm with 32; lab output:\n{}",
        run.output
    );
}

#[test]
fn elf_vmlinux_boots_through_its_pvh_entry() {
    if !require_lab() {
        return;
    }
    let run = boot_in_lab("/guest/vmlinux", 256, 1, "true");

    let (cpus, _) = run
        .guest_report()
        .unwrap_or_else(|| panic!("no vmm-guest report line; lab output:\n{}", run.output));
    assert_eq!(cpus, 1);
    assert_eq!(run.status, Some(0), "lab output:\n{}", run.output);
}

#[test]
fn base64_matches_the_standard_alphabet_and_padding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"reboot -f"), "cmVib290IC1m");
}
