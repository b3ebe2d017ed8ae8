//! Fuzzes the control-request path a VMM exposes to every local client.
//!
//! The first input byte chooses how many descriptors (0..=3) travel with the datagram; the rest
//! is the datagram. Each input goes through the pure decoder and then through a real
//! `SOCK_SEQPACKET` socketpair into `Connection::recv_request`, checking that:
//! * nothing panics;
//! * an accepted request re-encodes to exactly the bytes received;
//! * the socket path agrees with the pure decoder plus the descriptor check;
//! * every rejection queues an error reply that decodes, and no descriptor leaks.
//!
//! Run with `cargo +nightly fuzz run control_request` from `vm_control/fuzz`.

#![no_main]

use std::os::fd::{AsFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use vm_control::server::{Connection, Received};
use vm_control::socket::{self, recv_datagram, send_datagram};
use vm_control::wire::{self, RESPONSE_SIZE, Request, ServerMessage};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datagram)) = data.split_first() else {
        return;
    };
    let fd_count = usize::from(selector % 4);

    // The pure decoder.
    let expected = Request::decode(datagram);
    match &expected {
        Ok((id, request)) => {
            // Accepted in every supported version: canonical in the datagram's own.
            let version = u16::from_le_bytes([datagram[0], datagram[1]]);
            let mut canonical = request.encode_in(*id, version);
            if *request == Request::GetVersion {
                canonical[..2].copy_from_slice(&datagram[..2]);
            }
            assert_eq!(&canonical[..], datagram);
        }
        Err(e) => {
            let reply = wire::reject(datagram, e).encode();
            assert!(ServerMessage::decode(&reply).is_ok());
        }
    }

    // The socket path, with descriptors. Datagrams larger than the default socket buffer cannot
    // be sent at all; they say nothing new about the receiver.
    if datagram.len() > 64 * 1024 {
        return;
    }
    let before = open_fds();
    {
        let (server, client) = socket::seqpacket_pair().expect("socketpair");
        let mut conn = Connection::new(server).expect("connection");
        let files: Vec<OwnedFd> = (0..fd_count)
            .map(|_| std::fs::File::open("/dev/null").expect("/dev/null").into())
            .collect();
        let borrowed: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        send_datagram(client.as_fd(), datagram, &borrowed, false).expect("send");
        drop(files);

        let received = conn
            .recv_request()
            .expect("bad input never kills the connection")
            .expect("the datagram is waiting");
        let with_fds = expected.and_then(|(id, request)| {
            wire::check_fds(&request, fd_count).map(|()| (id, request))
        });
        match (received, with_fds) {
            (Received::Request(got), Ok((id, request))) => {
                assert_eq!((got.id, got.request), (id, request));
                assert_eq!(got.fd.is_some(), request.fds_expected() == 1);
            }
            (Received::Rejected(got), Err(e)) => {
                assert_eq!(got, e);
                let mut buf = [0u8; RESPONSE_SIZE];
                match recv_datagram(client.as_fd(), &mut buf, 0, false).expect("reply") {
                    socket::Received::Datagram(d) => assert_eq!(d.len, RESPONSE_SIZE),
                    socket::Received::HungUp => panic!("no error reply"),
                }
                assert!(ServerMessage::decode(&buf).is_ok());
            }
            (got, want) => panic!("socket path {got:?} disagrees with decoder {want:?}"),
        }
    }
    assert_eq!(open_fds(), before, "descriptor leak");
});
