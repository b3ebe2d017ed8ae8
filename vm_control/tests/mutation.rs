//! Robustness without a fuzzer: hundreds of thousands of pseudo-random and mutated datagrams go
//! through both decoders. Nothing may panic, every accepted message must re-encode to exactly
//! the bytes it came from (one encoding per message), and every rejection must produce an
//! error reply that itself decodes.

use std::num::NonZeroU64;

use vm_control::wire::*;

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

fn seeds_requests() -> Vec<Vec<u8>> {
    let id = NonZeroU64::new(0x1234).expect("non-zero");
    [
        Request::GetVersion,
        Request::Exit,
        Request::Pause,
        Request::Resume,
        Request::BalloonAdjust { delta_pages: -5 },
        Request::BalloonSetTarget { pages: 77 },
        Request::RegisterMemory { size: 1 << 21 },
        Request::UnregisterMemory { slot: 3 },
        Request::GetStats,
        Request::Subscribe,
        Request::GetQueues,
        Request::ListMemory { from_slot: 2 },
        Request::ConsoleAttach {
            flags: attach_flags::WRITE,
        },
        Request::Snapshot {
            flags: snapshot_flags::STOP,
        },
    ]
    .iter()
    // Each in every version that has it, so mutations start from both.
    .flat_map(|r| (r.min_version()..=MAX_PROTOCOL_VERSION).map(|v| r.encode_in(id, v).to_vec()))
    .collect()
}

fn seeds_server_messages() -> Vec<Vec<u8>> {
    let id = NonZeroU64::new(9).expect("non-zero");
    let mut stats = Stats::default();
    stats
        .devices
        .push(DeviceCounter {
            device_kind: 1,
            device_id: 0,
            counter: 5,
            value: 10,
        })
        .expect("room");
    let mut memory = MemoryList::default();
    memory.total = 2;
    memory
        .push(RegisteredRegion {
            slot: 2,
            guest_addr: 1 << 32,
            size: 4096,
        })
        .expect("room");
    let mut queues = QueueStatuses::default();
    queues
        .push(QueueStatus {
            device_kind: device_kind::NET,
            device_id: 0,
            queue: 1,
            size: 256,
            state: queue_state::ACTIVE | queue_state::EVENT_IDX,
            driver_avail: 7,
            device_avail: 6,
            device_used: 5,
            used_event: 4,
            notifications: 3,
            interrupts: 2,
        })
        .expect("room");
    [
        ServerMessage::Reply {
            id,
            response: Response::Ok,
        },
        ServerMessage::Reply {
            id,
            response: Response::error(ErrorKind::Failed, libc::EIO),
        },
        ServerMessage::Reply {
            id,
            response: Response::MemoryRegistered { pfn: 1, slot: 2 },
        },
        ServerMessage::Reply {
            id,
            response: Response::version(),
        },
        ServerMessage::Reply {
            id,
            response: Response::Stats(Box::new(stats)),
        },
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::BadSize, libc::EMSGSIZE, 1)),
        ServerMessage::Event(Event::BalloonChanged {
            target_pages: 1,
            actual_pages: 2,
        }),
        ServerMessage::Event(Event::Crashed),
    ]
    .iter()
    .flat_map(|m| (MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).map(|v| m.encode_in(v).to_vec()))
    .chain(std::iter::once(
        ServerMessage::Reply {
            id,
            response: Response::Queues(Box::new(queues)),
        }
        .encode_in(2)
        .to_vec(),
    ))
    .chain(std::iter::once(
        ServerMessage::Reply {
            id,
            response: Response::MemoryList(Box::new(memory)),
        }
        .encode_in(3)
        .to_vec(),
    ))
    .chain(std::iter::once(
        ServerMessage::Reply {
            id,
            response: Response::ConsoleAttached(ConsoleAttached {
                flags: attach_flags::WRITE,
                frame_version: CONSOLE_FRAME_VERSION,
                ring_bytes: 1 << 16,
                history_bytes: 300,
            }),
        }
        .encode_in(4)
        .to_vec(),
    ))
    .collect()
}

