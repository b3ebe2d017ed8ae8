//! Descriptors from a supervisor, end to end on this host with tiny guests: the test plays
//! the supervisor, opens what the VM needs and starts `vmm run` with the descriptors at
//! fixed numbers (moved there in `pre_exec`, close-on-exec cleared by `dup2`). It proves
//! that a VM built from descriptors behaves as one built from paths (a disk attached, with
//! its counters in `vmm stats`, and locked; a read-only disk; a tap; the kernel and initrd;
//! the serial output; the control socket by `--socket-fd` and by socket activation, whose
//! file `vmm` leaves alone), that every
//! unusable descriptor gets one error line and status 1, and that a descriptor no option
//! names does not survive into the running VMM.

mod common;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{GuestCode, Scratch, describe, require_kvm, run_with_timeout, tiny_elf, vmm};
use vm_control::server::Listener;

/// Longest a `vmm run` may take in these tests.
const LIMIT: Duration = Duration::from_secs(60);
/// How long to wait for a started `vmm run` to answer on its control socket.
const SOCKET_LIMIT: Duration = Duration::from_secs(10);
/// Most descriptors one test hands over.
const MAX_HANDED: usize = 8;

/// Places each `(source, number)` descriptor at `number` in the child, without
/// close-on-exec. Every source is first copied above all the numbers, so one placement
/// cannot overwrite a source still to be placed.
fn hand_over(command: &mut Command, fds: &[(RawFd, RawFd)]) {
    assert!(fds.len() <= MAX_HANDED);
    let mut placements = [(-1, -1); MAX_HANDED];
    placements[..fds.len()].copy_from_slice(fds);
    let count = fds.len();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (fcntl, dup2) on plain integers it owns; it allocates
    // nothing.
    unsafe {
        command.pre_exec(move || {
            let mut moved = [-1; MAX_HANDED];
            for i in 0..count {
                moved[i] = libc::fcntl(placements[i].0, libc::F_DUPFD_CLOEXEC, 100);
                if moved[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..count {
                if libc::dup2(moved[i], placements[i].1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
}

/// `vmm run --mem 32 ARGS...`, the kernel being among `args` (a path or `fd=N`).
fn vmm_run(args: &[&str]) -> Command {
    let mut command = vmm();
    command.arg("run").args(["--mem", "32"]).args(args);
    command
}

/// `vmm run --mem 32 ARGS...` through `sh`, which sets `LISTEN_PID` to its own pid and
/// execs vmm, keeping the pid: how a test gives socket activation's `LISTEN_PID` the
/// child's pid without calling setenv between fork and exec.
fn vmm_run_activated(args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_vmm"))
        .args(["run", "--mem", "32"])
        .args(args)
        .stdin(Stdio::null())
        .env_remove("VMM_LOG")
        .env_remove("VMM_SANDBOX_TEST_VIOLATION");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A guest that prints `message` on COM1 and powers off.
fn printing_guest(scratch: &Scratch, message: &str) -> PathBuf {
    let code = GuestCode::new().print(message).acpi_poweroff();
    scratch.write("guest.elf", &tiny_elf(code.bytes()))
}

/// A guest that parks forever (the test stops it).
fn parked_guest(scratch: &Scratch) -> PathBuf {
    scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().halt_forever().bytes()),
    )
}

fn open_read_only(path: &Path) -> File {
    File::open(path).expect("open read-only")
}

fn open_read_write(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .expect("open read-write")
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> (File, File) {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just created and are owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// A running `vmm run` with a control socket; killed when dropped if still running.
struct RunningVmm {
    child: Option<Child>,
    socket: PathBuf,
}

impl RunningVmm {
    /// Spawns `command` and waits until `vmm version` answers on `socket`.
    fn start(mut command: Command, socket: &Path) -> RunningVmm {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm run");
        let mut vmm = RunningVmm {
            child: Some(child),
            socket: socket.to_owned(),
        };
        let answered = common::wait_until(SOCKET_LIMIT, || {
            vmm.exited() || vmm.ctl("version").status.success()
        });
        if !answered || vmm.exited() {
            let output = vmm.stop_and_wait();
            panic!("vmm never answered on its socket\n{}", describe(&output));
        }
        vmm
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| !matches!(child.try_wait(), Ok(None)))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn ctl(&self, subcommand: &str) -> Output {
        let mut command = vmm();
        command.arg(subcommand).arg(&self.socket);
        run_with_timeout(command, LIMIT)
    }

    /// `vmm stop`, then the run's output.
    fn stop_and_wait(&mut self) -> Output {
        let _ = self.ctl("stop");
        let child = self.child.take().expect("running");
        common::wait_with_timeout(child, LIMIT)
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The descriptor numbers `/proc/PID/fd` lists.
fn open_fds(pid: u32) -> Vec<RawFd> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// What each open descriptor of `pid` points to.
fn fd_targets(pid: u32) -> std::collections::BTreeMap<RawFd, PathBuf> {
    open_fds(pid)
        .into_iter()
        .filter_map(|fd| Some((fd, std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?)))
        .collect()
}

/// Whether descriptor `fd` of `pid` is close-on-exec (`/proc/PID/fdinfo`'s octal flags).
fn is_cloexec(pid: u32, fd: RawFd) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
        .expect("flags line");
    flags & libc::O_CLOEXEC as u32 != 0
}

#[test]
fn a_disk_by_descriptor_is_attached_locked_and_close_on_exec() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("disk-fd");
    let kernel = parked_guest(&scratch);
    let image = scratch.write("disk.img", &[0u8; 1 << 20]);
    let socket = scratch.path("vmm.sock");
    let disk = open_read_write(&image);
    let mut command = vmm_run(&[
        "--disk",
        "fd=5",
        "--socket",
        socket.to_str().expect("utf-8"),
        kernel.to_str().expect("utf-8"),
    ]);
    hand_over(&mut command, &[(disk.as_raw_fd(), 5)]);
    let mut vm = RunningVmm::start(command, &socket);

    let stats = vm.ctl("stats");
    let second = run_with_timeout(
        common::vmm_run(&kernel, &["--disk", image.to_str().expect("utf-8")]),
        LIMIT,
    );
    let pid = common::vmm_process(vm.pid());
    let fds = open_fds(pid);
    let cloexec = is_cloexec(pid, 5);
    let output = vm.stop_and_wait();

    assert!(stats.status.success(), "{}", describe(&stats));
    assert!(
        text(&stats.stdout).contains("block"),
        "{}",
        describe(&stats)
    );
    assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
    assert!(
        text(&second.stderr).contains("is in use by another process"),
        "{}",
        describe(&second)
    );
    assert!(fds.contains(&5), "the disk's descriptor is open: {fds:?}");
    assert!(cloexec, "the disk's descriptor is close-on-exec in vmm");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

#[test]
fn a_read_only_disk_by_descriptor_starts_and_shares_its_lock() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("ro-disk-fd");
    let kernel = parked_guest(&scratch);
    let image = scratch.write("disk.img", &[0u8; 1 << 20]);
    let socket = scratch.path("vmm.sock");
    let disk = open_read_only(&image);
    let mut command = vmm_run(&[
        "--disk",
        "fd=6,ro",
        "--socket",
        socket.to_str().expect("utf-8"),
        kernel.to_str().expect("utf-8"),
    ]);
    hand_over(&mut command, &[(disk.as_raw_fd(), 6)]);
    let mut vm = RunningVmm::start(command, &socket);

    // A shared lock: a second reader by path may start; a writer may not.
    let ro_path = format!("{},ro", image.display());
    let reader_scratch = Scratch::new("ro-disk-fd-reader");
    let reader = run_with_timeout(
        common::vmm_run(
            &printing_guest(&reader_scratch, "ok"),
            &["--disk", &ro_path, "--serial", "file=/dev/null"],
        ),
        LIMIT,
    );
    let writer = run_with_timeout(
        common::vmm_run(&kernel, &["--disk", image.to_str().expect("utf-8")]),
        LIMIT,
    );
    let output = vm.stop_and_wait();

    assert_eq!(reader.status.code(), Some(0), "{}", describe(&reader));
    assert_eq!(writer.status.code(), Some(1), "{}", describe(&writer));
    assert!(
        text(&writer.stderr).contains("is in use by another process"),
        "{}",
        describe(&writer)
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

#[test]
fn the_kernel_and_initrd_by_descriptor_or_proc_self_fd_path_boot_the_guest() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("kernel-fd");
    let kernel_path = printing_guest(&scratch, "booted from a descriptor\n");
    let initrd_path = scratch.write("initrd.img", &[0x5a; 4096]);
    for (kernel_arg, initrd_arg) in [("fd=5", "fd=6"), ("/proc/self/fd/5", "/dev/fd/6")] {
        let log = scratch.path("console.log");
        let _ = std::fs::remove_file(&log);
        let serial = format!("file={}", log.display());
        let (kernel, initrd) = (open_read_only(&kernel_path), open_read_only(&initrd_path));
        let mut command = vmm_run(&["--initrd", initrd_arg, "--serial", &serial, kernel_arg]);
        hand_over(
            &mut command,
            &[(kernel.as_raw_fd(), 5), (initrd.as_raw_fd(), 6)],
        );
        let output = run_with_timeout(command, LIMIT);
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{kernel_arg}: {}",
            describe(&output)
        );
        assert_eq!(console, "booted from a descriptor\n", "{kernel_arg}");
    }
}

#[test]
fn serial_output_by_descriptor_arrives_on_the_pipe() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("serial-fd");
    let kernel = printing_guest(&scratch, "through the pipe\n");
    let (mut read_end, write_end) = pipe();
    let mut command = vmm_run(&["--serial", "fd=7", kernel.to_str().expect("utf-8")]);
    hand_over(&mut command, &[(write_end.as_raw_fd(), 7)]);
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    // Only vmm holds the write end now: the pipe ends when vmm does.
    drop(write_end);
    let output = common::wait_with_timeout(child, LIMIT);
    let mut console = String::new();
    std::io::Read::read_to_string(&mut read_end, &mut console).expect("read the pipe");

    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(console, "through the pipe\n");
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

/// A listening SOCK_SEQPACKET socket at `path`, bound by the test as a supervisor would;
/// the returned listener keeps the file (and removes it when dropped), the descriptor is
/// a copy to hand over.
fn supervisor_socket(path: &Path) -> (Listener, OwnedFd) {
    let listener = Listener::bind(path, &[]).expect("bind");
    let copy = listener.as_fd().try_clone_to_owned().expect("dup");
    (listener, copy)
}

#[test]
fn the_control_socket_by_socket_fd_serves_and_its_file_is_left_alone() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("socket-fd");
    let kernel = parked_guest(&scratch);
    let socket = scratch.path("supervisor.sock");
    let (_keeper, handed) = supervisor_socket(&socket);
    let mut command = vmm_run(&["--socket-fd", "8", kernel.to_str().expect("utf-8")]);
    hand_over(&mut command, &[(handed.as_raw_fd(), 8)]);
    let mut vm = RunningVmm::start(command, &socket);
    let output = vm.stop_and_wait();

    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(socket.exists(), "vmm removed a socket file it does not own");
}

#[test]
fn the_control_socket_by_socket_activation_serves_and_its_file_is_left_alone() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("listen-fds");
    let kernel = parked_guest(&scratch);
    let socket = scratch.path("activated.sock");
    let (_keeper, handed) = supervisor_socket(&socket);
    let mut command = vmm_run_activated(&[kernel.to_str().expect("utf-8")]);
    command
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "control");
    hand_over(&mut command, &[(handed.as_raw_fd(), 3)]);
    let mut vm = RunningVmm::start(command, &socket);
    let output = vm.stop_and_wait();

    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(socket.exists(), "vmm removed a socket file it does not own");
}

#[test]
fn listen_fds_for_another_process_is_ignored_with_a_note() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("listen-pid");
    let kernel = printing_guest(&scratch, "");
    let socket = scratch.path("not-ours.sock");
    let (_keeper, handed) = supervisor_socket(&socket);
    let mut command = vmm_run(&[kernel.to_str().expect("utf-8")]);
    command.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    hand_over(&mut command, &[(handed.as_raw_fd(), 3)]);
    let output = run_with_timeout(command, LIMIT);

    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stderr.contains(
            "vmm: warn: LISTEN_FDS is set for process 1 (LISTEN_PID), not for this vmm (pid "
        ) && stderr.contains("ignoring socket activation, and closing the descriptors it names"),
        "{stderr}"
    );
}

#[test]
fn a_tap_by_descriptor_backs_the_interface() {
    if !require_kvm() || !common::require_tun() {
        return;
    }
    let scratch = Scratch::new("tap-fd");
    let kernel = parked_guest(&scratch);
    let socket = scratch.path("vmm.sock");
    let (tap, name) = attached_tap();
    let mut command = vmm_run(&[
        "--net",
        "tap-fd=5",
        "--socket",
        socket.to_str().expect("utf-8"),
        kernel.to_str().expect("utf-8"),
    ]);
    command.env("VMM_LOG", "debug");
    hand_over(&mut command, &[(tap.as_raw_fd(), 5)]);
    let mut vm = RunningVmm::start(command, &socket);
    // Only vmm holds the tap now: it goes away with vmm.
    drop(tap);
    let stats = vm.ctl("stats");
    let output = vm.stop_and_wait();

    assert!(text(&stats.stdout).contains("net"), "{}", describe(&stats));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains(&format!("virtio-net0: tap {name} ")),
        "{}",
        describe(&output)
    );
    assert!(
        !Path::new("/sys/class/net").join(&name).exists(),
        "the tap, held only by vmm, went away with it"
    );
}

/// A new (non-persistent) tap, attached as a supervisor would: `/dev/net/tun`, TUNSETIFF
/// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR. Returns its descriptor and name.
fn attached_tap() -> (File, String) {
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    // SAFETY: ifreq is plain data; all-zero is valid (an empty name: the kernel picks one).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
    let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    let name: String = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    (tun, name)
}

/// One bad-descriptor case: what vmm is given, and what its one error line must say.
struct BadCase {
    name: &'static str,
    args: Vec<String>,
    fds: Vec<(OwnedFd, RawFd)>,
    activated: bool,
    says: &'static str,
}

#[test]
fn every_unusable_descriptor_gets_one_error_line_and_status_1() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("bad-fds");
    let kernel = printing_guest(&scratch, "");
    let image = scratch.write("disk.img", &[0u8; 4096]);
    let notes = scratch.write("notes.txt", b"not a tap");
    let kernel_arg = kernel.display().to_string();
    let owned = |file: File| OwnedFd::from(file);
    let stream_dir = Scratch::new("bad-fds-sockets");
    let stream = std::os::unix::net::UnixListener::bind(stream_dir.path("stream.sock"))
        .expect("bind a stream socket");
    let unbound = vm_control::socket::seqpacket_socket(false).expect("socket");
    let (pipe_read, _pipe_write) = pipe();
    let case = |name, args: &[&str], fds, says| BadCase {
        name,
        args: args.iter().map(|a| a.to_string()).collect(),
        fds,
        activated: false,
        says,
    };
    let mut cases = vec![
        case(
            "closed",
            &["--disk", "fd=9"],
            vec![],
            "--disk fd=9: descriptor 9 is not open",
        ),
        case(
            "directory disk",
            &["--disk", "fd=5,ro"],
            vec![(owned(File::open(scratch.dir()).expect("open dir")), 5)],
            "--disk fd=5: descriptor 5 is a directory, not a disk image",
        ),
        case(
            "read-only disk without ,ro",
            &["--disk", "fd=5"],
            vec![(owned(open_read_only(&image)), 5)],
            "--disk fd=5: descriptor 5 is open read-only; add ,ro",
        ),
        case(
            "file as tap",
            &["--net", "tap-fd=5"],
            vec![(owned(open_read_write(&notes)), 5)],
            "--net tap-fd=5: descriptor 5 is not a tap (TUNGETIFF failed",
        ),
        case(
            "non-listening socket",
            &["--socket-fd", "5"],
            vec![(unbound, 5)],
            "--socket-fd 5: descriptor 5 cannot be the control socket: it is not listening",
        ),
        case(
            "read end as serial",
            &["--serial", "fd=5"],
            vec![(owned(pipe_read), 5)],
            "--serial fd=5: descriptor 5 is not open for writing",
        ),
        case(
            "closed console",
            &["--console", "fd=9"],
            vec![],
            "--console fd=9: descriptor 9 is not open",
        ),
        case(
            "read end as console",
            &["--console", "fd=5"],
            vec![(owned(File::open(&notes).expect("open notes")), 5)],
            "--console fd=5: descriptor 5 is not open for writing",
        ),
        case(
            "directory kernel",
            &[],
            vec![(owned(File::open(scratch.dir()).expect("open dir")), 6)],
            "KERNEL fd=6: descriptor 6 is a directory, not a regular file",
        ),
    ];
    cases.push(BadCase {
        activated: true,
        ..case(
            "stream socket activated",
            &[],
            vec![(OwnedFd::from(stream), 3)],
            "LISTEN_FDS (descriptor 3): descriptor 3 cannot be the control socket: it is a \
             SOCK_STREAM socket, not SOCK_SEQPACKET",
        )
    });

    for case in cases {
        let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        args.push(if case.name == "directory kernel" {
            "fd=6"
        } else {
            &kernel_arg
        });
        let mut command = if case.activated {
            let mut command = vmm_run_activated(&args);
            command.env("LISTEN_FDS", "1");
            command
        } else {
            vmm_run(&args)
        };
        let placements: Vec<(RawFd, RawFd)> = case
            .fds
            .iter()
            .map(|(fd, n)| (fd.as_raw_fd(), *n))
            .collect();
        hand_over(&mut command, &placements);
        let output = run_with_timeout(command, LIMIT);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{}: {stderr}", case.name);
        assert_eq!(
            stderr.lines().count(),
            1,
            "{}: one line: {stderr}",
            case.name
        );
        assert!(
            stderr.starts_with(&format!("vmm: error: {}", case.says)),
            "{}: {stderr}",
            case.name
        );
    }
}

#[test]
fn an_inherited_descriptor_no_option_names_is_closed_in_the_running_vmm() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("unnamed-fd");
    let kernel = parked_guest(&scratch);
    let socket = scratch.path("vmm.sock");
    let leaked_path = scratch.path("leaked");
    let leaked = File::create(&leaked_path).expect("create");
    let image = scratch.write("disk.img", &[0u8; 4096]);
    let disk = open_read_write(&image);
    let mut command = vmm_run(&[
        "--disk",
        "fd=5",
        "--socket",
        socket.to_str().expect("utf-8"),
        kernel.to_str().expect("utf-8"),
    ]);
    hand_over(
        &mut command,
        &[(disk.as_raw_fd(), 5), (leaked.as_raw_fd(), 200)],
    );
    let mut vm = RunningVmm::start(command, &socket);
    let targets = fd_targets(common::vmm_process(vm.pid()));
    let output = vm.stop_and_wait();

    // vmm reuses low numbers for its own files, so look at what they point to.
    assert_eq!(targets.get(&5), Some(&image), "the named disk stays open");
    assert!(
        !targets.values().any(|target| *target == leaked_path),
        "the unnamed descriptor is closed: {targets:?}"
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}
