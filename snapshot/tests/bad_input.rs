//! Every way a stream can be bad gets its own error, and nothing bad yields a record.

mod common;

use common::{A, B, KNOWN, golden_stream, reseal};
use snapshot::{
    Error, Known, MAX_PAYLOAD_LEN, MAX_RECORDS, MAX_STREAM_LEN, RecordType, Snapshot, Writer,
};

fn parse(bytes: &[u8]) -> Result<Snapshot, Error> {
    Snapshot::parse(bytes.to_vec(), &KNOWN)
}

/// A stream with the given records, written by the real writer.
fn stream_of(records: &[(RecordType, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new()).unwrap();
    for (ty, payload) in records {
        w.record(*ty, payload).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn truncated_at_every_offset_is_refused_as_truncated() {
    let stream = golden_stream();
    for len in 0..stream.len() {
        match parse(&stream[..len]) {
            Err(Error::Truncated(_)) => {}
            other => panic!("cut at {len}: {other:?}"),
        }
    }
}

#[test]
fn wrong_magic_is_refused() {
    let mut stream = golden_stream();
    stream[1] = b'X';
    let err = parse(&stream).unwrap_err();
    assert!(
        matches!(err, Error::WrongMagic(m) if m[1] == b'X'),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("not a vmm snapshot: wrong magic")
    );
    assert!(matches!(parse(b"hello, world"), Err(Error::WrongMagic(_))));
    assert!(matches!(parse(b"\x89VMX"), Err(Error::WrongMagic(_))));
}

#[test]
fn every_flipped_bit_after_the_header_is_a_bad_checksum() {
    let stream = golden_stream();
    for at in snapshot::HEADER_LEN..stream.len() {
        for bit in 0..8 {
            let mut bad = stream.clone();
            bad[at] ^= 1 << bit;
            match parse(&bad) {
                Err(Error::BadChecksum { .. }) => {}
                // Flips in the end record's header make it no end record at all.
                Err(Error::Truncated(_)) if at >= stream.len() - 16 => {}
                other => panic!("bit {bit} of byte {at}: {other:?}"),
            }
        }
    }
}

#[test]
fn future_and_zero_format_versions_are_refused() {
    let mut stream = golden_stream();
    stream[8] = 2;
    reseal(&mut stream);
    let err = parse(&stream).unwrap_err();
    assert!(matches!(err, Error::FutureVersion(2)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "snapshot format version 2 is newer than this vmm reads (1)"
    );
    stream[8] = 0;
    reseal(&mut stream);
    assert!(matches!(parse(&stream), Err(Error::ZeroVersion)));
}

#[test]
fn big_endian_marker_and_reserved_header_bits_are_refused() {
    let mut stream = golden_stream();
    stream[10..12].copy_from_slice(&[0xfe, 0xff]);
    reseal(&mut stream);
    assert!(matches!(
        parse(&stream),
        Err(Error::WrongEndianness(0xfffe))
    ));
    let mut stream = golden_stream();
    stream[15] = 1;
    reseal(&mut stream);
    assert!(matches!(parse(&stream), Err(Error::HeaderReserved(_))));
}

#[test]
fn unknown_required_record_is_refused_by_number() {
    let stream = stream_of(&[(A, b"x"), (RecordType::required(0x7f42, 1), b"new")]);
    let err = parse(&stream).unwrap_err();
    assert!(matches!(err, Error::UnknownRequired(0x7f42)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "snapshot has unknown required record type 32578"
    );
}

#[test]
fn unknown_skippable_record_is_ignored() {
    let stream = stream_of(&[
        (RecordType::skippable(0x7f42, 9), b"from a newer vmm"),
        (A, b"kept"),
    ]);
    let snap = parse(&stream).unwrap();
    let kept: Vec<_> = snap.records().collect();
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].ty, kept[0].payload), (A, &b"kept"[..]));
    assert_eq!(snap.skipped(), 1);
}

#[test]
fn newer_version_of_a_known_kind_is_refused_if_required_and_skipped_if_skippable() {
    let newer_a = RecordType::required(A.kind, 2);
    let err = parse(&stream_of(&[(newer_a, b"")])).unwrap_err();
    assert!(
        matches!(err, Error::FutureRecordVersion { kind, version: 2, max: 1 } if kind == A.kind),
        "{err:?}"
    );
    let newer_b = RecordType::skippable(B.kind, 3);
    let snap = parse(&stream_of(&[(newer_b, b"")])).unwrap();
    assert_eq!((snap.records().count(), snap.skipped()), (0, 1));
}

#[test]
fn older_versions_of_a_known_kind_are_read() {
    let old_b = RecordType::skippable(B.kind, 1);
    let snap = parse(&stream_of(&[(old_b, b"v1")])).unwrap();
    assert_eq!(snap.records().next().map(|r| r.ty), Some(old_b));
}

#[test]
fn oversize_record_length_is_refused_without_allocating() {
    let mut stream = stream_of(&[(A, b"12345678")]);
    stream[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut stream);
    let err = parse(&stream).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RecordTooLong {
                len: 0xffff_ffff,
                ..
            }
        ),
        "{err:?}"
    );
    // A length within the bound that runs past the end record.
    stream[20..24].copy_from_slice(&64u32.to_le_bytes());
    reseal(&mut stream);
    assert!(matches!(parse(&stream), Err(Error::BadEnd(_))));
}