/// Mutates `bytes` in one of several ways: flip bits, set interesting values, resize, or
/// replace everything with noise.
fn mutate(rng: &mut Rng, mut bytes: Vec<u8>, max_len: usize) -> Vec<u8> {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(8) {
            0 | 1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            2 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            3 if bytes.len() >= 16 => {
                // Small values in the header fields, where the interesting checks are.
                let i = rng.below(16);
                bytes[i] = rng.below(12) as u8;
            }
            4 => {
                let len = rng.below(max_len + 1);
                bytes.resize(len, rng.next() as u8);
            }
            5 if bytes.len() >= 24 => {
                let v = rng.next() >> rng.below(64);
                bytes[16..24].copy_from_slice(&v.to_le_bytes());
            }
            6 => {
                let len = rng.below(max_len + 1);
                bytes = (0..len).map(|_| rng.next() as u8).collect();
            }
            _ => {}
        }
    }
    bytes
}

#[test]
fn request_decoder_survives_300k_mutated_datagrams_and_accepts_only_canonical_ones() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds_requests();
    let (mut accepted, mut rejected) = (0u32, 0u32);
    for _ in 0..300_000 {
        let seed = seeds[rng.below(seeds.len())].clone();
        let bytes = mutate(&mut rng, seed, 2 * REQUEST_SIZE);
        match Request::decode(&bytes) {
            Ok((id, request)) => {
                accepted += 1;
                // Every supported version is accepted: canonical in the datagram's own.
                let version = u16::from_le_bytes([bytes[0], bytes[1]]);
                let mut canonical = request.encode_in(id, version).to_vec();
                if request == Request::GetVersion {
                    // Accepted at any version; the rest must still match.
                    canonical[0..2].copy_from_slice(&bytes[0..2]);
                } else {
                    assert!(
                        (MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).contains(&version)
                            && version >= request.min_version(),
                        "{request:?} accepted in version {version}"
                    );
                }
                assert_eq!(canonical, bytes, "non-canonical accepted: {request:?}");
                for fds in 0..3 {
                    let _ = check_fds(&request, fds);
                }
            }
            Err(e) => {
                rejected += 1;
                let reply = reject(&bytes, &e).encode();
                assert!(ServerMessage::decode(&reply).is_ok(), "bad reply for {e}");
            }
        }
    }
    assert!(accepted > 1000 && rejected > 1000, "{accepted}/{rejected}");
}

#[test]
fn server_message_decoder_survives_100k_mutated_datagrams_and_accepts_only_canonical_ones() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let seeds = seeds_server_messages();
    let mut accepted = 0u32;
    for _ in 0..100_000 {
        let seed = seeds[rng.below(seeds.len())].clone();
        let bytes = mutate(&mut rng, seed, RESPONSE_SIZE + 64);
        if let Ok(message) = ServerMessage::decode(&bytes) {
            accepted += 1;
            let version = u16::from_le_bytes([bytes[0], bytes[1]]);
            assert_eq!(
                message.encode_in(version).to_vec(),
                bytes,
                "non-canonical: {message:?}"
            );
        }
    }
    assert!(accepted > 1000, "{accepted}");
}

#[test]
fn console_frame_decoder_survives_100k_mutated_datagrams_and_accepts_only_canonical_ones() {
    let mut rng = Rng(0x5555_aaaa_1234_4321);
    let seeds: Vec<Vec<u8>> = [
        ConsoleFrame::Data(b"login: "),
        ConsoleFrame::Input(b"root\r"),
        ConsoleFrame::Missed(4096),
        ConsoleFrame::Detached(detach_reason::VM_ENDED),
    ]
    .iter()
    .map(ConsoleFrame::to_vec)
    .collect();
    let mut accepted = 0u32;
    for _ in 0..100_000 {
        let seed = seeds[rng.below(seeds.len())].clone();
        let bytes = mutate(&mut rng, seed, MAX_CONSOLE_FRAME + 64);
        if let Ok(frame) = ConsoleFrame::decode(&bytes) {
            accepted += 1;
            assert_eq!(frame.to_vec(), bytes, "non-canonical: {frame:?}");
        }
    }
    assert!(accepted > 1000, "{accepted}");
}
