//! Fuzzes the snapshot reader, the first code a restore runs on a file it did not write.
//!
//! The first input byte chooses whether the checksum is recomputed (odd) so the checks
//! behind it are reached; the rest is the stream. Each input checks that:
//! * nothing panics, and no record is longer than the bound;
//! * a stream accepted with nothing skipped re-encodes to exactly its own bytes.
//!
//! Run with `cargo +nightly fuzz run snapshot_reader` from `fuzz/`; the seeded counterpart
//! that CI runs is `snapshot/tests/mutation.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshot::{Known, MAX_PAYLOAD_LEN, Snapshot, Writer, kind};

const KNOWN: [Known; 3] = [
    Known::new(kind::TEST_FIRST, 1),
    Known::new(kind::TEST_FIRST + 1, 2),
    Known::new(kind::VCPU, 1),
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
});
