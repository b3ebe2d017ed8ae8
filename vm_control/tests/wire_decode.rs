//! Decoding every kind of bad input, both directions: wrong sizes, types, versions, ids,
//! reserved bytes and arguments, requests sent in a version before they exist, descriptor
//! rules, how a rejection is attributed and mapped to its error reply, and bounded lists.

mod wire_support;

use vm_control::wire::*;

use wire_support::*;

#[test]
fn list_memory_exists_from_version_3_only_and_its_slot_fits_u32() {
    let v2 = Request::ListMemory { from_slot: 0 }.encode_in(id(1), 2);
    assert_eq!(
        Request::decode(&v2),
        Err(DecodeError::InvalidType {
            kind: request_type::LIST_MEMORY
        })
    );
    let mut too_big = Request::ListMemory { from_slot: 0 }.encode_in(id(1), 3);
    too_big[16..24].copy_from_slice(&(1u64 << 32).to_le_bytes());
    assert!(matches!(
        Request::decode(&too_big),
        Err(DecodeError::InvalidArgument(_))
    ));
}

#[test]
fn console_attach_exists_from_version_4_only_takes_one_fd_and_known_flags() {
    let attach = Request::ConsoleAttach { flags: 0 };
    let v3 = attach.encode_in(id(1), 3);
    assert_eq!(
        Request::decode(&v3),
        Err(DecodeError::InvalidType {
            kind: request_type::CONSOLE_ATTACH
        })
    );
    for arg in [4u64, 1 << 32, u64::MAX] {
        let mut bad = attach.encode_in(id(1), 4);
        bad[16..24].copy_from_slice(&arg.to_le_bytes());
        assert!(
            matches!(Request::decode(&bad), Err(DecodeError::InvalidArgument(_))),
            "arg {arg:#x}"
        );
    }
    assert_eq!(check_fds(&attach, 0), Err(DecodeError::ExpectFd));
    assert_eq!(check_fds(&attach, 1), Ok(()));
    assert_eq!(
        check_fds(&attach, 2),
        Err(DecodeError::UnexpectedFd { received: 2 })
    );
}

#[test]
fn snapshot_exists_from_version_5_only_takes_two_fds_and_known_flags() {
    let snapshot = Request::Snapshot { flags: 0 };
    let v4 = snapshot.encode_in(id(1), 4);
    assert_eq!(
        Request::decode(&v4),
        Err(DecodeError::InvalidType {
            kind: request_type::SNAPSHOT
        })
    );
    for arg in [2u64, 1 << 32, u64::MAX] {
        let mut bad = snapshot.encode_in(id(1), 5);
        bad[16..24].copy_from_slice(&arg.to_le_bytes());
        assert!(
            matches!(Request::decode(&bad), Err(DecodeError::InvalidArgument(_))),
            "arg {arg:#x}"
        );
    }
    assert_eq!(check_fds(&snapshot, 0), Err(DecodeError::ExpectFd));
    assert_eq!(check_fds(&snapshot, 1), Err(DecodeError::ExpectFd));
    assert_eq!(check_fds(&snapshot, 2), Ok(()));
    assert_eq!(
        check_fds(&snapshot, 3),
        Err(DecodeError::UnexpectedFd { received: 3 })
    );
}

fn valid_pause() -> Vec<u8> {
    Request::Pause.encode(id(0x42)).to_vec()
}

#[test]
fn decode_rejects_every_wrong_size_with_the_size_received() {
    for len in [0, 1, 15, 16, 63, 65, 128, RESPONSE_SIZE] {
        let mut bytes = valid_pause();
        bytes.resize(len, 0);
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeError::BadSize {
                received: len,
                expected: REQUEST_SIZE
            }),
            "len {len}"
        );
    }
}

#[test]
fn decode_with_len_reports_the_real_size_of_a_truncated_datagram() {
    assert_eq!(
        Request::decode_with_len(&valid_pause(), 4096),
        Err(DecodeError::BadSize {
            received: 4096,
            expected: REQUEST_SIZE
        })
    );
}

