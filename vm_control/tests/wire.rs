//! Golden byte vectors for every message type in both directions, and decoding of every kind of
//! bad input. The hex here *is* the wire format: if a test fails after a code change, the
//! format drifted.

use std::num::NonZeroU64;

use vm_control::wire::*;

/// Parses whitespace-separated hex, then zero-fills to `total` bytes (the tails of our
/// messages are reserved zero bytes, so only the meaningful prefix is written out).
fn golden(prefix: &str, total: usize) -> Vec<u8> {
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

fn id(n: u64) -> RequestId {
    NonZeroU64::new(n).expect("non-zero test id")
}

/// The version field of a golden message.
fn golden_version(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// Every later version writes a message of an earlier one the same, but for the version.
fn in_later_versions(bytes: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    (golden_version(bytes) + 1..=MAX_PROTOCOL_VERSION).map(|v| {
        let mut later = bytes.to_vec();
        later[0..2].copy_from_slice(&v.to_le_bytes());
        later
    })
}

/// Asserts that `request` with id `n` encodes to exactly `hex` in the golden's version (and
/// the same but for the version field in every later one), and decodes back.
fn check_request(request: Request, n: u64, hex: &str) {
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
fn check_server_message(message: ServerMessage, hex: &str) {
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

//                    version type  flags    id                arg
#[test]
fn golden_get_queues_request_version_2() {
    check_request(
        Request::GetQueues,
        0x0b,
        "0200 0b00 00000000 0b00000000000000",
    );
}

#[test]
fn golden_list_memory_request_version_3() {
    check_request(
        Request::ListMemory { from_slot: 0x29 },
        0x0c,
        "0300 0c00 00000000 0c00000000000000 2900000000000000",
    );
}

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
fn golden_console_attach_request_version_4() {
    check_request(
        Request::ConsoleAttach {
            flags: attach_flags::WRITE | attach_flags::NO_HISTORY,
        },
        0x0d,
        "0400 0d00 00000000 0d00000000000000 0300000000000000",
    );
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
fn golden_snapshot_request_version_5() {
    check_request(
        Request::Snapshot {
            flags: snapshot_flags::STOP,
        },
        0x0e,
        "0500 0e00 00000000 0e00000000000000 0100000000000000",
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

#[test]
fn golden_console_attached_response_version_4() {
    //       header                               flags    fver rsvd ring_bytes       history_bytes
    check_server_message(
        ServerMessage::Reply {
            id: id(0x0d),
            response: Response::ConsoleAttached(ConsoleAttached {
                flags: attach_flags::WRITE,
                frame_version: CONSOLE_FRAME_VERSION,
                ring_bytes: 0x1_0000,
                history_bytes: 0x123,
            }),
        },
        "0400 0900 00000000 0d00000000000000 01000000 0100 0000 0000010000000000 2301000000000000",
    );
}

#[test]
fn golden_console_frames() {
    //               version kind length   payload
    let cases: [(ConsoleFrame<'_>, &str); 4] = [
        (ConsoleFrame::Data(b"ok\n"), "0100 0100 03000000 6f6b0a"),
        (
            ConsoleFrame::Missed(12345),
            "0100 0200 08000000 3930000000000000",
        ),
        (
            ConsoleFrame::Detached(detach_reason::VM_ENDED),
            "0100 0300 04000000 01000000",
        ),
        (ConsoleFrame::Input(b"ls\r"), "0100 0400 03000000 6c730d"),
    ];
    for (frame, hex) in cases {
        let expected = golden(hex, hex.split_whitespace().map(|w| w.len() / 2).sum());
        assert_eq!(frame.to_vec(), expected, "{frame:?}");
        assert_eq!(ConsoleFrame::decode(&expected), Ok(frame));
    }
}

#[test]
fn golden_get_version_request() {
    check_request(
        Request::GetVersion,
        1,
        "0100 0100 00000000 0100000000000000",
    );
}

#[test]
fn golden_exit_request() {
    check_request(Request::Exit, 2, "0100 0200 00000000 0200000000000000");
}

#[test]
fn golden_pause_request() {
    check_request(Request::Pause, 3, "0100 0300 00000000 0300000000000000");
}

#[test]
fn golden_resume_request() {
    check_request(Request::Resume, 4, "0100 0400 00000000 0400000000000000");
}

#[test]
fn golden_balloon_adjust_request_negative_delta_is_twos_complement() {
    check_request(
        Request::BalloonAdjust { delta_pages: -256 },
        5,
        "0100 0500 00000000 0500000000000000 00ffffffffffffff",
    );
    check_request(
        Request::BalloonAdjust { delta_pages: 1024 },
        0x0102030405060708,
        "0100 0500 00000000 0807060504030201 0004000000000000",
    );
}

#[test]
fn golden_balloon_set_target_request() {
    check_request(
        Request::BalloonSetTarget { pages: 0x10000 },
        6,
        "0100 0600 00000000 0600000000000000 0000010000000000",
    );
}

#[test]
fn golden_register_memory_request() {
    check_request(
        Request::RegisterMemory { size: 0x20_0000 },
        7,
        "0100 0700 00000000 0700000000000000 0000200000000000",
    );
}

#[test]
fn golden_unregister_memory_request() {
    check_request(
        Request::UnregisterMemory { slot: 5 },
        8,
        "0100 0800 00000000 0800000000000000 0500000000000000",
    );
}

#[test]
fn golden_get_stats_request() {
    check_request(Request::GetStats, 9, "0100 0900 00000000 0900000000000000");
}

#[test]
fn golden_subscribe_request() {
    check_request(
        Request::Subscribe,
        10,
        "0100 0a00 00000000 0a00000000000000",
    );
}

#[test]
fn golden_ok_response() {
    check_server_message(
        ServerMessage::Reply {
            id: id(1),
            response: Response::Ok,
        },
        "0100 0100 00000000 0100000000000000",
    );
}

#[test]
fn golden_err_response_carries_kind_errno_detail_and_version_range() {
    //       header                               kind     errno    detail           min  max (this crate: 1..=6)
    check_server_message(
        ServerMessage::Reply {
            id: id(3),
            response: Response::Err(ErrorReply::new(ErrorKind::BadSize, libc::EMSGSIZE, 65)),
        },
        "0100 0200 00000000 0300000000000000 01000000 5a000000 4100000000000000 0100 0600",
    );
}

#[test]
fn golden_unattributed_err_has_id_zero() {
    check_server_message(
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::BadSize, libc::EMSGSIZE, 3)),
        "0100 0200 00000000 0000000000000000 01000000 5a000000 0300000000000000 0100 0600",
    );
}

#[test]
fn golden_memory_registered_response() {
    check_server_message(
        ServerMessage::Reply {
            id: id(7),
            response: Response::MemoryRegistered {
                pfn: 0x10_0000,
                slot: 2,
            },
        },
        "0100 0300 00000000 0700000000000000 0000100000000000 02000000",
    );
}

#[test]
fn golden_version_response() {
    check_server_message(
        ServerMessage::Reply {
            id: id(1),
            response: Response::Version { min: 1, max: 3 },
        },
        "0100 0400 00000000 0100000000000000 0100 0300",
    );
}

#[test]
fn golden_stats_response() {
    let mut devices = DeviceCounters::default();
    devices
        .push(DeviceCounter {
            device_kind: device_kind::SERIAL,
            device_id: 0,
            counter: counter_id::BYTES_OUT,
            value: 0x1234,
        })
        .expect("room");
    devices
        .push(DeviceCounter {
            device_kind: device_kind::I8042,
            device_id: 1,
            counter: counter_id::INTERRUPTS,
            value: 9,
        })
        .expect("room");
    let stats = Stats {
        uptime_ns: 0x1_0000_0000,
        vcpu_count: 2,
        guest_memory_bytes: 0x4000_0000,
        balloon_target_pages: 0x100,
        balloon_actual_pages: 0x80,
        exits: VmExits {
            io: 1,
            mmio: 2,
            hlt: 3,
            shutdown: 4,
            system_event: 5,
            fail_entry: 6,
            internal_error: 7,
            other: 8,
        },
        rusage: ProcessUsage {
            utime_us: 0x11,
            stime_us: 0x22,
            maxrss_kib: 0x33,
            minflt: 0x44,
            majflt: 0x55,
        },
        devices,
    };
    let hex = [
        "0100 0500 00000000 0900000000000000", // header, id 9
        "0000000001000000",                    // 16 uptime_ns
        "0000004000000000",                    // 24 guest_memory_bytes
        "0001000000000000",                    // 32 balloon_target_pages
        "8000000000000000",                    // 40 balloon_actual_pages
        "02000000 02000000",                   // 48 vcpu_count, 52 device_counter_count
        "0100000000000000 0200000000000000 0300000000000000 0400000000000000", // 56 exits
        "0500000000000000 0600000000000000 0700000000000000 0800000000000000",
        "1100000000000000 2200000000000000 3300000000000000", // 120 utime, stime, maxrss
        "4400000000000000 5500000000000000",                  // 144 minflt, majflt
        &"00".repeat(96),                                     // 160 reserved
        "0100 0000 05000000 3412000000000000",                // 256 serial0 bytes_out
        "0200 0100 03000000 0900000000000000",                // 272 i8042.1 interrupts
    ]
    .join(" ");
    check_server_message(
        ServerMessage::Reply {
            id: id(9),
            response: Response::Stats(Box::new(stats)),
        },
        &hex,
    );
}

#[test]
fn golden_events_have_id_zero_and_their_own_type() {
    let cases = [
        (Event::PoweredOff, "01000000"),
        (Event::ResetRequested, "02000000"),
        (Event::Crashed, "03000000"),
        (Event::Paused, "04000000"),
        (Event::Resumed, "05000000"),
        (
            Event::BalloonChanged {
                target_pages: 0x100,
                actual_pages: 0x80,
            },
            "06000000 00000000 0001000000000000 8000000000000000",
        ),
    ];
    for (event, payload) in cases {
        check_server_message(
            ServerMessage::Event(event),
            &format!("0100 0600 00000000 0000000000000000 {payload}"),
        );
    }
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
fn golden_queues_response_version_2() {
    let mut queues = QueueStatuses::default();
    for (queue, driver_avail) in [(0u16, 0x0102u16), (1, 0x0304)] {
        queues
            .push(QueueStatus {
                device_kind: device_kind::NET,
                device_id: 1,
                queue,
                size: 256,
                state: queue_state::ACTIVE | queue_state::EVENT_IDX,
                driver_avail,
                device_avail: 0x0100,
                device_used: 0x00ff,
                used_event: 0x00fe,
                notifications: 0x1122_3344,
                interrupts: 0x55,
            })
            .expect("room");
    }
    check_server_message(
        ServerMessage::Reply {
            id: id(3),
            response: Response::Queues(Box::new(queues)),
        },
        // header; count 2, 12 reserved bytes; then two 40-byte entries:
        // kind id queue size state reserved driver_avail device_avail device_used used_event
        // notifications interrupts
        "0200 0700 00000000 0300000000000000 \
         02000000 000000000000000000000000 \
         0700 0100 0000 0001 03000000 00000000 0201 0001 ff00 fe00 4433221100000000 5500000000000000 \
         0700 0100 0100 0001 03000000 00000000 0403 0001 ff00 fe00 4433221100000000 5500000000000000",
    );
}

#[test]
fn golden_memory_list_response_version_3_says_the_total() {
    let mut list = MemoryList::default();
    list.total = 50;
    list.push(RegisteredRegion {
        slot: 2,
        guest_addr: 0x1_0000_0000,
        size: 0x20_0000,
    })
    .expect("room");
    check_server_message(
        ServerMessage::Reply {
            id: id(4),
            response: Response::MemoryList(Box::new(list)),
        },
        // header; total 50, count 1, 8 reserved bytes; one entry: slot, reserved,
        // guest address, size
        "0300 0800 00000000 0400000000000000 32000000 01000000 0000000000000000 \
         02000000 00000000 0000000001000000 0000200000000000",
    );
    assert!(list.truncated());
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
fn full_queue_and_counter_lists_say_how_many_they_left_out_from_version_3() {
    let mut queues = QueueStatuses::default();
    let mut counters = DeviceCounters::default();
    for _ in 0..MAX_QUEUE_STATUSES + 3 {
        let _ = queues.push(QueueStatus::default());
    }
    for _ in 0..MAX_DEVICE_COUNTERS + 5 {
        let _ = counters.push(DeviceCounter::default());
    }
    let stats = Stats {
        devices: counters,
        ..Stats::default()
    };
    let queues_reply = ServerMessage::Reply {
        id: id(1),
        response: Response::Queues(Box::new(queues)),
    };
    let stats_reply = ServerMessage::Reply {
        id: id(1),
        response: Response::Stats(Box::new(stats)),
    };

    let (q3, s3) = (queues_reply.encode_in(3), stats_reply.encode_in(3));
    let (q2, s2) = (queues_reply.encode_in(2), stats_reply.encode_in(2));

    assert_eq!((queues.omitted(), counters.omitted()), (3, 5));
    assert_eq!(
        q3[20..24],
        3u32.to_le_bytes(),
        "queues omitted at offset 20"
    );
    assert_eq!(
        s3[160..164],
        5u32.to_le_bytes(),
        "counters omitted at offset 160"
    );
    assert_eq!(ServerMessage::decode(&q3), Ok(queues_reply.clone()));
    assert_eq!(ServerMessage::decode(&s3), Ok(stats_reply.clone()));
    assert_eq!(q2[20..24], [0; 4], "version 2 has no field for it");
    assert_eq!(s2[160..164], [0; 4], "version 2 has no field for it");
    let mut bad_v2 = q2;
    bad_v2[20] = 1;
    assert_eq!(
        ServerMessage::decode(&bad_v2),
        Err(DecodeError::ReservedNonZero { offset: 20 })
    );
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
