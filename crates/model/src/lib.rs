//! Tarmac's resource model: the Kubernetes-style objects a mesh is configured with, parsed
//! from YAML and validated before anything uses them.
//!
//! The same documents work in local mode (`tarmac up DIR`) and on Kubernetes
//! (`kubectl apply`): `v1` Service and Namespace, Tarmac's own `tarmac.io/v1alpha1`
//! Workload (local mode only), FaultInjection, ResiliencePolicy, AuthorizationPolicy,
//! RateLimitPolicy and Telemetry, `apps/v1` Deployment (run as a Workload
//! in local mode), and `gateway.networking.k8s.io/v1` HTTPRoute and GRPCRoute attached to
//! Services (the Gateway API mesh profile). A `v1` `List` of them reads as its items.
//!
//! Every error names the file, the line where the parser knows it, the object
//! (`Kind namespace/name`) and the field, and says what would be valid. Unknown fields are
//! errors, not silently ignored: a typo must never turn a feature off. Fields the API
//! server writes (`metadata.uid`, `resourceVersion`, `status`, `spec.clusterIPs`, ...)
//! are accepted and ignored ([`meta::ServerOwned`]), so `kubectl get -o yaml` output loads.
//!
//! # Layout
//! - [`meta`]: object metadata and references.
//! - [`service`], [`workload`], [`route`], [`fault`], [`resilience`], [`authz`],
//!   [`telemetry`]: the kinds
//!   ([`authz`] also holds the `tarmac.io/default-policy` annotation's values).
//! - [`deployment`]: `apps/v1` Deployment, read into a [`Workload`].
//! - [`parse`]: YAML documents to [`Resource`]s, with located errors.
//! - [`validate`]: checks types cannot express (ports in range, weights, path syntax).
//! - [`duration`]: Gateway API durations (`1h30m`, `500ms`).

pub mod authz;
pub mod deployment;
pub mod duration;
pub mod fault;
pub mod meta;
pub mod parse;
pub mod resilience;
pub mod route;
pub mod service;
pub mod telemetry;
pub mod validate;
pub mod workload;

pub use authz::{AuthorizationPolicy, RateLimitPolicy};
pub use fault::FaultInjection;
pub use meta::{ObjectKey, ObjectMeta};
pub use parse::{ModelError, parse_documents, parse_object};
pub use resilience::ResiliencePolicy;
pub use route::{GrpcRoute, HttpRoute};
pub use service::{Namespace, Service};
pub use telemetry::Telemetry;
pub use workload::Workload;

/// One object of any supported kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Namespace(Namespace),
    Service(Service),
    Workload(Workload),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    FaultInjection(FaultInjection),
    ResiliencePolicy(ResiliencePolicy),
    AuthorizationPolicy(AuthorizationPolicy),
    RateLimitPolicy(RateLimitPolicy),
    Telemetry(Telemetry),
}

/// The kinds Tarmac reads, as `(apiVersion, kind)`.
pub const SUPPORTED_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "Service"),
    ("tarmac.io/v1alpha1", "Workload"),
    ("apps/v1", "Deployment"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("tarmac.io/v1alpha1", "FaultInjection"),
    ("tarmac.io/v1alpha1", "ResiliencePolicy"),
    ("tarmac.io/v1alpha1", "AuthorizationPolicy"),
    ("tarmac.io/v1alpha1", "RateLimitPolicy"),
    ("tarmac.io/v1alpha1", "Telemetry"),
];

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Namespace(_) => "Namespace",
            Resource::Service(_) => "Service",
            Resource::Workload(_) => "Workload",
            Resource::HttpRoute(_) => "HTTPRoute",
            Resource::GrpcRoute(_) => "GRPCRoute",
            Resource::FaultInjection(_) => "FaultInjection",
            Resource::ResiliencePolicy(_) => "ResiliencePolicy",
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::RateLimitPolicy(_) => "RateLimitPolicy",
            Resource::Telemetry(_) => "Telemetry",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(r) => &r.metadata,
            Resource::Service(r) => &r.metadata,
            Resource::Workload(r) => &r.metadata,
            Resource::HttpRoute(r) => &r.metadata,
            Resource::GrpcRoute(r) => &r.metadata,
            Resource::FaultInjection(r) => &r.metadata,
            Resource::ResiliencePolicy(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::RateLimitPolicy(r) => &r.metadata,
            Resource::Telemetry(r) => &r.metadata,
        }
    }

    /// `Kind namespace/name`, as errors and logs name objects.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.kind(), self.meta())
    }
}
