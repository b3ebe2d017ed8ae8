//! Shared helpers for the host-native integration tests: tiny hand-assembled x86-64 guests
//! packed into a minimal ELF64 executable, and a way to run `vmm` on one.
//!
//! The guests run at CPL0 in 64-bit mode, entered through vmm's ordinary ELF loader (an
//! ELF without a PVH note gets the 64-bit Linux boot protocol), so they exercise the same
//! path a vmlinux does. On a `kvm_pvm` host CPL0 code runs in KVM's instruction emulator,
//! which is slow but fine for a few dozen instructions.

#![allow(dead_code)]

pub mod counting;
pub mod hostile;
pub mod lab;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the tiny guest's code is loaded and entered.
pub const GUEST_LOAD_ADDR: u64 = 0x10_0000;

/// Builds guest machine code one instruction at a time.
#[derive(Default)]
pub struct GuestCode {
    bytes: Vec<u8>,
}

impl GuestCode {
    pub fn new() -> GuestCode {
        GuestCode::default()
    }

    /// `mov dx, 0x3f8; mov al, b; out dx, al` for each byte: text on COM1.
    pub fn print(mut self, text: &str) -> GuestCode {
        for b in text.bytes() {
            self.bytes
                .extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xb0, b, 0xee]);
        }
        self
    }

    /// ACPI S5: `mov dx, 0x604; mov ax, (5 << 10) | (1 << 13); out dx, ax`.
    pub fn acpi_poweroff(mut self) -> GuestCode {
        self.bytes
            .extend_from_slice(&[0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00, 0x34, 0x66, 0xef]);
        self
    }

    /// The keyboard controller's CPU reset: `mov al, 0xfe; out 0x64, al`.
    pub fn i8042_reset(mut self) -> GuestCode {
        self.bytes.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]);
        self
    }

    /// The PCI reset control register: `mov dx, 0xcf9; mov al, 0x06; out dx, al`.
    pub fn cf9_reset(mut self) -> GuestCode {
        self.bytes
            .extend_from_slice(&[0x66, 0xba, 0xf9, 0x0c, 0xb0, 0x06, 0xee]);
        self
    }

    /// `ud2` with no usable IDT: #UD cannot be delivered, which becomes a triple fault.
    pub fn triple_fault(mut self) -> GuestCode {
        self.bytes.extend_from_slice(&[0x0f, 0x0b]);
        self
    }

    /// Echoes every byte the host sends to COM1 back out, polling the line-status
    /// register, until it has echoed `stop`; then falls through to what comes next.
    pub fn echo_until(mut self, stop: u8) -> GuestCode {
        self.bytes.extend_from_slice(&[
            0x66, 0xba, 0xfd, 0x03, // 0: mov dx, 0x3fd (LSR)
            0xec, //                   4: in al, dx
            0xa8, 0x01, //             5: test al, 1 (data ready)
            0x74, 0xf7, //             7: jz 0
            0x66, 0xba, 0xf8, 0x03, // 9: mov dx, 0x3f8 (RBR/THR)
            0xec, //                  13: in al, dx
            0xee, //                  14: out dx, al
            0x3c, stop, //            15: cmp al, stop
            0x75, 0xed, //            17: jne 0
        ]);
        self
    }

    /// `cli; hlt; jmp back`: park forever without using the host CPU.
    pub fn halt_forever(mut self) -> GuestCode {
        self.bytes.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
        self
    }

    /// `mov dx, 0x3f8; mov al, b; out dx, al; jmp back`: print `b` on COM1 forever, as
    /// fast as the VMM takes it. Guest progress shows as a growing serial log.
    pub fn print_forever(mut self, b: u8) -> GuestCode {
        self.bytes.extend_from_slice(&[
            0x66, 0xba, 0xf8, 0x03, // 0: mov dx, 0x3f8
            0xb0, b,    //                4: mov al, b
            0xee, //                   6: out dx, al
            0xeb, 0xf7, //             7: jmp 0
        ]);
        self
    }

    /// Writes a byte to every address from `start` upwards, one address after the next,
    /// forever: where no RAM and no device is, each write is an MMIO exit at an address the
    /// VMM has not seen before. `start` must be below 4 GiB (the boot page tables' reach).
    pub fn sweep_mmio_from(mut self, start: u64) -> GuestCode {
        self.bytes.extend_from_slice(&[0x48, 0xb8]); // mov rax, start
        self.bytes.extend_from_slice(&start.to_le_bytes());
        self.bytes.extend_from_slice(&[
            0x88, 0x00, //       0: mov [rax], al
            0x48, 0xff, 0xc0, // 2: inc rax
            0xeb, 0xf9, //       5: jmp 0
        ]);
        self
    }

    /// Waits until a byte arrives on COM1 (polling the line-status register) and takes it:
    /// the test says when the guest may go on, by typing on its terminal.
    pub fn wait_for_key(mut self) -> GuestCode {
        self.bytes.extend_from_slice(&[
            0x66, 0xba, 0xfd, 0x03, // 0: mov dx, 0x3fd (LSR)
            0xec, //                   4: in al, dx
            0xa8, 0x01, //             5: test al, 1 (data ready)
            0x74, 0xf7, //             7: jz 0
            0x66, 0xba, 0xf8, 0x03, // 9: mov dx, 0x3f8 (RBR)
            0xec, //                  13: in al, dx
        ]);
        self
    }

    /// Turns on memory decoding (COMMAND bit 1, and bus mastering) of the PCI function in
    /// `slot` of bus 0 through configuration mechanism #1, as a driver's
    /// `pci_enable_device` does: until then its BARs answer nothing.
    pub fn pci_enable_memory(mut self, slot: u8) -> GuestCode {
        let address = 0x8000_0000u32 | u32::from(slot) << 11 | 0x04;
        self.bytes.extend_from_slice(&[0x66, 0xba, 0xf8, 0x0c]); // mov dx, 0xcf8
        self.bytes.push(0xb8); // mov eax, address
        self.bytes.extend_from_slice(&address.to_le_bytes());
        self.bytes.extend_from_slice(&[
            0xef, //                         out dx, eax
            0x66, 0xba, 0xfc, 0x0c, //       mov dx, 0xcfc
            0x66, 0xb8, 0x06, 0x00, //       mov ax, 0x0006
            0x66, 0xef, //                   out dx, ax
        ]);
        self
    }

    /// Writes the 32-bit values `a` then `b` to `addr`, `times` times over, then falls
    /// through: `times` * 2 MMIO writes, ending with `b`. `addr` below 4 GiB.
    pub fn alternate_u32_at(mut self, addr: u64, a: u32, b: u32, times: u32) -> GuestCode {
        self.bytes.extend_from_slice(&[0x48, 0xb8]); // mov rax, addr
        self.bytes.extend_from_slice(&addr.to_le_bytes());
        self.bytes.push(0xb9); // mov ecx, times
        self.bytes.extend_from_slice(&times.to_le_bytes());
        self.bytes.extend_from_slice(&[0xc7, 0x00]); // 0: mov dword [rax], a
        self.bytes.extend_from_slice(&a.to_le_bytes());
        self.bytes.extend_from_slice(&[0xc7, 0x00]); // 6: mov dword [rax], b
        self.bytes.extend_from_slice(&b.to_le_bytes());
        self.bytes.extend_from_slice(&[
            0xff, 0xc9, // 12: dec ecx
            0x75, 0xf0, // 14: jnz 0
        ]);
        self
    }

    /// Programs PIT channel 0 (mode 2, count 0xffff), latches and reads its count twice
    /// with a busy loop between, and prints `M` if the count moved, `S` if it did not (a
    /// machine without a PIT reads the same all-ones both times).
    pub fn print_whether_the_pit_counts(mut self) -> GuestCode {
        self.bytes.extend_from_slice(&[
            0xb0, 0x34, 0xe6, 0x43, // mov al, 0x34; out 0x43, al: channel 0, lo/hi, mode 2
            0xb0, 0xff, 0xe6, 0x40, 0xe6, 0x40, // count 0xffff
            0xb0, 0x00, 0xe6, 0x43, // latch channel 0
            0xe4, 0x40, 0x88, 0xc3, 0xe4, 0x40, 0x88, 0xc7, // bl = lo, bh = hi
            0xb9, 0xa0, 0x86, 0x01, 0x00, // mov ecx, 100000
            0xe2, 0xfe, // loop $
            0xb0, 0x00, 0xe6, 0x43, // latch channel 0
            0xe4, 0x40, 0x88, 0xc1, 0xe4, 0x40, 0x88, 0xc5, // cl = lo, ch = hi
            0x66, 0x39, 0xcb, // cmp bx, cx
            0xb0, b'S', 0x74, 0x02, 0xb0, b'M', // al = equal ? 'S' : 'M'
            0x66, 0xba, 0xf8, 0x03, 0xee, // mov dx, 0x3f8; out dx, al
        ]);
        self
    }

    /// Waits for the CMOS RTC's seconds register to change `ticks` times (about `ticks`
    /// seconds of wall time, whatever the host's speed), polling ports 0x70/0x71.
    pub fn wait_rtc_seconds(mut self, ticks: u8) -> GuestCode {
        self.bytes.extend_from_slice(&[
            0xb1, ticks, //  0: mov cl, ticks
            0xb0, 0x00, //   2: mov al, 0 (RTC seconds)
            0xe6, 0x70, //   4: out 0x70, al
            0xe4, 0x71, //   6: in al, 0x71
            0x88, 0xc3, //   8: mov bl, al
            0xb0, 0x00, //  10: mov al, 0
            0xe6, 0x70, //  12: out 0x70, al
            0xe4, 0x71, //  14: in al, 0x71
            0x38, 0xd8, //  16: cmp al, bl
            0x74, 0xf6, //  18: je 10
            0x88, 0xc3, //  20: mov bl, al
            0xfe, 0xc9, //  22: dec cl
            0x75, 0xf0, //  24: jnz 10
        ]);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A minimal ELF64 executable: one PT_LOAD segment holding `code` at [`GUEST_LOAD_ADDR`],
/// entered at its first byte.
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const EHDR_SIZE: u16 = 64;
    const PHDR_SIZE: u16 = 56;
    let code_offset = u64::from(EHDR_SIZE + PHDR_SIZE);
    let mut elf = Vec::new();
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&PHDR_SIZE.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // The one program header: PT_LOAD, R+X.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags
    elf.extend_from_slice(&code_offset.to_le_bytes()); // p_offset
    elf.extend_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    elf.extend_from_slice(&1u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    elf
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// A new, empty directory: its name has the process id and a counter, and whatever
    /// a killed earlier run with the same pid left there is removed first.
    pub fn new(name: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmm-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        let mut file = std::fs::File::create(&path).expect("create scratch file");
        file.write_all(bytes).expect("write scratch file");
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The vmm binary under test.
///
/// The caller's `VMM_LOG` and test hooks are not passed on: the tests assert exact
/// stderr lines, and set what they need themselves.
pub fn vmm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmm"));
    command
        .stdin(Stdio::null())
        .env_remove("VMM_LOG")
        .env_remove("VMM_SANDBOX_TEST_VIOLATION");
    command
}

/// Says loudly that a test cannot run here, on stderr itself (libtest would swallow an
/// `eprintln!` of a passing test), and fails the test under CI, where every test must run.
pub fn skip(message: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{message}; CI must be able to run every test");
    }
    let _ = writeln!(std::io::stderr().lock(), "\n!!! SKIPPED: {message} !!!\n");
}

/// A copy of the vmm binary in `dir`, executable by every user: for tests that run vmm
/// under another uid, which may not be able to reach the build directory (a clone in a
/// 0700 home). Copied by a child process, so no thread of this test process holds the
/// copy open for writing when a parallel test forks (exec would fail with ETXTBSY).
pub fn vmm_copy_for_other_users(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let copy = dir.join("vmm");
    let copied = Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_vmm"))
        .arg(&copy)
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp vmm: {copied}");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod vmm");
    copy
}

