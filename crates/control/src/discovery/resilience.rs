//! ResiliencePolicies as proxies apply them: a Service's (its callers' retry budget,
//! circuit breaking, and the retry and timeouts of requests no rule governs), and a route
//! rule's retry and timeouts where the rule has none of its own.
//!
//! Several policies naming one target: the first by name wins, field by field. See
//! docs/traffic-management.md.

use crate::store::Snapshot;
use tarmac_model::resilience::{PolicyRetry, PolicyTimeouts, ResiliencePolicy};
use tarmac_model::{Resource, duration};
use tarmac_proto::discovery as pb;

/// The policies in `namespace` naming a target `matches` accepts, by name.
fn policies<'a>(
    snapshot: &'a Snapshot,
    namespace: &str,
    matches: impl Fn(&tarmac_model::resilience::PolicyTargetRef) -> bool,
) -> Vec<&'a ResiliencePolicy> {
    snapshot
        .iter_kind_in("ResiliencePolicy", namespace)
        .filter_map(|r| match r {
            Resource::ResiliencePolicy(p) if p.spec.target_refs.iter().any(&matches) => Some(p),
            _ => None,
        })
        .collect()
}

/// A duration field in milliseconds; 0 when absent.
pub fn millis(d: &Option<String>) -> u64 {
    d.as_deref().and_then(|d| duration::parse(d).ok()).map_or(0, |d| d.as_millis() as u64)
}

/// A Service's request timeout in milliseconds: absent, the default; `0s`, none (0).
pub fn request_timeout_ms(request: &Option<String>) -> u64 {
    match request {
        None => tarmac_route::policy::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
        Some(_) => millis(request),
    }
}

/// A policy's retry as proxies apply it.
pub fn retry(r: &PolicyRetry) -> pb::Retry {
    pb::Retry {
        attempts: r.attempts.unwrap_or(tarmac_route::policy::DEFAULT_ATTEMPTS),
        codes: r.codes.iter().map(|&c| u32::from(c)).collect(),
        grpc_codes: r.grpc_code_numbers(),
        backoff_ms: millis(&r.backoff),
    }
}

/// A Service's policy for its callers; `None` when no policy names it (the defaults).
pub fn of_service(snapshot: &Snapshot, namespace: &str, name: &str) -> Option<pb::Resilience> {
    let found = policies(snapshot, namespace, |t| t.is_service() && t.name == name);
    if found.is_empty() {
        return None;
    }
    let first = |field: fn(&ResiliencePolicy) -> bool| found.iter().copied().find(|p| field(p));
    let budget =
        first(|p| p.spec.retry_budget.is_some()).and_then(|p| p.spec.retry_budget.as_ref()).map(|b| {
            pb::RetryBudget {
                disabled: !b.enabled,
                ratio: b.ratio,
                min_retries_per_second: b.min_retries_per_second,
                window_ms: millis(&b.window),
            }
        });
    let breaker = first(|p| p.spec.circuit_breaker.is_some())
        .and_then(|p| p.spec.circuit_breaker.as_ref())
        .map(|c| pb::CircuitBreaker {
            consecutive_failures: c.consecutive_failures,
            base_ejection_ms: millis(&c.base_ejection_time),
            max_ejection_ms: millis(&c.max_ejection_time),
            max_ejection_percent: c.max_ejection_percent,
        });
    let limit = first(|p| p.spec.limits.is_some())
        .and_then(|p| p.spec.limits.as_ref())
        .map(|l| pb::ConcurrencyLimit { max_in_flight: l.max_in_flight, max_queued: l.max_queued });
    let timeouts = first(|p| p.spec.timeouts.as_ref().is_some_and(|t| t.request.is_some()))
        .and_then(|p| p.spec.timeouts.clone())
        .unwrap_or_default();
    let backend_timeouts = first(|p| p.spec.timeouts.as_ref().is_some_and(|t| t.backend_request.is_some()))
        .and_then(|p| p.spec.timeouts.clone())
        .unwrap_or_default();
    Some(pb::Resilience {
        retry_budget: budget,
        circuit_breaker: breaker,
        retry: first(|p| p.spec.retry.is_some()).and_then(|p| p.spec.retry.as_ref()).map(retry),
        // Always the effective value: absent, the default; `0s`, none (0).
        request_timeout_ms: request_timeout_ms(&timeouts.request),
        backend_request_timeout_ms: millis(&backend_timeouts.backend_request),
        limit,
    })
}

/// The retry and timeouts policies give one rule of a route: a policy naming the rule
/// first, then one naming the whole route.
pub fn of_rule(
    snapshot: &Snapshot,
    kind: &str,
    namespace: &str,
    route: &str,
    rule: Option<&str>,
) -> (Option<pb::Retry>, PolicyTimeouts) {
    let named = |section: bool| {
        policies(snapshot, namespace, move |t| {
            t.route_kind() == Some(kind)
                && t.name == route
                && match (&t.section_name, section) {
                    (Some(s), true) => Some(s.as_str()) == rule,
                    (None, false) => true,
                    _ => false,
                }
        })
    };
    let ordered: Vec<&ResiliencePolicy> = named(true).into_iter().chain(named(false)).collect();
    let retry = ordered.iter().find_map(|p| p.spec.retry.as_ref()).map(retry);
    let timeouts = ordered.iter().find_map(|p| p.spec.timeouts.clone()).unwrap_or_default();
    (retry, timeouts)
}

/// The retry budget callers have for a Service, as `tarmac routes` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BudgetView {
    pub enabled: bool,
    pub ratio: f64,
    pub min_retries_per_second: u32,
    pub window_ms: u64,
    /// The ResiliencePolicy that set it (`namespace/name`); `None`: the defaults.
    pub policy: Option<String>,
}

impl BudgetView {
    /// In a few words: `20 % of requests + 10/s over 10s (default)`.
    pub fn describe(&self) -> String {
        let whence =
            self.policy.as_ref().map_or_else(|| "default".to_string(), |p| format!("ResiliencePolicy {p}"));
        if !self.enabled {
            return format!("off: retries bounded by their attempts alone ({whence})");
        }
        format!(
            "{} % of requests + {}/s over {}s ({whence})",
            (self.ratio * 100.0).round(),
            self.min_retries_per_second,
            self.window_ms as f64 / 1000.0
        )
    }
}

/// The retry budget in force for callers of Service `namespace/name`.
pub fn budget_of(snapshot: &Snapshot, namespace: &str, name: &str) -> BudgetView {
    use tarmac_route::policy::{DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_RATIO, DEFAULT_BUDGET_WINDOW};
    let found = policies(snapshot, namespace, |t| t.is_service() && t.name == name);
    let set = found.iter().find_map(|p| p.spec.retry_budget.as_ref().map(|b| (p, b)));
    let window = |b: &tarmac_model::resilience::RetryBudget| match millis(&b.window) {
        0 => DEFAULT_BUDGET_WINDOW.as_millis() as u64,
        ms => ms,
    };
    match set {
        None => BudgetView {
            enabled: true,
            ratio: DEFAULT_BUDGET_RATIO,
            min_retries_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            window_ms: DEFAULT_BUDGET_WINDOW.as_millis() as u64,
            policy: None,
        },
        Some((p, b)) => BudgetView {
            enabled: b.enabled,
            ratio: b.ratio.unwrap_or(DEFAULT_BUDGET_RATIO),
            min_retries_per_second: b.min_retries_per_second.unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
            window_ms: window(b),
            policy: Some(format!("{}/{}", p.metadata.namespace, p.metadata.name)),
        },
    }
}
