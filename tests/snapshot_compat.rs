//! Snapshots written by an older vmm restore on this one.
//!
//! Until 2026-12-06 every VM had an in-kernel PIT, and its snapshots a `PIT` record; the
//! machine has none since (a hardware-reduced FADT tells the guest). Such a guest was
//! booted to use its PIT, so `vmm run --restore` gives the VM back a PIT with the saved
//! state, and a snapshot of that VM keeps the record. The older snapshot is made here from
//! a current one by adding the `PIT` record an older vmm wrote, as it wrote it.

mod common;

use arch::state::{IrqchipState, VmState};
use common::counting::{Vmm, assert_consecutive, counts, record_count, reseal, stopped_snapshot};
use common::{Scratch, require_kvm};

/// The `PIT` record's bytes (header, payload, padding) as an older vmm wrote them, with
/// channel 2 (the speaker's, which never counts down while gated off) loaded with `count`.
fn pit_record(count: u32) -> Vec<u8> {
    let mut pit = kvm_bindings::kvm_pit_state2::default();
    pit.channels[2].count = count;
    let vm = VmState {
        irqchip: IrqchipState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
        },
        pit: Some(pit),
        clock: Default::default(),
    };
    let (ty, payload) = vm
        .encode()
        .into_iter()
        .find(|(ty, _)| ty.kind == snapshot::kind::PIT)
        .expect("a VM with a PIT encodes a PIT record");
    let mut bytes = ty.to_word().to_le_bytes().to_vec();
    bytes.extend_from_slice(&u32::try_from(payload.len()).expect("76").to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes.resize(bytes.len().next_multiple_of(snapshot::ALIGN), 0);
    bytes
}

/// The `PIT` records of a snapshot stream: walks the records after the header.
fn pit_records(stream: &[u8]) -> Vec<&[u8]> {
    let mut found = Vec::new();
    let mut at = snapshot::HEADER_LEN;
    while at + snapshot::RECORD_HEADER_LEN <= stream.len() {
        let word = u32::from_le_bytes(stream[at..at + 4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(stream[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + snapshot::RECORD_HEADER_LEN;
        let end = start + usize::try_from(len).expect("a length");
        if word & 0xffff == u32::from(snapshot::kind::PIT) {
            found.push(&stream[start..end]);
        }
        at = end.next_multiple_of(snapshot::ALIGN);
    }
    found
}

#[test]
fn a_snapshot_from_a_vmm_with_a_pit_restores_with_its_pit_and_keeps_it() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-pit");
    let (snapshot, log) = stopped_snapshot(&scratch);
    let current = std::fs::read(&snapshot).expect("snapshot");
    assert!(
        pit_records(&current).is_empty(),
        "this vmm's machine has no PIT, so its snapshot has no PIT record"
    );
    // The older stream: the same records and a PIT record before the end record.
    let end = current.len() - snapshot::END_RECORD_LEN;
    let mut older = current[..end].to_vec();
    older.extend_from_slice(&pit_record(0x1234));
    older.extend_from_slice(&current[end..]);
    reseal(&mut older, record_count(&current) + 1);
    std::fs::write(&snapshot, &older).expect("write the older snapshot");
    let last = *counts(&std::fs::read(&log).expect("log"))
        .last()
        .expect("the guest counted");

    let vm = Vmm::restore(&scratch, &snapshot, "restored", None, &log, &[]);
    vm.wait_for_output(900);
    let again = scratch.path("again.snap");
    vm.snapshot(&again, true);
    let all = counts(&std::fs::read(&log).expect("log"));
    let at = all
        .iter()
        .position(|&c| c == last)
        .expect("the first VM's last count");
    assert_consecutive(&all[at..], last, "the guest restored with its PIT");

    let stream = std::fs::read(&again).expect("the second snapshot");
    let pits = pit_records(&stream);
    assert_eq!(pits.len(), 1, "the restored VM's snapshot keeps its PIT");
    // Channel 2's count (the first u32 of its 24-byte channel) is the one restored.
    assert_eq!(pits[0][48..52], 0x1234u32.to_le_bytes());
}
