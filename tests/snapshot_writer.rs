//! The forked writer of a snapshot that lets the VM run on (`vmm snapshot` without
//! `--stop`), end to end on this host, jailed as by default: the VM counts on while its
//! RAM is written and restores to the moment of the fork; a second snapshot meanwhile is
//! refused; a stop signal kills the writer and removes its files; a client that leaves
//! breaks nothing; a guest that powers off meanwhile still gets its snapshot finished; and a
//! writer that cannot be forked fails the snapshot and nothing else.
//! The VMM's test hook (`VMM_SNAPSHOT_TEST_WRITER_DELAY_MS`) holds the writer back so
//! each of these finds it writing.

mod common;

use std::path::{Path, PathBuf};

use common::counting::{
    COMMAND_LIMIT, COUNTER, MEMORY_COUNTER, START_LIMIT, Vmm, assert_consecutive, counts,
};
use common::{GuestCode, Scratch, describe, require_kvm};

/// The last complete count in a serial log.
fn last_count(log: &Path) -> u32 {
    *counts(&std::fs::read(log).expect("log"))
        .last()
        .expect("the guest counted")
}

#[test]
fn a_snapshot_is_written_while_the_vm_runs_on_and_restores_to_the_moment_it_was_taken() {
    if !require_kvm() {
        return;
    }
    // The guest writes a page of RAM on every count and checks it against its register:
    // memory written by the forked writer is from the snapshot's moment, not from later,
    // or the restored guest prints X.
    let scratch = Scratch::new("snapshot-background");
    let vm = Vmm::boot_with(&scratch, "vm", &MEMORY_COUNTER, Some(3000), &[]);
    vm.wait_for_output(900);
    let before = last_count(&vm.log);
    let snapshot = scratch.path("vm.snap");
    let mut client = vm.start_snapshot(&snapshot);

    // While the writer waits, the guest counts on, other requests are served, and a
    // second snapshot is refused without touching its files.
    assert!(
        common::wait_until(START_LIMIT, || !vm.vmm_children().is_empty()),
        "the VMM forked its RAM writer"
    );
    vm.wait_for_output(900);
    assert!(
        matches!(client.try_wait(), Ok(None)),
        "the guest printed 900 bytes while the snapshot was being written"
    );
    vm.ctl_ok("stats", &[]);
    let second = scratch.path("second.snap");
    let output = vm.ctl("snapshot", &[second.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("failed (Device or resource busy)")
            && stderr.contains("another snapshot of this VM is being written"),
        "{stderr}"
    );
    assert!(!second.exists() && !scratch.path("second.snap.mem").exists());

    let client = common::wait_with_timeout(client, COMMAND_LIMIT);
    assert_eq!(client.status.code(), Some(0), "{}", describe(&client));
    let after = last_count(&vm.log);
    assert!(
        after > before + 100,
        "the VM ran during the save: count {before:#x} at the request, {after:#x} at the reply"
    );
    assert_eq!(
        vm.vmm_children(),
        [],
        "the writer is reaped before the reply"
    );
    vm.stop();

    let restored_log = scratch.path("restored.log");
    let restored = Vmm::restore(
        &scratch,
        &snapshot,
        "r",
        Some(&restored_log),
        &vm_log(&scratch),
        &[],
    );
    // 900 bytes, or the X that ends the guest.
    common::wait_until(START_LIMIT, || {
        std::fs::read(&restored_log).is_ok_and(|text| text.len() >= 900 || text.contains(&b'X'))
    });
    restored.stop();
    let text = std::fs::read(&restored_log).expect("log");
    assert!(
        !text.contains(&b'X'),
        "the restored guest found its memory and its registers from different moments"
    );
    // The first line completes the one the snapshot cut; the next is the count after it.
    let after_first = text.iter().position(|&b| b == b'\n').expect("a line") + 1;
    let restored_counts = counts(&text[after_first..]);
    let first = restored_counts[0];
    assert!(
        first > before && first <= after + 2,
        "the restored VM goes on from between the request ({before:#x}) and the reply \
         ({after:#x}): {first:#x}"
    );
    assert_consecutive(
        &restored_counts,
        first,
        "the VM restored from a background snapshot",
    );
}

fn vm_log(scratch: &Scratch) -> PathBuf {
    scratch.path("vm.log")
}

#[test]
fn a_stop_signal_while_a_snapshot_is_written_kills_its_writer_and_removes_the_files() {
    if !require_kvm() {
        return;
    }
    // Jailed, the writer is in the VMM's PID namespace; without the jail only its
    // PR_SET_PDEATHSIG and the VMM's kill tie it to the VMM.
    let scratch = Scratch::new("snapshot-signal-writer");
    for (round, extra) in [&[][..], &["--no-jail"][..]].into_iter().enumerate() {
        let mut vm = Vmm::boot_with(
            &scratch,
            &format!("vm{round}"),
            &COUNTER,
            Some(60_000),
            extra,
        );
        vm.wait_for_output(90);
        let snapshot = scratch.path(&format!("vm{round}.snap"));
        let client = vm.start_snapshot(&snapshot);
        let mut writers = Vec::new();
        assert!(
            common::wait_until(START_LIMIT, || {
                writers = vm.vmm_children();
                !writers.is_empty()
            }),
            "round {round}: the VMM forked its RAM writer"
        );
        // SAFETY: kill(2) on the pid of our own child, still running.
        assert_eq!(unsafe { libc::kill(vm.pid(), libc::SIGTERM) }, 0);

        // Answered at once, not after the writer's minute.
        let client = common::wait_with_timeout(client, COMMAND_LIMIT);
        let output = vm.wait_exit();
        assert_eq!(
            output.status.code(),
            Some(128 + libc::SIGTERM),
            "round {round}: {}",
            describe(&output)
        );
        assert_eq!(
            client.status.code(),
            Some(1),
            "round {round}: {}",
            describe(&client)
        );
        let stderr = String::from_utf8_lossy(&client.stderr);
        assert!(
            stderr.contains("failed (Operation canceled)") && stderr.lines().count() == 1,
            "round {round}: {stderr}"
        );
        assert!(
            !snapshot.exists() && !scratch.path(&format!("vm{round}.snap.mem")).exists(),
            "round {round}: the abandoned snapshot's files are removed"
        );
        for writer in writers {
            assert!(
                !Path::new(&format!("/proc/{writer}")).exists(),
                "round {round}: the writer {writer} is gone (no zombie, no orphan)"
            );
        }
    }
}

#[test]
fn a_client_that_leaves_during_a_background_snapshot_breaks_nothing() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-client-gone");
    let vm = Vmm::boot_with(&scratch, "vm", &COUNTER, Some(1000), &[]);
    vm.wait_for_output(90);
    let mut client = vm.start_snapshot(&scratch.path("gone.snap"));
    assert!(
        common::wait_until(START_LIMIT, || !vm.vmm_children().is_empty()),
        "the VMM forked its RAM writer"
    );
    client.kill().expect("kill the client");
    client.wait().expect("reap the client");
    // The writer finishes for nobody; then the VMM is free for the next snapshot.
    assert!(
        common::wait_until(START_LIMIT, || vm.vmm_children().is_empty()),
        "the writer is reaped though its client has gone"
    );
    vm.wait_for_output(900);
    vm.ctl_ok("stats", &[]);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, false);
    vm.stop();
    let log = scratch.path("r.log");
    let restored = Vmm::restore(&scratch, &snapshot, "r", Some(&log), &log, &[]);
    restored.wait_for_output(900);
    restored.stop();
}

