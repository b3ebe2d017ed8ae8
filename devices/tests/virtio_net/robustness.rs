//! What a slow or hostile side does to the device: back-pressure both ways (no receive
//! buffers, a full backend), malformed transmit and receive chains, descriptor loops on
//! either queue, buffers posted before activation, and a backend that closes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{DATA, ro, wo};
use devices::virtio::VirtioDevice;
use devices::virtio::net::{RX_QUEUE, TX_QUEUE};
use vm_memory::{Bytes, GuestAddress};

use super::rig::*;

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
    let mut r = rig_with(0, crate::common::QSIZE, None, "vnet-waits");
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
    q.write_desc(&mem, 0, DATA, 64, flags | crate::common::F_NEXT, 1);
    q.write_desc(&mem, 1, DATA + 64, 64, flags | crate::common::F_NEXT, 0);
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
    post_loop(&mut r, RX_QUEUE, crate::common::F_WRITE);
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
    let mut r = rig_with(0, crate::common::QSIZE, None, "virtio-net-early");
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
