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

mod common;

use common::{find_in_path, load_average, tiny_elf};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use vm_control::client::Client;
use vm_control::wire::{REQUEST_SIZE, RESPONSE_SIZE, Request, Response};

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

// ---------------------------------------------------------------------------------------
// The VMMs under test.

/// A running VMM (or the development server) and the control sockets it serves.
struct Server {
    label: &'static str,
    child: Option<Child>,
    /// The control sockets: one for vmm, one QMP monitor per concurrent client for QEMU.
    sockets: Vec<PathBuf>,
    stderr_log: PathBuf,
}

impl Server {
    fn start_vmm(config: &Config, guest: &Path, scratch: &Scratch) -> Server {
        let socket = scratch.path("vmm.sock");
        if config.dev_server {
            dev_server::spawn(&socket);
            return Server {
                label: "dev server (NOT vmm)",
                child: None,
                sockets: vec![socket],
                stderr_log: scratch.path("none"),
            };
        }
        let mut command = Command::new(&config.vmm_bin);
        command.args(["run", "--mem", &GUEST_MEM_MIB.to_string(), "--socket"]);
        command.arg(&socket).arg(guest);
        let shown = command_line(&command);
        let server = Server::spawn("vmm", command, &shown, vec![socket], scratch);
        server.wait_for_vmm_socket();
        server
    }

    /// QEMU with the lean microvm options of benches/host/vmm.rs and one QMP monitor per client.
    fn start_qemu(config: &Config, guest: &Path, scratch: &Scratch) -> Server {
        let machine =
            "microvm,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off,pcie=off,x-option-roms=off";
        let options = format!(
            "-M {machine} -accel kvm -cpu host -m {GUEST_MEM_MIB} -nodefaults -no-user-config \
             -display none -serial stdio -no-reboot"
        );
        let sockets: Vec<PathBuf> = (0..config.clients)
            .map(|i| scratch.path(&format!("qmp-{i}.sock")))
            .collect();
        let mut command = Command::new(&config.qemu_bin);
        command.args(options.split_whitespace());
        command.arg("-kernel").arg(guest);
        let mut shown = String::new();
        for (index, socket) in sockets.iter().enumerate() {
            command
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", socket.display()));
            if index == 0 {
                shown = command_line(&command);
            }
        }
        if sockets.len() > 1 {
            shown += &format!(" ... (one -qmp per client: {} monitors)", sockets.len());
        }
        let server = Server::spawn("QEMU", command, &shown, sockets, scratch);
        server.wait_for_qmp_sockets();
        server
    }