#[test]
fn a_guest_that_powers_off_during_a_background_snapshot_still_gets_it_finished() {
    if !require_kvm() {
        return;
    }
    // The guest powers off about three seconds after it starts; the writer is held back
    // six. The snapshot is of a moment before the power-off, so the VMM finishes it, answers
    // the client, and only then exits with the guest's power-off status (0). The snapshot
    // restores to a guest still waiting out its seconds, which then powers off too.
    let scratch = Scratch::new("snapshot-poweroff-writer");
    let guest = GuestCode::new()
        .print("ready\n")
        .wait_rtc_seconds(3)
        .print("off\n")
        .acpi_poweroff();
    let mut vm = Vmm::boot_with(&scratch, "vm", guest.bytes(), Some(6000), &[]);
    assert!(
        common::wait_until(START_LIMIT, || {
            std::fs::read_to_string(&vm.log).is_ok_and(|log| log == "ready\n")
        }),
        "the guest did not start"
    );
    let snapshot = scratch.path("vm.snap");
    let client = vm.start_snapshot(&snapshot);
    let mut writers = Vec::new();
    assert!(
        common::wait_until(START_LIMIT, || {
            writers = vm.vmm_children();
            !writers.is_empty()
        }),
        "the VMM forked its RAM writer"
    );

    assert!(
        common::wait_until(START_LIMIT, || {
            std::fs::read_to_string(&vm.log).is_ok_and(|log| log.ends_with("off\n"))
        }),
        "the guest did not power off"
    );
    // The writer is held back six seconds: the client is still waiting, unless the VMM
    // gave up on the snapshot when the guest powered off.
    let mut client = client;
    let early = client.try_wait();
    assert!(
        matches!(early, Ok(None)),
        "the snapshot was answered as soon as the guest powered off ({early:?}): {}",
        describe(&common::wait_with_timeout(client, COMMAND_LIMIT))
    );

    let client = common::wait_with_timeout(client, COMMAND_LIMIT);
    let output = vm.wait_exit();
    assert_eq!(client.status.code(), Some(0), "{}", describe(&client));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    for writer in writers {
        assert!(
            !Path::new(&format!("/proc/{writer}")).exists(),
            "the writer {writer} is gone (no zombie, no orphan)"
        );
    }

    let restored_log = scratch.path("restored.log");
    let mut restored = Vmm::restore(&scratch, &snapshot, "r", Some(&restored_log), &vm.log, &[]);
    let output = restored.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = std::fs::read_to_string(&restored_log).expect("restored log");
    assert_eq!(
        text, "off\n",
        "the restored guest waited out its seconds and powered off"
    );
}

