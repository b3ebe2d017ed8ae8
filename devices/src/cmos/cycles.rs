//! When the RTC's update cycles and periodic ticks happen, on the host's clock.
//!
//! An MC146818 updates its time registers once a second (the update cycle, which sets UF
//! and, when the time matches the alarm, AF) and divides its 32.768 kHz time base into a
//! periodic rate of 2 Hz to 8192 Hz (which sets PF). Here both are counted on the host's
//! real-time clock, in nanoseconds since the unix epoch as an `i128` (no overflow for any
//! clock an `i64` of seconds can hold): the update cycles at the host's whole seconds (the
//! guest's clock differs from the host's by whole seconds only, so its seconds turn with
//! the host's), the periodic ticks at the multiples of the period since the epoch.

/// Nanoseconds per second.
pub(super) const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The host second (unix time) that `now` falls in.
pub(super) fn second_of(now: i128) -> i64 {
    let second = now.div_euclid(NANOS_PER_SEC);
    i64::try_from(second).unwrap_or(if second < 0 { i64::MIN } else { i64::MAX })
}

/// When host second `second` starts.
pub(super) fn start_of_second(second: i64) -> i128 {
    // |second| < 2^63 and NANOS_PER_SEC < 2^30: the product fits an i128.
    i128::from(second).saturating_mul(NANOS_PER_SEC)
}

/// The periodic rate for rate-select code `rate` (register A bits 3-0) with the 32.768 kHz
/// time base, as `e` for 2^e Hz; `None` for code 0, which stops the periodic ticks.
///
/// Codes 3 to 15 give 8192 Hz down to 2 Hz; codes 1 and 2 repeat the 256 Hz and 128 Hz of
/// codes 8 and 9, as the datasheet's table has it for this time base.
pub(super) fn periodic_exponent(rate: u8) -> Option<u32> {
    match rate & 0x0f {
        0 => None,
        1 => Some(8),
        2 => Some(7),
        code => Some(16u32.saturating_sub(u32::from(code))),
    }
}

/// The number of the last periodic tick at or before `now`, at 2^`exponent` Hz: tick `k`
/// is at `k / 2^exponent` seconds since the epoch.
pub(super) fn periodic_index(now: i128, exponent: u32) -> i128 {
    // exponent <= 13 and |now| < 2^93 (an i64 of seconds in nanoseconds): no overflow.
    now.saturating_mul(1i128 << exponent.min(13))
        .div_euclid(NANOS_PER_SEC)
}

/// When periodic tick `index` happens at 2^`exponent` Hz (rounded up to the nanosecond, so
/// that [`periodic_index`] of the result is `index`).
pub(super) fn periodic_tick_start(index: i128, exponent: u32) -> i128 {
    let divisor = 1i128 << exponent.min(13);
    // Ceiling division: -floor(-x / d).
    index
        .saturating_mul(NANOS_PER_SEC)
        .saturating_neg()
        .div_euclid(divisor)
        .saturating_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_turn_at_whole_host_seconds() {
        assert_eq!(second_of(0), 0);
        assert_eq!(second_of(NANOS_PER_SEC - 1), 0);
        assert_eq!(second_of(NANOS_PER_SEC), 1);
        assert_eq!(second_of(-1), -1);
        assert_eq!(start_of_second(5), 5 * NANOS_PER_SEC);
        assert_eq!(second_of(i128::MAX), i64::MAX);
    }

    #[test]
    fn rate_codes_follow_the_datasheet() {
        let hz = |code| periodic_exponent(code).map(|e| 1u32 << e);
        assert_eq!(hz(0), None);
        assert_eq!(hz(1), Some(256));
        assert_eq!(hz(2), Some(128));
        assert_eq!(hz(3), Some(8192));
        assert_eq!(hz(6), Some(1024));
        assert_eq!(hz(15), Some(2));
        // Only the low four bits select the rate.
        assert_eq!(hz(0x26), Some(1024));
    }

    #[test]
    fn periodic_ticks_and_their_starts_agree() {
        for exponent in [1, 7, 10, 13] {
            for index in [0i128, 1, 2, 8191, 8192, 1_795_264_496 << 13] {
                let start = periodic_tick_start(index, exponent);
                assert_eq!(periodic_index(start, exponent), index, "{exponent} {index}");
                assert_eq!(periodic_index(start - 1, exponent), index - 1);
            }
        }
        // 1024 Hz: the tick after 1 s + 1 ns is at 1 s + 1/1024 s.
        let next = periodic_index(NANOS_PER_SEC + 1, 10) + 1;
        assert_eq!(periodic_tick_start(next, 10), NANOS_PER_SEC + 976_563);
    }
}
