//! The device worker through a real device (virtio-rng) and the queue-level test driver:
//! activation serves buffers posted before the first notification, reset really stops the
//! device, and a malformed queue is reported once and then left alone.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{DATA, TestDevice, wo};
use devices::virtio::{Rng, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

#[test]
fn buffers_posted_before_activation_are_served_without_a_notification() {
    let mut t = TestDevice::inactive(Rng::new().unwrap());
    let head = t.queues[0].add_chain(&t.mem, &[wo(DATA, 32)]);
    t.queues[0].publish(&t.mem, head);
    t.start(0);
    t.wait_used(0, 1);
    assert_eq!(t.queues[0].used_elem(&t.mem, 0), (u32::from(head), 32));
}

#[test]
fn reset_stops_serving_the_queue() {
    let mut t = TestDevice::activate(Rng::new().unwrap(), 0);
    t.queues[0].send(&t.mem, &[wo(DATA, 16)]);
    t.wait_used(0, 1);
    t.device.reset();
    t.queues[0].send(&t.mem, &[wo(DATA + 0x100, 16)]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        t.queues[0].used_idx(&t.mem),
        1,
        "a reset device served a request"
    );
    let mut untouched = [0u8; 16];
    t.mem
        .read_slice(&mut untouched, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(untouched, [0u8; 16]);
}

#[test]
fn malformed_chain_is_reported_once_and_the_queue_left_alone() {
    let mut t = TestDevice::activate(Rng::new().unwrap(), 0);
    // Descriptor 0 points at itself: a loop.
    t.queues[0].write_desc(&t.mem, 0, DATA, 16, common::F_NEXT | common::F_WRITE, 0);
    t.queues[0].post(&t.mem, 0);
    t.wait_needs_reset();
    // Later valid work is not served until reset.
    t.interrupt.needs_reset.store(false, Ordering::SeqCst);
    t.queues[0].send(&t.mem, &[wo(DATA, 16)]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(t.queues[0].used_idx(&t.mem), 0);
    assert!(!t.interrupt.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn a_full_queue_is_served_in_bounded_turns_and_completely() {
    use devices::virtio::worker::MAX_CHAINS_PER_WAKE;
    // More chains than one turn serves, posted with a single notification: the worker
    // serves one turn, notifies itself, and serves the rest.
    let size = 256;
    let total = u16::try_from(MAX_CHAINS_PER_WAKE * 3).unwrap();
    assert!(total <= size);
    let mut t = TestDevice::inactive_sized(Rng::new().unwrap(), size);
    for n in 0..total {
        let head = t.queues[0].add_chain(&t.mem, &[wo(DATA + 64 * u64::from(n), 16)]);
        t.queues[0].publish(&t.mem, head);
    }
    t.start(0);
    t.wait_used(0, total);
    for n in 0..total {
        assert_eq!(t.queues[0].used_elem(&t.mem, n), (u32::from(n), 16));
    }
}

#[test]
fn chains_holding_more_than_a_turns_bytes_are_served_over_several_turns() {
    use devices::virtio::worker::MAX_BYTES_PER_WAKE;
    // Three chains of 8 MiB buffers (rng fills only the start of each): far fewer chains
    // than a turn may serve, but one and a half times the bytes. The first turn stops once it has served
    // MAX_BYTES_PER_WAKE and the worker comes back for the rest through its own
    // notification, which the queue's status counts.
    const CHAIN: u32 = 8 << 20;
    assert_eq!(MAX_BYTES_PER_WAKE, 2 * u64::from(CHAIN));
    let mut t = TestDevice::inactive(Rng::new().unwrap());
    for _ in 0..3 {
        let head = t.queues[0].add_chain(&t.mem, &[wo(DATA, CHAIN)]);
        t.queues[0].publish(&t.mem, head);
    }
    t.start(0);
    t.wait_used(0, 3);
    let status = t.queues[0].wait_status(&t.mem, "the second turn", |s| s.notifications >= 1);
    assert_eq!(status.notifications, 1, "one turn more: {status:?}");
}
