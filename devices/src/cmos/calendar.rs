//! Calendar arithmetic for the RTC: unix seconds to and from a broken-down UTC date and
//! time (proleptic Gregorian), and the BCD encoding of the clock registers.

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
pub(super) fn to_bcd(v: u8) -> u8 {
    // Callers pass 0..=99 (clock fields, year % 100, year / 100 of a clamped
    // year), so `v / 10 < 10` and the shift keeps every bit. Out-of-range
    // input would merely lose high bits, never panic.
    ((v / 10).wrapping_shl(4)) | (v % 10)
}

/// The value of BCD byte `v`, if both its digits are decimal.
pub(super) fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    // Bounded: hi, lo < 10 so the result is at most 99.
    #[allow(clippy::arithmetic_side_effects)]
    (hi < 10 && lo < 10).then(|| hi * 10 + lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21 12:34:56 UTC, a Saturday.
    const T_2026: i64 = 1_795_264_496;

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
}
