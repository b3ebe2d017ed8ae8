//! Golden byte vectors for every message type in both directions: requests, replies and
//! events, the console frames, and the version-dependent layouts (queue and memory lists,
//! the counts of entries left out). The hex here *is* the wire format: if a test fails after
//! a code change, the format drifted.

mod wire_support;

use vm_control::wire::*;

use wire_support::*;

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
