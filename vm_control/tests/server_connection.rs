//! A server `Connection` on a real socketpair: bad input (wrong sizes, types, versions, ids,
//! reserved bits, missing or extra descriptors) gets an error reply and the connection lives
//! on; a descriptor handed over with a request is delivered; hang-ups are detected; a client
//! that never reads is dropped when its queue is full; an unsubscribed client gets no events.

mod server_support;

use std::os::fd::AsFd;

use vm_control::server::{ConnectionError, MAX_QUEUED_MESSAGES, Received};
use vm_control::socket::{self, recv_datagram, send_datagram};
use vm_control::wire::*;

use server_support::*;

#[test]
fn recv_request_returns_none_when_nothing_is_waiting() {
    let (mut conn, _client) = pair();
    assert!(conn.recv_request().expect("ok").is_none());
}

#[test]
fn wrong_size_datagram_gets_bad_size_reply_and_connection_survives() {
    let (mut conn, client) = pair();
    let short = &Request::Pause.encode(id(5))[..20];
    send_datagram(client.as_fd(), short, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 20,
            expected: REQUEST_SIZE,
        },
    );
    assert_eq!(reply, err_reply(5, ErrorKind::BadSize, libc::EMSGSIZE, 20));
    send_datagram(client.as_fd(), b"tiny", &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 4,
            expected: REQUEST_SIZE,
        },
    );
    assert_eq!(
        reply,
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::BadSize, libc::EMSGSIZE, 4))
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn empty_datagram_is_bad_size_not_a_hang_up() {
    let (mut conn, client) = pair();
    send_datagram(client.as_fd(), &[], &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 0,
            expected: REQUEST_SIZE,
        },
    );
    assert!(matches!(reply, ServerMessage::Unattributed(_)));
    assert_still_serves(&mut conn, &client);
}

