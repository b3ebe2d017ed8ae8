//! Host benchmark: `vmm` against QEMU, side by side in one run, on the same tiny guest.
//!
//! `cargo bench --bench host` boots a hand-assembled guest of a few instructions (print `X`
//! on COM1, then triple-fault or park) under both VMMs on this host's `/dev/kvm` and
//! measures what the VMM itself costs:
//!
//! 1. **Start-up latency**: time from spawning the VMM to the first byte of guest serial
//!    output on its stdout (a pipe), i.e. exec to the guest's first I/O exit, seen from
//!    outside. Runs alternate vmm/QEMU so both see the same host load.
//! 2. **Memory overhead**: with 256 MiB of guest RAM and a guest that prints `X` and parks
//!    (`cli; hlt`), `/proc/PID/smaps` is read once the `X` arrives (plus a short settle):
//!    overhead = total Rss minus the Rss of the guest RAM mapping, which is identified as the
//!    one anonymous mapping whose size is exactly the guest RAM size. Total RSS and PSS are
//!    reported too. The VMM is then stopped with SIGTERM. Rss counts pages that every VM on
//!    the host shares (the VMM's binary text, shared libraries) in full in each VM, so the
//!    bench also runs several VMs at once (`BENCH_MEM_VMS`) and reports, per VM and without
//!    guest RAM, the **private** overhead (Private_Clean + Private_Dirty: the pages only that
//!    VM maps, what one more VM adds to the host) and the **PSS** overhead (shared pages
//!    divided between the processes mapping them).
//! 3. **Throughput**: complete VMs (spawn, print `X`, triple fault, VMM exits) run one after
//!    the other; VMs per second from the total wall time. Batches alternate vmm/QEMU.
//!
//! Both VMMs boot the same file: an ELF64 with a Xen PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`),
//! which QEMU's `-kernel` needs and vmm also accepts (32-bit flat protected mode entry).
//! The guest code means the same in 32-bit and 64-bit mode. The 64-bit ELF entry of vmm
//! (no PVH note) is timed as an extra row of the start-up measurement, and so is vmm in
//! its jail (`--jail`), whose throughput is measured too: against plain vmm, that is the
//! jail's cost (its memory is not: the VMM is then the reaper's child, not the process
//! spawned).
//!
//! Environment: `BENCH_RUNS` (start-up runs per VMM, default 50), `BENCH_VMS` (VMs per VMM
//! for throughput, default 50), `BENCH_MEM_RUNS` (default 5), `BENCH_MEM_VMS` (VMs running
//! at once for the private and PSS figures, default 4), `BENCH_VMM` (another vmm
//! binary; default the one Cargo built), `BENCH_QEMU` (default `qemu-system-x86_64` on
//! `PATH`). Run without `--bench` (as `cargo test --benches` does), the defaults shrink
//! tenfold (`BENCH_MEM_VMS` to 2) to a smoke run. The bench fails loudly, with a non-zero status, when `/dev/kvm` or
//! QEMU is missing, or when either VMM does not run the tiny guest.

#[path = "../common/mod.rs"]
mod common;
mod measure;
mod report;
mod vmm;

use common::{find_in_path, load_average, tiny_elf};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use measure::{MemoryReport, measure_memory, measure_startup, measure_throughput};
use report::{print_preface, print_table};
use vmm::{Vmm, preflight};

/// Guest RAM for every run, in MiB.
const GUEST_MEM_MIB: u64 = 256;
/// The byte the guest prints first.
const MARKER: u8 = b'X';
/// How long one VM may take before the bench gives up on it.
const VM_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between the guest's first byte and reading smaps, so the VMM finishes its set-up.
const MEM_SETTLE: Duration = Duration::from_millis(300);
/// vmm's exit status for a guest reset (triple fault).
const VMM_RESET_STATUS: i32 = 32;

fn main() {
    let config = Config::from_env();
    let scratch = Scratch::new();
    let guests = Guests::write(&scratch);
    let vmms = [Vmm::ours(&config), Vmm::qemu(&config)];
    let vmm_elf64 = Vmm::ours_elf64(&config);
    let vmm_jailed = Vmm::ours_jailed(&config);

    print_preface(&config, &vmms);
    for vmm in vmms.iter().chain([&vmm_elf64, &vmm_jailed]) {
        preflight(vmm, &guests, &scratch);
    }

    let load_before = load_average();
    let startup = measure_startup(
        &[&vmms[0], &vmms[1], &vmm_elf64, &vmm_jailed],
        &guests,
        &scratch,
        &config,
    );
    let memory: Vec<MemoryReport> = vmms
        .iter()
        .map(|vmm| measure_memory(vmm, &guests, &scratch, &config))
        .collect();
    let [ours, qemu] = vmms;
    let throughput = measure_throughput(&[ours, qemu, vmm_jailed], &guests, &scratch, config.vms);
    let load_after = load_average();

    print_table(&startup, &memory, &throughput, &config);
    println!("\nload average (1/5/15 min): before {load_before}, after {load_after}");
}

