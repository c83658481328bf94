//! `v1` Service and Namespace.

use crate::meta::{ObjectMeta, ServerOwned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    /// `spec.finalizers` and `status.phase`, written by the API server.
    #[serde(default, skip_serializing)]
    pub spec: ServerOwned,
    #[serde(default, skip_serializing)]
    pub status: ServerOwned,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
    /// Load balancer ingress and conditions, written by the cluster.
    #[serde(default, skip_serializing)]
    pub status: ServerOwned,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Workloads whose labels include all of these are the Service's endpoints.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// Accepted for compatibility; Tarmac assigns its own virtual IPs in local mode.
    #[serde(default, rename = "type")]
    pub service_type: Option<String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// Assigned by the API server; local mode assigns its own virtual IPs.
    #[serde(default, rename = "clusterIPs", skip_serializing)]
    pub cluster_ips: ServerOwned,
    #[serde(default, skip_serializing)]
    pub ip_families: ServerOwned,
    #[serde(default, skip_serializing)]
    pub ip_family_policy: ServerOwned,
    /// Allocated by the API server for `LoadBalancer` Services.
    #[serde(default, skip_serializing)]
    pub allocate_load_balancer_node_ports: ServerOwned,
    #[serde(default, skip_serializing)]
    pub health_check_node_port: ServerOwned,
    /// `None` (the API server's default) only: Tarmac balances every request, and
    /// `ClientIP` is refused rather than ignored.
    #[serde(default)]
    pub session_affinity: Option<String>,
    /// `Cluster` (the default) or `Local`: on one machine every endpoint is local, so the
    /// two are the same in local mode.
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    #[serde(default)]
    pub external_traffic_policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// The workload's port: a number, or the name of a port the workload declares.
    /// Defaults to `port`.
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    /// `TCP` (default); other protocols are refused by validation.
    #[serde(default)]
    pub protocol: Option<String>,
    /// For example `http`, `kubernetes.io/h2c`: tells the proxy what to expect.
    #[serde(default)]
    pub app_protocol: Option<String>,
    /// Allocated by the API server for `NodePort` and `LoadBalancer` Services.
    #[serde(default, skip_serializing)]
    pub node_port: ServerOwned,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl ServicePort {
    /// The target port when it is a number (or defaults to `port`).
    pub fn target_number(&self) -> Option<u16> {
        match &self.target_port {
            None => Some(self.port),
            Some(TargetPort::Number(n)) => Some(*n),
            Some(TargetPort::Name(_)) => None,
        }
    }
}
