//! Control-socket benchmark: vmm's control socket against QEMU's QMP, side by side in one run.
//!
//! `cargo bench --bench control` starts both VMMs on the same tiny parked guest (an ELF with
//! a Xen PVH note whose code prints `X` on COM1, then `cli; hlt` forever), waits for the `X`
//! and for the control socket to answer, and then measures the cost of one control round trip:
//!
//! * **vmm**: `vmm run --mem 256 --socket S guest.elf`, driven through
//!   `vm_control::client::Client` (one blocking `SOCK_SEQPACKET` connection per client, 64-byte
//!   request, 1024-byte reply). The request is `GetVersion`, the cheapest round trip, and again
//!   `GetStats`. Every reply is checked: the client checks the id echo, the bench checks the
//!   version range (contains 1) and the statistics (1 vCPU, 256 MiB of guest RAM).
//! * **QEMU**: the same guest on the lean microvm command line of `benches/host/vmm.rs`, plus one
//!   `-qmp unix:Qi,server=on,wait=off` monitor per concurrent client (a QMP monitor serves one
//!   connection at a time). A small QMP client reads the greeting, negotiates with
//!   `qmp_capabilities`, then sends `{"execute":"query-status"}` and reads one JSON line per
//!   reply, skipping asynchronous events; every reply must be a `"return"` with a `"status"`.
//!
//! Measures, for each side:
//!
//! 1. **Latency**: one client, sequential requests after a warm-up, each timed on its own;
//!    p50 and p99. Placement decides this figure on a small host, so it is measured twice
//!    with every VMM thread pinned to the first CPU: the client thread pinned to that same
//!    CPU (a round trip is two context switches), then to a second CPU (each message must
//!    wake the other CPU: an IPI, and on a virtualised host a wake-up from `hlt`). Unpinned,
//!    the scheduler picks one of the two per run.
//! 2. **Rate**: requests per second with 1 client and with 32 concurrent clients, each client
//!    its own connection and thread, all released together by a barrier; total requests over
//!    the wall time until the last client is done. Nothing is pinned. Each rate is the median
//!    of a few rounds that alternate vmm and QEMU, so both see the same host load.
//! 3. **Floor**: the same datagrams over a `SOCK_SEQPACKET` socketpair to an echo thread,
//!    pinned like the latency runs: what the kernel and host charge before any VMM code runs.
//! 4. **CPU per request** in the rate runs: the VMM process's CPU time (its threads'
//!    `schedstat`) and the bench's own (the clients', `getrusage`), divided by the requests.
//!
//! The table's last column is vmm's advantage: QEMU ÷ vmm for latencies, vmm ÷ QEMU for rates
//! (above 1 means vmm is better). QMP's `query-status` is QEMU's cheapest useful request and is
//! the QEMU figure for both the `GetVersion` and the `GetStats` rows.
//!
//! Environment: `BENCH_REQUESTS` (timed sequential requests, default 20000), `BENCH_WARMUP`
//! (default 2000), `BENCH_CLIENTS` (default 32), `BENCH_PER_CLIENT` (requests per concurrent
//! client, default 2000), `BENCH_ROUNDS` (rate rounds, default 3), `BENCH_VMM` (another vmm
//! binary; default the one Cargo built), `BENCH_QEMU` (default `qemu-system-x86_64` on
//! `PATH`). `BENCH_DEV_SERVER=1` replaces the vmm process by a throwaway server thread inside
//! the bench built on `vm_control::server` (for developing the harness, and as a baseline for
//! the protocol crate alone); its figures are labelled as such and are not vmm's. Run without
//! `--bench` (as `cargo test --benches` does) the counts shrink to a smoke run. The bench fails
//! loudly, with a non-zero status, when `/dev/kvm` or QEMU is missing, when either VMM does not
//! start the guest or answer on its socket, or when any reply is wrong.

mod clients;
#[path = "../common/mod.rs"]
mod common;
mod dev_server;
mod measure;
mod report;
mod server;

use common::{find_in_path, load_average, tiny_elf};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use vm_control::wire::Request;

use clients::Target;
use measure::{Latency, Placement, allowed_cpus, measure_floor, measure_latency, measure_rates};
use report::{Report, print_preface};
use server::Server;

/// Guest RAM, MiB.
const GUEST_MEM_MIB: u64 = 256;
/// The byte the guest prints once it runs.
const MARKER: u8 = b'X';
/// How long a VMM may take to print the marker and open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one request may wait for its reply before the bench gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Targets for vmm.
const TARGET_P50_US: f64 = 15.0;
const TARGET_P99_US: f64 = 50.0;
const TARGET_RATE_RATIO: f64 = 20.0;

