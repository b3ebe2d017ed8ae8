//! End-to-end tests of the seccomp sandbox on this host's KVM with tiny guests: every
//! thread of a running `vmm` is filtered, a disallowed system call in each kind of thread
//! stops the VMM with the documented status and log line (through the test-only hook
//! `VMM_SANDBOX_TEST_VIOLATION`), and `--disable-sandbox` turns it off and says so.
//! The rest of the suite (tiny guests, control socket, lab) runs with the sandbox on, the
//! default, which is what proves the policies allow everything the VMM needs.

mod common;

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::{GuestCode, Scratch, describe, require_kvm, run_with_timeout, tiny_elf, vmm, vmm_run};

const LIMIT: Duration = Duration::from_secs(60);

/// The documented exit status of a VMM stopped by its sandbox (README, "Exit status").
const EXIT_BAD_SYSCALL: i32 = 31;

fn parked_kernel(scratch: &Scratch) -> std::path::PathBuf {
    scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().print("up\n").halt_forever().bytes()),
    )
}

/// Runs a parked guest with the test hook making `kind`'s threads break their policy.
fn run_with_violation_in(kind: &str, extra: &[&str]) -> Output {
    let scratch = Scratch::new(&format!("sandbox-{kind}"));
    let kernel = parked_kernel(&scratch);
    let mut command = vmm_run(&kernel, extra);
    command.env("VMM_SANDBOX_TEST_VIOLATION", kind);
    run_with_timeout(command, LIMIT)
}

/// Exit status 31 and the one-line report: `thread LABEL (POLICY policy) made system call
/// uname (63), ...`, where LABEL is one of `threads`.
fn assert_stopped_by_sandbox(output: &Output, threads: &[&str], policy: &str) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_BAD_SYSCALL),
        "{}",
        describe(output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let found = threads.iter().any(|thread| {
        stderr.contains(&format!(
            "vmm: sandbox: thread {thread} ({policy} policy) made system call uname (63), \
             which its seccomp policy does not allow; stopping the VMM (exit status 31"
        ))
    });
    assert!(
        found,
        "expected the report for one of {threads:?}\n{}",
        describe(output)
    );
}

#[test]
fn a_disallowed_syscall_in_a_vcpu_thread_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    let output = run_with_violation_in("vcpu", &["--cpus", "2"]);
    // Which vCPU gets there first varies; the report names that one.
    assert_stopped_by_sandbox(&output, &["vcpu0", "vcpu1"], "vcpu");
}

#[test]
fn a_disallowed_syscall_in_the_main_thread_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    let output = run_with_violation_in("main", &[]);
    assert_stopped_by_sandbox(&output, &["main"], "main");
}

#[test]
fn a_disallowed_syscall_in_a_device_worker_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    // Device workers confine themselves when their device is built, before the guest can
    // reach it; the hook makes them break their policy right after.
    let output = run_with_violation_in("virtio-rng", &["--rng"]);
    assert_stopped_by_sandbox(&output, &["virtio-rng"], "virtio-rng");
}

#[test]
fn a_disallowed_syscall_in_the_console_writer_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    // Every VM has a console writer; it confines itself while the VM is built.
    let output = run_with_violation_in("console-writer", &[]);
    assert_stopped_by_sandbox(&output, &["console-writer"], "console-writer");
}

#[test]
fn a_disallowed_syscall_in_the_console_streamer_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    // Every VM with a console ring (the default) has a streamer; it confines itself
    // before the main thread does.
    let output = run_with_violation_in("console-stream", &[]);
    assert_stopped_by_sandbox(&output, &["console-stream"], "console-stream");
}

#[test]
fn a_disallowed_syscall_in_the_jails_reaper_stops_the_vmm_naming_it_and_the_syscall() {
    if !require_kvm() {
        return;
    }
    // The reaper (outside the jail, jailed being the default) confines itself once it has
    // closed every descriptor but stdio; the VMM dies with it.
    let output = run_with_violation_in("reaper", &[]);
    assert_stopped_by_sandbox(&output, &["reaper"], "reaper");
}

#[test]
fn a_disallowed_syscall_in_a_disk_worker_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("sandbox-disk-worker");
    let disk = scratch.write("disk.img", &[0u8; 4096]);
    let disk = disk.display().to_string();
    let output = run_with_violation_in("virtio-blk", &["--disk", &disk]);
    assert_stopped_by_sandbox(&output, &["virtio-blk0"], "virtio-blk");
}

#[test]
fn a_disallowed_syscall_in_the_balloon_worker_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    let output = run_with_violation_in("virtio-balloon", &["--balloon"]);
    assert_stopped_by_sandbox(&output, &["virtio-balloon"], "virtio-balloon");
}

