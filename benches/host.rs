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

mod common;

use common::{find_in_path, load_average, tiny_elf};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------------------
// The VMMs.

/// One VMM and how to run the tiny guest under it.
struct Vmm {
    name: &'static str,
    program: PathBuf,
    /// Arguments before the kernel path.
    args: Vec<String>,
    /// Option that precedes the kernel path (`-kernel` for QEMU), if any.
    kernel_flag: Option<&'static str>,
    /// Whether to boot [`Guests::fault_elf64`] rather than the PVH guest.
    elf64: bool,
    /// The exit status that means "the guest triple-faulted".
    reset_status: i32,
}

impl Vmm {
    fn ours(config: &Config) -> Vmm {
        Vmm {
            name: "vmm",
            program: config.vmm_bin.clone(),
            // Without the jail, so that the spawned process is the VMM whose memory is
            // measured; the jail's cost is the `vmm --jail` row.
            args: [
                "run",
                "--no-jail",
                "--mem",
                &GUEST_MEM_MIB.to_string(),
                "--serial",
                "stdio",
            ]
            .map(String::from)
            .to_vec(),
            kernel_flag: None,
            elf64: false,
            reset_status: VMM_RESET_STATUS,
        }
    }

    /// vmm in its jail (`--jail`): namespaces, an empty root, no capabilities, and the
    /// reaper's fork. Its start-up and throughput against plain vmm are the jail's cost.
    fn ours_jailed(config: &Config) -> Vmm {
        let mut vmm = Vmm::ours(config);
        vmm.name = "vmm --jail";
        for arg in &mut vmm.args {
            if arg == "--no-jail" {
                *arg = "--jail".to_string();
            }
        }
        vmm
    }

    fn ours_elf64(config: &Config) -> Vmm {
        Vmm {
            name: "vmm (64-bit ELF entry)",
            elf64: true,
            ..Vmm::ours(config)
        }
    }

    /// The leanest QEMU that runs the tiny guest: microvm with its default firmware (which
    /// boots the PVH `-kernel`), no legacy devices but the ISA serial port, no ACPI (the
    /// biggest saving), no PCIe, no option ROMs, no display, no default devices or config;
    /// `-no-reboot` turns the triple fault into a clean exit (status 0). See
    /// docs/PERFORMANCE.md for what each option was worth.
    fn qemu(config: &Config) -> Vmm {
        let machine =
            "microvm,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off,pcie=off,x-option-roms=off";
        let args = format!(
            "-M {machine} -accel kvm -cpu host -m {GUEST_MEM_MIB} -nodefaults -no-user-config \
             -display none -serial stdio -no-reboot"
        );
        Vmm {
            name: "QEMU",
            program: config.qemu_bin.clone(),
            args: args.split_whitespace().map(String::from).collect(),
            kernel_flag: Some("-kernel"),
            elf64: false,
            reset_status: 0,
        }
    }

    fn command(&self, kernel: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command.args(self.kernel_flag);
        command.arg(kernel);
        command
    }

    /// The guest that prints and triple-faults, in the form this VMM entry boots.
    fn fault_guest<'a>(&self, guests: &'a Guests) -> &'a Path {
        if self.elf64 {
            &guests.fault_elf64
        } else {
            &guests.fault
        }
    }

    fn command_line(&self, kernel: &Path) -> String {
        let command = self.command(kernel);
        let args = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned());
        std::iter::once(self.program.display().to_string())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Spawns the VMM on `kernel`: stdin empty, stdout a pipe, stderr to `stderr_log`.
    fn spawn(&self, kernel: &Path, stderr_log: &Path) -> Result<Child, String> {
        let stderr = File::create(stderr_log)
            .map_err(|err| format!("cannot create {}: {err}", stderr_log.display()))?;
        self.command(kernel)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", self.program.display()))
    }
}

// ---------------------------------------------------------------------------------------
// Running one VM.

/// Waits until the child's stdout has a byte (or EOF) or `deadline` passes.
fn wait_readable(stdout: &impl AsRawFd, deadline: Instant) -> Result<(), String> {
    let mut poll_fd = libc::pollfd {
        fd: stdout.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no guest serial output within {VM_TIMEOUT:?}"));
        }
        let timeout_ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `poll_fd` is a valid pollfd for the duration of the call; nfds is 1.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms.max(1)) };
        match ready {
            n if n > 0 => return Ok(()),
            0 => continue,
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("poll on the VMM's stdout: {err}"));
                }
            }
        }
    }
}

/// Reads from the child's stdout until EOF (the VMM has exited) or the deadline.
fn read_to_eof(
    stdout: &mut impl ReadFd,
    deadline: Instant,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut buffer = [0u8; 4096];
    loop {
        wait_readable(stdout, deadline)?;
        match stdout.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buffer[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("reading the VMM's stdout: {err}")),
        }
    }
}

trait ReadFd: Read + AsRawFd {}
impl<T: Read + AsRawFd> ReadFd for T {}

/// Reads the first byte of guest output: `Ok(None)` at EOF (the VMM exited silently).
fn read_first_byte(stdout: &mut impl ReadFd, deadline: Instant) -> Result<Option<u8>, String> {
    let mut byte = [0u8; 1];
    loop {
        wait_readable(stdout, deadline)?;
        match stdout.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("reading the VMM's stdout: {err}")),
        }
    }
}

