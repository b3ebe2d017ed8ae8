//! End-to-end tests of the control socket on this host: `vmm run --socket` with tiny
//! hand-assembled guests, driven by the `vmm` control subcommands as a person or a script
//! would use them. They prove each subcommand does what the README says (stop, pause and
//! resume, stats, version, balloon refusal, memory registration, events), that failures
//! give the documented one-line errors and exit statuses, and that the socket itself is
//! private (0600) and never hijacked by a second VMM.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::{GuestCode, Scratch, describe, require_kvm, run_with_timeout, tiny_elf, vmm, vmm_run};
use json::StatsJson as _;

/// Longest a `vmm run` may take in these tests.
const VM_LIMIT: Duration = Duration::from_secs(60);
/// Longest a control subcommand may take (it has its own 5 s reply timeout).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// How long to wait for `vmm run` to create its socket.
const SOCKET_LIMIT: Duration = Duration::from_secs(10);

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// `vmm SUBCOMMAND SOCKET ARGS...`, run to completion.
fn ctl(subcommand: &str, socket: &Path, args: &[&str]) -> Output {
    let mut command = vmm();
    command.arg(subcommand).arg(socket).args(args);
    run_with_timeout(command, COMMAND_LIMIT)
}

/// A `vmm run --socket` on a tiny guest, its serial console going to a log file. Killed when
/// dropped if still running.
struct Vm {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    scratch: Scratch,
}

impl Vm {
    /// Starts the guest `code` and waits for the control socket to appear.
    fn start(name: &str, code: GuestCode) -> Vm {
        Vm::start_with(name, code, &[])
    }

