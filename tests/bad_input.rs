//! Bad input on the command line or in the kernel file: one clear line on stderr, a
//! non-zero exit status, never a panic. Inputs that never end or never arrive (`/dev/zero`,
//! a FIFO) or that could not fit the guest are refused before `vmm` reads them.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{GuestCode, Scratch, require_kvm, run_with_timeout, tiny_elf, vmm, vmm_run};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs vmm and returns (exit status, stderr), asserting it did not panic.
fn fails_with(command: std::process::Command) -> (Option<i32>, String) {
    let output = run_with_timeout(command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "vmm panicked: {stderr}");
    assert!(
        !output.status.success(),
        "vmm succeeded on bad input: {stderr}"
    );
    (output.status.code(), stderr)
}

#[test]
fn missing_kernel_file_is_a_vmm_error_naming_the_file() {
    if !require_kvm() {
        return;
    }
    let (code, stderr) = fails_with(vmm_run(std::path::Path::new("/nonexistent/bzImage"), &[]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent/bzImage"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_kernel_is_rejected() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("notkernel");
    let kernel = scratch.write("notes.txt", &b"just some text, not a kernel\n".repeat(200));
    let (code, stderr) = fails_with(vmm_run(&kernel, &[]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot load the kernel"), "{stderr}");
}

#[test]
fn truncated_and_empty_kernels_are_rejected() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("truncated");
    let elf = tiny_elf(GuestCode::new().acpi_poweroff().bytes());
    for (name, bytes) in [
        ("empty", &elf[..0]),
        ("header-only", &elf[..40]),
        ("cut", &elf[..100]),
    ] {
        let kernel = scratch.write(name, bytes);
        let (code, stderr) = fails_with(vmm_run(&kernel, &[]));
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("cannot load the kernel"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn initrd_that_does_not_fit_in_memory_is_rejected() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("bigrd");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    let initrd = scratch.write("initrd", &vec![0u8; 40 << 20]);
    let initrd_arg = initrd.display().to_string();
    let (code, stderr) = fails_with(vmm_run(&kernel, &["--initrd", &initrd_arg]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("initrd"), "{stderr}");
}

/// Address space a `vmm` given an endless input may use: should it ever read such an input
/// again, it fails an allocation (and the test) instead of calling in the host's OOM killer.
const ADDRESS_SPACE_CAP: libc::rlim_t = 1 << 30;

/// Longest a `vmm` given an endless or blocking input may take to refuse it. Without the
/// bound a FIFO with no writer would hold `vmm run` (and this test) forever.
const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

/// `vmm run --mem 64 KERNEL` with `extra`, its address space capped.
fn capped_vmm_run(kernel: &Path, extra: &[&str]) -> Command {
    let mut command = vmm();
    command
        .arg("run")
        .args(["--mem", "64"])
        .args(extra)
        .arg(kernel);
    let cap = libc::rlimit {
        rlim_cur: ADDRESS_SPACE_CAP,
        rlim_max: ADDRESS_SPACE_CAP,
    };
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // setrlimit(2), which is async-signal-safe, on a limit value it owns.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Runs `command` within [`REFUSAL_LIMIT`] and returns (exit status, stderr's last line),
/// asserting it did not panic.
fn refuses_within_limit(command: Command) -> (Option<i32>, String) {
    let output = run_with_timeout(command, REFUSAL_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "vmm panicked: {stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    (output.status.code(), last)
}

fn poweroff_kernel(scratch: &Scratch) -> PathBuf {
    scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    )
}

#[test]
fn dev_zero_as_initrd_is_refused_as_not_a_regular_file() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("zero-initrd");
    let kernel = poweroff_kernel(&scratch);
    let (code, error) = refuses_within_limit(capped_vmm_run(&kernel, &["--initrd", "/dev/zero"]));
    assert_eq!(code, Some(1), "{error}");
    assert_eq!(
        error,
        "vmm: error: the initrd /dev/zero is a character device, not a regular file; give vmm \
         a file"
    );
}

#[test]
fn dev_zero_as_kernel_is_refused_as_not_a_regular_file() {
    if !require_kvm() {
        return;
    }
    let (code, error) = refuses_within_limit(capped_vmm_run(Path::new("/dev/zero"), &[]));
    assert_eq!(code, Some(1), "{error}");
    assert_eq!(
        error,
        "vmm: error: the kernel /dev/zero is a character device, not a regular file; give vmm \
         a file"
    );
}

#[test]
fn a_fifo_as_kernel_or_initrd_is_refused_without_waiting_for_a_writer() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("fifo-input");
    let kernel = poweroff_kernel(&scratch);
    let fifo = scratch.path("endless");
    let fifo_c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
    let rc = unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let fifo_arg = fifo.display().to_string();

    let (kernel_code, kernel_error) = refuses_within_limit(capped_vmm_run(&fifo, &[]));
    let (initrd_code, initrd_error) =
        refuses_within_limit(capped_vmm_run(&kernel, &["--initrd", &fifo_arg]));

    assert_eq!(kernel_code, Some(1), "{kernel_error}");
    assert_eq!(
        kernel_error,
        format!("vmm: error: the kernel {fifo_arg} is a FIFO, not a regular file; give vmm a file")
    );
    assert_eq!(initrd_code, Some(1), "{initrd_error}");
    assert_eq!(
        initrd_error,
        format!("vmm: error: the initrd {fifo_arg} is a FIFO, not a regular file; give vmm a file")
    );
}

#[test]
fn an_initrd_larger_than_guest_ram_is_refused_by_its_size_before_reading() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("huge-initrd");
    let kernel = poweroff_kernel(&scratch);
    // Sparse: 64 GiB that take no disk, and far more than the capped vmm could read.
    let initrd = scratch.path("initrd");
    let size: u64 = 64 << 30;
    std::fs::File::create(&initrd)
        .and_then(|file| file.set_len(size))
        .expect("create a sparse initrd");
    let initrd_arg = initrd.display().to_string();

    let (code, error) = refuses_within_limit(capped_vmm_run(&kernel, &["--initrd", &initrd_arg]));

    assert_eq!(code, Some(1), "{error}");
    // 64 MiB of RAM, all below 4 GiB, is what an initrd could use at most.
    assert_eq!(
        error,
        format!(
            "vmm: error: the initrd {initrd_arg} is {size} bytes, more than the {} bytes the \
             guest's memory can hold",
            64u64 << 20
        )
    );
}

#[test]
fn disks_that_cannot_be_used_are_rejected_naming_the_image() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("bad-disk");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    let missing = scratch.path("missing.img");
    let directory = scratch.path("a-directory");
    std::fs::create_dir_all(&directory).expect("create directory");
    for (disk, expected) in [
        (&missing, "cannot open disk image"),
        (&directory, "is not a regular file or block device"),
    ] {
        let disk_arg = disk.display().to_string();
        let (code, stderr) = fails_with(vmm_run(&kernel, &["--disk", &disk_arg]));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains(&disk_arg), "{stderr}");
    }
    let (code, stderr) = fails_with(vmm_run(&kernel, &["--disk", "x.img,readonly"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("PATH or PATH,ro"), "{stderr}");
}

#[test]
fn a_disk_in_use_by_another_vmm_is_refused_and_the_first_keeps_it() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("disk-in-use");
    let parked = scratch.write(
        "parked.elf",
        &tiny_elf(GuestCode::new().print("up\n").halt_forever().bytes()),
    );
    let quick = scratch.write(
        "quick.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    let image = scratch.write("shared.img", &[0u8; 4096]);
    let image_arg = image.display().to_string();
    let mut first = vmm_run(&parked, &["--disk", &image_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the first vmm");
    // The image is locked before the guest prints.
    let first_output = common::PipeReader::start(first.stdout.take());
    first_output.wait_for("up", LIMIT);

    let (code, stderr) = fails_with(vmm_run(&quick, &["--disk", &image_arg]));
    // A read-only user shares the lock with readers only: also refused.
    let ro_arg = format!("{image_arg},ro");
    let (ro_code, ro_stderr) = fails_with(vmm_run(&quick, &["--disk", &ro_arg]));
    let first_alive = matches!(first.try_wait(), Ok(None));
    let _ = first.kill();
    let _ = first.wait();

    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "disk image {image_arg} is in use by another process"
        )),
        "{stderr}"
    );
    assert_eq!(ro_code, Some(1), "{ro_stderr}");
    assert!(
        ro_stderr.contains("is in use by another process"),
        "{ro_stderr}"
    );
    assert!(first_alive, "the first vmm kept running");
}

#[test]
fn a_tap_that_does_not_exist_is_one_clear_error() {
    if !require_kvm() || !common::require_tun() {
        return;
    }
    let scratch = Scratch::new("no-tap");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    let (code, stderr) = fails_with(vmm_run(&kernel, &["--net", "tap=vmm-no-such-tap"]));
    assert_eq!(code, Some(1), "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        error,
        "vmm: error: --net: tap vmm-no-such-tap does not exist (create it first, e.g. \
         `ip tuntap add vmm-no-such-tap mode tap`)",
        "{stderr}"
    );
}

#[test]
fn creating_a_tap_without_cap_net_admin_is_one_clear_error() {
    if !require_kvm() || !common::require_tun() {
        return;
    }
    let scratch = Scratch::new("tap-no-cap");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    // Root without CAP_NET_ADMIN: /dev/kvm and /dev/net/tun open, the tap cannot be made.
    let mut command = std::process::Command::new("setpriv");
    command
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"])
        .arg(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "run",
            "--mem",
            "32",
            "--net",
            "host-ip=10.213.2.1,netmask=255.255.255.0",
        ])
        .arg(&kernel)
        .stdin(std::process::Stdio::null());
    let (code, stderr) = fails_with(command);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        "vmm: error: --net: no permission to create a tap (vmm%d): needs CAP_NET_ADMIN",
        "{stderr}"
    );
}

#[test]
fn malformed_net_options_are_usage_errors() {
    let scratch = Scratch::new("bad-net");
    let kernel = scratch.path("unused.elf");
    for bad in [
        "tap=t0,mac=52:54:00:zz:00:01",
        "tap=t0,mac=01:00:00:00:00:01",
        "host-ip=10.0.0.1,netmask=255.0.255.0",
        "host-ip=300.0.0.1,netmask=255.0.0.0",
        "bridge=br0",
    ] {
        let (code, stderr) = fails_with(vmm_run(&kernel, &["--net", bad]));
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--net"), "{bad}: {stderr}");
    }
}

#[test]
fn zero_cpus_and_too_many_cpus_are_rejected() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("cpus");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    let (code, stderr) = fails_with(vmm_run(&kernel, &["--cpus", "0"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--cpus"), "{stderr}");
    let (code, stderr) = fails_with(vmm_run(&kernel, &["--cpus", "100000"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--cpus"), "{stderr}");
}

#[test]
fn memory_too_small_or_too_large_is_rejected() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("mem");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    for mem in ["1", "999999999"] {
        let mut command = vmm();
        command.args(["run", "--mem", mem]).arg(&kernel);
        let (code, stderr) = fails_with(command);
        assert_eq!(code, Some(1), "--mem {mem}: {stderr}");
        assert!(stderr.contains("--mem"), "--mem {mem}: {stderr}");
    }
}

#[test]
fn kernel_segment_beyond_guest_memory_is_rejected() {
    if !require_kvm() {
        return;
    }
    // A segment loaded at 1 MiB that is 64 MiB long cannot fit in 32 MiB of RAM.
    let scratch = Scratch::new("toolarge");
    let mut elf = tiny_elf(GuestCode::new().acpi_poweroff().bytes());
    let memsz_offset = 64 + 40;
    elf[memsz_offset..memsz_offset + 8].copy_from_slice(&(64u64 << 20).to_le_bytes());
    let kernel = scratch.write("guest.elf", &elf);
    let (code, stderr) = fails_with(vmm_run(&kernel, &[]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot load the kernel"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_status_2() {
    let output = run_with_timeout(
        {
            let mut command = vmm();
            command.args(["run", "--mem", "lots", "k"]);
            command
        },
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(2));
    let output = run_with_timeout(
        {
            let mut command = vmm();
            command.args(["run", "--serial", "tcp:1234", "--mem", "64", "k"]);
            command
        },
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--serial"));
}

#[test]
fn malformed_console_options_are_usage_errors_naming_the_option() {
    for (value, says) in [
        ("tcp:1234", "unknown --console value 'tcp:1234'"),
        ("file=", "--console file= needs a path"),
        ("fd=x", "--console"),
        ("fd=1", "stdin, stdout or stderr"),
    ] {
        let output = run_with_timeout(
            {
                let mut command = vmm();
                command.args(["run", "--console", value, "--mem", "64", "k"]);
                command
            },
            LIMIT,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
}

#[test]
fn a_console_file_that_cannot_be_opened_is_one_clear_error() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("console-file");
    let kernel = scratch.write("guest.elf", &tiny_elf(GuestCode::new().bytes()));
    let missing_dir = scratch.path("no-such-dir/hvc.log");
    let console = format!("file={}", missing_dir.display());
    let mut command = vmm();
    command.args(["run", "--no-jail", "--mem", "64", "--console", &console]);
    command.arg(&kernel);

    let (code, stderr) = fails_with(command);

    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the console output file")
            && stderr.contains("no-such-dir/hvc.log"),
        "{stderr}"
    );
}

/// Whether we are root, which the tests below need to change user or mount namespace;
/// says so loudly when not, and fails under CI, where every test must run.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    if !root {
        let message = "THIS TEST NEEDS ROOT (to drop privileges or hide /dev/kvm)";
        common::skip(message);
    }
    root
}

#[test]
fn no_permission_on_dev_kvm_says_how_to_get_it() {
    if !require_kvm() || !is_root() {
        return;
    }
    let scratch = Scratch::new("noperm");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    // The unprivileged vmm must be able to reach the kernel file and itself, so only
    // /dev/kvm stops it: it runs a copy of vmm from the scratch directory, as the build
    // directory may sit where uid 65534 cannot go (a 0700 home). /dev/kvm is made 0600
    // root-owned in a private mount namespace: many hosts make the real one 0666.
    let vmm_copy = common::vmm_copy_for_other_users(scratch.dir());
    let script = "mount -t tmpfs none /dev && mknod -m 600 /dev/kvm c 10 232 && \
                  exec setpriv --reuid=65534 --regid=65534 --clear-groups -- \
                  \"$0\" run --mem 32 \"$1\"";
    let mut command = std::process::Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(&vmm_copy)
        .arg(&kernel)
        .env_remove("VMM_LOG")
        .stdin(std::process::Stdio::null());
    let (code, stderr) = fails_with(command);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no permission to open /dev/kvm"),
        "{stderr}"
    );
}

#[test]
fn missing_dev_kvm_is_reported_as_no_kvm() {
    if !require_kvm() || !is_root() {
        return;
    }
    let scratch = Scratch::new("nokvm");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    // A private mount namespace with an empty /dev: this host without KVM.
    let script = "mount -t tmpfs none /dev && exec \"$0\" run --mem 32 \"$1\"";
    let mut command = std::process::Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_vmm"))
        .arg(&kernel)
        .env_remove("VMM_LOG")
        .stdin(std::process::Stdio::null());
    let (code, stderr) = fails_with(command);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("this host has no KVM"), "{stderr}");
}

#[test]
fn kvm_pvm_hosts_get_a_warning_that_points_to_the_lab() {
    if !require_kvm() || !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return;
    }
    let scratch = Scratch::new("pvmwarn");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().acpi_poweroff().bytes()),
    );
    let output = run_with_timeout(vmm_run(&kernel, &[]), LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("kvm_pvm") && stderr.contains("tools/lab"),
        "{stderr}"
    );
}
