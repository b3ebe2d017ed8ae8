//! The MC146818 CMOS RTC and NVRAM at ports 0x70 (index) and 0x71 (data), and its
//! interrupt (ISA IRQ 8).
//!
//! Inserted at base 0x70 with length 2. Bit 7 of the index (NMI disable) is
//! ignored: NMIs are KVM's business. Only byte accesses are decoded.
//!
//! Time registers are computed from the clock (host UTC by default) on every
//! read, so the guest never sees a stale or frozen clock: register A's UIP bit
//! always reads 0. The output honours register B's DM (binary vs BCD) and
//! 24/12-hour bits.
//!
//! A guest that sets the time (Linux's `mc146818_set_time`: set B.SET, write
//! the time registers, clear B.SET) gets a frozen snapshot while SET is held
//! and its writes land in it; when SET is cleared the snapshot is converted
//! back to unix time and kept as an offset from the clock. Time-register
//! writes without SET are ignored (on hardware the next update would
//! overwrite them anyway).
//!
//! **Interrupts.** The update cycle (once a second: UF, and AF when the time
//! matches the alarm registers, whose values 0xC0-0xFF match anything) and the
//! periodic rate of register A (PF) set their flags in register C, counted on
//! the host clock ([`cycles`]) whenever the guest reads C or changes A or B, so a
//! guest that polls C sees them without a timer. A flag whose enable bit in B
//! (UIE, AIE, PIE) is set raises IRQF and pulses IRQ 8 (an edge); reading C
//! clears the flags and lets the next one interrupt. While an interrupt is
//! enabled and none is waiting to be read, the device keeps a host timer armed
//! for its next update cycle or periodic tick; the VMM's run loop calls
//! [`Cmos::on_timer`] when it fires. So the VMM wakes for the RTC only while the
//! guest both asked for interrupts and acknowledged the last one: at most once
//! per period (8192 Hz at the fastest rate) and never for a guest that stops
//! reading C. Linux uses the alarm for `/sys/class/rtc/rtc0/wakealarm` and for
//! the update interrupt `hwclock` waits on (`RTC_UIE_ON`), which without this
//! waited forever.
//!
//! Memory-size registers follow QEMU/crosvm so firmware-style probes agree
//! with the e820 map; the rest of the 128 bytes is plain NVRAM.

mod calendar;
mod cycles;
#[cfg(test)]
mod interrupt_tests;
#[cfg(test)]
mod register_tests;
mod state;

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::warn;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::BusDevice;
pub use calendar::{
    DateTime, civil_from_days, datetime_from_unix, days_from_civil, unix_from_datetime,
};
use calendar::{from_bcd, to_bcd};
pub use state::{CMOS_NVRAM_SIZE, CmosState};

/// Port of the index register; the device's base.
pub const CMOS_INDEX_PORT: u64 = 0x70;
/// Number of ports to insert the device with.
pub const CMOS_PORT_LEN: u64 = 2;
/// The RTC's ISA interrupt, which is also its GSI (IOAPIC pin), as the DSDT's RTC device
/// declares it.
pub const RTC_IRQ: u32 = 8;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
const NVRAM_SIZE: usize = 128;
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_HOURS_ALARM: u8 = 0x05;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
const REG_MEM_16M_LO: u8 = 0x34;
const REG_MEM_16M_HI: u8 = 0x35;
const REG_MEM_4G_LO: u8 = 0x5b;
const REG_MEM_4G_MID: u8 = 0x5c;
const REG_MEM_4G_HI: u8 = 0x5d;

