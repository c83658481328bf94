//! Propagation accounting: which change reached which subscriber, and when.
//!
//! Each service's endpoint set is a state (a hash of its sorted addresses). A change
//! records the state the service is in once the change is complete and when its first
//! watch event was sent. A subscriber (one `WatchService` stream) that receives an update
//! is matched against the changes it has not had yet, newest first: an update carrying
//! the state of change k delivers k and every earlier change it had not had (the control
//! plane may fold several changes into one update; the subscriber has their final state
//! either way), each at its own latency. An update matching none of them (an intermediate
//! state: a replaced pod seen before the old one is gone) delivers nothing. At the end a
//! change a subscriber never had is *missed*, and a subscriber whose last state is not
//! its service's current one is *wrong*: the figures are verified, not assumed.

use std::time::{Duration, Instant};

/// Everything the run changed and every subscriber's progress.
#[derive(Debug, Default)]
pub struct Ledger {
    services: Vec<ServiceLog>,
    subscribers: Vec<Subscriber>,
}

#[derive(Debug)]
struct ServiceLog {
    /// The state before any change, then after each.
    current: u64,
    changes: Vec<Change>,
}

#[derive(Debug, Clone, Copy)]
struct Change {
    sent: Instant,
    state: u64,
}

#[derive(Debug)]
struct Subscriber {
    service: usize,
    /// Changes of its service before it subscribed are not its to receive.
    from: usize,
    /// How many of the service's changes it has had (`from..delivered`).
    delivered: usize,
    last_state: Option<u64>,
    latencies: Vec<Duration>,
    /// Updates, while it was owed changes, that matched none of them.
    unmatched: u64,
}

/// What the ledger says at the end.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Propagation {
    /// Changes made.
    pub changes: usize,
    /// (change, subscriber) pairs: every subscriber of a changed service, per change.
    pub pairs: usize,
    pub delivered: usize,
    /// Pairs never delivered.
    pub missed: usize,
    /// Pairs delivered later than [`LATE`].
    pub late: usize,
    /// Subscribers whose last state is not their service's current state.
    pub wrong_final_state: usize,
    /// Updates that delivered no change (intermediate states).
    pub unmatched_updates: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// A change delivered later than this counts as late: the target for p99.
pub const LATE: Duration = Duration::from_secs(1);

impl Ledger {
    /// A ledger of services in the given initial states; service ids are their indices.
    pub fn new(initial: impl IntoIterator<Item = u64>) -> Self {
        let services =
            initial.into_iter().map(|current| ServiceLog { current, changes: Vec::new() }).collect();
        Self { services, subscribers: Vec::new() }
    }

    /// `service` changed to `state`; its first watch event went out at `sent`.
    pub fn change(&mut self, service: usize, state: u64, sent: Instant) {
        let log = &mut self.services[service];
        log.current = state;
        log.changes.push(Change { sent, state });
    }

    /// A new subscriber of `service`: it is owed the changes made from now on. Returns
    /// its id.
    pub fn subscribe(&mut self, service: usize) -> usize {
        let from = self.services[service].changes.len();
        self.subscribers.push(Subscriber {
            service,
            from,
            delivered: from,
            last_state: None,
            latencies: Vec::new(),
            unmatched: 0,
        });
        self.subscribers.len() - 1
    }

    /// Subscriber `id` received its service in `state` at `at`.
    pub fn received(&mut self, id: usize, state: u64, at: Instant) {
        let subscriber = &mut self.subscribers[id];
        subscriber.last_state = Some(state);
        let changes = &self.services[subscriber.service].changes;
        let owed = &changes[subscriber.delivered..];
        let Some(k) = owed.iter().rposition(|c| c.state == state) else {
            // With nothing owed it is the first update, or the same state sent again.
            if !owed.is_empty() {
                subscriber.unmatched += 1;
            }
            return;
        };
        for change in &owed[..=k] {
            subscriber.latencies.push(at.saturating_duration_since(change.sent));
        }
        subscriber.delivered += k + 1;
    }

