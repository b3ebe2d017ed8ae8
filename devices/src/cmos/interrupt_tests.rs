//! The RTC's update, alarm and periodic interrupts, on a clock the tests move.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::cycles::NANOS_PER_SEC;
use super::*;
use crate::state::DeviceState;

/// 2026-11-21 12:34:56 UTC.
const T_2026: i64 = 1_795_264_496;
const MS: i64 = 1_000_000;
const SEC: i64 = 1_000 * MS;

/// A CMOS on a clock the test moves (ns), with its interrupt line and timer connected.
struct Rtc {
    cmos: Cmos,
    clock: Arc<AtomicI64>,
    line: EventFd,
}

impl Rtc {
    /// At `T_2026` plus `nanos`.
    fn at(nanos: i64) -> Rtc {
        let clock = Arc::new(AtomicI64::new(T_2026 * SEC + nanos));
        let reader = clock.clone();
        let mut cmos = Cmos::with_clock_nanos(
            0,
            0,
            Box::new(move || i128::from(reader.load(Ordering::Relaxed))),
        );
        let line = EventFd::new(EFD_NONBLOCK).unwrap();
        cmos.connect_interrupt(line.try_clone().unwrap(), interrupt_timer().unwrap());
        let mut rtc = Rtc { cmos, clock, line };
        // No periodic rate, so PF (set at the rate whether or not PIE is on) stays out of
        // the flags the tests compare; the periodic test chooses its own rate.
        rtc.write(REG_A, 0x20);
        rtc
    }

    fn read(&mut self, reg: u8) -> u8 {
        self.cmos.write(INDEX_OFFSET, &[reg]);
        let mut byte = [0u8];
        self.cmos.read(DATA_OFFSET, &mut byte);
        byte[0]
    }

    fn write(&mut self, reg: u8, value: u8) {
        self.cmos.write(INDEX_OFFSET, &[reg]);
        self.cmos.write(DATA_OFFSET, &[value]);
    }

    /// Moves the clock on by `nanos` and lets the timer fire, as the run loop does.
    fn pass(&mut self, nanos: i64) {
        self.clock.fetch_add(nanos, Ordering::Relaxed);
        self.cmos.on_timer();
    }

    /// Interrupts pulsed on the line since the last call.
    fn pulses(&self) -> u64 {
        self.line.read().unwrap_or(0)
    }

    /// When the timer is armed for, in ns after `T_2026`.
    fn wake(&self) -> Option<i64> {
        self.cmos
            .next_wake()
            .map(|at| i64::try_from(at - i128::from(T_2026) * NANOS_PER_SEC).unwrap())
    }
}

const B_24H_BCD: u8 = REG_B_24H;

#[test]
fn the_update_interrupt_comes_at_each_second_and_waits_to_be_read() {
    let mut rtc = Rtc::at(300 * MS);
    rtc.write(REG_B, B_24H_BCD | REG_B_UIE);
    assert_eq!(rtc.wake(), Some(SEC), "armed for the next second");

    rtc.pass(700 * MS);
    assert_eq!(rtc.pulses(), 1);
    assert_eq!(rtc.wake(), None, "nothing more until the guest reads C");
    // Two more seconds unread: still one interrupt.
    rtc.pass(SEC);
    rtc.pass(SEC);
    assert_eq!(rtc.pulses(), 0);

    assert_eq!(rtc.read(REG_C), REG_C_IRQF | REG_C_UF);
    assert_eq!(rtc.read(REG_C), 0, "reading C clears it");
    assert_eq!(rtc.wake(), Some(4 * SEC));
    rtc.pass(SEC);
    assert_eq!(rtc.pulses(), 1);
}

#[test]
fn flags_are_set_without_their_interrupt_for_a_guest_that_polls() {
    let mut rtc = Rtc::at(0);
    assert_eq!(rtc.read(REG_C), 0);
    assert_eq!(rtc.wake(), None, "no interrupt enabled: no timer");

    rtc.clock.fetch_add(1500 * MS, Ordering::Relaxed);

    assert_eq!(rtc.read(REG_C) & REG_C_UF, REG_C_UF);
    assert_eq!(rtc.pulses(), 0);
}

