//! virtio-vsock (device type 19) served by the host kernel's vhost-vsock.
//!
//! [`Vsock`] owns the open `/dev/vhost-vsock` ([`VhostVsock`]), the guest's CID and two
//! call eventfds. The kernel moves the data: the receive (0) and transmit (1) queues are
//! handed to vhost-vsock, which reads the driver's notifications straight from the queues'
//! notify eventfds (the ones the transport registered as KVM ioeventfds) and signals a call
//! eventfd when it has used buffers. The event queue (2) stays the VMM's: its buffers are
//! kept for the one event a restore sends (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`).
//!
//! - The CID is given to the kernel when the device is built
//!   (`VHOST_VSOCK_SET_GUEST_CID`), so a CID another VM holds fails `vmm run` at start
//!   ([`VsockError::CidInUse`]) rather than when the guest's driver loads.
//! - Every other ioctl happens on the device's [`DeviceWorker`], under its own seccomp
//!   policy (but for the memory table's updates, below): on activation `VHOST_SET_OWNER`
//!   (once per open file), the acknowledged features, the memory table (guest RAM, as the
//!   [`GuestMemoryMmap`] the transport hands over, and the registered regions), each
//!   queue's size, base, ring addresses, kick and call eventfds, then
//!   `VHOST_VSOCK_SET_RUNNING` 1. A reset drops the active device on the worker, which
//!   stops the backend (`VHOST_VSOCK_SET_RUNNING` 0; once that returns the kernel touches
//!   the rings no more) and stops relaying; the next activation sets everything again.
//! - Interrupts: the worker waits on the call eventfds and relays each to
//!   [`Interrupt::signal_used_queue`], so masked MSI-X vectors and INTx work as for every
//!   other device, at the cost of one wake-up of the worker per interrupt. Wiring a call
//!   eventfd straight to its vector's KVM irqfd would save that, but would bypass the
//!   transport's masking and INTx paths; it is left as a later optimisation.
//! - A setup that fails (the kernel refuses a ring, say) is logged and reported to the
//!   driver as DEVICE_NEEDS_RESET.
//!
//! Snapshots (the record's device part and the hooks are in [`state`]): as in Firecracker,
//! connections do not survive a restore. A pause stops the backend
//! (`VHOST_VSOCK_SET_RUNNING` 0) and reads where the kernel is in queues 0 and 1
//! (`VHOST_GET_VRING_BASE`; the used index is in guest memory); a resume in the same
//! process sets it running again, on rings that have not moved. A restored device sets the
//! backend up at the saved positions and then sends one `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`
//! in a buffer the driver posted on the event queue (at once, or when the driver posts
//! one), so the guest drops its connections, which the new backend does not know, and
//! reads the CID again.
//!
//! The memory table (see [`memory`]) covers guest RAM and every region registered through
//! the control socket: the device's [`VsockMemory`] is shared with the VMM's control
//! thread, which gives the kernel a new table (`VHOST_SET_MEM_TABLE`, allowed by the
//! main thread's seccomp policy) whenever memory is registered or unregistered, so the
//! guest may place vsock buffers in registered memory. `vmm queues` shows queues 0 and 1
//! as the kernel's ([`VirtioDevice::kernel_served_queues`]), with the used index read
//! from guest memory and the interrupts the worker relays. Rings stay in
//! guest RAM: the transport refuses rings outside it, as for every device.

pub mod memory;
pub mod state;
pub mod vhost;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use memory::{MemoryTableError, VsockMemory};
pub use state::VsockState;
pub use vhost::{VhostBackend, VhostError, VhostMemoryRegion, VhostVsock};

use super::worker::{ActiveDevice, DeviceWorker, SavedQueue, ServedQueue, lock};
use super::{
    ActivateError, ActiveQueue, Interrupt, TRANSPORT_FEATURES, VirtioDevice, read_config_bytes,
};

/// Virtio device type of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Device feature: SOCK_SEQPACKET sockets (offered when the kernel's vhost-vsock has it).
pub const VIRTIO_VSOCK_F_SEQPACKET: u32 = 1;
/// The one event of the event queue: the transport was reset (sent after a restore).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// The device node of the host's vhost-vsock.
pub const VHOST_VSOCK_PATH: &str = "/dev/vhost-vsock";
/// The reserved CIDs: 0 (hypervisor), 1 (local), 2 (host); CIDs start above them.
pub const FIRST_GUEST_CID: u64 = 3;
/// `VMADDR_CID_ANY` (`u32::MAX`); guest CIDs stay below it.
pub const VMADDR_CID_ANY: u64 = u32::MAX as u64;

