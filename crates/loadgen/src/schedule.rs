//! The open-loop schedule: when each request is meant to be sent, and on which connection.
//!
//! Request `i` is due `i / rate` seconds after the start, whatever happened to the requests
//! before it. Latency is measured from that intended time, so a stall that delays sends
//! (a slow response holding an HTTP/1.1 connection, a paused proxy) is charged to every
//! request it delayed instead of disappearing from the figures (coordinated omission).
//! Pure arithmetic, so that it can be tested without clocks.

use std::time::Duration;

/// A constant-rate schedule of `total` requests spread round-robin over connections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rate_per_second: f64,
    total: u64,
    connections: usize,
}

impl Schedule {
    /// `rate_per_second` must be positive and finite, `connections` at least 1; the number of
    /// requests is what the rate gives over `length`, rounded up (a non-empty length sends at
    /// least one request).
    pub fn new(rate_per_second: f64, length: Duration, connections: usize) -> Self {
        assert!(rate_per_second.is_finite() && rate_per_second > 0.0, "rate must be positive");
        assert!(connections > 0, "at least one connection");
        let total = (rate_per_second * length.as_secs_f64()).ceil() as u64;
        Self { rate_per_second, total, connections }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn rate_per_second(&self) -> f64 {
        self.rate_per_second
    }

    /// When request `index` is due, counted from the start of the schedule. Computed from
    /// the index rather than accumulated, so rounding never drifts over a long run.
    pub fn offset(&self, index: u64) -> Duration {
        let nanos = (index as f64 * 1e9 / self.rate_per_second).round();
        Duration::from_nanos(nanos as u64)
    }

    /// The connection that carries request `index`: round-robin, so each connection sees
    /// an evenly spaced share of the rate.
    pub fn connection(&self, index: u64) -> usize {
        (index % self.connections as u64) as usize
    }

    /// The requests due at or before `elapsed` from the start, starting with `next`: the
    /// range the pacer releases when it wakes up (more than one if it woke up late).
    pub fn due(&self, next: u64, elapsed: Duration) -> std::ops::Range<u64> {
        let mut end = next;
        while end < self.total && self.offset(end) <= elapsed {
            end += 1;
        }
        next..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_evenly_spaced_from_the_start() {
        let schedule = Schedule::new(1000.0, Duration::from_secs(2), 4);
        assert_eq!(schedule.total(), 2000);
        assert_eq!(schedule.offset(0), Duration::ZERO);
        assert_eq!(schedule.offset(1), Duration::from_millis(1));
        assert_eq!(schedule.offset(1999), Duration::from_millis(1999));
    }

    #[test]
    fn fractional_rates_do_not_drift() {
        // 3 per second: a third of a second apart; the millionth request lands where
        // multiplication says, not where a million accumulated roundings would.
        let schedule = Schedule::new(3.0, Duration::from_secs(1_000_000), 1);
        assert_eq!(schedule.offset(3), Duration::from_secs(1));
        assert_eq!(schedule.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(schedule.offset(2_999_999), Duration::from_nanos(999_999_666_666_667));
    }

    #[test]
    fn connections_take_turns() {
        let schedule = Schedule::new(100.0, Duration::from_secs(1), 3);
        let order: Vec<usize> = (0..7).map(|i| schedule.connection(i)).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
        // Each connection's own requests are `connections / rate` apart.
        assert_eq!(schedule.offset(4) - schedule.offset(1), Duration::from_millis(30));
    }

    #[test]
    fn a_late_wake_up_releases_everything_already_due() {
        let schedule = Schedule::new(1000.0, Duration::from_millis(10), 1);
        assert_eq!(schedule.due(0, Duration::ZERO), 0..1);
        // Woke up 3.5 ms in with request 1 next: 1, 2 and 3 are due.
        assert_eq!(schedule.due(1, Duration::from_micros(3500)), 1..4);
        // Nothing past the end of the schedule.
        assert_eq!(schedule.due(4, Duration::from_secs(60)), 4..10);
        assert_eq!(schedule.due(10, Duration::from_secs(60)), 10..10);
    }

    #[test]
    fn the_count_is_rounded_up() {
        assert_eq!(Schedule::new(1000.0, Duration::from_micros(1500), 1).total(), 2);
        assert_eq!(Schedule::new(0.5, Duration::from_secs(1), 1).total(), 1);
        assert_eq!(Schedule::new(10.0, Duration::ZERO, 1).total(), 0);
    }
}
