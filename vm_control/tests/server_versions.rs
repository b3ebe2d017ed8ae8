//! Protocol versions between client and server: a version 1 client answered and sent events
//! in version 1, requests and replies that exist only from a later version, the client
//! falling back to an older VMM's version, and a second `Subscribe` switching the event
//! version.

mod server_support;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use vm_control::client::{Client, ClientError};
use vm_control::server::Received;
use vm_control::socket::{self, recv_datagram, send_datagram, seqpacket_pair};
use vm_control::wire::*;

use server_support::*;

/// The raw bytes of the next server datagram.
fn read_raw(fd: &OwnedFd) -> [u8; RESPONSE_SIZE] {
    let mut buf = [0u8; RESPONSE_SIZE];
    match recv_datagram(fd.as_fd(), &mut buf, 0, false).expect("recv") {
        socket::Received::Datagram(d) => assert_eq!(d.len, RESPONSE_SIZE),
        socket::Received::HungUp => panic!("server hung up"),
    }
    buf
}

fn version_of(datagram: &[u8]) -> u16 {
    u16::from_le_bytes([datagram[0], datagram[1]])
}

#[test]
fn a_version_1_client_is_answered_and_sent_events_in_version_1() {
    let (mut conn, client) = pair();
    for (n, request) in [(1, Request::Pause), (2, Request::Subscribe)] {
        send_datagram(client.as_fd(), &request.encode_in(id(n), 1), &[], false).expect("send");
        let Received::Request(incoming) = recv(&mut conn) else {
            panic!("version 1 {request:?} rejected");
        };
        assert_eq!(incoming.version, 1);
        if !conn.handle_protocol_request(&incoming).expect("answer") {
            conn.reply(incoming.id, Response::Ok).expect("reply");
        }
        let reply = read_raw(&client);
        assert_eq!(version_of(&reply), 1, "reply to {request:?}");
        assert_eq!(
            ServerMessage::decode(&reply),
            Ok(ServerMessage::Reply {
                id: id(n),
                response: Response::Ok
            })
        );
    }
    conn.notify(Event::Paused).expect("event");
    let event = read_raw(&client);
    assert_eq!(version_of(&event), 1, "events in the Subscribe's version");
    assert_eq!(
        ServerMessage::decode(&event),
        Ok(ServerMessage::Event(Event::Paused))
    );
}

#[test]
fn get_queues_exists_from_version_2_only() {
    let (mut conn, client) = pair();
    send_datagram(
        client.as_fd(),
        &Request::GetQueues.encode_in(id(4), 1),
        &[],
        false,
    )
    .expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::InvalidType {
            kind: request_type::GET_QUEUES,
        },
    );
    assert_eq!(
        reply,
        err_reply(
            4,
            ErrorKind::InvalidType,
            libc::ENOSYS,
            u64::from(request_type::GET_QUEUES)
        )
    );
    send_datagram(
        client.as_fd(),
        &Request::GetQueues.encode_in(id(5), 2),
        &[],
        false,
    )
    .expect("send");
    match recv(&mut conn) {
        Received::Request(r) => {
            assert_eq!((r.id, r.version, r.request), (id(5), 2, Request::GetQueues))
        }
        Received::Rejected(e) => panic!("version 2 GetQueues rejected: {e}"),
    }
}

#[test]
fn a_queues_reply_round_trips_and_is_refused_in_version_1() {
    let mut queues = QueueStatuses::default();
    let status = QueueStatus {
        device_kind: device_kind::NET,
        device_id: 1,
        queue: 1,
        size: 256,
        state: queue_state::ACTIVE | queue_state::EVENT_IDX,
        driver_avail: 3,
        device_avail: 0xfffe,
        device_used: 0xfffd,
        used_event: 9,
        notifications: 1 << 40,
        interrupts: 12,
    };
    queues.push(status).expect("room");
    assert_eq!(status.waiting(), 5, "avail indices wrap");
    assert_eq!(status.in_flight(), 1);
    let message = ServerMessage::Reply {
        id: id(6),
        response: Response::Queues(Box::new(queues)),
    };
    let bytes = message.encode();
    assert_eq!(ServerMessage::decode(&bytes), Ok(message.clone()));
    // First entry at offset 32: kind, id, queue, size, state.
    assert_eq!(bytes[16..20], 1u32.to_le_bytes());
    assert_eq!(bytes[32..44], [7, 0, 1, 0, 1, 0, 0, 1, 3, 0, 0, 0]);
    let v1 = message.encode_in(1);
    assert_eq!(
        ServerMessage::decode(&v1),
        Err(DecodeError::InvalidType {
            kind: response_type::QUEUES
        })
    );
    let mut unknown_state = bytes;
    unknown_state[40] |= 16;
    assert_eq!(
        ServerMessage::decode(&unknown_state),
        Err(DecodeError::ReservedNonZero { offset: 40 })
    );
    let mut too_many = bytes;
    too_many[16] = MAX_QUEUE_STATUSES as u8 + 1;
    assert!(ServerMessage::decode(&too_many).is_err());
}

