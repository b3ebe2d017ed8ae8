//! Lab tests: Debian's stock cloud kernel boots under `vmm` inside the nested lab
//! (tools/lab, docs/lab.md), where /dev/kvm has hardware-virtualisation semantics.
//!
//! The guest kit's init prints `vmm-guest: cpus=N memtotal_kb=M`, runs the script passed
//! base64-encoded as `guest.run=` on the kernel command line, prints
//! `vmm-guest: run exit=S`, and powers off with `poweroff -f`.
//!
//! The lab is slow (QEMU TCG around a nested KVM), so the tests take turns (common::lab).

mod common;

use common::lab::{self, LabRun, base64, guest_params, require_lab};

/// Boots `kernel` (a path inside the lab, e.g. /guest/vmlinuz) under vmm in the lab with
/// the guest running `script`.
fn boot_in_lab(kernel: &str, mem_mib: u32, cpus: u32, script: &str) -> LabRun {
    boot_in_lab_with(&[], kernel, mem_mib, cpus, script)
}

/// [`boot_in_lab`] with extra `vmm run` options.
fn boot_in_lab_with(
    options: &[&str],
    kernel: &str,
    mem_mib: u32,
    cpus: u32,
    script: &str,
) -> LabRun {
    let command: Vec<String> = ["vmm", "run"]
        .iter()
        .chain(options)
        .chain(&[
            "--mem",
            &mem_mib.to_string(),
            "--cpus",
            &cpus.to_string(),
            "--initrd",
            "/guest/initrd.img",
            "--params",
            &guest_params(script),
            kernel,
        ])
        .map(|s| s.to_string())
        .collect();
    lab::run(&[], &command)
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
fn virtio_rng_feeds_the_guests_hwrng_over_pci_with_msix() {
    if !require_lab() {
        return;
    }
    let script = "echo pci: $(ls /sys/bus/pci/devices); \
        echo rng_current: $(cat /sys/class/misc/hw_random/rng_current); \
        echo hwrng_bytes: $(dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c); \
        grep -q 'PCI-MSI.*virtio0-input' /proc/interrupts && echo msix: yes";
    let run = boot_in_lab_with(&["--rng"], "/guest/vmlinuz", 256, 1, script);

    assert_eq!(
        run.value("pci:"),
        "0000:00:00.0 0000:00:01.0",
        "host bridge and the rng"
    );
    assert_eq!(run.value("rng_current:"), "virtio_rng.0");
    assert_eq!(
        run.value("hwrng_bytes:"),
        "256",
        "the guest read 256 bytes of host entropy"
    );
    assert_eq!(
        run.value("msix:"),
        "yes",
        "the device interrupts through MSI-X"
    );
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