/// Describes an exit status the way a shell would.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{status}"),
    }
}

/// One complete VM on the triple-fault guest: returns the time from spawn to the first byte
/// of guest output. Checks that the byte is the marker and that the VMM reports the reset.
fn run_to_reset(vmm: &Vmm, guests: &Guests, scratch: &Scratch) -> Result<Duration, String> {
    let log = scratch.stderr_log();
    let start = Instant::now();
    let mut child = vmm.spawn(vmm.fault_guest(guests), &log)?;
    let deadline = start + VM_TIMEOUT;
    let stdout = child.stdout.as_mut().expect("stdout was set to a pipe");
    let first = read_first_byte(stdout, deadline);
    let latency = start.elapsed();
    let mut rest = Vec::new();
    let drained = first
        .clone()
        .and_then(|_| read_to_eof(stdout, deadline, &mut rest));
    if let Err(err) = drained {
        let _ = child.kill();
        let _ = child.wait();
        return Err(with_stderr(err, &log));
    }
    let status = child
        .wait()
        .map_err(|err| format!("waiting for {}: {err}", vmm.name))?;
    check_reset(vmm, first, &rest, status).map_err(|err| with_stderr(err, &log))?;
    Ok(latency)
}

fn check_reset(
    vmm: &Vmm,
    first: Result<Option<u8>, String>,
    rest: &[u8],
    status: ExitStatus,
) -> Result<(), String> {
    let output: Vec<u8> = first?.into_iter().chain(rest.iter().copied()).collect();
    if output.first() != Some(&MARKER) {
        return Err(format!(
            "guest serial output was {:?}, expected it to start with {:?}; {}",
            String::from_utf8_lossy(&output),
            MARKER as char,
            describe(status)
        ));
    }
    if status.code() != Some(vmm.reset_status) {
        return Err(format!(
            "{} after the guest's triple fault, expected exit status {}",
            describe(status),
            vmm.reset_status
        ));
    }
    Ok(())
}

fn with_stderr(error: String, log: &Path) -> String {
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    let stderr = stderr.trim();
    if stderr.is_empty() {
        error
    } else {
        format!("{error}\n--- its stderr ---\n{stderr}\n------------------")
    }
}

/// Runs each VMM once on the tiny guest; fails loudly, saying what went wrong, if one cannot.
fn preflight(vmm: &Vmm, guests: &Guests, scratch: &Scratch) {
    if let Err(err) = run_to_reset(vmm, guests, scratch) {
        fail(&format!(
            "{} DOES NOT RUN THE TINY GUEST\ncommand: {}\n{err}",
            vmm.name,
            vmm.command_line(vmm.fault_guest(guests))
        ));
    }
}

// ---------------------------------------------------------------------------------------
// 1. Start-up latency.

/// Start-up latencies of one VMM, sorted.
struct Latencies {
    name: &'static str,
    sorted: Vec<Duration>,
}

fn measure_startup(
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
    fn min(&self) -> f64 {
        millis(self.sorted[0])
    }

    fn median(&self) -> f64 {
        let n = self.sorted.len();
        (millis(self.sorted[(n - 1) / 2]) + millis(self.sorted[n / 2])) / 2.0
    }

    /// Nearest-rank 90th percentile.
    fn p90(&self) -> f64 {
        let rank = (self.sorted.len() * 9).div_ceil(10);
        millis(self.sorted[rank.max(1) - 1])
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// 2. Memory.

/// One mapping of /proc/PID/smaps, with the fields the bench needs (kB).
struct Mapping {
    header: String,
    anonymous: bool,
    size_kb: u64,
    rss_kb: u64,
    pss_kb: u64,
    /// Private_Clean + Private_Dirty: pages no other process maps.
    private_kb: u64,
}

/// Parses /proc/PID/smaps into its mappings.
fn parse_smaps(text: &str) -> Vec<Mapping> {
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
struct MemoryFigures {
    overhead_kb: u64,
    private_overhead_kb: u64,
    pss_overhead_kb: u64,
    rss_kb: u64,
    pss_kb: u64,
    guest_rss_kb: u64,
}

/// Splits the process's memory into guest RAM (the one anonymous mapping of exactly the
/// guest RAM size) and the rest.
fn memory_figures(smaps: &str) -> Result<MemoryFigures, String> {
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
fn measure_memory_once(
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
fn stop(child: &mut Child, vmm: &Vmm) -> Result<(), String> {
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
struct MemoryReport {
    alone: MemoryFigures,
    together: MemoryFigures,
}

fn measure_memory(vmm: &Vmm, guests: &Guests, scratch: &Scratch, config: &Config) -> MemoryReport {
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
fn median_figures(samples: &[MemoryFigures]) -> MemoryFigures {
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
const THROUGHPUT_BATCH: usize = 10;

/// VMs per second for each VMM: `vms` complete VMs each, in alternating batches.
fn measure_throughput(vmms: &[Vmm], guests: &Guests, scratch: &Scratch, vms: usize) -> Vec<f64> {
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

// ---------------------------------------------------------------------------------------
// Report.

fn print_preface(config: &Config, vmms: &[Vmm]) {
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

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn print_table(
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
fn print_targets(startup: &Latencies, memory: MemoryReport, vms: usize) {
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
