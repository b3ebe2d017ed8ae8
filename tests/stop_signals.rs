//! Host stop signals end `vmm` cleanly whatever devices it runs: for each device kind and
//! each of SIGTERM, SIGINT and SIGHUP, `vmm run` on a terminal with a control socket exits
//! with 128 + the signal, removes its socket file and gives the terminal back as it was.
//! A device worker that could receive the signal itself would let the kernel's default
//! action kill the whole process instead (no status of ours, socket left behind, terminal
//! left raw), which is what these tests guard against.

mod common;

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::{
    GuestCode, Scratch, describe, open_pty, require_kvm, termios_of, tiny_elf, vmm, vmm_run,
};

/// Longest a `vmm run` (or a control command) may take here.
const LIMIT: Duration = Duration::from_secs(60);

/// The stop signals the README documents, with the names failures are reported by.
const STOP_SIGNALS: [(libc::c_int, &str); 3] = [
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGHUP, "SIGHUP"),
];

/// What a user sees after stopping a VM with a signal.
struct Stopped {
    output: Output,
    socket_left_behind: bool,
    /// The terminal's local modes while `vmm` ran (raw: no ICANON), and after it exited.
    lflag_while_running: libc::tcflag_t,
    terminal_after: libc::termios,
}

/// Kills the child if a test fails before it has exited.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a parked guest with `devices` on a fresh pty and a control socket, waits until
/// the run loop answers `vmm stats` (every thread exists by then), sends `signal` to the
/// process and collects what is left.
fn run_and_stop_with(scratch: &Scratch, devices: &[&str], signal: libc::c_int) -> Stopped {
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().print("up\n").halt_forever().bytes()),
    );
    let socket = scratch.path(&format!("vmm-{signal}.sock"));
    let socket_arg = socket.display().to_string();
    let (_master, slave) = open_pty();
    let mut options = vec!["--socket", &socket_arg];
    options.extend_from_slice(devices);
    let child = vmm_run(&kernel, &options)
        .stdin(Stdio::from(slave.try_clone().expect("dup pty slave")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let mut vm = Running(Some(child));

    wait_for_run_loop(&socket, &mut vm);
    let lflag_while_running = termios_of(&slave).c_lflag;
    let child = vm.0.take().expect("vmm is still ours");
    // SAFETY: sending a signal to our own child process by pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let output = common::wait_with_timeout(child, LIMIT);
    Stopped {
        output,
        socket_left_behind: socket.exists(),
        lflag_while_running,
        terminal_after: termios_of(&slave),
    }
}

/// Waits (bounded) until the socket exists and `vmm stats` gets an answer.
fn wait_for_run_loop(socket: &Path, vm: &mut Running) {
    let appeared = common::wait_until(LIMIT, || {
        socket.exists()
            || vm
                .0
                .as_mut()
                .is_some_and(|child| !matches!(child.try_wait(), Ok(None)))
    });
    assert!(appeared && socket.exists(), "vmm never created its socket");
    let mut stats = vmm();
    stats.arg("stats").arg(socket);
    let stats = common::run_with_timeout(stats, LIMIT);
    assert_eq!(stats.status.code(), Some(0), "{}", describe(&stats));
}

/// The whole matrix row for one device configuration.
fn every_stop_signal_ends_the_vm_cleanly(name: &str, devices: &[&str]) {
    // Every run gets a fresh pty, whose settings are those of this reference one.
    let (_master, reference) = open_pty();
    let before = termios_of(&reference);
    for (signal, signal_name) in STOP_SIGNALS {
        let scratch = Scratch::new(&format!("stop-{name}-{signal}"));
        let stopped = run_and_stop_with(&scratch, devices, signal);
        let what = format!("{name}, {signal_name}");
        assert_eq!(
            stopped.output.status.code(),
            Some(128 + signal),
            "{what}: exit status must be 128 + {signal}\n{}",
            describe(&stopped.output)
        );
        assert!(
            !stopped.socket_left_behind,
            "{what}: the socket file is left behind"
        );
        assert_eq!(
            stopped.lflag_while_running & libc::ICANON,
            0,
            "{what}: vmm put its terminal in raw mode while it ran"
        );
        let after = &stopped.terminal_after;
        assert_eq!(
            after.c_lflag, before.c_lflag,
            "{what}: local modes restored"
        );
        assert_eq!(
            after.c_iflag, before.c_iflag,
            "{what}: input modes restored"
        );
        assert_eq!(
            after.c_oflag, before.c_oflag,
            "{what}: output modes restored"
        );
    }
}

#[test]
fn stop_signals_end_a_vm_without_devices_with_128_plus_signal() {
    if !require_kvm() {
        return;
    }
    every_stop_signal_ends_the_vm_cleanly("no-device", &[]);
}

#[test]
fn stop_signals_end_a_vm_with_rng_with_128_plus_signal() {
    if !require_kvm() {
        return;
    }
    every_stop_signal_ends_the_vm_cleanly("rng", &["--rng"]);
}

#[test]
fn stop_signals_end_a_vm_with_a_disk_with_128_plus_signal() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("stop-disk-image");
    let disk = scratch.write("disk.img", &[0u8; 4096]);
    let disk = disk.display().to_string();
    every_stop_signal_ends_the_vm_cleanly("disk", &["--disk", &disk]);
}

