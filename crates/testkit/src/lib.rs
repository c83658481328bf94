//! Test helpers for Tarmac: real servers and real clients on loopback, never mocks of the
//! proxy's peers.
//!
//! - [`apiserver`]: a scripted Kubernetes API server (lists, watches, 410 Gone) for the
//!   Kubernetes store, which no cluster here can serve.
//! - [`echo`]: an HTTP/1.1 + h2c server that reports what it received, with knobs for
//!   latency and status, and counts its connections.
//! - [`control`]: the real control plane, in-process on port 0, or the `tarmac-control`
//!   binary as a child process.
//! - [`proxy`]: a `tarmac-proxy` in-process on port 0, or as a child process.
//! - [`metrics`]: reading a proxy's `/metrics`.
//! - [`servers`]: TCP servers with awkward behaviours (speaks first, half-close, CONNECT).
//! - [`tools`]: running external clients (curl, Python peers) and finding binaries.

pub mod apiserver;
pub mod control;
pub mod echo;
pub mod metrics;
pub mod proxy;
pub mod servers;
pub mod tools;
