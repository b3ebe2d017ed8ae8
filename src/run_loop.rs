//! The VMM's main thread once the VM is built: start the vCPUs, then wait on one epoll set
//! for host signals, guest stop requests, console input and control-socket clients, until
//! the VM must end.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;
use log::{debug, warn};
use thiserror::Error;
use vm_control::wire::{
    DeviceCounter, DeviceCounters, Event, ProcessUsage, Stats, VmExits, counter_id, device_kind,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::builder::{GuestRequests, Vm};
use crate::config::VmConfig;
use crate::control::{CONNECTION_TOKEN_BASE, ControlServer};
use crate::exit::VmExit;
use crate::memory_registry::{MemoryRegistry, RegistryError};
use crate::terminal::RawTerminal;
use crate::vcpu::{self, ExitCounters, ExitLatch, RunControl, VcpuContext, Vcpus};

/// A failure of the run loop itself (not of the guest).
#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot set up the run loop's {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a vCPU thread: {0}")]
    SpawnVcpu(#[source] io::Error),
    #[error("cannot create the control socket: {0}")]
    ControlSocket(#[source] vm_control::server::ListenError),
    #[error("waiting for events failed: {0}")]
    Wait(#[source] io::Error),
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Setup { what, source }
}

/// What woke the run loop (epoll data values below [`CONNECTION_TOKEN_BASE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Token {
    Signal,
    VcpuExit,
    PowerOff,
    Reset,
    Stdin,
    ConsoleReady,
    ControlListener,
}

impl Token {
    const ALL: [Token; 7] = [
        Token::Signal,
        Token::VcpuExit,
        Token::PowerOff,
        Token::Reset,
        Token::Stdin,
        Token::ConsoleReady,
        Token::ControlListener,
    ];

    fn from_data(data: u64) -> Option<Token> {
        Token::ALL.into_iter().find(|token| *token as u64 == data)
    }
}

/// Host signals that stop the VM cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The running VM as the control socket sees it: what requests act on and report.
pub struct RunningVm {
    vm_fd: VmFd,
    /// Kept for the life of the VM: the vCPUs run on it.
    _memory: GuestMemoryMmap,
    vcpus: Vcpus,
    counters: Arc<ExitCounters>,
    serial: Arc<Mutex<devices::Serial>>,
    registry: MemoryRegistry,
    started: Instant,
    mem_bytes: u64,
}

impl RunningVm {
    /// Parks every vCPU outside the guest. Ok(false) if it was paused already.
    pub fn pause(&mut self) -> io::Result<bool> {
        if self.vcpus.paused() {
            return Ok(false);
        }
        self.vcpus.pause()?;
        Ok(true)
    }

    /// Lets the vCPUs run again. False if it was not paused.
    pub fn resume(&mut self) -> bool {
        let was_paused = self.vcpus.paused();
        self.vcpus.resume();
        was_paused
    }

    pub fn register_memory(
        &mut self,
        fd: std::os::fd::OwnedFd,
        size: u64,
    ) -> Result<(u64, u32), RegistryError> {
        self.registry.register(&self.vm_fd, fd, size)
    }

    pub fn unregister_memory(&mut self, slot: u32) -> Result<(), RegistryError> {
        self.registry.unregister(&self.vm_fd, slot)
    }

    pub fn stats(&self) -> Stats {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        Stats {
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            vcpu_count: u32::try_from(self.vcpus.count()).unwrap_or(u32::MAX),
            guest_memory_bytes: self.mem_bytes,
            balloon_target_pages: 0,
            balloon_actual_pages: 0,
            exits: VmExits {
                io: get(&counters.io_in) + get(&counters.io_out),
                mmio: get(&counters.mmio_read) + get(&counters.mmio_write),
                other: get(&counters.other),
                ..VmExits::default()
            },
            rusage: process_usage(),
            devices: self.device_counters(),
        }
    }

    fn device_counters(&self) -> DeviceCounters {
        let serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let mut counters = DeviceCounters::default();
        for (counter, value) in [
            (counter_id::BYTES_OUT, serial.bytes_out()),
            (counter_id::BYTES_IN, serial.bytes_in()),
            (counter_id::BYTES_DROPPED, serial.bytes_lost()),
        ] {
            // Three counters cannot fill the bounded list.
            let _ = counters.push(DeviceCounter {
                device_kind: device_kind::SERIAL,
                device_id: 0,
                counter,
                value,
            });
        }
        counters
    }
}

/// The VMM process's resource usage, from getrusage(2).
fn process_usage() -> ProcessUsage {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return ProcessUsage::default();
    }
    let micros = |tv: libc::timeval| {
        u64::try_from(tv.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec).unwrap_or(0)
    };
    let count = |value: libc::c_long| u64::try_from(value).unwrap_or(0);
    ProcessUsage {
        utime_us: micros(usage.ru_utime),
        stime_us: micros(usage.ru_stime),
        maxrss_kib: count(usage.ru_maxrss),
        minflt: count(usage.ru_minflt),
        majflt: count(usage.ru_majflt),
    }
}

/// Runs `vm` until the guest stops or the host asks it to; returns why it ended.
pub fn run(vm: Vm, config: &VmConfig) -> Result<VmExit, RunError> {
    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and the signals are only ever read from the signalfd here.
    let signals = SignalFd::new(&STOP_SIGNALS).map_err(setup("signal descriptor"))?;
    vcpu::install_kick_handler()
        .map_err(|err| setup("vCPU kick signal")(io::Error::from_raw_os_error(err.errno())))?;
    let exit = Arc::new(ExitLatch::new(
        EventFd::new(EFD_NONBLOCK).map_err(setup("exit event"))?,
    ));
    let epoll = Epoll::new().map_err(setup("epoll"))?;
    // The socket exists before the guest runs, so a supervisor that sees it can drive
    // the VM from its first instruction.
    let control = match &config.socket {
        Some(path) => Some(
            ControlServer::bind(
                path,
                &config.socket_allow_uids,
                &epoll,
                Token::ControlListener as u64,
            )
            .map_err(RunError::ControlSocket)?,
        ),
        None => None,
    };

    let counters = Arc::new(ExitCounters::default());
    let run_control = Arc::new(RunControl::default());
    let vcpus = Vcpus::start(
        vm.vcpus,
        || VcpuContext {
            pio_bus: vm.pio_bus.clone(),
            mmio_bus: vm.mmio_bus.clone(),
            exit: exit.clone(),
            counters: counters.clone(),
            control: run_control.clone(),
        },
        run_control.clone(),
    )
    .map_err(RunError::SpawnVcpu)?;

    let registry = MemoryRegistry::new(
        arch::layout::registered_memory_base(config.mem_bytes),
        arch::layout::REGISTERED_MEMORY_END,
        vm.ram_slots,
        vm.max_slots,
    );
    let mut running = RunningVm {
        vm_fd: vm.vm_fd,
        _memory: vm.memory,
        vcpus,
        counters,
        serial: vm.console.serial.clone(),
        registry,
        started: Instant::now(),
        mem_bytes: config.mem_bytes,
    };
    let mut run_loop = RunLoop {
        epoll,
        signals,
        exit,
        requests: vm.requests,
        console: ConsoleInput::new(&vm.console),
        control,
    };
    let result = run_loop.wait_for_exit(&mut running);
    if let (Ok(why), Some(control)) = (&result, run_loop.control.as_mut()) {
        if let Some(event) = event_for(*why) {
            control.broadcast(&run_loop.epoll, event);
        }
        control.flush_all();
    }
    running.vcpus.stop();
    debug!("VM exits: {}", running.counters);
    result
}

/// The event subscribers get when the VM ends this way.
fn event_for(exit: VmExit) -> Option<Event> {
    match exit {
        VmExit::PowerOff => Some(Event::PoweredOff),
        VmExit::Reset => Some(Event::ResetRequested),
        VmExit::Crash => Some(Event::Crashed),
        VmExit::Signal(_) | VmExit::Stopped => None,
    }
}

/// The run loop's event sources.
struct RunLoop<'a> {
    epoll: Epoll,
    signals: SignalFd,
    exit: Arc<ExitLatch>,
    requests: GuestRequests,
    console: ConsoleInput<'a>,
    control: Option<ControlServer>,
}

