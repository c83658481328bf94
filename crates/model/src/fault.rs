//! `tarmac.io/v1alpha1` FaultInjection: delays and aborts for a share of requests, used
//! from an HTTPRoute or GRPCRoute rule (or backendRef) as an `ExtensionRef` filter
//! (`{group: tarmac.io, kind: FaultInjection, name: ...}`) in the route's namespace.

use crate::meta::{ObjectMeta, ServerOwned};
use crate::route::HeaderMatch;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjection {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: FaultInjectionSpec,
    /// Written by controllers (route conditions, ...); Tarmac computes its own.
    #[serde(default, skip_serializing)]
    pub status: ServerOwned,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjectionSpec {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
    /// Only requests with all of these headers are affected (as in an HTTPRoute match);
    /// empty: every request of the rule.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// A Gateway API duration, e.g. `200ms`.
    pub fixed_delay: String,
    /// Share of requests delayed, 0-100 (default 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// The status the caller gets instead of the backend's answer.
    pub http_status: u16,
    /// Share of requests aborted, 0-100 (default 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

fn hundred() -> f64 {
    100.0
}