    /// [`Vm::start`] with extra `vmm run` options.
    fn start_with(name: &str, code: GuestCode, options: &[&str]) -> Vm {
        let scratch = Scratch::new(name);
        let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));
        let socket = scratch.path("vmm.sock");
        let log = scratch.path("console.log");
        let serial = format!("file={}", log.display());
        let socket_arg = socket.display().to_string();
        let mut args = vec!["--serial", &serial, "--socket", &socket_arg];
        args.extend_from_slice(options);
        let mut command = vmm_run(&kernel, &args);
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm run");
        let mut vm = Vm {
            child: Some(child),
            socket,
            log,
            scratch,
        };
        vm.wait_for_socket();
        vm
    }

    fn wait_for_socket(&mut self) {
        let socket = self.socket.clone();
        let appeared = common::wait_until(SOCKET_LIMIT, || {
            is_socket(&socket)
                || self
                    .child
                    .as_mut()
                    .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
        });
        if !is_socket(&self.socket) {
            let mut child = self.child.take().expect("vmm run is ours");
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect vmm output");
            panic!(
                "vmm run never created {} (timed out: {})\n{}",
                self.socket.display(),
                !appeared,
                describe(&output)
            );
        }
    }

    fn ctl(&self, subcommand: &str, args: &[&str]) -> Output {
        ctl(subcommand, &self.socket, args)
    }

    /// Like [`Vm::ctl`], asserting exit status 0.
    fn ctl_ok(&self, subcommand: &str, args: &[&str]) -> Output {
        let output = self.ctl(subcommand, args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "vmm {subcommand} {args:?}: {}",
            describe(&output)
        );
        output
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Bytes the guest has written to its serial console so far.
    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits for the console log to grow past `len` bytes.
    fn wait_for_output_beyond(&self, len: u64, limit: Duration) -> bool {
        common::wait_until(limit, || self.log_len() > len)
    }

    /// Waits for `vmm run` to exit.
    fn wait(mut self) -> Output {
        let child = self.child.take().expect("vmm run already waited for");
        common::wait_with_timeout(child, VM_LIMIT)
    }

    fn scratch_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        self.scratch.write(name, bytes)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A guest that prints, then halts with interrupts off: it stays up, doing nothing, until
/// the VMM is told to stop.
/// `vmm events SOCKET`, started and known to be subscribed: it logs (at info) that it
/// is once the VMM has accepted its Subscribe, and nothing the test does after that can
/// be missed.
struct Subscriber {
    child: Child,
    stdout: common::PipeReader,
    stderr: common::PipeReader,
}

impl Subscriber {
    fn start(socket: &Path) -> Subscriber {
        let mut child = vmm()
            .arg("events")
            .arg(socket)
            .env("VMM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm events");
        let stdout = common::PipeReader::start(child.stdout.take());
        let stderr = common::PipeReader::start(child.stderr.take());
        stderr.wait_for("subscribed to events", SOCKET_LIMIT);
        Subscriber {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits (bounded) for `vmm events` to exit; its status and all it printed.
    fn finish(self) -> Output {
        let status = common::wait_with_timeout(self.child, VM_LIMIT).status;
        Output {
            status,
            stdout: self.stdout.finish(),
            stderr: self.stderr.finish(),
        }
    }
}

fn parked_guest() -> GuestCode {
    GuestCode::new().print("parked\n").halt_forever()
}

/// A guest whose progress is visible: it prints dots forever.
fn busy_guest() -> GuestCode {
    GuestCode::new().print_forever(b'.')
}

/// The `pfn 0x... slot N guest physical address 0x...` line of `vmm register-memory`.
fn registered(output: &Output) -> (u64, u32, u64) {
    let text = stdout_of(output);
    let words: Vec<&str> = text.split_whitespace().collect();
    let hex = |text: &str| u64::from_str_radix(text.strip_prefix("0x")?, 16).ok();
    let parsed = match words.as_slice() {
        [
            "pfn",
            pfn,
            "slot",
            slot,
            "guest",
            "physical",
            "address",
            address,
        ] => match (hex(pfn), slot.parse().ok(), hex(address)) {
            (Some(pfn), Some(slot), Some(address)) => Some((pfn, slot, address)),
            _ => None,
        },
        _ => None,
    };
    parsed.unwrap_or_else(|| panic!("unexpected register-memory output: {text:?}"))
}

#[test]
fn stop_ends_a_parked_vm_with_status_0_and_removes_the_socket() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("stop", parked_guest());

    let stop = vm.ctl("stop", &[]);
    let socket = vm.socket.clone();
    let run = vm.wait();

    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    assert_eq!(stdout_of(&stop), "", "stop prints nothing on success");
    assert_eq!(run.status.code(), Some(0), "vmm run: {}", describe(&run));
    assert!(!socket.exists(), "the VMM removes its socket when it exits");
}

#[test]
fn pause_stops_guest_progress_and_resume_continues_it() {
    if !require_kvm() {
        return;
    }
    let mut vm = Vm::start("pause", busy_guest());
    assert!(
        vm.wait_for_output_beyond(0, Duration::from_secs(10)),
        "the busy guest never printed"
    );

    vm.ctl_ok("pause", &[]);
    let at_pause = vm.log_len();
    std::thread::sleep(Duration::from_millis(300));
    let after_300ms = vm.log_len();
    vm.ctl_ok("pause", &[]); // idempotent
    let after_second_pause = vm.log_len();
    vm.ctl_ok("resume", &[]);
    let flows_again = vm.wait_for_output_beyond(after_second_pause, Duration::from_secs(10));
    vm.ctl_ok("resume", &[]); // idempotent
    let still_running = vm.running();

    assert_eq!(
        at_pause,
        after_300ms,
        "the guest printed {} bytes in the 300 ms after vmm pause returned",
        after_300ms - at_pause
    );
    assert_eq!(
        after_300ms, after_second_pause,
        "a second pause let the guest run"
    );
    assert!(flows_again, "no guest output within 10 s of vmm resume");
    assert!(still_running, "pause/resume must not end the VM");
    vm.ctl_ok("stop", &[]);
    assert_eq!(vm.wait().status.code(), Some(0));
}

#[test]
fn stats_counters_grow_as_the_guest_runs_and_json_parses() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("stats", busy_guest());
    assert!(vm.wait_for_output_beyond(0, Duration::from_secs(10)));

    let first = vm.ctl_ok("stats", &["--json"]);
    let grown = vm.wait_for_output_beyond(vm.log_len() + 64, Duration::from_secs(10));
    let second = vm.ctl_ok("stats", &["--json"]);
    let table = vm.ctl_ok("stats", &[]);

    assert!(grown, "the guest stopped printing");
    let first = json::parse(stdout_of(&first).trim()).expect("stats --json is JSON");
    let second = json::parse(stdout_of(&second).trim()).expect("stats --json is JSON");
    assert_eq!(second.num(&["vcpu_count"]), Some(1));
    assert_eq!(second.num(&["guest_memory_bytes"]), Some(32 << 20));
    for field in ["uptime_ns", "balloon_target_pages", "balloon_actual_pages"] {
        assert!(second.num(&[field]).is_some(), "{field} missing");
    }
    for field in [
        "io",
        "mmio",
        "hlt",
        "shutdown",
        "system_event",
        "fail_entry",
        "internal_error",
        "other",
    ] {
        assert!(
            second.num(&["exits", field]).is_some(),
            "exits.{field} missing"
        );
    }
    for field in ["utime_us", "stime_us", "maxrss_kib", "minflt", "majflt"] {
        assert!(
            second.num(&["rusage", field]).is_some(),
            "rusage.{field} missing"
        );
    }
    let io = |s: &json::Value| s.num(&["exits", "io"]).expect("exits.io");
    let serial_out = |s: &json::Value| {
        s.device_counter("serial", "bytes_out")
            .expect("a serial bytes_out device counter")
    };
    let uptime = |s: &json::Value| s.num(&["uptime_ns"]).expect("uptime_ns");
    assert!(io(&second) > io(&first), "io exits did not grow");
    assert!(
        serial_out(&second) > serial_out(&first),
        "serial bytes_out did not grow"
    );
    assert!(uptime(&second) > uptime(&first), "uptime did not grow");
    let table = stdout_of(&table);
    for row in ["uptime", "vcpus", "exits io", "serial", "bytes_out"] {
        assert!(table.contains(row), "stats table lacks {row:?}:\n{table}");
    }
}

/// A tiny guest has no virtio driver: the rng's one queue is listed, inactive, untouched;
/// a VM without virtio devices has no queues at all.
#[test]
fn queues_lists_each_virtio_queue_and_json_parses() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start_with("queues", parked_guest(), &["--rng"]);

    let json = vm.ctl_ok("queues", &["--json"]);
    let table = stdout_of(&vm.ctl_ok("queues", &[]));

    let json = json::parse(stdout_of(&json).trim()).expect("queues --json is JSON");
    let queues = json.as_array().expect("an array of queues");
    assert_eq!(queues.len(), 1, "{json}");
    let rng = &queues[0];
    assert_eq!(rng.get("kind").and_then(json::Value::as_str), Some("rng"));
    assert_eq!(
        rng.get("active").and_then(json::Value::as_bool),
        Some(false)
    );
    for field in [
        "queue",
        "size",
        "driver_avail",
        "device_avail",
        "waiting",
        "notifications",
    ] {
        assert_eq!(rng.num(&[field]), Some(0), "{field} in {json}");
    }
    assert!(
        table.contains("rng") && table.contains("inactive"),
        "{table}"
    );

    let bare = Vm::start("queues-none", parked_guest());
    let none = stdout_of(&bare.ctl_ok("queues", &[]));
    assert_eq!(none.trim(), "no virtio queues");
}

