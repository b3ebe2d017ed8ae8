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
