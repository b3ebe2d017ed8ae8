//! One thread per vCPU: `KVM_RUN`, dispatch the exit to the port or MMIO bus, repeat.
//! A vCPU thread never decides the VM's fate alone: it reports why it stopped to the
//! [`ExitLatch`] and the run loop ends the VM. [`Vcpus`] is the run loop's handle on the
//! threads: it pauses them (every vCPU parked outside the guest), resumes and stops them.
//!
//! A vCPU's descriptor sits behind a mutex its thread holds only around `KVM_RUN` and the
//! exit it handles; before a thread parks it completes its last exit
//! (`arch::state::complete_pending_exit`: an `OUT` retires, an `IN` lands in its register)
//! and lets go of the descriptor, so while the VM is paused the main thread can read every
//! vCPU's state for a snapshot ([`Vcpus::fds`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::VmExit;
use crate::unclaimed::{Noted, REMEMBERED_ADDRESSES, UnclaimedAccesses};

/// Remembers the first reason the VM must stop and wakes the run loop. Later reasons are
/// ignored: when the guest resets, the other vCPUs stopping is not news.
pub struct ExitLatch {
    reason: Mutex<Option<VmExit>>,
    event: EventFd,
}

impl ExitLatch {
    pub fn new(event: EventFd) -> ExitLatch {
        ExitLatch {
            reason: Mutex::new(None),
            event,
        }
    }

    /// Records `exit` unless a reason is already recorded, and wakes the run loop.
    pub fn request(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
        }
        if let Err(err) = self.event.write(1) {
            error!("cannot wake the run loop: {err}");
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<VmExit> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The descriptor the run loop waits on.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

/// VM exits that reached the VMM, by kind, summed over all vCPUs. Every exit to user
/// space is the slow path, so these say where a guest spends the VMM's time.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    /// HLT exits (rare: with the in-kernel irqchip KVM handles HLT itself).
    pub hlt: AtomicU64,
    /// Triple faults (KVM_EXIT_SHUTDOWN). Like the three below, it ends the VM.
    pub shutdown: AtomicU64,
    /// Reset, power-off and crash requests (KVM_EXIT_SYSTEM_EVENT).
    pub system_event: AtomicU64,
    /// VM entries the CPU refused (KVM_EXIT_FAIL_ENTRY).
    pub fail_entry: AtomicU64,
    /// Guest actions KVM could not handle (KVM_EXIT_INTERNAL_ERROR).
    pub internal_error: AtomicU64,
    /// Every other exit: interrupt windows, interrupted runs, unexpected reasons.
    pub other: AtomicU64,
    /// Port accesses no device claimed (a subset of io_in + io_out).
    pub unhandled_pio: UnclaimedAccesses,
    /// MMIO accesses no device claimed (a subset of mmio_read + mmio_write).
    pub unhandled_mmio: UnclaimedAccesses,
}

impl ExitCounters {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Display for ExitCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        write!(
            f,
            "io_in {} io_out {} mmio_read {} mmio_write {} hlt {} shutdown {} system_event {} \
             fail_entry {} internal_error {} other {} (unhandled: pio {} mmio {})",
            get(&self.io_in),
            get(&self.io_out),
            get(&self.mmio_read),
            get(&self.mmio_write),
            get(&self.hlt),
            get(&self.shutdown),
            get(&self.system_event),
            get(&self.fail_entry),
            get(&self.internal_error),
            get(&self.other),
            self.unhandled_pio.count(),
            self.unhandled_mmio.count()
        )
    }
}

/// Everything a vCPU thread shares with the rest of the VMM.
pub struct VcpuContext {
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: Arc<ExitLatch>,
    pub counters: Arc<ExitCounters>,
    pub control: Arc<RunControl>,
}

/// What the run loop asks of the vCPU threads: run, park (pause), or stop.
#[derive(Default)]
pub struct RunControl {
    stop: AtomicBool,
    state: Mutex<ParkState>,
    changed: Condvar,
}