#[test]
fn decode_rejects_unknown_types() {
    for kind in [0u16, 15, 0x100, 0xffff] {
        let mut bytes = valid_pause();
        bytes[2..4].copy_from_slice(&kind.to_le_bytes());
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeError::InvalidType { kind })
        );
    }
}

#[test]
fn decode_rejects_unsupported_versions_before_checking_size() {
    for version in [0u16, MAX_PROTOCOL_VERSION + 1, 0xffff] {
        let mut bytes = valid_pause();
        bytes[0..2].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { version })
        );
        bytes.resize(200, 0);
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { version })
        );
    }
}

#[test]
fn get_version_is_accepted_at_any_version_so_newer_clients_can_fall_back() {
    let mut bytes = Request::GetVersion.encode(id(5)).to_vec();
    bytes[0..2].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(Request::decode(&bytes), Ok((id(5), Request::GetVersion)));
}

#[test]
fn decode_rejects_request_id_zero() {
    let mut bytes = valid_pause();
    bytes[8..16].fill(0);
    assert_eq!(Request::decode(&bytes), Err(DecodeError::ZeroId));
}

#[test]
fn decode_rejects_every_non_zero_reserved_byte() {
    // Flags (4..8), the unused argument of an argument-less request (16..24), the tail (24..64).
    for offset in (4..8).chain(16..64) {
        let mut bytes = valid_pause();
        bytes[offset] = 0x80;
        let expected_offset = match offset {
            4..8 => 4,
            16..24 => 16,
            _ => offset,
        };
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeError::ReservedNonZero {
                offset: expected_offset
            }),
            "offset {offset}"
        );
    }
}

fn with_arg(kind: u16, arg: u64) -> Vec<u8> {
    let mut bytes = valid_pause();
    bytes[2..4].copy_from_slice(&kind.to_le_bytes());
    bytes[16..24].copy_from_slice(&arg.to_le_bytes());
    bytes
}

#[test]
fn register_memory_size_must_be_non_zero_page_aligned_and_bounded() {
    for size in [
        0,
        1,
        4095,
        4097,
        MAX_REGISTER_MEMORY_SIZE + PAGE_SIZE,
        u64::MAX,
    ] {
        assert!(
            matches!(
                Request::decode(&with_arg(request_type::REGISTER_MEMORY, size)),
                Err(DecodeError::InvalidArgument(_))
            ),
            "size {size}"
        );
    }
    for size in [PAGE_SIZE, MAX_REGISTER_MEMORY_SIZE] {
        assert_eq!(
            Request::decode(&with_arg(request_type::REGISTER_MEMORY, size)),
            Ok((id(0x42), Request::RegisterMemory { size }))
        );
    }
}

#[test]
fn balloon_adjust_and_target_are_bounded() {
    let max = MAX_BALLOON_PAGES as i64;
    for delta in [max + 1, -max - 1, i64::MIN, i64::MAX] {
        assert!(matches!(
            Request::decode(&with_arg(request_type::BALLOON_ADJUST, delta as u64)),
            Err(DecodeError::InvalidArgument(_))
        ));
    }
    for delta_pages in [max, -max, 0, -1] {
        assert_eq!(
            Request::decode(&with_arg(request_type::BALLOON_ADJUST, delta_pages as u64)),
            Ok((id(0x42), Request::BalloonAdjust { delta_pages }))
        );
    }
    assert!(matches!(
        Request::decode(&with_arg(
            request_type::BALLOON_SET_TARGET,
            MAX_BALLOON_PAGES + 1
        )),
        Err(DecodeError::InvalidArgument(_))
    ));
    assert_eq!(
        Request::decode(&with_arg(
            request_type::BALLOON_SET_TARGET,
            MAX_BALLOON_PAGES
        )),
        Ok((
            id(0x42),
            Request::BalloonSetTarget {
                pages: MAX_BALLOON_PAGES
            }
        ))
    );
}

#[test]
fn unregister_memory_slot_must_fit_u32() {
    assert!(matches!(
        Request::decode(&with_arg(request_type::UNREGISTER_MEMORY, 1 << 32)),
        Err(DecodeError::InvalidArgument(_))
    ));
}