    /// Spawns the VMM (stdout a pipe for the guest's serial output, stderr to a log) and waits
    /// for the guest's marker byte.
    fn spawn(
        label: &'static str,
        mut command: Command,
        shown: &str,
        sockets: Vec<PathBuf>,
        scratch: &Scratch,
    ) -> Server {
        let stderr_log = scratch.path(&format!("{label}-stderr.log"));
        let stderr = std::fs::File::create(&stderr_log)
            .unwrap_or_else(|err| fail(&format!("cannot create {}: {err}", stderr_log.display())));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| fail(&format!("cannot start {label} ({shown}): {err}")));
        if let Ok(mut pids) = SPAWNED.lock() {
            pids.push(child.id());
        }
        println!("{label:>4}: {shown}");
        let mut server = Server {
            label,
            child: Some(child),
            sockets,
            stderr_log,
        };
        server.wait_for_marker();
        server
    }

    fn wait_for_marker(&mut self) {
        let child = self.child.as_mut().expect("a spawned server has a child");
        let stdout = child.stdout.as_mut().expect("stdout was set to a pipe");
        match read_first_byte(stdout, Instant::now() + START_TIMEOUT) {
            Ok(Some(MARKER)) => {}
            Ok(None) => self.fail("THE GUEST DID NOT RUN: the VMM exited before any serial output"),
            Ok(other) => self.fail(&format!(
                "THE GUEST DID NOT RUN: first serial byte {other:?}, expected {:?}",
                MARKER as char
            )),
            Err(err) => self.fail(&format!("THE GUEST DID NOT RUN: {err}")),
        }
    }

    fn wait_for_vmm_socket(&self) {
        let socket = &self.sockets[0];
        self.wait_until("its control socket answers GetVersion", || {
            let mut client = Client::connect(socket).ok()?;
            client.set_timeout(Some(REPLY_TIMEOUT)).ok()?;
            client.request(Request::GetVersion).ok()
        });
    }

    fn wait_for_qmp_sockets(&self) {
        for socket in &self.sockets {
            self.wait_until("its QMP monitor answers", || {
                QmpSession::connect(socket).ok()
            });
        }
    }

    /// Retries `probe` until it gives a value, failing if the VMM exits or time runs out.
    fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) {
        let deadline = Instant::now() + START_TIMEOUT;
        while probe().is_none() {
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{} DID NOT SERVE within {START_TIMEOUT:?}: waiting until {what} \
                     (socket {})",
                    self.label,
                    self.sockets[0].display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Restricts every thread of the VMM to `cpus` (the development server is not pinned).
    fn pin(&self, cpus: &[usize]) {
        let Some(child) = &self.child else { return };
        let task_dir = format!("/proc/{}/task", child.id());
        let tasks = std::fs::read_dir(&task_dir)
            .unwrap_or_else(|err| self.fail(&format!("cannot list {task_dir}: {err}")));
        for task in tasks.flatten() {
            let tid = task.file_name().to_string_lossy().parse::<libc::pid_t>();
            let Ok(tid) = tid else { continue };
            if let Err(err) = set_affinity(tid, cpus) {
                self.fail(&format!("cannot pin thread {tid} to CPUs {cpus:?}: {err}"));
            }
        }
    }

    fn fail(&self, message: &str) -> ! {
        let stderr = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        fail(&format!(
            "{}: {message}\n--- its stderr ---\n{}\n------------------",
            self.label,
            stderr.trim()
        ))
    }

    /// SIGTERM, then wait (SIGKILL if it takes more than the start timeout).
    fn stop(&self) {
        let Some(child) = &self.child else { return };
        let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child with a valid pointer for its status.
        while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
            if Instant::now() > deadline {
                eprintln!("{} ignored SIGTERM; killing it", self.label);
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads the first byte of guest output: `Ok(None)` at EOF (the VMM exited).
fn read_first_byte(
    stdout: &mut (impl Read + AsRawFd),
    deadline: Instant,
) -> Result<Option<u8>, String> {
    let mut poll_fd = libc::pollfd {
        fd: stdout.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout_ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `poll_fd` is a valid pollfd for the duration of the call; nfds is 1.
    if unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) } <= 0 {
        return Err(format!("no guest serial output within {START_TIMEOUT:?}"));
    }
    let mut byte = [0u8; 1];
    match stdout.read(&mut byte) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(byte[0])),
        Err(err) => Err(format!("reading the VMM's stdout: {err}")),
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

/// One connection that can make checked round trips.
trait Session: Send {
    fn round_trip(&mut self) -> Result<(), String>;
}

/// What a measurement drives: a socket (or, for QMP, one socket per client) and a request.
struct Target {
    label: String,
    sockets: Vec<PathBuf>,
    /// The serving process, for its CPU time (None for the development server).
    pid: Option<u32>,
    kind: TargetKind,
}

#[derive(Clone, Copy)]
enum TargetKind {
    Vmm(Request),
    Qmp,
}

impl Target {
    fn vmm(server: &Server, request: Request) -> Target {
        Target {
            label: format!("{} {request:?}", server.label),
            sockets: server.sockets.clone(),
            pid: server.child.as_ref().map(Child::id),
            kind: TargetKind::Vmm(request),
        }
    }

    fn qmp(server: &Server) -> Target {
        Target {
            label: "QEMU QMP query-status".into(),
            sockets: server.sockets.clone(),
            pid: server.child.as_ref().map(Child::id),
            kind: TargetKind::Qmp,
        }
    }

    /// Opens the session for client number `index`.
    fn open(&self, index: usize) -> Box<dyn Session> {
        let opened: Result<Box<dyn Session>, String> = match self.kind {
            TargetKind::Vmm(request) => {
                VmmSession::connect(&self.sockets[0], request).map(|s| Box::new(s) as _)
            }
            TargetKind::Qmp => {
                let socket = &self.sockets[index % self.sockets.len()];
                QmpSession::connect(socket).map(|s| Box::new(s) as _)
            }
        };
        opened.unwrap_or_else(|err| fail(&format!("{}: client {index}: {err}", self.label)))
    }
}

/// A `vm_control` client repeating one request.
struct VmmSession {
    client: Client,
    request: Request,
}

impl VmmSession {
    fn connect(socket: &Path, request: Request) -> Result<VmmSession, String> {
        let client = Client::connect(socket).map_err(|err| err.to_string())?;
        client
            .set_timeout(Some(REPLY_TIMEOUT))
            .map_err(|err| format!("cannot set the client timeout: {err}"))?;
        Ok(VmmSession { client, request })
    }
}

impl Session for VmmSession {
    fn round_trip(&mut self) -> Result<(), String> {
        let response = self
            .client
            .request(self.request)
            .map_err(|err| format!("{:?}: {err}", self.request))?;
        check_vmm_reply(self.request, &response)
    }
}

/// The client already checked the id echo; this checks the payload.
fn check_vmm_reply(request: Request, response: &Response) -> Result<(), String> {
    let good = match (request, response) {
        (Request::GetVersion, Response::Version { min, max }) => *min <= 1 && 1 <= *max,
        (Request::GetStats, Response::Stats(stats)) => {
            stats.vcpu_count == 1 && stats.guest_memory_bytes == GUEST_MEM_MIB << 20
        }
        _ => false,
    };
    if good {
        Ok(())
    } else {
        Err(format!("{request:?} got the wrong reply: {response:?}"))
    }
}

/// A QMP client repeating `query-status`.
struct QmpSession {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
}

impl QmpSession {
    const QUERY_STATUS: &'static [u8] = b"{\"execute\":\"query-status\"}\n";

    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    fn connect(socket: &Path) -> Result<QmpSession, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|err| format!("cannot connect to QMP at {}: {err}", socket.display()))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|err| format!("cannot set the QMP read timeout: {err}"))?;
        let reader = BufReader::new(
            stream
                .try_clone()
                .map_err(|err| format!("cannot clone the QMP stream: {err}"))?,
        );
        let mut session = QmpSession {
            stream,
            reader,
            line: String::new(),
        };
        session.read_line()?;
        if !session.line.contains("\"QMP\"") {
            return Err(format!("expected the QMP greeting, got {:?}", session.line));
        }
        session.execute(b"{\"execute\":\"qmp_capabilities\"}\n")?;
        Ok(session)
    }

    fn read_line(&mut self) -> Result<(), String> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Err("QEMU closed the QMP connection".into()),
            Ok(_) => Ok(()),
            Err(err) => Err(format!("reading from QMP: {err}")),
        }
    }

    /// Sends one command and reads lines until its reply, which must be a `"return"`; leaves
    /// the reply in `self.line`.
    fn execute(&mut self, command: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(command)
            .map_err(|err| format!("writing to QMP: {err}"))?;
        loop {
            self.read_line()?;
            if self.line.starts_with("{\"return\"") {
                return Ok(());
            }
            if !self.line.contains("\"event\"") {
                return Err(format!(
                    "QMP answered {:?} to {:?}",
                    self.line.trim(),
                    String::from_utf8_lossy(command).trim()
                ));
            }
        }
    }
}