#[derive(Default)]
struct ParkState {
    paused: bool,
    parked: usize,
}

impl RunControl {
    /// A control whose vCPUs park before they first enter the guest, until
    /// [`Vcpus::resume`] (`vmm run --restore --paused`).
    pub fn paused() -> RunControl {
        let control = RunControl::default();
        control.lock().paused = true;
        control
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ParkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Called by a vCPU thread between runs: while the VM is paused, wait here, outside
    /// the guest, counted as parked. `prepare` runs first (outside the lock), once the
    /// thread knows it is to park: it completes the vCPU's last exit.
    fn park_while_paused(&self, prepare: impl FnOnce()) {
        if !self.lock().paused {
            return;
        }
        prepare();
        let mut state = self.lock();
        if !state.paused {
            // Resumed meanwhile: run on.
            return;
        }
        // At most the number of vCPU threads.
        state.parked = state.parked.saturating_add(1);
        self.changed.notify_all();
        while state.paused && !self.stopping() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        // This thread counted itself in above.
        state.parked = state.parked.saturating_sub(1);
    }
}

/// The running vCPU threads.
pub struct Vcpus {
    threads: Vec<JoinHandle<()>>,
    control: Arc<RunControl>,
    /// Each vCPU's descriptor, index = id; its thread holds the lock only while it runs.
    fds: Vec<Arc<Mutex<VcpuFd>>>,
}

/// How long a pause or stop waits for every vCPU to leave the guest.
const VCPU_WAIT_TIMEOUT: Duration = Duration::from_secs(2);

impl Vcpus {
    /// Starts one thread per vCPU; `context` makes each thread's shared state.
    pub fn start(
        vcpus: Vec<VcpuFd>,
        mut context: impl FnMut() -> VcpuContext,
        control: Arc<RunControl>,
    ) -> std::io::Result<Vcpus> {
        let mut started = Vcpus {
            threads: Vec::with_capacity(vcpus.len()),
            control,
            fds: vcpus
                .into_iter()
                .map(|vcpu| Arc::new(Mutex::new(vcpu)))
                .collect(),
        };
        for (id, vcpu) in started.fds.clone().into_iter().enumerate() {
            // On failure `started` is dropped, which stops the threads already running.
            started.threads.push(spawn(id, vcpu, context())?);
        }
        Ok(started)
    }

    /// Every vCPU's descriptor, index = id. Lock them only while the VM is paused
    /// ([`Vcpus::pause`] returned `Ok`): each vCPU's last exit is then complete, and its
    /// thread waits outside the guest without holding the lock.
    pub fn fds(&self) -> &[Arc<Mutex<VcpuFd>>] {
        &self.fds
    }

    pub fn count(&self) -> usize {
        self.threads.len()
    }

    pub fn paused(&self) -> bool {
        self.control.lock().paused
    }

    /// Takes every vCPU out of the guest and keeps it out until [`Vcpus::resume`].
    /// Returns once all are parked; `Err(TimedOut)` (and still running) if one never did.
    pub fn pause(&self) -> std::io::Result<()> {
        self.control.lock().paused = true;
        let deadline = wait_deadline();
        loop {
            let live = self.threads.iter().filter(|t| !t.is_finished()).count();
            if self.control.lock().parked >= live {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.resume();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "a vCPU did not leave the guest in time",
                ));
            }
            self.kick();
            let state = self.control.lock();
            // A parking vCPU notifies; the timeout re-kicks one that missed its kick.
            let _ = self
                .control
                .changed
                .wait_timeout(state, Duration::from_millis(1));
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.control.lock().paused = false;
        self.control.changed.notify_all();
    }

