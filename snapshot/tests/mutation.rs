//! Robustness without a fuzzer, the seeded counterpart of `fuzz/fuzz_targets/snapshot_reader.rs`:
//! a hundred thousand mutated streams go through the reader, half of them with their
//! checksum recomputed so the checks behind it are reached too. Nothing may panic, an
//! accepted stream's records are within the bounds, and a stream accepted with nothing
//! skipped re-encodes to exactly its own bytes (one encoding per stream).

mod common;

use common::{A, B, KNOWN, golden_stream, reseal};
use snapshot::{MAX_PAYLOAD_LEN, RecordType, Snapshot, Writer};

/// xorshift64*: tiny, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut w = Writer::new(Vec::new()).unwrap();
    w.record(B, &[]).unwrap();
    w.record(A, &[0xaa; 23]).unwrap();
    w.record(RecordType::skippable(0x7f55, 1), b"unknown, skippable")
        .unwrap();
    w.record(A, &[0x55; 64]).unwrap();
    let several = w.finish().unwrap();
    let empty = Writer::new(Vec::new()).unwrap().finish().unwrap();
    vec![golden_stream(), several, empty]
}

/// Mutates `bytes` in one of several ways: flip bits, set interesting values in the header
/// words, resize, splice a copy of a region, or replace everything with noise.
fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 | 1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            2 if bytes.len() >= 4 => {
                // An interesting 32-bit value at an aligned word (types, lengths, counts).
                let i = rng.below(bytes.len() / 4) * 4;
                let v: u32 = [
                    0,
                    1,
                    8,
                    0x7f00,
                    0x0001_0001,
                    0x8001_7f00,
                    MAX_PAYLOAD_LEN as u32,
                    u32::MAX,
                ][rng.below(8)];
                bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 => {
                let len = rng.below(bytes.len() + 64);
                bytes.resize(len, rng.next() as u8);
            }
            4 if bytes.len() >= 16 => {
                let start = rng.below(bytes.len());
                let end = start + rng.below(bytes.len() - start);
                let at = rng.below(bytes.len());
                let copy = bytes[start..end].to_vec();
                bytes.splice(at..at, copy);
            }
            5 => {
                let len = rng.below(200);
                bytes = (0..len).map(|_| rng.next() as u8).collect();
            }
            _ => {}
        }
    }
    if bytes.len() >= 4 && rng.below(2) == 0 {
        reseal(&mut bytes);
    }
    bytes
}

#[test]
fn reader_survives_100k_mutated_streams_and_accepts_only_canonical_ones() {
    let mut rng = Rng(0x5eed_f5a9_5eed_f5a9);
    let seeds = seeds();
    let known = [KNOWN[0], KNOWN[1]];
    let (mut accepted, mut rejected) = (0u32, 0u32);
    for _ in 0..100_000 {
        let seed = seeds[rng.below(seeds.len())].clone();
        let bytes = mutate(&mut rng, seed);
        match Snapshot::parse(bytes.clone(), &known) {
            Ok(snap) => {
                accepted += 1;
                let mut w = Writer::new(Vec::new()).unwrap();
                for r in snap.records() {
                    assert!(r.payload.len() <= MAX_PAYLOAD_LEN);
                    w.record(r.ty, r.payload).unwrap();
                }
                if snap.skipped() == 0 {
                    assert_eq!(w.finish().unwrap(), bytes, "non-canonical stream accepted");
                }
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.to_string().contains('\n'), "one-line messages: {e}");
            }
        }
    }
    eprintln!("accepted {accepted}, rejected {rejected}");
    assert!(
        accepted > 1000 && rejected > 10_000,
        "{accepted}/{rejected}"
    );
}