const TIME_REGS: [u8; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_WEEKDAY,
    REG_DAY,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

/// Each alarm register with the time register it is compared with.
const ALARMS: [(u8, u8); 3] = [
    (REG_SECONDS_ALARM, REG_SECONDS),
    (REG_MINUTES_ALARM, REG_MINUTES),
    (REG_HOURS_ALARM, REG_HOURS),
];
/// An alarm register whose two high bits are set matches every value.
const ALARM_DONT_CARE: u8 = 0xc0;

/// Register A: 32.768 kHz time base, 1024 Hz periodic rate.
const REG_A_DEFAULT: u8 = 0x26;
const REG_A_UIP: u8 = 0x80;
/// Register A's divider-control bits; values above 010 (the 32.768 kHz base) hold the
/// divider in reset, which stops the update cycles and the periodic ticks.
const REG_A_DIVIDER: u8 = 0x70;
const REG_A_DIVIDER_RUNNING_MAX: u8 = 0x20;
const REG_B_SET: u8 = 0x80;
const REG_B_PIE: u8 = 0x40;
const REG_B_AIE: u8 = 0x20;
const REG_B_UIE: u8 = 0x10;
const REG_B_DM_BINARY: u8 = 0x04;
const REG_B_24H: u8 = 0x02;
const REG_C_IRQF: u8 = 0x80;
const REG_C_PF: u8 = 0x40;
const REG_C_AF: u8 = 0x20;
const REG_C_UF: u8 = 0x10;
/// The flag bits of register C, which are also the enable bits of register B.
const INTERRUPT_SOURCES: u8 = REG_C_PF | REG_C_AF | REG_C_UF;
const REG_D_VRT: u8 = 0x80;
const HOURS_PM: u8 = 0x80;

/// Seconds in a day: an update cycle every second for a day meets every alarm time.
const SECONDS_PER_DAY: i64 = 86_400;

const MIB: u64 = 1 << 20;
const MEM_UNIT: u64 = 64 * 1024;

/// The host's real-time clock in nanoseconds since the unix epoch.
fn host_now() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        // A host clock before 1970 is broken; count backwards rather than fail.
        Err(e) => i128::try_from(e.duration().as_nanos())
            .unwrap_or(i128::MAX)
            .saturating_neg(),
    }
}

