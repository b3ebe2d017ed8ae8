//! virtio-console (device type 3): the guest's `hvc0`, a console with no VM exit per byte.
//!
//! One port, no `MULTIPORT`, no `EMERG_WRITE`, no `SIZE`: two queues, `receiveq0` (index
//! 0, host to guest) and `transmitq0` (index 1, guest to host), served on the device's
//! [`DeviceWorker`].
//!
//! - **Transmit.** Every chain's device-readable bytes go to the output sink the VMM gives
//!   (a [`crate::ConsoleOutput`], the same bounded buffer and `console-writer` thread the
//!   UART's output takes), which never blocks: bytes it refuses (its buffer is full) are
//!   dropped and counted in [`ConsoleCounters::bytes_dropped`]. At most
//!   [`MAX_BYTES_PER_CHAIN`] bytes of one chain are copied (Linux sends at most a page);
//!   the rest is counted as dropped without being read. A chain with a device-writable
//!   buffer is not a transmit buffer: it is returned untouched, counted in
//!   [`ConsoleCounters::invalid_chains`] and logged (rate-limited). A malformed queue is
//!   reported as DEVICE_NEEDS_RESET, as for every device ([`ServedQueue`]).
//! - **Receive.** Host input arrives through a [`HostInput`] handle: it takes at most
//!   [`INPUT_CAPACITY`] bytes waiting for the guest and refuses the rest, so with no
//!   receive buffer posted (no driver yet, or one that stopped reading) input waits where
//!   it came from, bounded. The worker moves waiting bytes into the receive buffers the
//!   driver posts and, whenever it took some, signals [`HostInput::room`] so the host side
//!   can offer more. Waiting bytes survive a device reset (they are the user's, not the
//!   driver's).
//!
//! Each worker turn serves at most [`MAX_CHAINS_PER_WAKE`] chains of a queue and then
//! notifies itself, so a reset or the other queue waits at most one turn.
//!
//! **Snapshots.** The worker gives back both queues' positions (the device holds no chain
//! between turns: each receive chain is filled and used at once), and the device's own
//! part ([`ConsoleState`]) is the host input still waiting for the guest, at most
//! [`INPUT_CAPACITY`] bytes; a restored device delivers it first. The counters start
//! again from 0.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use snapshot::payload::{Decoder, Encoder};

use super::log_limit::LogLimiter;
use super::state::VirtioDeviceState;
use super::worker::{
    ActiveDevice, DeviceWorker, MAX_CHAINS_PER_WAKE, SavedQueue, ServedQueue, lock,
};
use super::{
    ActivateError, ActiveQueue, DescriptorChain, Interrupt, VIRTIO_ID_CONSOLE, VirtioDevice,
    read_config_bytes,
};
use crate::state::StateError;

/// Size of each of the two queues.
pub const CONSOLE_QUEUE_SIZE: u16 = 256;
/// Index of `receiveq0` (host to guest).
pub const RECEIVEQ: usize = 0;
/// Index of `transmitq0` (guest to host).
pub const TRANSMITQ: usize = 1;
/// Most host input bytes waiting for receive buffers; [`HostInput::offer`] refuses more.
pub const INPUT_CAPACITY: usize = 4096;
/// Most bytes of one transmit chain copied to the output; the rest is counted as dropped.
pub const MAX_BYTES_PER_CHAIN: u32 = 1 << 20;
/// Bytes copied from guest memory at a time.
const COPY_CHUNK: u32 = 4096;
/// The configuration space: `cols` (u16), `rows` (u16), `max_nr_ports` (u32), `emerg_wr`
/// (u32), all 0 since no feature that gives them meaning is offered.
const CONFIG_LEN: usize = 12;
const QUEUE_SIZES: [u16; 2] = [CONSOLE_QUEUE_SIZE, CONSOLE_QUEUE_SIZE];

/// Epoll tokens of the worker's event sources.
const TOKEN_RECEIVEQ: u32 = 0;
const TOKEN_TRANSMITQ: u32 = 1;
const TOKEN_INPUT: u32 = 2;

/// Transmit chains with a device-writable buffer, counted across resets.
static INVALID_TRANSMIT: LogLimiter = LogLimiter::new();
/// Receive chains without a (usable) device-writable buffer.
static INVALID_RECEIVE: LogLimiter = LogLimiter::new();

