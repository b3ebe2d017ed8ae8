//! virtio-net (device type 1): a guest NIC whose frames come from and go to a packet
//! backend on the host, normally a tap ([`tap::Tap`]).
//!
//! [`Net`] owns the backend, the MAC address and link status in its configuration space,
//! the feature negotiation (checksum and segmentation offloads as far as the backend can
//! pass them through, mergeable receive buffers), and two queues served on its
//! [`DeviceWorker`]: receive (0) and transmit (1). No control queue, no multiqueue.
//!
//! Every frame on either queue is preceded by the 12-byte virtio 1.x `virtio_net_hdr`. The
//! backend speaks the same header (a tap with `IFF_VNET_HDR` and a 12-byte header size), so
//! frames move with one `readv`/`writev` per frame straight between the backend and guest
//! memory, without a bounce buffer, and the offload metadata passes through unchanged. The
//! chains become iovecs in [`super::iovec`].
//!
//! The worker sleeps in epoll; nothing polls. Transmit is driven by the TX queue's
//! notifications; when the backend cannot take a frame (EAGAIN) the frame is kept and sent
//! once the backend is writable again. Receive is driven by the backend becoming readable
//! while the guest has posted enough buffers for a frame; when it has not, the device stops
//! watching the backend, so frames wait in the backend's own queue (and the host kernel, not
//! vmm, drops when that is full), until the guest posts buffers and notifies. The backend
//! sits in a small epoll set of its own, whose descriptor the worker watches: that is how
//! the device switches its interest between readable and writable, which the worker's
//! readable-only event sources cannot express.
//!
//! Each wake-up serves a burst (up to [`MAX_CHAINS_PER_WAKE`] transmits, up to
//! `MAX_FRAMES_PER_WAKE` received frames) and interrupts the guest at most once for it,
//! as vhost-net and Firecracker do: a received frame is published as soon as it is
//! written, but the driver's interrupt suppression is consulted once, after the burst.
//!
//! Chains are untrusted. A malformed chain (a TX chain too short, too long or with
//! device-writable buffers; an RX chain with device-readable buffers or too small for the
//! header) is handed back unused, counted in [`NetCounters::invalid_chains`] and logged at a
//! rate the guest cannot turn into a flood; a malformed queue is [`ServedQueue`]'s business
//! (DEVICE_NEEDS_RESET). The device keeps serving either way.
//!
//! The parts: this module is the device the transport sees and the worker side's state,
//! event dispatch and interest in the backend; `rx` is the receive path (gathering
//! receive buffers, reading frames into them, handing them to the guest), `tx` the
//! transmit path (checking chains, sending them, holding one the backend cannot take);
//! [`tap`] is the usual backend and [`state`] the device's part of a snapshot.

mod rx;
pub mod state;
pub mod tap;
mod tx;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::iovec;
use super::log_limit::LogLimiter;
use super::read_config_bytes;
use super::worker::{ActiveDevice, DeviceWorker, MAX_CHAINS_PER_WAKE, ServedQueue};
use super::{ActivateError, ActiveQueue, DescriptorChain, Interrupt, VIRTIO_ID_NET, VirtioDevice};

use rx::RxBuffer;