impl RunLoop<'_> {
    fn watch(&self, fd: RawFd, token: Token) -> Result<(), RunError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token as u64),
            )
            .map_err(setup("epoll"))
    }

    fn wait_for_exit(&mut self, vm: &mut RunningVm) -> Result<VmExit, RunError> {
        self.watch(self.signals.as_raw_fd(), Token::Signal)?;
        self.watch(self.exit.event().as_raw_fd(), Token::VcpuExit)?;
        self.watch(self.requests.poweroff.as_raw_fd(), Token::PowerOff)?;
        self.watch(self.requests.reset.as_raw_fd(), Token::Reset)?;
        if self.console.enabled() {
            self.watch(libc::STDIN_FILENO, Token::Stdin)?;
            self.watch(self.console.ready_fd(), Token::ConsoleReady)?;
        }

        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let timeout = self
                .control
                .as_ref()
                .and_then(ControlServer::timeout)
                .map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
            let count = match self.epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(RunError::Wait(err)),
            };
            if let Some(control) = self.control.as_mut() {
                control.tick(&self.epoll);
            }
            for event in &events[..count] {
                if let Some(exit) = self.dispatch(event, vm) {
                    return Ok(exit);
                }
            }
        }
    }

    /// Handles one ready event source; `Some` when the VM must end.
    fn dispatch(&mut self, event: &EpollEvent, vm: &mut RunningVm) -> Option<VmExit> {
        let data = event.data();
        if data >= CONNECTION_TOKEN_BASE {
            let control = self.control.as_mut()?;
            return control.serve(&self.epoll, data, event.event_set(), vm);
        }
        match Token::from_data(data) {
            Some(Token::Signal) => self.signals.read_signal().map(VmExit::Signal),
            Some(Token::VcpuExit) => {
                let _ = self.exit.event().read();
                self.exit.reason()
            }
            Some(Token::PowerOff) => Some(VmExit::PowerOff),
            Some(Token::Reset) => Some(VmExit::Reset),
            Some(Token::Stdin) => {
                if !self.console.on_stdin_readable() {
                    // EOF or error on stdin: the guest keeps running without input.
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        libc::STDIN_FILENO,
                        EpollEvent::default(),
                    );
                }
                self.console.update_interest(&self.epoll);
                None
            }
            Some(Token::ConsoleReady) => {
                self.console.on_guest_ready();
                self.console.update_interest(&self.epoll);
                None
            }
            Some(Token::ControlListener) => {
                if let Some(control) = self.control.as_mut() {
                    control.accept(&self.epoll);
                }
                None
            }
            None => {
                warn!("run loop woke for unknown event {data}");
                None
            }
        }
    }
}

