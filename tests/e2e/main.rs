//! End-to-end tests of Tarmac with real sockets and real clients.
//!
//! Tiers (see tests/README.md): in-process proxies on loopback (`http`, `tcp`, `balance`,
//! `limits`, `routes`, `app_tls`, `forgery`), HTTP/2 floods from raw frames (`h2_attacks`), the Gateway API mesh conformance runner over the cases
//! in tests/conformance (`conformance`), real external peers (`peers`: grpcio, WebSocket,
//! curl; redis in `tcp`; Prometheus' promtool in `limits`; OpenSSL in `identity`,
//! `identity_import`, `app_tls`), processes and signals (`lifecycle`, `demo`, `up`,
//! `app_protocol`), authorization by identity and inbound rate limits through `tarmac up`
//! (`authz`),
//! the retry storm of examples/retry-storm with the retry budget on and off (`storm`),
//! rolling restarts under load, of proxies and through `tarmac restart` (`restart`),
//! telemetry with a real Prometheus and headless Chromium (`observe`), `tarmac routes`
//! and the route checks of `tarmac check` against traffic through a mesh (`routes_cli`), and
//! sidecar injection through the control plane's admission webhook over TLS and `tarmac
//! inject` (`inject`), the control plane against a scripted Kubernetes API and Tarmac's
//! CRDs against the API's schemas (`kubernetes`), root-only network namespaces with iptables (`netns`, `transparent`), which fail rather than skip in
//! CI when not root.

mod app_protocol;
mod app_tls;
mod authz;
mod balance;
mod bench;
mod conformance;
mod control;
mod demo;
mod discovery;
mod examples;
mod forgery;
mod grafana;
mod h2_attacks;
mod http;
mod identity;
mod identity_import;
mod inject;
mod install;
mod kube_identity;
mod kubernetes;
mod lifecycle;
mod limits;
mod netns;
mod observe;
mod peers;
mod restart;
mod routes;
mod routes_cli;
mod storm;
mod tcp;
mod tracing;
mod transparent;
mod up;
