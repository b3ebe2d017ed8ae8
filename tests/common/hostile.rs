//! Helpers for the hostile-client tests: a `vmm run --socket` on a parked tiny guest with
//! the sandbox on (the default), blocking protocol clients, memfds to register, and the
//! VMM's resident memory and descriptor count read from `/proc`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use vm_control::client::{Client, ClientError};
use vm_control::wire::{Request, Response};

use super::{GuestCode, Scratch, tiny_elf, vmm_run, wait_with_timeout};

/// Longest the VMM may take to stop once asked.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A running `vmm run --socket` on a guest that prints and halts. Killed when dropped.
pub struct ParkedVm {
    child: Option<Child>,
    pub socket: PathBuf,
    pub scratch: Scratch,
}

impl ParkedVm {
    /// Starts the VM with `extra` options (never `--disable-sandbox` here) and waits until
    /// its socket answers.
    pub fn start(name: &str, extra: &[&str]) -> ParkedVm {
        ParkedVm::start_limited(name, extra, None)
    }

    /// [`ParkedVm::start`] with the VMM's `RLIMIT_NOFILE` (soft and hard) set to `fd_limit`.
    pub fn start_limited(name: &str, extra: &[&str], fd_limit: Option<u64>) -> ParkedVm {
        let scratch = Scratch::new(name);
        let kernel = scratch.write(
            "guest.elf",
            &tiny_elf(GuestCode::new().print("up\n").halt_forever().bytes()),
        );
        let socket = scratch.path("vmm.sock");
        let socket_arg = socket.display().to_string();
        let mut args = vec!["--socket", socket_arg.as_str()];
        args.extend_from_slice(extra);
        let mut command = vmm_run(&kernel, &args);
        if let Some(limit) = fd_limit {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // setrlimit(2), which is async-signal-safe, on a value copied into it.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm run");
        let vm = ParkedVm {
            child: Some(child),
            socket,
            scratch,
        };
        drop(vm.connect_when_ready());
        vm
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether `vmm run` is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A client, retrying for up to 10 s while the socket is not there yet.
    pub fn connect_when_ready(&self) -> Client {
        connect_when_ready(&self.socket)
    }

    /// A client the VMM admitted and answered `GetVersion`: retried for up to 5 s while
    /// it refuses for capacity (`EUSERS`: it has not yet read the hang-ups of clients that
    /// just left).
    pub fn admitted_client(&mut self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut client = self.connect_when_ready();
            match client.request(Request::GetVersion) {
                Ok(Response::Version { .. }) => return client,
                Err(ClientError::Vmm(e))
                    if e.errno == libc::EUSERS && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => self.fail(&format!("GetVersion: {other:?}")),
            }
        }
    }

    /// Panics, with how the VMM exited, if it is no longer running.
    pub fn assert_running(&mut self, context: &str) {
        if !self.running() {
            panic!("the VMM died {context}: {}", self.describe_exit());
        }
    }

    /// Fails the test over `what`, with how the VMM exited if it exits within 2 s (a
    /// refused connection is often the VMM dying).
    pub fn fail(&mut self, what: &str) -> ! {
        let exited = super::wait_until(Duration::from_secs(2), || !self.running());
        if exited {
            panic!("{what}; the VMM exited: {}", self.describe_exit());
        }
        panic!("{what}; the VMM is still running");
    }

    /// Asserts the VMM is alive and a new client gets version and stats answered.
    pub fn assert_alive_and_answering(&mut self) {
        self.assert_running("before the final check");
        let mut client = self.admitted_client();
        assert!(
            matches!(client.request(Request::GetStats), Ok(Response::Stats(_))),
            "no stats reply"
        );
    }

    /// Stops the VM through the socket; returns how `vmm run` exited.
    pub fn stop(mut self) -> Output {
        if let Ok(mut client) = Client::connect(&self.socket) {
            let _ = client.set_timeout(Some(Duration::from_secs(10)));
            let _ = client.request(Request::Exit);
        }
        let child = self.child.take().expect("vmm run is ours");
        wait_with_timeout(child, STOP_LIMIT)
    }

    /// Collects the output of a VMM that already exited, for a failure message.
    pub fn describe_exit(&mut self) -> String {
        match self.child.take() {
            Some(child) => {
                let output = wait_with_timeout(child, STOP_LIMIT);
                format!(
                    "status {:?}, stderr: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            }
            None => "already collected".to_string(),
        }
    }

    /// What `vmm list-memory --json SOCKET` prints; fails the test unless it exits 0.
    pub fn list_memory_json(&mut self) -> String {
        let mut command = super::vmm();
        command.arg("list-memory").arg("--json").arg(&self.socket);
        let output = super::run_with_timeout(command, Duration::from_secs(30));
        if output.status.code() != Some(0) {
            self.fail(&format!(
                "vmm list-memory: {:?} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Resident set size of the VMM, KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", super::vmm_process(self.pid())))
                .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Open descriptors of the VMM (`/proc/PID/fd` entries).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", super::vmm_process(self.pid())))
            .expect("list /proc/PID/fd")
            .count()
    }
}

impl Drop for ParkedVm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A memfd of `size` bytes, to register with the VMM.
pub fn memfd(size: u64) -> OwnedFd {
    // SAFETY: memfd_create with a NUL-terminated name returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vmm-hostile-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(size).expect("memfd size fits off_t");
    // SAFETY: ftruncate on a descriptor we own; no memory arguments.
    let ret = unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len) };
    assert_eq!(ret, 0, "ftruncate: {}", std::io::Error::last_os_error());
    fd
}

/// Raises this test process's descriptor limit to its hard limit, so it can hold many
/// connections open itself.
pub fn raise_own_fd_limit() -> u64 {
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and a writable rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid resource and an initialized rlimit no higher than the hard limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    limit.rlim_cur
}

/// A path string for arguments.
pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// A client of the VMM listening on `socket` (10 s per request), retrying for up to 10 s
/// while the socket is not there yet.
pub fn connect_when_ready(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(socket) {
            Ok(client) => {
                client
                    .set_timeout(Some(Duration::from_secs(10)))
                    .expect("set client timeout");
                return client;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!("the control socket never answered: {err}"),
        }
    }
}
