//! `tarmac-control`: the Tarmac control plane. It turns desired state (a directory of YAML,
//! or the Kubernetes API through `tarmac-kube`) into what each proxy needs, and keeps
//! serving the last good state when the input is wrong.
//!
//! # Layout
//! - [`start`] (in `app.rs`): everything below wired from one [`Config`] on listeners the
//!   caller bound; the `tarmac-control` binary (in `crates/kube`, so that this library
//!   builds without kube-rs) and `tarmac up` both run it.
//! - [`store`]: where desired state comes from, behind one trait: [`store::files`] reads
//!   and watches a directory (the local mode); the Kubernetes backend, in `tarmac-kube`,
//!   implements the same trait.
//! - [`registry`]: the running workload instances and where their proxies listen.
//! - [`discovery`]: what each proxy needs, computed from both, streamed over gRPC.
//! - [`identity`]: the CA's gRPC face: workload certificates by CSR, proven by a
//!   bootstrap token or the certificate being renewed.
//! - [`grpc`]: the one gRPC server that carries both to the proxies.
//! - [`telemetry`]: every proxy's metrics, scraped and turned into golden metrics per
//!   workload, service, route and edge; their last hour ([`telemetry::history`]); the live
//!   tap relay.
//! - [`api`]: the HTTP JSON API the CLI, the dashboard and Prometheus use.
//! - [`inject`]: sidecar injection into Kubernetes pods, shared by `tarmac inject` and
//!   the mutating admission webhook ([`inject::webhook`]) the binary serves.
//! - [`crds`]: the CustomResourceDefinitions of Tarmac's kinds, from the model's types.
//! - [`workloads`]: restart requests, handed to whoever runs the Workloads (`tarmac up`).
//! - [`prometheus`] and [`http_client`]: the Prometheus text format and a small loopback
//!   HTTP client, shared with the CLI.
//! - [`tls`]: the serving certificates the control plane issues itself (the gRPC API's,
//!   the webhook's).

pub mod api;
mod app;
pub mod crds;
pub mod discovery;
pub mod grpc;
pub mod http_client;
pub mod identity;
pub mod inject;
pub mod prometheus;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod workloads;

pub use app::{Addrs, BindError, Config, IdentityConfig, Listeners, Running, StartError, StoreConfig, start};
