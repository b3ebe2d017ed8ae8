//! Snapshot records of the legacy devices and the PCI root: every record round-trips
//! (save, encode, decode, apply to a fresh device, save again gives the same bytes), every
//! out-of-range value is refused with its message before anything is applied, and one
//! small record per kind is pinned byte for byte (the layouts in docs/snapshot-format.md).

use std::io;

use devices::acpi_pm::AcpiPmState;
use devices::cmos::CmosState;
use devices::i8042::I8042State;
use devices::pci::PciRoot;
use devices::pci::state::PciRootState;
use devices::reset::ResetControlState;
use devices::{
    AcpiPm, BusDevice, Cmos, DeviceState, I8042, ResetControl, Serial, SerialState, StateError,
    StateRecord, decode_record, encode_record,
};
use snapshot::{Record, RecordType};
use vmm_sys_util::eventfd::EventFd;

fn evt() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

fn serial() -> Serial {
    Serial::new(evt(), evt(), Box::new(io::sink()))
}

fn cmos() -> Cmos {
    Cmos::with_clock(512 << 20, 0, Box::new(|| 1_700_000_000))
}

fn rd(dev: &mut dyn BusDevice, off: u64) -> u8 {
    let mut b = [0u8];
    dev.read(off, &mut b);
    b[0]
}

/// Saves `from`, restores into `to` through the encoded bytes, and checks that saving
/// `to` gives the same bytes; returns them.
fn round_trip<D: DeviceState>(instance: u32, from: &D, to: &mut D) -> Vec<u8> {
    let (ty, bytes) = encode_record(instance, &from.save_state().unwrap());
    let (got_instance, state) = decode_record::<D::State>(&Record {
        ty,
        payload: &bytes,
    })
    .unwrap();
    assert_eq!(got_instance, instance);
    to.restore_state(state).unwrap();
    let (ty2, again) = encode_record(instance, &to.save_state().unwrap());
    assert_eq!(ty2, ty);
    assert_eq!(again, bytes, "restored device saves the same bytes");
    bytes
}

fn decode_err<S: StateRecord + std::fmt::Debug>(payload: &[u8]) -> String {
    decode_record::<S>(&Record {
        ty: S::RECORD,
        payload,
    })
    .unwrap_err()
    .to_string()
}

#[test]
fn serial_round_trips_registers_and_pending_input() {
    let mut a = serial();
    a.write(3, &[0x80]); // DLAB
    a.write(0, &[0x01]);
    a.write(1, &[0x00]);
    a.write(3, &[0x1b]); // 8E1, DLAB off
    a.write(1, &[0x01]); // RX interrupt
    a.write(4, &[0x0b]);
    a.write(7, &[0x5a]);
    a.enqueue_input(b"hey").unwrap();
    let mut b = serial();
    round_trip(0x3f8, &a, &mut b);
    // The pending input is read in order, and the registers read back.
    assert_eq!(rd(&mut b, 7), 0x5a);
    assert_eq!(rd(&mut b, 3), 0x1b);
    assert_eq!(rd(&mut b, 5) & 1, 1);
    assert_eq!([rd(&mut b, 0), rd(&mut b, 0), rd(&mut b, 0)], *b"hey");
    assert_eq!(rd(&mut b, 5) & 1, 0);
}

#[test]
fn serial_restore_raises_a_pending_interrupt_again() {
    let mut a = serial();
    a.write(1, &[0x01]);
    a.enqueue_input(b"x").unwrap();
    let irq = evt();
    let mut b = Serial::new(irq.try_clone().unwrap(), evt(), Box::new(io::sink()));
    round_trip(0x3f8, &a, &mut b);
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn serial_out_of_range_values_are_refused() {
    let good = {
        let mut a = serial();
        a.enqueue_input(b"ab").unwrap();
        encode_record(0x3f8, &a.save_state().unwrap()).1
    };
    let cases: [(usize, u8, &str); 5] = [
        (
            4 + 2,
            0x10,
            "serial state: IER 0x10 has bits a 16550A does not have",
        ),
        (
            4 + 3,
            0x03,
            "serial state: IIR 0x03 is not a valid interrupt state",
        ),
        (
            4 + 5,
            0xff,
            "serial state: LSR 0xff has bits the UART never sets",
        ),
        (
            4 + 5,
            0x60,
            "serial state: LSR data-ready bit does not match 2 bytes of pending input",
        ),
        (
            4 + 9,
            65,
            "serial state: 65 bytes of pending input, the FIFO holds 64",
        ),
    ];
    for (offset, value, message) in cases {
        let mut bad = good.clone();
        bad[offset] = value;
        assert_eq!(decode_err::<SerialState>(&bad), message);
    }
    // Cut short and with a byte too many.
    assert_eq!(
        decode_err::<SerialState>(&good[..good.len() - 1]),
        "snapshot record type 256 version 1 payload is truncated at byte 14"
    );
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        decode_err::<SerialState>(&long),
        "snapshot record type 256 version 1 payload has 1 bytes after its last field"
    );
}

