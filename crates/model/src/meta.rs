//! Object metadata, as in Kubernetes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// `default` when absent, as in Kubernetes.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Tarmac reads `tarmac.io/default-policy` (Namespace, Workload, Deployment); others
    /// are kept for compatibility with manifests written for Kubernetes.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// What the API server writes into every object, so that `kubectl get -o yaml` output
    /// loads as it is.
    #[serde(default, skip_serializing)]
    pub uid: ServerOwned,
    #[serde(default, skip_serializing)]
    pub resource_version: ServerOwned,
    #[serde(default, skip_serializing)]
    pub generation: ServerOwned,
    #[serde(default, skip_serializing)]
    pub creation_timestamp: ServerOwned,
    #[serde(default, skip_serializing)]
    pub deletion_timestamp: ServerOwned,
    #[serde(default, skip_serializing)]
    pub deletion_grace_period_seconds: ServerOwned,
    #[serde(default, skip_serializing)]
    pub managed_fields: ServerOwned,
    #[serde(default, skip_serializing)]
    pub self_link: ServerOwned,
}

/// A field the API server owns (`metadata.uid`, `resourceVersion`, `status`,
/// `spec.clusterIP`, ...): accepted so that what `kubectl get -o yaml` prints loads as it
/// is, never read, never written back. Any two are equal, so that a new `resourceVersion`
/// alone is no change of configuration. Only fields named in the model's types are
/// accepted this way: a misspelt field is still refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerOwned;

impl PartialEq for ServerOwned {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ServerOwned {}

impl<'de> Deserialize<'de> for ServerOwned {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(ServerOwned)
    }
}

/// Identifies an object in messages: `HTTPRoute shop/canary`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &'static str, meta: &ObjectMeta) -> Self {
        Self { kind, namespace: meta.namespace.clone(), name: meta.name.clone() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A label selector's `matchLabels`-style map matches when every pair is present.
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
