//! The rig every socketpair test drives: a virtio-net device whose backend is one end of
//! a `SOCK_SEQPACKET` socketpair ([`SocketBackend`]), the test holding the other end as
//! "the network" ([`Rig`]), with the queue layout, feature sets and packet helpers the
//! tests share.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Buf, DATA, TestDevice, ro, wait_for};
use devices::virtio::net::tap::TAP_OFFLOADS;
use devices::virtio::net::{
    Net, NetCounters, PacketBackend, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_MRG_RXBUF, VNET_HDR_LEN,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};

pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
/// Receive offloads a Linux guest accepts from a tap that offers them.
pub const GUEST_GSO: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_UFO;
/// Where receive buffers go: one per 64 KiB.
pub const RX_BUFS: u64 = DATA;
/// Where transmit packets go.
pub const TX_BUFS: u64 = DATA + 0x80_0000;

/// A socketpair end as the device's backend, claiming the tap's offloads (or none) and
/// recording what the device tells it.
pub struct SocketBackend {
    pub fd: OwnedFd,
    pub offloads: u32,
    pub set_offload: Arc<Mutex<Vec<u32>>>,
}

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl PacketBackend for SocketBackend {
    fn read_packet(&self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.fd.read_packet(bufs)
    }

    fn write_packet(&self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.fd.write_packet(bufs)
    }

    fn offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.set_offload.lock().unwrap().push(flags);
        Ok(())
    }
}

/// The device under test and the network end of its backend.
pub struct Rig {
    pub t: TestDevice<Net>,
    pub peer: OwnedFd,
    pub counters: Arc<NetCounters>,
    pub set_offload: Arc<Mutex<Vec<u32>>>,
}

pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which we then own.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both were just created and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A device over a socketpair, its queues laid out (`size` entries) but not started.
pub fn rig_with(offloads: u32, size: u16, sndbuf: Option<i32>, name: &str) -> Rig {
    let (device_end, peer) = socketpair();
    if let Some(size) = sndbuf {
        // SAFETY: SO_SNDBUF reads one int from the pointer, valid for the call.
        let ret = unsafe {
            libc::setsockopt(
                device_end.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const i32).cast(),
                4,
            )
        };
        assert_eq!(ret, 0);
    }
    let set_offload = Arc::new(Mutex::new(Vec::new()));
    let backend = SocketBackend {
        fd: device_end,
        offloads,
        set_offload: set_offload.clone(),
    };
    let net = Net::new(backend, MAC, name, || {}).unwrap();
    let counters = net.counters();
    Rig {
        t: TestDevice::inactive_sized(net, size),
        peer,
        counters,
        set_offload,
    }
}

/// A started device with `features` over a socketpair with the tap's offloads.
pub fn rig(features: u64) -> Rig {
    let mut r = rig_with(TAP_OFFLOADS, crate::common::QSIZE, None, "virtio-net-test");
    r.t.start(features);
    r
}

impl Rig {
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.t.mem
    }

    /// The network sends `packet` (header and frame) to the guest.
    pub fn peer_send(&self, packet: &[u8]) {
        // SAFETY: send reads `packet.len()` bytes from the slice, valid for the call.
        let n = unsafe {
            libc::send(
                self.peer.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
            )
        };
        assert_eq!(
            n,
            packet.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next packet the guest sent, or `None` after `timeout`.
    pub fn peer_recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut pfd = libc::pollfd {
            fd: self.peer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis() as i32;
        // SAFETY: poll reads and writes one pollfd, valid for the call.
        if unsafe { libc::poll(&mut pfd, 1, ms) } != 1 {
            return None;
        }
        let mut buf = vec![0u8; 128 * 1024];
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::recv(
                self.peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        assert!(n >= 0, "{}", std::io::Error::last_os_error());
        buf.truncate(n as usize);
        Some(buf)
    }

    /// Writes `packet` contiguously at `at` and posts it on the TX queue as one buffer.
    pub fn guest_send(&mut self, at: u64, packet: &[u8]) -> u16 {
        self.t.mem.write_slice(packet, GuestAddress(at)).unwrap();
        let mem = self.t.mem.clone();
        self.t.queues[TX_QUEUE].send(&mem, &[ro(at, packet.len() as u32)])
    }

    /// Posts one receive chain of `bufs`.
    pub fn post_rx(&mut self, bufs: &[Buf]) -> u16 {
        let mem = self.t.mem.clone();
        self.t.queues[RX_QUEUE].send(&mem, bufs)
    }

    pub fn guest_bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem().read_slice(&mut buf, GuestAddress(at)).unwrap();
        buf
    }

    pub fn counter(&self, get: fn(&NetCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        get(&self.counters).load(Ordering::SeqCst)
    }

    /// Waits until counter `get` reached `at_least`. The device publishes a received
    /// frame's chains before it counts the frame (packets, then bytes), and a burst's
    /// chains before it interrupts and counts the interrupt: a test that waited for the
    /// used index can get there first.
    pub fn wait_counter(
        &self,
        what: &str,
        get: fn(&NetCounters) -> &std::sync::atomic::AtomicU64,
        at_least: u64,
    ) {
        wait_for(what, || self.counter(get) >= at_least);
    }

    /// Waits until the device interrupted the guest for queue `queue`; it does so after
    /// publishing the chains a test waited for.
    pub fn wait_interrupt(&self, queue: usize) {
        wait_for(&format!("an interrupt for queue {queue}"), || {
            self.t.interrupt.used_count(queue) >= 1
        });
    }
}

/// A virtio-net header (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers) followed by an Ethernet frame of `len` patterned bytes tagged with `tag`.
pub fn packet(tag: u8, len: usize) -> Vec<u8> {
    let mut p = vec![1, 0, 0x36, 0, 0xa8, 0x05, 0x22, 0, 0x10, 0, 0xee, 0xee];
    p.extend((0..len).map(|i| (i % 251) as u8 ^ tag));
    p
}

/// Frame bytes (without the header) of `p`.
pub fn frame(p: &[u8]) -> &[u8] {
    &p[VNET_HDR_LEN..]
}

pub fn num_buffers(header: &[u8]) -> u16 {
    u16::from_le_bytes([header[10], header[11]])
}