fn main() {
    let config = Config::from_env();
    let scratch = Scratch::new();
    let guest = scratch.write("park-pvh.elf", &tiny_elf(&park_code(), true));
    print_preface(&config);

    let load_before = load_average();
    let vmm = Server::start_vmm(&config, &guest, &scratch);
    let qemu = Server::start_qemu(&config, &guest, &scratch);
    let version = Target::vmm(&vmm, Request::GetVersion);
    let stats = Target::vmm(&vmm, Request::GetStats);
    let qmp = Target::qmp(&qemu);

    let targets = [&version, &stats, &qmp];

    let cpus = allowed_cpus();
    let latencies: Vec<(Placement, [Latency; 3], Latency)> = Placement::all(&cpus)
        .into_iter()
        .map(|placement| {
            vmm.pin(&[placement.vmm_cpu]);
            qemu.pin(&[placement.vmm_cpu]);
            let latencies = targets.map(|target| measure_latency(target, &config, placement));
            let floor = measure_floor(&config, placement);
            (placement, latencies, floor)
        })
        .collect();
    vmm.pin(&cpus);
    qemu.pin(&cpus);
    let single = measure_rates(&targets, 1, config.requests, &config);
    let concurrent = measure_rates(&targets, config.clients, config.per_client, &config);
    let load_after = load_average();
    vmm.stop();
    qemu.stop();

    let report = Report {
        latencies,
        single,
        concurrent,
        concurrent_clients: config.clients,
    };
    report.print_table(&config, vmm.label);
    report.print_floor();
    report.print_cpu();
    println!("\nload average (1/5/15 min): before {load_before}, after {load_after}");
    report.print_targets();
}

// ---------------------------------------------------------------------------------------
// Configuration and failure.

/// What to run, from the environment; checks that the host can run VMs at all.
struct Config {
    requests: usize,
    warmup: usize,
    clients: usize,
    per_client: usize,
    rounds: usize,
    vmm_bin: PathBuf,
    qemu_bin: PathBuf,
    dev_server: bool,
}

impl Config {
    fn from_env() -> Config {
        require_kvm();
        let qemu_bin = std::env::var_os("BENCH_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let qemu_bin = find_in_path(&qemu_bin).unwrap_or_else(|| {
            fail(&format!(
                "QEMU ({}) IS NOT INSTALLED: the bench compares vmm against its QMP \
                 (apt-get install qemu-system-x86, or set BENCH_QEMU)",
                qemu_bin.display()
            ))
        });
        // `cargo bench` passes --bench; without it (`cargo test --benches`) a short smoke run.
        let full = std::env::args().any(|arg| arg == "--bench");
        let pick = |full_count: usize, smoke_count: usize| {
            if full { full_count } else { smoke_count }
        };
        Config {
            requests: env_count("BENCH_REQUESTS", pick(20_000, 500)),
            warmup: env_count("BENCH_WARMUP", pick(2_000, 50)),
            clients: env_count("BENCH_CLIENTS", 32),
            per_client: env_count("BENCH_PER_CLIENT", pick(2_000, 50)),
            rounds: env_count("BENCH_ROUNDS", pick(3, 1)),
            vmm_bin: std::env::var_os("BENCH_VMM")
                .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vmm")), PathBuf::from),
            qemu_bin,
            dev_server: std::env::var("BENCH_DEV_SERVER").is_ok_and(|value| value == "1"),
        }
    }
}

/// Processes the bench started, killed by [`fail`] so that none outlives a failed run.
static SPAWNED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Says loudly what is wrong, kills the VMMs the bench started and exits non-zero.
fn fail(message: &str) -> ! {
    eprintln!("\n!!! control bench FAILED: {message}\n");
    let pids = SPAWNED.lock().map(|pids| pids.clone()).unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) on a child this process spawned and has not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_dir_all(Scratch::dir());
    std::process::exit(1);
}

fn require_kvm() {
    common::kvm_usable().unwrap_or_else(|err| fail(&err));
}

fn env_count(name: &str, default: usize) -> usize {
    common::env_count(name, default).unwrap_or_else(|err| fail(&err))
}

/// A scratch directory for the guest, the sockets and the logs; removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("vmm-bench-control-{}", std::process::id()))
    }

    fn new() -> Scratch {
        let dir = Scratch::dir();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| fail(&format!("cannot create {}: {err}", dir.display())));
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        if let Err(err) = std::fs::write(&path, bytes) {
            fail(&format!("cannot write {}: {err}", path.display()));
        }
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// The tiny guest (the same bytes as benches/host/main.rs builds).

/// `mov dx, 0x3f8; mov al, 'X'; out dx, al; cli; hlt; jmp back to the hlt`: valid in 32-bit
/// and 64-bit mode.
fn park_code() -> Vec<u8> {
    vec![
        0x66, 0xba, 0xf8, 0x03, 0xb0, MARKER, 0xee, 0xfa, 0xf4, 0xeb, 0xfd,
    ]
}
