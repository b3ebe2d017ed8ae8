//! Load on the real VMM's control socket: 32 clients at once, each sending thousands of
//! requests, while the guest keeps running. Every request must get its own reply (the
//! client checks the echoed id), nothing may be lost, and the VMM must still stop cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{GuestCode, Scratch, require_kvm, tiny_elf, vmm_run, wait_with_timeout};
use vm_control::client::Client;
use vm_control::wire::{Request, Response};

const CLIENTS: usize = 32;
const REQUESTS_PER_CLIENT: usize = 2000;

fn start_vmm(scratch: &Scratch) -> (Child, PathBuf) {
    let kernel = scratch.write(
        "guest.elf",
        &tiny_elf(GuestCode::new().print("up\n").halt_forever().bytes()),
    );
    let socket = scratch.path("vmm.sock");
    let socket_arg = socket.display().to_string();
    let child = vmm_run(&kernel, &["--socket", &socket_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    (child, socket)
}

fn connect_when_ready(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(socket) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!("the control socket never came up: {err}"),
        }
    }
}

#[test]
fn thirty_two_clients_get_every_reply_and_the_vmm_still_stops() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("control-load");
    let (child, socket) = start_vmm(&scratch);
    drop(connect_when_ready(&socket));

    let workers: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = connect_when_ready(&socket);
                client
                    .set_timeout(Some(Duration::from_secs(30)))
                    .expect("set timeout");
                let mut answered = 0;
                for i in 0..REQUESTS_PER_CLIENT {
                    // Mix a cheap request with one that does real work in the VMM.
                    let request = if (i + n) % 4 == 0 {
                        Request::GetStats
                    } else {
                        Request::GetVersion
                    };
                    match client.request(request) {
                        Ok(Response::Version { .. }) if request == Request::GetVersion => {
                            answered += 1
                        }
                        Ok(Response::Stats(stats)) if request == Request::GetStats => {
                            assert_eq!(stats.vcpu_count, 1);
                            answered += 1;
                        }
                        other => panic!("client {n} request {i}: unexpected {other:?}"),
                    }
                }
                answered
            })
        })
        .collect();
    let answered: usize = workers
        .into_iter()
        .map(|w| w.join().expect("client thread"))
        .sum();
    assert_eq!(answered, CLIENTS * REQUESTS_PER_CLIENT);

    let mut stopper = connect_when_ready(&socket);
    assert_eq!(stopper.request(Request::Exit).expect("exit"), Response::Ok);
    let output = wait_with_timeout(child, Duration::from_secs(30));
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