#[test]
fn serial_golden_bytes() {
    let (ty, bytes) = encode_record(0x3f8, &serial().save_state().unwrap());
    assert_eq!(ty.to_word(), 0x0001_0100);
    assert_eq!(
        bytes,
        [
            0xf8, 0x03, 0, 0, // instance: port 0x3f8
            0x0c, 0x00, // divisor latch 12 (9600 baud)
            0x00, 0x01, 0x03, 0x60, // IER, IIR, LCR, LSR
            0x08, 0xb0, 0x00, // MCR (OUT2), MSR (DCD, DSR, CTS), scratch
            0x00, // pending input: none
        ]
    );
}

#[test]
fn i8042_round_trips_pending_command_and_output() {
    let mut a = I8042::new(evt());
    a.write(4, &[0x60]);
    a.write(0, &[0x45]); // CTR
    a.write(4, &[0xaa]); // self test answer waits in the output buffer
    a.write(4, &[0xd3]); // waits for a parameter
    let mut b = I8042::new(evt());
    round_trip(0x60, &a, &mut b);
    assert_eq!(rd(&mut b, 4) & 0x09, 0x09, "OBF and command bit");
    assert_eq!(rd(&mut b, 0), 0x55);
    b.write(0, &[0x77]);
    assert_eq!(rd(&mut b, 4) & 0x21, 0x21, "AUX loopback answered");
}

#[test]
fn i8042_out_of_range_values_are_refused_and_golden() {
    let (_, good) = encode_record(0x60, &I8042::new(evt()).save_state().unwrap());
    assert_eq!(good, [0x60, 0, 0, 0, 0x45, 0x03, 0, 0, 0, 0, 0, 0]);
    let cases: [(usize, u8, &str); 5] = [
        (
            5,
            0x02,
            "i8042 state: output port 0x02 has the reset line or A20 low",
        ),
        (
            6,
            2,
            "i8042 state: output-buffer-full flag is 2, not 0 or 1",
        ),
        (7, 0x12, "i8042 state: an empty output buffer holds a byte"),
        (
            10,
            0xaa,
            "i8042 state: pending command 0xaa takes no parameter",
        ),
        (
            11,
            7,
            "i8042 state: last-write-was-command is 7, not 0 or 1",
        ),
    ];
    for (offset, value, message) in cases {
        let mut bad = good.clone();
        bad[offset] = value;
        assert_eq!(decode_err::<I8042State>(&bad), message);
    }
}

#[test]
fn cmos_round_trips_nvram_index_and_clock_offset() {
    let mut a = cmos();
    a.write(0, &[0x40]);
    a.write(1, &[0x99]); // plain NVRAM
    // Set the clock a day ahead, as Linux's mc146818_set_time does.
    a.write(0, &[0x0b]);
    a.write(1, &[0x82]);
    a.write(0, &[0x07]);
    let day = rd(&mut a, 1);
    a.write(1, &[day + 1]);
    a.write(0, &[0x0b]);
    a.write(1, &[0x02]);
    a.write(0, &[0x21]);
    let mut b = cmos();
    round_trip(0x70, &a, &mut b);
    assert_eq!(rd(&mut b, 0), 0x21, "index register");
    b.write(0, &[0x40]);
    assert_eq!(rd(&mut b, 1), 0x99);
    b.write(0, &[0x07]);
    assert_eq!(
        rd(&mut b, 1),
        day + 1,
        "the guest's clock offset came along"
    );
}