#[test]
fn stream_above_the_size_bound_is_refused_after_reading_at_most_the_bound() {
    let endless = std::io::Read::take(std::io::repeat(0x89), u64::MAX);
    let err = Snapshot::read_from(endless, &KNOWN).unwrap_err();
    assert!(matches!(err, Error::StreamTooLong), "{err:?}");
    assert!(matches!(
        Snapshot::parse(vec![0; MAX_STREAM_LEN + 1], &KNOWN),
        Err(Error::StreamTooLong)
    ));
}

#[test]
fn bytes_after_the_end_record_are_refused() {
    let mut stream = golden_stream();
    stream.extend_from_slice(&[0; 8]);
    assert!(matches!(parse(&stream), Err(Error::Truncated(_))));
}

#[test]
fn non_zero_padding_is_refused() {
    let mut stream = golden_stream();
    stream[0x1d] = 1; // the first byte of "hello"'s padding
    reseal(&mut stream);
    assert!(matches!(parse(&stream), Err(Error::BadPadding(k)) if k == A.kind));
}

#[test]
fn wrong_record_count_is_refused() {
    let mut stream = golden_stream();
    let at = stream.len() - 8;
    stream[at] = 3;
    reseal(&mut stream);
    let err = parse(&stream).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RecordCountMismatch {
                stored: 3,
                found: 2
            }
        ),
        "{err:?}"
    );
}

#[test]
fn end_record_in_the_middle_is_refused() {
    let mut stream = golden_stream();
    // Make record A's header an end record's.
    stream[16..20].copy_from_slice(&0x0001_0001u32.to_le_bytes());
    reseal(&mut stream);
    assert!(matches!(parse(&stream), Err(Error::BadEnd(_))));
}

#[test]
fn invalid_type_words_are_refused() {
    for word in [0x0001_0000u32, 0x0000_7f00, 0x0101_7f00] {
        let mut stream = golden_stream();
        stream[16..20].copy_from_slice(&word.to_le_bytes());
        reseal(&mut stream);
        let err = parse(&stream).unwrap_err();
        assert!(
            matches!(err, Error::BadRecordType(w) if w == word),
            "{word:#x}: {err:?}"
        );
    }
}

#[test]
fn too_many_records_are_refused_by_the_writer_and_the_reader() {
    let mut w = Writer::new(Vec::new()).unwrap();
    for _ in 0..MAX_RECORDS {
        w.record(A, b"").unwrap();
    }
    assert!(matches!(w.record(A, b""), Err(Error::TooManyRecords)));
    let mut stream = w.finish().unwrap();
    // One more empty record, inserted by hand before the end record.
    let end = stream.len() - 16;
    let extra = [A.to_word().to_le_bytes(), 0u32.to_le_bytes()].concat();
    stream.splice(end..end, extra);
    let at = stream.len() - 8;
    stream[at..at + 4].copy_from_slice(&(MAX_RECORDS + 1).to_le_bytes());
    reseal(&mut stream);
    assert!(matches!(parse(&stream), Err(Error::TooManyRecords)));
}

#[test]
fn writer_refuses_oversize_payloads_and_reserved_types() {
    let mut w = Writer::new(Vec::new()).unwrap();
    let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
    assert!(matches!(
        w.record(A, &big),
        Err(Error::RecordTooLong { .. })
    ));
    assert!(w.record(A, &big[..MAX_PAYLOAD_LEN]).is_ok());
    for bad in [
        RecordType::required(snapshot::kind::END, 1),
        RecordType::required(0, 1),
        RecordType::required(A.kind, 0),
    ] {
        assert!(
            matches!(w.record(bad, b""), Err(Error::ReservedRecordType(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn writer_stops_before_the_stream_bound() {
    let mut w = Writer::new(std::io::sink()).unwrap();
    let chunk = vec![0u8; MAX_PAYLOAD_LEN];
    let mut written = 0;
    let err = loop {
        match w.record(A, &chunk) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::StreamTooLong), "{err:?}");
    assert_eq!(written, 15, "16 MiB holds 15 full records and the framing");
}

#[test]
fn an_empty_stream_is_valid_and_an_unknown_reader_list_refuses_required_records() {
    let snap = parse(&stream_of(&[])).unwrap();
    assert_eq!(snap.records().count(), 0);
    let none: [Known; 0] = [];
    let err = Snapshot::parse(golden_stream(), &none).unwrap_err();
    assert!(matches!(err, Error::UnknownRequired(k) if k == A.kind));
}