#[test]
fn stop_signals_end_a_vm_with_a_balloon_with_128_plus_signal() {
    if !require_kvm() {
        return;
    }
    every_stop_signal_ends_the_vm_cleanly("balloon", &["--balloon"]);
}

/// With `--console stdio` the terminal feeds the virtio-console, not the UART: the same
/// raw mode, restored the same way.
#[test]
fn stop_signals_end_a_vm_with_a_console_on_stdio_with_128_plus_signal() {
    if !require_kvm() {
        return;
    }
    every_stop_signal_ends_the_vm_cleanly("console", &["--console", "stdio"]);
}

#[test]
fn stop_signals_end_a_vm_with_a_network_interface_with_128_plus_signal() {
    // Needs root: vmm creates (and removes) the tap itself.
    if !require_kvm() || !common::require_tun() {
        return;
    }
    every_stop_signal_ends_the_vm_cleanly(
        "net",
        &["--net", "host-ip=10.213.4.1,netmask=255.255.255.0"],
    );
}

/// Whether a `SigBlk:` mask (hex, bit N-1 for signal N) blocks `signal`.
fn blocks(mask: &str, signal: libc::c_int) -> bool {
    u64::from_str_radix(mask, 16).is_ok_and(|bits| bits & (1 << (signal - 1)) != 0)
}

#[test]
fn every_thread_of_a_vmm_with_every_device_kind_blocks_the_stop_signals() {
    // Needs root: vmm creates (and removes) the tap itself.
    if !require_kvm() || !common::require_tun() {
        return;
    }
    let scratch = Scratch::new("stop-sigblk");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().print("up\n").halt_forever().bytes()),
    );
    let disk = scratch
        .write("disk.img", &[0u8; 4096])
        .display()
        .to_string();
    let socket = scratch.path("vmm.sock");
    let socket_arg = socket.display().to_string();
    let options = [
        "--cpus",
        "2",
        "--rng",
        "--balloon",
        "--disk",
        &disk,
        "--net",
        "host-ip=10.213.5.1,netmask=255.255.255.0",
        "--console",
        "file=/dev/null",
        "--socket",
        &socket_arg,
    ];
    let child = vmm_run(&kernel, &options)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmm");
    let mut vm = Running(Some(child));
    wait_for_run_loop(&socket, &mut vm);
    let pid = common::vmm_process(vm.0.as_ref().expect("vmm is ours").id());

    let threads = common::user_threads(pid);
    let names: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        threads.len(),
        11,
        "main, 2 vCPUs, the console writer, the virtio-console's own writer and the \
         console streamer, 5 device workers: {names:?}"
    );
    for thread in &threads {
        let mask = thread.field("SigBlk:");
        for (signal, signal_name) in STOP_SIGNALS {
            assert!(
                blocks(&mask, signal),
                "thread {} does not block {signal_name} (SigBlk {mask}); all: {names:?}",
                thread.name
            );
        }
    }
}