/// Whether this host can give a VM a tap interface (`/dev/net/tun`, and the privilege to
/// create one); if not, says so loudly, and fails under CI, where every test must run.
pub fn require_tun() -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok()
        && euid_is_root();
    if !usable {
        let message = "THIS TEST NEEDS /dev/net/tun AND ROOT (CAP_NET_ADMIN) TO CREATE A TAP";
        skip(message);
    }
    usable
}

/// Whether the test runs as root (to act as other uids); if not, says so loudly, and fails
/// under CI, where every test must run.
pub fn require_root() -> bool {
    let root = euid_is_root();
    if !root {
        let message = "THIS TEST NEEDS ROOT, TO RUN CLIENTS AS OTHER UIDS";
        if std::env::var_os("CI").is_some() {
            panic!("{message}; CI must be able to run every test");
        }
        eprintln!("\n!!! SKIPPED: {message} !!!\n");
    }
    root
}

/// Whether the test runs as root.
fn euid_is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this host can run VMs; if not, says so loudly, and fails under CI, where every
/// test must run.
pub fn require_kvm() -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        let message = "THIS TEST NEEDS /dev/kvm, WHICH THIS HOST DOES NOT HAVE (or may not open)";
        skip(message);
    }
    usable
}

/// Runs `command` to completion, failing the test if it takes longer than `limit`.
pub fn run_with_timeout(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    wait_with_timeout(child, limit)
}

