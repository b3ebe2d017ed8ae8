//! `vmm snapshot` and `vmm run --restore` end to end on this host, jailed as by default,
//! with a tiny guest that counts: it prints each count as eight hex digits and a newline
//! on COM1, forever, keeping the count in a register. A restored VM that goes on from
//! where the snapshot was taken prints the very next digits, so the serial log of the
//! original and the restored VM together is `1, 2, 3, ...` without a gap or a repeat.
//!
//! A snapshot refused (registered memory, a target that is not a file) or failing (a full
//! disk) leaves the VM counting. Bad snapshot files have their own tests:
//! `tests/snapshot_bad_files.rs`; the forked writer of a snapshot that lets the VM run on,
//! `tests/snapshot_writer.rs`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::counting::{COMMAND_LIMIT, COUNTER, Vmm, assert_consecutive, counts, stopped_snapshot};
use common::{Scratch, describe, require_kvm, run_with_timeout, tiny_elf, vmm};

#[test]
fn a_restored_vm_counts_on_from_where_the_snapshot_stopped_it() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-continue");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let before = std::fs::read(&log).expect("log");
    let last = *counts(&before).last().expect("the guest counted");
    // The restore appends to the serial file the snapshot recorded.
    let vm = Vmm::restore(&scratch, &snapshot, "restored", None, &log, &[]);
    vm.wait_for_output(900);
    let stats = vm.ctl_ok("stats", &[]);
    assert!(String::from_utf8_lossy(&stats.stdout).contains("vcpus"));
    vm.stop();
    let all = counts(&std::fs::read(&log).expect("log"));
    assert!(
        all.len() as u32 > last + 50,
        "the restored VM counted on: {} lines",
        all.len()
    );
    // One sequence from 1, across the snapshot: not restarted at 0, nothing lost or repeated.
    assert_consecutive(&all, 1, "the original then the restored VM");
}

#[test]
fn two_restores_of_one_snapshot_run_side_by_side() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-twice");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let last = *counts(&std::fs::read(&log).expect("log"))
        .last()
        .expect("counted");
    let (log_a, log_b) = (scratch.path("a.log"), scratch.path("b.log"));
    let a = Vmm::restore(&scratch, &snapshot, "a", Some(&log_a), &log, &[]);
    let b = Vmm::restore(&scratch, &snapshot, "b", Some(&log_b), &log, &[]);
    a.wait_for_output(900);
    b.wait_for_output(900);
    a.stop();
    b.stop();
    for restored in [&log_a, &log_b] {
        let text = std::fs::read(restored).expect("log");
        // The first line completes the one the snapshot cut; the next is last + 2.
        let after_first = text.iter().position(|&b| b == b'\n').expect("a line") + 1;
        assert_consecutive(&counts(&text[after_first..]), last + 2, "a restored VM");
    }
}

#[test]
fn a_snapshot_without_stop_leaves_the_vm_counting_and_its_memory_file_sparse() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-running");
    let vm = Vmm::boot(&scratch, "vm");
    vm.wait_for_output(900);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, false);
    vm.wait_for_output(900);
    let memory = std::fs::metadata(scratch.path("vm.snap.mem")).expect("FILE.mem by default");
    assert_eq!(memory.len(), 32 << 20, "the memory file is as long as RAM");
    // The guest touched its code, its page tables and the boot data: a few pages. The
    // rest is holes (slack for file system block granularity).
    let allocated = memory.blocks() * 512;
    assert!(
        allocated <= 1 << 20,
        "{allocated} bytes allocated for 32 MiB of mostly zeros"
    );
    vm.stop();
    assert_consecutive(
        &counts(&std::fs::read(scratch.path("vm.log")).expect("log")),
        1,
        "a VM snapshotted while it ran",
    );
}

