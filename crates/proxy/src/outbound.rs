//! The outbound side: the app's connections to other services.
//!
//! Explicit mode gives each service a local listener (`books -> 127.0.0.1:7001`).
//! Transparent mode has one listener for connections redirected by iptables; the original
//! destination selects the service by its address, and destinations that are no known
//! service are proxied to where they were going (still measured, not meshed).

use crate::config::{OutboundConfig, Protocol, ServiceConfig};
use crate::conn::{self, FixedForwards, Shared};
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::http::forward::{Balancer, Destination, Forward};
use crate::metrics::{Direction, Peer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// One service the app calls.
#[derive(Debug)]
pub struct Service {
    pub forward: Arc<Forward>,
    pub protocol: Protocol,
}

impl Service {
    pub fn new(config: &ServiceConfig, shared: &Shared) -> Self {
        let name = Arc::new(config.name.clone());
        let metrics = shared.target_metrics(Direction::Outbound, name.clone(), Peer::Unlabelled);
        let endpoints = config
            .endpoints
            .iter()
            .map(|ep| {
                let spec = EndpointSpec {
                    addr: ep.addr,
                    meshed: ep.meshed,
                    identity: ep.identity.as_deref().map(Into::into),
                };
                Arc::new(Endpoint::new(spec, shared.connect.clone(), (*metrics).clone()))
            })
            .collect();
        let forward = Arc::new(Forward {
            direction: Direction::Outbound,
            name,
            metrics,
            destination: Destination::Balanced(Balancer::new(endpoints)),
            tap: shared.tap.clone(),
            peer: Peer::Unlabelled,
        });
        Self { forward, protocol: config.protocol }
    }
}

/// A service and the explicit listener it has, if any.
pub type ExplicitService = (Arc<Service>, Option<SocketAddr>);

/// Destinations outside the mesh with their own pools and metrics (see [`FixedForwards`]).
const MAX_PASSTHROUGH: usize = 1024;

#[derive(Debug)]
pub struct Outbound {
    by_addr: HashMap<SocketAddr, Arc<Service>>,
    passthrough: FixedForwards,
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
        (Self { by_addr, passthrough: FixedForwards::new(Direction::Outbound, MAX_PASSTHROUGH) }, services)
    }

    /// Serves an explicit listener for one service.
    pub async fn serve_explicit(svc: Arc<Service>, listener: TcpListener, shared: Arc<Shared>) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let hint = if shared.is_opaque_port(port) { Protocol::Opaque } else { svc.protocol };
        let s = shared.clone();
        conn::accept_loop(listener, Direction::Outbound, shared, move |stream, permit| {
            let fwd = svc.forward.clone();
            let shared = s.clone();
            async move {
                conn::proxy_connection(&shared, stream, fwd, hint).await;
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
        let (fwd, protocol) = match self.by_addr.get(&dst) {
            Some(svc) => (svc.forward.clone(), svc.protocol),
            None => (self.passthrough.get(dst, Peer::Unlabelled, shared), Protocol::Detect),
        };
        let hint = if shared.is_opaque_port(dst.port()) { Protocol::Opaque } else { protocol };
        conn::proxy_connection(shared, stream, fwd, hint).await
    }
}
