//! `tarmac.io/v1alpha1` ResiliencePolicy: how callers retry, time out and break circuits
//! to a Service, or along one route.
//!
//! Attached by `targetRefs` to a Service (every caller's sidecar applies it to its calls
//! of that Service: the retry budget, circuit breaking, default timeouts and a default
//! retry), or to an HTTPRoute or GRPCRoute, optionally one named rule of it
//! (`sectionName`): retries and timeouts for those rules. A rule's own Gateway API
//! `retry` and `timeouts` come first; then a policy naming the rule; then one naming the
//! route; then one naming the Service. GRPCRoute has no `retry` or `timeouts` of its own,
//! so a policy is how its rules get them.

use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResiliencePolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ResiliencePolicySpec,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResiliencePolicySpec {
    pub target_refs: Vec<PolicyTargetRef>,
    /// Service targets only.
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
    /// Service targets only.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Service targets only.
    #[serde(default)]
    pub limits: Option<ConcurrencyLimits>,
    #[serde(default)]
    pub retry: Option<PolicyRetry>,
    #[serde(default)]
    pub timeouts: Option<PolicyTimeouts>,
}

/// How many requests each caller may have at the Service at once (a bulkhead): past
/// `maxInFlight` and `maxQueued` more waiting, the caller's sidecar answers 503 at once.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConcurrencyLimits {
    pub max_in_flight: u32,
    /// Default 0: nothing waits.
    #[serde(default)]
    pub max_queued: u32,
}

/// A Service, HTTPRoute or GRPCRoute in the policy's namespace (ResiliencePolicy,
/// AuthorizationPolicy, RateLimitPolicy).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `""` for a Service, `gateway.networking.k8s.io` for a route.
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// A route rule's `name`; for an AuthorizationPolicy or RateLimitPolicy also a Service
    /// port's `name`.
    #[serde(default)]
    pub section_name: Option<String>,
}

impl PolicyTargetRef {
    pub fn is_service(&self) -> bool {
        (self.group.is_empty() || self.group == "core") && self.kind == "Service"
    }

    /// `HTTPRoute` or `GRPCRoute` when the target is one.
    pub fn route_kind(&self) -> Option<&str> {
        (self.group == "gateway.networking.k8s.io" && matches!(self.kind.as_str(), "HTTPRoute" | "GRPCRoute"))
            .then_some(self.kind.as_str())
    }
}

/// How much retrying may add to the requests each caller sends to the Service.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// `false` turns the budget off: retries are then bounded by `attempts` alone, which
    /// is how retry storms happen. `tarmac check` warns about it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Retries as a share of requests, 0 to 1 (default 0.2).
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Retries allowed per second whatever the traffic (default 10).
    #[serde(default)]
    pub min_retries_per_second: Option<u32>,
    /// The window the two are counted over (default `10s`).
    #[serde(default)]
    pub window: Option<String>,
}

fn yes() -> bool {
    true
}

/// When an endpoint of the Service is ejected from callers' balancers.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Failures in a row that eject an endpoint (default 7; 0 turns ejection off).
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length (default `1s`); each next one doubles.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// The longest ejection (default `60s`).
    #[serde(default)]
    pub max_ejection_time: Option<String>,
    /// The largest share of the Service's endpoints ejected at once, 0-100 (default 50).
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// Retries of requests that left the sidecar (those that never left are always retried).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyRetry {
    /// Retries after the first try (default 2).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// HTTP statuses retried, 400-599.
    #[serde(default)]
    pub codes: Vec<u16>,
    /// gRPC statuses retried, by name (`UNAVAILABLE`) or number; default `[UNAVAILABLE]`
    /// when neither `codes` nor `grpcCodes` is given.
    #[serde(default)]
    pub grpc_codes: Vec<String>,
    /// The least wait before a retry (default `25ms`).
    #[serde(default)]
    pub backoff: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTimeouts {
    /// The whole request, retries included, until its response starts.
    #[serde(default)]
    pub request: Option<String>,
    /// Each try.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// gRPC status names, by number.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status by name or number.
pub fn grpc_code(text: &str) -> Option<u32> {
    GRPC_CODES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .map(|i| i as u32)
        .or_else(|| text.parse().ok().filter(|n| *n < 17))
}

impl PolicyRetry {
    /// The gRPC statuses retried, as numbers (valid after validation).
    pub fn grpc_code_numbers(&self) -> Vec<u32> {
        if self.codes.is_empty() && self.grpc_codes.is_empty() {
            return vec![14];
        }
        self.grpc_codes.iter().filter_map(|c| grpc_code(c)).collect()
    }
}