/// Size of each of the three queues (as QEMU and crosvm offer).
pub const VSOCK_QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [VSOCK_QUEUE_SIZE; 3];
/// The queues vhost-vsock serves: receive and transmit.
const VHOST_QUEUES: [usize; 2] = [0, 1];
/// The event queue, kept by the VMM.
const EVENT_QUEUE: usize = 2;
/// Epoll token of the event queue's notifications; 0 and 1 are the call eventfds.
const EVENT_TOKEN: u32 = 2;
const LOG_NAME: &str = "virtio-vsock";

/// The device-specific features offered for a backend that implements `backend`.
pub fn offered_features(backend: u64) -> u64 {
    backend & (1 << VIRTIO_VSOCK_F_SEQPACKET)
}

/// The configuration space: `guest_cid`, a little-endian u64.
pub fn config_space(cid: u64) -> [u8; 8] {
    cid.to_le_bytes()
}

/// Why the vsock device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// No device node: the kernel has no vhost-vsock.
    #[error(
        "{VHOST_VSOCK_PATH} does not exist: this host's kernel has no vhost-vsock loaded; \
         load it with `modprobe vhost_vsock`"
    )]
    NoModule,
    /// The node exists but the user may not open it.
    #[error(
        "permission denied opening {VHOST_VSOCK_PATH}: the user running vmm needs read and \
         write access to that device node (or hand vmm an open one: --vsock cid=N,fd=M)"
    )]
    Access,
    /// Any other failure to open it.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path tried.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another VM (or the host's own guest-side vsock) has the CID.
    #[error(
        "guest CID {0} is already in use on this host (another VM has it); give each VM its \
         own --vsock cid"
    )]
    CidInUse(u64),
    /// The kernel refused the CID for another reason.
    #[error("the kernel refused guest CID {cid}: {source}")]
    Cid {
        /// The CID.
        cid: u64,
        /// The failed ioctl.
        #[source]
        source: VhostError,
    },
    /// The descriptor is not a vhost-vsock device.
    #[error("cannot query vhost-vsock (is it /dev/vhost-vsock?): {0}")]
    Features(#[source] VhostError),
    /// The kernel's vhost-vsock lacks a ring feature the transport offers.
    #[error(
        "this kernel's vhost-vsock lacks virtio features {0:#x} (VERSION_1, EVENT_IDX or \
         INDIRECT_DESC) that vmm's transport offers"
    )]
    MissingFeatures(u64),
    /// An eventfd or the worker thread could not be created.
    #[error("cannot start the virtio-vsock worker: {0}")]
    Worker(#[source] io::Error),
}

/// Opens `path` (normally [`VHOST_VSOCK_PATH`]) read-write, close-on-exec, with errors
/// that say what to do.
pub fn open_vhost_vsock(path: &Path) -> Result<File, VsockError> {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) if path == Path::new(VHOST_VSOCK_PATH) => {
                VsockError::NoModule
            }
            Some(libc::EACCES) | Some(libc::EPERM) if path == Path::new(VHOST_VSOCK_PATH) => {
                VsockError::Access
            }
            _ => VsockError::Open {
                path: path.display().to_string(),
                source,
            },
        })
}

/// The virtio-vsock device; see the module docs.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    vhost: Arc<dyn VhostBackend>,
    /// The backend's memory table, shared with the control thread.
    memory: Arc<VsockMemory>,
    /// What the kernel's vhost-vsock implements.
    backend_features: u64,
    acked_features: u64,
    /// The call eventfds of queues 0 and 1, made once with the device (so activation,
    /// on a vCPU thread, creates no descriptor).
    calls: Arc<[EventFd; 2]>,
    /// Why the last pause could not stop the backend or read its positions, if it could
    /// not (written on the worker, read by [`VirtioDevice::pause`]).
    pause_error: Arc<Mutex<Option<String>>>,
    /// A restore happened: the next activation sends the driver a transport reset.
    reset_event: bool,
    worker: DeviceWorker,
}

