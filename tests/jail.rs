//! End-to-end tests of `vmm run --jail` on this host's KVM with tiny guests: the jailed
//! VMM (the child of the `vmm` process, which stays behind as its reaper) has no
//! capability in any set, `no_new_privs` and a seccomp filter on every thread, an empty
//! root, and namespaces of its own; a path outside cannot be opened from inside (the
//! test-only hook `VMM_JAIL_TEST_OPEN`); the control socket, disks and registered memory
//! keep working; the documented exit statuses come through the reaper unchanged; and an
//! ordinary user gets the same jail through a user namespace, with no privilege at all;
//! and a supervisor can hand a jailed VMM its disk and control socket as descriptors.

mod common;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{
    GuestCode, Scratch, describe, require_kvm, require_root, run_with_timeout, tiny_elf,
    user_threads, vmm, vmm_run, wait_until,
};
use vm_control::server::Listener;

/// Longest a `vmm run` or a control command may take in these tests.
const LIMIT: Duration = Duration::from_secs(60);

/// The uid and gid a root-started jail runs as by default (README, options).
const JAIL_ID: &str = "65534";

fn parked_guest() -> GuestCode {
    GuestCode::new().print("up\n").halt_forever()
}

/// A jailed `vmm run --socket` started by `launcher` (the vmm binary itself, or a shell
/// that drops privileges first); killed when dropped if still running.
struct JailedVm {
    child: Option<Child>,
    socket: PathBuf,
    /// Kept until the VM is gone: it holds the kernel and the socket's directory.
    _scratch: Scratch,
}

impl JailedVm {
    /// Root-started: `vmm run --jail --socket ... OPTIONS` on `code`.
    fn start(name: &str, code: GuestCode, options: &[&str], env: &[(&str, &str)]) -> JailedVm {
        let scratch = Scratch::new(name);
        let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));
        let socket = scratch.path("vmm.sock");
        let socket_arg = socket.display().to_string();
        let mut args = vec!["--jail", "--socket", &socket_arg, "--rng", "--balloon"];
        args.extend_from_slice(options);
        let mut command = vmm_run(&kernel, &args);
        command.envs(env.iter().copied());
        JailedVm::spawn(command, socket, scratch)
    }

    fn spawn(mut command: Command, socket: PathBuf, scratch: Scratch) -> JailedVm {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        let mut vm = JailedVm {
            child: Some(child),
            socket,
            _scratch: scratch,
        };
        let socket = vm.socket.clone();
        let appeared = wait_until(LIMIT, || {
            std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket())
                || !vm.running()
        });
        assert!(
            appeared && vm.running(),
            "no socket: {}",
            describe(&vm.wait())
        );
        vm
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn ctl(&self, subcommand: &str, args: &[&str]) -> Output {
        let mut command = vmm();
        command.arg(subcommand).arg(&self.socket).args(args);
        run_with_timeout(command, LIMIT)
    }

    fn ctl_ok(&self, subcommand: &str, args: &[&str]) -> Output {
        let output = self.ctl(subcommand, args);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        output
    }

    /// The jailed VMM: the one child of the `vmm` process, the reaper.
    fn jailed_pid(&self) -> u32 {
        let reaper = self.pid();
        let mut found = None;
        assert!(
            wait_until(LIMIT, || {
                found = children_of(reaper).first().copied();
                found.is_some()
            }),
            "the reaper {reaper} has no child"
        );
        found.unwrap_or_default()
    }

    fn wait(&mut self) -> Output {
        let child = self.child.take().expect("vmm still owned");
        common::wait_with_timeout(child, LIMIT)
    }
}

