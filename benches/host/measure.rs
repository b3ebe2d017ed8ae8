//! The three measurements: start-up latency (spawn to first serial byte), memory overhead
//! (from `/proc/PID/smaps`, one VM alone and several at once) and throughput (complete VMs
//! per second).

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::vmm::{Vmm, read_first_byte, run_to_reset, with_stderr};
use crate::{Config, GUEST_MEM_MIB, Guests, MARKER, MEM_SETTLE, Scratch, VM_TIMEOUT, fail};

// ---------------------------------------------------------------------------------------
// 1. Start-up latency.

/// Start-up latencies of one VMM, sorted.
pub struct Latencies {
    pub name: &'static str,
    pub sorted: Vec<Duration>,
}

pub fn measure_startup(
    vmms: &[&Vmm],
    guests: &Guests,
    scratch: &Scratch,
    config: &Config,
) -> Vec<Latencies> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(config.runs); vmms.len()];
    for _ in 0..config.runs {
        for (vmm, samples) in vmms.iter().zip(samples.iter_mut()) {
            let latency = run_to_reset(vmm, guests, scratch)
                .unwrap_or_else(|err| fail(&format!("{} start-up run: {err}", vmm.name)));
            samples.push(latency);
        }
    }
    vmms.iter()
        .zip(samples)
        .map(|(vmm, mut sorted)| {
            sorted.sort();
            Latencies {
                name: vmm.name,
                sorted,
            }
        })
        .collect()
}

impl Latencies {
    pub fn min(&self) -> f64 {
        millis(self.sorted[0])
    }

    pub fn median(&self) -> f64 {
        let n = self.sorted.len();
        (millis(self.sorted[(n - 1) / 2]) + millis(self.sorted[n / 2])) / 2.0
    }

    /// Nearest-rank 90th percentile.
    pub fn p90(&self) -> f64 {
        let rank = (self.sorted.len() * 9).div_ceil(10);
        millis(self.sorted[rank.max(1) - 1])
    }
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// 2. Memory.

/// One mapping of /proc/PID/smaps, with the fields the bench needs (kB).
pub struct Mapping {
    pub header: String,
    pub anonymous: bool,
    pub size_kb: u64,
    pub rss_kb: u64,
    pub pss_kb: u64,
    /// Private_Clean + Private_Dirty: pages no other process maps.
    pub private_kb: u64,
}

/// Parses /proc/PID/smaps into its mappings.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let fields: Vec<&str> = line.split_whitespace().collect();
            mappings.push(Mapping {
                header: line.to_string(),
                anonymous: fields.len() == 5 && fields[4] == "0",
                size_kb: 0,
                rss_kb: 0,
                pss_kb: 0,
                private_kb: 0,
            });
            continue;
        }
        let (Some(mapping), Some(value)) = (mappings.last_mut(), fields.next()) else {
            continue;
        };
        let value = value.parse().unwrap_or(0);
        match first {
            "Size:" => mapping.size_kb = value,
            "Rss:" => mapping.rss_kb = value,
            "Pss:" => mapping.pss_kb = value,
            "Private_Clean:" | "Private_Dirty:" => mapping.private_kb += value,
            _ => {}
        }
    }
    mappings
}

/// Memory figures for one VMM process, in kB. The three overheads leave the guest RAM
/// mapping out; they differ in how they count pages other processes map too (the VMM's
/// binary text, shared libraries): Rss counts them whole, Pss divides each page by the
/// number of processes mapping it, private leaves them out.
#[derive(Clone, Copy, Default)]
pub struct MemoryFigures {
    pub overhead_kb: u64,
    pub private_overhead_kb: u64,
    pub pss_overhead_kb: u64,
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub guest_rss_kb: u64,
}

/// Splits the process's memory into guest RAM (the one anonymous mapping of exactly the
/// guest RAM size) and the rest.
pub fn memory_figures(smaps: &str) -> Result<MemoryFigures, String> {
    let mappings = parse_smaps(smaps);
    let guest_kb = GUEST_MEM_MIB * 1024;
    let guest: Vec<&Mapping> = mappings
        .iter()
        .filter(|m| m.anonymous && m.size_kb == guest_kb)
        .collect();
    let [guest] = guest[..] else {
        let headers: Vec<&str> = guest.iter().map(|m| m.header.as_str()).collect();
        return Err(format!(
            "expected exactly one anonymous {GUEST_MEM_MIB} MiB mapping (guest RAM), found {}: {headers:?}",
            guest.len()
        ));
    };
    let sum = |field: fn(&Mapping) -> u64| mappings.iter().map(field).sum::<u64>();
    let (rss_kb, pss_kb) = (sum(|m| m.rss_kb), sum(|m| m.pss_kb));
    Ok(MemoryFigures {
        overhead_kb: rss_kb - guest.rss_kb,
        private_overhead_kb: sum(|m| m.private_kb) - guest.private_kb,
        pss_overhead_kb: pss_kb - guest.pss_kb,
        rss_kb,
        pss_kb,
        guest_rss_kb: guest.rss_kb,
    })
}

