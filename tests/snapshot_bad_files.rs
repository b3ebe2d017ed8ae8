//! `vmm run --restore` of a bad snapshot: truncated, corrupted, not a snapshot at all,
//! from a newer vmm, with a record it does not know or a value out of range, or with a
//! memory file of the wrong size. Each exits 1 with one line naming the problem, and no VM
//! runs. The files are damaged copies of a good snapshot of the counting guest.

mod common;

use common::counting::{Vmm, assert_restore_refused, copy_of_snapshot, record_count, reseal};
use common::{Scratch, require_kvm};

#[test]
fn a_truncated_snapshot_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-truncated");
    let (snapshot, _) = copy_of_snapshot(&scratch, "cut.snap");
    let len = std::fs::metadata(&snapshot).expect("snapshot").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&snapshot)
        .expect("open");
    file.set_len(len / 2).expect("truncate");
    assert_restore_refused(&snapshot, None, "truncated");
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-flipped");
    let (snapshot, _) = copy_of_snapshot(&scratch, "flipped.snap");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&snapshot, bytes).expect("write");
    assert_restore_refused(&snapshot, None, "checksum mismatch");
}

#[test]
fn a_file_that_is_not_a_snapshot_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-magic");
    let snapshot = scratch.write("text.snap", &[b'x'; 4096]);
    scratch.write("text.snap.mem", &[]);
    assert_restore_refused(&snapshot, None, "wrong magic");
}

#[test]
fn a_memory_file_of_the_wrong_size_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-memsize");
    let (snapshot, memory) = copy_of_snapshot(&scratch, "short.snap");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .expect("open");
    file.set_len(16 << 20).expect("shorten");
    assert_restore_refused(
        &snapshot,
        Some(&memory),
        "the memory file is 16777216 bytes, the snapshot's guest RAM is 33554432 bytes",
    );
}

#[test]
fn a_snapshot_from_a_future_vmm_is_refused() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-future");
    let (snapshot, _) = copy_of_snapshot(&scratch, "future.snap");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    let records = record_count(&bytes);
    reseal(&mut bytes, records);
    std::fs::write(&snapshot, bytes).expect("write");
    assert_restore_refused(
        &snapshot,
        None,
        "format version 2 is newer than this vmm reads",
    );
}

#[test]
fn an_unknown_required_record_is_refused_and_an_unknown_skippable_one_ignored() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-unknown");
    let (snapshot, memory) = copy_of_snapshot(&scratch, "unknown.snap");
    let good = std::fs::read(&snapshot).expect("snapshot");
    let with_record = |type_word: u32| {
        // An empty record just before the end record.
        let end = good.len() - snapshot::END_RECORD_LEN;
        let mut bytes = good[..end].to_vec();
        bytes.extend_from_slice(&type_word.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&good[end..]);
        reseal(&mut bytes, record_count(&good) + 1);
        bytes
    };
    // Kind 0x0250 (control-side range, not allocated), version 1.
    std::fs::write(&snapshot, with_record(0x0001_0250)).expect("write");
    assert_restore_refused(&snapshot, Some(&memory), "unknown required record type 592");
    // The same record marked skippable: a newer vmm's optional extra, restored without it.
    std::fs::write(&snapshot, with_record(0x8001_0250)).expect("write");
    let log = scratch.path("restored.log");
    let vm = Vmm::restore(
        &scratch,
        &snapshot,
        "skip",
        Some(&log),
        &log,
        &["--memory", memory.to_str().expect("UTF-8")],
    );
    vm.wait_for_output(900);
    vm.stop();
}

#[test]
fn an_out_of_range_value_is_refused_by_name() {
    if !require_kvm() {
        return;
    }
    let scratch = Scratch::new("snapshot-range");
    let (snapshot, _) = copy_of_snapshot(&scratch, "range.snap");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    // The CONFIG record comes first: its type word, then RAM (u64), then the vCPU count.
    assert_eq!(
        &bytes[16..20],
        &0x0001_0200u32.to_le_bytes(),
        "CONFIG first"
    );
    bytes[32..36].copy_from_slice(&0u32.to_le_bytes());
    let records = record_count(&bytes);
    reseal(&mut bytes, records);
    std::fs::write(&snapshot, bytes).expect("write");
    assert_restore_refused(&snapshot, None, "vCPU count is 0x0, out of range");
}
