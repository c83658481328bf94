//! The outbound side: the app's connections to other services.
//!
//! Explicit mode gives each service a local listener (`books -> 127.0.0.1:7001`).
//! Transparent mode has one listener for connections redirected by iptables; the original
//! destination selects the service by its address, and destinations that are no known
//! service are proxied to where they were going (still measured, not meshed).

//!
//! - [`logical`]: a service the app calls: its routes, its retry budget, its backend.
//! - [`route`]: the routed request path, stage by stage.

pub mod logical;
pub mod route;

use crate::backend::Backend;
use crate::config::{OutboundConfig, Protocol, ServiceConfig};
use crate::conn::{self, Shared, Targets};
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::metrics::{Direction, Peer};
use logical::Logical;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// One service the app calls.
#[derive(Debug)]
pub struct Service {
    pub logical: Arc<Logical>,
}

impl Service {
    pub fn new(config: &ServiceConfig, shared: &Shared) -> Self {
        let name = Arc::new(config.name.clone());
        let meta = shared.meta(Direction::Outbound, name.clone(), Peer::Unlabelled);
        let endpoints = config
            .endpoints
            .iter()
            .map(|ep| {
                let spec = EndpointSpec {
                    addr: ep.addr,
                    meshed: ep.meshed,
                    identity: ep.identity.as_deref().map(Into::into),
                };
                Arc::new(Endpoint::new(spec, shared.connect.clone(), (*meta.metrics).clone()))
            })
            .collect();
        let backend = Backend::new(name, endpoints).counted_in(&meta.metrics);
        Self { logical: Arc::new(Logical::new(meta, backend, config.protocol)) }
    }
}

/// A service and the explicit listener it has, if any.
pub type ExplicitService = (Arc<Service>, Option<SocketAddr>);

/// Destinations outside the mesh with their own pools and metrics (see [`Targets`]).
const MAX_PASSTHROUGH: usize = 1024;

#[derive(Debug)]
pub struct Outbound {
    by_addr: HashMap<SocketAddr, Arc<Service>>,
    passthrough: Targets<SocketAddr, Logical>,
}

impl Outbound {
    /// Builds the services; returns them with their explicit listen addresses.
    pub fn new(config: &OutboundConfig, shared: &Shared) -> (Self, Vec<ExplicitService>) {
        let mut by_addr = HashMap::new();
        let mut services = Vec::new();
        for svc_config in &config.services {
            let svc = Arc::new(Service::new(svc_config, shared));
            for addr in &svc_config.addrs {
                by_addr.insert(*addr, svc.clone());
            }
            services.push((svc, svc_config.listen));
        }
        (Self { by_addr, passthrough: Targets::new(MAX_PASSTHROUGH) }, services)
    }

    /// Serves an explicit listener for one service.
    pub async fn serve_explicit(svc: Arc<Service>, listener: TcpListener, shared: Arc<Shared>) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let opaque_port = shared.is_opaque_port(port);
        let s = shared.clone();
        conn::accept_loop(listener, Direction::Outbound, shared, move |stream, permit| {
            let logical = svc.logical.clone();
            // Read per connection: discovery may change it.
            let hint = if opaque_port { Protocol::Opaque } else { logical.protocol() };
            let shared = s.clone();
            async move {
                conn::proxy_connection(&shared, stream, logical, hint).await;
                drop(permit);
            }
        })
        .await
    }

    /// Serves the transparent listener.
    pub async fn serve_transparent(self: Arc<Self>, listener: TcpListener, shared: Arc<Shared>) {
        let s = shared.clone();
        conn::accept_loop(listener, Direction::Outbound, shared, move |stream, permit| {
            let outbound = self.clone();
            let shared = s.clone();
            async move {
                outbound.handle_transparent(stream, &shared).await;
                drop(permit);
            }
        })
        .await
    }

    async fn handle_transparent(&self, stream: TcpStream, shared: &Shared) {
        let Ok(local) = stream.local_addr() else { return };
        let dst = match tarmac_transport::original_dst(&stream) {
            Ok(dst) => dst,
            Err(e) => {
                shared.metrics.refused(Direction::Outbound, "no_target");
                tracing::warn!(%local, error = %e, "outbound connection has no original destination; was it redirected by iptables?");
                return;
            }
        };
        if shared.is_own(dst, local) {
            shared.metrics.refused(Direction::Outbound, "loop");
            tracing::warn!(%dst, "refusing a connection to the proxy's own listener: it would loop");
            return;
        }
        let (logical, protocol) = match self.by_addr.get(&dst) {
            Some(svc) => (svc.logical.clone(), svc.logical.protocol()),
            None => {
                let make = |name| {
                    let meta = shared.meta(Direction::Outbound, name, Peer::Unlabelled);
                    let backend = shared.fixed_backend(dst, &meta);
                    Logical::new(meta, backend, Protocol::Detect)
                };
                (self.passthrough.get(dst, || dst.to_string(), make), Protocol::Detect)
            }
        };
        let hint = if shared.is_opaque_port(dst.port()) { Protocol::Opaque } else { protocol };
        conn::proxy_connection(shared, stream, logical, hint).await
    }
}