#[test]
fn a_paused_restore_runs_only_once_resumed() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-paused");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let restored_log = scratch.path("restored.log");
    let vm = Vmm::restore(
        &scratch,
        &snapshot,
        "r",
        Some(&restored_log),
        &log,
        &["--paused"],
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(vm.log_len(), 0, "a --paused restore printed before Resume");
    vm.ctl_ok("resume", &[]);
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn a_snapshot_is_refused_while_a_client_s_memory_is_registered() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-registered");
    let vm = Vmm::boot(&scratch, "vm");
    let region = scratch.write("region", &[0u8; 8192]);
    let registered = vm.ctl_ok("register-memory", &[region.to_str().expect("UTF-8")]);
    let registered = String::from_utf8_lossy(&registered.stdout).into_owned();
    let slot = registered
        .split_whitespace()
        .skip_while(|word| *word != "slot")
        .nth(1)
        .expect("register-memory prints the slot")
        .to_string();
    let snapshot = scratch.path("vm.snap");
    let output = vm.ctl("snapshot", &[snapshot.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unsupported (Device or resource busy)"),
        "{stderr}"
    );
    assert!(
        !snapshot.exists(),
        "a refused snapshot leaves no file behind"
    );
    vm.wait_for_output(900);
    vm.ctl_ok("unregister-memory", &[&slot]);
    vm.snapshot(&snapshot, false);
    vm.stop();
}

#[test]
fn a_snapshot_to_a_full_disk_fails_and_the_vm_counts_on() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-full");
    let full = scratch.path("full");
    std::fs::create_dir(&full).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(&full)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        common::skip("THIS TEST NEEDS TO MOUNT A TINY TMPFS (root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(full.clone());
    let vm = Vmm::boot(&scratch, "vm");
    vm.wait_for_output(900);
    let snapshot = scratch.path("vm.snap");
    let memory = full.join("vm.mem");
    let output = vm.ctl(
        "snapshot",
        &[
            snapshot.to_str().expect("UTF-8"),
            "--memory",
            memory.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        !snapshot.exists() && !memory.exists(),
        "the failed snapshot's files are removed"
    );
    vm.wait_for_output(900);
    vm.stop();
    assert_consecutive(
        &counts(&std::fs::read(scratch.path("vm.log")).expect("log")),
        1,
        "a VM whose snapshot failed",
    );
}

#[test]
fn a_snapshot_to_a_device_is_refused_before_anything_is_touched() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-device");
    let vm = Vmm::boot(&scratch, "vm");
    let snapshot = scratch.path("vm.snap");
    let output = vm.ctl(
        "snapshot",
        &[snapshot.to_str().expect("UTF-8"), "--memory", "/dev/full"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/dev/full: not a regular file"), "{stderr}");
    assert!(Path::new("/dev/full").exists(), "the device is left alone");
    assert!(!snapshot.exists());
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn a_vm_with_a_virtio_console_is_saved_and_restored_with_it() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-console");
    let kernel = scratch.write("vm.elf", &tiny_elf(&COUNTER));
    let (socket, log) = (scratch.path("vm.sock"), scratch.path("vm.log"));
    let hvc = scratch.path("hvc.log");
    let mut command = vmm();
    command.args(["run", "--mem", "32"]);
    command
        .arg("--serial")
        .arg(format!("file={}", log.display()));
    command
        .arg("--console")
        .arg(format!("file={}", hvc.display()));
    command.arg("--socket").arg(&socket).arg(&kernel);
    let vm = Vmm::spawn(command, socket, log.clone());
    vm.wait_for_output(900);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, true);
    drop(vm);
    let last = *counts(&std::fs::read(&log).expect("log"))
        .last()
        .expect("counted");

    // The restore brings the console back from the recorded --console (no option given).
    let restored = Vmm::restore(&scratch, &snapshot, "restored", None, &log, &[]);
    restored.wait_for_output(900);
    let queues = restored.ctl_ok("queues", &[]);
    restored.stop();

    assert!(
        String::from_utf8_lossy(&queues.stdout).contains("console"),
        "the restored VM has its virtio-console: {}",
        describe(&queues)
    );
    let all = counts(&std::fs::read(&log).expect("log"));
    assert!(all.len() as u32 > last + 50, "the restored VM counted on");
    assert_consecutive(&all, 1, "a VM with a virtio-console, across a restore");
}

#[test]
fn a_snapshot_handed_over_as_descriptors_restores() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-fds");
    let (snapshot, _) = stopped_snapshot(&scratch);
    let stream = std::fs::File::open(&snapshot).expect("open snapshot");
    let memory = std::fs::File::open(scratch.path("vm.snap.mem")).expect("open memory file");
    let (stream_fd, memory_fd) = (stream.as_raw_fd(), memory.as_raw_fd());
    let restored_log = scratch.path("restored.log");
    let socket = scratch.path("fds.sock");
    let mut command = vmm();
    command.args(["run", "--restore", "fd=5", "--memory", "fd=6", "--socket"]);
    command.arg(&socket);
    command
        .arg("--serial")
        .arg(format!("file={}", restored_log.display()));
    // SAFETY: between fork and exec only async-signal-safe calls on integers: each file is
    // copied above 100 (close-on-exec), then placed at 5 and 6 (dup2 clears close-on-exec).
    unsafe {
        command.pre_exec(move || {
            let high = [
                libc::fcntl(stream_fd, libc::F_DUPFD_CLOEXEC, 100),
                libc::fcntl(memory_fd, libc::F_DUPFD_CLOEXEC, 100),
            ];
            for (fd, number) in high.into_iter().zip([5, 6]) {
                if fd < 0 || libc::dup2(fd, number) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let vm = Vmm::spawn(command, socket, restored_log);
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn a_jailed_vm_whose_only_output_is_a_pipe_can_write_a_memory_file_as_large_as_its_ram() {
    if !require_kvm() {
        return;
    }
    // The jail's RLIMIT_FSIZE used to come from the writable files alone: with the serial
    // console on a pipe and no disk, no file could grow at all.
    let scratch = Scratch::new("snapshot-fsize");
    let kernel = scratch.write("vm.elf", &tiny_elf(&COUNTER));
    let socket = scratch.path("vm.sock");
    let mut command = vmm();
    command
        .args(["run", "--mem", "32", "--socket"])
        .arg(&socket)
        .arg(&kernel);
    let mut vm = Vmm::spawn(command, socket, scratch.path("unused.log"));
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, true);
    let output = vm.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let memory = std::fs::metadata(scratch.path("vm.snap.mem")).expect("memory file");
    assert_eq!(memory.len(), 32 << 20);
    // Its serial output was recorded as stdio: give a file at restore.
    let log = scratch.path("restored.log");
    let restored = Vmm::restore(&scratch, &snapshot, "r", Some(&log), &log, &[]);
    restored.wait_for_output(900);
    restored.stop();
}

#[test]
fn a_restored_vm_is_snapshotted_and_restored_again() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-again");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let mut second = Vmm::restore(&scratch, &snapshot, "second", None, &log, &[]);
    second.wait_for_output(900);
    // Its RAM is the first memory file, mapped privately: saved again page by page.
    let again = scratch.path("again.snap");
    second.snapshot(&again, true);
    let output = second.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let third = Vmm::restore(&scratch, &again, "third", None, &log, &[]);
    third.wait_for_output(900);
    third.stop();
    assert_consecutive(
        &counts(&std::fs::read(&log).expect("log")),
        1,
        "three processes, one count",
    );
}

#[test]
fn recorded_devices_come_back_and_a_disk_given_at_restore_replaces_the_recorded_one() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-devices");
    let disk = scratch.write("disk.img", &vec![0u8; 1 << 20]);
    let other = scratch.write("other.img", &vec![0u8; 1 << 20]);
    let kernel = scratch.write("vm.elf", &tiny_elf(&COUNTER));
    let (socket, log) = (scratch.path("vm.sock"), scratch.path("vm.log"));
    let mut command = vmm();
    command.args(["run", "--mem", "32", "--rng", "--balloon"]);
    command.arg("--disk").arg(&disk);
    command
        .arg("--serial")
        .arg(format!("file={}", log.display()));
    command.arg("--socket").arg(&socket).arg(&kernel);
    let mut vm = Vmm::spawn(command, socket, log.clone());
    vm.ctl_ok("balloon", &["--target", "4"]);
    let snapshot = scratch.path("vm.snap");
    vm.snapshot(&snapshot, true);
    let output = vm.wait_exit();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    // The recorded disk (free again: the first VM ended) and the balloon's target.
    let restored = Vmm::restore(&scratch, &snapshot, "r1", None, &log, &[]);
    let stats = restored.ctl_ok("stats", &[]);
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    assert!(stats.contains("target 1024 pages"), "{stats}");
    assert!(
        stats.contains("disk0") || stats.contains("block"),
        "{stats}"
    );
    // While it holds the recorded image's lock, a second restore takes another image.
    let log2 = scratch.path("r2.log");
    let other_arg = other.to_str().expect("UTF-8");
    let second = Vmm::restore(
        &scratch,
        &snapshot,
        "r2",
        Some(&log2),
        &log,
        &["--disk", other_arg],
    );
    second.wait_for_output(900);
    second.stop();
    restored.stop();
    // Without it, the second restore is refused on the lock, naming the image.
    let _holder = Vmm::restore(&scratch, &snapshot, "r3", None, &log, &[]);
    let mut command = vmm();
    command.arg("run").arg("--restore").arg(&snapshot);
    command
        .arg("--serial")
        .arg(format!("file={}", log2.display()));
    let output = run_with_timeout(command, COMMAND_LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("disk.img"),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_client_passing_pipes_gets_invalid_argument_and_the_vmm_never_blocks() {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use vm_control::client::{Client, ClientError};
    use vm_control::wire::{ErrorKind, Request};
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-pipes");
    let vm = Vmm::boot(&scratch, "vm");
    let mut fds = [-1; 2];
    // SAFETY: pipe(2) fills the two ints with new descriptors, owned just below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut client = Client::connect(&vm.socket).expect("connect");
    client
        .set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let refused = client.request_with_fds(
        Request::Snapshot { flags: 0 },
        &[write.as_fd(), write.as_fd()],
    );
    match refused {
        Err(ClientError::Vmm(reply)) => {
            assert_eq!(reply.kind, ErrorKind::InvalidArgument);
            assert_eq!(reply.errno, libc::EINVAL);
        }
        other => panic!("a snapshot into pipes: {other:?}"),
    }
    drop(read);
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn a_client_passing_an_appending_or_read_only_file_is_refused_and_nothing_is_written() {
    use std::os::fd::AsFd;
    use vm_control::client::{Client, ClientError};
    use vm_control::wire::{ErrorKind, Request};
    if !require_kvm() {
        return;
    }
    // pwrite(2) on an O_APPEND file appends: the memory file's pages would land in the
    // wrong places and the snapshot would be reported written.
    let scratch = Scratch::new("snapshot-append");
    let vm = Vmm::boot(&scratch, "vm");
    let open = |name: &str, options: &mut std::fs::OpenOptions| {
        options
            .create(true)
            .truncate(false)
            .open(scratch.path(name))
            .expect("open")
    };
    let good = open("good", std::fs::OpenOptions::new().write(true));
    let appending = open("appending", std::fs::OpenOptions::new().append(true));
    std::fs::write(scratch.path("read-only"), b"").expect("create");
    let read_only = std::fs::File::open(scratch.path("read-only")).expect("open");
    let mut client = Client::connect(&vm.socket).expect("connect");
    client
        .set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for (bad, errno, what) in [
        (&appending, libc::EINVAL, "O_APPEND"),
        (&read_only, libc::EBADF, "read-only"),
    ] {
        for fds in [[bad.as_fd(), good.as_fd()], [good.as_fd(), bad.as_fd()]] {
            match client.request_with_fds(Request::Snapshot { flags: 0 }, &fds) {
                Err(ClientError::Vmm(reply)) => {
                    assert_eq!(reply.kind, ErrorKind::InvalidArgument, "{what}");
                    assert_eq!(reply.errno, errno, "{what}");
                }
                other => panic!("a snapshot into a {what} file: {other:?}"),
            }
        }
    }
    assert_eq!(
        std::fs::metadata(scratch.path("appending"))
            .expect("stat")
            .len(),
        0
    );
    assert_eq!(
        std::fs::metadata(scratch.path("good")).expect("stat").len(),
        0
    );
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn a_snapshot_into_the_files_a_vm_was_restored_from_is_refused_and_leaves_them_whole() {
    if !require_kvm() {
        return;
    }
    // The restored VM's RAM is its memory file, mapped privately: truncating it would pull
    // the guest's pages from under it (KVM_RUN fails with EFAULT and the VM dies).
    let scratch = Scratch::new("snapshot-onto-itself");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let memory = scratch.path("vm.snap.mem");
    let before = (
        std::fs::read(&snapshot).expect("stream"),
        std::fs::metadata(&memory).expect("memory file").len(),
    );
    let restored = Vmm::restore(&scratch, &snapshot, "restored", None, &log, &[]);
    restored.wait_for_output(900);
    let file = snapshot.to_str().expect("UTF-8 path");
    for args in [
        vec![file],
        vec!["other.snap", "--memory", memory.to_str().expect("path")],
    ] {
        let output = restored.ctl("snapshot", &args);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    restored.wait_for_output(900);
    assert_eq!(
        std::fs::read(&snapshot).expect("stream"),
        before.0,
        "the stream is as it was"
    );
    assert_eq!(
        std::fs::metadata(&memory).expect("memory file").len(),
        before.1
    );
    restored.stop();
    // And the snapshot still restores.
    let again = Vmm::restore(
        &scratch,
        &snapshot,
        "again",
        Some(&scratch.path("again.log")),
        &log,
        &[],
    );
    again.wait_for_output(900);
    again.stop();
}

#[test]
fn a_stop_signal_during_a_snapshot_stops_the_vm_and_leaves_no_half_snapshot_reported_whole() {
    if !require_kvm() {
        return;
    }
    // SIGTERM a few moments after the request: before the VMM reads it, while it pauses
    // the VM, while its forked writer writes guest RAM, or after. Whichever, the VMM exits with the stop signal's status and removes its
    // socket, and a snapshot the client reports written restores and counts on.
    let scratch = Scratch::new("snapshot-signal");
    let mut written = 0;
    for (round, delay_ms) in [0u64, 1, 3, 10, 30].into_iter().enumerate() {
        // The RAM writer waits 20 ms: the later signals find it writing.
        let mut vm = Vmm::boot_with(&scratch, &format!("vm{round}"), &COUNTER, Some(20), &[]);
        vm.wait_for_output(90);
        let snapshot = scratch.path(&format!("vm{round}.snap"));
        let mut client = vmm();
        client.arg("snapshot").arg(&vm.socket).arg(&snapshot);
        let client = client
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn vmm snapshot");
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: kill(2) on the pid of our own child, still running or not yet reaped.
        assert_eq!(unsafe { libc::kill(vm.pid(), libc::SIGTERM) }, 0);
        let client = common::wait_with_timeout(client, COMMAND_LIMIT);
        let output = vm.wait_exit();
        assert_eq!(
            output.status.code(),
            Some(128 + libc::SIGTERM),
            "round {round}: {}",
            describe(&output)
        );
        assert!(!vm.socket.exists(), "round {round}: the socket is removed");
        if client.status.code() == Some(0) {
            written += 1;
            let log = scratch.path(&format!("vm{round}.restored.log"));
            let restored = Vmm::restore(
                &scratch,
                &snapshot,
                &format!("r{round}"),
                Some(&log),
                &log,
                &[],
            );
            restored.wait_for_output(900);
            restored.stop();
        } else {
            let stderr = String::from_utf8_lossy(&client.stderr);
            assert_eq!(
                client.status.code(),
                Some(1),
                "round {round}: {}",
                describe(&client)
            );
            assert!(
                stderr.starts_with("vmm: error: ") && stderr.lines().count() == 1,
                "round {round}: one line saying why: {stderr}"
            );
        }
    }
    eprintln!("{written} of 5 snapshots were written before the VMM stopped");
}