/// Host stdin feeding the guest's serial port, with back-pressure: bytes the UART cannot
/// take yet wait here, and stdin is not read again until the guest drains its FIFO.
struct ConsoleInput<'a> {
    console: &'a crate::builder::Console,
    pending: VecDeque<u8>,
    stdin_open: bool,
    stdin_watched: bool,
    _raw_terminal: Option<RawTerminal>,
}

impl<'a> ConsoleInput<'a> {
    fn new(console: &'a crate::builder::Console) -> ConsoleInput<'a> {
        let raw_terminal = if console.takes_stdin {
            RawTerminal::enable()
                .map_err(|err| warn!("cannot put the terminal in raw mode: {err}"))
                .ok()
        } else {
            None
        };
        ConsoleInput {
            console,
            pending: VecDeque::new(),
            stdin_open: console.takes_stdin,
            stdin_watched: console.takes_stdin,
            _raw_terminal: raw_terminal,
        }
    }

    fn enabled(&self) -> bool {
        self.console.takes_stdin
    }

    fn ready_fd(&self) -> RawFd {
        self.console.input_ready.as_raw_fd()
    }

    /// Reads what stdin has; false once stdin is at EOF or broken.
    fn on_stdin_readable(&mut self) -> bool {
        let mut buf = [0u8; 64];
        // SAFETY: fd 0 stays open for the life of the process, and ManuallyDrop keeps this
        // temporary File from closing it. Reading it unbuffered (not via io::stdin(), which
        // buffers) keeps epoll's readiness in step with what is really left unread.
        let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDIN_FILENO) });
        match stdin.read(&mut buf) {
            Ok(0) => {
                self.stdin_open = false;
                false
            }
            Ok(count) => {
                self.pending.extend(&buf[..count]);
                self.feed_guest();
                true
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => true,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => true,
            Err(err) => {
                warn!("reading the terminal failed, the guest gets no more input: {err}");
                self.stdin_open = false;
                false
            }
        }
    }

    fn on_guest_ready(&mut self) {
        let _ = self.console.input_ready.read();
        self.feed_guest();
    }

    fn feed_guest(&mut self) {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let accepted = {
                let mut serial = self
                    .console
                    .serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match serial.enqueue_input(front) {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!("the serial port refused input: {err}");
                        0
                    }
                }
            };
            if accepted == 0 {
                break;
            }
            self.pending.drain(..accepted);
        }
    }

    /// Watches stdin only while nothing is waiting for the guest, so a guest that does not
    /// read its console cannot make the VMM buffer without bound.
    fn update_interest(&mut self, epoll: &Epoll) {
        let want = self.stdin_open && self.pending.is_empty();
        if want == self.stdin_watched {
            return;
        }
        let events = if want {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        let _ = epoll.ctl(
            ControlOperation::Modify,
            libc::STDIN_FILENO,
            EpollEvent::new(events, Token::Stdin as u64),
        );
        self.stdin_watched = want;
    }
}

/// A signalfd for a set of signals, which are blocked in the calling thread (and so in
/// every thread it starts afterwards).
struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    fn new(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid constants.
        unsafe {
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new descriptor; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The next pending signal, if any.
    fn read_signal(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is a valid, writable signalfd_siginfo of `size` bytes.
        let read = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (read == size as isize).then_some(info.ssi_signo as libc::c_int)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
