//! libvmm_control from C, end to end: `tests/c/vmm_control_test.c` is compiled with the
//! system `cc` against the shared and against the static library this build made
//! (vm_control_c), and drives a real `vmm run --socket` on a tiny guest through every call
//! of the C API, checking every returned field and each call's error path: no socket, bad
//! arguments, the VMM's refusals (balloon without `--balloon` gives -ENODEV with kind
//! Unsupported), wrong descriptors. It runs under valgrind, which must report no invalid
//! access and no leak; the program itself checks that it ends with the descriptors it
//! started with. A snapshot the program writes with `VMM_CONTROL_SNAPSHOT_STOP` from the
//! counting guest is restored with `vmm run --restore`, which must count on without a gap.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::counting::{Vmm, assert_consecutive, counts};
use common::{GuestCode, Scratch, describe, require_kvm, tiny_elf, vmm_run, wait_with_timeout};

/// Longest the C program may take (under valgrind, on a loaded host).
const PROGRAM_LIMIT: Duration = Duration::from_secs(120);
/// Longest `vmm run` may take to exit after the program stopped it.
const VM_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Linkage {
    Shared,
    Static,
}

/// Compiles the C test program in `scratch`, linked as asked.
fn compile(scratch: &Scratch, linkage: Linkage) -> PathBuf {
    let lib = Path::new(vmm_control::LIB_DIR);
    let exe = scratch.path("vmm_control_test");
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(vmm_control::INCLUDE_DIR)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/c/vmm_control_test.c"
        ))
        .arg("-o")
        .arg(&exe);
    match linkage {
        Linkage::Shared => {
            cc.arg("-L").arg(lib).arg("-lvmm_control");
            cc.arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Linkage::Static => {
            cc.arg(lib.join("libvmm_control.a"));
            cc.args(["-lpthread", "-ldl", "-lm", "-lrt", "-lutil", "-lgcc_s"]);
        }
    }
    let output = cc.output().expect("run cc");
    assert!(
        output.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if let Linkage::Static = linkage {
        let ldd = Command::new("ldd").arg(&exe).output().expect("ldd");
        let deps = String::from_utf8_lossy(&ldd.stdout);
        assert!(
            !deps.contains("libvmm_control"),
            "linked statically: {deps}"
        );
    }
    exe
}

fn valgrind() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("valgrind"))
        .find(|p| p.is_file());
    if found.is_none() {
        common::skip("valgrind is not installed (apt-get install valgrind; tools/lab kit does)");
    }
    found
}

/// Starts a parked tiny guest with a control socket (and `--balloon` if asked), runs the C
/// program against it under valgrind, and checks that both finished cleanly.
fn drive(linkage: Linkage, balloon: bool) {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new(if balloon {
        "c-api-balloon"
    } else {
        "c-api-plain"
    });
    let exe = compile(&scratch, linkage);
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().print("parked\n").halt_forever().bytes()),
    );
    let socket = scratch.path("vmm.sock");
    let serial = format!("file={}", scratch.path("console.log").display());
    let socket_arg = socket.display().to_string();
    let mut args = vec!["--serial", &serial, "--socket", &socket_arg];
    if balloon {
        args.push("--balloon");
    }
    let vm = vmm_run(&kernel, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm run");
    // The guest has printed by the time the program reads its serial counters.
    let log = scratch.path("console.log");
    let ready = common::wait_until(Duration::from_secs(10), || {
        socket.exists() && std::fs::read(&log).is_ok_and(|l| l.ends_with(b"parked\n"))
    });
    assert!(ready, "vmm run did not start its guest and socket");

    let output = run_program(
        &scratch,
        &exe,
        &[&socket_arg, if balloon { "balloon" } else { "plain" }],
    );
    let vm = wait_with_timeout(vm, VM_LIMIT);
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout) == "ok\n",
        "{linkage:?} program: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        vm.status.code(),
        Some(0),
        "vmm run after vmm_control_stop: {}",
        String::from_utf8_lossy(&vm.stderr)
    );
}

/// Runs the C program `exe` with `args`, under valgrind when it is installed, with its
/// temporary files in `scratch`.
fn run_program(scratch: &Scratch, exe: &Path, args: &[&str]) -> std::process::Output {
    let mut program = match valgrind() {
        Some(valgrind) => {
            let mut c = Command::new(valgrind);
            c.args([
                "-q",
                "--error-exitcode=99",
                "--leak-check=full",
                "--show-leak-kinds=definite,indirect",
                "--errors-for-leak-kinds=definite,indirect",
            ])
            .arg(exe);
            c
        }
        None => Command::new(exe),
    };
    program.args(args).env("TMPDIR", scratch.path(""));
    common::run_with_timeout(program, PROGRAM_LIMIT)
}

#[test]
fn c_program_drives_every_call_through_the_shared_library() {
    drive(Linkage::Shared, true);
}

#[test]
fn c_program_drives_every_call_through_the_static_library() {
    drive(Linkage::Static, true);
}

#[test]
fn c_program_sees_the_vmms_refusal_of_balloon_requests_without_a_balloon_shared() {
    drive(Linkage::Shared, false);
}

#[test]
fn c_program_sees_the_vmms_refusal_of_balloon_requests_without_a_balloon_static() {
    drive(Linkage::Static, false);
}

/// The C program snapshots a counting guest with `VMM_CONTROL_SNAPSHOT_STOP`, which ends
/// `vmm run` with 0; `vmm run --restore STREAM --memory MEMORY` then counts on from where
/// the snapshot stopped it: one sequence from 1 across both, nothing lost or repeated.
#[test]
fn a_snapshot_written_from_c_with_stop_ends_the_vm_and_restores() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("c-api-snapshot");
    let exe = compile(&scratch, Linkage::Shared);
    let mut vm = Vmm::boot(&scratch, "first");
    vm.wait_for_output(900);
    let (stream, memory) = (scratch.path("c.snap"), scratch.path("c.mem"));
    let socket = vm.socket.display().to_string();
    let (stream_arg, memory_arg) = (stream.display().to_string(), memory.display().to_string());
    let output = run_program(&scratch, &exe, &[&socket, "stop", &stream_arg, &memory_arg]);
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout) == "ok\n",
        "program: {}",
        describe(&output)
    );
    let exit = vm.wait_exit();
    assert_eq!(
        exit.status.code(),
        Some(0),
        "vmm run after STOP: {}",
        describe(&exit)
    );
    let last = *counts(&std::fs::read(&vm.log).expect("log"))
        .last()
        .expect("the guest counted");

    // The restore appends to the serial file the snapshot recorded.
    let restored = Vmm::restore(
        &scratch,
        &stream,
        "restored",
        None,
        &vm.log,
        &["--memory", &memory_arg],
    );
    restored.wait_for_output(900);
    restored.stop();
    let all = counts(&std::fs::read(&vm.log).expect("log"));
    assert!(
        all.len() as u32 > last + 50,
        "the restored VM counted on: {} lines after {last}",
        all.len()
    );
    assert_consecutive(&all, 1, "the original then the restored VM");
}
