//! What the wire tests share: request ids, golden hex parsed into a zero-filled message, and
//! the checks that a request or server message encodes to its golden bytes in the golden's
//! version (and, but for the version field, in every later one) and decodes back.

#![allow(dead_code)] // Each test binary uses part of it.

use std::num::NonZeroU64;

use vm_control::wire::*;

/// Parses whitespace-separated hex, then zero-fills to `total` bytes (the tails of our
/// messages are reserved zero bytes, so only the meaningful prefix is written out).
pub fn golden(prefix: &str, total: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = prefix
        .split_whitespace()
        .flat_map(|word| {
            assert!(word.len() % 2 == 0, "odd hex word {word}");
            (0..word.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&word[i..i + 2], 16).expect("hex"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(bytes.len() <= total);
    bytes.resize(total, 0);
    bytes
}

pub fn id(n: u64) -> RequestId {
    NonZeroU64::new(n).expect("non-zero test id")
}

/// The version field of a golden message.
pub fn golden_version(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// Every later version writes a message of an earlier one the same, but for the version.
pub fn in_later_versions(bytes: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    (golden_version(bytes) + 1..=MAX_PROTOCOL_VERSION).map(|v| {
        let mut later = bytes.to_vec();
        later[0..2].copy_from_slice(&v.to_le_bytes());
        later
    })
}

/// Asserts that `request` with id `n` encodes to exactly `hex` in the golden's version (and
/// the same but for the version field in every later one), and decodes back.
pub fn check_request(request: Request, n: u64, hex: &str) {
    let expected = golden(hex, REQUEST_SIZE);
    let version = golden_version(&expected);
    assert_eq!(
        request.encode_in(id(n), version).to_vec(),
        expected,
        "{request:?} encoding"
    );
    assert_eq!(Request::decode(&expected), Ok((id(n), request)));
    for later in in_later_versions(&expected) {
        assert_eq!(
            request.encode_in(id(n), golden_version(&later)).to_vec(),
            later
        );
        assert_eq!(Request::decode(&later), Ok((id(n), request)));
    }
}

/// Asserts that `message` encodes to exactly `hex` and decodes back.
pub fn check_server_message(message: ServerMessage, hex: &str) {
    let expected = golden(hex, RESPONSE_SIZE);
    let version = golden_version(&expected);
    assert_eq!(
        message.encode_in(version).to_vec(),
        expected,
        "{message:?} encoding"
    );
    assert_eq!(ServerMessage::decode(&expected), Ok(message.clone()));
    for later in in_later_versions(&expected) {
        assert_eq!(message.encode_in(golden_version(&later)).to_vec(), later);
        assert_eq!(ServerMessage::decode(&later), Ok(message.clone()));
    }
}
