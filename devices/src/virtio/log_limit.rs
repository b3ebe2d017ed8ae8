//! Bounded logging of problems a guest (or a failing host file) can cause at will: a device
//! logs the first [`LOG_FIRST`] of a kind, then one in [`LOG_EVERY`], so a misbehaving
//! driver cannot turn the VMM's log into a flood, yet a problem is never silent.

use std::sync::atomic::{AtomicU64, Ordering};

/// Problems of one kind logged before only every [`LOG_EVERY`]th is.
pub const LOG_FIRST: u64 = 10;
/// Once past [`LOG_FIRST`], one problem in this many is logged.
pub const LOG_EVERY: u64 = 1000;

/// Counts problems of one kind and says which to log.
#[derive(Debug, Default)]
pub struct LogLimiter(AtomicU64);

impl LogLimiter {
    /// A limiter that has counted nothing; `const`, so a `static` can hold one for a kind
    /// of problem that outlives any one device state (a reset starts a new queue, not a
    /// new log budget).
    pub const fn new() -> LogLimiter {
        LogLimiter(AtomicU64::new(0))
    }

    /// Counts one problem; returns its number when it should be logged.
    pub fn admit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        (n <= LOG_FIRST || n.checked_rem(LOG_EVERY) == Some(0)).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_ten_then_every_thousandth() {
        let limiter = LogLimiter::default();
        let logged: Vec<u64> = (0..3000).filter_map(|_| limiter.admit()).collect();
        let mut expected: Vec<u64> = (1..=LOG_FIRST).collect();
        expected.extend([1000, 2000, 3000]);
        assert_eq!(logged, expected);
    }
}