/// What to run, from the environment; checks that the host can run VMs at all.
struct Config {
    runs: usize,
    vms: usize,
    mem_runs: usize,
    mem_vms: usize,
    vmm_bin: PathBuf,
    qemu_bin: PathBuf,
}

impl Config {
    fn from_env() -> Config {
        require_kvm();
        let qemu_bin = std::env::var_os("BENCH_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let qemu_bin = find_in_path(&qemu_bin).unwrap_or_else(|| {
            fail(&format!(
                "QEMU ({}) IS NOT INSTALLED: the bench compares vmm against it \
                 (apt-get install qemu-system-x86, or set BENCH_QEMU)",
                qemu_bin.display()
            ))
        });
        // `cargo bench` passes --bench; without it (`cargo test --benches`) a short smoke run.
        let full = std::env::args().any(|arg| arg == "--bench");
        let scale = |n: usize| if full { n } else { n.div_ceil(10) };
        Config {
            runs: env_count("BENCH_RUNS", scale(50)),
            vms: env_count("BENCH_VMS", scale(50)),
            mem_runs: env_count("BENCH_MEM_RUNS", scale(5)),
            // Several, even in the smoke run: one would share its text with nobody.
            mem_vms: env_count("BENCH_MEM_VMS", if full { 4 } else { 2 }),
            vmm_bin: std::env::var_os("BENCH_VMM")
                .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vmm")), PathBuf::from),
            qemu_bin,
        }
    }
}

/// Says loudly what is wrong and exits non-zero.
fn fail(message: &str) -> ! {
    eprintln!("\n!!! host bench FAILED: {message}\n");
    let _ = std::fs::remove_dir_all(Scratch::dir());
    std::process::exit(1);
}

fn require_kvm() {
    common::kvm_usable().unwrap_or_else(|err| fail(&err));
}

fn env_count(name: &str, default: usize) -> usize {
    common::env_count(name, default).unwrap_or_else(|err| fail(&err))
}

// ---------------------------------------------------------------------------------------
// The tiny guests.

/// Guest machine code, valid in both 32-bit protected mode and 64-bit long mode.
mod code {
    /// `mov dx, 0x3f8; mov al, byte; out dx, al`: one byte on COM1.
    pub fn print(byte: u8) -> Vec<u8> {
        vec![0x66, 0xba, 0xf8, 0x03, 0xb0, byte, 0xee]
    }

    /// `ud2` with no IDT: the #UD cannot be delivered and becomes a triple fault.
    pub const TRIPLE_FAULT: [u8; 2] = [0x0f, 0x0b];

    /// `cli; hlt; jmp back`: park forever without using the host CPU.
    pub const PARK: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];
}

/// The guest files on disk.
struct Guests {
    /// Prints `X`, then triple-faults; PVH note.
    fault: PathBuf,
    /// Prints `X`, then parks; PVH note.
    park: PathBuf,
    /// Prints `X`, then triple-faults; no PVH note (vmm's 64-bit ELF entry).
    fault_elf64: PathBuf,
}

impl Guests {
    fn write(scratch: &Scratch) -> Guests {
        let fault = [code::print(MARKER), code::TRIPLE_FAULT.to_vec()].concat();
        let park = [code::print(MARKER), code::PARK.to_vec()].concat();
        Guests {
            fault: scratch.write("fault-pvh.elf", &tiny_elf(&fault, true)),
            park: scratch.write("park-pvh.elf", &tiny_elf(&park, true)),
            fault_elf64: scratch.write("fault-elf64.elf", &tiny_elf(&fault, false)),
        }
    }
}

/// A scratch directory, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("vmm-bench-host-{}", std::process::id()))
    }

    fn new() -> Scratch {
        let dir = Scratch::dir();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| fail(&format!("cannot create {}: {err}", dir.display())));
        Scratch { dir }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        let written = File::create(&path).and_then(|mut file| file.write_all(bytes));
        if let Err(err) = written {
            fail(&format!("cannot write {}: {err}", path.display()));
        }
        path
    }

    fn stderr_log(&self) -> PathBuf {
        self.dir.join("vmm-stderr.log")
    }

    /// The stderr log of the `index`th of several VMs running at once.
    fn stderr_log_of(&self, index: usize) -> PathBuf {
        self.dir.join(format!("vmm-stderr-{index}.log"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