    /// Whether every subscriber has had every change it is owed.
    pub fn complete(&self) -> bool {
        self.subscribers.iter().all(|s| s.delivered == self.services[s.service].changes.len())
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    /// How many subscribers `service` has.
    pub fn subscribers_of(&self, service: usize) -> usize {
        self.subscribers.iter().filter(|s| s.service == service).count()
    }

    pub fn propagation(&self) -> Propagation {
        let mut latencies: Vec<Duration> = Vec::new();
        let mut result = Propagation {
            changes: self.services.iter().map(|s| s.changes.len()).sum(),
            ..Default::default()
        };
        for s in &self.subscribers {
            let service = &self.services[s.service];
            result.pairs += service.changes.len() - s.from;
            result.delivered += s.latencies.len();
            result.missed += service.changes.len() - s.delivered;
            result.late += s.latencies.iter().filter(|l| **l > LATE).count();
            result.unmatched_updates += s.unmatched;
            if s.last_state != Some(service.current) {
                result.wrong_final_state += 1;
            }
            latencies.extend(&s.latencies);
        }
        latencies.sort_unstable();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        result.p50_ms = percentile(&latencies, 0.50).map(ms);
        result.p99_ms = percentile(&latencies, 0.99).map(ms);
        result.max_ms = latencies.last().map(ms);
        result
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Option<&Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_change_is_timed_from_its_event_to_each_subscriber() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new([10, 20]);
        let a = ledger.subscribe(0);
        let b = ledger.subscribe(0);
        let other = ledger.subscribe(1);
        for id in [a, b] {
            ledger.received(id, 10, t0);
        }
        ledger.received(other, 20, t0);
        ledger.change(0, 11, t0 + ms(100));
        assert!(!ledger.complete());
        ledger.received(a, 11, t0 + ms(150));
        ledger.received(b, 11, t0 + ms(400));
        assert!(ledger.complete());
        let p = ledger.propagation();
        assert_eq!((p.changes, p.pairs, p.delivered, p.missed, p.wrong_final_state), (1, 2, 2, 0, 0));
        assert_eq!(p.p50_ms, Some(50.0));
        assert_eq!(p.max_ms, Some(300.0));
    }

    #[test]
    fn a_folded_update_delivers_every_change_it_carries() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new([1]);
        let s = ledger.subscribe(0);
        ledger.received(s, 1, t0);
        ledger.change(0, 2, t0);
        ledger.change(0, 3, t0 + ms(10));
        ledger.received(s, 3, t0 + ms(50));
        let p = ledger.propagation();
        assert_eq!((p.pairs, p.delivered, p.missed), (2, 2, 0));
        assert_eq!(p.max_ms, Some(50.0));
    }

    #[test]
    fn a_state_seen_before_is_matched_to_the_newest_change_that_made_it() {
        // Unready then ready again: the second change returns to the first state.
        let t0 = Instant::now();
        let mut ledger = Ledger::new([1]);
        let s = ledger.subscribe(0);
        ledger.received(s, 1, t0);
        ledger.change(0, 2, t0);
        ledger.received(s, 2, t0 + ms(20));
        ledger.change(0, 1, t0 + ms(1000));
        ledger.received(s, 1, t0 + ms(1030));
        let p = ledger.propagation();
        assert_eq!((p.delivered, p.missed, p.wrong_final_state), (2, 0, 0));
        assert_eq!(p.max_ms, Some(30.0));
    }

    #[test]
    fn intermediate_states_deliver_nothing_and_missing_changes_are_counted() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new([1, 5]);
        let s = ledger.subscribe(0);
        let never = ledger.subscribe(1);
        ledger.received(s, 1, t0);
        ledger.received(never, 5, t0);
        ledger.change(0, 3, t0);
        ledger.change(1, 6, t0);
        ledger.received(s, 2, t0 + ms(5));
        let p = ledger.propagation();
        assert_eq!(p.unmatched_updates, 1);
        assert_eq!((p.pairs, p.delivered, p.missed), (2, 0, 2));
        assert_eq!(p.wrong_final_state, 2, "one holds an intermediate state, the other the old one");
        assert_eq!(p.p99_ms, None);
    }

    #[test]
    fn late_deliveries_and_late_subscribers_are_told_apart() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new([1]);
        ledger.change(0, 2, t0);
        // Subscribed after the change: owed nothing, but must still hold the current state.
        let late_joiner = ledger.subscribe(0);
        ledger.received(late_joiner, 2, t0 + ms(1));
        let s = ledger.subscribe(0);
        ledger.received(s, 2, t0 + ms(1));
        ledger.change(0, 3, t0 + ms(10));
        ledger.received(s, 3, t0 + ms(1500));
        let p = ledger.propagation();
        assert_eq!((p.pairs, p.delivered, p.late, p.missed), (2, 1, 1, 1));
        assert_eq!(p.wrong_final_state, 1);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&values, 0.5), Some(&ms(50)));
        assert_eq!(percentile(&values, 0.99), Some(&ms(99)));
        assert_eq!(percentile(&values[..1], 0.99), Some(&ms(1)));
    }
}
