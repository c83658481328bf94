//! `tarmac.io/v1alpha1` Workload: a process to run with its sidecar (local mode only; on
//! Kubernetes, Deployments and Pods play this part). An `apps/v1` Deployment is read into
//! a Workload too (see [`crate::deployment`]).

use crate::meta::{ObjectMeta, ServerOwned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub api_version: String,
    pub kind: String,
    /// `metadata.labels` are what Services select, as with a Pod's labels.
    pub metadata: ObjectMeta,
    pub spec: WorkloadSpec,
    /// Written by controllers; Tarmac reads none.
    #[serde(default, skip_serializing)]
    pub status: ServerOwned,
    /// Fields of the Deployment this Workload was read from (`apiVersion: apps/v1`, `kind:
    /// Deployment`) that only a cluster applies (the image, resources, probes, ...), by
    /// path: `tarmac check` and `tarmac up` warn about them. Empty for a Workload.
    #[serde(skip)]
    pub cluster_only: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The program and its leading arguments, e.g. `[python3, app.py]`.
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The port the app serves on, as a container port. In local mode `tarmac up` gives
    /// every replica a free port of its own in `PORT` instead, so that replicas on one
    /// machine do not collide.
    pub port: u16,
    /// The identity the workload's certificate will carry.
    #[serde(default = "default_service_account")]
    pub service_account_name: String,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Working directory, relative to the configuration directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Overrides the mesh-wide handling of plaintext to this workload.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
}

/// Whether a workload accepts plaintext from clients outside the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Mesh traffic is mTLS; plaintext from non-mesh clients is accepted and labelled.
    Permissive,
    /// Only mTLS from proxies of the mesh.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }
}

fn default_service_account() -> String {
    "default".to_string()
}

fn one() -> u32 {
    1
}
