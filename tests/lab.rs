//! Lab tests: Debian's stock cloud kernel boots under `vmm` inside the nested lab
//! (tools/lab, docs/lab.md), where /dev/kvm has hardware-virtualisation semantics.
//!
//! The guest kit's init prints `vmm-guest: cpus=N memtotal_kb=M`, runs the script passed
//! base64-encoded as `guest.run=` on the kernel command line, prints
//! `vmm-guest: run exit=S`, and powers off with `poweroff -f`.
//!
//! The lab is slow (QEMU TCG around a nested KVM), so the tests take turns (common::lab).

mod common;

use common::lab::{
    self, KNOWN_GUEST_LOG_LINES, LabRun, base64, guest_log_alarms, guest_params, require_lab,
};

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
    boot_in_lab_with_params(options, kernel, mem_mib, cpus, &guest_params(script))
}

/// [`boot_in_lab_with`] with the whole kernel command line given.
fn boot_in_lab_with_params(
    options: &[&str],
    kernel: &str,
    mem_mib: u32,
    cpus: u32,
    params: &str,
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
            params,
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

/// The machine has no PIT and tells the guest so (hardware-reduced FADT): Linux then
/// maps the legacy devices' interrupts from the DSDT alone, and the UART and the RTC
/// must still get theirs. Checked from inside the guest: the console's UART and the RTC
/// are on IOAPIC pins 4 and 8 (Linux numbers those IRQs from 24 up, as no legacy IRQ is
/// reserved without a PIC), the RTC is registered, no `timer` interrupt (a PIT's), and
/// the FADT the guest was given is hardware-reduced.
#[test]
fn without_a_pit_the_uart_and_rtc_get_their_interrupts_from_the_dsdt() {
    if !require_lab() {
        return;
    }
    let script = "cat /proc/interrupts; \
        echo rtc=$(cat /sys/class/rtc/rtc0/name); \
        echo fadt_flags=$(od -An -tu4 -j112 -N4 /sys/firmware/acpi/tables/FACP)";
    let run = boot_in_lab("/guest/vmlinuz", 256, 1, script);

    assert_eq!(run.status, Some(0), "lab output:\n{}", run.output);
    // `/proc/interrupts` device lines end "IO-APIC <pin>-<trigger> <name>".
    let on_pin = |pin: &str, name: &str| {
        run.output.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(3).any(|w| w == ["IO-APIC", pin, name])
        })
    };
    assert!(
        on_pin("4-edge", "ttyS0"),
        "the console UART is not on IOAPIC pin 4; lab output:\n{}",
        run.output
    );
    assert!(
        on_pin("8-edge", "rtc0"),
        "the RTC is not on IOAPIC pin 8; lab output:\n{}",
        run.output
    );
    assert!(
        !run.output
            .lines()
            .any(|l| l.contains("IO-APIC") && l.trim_end().ends_with(" timer")),
        "a timer interrupt (a PIT?); lab output:\n{}",
        run.output
    );
    assert!(
        run.value("rtc=").starts_with("rtc_cmos"),
        "no RTC; lab output:\n{}",
        run.output
    );
    // FADT flags (offset 112) bit 20: HW_REDUCED_ACPI, as the guest's kernel read it.
    let flags: u32 = run.value("fadt_flags=").parse().unwrap_or_else(|_| {
        panic!("no FADT flags; lab output:\n{}", run.output);
    });
    assert_ne!(
        flags & (1 << 20),
        0,
        "FADT flags {flags:#x}: not hardware-reduced"
    );
}

/// The RTC interrupts its guest: an alarm set through `/sys/class/rtc/rtc0/wakealarm`
/// fires and wakes a reader of `/dev/rtc0` (Linux's rtc core also makes `hwclock`'s update
/// interrupt out of the alarm, so `hwclock --systohc` and friends wait on this path), and
/// the interrupt is counted on IRQ 8. With the RTC's interrupt never raised the read waited
/// until `timeout` killed it. vmm runs jailed, as by default, so the vCPU and main-thread
/// policies are the ones that re-arm the RTC's timer.
#[test]
fn the_rtc_alarm_interrupts_linux() {
    if !require_lab() {
        return;
    }
    let script = "echo +2 > /sys/class/rtc/rtc0/wakealarm; \
        timeout 20 dd if=/dev/rtc0 bs=8 count=1 of=/dev/null 2>/dev/null; \
        echo rtc-read=$?; \
        echo rtc-alarm-left=[$(cat /sys/class/rtc/rtc0/wakealarm)]; \
        echo rtc-irqs=$(awk '/ rtc0$/ { print $2 }' /proc/interrupts)";
    let run = boot_in_lab("/guest/vmlinuz", 256, 1, script);

    assert_eq!(run.status, Some(0), "lab output:\n{}", run.output);
    assert_eq!(
        run.value("rtc-read="),
        "0",
        "reading /dev/rtc0 did not return when the alarm was due; lab output:\n{}",
        run.output
    );
    assert_eq!(
        run.value("rtc-alarm-left="),
        "[]",
        "the alarm is still pending; lab output:\n{}",
        run.output
    );
    let irqs: u64 = run.value("rtc-irqs=").parse().unwrap_or(0);
    assert!(
        irqs >= 1,
        "no RTC interrupt counted; lab output:\n{}",
        run.output
    );
}

