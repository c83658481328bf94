//! The inbound side: connections from other proxies and from non-mesh clients, forwarded
//! to the local app.
//!
//! In explicit mode the app's address is configured. In transparent mode connections
//! arrive redirected by iptables and go to their original destination (the app's port in
//! this network namespace); one sent straight to the inbound port, which was not
//! redirected, goes to the configured app or is refused.

use crate::config::{InboundConfig, Protocol};
use crate::conn::{self, FixedForwards, Shared};
use crate::metrics::Direction;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
pub struct Inbound {
    config: InboundConfig,
    /// Per app address (one in explicit mode, one per original destination port in
    /// transparent mode).
    forwards: FixedForwards,
}

/// Distinct original destinations remembered in transparent mode; a workload listens on
/// few ports, so this bounds memory against port scans without affecting real traffic.
const MAX_TARGETS: usize = 256;

impl Inbound {
    pub fn new(config: InboundConfig) -> Self {
        Self { config, forwards: FixedForwards::new(Direction::Inbound, MAX_TARGETS) }
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, shared: Arc<Shared>) {
        let s = shared.clone();
        conn::accept_loop(listener, Direction::Inbound, shared, move |stream, permit| {
            let inbound = self.clone();
            let shared = s.clone();
            async move {
                inbound.handle(stream, &shared).await;
                drop(permit);
            }
        })
        .await
    }

    async fn handle(&self, stream: TcpStream, shared: &Shared) {
        let Some(app) = self.app_addr(&stream, shared) else {
            return;
        };
        let fwd = self.forwards.get(app, shared);
        let hint = if shared.is_opaque_port(app.port()) { Protocol::Opaque } else { Protocol::Detect };
        conn::proxy_connection(shared, stream, fwd, hint).await
    }

    fn app_addr(&self, stream: &TcpStream, shared: &Shared) -> Option<SocketAddr> {
        if !self.config.transparent {
            return self.config.app;
        }
        let local = stream.local_addr().ok()?;
        match tarmac_transport::original_dst(stream) {
            Ok(dst) if !shared.is_own(dst, local) => Some(dst),
            _ => match self.config.app {
                Some(app) => Some(app),
                None => {
                    shared.metrics.refused(Direction::Inbound, "no_target");
                    tracing::warn!(
                        %local,
                        "inbound connection was not redirected by iptables and no `inbound.app` is configured; refusing it"
                    );
                    None
                }
            },
        }
    }
}