#[test]
fn a_vhost_queue_is_sent_from_version_6_on_and_left_out_before() {
    let mut queues = QueueStatuses::default();
    let net = QueueStatus {
        device_kind: device_kind::NET,
        queue: 0,
        size: 256,
        state: queue_state::ACTIVE,
        driver_avail: 4,
        device_avail: 4,
        device_used: 4,
        ..QueueStatus::default()
    };
    let vsock = QueueStatus {
        device_kind: device_kind::VSOCK,
        queue: 1,
        size: 256,
        state: queue_state::ACTIVE | queue_state::EVENT_IDX | queue_state::VHOST,
        driver_avail: 9,
        device_used: 7,
        interrupts: 3,
        ..QueueStatus::default()
    };
    queues.push(vsock).expect("room");
    queues.push(net).expect("room");
    let message = ServerMessage::Reply {
        id: id(7),
        response: Response::Queues(Box::new(queues)),
    };
    let v6 = message.encode_in(6);
    assert_eq!(ServerMessage::decode(&v6), Ok(message.clone()));
    // The state of the first entry: ACTIVE | EVENT_IDX | VHOST.
    assert_eq!(v6[40..44], 11u32.to_le_bytes());
    for version in 2..=5 {
        let old = message.encode_in(version);
        let Ok(ServerMessage::Reply {
            response: Response::Queues(decoded),
            ..
        }) = ServerMessage::decode(&old)
        else {
            panic!("version {version}: not a Queues reply");
        };
        assert_eq!(decoded.as_slice(), [net], "version {version}");
        assert_eq!(decoded.omitted(), 0, "left out, not omitted for room");
        // Nor may a reply in those versions carry the bit.
        let mut forged = old;
        forged[40] |= 8;
        assert_eq!(
            ServerMessage::decode(&forged),
            Err(DecodeError::ReservedNonZero { offset: 40 }),
            "version {version}"
        );
    }
}

/// A VMM that speaks only version 1, as vmm did before version 2: refuses any other version
/// with its range, answers everything else `Ok`. Returns how many requests it saw.
fn version_1_server(fd: OwnedFd) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut seen = 0;
        loop {
            let mut buf = [0u8; REQUEST_SIZE];
            let d = match recv_datagram(fd.as_fd(), &mut buf, 0, false) {
                Ok(socket::Received::Datagram(d)) => d,
                _ => return seen,
            };
            seen += 1;
            assert_eq!(d.len, REQUEST_SIZE);
            let request_id = peek_request_id(&buf).expect("id");
            let response = if version_of(&buf) == 1 {
                Response::Ok
            } else {
                let mut e = ErrorReply::new(
                    ErrorKind::UnsupportedVersion,
                    libc::EPROTONOSUPPORT,
                    u64::from(version_of(&buf)),
                );
                (e.min_version, e.max_version) = (1, 1);
                Response::Err(e)
            };
            let reply = ServerMessage::Reply {
                id: request_id,
                response,
            };
            send_datagram(fd.as_fd(), &reply.encode_in(1), &[], false).expect("reply");
        }
    })
}

#[test]
fn the_client_falls_back_to_an_older_vmms_version_and_refuses_newer_requests_itself() {
    let (server, client_end) = seqpacket_pair().expect("socketpair");
    let server = version_1_server(server);
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(client.version(), PROTOCOL_VERSION);
    assert_eq!(client.request(Request::Pause).expect("pause"), Response::Ok);
    assert_eq!(client.version(), 1, "fell back after one refusal");
    assert_eq!(
        client.request(Request::Resume).expect("resume"),
        Response::Ok
    );
    let err = client
        .request(Request::GetQueues)
        .expect_err("version 1 has no GetQueues");
    assert!(
        matches!(
            err,
            ClientError::VersionTooOld {
                needed: 2,
                vmm_max: 1
            }
        ),
        "{err}"
    );
    drop(client);
    // Pause twice (refused in 2, then in 1), Resume once; GetQueues never sent.
    assert_eq!(server.join().expect("server"), 3);
}

#[test]
fn a_second_subscribe_switches_the_event_version() {
    let (mut conn, client) = pair();
    for (n, version) in [(1u64, 1u16), (2, 3)] {
        let bytes = Request::Subscribe.encode_in(id(n), version);
        send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
        let Received::Request(request) = recv(&mut conn) else {
            panic!("Subscribe rejected");
        };
        assert!(conn.handle_protocol_request(&request).expect("answered"));
        assert_eq!(
            read_raw(&client)[0..2],
            version.to_le_bytes(),
            "reply version"
        );
    }

    conn.notify(Event::Paused).expect("notify");

    assert_eq!(read_raw(&client)[0..2], 3u16.to_le_bytes(), "event version");
}
