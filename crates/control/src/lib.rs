//! `tarmac-control`: the Tarmac control plane. It turns desired state (a directory of YAML,
//! or later the Kubernetes API) into what each proxy needs, and keeps serving the last good
//! state when the input is wrong.
//!
//! # Layout
//! - [`store`]: where desired state comes from, behind one trait: [`store::files`] reads
//!   and watches a directory (the local mode); a Kubernetes backend comes later.
//! - [`registry`]: the running workload instances and where their proxies listen.
//! - [`discovery`]: what each proxy needs, computed from both, streamed over gRPC.
//! - [`identity`]: the CA's gRPC face: workload certificates by CSR, proven by a
//!   bootstrap token or the certificate being renewed.
//! - [`grpc`]: the one gRPC server that carries both to the proxies.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod discovery;
pub mod grpc;
pub mod identity;
pub mod registry;
pub mod store;
