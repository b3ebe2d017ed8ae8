//! Traffic both ways over the socketpair backend: the features and config a guest sees,
//! the offloads the backend learns, frames from the guest to the network and back,
//! `num_buffers` with and without mergeable receive buffers, frames spanning several
//! buffers, one interrupt per burst, queue statuses and the counters.

use std::time::Duration;

use crate::common::{ro, wait_for, wo};
use devices::virtio::net::tap::TAP_OFFLOADS;
use devices::virtio::net::{
    NET_QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
};
use devices::virtio::{VIRTIO_ID_NET, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

use super::rig::*;

#[test]
fn features_and_config_describe_a_nic_with_the_backends_offloads() {
    let r = rig_with(TAP_OFFLOADS, crate::common::QSIZE, None, "virtio-net-cfg");
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

    let plain = rig_with(0, crate::common::QSIZE, None, "virtio-net-cfg0");
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
