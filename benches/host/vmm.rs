//! The VMMs under test and running one VM: vmm (plain, with the 64-bit ELF entry, jailed)
//! and QEMU with their command lines, then spawning one on a tiny guest, waiting for its
//! first byte or its exit, and checking that the guest reset.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Config, GUEST_MEM_MIB, Guests, MARKER, Scratch, VM_TIMEOUT, VMM_RESET_STATUS, fail};

// ---------------------------------------------------------------------------------------
// The VMMs.

/// One VMM and how to run the tiny guest under it.
pub struct Vmm {
    pub name: &'static str,
    pub program: PathBuf,
    /// Arguments before the kernel path.
    pub args: Vec<String>,
    /// Option that precedes the kernel path (`-kernel` for QEMU), if any.
    pub kernel_flag: Option<&'static str>,
    /// Whether to boot [`Guests::fault_elf64`] rather than the PVH guest.
    pub elf64: bool,
    /// The exit status that means "the guest triple-faulted".
    pub reset_status: i32,
}

impl Vmm {
    pub fn ours(config: &Config) -> Vmm {
        Vmm {
            name: "vmm",
            program: config.vmm_bin.clone(),
            // Without the jail, so that the spawned process is the VMM whose memory is
            // measured; the jail's cost is the `vmm --jail` row.
            args: [
                "run",
                "--no-jail",
                "--mem",
                &GUEST_MEM_MIB.to_string(),
                "--serial",
                "stdio",
            ]
            .map(String::from)
            .to_vec(),
            kernel_flag: None,
            elf64: false,
            reset_status: VMM_RESET_STATUS,
        }
    }

    /// vmm in its jail (`--jail`): namespaces, an empty root, no capabilities, and the
    /// reaper's fork. Its start-up and throughput against plain vmm are the jail's cost.
    pub fn ours_jailed(config: &Config) -> Vmm {
        let mut vmm = Vmm::ours(config);
        vmm.name = "vmm --jail";
        for arg in &mut vmm.args {
            if arg == "--no-jail" {
                *arg = "--jail".to_string();
            }
        }
        vmm
    }

    pub fn ours_elf64(config: &Config) -> Vmm {
        Vmm {
            name: "vmm (64-bit ELF entry)",
            elf64: true,
            ..Vmm::ours(config)
        }
    }

    /// The leanest QEMU that runs the tiny guest: microvm with its default firmware (which
    /// boots the PVH `-kernel`), no legacy devices but the ISA serial port, no ACPI (the
    /// biggest saving), no PCIe, no option ROMs, no display, no default devices or config;
    /// `-no-reboot` turns the triple fault into a clean exit (status 0). See
    /// docs/PERFORMANCE.md for what each option was worth.
    pub fn qemu(config: &Config) -> Vmm {
        let machine =
            "microvm,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off,pcie=off,x-option-roms=off";
        let args = format!(
            "-M {machine} -accel kvm -cpu host -m {GUEST_MEM_MIB} -nodefaults -no-user-config \
             -display none -serial stdio -no-reboot"
        );
        Vmm {
            name: "QEMU",
            program: config.qemu_bin.clone(),
            args: args.split_whitespace().map(String::from).collect(),
            kernel_flag: Some("-kernel"),
            elf64: false,
            reset_status: 0,
        }
    }

    pub fn command(&self, kernel: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command.args(self.kernel_flag);
        command.arg(kernel);
        command
    }

    /// The guest that prints and triple-faults, in the form this VMM entry boots.
    pub fn fault_guest<'a>(&self, guests: &'a Guests) -> &'a Path {
        if self.elf64 {
            &guests.fault_elf64
        } else {
            &guests.fault
        }
    }

    pub fn command_line(&self, kernel: &Path) -> String {
        let command = self.command(kernel);
        let args = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned());
        std::iter::once(self.program.display().to_string())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Spawns the VMM on `kernel`: stdin empty, stdout a pipe, stderr to `stderr_log`.
    pub fn spawn(&self, kernel: &Path, stderr_log: &Path) -> Result<Child, String> {
        let stderr = File::create(stderr_log)
            .map_err(|err| format!("cannot create {}: {err}", stderr_log.display()))?;
        self.command(kernel)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", self.program.display()))
    }
}

