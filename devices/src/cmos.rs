//! The MC146818 CMOS RTC and NVRAM at ports 0x70 (index) and 0x71 (data).
//!
//! Inserted at base 0x70 with length 2. Bit 7 of the index (NMI disable) is
//! ignored: NMIs are KVM's business. Only byte accesses are decoded.
//!
//! Time registers are computed from the clock (host UTC by default) on every
//! read, so the guest never sees a stale or frozen clock and there is no
//! update cycle to emulate: register A's UIP bit always reads 0. The output
//! honours register B's DM (binary vs BCD) and 24/12-hour bits.
//!
//! A guest that sets the time (Linux's `mc146818_set_time`: set B.SET, write
//! the time registers, clear B.SET) gets a frozen snapshot while SET is held
//! and its writes land in it; when SET is cleared the snapshot is converted
//! back to unix time and kept as an offset from the clock. Time-register
//! writes without SET are ignored (on hardware the next update would
//! overwrite them anyway).
//!
//! Memory-size registers follow QEMU/crosvm so firmware-style probes agree
//! with the e820 map; the rest of the 128 bytes is plain NVRAM.

use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;

use crate::bus::BusDevice;

/// Port of the index register; the device's base.
pub const CMOS_INDEX_PORT: u64 = 0x70;
/// Number of ports to insert the device with.
pub const CMOS_PORT_LEN: u64 = 2;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
const NVRAM_SIZE: usize = 128;
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
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

/// Register A: 32.768 kHz time base, 1024 Hz periodic rate.
const REG_A_DEFAULT: u8 = 0x26;
const REG_A_UIP: u8 = 0x80;
const REG_B_SET: u8 = 0x80;
const REG_B_DM_BINARY: u8 = 0x04;
const REG_B_24H: u8 = 0x02;
const REG_D_VRT: u8 = 0x80;
const HOURS_PM: u8 = 0x80;

const MIB: u64 = 1 << 20;
const MEM_UNIT: u64 = 64 * 1024;

