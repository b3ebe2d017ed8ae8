//! The VMM's main thread once the VM is built: start the vCPUs, then wait on one epoll set
//! for host signals, guest stop requests, and console input, until the VM must end.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, warn};
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::Killable;

use crate::builder::Vm;
use crate::exit::VmExit;
use crate::terminal::RawTerminal;
use crate::vcpu::{self, ExitCounters, ExitLatch, VcpuContext};

/// How long a stopping VM waits for its vCPU threads before leaving them to process exit.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

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
    #[error("waiting for events failed: {0}")]
    Wait(#[source] io::Error),
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Setup { what, source }
}

/// What woke the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Token {
    Signal,
    VcpuExit,
    PowerOff,
    Reset,
    Stdin,
    ConsoleReady,
}

impl Token {
    const ALL: [Token; 6] = [
        Token::Signal,
        Token::VcpuExit,
        Token::PowerOff,
        Token::Reset,
        Token::Stdin,
        Token::ConsoleReady,
    ];

    fn from_data(data: u64) -> Option<Token> {
        Token::ALL.into_iter().find(|token| *token as u64 == data)
    }
}

/// Host signals that stop the VM cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Runs `vm` until the guest stops or the host asks it to; returns why it ended.
pub fn run(vm: Vm) -> Result<VmExit, RunError> {
    // The VM descriptor and guest memory must outlive every vCPU thread: a vCPU in
    // KVM_RUN uses both. They are dropped only after `stop_vcpus` has returned.
    let Vm {
        vm_fd: _vm_fd,
        memory: _memory,
        vcpus,
        pio_bus,
        mmio_bus,
        requests,
        console,
    } = vm;
    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and the signals are only ever read from the signalfd here.
    let signals = SignalFd::new(&STOP_SIGNALS).map_err(setup("signal descriptor"))?;
    vcpu::install_kick_handler()
        .map_err(|err| setup("vCPU kick signal")(io::Error::from_raw_os_error(err.errno())))?;
    let exit = Arc::new(ExitLatch::new(
        EventFd::new(EFD_NONBLOCK).map_err(setup("exit event"))?,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ExitCounters::default());

    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let context = VcpuContext {
            pio_bus: pio_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            exit: exit.clone(),
            stop: stop.clone(),
            counters: counters.clone(),
        };
        match vcpu::spawn(id, vcpu, context) {
            Ok(handle) => threads.push(handle),
            Err(err) => {
                stop_vcpus(&stop, threads);
                return Err(RunError::SpawnVcpu(err));
            }
        }
    }

    let mut console_input = ConsoleInput::new(&console);
    let result = wait_for_exit(&signals, &exit, &requests, &mut console_input);
    stop_vcpus(&stop, threads);
    drop(console_input);
    debug!("VM exits: {counters}");
    result
}

fn wait_for_exit(
    signals: &SignalFd,
    exit: &ExitLatch,
    requests: &crate::builder::GuestRequests,
    console: &mut ConsoleInput<'_>,
) -> Result<VmExit, RunError> {
    let epoll = Epoll::new().map_err(setup("epoll"))?;
    let add = |fd: RawFd, token: Token| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token as u64),
        )
    };
    add(signals.as_raw_fd(), Token::Signal).map_err(setup("epoll"))?;
    add(exit.event().as_raw_fd(), Token::VcpuExit).map_err(setup("epoll"))?;
    add(requests.poweroff.as_raw_fd(), Token::PowerOff).map_err(setup("epoll"))?;
    add(requests.reset.as_raw_fd(), Token::Reset).map_err(setup("epoll"))?;
    if console.enabled() {
        add(libc::STDIN_FILENO, Token::Stdin).map_err(setup("epoll"))?;
        add(console.ready_fd(), Token::ConsoleReady).map_err(setup("epoll"))?;
    }

    let mut events = vec![EpollEvent::default(); Token::ALL.len()];
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(RunError::Wait(err)),
        };
        for event in &events[..count] {
            match Token::from_data(event.data()) {
                Some(Token::Signal) => {
                    if let Some(signal) = signals.read_signal() {
                        return Ok(VmExit::Signal(signal));
                    }
                }
                Some(Token::VcpuExit) => {
                    let _ = exit.event().read();
                    if let Some(reason) = exit.reason() {
                        return Ok(reason);
                    }
                }
                Some(Token::PowerOff) => return Ok(VmExit::PowerOff),
                Some(Token::Reset) => return Ok(VmExit::Reset),
                Some(Token::Stdin) => {
                    if !console.on_stdin_readable() {
                        // EOF or error on stdin: the guest keeps running without input.
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            libc::STDIN_FILENO,
                            EpollEvent::default(),
                        );
                    }
                    console.update_interest(&epoll);
                }
                Some(Token::ConsoleReady) => {
                    console.on_guest_ready();
                    console.update_interest(&epoll);
                }
                None => warn!("run loop woke for unknown event {}", event.data()),
            }
        }
    }
}

/// Tells every vCPU thread to stop, kicks them out of `KVM_RUN`, and waits for them.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    // A kick can land just before a thread re-enters KVM_RUN and be lost, so keep kicking
    // until each thread is gone.
    for handle in threads {
        while !handle.is_finished() && Instant::now() < deadline {
            let _ = handle.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            if handle.join().is_err() {
                error!("a vCPU thread panicked");
            }
        } else {
            warn!("a vCPU thread did not stop in time; leaving it to process exit");
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