impl Vsock {
    /// Takes the open vhost-vsock `file`, gives the kernel the guest's `cid` and starts the
    /// parked worker `name`, which runs `start` first thing (the VMM installs the
    /// worker's seccomp policy there).
    pub fn new(
        file: File,
        cid: u64,
        name: &str,
        start: impl FnOnce() + Send + 'static,
    ) -> Result<Vsock, VsockError> {
        let vhost = VhostVsock::new(file);
        let backend_features = vhost.get_features().map_err(VsockError::Features)?;
        // The kernel, not the VMM, serves the rings: it must implement every ring feature
        // the transport offers, since the driver may use any of them.
        let missing = TRANSPORT_FEATURES & !backend_features;
        if missing != 0 {
            return Err(VsockError::MissingFeatures(missing));
        }
        vhost.set_guest_cid(cid).map_err(|source| {
            if source.errno() == Some(libc::EADDRINUSE) {
                VsockError::CidInUse(cid)
            } else {
                VsockError::Cid { cid, source }
            }
        })?;
        Vsock::with_backend(Arc::new(vhost), cid, backend_features, name, start)
    }

    /// A device on a `backend` that already has the guest's `cid` and implements
    /// `backend_features` (which must include the transport's ring features): nothing is
    /// asked of it until the driver activates the device. For a backend other than the
    /// kernel's, such as the recording fake of the tests (there is no vhost-vsock where
    /// they run).
    pub fn with_backend(
        backend: Arc<dyn VhostBackend>,
        cid: u64,
        backend_features: u64,
        name: &str,
        start: impl FnOnce() + Send + 'static,
    ) -> Result<Vsock, VsockError> {
        let calls = [
            EventFd::new(EFD_NONBLOCK).map_err(VsockError::Worker)?,
            EventFd::new(EFD_NONBLOCK).map_err(VsockError::Worker)?,
        ];
        Ok(Vsock {
            cid,
            memory: Arc::new(VsockMemory::new(backend.clone(), vhost::MAX_MEM_REGIONS)),
            vhost: backend,
            backend_features,
            acked_features: 0,
            calls: Arc::new(calls),
            pause_error: Arc::new(Mutex::new(None)),
            reset_event: false,
            worker: DeviceWorker::spawn(name, start).map_err(VsockError::Worker)?,
        })
    }

