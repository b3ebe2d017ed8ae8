//! virtio-console through the queue-level test driver: guest output reaches the sink and is
//! counted, host input fills the receive buffers the driver posts (and waits, bounded, while
//! none is posted), garbage chains are handled without a panic or a hang, and a reset
//! device comes back with the input that was waiting.

mod common;

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DATA, F_NEXT, MEM_SIZE, TestDevice, ro, wo};
use devices::virtio::console::{Console, INPUT_CAPACITY, MAX_BYTES_PER_CHAIN, RECEIVEQ, TRANSMITQ};
use devices::virtio::{VIRTIO_ID_CONSOLE, VIRTIO_RING_F_EVENT_IDX, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

/// An output sink that keeps what it gets, taking at most `limit` bytes in all (then
/// refusing, as a full `ConsoleOutput` does).
#[derive(Clone)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl Sink {
    fn new(limit: usize) -> Sink {
        Sink {
            bytes: Arc::new(Mutex::new(Vec::new())),
            limit,
        }
    }

    fn got(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = self.bytes.lock().unwrap();
        let room = self.limit.saturating_sub(bytes.len());
        if room == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(room);
        bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn console(limit: usize) -> (Console, Sink) {
    let sink = Sink::new(limit);
    let device = Console::new(Box::new(sink.clone()), "test-console", || {}).unwrap();
    (device, sink)
}

#[test]
fn the_device_is_a_console_with_two_queues_and_no_features() {
    let (device, _) = console(usize::MAX);
    assert_eq!(device.device_type(), VIRTIO_ID_CONSOLE);
    assert_eq!(device.queue_max_sizes().len(), 2);
    assert_eq!(device.features(), 0);
    let mut config = [0xffu8; 16];
    device.read_config(0, &mut config);
    assert_eq!(config, [0u8; 16]);
}

#[test]
fn a_transmit_chain_reaches_the_output_and_is_counted() {
    let (device, sink) = console(usize::MAX);
    let counters = device.counters();
    let mut t = TestDevice::activate(device, 0);
    t.mem.write_slice(b"hello, ", GuestAddress(DATA)).unwrap();
    t.mem
        .write_slice(b"hvc0\n", GuestAddress(DATA + 0x1000))
        .unwrap();

    t.queues[TRANSMITQ].send(&t.mem, &[ro(DATA, 7), ro(DATA + 0x1000, 5)]);
    t.wait_used(TRANSMITQ, 1);

    assert_eq!(sink.got(), b"hello, hvc0\n");
    assert_eq!(
        t.queues[TRANSMITQ].used_elem(&t.mem, 0).1,
        0,
        "nothing written"
    );
    assert_eq!(counters.bytes_out.load(Ordering::Relaxed), 12);
    assert_eq!(counters.bytes_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn output_the_sink_refuses_is_dropped_and_counted_without_blocking() {
    let (device, sink) = console(10);
    let counters = device.counters();
    let mut t = TestDevice::activate(device, 0);
    t.mem.write_slice(&[b'x'; 64], GuestAddress(DATA)).unwrap();

    t.queues[TRANSMITQ].send(&t.mem, &[ro(DATA, 64)]);
    t.queues[TRANSMITQ].send(&t.mem, &[ro(DATA, 64)]);
    t.wait_used(TRANSMITQ, 2);

    assert_eq!(sink.got().len(), 10);
    assert_eq!(counters.bytes_out.load(Ordering::Relaxed), 10);
    assert_eq!(counters.bytes_dropped.load(Ordering::Relaxed), 118);
}

#[test]
fn a_transmit_chain_past_the_per_chain_bound_is_cut_and_the_rest_counted_dropped() {
    let (device, sink) = console(usize::MAX);
    let counters = device.counters();
    let mut t = TestDevice::activate(device, 0);
    let len = MAX_BYTES_PER_CHAIN * 3;
    assert!(DATA + u64::from(len) < MEM_SIZE as u64);

    t.queues[TRANSMITQ].send(&t.mem, &[ro(DATA, len)]);
    t.wait_used(TRANSMITQ, 1);

    assert_eq!(sink.got().len(), MAX_BYTES_PER_CHAIN as usize);
    assert_eq!(
        counters.bytes_dropped.load(Ordering::Relaxed),
        u64::from(len - MAX_BYTES_PER_CHAIN)
    );
}

#[test]
fn a_write_only_descriptor_on_the_transmit_queue_is_returned_unread_and_counted() {
    let (device, sink) = console(usize::MAX);
    let counters = device.counters();
    let mut t = TestDevice::activate(device, 0);
    t.mem.write_slice(b"secret", GuestAddress(DATA)).unwrap();

    t.queues[TRANSMITQ].send(&t.mem, &[wo(DATA, 6)]);
    t.wait_used(TRANSMITQ, 1);
    t.mem
        .write_slice(b"ok", GuestAddress(DATA + 0x100))
        .unwrap();
    t.queues[TRANSMITQ].send(&t.mem, &[ro(DATA + 0x100, 2)]);
    t.wait_used(TRANSMITQ, 2);

    assert_eq!(sink.got(), b"ok", "the device goes on after a bad chain");
    assert_eq!(counters.invalid_chains.load(Ordering::Relaxed), 1);
    assert!(!t.interrupt.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn out_of_ram_and_huge_buffers_make_the_device_ask_for_a_reset_not_panic() {
    for (addr, len) in [
        (MEM_SIZE as u64 - 4, 16),
        (u64::MAX - 8, 16),
        (DATA, u32::MAX),
        (1 << 40, 4096),
    ] {
        let (device, sink) = console(usize::MAX);
        let mut t = TestDevice::activate(device, 0);
        t.queues[TRANSMITQ].send(&t.mem, &[ro(addr, len)]);
        t.wait_needs_reset();
        assert!(sink.got().is_empty(), "{addr:#x}+{len}: nothing sent");

        // The receive queue's garbage is handled the same way.
        let (device, _) = console(usize::MAX);
        let input = device.input();
        let mut t = TestDevice::activate(device, 0);
        assert_eq!(input.offer(b"x"), 1);
        t.queues[RECEIVEQ].send(&t.mem, &[wo(addr, len)]);
        t.wait_needs_reset();
    }
}

#[test]
fn a_descriptor_loop_makes_the_device_ask_for_a_reset() {
    let (device, _) = console(usize::MAX);
    let mut t = TestDevice::activate(device, 0);
    t.queues[TRANSMITQ].write_desc(&t.mem, 0, DATA, 16, F_NEXT, 0);
    t.queues[TRANSMITQ].post(&t.mem, 0);
    t.wait_needs_reset();
}

#[test]
fn host_input_fills_a_posted_receive_buffer() {
    let (device, _) = console(usize::MAX);
    let input = device.input();
    let counters = device.counters();
    let mut t = TestDevice::activate(device, 0);
    t.queues[RECEIVEQ].send(&t.mem, &[wo(DATA, 64)]);

    assert_eq!(input.offer(b"echo hi\r"), 8);
    t.wait_used(RECEIVEQ, 1);

    let (_, len) = t.queues[RECEIVEQ].used_elem(&t.mem, 0);
    assert_eq!(len, 8);
    let mut got = [0u8; 8];
    t.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got, b"echo hi\r");
    assert_eq!(counters.bytes_in.load(Ordering::Relaxed), 8);
    assert_eq!(input.pending(), 0);
    assert!(t.interrupt.used_count(RECEIVEQ) >= 1, "the driver was told");
    assert_eq!(
        input.room().read().unwrap(),
        1,
        "the host side was told there is room"
    );
}

#[test]
fn input_larger_than_one_buffer_spreads_over_the_posted_buffers() {
    let (device, _) = console(usize::MAX);
    let input = device.input();
    let mut t = TestDevice::activate(device, VIRTIO_RING_F_EVENT_IDX_BIT);
    t.queues[RECEIVEQ].send(&t.mem, &[wo(DATA, 4)]);
    t.queues[RECEIVEQ].send(&t.mem, &[wo(DATA + 0x100, 2), wo(DATA + 0x200, 8)]);

    assert_eq!(input.offer(b"0123456789ab"), 12);
    t.wait_used(RECEIVEQ, 2);

    assert_eq!(t.queues[RECEIVEQ].used_elem(&t.mem, 0).1, 4);
    assert_eq!(t.queues[RECEIVEQ].used_elem(&t.mem, 1).1, 8);
    let mut got = [0u8; 6];
    t.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x200))
        .unwrap();
    assert_eq!(&got, b"6789ab");
}

const VIRTIO_RING_F_EVENT_IDX_BIT: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

#[test]
fn with_no_buffer_posted_input_waits_bounded_and_arrives_once_one_is() {
    let (device, _) = console(usize::MAX);
    let input = device.input();
    let mut t = TestDevice::activate(device, VIRTIO_RING_F_EVENT_IDX_BIT);

    let offered = vec![b'k'; INPUT_CAPACITY + 100];
    assert_eq!(
        input.offer(&offered),
        INPUT_CAPACITY,
        "the rest stays with the host"
    );
    assert_eq!(input.offer(b"more"), 0, "a full input refuses");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        input.pending(),
        INPUT_CAPACITY,
        "nothing lost while no buffer is posted"
    );

    t.queues[RECEIVEQ].send(&t.mem, &[wo(DATA, INPUT_CAPACITY as u32)]);
    t.wait_used(RECEIVEQ, 1);

    assert_eq!(
        t.queues[RECEIVEQ].used_elem(&t.mem, 0).1,
        INPUT_CAPACITY as u32
    );
    assert_eq!(input.pending(), 0);
    assert_eq!(input.offer(b"more"), 4, "room again");
}

#[test]
fn a_receive_chain_without_a_writable_buffer_is_returned_empty_and_counted() {
    let (device, _) = console(usize::MAX);
    let input = device.input();
    let counters = device.counters();
    let mut t = TestDevice::activate(device, 0);
    input.offer(b"abc");

    t.queues[RECEIVEQ].send(&t.mem, &[ro(DATA, 16)]);
    t.wait_used(RECEIVEQ, 1);
    t.queues[RECEIVEQ].send(&t.mem, &[wo(DATA + 0x100, 16)]);
    t.wait_used(RECEIVEQ, 2);

    assert_eq!(t.queues[RECEIVEQ].used_elem(&t.mem, 0).1, 0);
    assert_eq!(
        t.queues[RECEIVEQ].used_elem(&t.mem, 1).1,
        3,
        "the input waited for it"
    );
    assert_eq!(counters.invalid_chains.load(Ordering::Relaxed), 1);
}

#[test]
fn input_offered_before_activation_and_across_a_reset_reaches_the_new_driver() {
    let (device, sink) = console(usize::MAX);
    let input = device.input();
    assert_eq!(input.offer(b"early"), 5, "taken before any driver");
    let mut t = TestDevice::inactive(device);
    t.queues[RECEIVEQ].add_chain(&t.mem, &[wo(DATA, 3)]);
    t.queues[RECEIVEQ].publish(&t.mem, 0);
    t.start(0);
    t.wait_used(RECEIVEQ, 1);
    assert_eq!(input.pending(), 2, "two bytes wait for the next buffer");

    t.restart(0);
    assert_eq!(input.pending(), 2, "a reset keeps the user's input");
    t.queues[RECEIVEQ].send(&t.mem, &[wo(DATA + 0x100, 16)]);
    t.wait_used(RECEIVEQ, 1);
    let mut got = [0u8; 2];
    t.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&got, b"ly");

    t.mem
        .write_slice(b"after", GuestAddress(DATA + 0x200))
        .unwrap();
    t.queues[TRANSMITQ].send(&t.mem, &[ro(DATA + 0x200, 5)]);
    t.wait_used(TRANSMITQ, 1);
    assert_eq!(sink.got(), b"after", "transmit works after the reset");
}

#[test]
fn a_reset_device_serves_nothing_until_reactivated() {
    let (device, sink) = console(usize::MAX);
    let mut t = TestDevice::activate(device, 0);
    t.device.reset();
    t.mem.write_slice(b"late", GuestAddress(DATA)).unwrap();
    t.queues[TRANSMITQ].send(&t.mem, &[ro(DATA, 4)]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(t.queues[TRANSMITQ].used_idx(&t.mem), 0);
    assert!(sink.got().is_empty());
}

#[test]
fn a_full_transmit_queue_is_served_completely_over_bounded_turns() {
    let (device, sink) = console(usize::MAX);
    let mut t = TestDevice::inactive_sized(device, 256);
    t.mem.write_slice(b"y", GuestAddress(DATA)).unwrap();
    for _ in 0..256 {
        let head = t.queues[TRANSMITQ].add_chain(&t.mem, &[ro(DATA, 1)]);
        t.queues[TRANSMITQ].publish(&t.mem, head);
    }
    t.start(0);
    t.wait_used(TRANSMITQ, 256);
    assert_eq!(sink.got().len(), 256);
}
