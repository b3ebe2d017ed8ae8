//! Fuzzes the snapshot reader, the first code a restore runs on a file it did not write.
//!
//! The first input byte chooses whether the checksum is recomputed (odd) so the checks
//! behind it are reached; the rest is the stream. Each input checks that:
//! * nothing panics, and no record is longer than the bound;
//! * a stream accepted with nothing skipped re-encodes to exactly its own bytes;
//! * the KVM state records in it (`arch::state`) decode or fail cleanly, and a machine
//!   state that decodes re-encodes to the records it came from.
//!
//! Run with `cargo +nightly fuzz run snapshot_reader` from `fuzz/`; the seeded counterpart
//! that CI runs is `snapshot/tests/mutation.rs`.

#![no_main]

use arch::state::{self, MachineState};
use libfuzzer_sys::fuzz_target;
use snapshot::{Known, MAX_PAYLOAD_LEN, Snapshot, Writer, kind};

/// The KVM state records and two test kinds (one required, one skippable in the seeds).
const KNOWN: [Known; 7] = [
    state::KNOWN[0],
    state::KNOWN[1],
    state::KNOWN[2],
    state::KNOWN[3],
    state::KNOWN[4],
    Known::new(kind::TEST_FIRST, 1),
    Known::new(kind::TEST_FIRST + 1, 2),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let mut bytes = stream.to_vec();
    if selector & 1 == 1 && bytes.len() >= 4 {
        let at = bytes.len() - 4;
        let crc = snapshot::crc32c::checksum(&bytes[..at]);
        bytes[at..].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(snap) = Snapshot::parse(bytes.clone(), &KNOWN) else {
        return;
    };
    let mut w = Writer::new(Vec::new()).expect("a Vec takes the header");
    for r in snap.records() {
        assert!(r.payload.len() <= MAX_PAYLOAD_LEN);
        w.record(r.ty, r.payload)
            .expect("an accepted record re-encodes");
    }
    if snap.skipped() == 0 {
        assert_eq!(w.finish().expect("end"), bytes);
    }
    if let Ok(machine) = MachineState::from_snapshot(&snap, 254) {
        let mut again = Writer::new(Vec::new()).expect("a Vec takes the header");
        machine
            .write(&mut again)
            .expect("a decoded machine re-encodes");
        let again = again.finish().expect("end");
        let reread = Snapshot::parse(again, &state::KNOWN).expect("its own stream reads");
        // The machine holds its vCPUs in id order, whatever the stream's order.
        let mut vcpus: Vec<_> = snap.records_of(kind::VCPU).collect();
        vcpus.sort_by_key(|r| {
            r.payload
                .get(..4)
                .and_then(|id| <[u8; 4]>::try_from(id).ok())
                .map(u32::from_le_bytes)
        });
        assert_eq!(reread.records_of(kind::VCPU).count(), vcpus.len());
        for (a, b) in reread.records_of(kind::VCPU).zip(vcpus) {
            assert_eq!(a.payload, b.payload, "VCPU record re-encodes to itself");
        }
    }
});