/// Feature bit: the device takes frames with a partial checksum (guest→host).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature bit: the driver takes frames with a partial checksum (host→guest).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature bit: the configuration space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the driver takes TCPv4 segmentation offload frames.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature bit: the driver takes TCPv6 segmentation offload frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature bit: the driver takes UDP fragmentation offload frames.
pub const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
/// Feature bit: the device takes TCPv4 segmentation offload frames.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature bit: the device takes TCPv6 segmentation offload frames.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Feature bit: the device takes UDP fragmentation offload frames.
pub const VIRTIO_NET_F_HOST_UFO: u32 = 14;
/// Feature bit: a received frame may span several receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Feature bit: the configuration space holds the link status.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Link status bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Size of each queue.
pub const NET_QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Bytes of the virtio 1.x `virtio_net_hdr` (with `num_buffers`) in front of every frame.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame either way: a 64 KiB GSO frame with its Ethernet header (as Firecracker).
pub const MAX_FRAME_LEN: usize = 65550;
/// Largest packet either way: header and frame.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Largest frame without segmentation offloads: MTU 1500 with a VLAN tag.
const MAX_PLAIN_FRAME_LEN: usize = 1518;
/// Bytes of configuration space: mac (6) and status (2).
const CONFIG_LEN: usize = 8;
const QUEUE_SIZES: [u16; 2] = [NET_QUEUE_SIZE, NET_QUEUE_SIZE];

/// Worker event tokens.
const RX_TOKEN: u32 = 0;
const TX_TOKEN: u32 = 1;
const BACKEND_TOKEN: u32 = 2;

/// Offloads as pairs of feature bits (the driver takes them, the device takes them) and
/// the `TUN_F_*` flag that lets the backend hand the guest such frames.
const OFFLOADS: [(u32, u32, u32); 4] = [
    (VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_CSUM, libc::TUN_F_CSUM),
    (
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
        libc::TUN_F_TSO4,
    ),
    (
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO6,
        libc::TUN_F_TSO6,
    ),
    (
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
        libc::TUN_F_UFO,
    ),
];

/// Where frames come from and go to: something that moves one whole packet (the 12-byte
/// virtio-net header, then the Ethernet frame) per call. A tap is one; so is a
/// `SOCK_SEQPACKET` socket (tests use a socketpair). The descriptor must be pollable; the
/// device makes it non-blocking.
pub trait PacketBackend: AsRawFd + Send + Sync {
    /// Reads one packet into `bufs`, in order, and returns its length. `WouldBlock` when
    /// none is waiting.
    fn read_packet(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;

    /// Writes one packet gathered from `bufs`. `WouldBlock` when the backend cannot take
    /// one now; it becomes writable once it can.
    fn write_packet(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;

    /// The offloads (`TUN_F_*`) the backend can pass through both ways; the device offers
    /// the matching features. None by default.
    fn offloads(&self) -> u32 {
        0
    }

    /// Which offloads (`TUN_F_*`) the guest accepts in the frames it receives.
    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }

    /// The length of the virtio-net header in front of each frame.
    fn set_vnet_hdr_size(&self, _size: usize) -> io::Result<()> {
        Ok(())
    }
}

/// A packet-oriented socket (`SOCK_SEQPACKET` or `SOCK_DGRAM`), with no offloads. Like a
/// tap, it reports the full length of a packet longer than the buffers (MSG_TRUNC).
impl PacketBackend for OwnedFd {
    fn read_packet(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        iovec::recvmsg_trunc(self.as_fd(), bufs)
    }