    /// A device on `file` without asking the kernel anything (for unit tests on a file
    /// that is not vhost-vsock).
    #[cfg(test)]
    fn unchecked(file: File, cid: u64, backend_features: u64) -> Vsock {
        Vsock::with_backend(
            Arc::new(VhostVsock::new(file)),
            cid,
            backend_features,
            "virtio-vsock-test",
            || {},
        )
        .unwrap()
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The kernel takes memory tables of at most `limit` regions (what
    /// [`memory::kernel_region_limit`] read before the sandbox; the default, 64, unless
    /// told). Only before the device is activated or its table handed out.
    pub fn with_region_limit(mut self, limit: usize) -> Vsock {
        self.memory = Arc::new(VsockMemory::new(self.vhost.clone(), limit));
        self
    }

    /// The backend's memory table, for the control thread to add registered memory to
    /// and take it out of (see [`memory`]).
    pub fn memory(&self) -> Arc<VsockMemory> {
        self.memory.clone()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        offered_features(self.backend_features)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_space(self.cid), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut rings = Vec::with_capacity(VHOST_QUEUES.len());
        let mut event = None;
        for queue in queues {
            if queue.index == EVENT_QUEUE {
                event = Some(ServedQueue::new(queue));
            } else if VHOST_QUEUES.contains(&queue.index) {
                rings.push(queue);
            }
        }
        // In queue order, so ring i goes with call eventfd i.
        rings.sort_by_key(|queue| queue.index);
        if let Some(missing) = VHOST_QUEUES
            .into_iter()
            .find(|index| !rings.iter().any(|queue| queue.index == *index))
        {
            return Err(ActivateError::MissingQueue(missing));
        }
        let active = ActiveVsock {
            vhost: self.vhost.clone(),
            memory: self.memory.clone(),
            // The backend never sees a feature it did not offer.
            features: self.acked_features & self.backend_features,
            mem,
            interrupt,
            rings,
            event,
            calls: self.calls.clone(),
            running: false,
            configured: false,
            paused_at: None,
            pause_error: self.pause_error.clone(),
            // Sent once, by the first activation after the restore.
            reset_event: std::mem::take(&mut self.reset_event),
        };
        self.worker
            .activate(Box::new(active))
            .map_err(ActivateError::Worker)
    }

    fn quiesced(&self) -> bool {
        self.worker.idle()
    }

    /// The receive and transmit queues: vhost-vsock serves them.
    fn kernel_served_queues(&self) -> &[usize] {
        &VHOST_QUEUES
    }

    fn reset(&mut self) {
        self.acked_features = 0;
        self.reset_event = false;
        self.worker.deactivate_for_reset();
    }

    fn pause(&mut self) -> Result<super::worker::Paused, crate::state::StateError> {
        self.pause_for_snapshot()
    }

    fn resume(&mut self) -> Result<(), crate::state::StateError> {
        super::state::resume_worker(LOG_NAME, &self.worker)
    }

    fn save_device_state(
        &self,
    ) -> Result<super::state::VirtioDeviceState, crate::state::StateError> {
        Ok(self.save_state())
    }

    fn check_device_state(
        &self,
        saved: &super::state::VirtioDeviceState,
    ) -> Result<(), crate::state::StateError> {
        self.check_state(saved)
    }

    fn apply_device_state(
        &mut self,
        saved: super::state::VirtioDeviceState,
    ) -> Result<(), crate::state::StateError> {
        self.apply_state(saved);
        Ok(())
    }
}

/// The device while the driver drives it, on the worker. Dropping it stops the backend.
struct ActiveVsock {
    vhost: Arc<dyn VhostBackend>,
    /// The memory table: RAM (`mem`) and the registered regions.
    memory: Arc<VsockMemory>,
    features: u64,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    /// Queues 0 and 1 in that order, served by the kernel; their notify eventfds are the
    /// kick eventfds.
    rings: Vec<ActiveQueue>,
    /// Queue 2, whose buffers are kept for events.
    event: Option<ServedQueue>,
    calls: Arc<[EventFd; 2]>,
    /// Whether `VHOST_VSOCK_SET_RUNNING` 1 succeeded (so a drop must stop the backend).
    running: bool,
    /// The backend has the rings (set up once per activation): a resume after a pause
    /// only sets it running again.
    configured: bool,
    /// What the last pause found: queues 0 and 1 where the backend stopped, or why not.
    paused_at: Option<Result<[SavedQueue; 2], String>>,
    /// Where a failed pause says why, for [`Vsock`].
    pause_error: Arc<Mutex<Option<String>>>,
    /// A `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` is owed to the driver (after a restore).
    reset_event: bool,
}

impl ActiveVsock {
    /// Gives the kernel everything it needs to serve queues 0 and 1, and starts it.
    fn set_up(&mut self) -> Result<(), VhostError> {
        let vhost = &*self.vhost;
        vhost.set_owner_once()?;
        vhost.set_features(self.features)?;
        self.memory
            .install(memory_table(&self.mem))
            .map_err(|e| match e {
                MemoryTableError::Kernel(e) => e,
                other => VhostError {
                    call: "VHOST_SET_MEM_TABLE",
                    source: io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
                },
            })?;
        for (queue, call) in self.rings.iter().zip(self.calls.iter()) {
            // Queue indices are 0 and 1.
            let index = u32::try_from(queue.index).unwrap_or(u32::MAX);
            vhost.set_vring_num(index, queue.queue.size)?;
            vhost.set_vring_base(index, queue.queue.next_avail())?;
            vhost.set_vring_addr(index, ring_addresses(&self.mem, &queue.queue)?)?;
            vhost.set_vring_kick(index, queue.notify.as_raw_fd())?;
            // A call left over from the last activation would only cost a spurious
            // interrupt, but there is no reason to send one.
            let _ = call.read();
            vhost.set_vring_call(index, call.as_raw_fd())?;
        }
        self.configured = true;
        vhost.set_running(true)?;
        self.running = true;
        Ok(())
    }

    /// Relays a call of queue `index` to the driver.
    fn relay(&self, index: usize) {
        let (Some(call), Some(queue)) = (self.calls.get(index), self.rings.get(index)) else {
            return;
        };
        if call.read().is_ok() {
            queue.status.add_interrupt();
            self.interrupt.signal_used_queue(queue.index);
        }
    }
}

impl ActiveDevice for ActiveVsock {
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        let mut sources: Vec<(RawFd, u32)> = self
            .calls
            .iter()
            .zip(0u32..)
            .map(|(call, token)| (call.as_raw_fd(), token))
            .collect();
        if let Some(event) = &self.event {
            sources.push((event.notify.as_raw_fd(), EVENT_TOKEN));
        }
        sources
    }

    fn start(&mut self) {
        self.paused_at = None;
        if self.configured {
            // Resumed after a pause: the rings are where the backend stopped.
            match self.vhost.set_running(true) {
                Ok(()) => self.running = true,
                Err(e) => {
                    log::error!("{LOG_NAME}: cannot restart vhost-vsock, device needs reset: {e}");
                    self.interrupt.set_needs_reset();
                }
            }
        } else if let Err(e) = self.set_up() {
            log::error!("{LOG_NAME}: cannot start vhost-vsock, device needs reset: {e}");
            self.interrupt.set_needs_reset();
        }
        if self.running {
            // vhost-vsock looks at a ring when kicked (and, on starting, at its own send
            // queue only): buffers the driver posted before a snapshot, or before
            // DRIVER_OK, whose kick the backend consumed while stopped or never got, would
            // otherwise wait for the driver's next kick, which EVENT_IDX may withhold.
            for queue in &self.rings {
                let _ = queue.notify.write(1);
            }
        }
        self.send_reset_event();
    }

    fn pause(&mut self) {
        let found = self.stop_and_locate();
        *lock(&self.pause_error) = found.as_ref().err().cloned();
        self.paused_at = Some(found);
    }

    /// Queues 0 and 1 where the backend stopped, and the event queue, whose buffers are
    /// never taken except for the reset event (which is sent whole or not at all).
    fn save_queues(&self) -> Option<Vec<SavedQueue>> {
        let Some(Ok(rings)) = &self.paused_at else {
            return None;
        };
        let mut saved = rings.to_vec();
        saved.extend(self.event.as_ref().map(ServedQueue::save));
        Some(saved)
    }

    fn handle_event(&mut self, token: u32) {
        match token {
            EVENT_TOKEN => {
                // The driver posted event buffers: they stay available for an event, and
                // take the one owed, if any.
                if let Some(event) = &self.event {
                    event.clear_notification();
                }
                self.send_reset_event();
            }
            _ => self.relay(usize::try_from(token).unwrap_or(usize::MAX)),
        }
    }
}

impl Drop for ActiveVsock {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.vhost.set_running(false) {
                log::error!("{LOG_NAME}: cannot stop vhost-vsock: {e}");
            }
        }
    }
}