#[test]
fn enabling_an_interrupt_whose_flag_is_pending_raises_it_at_once() {
    let mut rtc = Rtc::at(0);
    rtc.clock.fetch_add(SEC, Ordering::Relaxed);

    rtc.write(REG_B, B_24H_BCD | REG_B_UIE);

    assert_eq!(rtc.pulses(), 1);
    assert_eq!(rtc.read(REG_C), REG_C_IRQF | REG_C_UF);
}

#[test]
fn the_alarm_interrupts_when_the_time_matches_it() {
    // 12:34:56.5; the alarm at 12:34:58 (BCD, as Linux's rtc_cmos writes it).
    let mut rtc = Rtc::at(500 * MS);
    rtc.write(REG_SECONDS_ALARM, 0x58);
    rtc.write(REG_MINUTES_ALARM, 0x34);
    rtc.write(REG_HOURS_ALARM, 0x12);
    rtc.read(REG_C);
    rtc.write(REG_B, B_24H_BCD | REG_B_AIE);

    rtc.pass(SEC);
    assert_eq!(rtc.pulses(), 0, "12:34:57 is not the alarm");
    assert_eq!(rtc.read(REG_C), REG_C_UF);

    rtc.pass(SEC);
    assert_eq!(rtc.pulses(), 1);
    assert_eq!(rtc.read(REG_C), REG_C_IRQF | REG_C_AF | REG_C_UF);
}

#[test]
fn a_late_timer_still_catches_an_alarm_it_slept_through() {
    let mut rtc = Rtc::at(0);
    rtc.write(REG_SECONDS_ALARM, 0x59);
    rtc.write(REG_MINUTES_ALARM, 0x34);
    rtc.write(REG_HOURS_ALARM, ALARM_DONT_CARE);
    rtc.write(REG_B, B_24H_BCD | REG_B_AIE);

    // The VMM was stopped for 10 s: 12:34:59 passed meanwhile.
    rtc.pass(10 * SEC);

    assert_eq!(rtc.pulses(), 1);
    assert_eq!(rtc.read(REG_C) & REG_C_AF, REG_C_AF);
}

#[test]
fn an_alarm_of_dont_care_bytes_rings_every_second_in_binary_mode_too() {
    let mut rtc = Rtc::at(0);
    rtc.write(REG_B, REG_B_24H | REG_B_DM_BINARY);
    for alarm in [REG_SECONDS_ALARM, REG_MINUTES_ALARM, REG_HOURS_ALARM] {
        rtc.write(alarm, 0xff);
    }
    rtc.write(REG_B, REG_B_24H | REG_B_DM_BINARY | REG_B_AIE);

    for _ in 0..3 {
        rtc.pass(SEC);
        assert_eq!(rtc.pulses(), 1);
        assert_eq!(rtc.read(REG_C), REG_C_IRQF | REG_C_AF | REG_C_UF);
    }
}

#[test]
fn the_periodic_interrupt_follows_the_rate_in_register_a() {
    let mut rtc = Rtc::at(0);
    // Rate code 15: 2 Hz.
    rtc.write(REG_A, 0x2f);
    rtc.write(REG_B, B_24H_BCD | REG_B_PIE);
    assert_eq!(rtc.wake(), Some(500 * MS));

    rtc.pass(500 * MS);
    assert_eq!(rtc.pulses(), 1);
    assert_eq!(rtc.read(REG_C), REG_C_IRQF | REG_C_PF);

    // Rate code 3: 8192 Hz; the next tick is 1/8192 s on (rounded up to the ns).
    rtc.write(REG_A, 0x23);
    assert_eq!(rtc.wake(), Some(500 * MS + 122_071));
    // Rate 0 stops it.
    rtc.write(REG_A, 0x20);
    assert_eq!(rtc.wake(), None);
}

#[test]
fn set_and_a_divider_in_reset_hold_the_update_cycle() {
    let mut rtc = Rtc::at(0);
    rtc.write(REG_B, B_24H_BCD | REG_B_SET | REG_B_UIE);
    assert_eq!(rtc.read(REG_B) & REG_B_UIE, 0, "SET clears UIE");
    rtc.pass(2 * SEC);
    assert_eq!(rtc.read(REG_C), 0);

    rtc.write(REG_B, B_24H_BCD | REG_B_UIE);
    rtc.write(REG_A, 0x70);
    rtc.pass(2 * SEC);
    assert_eq!(rtc.read(REG_C), 0);
    assert_eq!(rtc.wake(), None);
    assert_eq!(rtc.pulses(), 0);
}