/// The device's traffic, for `vmm stats`.
#[derive(Debug, Default)]
pub struct ConsoleCounters {
    /// Host input bytes written into the guest's receive buffers.
    pub bytes_in: AtomicU64,
    /// Guest output bytes the output sink took.
    pub bytes_out: AtomicU64,
    /// Guest output bytes dropped: refused by a full output buffer, or past
    /// [`MAX_BYTES_PER_CHAIN`] in one chain.
    pub bytes_dropped: AtomicU64,
    /// Chains returned untouched because they could not be what their queue carries.
    pub invalid_chains: AtomicU64,
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Host input waiting for the guest, shared by the host side and the worker.
#[derive(Debug)]
struct InputShared {
    pending: Mutex<VecDeque<u8>>,
    /// Written by the host side when it added bytes; the worker watches it.
    arrived: EventFd,
    /// Written by the worker when it took bytes out; the host side watches it.
    room: EventFd,
}

/// The host's side of the console's input: where the VMM offers what the user types.
#[derive(Debug, Clone)]
pub struct HostInput(Arc<InputShared>);

impl HostInput {
    /// Takes as much of `bytes` as fits in the [`INPUT_CAPACITY`] bytes waiting for the
    /// guest and returns how many it took; the caller keeps the rest until
    /// [`HostInput::room`] fires.
    pub fn offer(&self, bytes: &[u8]) -> usize {
        let taken = {
            let mut pending = lock(&self.0.pending);
            let room = INPUT_CAPACITY.saturating_sub(pending.len());
            let taken = bytes.len().min(room);
            pending.extend(bytes.iter().take(taken));
            taken
        };
        if taken > 0 {
            if let Err(err) = self.0.arrived.write(1) {
                // Only a saturated counter fails, which wakes the worker just the same.
                log::debug!("virtio-console: cannot signal input: {err}");
            }
        }
        taken
    }

    /// Bytes waiting for the guest.
    pub fn pending(&self) -> usize {
        lock(&self.0.pending).len()
    }

    /// Readable after the guest took waiting bytes (so there may be room for more); read it
    /// to clear it.
    pub fn room(&self) -> &EventFd {
        &self.0.room
    }
}

/// The virtio-console device; see the module docs.
pub struct Console {
    worker: DeviceWorker,
    output: Arc<Mutex<Box<dyn Write + Send>>>,
    input: Arc<InputShared>,
    counters: Arc<ConsoleCounters>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Creates an inactive device writing guest output to `output` (which must never block:
    /// the VMM gives a [`crate::ConsoleOutput`]), and its parked worker `name`; `start` runs
    /// first thing on the worker thread (the VMM installs its seccomp policy there).
    pub fn new(
        output: Box<dyn Write + Send>,
        name: &str,
        start: impl FnOnce() + Send + 'static,
    ) -> io::Result<Console> {
        let input = Arc::new(InputShared {
            pending: Mutex::new(VecDeque::with_capacity(INPUT_CAPACITY)),
            arrived: EventFd::new(EFD_NONBLOCK)?,
            room: EventFd::new(EFD_NONBLOCK)?,
        });
        Ok(Console {
            worker: DeviceWorker::spawn(name, start)?,
            output: Arc::new(Mutex::new(output)),
            input,
            counters: Arc::new(ConsoleCounters::default()),
        })
    }

    /// The handle host input goes through.
    pub fn input(&self) -> HostInput {
        HostInput(self.input.clone())
    }

    /// The device's live counters.
    pub fn counters(&self) -> Arc<ConsoleCounters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[0u8; CONFIG_LEN], offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // `emerg_wr` is the only writable field, and EMERG_WRITE is not offered.
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut receive = None;
        let mut transmit = None;
        for queue in queues {
            match queue.index {
                RECEIVEQ => receive = Some(ServedQueue::new(queue)),
                TRANSMITQ => transmit = Some(ServedQueue::new(queue)),
                _ => {}
            }
        }
        let active = ActiveConsole {
            mem,
            interrupt,
            receive: receive.ok_or(ActivateError::MissingQueue(RECEIVEQ))?,
            transmit: transmit.ok_or(ActivateError::MissingQueue(TRANSMITQ))?,
            output: self.output.clone(),
            input: self.input.clone(),
            counters: self.counters.clone(),
        };
        self.worker
            .activate(Box::new(active))
            .map_err(ActivateError::Worker)
    }

    fn quiesced(&self) -> bool {
        self.worker.idle()
    }

    fn reset(&mut self) {
        self.worker.deactivate_for_reset();
    }

    super::state::worker_snapshot_hooks!(LOG_NAME);
}

/// What a virtio-console record holds beyond the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleState {
    /// Host input offered but not yet delivered to the guest, oldest first (at most
    /// [`INPUT_CAPACITY`] bytes).
    pub pending_input: Vec<u8>,
}