    /// Tells every vCPU thread to stop, kicks them out of `KVM_RUN`, and waits for them.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        self.resume();
        let deadline = wait_deadline();
        // A kick can land just before a thread re-enters KVM_RUN and be lost, so keep
        // kicking until each thread is gone.
        for handle in self.threads.drain(..) {
            while !handle.is_finished() && Instant::now() < deadline {
                let _ = vmm_sys_util::signal::Killable::kill(&handle, kick_signal());
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

    fn kick(&self) {
        for handle in &self.threads {
            let _ = vmm_sys_util::signal::Killable::kill(handle, kick_signal());
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_and_join();
        }
    }
}

/// The signal that knocks a vCPU thread out of `KVM_RUN` so it sees `stop`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the do-nothing handler for [`kick_signal`]: its only job is to make `KVM_RUN`
/// return `EINTR`.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
}

/// Starts the thread for vCPU `id`.
fn spawn(
    id: usize,
    vcpu: Arc<Mutex<VcpuFd>>,
    context: VcpuContext,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || run(id, vcpu, &context))
}

fn run(id: usize, vcpu: Arc<Mutex<VcpuFd>>, context: &VcpuContext) {
    // Confined before the first KVM_RUN: nothing the guest does reaches an unfiltered vCPU.
    crate::sandbox::enter_vcpu(id);
    debug!("vCPU {id} entering the guest");
    loop {
        context.control.park_while_paused(|| {
            let mut vcpu = vcpu.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = arch::state::complete_pending_exit(&mut vcpu) {
                warn!("vCPU {id}: cannot complete its last exit before pausing: {err}");
            }
        });
        if context.control.stopping() {
            return;
        }
        // Uncontended but while the VM is paused (and then this thread is parked above).
        let mut fd = vcpu.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match fd.run() {
            Ok(VcpuExit::Shutdown) => {
                ExitCounters::count(&context.counters.shutdown);
                report_triple_fault(id, &fd);
                Some(VmExit::Reset)
            }
            Ok(exit) => handle_exit(id, exit, context),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => None,
            Err(err) => {
                error!("vCPU {id}: KVM_RUN failed: {err}");
                Some(VmExit::Crash)
            }
        };
        if let Some(exit) = outcome {
            context.exit.request(exit);
            return;
        }
    }
}

/// Handles one exit; `Some` means this vCPU cannot go on and the VM must stop.
fn handle_exit(id: usize, exit: VcpuExit<'_>, context: &VcpuContext) -> Option<VmExit> {
    let counters = &context.counters;
    let ports = Unhandled {
        accesses: &counters.unhandled_pio,
        what: "port",
        what_plural: "ports",
    };
    let mmio = Unhandled {
        accesses: &counters.unhandled_mmio,
        what: "MMIO address",
        what_plural: "MMIO addresses",
    };
    match exit {
        VcpuExit::IoIn(port, data) => {
            ExitCounters::count(&counters.io_in);
            bus_read(&context.pio_bus, u64::from(port), data, &ports);
            None
        }
        VcpuExit::IoOut(port, data) => {
            ExitCounters::count(&counters.io_out);
            bus_write(&context.pio_bus, u64::from(port), data, &ports);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            ExitCounters::count(&counters.mmio_read);
            bus_read(&context.mmio_bus, addr, data, &mmio);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            ExitCounters::count(&counters.mmio_write);
            bus_write(&context.mmio_bus, addr, data, &mmio);
            None
        }
        // With the in-kernel irqchip KVM handles HLT itself; should one reach us, the vCPU
        // simply resumes after the instruction.
        VcpuExit::Hlt => {
            ExitCounters::count(&counters.hlt);
            None
        }
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => {
            ExitCounters::count(&counters.other);
            None
        }
        // Taken (and counted) in `run`, which reports the vCPU's state first.
        VcpuExit::Shutdown => Some(VmExit::Reset),
        VcpuExit::SystemEvent(kind, _) => {
            ExitCounters::count(&counters.system_event);
            match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
                KVM_SYSTEM_EVENT_CRASH => Some(VmExit::Crash),
                other => {
                    warn!("vCPU {id}: unknown system event {other}; stopping the VM");
                    Some(VmExit::Crash)
                }
            }
        }
        VcpuExit::FailEntry(reason, cpu) => {
            ExitCounters::count(&counters.fail_entry);
            error!(
                "vCPU {id}: KVM could not enter the guest (hardware reason {reason:#x}, host CPU {cpu})"
            );
            Some(VmExit::Crash)
        }
        VcpuExit::InternalError => {
            ExitCounters::count(&counters.internal_error);
            error!("vCPU {id}: KVM internal error (the guest did something KVM cannot emulate)");
            Some(VmExit::Crash)
        }
        other => {
            ExitCounters::count(&counters.other);
            error!("vCPU {id}: unexpected exit {other:?}");
            Some(VmExit::Crash)
        }
    }
}