impl Drop for JailedVm {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            let stat =
                std::fs::read_to_string(format!("/proc/{candidate}/stat")).unwrap_or_default();
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_name.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

/// Waits until every user thread of `pid` is filtered (the run loop filters itself once
/// the vCPUs run), then returns them.
fn filtered_threads(pid: u32) -> Vec<common::ThreadStatus> {
    let settled = wait_until(LIMIT, || {
        let threads = user_threads(pid);
        threads.len() > 1 && threads.iter().all(|t| t.field("Seccomp:") == "2")
    });
    let threads = user_threads(pid);
    assert!(
        settled,
        "not every thread is filtered: {:?}",
        threads
            .iter()
            .map(|t| (t.name.clone(), t.field("Seccomp:")))
            .collect::<Vec<_>>()
    );
    threads
}

const NO_CAPABILITIES: &str = "0000000000000000";

/// Every thread of `pid`: no capability in any set, no_new_privs, seccomp filter on.
fn assert_confined(pid: u32) {
    for thread in filtered_threads(pid) {
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(thread.field(set), NO_CAPABILITIES, "{} {set}", thread.name);
        }
        assert_eq!(thread.field("NoNewPrivs:"), "1", "{}", thread.name);
        assert_eq!(thread.field("Seccomp:"), "2", "{}", thread.name);
    }
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("read a namespace link")
}

#[test]
fn every_thread_of_a_jailed_vmm_has_no_capability_no_new_privs_and_seccomp() {
    if !require_kvm() || !require_root() {
        return;
    }
    let vm = JailedVm::start("caps", parked_guest(), &[], &[]);
    vm.ctl_ok("stats", &[]);
    let pid = vm.jailed_pid();
    assert_confined(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(
        uid_line.split_whitespace().skip(1).all(|id| id == JAIL_ID),
        "{uid_line}"
    );
}

#[test]
fn a_jailed_vmm_has_an_empty_root_and_namespaces_of_its_own() {
    if !require_kvm() || !require_root() {
        return;
    }
    let vm = JailedVm::start("ns", parked_guest(), &[], &[]);
    vm.ctl_ok("stats", &[]);
    let pid = vm.jailed_pid().to_string();
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("list the jailed VMM's root")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    assert!(root.is_empty(), "the jail's root holds {root:?}");
    for kind in ["mnt", "ipc", "uts", "net", "pid"] {
        assert_ne!(namespace(&pid, kind), namespace("self", kind), "{kind}");
    }
    // The reaper stays outside the namespaces (it removes the socket file by its path),
    // under a seccomp filter of its own, holding nothing but stdio and its link to the VMM.
    let reaper = vm.pid().to_string();
    assert_eq!(namespace(&reaper, "mnt"), namespace("self", "mnt"));
    let status = std::fs::read_to_string(format!("/proc/{reaper}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]),
        "the reaper is filtered: {status}"
    );
    let fds = std::fs::read_dir(format!("/proc/{reaper}/fd"))
        .expect("list the reaper's descriptors")
        .count();
    assert!(fds <= 4, "stdin, stdout, stderr and the VMM's link: {fds}");
}

#[test]
fn a_path_outside_the_jail_cannot_be_opened_from_inside() {
    if !require_kvm() || !require_root() {
        return;
    }
    let mut vm = JailedVm::start(
        "open",
        parked_guest(),
        &[],
        &[("VMM_JAIL_TEST_OPEN", "/etc/passwd")],
    );
    vm.ctl_ok("stop", &[]);
    let output = vm.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "vmm: jail test: cannot open /etc/passwd inside the jail: No such file or directory"
        ),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_jailed_vm_answers_its_socket_uses_disks_and_memory_and_stop_exits_0() {
    if !require_kvm() || !require_root() {
        return;
    }
    let scratch = Scratch::new("jail-files");
    let disk = scratch.write("disk.img", &[0u8; 65536]);
    let disk_arg = disk.display().to_string();
    let mut vm = JailedVm::start(
        "socket",
        parked_guest(),
        &["--disk", &disk_arg, "--cpus", "2"],
        &[],
    );
    let stats = vm.ctl_ok("stats", &[]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("block          0  requests"), "{text}");
    // A descriptor a client passes reaches the jailed VMM and is mapped into the guest.
    let memory = scratch.write("shared.mem", &[0u8; 2 << 20]);
    let registered = vm.ctl_ok("register-memory", &[&memory.display().to_string()]);
    assert!(
        String::from_utf8_lossy(&registered.stdout).contains("slot"),
        "{}",
        describe(&registered)
    );
    vm.ctl_ok("balloon", &["--target", "16"]);
    vm.ctl_ok("stop", &[]);
    let output = vm.wait();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        std::fs::symlink_metadata(&vm.socket).is_err(),
        "the socket file is left behind"
    );
}

#[test]
fn a_guest_reset_exits_32_through_the_jail() {
    if !require_kvm() || !require_root() {
        return;
    }
    let scratch = Scratch::new("jail-reset");
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().print("bye\n").i8042_reset().bytes()),
    );
    let output = run_with_timeout(vmm_run(&kernel, &["--jail"]), LIMIT);
    assert_eq!(output.status.code(), Some(32), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("bye"));
}

