//! Circuit breaking by failure accrual: an endpoint that fails too many requests in a row
//! is ejected from its backend's balancer for a while, then probed with one request.
//!
//! Every try's outcome is recorded at its response head (see [`Outcome::of_response`]): a
//! 5xx, a trailers-only gRPC `UNAVAILABLE` and a failed connection are failures, anything
//! else a success. After `consecutive_failures` failures in a row the endpoint is ejected
//! for its backoff (doubling from `base_ejection` up to `max_ejection`, with jitter). When
//! that ends the endpoint takes one request, the probe: a success brings it back and
//! resets the backoff, a failure ejects it again for twice as long. Never more than
//! `max_ejected_share` of a backend's endpoints are out at once, so that a backend whose
//! every endpoint fails still serves (Istio's `maxEjectionPercent`).
//!
//! The state is a few atomics per endpoint: recording costs a load and a store or two, and
//! picking one load per candidate.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// When a backend's endpoints are ejected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that eject an endpoint (0: never).
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// The largest share of a backend's endpoints ejected at once (0.0 to 1.0).
    pub max_ejected_share: f64,
}

impl Default for BreakerConfig {
    /// Linkerd's consecutive-failure defaults (7 failures, 1 s to 1 min), Istio's share.
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            max_ejected_share: 0.5,
        }
    }
}

/// What one try of one endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// From a response head: its status, and its `grpc-status` when it has one (only a
    /// trailers-only response has it at the head, which is where failures come).
    pub fn of_response(status: http::StatusCode, grpc_status: Option<&[u8]>) -> Self {
        // UNAVAILABLE (14): the server cannot take calls now.
        if status.is_server_error() || grpc_status == Some(b"14") {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// The accrual state of one endpoint.
#[derive(Debug)]
pub struct Accrual {
    failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the endpoint is ejected; 0 when it is in.
    ejected_until: AtomicU64,
    /// How many ejections in a row, for the backoff.
    ejections: AtomicU32,
    /// An ejection has ended and its probe is out (or about to go).
    probing: AtomicBool,
    epoch: Instant,
}

impl Default for Accrual {
    fn default() -> Self {
        Self {
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

/// Whether an endpoint may take a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    In,
    Ejected,
    /// Its ejection is over and no probe is out: the next request may be the probe.
    Probe,
}

impl Accrual {
    fn now(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub fn availability(&self) -> Availability {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return Availability::In;
        }
        if self.now() < until || self.probing.load(Ordering::Relaxed) {
            return Availability::Ejected;
        }
        Availability::Probe
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Claims the probe of an endpoint whose ejection is over; only one caller wins.
    pub fn claim_probe(&self) -> bool {
        self.probing.compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Records a success of an endpoint that is not ejected: its run of failures ends.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a try's outcome. `may_eject` says whether the backend has room for one more
    /// ejected endpoint. Returns true when this outcome ejected the endpoint.
    pub fn record(&self, outcome: Outcome, config: &BreakerConfig, may_eject: impl FnOnce() -> bool) -> bool {
        let probing = self.probing.load(Ordering::Relaxed);
        match outcome {
            Outcome::Success => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                if probing || self.is_ejected() {
                    self.ejected_until.store(0, Ordering::Relaxed);
                    self.ejections.store(0, Ordering::Relaxed);
                    self.probing.store(false, Ordering::Relaxed);
                }
                false
            }
            Outcome::Failure => {
                if config.consecutive_failures == 0 {
                    return false;
                }
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                // A failed probe ejects again at once; otherwise the run must be long enough.
                let due = (probing && self.is_ejected()) || failures >= config.consecutive_failures;
                if !due || (!self.is_ejected() && !may_eject()) {
                    return false;
                }
                let n = self.ejections.fetch_add(1, Ordering::Relaxed);
                let backoff = config.base_ejection.saturating_mul(1 << n.min(16)).min(config.max_ejection);
                // Up to a tenth more, so that endpoints ejected together return apart.
                let backoff = backoff.mul_f64(1.0 + fastrand::f64() / 10.0);
                self.ejected_until.store(self.now() + backoff.as_nanos() as u64, Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                self.probing.store(false, Ordering::Relaxed);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(a: &Accrual, times: u32) -> bool {
        let config = BreakerConfig::default();
        let mut ejected = false;
        for _ in 0..times {
            ejected |= a.record(Outcome::Failure, &config, || true);
        }
        ejected
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_a_success_in_between_resets_the_run() {
        let a = Accrual::default();
        assert!(!fail(&a, 6));
        a.record(Outcome::Success, &BreakerConfig::default(), || true);
        assert!(!fail(&a, 6), "the run started again");
        assert!(fail(&a, 1));
        assert_eq!(a.availability(), Availability::Ejected);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_is_probed_and_comes_back_on_success() {
        let a = Accrual::default();
        fail(&a, 7);
        tokio::time::advance(Duration::from_millis(1200)).await;
        assert_eq!(a.availability(), Availability::Probe);
        assert!(a.claim_probe());
        assert!(!a.claim_probe(), "one probe at a time");
        assert_eq!(a.availability(), Availability::Ejected, "others wait for the probe");
        a.record(Outcome::Success, &BreakerConfig::default(), || true);
        assert_eq!(a.availability(), Availability::In);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_ejects_again_for_twice_as_long() {
        let a = Accrual::default();
        fail(&a, 7);
        tokio::time::advance(Duration::from_millis(1200)).await;
        assert!(a.claim_probe());
        assert!(fail(&a, 1), "one failure is enough for a probe");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(a.availability(), Availability::Ejected);
        tokio::time::advance(Duration::from_millis(800)).await;
        assert_eq!(a.availability(), Availability::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn no_room_in_the_backend_means_no_ejection() {
        let a = Accrual::default();
        let config = BreakerConfig::default();
        for _ in 0..20 {
            assert!(!a.record(Outcome::Failure, &config, || false));
        }
        assert_eq!(a.availability(), Availability::In);
    }

    #[test]
    fn server_errors_and_unavailable_calls_are_failures() {
        assert_eq!(Outcome::of_response(http::StatusCode::OK, None), Outcome::Success);
        assert_eq!(Outcome::of_response(http::StatusCode::NOT_FOUND, None), Outcome::Success);
        assert_eq!(Outcome::of_response(http::StatusCode::BAD_GATEWAY, None), Outcome::Failure);
        assert_eq!(Outcome::of_response(http::StatusCode::OK, Some(b"14")), Outcome::Failure);
        assert_eq!(Outcome::of_response(http::StatusCode::OK, Some(b"5")), Outcome::Success);
    }
}