impl ConsoleState {
    /// The pending input's length (`u32`), then the bytes.
    pub(crate) fn encode(&self, enc: &mut Encoder) {
        // At most INPUT_CAPACITY bytes, far below u32::MAX.
        enc.u32(u32::try_from(self.pending_input.len()).unwrap_or(u32::MAX));
        enc.bytes(&self.pending_input);
    }

    pub(crate) fn decode(dec: &mut Decoder<'_>) -> Result<Self, StateError> {
        let len = dec.u32()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= INPUT_CAPACITY)
            .ok_or_else(|| {
                StateError::invalid(
                    LOG_NAME,
                    format!(
                        "{len} bytes of pending input, more than the {INPUT_CAPACITY} it holds"
                    ),
                )
            })?;
        Ok(ConsoleState {
            pending_input: dec.bytes(len)?.to_vec(),
        })
    }
}

impl Console {
    fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Console(ConsoleState {
            pending_input: lock(&self.input.pending).iter().copied().collect(),
        })
    }

    fn check_state(&self, saved: &VirtioDeviceState) -> Result<(), StateError> {
        match saved {
            // Its length was checked when it was decoded.
            VirtioDeviceState::Console(_) => Ok(()),
            _ => Err(StateError::invalid(
                LOG_NAME,
                "the saved state is another device's",
            )),
        }
    }

    /// Puts the saved input before anything already offered to this device (the bound
    /// holds: what does not fit of the newer input is dropped, logged).
    fn apply_state(&mut self, saved: VirtioDeviceState) {
        let VirtioDeviceState::Console(saved) = saved else {
            return;
        };
        let dropped = {
            let mut pending = lock(&self.input.pending);
            let newer: Vec<u8> = pending.drain(..).collect();
            pending.extend(saved.pending_input.iter().take(INPUT_CAPACITY));
            let room = INPUT_CAPACITY.saturating_sub(pending.len());
            pending.extend(newer.iter().take(room));
            newer.len().saturating_sub(room)
        };
        if dropped > 0 {
            log::warn!("{LOG_NAME}: {dropped} bytes of input offered before the restore dropped");
        }
        if !lock(&self.input.pending).is_empty() {
            // The worker looks at the input when it starts anyway; this covers a device
            // restored inactive and activated later by the driver.
            let _ = self.input.arrived.write(1);
        }
    }
}

/// The device while the driver drives it, on the worker.
struct ActiveConsole {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    receive: ServedQueue,
    transmit: ServedQueue,
    output: Arc<Mutex<Box<dyn Write + Send>>>,
    input: Arc<InputShared>,
    counters: Arc<ConsoleCounters>,
}

impl ActiveDevice for ActiveConsole {
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![
            (self.receive.notify.as_raw_fd(), TOKEN_RECEIVEQ),
            (self.transmit.notify.as_raw_fd(), TOKEN_TRANSMITQ),
            (self.input.arrived.as_raw_fd(), TOKEN_INPUT),
        ]
    }

    fn start(&mut self) {
        self.transmit();
        self.receive();
    }

    fn handle_event(&mut self, token: u32) {
        match token {
            TOKEN_RECEIVEQ => {
                self.receive.clear_notification();
                self.receive();
            }
            TOKEN_TRANSMITQ => {
                self.transmit.clear_notification();
                self.transmit();
            }
            TOKEN_INPUT => {
                let _ = self.input.arrived.read();
                self.receive();
            }
            _ => {}
        }
    }

    /// Both queues as they stand: no chain is held between turns.
    fn save_queues(&self) -> Option<Vec<SavedQueue>> {
        Some(vec![self.receive.save(), self.transmit.save()])
    }
}

impl ActiveConsole {
    /// Copies what the guest sent to the output.
    fn transmit(&mut self) {
        let mem = &*self.mem;
        let counters = &*self.counters;
        let mut output = lock(&self.output);
        self.transmit
            .serve(LOG_NAME, mem, &*self.interrupt, |chain| {
                transmit_chain(mem, chain, &mut **output, counters);
                // The device writes nothing into a transmit buffer.
                0
            });
    }