#[test]
fn cmos_refuses_bad_index_and_another_memory_size() {
    let (_, good) = encode_record(0x70, &cmos().save_state().unwrap());
    assert_eq!(good.len(), 4 + 1 + 128 + 8);
    // Golden: instance 0x70, index 0, register A 0x26, B 0x02 (24 h), D 0x80 (valid RAM),
    // 512 MiB: (512 - 16) MiB / 64 KiB = 0x1f00 at 0x34, nothing above 4 GiB, offset 0.
    assert_eq!(&good[..5], &[0x70, 0, 0, 0, 0]);
    assert_eq!(&good[5 + 0x0a..5 + 0x0e], &[0x26, 0x02, 0x00, 0x80]);
    assert_eq!(&good[5 + 0x34..5 + 0x36], &[0x00, 0x1f]);
    assert_eq!(&good[5 + 0x5b..5 + 0x5e], &[0, 0, 0]);
    assert_eq!(&good[133..], &[0; 8]);
    let nonzero: Vec<usize> = (0..128).filter(|&i| good[5 + i] != 0).collect();
    assert_eq!(nonzero, [0x0a, 0x0b, 0x0d, 0x35]);
    let mut bad = good.clone();
    bad[4] = 0x80;
    assert_eq!(
        decode_err::<CmosState>(&bad),
        "cmos state: index register 0x80 is past the 128 bytes of NVRAM"
    );
    let mut bad = good.clone();
    bad[5 + 0x0a] |= 0x80;
    assert_eq!(
        decode_err::<CmosState>(&bad),
        "cmos state: register A has update-in-progress set, which this RTC never does"
    );
    // A snapshot of a 512 MiB VM does not go into a 1 GiB one; nothing is applied.
    let (_, state) = decode_record::<CmosState>(&Record {
        ty: CmosState::RECORD,
        payload: &good,
    })
    .unwrap();
    let mut other = Cmos::with_clock(1 << 30, 0, Box::new(|| 1_700_000_000));
    other.write(0, &[0x40]);
    let before = other.save_state().unwrap();
    assert_eq!(
        other.restore_state(state).unwrap_err().to_string(),
        // 512 MiB and 1 GiB differ in the high byte of the 16 MiB-4 GiB count.
        "cmos state: memory-size register 0x35 is 0x1f, this VM's is 0x3f"
    );
    assert_eq!(other.save_state().unwrap(), before, "nothing applied");
}

#[test]
fn acpi_pm_and_reset_control_round_trip_and_refuse_bad_values() {
    let mut a = AcpiPm::new(evt());
    a.write(2, &[0x21, 0x01]); // PM1_EN
    a.write(4, &[0x02, 0x04]); // BM_RLD, SLP_TYP 1, no SLP_EN
    let mut b = AcpiPm::new(evt());
    let bytes = round_trip(0x600, &a, &mut b);
    assert_eq!(bytes, [0x00, 0x06, 0, 0, 0, 0, 0x21, 0x01, 0x02, 0x04]);
    let mut bad = bytes.clone();
    bad[9] = 0x24; // SLP_EN
    assert_eq!(
        decode_err::<AcpiPmState>(&bad),
        "acpi_pm state: PM1_CNT 0x2402 has bits that are not stored"
    );

    let mut a = ResetControl::new(evt());
    a.write(0, &[0x0a]);
    let mut b = ResetControl::new(evt());
    let bytes = round_trip(0xcf9, &a, &mut b);
    assert_eq!(bytes, [0xf9, 0x0c, 0, 0, 0x0a]);
    assert_eq!(
        decode_err::<ResetControlState>(&[0xf9, 0x0c, 0, 0, 0x0e]),
        "reset_control state: value 0x0e has the self-clearing RST_CPU bit set"
    );
}