/// Logs where vCPU `id` was when it triple-faulted (KVM_EXIT_SHUTDOWN). Linux does this on
/// purpose only as its last-resort reboot method; any other triple fault is a guest (or
/// hypervisor) failure that leaves no oops, and these registers are all there is to go on.
/// On AMD, KVM puts the vCPU through INIT before it reports the shutdown (the VMCB is
/// undefined after one), so there the registers show the reset vector instead.
fn report_triple_fault(id: usize, vcpu: &VcpuFd) {
    const RESET_VECTOR_CS: u16 = 0xf000;
    const RESET_VECTOR_IP: u64 = 0xfff0;
    let state = match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) if s.cs.selector == RESET_VECTOR_CS && r.rip == RESET_VECTOR_IP => {
            "KVM has already reset the vCPU (as on AMD hosts), so where it faulted is lost"
                .to_string()
        }
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} \
             cr4={:#x} efer={:#x} idt={:#x}+{:#x} gdt={:#x}+{:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            s.cs.selector,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit
        ),
        (Err(err), _) | (_, Err(err)) => format!("registers unavailable: {err}"),
    };
    warn!("vCPU {id}: triple fault (KVM_EXIT_SHUTDOWN), the VM resets: {state}");
}

/// Where accesses no device claims are accounted, for one address space.
struct Unhandled<'a> {
    accesses: &'a UnclaimedAccesses,
    what: &'static str,
    what_plural: &'static str,
}

impl Unhandled<'_> {
    /// Counts an access to an address no device claims. Guests probe for absent hardware
    /// all the time, so each address is logged once, at debug level; and since a guest can
    /// sweep addresses on purpose, only the first few are remembered (see [`unclaimed`]).
    ///
    /// [`unclaimed`]: crate::unclaimed
    fn note(&self, addr: u64) {
        match self.accesses.note(addr) {
            Noted::FirstAtAddress => debug!(
                "guest touched {} {addr:#x}, where no device is; reads return all ones",
                self.what
            ),
            Noted::NotRemembered { first: true } => debug!(
                "guest touched more than {REMEMBERED_ADDRESSES} distinct {} where no device is; \
                 further ones are only counted",
                self.what_plural
            ),
            Noted::Again | Noted::NotRemembered { first: false } => {}
        }
    }
}

/// A guest read: the device's answer, or all ones (an absent device on a real bus).
fn bus_read(bus: &Bus, addr: u64, data: &mut [u8], unhandled: &Unhandled<'_>) {
    if !bus.read(addr, data) {
        data.fill(0xff);
        unhandled.note(addr);
    }
}

/// A guest write: to the device, or dropped.
fn bus_write(bus: &Bus, addr: u64, data: &[u8], unhandled: &Unhandled<'_>) {
    if !bus.write(addr, data) {
        unhandled.note(addr);
    }
}

/// When a wait of [`VCPU_WAIT_TIMEOUT`] from now ends. The timeout is a short
/// constant; were it too long for an `Instant`, the wait ends at once instead
/// of panicking.
fn wait_deadline() -> Instant {
    let now = Instant::now();
    now.checked_add(VCPU_WAIT_TIMEOUT).unwrap_or(now)
}