    /// Moves waiting host input into the receive buffers the driver posted.
    fn receive(&mut self) {
        let mem = &*self.mem;
        let interrupt = &*self.interrupt;
        let mut delivered: u64 = 0;
        let mut chains = 0usize;
        // Looks (popping a chain, or re-checking after publishing avail_event) are bounded
        // too: a guest flipping avail.idx under us cannot keep the worker here.
        let mut looks = 0usize;
        loop {
            if lock(&self.input.pending).is_empty() {
                break;
            }
            looks = looks.saturating_add(1);
            if looks > MAX_CHAINS_PER_WAKE.saturating_mul(2) {
                let _ = self.receive.notify.write(1);
                break;
            }
            let Some(chain) = self.receive.pop(LOG_NAME, mem, interrupt) else {
                if self.receive.is_broken()
                    || !self.receive.enable_notification(LOG_NAME, mem, interrupt)
                {
                    break;
                }
                continue;
            };
            let written = receive_chain(mem, &chain, &self.input, &self.counters);
            delivered = delivered.saturating_add(u64::from(written));
            self.receive
                .publish_batch(LOG_NAME, mem, interrupt, &[(chain.head, written)]);
            chains = chains.saturating_add(1);
            if chains >= MAX_CHAINS_PER_WAKE {
                // Come back to the rest after the worker's other events.
                let _ = self.receive.notify.write(1);
                break;
            }
        }
        if chains > 0 {
            self.receive.interrupt_if_wanted(LOG_NAME, mem, interrupt);
        }
        if delivered > 0 {
            count(&self.counters.bytes_in, delivered);
            if let Err(err) = self.input.room.write(1) {
                log::debug!("virtio-console: cannot signal room for input: {err}");
            }
        }
    }
}

const LOG_NAME: &str = "virtio-console";

/// Copies the device-readable bytes of a transmit chain to `output`, counting what it took
/// and what it dropped.
fn transmit_chain(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
    output: &mut dyn Write,
    counters: &ConsoleCounters,
) {
    if chain.writable().next().is_some() {
        count(&counters.invalid_chains, 1);
        if let Some(n) = INVALID_TRANSMIT.admit() {
            log::warn!(
                "{LOG_NAME}: transmit chain {} has a device-writable buffer, returned unread \
                 ({n} so far)",
                chain.head
            );
        }
        return;
    }
    let mut buf = [0u8; COPY_CHUNK as usize];
    let mut budget = MAX_BYTES_PER_CHAIN;
    // Once the output refuses bytes, the rest of the chain is dropped unread.
    let mut refused = false;
    let mut dropped: u64 = 0;
    let mut taken: u64 = 0;
    for desc in &chain.descriptors {
        let mut done: u32 = 0;
        while done < desc.len {
            let left = desc.len.saturating_sub(done);
            if refused || budget == 0 {
                dropped = dropped.saturating_add(u64::from(left));
                break;
            }
            let want = left.min(budget).min(COPY_CHUNK);
            let chunk = usize::try_from(want)
                .ok()
                .and_then(|want| buf.get_mut(..want))
                .unwrap_or_default();
            let read = desc
                .addr
                .0
                .checked_add(u64::from(done))
                .map(|addr| mem.read_slice(chunk, GuestAddress(addr)));
            if !matches!(read, Some(Ok(()))) {
                // The queue checked the buffer lies in guest memory; should it not, the
                // rest of the chain is lost rather than read from elsewhere.
                dropped = dropped.saturating_add(u64::from(left));
                refused = true;
                continue;
            }
            let took = match output.write(chunk) {
                Ok(took) => took.min(chunk.len()),
                Err(_) => 0,
            };
            taken = taken.saturating_add(u64::try_from(took).unwrap_or(u64::MAX));
            if took < chunk.len() {
                dropped = dropped
                    .saturating_add(u64::try_from(chunk.len().saturating_sub(took)).unwrap_or(0));
                refused = true;
            }
            done = done.saturating_add(want);
            budget = budget.saturating_sub(want);
        }
    }
    count(&counters.bytes_out, taken);
    count(&counters.bytes_dropped, dropped);
}

/// Fills a receive chain's device-writable buffers with waiting input; returns the bytes
/// written. A chain with no writable buffer, or one that does not take the bytes, is
/// returned with what was written so far and counted as invalid.
fn receive_chain(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
    input: &InputShared,
    counters: &ConsoleCounters,
) -> u32 {
    let mut pending = lock(&input.pending);
    let mut written: u32 = 0;
    let mut usable = false;
    for desc in chain.writable() {
        if pending.is_empty() {
            break;
        }
        let n = usize::try_from(desc.len)
            .unwrap_or(usize::MAX)
            .min(pending.len());
        if n == 0 {
            continue;
        }
        let bytes = pending.make_contiguous().get(..n).unwrap_or_default();
        if mem.write_slice(bytes, desc.addr).is_err() {
            break;
        }
        usable = true;
        pending.drain(..n);
        // n <= desc.len, a u32; the chain's total is far below 2^32 in practice, and a
        // saturated count only under-reports.
        written = written.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }
    if !usable {
        count(&counters.invalid_chains, 1);
        if let Some(n) = INVALID_RECEIVE.admit() {
            log::warn!(
                "{LOG_NAME}: receive chain {} has no usable device-writable buffer, returned \
                 empty ({n} so far)",
                chain.head
            );
        }
    }
    written
}
