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
//! - [`conn`]: what every connection goes through: the cap, detection, then HTTP or TCP.
//! - [`detect`]: protocol detection from the first bytes.
//! - [`http`]: serving, what every request goes through, body metering, and closing idle
//!   HTTP/1 connections (and every connection on drain).
//! - [`inbound`] and [`outbound`]: the two directions, each with its own request stages.
//!   Outbound: a logical service (routes, retry budget) dispatches to backends; inbound:
//!   the client's identity, then the app.
//! - [`resilience`]: retries and the retry budget.
//! - [`backend`], [`balance`] and [`endpoint`]: a set of endpoints and the one `dispatch`
//!   that picks one and sends; choosing by peak-EWMA; connections to one endpoint.
//! - [`error`]: why a request failed, and whether it may be tried again.
//! - [`discovery`]: endpoints and routes followed through the control plane, kept when it
//!   is away.
//! - [`identity`]: the workload certificate and mTLS between proxies.
//! - [`tcp`]: opaque forwarding.
//! - [`metrics`], [`tap`] and [`admin`]: Prometheus metrics, live request events, and the
//!   admin listener that serves both.
//! - [`telemetry`]: trace context, spans exported over OTLP, access logs; off unless
//!   configured, and then one stage compiled per update.

pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod config;
pub mod conn;
pub mod detect;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod resilience;
pub mod swap;
pub mod tap;
pub mod tcp;
pub mod telemetry;

pub use app::{BoundAddrs, Running, start};
pub use config::Config;