// ---------------------------------------------------------------------------------------
// Running one VM.

/// Waits until the child's stdout has a byte (or EOF) or `deadline` passes.
pub fn wait_readable(stdout: &impl AsRawFd, deadline: Instant) -> Result<(), String> {
    let mut poll_fd = libc::pollfd {
        fd: stdout.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no guest serial output within {VM_TIMEOUT:?}"));
        }
        let timeout_ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `poll_fd` is a valid pollfd for the duration of the call; nfds is 1.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms.max(1)) };
        match ready {
            n if n > 0 => return Ok(()),
            0 => continue,
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("poll on the VMM's stdout: {err}"));
                }
            }
        }
    }
}

/// Reads from the child's stdout until EOF (the VMM has exited) or the deadline.
pub fn read_to_eof(
    stdout: &mut impl ReadFd,
    deadline: Instant,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut buffer = [0u8; 4096];
    loop {
        wait_readable(stdout, deadline)?;
        match stdout.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buffer[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("reading the VMM's stdout: {err}")),
        }
    }
}

pub trait ReadFd: Read + AsRawFd {}
impl<T: Read + AsRawFd> ReadFd for T {}

/// Reads the first byte of guest output: `Ok(None)` at EOF (the VMM exited silently).
pub fn read_first_byte(stdout: &mut impl ReadFd, deadline: Instant) -> Result<Option<u8>, String> {
    let mut byte = [0u8; 1];
    loop {
        wait_readable(stdout, deadline)?;
        match stdout.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("reading the VMM's stdout: {err}")),
        }
    }
}

/// Describes an exit status the way a shell would.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{status}"),
    }
}

/// One complete VM on the triple-fault guest: returns the time from spawn to the first byte
/// of guest output. Checks that the byte is the marker and that the VMM reports the reset.
pub fn run_to_reset(vmm: &Vmm, guests: &Guests, scratch: &Scratch) -> Result<Duration, String> {
    let log = scratch.stderr_log();
    let start = Instant::now();
    let mut child = vmm.spawn(vmm.fault_guest(guests), &log)?;
    let deadline = start + VM_TIMEOUT;
    let stdout = child.stdout.as_mut().expect("stdout was set to a pipe");
    let first = read_first_byte(stdout, deadline);
    let latency = start.elapsed();
    let mut rest = Vec::new();
    let drained = first
        .clone()
        .and_then(|_| read_to_eof(stdout, deadline, &mut rest));
    if let Err(err) = drained {
        let _ = child.kill();
        let _ = child.wait();
        return Err(with_stderr(err, &log));
    }
    let status = child
        .wait()
        .map_err(|err| format!("waiting for {}: {err}", vmm.name))?;
    check_reset(vmm, first, &rest, status).map_err(|err| with_stderr(err, &log))?;
    Ok(latency)
}

pub fn check_reset(
    vmm: &Vmm,
    first: Result<Option<u8>, String>,
    rest: &[u8],
    status: ExitStatus,
) -> Result<(), String> {
    let output: Vec<u8> = first?.into_iter().chain(rest.iter().copied()).collect();
    if output.first() != Some(&MARKER) {
        return Err(format!(
            "guest serial output was {:?}, expected it to start with {:?}; {}",
            String::from_utf8_lossy(&output),
            MARKER as char,
            describe(status)
        ));
    }
    if status.code() != Some(vmm.reset_status) {
        return Err(format!(
            "{} after the guest's triple fault, expected exit status {}",
            describe(status),
            vmm.reset_status
        ));
    }
    Ok(())
}

pub fn with_stderr(error: String, log: &Path) -> String {
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    let stderr = stderr.trim();
    if stderr.is_empty() {
        error
    } else {
        format!("{error}\n--- its stderr ---\n{stderr}\n------------------")
    }
}

/// Runs each VMM once on the tiny guest; fails loudly, saying what went wrong, if one cannot.
pub fn preflight(vmm: &Vmm, guests: &Guests, scratch: &Scratch) {
    if let Err(err) = run_to_reset(vmm, guests, scratch) {
        fail(&format!(
            "{} DOES NOT RUN THE TINY GUEST\ncommand: {}\n{err}",
            vmm.name,
            vmm.command_line(vmm.fault_guest(guests))
        ));
    }
}
