//! Load: 32 client threads each send 2000 requests over their own connection to one
//! poll-driven server thread. Every request gets exactly its reply (the client checks ids),
//! nothing is lost, nobody is dropped.

mod common;

use std::time::Duration;

use common::{TempDir, TestServer};
use vm_control::client::Client;
use vm_control::wire::{Request, Response};

const CLIENTS: usize = 32;
const REQUESTS_PER_CLIENT: usize = 2000;

#[test]
fn thirty_two_clients_times_two_thousand_requests_all_answered_in_order() {
    let dir = TempDir::new("load");
    let path = dir.join("vm.sock");
    let server = TestServer::start(&path);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&path).expect("connect");
                client
                    .set_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                for i in 0..REQUESTS_PER_CLIENT {
                    if (i + t) % 2 == 0 {
                        assert_eq!(
                            client.request(Request::GetVersion).expect("reply"),
                            Response::version()
                        );
                    } else {
                        assert_eq!(
                            client.request(Request::Resume).expect("reply"),
                            Response::Ok
                        );
                    }
                }
                REQUESTS_PER_CLIENT
            })
        })
        .collect();
    let answered: usize = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    assert_eq!(answered, CLIENTS * REQUESTS_PER_CLIENT);
    let stats = server.stop();
    assert_eq!(stats.requests, (CLIENTS * REQUESTS_PER_CLIENT) as u64);
    assert_eq!(stats.rejected, 0);
    assert_eq!(stats.connections, CLIENTS as u64);
}

#[test]
fn a_pipelining_flooder_is_throttled_not_dropped_and_does_not_starve_a_polite_client() {
    use std::os::fd::AsFd;
    use std::sync::Arc;
    use std::time::Instant;
    use vm_control::socket::{self, recv_datagram, send_datagram};
    use vm_control::wire::{RESPONSE_SIZE, ServerMessage};

    const FLOOD: u64 = 5000;
    let dir = TempDir::new("flood");
    let path = dir.join("vm.sock");
    let server = TestServer::start(&path);

    // The flooder writes all its requests from one thread and reads replies on another.
    let flood_fd = Arc::new(socket::connect(&path).expect("connect"));
    let writer_fd = flood_fd.clone();
    let writer = std::thread::spawn(move || {
        for n in 1..=FLOOD {
            let id = std::num::NonZeroU64::new(n).expect("non-zero");
            send_datagram(writer_fd.as_fd(), &Request::Resume.encode(id), &[], false)
                .expect("flood send");
        }
    });
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; RESPONSE_SIZE];
        for n in 1..=FLOOD {
            // Read slowly at first so the server's queue for this client fills up.
            if n < 200 {
                std::thread::sleep(Duration::from_micros(200));
            }
            match recv_datagram(flood_fd.as_fd(), &mut buf, 0, false).expect("flood recv") {
                socket::Received::Datagram(_) => {}
                socket::Received::HungUp => panic!("flooder dropped after {n} replies"),
            }
            match ServerMessage::decode(&buf).expect("reply") {
                ServerMessage::Reply { id, .. } => assert_eq!(id.get(), n),
                other => panic!("unexpected {other:?}"),
            }
        }
    });

    let start = Instant::now();
    let mut polite = Client::connect(&path).expect("connect");
    polite
        .set_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    for _ in 0..200 {
        polite.request(Request::GetVersion).expect("polite reply");
    }
    let polite_time = start.elapsed();
    writer.join().expect("writer");
    reader.join().expect("reader");
    let stats = server.stop();
    assert_eq!(stats.overflowed, 0);
    assert_eq!(stats.requests, FLOOD + 200);
    // Starvation would mean no progress at all; the bound is loose because the suite
    // shares two cores with other test threads (and, in CI, with the lab's QEMU).
    assert!(polite_time < Duration::from_secs(60), "{polite_time:?}");
}
