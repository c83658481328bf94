//! `tarmac-proxy`: the Tarmac data plane, a small proxy that runs beside each workload.
//!
//! It intercepts the workload's traffic in both directions (transparently through
//! iptables, or explicitly on per-service local ports), detects the protocol of each
//! connection, balances every HTTP request over the destination's endpoints with
//! peak-EWMA power of two choices, carries HTTP/1 between proxies over multiplexed HTTP/2,
//! forwards everything else as opaque TCP, and exports golden metrics.
//!
//! # Layout
//! - [`config`]: the typed configuration, parsed once from YAML.
//! - [`app`]: binds the listeners, runs them, drains on shutdown.
//! - [`inbound`] and [`outbound`]: the two directions, from accept to a destination.
//! - [`conn`]: what every connection goes through: the cap, detection, dispatch.
//! - [`detect`]: protocol detection from the first bytes.
//! - [`http`]: serving, forwarding, tunnels (WebSocket, CONNECT), body metering, and
//!   closing idle HTTP/1 connections (and every connection on drain).
//! - [`endpoint`] and [`balance`]: connections to endpoints, and choosing one.
//! - [`discovery`]: endpoints and routes followed through the control plane, kept when it
//!   is away.
//! - [`identity`]: the workload certificate and mTLS between proxies.
//! - [`route`]: HTTPRoute and GRPCRoute matching, filters and weighted backends.
//! - [`tcp`]: opaque forwarding.
//! - [`metrics`], [`tap`] and [`admin`]: Prometheus metrics, live request events, and the
//!   admin listener that serves both.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod conn;
pub mod detect;
pub mod discovery;
pub mod endpoint;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod route;
pub mod tap;
pub mod tcp;

pub use app::{BoundAddrs, Running, start};
pub use config::Config;