    fn write_packet(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        iovec::writev(self.as_fd(), bufs)
    }
}

/// Sets `O_NONBLOCK` on `fd`: the worker must never sleep anywhere but in epoll.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer; `fd` is open (its owner is borrowed by the caller).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL takes an int; same descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why a network device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The backend could not be set up (non-blocking, header size, offloads, epoll).
    #[error("{name}: cannot set up the packet backend: {source}")]
    Backend {
        /// The device (worker name).
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The worker thread could not be started.
    #[error("{name}: cannot start the worker: {source}")]
    Worker {
        /// The device (worker name).
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// What a NIC has done since it was created, live; shared with whoever wants to watch it
/// (the VMM's stats). Byte counts are frame bytes, without the virtio-net header.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes of the frames delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Frames the guest sent that the backend took.
    pub tx_packets: AtomicU64,
    /// Bytes of the frames the guest sent that the backend took.
    pub tx_bytes: AtomicU64,
    /// Frames read from the backend that the guest did not get: the read failed (a tap
    /// drops a frame that does not fit the buffers offered) or the packet was shorter than
    /// the header. Frames waiting for guest buffers are not dropped and not counted.
    pub rx_dropped: AtomicU64,
    /// Well-formed frames from the guest the backend refused (any error but "try again",
    /// which is retried once the backend is writable), or took only part of.
    pub tx_dropped: AtomicU64,
    /// Chains of either queue handed back unused because they were malformed (see the
    /// module docs). A malformed queue is reported as DEVICE_NEEDS_RESET instead.
    pub invalid_chains: AtomicU64,
    /// Interrupts raised for either queue: at most one per burst of frames, and fewer as
    /// the driver suppresses them (EVENT_IDX).
    pub interrupts: AtomicU64,
}

/// What outlives activations: the backend and its epoll set, counters, log limits.
struct Shared {
    name: String,
    backend: Box<dyn PacketBackend>,
    /// Holds only the backend, with the interest the active device wants.
    backend_events: Epoll,
    counters: Arc<NetCounters>,
    guest_problems: LogLimiter,
    host_problems: LogLimiter,
}

impl Shared {
    fn guest_problem(&self, what: fmt::Arguments<'_>) {
        if let Some(n) = self.guest_problems.admit() {
            log::warn!("{}: {what} ({n} guest problems so far)", self.name);
        }
    }

    fn host_problem(&self, what: fmt::Arguments<'_>) {
        if let Some(n) = self.host_problems.admit() {
            log::warn!("{}: {what} ({n} host problems so far)", self.name);
        }
    }

    fn count(&self, counter: fn(&NetCounters) -> &AtomicU64, n: u64) {
        counter(&self.counters).fetch_add(n, Ordering::Relaxed);
    }
}

/// The virtio-net device; see the module docs.
pub struct Net {
    shared: Arc<Shared>,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    worker: DeviceWorker,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("name", &self.shared.name)
            .field("mac", &&self.config[..6])
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Creates the device over `backend` with MAC address `mac`, and starts its parked
    /// worker. The backend is made non-blocking, told the header length and, until a
    /// driver accepts offloads, told to hand over only complete frames.
    ///
    /// `worker_name` names the worker thread and prefixes log lines ("virtio-net0");
    /// `worker_start` runs first thing on the worker thread, before it can ever see guest
    /// memory (the VMM installs the worker's seccomp policy there).
    pub fn new(
        backend: impl PacketBackend + 'static,
        mac: [u8; 6],
        worker_name: &str,
        worker_start: impl FnOnce() + Send + 'static,
    ) -> Result<Net, NetError> {
        let backend_error = |source| NetError::Backend {
            name: worker_name.to_owned(),
            source,
        };
        let fd = backend.as_raw_fd();
        set_nonblocking(fd).map_err(backend_error)?;
        backend
            .set_vnet_hdr_size(VNET_HDR_LEN)
            .map_err(backend_error)?;
        backend.set_offload(0).map_err(backend_error)?;
        let backend_events = Epoll::new().map_err(backend_error)?;
        // Registered with no interest: the active device turns on what it needs.
        backend_events
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::empty(), 0),
            )
            .map_err(backend_error)?;
        let worker =
            DeviceWorker::spawn(worker_name, worker_start).map_err(|source| NetError::Worker {
                name: worker_name.to_owned(),
                source,
            })?;
        Ok(Net {
            shared: Arc::new(Shared {
                name: worker_name.to_owned(),
                backend: Box::new(backend),
                backend_events,
                counters: Arc::default(),
                guest_problems: LogLimiter::default(),
                host_problems: LogLimiter::default(),
            }),
            config: config_space(mac),
            acked_features: 0,
            worker,
        })
    }

    /// The device's counters, live.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.shared.counters.clone()
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }
}

/// virtio_net_config (virtio 1.2 section 5.1.4) up to `status`, little-endian.
fn config_space(mac: [u8; 6]) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[..6].copy_from_slice(&mac);
    config[6..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
    config
}