/// Guest memory as vhost's memory table: each region's guest address, size and where the
/// VMM maps it.
fn memory_table(mem: &GuestMemoryMmap) -> Vec<VhostMemoryRegion> {
    mem.iter()
        .filter_map(|region| {
            let host = mem.get_host_address(region.start_addr()).ok()?;
            Some(VhostMemoryRegion {
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags_padding: 0,
            })
        })
        .collect()
}

/// Where `queue`'s rings are mapped in the VMM (the transport validated that they lie in
/// guest memory).
fn ring_addresses(
    mem: &GuestMemoryMmap,
    queue: &super::Queue,
) -> Result<vhost::RingAddresses, VhostError> {
    let host = |addr: u64| {
        mem.get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|e| VhostError {
                call: "VHOST_SET_VRING_ADDR",
                source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            })
    };
    Ok(vhost::RingAddresses {
        desc: host(queue.desc_table)?,
        avail: host(queue.avail_ring)?,
        used: host(queue.used_ring)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_cid_as_a_little_endian_u64() {
        let config = config_space(0x1_0000_0003);
        let mut low = [0u8; 4];
        read_config_bytes(&config, 0, &mut low);
        assert_eq!(low, [3, 0, 0, 0]);
        let mut high = [0u8; 4];
        read_config_bytes(&config, 4, &mut high);
        assert_eq!(high, [1, 0, 0, 0]);
        let mut past = [0xffu8; 4];
        read_config_bytes(&config, 8, &mut past);
        assert_eq!(past, [0; 4], "bytes past guest_cid read as 0");
    }

    #[test]
    fn only_seqpacket_is_offered_and_only_when_the_backend_has_it() {
        // What 6.1's vhost-vsock reports: VHOST_FEATURES, ACCESS_PLATFORM, SEQPACKET.
        let backend = 1 << 24 | 1 << 27 | 1 << 28 | 1 << 29 | 1 << 32 | 1 << 33 | 1 << 26 | 1 << 1;
        assert_eq!(offered_features(backend), 1 << VIRTIO_VSOCK_F_SEQPACKET);
        assert_eq!(offered_features(backend & !(1 << 1)), 0);
        // The transport adds VERSION_1, EVENT_IDX and INDIRECT_DESC, which vhost has too;
        // ACCESS_PLATFORM (an IOMMU) and LOG_ALL (migration) are never offered.
        assert_eq!(offered_features(u64::MAX), 1 << VIRTIO_VSOCK_F_SEQPACKET);
    }

    #[test]
    fn the_transport_bits_are_all_ones_vhost_implements() {
        // VHOST_FEATURES in drivers/vhost/vhost.h (NOTIFY_ON_EMPTY, ANY_LAYOUT, INDIRECT_DESC,
        // EVENT_IDX, VERSION_1, LOG_ALL) includes the three the transport offers.
        let kernel: u64 = 1 << 24 | 1 << 27 | 1 << 28 | 1 << 29 | 1 << 32 | 1 << 26;
        assert_eq!(kernel & TRANSPORT_FEATURES, TRANSPORT_FEATURES);
        assert_eq!(TRANSPORT_FEATURES, 1 << 28 | 1 << 29 | 1 << 32);
    }

    #[test]
    fn a_missing_device_node_other_than_the_standard_one_names_the_path() {
        let err = open_vhost_vsock(Path::new("/nonexistent/vhost-vsock")).unwrap_err();
        assert!(matches!(err, VsockError::Open { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/vhost-vsock"),
            "{err}"
        );
    }

    #[test]
    fn the_missing_module_error_says_which_module_to_load() {
        let text = VsockError::NoModule.to_string();
        assert!(text.contains("modprobe vhost_vsock"), "{text}");
        assert!(VsockError::CidInUse(7).to_string().contains("CID 7"));
    }

    #[test]
    fn memory_table_lists_every_guest_ram_region_with_its_mapping() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 32), 2 << 20),
        ])
        .unwrap();
        let table = memory_table(&mem);
        assert_eq!(table.len(), 2);
        assert_eq!(table[0].guest_phys_addr, 0);
        assert_eq!(table[0].memory_size, 1 << 20);
        assert_eq!(table[1].guest_phys_addr, 1 << 32);
        assert_eq!(table[1].memory_size, 2 << 20);
        assert_eq!(
            table[1].userspace_addr,
            mem.get_host_address(GuestAddress(1 << 32)).unwrap() as u64
        );
    }

    /// Counts what the device asks of the transport.
    #[derive(Default)]
    struct Recorder {
        needs_reset: std::sync::atomic::AtomicUsize,
    }

    impl Interrupt for Recorder {
        fn signal_used_queue(&self, _queue_index: usize) {}
        fn signal_config_changed(&self) {}
        fn set_needs_reset(&self) {
            self.needs_reset
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn active_queue(index: usize) -> ActiveQueue {
        let mut queue = super::super::Queue::new(VSOCK_QUEUE_SIZE);
        queue.size = 16;
        queue.ready = true;
        queue.desc_table = 0x1000 * (index as u64 + 1);
        queue.avail_ring = 0x10000 + 0x1000 * index as u64;
        queue.used_ring = 0x20000 + 0x1000 * index as u64;
        ActiveQueue {
            index,
            queue,
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            status: Arc::new(super::super::QueueStatus::new()),
        }
    }

    fn null_device() -> Vsock {
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        Vsock::unchecked(null, 3, 1 << VIRTIO_VSOCK_F_SEQPACKET)
    }

    #[test]
    fn activation_without_the_rx_or_tx_queue_is_refused() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let mut device = null_device();
        let interrupt: Arc<dyn Interrupt> = Arc::new(Recorder::default());
        let err = device
            .activate(
                mem.clone(),
                interrupt.clone(),
                vec![active_queue(0), active_queue(2)],
            )
            .unwrap_err();
        assert!(matches!(err, ActivateError::MissingQueue(1)), "{err}");
        let err = device
            .activate(mem, interrupt, vec![active_queue(1)])
            .unwrap_err();
        assert!(matches!(err, ActivateError::MissingQueue(0)), "{err}");
    }

    #[test]
    fn a_backend_that_refuses_the_set_up_makes_the_device_need_a_reset() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let mut device = null_device();
        device.ack_features(1 << VIRTIO_VSOCK_F_SEQPACKET | 1 << 32);
        let recorder = Arc::new(Recorder::default());
        let interrupt: Arc<dyn Interrupt> = recorder.clone();
        device
            .activate(
                mem,
                interrupt,
                vec![active_queue(2), active_queue(1), active_queue(0)],
            )
            .unwrap();
        // /dev/null answers VHOST_SET_OWNER with ENOTTY: the worker reports it once.
        assert_eq!(
            recorder
                .needs_reset
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        device.reset();
        assert!(device.quiesced());
    }
}
