//! The VMM's main thread once the VM is built: start the vCPUs, then wait on one epoll set
//! for host signals, guest stop requests, console input and control-socket clients, until
//! the VM must end.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use seccomp::ThreadKind;
use thiserror::Error;
use vm_control::server::Listener;
use vm_control::wire::Event;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::builder::{GuestRequests, Vm};
use crate::coalesce::Coalescer;
use crate::config::VmConfig;
use crate::console_input::ConsoleInput;
use crate::console_stream::ConsoleStreams;
use crate::control::{CONNECTION_TOKEN_BASE, ControlServer};
use crate::exit::VmExit;
use crate::memory_registry::MemoryRegistry;
use crate::running_vm::RunningVm;
use crate::signal_fd::SignalFd;
use crate::snapshot::page_map::PageMap;
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
    #[error(transparent)]
    FdBudget(#[from] crate::fd_budget::FdBudgetError),
    #[error("cannot serve the control socket: {0}")]
    ControlSocket(#[source] io::Error),
    #[error("waiting for events failed: {0}")]
    Wait(#[source] io::Error),
    #[error("cannot start the sandbox: {0}")]
    Sandbox(#[source] seccomp::SeccompError),
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Setup { what, source }
}

/// Epoll data values from here up to [`CONNECTION_TOKEN_BASE`] name a virtio device's INTx
/// resample eventfd (the index into `VirtioHandles::intx_lines` above it).
const INTX_TOKEN_BASE: u64 = 1 << 24;

/// What woke the run loop (epoll data values below [`INTX_TOKEN_BASE`]).
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
    BalloonChanged,
    ConsoleWriter,
    SnapshotWriter,
    RtcTimer,
}

impl Token {
    const ALL: [Token; 11] = [
        Token::Signal,
        Token::VcpuExit,
        Token::PowerOff,
        Token::Reset,
        Token::Stdin,
        Token::ConsoleReady,
        Token::ControlListener,
        Token::BalloonChanged,
        Token::ConsoleWriter,
        Token::SnapshotWriter,
        Token::RtcTimer,
    ];

    fn from_data(data: u64) -> Option<Token> {
        Token::ALL.into_iter().find(|token| *token as u64 == data)
    }
}

/// The console streaming thread's name, and its label in a sandbox report.
const CONSOLE_STREAM: &str = "console-stream";

/// How long the VMM, once the VM has ended, waits for the console writer to write what the
/// guest printed last.
const CONSOLE_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Shortest time between two `BalloonChanged` events: a guest can change the balloon's
/// size as often as it likes, subscribers get its latest size at most this often.
const BALLOON_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// Host signals that stop the VM cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the host's stop signals in the calling thread and returns the descriptor the run
/// loop reads them from. Call it before the process creates any thread (device workers, the
/// kernel loader, vCPUs): a thread inherits its creator's signal mask, and the kernel
/// hands a process-directed signal to any thread that does not block it, whose default
/// action would then end the VMM without its clean-up (exit status, socket file, terminal).
pub fn block_stop_signals() -> Result<SignalFd, RunError> {
    SignalFd::new(&STOP_SIGNALS).map_err(setup("signal descriptor"))
}

/// Runs `vm` until the guest stops or the host asks it to; returns why it ended.
/// `signals` comes from [`block_stop_signals`], called before the VM was built, and
/// `listener` is the control socket, bound before it was built too or handed over by a
/// supervisor (`--socket-fd`, socket activation; see `opened`).
pub fn run(
    kvm: kvm_ioctls::Kvm,
    vm: Vm,
    config: &VmConfig,
    signals: SignalFd,
    listener: Option<Listener>,
    page_map: Option<PageMap>,
) -> Result<VmExit, RunError> {
    vcpu::install_kick_handler()
        .map_err(|err| setup("vCPU kick signal")(io::Error::from_raw_os_error(err.errno())))?;
    let exit = Arc::new(ExitLatch::new(
        EventFd::new(EFD_NONBLOCK).map_err(setup("exit event"))?,
    ));
    let epoll = Epoll::new().map_err(setup("epoll"))?;
    // The socket exists before the guest runs, so a supervisor that sees it can drive
    // the VM from its first instruction.
    let control = match listener {
        Some(listener) => Some({
            let limit = crate::fd_budget::ensure_control_headroom()?;
            debug!("descriptor limit {limit}: room for every control connection");
            ControlServer::new(
                listener,
                &epoll,
                Token::ControlListener as u64,
                Token::SnapshotWriter as u64,
            )
            .map_err(RunError::ControlSocket)?
        }),
        None => None,
    };

    let counters = Arc::new(ExitCounters::default());
    let run_control = Arc::new(if config.start_paused {
        RunControl::paused()
    } else {
        RunControl::default()
    });
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
    // Like the vCPUs, before the main thread is confined: it would inherit main's policy.
    let console_streams = match vm.console_ring {
        Some(ring) => Some(
            ConsoleStreams::start(CONSOLE_STREAM, ring, || {
                crate::sandbox::enter_device_worker(ThreadKind::ConsoleStream, CONSOLE_STREAM)
            })
            .map_err(setup("console streaming thread"))?,
        ),
        None => None,
    };
    // After the vCPU threads exist, so they keep their own policy instead of inheriting
    // this one; before the run loop reads any guest request or control message.
    crate::sandbox::enter_main().map_err(RunError::Sandbox)?;

    let mut registry = MemoryRegistry::new(
        arch::layout::registered_memory_base(config.mem_bytes),
        arch::layout::REGISTERED_MEMORY_END,
        vm.ram_slots,
        vm.max_slots,
    );
    if let Some(table) = &vm.virtio.vsock_memory {
        registry.follow_with(table.clone());
    }
    let mut running = RunningVm {
        vm_fd: vm.vm_fd,
        memory: vm.memory,
        vcpus,
        counters,
        serial: vm.console.serial.clone(),
        console_writer: vm.console_writer,
        hvc_writer: vm.hvc_writer,
        registry,
        virtio: vm.virtio,
        started: Instant::now(),
        console_streams,
        new_console_writer: None,
        kvm,
        devices: vm.devices,
        saved_config: crate::snapshot::config_record::SavedConfig::of(config),
        page_map,
    };
    let mut run_loop = RunLoop {
        epoll,
        signals,
        exit,
        requests: vm.requests,
        console: ConsoleInput::new(&vm.console),
        control,
        balloon_changes: Coalescer::new(BALLOON_EVENT_INTERVAL),
    };
    let result = run_loop.wait_for_exit(&mut running);
    // A snapshot still being written (before the VMM's last messages go out below): when
    // the guest ended the VM, the snapshot's moment came before that end and it is
    // finished; when the host stops the VM, the writer is killed and the client told.
    if let Some(control) = run_loop.control.as_mut() {
        match result {
            Ok(VmExit::PowerOff | VmExit::Reset | VmExit::Crash) => {
                control.finish_snapshot(&run_loop.epoll, run_loop.signals.as_fd());
            }
            Ok(VmExit::Signal(_) | VmExit::Stopped) | Err(_) => {
                control.abandon_snapshot(&run_loop.epoll);
            }
        }
    }
    // The balloon's last change, held back by the rate limit, still reaches subscribers.
    if let Some(pages) = run_loop.balloon_changes.flush(Instant::now()) {
        run_loop.broadcast_balloon(pages);
    }
    if let (Ok(why), Some(control)) = (&result, run_loop.control.as_mut()) {
        if let Some(event) = event_for(*why) {
            control.broadcast(&run_loop.epoll, event);
        }
        control.flush_all();
    }
    running.vcpus.stop();
    // Attached consoles get the guest's last output and a Detached frame.
    if let Some(streams) = running.console_streams.as_mut() {
        streams.finish();
    }
    // The guest's last words (a panic, "reboot: Power down") are worth a moment; a reader
    // that has stopped reading is not worth more.
    let writers = std::iter::once(&mut running.console_writer).chain(running.hvc_writer.as_mut());
    for writer in writers {
        if !writer.finish(CONSOLE_FLUSH_LIMIT) {
            warn!(
                "the console's reader took no output for {CONSOLE_FLUSH_LIMIT:?}; exiting \
                 without writing the rest"
            );
        }
    }
    debug!("VM exits: {}", running.counters);
    // Returning drops `running` and with it the VM fd (the vCPU fds went with the vCPUs
    // above): its close is where KVM destroys the VM, most of a short VM's stop (grace
    // periods for the I/O buses, which `hasten_teardown` expedites). Exiting without the
    // drops would not save that: the VM file's last fput runs inside exit_group, before
    // the parent learns of the exit (measured, docs/PERFORMANCE.md "Start/stop"). The
    // console is flushed first so the guest's last output does not wait for it.
    crate::builder::hasten_teardown(&running.vm_fd);
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
    /// The balloon's (target, actual) pages as subscribers are told them, rate-limited.
    balloon_changes: Coalescer<(u64, u64)>,
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
        }
        // An attached `vmm console` writer feeds the guest too.
        if self.console.enabled() || vm.console_streams.is_some() {
            self.watch(self.console.ready_fd(), Token::ConsoleReady)?;
        }
        if let Some(balloon) = &vm.virtio.balloon {
            self.watch(balloon.changed().as_raw_fd(), Token::BalloonChanged)?;
        }
        if let Some(fd) = vm.rtc().timer_fd() {
            self.watch(fd, Token::RtcTimer)?;
        }
        for (index, line) in (0u64..).zip(&vm.virtio.intx_lines) {
            // One line per PCI slot (at most 32): far below CONNECTION_TOKEN_BASE.
            let token = INTX_TOKEN_BASE.saturating_add(index);
            self.epoll
                .ctl(
                    ControlOperation::Add,
                    line.intx_resample_eventfd().as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(setup("epoll"))?;
        }

        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let count = match self.epoll.wait(self.wait_timeout_ms(), &mut events) {
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(RunError::Wait(err)),
            };
            if let Some(control) = self.control.as_mut() {
                control.tick(&self.epoll);
            }
            self.send_due_balloon_change();
            // epoll_wait returns at most `events.len()`.
            for event in events.iter().take(count) {
                if let Some(exit) = self.dispatch(event, vm) {
                    return Ok(exit);
                }
            }
        }
    }

    /// How long epoll may sleep (-1: until an event): the control server's accept back-off
    /// and a held balloon change both need the loop back in time.
    fn wait_timeout_ms(&self) -> i32 {
        let now = Instant::now();
        let control = self.control.as_ref().and_then(ControlServer::timeout);
        let balloon = self
            .balloon_changes
            .deadline()
            .map(|deadline| deadline.saturating_duration_since(now));
        match (control, balloon) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        // Rounded up, so a deadline 0.4 ms away is not a busy 0 ms wait.
        .map_or(-1, |t| {
            i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        })
    }

    /// The balloon's target or size changed: tells subscribers its current target and size,
    /// at most once per [`BALLOON_EVENT_INTERVAL`] (see [`Coalescer`]).
    fn report_balloon_change(&mut self, vm: &RunningVm) {
        if let Some(balloon) = &vm.virtio.balloon {
            // Before reading the sizes: a change after this read wakes the loop again.
            let _ = balloon.changed().read();
        }
        let (target_pages, actual_pages) = vm.balloon_pages();
        debug!("balloon: target {target_pages} pages, holds {actual_pages}");
        if let Some(pages) = self
            .balloon_changes
            .offer(Instant::now(), (target_pages, actual_pages))
        {
            self.broadcast_balloon(pages);
        }
    }

    /// Sends a balloon change held back by the rate limit, once its time has come.
    fn send_due_balloon_change(&mut self) {
        if let Some(pages) = self.balloon_changes.due(Instant::now()) {
            self.broadcast_balloon(pages);
        }
    }

    fn broadcast_balloon(&mut self, (target_pages, actual_pages): (u64, u64)) {
        if let Some(control) = self.control.as_mut() {
            control.broadcast(
                &self.epoll,
                Event::BalloonChanged {
                    target_pages,
                    actual_pages,
                },
            );
        }
    }

    /// Brings what epoll watches of both input sources in line with the guest's room.
    fn update_input_interest(&mut self) {
        self.console
            .update_interest(&self.epoll, Token::Stdin as u64);
        self.console
            .update_writer_interest(&self.epoll, Token::ConsoleWriter as u64);
    }

    /// Watches the input of a writer `ConsoleAttach` just admitted.
    fn adopt_console_writer(&mut self, vm: &mut RunningVm) {
        let Some(fd) = vm.new_console_writer.take() else {
            return;
        };
        if self.console.writer_fd().is_some() {
            // Cannot happen: the streams admit one writer at a time.
            return;
        }
        match self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, Token::ConsoleWriter as u64),
        ) {
            Ok(()) => {
                self.console.attach_writer(fd);
                self.update_input_interest();
            }
            Err(err) => {
                warn!("cannot watch the console writer's input: {err}");
                vm.console_writer_detached();
            }
        }
    }

    fn drop_console_writer(&mut self, vm: &mut RunningVm) {
        if let Some(fd) = self.console.writer_fd() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.console.detach_writer();
        vm.console_writer_detached();
        debug!("console writer detached");
    }

    /// Handles one ready event source; `Some` when the VM must end.
    fn dispatch(&mut self, event: &EpollEvent, vm: &mut RunningVm) -> Option<VmExit> {
        let data = event.data();
        if data >= CONNECTION_TOKEN_BASE {
            let control = self.control.as_mut()?;
            let exit = control.serve(&self.epoll, data, event.event_set(), vm);
            self.adopt_console_writer(vm);
            return exit;
        }
        if data >= INTX_TOKEN_BASE {
            // The guest acknowledged a device's INTx line: raise it again if the device
            // still has an interrupt the driver has not read.
            let line = data
                .checked_sub(INTX_TOKEN_BASE)
                .and_then(|index| usize::try_from(index).ok())
                .and_then(|index| vm.virtio.intx_lines.get(index));
            if let Some(line) = line {
                line.intx_resample();
            }
            return None;
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
                self.update_input_interest();
                None
            }
            Some(Token::ConsoleReady) => {
                self.console.on_guest_ready();
                self.update_input_interest();
                None
            }
            Some(Token::ConsoleWriter) => {
                if !self.console.on_writer_event(event.event_set()) {
                    self.drop_console_writer(vm);
                }
                self.update_input_interest();
                None
            }
            Some(Token::BalloonChanged) => {
                self.report_balloon_change(vm);
                None
            }
            Some(Token::ControlListener) => {
                if let Some(control) = self.control.as_mut() {
                    control.accept(&self.epoll);
                }
                None
            }
            Some(Token::SnapshotWriter) => {
                if let Some(control) = self.control.as_mut() {
                    control.snapshot_writer_exited(&self.epoll);
                }
                None
            }
            Some(Token::RtcTimer) => {
                vm.rtc().on_timer();
                None
            }
            None => {
                warn!("run loop woke for unknown event {data}");
                None
            }
        }
    }
}
