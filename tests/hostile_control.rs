//! Hostile control clients against a real `vmm run --socket` with the sandbox on (the
//! default): clients that hold connections, subscribe and never read, or register
//! memory by the thousand. Whatever they do, the VMM must stay alive and keep answering
//! other clients; the bounds it applies are the ones docs/control-protocol.md documents.
//! Each test needs /dev/kvm (`require_kvm`) for the tiny guest.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::hostile::{ParkedVm, memfd, raise_own_fd_limit};
use common::require_kvm;
use vm_control::client::Client;
use vm_control::wire::{Request, Response};

/// Pause/resume pairs sent while subscribers do not read: 300 events each, well past
/// what a socket buffer and the 64-message outgoing queue hold.
const PAUSE_RESUME_PAIRS: usize = 150;

#[test]
fn subscribers_that_never_read_while_300_events_are_sent_do_not_stop_the_vmm() {
    if !require_kvm() {
        return;
    }
    let mut vm = ParkedVm::start("hostile-subscribers", &[]);
    let mut sleepers: Vec<Client> = (0..2).map(|_| vm.connect_when_ready()).collect();
    for sleeper in &mut sleepers {
        assert_eq!(
            sleeper.request(Request::Subscribe).expect("subscribe"),
            Response::Ok
        );
    }

    let mut driver = vm.connect_when_ready();
    for pair in 0..PAUSE_RESUME_PAIRS {
        let answers = (
            driver.request(Request::Pause),
            driver.request(Request::Resume),
        );
        if !matches!(answers, (Ok(Response::Ok), Ok(Response::Ok))) {
            vm.fail(&format!("pause/resume pair {pair}: {answers:?}"));
        }
    }

    vm.assert_alive_and_answering();
    drop(sleepers);
    assert_eq!(vm.stop().status.code(), Some(0));
}

#[test]
fn nine_hundred_open_connections_do_not_stop_the_vmm() {
    if !require_kvm() {
        return;
    }
    assert!(
        raise_own_fd_limit() > 1000,
        "the test needs 1000 descriptors of its own"
    );
    let mut vm = ParkedVm::start("hostile-connections", &[]);

    let hoard: Vec<Client> = (0..900)
        .filter_map(|_| Client::connect(&vm.socket).ok())
        .collect();
    // Let the VMM accept (or refuse) them all.
    std::thread::sleep(Duration::from_millis(500));
    vm.assert_running("while connections piled up");
    drop(hoard);

    vm.assert_alive_and_answering();
    assert_eq!(vm.stop().status.code(), Some(0));
}

#[test]
fn registering_a_thousand_and_more_regions_does_not_stop_the_vmm() {
    if !require_kvm() {
        return;
    }
    let mut vm = ParkedVm::start("hostile-regions", &[]);
    let mut client = vm.connect_when_ready();
    let page = memfd(4096);

    let mut registered = 0;
    for _ in 0..1100 {
        match client.request_with_fd(Request::RegisterMemory { size: 4096 }, page.as_fd()) {
            Ok(Response::MemoryRegistered { .. }) => registered += 1,
            // A documented bound refused it: the VMM is still there to say so.
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(err) if err.vmm_error_kind().is_some() => break,
            Err(err) => {
                vm.fail(&format!("register-memory #{registered}: {err}"));
            }
        }
    }

    assert!(registered >= 1018, "only {registered} regions registered");
    vm.assert_alive_and_answering();
    assert_eq!(vm.stop().status.code(), Some(0));
}