/// `--console` puts a virtio-console on PCI, its worker under its own seccomp policy (a
/// missing entry would end the VMM with 31): `queues` lists its receive and transmit
/// queues, `stats` its counters, and a tiny guest with no driver has moved nothing.
#[test]
fn a_virtio_console_is_listed_with_its_two_queues_and_counted_in_stats() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start_with(
        "console-device",
        parked_guest(),
        &["--console", "file=/dev/null"],
    );

    let queues = vm.ctl_ok("queues", &["--json"]);
    let stats = vm.ctl_ok("stats", &["--json"]);
    vm.ctl_ok("stop", &[]);

    let queues = json::parse(stdout_of(&queues).trim()).expect("queues --json is JSON");
    let queues = queues.as_array().expect("an array of queues");
    let console: Vec<_> = queues
        .iter()
        .filter(|q| q.get("kind").and_then(json::Value::as_str) == Some("console"))
        .collect();
    assert_eq!(console.len(), 2, "receiveq0 and transmitq0: {queues:?}");
    let stats = json::parse(stdout_of(&stats).trim()).expect("stats --json is JSON");
    for counter in ["bytes_in", "bytes_out", "bytes_dropped", "invalid_chains"] {
        assert_eq!(
            stats.device_counter("console", counter),
            Some(0),
            "console {counter}"
        );
    }
}

#[test]
fn version_prints_the_vmm_range_and_the_client_version() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("version", parked_guest());

    let output = vm.ctl_ok("version", &[]);

    let text = stdout_of(&output);
    assert!(text.contains("VMM protocol versions 1..=6"), "{text}");
    assert!(text.contains("client protocol version 6"), "{text}");
}

#[test]
fn balloon_is_refused_with_enodev_and_exit_1_while_there_is_no_balloon_device() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("balloon", parked_guest());

    let relative = vm.ctl("balloon", &["--pages", "-256"]);
    let absolute = vm.ctl("balloon", &["--target", "16"]);

    for output in [&relative, &absolute] {
        assert_eq!(output.status.code(), Some(1), "{}", describe(output));
        assert_eq!(
            stderr_of(output).trim_end(),
            "vmm: error: the VMM refused: unsupported (No such device)",
            "{}",
            describe(output)
        );
    }
}