#[test]
fn oversize_datagram_is_bad_size_with_its_real_size() {
    let (mut conn, client) = pair();
    let mut big = vec![0u8; 4096];
    big[..REQUEST_SIZE].copy_from_slice(&Request::Pause.encode(id(6)));
    send_datagram(client.as_fd(), &big, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 4096,
            expected: REQUEST_SIZE,
        },
    );
    assert_eq!(
        reply,
        err_reply(6, ErrorKind::BadSize, libc::EMSGSIZE, 4096)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn unknown_type_gets_invalid_type_reply() {
    let (mut conn, client) = pair();
    let mut bytes = Request::Pause.encode(id(7));
    bytes[2] = 0x55;
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(&mut conn, &client, DecodeError::InvalidType { kind: 0x55 });
    assert_eq!(
        reply,
        err_reply(7, ErrorKind::InvalidType, libc::ENOSYS, 0x55)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn bad_version_gets_unsupported_version_reply_with_the_supported_range() {
    let (mut conn, client) = pair();
    let mut bytes = Request::Pause.encode(id(8));
    let unsupported = MAX_PROTOCOL_VERSION + 1;
    bytes[0..2].copy_from_slice(&unsupported.to_le_bytes());
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::UnsupportedVersion {
            version: unsupported,
        },
    );
    let ServerMessage::Reply {
        id: got,
        response: Response::Err(e),
    } = reply
    else {
        panic!("not an error reply: {reply:?}");
    };
    assert_eq!(got, id(8));
    assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
    assert_eq!(
        (e.min_version, e.max_version),
        (MIN_PROTOCOL_VERSION, MAX_PROTOCOL_VERSION)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn zero_id_and_reserved_bits_get_error_replies() {
    let (mut conn, client) = pair();
    let mut bytes = Request::Pause.encode(id(1));
    bytes[8] = 0;
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(&mut conn, &client, DecodeError::ZeroId);
    assert_eq!(
        reply,
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::ZeroId, libc::EINVAL, 0))
    );
    let mut bytes = Request::Pause.encode(id(2));
    bytes[40] = 1;
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::ReservedNonZero { offset: 40 },
    );
    assert_eq!(
        reply,
        err_reply(2, ErrorKind::ReservedNonZero, libc::EINVAL, 40)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn register_memory_without_fd_gets_expect_fd_reply() {
    let (mut conn, client) = pair();
    let bytes = Request::RegisterMemory { size: 4096 }.encode(id(9));
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(&mut conn, &client, DecodeError::ExpectFd);
    assert_eq!(reply, err_reply(9, ErrorKind::ExpectFd, libc::EBADF, 0));
    assert_still_serves(&mut conn, &client);
}

#[test]
fn register_memory_with_one_fd_delivers_it() {
    let (mut conn, client) = pair();
    let file = memfd();
    let bytes = Request::RegisterMemory { size: 8192 }.encode(id(10));
    send_datagram(client.as_fd(), &bytes, &[file.as_fd()], false).expect("send");
    match recv(&mut conn) {
        Received::Request(r) => {
            assert_eq!(r.request, Request::RegisterMemory { size: 8192 });
            assert!(r.fd.is_some());
        }
        Received::Rejected(e) => panic!("rejected: {e}"),
    }
}

#[test]
fn extra_fds_get_unexpected_fd_reply() {
    let (mut conn, client) = pair();
    let (a, b) = (memfd(), memfd());
    send_datagram(
        client.as_fd(),
        &Request::Pause.encode(id(11)),
        &[a.as_fd()],
        false,
    )
    .expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::UnexpectedFd { received: 1 },
    );
    assert_eq!(
        reply,
        err_reply(11, ErrorKind::UnexpectedFd, libc::E2BIG, 1)
    );
    let bytes = Request::RegisterMemory { size: 4096 }.encode(id(12));
    send_datagram(client.as_fd(), &bytes, &[a.as_fd(), b.as_fd()], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::UnexpectedFd { received: 2 },
    );
    assert_eq!(
        reply,
        err_reply(12, ErrorKind::UnexpectedFd, libc::E2BIG, 2)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn client_disconnect_mid_request_is_a_hang_up_not_a_crash() {
    let (mut conn, client) = pair();
    send_datagram(
        client.as_fd(),
        &Request::GetStats.encode(id(13)),
        &[],
        false,
    )
    .expect("send");
    drop(client);
    // The request sent before the hang-up is still delivered...
    let Received::Request(req) = recv(&mut conn) else {
        panic!("expected the request");
    };
    // ...but its reply cannot be, and the next read reports the hang-up.
    assert!(matches!(
        conn.reply(req.id, Response::Ok),
        Err(ConnectionError::HungUp)
    ));
    assert!(matches!(conn.recv_request(), Err(ConnectionError::HungUp)));
}

#[test]
fn hang_up_with_nothing_pending_is_detected() {
    let (mut conn, client) = pair();
    drop(client);
    assert!(matches!(conn.recv_request(), Err(ConnectionError::HungUp)));
}

#[test]
fn a_client_that_never_reads_is_dropped_when_its_queue_is_full() {
    let (mut conn, _client) = pair();
    conn.set_subscribed(true);
    let mut sent = 0;
    let err = loop {
        match conn.notify(Event::Paused) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "queue never filled");
    };
    assert!(matches!(err, ConnectionError::QueueFull));
    assert_eq!(conn.queued(), MAX_QUEUED_MESSAGES);
}

#[test]
fn notify_sends_nothing_to_an_unsubscribed_connection() {
    let (mut conn, client) = pair();
    conn.notify(Event::Crashed).expect("notify");
    assert!(!conn.wants_write());
    socket::set_nonblocking(client.as_fd(), true).expect("nonblocking");
    let mut buf = [0u8; RESPONSE_SIZE];
    let err = recv_datagram(client.as_fd(), &mut buf, 0, true).expect_err("nothing sent");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}
