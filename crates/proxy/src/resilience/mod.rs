//! What keeps one failing service from taking its callers down with it.
//!
//! - [`budget`]: the retry budget, on for every service: retries add at most a share of
//!   the load.
//! - [`retry`]: the tries of one request, retried only when safe and within the budget.
//! - [`replay`]: a body of unknown length recorded as it is sent, for a retry.
//! - [`breaker`]: endpoints that fail requests in a row are ejected, then probed.
//! - [`deadline`]: a request's deadline, from its route and its gRPC caller.
//! - [`limit`]: at most so many requests in flight and queued per backend.

pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod limit;
pub mod replay;
pub mod retry;

#[cfg(test)]
mod tests;

use breaker::BreakerConfig;
use budget::BudgetConfig;
use limit::LimitConfig;
use std::time::Duration;
use tarmac_proto::discovery as pb;
use tarmac_route::Retry;

/// A Service's ResiliencePolicy as this proxy applies it to its calls of the Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePolicy {
    /// `None`: the budget is off.
    pub budget: Option<BudgetConfig>,
    pub breaker: BreakerConfig,
    /// `None`: no limit.
    pub limit: Option<LimitConfig>,
    /// For requests no route rule takes.
    pub unrouted: Unrouted,
}

/// What governs requests no route rule takes; all absent by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unrouted {
    pub retry: Option<Retry>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
}

impl Unrouted {
    pub fn is_empty(&self) -> bool {
        *self == Unrouted::default()
    }
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl ServicePolicy {
    /// From discovery; absent, the defaults. A policy that does not compile is refused
    /// whole.
    pub fn from_pb(r: Option<&pb::Resilience>) -> Result<Self, tarmac_route::policy::RetryError> {
        let Some(r) = r else {
            return Ok(Self {
                budget: Some(BudgetConfig::default()),
                breaker: BreakerConfig::default(),
                limit: None,
                unrouted: Unrouted {
                    request_timeout: Some(tarmac_route::policy::DEFAULT_REQUEST_TIMEOUT),
                    ..Unrouted::default()
                },
            });
        };
        let defaults = BudgetConfig::default();
        let budget = match &r.retry_budget {
            None => Some(defaults),
            Some(b) if b.disabled => None,
            Some(b) => Some(BudgetConfig {
                ratio: b.ratio.unwrap_or(defaults.ratio),
                min_per_second: b.min_retries_per_second.unwrap_or(defaults.min_per_second),
                window: millis(b.window_ms).unwrap_or(defaults.window),
            }),
        };
        Ok(Self {
            budget,
            breaker: breaker_from_pb(r.circuit_breaker.as_ref()),
            limit: limit_from_pb(r.limit.as_ref()),
            unrouted: Unrouted {
                retry: r.retry.as_ref().map(Retry::compile).transpose()?,
                request_timeout: millis(r.request_timeout_ms),
                backend_timeout: millis(r.backend_request_timeout_ms),
            },
        })
    }
}

/// A Service's circuit breaking from discovery; absent fields keep the defaults.
pub fn breaker_from_pb(c: Option<&pb::CircuitBreaker>) -> BreakerConfig {
    let defaults = BreakerConfig::default();
    let Some(c) = c else { return defaults };
    BreakerConfig {
        consecutive_failures: c.consecutive_failures.unwrap_or(defaults.consecutive_failures),
        base_ejection: millis(c.base_ejection_ms).unwrap_or(defaults.base_ejection),
        max_ejection: millis(c.max_ejection_ms).unwrap_or(defaults.max_ejection),
        max_ejected_share: c
            .max_ejection_percent
            .map_or(defaults.max_ejected_share, |p| f64::from(p.min(100)) / 100.0),
    }
}

/// A Service's concurrency limit from discovery; `None` without one.
pub fn limit_from_pb(l: Option<&pb::ConcurrencyLimit>) -> Option<LimitConfig> {
    let l = l?;
    (l.max_in_flight > 0).then_some(LimitConfig { max_in_flight: l.max_in_flight, max_queued: l.max_queued })
}