#[test]
fn sigterm_exits_143_through_the_jail_and_removes_the_socket() {
    if !require_kvm() || !require_root() {
        return;
    }
    let mut vm = JailedVm::start("sigterm", parked_guest(), &[], &[]);
    vm.ctl_ok("stats", &[]);
    let pid = libc::pid_t::try_from(vm.pid()).expect("pid fits");
    // SAFETY: kill(2) on our own child, which is not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let output = vm.wait();
    assert_eq!(output.status.code(), Some(143), "{}", describe(&output));
    assert!(std::fs::symlink_metadata(&vm.socket).is_err());
}

#[test]
fn an_ordinary_user_is_jailed_through_a_user_namespace_without_any_privilege() {
    if !require_kvm() || !require_root() {
        return;
    }
    let scratch = Scratch::new("jail-user");
    let kernel = scratch.write("guest.elf", &tiny_elf(parked_guest().bytes()));
    // uid 65534 must reach the vmm copy and the kernel, and create the socket.
    let vmm_copy = common::vmm_copy_for_other_users(scratch.dir());
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let sockets = scratch.path("run");
    std::fs::create_dir(&sockets).expect("mkdir");
    std::os::unix::fs::chown(&sockets, Some(65534), Some(65534)).expect("chown");
    let socket = sockets.join("vmm.sock");
    // /dev/kvm, usable by uid 65534, in a private mount namespace (many hosts make the
    // real one 0660 root:kvm).
    let script = "mount -t tmpfs none /dev && mknod -m 666 /dev/kvm c 10 232 && \
                  exec setpriv --reuid=65534 --regid=65534 --clear-groups -- \
                  \"$0\" run --mem 32 --jail --rng --socket \"$1\" \"$2\"";
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(&vmm_copy)
        .arg(&socket)
        .arg(&kernel)
        .env_remove("VMM_LOG")
        .stdin(Stdio::null());
    let mut vm = JailedVm::spawn(command, socket, scratch);
    vm.ctl_ok("stats", &[]);
    // unshare execs sh, which execs setpriv, which execs vmm: the reaper is `vmm`'s pid.
    let pid = vm.jailed_pid();
    assert_confined(pid);
    for kind in ["user", "mnt", "net", "pid"] {
        assert_ne!(
            namespace(&pid.to_string(), kind),
            namespace("self", kind),
            "{kind}"
        );
    }
    vm.ctl_ok("stop", &[]);
    let output = vm.wait();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(std::fs::symlink_metadata(&vm.socket).is_err());
}

#[test]
fn jail_options_without_jail_are_refused() {
    let scratch = Scratch::new("jail-usage");
    let kernel = scratch.write("guest.elf", &tiny_elf(parked_guest().bytes()));
    for options in [
        &["--no-jail", "--jail-uid", "1000"][..],
        &["--no-jail", "--cgroup", "/sys/fs/cgroup/x"],
        &["--jail", "--no-jail"],
        &["--jail", "--jail-uid", "0"],
    ] {
        let output = run_with_timeout(vmm_run(&kernel, options), LIMIT);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{options:?}: {}",
            describe(&output)
        );
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `.../unified` on a
/// hybrid host), from `/proc/self/mounts`.
fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
}