#[test]
fn balloon_target_is_set_reported_in_stats_and_announced_to_subscribers() {
    if !require_kvm() {
        return;
    }
    // The tiny guest has no balloon driver: the target is the host's wish, recorded and
    // announced even before a driver takes the balloon up.
    let vm = Vm::start_with("balloon-target", parked_guest(), &["--balloon"]);
    let events = Subscriber::start(&vm.socket);

    vm.ctl_ok("balloon", &["--target", "8"]);
    vm.ctl_ok("balloon", &["--pages", "-1024"]);
    let too_big = vm.ctl("balloon", &["--target", "64"]);
    let stats = vm.ctl_ok("stats", &["--json"]);
    vm.ctl_ok("stop", &[]);
    let events = events.finish();

    let stats = json::parse(&stdout_of(&stats)).expect("stats --json parses");
    assert_eq!(stats.num(&["balloon_target_pages"]), Some(1024));
    assert_eq!(stats.num(&["balloon_actual_pages"]), Some(0));
    assert_eq!(too_big.status.code(), Some(1), "{}", describe(&too_big));
    assert_eq!(
        stderr_of(&too_big).trim_end(),
        "vmm: error: the VMM refused: invalid argument (Invalid argument)",
        "a target above the guest's 32 MiB"
    );
    let announced = stdout_of(&events);
    assert!(
        announced.contains("balloon-changed target=2048 actual=0\n"),
        "{announced}"
    );
    assert!(
        announced.ends_with("balloon-changed target=1024 actual=0\n"),
        "{announced}"
    );
}

#[test]
fn balloon_without_exactly_one_amount_is_a_usage_error() {
    let scratch = Scratch::new("balloon-usage");
    let socket = scratch.path("nobody.sock");

    let neither = ctl("balloon", &socket, &[]);
    let both = ctl("balloon", &socket, &["--pages", "1", "--target", "1"]);

    for output in [&neither, &both] {
        assert_eq!(output.status.code(), Some(2), "{}", describe(output));
        assert!(
            stderr_of(output).contains("--pages"),
            "{}",
            describe(output)
        );
    }
}

#[test]
fn register_memory_maps_at_4_gib_then_elsewhere_and_reuses_a_freed_range() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("register", parked_guest());
    let two_mib = vec![0u8; 2 << 20];
    let first_file = vm.scratch_file("first.mem", &two_mib);
    let second_file = vm.scratch_file("second.mem", &two_mib);
    let third_file = vm.scratch_file("third.mem", &two_mib);
    let path = |p: &PathBuf| p.display().to_string();

    let first = registered(&vm.ctl_ok("register-memory", &[&path(&first_file)]));
    let second = registered(&vm.ctl_ok("register-memory", &[&path(&second_file)]));
    vm.ctl_ok("unregister-memory", &[&first.1.to_string()]);
    let third = registered(&vm.ctl_ok("register-memory", &[&path(&third_file)]));

    assert_eq!(first.0, 0x100000, "first registration is at 4 GiB");
    assert_eq!(first.2, 0x1_0000_0000, "printed guest physical address");
    assert_ne!(second.0, first.0, "a second region needs another address");
    assert_ne!(second.1, first.1, "a second region needs another slot");
    assert_eq!(second.0 % 512, 0, "regions are 2 MiB aligned");
    assert_eq!(third.0, first.0, "the freed range is reused");
    assert_eq!(third.1, first.1, "the freed slot is reused");
}

#[test]
fn unregister_of_an_unknown_slot_is_refused_with_exit_1() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("unregister", parked_guest());

    let output = vm.ctl("unregister-memory", &["4000"]);

    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert_eq!(
        stderr_of(&output).trim_end(),
        "vmm: error: the VMM refused: invalid argument (No such file or directory)"
    );
}

