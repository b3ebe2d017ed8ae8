//! What the socket-level server tests share: request ids, a server `Connection` on a
//! socketpair with its raw client end, reading its replies, expecting a rejection and its
//! error reply, checking the connection still serves, and a descriptor to hand over.

#![allow(dead_code)] // Each test binary uses part of it.

use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};

use vm_control::server::{Connection, Received};
use vm_control::socket::{self, recv_datagram, send_datagram, seqpacket_pair};
use vm_control::wire::*;

pub fn id(n: u64) -> RequestId {
    NonZeroU64::new(n).expect("non-zero")
}

/// A server `Connection` and the raw client end of a socketpair.
pub fn pair() -> (Connection, OwnedFd) {
    let (server, client) = seqpacket_pair().expect("socketpair");
    (Connection::new(server).expect("connection"), client)
}

pub fn read_message(fd: &OwnedFd) -> ServerMessage {
    let mut buf = [0u8; RESPONSE_SIZE];
    match recv_datagram(fd.as_fd(), &mut buf, 0, false).expect("recv") {
        socket::Received::Datagram(d) => {
            assert_eq!(d.len, RESPONSE_SIZE);
            ServerMessage::decode(&buf).expect("valid server message")
        }
        socket::Received::HungUp => panic!("server hung up"),
    }
}

pub fn recv(conn: &mut Connection) -> Received {
    conn.recv_request()
        .expect("connection survives")
        .expect("a datagram is waiting")
}

pub fn expect_rejected(
    conn: &mut Connection,
    client: &OwnedFd,
    expected: DecodeError,
) -> ServerMessage {
    match recv(conn) {
        Received::Rejected(e) => assert_eq!(e, expected),
        Received::Request(r) => panic!("accepted {r:?}"),
    }
    read_message(client)
}

pub fn err_reply(n: u64, kind: ErrorKind, errno: i32, detail: u64) -> ServerMessage {
    ServerMessage::Reply {
        id: id(n),
        response: Response::Err(ErrorReply::new(kind, errno, detail)),
    }
}

/// After a rejection, the same connection still serves a valid request.
pub fn assert_still_serves(conn: &mut Connection, client: &OwnedFd) {
    send_datagram(client.as_fd(), &Request::Pause.encode(id(99)), &[], false).expect("send");
    match recv(conn) {
        Received::Request(r) => {
            assert_eq!((r.id, r.request), (id(99), Request::Pause));
            assert!(r.fd.is_none());
        }
        Received::Rejected(e) => panic!("rejected valid request: {e}"),
    }
}

pub fn memfd() -> OwnedFd {
    std::fs::File::open("/dev/null").expect("open").into()
}