/// Removes a (cgroup) directory when dropped, also when the test fails.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The jailed VMM's cgroup, from `/proc/PID/cgroup` ("0::/path").
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_jailed_vmm_joins_the_cgroup_it_is_given() {
    if !require_kvm() || !require_root() {
        return;
    }
    let Some(base) = cgroup2_mount() else {
        common::skip("THIS TEST NEEDS A CGROUP V2 HIERARCHY");
        return;
    };
    let dir = base.join(format!("vmm-jail-test-{}", std::process::id()));
    if let Err(err) = std::fs::create_dir(&dir) {
        common::skip(&format!(
            "THIS TEST CANNOT CREATE A CGROUP IN {}: {err}",
            base.display()
        ));
        return;
    }
    let _cleanup = RemoveDir(dir.clone());
    let dir_arg = dir.display().to_string();
    let mut vm = JailedVm::start("cgroup", parked_guest(), &["--cgroup", &dir_arg], &[]);
    vm.ctl_ok("stats", &[]);
    let pid = vm.jailed_pid();
    let joined = cgroup_of(pid);
    vm.ctl_ok("stop", &[]);
    let output = vm.wait();
    assert_eq!(
        joined,
        format!("/vmm-jail-test-{}", std::process::id()),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_tap_opened_before_the_jail_keeps_working_inside_it() {
    if !require_kvm() || !common::require_tun() {
        return;
    }
    let mut vm = JailedVm::start(
        "tap",
        parked_guest(),
        &["--net", "host-ip=10.98.0.1,netmask=255.255.255.0"],
        &[],
    );
    let stats = vm.ctl_ok("stats", &[]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("net            0  packets_in"), "{text}");
    vm.ctl_ok("stop", &[]);
    let output = vm.wait();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

/// Places each `(source, number)` descriptor at `number` in the child, without
/// close-on-exec, as a supervisor hands descriptors to `vmm` (tests/fd_handover.rs does
/// the same). Every source is first copied above all the numbers, so one placement cannot
/// overwrite a source still to be placed.
fn hand_over(command: &mut Command, fds: &[(RawFd, RawFd); 2]) {
    let placements = *fds;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (fcntl, dup2) on plain integers it owns; it allocates
    // nothing.
    unsafe {
        command.pre_exec(move || {
            let mut moved = [-1; 2];
            for (slot, (source, _)) in moved.iter_mut().zip(placements) {
                *slot = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, 100);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (moved, (_, number)) in moved.into_iter().zip(placements) {
                if libc::dup2(moved, number) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
}

/// Issue 14's supervisor pattern under the jail: the supervisor opens the disk and binds
/// the control socket itself, and hands both over (`--disk fd=N`, `--socket-fd N`). The
/// jailed VMM serves the socket and attaches (and locks) the disk it could never open by
/// path inside the jail; `vmm stop` exits 0; and the socket file, the supervisor's, is
/// still there afterwards: neither the VMM nor the reaper removes it.
#[test]
fn a_jailed_vm_takes_its_disk_and_control_socket_as_descriptors_from_a_supervisor() {
    if !require_kvm() || !require_root() {
        return;
    }
    let scratch = Scratch::new("jail-handover");
    let kernel = scratch.write("guest.elf", &tiny_elf(parked_guest().bytes()));
    let disk = scratch.write("disk.img", &[0u8; 65536]);
    let disk_file = File::options()
        .read(true)
        .write(true)
        .open(&disk)
        .expect("open the disk");
    let socket = scratch.path("supervisor.sock");
    let supervisor_listener = Listener::bind(&socket, &[]).expect("bind the socket");
    let handed_socket = supervisor_listener
        .as_fd()
        .try_clone_to_owned()
        .expect("dup the socket");
    let mut command = vmm_run(
        &kernel,
        &["--jail", "--rng", "--disk", "fd=7", "--socket-fd", "8"],
    );
    hand_over(
        &mut command,
        &[(disk_file.as_raw_fd(), 7), (handed_socket.as_raw_fd(), 8)],
    );
    let mut vm = JailedVm::spawn(command, socket.clone(), scratch);
    drop(handed_socket);

    let stats = vm.ctl_ok("stats", &[]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("block          0  requests"), "{text}");
    assert_confined(vm.jailed_pid());
    // The jailed VMM holds the disk's lock: another open of the image cannot take it.
    let other = File::open(&disk).expect("open the disk again");
    // SAFETY: flock on a descriptor `other` owns, with flags only.
    let locked = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, -1, "the handed-over disk is not locked by the VMM");

    vm.ctl_ok("stop", &[]);
    let output = vm.wait();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()),
        "the supervisor's socket file was removed"
    );
    drop(supervisor_listener);
}