/// `--pit` is for guests that need a legacy timer: Linux booted with `acpi=off` finds no
/// APIC (vmm writes no MP table), runs on the 8259s and the PIT, and hangs without one.
/// With `--pit` it boots, its timer ticks on the 8259 (`XT-PIC`), and `reboot -f` (the
/// keyboard controller's reset, there being no ACPI) ends vmm with the reset code.
#[test]
fn with_pit_a_kernel_without_acpi_boots_on_the_8259_and_the_pit() {
    if !require_lab() {
        return;
    }
    let params = format!(
        "acpi=off {}",
        guest_params("grep -E 'timer' /proc/interrupts; reboot -f")
    );
    let run = boot_in_lab_with_params(&["--pit"], "/guest/vmlinuz", 256, 1, &params);

    assert!(
        run.guest_report().is_some(),
        "guest never reached init; lab output:\n{}",
        run.output
    );
    assert!(
        run.output.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.ends_with(&["XT-PIC", "timer"]) && words.first() == Some(&"0:")
        }),
        "no PIT timer on the 8259; lab output:\n{}",
        run.output
    );
    assert_eq!(run.status, Some(32), "lab output:\n{}", run.output);
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

/// A guest that cannot use MSI-X (`pci=nomsi`) gets its virtio interrupts on the INTx
/// line the DSDT's `_PRT` names, as a level on the IOAPIC: the rng device delivers its
/// bytes, and the disk its blocks, through it.
#[test]
fn without_msi_virtio_devices_interrupt_through_their_intx_line() {
    if !require_lab() {
        return;
    }
    let script = "echo hwrng_bytes: $(dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c); \
        echo vda_bytes: $(dd if=/dev/vda bs=4096 count=64 iflag=direct 2>/dev/null | wc -c); \
        echo intx: $(grep -c 'IO-APIC.*fasteoi.*virtio' /proc/interrupts); \
        echo msi: $(grep -c 'PCI-MSI' /proc/interrupts)";
    let params = format!("{} pci=nomsi", guest_params(script));
    let command = [
        "dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null",
        "exec vmm run --rng --disk /tmp/disk.img --mem 256 --cpus 2 \
         --initrd /guest/initrd.img --params \"$0\" /guest/vmlinuz",
    ]
    .join(" && ");
    let run = lab::run(&[], &["sh".to_string(), "-c".to_string(), command, params]);

    assert_eq!(
        run.value("hwrng_bytes:"),
        "256",
        "lab output:\n{}",
        run.output
    );
    assert_eq!(
        run.value("vda_bytes:"),
        "262144",
        "lab output:\n{}",
        run.output
    );
    assert_eq!(run.value("msi:"), "0", "MSI stays off: {}", run.output);
    let intx: u32 = run.value("intx:").parse().unwrap_or(0);
    assert!(intx >= 2, "both devices on IO-APIC lines: {}", run.output);
    assert_eq!(run.status, Some(0), "lab output:\n{}", run.output);
}

/// The evidence behind every entry of the known guest log lines: the same kernel under
/// QEMU (`-enable-kvm -cpu host`, the lab's reference VMM) in the same lab prints it too,
/// so it is the lab's and not vmm's. When a new Debian kernel or a new lab stops printing
/// a line, this fails and the entry goes.
#[test]
fn qemu_prints_every_known_guest_log_line_too() {
    if !require_lab() {
        return;
    }
    let command: Vec<String> = [
        "qemu-system-x86_64",
        "-enable-kvm",
        "-cpu",
        "host",
        "-M",
        "pc",
        "-m",
        "256",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-net",
        "none",
        "-kernel",
        "/guest/vmlinuz",
        "-initrd",
        "/guest/initrd.img",
        "-append",
        &guest_params("true"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = lab::run_allowing_known_lines(&[], &command);

    assert!(
        run.output.contains("vmm-guest: run exit=0"),
        "QEMU's guest never ran its script; lab output:\n{}",
        run.output
    );
    for known in KNOWN_GUEST_LOG_LINES {
        assert!(
            run.output.contains(known.text),
            "QEMU no longer prints {:?}: drop it from KNOWN_GUEST_LOG_LINES; lab output:\n{}",
            known.text,
            run.output
        );
    }
}

#[test]
fn guest_log_alarms_flag_bugs_and_warnings_but_not_known_lab_artefacts() {
    let known_warning = "\
[    1.40] ------------[ cut here ]------------
[    1.40] XSAVE consistency problem: size 832 != kernel_size 576
[    1.40] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606 fpu__init_system_xstate+0x85a/0xb19
[    1.40] Call Trace:
[    1.40]  <TASK>
[    1.40] ---[ end trace 0000000000000000 ]---
[    1.41] Speculative Return Stack Overflow: WARNING: See https://kernel.org/doc/html/latest/admin-guide/hw-vuln/srso.html
";
    assert_eq!(guest_log_alarms(known_warning), Vec::<String>::new());

    let other_warning = "\
[    2.00] ------------[ cut here ]------------
[    2.00] WARNING: CPU: 1 PID: 7 at drivers/virtio/virtio_ring.c:2100 vring_interrupt+0x1/0x2
[    2.00] Call Trace:
[    2.00] ---[ end trace 0000000000000000 ]---
";
    assert_eq!(
        guest_log_alarms(other_warning),
        vec![
            "[    2.00] WARNING: CPU: 1 PID: 7 at drivers/virtio/virtio_ring.c:2100 vring_interrupt+0x1/0x2",
            "[    2.00] Call Trace:",
        ]
    );
    for line in [
        "[    3.00] BUG: kernel NULL pointer dereference, address: 0000000000000008",
        "[    3.00] Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "[   30.00] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]",
        "[  242.00] INFO: task sh:1 blocked for more than 120 seconds.",
    ] {
        assert_eq!(guest_log_alarms(line), vec![line.to_string()], "{line}");
    }
}

#[test]
fn base64_matches_the_standard_alphabet_and_padding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"reboot -f"), "cmVib290IC1m");
}