#[test]
fn fd_rules_missing_fd_is_expect_fd_and_extra_fds_are_unexpected() {
    let register = Request::RegisterMemory { size: PAGE_SIZE };
    assert_eq!(check_fds(&register, 0), Err(DecodeError::ExpectFd));
    assert_eq!(check_fds(&register, 1), Ok(()));
    assert_eq!(
        check_fds(&register, 2),
        Err(DecodeError::UnexpectedFd { received: 2 })
    );
    assert_eq!(
        check_fds(&Request::Pause, 1),
        Err(DecodeError::UnexpectedFd { received: 1 })
    );
}

#[test]
fn reject_echoes_the_id_when_it_can_be_read() {
    let mut bytes = valid_pause();
    bytes.push(0);
    let err = Request::decode(&bytes).expect_err("65 bytes");
    assert_eq!(
        reject(&bytes, &err),
        ServerMessage::Reply {
            id: id(0x42),
            response: Response::Err(ErrorReply::new(ErrorKind::BadSize, libc::EMSGSIZE, 65)),
        }
    );
}

#[test]
fn reject_is_unattributed_when_the_id_cannot_be_read() {
    let short = [1u8, 0, 3];
    let err = Request::decode(&short).expect_err("3 bytes");
    assert_eq!(
        reject(&short, &err),
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::BadSize, libc::EMSGSIZE, 3))
    );
    let mut zero_id = valid_pause();
    zero_id[8..16].fill(0);
    assert_eq!(
        reject(&zero_id, &DecodeError::ZeroId),
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::ZeroId, libc::EINVAL, 0))
    );
}

#[test]
fn every_decode_error_maps_to_its_error_kind_errno_and_detail() {
    let cases = [
        (
            DecodeError::BadSize {
                received: 65,
                expected: 64,
            },
            ErrorKind::BadSize,
            libc::EMSGSIZE,
            65,
        ),
        (
            DecodeError::InvalidType { kind: 99 },
            ErrorKind::InvalidType,
            libc::ENOSYS,
            99,
        ),
        (
            DecodeError::UnsupportedVersion { version: 2 },
            ErrorKind::UnsupportedVersion,
            libc::EPROTONOSUPPORT,
            2,
        ),
        (DecodeError::ExpectFd, ErrorKind::ExpectFd, libc::EBADF, 0),
        (
            DecodeError::UnexpectedFd { received: 3 },
            ErrorKind::UnexpectedFd,
            libc::E2BIG,
            3,
        ),
        (DecodeError::ZeroId, ErrorKind::ZeroId, libc::EINVAL, 0),
        (
            DecodeError::ReservedNonZero { offset: 30 },
            ErrorKind::ReservedNonZero,
            libc::EINVAL,
            30,
        ),
        (
            DecodeError::InvalidArgument("x"),
            ErrorKind::InvalidArgument,
            libc::EINVAL,
            0,
        ),
    ];
    for (err, kind, errno, detail) in cases {
        assert_eq!(
            err.to_error_reply(),
            ErrorReply::new(kind, errno, detail),
            "{err}"
        );
    }
}

#[test]
fn error_kind_numbers_are_stable_and_closed() {
    let all = [
        (ErrorKind::BadSize, 1),
        (ErrorKind::InvalidType, 2),
        (ErrorKind::UnsupportedVersion, 3),
        (ErrorKind::ExpectFd, 4),
        (ErrorKind::UnexpectedFd, 5),
        (ErrorKind::ZeroId, 6),
        (ErrorKind::ReservedNonZero, 7),
        (ErrorKind::InvalidArgument, 8),
        (ErrorKind::Failed, 9),
        (ErrorKind::Unsupported, 10),
    ];
    for (kind, n) in all {
        assert_eq!(kind as u32, n);
        assert_eq!(ErrorKind::from_u32(n), Some(kind));
    }
    assert_eq!(ErrorKind::from_u32(0), None);
    assert_eq!(ErrorKind::from_u32(11), None);
}

fn ok_reply_bytes(n: u64) -> Vec<u8> {
    ServerMessage::Reply {
        id: id(n),
        response: Response::Ok,
    }
    .encode()
    .to_vec()
}