#[test]
fn a_guest_that_stops_reading_c_costs_the_vmm_no_wakeups() {
    let mut rtc = Rtc::at(0);
    rtc.write(REG_A, 0x23);
    rtc.write(REG_B, B_24H_BCD | REG_B_PIE | REG_B_AIE | REG_B_UIE);
    for alarm in [REG_SECONDS_ALARM, REG_MINUTES_ALARM, REG_HOURS_ALARM] {
        rtc.write(alarm, 0xff);
    }
    rtc.pass(SEC);

    assert_eq!(rtc.pulses(), 1);
    assert_eq!(rtc.wake(), None);
    assert_eq!(rtc.cmos.interrupt.as_ref().and_then(|irq| irq.armed), None);
}

#[test]
fn a_restored_rtc_keeps_its_pending_flags_and_rearms_for_its_enabled_interrupts() {
    let mut saved = Rtc::at(0);
    saved.write(REG_B, B_24H_BCD | REG_B_UIE);
    saved.pass(SEC);
    let state = saved.cmos.save_state().unwrap();

    let mut restored = Rtc::at(0);
    restored
        .clock
        .fetch_add(60 * SEC + 250 * MS, Ordering::Relaxed);
    restored.cmos.apply_state(state).unwrap();

    assert_eq!(restored.wake(), None, "an interrupt is still to be read");
    assert_eq!(restored.read(REG_C), REG_C_IRQF | REG_C_UF);
    assert_eq!(
        restored.wake(),
        Some(61 * SEC),
        "no cycles owed for the saved time"
    );
    restored.pass(750 * MS);
    assert_eq!(restored.pulses(), 1);
}

#[test]
fn hostile_register_writes_never_arm_the_timer_in_the_past_or_flood_the_line() {
    // Every value into each register that steers the interrupts, the clock moving on by an
    // uneven step after each, register C read after every third write.
    let mut rtc = Rtc::at(0);
    let mut reads_of_c = 0u64;
    let mut step = 0i64;
    for reg in [REG_B, REG_A, REG_SECONDS_ALARM, REG_HOURS_ALARM, REG_B] {
        for value in 0..=u8::MAX {
            rtc.write(reg, value);
            step += 1;
            if step % 3 == 0 {
                rtc.read(REG_C);
                reads_of_c += 1;
            }
            // 0 to 1.9 ms, so the seconds turn and every periodic rate ticks now and then.
            rtc.pass(step * 7919 % (2 * MS));
            let now = rtc.clock.load(Ordering::Relaxed) - T_2026 * SEC;
            if let Some(wake) = rtc.wake() {
                assert!(
                    wake > now,
                    "{reg:#x}={value:#x}: armed for {wake}, now {now}"
                );
            }
        }
    }
    // One interrupt per IRQF, and IRQF is cleared only by reading C.
    let pulses = rtc.pulses();
    assert!(
        pulses <= reads_of_c + 1,
        "{pulses} interrupts, {reads_of_c} reads of C"
    );
    assert!(pulses > 0, "some of those settings enabled an interrupt");
}

#[test]
fn the_host_timer_wakes_the_vmm_for_the_next_second() {
    // The real clock and timer: UIE on, the timer's descriptor becomes readable within a
    // second, and handling it raises the line.
    let mut cmos = Cmos::new(0, 0);
    let line = EventFd::new(EFD_NONBLOCK).unwrap();
    cmos.connect_interrupt(line.try_clone().unwrap(), interrupt_timer().unwrap());
    let fd = cmos.timer_fd().unwrap();
    cmos.write(INDEX_OFFSET, &[REG_B]);
    cmos.write(DATA_OFFSET, &[B_24H_BCD | REG_B_UIE]);

    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pollfd` is a valid, initialised array of one entry for the call's duration.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 1500) };
    assert_eq!(ready, 1, "the RTC timer did not fire within 1.5 s");
    cmos.on_timer();

    assert_eq!(line.read().unwrap(), 1);
}
