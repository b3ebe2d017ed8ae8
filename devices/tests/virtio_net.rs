//! virtio-net through the queue-level test driver, with a `SOCK_SEQPACKET` socketpair as
//! the backend: the test holds the "network" end and sees every packet exactly as a tap
//! with IFF_VNET_HDR would (header and frame). Covers both directions, mergeable receive
//! buffers, back-pressure both ways, malformed chains and queues, and the counters; then a
//! real tap when `/dev/net/tun` is there.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Buf, DATA, TestDevice, ro, wait_for, wo};
use devices::virtio::net::tap::{TAP_OFFLOADS, Tap, TapError};
use devices::virtio::net::{
    NET_QUEUE_SIZE, Net, NetCounters, PacketBackend, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VNET_HDR_LEN,
};
use devices::virtio::{VIRTIO_ID_NET, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
/// Receive offloads a Linux guest accepts from a tap that offers them.
const GUEST_GSO: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_UFO;
/// Where receive buffers go: one per 64 KiB.
const RX_BUFS: u64 = DATA;
/// Where transmit packets go.
const TX_BUFS: u64 = DATA + 0x80_0000;

/// A socketpair end as the device's backend, claiming the tap's offloads (or none) and
/// recording what the device tells it.
struct SocketBackend {
    fd: OwnedFd,
    offloads: u32,
    set_offload: Arc<Mutex<Vec<u32>>>,
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
struct Rig {
    t: TestDevice<Net>,
    peer: OwnedFd,
    counters: Arc<NetCounters>,
    set_offload: Arc<Mutex<Vec<u32>>>,
}

fn socketpair() -> (OwnedFd, OwnedFd) {
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
fn rig_with(offloads: u32, size: u16, sndbuf: Option<i32>, name: &str) -> Rig {
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
fn rig(features: u64) -> Rig {
    let mut r = rig_with(TAP_OFFLOADS, common::QSIZE, None, "virtio-net-test");
    r.t.start(features);
    r
}

impl Rig {
    fn mem(&self) -> &GuestMemoryMmap {
        &self.t.mem
    }

    /// The network sends `packet` (header and frame) to the guest.
    fn peer_send(&self, packet: &[u8]) {
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
    fn peer_recv(&self, timeout: Duration) -> Option<Vec<u8>> {
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
    fn guest_send(&mut self, at: u64, packet: &[u8]) -> u16 {
        self.t.mem.write_slice(packet, GuestAddress(at)).unwrap();
        let mem = self.t.mem.clone();
        self.t.queues[TX_QUEUE].send(&mem, &[ro(at, packet.len() as u32)])
    }

    /// Posts one receive chain of `bufs`.
    fn post_rx(&mut self, bufs: &[Buf]) -> u16 {
        let mem = self.t.mem.clone();
        self.t.queues[RX_QUEUE].send(&mem, bufs)
    }

    fn guest_bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem().read_slice(&mut buf, GuestAddress(at)).unwrap();
        buf
    }

    fn counter(&self, get: fn(&NetCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        get(&self.counters).load(Ordering::SeqCst)
    }

    /// Waits until counter `get` reached `at_least`. The device publishes a received
    /// frame's chains before it counts the frame (packets, then bytes), and a burst's
    /// chains before it interrupts and counts the interrupt: a test that waited for the
    /// used index can get there first.
    fn wait_counter(
        &self,
        what: &str,
        get: fn(&NetCounters) -> &std::sync::atomic::AtomicU64,
        at_least: u64,
    ) {
        wait_for(what, || self.counter(get) >= at_least);
    }

    /// Waits until the device interrupted the guest for queue `queue`; it does so after
    /// publishing the chains a test waited for.
    fn wait_interrupt(&self, queue: usize) {
        wait_for(&format!("an interrupt for queue {queue}"), || {
            self.t.interrupt.used_count(queue) >= 1
        });
    }
}

/// A virtio-net header (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers) followed by an Ethernet frame of `len` patterned bytes tagged with `tag`.
fn packet(tag: u8, len: usize) -> Vec<u8> {
    let mut p = vec![1, 0, 0x36, 0, 0xa8, 0x05, 0x22, 0, 0x10, 0, 0xee, 0xee];
    p.extend((0..len).map(|i| (i % 251) as u8 ^ tag));
    p
}

/// Frame bytes (without the header) of `p`.
fn frame(p: &[u8]) -> &[u8] {
    &p[VNET_HDR_LEN..]
}

fn num_buffers(header: &[u8]) -> u16 {
    u16::from_le_bytes([header[10], header[11]])
}

#[test]
fn features_and_config_describe_a_nic_with_the_backends_offloads() {
    let r = rig_with(TAP_OFFLOADS, common::QSIZE, None, "virtio-net-cfg");
    let net = &r.t.device;
    assert_eq!(net.device_type(), VIRTIO_ID_NET);
    assert_eq!(net.queue_max_sizes(), [NET_QUEUE_SIZE, NET_QUEUE_SIZE]);
    let base = 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | MRG;
    let host = 1 << VIRTIO_NET_F_CSUM
        | 1 << VIRTIO_NET_F_HOST_TSO4
        | 1 << VIRTIO_NET_F_HOST_TSO6
        | 1 << VIRTIO_NET_F_HOST_UFO;
    assert_eq!(net.features(), base | GUEST_GSO | host);
    let mut config = [0xffu8; 10];
    net.read_config(0, &mut config);
    assert_eq!(config, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 0, 0]);

    let plain = rig_with(0, common::QSIZE, None, "virtio-net-cfg0");
    assert_eq!(plain.t.device.features(), base);
}

#[test]
fn the_backend_learns_the_offloads_the_guest_accepted_when_the_device_starts() {
    let r = rig(MRG | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4);
    wait_for("set_offload", || r.set_offload.lock().unwrap().len() == 2);
    // At creation: nothing; at activation: what the guest took.
    assert_eq!(
        *r.set_offload.lock().unwrap(),
        [0, libc::TUN_F_CSUM | libc::TUN_F_TSO4]
    );
}

#[test]
fn a_guest_frame_reaches_the_network_with_its_header() {
    let mut r = rig(MRG);
    let p = packet(1, 60);
    // Header and frame in separate descriptors, as Linux sends them.
    r.t.mem.write_slice(&p, GuestAddress(TX_BUFS)).unwrap();
    let mem = r.t.mem.clone();
    let head = r.t.queues[TX_QUEUE].send(&mem, &[ro(TX_BUFS, 12), ro(TX_BUFS + 12, 60)]);
    r.t.wait_used(TX_QUEUE, 1);
    assert_eq!(
        r.t.queues[TX_QUEUE].used_elem(&mem, 0),
        (u32::from(head), 0)
    );
    assert_eq!(r.peer_recv(Duration::from_secs(5)).unwrap(), p);
    assert_eq!(r.counter(|c| &c.tx_packets), 1);
    assert_eq!(r.counter(|c| &c.tx_bytes), 60);
    r.wait_interrupt(TX_QUEUE);
}

#[test]
fn a_network_frame_lands_in_a_posted_buffer_with_num_buffers_set() {
    let mut r = rig(MRG);
    let head = r.post_rx(&[wo(RX_BUFS, 2048)]);
    let p = packet(2, 100);
    r.peer_send(&p);
    r.t.wait_used(RX_QUEUE, 1);
    let mem = r.t.mem.clone();
    assert_eq!(
        r.t.queues[RX_QUEUE].used_elem(&mem, 0),
        (u32::from(head), p.len() as u32)
    );
    let got = r.guest_bytes(RX_BUFS, p.len());
    assert_eq!(got[..10], p[..10], "the header passes through");
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(frame(&got), frame(&p));
    // The interrupt comes last, after the frame was counted.
    r.wait_interrupt(RX_QUEUE);
    assert_eq!(r.counter(|c| &c.rx_packets), 1);
    assert_eq!(r.counter(|c| &c.rx_bytes), 100);
}

#[test]
fn without_mrg_rxbuf_num_buffers_is_one_and_each_frame_takes_one_chain() {
    let mut r = rig(0);
    // The header in its own descriptor, as a legacy-style driver might post it.
    r.post_rx(&[wo(RX_BUFS, 12), wo(RX_BUFS + 0x1000, 1600)]);
    r.post_rx(&[wo(RX_BUFS + 0x1_0000, 2048)]);
    let (a, b) = (packet(3, 1400), packet(4, 64));
    r.peer_send(&a);
    r.peer_send(&b);
    r.t.wait_used(RX_QUEUE, 2);
    let header = r.guest_bytes(RX_BUFS, 12);
    assert_eq!(num_buffers(&header), 1);
    assert_eq!(r.guest_bytes(RX_BUFS + 0x1000, 1400), frame(&a));
    assert_eq!(
        r.guest_bytes(RX_BUFS + 0x1_0000, b.len()),
        b[..10]
            .iter()
            .chain(&1u16.to_le_bytes())
            .chain(frame(&b))
            .copied()
            .collect::<Vec<u8>>()
    );
}

/// The guest queued `count` frames before kicking once: they all go out, and the guest is
/// interrupted once for the burst, not once per frame.
#[test]
fn a_burst_of_transmits_costs_the_guest_one_interrupt() {
    let mut r = rig(MRG);
    let count = 8u16;
    let packets: Vec<Vec<u8>> = (0..count).map(|i| packet(i as u8, 200)).collect();
    let mem = r.t.mem.clone();
    for (i, p) in packets.iter().enumerate() {
        let at = TX_BUFS + i as u64 * 0x1000;
        mem.write_slice(p, GuestAddress(at)).unwrap();
        let queue = &mut r.t.queues[TX_QUEUE];
        let head = queue.add_chain(&mem, &[ro(at, p.len() as u32)]);
        queue.publish(&mem, head);
    }
    r.t.queues[TX_QUEUE].kick();
    r.t.wait_used(TX_QUEUE, count);
    for p in &packets {
        assert_eq!(&r.peer_recv(Duration::from_secs(5)).unwrap(), p);
    }
    // The device counts the interrupt last, after raising it. The one kick was served in
    // one turn (fewer chains than a turn's budget), so no other interrupt can follow.
    r.wait_counter("the interrupt counted", |c| &c.interrupts, 1);
    assert_eq!(r.t.interrupt.used_count(TX_QUEUE), 1);
    assert_eq!(r.counter(|c| &c.interrupts), 1, "the stats count it");
}

/// Frames wait in the backend until the guest posts buffers for all of them at once: they
/// all land, and the guest is interrupted once for the burst, not once per frame.
#[test]
fn a_burst_of_received_frames_costs_the_guest_one_interrupt() {
    let mut r = rig(0);
    let count = 8u16;
    let packets: Vec<Vec<u8>> = (0..count).map(|i| packet(i as u8, 300)).collect();
    for p in &packets {
        r.peer_send(p);
    }
    // Let the device see the frames and find no buffers for them.
    std::thread::sleep(Duration::from_millis(50));
    let mem = r.t.mem.clone();
    for i in 0..count {
        let queue = &mut r.t.queues[RX_QUEUE];
        let head = queue.add_chain(&mem, &[wo(RX_BUFS + u64::from(i) * 0x1000, 2048)]);
        queue.publish(&mem, head);
    }
    r.t.queues[RX_QUEUE].kick();
    r.t.wait_used(RX_QUEUE, count);
    for (i, p) in packets.iter().enumerate() {
        let got = r.guest_bytes(RX_BUFS + i as u64 * 0x1000, p.len());
        assert_eq!(frame(&got), frame(p));
    }
    // The device counts the interrupt last, after raising it; all frames and buffers
    // were there for the one burst, so no other interrupt can follow.
    r.wait_counter("the interrupt counted", |c| &c.interrupts, 1);
    assert_eq!(r.t.interrupt.used_count(RX_QUEUE), 1);
    assert_eq!(r.counter(|c| &c.interrupts), 1, "the stats count it");
}

/// The statuses the VMM reads follow both queues: chains taken, chains used (a receive
/// buffer waiting for a frame is taken but not used), kicks and interrupts.
#[test]
fn queue_statuses_follow_transmits_and_receives() {
    let mut r = rig(0);
    let mem = r.t.mem.clone();
    for i in 0..3u16 {
        let at = TX_BUFS + u64::from(i) * 0x1000;
        let p = packet(i as u8, 100);
        mem.write_slice(&p, GuestAddress(at)).unwrap();
        let queue = &mut r.t.queues[TX_QUEUE];
        let head = queue.add_chain(&mem, &[ro(at, p.len() as u32)]);
        queue.publish(&mem, head);
    }
    r.t.queues[TX_QUEUE].kick();
    let tx = r.t.queues[TX_QUEUE].wait_status(&mem, "3 frames sent and an interrupt", |s| {
        s.device_used == 3 && s.interrupts == 1
    });
    assert_eq!(
        (tx.device_avail, tx.notifications, tx.broken),
        (3, 1, false)
    );
    assert_eq!(r.t.interrupt.used_count(TX_QUEUE), 1);

    // Two receive buffers, one frame: the second buffer waits in the device.
    r.post_rx(&[wo(RX_BUFS, 2048)]);
    r.post_rx(&[wo(RX_BUFS + 0x1_0000, 2048)]);
    r.peer_send(&packet(9, 64));
    let rx = r.t.queues[RX_QUEUE].wait_status(&mem, "1 frame received, 1 buffer held", |s| {
        (s.device_avail, s.device_used, s.notifications, s.interrupts) == (2, 1, 2, 1)
    });
    assert!(!rx.broken);
    assert_eq!(r.t.interrupt.used_count(RX_QUEUE), 1);
    assert_eq!(r.t.queues[TX_QUEUE].snapshot(&mem), tx, "TX did not move");
}

#[test]
fn a_frame_that_does_not_fit_is_dropped_and_counted_and_the_buffer_kept() {
    let mut r = rig(0);
    let head = r.post_rx(&[wo(RX_BUFS, 512)]);
    r.peer_send(&packet(20, 1000));
    wait_for("the drop", || r.counter(|c| &c.rx_dropped) == 1);
    assert_eq!(r.t.queues[RX_QUEUE].used_idx(r.mem()), 0);
    let p = packet(21, 100);
    r.peer_send(&p);
    r.t.wait_used(RX_QUEUE, 1);
    let mem = r.t.mem.clone();
    assert_eq!(
        r.t.queues[RX_QUEUE].used_elem(&mem, 0),
        (u32::from(head), p.len() as u32)
    );
    assert_eq!(frame(&r.guest_bytes(RX_BUFS, p.len())), frame(&p));
    r.wait_counter("the frame counted", |c| &c.rx_packets, 1);
    assert_eq!(r.counter(|c| &c.rx_packets), 1);
}

#[test]
fn with_mrg_rxbuf_a_frame_bigger_than_one_buffer_spans_several() {
    let mut r = rig(MRG);
    // Without receive offloads the device gathers room for a 1518-byte frame: two chains.
    let heads = [
        r.post_rx(&[wo(RX_BUFS, 1024)]),
        r.post_rx(&[wo(RX_BUFS + 0x1_0000, 1024)]),
        r.post_rx(&[wo(RX_BUFS + 0x2_0000, 1024)]),
    ];
    let p = packet(5, 1500);
    r.peer_send(&p);
    r.t.wait_used(RX_QUEUE, 2);
    let mem = r.t.mem.clone();
    let q = &r.t.queues[RX_QUEUE];
    assert_eq!(q.used_elem(&mem, 0), (u32::from(heads[0]), 1024));
    assert_eq!(q.used_elem(&mem, 1), (u32::from(heads[1]), 1512 - 1024));
    let mut got = r.guest_bytes(RX_BUFS, 1024);
    got.extend(r.guest_bytes(RX_BUFS + 0x1_0000, 1512 - 1024));
    assert_eq!(num_buffers(&got), 2);
    assert_eq!(frame(&got), frame(&p));

    // The chain the frame did not need is the first one the next frame gets.
    r.post_rx(&[wo(RX_BUFS + 0x3_0000, 1024)]);
    let small = packet(6, 50);
    r.peer_send(&small);
    r.t.wait_used(RX_QUEUE, 3);
    assert_eq!(
        r.t.queues[RX_QUEUE].used_elem(&mem, 2),
        (u32::from(heads[2]), small.len() as u32)
    );
    r.wait_counter("both frames counted", |c| &c.rx_packets, 2);
    assert_eq!(r.counter(|c| &c.rx_packets), 2);
    assert_eq!(r.counter(|c| &c.rx_dropped), 0);
}

#[test]
fn a_64k_gso_frame_spans_many_buffers_when_the_guest_takes_tso() {
    let mut r = rig_with(TAP_OFFLOADS, 64, None, "virtio-net-gso");
    r.t.start(MRG | GUEST_GSO);
    for i in 0..40 {
        r.post_rx(&[wo(RX_BUFS + i * 0x1000, 2048)]);
    }
    let p = packet(7, 60_000);
    r.peer_send(&p);
    let chains = p.len().div_ceil(2048) as u16;
    r.t.wait_used(RX_QUEUE, chains);
    let mut got = Vec::new();
    let mem = r.t.mem.clone();
    for i in 0..chains {
        let (_, len) = r.t.queues[RX_QUEUE].used_elem(&mem, i);
        got.extend(r.guest_bytes(RX_BUFS + u64::from(i) * 0x1000, len as usize));
    }
    assert_eq!(num_buffers(&got), chains);
    assert_eq!(frame(&got), frame(&p));
    // One frame, its bytes counted at once.
    r.wait_counter("the frame's bytes counted", |c| &c.rx_bytes, 1);
    assert_eq!(r.counter(|c| &c.rx_bytes), 60_000);
}

/// CPU time (user + system, in clock ticks) the thread called `name` has used.
fn thread_cpu_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the ")" that ends the name: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
    }
    panic!("no thread called {name}");
}

#[test]
fn without_rx_buffers_a_frame_waits_in_the_backend_and_nothing_spins() {
    let mut r = rig_with(0, common::QSIZE, None, "vnet-waits");
    r.t.start(MRG);
    let p = packet(8, 200);
    r.peer_send(&p);
    std::thread::sleep(Duration::from_millis(50));
    let before = thread_cpu_ticks("vnet-waits");
    std::thread::sleep(Duration::from_millis(500));
    let spent = thread_cpu_ticks("vnet-waits") - before;
    assert!(
        spent <= 5,
        "the worker used {spent} ticks while waiting for buffers"
    );
    assert_eq!(r.t.queues[RX_QUEUE].used_idx(r.mem()), 0);
    assert_eq!(r.counter(|c| &c.rx_dropped), 0);

    // A buffer too small for the frame alone is not enough: keep waiting.
    r.post_rx(&[wo(RX_BUFS, 128)]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.t.queues[RX_QUEUE].used_idx(r.mem()), 0);

    r.post_rx(&[wo(RX_BUFS + 0x1_0000, 2048)]);
    r.t.wait_used(RX_QUEUE, 2);
    let mut got = r.guest_bytes(RX_BUFS, 128);
    got.extend(r.guest_bytes(RX_BUFS + 0x1_0000, p.len() - 128));
    assert_eq!(frame(&got), frame(&p));
    assert_eq!(num_buffers(&got), 2);
    r.wait_counter("the frame counted", |c| &c.rx_packets, 1);
    assert_eq!(r.counter(|c| &c.rx_packets), 1);
    assert_eq!(r.counter(|c| &c.rx_dropped), 0);
}

#[test]
fn a_full_backend_holds_transmits_back_without_dropping_them() {
    let mut r = rig_with(0, 256, Some(4096), "virtio-net-full");
    r.t.start(MRG);
    let count = 64u16;
    let packets: Vec<Vec<u8>> = (0..count).map(|i| packet(i as u8, 1000)).collect();
    for (i, p) in packets.iter().enumerate() {
        r.guest_send(TX_BUFS + i as u64 * 0x1000, p);
    }
    std::thread::sleep(Duration::from_millis(100));
    let sent = r.t.queues[TX_QUEUE].used_idx(r.mem());
    assert!(
        sent < count,
        "the backend took all {sent} frames: make its buffer smaller"
    );
    assert_eq!(r.counter(|c| &c.tx_dropped), 0);
    for p in &packets {
        assert_eq!(&r.peer_recv(Duration::from_secs(5)).unwrap(), p);
    }
    r.t.wait_used(TX_QUEUE, count);
    assert_eq!(r.counter(|c| &c.tx_packets), u64::from(count));
    assert_eq!(r.counter(|c| &c.tx_dropped), 0);
}

#[test]
fn malformed_transmit_chains_are_rejected_and_counted_and_the_next_frame_still_goes() {
    let mut r = rig(MRG);
    let mem = r.t.mem.clone();
    let p = packet(9, 100);
    mem.write_slice(&p, GuestAddress(TX_BUFS)).unwrap();
    let q = &mut r.t.queues[TX_QUEUE];
    // Only a header.
    q.send(&mem, &[ro(TX_BUFS, 12)]);
    // A device-writable buffer.
    q.send(
        &mem,
        &[ro(TX_BUFS, p.len() as u32), wo(TX_BUFS + 0x1_0000, 64)],
    );
    // Bigger than a header and a 65550-byte frame.
    q.send(&mem, &[ro(TX_BUFS, 40_000), ro(TX_BUFS + 0x1_0000, 25_563)]);
    // Nothing readable at all.
    q.send(&mem, &[wo(TX_BUFS, 64)]);
    // And a good one.
    q.send(&mem, &[ro(TX_BUFS, p.len() as u32)]);
    r.t.wait_used(TX_QUEUE, 5);
    for i in 0..5 {
        assert_eq!(r.t.queues[TX_QUEUE].used_elem(&mem, i).1, 0);
    }
    assert_eq!(r.peer_recv(Duration::from_secs(5)).unwrap(), p);
    assert_eq!(r.peer_recv(Duration::from_millis(50)), None);
    assert_eq!(r.counter(|c| &c.invalid_chains), 4);
    assert_eq!(r.counter(|c| &c.tx_packets), 1);
    assert_eq!(r.counter(|c| &c.tx_dropped), 0);
    assert!(!r.t.interrupt.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn receive_chains_with_readable_or_tiny_buffers_are_handed_back_unused() {
    let mut r = rig(MRG);
    let bad = r.post_rx(&[ro(RX_BUFS, 16), wo(RX_BUFS + 0x1000, 2048)]);
    let tiny = r.post_rx(&[wo(RX_BUFS + 0x2000, 8)]);
    let good = r.post_rx(&[wo(RX_BUFS + 0x1_0000, 2048)]);
    let p = packet(10, 300);
    r.peer_send(&p);
    r.t.wait_used(RX_QUEUE, 3);
    let mem = r.t.mem.clone();
    let q = &r.t.queues[RX_QUEUE];
    assert_eq!(q.used_elem(&mem, 0), (u32::from(bad), 0));
    assert_eq!(q.used_elem(&mem, 1), (u32::from(tiny), 0));
    assert_eq!(q.used_elem(&mem, 2), (u32::from(good), p.len() as u32));
    assert_eq!(
        frame(&r.guest_bytes(RX_BUFS + 0x1_0000, p.len())),
        frame(&p)
    );
    assert_eq!(r.counter(|c| &c.invalid_chains), 2);
    r.wait_counter("the frame counted", |c| &c.rx_packets, 1);
    assert_eq!(r.counter(|c| &c.rx_packets), 1);
    assert!(!r.t.interrupt.needs_reset.load(Ordering::SeqCst));
}

/// Posts a two-descriptor loop on queue `index`.
fn post_loop(r: &mut Rig, index: usize, flags: u16) {
    let mem = r.t.mem.clone();
    let q = &mut r.t.queues[index];
    q.write_desc(&mem, 0, DATA, 64, flags | common::F_NEXT, 1);
    q.write_desc(&mem, 1, DATA + 64, 64, flags | common::F_NEXT, 0);
    q.post(&mem, 0);
}

#[test]
fn a_descriptor_loop_on_tx_needs_reset_and_the_device_survives() {
    let mut r = rig(MRG);
    post_loop(&mut r, TX_QUEUE, 0);
    r.t.wait_needs_reset();
    // The status says which queue it was.
    assert!(r.t.queues[TX_QUEUE].snapshot(r.mem()).broken);
    assert!(!r.t.queues[RX_QUEUE].snapshot(r.mem()).broken);
    // The device still answers its other queue and a reset.
    r.post_rx(&[wo(RX_BUFS + 0x1_0000, 2048)]);
    r.peer_send(&packet(11, 64));
    r.t.wait_used(RX_QUEUE, 1);
    r.t.device.reset();
}

#[test]
fn a_descriptor_loop_on_rx_needs_reset_and_the_device_survives() {
    let mut r = rig(MRG);
    post_loop(&mut r, RX_QUEUE, common::F_WRITE);
    r.t.wait_needs_reset();
    assert!(r.t.queues[RX_QUEUE].snapshot(r.mem()).broken);
    assert!(!r.t.queues[TX_QUEUE].snapshot(r.mem()).broken);
    // Frames from the network wait; transmit still works.
    r.peer_send(&packet(12, 64));
    let p = packet(13, 64);
    r.guest_send(TX_BUFS, &p);
    assert_eq!(r.peer_recv(Duration::from_secs(5)).unwrap(), p);
    r.t.device.reset();
}

#[test]
fn buffers_posted_before_activation_are_used() {
    let mut r = rig_with(0, common::QSIZE, None, "virtio-net-early");
    r.post_rx(&[wo(RX_BUFS, 2048)]);
    let p = packet(14, 64);
    r.guest_send(TX_BUFS, &p);
    r.peer_send(&packet(15, 64));
    r.t.start(MRG);
    r.t.wait_used(RX_QUEUE, 1);
    r.t.wait_used(TX_QUEUE, 1);
    assert_eq!(r.peer_recv(Duration::from_secs(5)).unwrap(), p);
}

#[test]
fn a_closed_backend_is_reported_and_the_device_keeps_going() {
    let mut r = rig(MRG);
    r.post_rx(&[wo(RX_BUFS, 2048)]);
    let Rig {
        t, peer, counters, ..
    } = &mut r;
    drop(std::mem::replace(peer, socketpair().0));
    // Transmits fail now; they are counted as dropped and handed back.
    let p = packet(16, 64);
    t.mem.write_slice(&p, GuestAddress(TX_BUFS)).unwrap();
    let mem = t.mem.clone();
    t.queues[TX_QUEUE].send(&mem, &[ro(TX_BUFS, p.len() as u32)]);
    t.wait_used(TX_QUEUE, 1);
    assert_eq!(counters.tx_dropped.load(Ordering::SeqCst), 1);
    t.device.reset();
}

// A real tap. Needs /dev/net/tun and CAP_NET_ADMIN; under CI both are required.

/// Whether the tap tests can run here; says why loudly when not, and fails under CI.
fn require_tun() -> bool {
    if Path::new("/dev/net/tun").exists() {
        return true;
    }
    let msg = "/dev/net/tun is missing: the real-tap tests cannot run";
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    false
}

/// A created tap, or `None` (said loudly; a failure under CI) without permission.
fn create_tap() -> Option<Tap> {
    match Tap::create("") {
        Ok(tap) => Some(tap),
        Err(e @ TapError::PermissionDenied { .. }) | Err(e @ TapError::OpenTun { .. })
            if std::env::var_os("CI").is_none() =>
        {
            eprintln!("\n*** SKIPPED: cannot create a tap: {e} ***\n");
            None
        }
        Err(e) => panic!("cannot create a tap: {e}"),
    }
}

fn sys_net(name: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{attr}"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn set_persist(fd: RawFd, on: bool) {
    // SAFETY: TUNSETPERSIST takes its argument by value; the descriptor is open.
    let ret = unsafe { libc::ioctl(fd, libc::TUNSETPERSIST as _, libc::c_ulong::from(on)) };
    assert_eq!(ret, 0, "TUNSETPERSIST: {}", std::io::Error::last_os_error());
}

#[test]
fn a_real_tap_is_created_configured_attached_by_name_and_removed() {
    if !require_tun() {
        return;
    }
    let Some(tap) = create_tap() else { return };
    let name = tap.name().to_owned();
    assert!(name.starts_with("vmm"), "{name}");
    assert_eq!(sys_net(&name, "tun_flags").as_deref(), Some("0x5002"));
    tap.set_vnet_hdr_size(12).unwrap();
    tap.set_offload(TAP_OFFLOADS).unwrap();
    // A /30 unlikely to be in use, from the pid.
    let third = (std::process::id() % 250) as u8;
    tap.set_ipv4(
        Ipv4Addr::new(10, 213, third, 1),
        Ipv4Addr::new(255, 255, 255, 252),
    )
    .unwrap();
    tap.up().unwrap();
    let flags = sys_net(&name, "flags").unwrap();
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
    assert_ne!(
        flags & libc::IFF_UP as u32,
        0,
        "{name} is not up: {flags:#x}"
    );

    // Attached: nobody else gets it, and creating it again is refused.
    assert!(matches!(Tap::open(&name), Err(TapError::Busy { .. })));
    assert!(matches!(Tap::create(&name), Err(TapError::Exists { .. })));

    // Made persistent and let go, it is an existing tap that open attaches.
    set_persist(tap.as_raw_fd(), true);
    drop(tap);
    let tap = Tap::open(&name).unwrap();
    assert_eq!(tap.name(), name);
    set_persist(tap.as_raw_fd(), false);
    drop(tap);
    wait_for("the tap to go away", || sys_net(&name, "flags").is_none());
}

#[test]
fn opening_a_missing_or_wrong_interface_says_what_is_wrong() {
    if !require_tun() {
        return;
    }
    let err = Tap::open("vmm-nosuch0").unwrap_err();
    assert!(matches!(err, TapError::NoSuchTap { .. }), "{err}");
    assert!(err.to_string().contains("vmm-nosuch0"), "{err}");
    // And it was not created as a side effect.
    assert_eq!(sys_net("vmm-nosuch0", "flags"), None);
    let err = Tap::open("lo").unwrap_err();
    assert!(matches!(err, TapError::NotATap { .. }), "{err}");
    let err = Tap::open("a/b").unwrap_err();
    assert!(matches!(err, TapError::InvalidName { .. }), "{err}");
}

#[test]
fn a_real_tap_carries_the_hosts_arp_request_to_the_guest() {
    if !require_tun() {
        return;
    }
    let Some(tap) = create_tap() else { return };
    let third = (std::process::id() % 250) as u8;
    let host = Ipv4Addr::new(10, 214, third, 1);
    tap.set_ipv4(host, Ipv4Addr::new(255, 255, 255, 252))
        .unwrap();
    tap.up().unwrap();
    let net = Net::new(tap, MAC, "virtio-net-tap", || {}).unwrap();
    let counters = net.counters();
    let mut t = TestDevice::inactive(net);
    let mem = t.mem.clone();
    for i in 0..16 {
        t.queues[RX_QUEUE].send(&mem, &[wo(RX_BUFS + i * 0x1000, 2048)]);
    }
    t.start(MRG | 1 << VIRTIO_NET_F_GUEST_CSUM);
    // Sending to the guest's address makes the host kernel ask for its MAC on the tap.
    let socket = UdpSocket::bind((host, 0)).unwrap();
    let guest = Ipv4Addr::new(10, 214, third, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0u16;
    loop {
        let _ = socket.send_to(b"hello", (guest, 9));
        std::thread::sleep(Duration::from_millis(20));
        let used = t.queues[RX_QUEUE].used_idx(&mem);
        let arp = (seen..used).any(|i| {
            let (_, len) = t.queues[RX_QUEUE].used_elem(&mem, i);
            let mut f = vec![0u8; len as usize];
            let (id, _) = t.queues[RX_QUEUE].used_elem(&mem, i);
            mem.read_slice(&mut f, GuestAddress(RX_BUFS + u64::from(id) * 0x1000))
                .unwrap();
            // Ethertype after the header and two MAC addresses.
            f.len() >= 12 + 14 && f[12 + 12..12 + 14] == [0x08, 0x06]
        });
        if arp {
            break;
        }
        seen = used;
        assert!(
            Instant::now() < deadline,
            "no ARP request reached the guest"
        );
    }
    // Counted after its chains were published.
    wait_for("the ARP request counted", || {
        counters.rx_packets.load(Ordering::SeqCst) >= 1
    });
    t.device.reset();
}