/// Waits for `child` to exit, failing the test if it takes longer than `limit`.
///
/// Its piped stdout and stderr are read while it runs: a child that writes more than a pipe
/// holds (64 KiB; an outer-kernel oops in the lab prints more) would otherwise block on the
/// write and never exit, nor reach a timeout of its own.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let stdout = PipeReader::start(child.stdout.take());
    let stderr = PipeReader::start(child.stderr.take());
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait for vmm") {
            Some(status) => {
                return Output {
                    status,
                    stdout: stdout.finish(),
                    stderr: stderr.finish(),
                };
            }
            None if start.elapsed() > limit => {
                stop(&mut child);
                panic!(
                    "vmm did not exit within {limit:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&stdout.finish()),
                    String::from_utf8_lossy(&stderr.finish())
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads one of a child's pipes to its end on a thread of its own, keeping what it read:
/// a test can wait for text with a bound ([`PipeReader::wait_for`]) instead of a blocking
/// read that hangs when the child stops writing but stays alive.
pub struct PipeReader {
    read: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl PipeReader {
    pub fn start(pipe: Option<impl std::io::Read + Send + 'static>) -> PipeReader {
        let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (done_tx, done) = std::sync::mpsc::channel();
        if let Some(mut pipe) = pipe {
            let sink = read.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
                let _ = done_tx.send(());
            });
        }
        PipeReader { read, done }
    }

    /// What has been read so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.read.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until what was read contains `marker`, failing the test with what arrived if
    /// it does not within `limit`.
    pub fn wait_for(&self, marker: &str, limit: Duration) -> String {
        if !wait_until(limit, || self.text().contains(marker)) {
            panic!(
                "no {marker:?} within {limit:?}; read so far: {:?}",
                self.text()
            );
        }
        self.text()
    }

    /// What was read, once the pipe has ended or after a few seconds: a grandchild that
    /// outlives the child (QEMU, say) may hold the pipe open.
    pub fn finish(&self) -> Vec<u8> {
        let _ = self.done.recv_timeout(Duration::from_secs(5));
        self.read.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A child's exit status and output, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Ends a child that overstayed: SIGTERM first, so that tools/lab can take its QEMU down
/// with it (QEMU runs in a session of its own and would otherwise go on loading the
/// cores under the tests that follow), then SIGKILL after a grace period.
fn stop(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which is not yet reaped (so not reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if wait_until(Duration::from_secs(15), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            return;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `vmm run --mem 32 KERNEL` with extra arguments.
pub fn vmm_run(kernel: &Path, extra: &[&str]) -> Command {
    let mut command = vmm();
    command
        .arg("run")
        .args(["--mem", "32"])
        .args(extra)
        .arg(kernel);
    command
}

/// Polls `ready` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pseudo-terminal pair: (master, slave). A `vmm` whose stdin is the slave treats it as
/// the user's terminal: raw mode while it runs, the original settings back when it exits.
pub fn open_pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the provided ints; the name,
    // termios and window-size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by openpty and are owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// The terminal settings of `fd`.
pub fn termios_of(fd: &OwnedFd) -> libc::termios {
    // SAFETY: termios is plain data; tcgetattr fills it from a valid descriptor.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal descriptor and termios is writable.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut termios) }, 0);
    termios
}

/// `PF_USER_WORKER` in `/proc/PID/task/TID/stat`'s flags: a kernel worker attached to the
/// process (KVM's `kvm-nx-lpage-recovery` on recent kernels) that never runs user code, so
/// neither seccomp nor signal masks apply to it.
const PF_USER_WORKER: u64 = 0x4000;

/// Whether `task` (a `/proc/PID/task/TID` directory) is a kernel user-worker thread.
fn is_kernel_worker(task: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
        return false;
    };
    // After the parenthesised name: state ppid pgrp session tty_nr tpgid flags ...
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .nth(6)
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_USER_WORKER != 0)
}

/// One user thread of a process, as `/proc/PID/task/TID/status` describes it.
pub struct ThreadStatus {
    pub name: String,
    status: String,
}

impl ThreadStatus {
    /// The value of a `Key:` line (e.g. `Seccomp:`, `SigBlk:`), trimmed; empty if absent.
    pub fn field(&self, key: &str) -> String {
        self.status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|value| value.trim().to_string())
            .unwrap_or_default()
    }
}

/// The process that runs the VM of the `vmm run` with process id `pid`: jailed (the
/// default), `vmm run` forks into a PID namespace and stays outside as the reaper, and
/// the VMM is its one child; with `--no-jail` it is `pid` itself. Waits (bounded) for
/// the reaper's fork.
pub fn vmm_process(pid: u32) -> u32 {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.split(|b| *b == 0).any(|arg| arg == b"--no-jail") {
        return pid;
    }
    let mut child = None;
    let forked = wait_until(Duration::from_secs(10), || {
        child = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok());
        child.is_some()
    });
    assert!(forked, "vmm run {pid} never forked its jailed VMM");
    child.unwrap_or(pid)
}

/// Every user thread of process `pid` (kernel workers left out).
pub fn user_threads(pid: u32) -> Vec<ThreadStatus> {
    let mut threads = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list /proc/PID/task");
    for task in tasks {
        let task = task.expect("read /proc/PID/task entry");
        if is_kernel_worker(&task.path()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let name = status
            .lines()
            .find_map(|line| line.strip_prefix("Name:"))
            .map(|value| value.trim().to_string())
            .unwrap_or_default();
        threads.push(ThreadStatus { name, status });
    }
    threads
}
