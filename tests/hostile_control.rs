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
use vm_control::client::{Client, ClientError};
use vm_control::server::MAX_CONNECTIONS;
use vm_control::wire::{ErrorKind, Request, Response};

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

/// The documented bound on registered regions (README, docs/control-protocol.md).
const MAX_REGISTERED_REGIONS: usize = 1024;

#[test]
fn registering_past_the_region_bound_is_refused_and_the_vmm_lists_them_all() {
    if !require_kvm() {
        return;
    }
    let mut vm = ParkedVm::start("hostile-regions", &[]);
    let mut client = vm.connect_when_ready();
    let page = memfd(4096);

    let mut registered = 0;
    let mut refusal = None;
    for _ in 0..MAX_REGISTERED_REGIONS + 50 {
        match client.request_with_fd(Request::RegisterMemory { size: 4096 }, page.as_fd()) {
            Ok(Response::MemoryRegistered { .. }) => registered += 1,
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(ClientError::Vmm(e)) => {
                refusal = Some(e);
                break;
            }
            Err(err) => vm.fail(&format!("register-memory #{registered}: {err}")),
        }
    }
    drop(client);
    let listed = vm.list_memory_json();

    assert_eq!(registered, MAX_REGISTERED_REGIONS, "regions registered");
    let refusal = refusal.expect("the region past the bound is refused");
    assert_eq!(
        (refusal.kind, refusal.errno),
        (ErrorKind::Failed, libc::ENOSPC),
        "{refusal:?}"
    );
    assert_eq!(
        listed.matches("\"slot\"").count(),
        MAX_REGISTERED_REGIONS,
        "list-memory pages through every region of the departed client"
    );
    vm.assert_alive_and_answering();
    assert_eq!(vm.stop().status.code(), Some(0));
}

/// The VMM's descriptor limit in the connection-cap test: room for the cap and headroom,
/// far too little for a hoarder's 200 connections without the cap.
const TIGHT_FD_LIMIT: u64 = 160;

/// Whether `result` is the documented refusal of a connection past the cap.
fn refused_at_capacity(result: &Result<Response, ClientError>) -> bool {
    matches!(result, Err(ClientError::Vmm(e)) if e.kind == ErrorKind::Failed && e.errno == libc::EUSERS)
}

#[test]
fn a_hoarder_past_the_connection_cap_is_refused_and_register_memory_still_works() {
    if !require_kvm() {
        return;
    }
    assert!(
        raise_own_fd_limit() > 1000,
        "the test needs 1000 descriptors of its own"
    );
    let mut vm = ParkedVm::start_limited("hostile-cap", &[], Some(TIGHT_FD_LIMIT));

    let mut hoard: Vec<Client> = (0..200)
        .filter_map(|_| Client::connect(&vm.socket).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A slot freed meanwhile (the start-up probe's connection closing late) is taken too.
    hoard.extend((0..8).filter_map(|_| Client::connect(&vm.socket).ok()));
    std::thread::sleep(Duration::from_millis(200));
    vm.assert_running("while a hoarder connected 208 times");
    let mut late = Client::connect(&vm.socket).expect("connect (the kernel accepts it)");
    late.set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let refused = late.request(Request::GetVersion);
    let fds_while_hoarding = vm.fd_count();
    hoard.truncate(MAX_CONNECTIONS / 2);
    let page = memfd(4096);
    let mut supervisor = vm.admitted_client();
    let registered =
        supervisor.request_with_fd(Request::RegisterMemory { size: 4096 }, page.as_fd());

    assert!(refused_at_capacity(&refused), "past the cap: {refused:?}");
    assert!(
        fds_while_hoarding < MAX_CONNECTIONS + 40,
        "the VMM holds {fds_while_hoarding} descriptors for {MAX_CONNECTIONS} connections"
    );
    if !matches!(registered, Ok(Response::MemoryRegistered { .. })) {
        vm.fail(&format!(
            "register-memory after the hoarder let go: {registered:?}"
        ));
    }
    vm.assert_alive_and_answering();
    drop(hoard);
    assert_eq!(vm.stop().status.code(), Some(0));
}

#[test]
fn repeated_pause_and_resume_send_one_event_each_and_exit_sends_none() {
    if !require_kvm() {
        return;
    }
    let vm = ParkedVm::start("events-documented", &[]);
    let mut subscriber = vm.connect_when_ready();
    assert_eq!(
        subscriber.request(Request::Subscribe).expect("subscribe"),
        Response::Ok
    );
    let mut driver = vm.connect_when_ready();

    for request in [
        Request::Pause,
        Request::Pause,
        Request::Resume,
        Request::Resume,
    ] {
        assert_eq!(driver.request(request).expect("request"), Response::Ok);
    }
    assert_eq!(driver.request(Request::Exit).expect("exit"), Response::Ok);
    let events: Vec<_> = subscriber.events().collect();

    assert_eq!(
        format!("{events:?}"),
        "[Ok(Paused), Ok(Resumed)]",
        "one event per change of state, none for Exit, then the connection ends"
    );
    assert_eq!(vm.stop().status.code(), Some(0));
}
