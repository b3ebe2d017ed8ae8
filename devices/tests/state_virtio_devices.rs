//! Snapshot records of virtio-balloon, virtio-net and virtio-console behind the PCI
//! transport, and the
//! worker's pause: bounded, undone by resume, and clear about device models without
//! snapshot support.

mod state_support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::console::{Console, HostInput, INPUT_CAPACITY};
use devices::virtio::net::{Net, PacketBackend};
use devices::virtio::worker::{ActiveDevice, DeviceWorker, PAUSE_TIMEOUT, Paused};
use devices::virtio::{Balloon, BalloonHandle, VirtioDevice, VirtioPciDevice};
use state_support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

// --- virtio-balloon: target, actual, statistics and the held statistics buffer. ---

const GUEST_PAGES: u64 = (MEM_SIZE as u64) / 4096;
const STATS_VQ: u64 = 1 << 1;

fn balloon(mem: &Arc<GuestMemoryMmap>) -> (VirtioPciDevice, BalloonHandle) {
    let b = Balloon::new(GUEST_PAGES, "balloon-state", || {}).unwrap();
    let handle = b.handle();
    (transport(Box::new(b), mem), handle)
}

#[test]
fn balloon_restore_keeps_target_stats_and_the_held_stats_buffer() {
    let mem = memory();
    let (mut a, handle) = balloon(&mem);
    let mut rings = set_up_queues(&mut a, 1 << 32 | STATS_VQ, 3);
    handle.set_target(100).unwrap();
    wr(&mut a, 0x2004, 40, 4); // the driver reports `actual`
    // The driver posts its statistics; the device holds the buffer until the host asks.
    let mut stats = Vec::new();
    for (tag, value) in [(4u16, 1u64 << 20), (5, 1 << 24)] {
        stats.extend_from_slice(&tag.to_le_bytes());
        stats.extend_from_slice(&value.to_le_bytes());
    }
    mem.write_slice(&stats, GuestAddress(BUF)).unwrap();
    let head = rings[2].publish(&mem, &[(BUF, stats.len() as u32, 0)]);
    a.notify_queue(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.latest_stats().is_none() {
        assert!(Instant::now() < deadline, "statistics never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let latest = handle.latest_stats();

    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);
    assert_eq!(ty.kind, 0x0145);

    let (mut b, handle2) = balloon(&mem);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    assert_eq!(handle2.target_pages(), 100);
    assert_eq!(handle2.actual_pages(), 40);
    assert_eq!(
        rd(&mut b, 0x2000, 4),
        100,
        "num_pages as the driver reads it"
    );
    assert_eq!(handle2.latest_stats(), latest);
    // The restored device holds the same buffer and hands it back on request.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rings[2].used_idx(&mem), 0);
    handle2.request_stats();
    rings[2].wait_used(&mem, 1);
    assert_eq!(rings[2].used_elem(&mem, 0), (u32::from(head), 0));
    rings.clear();

    // A target larger than the rebuilt guest is refused.
    let small = Balloon::new(10, "balloon-small", || {}).unwrap();
    let c = transport(Box::new(small), &mem);
    assert_eq!(
        c.check_state(&decode(ty, &bytes).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-balloon state: target 100 pages is more than this guest's 10 pages"
    );
}

#[test]
fn balloon_device_part_golden_bytes_and_refusals() {
    let mem = memory();
    let (mut a, handle) = balloon(&mem);
    handle.set_target(0xfe).unwrap();
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    // The device's part is last: target, actual, stats flag, tag mask, 10 values.
    let tail = &bytes[bytes.len() - 91..];
    let mut expected = vec![0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&[0; 80]);
    assert_eq!(tail, &expected[..]);
    let at = bytes.len() - 91;
    let mut bad = bytes.clone();
    bad[at + 8] = 0;
    bad[at + 9] = 0x01; // a tag without the statistics flag
    assert_eq!(
        decode(ty, &bad).unwrap_err().to_string(),
        "virtio-balloon state: statistics tag mask 0x0001 names tags that do not exist"
    );
    let mut bad = bytes.clone();
    bad[at + 8] = 1;
    bad[at + 10] = 0x04; // tag 10 does not exist
    assert_eq!(
        decode(ty, &bad).unwrap_err().to_string(),
        "virtio-balloon state: statistics tag mask 0x0400 names tags that do not exist"
    );
    let mut bad = bytes.clone();
    bad[at + 11] = 1; // swap_in absent but valued
    assert_eq!(
        decode(ty, &bad).unwrap_err().to_string(),
        "virtio-balloon state: statistics tag 0 is absent but has a value"
    );
}

// --- virtio-net: the MAC must match; acked offloads go back to the backend. ---

struct Backend {
    fd: OwnedFd,
    set_offload: Arc<Mutex<Vec<u32>>>,
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl PacketBackend for Backend {
    fn read_packet(&self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.fd.read_packet(bufs)
    }

    fn write_packet(&self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.fd.write_packet(bufs)
    }

    fn offloads(&self) -> u32 {
        // TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        0x1 | 0x2 | 0x4
    }

    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.set_offload.lock().unwrap().push(flags);
        Ok(())
    }
}

fn net(
    mem: &Arc<GuestMemoryMmap>,
    mac: [u8; 6],
) -> (VirtioPciDevice, Arc<Mutex<Vec<u32>>>, OwnedFd) {
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
    assert_eq!(ret, 0);
    // SAFETY: both were just created and nothing else owns them.
    let (dev_end, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let set_offload = Arc::new(Mutex::new(Vec::new()));
    let backend = Backend {
        fd: dev_end,
        set_offload: set_offload.clone(),
    };
    let dev = Net::new(backend, mac, "net-state", || {}).unwrap();
    (transport(Box::new(dev), mem), set_offload, peer)
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[test]
fn net_restore_reapplies_acked_offloads_and_refuses_another_mac() {
    let mem = memory();
    let (mut a, _, _peer) = net(&mem, MAC);
    // VERSION_1, MAC (5), MRG_RXBUF (15), GUEST_CSUM (1), GUEST_TSO4 (7).
    let features = 1 << 32 | 1 << 5 | 1 << 15 | 1 << 1 | 1 << 7;
    let _rings = set_up_queues(&mut a, features, 2);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);
    assert_eq!(ty.kind, 0x0141);
    // The device's part: MAC, then status LINK_UP.
    assert_eq!(
        &bytes[bytes.len() - 8..],
        &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x01, 0x00]
    );

    let (mut b, offloads, _peer2) = net(&mem, MAC);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while offloads.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "offloads never set");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Net::new clears them, the restored activation sets CSUM | TSO4 again.
    assert_eq!(*offloads.lock().unwrap(), vec![0, 0x1 | 0x2]);

    let (c, _, _peer3) = net(&mem, [0x52, 0x54, 0, 0, 0, 1]);
    assert_eq!(
        c.check_state(&decode(ty, &bytes).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-net state: saved MAC 52:54:00:12:34:56 and link status differ from this device's (MAC 52:54:00:00:00:01)"
    );
}

// --- virtio-console: both queues' positions and the host input still waiting. ---

/// A console output that keeps everything.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn console(mem: &Arc<GuestMemoryMmap>) -> (VirtioPciDevice, HostInput, Sink) {
    let sink = Sink::default();
    let dev = Console::new(Box::new(sink.clone()), "console-state", || {}).unwrap();
    let input = dev.input();
    (transport(Box::new(dev), mem), input, sink)
}

const RX_BUF: u64 = BUF;
const TX_BUF: u64 = BUF + 0x1000;

#[test]
fn console_restore_keeps_waiting_input_and_continues_both_rings() {
    let mem = memory();
    let (mut a, input, sink) = console(&mem);
    let mut rings = set_up_queues(&mut a, FEATURES, 2);
    // One chain each way before the snapshot.
    mem.write_slice(b"hi", GuestAddress(TX_BUF)).unwrap();
    rings[1].publish(&mem, &[(TX_BUF, 2, 0)]);
    a.notify_queue(1);
    rings[1].wait_used(&mem, 1);
    assert_eq!(*sink.0.lock().unwrap(), b"hi");
    rings[0].publish_write(&mem, RX_BUF, 64);
    a.notify_queue(0);
    assert_eq!(input.offer(b"abc"), 3);
    rings[0].wait_used(&mem, 1);
    // Then input with no receive buffer posted: it waits in the device.
    assert_eq!(input.offer(b"xyz"), 3);

    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);
    assert_eq!(ty.kind, 0x0143);
    // The device's part is last: the waiting input's length, then the bytes.
    assert_eq!(&bytes[bytes.len() - 7..], &[3, 0, 0, 0, b'x', b'y', b'z']);
    let state = decode(ty, &bytes).unwrap();
    let positions: Vec<_> = state
        .queues
        .iter()
        .map(|q| (q.next_avail, q.next_used))
        .collect();
    assert_eq!(positions, vec![(1, 1), (1, 1)]);

    let (mut b, input2, sink2) = console(&mem);
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    assert_eq!(input2.pending(), 3);
    // The rings go on where they were: the second chain of each queue is the next one.
    mem.write_slice(b"on", GuestAddress(TX_BUF)).unwrap();
    rings[1].publish(&mem, &[(TX_BUF, 2, 0)]);
    b.notify_queue(1);
    rings[1].wait_used(&mem, 2);
    assert_eq!(*sink2.0.lock().unwrap(), b"on");
    let head = rings[0].publish_write(&mem, RX_BUF + 64, 64);
    b.notify_queue(0);
    rings[0].wait_used(&mem, 2);
    assert_eq!(rings[0].used_elem(&mem, 1), (u32::from(head), 3));
    let mut got = [0u8; 3];
    mem.read_slice(&mut got, GuestAddress(RX_BUF + 64)).unwrap();
    assert_eq!(&got, b"xyz");
    assert_eq!(input2.pending(), 0);
}

#[test]
fn console_device_part_refusals() {
    let mem = memory();
    let (mut a, input, _sink) = console(&mem);
    assert_eq!(input.offer(&[b'q'; INPUT_CAPACITY]), INPUT_CAPACITY);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    let at = bytes.len() - 4 - INPUT_CAPACITY;
    assert_eq!(&bytes[at..at + 4], &(INPUT_CAPACITY as u32).to_le_bytes());
    assert!(decode(ty, &bytes).is_ok(), "a full input buffer is fine");
    // One byte more than the device holds.
    let mut bad = bytes.clone();
    bad[at..at + 4].copy_from_slice(&(INPUT_CAPACITY as u32 + 1).to_le_bytes());
    bad.push(b'q');
    assert_eq!(
        decode(ty, &bad).unwrap_err().to_string(),
        "virtio-console state: 4097 bytes of pending input, more than the 4096 it holds"
    );
    // A length past the end of the record, and bytes left over.
    let mut bad = bytes.clone();
    bad[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
    bad.truncate(at + 4 + 50);
    assert!(decode(ty, &bad).is_err());
    let mut bad = bytes.clone();
    bad.push(0);
    assert!(decode(ty, &bad).is_err());
    // Another device's record is refused by the console.
    let rng_state = {
        let mut r = rng(&mem);
        r.pause().unwrap();
        r.save_state().unwrap()
    };
    let (b, _, _) = console(&mem);
    assert_eq!(
        b.check_state(&rng_state).unwrap_err().to_string(),
        "virtio-console state: the record is a virtio-rng's, this device is a virtio-console"
    );
}

// --- The worker's pause: bounded, and clear about devices that cannot be saved. ---

/// An active device that spends `busy` in each event, and cannot describe its queues.
struct Slow {
    evt: EventFd,
    busy: Duration,
    /// Written when the long request starts.
    started: EventFd,
}

impl ActiveDevice for Slow {
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![(self.evt.as_raw_fd(), 0)]
    }

    fn start(&mut self) {}

    fn handle_event(&mut self, _token: u32) {
        let _ = self.evt.read();
        self.started.write(1).unwrap();
        std::thread::sleep(self.busy);
    }
}

#[test]
fn pause_waits_for_the_request_in_progress_within_a_bound() {
    let worker = DeviceWorker::spawn("slow-worker", || {}).unwrap();
    assert_eq!(worker.pause().unwrap(), Paused::Inactive);
    worker.resume().unwrap();

    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let started = EventFd::new(0).unwrap();
    let busy = PAUSE_TIMEOUT + Duration::from_millis(500);
    worker
        .activate(Box::new(Slow {
            evt: evt.try_clone().unwrap(),
            busy,
            started: started.try_clone().unwrap(),
        }))
        .unwrap();
    evt.write(1).unwrap();
    started.read().unwrap(); // blocks until the worker is in its long request
    let started = Instant::now();
    let err = worker.pause().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(err.to_string(), "the slow-worker worker did not answer");
    assert!(started.elapsed() < busy, "the wait is bounded");
    // Undone by a resume; a later pause gets through once the request is done, and a
    // device without snapshot support says so.
    worker.resume().unwrap();
    assert_eq!(worker.pause().unwrap(), Paused::Unsupported);
    worker.resume().unwrap();
}

#[test]
fn a_device_model_without_snapshot_hooks_is_refused_by_name() {
    struct Plain;
    impl VirtioDevice for Plain {
        fn device_type(&self) -> u32 {
            // virtio-gpu: a type with no snapshot support here.
            16
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn ack_features(&mut self, _features: u64) {}
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: Arc<GuestMemoryMmap>,
            _interrupt: Arc<dyn devices::virtio::Interrupt>,
            _queues: Vec<devices::virtio::ActiveQueue>,
        ) -> Result<(), devices::virtio::ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn quiesced(&self) -> bool {
            true
        }
    }
    let mem = memory();
    let mut dev = transport(Box::new(Plain), &mem);
    Ring::set_up(&mut dev);
    assert_eq!(
        dev.pause().unwrap_err().to_string(),
        "virtio device does not support snapshots"
    );
}

#[test]
fn a_paused_net_device_sends_nothing_until_resumed() {
    let mem = memory();
    let (mut a, _, peer) = net(&mem, MAC);
    let mut rings = set_up_queues(&mut a, 1 << 32 | 1 << 5, 2);
    a.pause().unwrap();
    let frame: Vec<u8> = (0..12).map(|_| 0).chain(0..60u8).collect();
    mem.write_slice(&frame, GuestAddress(BUF)).unwrap();
    rings[1].publish(&mem, &[(BUF, frame.len() as u32, 0)]);
    a.notify_queue(1);
    let mut got = [0u8; 256];
    let recv = |buf: &mut [u8]| {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, valid for the call.
        unsafe {
            libc::recv(
                peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        }
    };
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(recv(&mut got), -1, "nothing sent while paused");
    a.resume().unwrap();
    rings[1].wait_used(&mem, 1);
    let n = recv(&mut got);
    assert!(n >= 60, "the frame went out after the resume ({n})");
    assert_eq!(&got[n as usize - 60..n as usize], &frame[12..]);
}
