//! The `Client` against a real server: replies matched to requests by id, events that arrive
//! before a reply queued, refusal told from unreachable, timeouts (however many events
//! arrive meanwhile), late and mismatched replies.

mod common;
mod server_support;

use std::os::fd::AsFd;
use std::time::Duration;

use common::{TempDir, TestServer};
use vm_control::client::{Client, ClientError};
use vm_control::socket::{send_datagram, seqpacket_pair};
use vm_control::wire::*;

use server_support::*;

#[test]
fn client_requests_get_matching_replies() {
    let dir = TempDir::new("client");
    let path = dir.join("vm.sock");
    let _server = TestServer::start(&path);
    let mut client = Client::connect(&path).expect("connect");
    client
        .set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(
        client.request(Request::GetVersion).expect("version"),
        Response::version()
    );
    let Response::Stats(stats) = client.request(Request::GetStats).expect("stats") else {
        panic!("not stats");
    };
    assert_eq!(stats.vcpu_count, 1);
    let file = memfd();
    assert_eq!(
        client
            .request_with_fd(Request::RegisterMemory { size: 8192 }, file.as_fd())
            .expect("register"),
        Response::MemoryRegistered {
            pfn: 0x10_0000,
            slot: 2
        }
    );
}

#[test]
fn client_error_tells_refusal_from_unreachable() {
    let dir = TempDir::new("clienterr");
    let path = dir.join("vm.sock");
    let err = Client::connect(&path).expect_err("nobody listens");
    assert!(err.is_unreachable(), "{err}");
    let _server = TestServer::start(&path);
    let mut client = Client::connect(&path).expect("connect");
    let err = client
        .request(Request::BalloonSetTarget { pages: 1 })
        .expect_err("refused");
    assert!(!err.is_unreachable());
    assert_eq!(err.vmm_error_kind(), Some(ErrorKind::Unsupported));
    // A request needing an fd is refused locally, before anything is sent.
    assert!(matches!(
        client.request(Request::RegisterMemory { size: 4096 }),
        Err(ClientError::FdCount { .. })
    ));
}

#[test]
fn client_queues_events_that_arrive_before_a_reply() {
    let dir = TempDir::new("events");
    let path = dir.join("vm.sock");
    let _server = TestServer::start(&path);
    let mut client = Client::connect(&path).expect("connect");
    client.request(Request::Subscribe).expect("subscribe");
    // The test server sends Event::Paused before the reply to Pause.
    client.request(Request::Pause).expect("pause");
    client.request(Request::Pause).expect("pause");
    let events: Vec<Event> = client
        .events()
        .take(2)
        .collect::<Result<_, _>>()
        .expect("events");
    assert_eq!(events, [Event::Paused, Event::Paused]);
}

#[test]
fn client_times_out_when_the_vmm_does_not_answer() {
    let (_server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let err = client.request(Request::Pause).expect_err("no answer");
    assert!(matches!(err, ClientError::Timeout), "{err}");
    assert!(err.is_unreachable());
}

#[test]
fn a_late_reply_to_a_request_that_timed_out_is_dropped_and_the_next_request_gets_its_own() {
    let (server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let err = client
        .request(Request::Pause)
        .expect_err("no answer in time");
    assert!(matches!(err, ClientError::Timeout), "{err}");
    // The VMM answers request 1 late, then request 2.
    for n in [1, 2] {
        let reply = ServerMessage::Reply {
            id: id(n),
            response: Response::Ok,
        }
        .encode();
        send_datagram(server_end.as_fd(), &reply, &[], false).expect("send");
    }
    client
        .request(Request::Resume)
        .expect("the second request's own reply");
}

#[test]
fn client_rejects_a_reply_with_the_wrong_id() {
    let (server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    let reply = ServerMessage::Reply {
        id: id(77),
        response: Response::Ok,
    }
    .encode();
    send_datagram(server_end.as_fd(), &reply, &[], false).expect("send");
    let err = client.request(Request::Pause).expect_err("wrong id");
    assert!(
        matches!(
            err,
            ClientError::UnexpectedId {
                expected: 1,
                got: 77
            }
        ),
        "{err}"
    );
}

#[test]
fn a_request_gives_up_at_its_timeout_however_many_events_arrive_meanwhile() {
    let (server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    // A VMM that sends an event every 50 ms and never answers: each event resets a
    // per-message wait, so only a deadline for the whole request ends it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chatter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let event = ServerMessage::Event(Event::Paused).encode();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if send_datagram(server_end.as_fd(), &event, &[], false).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let start = std::time::Instant::now();
    let err = client.request(Request::GetStats).expect_err("no answer");
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(client);
    chatter.join().expect("chatter thread");
    assert!(matches!(err, ClientError::Timeout), "{err}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
}
