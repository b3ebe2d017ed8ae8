//! A guest that means harm, on this host's KVM with tiny hand-assembled guests: whatever
//! it does, the VMM's own memory stays bounded, its main thread keeps answering the
//! control socket, and it still stops when told.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GuestCode, Scratch, describe, require_kvm, tiny_elf, vmm, vmm_run};

/// Longest a `vmm run` or control command may take in these tests.
const LIMIT: Duration = Duration::from_secs(60);

/// A `vmm run --socket` on a tiny guest; killed when dropped if still running.
struct Vm {
    child: Option<Child>,
    socket: PathBuf,
    _scratch: Scratch,
}

impl Vm {
    /// Starts `code` with `stdout` as the console and waits (bounded) for the socket.
    fn start(name: &str, code: GuestCode, stdout: Stdio, options: &[&str]) -> Vm {
        Vm::start_with_stdin(name, code, Stdio::null(), stdout, options)
    }

    /// [`Vm::start`] with `stdin` (a terminal feeds the guest's console).
    fn start_with_stdin(
        name: &str,
        code: GuestCode,
        stdin: Stdio,
        stdout: Stdio,
        options: &[&str],
    ) -> Vm {
        let scratch = Scratch::new(name);
        let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));
        let socket = scratch.path("vmm.sock");
        let socket_arg = socket.display().to_string();
        let mut args = vec!["--socket", socket_arg.as_str()];
        args.extend_from_slice(options);
        let child = vmm_run(&kernel, &args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm run");
        let mut vm = Vm {
            child: Some(child),
            socket,
            _scratch: scratch,
        };
        let socket = vm.socket.clone();
        let appeared = common::wait_until(LIMIT, || socket.exists() || !vm.running());
        assert!(appeared && socket.exists(), "vmm never created its socket");
        vm
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("vmm is ours").id()
    }

    fn ctl(&self, subcommand: &str, args: &[&str]) -> Output {
        ctl(subcommand, &self.socket, args)
    }

    /// `vmm stats --json`, parsed; fails the test if the VMM does not answer.
    fn stats(&self) -> serde_json::Value {
        let output = self.ctl("stats", &["--json"]);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        serde_json::from_slice(&output.stdout).expect("stats --json is JSON")
    }

    /// The serial port's counter `name` (`bytes_out`, `bytes_dropped`).
    fn console_counter(&self, name: &str) -> u64 {
        let stats = self.stats();
        stats["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["kind"] == "serial" && d["counter"] == name)
            .and_then(|d| d["value"].as_u64())
            .unwrap_or(0)
    }

    fn mmio_exits(&self) -> u64 {
        self.stats()["exits"]["mmio"].as_u64().unwrap_or(0)
    }

    /// The VMM's resident memory now, in KiB.
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", common::vmm_process(self.pid())))
                .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Waits for the process to end, within [`LIMIT`].
    fn wait(mut self) -> Output {
        let child = self.child.take().expect("vmm is ours");
        common::wait_with_timeout(child, LIMIT)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ctl(subcommand: &str, socket: &Path, args: &[&str]) -> Output {
    let mut command = vmm();
    command.arg(subcommand).arg(socket).args(args);
    common::run_with_timeout(command, LIMIT)
}

/// Where the MMIO sweep starts: far above the guest's RAM, below the PCI hole.
const SWEEP_START: u64 = 0x4000_0000;

/// MMIO exits after which the VMM's resident memory is measured, and then again: a VMM
/// that remembered every address would have grown by several MiB in between.
const SWEEP_EARLY: u64 = 100_000;
const SWEEP_LATE: u64 = 700_000;
/// Growth allowed between the two measurements (allocator noise, the stats replies).
const RSS_SLACK_KIB: u64 = 4096;

#[test]
fn a_guest_sweeping_mmio_addresses_does_not_grow_the_vmm() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start(
        "mmio-sweep",
        GuestCode::new().sweep_mmio_from(SWEEP_START),
        Stdio::null(),
        &[],
    );
    let reached = |exits: u64| common::wait_until(LIMIT, || vm.mmio_exits() >= exits);

    assert!(reached(SWEEP_EARLY), "the sweep never got going");
    let rss_early = vm.rss_kib();
    assert!(reached(SWEEP_LATE), "the sweep stalled");
    let rss_late = vm.rss_kib();

    assert!(
        rss_late <= rss_early + RSS_SLACK_KIB,
        "{} more distinct MMIO addresses grew the VMM from {rss_early} KiB to {rss_late} KiB",
        SWEEP_LATE - SWEEP_EARLY
    );
    let stop = vm.ctl("stop", &[]);
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    let output = vm.wait();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two new descriptors into the two-element array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Guest output that more than fills a pipe (64 KiB): with the console stalled, the guest
/// has gone on printing.
const BEYOND_A_FULL_PIPE: u64 = 256 << 10;

/// A guest printing forever into a pipe nobody reads: the read end stays open (so writes
/// block rather than fail) and is never read. Returns the VM once the guest's output holds
/// `counter` above `above`, as `vmm stats` reports: that needs the main thread to get at
/// the serial port while the console is stalled.
fn vm_with_a_stalled_console(name: &str, counter: &str, above: u64) -> (Vm, OwnedFd) {
    let (unread, console) = pipe();
    let vm = Vm::start(
        name,
        GuestCode::new().print_forever(b'x'),
        Stdio::from(console),
        &[],
    );
    let reached = common::wait_until(LIMIT, || vm.console_counter(counter) > above);
    assert!(reached, "the console's {counter} never passed {above}");
    (vm, unread)
}

#[test]
fn a_stalled_console_reader_leaves_stats_answering_and_stop_working() {
    if !require_kvm() {
        return;
    }
    // Dropping starts once the pipe and the VMM's console buffer (1 MiB) are full.
    let (vm, _unread) = vm_with_a_stalled_console("stalled-console-stop", "bytes_dropped", 0);

    let dropped_before = vm.console_counter("bytes_dropped");
    let dropped_after = vm.console_counter("bytes_dropped");
    let stop = vm.ctl("stop", &[]);
    let output = vm.wait();

    assert!(
        dropped_after >= dropped_before,
        "stats keep answering, the count only grows"
    );
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

#[test]
fn a_stalled_console_reader_leaves_sigterm_working() {
    if !require_kvm() {
        return;
    }
    let (vm, _unread) =
        vm_with_a_stalled_console("stalled-console-sigterm", "bytes_out", BEYOND_A_FULL_PIPE);

    // SAFETY: sending a signal to our own child process by pid.
    let rc = unsafe { libc::kill(vm.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let output = vm.wait();

    assert_eq!(
        output.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the console's reader took no output"),
        "the VMM says it left output unwritten\n{}",
        describe(&output)
    );
}

/// Where the balloon's `actual` field is, with `--balloon` the only PCI device (slot 1): its
/// BAR at the start of the PCI hole, the device configuration at 0x2000 in it, `actual`
/// at 4.
const BALLOON_ACTUAL: u64 = 0xc000_0000 + 0x2000 + 4;
/// How often the guest below flips the balloon's size between 1 and 2 pages.
const BALLOON_FLIPS: u32 = 20_000;
/// The documented shortest time between two balloon-changed events.
const BALLOON_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// `vmm events`' lines as they arrive, each with when it did.
struct EventLines {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl EventLines {
    fn subscribe(socket: &Path) -> EventLines {
        let mut child = vmm()
            .arg("events")
            .arg(socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vmm events");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((Instant::now(), line));
            }
        });
        EventLines { child, lines }
    }

    fn snapshot(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn balloon_changes(&self) -> Vec<(Instant, String)> {
        self.snapshot()
            .into_iter()
            .filter(|(_, line)| line.starts_with("balloon-changed"))
            .collect()
    }

    fn still_subscribed(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for EventLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_guest_flipping_the_balloon_size_gets_subscribers_rate_limited_events_ending_on_the_last_size()
{
    if !require_kvm() {
        return;
    }
    let (mut terminal, guest_terminal) = common::open_pty();
    let code = GuestCode::new()
        .pci_enable_memory(1)
        .wait_for_key()
        .alternate_u32_at(BALLOON_ACTUAL, 1, 2, BALLOON_FLIPS)
        .halt_forever();
    let vm = Vm::start_with_stdin(
        "balloon-flips",
        code,
        Stdio::from(guest_terminal),
        Stdio::null(),
        &["--balloon"],
    );
    let mut events = EventLines::subscribe(&vm.socket);
    // A pause the subscriber hears about proves the subscription is in place; one made
    // before `vmm events` connected goes unheard, so pause and resume until one is heard.
    let subscribed = common::wait_until(LIMIT, || {
        assert_eq!(vm.ctl("pause", &[]).status.code(), Some(0));
        assert_eq!(vm.ctl("resume", &[]).status.code(), Some(0));
        events.snapshot().iter().any(|(_, line)| line == "paused")
    });
    assert!(subscribed, "vmm events never heard a pause");

    let started = Instant::now();
    terminal.write_all(b"g").expect("let the guest go");
    let flipped = common::wait_until(LIMIT, || {
        vm.stats()["exits"]["mmio"].as_u64() == Some(u64::from(BALLOON_FLIPS) * 2)
    });
    assert!(flipped, "the guest never finished flipping");
    let last_heard = common::wait_until(LIMIT, || {
        events
            .balloon_changes()
            .last()
            .is_some_and(|(_, line)| line.ends_with(" actual=2"))
    });

    let changes = events.balloon_changes();
    let last_lines: Vec<&str> = changes
        .iter()
        .rev()
        .take(3)
        .map(|(_, line)| line.as_str())
        .collect();
    assert!(
        last_heard,
        "the final size never reached the subscriber ({} events, the last {last_lines:?})",
        changes.len()
    );
    assert!(events.still_subscribed(), "the subscriber was dropped");
    let span = changes
        .last()
        .map_or(Duration::ZERO, |(at, _)| *at - started);
    let most = span.as_millis() / BALLOON_EVENT_INTERVAL.as_millis() + 2;
    assert!(
        changes.len() as u128 <= most,
        "{} balloon-changed events in {span:?} for {} changes (at most {most})",
        changes.len(),
        BALLOON_FLIPS * 2
    );
}
