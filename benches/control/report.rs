//! The report: the preface, the latency and rate tables, the floor, CPU per request, and
//! the targets vmm is held to.

use std::path::Path;
use std::process::Command;

use crate::measure::{Latency, Placement, Rate};
use crate::{Config, TARGET_P50_US, TARGET_P99_US, TARGET_RATE_RATIO};

// ---------------------------------------------------------------------------------------
// Report.

/// Everything measured: index 0 is `GetVersion`, 1 `GetStats`, 2 QMP `query-status`.
pub struct Report {
    /// Per placement: the three targets, then the socketpair floor.
    pub latencies: Vec<(Placement, [Latency; 3], Latency)>,
    pub single: Vec<Rate>,
    pub concurrent: Vec<Rate>,
    pub concurrent_clients: usize,
}

pub const QMP: usize = 2;

impl Report {
    pub fn print_table(&self, config: &Config, vmm_label: &str) {
        println!();
        println!("| measure | {vmm_label} | QEMU QMP | ratio (× in vmm's favour) |");
        println!("| --- | ---: | ---: | ---: |");
        for (index, request) in ["GetVersion", "GetStats"].iter().enumerate() {
            self.print_rows(index, request, config);
        }
    }

    pub fn print_rows(&self, index: usize, request: &str, config: &Config) {
        let n = config.requests;
        for (placement, latencies, _) in &self.latencies {
            for percent in [50, 99] {
                let ours = latencies[index].percentile_us(percent);
                let qemu = latencies[QMP].percentile_us(percent);
                let count = if percent == 50 {
                    format!(" (n={n})")
                } else {
                    String::new()
                };
                println!(
                    "| {request} vs query-status: latency p{percent}, {}{count} \
                     | {ours:.1} µs | {qemu:.1} µs | {:.1} |",
                    placement.label,
                    qemu / ours
                );
            }
        }
        let rate_row = |label: &str, rates: &[Rate]| {
            let (ours, qemu) = (rates[index].per_second, rates[QMP].per_second);
            println!(
                "| {request} vs query-status: {label} | {ours:.0} req/s | {qemu:.0} req/s | {:.1} |",
                ours / qemu
            );
        };
        let (r, c, p) = (config.rounds, config.clients, config.per_client);
        let rounds = if r == 1 {
            "1 round".to_string()
        } else {
            format!("median of {r} rounds")
        };
        rate_row(&format!("rate, 1 client × {n} ({rounds})"), &self.single);
        rate_row(
            &format!("rate, {c} clients × {p} ({rounds})"),
            &self.concurrent,
        );
    }

    pub fn print_floor(&self) {
        println!("\nfloor (no VMM: 64-byte datagram to a pinned echo thread, 1024 bytes back):");
        for (placement, _, floor) in &self.latencies {
            println!(
                "  {}: p50 {:.1} µs, p99 {:.1} µs",
                placement.label,
                floor.percentile_us(50),
                floor.percentile_us(99)
            );
        }
    }

    pub fn print_cpu(&self) {
        let names = ["GetVersion", "GetStats", "QMP query-status"];
        for (clients, rates) in [
            (1, &self.single),
            (self.concurrent_clients, &self.concurrent),
        ] {
            println!("\nCPU time per request, rate runs with {clients} client(s):");
            for (name, rate) in names.iter().zip(rates.iter()) {
                let server = rate
                    .server_cpu_us
                    .map_or_else(|| "n/a".to_string(), |us| format!("{us:.1} µs"));
                println!(
                    "  {name}: server process {server}, clients {:.1} µs",
                    rate.client_cpu_us
                );
            }
        }
    }

    pub fn print_targets(&self) {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        println!("targets (GetVersion):");
        for (placement, latencies, _) in &self.latencies {
            let p50 = latencies[0].percentile_us(50);
            let p99 = latencies[0].percentile_us(99);
            println!(
                "  {}: p50 < {TARGET_P50_US} µs {} ({p50:.1}), p99 < {TARGET_P99_US} µs {} ({p99:.1})",
                placement.label,
                verdict(p50 < TARGET_P50_US),
                verdict(p99 < TARGET_P99_US),
            );
        }
        let single = self.single[0].per_second / self.single[QMP].per_second;
        let concurrent = self.concurrent[0].per_second / self.concurrent[QMP].per_second;
        println!(
            "  rate ≥ {TARGET_RATE_RATIO}× QMP: 1 client {} ({single:.2}×), {} clients {} ({concurrent:.2}×)",
            verdict(single >= TARGET_RATE_RATIO),
            self.concurrent_clients,
            verdict(concurrent >= TARGET_RATE_RATIO),
        );
    }
}

pub fn print_preface(config: &Config) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("control bench: vmm control socket against QEMU QMP, same parked guest, one run");
    println!(
        "host: {cpus} CPUs, kernel {}, {}",
        first_line("/proc/sys/kernel/osrelease"),
        qemu_version(&config.qemu_bin)
    );
    println!(
        "latency: {} requests after {} warm-up, 1 client; rates: 1 client × {} and {} clients × {}, \
         median of {} round(s)",
        config.requests,
        config.warmup,
        config.requests,
        config.clients,
        config.per_client,
        config.rounds
    );
    if config.dev_server {
        println!(
            "!!! BENCH_DEV_SERVER=1: the vmm column is a server thread inside the bench, NOT vmm"
        );
    }
}

pub fn qemu_version(qemu: &Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_string))
        .unwrap_or_else(|| "QEMU version unknown".into())
}

pub fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