/// A broken-down UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: i64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// Day of the week as the RTC counts it: 1 = Sunday ..= 7 = Saturday.
    pub weekday: u8,
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d`.
///
/// Howard Hinnant's `days_from_civil`: shift the year to start in March so
/// the leap day is last, then count whole 400-year eras plus days within.
///
/// Exact for every year whose day count fits an `i64` (|year| < ~2.5e16);
/// beyond that the count saturates instead of overflowing. The guest can only
/// ever produce years 0..=25599 (century and year registers, one byte each).
pub fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let m = i64::from(month);
    let d = i64::from(day);
    let y = if m <= 2 { year.saturating_sub(1) } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    // Bounded: m, d <= 255 and yoe in [0, 399], so every intermediate value
    // is below 200_000.
    #[allow(clippy::arithmetic_side_effects)]
    let doe = {
        let mp = (m + 9) % 12; // March = 0 .. February = 11
        let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365] for valid dates
        yoe * 365 + yoe / 4 - yoe / 100 + doy // [0, 146096] for valid dates
    };
    // `era` is input-controlled (any i64 / 400): saturate.
    era.saturating_mul(146_097)
        .saturating_add(doe)
        .saturating_sub(719_468)
}

/// The proleptic Gregorian (year, month, day) `days` after 1970-01-01; the
/// inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    // Only this first step can overflow (for `days` within 719_468 of
    // i64::MAX, a date ~2.5e16 years out); saturate there.
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    // Bounded: doe is in [0, 146096] so every step below stays in the
    // ranges noted; `era * 400` is at most i64::MAX / 146_097 * 400, far
    // from overflow; month <= 12 and day <= 31 fit a u8.
    #[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
    {
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11]
        let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
        let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month as u8, day as u8)
    }
}

/// Breaks unix seconds down into a UTC [`DateTime`].
pub fn datetime_from_unix(secs: i64) -> DateTime {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400); // [0, 86399]
    let (year, month, day) = civil_from_days(days);
    // Bounded: sod is in [0, 86399], so hour < 24, minute and second < 60;
    // `days + 4` cannot overflow as |days| <= i64::MAX / 86_400; the weekday
    // is in [1, 7].
    #[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
    DateTime {
        year,
        month,
        day,
        hour: (sod / 3600) as u8,
        minute: (sod / 60 % 60) as u8,
        second: (sod % 60) as u8,
        // 1970-01-01 was a Thursday (RTC weekday 5).
        weekday: ((days + 4).rem_euclid(7) + 1) as u8,
    }
}

impl DateTime {
    /// Seconds since midnight; at most 255 * 3600 + 255 * 60 + 255 even for
    /// out-of-range fields, so it cannot overflow.
    #[allow(clippy::arithmetic_side_effects)]
    fn seconds_of_day(&self) -> i64 {
        i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second)
    }
}

/// Unix seconds of a UTC [`DateTime`] (its `weekday` is not used).
///
/// Saturates for dates whose second count does not fit an `i64`; the guest
/// can set years only up to 25599.
pub fn unix_from_datetime(dt: &DateTime) -> i64 {
    days_from_civil(dt.year, dt.month, dt.day)
        .saturating_mul(86_400)
        .saturating_add(dt.seconds_of_day())
}

/// `v` (0..=99) in BCD.
fn to_bcd(v: u8) -> u8 {
    // Callers pass 0..=99 (clock fields, year % 100, year / 100 of a clamped
    // year), so `v / 10 < 10` and the shift keeps every bit. Out-of-range
    // input would merely lose high bits, never panic.
    ((v / 10).wrapping_shl(4)) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    // Bounded: hi, lo < 10 so the result is at most 99.
    #[allow(clippy::arithmetic_side_effects)]
    (hi < 10 && lo < 10).then(|| hi * 10 + lo)
}

fn host_unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // A host clock before 1970 is broken; count backwards rather than fail.
        Err(e) => i64::try_from(e.duration().as_secs())
            .unwrap_or(i64::MAX)
            .saturating_neg(),
    }
}

/// The CMOS RTC and NVRAM; see the module documentation.
pub struct Cmos {
    index: u8,
    data: [u8; NVRAM_SIZE],
    now: Box<dyn Fn() -> i64 + Send>,
    /// Seconds the guest's clock is ahead of `now()` after it set the time.
    offset: i64,
}

impl Cmos {
    /// Creates the device with the host's real-time clock.
    ///
    /// `mem_below_4g` is all guest RAM below 4 GiB (including the first
    /// 16 MiB), `mem_above_4g` the RAM from 4 GiB up, both in bytes.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Cmos {
        Cmos::with_clock(mem_below_4g, mem_above_4g, Box::new(host_unix_now))
    }

    /// Creates the device with `now` (unix seconds, UTC) as its clock.
    pub fn with_clock(
        mem_below_4g: u64,
        mem_above_4g: u64,
        now: Box<dyn Fn() -> i64 + Send>,
    ) -> Cmos {
        let mut cmos = Cmos {
            index: 0,
            data: [0u8; NVRAM_SIZE],
            now,
            offset: 0,
        };
        cmos.set(REG_A, REG_A_DEFAULT);
        cmos.set(REG_B, REG_B_24H);
        cmos.set(REG_D, REG_D_VRT);

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
        (self.now)().saturating_add(self.offset)
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
        let dt = datetime_from_unix(secs);
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

    fn read_data(&self) -> u8 {
        let reg = self.index;
        match reg {
            _ if TIME_REGS.contains(&reg) && self.reg_b() & REG_B_SET == 0 => {
                self.time_register(reg, self.guest_now())
            }
            REG_A => self.get(REG_A) & !REG_A_UIP,
            // No RTC interrupts are ever raised, so no flags are pending.
            REG_C => 0,
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
            // UIP is read-only.
            REG_A => self.set(REG_A, value & !REG_A_UIP),
            REG_C | REG_D => {}
            _ => self.set(reg, value),
        }
    }

    fn write_reg_b(&mut self, value: u8) {
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
                Some(dt) => self.offset = unix_from_datetime(&dt).saturating_sub((self.now)()),
                None => warn!("cmos: guest set an invalid time; keeping the old clock"),
            }
        }
        self.set(REG_B, value);
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

/// The CMOS state a snapshot holds (record `CMOS`): the index register, the 128 bytes of
/// NVRAM, and how far the guest set its clock from the host's. The time registers are
/// computed from the host clock plus that offset on every read, so a restored guest's RTC
/// goes on from the host's time (wall-clock time passes while a VM is saved, as on a
/// machine that was switched off); the NVRAM bytes of the time registers matter only while
/// the guest holds SET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmosState {
    /// The index register (0-127).
    pub index: u8,
    /// The NVRAM.
    pub data: [u8; NVRAM_SIZE],
    /// Seconds the guest's clock is ahead of the host's.
    pub offset: i64,
}

/// Bytes of CMOS NVRAM.
pub const CMOS_NVRAM_SIZE: usize = NVRAM_SIZE;

impl crate::state::StateRecord for CmosState {
    const RECORD: snapshot::RecordType = snapshot::RecordType::required(snapshot::kind::CMOS, 1);
    const NAME: &'static str = "cmos";

    fn encode(&self, enc: &mut snapshot::payload::Encoder) {
        enc.u8(self.index).bytes(&self.data).i64(self.offset);
    }

    fn decode(dec: &mut snapshot::payload::Decoder<'_>) -> Result<Self, crate::state::StateError> {
        let index = dec.u8()?;
        let data = dec.array::<NVRAM_SIZE>()?;
        let offset = dec.i64()?;
        if index & !INDEX_MASK != 0 {
            return Err(crate::state::StateError::invalid(
                Self::NAME,
                format!("index register {index:#04x} is past the 128 bytes of NVRAM"),
            ));
        }
        if data
            .get(usize::from(REG_A))
            .is_some_and(|a| a & REG_A_UIP != 0)
        {
            return Err(crate::state::StateError::invalid(
                Self::NAME,
                "register A has update-in-progress set, which this RTC never does",
            ));
        }
        Ok(CmosState {
            index,
            data,
            offset,
        })
    }
}

impl crate::state::DeviceState for Cmos {
    type State = CmosState;

    fn save_state(&self) -> Result<CmosState, crate::state::StateError> {
        Ok(CmosState {
            index: self.index,
            data: self.data,
            offset: self.offset,
        })
    }

    /// The memory-size registers must match this VM's memory: a snapshot restored into a
    /// VM of another size is refused.
    fn check_state(&self, state: &CmosState) -> Result<(), crate::state::StateError> {
        for reg in [
            REG_MEM_16M_LO,
            REG_MEM_16M_HI,
            REG_MEM_4G_LO,
            REG_MEM_4G_MID,
            REG_MEM_4G_HI,
        ] {
            let saved = state.data.get(usize::from(reg)).copied();
            if saved != Some(self.get(reg)) {
                return Err(crate::state::StateError::invalid(
                    <CmosState as crate::state::StateRecord>::NAME,
                    format!(
                        "memory-size register {reg:#04x} is {:#04x}, this VM's is {:#04x}",
                        saved.unwrap_or(0),
                        self.get(reg)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn apply_state(&mut self, state: CmosState) -> Result<(), crate::state::StateError> {
        self.index = state.index;
        self.data = state.data;
        self.offset = state.offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// 2026-11-21 12:34:56 UTC, a Saturday.
    const T_2026: i64 = 1_795_264_496;

    fn cmos_at(secs: i64) -> Cmos {
        Cmos::with_clock(0, 0, Box::new(move || secs))
    }

    fn rd(c: &mut Cmos, reg: u8) -> u8 {
        c.write(INDEX_OFFSET, &[reg]);
        let mut b = [0u8];
        c.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn wr(c: &mut Cmos, reg: u8, v: u8) {
        c.write(INDEX_OFFSET, &[reg]);
        c.write(DATA_OFFSET, &[v]);
    }

    fn dt(year: i64, month: u8, day: u8, h: u8, m: u8, s: u8, weekday: u8) -> DateTime {
        DateTime {
            year,
            month,
            day,
            hour: h,
            minute: m,
            second: s,
            weekday,
        }
    }

    #[test]
    fn civil_conversion_matches_known_dates() {
        let cases = [
            (0, dt(1970, 1, 1, 0, 0, 0, 5)),
            (951_782_400, dt(2000, 2, 29, 0, 0, 0, 3)),
            (T_2026, dt(2026, 11, 21, 12, 34, 56, 7)),
            (4_102_444_799, dt(2099, 12, 31, 23, 59, 59, 5)),
            (-1, dt(1969, 12, 31, 23, 59, 59, 4)),
        ];
        for (secs, expected) in cases {
            assert_eq!(datetime_from_unix(secs), expected, "secs {secs}");
            assert_eq!(unix_from_datetime(&expected), secs, "{expected:?}");
        }
    }

    #[test]
    fn civil_round_trips_over_four_centuries() {
        // Every 1000th day across a full 400-year Gregorian cycle and more.
        for days in (-200_000..200_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn time_registers_default_to_bcd_24h() {
        let mut c = cmos_at(T_2026);

        let regs = [
            rd(&mut c, REG_SECONDS),
            rd(&mut c, REG_MINUTES),
            rd(&mut c, REG_HOURS),
            rd(&mut c, REG_WEEKDAY),
            rd(&mut c, REG_DAY),
            rd(&mut c, REG_MONTH),
            rd(&mut c, REG_YEAR),
            rd(&mut c, REG_CENTURY),
        ];

        assert_eq!(regs, [0x56, 0x34, 0x12, 0x07, 0x21, 0x11, 0x26, 0x20]);
    }

    #[test]
    fn binary_mode_produces_binary_values() {
        let mut c = cmos_at(T_2026);

        wr(&mut c, REG_B, REG_B_24H | REG_B_DM_BINARY);

        assert_eq!(rd(&mut c, REG_SECONDS), 56);
        assert_eq!(rd(&mut c, REG_DAY), 21);
        assert_eq!(rd(&mut c, REG_YEAR), 26);
        assert_eq!(rd(&mut c, REG_CENTURY), 20);
    }

    #[test]
    fn twelve_hour_mode_sets_pm_bit_and_maps_midnight_to_12() {
        let mut noonish = cmos_at(T_2026);
        let mut midnight = cmos_at(0);

        wr(&mut noonish, REG_B, 0);
        wr(&mut midnight, REG_B, 0);

        assert_eq!(rd(&mut noonish, REG_HOURS), HOURS_PM | 0x12);
        assert_eq!(rd(&mut midnight, REG_HOURS), 0x12);
    }

    #[test]
    fn clock_is_read_live_on_every_access() {
        let clock = Arc::new(AtomicI64::new(T_2026));
        let c2 = clock.clone();
        let mut c = Cmos::with_clock(0, 0, Box::new(move || c2.load(Ordering::Relaxed)));
        let before = rd(&mut c, REG_SECONDS);

        clock.fetch_add(2, Ordering::Relaxed);

        assert_eq!(before, 0x56);
        assert_eq!(rd(&mut c, REG_SECONDS), 0x58);
    }

    #[test]
    fn status_registers_have_fixed_values() {
        let mut c = cmos_at(T_2026);

        assert_eq!(rd(&mut c, REG_A), 0x26);
        assert_eq!(rd(&mut c, REG_B), REG_B_24H);
        assert_eq!(rd(&mut c, REG_C), 0);
        assert_eq!(rd(&mut c, REG_D), 0x80);
    }

    #[test]
    fn memory_registers_for_256_mib() {
        let mut c = Cmos::with_clock(256 * MIB, 0, Box::new(|| 0));

        // (256 - 16) MiB / 64 KiB = 3840 = 0x0f00.
        assert_eq!(rd(&mut c, REG_MEM_16M_LO), 0x00);
        assert_eq!(rd(&mut c, REG_MEM_16M_HI), 0x0f);
        assert_eq!(
            [
                rd(&mut c, REG_MEM_4G_LO),
                rd(&mut c, REG_MEM_4G_MID),
                rd(&mut c, REG_MEM_4G_HI)
            ],
            [0, 0, 0]
        );
    }

    #[test]
    fn memory_registers_for_6_gib_split_around_the_hole() {
        // 6 GiB with a 3 GiB low region: 3 GiB below 4 GiB, 3 GiB above.
        let mut c = Cmos::with_clock(3 << 30, 3 << 30, Box::new(|| 0));

        // (3 GiB - 16 MiB) / 64 KiB = 0xbf00.
        assert_eq!(rd(&mut c, REG_MEM_16M_LO), 0x00);
        assert_eq!(rd(&mut c, REG_MEM_16M_HI), 0xbf);
        // 3 GiB / 64 KiB = 0xc000.
        assert_eq!(
            [
                rd(&mut c, REG_MEM_4G_LO),
                rd(&mut c, REG_MEM_4G_MID),
                rd(&mut c, REG_MEM_4G_HI)
            ],
            [0x00, 0xc0, 0x00]
        );
    }

    #[test]
    fn memory_below_4g_is_capped_at_0xffff_units() {
        let mut c = Cmos::with_clock(u64::MAX, 0, Box::new(|| 0));

        assert_eq!(rd(&mut c, REG_MEM_16M_LO), 0xff);
        assert_eq!(rd(&mut c, REG_MEM_16M_HI), 0xff);
    }

    #[test]
    fn nvram_bytes_are_plain_storage_and_nmi_bit_is_ignored() {
        let mut c = cmos_at(0);

        wr(&mut c, 0x80 | 0x40, 0xab);

        assert_eq!(rd(&mut c, 0x40), 0xab);
    }

    #[test]
    fn guest_set_time_is_kept_as_offset_from_clock() {
        let clock = Arc::new(AtomicI64::new(T_2026));
        let c2 = clock.clone();
        let mut c = Cmos::with_clock(0, 0, Box::new(move || c2.load(Ordering::Relaxed)));

        // Like Linux's mc146818_set_time: SET, write fields (BCD), clear SET.
        wr(&mut c, REG_B, REG_B_24H | REG_B_SET);
        for (reg, v) in [
            (REG_SECONDS, 0x00),
            (REG_MINUTES, 0x00),
            (REG_HOURS, 0x08),
            (REG_DAY, 0x01),
            (REG_MONTH, 0x01),
            (REG_YEAR, 0x30),
            (REG_CENTURY, 0x20),
        ] {
            wr(&mut c, reg, v);
        }
        let frozen_hour = rd(&mut c, REG_HOURS);
        wr(&mut c, REG_B, REG_B_24H);
        clock.fetch_add(61, Ordering::Relaxed);

        assert_eq!(frozen_hour, 0x08);
        assert_eq!(rd(&mut c, REG_YEAR), 0x30);
        assert_eq!(rd(&mut c, REG_HOURS), 0x08);
        assert_eq!(rd(&mut c, REG_MINUTES), 0x01);
        assert_eq!(rd(&mut c, REG_SECONDS), 0x01);
    }

    #[test]
    fn invalid_set_time_keeps_the_old_clock() {
        let mut c = cmos_at(T_2026);

        wr(&mut c, REG_B, REG_B_24H | REG_B_SET);
        wr(&mut c, REG_MONTH, 0x13);
        wr(&mut c, REG_B, REG_B_24H);

        assert_eq!(rd(&mut c, REG_MONTH), 0x11);
    }

    #[test]
    fn time_writes_without_set_are_ignored() {
        let mut c = cmos_at(T_2026);

        wr(&mut c, REG_YEAR, 0x99);

        assert_eq!(rd(&mut c, REG_YEAR), 0x26);
    }
}
