//! The small stream the golden file, the bad-input tests and the mutation test start from.

#![allow(dead_code)]

use snapshot::{Known, RecordType, Writer, kind};

/// A required test record, version 1.
pub const A: RecordType = RecordType::required(kind::TEST_FIRST, 1);
/// A skippable test record, version 2.
pub const B: RecordType = RecordType::skippable(kind::TEST_FIRST + 1, 2);

/// The kinds the golden stream's reader knows.
pub const KNOWN: [Known; 2] = [Known::new(A.kind, 1), Known::new(B.kind, 2)];

/// The golden stream: record A with "hello" (padded to 8), record B with bytes 1 to 8.
pub fn golden_stream() -> Vec<u8> {
    let mut w = Writer::new(Vec::new()).expect("header");
    w.record(A, b"hello").expect("record A");
    w.record(B, &[1, 2, 3, 4, 5, 6, 7, 8]).expect("record B");
    w.finish().expect("end")
}

/// Rewrites the CRC-32C of a stream whose bytes were changed, so a test reaches the check
/// behind the checksum.
pub fn reseal(bytes: &mut [u8]) {
    let at = bytes.len() - 4;
    let crc = snapshot::crc32c::checksum(&bytes[..at]);
    bytes[at..].copy_from_slice(&crc.to_le_bytes());
}
