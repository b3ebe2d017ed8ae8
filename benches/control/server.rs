//! The VMMs under test: starting vmm (or the development server) and QEMU on the parked
//! guest with their control sockets, pinning them to CPUs, stopping them, and reading the
//! guest's first byte.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_control::client::Client;
use vm_control::wire::Request;

use crate::clients::QmpSession;
use crate::measure::set_affinity;
use crate::{
    Config, GUEST_MEM_MIB, MARKER, REPLY_TIMEOUT, SPAWNED, START_TIMEOUT, Scratch, dev_server, fail,
};

// ---------------------------------------------------------------------------------------
// The VMMs under test.

/// A running VMM (or the development server) and the control sockets it serves.
pub struct Server {
    pub label: &'static str,
    pub child: Option<Child>,
    /// The control sockets: one for vmm, one QMP monitor per concurrent client for QEMU.
    pub sockets: Vec<PathBuf>,
    pub stderr_log: PathBuf,
}

impl Server {
    pub fn start_vmm(config: &Config, guest: &Path, scratch: &Scratch) -> Server {
        let socket = scratch.path("vmm.sock");
        if config.dev_server {
            dev_server::spawn(&socket);
            return Server {
                label: "dev server (NOT vmm)",
                child: None,
                sockets: vec![socket],
                stderr_log: scratch.path("none"),
            };
        }
        let mut command = Command::new(&config.vmm_bin);
        command.args(["run", "--mem", &GUEST_MEM_MIB.to_string(), "--socket"]);
        command.arg(&socket).arg(guest);
        let shown = command_line(&command);
        let server = Server::spawn("vmm", command, &shown, vec![socket], scratch);
        server.wait_for_vmm_socket();
        server
    }

    /// QEMU with the lean microvm options of benches/host/vmm.rs and one QMP monitor per client.
    pub fn start_qemu(config: &Config, guest: &Path, scratch: &Scratch) -> Server {
        let machine =
            "microvm,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off,pcie=off,x-option-roms=off";
        let options = format!(
            "-M {machine} -accel kvm -cpu host -m {GUEST_MEM_MIB} -nodefaults -no-user-config \
             -display none -serial stdio -no-reboot"
        );
        let sockets: Vec<PathBuf> = (0..config.clients)
            .map(|i| scratch.path(&format!("qmp-{i}.sock")))
            .collect();
        let mut command = Command::new(&config.qemu_bin);
        command.args(options.split_whitespace());
        command.arg("-kernel").arg(guest);
        let mut shown = String::new();
        for (index, socket) in sockets.iter().enumerate() {
            command
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", socket.display()));
            if index == 0 {
                shown = command_line(&command);
            }
        }
        if sockets.len() > 1 {
            shown += &format!(" ... (one -qmp per client: {} monitors)", sockets.len());
        }
        let server = Server::spawn("QEMU", command, &shown, sockets, scratch);
        server.wait_for_qmp_sockets();
        server
    }

    /// Spawns the VMM (stdout a pipe for the guest's serial output, stderr to a log) and waits
    /// for the guest's marker byte.
    pub fn spawn(
        label: &'static str,
        mut command: Command,
        shown: &str,
        sockets: Vec<PathBuf>,
        scratch: &Scratch,
    ) -> Server {
        let stderr_log = scratch.path(&format!("{label}-stderr.log"));
        let stderr = std::fs::File::create(&stderr_log)
            .unwrap_or_else(|err| fail(&format!("cannot create {}: {err}", stderr_log.display())));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| fail(&format!("cannot start {label} ({shown}): {err}")));
        if let Ok(mut pids) = SPAWNED.lock() {
            pids.push(child.id());
        }
        println!("{label:>4}: {shown}");
        let mut server = Server {
            label,
            child: Some(child),
            sockets,
            stderr_log,
        };
        server.wait_for_marker();
        server
    }

    pub fn wait_for_marker(&mut self) {
        let child = self.child.as_mut().expect("a spawned server has a child");
        let stdout = child.stdout.as_mut().expect("stdout was set to a pipe");
        match read_first_byte(stdout, Instant::now() + START_TIMEOUT) {
            Ok(Some(MARKER)) => {}
            Ok(None) => self.fail("THE GUEST DID NOT RUN: the VMM exited before any serial output"),
            Ok(other) => self.fail(&format!(
                "THE GUEST DID NOT RUN: first serial byte {other:?}, expected {:?}",
                MARKER as char
            )),
            Err(err) => self.fail(&format!("THE GUEST DID NOT RUN: {err}")),
        }
    }

    pub fn wait_for_vmm_socket(&self) {
        let socket = &self.sockets[0];
        self.wait_until("its control socket answers GetVersion", || {
            let mut client = Client::connect(socket).ok()?;
            client.set_timeout(Some(REPLY_TIMEOUT)).ok()?;
            client.request(Request::GetVersion).ok()
        });
    }

    pub fn wait_for_qmp_sockets(&self) {
        for socket in &self.sockets {
            self.wait_until("its QMP monitor answers", || {
                QmpSession::connect(socket).ok()
            });
        }
    }

    /// Retries `probe` until it gives a value, failing if the VMM exits or time runs out.
    pub fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) {
        let deadline = Instant::now() + START_TIMEOUT;
        while probe().is_none() {
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{} DID NOT SERVE within {START_TIMEOUT:?}: waiting until {what} \
                     (socket {})",
                    self.label,
                    self.sockets[0].display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Restricts every thread of the VMM to `cpus` (the development server is not pinned):
    /// of the process the bench started and of its descendants (a jailed vmm, the default,
    /// runs in a child of it).
    pub fn pin(&self, cpus: &[usize]) {
        let Some(child) = &self.child else { return };
        let threads: Vec<(u32, u32)> = crate::measure::process_tree(child.id())
            .into_iter()
            .flat_map(crate::measure::threads_of)
            .collect();
        if threads.is_empty() {
            self.fail("has no thread to pin");
        }
        for (_, tid) in threads {
            let Ok(tid) = libc::pid_t::try_from(tid) else {
                continue;
            };
            if let Err(err) = set_affinity(tid, cpus) {
                self.fail(&format!("cannot pin thread {tid} to CPUs {cpus:?}: {err}"));
            }
        }
    }

    pub fn fail(&self, message: &str) -> ! {
        let stderr = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        fail(&format!(
            "{}: {message}\n--- its stderr ---\n{}\n------------------",
            self.label,
            stderr.trim()
        ))
    }

    /// SIGTERM, then wait (SIGKILL if it takes more than the start timeout).
    pub fn stop(&self) {
        let Some(child) = &self.child else { return };
        let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child with a valid pointer for its status.
        while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
            if Instant::now() > deadline {
                eprintln!("{} ignored SIGTERM; killing it", self.label);
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads the first byte of guest output: `Ok(None)` at EOF (the VMM exited).
pub fn read_first_byte(
    stdout: &mut (impl Read + AsRawFd),
    deadline: Instant,
) -> Result<Option<u8>, String> {
    let mut poll_fd = libc::pollfd {
        fd: stdout.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout_ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `poll_fd` is a valid pollfd for the duration of the call; nfds is 1.
    if unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) } <= 0 {
        return Err(format!("no guest serial output within {START_TIMEOUT:?}"));
    }
    let mut byte = [0u8; 1];
    match stdout.read(&mut byte) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(byte[0])),
        Err(err) => Err(format!("reading the VMM's stdout: {err}")),
    }
}