/// The `TUN_F_*` flags for the receive offloads the driver accepted in `features`.
fn tun_offloads(features: u64) -> u32 {
    OFFLOADS
        .iter()
        .filter(|(guest, _, _)| features & (1 << guest) != 0)
        .fold(0, |flags, (_, _, tun)| flags | tun)
}

/// Receive space the device gathers before it reads a frame: room for the largest frame
/// the driver's accepted offloads allow.
fn rx_space_needed(features: u64) -> usize {
    let gso = [
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
    ];
    if gso.iter().any(|bit| features & (1 << bit) != 0) {
        MAX_PACKET_LEN
    } else {
        VNET_HDR_LEN + MAX_PLAIN_FRAME_LEN
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let backend = self.shared.backend.offloads();
        let offloads = OFFLOADS
            .iter()
            .filter(|(_, _, tun)| backend & tun == *tun)
            .fold(0u64, |bits, (guest, host, _)| bits | 1 << guest | 1 << host);
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | 1 << VIRTIO_NET_F_MRG_RXBUF | offloads
    }

    fn ack_features(&mut self, features: u64) {
        // The backend learns the accepted offloads when the device starts, on the worker:
        // until then it is not read from anyway.
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable: the MAC is the driver's to read only in virtio 1.x.
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut rx = None;
        let mut tx = None;
        for queue in queues {
            match queue.index {
                RX_QUEUE => rx = Some(queue),
                TX_QUEUE => tx = Some(queue),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX_QUEUE))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX_QUEUE))?;
        let active = ActiveNet {
            shared: self.shared.clone(),
            mem,
            interrupt,
            rx: ServedQueue::new(rx),
            tx: ServedQueue::new(tx),
            mrg_rxbuf: self.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            offloads: tun_offloads(self.acked_features),
            rx_needed: rx_space_needed(self.acked_features),
            stash: VecDeque::new(),
            stash_space: 0,
            rx_starved: false,
            tx_pending: None,
            tx_sent: Vec::with_capacity(MAX_CHAINS_PER_WAKE),
            interest: None,
            backend_gone: false,
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
        self.acked_features = 0;
    }

    super::state::worker_snapshot_hooks!("virtio-net");
}

/// The device while the driver drives it, on the worker.
struct ActiveNet {
    shared: Arc<Shared>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    rx: ServedQueue,
    tx: ServedQueue,
    mrg_rxbuf: bool,
    /// The receive offloads the driver accepted, as `TUN_F_*`.
    offloads: u32,
    /// Receive space to gather before reading a frame (with MRG_RXBUF).
    rx_needed: usize,
    /// Receive chains popped but not used yet, in queue order: the queue cannot take a
    /// chain back, so the ones a frame did not need wait here for the next frame.
    stash: VecDeque<RxBuffer>,
    /// Total `space` of `stash`.
    stash_space: usize,
    /// Waiting for the guest to post receive buffers: the backend is not watched for input.
    rx_starved: bool,
    /// A frame the backend could not take yet (EAGAIN), sent before any other.
    tx_pending: Option<DescriptorChain>,
    /// The TX chains one burst sent, kept between bursts for its allocation.
    tx_sent: Vec<(u16, u32)>,
    /// The interest registered for the backend, `None` until the first registration.
    interest: Option<EventSet>,
    /// The backend reported an error or hang-up and is no longer watched.
    backend_gone: bool,
}

impl ActiveNet {
    /// Publishes that the device sleeps on queue `index`; returns whether the driver posted
    /// more meanwhile (so the caller must look again).
    fn rearm(&mut self, index: usize) -> bool {
        let queue = if index == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        match queue.queue.enable_notification(&self.mem) {
            Ok(more) => more,
            Err(e) => {
                self.shared
                    .host_problem(format_args!("cannot re-arm queue {index}: {e}"));
                false
            }
        }
    }