/// A pids cgroup of this test's own (cgroup v1's `pids` hierarchy, as on the machines CI
/// runs on), removed when dropped. A supervisor bounds a VM's processes this way.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn new(name: &str) -> PidsCgroup {
        let hierarchy = Path::new("/sys/fs/cgroup/pids");
        assert!(
            hierarchy.join("cgroup.procs").exists(),
            "THIS TEST NEEDS CGROUP V1'S PIDS HIERARCHY AT {}",
            hierarchy.display()
        );
        let dir = hierarchy.join(format!("vmm-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make the pids cgroup");
        PidsCgroup(dir)
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.0.join(file), value)
            .unwrap_or_else(|err| panic!("write {value} to {file}: {err}"));
    }

    /// Moves process `pid` (all its threads) in.
    fn adopt(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    /// Lets no more tasks be made than are in it now.
    fn freeze_count(&self) {
        let current = std::fs::read_to_string(self.0.join("pids.current")).expect("pids.current");
        self.write("pids.max", current.trim());
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_writer_that_cannot_be_forked_fails_the_snapshot_and_the_vm_counts_on() {
    if !require_kvm() || !common::require_root() {
        return;
    }
    // The VMM's pids cgroup is full, so the writer's clone(2) fails (EAGAIN), as it would
    // for a VMM at its supervisor's process budget or out of memory.
    let scratch = Scratch::new("snapshot-fork-fails");
    let cgroup = PidsCgroup::new("fork-fails");
    let vm = Vmm::boot_with(&scratch, "vm", &COUNTER, None, &[]);
    vm.wait_for_output(90);
    cgroup.adopt(common::vmm_process(u32::try_from(vm.pid()).expect("a pid")));
    cgroup.freeze_count();

    let snapshot = scratch.path("vm.snap");
    let output = vm.ctl("snapshot", &[snapshot.to_str().expect("UTF-8")]);

    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("(Resource temporarily unavailable)") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(
        !snapshot.exists() && !scratch.path("vm.snap.mem").exists(),
        "the failed snapshot's files are removed"
    );
    assert_eq!(vm.vmm_children(), [], "no writer");
    vm.wait_for_output(900);

    // With room for the writer again, the next snapshot is taken and restores.
    cgroup.write("pids.max", "max");
    vm.snapshot(&snapshot, false);
    vm.wait_for_output(90);
    vm.stop();
    drop(cgroup);
    let log = scratch.path("r.log");
    let restored = Vmm::restore(&scratch, &snapshot, "r", Some(&log), &log, &[]);
    restored.wait_for_output(900);
    restored.stop();
}

#[test]
fn a_stop_signal_while_the_vmm_finishes_a_snapshot_after_power_off_cancels_it() {
    if !require_kvm() {
        return;
    }
    // The guest powers off during the save, so the VMM waits for its writer (held back a
    // minute); a SIGTERM then means "go now": the writer is killed, the client told, the
    // files removed, and the VMM exits at once, not after the writer's minute.
    let scratch = Scratch::new("snapshot-poweroff-signal");
    let guest = GuestCode::new()
        .print("ready\n")
        .wait_rtc_seconds(2)
        .print("off\n")
        .acpi_poweroff();
    let mut vm = Vmm::boot_with(&scratch, "vm", guest.bytes(), Some(60_000), &[]);
    assert!(
        common::wait_until(START_LIMIT, || {
            std::fs::read_to_string(&vm.log).is_ok_and(|log| log == "ready\n")
        }),
        "the guest did not start"
    );
    let snapshot = scratch.path("vm.snap");
    let client = vm.start_snapshot(&snapshot);
    let mut writers = Vec::new();
    assert!(
        common::wait_until(START_LIMIT, || {
            writers = vm.vmm_children();
            !writers.is_empty()
        }),
        "the VMM forked its RAM writer"
    );
    assert!(
        common::wait_until(START_LIMIT, || {
            std::fs::read_to_string(&vm.log).is_ok_and(|log| log.ends_with("off\n"))
        }),
        "the guest did not power off"
    );

    // The VMM is finishing the snapshot for the client, not abandoning it.
    let mut client = client;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        matches!(client.try_wait(), Ok(None)),
        "the snapshot was answered at power-off"
    );
    // SAFETY: kill(2) on the pid of our own child, still running (waiting for the writer).
    assert_eq!(unsafe { libc::kill(vm.pid(), libc::SIGTERM) }, 0);
    let client = common::wait_with_timeout(client, COMMAND_LIMIT);
    let output = vm.wait_exit();

    assert_eq!(client.status.code(), Some(1), "{}", describe(&client));
    let stderr = String::from_utf8_lossy(&client.stderr);
    assert!(stderr.contains("failed (Operation canceled)"), "{stderr}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "the guest's power-off: {}",
        describe(&output)
    );
    assert!(
        !snapshot.exists() && !scratch.path("vm.snap.mem").exists(),
        "the abandoned snapshot's files are removed"
    );
    for writer in writers {
        assert!(
            !Path::new(&format!("/proc/{writer}")).exists(),
            "the writer {writer} is gone (no zombie, no orphan)"
        );
    }
}
