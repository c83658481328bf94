//! The kinds the store watches. The model's kinds are watched as dynamic objects (JSON),
//! so that the model reads every field the API server sends and refuses what it cannot
//! honour by name, as it does for a file; Pods and EndpointSlices are read typed, since
//! only a few of their fields become the registry's instances.

use kube::core::ApiResource;

/// A kind the model reads, as the API serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelKind {
    /// The group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource's name in API paths.
    pub plural: &'static str,
    /// Whether objects live in namespaces (a Namespace does not).
    pub namespaced: bool,
}

impl ModelKind {
    /// `v1`, `gateway.networking.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        match self.group {
            "" => self.version.to_string(),
            group => format!("{group}/{}", self.version),
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }

    /// Whether a cluster may lack the kind (its CRDs not installed): then it has no
    /// objects, rather than holding the control plane's start.
    pub fn optional(&self) -> bool {
        !self.group.is_empty()
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> ModelKind {
    ModelKind { group, version, kind, plural, namespaced }
}

/// The model's kinds that exist on a cluster. Not `tarmac.io/v1alpha1` Workload, which
/// is local mode's stand-in for Deployments and Pods, nor `apps/v1` Deployment, which
/// local mode runs as a Workload: on a cluster the Pods are what runs.
pub const MODEL_KINDS: &[ModelKind] = &[
    kind("", "v1", "Namespace", "namespaces", false),
    kind("", "v1", "Service", "services", true),
    kind("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", true),
    kind("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes", true),
    kind("tarmac.io", "v1alpha1", "FaultInjection", "faultinjections", true),
    kind("tarmac.io", "v1alpha1", "ResiliencePolicy", "resiliencepolicies", true),
    kind("tarmac.io", "v1alpha1", "AuthorizationPolicy", "authorizationpolicies", true),
    kind("tarmac.io", "v1alpha1", "RateLimitPolicy", "ratelimitpolicies", true),
    kind("tarmac.io", "v1alpha1", "Telemetry", "telemetries", true),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_one_the_model_reads() {
        for k in MODEL_KINDS {
            assert!(
                tarmac_model::SUPPORTED_KINDS.contains(&(k.api_version().as_str(), k.kind)),
                "{} {}",
                k.api_version(),
                k.kind
            );
        }
    }
}
