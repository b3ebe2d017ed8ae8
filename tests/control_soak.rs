//! A small soak of the control socket with the sandbox on: 1,000 connections at once
//! (all but 64 refused), subscribers that never read while 200 events are sent, and
//! 10,000 register/unregister cycles. The VMM's descriptors must come back to where they
//! were and its resident memory must not grow by more than a bound; the figures are
//! printed for docs/reliability.md. Needs /dev/kvm for the tiny guest.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::hostile::{ParkedVm, memfd, raise_own_fd_limit};
use common::require_kvm;
use vm_control::client::Client;
use vm_control::wire::{Request, Response};

const CONNECTIONS: usize = 1000;
const SLEEPING_SUBSCRIBERS: usize = 16;
const PAUSE_RESUME_PAIRS: usize = 100;
const REGISTER_CYCLES: usize = 10_000;
/// Most the VMM's resident set may grow over the soak: its heap keeps some of what the
/// peak (64 connections with full queues) used, nothing proportional to the work done.
const RSS_GROWTH_LIMIT_KIB: u64 = 8 * 1024;
/// Descriptors the VMM may hold beyond its start: none, but one may be mid-close.
const FD_SLACK: usize = 1;

fn hoard_and_release(vm: &mut ParkedVm) {
    let hoard: Vec<Client> = (0..CONNECTIONS)
        .filter_map(|_| Client::connect(&vm.socket).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    vm.assert_running("holding 1,000 connections");
    drop(hoard);
}

fn sleep_through_events(vm: &mut ParkedVm) {
    let mut sleepers: Vec<Client> = (0..SLEEPING_SUBSCRIBERS)
        .map(|_| vm.admitted_client())
        .collect();
    for sleeper in &mut sleepers {
        assert_eq!(
            sleeper.request(Request::Subscribe).expect("subscribe"),
            Response::Ok
        );
    }
    let mut driver = vm.admitted_client();
    for _ in 0..PAUSE_RESUME_PAIRS {
        assert_eq!(driver.request(Request::Pause).expect("pause"), Response::Ok);
        assert_eq!(
            driver.request(Request::Resume).expect("resume"),
            Response::Ok
        );
    }
}

fn register_and_unregister(vm: &mut ParkedVm) {
    let mut client = vm.admitted_client();
    let page = memfd(2 << 20);
    for cycle in 0..REGISTER_CYCLES {
        let slot =
            match client.request_with_fd(Request::RegisterMemory { size: 2 << 20 }, page.as_fd()) {
                Ok(Response::MemoryRegistered { slot, .. }) => slot,
                other => vm.fail(&format!("cycle {cycle}: register: {other:?}")),
            };
        if !matches!(
            client.request(Request::UnregisterMemory { slot }),
            Ok(Response::Ok)
        ) {
            vm.fail(&format!("cycle {cycle}: unregister of slot {slot}"));
        }
    }
}

/// Waits until the VMM holds at most `fds` descriptors (it reads hang-ups in its own time).
fn settle(vm: &ParkedVm, fds: usize) -> usize {
    common::wait_until(Duration::from_secs(5), || vm.fd_count() <= fds);
    vm.fd_count()
}

#[test]
fn a_soak_of_hostile_clients_leaves_the_vmms_descriptors_and_memory_where_they_were() {
    if !require_kvm() {
        return;
    }
    assert!(
        raise_own_fd_limit() > CONNECTIONS as u64 + 100,
        "the test needs descriptors"
    );
    let mut vm = ParkedVm::start("soak", &[]);
    // Warm up every path once, so the baseline includes what the first use allocates.
    drop(vm.admitted_client());
    let (rss_before, fds_before) = (vm.rss_kib(), settle(&vm, usize::MAX));

    hoard_and_release(&mut vm);
    sleep_through_events(&mut vm);
    register_and_unregister(&mut vm);
    let fds_after = settle(&vm, fds_before + FD_SLACK);
    let rss_after = vm.rss_kib();

    eprintln!(
        "soak: VMM RSS {rss_before} KiB -> {rss_after} KiB, descriptors {fds_before} -> {fds_after}"
    );
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "descriptors {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT_KIB,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
    vm.assert_alive_and_answering();
    assert_eq!(vm.stop().status.code(), Some(0));
}