#[test]
fn client_side_decode_rejects_bad_server_messages() {
    assert_eq!(
        ServerMessage::decode(&ok_reply_bytes(1)[..64]),
        Err(DecodeError::BadSize {
            received: 64,
            expected: RESPONSE_SIZE
        })
    );
    // A non-error reply with id 0.
    let mut bytes = ok_reply_bytes(1);
    bytes[8] = 0;
    assert_eq!(ServerMessage::decode(&bytes), Err(DecodeError::ZeroId));
    // An event with an id.
    let mut event = ServerMessage::Event(Event::Paused).encode().to_vec();
    event[8] = 4;
    assert_eq!(
        ServerMessage::decode(&event),
        Err(DecodeError::EventWithId { id: 4 })
    );
    // Unknown event kind, unknown error kind.
    let mut event = ServerMessage::Event(Event::Paused).encode().to_vec();
    event[16] = 99;
    assert!(matches!(
        ServerMessage::decode(&event),
        Err(DecodeError::InvalidArgument(_))
    ));
    let mut err = ServerMessage::Unattributed(ErrorReply::new(ErrorKind::Failed, 5, 0))
        .encode()
        .to_vec();
    err[16] = 99;
    assert!(matches!(
        ServerMessage::decode(&err),
        Err(DecodeError::InvalidArgument(_))
    ));
    // Unknown response type, bad version, reserved tail.
    let mut bytes = ok_reply_bytes(1);
    bytes[2] = 77;
    assert_eq!(
        ServerMessage::decode(&bytes),
        Err(DecodeError::InvalidType { kind: 77 })
    );
    let mut bytes = ok_reply_bytes(1);
    bytes[0] = 9;
    assert_eq!(
        ServerMessage::decode(&bytes),
        Err(DecodeError::UnsupportedVersion { version: 9 })
    );
    let mut bytes = ok_reply_bytes(1);
    bytes[1023] = 1;
    assert_eq!(
        ServerMessage::decode(&bytes),
        Err(DecodeError::ReservedNonZero { offset: 1023 })
    );
}

#[test]
fn stats_decode_bounds_the_counter_count_and_requires_zero_unused_entries() {
    let stats = ServerMessage::Reply {
        id: id(1),
        response: Response::Stats(Box::default()),
    }
    .encode();
    let mut bytes = stats.to_vec();
    bytes[52..56].copy_from_slice(&(MAX_DEVICE_COUNTERS as u32 + 1).to_le_bytes());
    assert!(matches!(
        ServerMessage::decode(&bytes),
        Err(DecodeError::InvalidArgument(_))
    ));
    let mut bytes = stats.to_vec();
    bytes[256 + 8] = 1; // value of entry 0, with a count of 0
    assert_eq!(
        ServerMessage::decode(&bytes),
        Err(DecodeError::ReservedNonZero { offset: 264 })
    );
}

#[test]
fn device_counters_hold_at_most_the_maximum() {
    let mut counters = DeviceCounters::default();
    for _ in 0..MAX_DEVICE_COUNTERS {
        counters.push(DeviceCounter::default()).expect("room");
    }
    assert_eq!(counters.push(DeviceCounter::default()), Err(CountersFull));
    assert_eq!(counters.len(), MAX_DEVICE_COUNTERS);
}

#[test]
fn a_memory_list_whose_count_exceeds_its_total_is_refused() {
    let mut list = MemoryList::default();
    list.total = 1;
    list.push(RegisteredRegion::default()).expect("room");
    let mut bytes = ServerMessage::Reply {
        id: id(1),
        response: Response::MemoryList(Box::new(list)),
    }
    .encode_in(3);
    bytes[16..20].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        ServerMessage::decode(&bytes),
        Err(DecodeError::InvalidArgument(_))
    ));
}

#[test]
fn a_datagram_too_short_for_a_header_is_answered_in_the_version_it_names() {
    assert_eq!(reply_version(&[1, 0, 1, 0, 0]), 1);
    assert_eq!(reply_version(&[2, 0]), 2);
    assert_eq!(
        reply_version(&[9, 0, 1]),
        MAX_PROTOCOL_VERSION,
        "unsupported"
    );
    assert_eq!(
        reply_version(&[1]),
        MAX_PROTOCOL_VERSION,
        "no version to read"
    );
}