#[test]
fn a_disallowed_syscall_in_a_network_worker_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() || !common::require_tun() {
        return;
    }
    let output = run_with_violation_in(
        "virtio-net",
        &["--net", "host-ip=10.213.0.1,netmask=255.255.255.0"],
    );
    assert_stopped_by_sandbox(&output, &["virtio-net0"], "virtio-net");
}

#[test]
fn a_disallowed_syscall_in_the_console_worker_stops_the_vmm_naming_thread_and_syscall() {
    if !require_kvm() {
        return;
    }
    let output = run_with_violation_in("virtio-console", &["--console", "file=/dev/null"]);
    assert_stopped_by_sandbox(&output, &["virtio-console"], "virtio-console");
}

#[test]
fn disable_sandbox_runs_unfiltered_and_says_so_in_the_log() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("sandbox-off");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().print("up\n").acpi_poweroff().bytes()),
    );
    let mut command = vmm_run(&kernel, &["--disable-sandbox"]);
    // With the sandbox off the hook has no filter to break: the guest powers off as usual.
    command.env("VMM_SANDBOX_TEST_VIOLATION", "all");
    let output = run_with_timeout(command, LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("sandbox disabled (--disable-sandbox)"),
        "{}",
        describe(&output)
    );
}

/// `Seccomp:` of each user thread of process `pid`: (thread name, mode).
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    common::user_threads(pid)
        .into_iter()
        .map(|thread| {
            let mode = thread.field("Seccomp:");
            (thread.name, mode)
        })
        .collect()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ctl(subcommand: &str, socket: &Path) -> Output {
    let mut command = vmm();
    command.arg(subcommand).arg(socket);
    run_with_timeout(command, LIMIT)
}

#[test]
fn every_thread_of_a_running_vmm_is_filtered() {
    if !require_kvm() || !common::require_tun() {
        return;
    }
    let scratch = Scratch::new("sandbox-threads");
    let kernel = parked_kernel(&scratch);
    let socket = scratch.path("vmm.sock");
    let socket_arg = socket.display().to_string();
    let disk = scratch.write("disk.img", &[0u8; 8192]);
    let disk_ro = scratch.write("disk-ro.img", &[0u8; 8192]);
    let disk_ro_arg = format!("{},ro", disk_ro.display());
    let options = [
        "--cpus",
        "3",
        "--rng",
        "--balloon",
        "--disk",
        &disk.display().to_string(),
        "--disk",
        &disk_ro_arg,
        "--net",
        "host-ip=10.213.1.1,netmask=255.255.255.0",
        "--console",
        "file=/dev/null",
        "--socket",
        &socket_arg,
    ];
    let child = vmm_run(&kernel, &options)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let mut vm = Running(child);
    assert!(
        common::wait_until(LIMIT, || socket.exists()),
        "vmm never created its socket"
    );
    // An answer from the run loop means the main thread has installed its filter, which
    // it does after starting the vCPUs.
    let stats = ctl("stats", &socket);
    assert_eq!(stats.status.code(), Some(0), "{}", describe(&stats));
    let pid = common::vmm_process(vm.0.id());
    let expected = [
        "vcpu0",
        "vcpu1",
        "vcpu2",
        "console-writer",
        "console-stream",
        "virtio-rng",
        "virtio-blk0",
        "virtio-blk1",
        "virtio-net0",
        "virtio-balloon",
        "virtio-console",
        "hvc0-writer",
    ];
    // Each vCPU thread names itself and installs its filter when it first runs, which a
    // busy host may not have scheduled yet: wait (bounded) until every thread has.
    common::wait_until(LIMIT, || {
        let modes = seccomp_modes(pid);
        modes.iter().all(|(_, mode)| mode == "2")
            && expected
                .iter()
                .all(|t| modes.iter().any(|(name, _)| name == t))
    });

    let modes = seccomp_modes(pid);
    let names: Vec<&str> = modes.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        modes.len(),
        13,
        "the main thread, three vCPU threads, the two console writers, the console streamer \
         and the rng, two disk, net, balloon and console workers: {names:?}"
    );
    for (name, mode) in &modes {
        assert_eq!(
            mode, "2",
            "thread {name} is not under a seccomp filter (Seccomp: {mode}); all: {modes:?}"
        );
    }
    for thread in expected {
        assert!(names.contains(&thread), "{thread} missing from {names:?}");
    }

    let stop = ctl("stop", &socket);
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    let status = vm.0.wait().expect("wait for vmm");
    assert_eq!(status.code(), Some(0), "vmm stop ends the VM with status 0");
}
