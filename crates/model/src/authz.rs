//! `tarmac.io/v1alpha1` AuthorizationPolicy and RateLimitPolicy: who may call a workload,
//! and how often. Both are enforced by the called workload's own sidecar (inbound).
//!
//! Both attach by `targetRefs` to a Service (every port of it, or one port named by
//! `sectionName`), or to an HTTPRoute or GRPCRoute attached to a Service (every rule, or
//! the rule named by `sectionName`). What is allowed where no ALLOW policy applies is the
//! default policy: the `tarmac.io/default-policy` annotation of the Workload (or of a
//! Deployment's pod template, or of the Deployment), else of its Namespace, else the
//! mesh's (`tarmac up --default-policy`), else `allow-all`. See docs/policy.md.

use crate::meta::ObjectMeta;
use crate::resilience::PolicyTargetRef;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The annotation that sets a Namespace's or a Workload's default policy.
pub const DEFAULT_POLICY_ANNOTATION: &str = "tarmac.io/default-policy";

/// What a workload allows where no ALLOW policy applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DefaultPolicy {
    /// Every client, in the mesh or not: what a mesh without policies does.
    #[default]
    AllowAll,
    /// Clients that proved a mesh identity (mTLS); plaintext clients are refused.
    AllAuthenticated,
    /// Nothing: only what an ALLOW policy allows.
    Deny,
    /// Everything, but what `all-authenticated` and the policies would refuse is counted
    /// and logged as a would-be denial.
    Audit,
}

impl DefaultPolicy {
    pub const NAMES: [&'static str; 4] = ["allow-all", "all-authenticated", "deny", "audit"];

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::AllowAll => "allow-all",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }

    /// The value of the annotation (or of `--default-policy`); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "allow-all" => DefaultPolicy::AllowAll,
            "all-authenticated" => DefaultPolicy::AllAuthenticated,
            "deny" => DefaultPolicy::Deny,
            "audit" => DefaultPolicy::Audit,
            _ => return None,
        })
    }

    /// The default an object's annotations set, if any (valid after validation).
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        meta.annotations.get(DEFAULT_POLICY_ANNOTATION).and_then(|v| Self::parse(v))
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is none of [`DefaultPolicy::NAMES`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no default policy; use {names}", names = DefaultPolicy::NAMES.join(", "))]
pub struct UnknownDefaultPolicy(pub String);

impl std::str::FromStr for DefaultPolicy {
    type Err = UnknownDefaultPolicy;

    fn from_str(s: &str) -> Result<Self, UnknownDefaultPolicy> {
        Self::parse(s).ok_or_else(|| UnknownDefaultPolicy(s.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_refs: Vec<PolicyTargetRef>,
    /// `ALLOW` (the default) or `DENY`. DENY policies are evaluated first; a target with
    /// any ALLOW policy refuses what none of them allows.
    #[serde(default)]
    pub action: Action,
    /// The clients the policy is about: one of the entries must match (ORed).
    pub from: Vec<Source>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Action {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

/// Clients, described by what they proved. A client matches when it satisfies every field
/// the entry sets (ANDed); within a field, any value (ORed).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// SPIFFE IDs, exact (`spiffe://cluster.local/ns/shop/sa/web`) or a prefix ending in
    /// `*` (`spiffe://cluster.local/ns/shop/*`).
    #[serde(default)]
    pub identities: Vec<String>,
    /// Service accounts: `web` (in the policy's namespace) or `shop/web`.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Namespaces of the clients' identities.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `true`: any client with a mesh identity.
    #[serde(default)]
    pub authenticated: Option<bool>,
    /// `true`: clients without one (plaintext, from outside the mesh).
    #[serde(default)]
    pub unauthenticated: Option<bool>,
    /// The client's address (`10.0.0.0/8`, `::1/128`, or one address).
    #[serde(default)]
    pub cidrs: Vec<String>,
}

impl Source {
    /// Whether the entry can only match clients with a mesh identity.
    pub fn needs_identity(&self) -> bool {
        !self.identities.is_empty()
            || !self.service_accounts.is_empty()
            || !self.namespaces.is_empty()
            || self.authenticated == Some(true)
    }

    /// Whether the entry sets nothing (it would match every client).
    pub fn is_empty(&self) -> bool {
        !self.needs_identity()
            && self.unauthenticated.is_none()
            && self.cidrs.is_empty()
            && self.authenticated.is_none()
    }
}

/// A service account as written (`web` or `shop/web`) as `(namespace, name)`.
pub fn service_account(text: &str, policy_namespace: &str) -> (String, String) {
    match text.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (policy_namespace.to_string(), text.to_string()),
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RateLimitPolicySpec,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    pub target_refs: Vec<PolicyTargetRef>,
    /// All clients together.
    #[serde(default)]
    pub total: Option<Rate>,
    /// Each client identity on its own (clients without one share one limit).
    #[serde(default)]
    pub per_caller: Option<Rate>,
    /// Limits of their own for named clients, instead of `perCaller`.
    #[serde(default)]
    pub overrides: Vec<RateOverride>,
}

/// Requests per second, and how many may arrive at once beyond that pace.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rate {
    pub requests_per_second: u32,
    /// Requests admitted at once after a quiet spell (default: a tenth of a second's
    /// worth, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Rate {
    pub fn burst_or_default(&self) -> u32 {
        self.burst.unwrap_or((self.requests_per_second / 10).max(1))
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateOverride {
    pub requests_per_second: u32,
    #[serde(default)]
    pub burst: Option<u32>,
    /// The clients, as in an AuthorizationPolicy (each gets a limit of its own).
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
}

impl RateOverride {
    pub fn rate(&self) -> Rate {
        Rate { requests_per_second: self.requests_per_second, burst: self.burst }
    }
}
