//! Per-request load balancing: power of two choices over peak-EWMA latency.
//!
//! Each endpoint keeps an exponentially weighted moving average of its response latency
//! that jumps up at once on a slow response (the "peak") and decays slowly back, and a
//! count of requests in flight. Its load is `latency × (in_flight + 1)`. For each request
//! two distinct endpoints are drawn at random and the less loaded wins: this avoids the
//! herd behaviour of always picking the global minimum and costs O(1) per request.
//! An idle endpoint's estimate decays toward zero, so a once-slow endpoint is probed again.
//!
//! This is the algorithm of Finagle and Linkerd. tower's `p2c::Balance` implements it too,
//! but sharing it between concurrent connections needs a `Buffer` task and a channel hop
//! per request; endpoints here are shared directly, with one short critical section each.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Latency assumed for an endpoint that has not answered yet (Linkerd uses the same).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the estimate forgets: the weight of old samples falls by 1/e every 10 s.
pub const DECAY: Duration = Duration::from_secs(10);
/// Loads within this fraction of each other count as equal.
const TIE: f64 = 1e-3;
/// After a failed connection, the endpoint is avoided for this long when others exist.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The load statistics of one endpoint.
#[derive(Debug)]
pub struct PeakEwma {
    estimate: Mutex<Estimate>,
    in_flight: AtomicUsize,
    /// Nanoseconds since `epoch` before which the endpoint is considered failing.
    failing_until: AtomicU64,
    epoch: Instant,
}

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
}

impl Estimate {
    /// Peak-sensitive EWMA update; `rtt_ns = 0` decays the estimate with time alone.
    fn update(&mut self, now: Instant, rtt_ns: f64) -> f64 {
        if rtt_ns > self.rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
            let decay = (-elapsed / DECAY.as_nanos() as f64).exp();
            self.rtt_ns = self.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        self.updated = now;
        self.rtt_ns
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            estimate: Mutex::new(Estimate { rtt_ns: DEFAULT_RTT.as_nanos() as f64, updated: now }),
            in_flight: AtomicUsize::new(0),
            failing_until: AtomicU64::new(0),
            epoch: now,
        }
    }
}

impl PeakEwma {
    /// The current load: decayed latency estimate times (requests in flight + 1).
    pub fn load(&self, now: Instant) -> f64 {
        let rtt = lock(&self.estimate).update(now, 0.0);
        rtt * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// Marks a request as started; the returned guard ends it.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { ewma: self, started: Instant::now(), done: false }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn mark_failed(&self) {
        let until = (Instant::now() + FAILURE_PENALTY).duration_since(self.epoch).as_nanos() as u64;
        self.failing_until.store(until, Ordering::Relaxed);
    }

    pub fn is_failing(&self, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.failing_until.load(Ordering::Relaxed) > now
    }

    fn observe(&self, now: Instant, rtt: Duration) {
        lock(&self.estimate).update(now, rtt.as_nanos() as f64);
    }

    /// The current estimate, for tests and debugging.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(lock(&self.estimate).rtt_ns as u64)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The critical sections cannot panic halfway; a poisoned lock still holds valid data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request in flight on an endpoint. `complete` records its latency; dropping it without
/// completing (an error) only ends it.
#[derive(Debug)]
pub struct InFlight<'a> {
    ewma: &'a PeakEwma,
    started: Instant,
    done: bool,
}

impl InFlight<'_> {
    pub fn complete(mut self) {
        let now = Instant::now();
        self.ewma.observe(now, now.saturating_duration_since(self.started));
        self.done = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            // A failure: count it as slow so the endpoint is not favoured right after.
            let now = Instant::now();
            self.ewma.observe(now, now.saturating_duration_since(self.started).max(DEFAULT_RTT));
        }
        self.ewma.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether an item may be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eligible {
    No,
    Yes,
    /// Pick this one and no other (an ejected endpoint's probe, already claimed).
    Now,
}

/// Random draws for two eligible items before falling back to a scan.
const DRAWS: usize = 4;