impl Session for QmpSession {
    fn round_trip(&mut self) -> Result<(), String> {
        self.execute(Self::QUERY_STATUS)?;
        if self.line.contains("\"status\"") {
            Ok(())
        } else {
            Err(format!(
                "query-status returned no status: {}",
                self.line.trim()
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurements.

/// Round-trip latencies of one target, sorted.
struct Latency {
    sorted: Vec<Duration>,
}

impl Latency {
    /// Nearest-rank percentile, in microseconds.
    fn percentile_us(&self, percent: usize) -> f64 {
        let rank = (self.sorted.len() * percent).div_ceil(100).max(1);
        self.sorted[rank - 1].as_secs_f64() * 1e6
    }
}

/// Where a latency run's client sits: the VMM's threads are pinned to `vmm_cpu` and the
/// client thread to `client_cpu`. On this kind of host the two differ a lot: on one CPU a
/// round trip is two context switches; across CPUs each message must wake the other CPU.
#[derive(Clone, Copy)]
struct Placement {
    label: &'static str,
    vmm_cpu: usize,
    client_cpu: usize,
}

impl Placement {
    /// The client on the VMM's CPU, and (given a second CPU) on another one.
    fn all(cpus: &[usize]) -> Vec<Placement> {
        let vmm_cpu = cpus[0];
        let same = Placement {
            label: "client on the VMM's CPU",
            vmm_cpu,
            client_cpu: vmm_cpu,
        };
        let other = cpus.get(1).map(|&client_cpu| Placement {
            label: "client on another CPU",
            vmm_cpu,
            client_cpu,
        });
        std::iter::once(same).chain(other).collect()
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its exact size.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if ret != 0 {
        fail(&format!(
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, within `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        fail("sched_getaffinity reports no CPU to run on");
    }
    cpus
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU numbers come from sched_getaffinity, so they are below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its exact size.
    let ret = unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One client on its own thread pinned as `placement` says: `config.warmup` untimed round
/// trips, then `config.requests` timed one by one.
fn measure_latency(target: &Target, config: &Config, placement: Placement) -> Latency {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                set_affinity(0, &[placement.client_cpu]).unwrap_or_else(|err| {
                    fail(&format!(
                        "cannot pin the client to CPU {}: {err}",
                        placement.client_cpu
                    ))
                });
                time_round_trips(target.open(0).as_mut(), &target.label, config)
            })
            .join()
            .expect("the latency client thread panicked")
    })
}

fn time_round_trips(session: &mut dyn Session, label: &str, config: &Config) -> Latency {
    let mut round_trip = |i: usize| {
        session
            .round_trip()
            .unwrap_or_else(|err| fail(&format!("{label}: request {i}: {err}")))
    };
    (0..config.warmup).for_each(&mut round_trip);
    let mut sorted: Vec<Duration> = (0..config.requests)
        .map(|i| {
            let start = Instant::now();
            round_trip(i);
            start.elapsed()
        })
        .collect();
    sorted.sort_unstable();
    Latency { sorted }
}

/// The floor under any control socket on this host: the same datagrams (64 bytes out, 1024
/// back) over a `SOCK_SEQPACKET` socketpair to an echo thread pinned where the VMM was, with
/// no event loop, no decoding and no VMM. What a VMM adds is its latency minus this.
fn measure_floor(config: &Config, placement: Placement) -> Latency {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) writes two descriptors into the valid two-element array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) } != 0 {
        fail(&format!("socketpair: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: socketpair just returned these descriptors, owned by nothing else.
    let (client, echo) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let _ = set_affinity(0, &[placement.vmm_cpu]);
            let mut buf = [0u8; RESPONSE_SIZE];
            while datagram(&echo, &mut buf, REQUEST_SIZE, Direction::Receive) > 0 {
                datagram(&echo, &mut buf, RESPONSE_SIZE, Direction::Send);
            }
        });
        let client = scope.spawn(move || {
            let _ = set_affinity(0, &[placement.client_cpu]);
            let mut session = FloorSession { fd: client };
            time_round_trips(&mut session, "socketpair echo", config)
        });
        client.join().expect("the floor client thread panicked")
    })
}

/// The client end of the floor's socketpair; dropping it stops the echo thread.
struct FloorSession {
    fd: OwnedFd,
}

impl Session for FloorSession {
    fn round_trip(&mut self) -> Result<(), String> {
        let mut buf = [0u8; RESPONSE_SIZE];
        datagram(&self.fd, &mut buf, REQUEST_SIZE, Direction::Send);
        match datagram(&self.fd, &mut buf, RESPONSE_SIZE, Direction::Receive) {
            n if n == RESPONSE_SIZE as isize => Ok(()),
            n => Err(format!("echo returned {n} bytes")),
        }
    }
}

enum Direction {
    Send,
    Receive,
}

/// One blocking send(2) or recv(2) of `len` bytes of `buf`: the byte count, or -1.
fn datagram(
    fd: &OwnedFd,
    buf: &mut [u8; RESPONSE_SIZE],
    len: usize,
    direction: Direction,
) -> isize {
    let (fd, ptr) = (fd.as_raw_fd(), buf.as_mut_ptr().cast::<libc::c_void>());
    match direction {
        // SAFETY: `buf` is valid for `len` <= RESPONSE_SIZE bytes for the whole call.
        Direction::Send => unsafe { libc::send(fd, ptr, len, 0) },
        // SAFETY: as above, and writable.
        Direction::Receive => unsafe { libc::recv(fd, ptr, len, 0) },
    }
}

/// Requests per second of one target, and the CPU time each request cost.
#[derive(Clone, Copy)]
struct Rate {
    /// Median over the rounds.
    per_second: f64,
    /// CPU time of the VMM process per request, µs, over all rounds (None: no process).
    server_cpu_us: Option<f64>,
    /// CPU time of the bench process (the clients) per request, µs, over all rounds.
    client_cpu_us: f64,
}

/// One timed run: requests per second and the CPU time both sides used.
struct RateRun {
    per_second: f64,
    server_cpu: Option<Duration>,
    client_cpu: Duration,
}

/// Requests per second of each target with `clients` concurrent clients of `per_client`
/// requests: the median over `config.rounds` rounds, targets alternating within a round.
fn measure_rates(
    targets: &[&Target],
    clients: usize,
    per_client: usize,
    config: &Config,
) -> Vec<Rate> {
    let mut rounds: Vec<Vec<RateRun>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..config.rounds {
        for (target, runs) in targets.iter().zip(rounds.iter_mut()) {
            runs.push(measure_rate(target, clients, per_client));
        }
    }
    let requests = (clients * per_client * config.rounds) as f64;
    let per_request_us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / requests;
    rounds
        .into_iter()
        .map(|runs| {
            let mut rates: Vec<f64> = runs.iter().map(|run| run.per_second).collect();
            rates.sort_by(f64::total_cmp);
            let server_cpu: Option<Duration> = runs.iter().map(|run| run.server_cpu).sum();
            Rate {
                per_second: rates[rates.len() / 2],
                server_cpu_us: server_cpu.map(per_request_us),
                client_cpu_us: per_request_us(runs.iter().map(|run| run.client_cpu).sum()),
            }
        })
        .collect()
}

/// Connects `clients` sessions, releases them together and times until the last is done.
fn measure_rate(target: &Target, clients: usize, per_client: usize) -> RateRun {
    let sessions: Vec<Box<dyn Session>> = (0..clients).map(|i| target.open(i)).collect();
    let barrier = Barrier::new(clients + 1);
    let (elapsed, server_cpu, client_cpu) = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(index, mut session)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    for i in 0..per_client {
                        if let Err(err) = session.round_trip() {
                            fail(&format!(
                                "{}: client {index}, request {i}: {err}",
                                target.label
                            ));
                        }
                    }
                })
            })
            .collect();
        let server_before = target.pid.map(process_cpu);
        let client_before = own_cpu();
        barrier.wait();
        let start = Instant::now();
        for worker in workers {
            worker.join().expect("a client thread panicked");
        }
        let elapsed = start.elapsed();
        let server_cpu = target
            .pid
            .zip(server_before)
            .map(|(pid, before)| process_cpu(pid) - before);
        (elapsed, server_cpu, own_cpu() - client_before)
    });
    RateRun {
        per_second: (clients * per_client) as f64 / elapsed.as_secs_f64(),
        server_cpu,
        client_cpu,
    }
}

/// CPU time the threads of process `pid` have run so far (ns-precise, from each thread's
/// /proc/PID/task/TID/schedstat; threads that already exited are not counted, so this is
/// for the VMMs, whose threads live throughout).
fn process_cpu(pid: u32) -> Duration {
    let task_dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&task_dir)
        .unwrap_or_else(|err| fail(&format!("cannot list {task_dir}: {err}")));
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// User plus system CPU time of this process so far, exited threads included.
fn own_cpu() -> Duration {
    // SAFETY: rusage is plain data for which all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for getrusage(2) to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

// ---------------------------------------------------------------------------------------
// Report.

/// Everything measured: index 0 is `GetVersion`, 1 `GetStats`, 2 QMP `query-status`.
struct Report {
    /// Per placement: the three targets, then the socketpair floor.
    latencies: Vec<(Placement, [Latency; 3], Latency)>,
    single: Vec<Rate>,
    concurrent: Vec<Rate>,
    concurrent_clients: usize,
}

const QMP: usize = 2;

impl Report {
    fn print_table(&self, config: &Config, vmm_label: &str) {
        println!();
        println!("| measure | {vmm_label} | QEMU QMP | ratio (× in vmm's favour) |");
        println!("| --- | ---: | ---: | ---: |");
        for (index, request) in ["GetVersion", "GetStats"].iter().enumerate() {
            self.print_rows(index, request, config);
        }
    }

    fn print_rows(&self, index: usize, request: &str, config: &Config) {
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

    fn print_floor(&self) {
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

    fn print_cpu(&self) {
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

    fn print_targets(&self) {
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

fn print_preface(config: &Config) {
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

fn qemu_version(qemu: &Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_string))
        .unwrap_or_else(|| "QEMU version unknown".into())
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------
// Development server.

/// A throwaway control server on `vm_control::server`, run on a thread of the bench when
/// `BENCH_DEV_SERVER=1`: one `poll` loop answering `GetVersion` and `GetStats` (with 1 vCPU
/// and 256 MiB, so the replies pass the checks). For developing the harness and as a baseline
/// for the protocol crate alone; never a substitute for vmm's figures.
mod dev_server {
    use std::os::fd::{AsFd, AsRawFd};
    use std::path::Path;

    use vm_control::server::{Connection, Listener, MAX_REQUESTS_PER_WAKE, Received};
    use vm_control::wire::{Request, Response, Stats};

    pub fn spawn(socket: &Path) {
        let listener = Listener::bind(socket, &[])
            .unwrap_or_else(|err| super::fail(&format!("dev server: {err}")));
        std::thread::spawn(move || serve(listener));
    }

    fn serve(listener: Listener) -> ! {
        let mut connections: Vec<Connection> = Vec::new();
        loop {
            let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_fd())
                .chain(connections.iter().map(|c| c.as_fd()))
                .map(|fd| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            for (pollfd, conn) in fds[1..].iter_mut().zip(&connections) {
                if conn.wants_write() {
                    pollfd.events |= libc::POLLOUT;
                }
            }
            let nfds = libc::nfds_t::try_from(fds.len()).expect("few descriptors");
            // SAFETY: `fds` is a valid array of `nfds` pollfds for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), nfds, -1) };
            let polled = std::mem::take(&mut connections);
            for (pollfd, mut conn) in fds[1..].iter().zip(polled) {
                if pollfd.revents == 0 || service(&mut conn).is_ok() {
                    connections.push(conn);
                }
            }
            if fds[0].revents != 0 {
                while let Ok(Some(conn)) = listener.accept() {
                    connections.push(conn);
                }
            }
        }
    }

    fn service(conn: &mut Connection) -> Result<(), ()> {
        conn.flush().map_err(drop)?;
        for _ in 0..MAX_REQUESTS_PER_WAKE {
            match conn.recv_request().map_err(drop)? {
                Some(Received::Request(req)) => {
                    if !conn.handle_protocol_request(&req).map_err(drop)? {
                        conn.reply(req.id, answer(req.request)).map_err(drop)?;
                    }
                }
                Some(Received::Rejected(_)) => {}
                None => break,
            }
        }
        Ok(())
    }

    fn answer(request: Request) -> Response {
        match request {
            Request::GetStats => Response::Stats(Box::new(Stats {
                vcpu_count: 1,
                guest_memory_bytes: super::GUEST_MEM_MIB << 20,
                ..Stats::default()
            })),
            _ => Response::Ok,
        }
    }
}