#[test]
fn pci_root_round_trips_the_latch_and_host_bridge_command() {
    let mut a = PciRoot::new();
    a.write(0, &0x8000_0004u32.to_le_bytes());
    a.write(4, &[0x06, 0x00]); // host bridge COMMAND: memory, bus master
    a.write(0, &0x8000_0810u32.to_le_bytes());
    let mut b = PciRoot::new();
    let bytes = round_trip(0, &a, &mut b);
    assert_eq!(bytes.len(), 4 + 4 + 256);
    // Golden start: instance 0, the latch, the host bridge: vendor 0x8086, device 0x0d57,
    // COMMAND 0x0006 as written, revision 2, class 06/00.
    assert_eq!(
        &bytes[..20],
        &[
            0, 0, 0, 0, 0x10, 0x08, 0, 0x80, 0x86, 0x80, 0x57, 0x0d, 0x06, 0, 0, 0, 0x02, 0, 0,
            0x06
        ]
    );
    assert_eq!(&bytes[4..8], &0x8000_0810u32.to_le_bytes());
    b.write(0, &0x8000_0004u32.to_le_bytes());
    let mut cmd = [0u8; 2];
    b.read(4, &mut cmd);
    assert_eq!(cmd, [0x06, 0x00]);

    let mut bad = bytes.clone();
    bad[4] = 0x01;
    assert_eq!(
        decode_err::<PciRootState>(&bad),
        "pci root state: configuration address 0x80000801 has reserved bits set"
    );
    // Another vendor in the image: not this host bridge, refused, nothing applied.
    let mut bad = bytes.clone();
    bad[8] = 0x00;
    let (_, state) = decode_record::<PciRootState>(&Record {
        ty: PciRootState::RECORD,
        payload: &bad,
    })
    .unwrap();
    let mut c = PciRoot::new();
    assert_eq!(
        c.restore_state(state).unwrap_err().to_string(),
        "pci host bridge state: configuration space byte 0x00 differs from this device's in read-only bits"
    );
    assert_eq!(c.config_address(), 0);
}

#[test]
fn records_of_another_kind_or_newer_version_are_refused() {
    let (_, bytes) = encode_record(0x3f8, &serial().save_state().unwrap());
    let err = decode_record::<SerialState>(&Record {
        ty: RecordType::required(snapshot::kind::SERIAL, 2),
        payload: &bytes,
    })
    .unwrap_err();
    assert!(matches!(err, StateError::WrongRecord { .. }));
    assert_eq!(
        err.to_string(),
        "serial cannot read a record of type 0x0100 version 2"
    );
    assert_eq!(
        decode_err::<I8042State>(&[0; 3]),
        "snapshot record type 257 version 1 payload is truncated at byte 0"
    );
}

#[test]
fn device_records_travel_through_a_snapshot_stream() {
    let mut serial_a = serial();
    serial_a.enqueue_input(b"q").unwrap();
    let mut cmos_a = cmos();
    cmos_a.write(0, &[0x41]);
    let mut out = Vec::new();
    let mut w = snapshot::Writer::new(&mut out).unwrap();
    let (ty, p) = encode_record(0x3f8, &serial_a.save_state().unwrap());
    w.record(ty, &p).unwrap();
    let (ty, p) = encode_record(0x70, &cmos_a.save_state().unwrap());
    w.record(ty, &p).unwrap();
    w.finish().unwrap();

    let snap = snapshot::Snapshot::parse(out, &devices::state::KNOWN).unwrap();
    let mut serial_b = serial();
    let mut cmos_b = cmos();
    for record in snap.records() {
        match record.ty.kind {
            snapshot::kind::SERIAL => {
                let (port, s) = decode_record::<SerialState>(&record).unwrap();
                assert_eq!(port, 0x3f8);
                serial_b.restore_state(s).unwrap();
            }
            snapshot::kind::CMOS => {
                let (_, s) = decode_record::<CmosState>(&record).unwrap();
                cmos_b.restore_state(s).unwrap();
            }
            k => panic!("unexpected record kind {k:#x}"),
        }
    }
    assert_eq!(rd(&mut serial_b, 0), b'q');
    assert_eq!(rd(&mut cmos_b, 0), 0x41);
}

#[test]
fn pci_instance_is_the_config_address_form() {
    let address = devices::pci::PciAddress {
        bus: 0,
        device: 3,
        function: 0,
    };
    assert_eq!(address.instance(), 0x18);
    let address = devices::pci::PciAddress {
        bus: 1,
        device: 31,
        function: 7,
    };
    assert_eq!(address.instance(), 0x1ff);
}