/// Picks the index of an item by power of two choices among the eligible ones; when none
/// is eligible, any. `None` when empty.
pub fn p2c<T>(
    items: &[T],
    ewma: impl Fn(&T) -> &PeakEwma,
    eligible: impl Fn(&T) -> Eligible,
) -> Option<usize> {
    let n = items.len();
    if n <= 1 {
        return (n == 1).then_some(0);
    }
    // A random eligible item other than `other`: `Ok(i)`, or `Err(i)` to take at once.
    let draw = |other: Option<usize>| {
        for _ in 0..DRAWS {
            let i = match other {
                None => fastrand::usize(..n),
                Some(a) => {
                    let b = fastrand::usize(..n - 1);
                    if b >= a { b + 1 } else { b }
                }
            };
            match eligible(&items[i]) {
                Eligible::No => {}
                Eligible::Yes => return Some(Ok(i)),
                Eligible::Now => return Some(Err(i)),
            }
        }
        None
    };
    match draw(None) {
        Some(Err(now)) => Some(now),
        Some(Ok(a)) => match draw(Some(a)) {
            Some(Err(now)) => Some(now),
            Some(Ok(b)) => Some(less_loaded(a, b, ewma(&items[a]), ewma(&items[b]))),
            None => Some(a),
        },
        None => (0..n).find(|&i| eligible(&items[i]) != Eligible::No).or_else(|| Some(fastrand::usize(..n))),
    }
}

/// Of two endpoints, `a` drawn first: the one not failing, else the less loaded.
fn less_loaded(a: usize, b: usize, ea: &PeakEwma, eb: &PeakEwma) -> usize {
    let now = Instant::now();
    match (ea.is_failing(now), eb.is_failing(now)) {
        (false, true) => return a,
        (true, false) => return b,
        _ => {}
    }
    // `a` is the random draw: near-ties (estimates that differ only by how long ago they
    // decayed) go to it, so they do not favour the oldest endpoint.
    if ea.load(now) <= eb.load(now) * (1.0 + TIE) { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sample_raises_the_estimate_at_once() {
        let e = PeakEwma::default();
        e.observe(Instant::now(), Duration::from_millis(200));
        assert_eq!(e.estimate(), Duration::from_millis(200));
    }

    #[test]
    fn fast_samples_pull_the_estimate_down_gradually() {
        let mut est = Estimate { rtt_ns: 100e6, updated: Instant::now() };
        let later = est.updated + DECAY; // one time constant later
        let v = est.update(later, 0.0);
        assert!((v - 100e6 / std::f64::consts::E).abs() < 1e3, "{v}");
    }

    #[test]
    fn load_grows_with_requests_in_flight() {
        let e = PeakEwma::default();
        let now = Instant::now();
        let idle = e.load(now);
        let _a = e.start();
        let _b = e.start();
        let busy = e.load(now);
        assert!(busy > 2.5 * idle, "idle {idle} busy {busy}");
        drop(_a);
        assert_eq!(e.in_flight(), 1);
    }

    #[test]
    fn p2c_prefers_the_less_loaded_of_two() {
        let eps = [PeakEwma::default(), PeakEwma::default()];
        eps[0].observe(Instant::now(), Duration::from_millis(500));
        eps[1].observe(Instant::now(), Duration::from_millis(1));
        for _ in 0..100 {
            assert_eq!(p2c(&eps, |e| e, |_| Eligible::Yes), Some(1));
        }
    }

    #[test]
    fn p2c_avoids_failing_endpoints() {
        let eps = [PeakEwma::default(), PeakEwma::default()];
        eps[1].observe(Instant::now(), Duration::from_millis(500));
        eps[0].mark_failed();
        for _ in 0..100 {
            assert_eq!(p2c(&eps, |e| e, |_| Eligible::Yes), Some(1));
        }
    }

    #[test]
    fn p2c_spreads_concurrent_requests_over_equal_endpoints() {
        // Requests in flight raise an endpoint's load, so a window of concurrent requests
        // spreads over all endpoints rather than piling onto one.
        let eps: Vec<PeakEwma> = (0..4).map(|_| PeakEwma::default()).collect();
        let mut hits = [0usize; 4];
        let mut window = std::collections::VecDeque::new();
        for _ in 0..4000 {
            let i = p2c(&eps, |e| e, |_| Eligible::Yes).unwrap();
            hits[i] += 1;
            window.push_back(eps[i].start());
            if window.len() > 8 {
                window.pop_front().unwrap().complete();
            }
        }
        assert!(hits.iter().all(|&h| h > 400), "{hits:?}");
        let only = p2c(&eps, |e| e, |e| if std::ptr::eq(e, &eps[2]) { Eligible::Yes } else { Eligible::No });
        assert_eq!(only, Some(2), "ineligible endpoints are passed over");
        assert!(p2c(&eps, |e| e, |_| Eligible::No).is_some(), "with none eligible, any");
        assert_eq!(p2c::<PeakEwma>(&[], |e| e, |_| Eligible::Yes), None);
    }
}