/// A non-blocking `CLOCK_MONOTONIC` timer for [`Cmos::connect_interrupt`]: the run loop
/// reads it only when epoll says it fired, but a vCPU may re-arm it in between, and a
/// blocking read would then wait for the next expiry on the main thread.
pub fn interrupt_timer() -> std::io::Result<TimerFd> {
    // SAFETY: timerfd_create takes no pointers; its result is checked before use.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new timerfd this function owns and hands over.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

/// How the RTC interrupts its guest: the IRQ 8 line (an irqfd) and the host timer that
/// wakes the VMM for the next update cycle or periodic tick.
struct RtcInterrupt {
    line: EventFd,
    /// Non-blocking, on `CLOCK_MONOTONIC`; armed with the time left until the deadline.
    timer: TimerFd,
    /// The host-clock time (ns) the timer is armed for, `None` when it is disarmed.
    armed: Option<i128>,
    /// Whether a failure to pulse the line or arm the timer was logged (once is enough).
    warned: bool,
}

impl RtcInterrupt {
    fn warn_once(&mut self, what: &str, err: &dyn std::fmt::Display) {
        if !self.warned {
            self.warned = true;
            warn!("cmos: cannot {what}: {err}; the guest's RTC interrupts may stop");
        }
    }
}

/// The CMOS RTC and NVRAM; see the module documentation.
pub struct Cmos {
    index: u8,
    /// The NVRAM; register C's byte holds the pending interrupt flags.
    data: [u8; NVRAM_SIZE],
    /// The clock, in nanoseconds since the unix epoch.
    now: Box<dyn Fn() -> i128 + Send>,
    /// Seconds the guest's clock is ahead of `now()` after it set the time.
    offset: i64,
    /// The host second of the last update cycle accounted for in register C.
    last_update: i64,
    /// The last periodic tick accounted for, at the current rate.
    last_tick: i128,
    /// The interrupt line and timer, once [`Cmos::connect_interrupt`] gave them.
    interrupt: Option<RtcInterrupt>,
}

impl Cmos {
    /// Creates the device with the host's real-time clock.
    ///
    /// `mem_below_4g` is all guest RAM below 4 GiB (including the first
    /// 16 MiB), `mem_above_4g` the RAM from 4 GiB up, both in bytes.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Cmos {
        Cmos::with_clock_nanos(mem_below_4g, mem_above_4g, Box::new(host_now))
    }

    /// Creates the device with `now` (unix seconds, UTC) as its clock.
    pub fn with_clock(
        mem_below_4g: u64,
        mem_above_4g: u64,
        now: Box<dyn Fn() -> i64 + Send>,
    ) -> Cmos {
        let nanos = move || cycles::start_of_second(now());
        Cmos::with_clock_nanos(mem_below_4g, mem_above_4g, Box::new(nanos))
    }

    /// Creates the device with `now` (unix time in nanoseconds, UTC) as its clock.
    pub fn with_clock_nanos(
        mem_below_4g: u64,
        mem_above_4g: u64,
        now: Box<dyn Fn() -> i128 + Send>,
    ) -> Cmos {
        let mut cmos = Cmos {
            index: 0,
            data: [0u8; NVRAM_SIZE],
            now,
            offset: 0,
            last_update: 0,
            last_tick: 0,
            interrupt: None,
        };
        cmos.set(REG_A, REG_A_DEFAULT);
        cmos.set(REG_B, REG_B_24H);
        cmos.set(REG_D, REG_D_VRT);
        cmos.restart_counting();

        let [lo, hi, ..] = (mem_below_4g.saturating_sub(16 * MIB) / MEM_UNIT)
            .min(0xffff)
            .to_le_bytes();
        cmos.set(REG_MEM_16M_LO, lo);
        cmos.set(REG_MEM_16M_HI, hi);

        let [lo, mid, hi, ..] = (mem_above_4g / MEM_UNIT).min(0xff_ffff).to_le_bytes();
        cmos.set(REG_MEM_4G_LO, lo);
        cmos.set(REG_MEM_4G_MID, mid);
        cmos.set(REG_MEM_4G_HI, hi);
        cmos
    }

    /// Gives the device its interrupt: `line` is signalled for each interrupt (an irqfd on
    /// [`RTC_IRQ`]), `timer` (non-blocking) is armed for the next event while one is
    /// enabled, and its descriptor ([`Cmos::timer_fd`]) must be watched by the caller, who
    /// calls [`Cmos::on_timer`] when it is readable. Without this the device sets its flags
    /// but never interrupts.
    pub fn connect_interrupt(&mut self, line: EventFd, timer: TimerFd) {
        self.interrupt = Some(RtcInterrupt {
            line,
            timer,
            armed: None,
            warned: false,
        });
        self.rearm();
    }

    /// The descriptor of the interrupt timer, once connected.
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.interrupt.as_ref().map(|irq| irq.timer.as_raw_fd())
    }

    /// The interrupt timer fired: accounts for the cycles due and arms it for the next.
    pub fn on_timer(&mut self) {
        if let Some(irq) = self.interrupt.as_mut() {
            // Non-blocking: nothing to read (EAGAIN) if a vCPU re-armed it meanwhile.
            let _ = irq.timer.wait();
            irq.armed = None;
        }
        self.catch_up();
        self.rearm();
    }

    /// NVRAM byte `reg`. Every register number is below `NVRAM_SIZE` (the
    /// index register is masked with `INDEX_MASK`), so the fallback is never
    /// taken; it reads as a floating bus.
    fn get(&self, reg: u8) -> u8 {
        self.data.get(usize::from(reg)).copied().unwrap_or(0xff)
    }

    /// Sets NVRAM byte `reg`; see [`Cmos::get`] for why it is always in range.
    fn set(&mut self, reg: u8, value: u8) {
        if let Some(byte) = self.data.get_mut(usize::from(reg)) {
            *byte = value;
        }
    }

    fn reg_b(&self) -> u8 {
        self.get(REG_B)
    }

    fn guest_now(&self) -> i64 {
        cycles::second_of((self.now)()).saturating_add(self.offset)
    }

    /// Encodes `v` (0..=99) in the guest's chosen number format.
    fn encode(&self, v: u8) -> u8 {
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            Some(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.reg_b() & REG_B_24H != 0 {
            return self.encode(hour);
        }
        // 12-hour mode: 12 AM is midnight, 12 PM is noon; PM is bit 7 on top
        // of the (BCD or binary) 1..=12 value.
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        let pm = if hour >= 12 { HOURS_PM } else { 0 };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, raw: u8) -> Option<u8> {
        if self.reg_b() & REG_B_24H != 0 {
            return self.decode(raw).filter(|h| *h < 24);
        }
        let h12 = self
            .decode(raw & !HOURS_PM)
            .filter(|h| (1..=12).contains(h))?;
        let pm = if raw & HOURS_PM != 0 { 12 } else { 0 };
        // Bounded: h12 is 1..=12, so the result is 0..=23.
        #[allow(clippy::arithmetic_side_effects)]
        Some(h12 % 12 + pm)
    }

    /// The value of time register `reg` at `secs`.
    fn time_register(&self, reg: u8, secs: i64) -> u8 {
        self.time_register_of(reg, &datetime_from_unix(secs))
    }

    /// The value of time register `reg` at the broken-down time `dt`.
    fn time_register_of(&self, reg: u8, dt: &DateTime) -> u8 {
        // Years outside 0..=9999 cannot be shown; clamp rather than wrap.
        let year = dt.year.clamp(0, 9999);
        // Both are 0..=99 for a year in 0..=9999, so the fallback never applies.
        let (century, year_of_century) = (
            u8::try_from(year / 100).unwrap_or(99),
            u8::try_from(year % 100).unwrap_or(99),
        );
        match reg {
            REG_SECONDS => self.encode(dt.second),
            REG_MINUTES => self.encode(dt.minute),
            REG_HOURS => self.encode_hour(dt.hour),
            REG_WEEKDAY => self.encode(dt.weekday),
            REG_DAY => self.encode(dt.day),
            REG_MONTH => self.encode(dt.month),
            REG_YEAR => self.encode(year_of_century),
            REG_CENTURY => self.encode(century),
            _ => 0,
        }
    }

    /// Copies the current time into the time registers (entering SET).
    fn snapshot_time(&mut self) {
        let now = self.guest_now();
        for reg in TIME_REGS {
            self.set(reg, self.time_register(reg, now));
        }
    }

    /// Reads back the time registers the guest wrote while SET was held.
    fn decode_snapshot(&self) -> Option<DateTime> {
        let get = |reg: u8| self.decode(self.get(reg));
        let dt = DateTime {
            // At most 255 * 100 + 255 (binary mode): cannot overflow.
            #[allow(clippy::arithmetic_side_effects)]
            year: i64::from(get(REG_CENTURY)?) * 100 + i64::from(get(REG_YEAR)?),
            month: get(REG_MONTH).filter(|m| (1..=12).contains(m))?,
            day: get(REG_DAY).filter(|d| (1..=31).contains(d))?,
            hour: self.decode_hour(self.get(REG_HOURS))?,
            minute: get(REG_MINUTES).filter(|m| *m < 60)?,
            second: get(REG_SECONDS).filter(|s| *s < 60)?,
            weekday: 0,
        };
        Some(dt)
    }

    fn read_data(&mut self) -> u8 {
        let reg = self.index;
        match reg {
            _ if TIME_REGS.contains(&reg) && self.reg_b() & REG_B_SET == 0 => {
                self.time_register(reg, self.guest_now())
            }
            REG_A => self.get(REG_A) & !REG_A_UIP,
            REG_C => self.take_flags(),
            REG_D => REG_D_VRT,
            _ => self.get(reg),
        }
    }

    fn write_data(&mut self, value: u8) {
        let reg = self.index;
        match reg {
            _ if TIME_REGS.contains(&reg) => {
                if self.reg_b() & REG_B_SET != 0 {
                    self.set(reg, value);
                }
            }
            REG_B => self.write_reg_b(value),
            REG_A => self.write_reg_a(value),
            REG_C | REG_D => {}
            _ => self.set(reg, value),
        }
    }

    /// A new rate or divider setting: the cycles so far are accounted for under the old
    /// one, the periodic ticks count on from now at the new rate.
    fn write_reg_a(&mut self, value: u8) {
        self.catch_up();
        // UIP is read-only.
        self.set(REG_A, value & !REG_A_UIP);
        self.restart_counting();
        self.rearm();
    }

    fn write_reg_b(&mut self, value: u8) {
        // Flags of the cycles so far, under the SET and enable bits they happened under.
        self.catch_up();
        let was_set = self.reg_b() & REG_B_SET != 0;
        let is_set = value & REG_B_SET != 0;
        if !was_set && is_set {
            // Freeze in the format in force before this write; Linux switches
            // format only with SET already held, and then rewrites every field.
            self.snapshot_time();
        }
        if was_set && !is_set {
            // Decode in the format the guest wrote the fields in.
            match self.decode_snapshot() {
                Some(dt) => {
                    let host_second = cycles::second_of((self.now)());
                    self.offset = unix_from_datetime(&dt).saturating_sub(host_second);
                }
                None => warn!("cmos: guest set an invalid time; keeping the old clock"),
            }
        }
        // Setting SET clears UIE, as on the MC146818: no update interrupts while the
        // updates are held.
        let value = if is_set { value & !REG_B_UIE } else { value };
        self.set(REG_B, value);
        // An interrupt enabled while its flag is pending is raised at once.
        self.raise(0);
        self.rearm();
    }

    /// Register C read: the pending flags, which the read clears (and with them IRQF,
    /// so the next flag interrupts again).
    fn take_flags(&mut self) -> u8 {
        self.catch_up();
        let flags = self.get(REG_C);
        self.set(REG_C, 0);
        self.rearm();
        flags
    }

    /// Whether the update cycles run: not while SET is held or the divider is in reset.
    fn updates_running(&self) -> bool {
        self.reg_b() & REG_B_SET == 0 && self.divider_running()
    }

    fn divider_running(&self) -> bool {
        self.get(REG_A) & REG_A_DIVIDER <= REG_A_DIVIDER_RUNNING_MAX
    }

    /// The periodic rate (2^e Hz) while the divider runs and register A selects one.
    fn periodic_exponent(&self) -> Option<u32> {
        if !self.divider_running() {
            return None;
        }
        cycles::periodic_exponent(self.get(REG_A))
    }

    /// Counts update cycles and periodic ticks from now on (at creation, when the rate
    /// changes, after a restore): none is owed for the time before.
    fn restart_counting(&mut self) {
        let now = (self.now)();
        self.last_update = cycles::second_of(now);
        if let Some(exponent) = self.periodic_exponent() {
            self.last_tick = cycles::periodic_index(now, exponent);
        }
    }

    /// Accounts for the update cycles and periodic ticks since the last call: sets their
    /// flags in register C and raises the interrupt for an enabled one.
    fn catch_up(&mut self) {
        let now = (self.now)();
        let second = cycles::second_of(now);
        let mut flags = 0;
        if second > self.last_update && self.updates_running() {
            flags |= REG_C_UF;
            if self.alarm_met_after(self.last_update, second) {
                flags |= REG_C_AF;
            }
        }
        // Also when the host clock stepped back: the cycles go on from its new time.
        self.last_update = second;
        if let Some(exponent) = self.periodic_exponent() {
            let tick = cycles::periodic_index(now, exponent);
            if tick > self.last_tick {
                flags |= REG_C_PF;
            }
            self.last_tick = tick;
        }
        self.raise(flags);
    }

    /// Whether an update cycle in host seconds `after` (exclusive) to `until` (inclusive)
    /// met the alarm. Only the last day of them is looked at: a day of update cycles meets
    /// every time an alarm can name, and a long gap (the VMM stopped, the host asleep)
    /// costs no more than a day's comparisons.
    fn alarm_met_after(&self, after: i64, until: i64) -> bool {
        let first = after
            .saturating_add(1)
            .max(until.saturating_sub(SECONDS_PER_DAY - 1));
        (first..=until).any(|second| self.alarm_matches(second.saturating_add(self.offset)))
    }

    /// Whether the alarm registers match the guest's time `secs`, compared as the time
    /// registers would read then (format included, as the chip compares the bytes).
    fn alarm_matches(&self, secs: i64) -> bool {
        let now = datetime_from_unix(secs);
        ALARMS.iter().all(|&(alarm, reg)| {
            let wanted = self.get(alarm);
            wanted & ALARM_DONT_CARE == ALARM_DONT_CARE
                || wanted == self.time_register_of(reg, &now)
        })
    }

    /// Adds `flags` to register C; if a pending flag's interrupt is enabled and IRQF is not
    /// yet set, sets it and pulses the line (IRQ 8 is an edge: one pulse per IRQF).
    fn raise(&mut self, flags: u8) {
        let pending = self.get(REG_C) | flags;
        let due = pending & self.reg_b() & INTERRUPT_SOURCES != 0;
        if !due || pending & REG_C_IRQF != 0 {
            self.set(REG_C, pending);
            return;
        }
        self.set(REG_C, pending | REG_C_IRQF);
        if let Some(irq) = self.interrupt.as_mut() {
            if let Err(err) = irq.line.write(1) {
                irq.warn_once("raise IRQ 8", &err);
            }
        }
    }

    /// When the timer must next wake the VMM: never while an interrupt waits to be read
    /// (no other can be raised until then) or none is enabled; else at the next update
    /// cycle (UIE or AIE) or periodic tick (PIE), whichever comes first.
    fn next_wake(&self) -> Option<i128> {
        if self.get(REG_C) & REG_C_IRQF != 0 {
            return None;
        }
        let enabled = self.reg_b();
        let update = (enabled & (REG_B_UIE | REG_B_AIE) != 0 && self.updates_running())
            .then(|| cycles::start_of_second(self.last_update.saturating_add(1)));
        let tick = (enabled & REG_B_PIE != 0)
            .then(|| self.periodic_exponent())
            .flatten()
            .map(|e| cycles::periodic_tick_start(self.last_tick.saturating_add(1), e));
        match (update, tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Arms (or disarms) the timer for [`Cmos::next_wake`], unless it already is.
    fn rearm(&mut self) {
        if self.interrupt.is_none() {
            return;
        }
        let deadline = self.next_wake();
        let Some(irq) = self.interrupt.as_mut() else {
            return;
        };
        // Most register accesses leave the deadline as it was: no clock read, no syscall.
        if irq.armed == deadline {
            return;
        }
        irq.armed = deadline;
        let result = match deadline {
            // A deadline already past still needs a wake-up: a zero time would disarm.
            Some(at) => {
                let now = (self.now)();
                let nanos = u64::try_from(at.saturating_sub(now).max(1)).unwrap_or(u64::MAX);
                irq.timer.reset(Duration::from_nanos(nanos), None)
            }
            None => irq.timer.clear(),
        };
        if let Err(err) = result {
            irq.warn_once("arm the RTC timer", &err);
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            INDEX_OFFSET => self.index,
            DATA_OFFSET => self.read_data(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = *data else {
            return;
        };
        match offset {
            INDEX_OFFSET => self.index = value & INDEX_MASK,
            DATA_OFFSET => self.write_data(value),
            _ => {}
        }
    }
}
