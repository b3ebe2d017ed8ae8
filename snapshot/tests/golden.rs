//! Pins the encoding: the golden stream must be byte for byte `tests/golden/small.bin` (and
//! the hex below, which `docs/snapshot-format.md` walks through). If this fails, the format
//! changed: bump a version and keep reading the old one instead.

mod common;

use common::{A, B, KNOWN, golden_stream};
use snapshot::Snapshot;

/// `docs/snapshot-format.md`, "Golden vector".
const SMALL_HEX: &str = concat!(
    "89564d4d534e4150", // magic
    "0100",
    "fffe",
    "00000000", // format version 1, endianness marker, reserved
    "007f0100",
    "05000000",
    "68656c6c6f000000", // record 0x7f00 v1 required, 5 bytes, padded
    "017f0280",
    "08000000",
    "0102030405060708", // record 0x7f01 v2 skippable, 8 bytes
    "01000100",
    "08000000",
    "02000000", // end record: 2 records
    "514def96", // CRC-32C of everything before it
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn golden_stream_matches_the_pinned_bytes() {
    let stream = golden_stream();
    assert_eq!(hex(&stream), SMALL_HEX);
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/small.bin"
    ))
    .expect("golden file");
    assert_eq!(
        stream, file,
        "the encoding changed: see docs/snapshot-format.md"
    );
}

#[test]
fn golden_file_reads_back_its_records() {
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/small.bin"
    ))
    .expect("golden file");
    let snap = Snapshot::read_from(file.as_slice(), &KNOWN).expect("golden file reads");
    let records: Vec<_> = snap.records().map(|r| (r.ty, r.payload.to_vec())).collect();
    assert_eq!(
        records,
        vec![(A, b"hello".to_vec()), (B, vec![1, 2, 3, 4, 5, 6, 7, 8])]
    );
    assert_eq!(snap.skipped(), 0);
}
