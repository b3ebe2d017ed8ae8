//! The report: the preface (host, VMMs, settings), the table of both VMMs side by side, and
//! the targets each figure is held to.

use std::path::Path;

use crate::Config;
use crate::measure::{Latencies, MemoryReport};
use crate::vmm::Vmm;

// ---------------------------------------------------------------------------------------
// Report.

pub fn print_preface(config: &Config, vmms: &[Vmm]) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("host bench: vmm against QEMU, same tiny guest, one run");
    println!("host: {cpus} CPUs, kernel {}", kernel_release());
    println!(
        "runs: start-up {} per VMM (alternating), memory {} per VMM (median) alone and {} with \
         {} VMs at once, throughput {} VMs per VMM",
        config.runs, config.mem_runs, config.mem_runs, config.mem_vms, config.vms
    );
    for vmm in vmms {
        println!(
            "{:>5}: {}",
            vmm.name,
            vmm.command_line(Path::new("GUEST.elf"))
        );
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn print_table(
    startup: &[Latencies],
    memory: &[MemoryReport],
    throughput: &[f64],
    config: &Config,
) {
    let (ours, qemu) = (&startup[0], &startup[1]);
    println!();
    println!("| measure | vmm | QEMU | vmm/QEMU |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |label: &str, a: f64, b: f64, unit: &str| {
        println!("| {label} | {a:.2} {unit} | {b:.2} {unit} | {:.2} |", a / b);
    };
    let n = config.runs;
    row(
        &format!("exec → first serial byte, min (n={n})"),
        ours.min(),
        qemu.min(),
        "ms",
    );
    row(
        "exec → first serial byte, median",
        ours.median(),
        qemu.median(),
        "ms",
    );
    row(
        "exec → first serial byte, p90",
        ours.p90(),
        qemu.p90(),
        "ms",
    );
    let mib = |kb: u64| kb as f64 / 1024.0;
    let (a, b) = (memory[0].alone, memory[1].alone);
    let (a_n, b_n) = (memory[0].together, memory[1].together);
    let (m, n) = (config.mem_runs, config.mem_vms);
    row(
        &format!("memory overhead (Rss − guest RAM Rss), median of {m}"),
        mib(a.overhead_kb),
        mib(b.overhead_kb),
        "MiB",
    );
    row(
        &format!("private overhead per VM, {n} VMs at once (Private − guest RAM), median"),
        mib(a_n.private_overhead_kb),
        mib(b_n.private_overhead_kb),
        "MiB",
    );
    row(
        &format!("PSS overhead per VM, {n} VMs at once (Pss − guest RAM Pss), median"),
        mib(a_n.pss_overhead_kb),
        mib(b_n.pss_overhead_kb),
        "MiB",
    );
    row(
        &format!("(Rss overhead per VM, {n} VMs at once, for reference)"),
        mib(a_n.overhead_kb),
        mib(b_n.overhead_kb),
        "MiB",
    );
    row("total RSS", mib(a.rss_kb), mib(b.rss_kb), "MiB");
    row("total PSS", mib(a.pss_kb), mib(b.pss_kb), "MiB");
    row(
        "(guest RAM Rss, for reference)",
        mib(a.guest_rss_kb),
        mib(b.guest_rss_kb),
        "MiB",
    );
    row(
        &format!("VMs started and stopped per second (n={})", config.vms),
        throughput[0],
        throughput[1],
        "VM/s",
    );
    for extra in &startup[2..] {
        println!(
            "\n{}: exec → first serial byte min {:.2} ms, median {:.2} ms, p90 {:.2} ms",
            extra.name,
            extra.min(),
            extra.median(),
            extra.p90()
        );
    }
    if let (Some(jailed), Some(jailed_vms)) = (startup.get(3), throughput.get(2)) {
        println!(
            "\njail cost: start-up median {:+.2} ms ({:.2}x plain vmm); {:.2} VM/s jailed \
             against {:.2} ({:.2}x)",
            jailed.median() - ours.median(),
            jailed.median() / ours.median(),
            jailed_vms,
            throughput[0],
            jailed_vms / throughput[0]
        );
    }
    print_targets(ours, memory[0], n);
}

/// The memory target is what one more VM costs the host: its private pages with several
/// VMs running (the binary's text is shared by them all, so it is not a per-VM cost). The
/// Rss overhead of a VM alone, which counts that text in full, is printed beside it.
pub fn print_targets(startup: &Latencies, memory: MemoryReport, vms: usize) {
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let mib = |kb: u64| kb as f64 / 1024.0;
    let per_vm = mib(memory.together.private_overhead_kb);
    println!(
        "targets: start-up median < 3 ms: {} ({:.2} ms); memory per extra VM < 1 MiB \
         (private overhead, {vms} VMs at once): {} ({per_vm:.2} MiB; PSS {:.2} MiB; Rss of a \
         VM alone, shared text included, {:.2} MiB)",
        verdict(startup.median() < 3.0),
        startup.median(),
        verdict(per_vm < 1.0),
        mib(memory.together.pss_overhead_kb),
        mib(memory.alone.overhead_kb),
    );
}