    /// Hands chain `head` of queue `index` back unused and counts it as invalid.
    fn invalid_chain(&self, index: usize, head: u16, why: &str) {
        self.shared.count(|c| &c.invalid_chains, 1);
        self.shared
            .guest_problem(format_args!("queue {index}: chain {head} rejected: {why}"));
    }

    /// What the backend is ready for, without waiting.
    fn backend_readiness(&self) -> EventSet {
        let mut events = [EpollEvent::default(); 1];
        match self.shared.backend_events.wait(0, &mut events) {
            Ok(1) => EventSet::from_bits_truncate(events[0].events()),
            _ => EventSet::empty(),
        }
    }

    /// Stops watching a backend that failed: it would report the failure forever.
    fn backend_failed(&mut self, ready: EventSet) {
        log::error!(
            "{}: the backend failed ({ready:?}); no more frames are received",
            self.shared.name
        );
        let fd = self.shared.backend.as_raw_fd();
        let _ = self
            .shared
            .backend_events
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.backend_gone = true;
        self.interest = None;
    }

    /// Registers the backend interest the state calls for: input unless the guest has no
    /// room, output while a frame waits for the backend.
    fn update_interest(&mut self) {
        if self.backend_gone {
            return;
        }
        let mut want = EventSet::empty();
        if !self.rx_starved {
            want |= EventSet::IN;
        }
        if self.tx_pending.is_some() {
            want |= EventSet::OUT;
        }
        if self.interest == Some(want) {
            return;
        }
        let fd = self.shared.backend.as_raw_fd();
        let events = &self.shared.backend_events;
        let mut result = events.ctl(ControlOperation::Modify, fd, EpollEvent::new(want, 0));
        if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::ENOENT)) {
            // An earlier activation dropped a failed backend; try it again.
            result = events.ctl(ControlOperation::Add, fd, EpollEvent::new(want, 0));
        }
        match result {
            Ok(()) => self.interest = Some(want),
            Err(e) => log::error!("{}: cannot watch the backend: {e}", self.shared.name),
        }
    }
}

impl ActiveDevice for ActiveNet {
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![
            (self.rx.notify.as_raw_fd(), RX_TOKEN),
            (self.tx.notify.as_raw_fd(), TX_TOKEN),
            (self.shared.backend_events.as_raw_fd(), BACKEND_TOKEN),
        ]
    }

    /// Stashed receive chains and a transmit chain the backend could not take are given
    /// back (the restored device takes them again); see [`ActiveDevice::save_queues`].
    fn save_queues(&self) -> Option<Vec<super::worker::SavedQueue>> {
        Some(vec![
            self.rx.save_unpopped(self.stash.len()),
            self.tx
                .save_unpopped(usize::from(self.tx_pending.is_some())),
        ])
    }

    fn start(&mut self) {
        if let Err(e) = self.shared.backend.set_offload(self.offloads) {
            log::error!(
                "{}: cannot set the backend's offloads to {:#x}: {e}",
                self.shared.name,
                self.offloads
            );
        }
        self.process_tx();
        self.process_rx();
        self.update_interest();
    }

    fn handle_event(&mut self, token: u32) {
        match token {
            RX_TOKEN => {
                self.rx.clear_notification();
                // Buffers only matter while we wait for them; otherwise the backend's
                // readiness drives receiving.
                if self.rx_starved {
                    self.process_rx();
                }
            }
            TX_TOKEN => {
                self.tx.clear_notification();
                self.process_tx();
            }
            BACKEND_TOKEN => {
                let ready = self.backend_readiness();
                if ready.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    self.backend_failed(ready);
                } else {
                    if ready.contains(EventSet::OUT) {
                        self.process_tx();
                    }
                    if ready.contains(EventSet::IN) {
                        self.process_rx();
                    }
                }
            }
            _ => {}
        }
        self.update_interest();
    }
}