/// `count` VMs on the parking guest, all running at once: each one's memory once every
/// guest has printed (plus the settle), then SIGTERM to all. With one VM this is the
/// classic reading; with several, pages they share (the VMM's text) are split between
/// them in Pss and drop out of each one's private pages, as on a host running many VMs.
pub fn measure_memory_once(
    vmm: &Vmm,
    guests: &Guests,
    scratch: &Scratch,
    count: usize,
) -> Result<Vec<MemoryFigures>, String> {
    let mut running: Vec<(Child, PathBuf)> = Vec::with_capacity(count);
    let figures = (|| {
        for index in 0..count {
            let log = scratch.stderr_log_of(index);
            let child = vmm.spawn(&guests.park, &log)?;
            running.push((child, log));
        }
        let deadline = Instant::now() + VM_TIMEOUT;
        for (child, log) in &mut running {
            let stdout = child.stdout.as_mut().expect("stdout was set to a pipe");
            match read_first_byte(stdout, deadline) {
                Ok(Some(MARKER)) => {}
                Ok(other) => {
                    let err = format!("first guest output byte was {other:?}, expected 'X'");
                    return Err(with_stderr(err, log));
                }
                Err(err) => return Err(with_stderr(err, log)),
            }
        }
        std::thread::sleep(MEM_SETTLE);
        running
            .iter()
            .map(|(child, log)| {
                std::fs::read_to_string(format!("/proc/{}/smaps", child.id()))
                    .map_err(|err| format!("reading /proc/{}/smaps: {err}", child.id()))
                    .and_then(|smaps| memory_figures(&smaps))
                    .map_err(|err| with_stderr(err, log))
            })
            .collect::<Result<Vec<_>, String>>()
    })();
    // Every VM started is stopped, whatever went wrong above.
    let stopped: Result<Vec<()>, String> = running
        .iter_mut()
        .map(|(child, _)| stop(child, vmm))
        .collect();
    let figures = figures?;
    stopped?;
    Ok(figures)
}

/// SIGTERM, then wait (killing it if it does not go within the timeout).
pub fn stop(child: &mut Child, vmm: &Vmm) -> Result<(), String> {
    let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
    // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + VM_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} ignored SIGTERM for {VM_TIMEOUT:?}", vmm.name));
            }
            Err(err) => return Err(format!("waiting for {}: {err}", vmm.name)),
        }
    }
}

/// One VMM's memory: `alone`, a VM by itself (median of the runs); `together`, each VM
/// of `vms` running at once (median over every VM of every run).
#[derive(Clone, Copy)]
pub struct MemoryReport {
    pub alone: MemoryFigures,
    pub together: MemoryFigures,
}

pub fn measure_memory(
    vmm: &Vmm,
    guests: &Guests,
    scratch: &Scratch,
    config: &Config,
) -> MemoryReport {
    let runs = |count: usize| -> Vec<MemoryFigures> {
        (0..config.mem_runs)
            .flat_map(|_| {
                measure_memory_once(vmm, guests, scratch, count)
                    .unwrap_or_else(|err| fail(&format!("{} memory run: {err}", vmm.name)))
            })
            .collect()
    };
    MemoryReport {
        alone: median_figures(&runs(1)),
        together: median_figures(&runs(config.mem_vms)),
    }
}

/// The median of each field over `samples` (not empty).
pub fn median_figures(samples: &[MemoryFigures]) -> MemoryFigures {
    let median = |field: fn(&MemoryFigures) -> u64| {
        let mut values: Vec<u64> = samples.iter().map(field).collect();
        values.sort_unstable();
        values[values.len() / 2]
    };
    MemoryFigures {
        overhead_kb: median(|m| m.overhead_kb),
        private_overhead_kb: median(|m| m.private_overhead_kb),
        pss_overhead_kb: median(|m| m.pss_overhead_kb),
        rss_kb: median(|m| m.rss_kb),
        pss_kb: median(|m| m.pss_kb),
        guest_rss_kb: median(|m| m.guest_rss_kb),
    }
}

// ---------------------------------------------------------------------------------------
// 3. Throughput.

/// How many VMs one batch runs before the other VMM takes a turn.
pub const THROUGHPUT_BATCH: usize = 10;

/// VMs per second for each VMM: `vms` complete VMs each, in alternating batches.
pub fn measure_throughput(
    vmms: &[Vmm],
    guests: &Guests,
    scratch: &Scratch,
    vms: usize,
) -> Vec<f64> {
    let mut busy = vec![Duration::ZERO; vmms.len()];
    let mut done = 0;
    while done < vms {
        let batch = THROUGHPUT_BATCH.min(vms - done);
        for (vmm, busy) in vmms.iter().zip(busy.iter_mut()) {
            let start = Instant::now();
            for _ in 0..batch {
                if let Err(err) = run_to_reset(vmm, guests, scratch) {
                    fail(&format!("{} throughput run: {err}", vmm.name));
                }
            }
            *busy += start.elapsed();
        }
        done += batch;
    }
    busy.iter()
        .map(|busy| vms as f64 / busy.as_secs_f64())
        .collect()
}
