//! Wires every legacy device onto one port-I/O bus at the ports the VMM uses
//! and checks guest accesses reach them through the bus from several threads.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::thread;

use devices::{
    ACPI_PM_LEN, AcpiPm, Bus, CMOS_INDEX_PORT, CMOS_PORT_LEN, Cmos, I8042, I8042_PORT_LEN,
    PM1A_CNT_BLK_PORT, PM1A_EVT_BLK_PORT, RESET_CONTROL_LEN, RESET_CONTROL_PORT, ResetControl,
    SERIAL_PORT_LEN, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLEEP_TYPE_S5, Serial,
};
use vmm_sys_util::eventfd::EventFd;

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn evt() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

#[test]
fn legacy_devices_on_one_bus_answer_at_their_ports() {
    // Arrange
    let reset = evt();
    let poweroff = evt();
    let out = SharedBuf::default();
    let bus = Bus::new();
    let serial = Serial::new(evt(), evt(), Box::new(out.clone()));
    bus.insert(Arc::new(Mutex::new(serial)), 0x3f8, SERIAL_PORT_LEN)
        .unwrap();
    bus.insert(
        Arc::new(Mutex::new(I8042::new(reset.try_clone().unwrap()))),
        0x60,
        I8042_PORT_LEN,
    )
    .unwrap();
    bus.insert(
        Arc::new(Mutex::new(Cmos::with_clock(256 << 20, 0, Box::new(|| 0)))),
        CMOS_INDEX_PORT,
        CMOS_PORT_LEN,
    )
    .unwrap();
    bus.insert(
        Arc::new(Mutex::new(AcpiPm::new(poweroff.try_clone().unwrap()))),
        u64::from(PM1A_EVT_BLK_PORT),
        ACPI_PM_LEN,
    )
    .unwrap();
    bus.insert(
        Arc::new(Mutex::new(ResetControl::new(reset.try_clone().unwrap()))),
        RESET_CONTROL_PORT,
        RESET_CONTROL_LEN,
    )
    .unwrap();
    let bus = Arc::new(bus);

    // Act: two "vCPUs" write to the console concurrently.
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let bus = bus.clone();
            thread::spawn(move || {
                for _ in 0..100 {
                    assert!(bus.write(0x3f8, b"x"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut year = [0u8];
    bus.write(0x70, &[0x09]);
    bus.read(0x71, &mut year);
    let s5 = (SLEEP_TYPE_S5 << 10) | (1 << 13);
    bus.write(u64::from(PM1A_CNT_BLK_PORT), &s5.to_le_bytes());
    bus.write(0x64, &[0xfe]);
    bus.write(0xcf9, &[0x06]);

    // Assert
    assert_eq!(out.0.lock().unwrap().len(), 200);
    assert_eq!(year, [0x70], "1970 in BCD");
    assert_eq!(poweroff.read().unwrap(), 1);
    assert_eq!(reset.read().unwrap(), 2, "i8042 and 0xcf9 both reset");
    let mut port_b = [0u8];
    assert!(bus.read(0x61, &mut port_b), "inside the i8042's range");
    assert_eq!(port_b, [0xff], "but not decoded by it");
    let mut unclaimed = [0u8];
    assert!(!bus.read(0x65, &mut unclaimed));
}

/// The PM device alone on a bus at its port, and the event it powers off through.
fn acpi_pm_bus() -> (Bus, EventFd) {
    let poweroff = evt();
    let bus = Bus::new();
    bus.insert(
        Arc::new(Mutex::new(AcpiPm::new(poweroff.try_clone().unwrap()))),
        u64::from(PM1A_EVT_BLK_PORT),
        ACPI_PM_LEN,
    )
    .unwrap();
    (bus, poweroff)
}

#[test]
fn reduced_hardware_sleep_control_powers_off_on_s5_only() {
    let (bus, poweroff) = acpi_pm_bus();
    let control = u64::from(SLEEP_CONTROL_PORT);
    let status = u64::from(SLEEP_STATUS_PORT);
    assert_eq!((control, status), (0x606, 0x607));

    // Act / assert: what ACPICA writes for S3, and S5 without SLP_EN, do nothing.
    assert!(bus.write(status, &[0x80]), "WAK_STS clear is decoded");
    assert!(bus.write(control, &[0x20 | (3 << 2)]));
    assert!(bus.write(control, &[0x14]));
    assert!(poweroff.read().is_err());
    let mut regs = [0xffu8; 2];
    assert!(bus.read(control, &mut regs[..1]));
    assert!(bus.read(status, &mut regs[1..]));
    assert_eq!(regs, [0, 0], "write-only control, WAK_STS never set");

    // SLP_TYP 5 << 2 | SLP_EN, as one byte: power off.
    assert!(bus.write(control, &[0x34]));
    assert_eq!(poweroff.read().unwrap(), 1);
}

#[test]
fn pm1_cnt_still_powers_off_for_guests_with_the_old_fadt() {
    let (bus, poweroff) = acpi_pm_bus();

    let s5 = (SLEEP_TYPE_S5 << 10) | (1 << 13);
    assert!(bus.write(u64::from(PM1A_CNT_BLK_PORT), &s5.to_le_bytes()));

    assert_eq!(poweroff.read().unwrap(), 1);
}