#[test]
fn register_memory_of_a_file_that_is_not_whole_pages_fails_clearly() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("register-partial", parked_guest());
    let partial = vm.scratch_file("partial.mem", &[0u8; 5000]);
    let empty = vm.scratch_file("empty.mem", &[]);

    let outputs = [partial, empty].map(|f| vm.ctl("register-memory", &[&f.display().to_string()]));

    for output in &outputs {
        assert_eq!(output.status.code(), Some(1), "{}", describe(output));
        let stderr = stderr_of(output);
        assert!(
            stderr.contains("must be a non-zero multiple of 4096 bytes"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn every_subcommand_says_cannot_reach_when_nobody_serves_the_socket() {
    let scratch = Scratch::new("unreachable");
    let socket = scratch.path("nobody.sock");
    let memory = scratch.write("page.mem", &[0u8; 4096]);
    let memory = memory.display().to_string();
    let commands: [(&str, &[&str]); 11] = [
        ("stop", &[]),
        ("pause", &[]),
        ("resume", &[]),
        ("balloon", &["--pages", "1"]),
        ("stats", &[]),
        ("queues", &[]),
        ("version", &[]),
        ("register-memory", &[&memory]),
        ("unregister-memory", &["0"]),
        ("list-memory", &[]),
        ("events", &[]),
    ];

    for (subcommand, args) in commands {
        let output = ctl(subcommand, &socket, args);

        assert_eq!(
            output.status.code(),
            Some(1),
            "{subcommand}: {}",
            describe(&output)
        );
        let expected = format!("vmm: error: cannot reach the VMM at {}: ", socket.display());
        let stderr = stderr_of(&output);
        assert!(stderr.starts_with(&expected), "{subcommand}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{subcommand}: {stderr}");
    }
}

#[test]
fn events_prints_pause_resume_and_power_off_then_exits_0() {
    if !require_kvm() {
        return;
    }
    // The guest powers off about 6 s after it starts, by the RTC: time for the test to
    // subscribe, pause and resume it first.
    let vm = Vm::start(
        "events",
        GuestCode::new()
            .print("ready\n")
            .wait_rtc_seconds(6)
            .acpi_poweroff(),
    );
    let events = Subscriber::start(&vm.socket);

    vm.ctl_ok("pause", &[]);
    vm.ctl_ok("resume", &[]);
    let events = events.finish();
    let run = vm.wait();

    assert_eq!(run.status.code(), Some(0), "vmm run: {}", describe(&run));
    assert_eq!(
        events.status.code(),
        Some(0),
        "vmm events: {}",
        describe(&events)
    );
    assert_eq!(stdout_of(&events), "paused\nresumed\npowered-off\n");
}

#[test]
fn events_fails_when_the_vmm_stops_without_a_guest_event() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("events-stop", parked_guest());
    let events = Subscriber::start(&vm.socket);

    vm.ctl_ok("stop", &[]);
    let events = events.finish();

    assert_eq!(events.status.code(), Some(1), "{}", describe(&events));
    assert!(
        stderr_of(&events).contains("closed the connection without a power-off"),
        "{}",
        describe(&events)
    );
}

#[test]
fn the_socket_file_is_mode_0600() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("mode", parked_guest());

    let mode = std::fs::symlink_metadata(&vm.socket)
        .expect("socket exists")
        .permissions()
        .mode();

    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

#[test]
fn a_second_vmm_on_a_live_socket_fails_and_the_first_keeps_running() {
    if !require_kvm() {
        return;
    }
    let mut vm = Vm::start("second", parked_guest());
    let kernel = vm.scratch_file("second.elf", &tiny_elf(parked_guest().bytes()));
    let socket = vm.socket.display().to_string();

    let second = run_with_timeout(vmm_run(&kernel, &["--socket", &socket]), VM_LIMIT);

    assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
    let stderr = stderr_of(&second);
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(vm.running(), "the first VMM died");
    assert!(is_socket(&vm.socket), "the first VMM's socket was removed");
    vm.ctl_ok("version", &[]);
    vm.ctl_ok("stop", &[]);
    assert_eq!(vm.wait().status.code(), Some(0));
}

/// Reading what `vmm stats --json` prints: serde_json parses (strictly), and two helpers
/// fetch a number by its path and a device counter by its names.
mod json {
    pub use serde_json::Value;

    pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub trait StatsJson {
        /// The unsigned integer at `path` (object keys).
        fn num(&self, path: &[&str]) -> Option<u64>;
        /// The value of the `devices` entry with this kind and counter name.
        fn device_counter(&self, kind: &str, counter: &str) -> Option<u64>;
    }

    impl StatsJson for Value {
        fn num(&self, path: &[&str]) -> Option<u64> {
            path.iter()
                .try_fold(self, |value, key| value.get(key))?
                .as_u64()
        }

        fn device_counter(&self, kind: &str, counter: &str) -> Option<u64> {
            self.get("devices")?
                .as_array()?
                .iter()
                .find(|d| {
                    d.get("kind").and_then(Value::as_str) == Some(kind)
                        && d.get("counter").and_then(Value::as_str) == Some(counter)
                })?
                .num(&["value"])
        }
    }
}
