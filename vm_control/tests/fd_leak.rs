//! No descriptor leaks: descriptors that come with a rejected request, surplus descriptors the
//! kernel could not deliver, and the descriptor of a valid request once dropped, all end up
//! closed. This file holds a single test so that no concurrent test changes the count of
//! /proc/self/fd while it is measured.

use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};

use vm_control::server::{Connection, Received};
use vm_control::socket::{self, MAX_FDS, recv_datagram, send_datagram, seqpacket_pair};
use vm_control::wire::{DecodeError, REQUEST_SIZE, Request};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn files(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| std::fs::File::open("/dev/null").expect("open").into())
        .collect()
}

fn send_with(client: &OwnedFd, bytes: &[u8], n: usize) {
    let fds = files(n);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    send_datagram(client.as_fd(), bytes, &borrowed, false).expect("send");
    // Our copies are closed here; only the in-flight copies remain.
}

fn id(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("non-zero")
}

#[test]
fn no_descriptor_leaks_from_extra_rejected_or_undeliverable_fds() {
    let (server, client) = seqpacket_pair().expect("socketpair");
    let mut conn = Connection::new(server).expect("connection");
    let baseline = open_fds();

    // Extra descriptors with a request that takes none: rejected and closed at once.
    send_with(&client, &Request::Pause.encode(id(1)), MAX_FDS);
    match conn.recv_request().expect("ok").expect("datagram") {
        Received::Rejected(e) => assert_eq!(e, DecodeError::UnexpectedFd { received: MAX_FDS }),
        Received::Request(r) => panic!("accepted {r:?}"),
    }
    assert_eq!(open_fds(), baseline, "after extra fds");

    // Two descriptors with RegisterMemory (takes one): both closed.
    send_with(
        &client,
        &Request::RegisterMemory { size: 4096 }.encode(id(2)),
        2,
    );
    assert!(matches!(
        conn.recv_request().expect("ok").expect("datagram"),
        Received::Rejected(DecodeError::UnexpectedFd { received: 2 })
    ));
    assert_eq!(open_fds(), baseline, "after two fds");

    // Descriptors with a malformed datagram: closed too.
    send_with(&client, &[0u8; 7], 3);
    assert!(matches!(
        conn.recv_request().expect("ok").expect("datagram"),
        Received::Rejected(DecodeError::BadSize { received: 7, .. })
    ));
    assert_eq!(open_fds(), baseline, "after malformed datagram with fds");

    // More descriptors than the receiver has room for: the kernel discards the surplus
    // (MSG_CTRUNC) and the ones delivered are owned, so dropping them closes everything.
    send_with(&client, &Request::Pause.encode(id(3)), 5);
    let mut buf = [0u8; REQUEST_SIZE];
    match recv_datagram(conn.as_fd(), &mut buf, 2, false).expect("recv") {
        socket::Received::Datagram(d) => {
            assert!(d.fds_truncated);
            assert_eq!(d.fds.len(), 2);
        }
        socket::Received::HungUp => panic!("hung up"),
    }
    assert_eq!(open_fds(), baseline, "after truncated control data");

    // A valid RegisterMemory: exactly one descriptor is handed over, closed when dropped.
    send_with(
        &client,
        &Request::RegisterMemory { size: 4096 }.encode(id(4)),
        1,
    );
    let Received::Request(req) = conn.recv_request().expect("ok").expect("datagram") else {
        panic!("rejected a valid RegisterMemory");
    };
    assert!(req.fd.is_some());
    assert_eq!(open_fds(), baseline + 1, "the delivered fd is open");
    drop(req);
    assert_eq!(open_fds(), baseline, "after dropping the delivered fd");

    // The error replies were queued or sent, never blocking anything.
    drop(client);
    assert_eq!(open_fds(), baseline - 1, "only the client end closed");
}
