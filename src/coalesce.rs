//! Reporting a value that the guest can change at will, at a bounded rate: the latest
//! value, at most once per interval, and never the final one lost.
//!
//! The balloon's `actual` size is the driver's to write, as often as it likes; every change
//! wakes the run loop. Forwarding each as an event would let a guest that flips between two
//! values flood every `vmm events` subscriber until the control server drops them for not
//! keeping up. [`Coalescer`] sits in between: the first change after a quiet interval goes
//! out at once; later ones within the interval only replace a pending value, which goes out
//! when the interval ends (unless it is what subscribers already have).

use std::time::{Duration, Instant};

/// The latest value of something, reported at most once per interval; see the module docs.
#[derive(Debug)]
pub struct Coalescer<T> {
    interval: Duration,
    /// Until when nothing more may be sent (set by each send).
    quiet_until: Option<Instant>,
    /// The latest value not sent yet.
    pending: Option<T>,
    /// What subscribers were last told.
    last_sent: Option<T>,
}

impl<T: Copy + PartialEq> Coalescer<T> {
    pub fn new(interval: Duration) -> Coalescer<T> {
        Coalescer {
            interval,
            quiet_until: None,
            pending: None,
            last_sent: None,
        }
    }

    /// The value is now `value`: returns it if it is to be sent now, or keeps it for
    /// [`Coalescer::due`].
    pub fn offer(&mut self, now: Instant, value: T) -> Option<T> {
        if self.is_quiet(now) {
            self.pending = Some(value);
            return None;
        }
        self.send(now, value)
    }

    /// The pending value, once its interval has passed; `None` before, or when there is
    /// none, or when it is what was last sent (a change and its undoing).
    pub fn due(&mut self, now: Instant) -> Option<T> {
        if self.is_quiet(now) {
            return None;
        }
        let value = self.pending.take()?;
        self.send(now, value)
    }

    /// The pending value now, interval or not (the VMM is about to end and will send no
    /// more); `None` if there is none or it is what was last sent.
    pub fn flush(&mut self, now: Instant) -> Option<T> {
        let value = self.pending.take()?;
        self.send(now, value)
    }

    /// When [`Coalescer::due`] will have a value to give, if it will.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.and(self.quiet_until)
    }

    fn is_quiet(&self, now: Instant) -> bool {
        self.quiet_until.is_some_and(|until| now < until)
    }

    fn send(&mut self, now: Instant, value: T) -> Option<T> {
        if self.last_sent == Some(value) {
            return None;
        }
        self.last_sent = Some(value);
        // Callers pass a short constant interval; one too long for an `Instant`
        // would mean no quiet period rather than a panic.
        self.quiet_until = Some(now.checked_add(self.interval).unwrap_or(now));
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// Offers `changes` (time in ms, value) in order, calling `due` at each step as the
    /// run loop does, and then once more after the last deadline; returns what was sent.
    fn run(changes: &[(u64, u32)]) -> Vec<(u64, u32)> {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(INTERVAL);
        let mut sent = Vec::new();
        for &(at, value) in changes {
            let now = ms(start, at);
            if let Some(value) = coalescer.due(now) {
                sent.push((at, value));
            }
            if let Some(value) = coalescer.offer(now, value) {
                sent.push((at, value));
            }
        }
        if let Some(deadline) = coalescer.deadline() {
            let at = u64::try_from((deadline - start).as_millis()).unwrap();
            if let Some(value) = coalescer.due(deadline) {
                sent.push((at, value));
            }
        }
        sent
    }

    #[test]
    fn a_lone_change_is_sent_at_once() {
        assert_eq!(run(&[(0, 7)]), [(0, 7)]);
    }

    #[test]
    fn changes_apart_by_more_than_the_interval_are_each_sent_at_once() {
        assert_eq!(
            run(&[(0, 1), (150, 2), (400, 3)]),
            [(0, 1), (150, 2), (400, 3)]
        );
    }

    #[test]
    fn a_flood_of_changes_sends_at_most_one_per_interval_and_the_final_value() {
        // Ten thousand changes a millisecond apart, ending on 4999.
        let changes: Vec<(u64, u32)> = (0..10_000).map(|i| (i, (i % 5000) as u32)).collect();
        let sent = run(&changes);

        let times: Vec<u64> = sent.iter().map(|(at, _)| *at).collect();
        assert!(
            times.windows(2).all(|pair| pair[1] - pair[0] >= 100),
            "at most one per interval: {times:?}"
        );
        assert!(sent.len() <= 10_000 / 100 + 1, "{} sent", sent.len());
        assert_eq!(sent.last().map(|(_, value)| *value), Some(4999));
    }

    #[test]
    fn a_value_flipping_back_to_what_was_sent_sends_nothing_more() {
        let sent = run(&[(0, 1), (10, 2), (20, 1)]);
        assert_eq!(sent, [(0, 1)], "subscribers already have 1");
    }

    #[test]
    fn flush_sends_the_pending_value_within_the_interval() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(INTERVAL);
        assert_eq!(coalescer.offer(start, 1), Some(1));
        assert_eq!(coalescer.offer(ms(start, 10), 2), None);
        assert_eq!(coalescer.flush(ms(start, 11)), Some(2));
        assert_eq!(coalescer.flush(ms(start, 12)), None);
    }

    #[test]
    fn there_is_no_deadline_without_a_pending_value() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(INTERVAL);
        assert_eq!(coalescer.offer(start, 1), Some(1));
        assert_eq!(coalescer.deadline(), None);
        assert_eq!(coalescer.offer(ms(start, 10), 2), None);
        assert_eq!(coalescer.deadline(), Some(ms(start, 100)));
        assert_eq!(coalescer.due(ms(start, 99)), None);
        assert_eq!(coalescer.due(ms(start, 100)), Some(2));
        assert_eq!(coalescer.deadline(), None);
    }
}
