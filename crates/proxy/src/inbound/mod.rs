//! The inbound side: connections from other proxies and from non-mesh clients, forwarded
//! to the local app.
//!
//! In explicit mode the app's address is configured. In transparent mode connections
//! arrive redirected by iptables and go to their original destination (the app's port in
//! this network namespace); one sent straight to the inbound port, which was not
//! redirected, goes to the configured app or is refused.
//!
//! With an identity, mesh mTLS is terminated here and the client's SPIFFE ID labels its
//! requests; plaintext (and the app's own TLS) is accepted or refused by `inbound.mtls`.
//!
//! - [`http`]: the inbound request stages, from the client's identity to the app.
//! - [`policy`]: the workload's authorization and rate limits, per request and per
//!   connection.

pub mod http;
pub mod policy;

use crate::config::{InboundConfig, MtlsMode, Protocol};
use crate::conn::{self, Shared, Targets};
use crate::detect::Detected;
use crate::identity::accept::{self, Accepted};
use crate::metrics::{Direction, Peer};
use std::net::SocketAddr;
use std::sync::Arc;
use tarmac_transport::PrefixedIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Inbound {
    config: InboundConfig,
    /// Per app address (one in explicit mode, one per original destination port in
    /// transparent mode) and kind of client.
    apps: Targets<(SocketAddr, Peer), http::App>,
    /// The workload's inbound policy; [`policy::Policies::off`] unless followed.
    pub policies: Arc<policy::Policies>,
}

/// Distinct original destinations remembered in transparent mode; a workload listens on
/// few ports, so this bounds memory against port scans without affecting real traffic.
const MAX_TARGETS: usize = 256;

impl Inbound {
    pub fn new(config: InboundConfig) -> Self {
        Self { config, apps: Targets::new(MAX_TARGETS), policies: Arc::new(policy::Policies::off()) }
    }

    fn app(&self, addr: SocketAddr, peer: Peer, shared: &Shared) -> Arc<http::App> {
        let key = (addr, peer.clone());
        self.apps.get(
            key,
            || addr.to_string(),
            |name| {
                http::App::new(
                    addr,
                    shared.meta(Direction::Inbound, name, peer),
                    shared,
                    self.policies.clone(),
                )
            },
        )
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

    async fn handle(&self, mut stream: TcpStream, shared: &Shared) {
        let Some(app) = self.app_addr(&stream, shared) else {
            return;
        };
        let source = stream.peer_addr().ok();
        let opaque = shared.is_opaque_port(app.port());
        let tls = shared.connect.tls.as_ref();
        // With an identity, even opaque ports are sniffed: mesh clients speak TLS first.
        let hint = if opaque && tls.is_none() { Protocol::Opaque } else { Protocol::Detect };
        let target = app.to_string();
        let Some((mut protocol, mut prefix)) =
            conn::detect_protocol(shared, &mut stream, Direction::Inbound, &target, hint, opaque).await
        else {
            return;
        };
        if let (Detected::Tls, Some(tls)) = (protocol, tls) {
            let deadline = Instant::now() + shared.limits.detect_timeout;
            match accept::accept(tls, prefix, stream, deadline, &shared.metrics).await {
                Accepted::Mesh { stream, protocol: Detected::Opaque, client_id } if !opaque => {
                    return self.serve_mesh_tcp(stream, app, client_id, source, shared).await;
                }
                Accepted::Mesh { stream, protocol, client_id } => {
                    let app = self.app(app, Peer::Authenticated(client_id), shared);
                    return conn::serve_detected(shared, stream, protocol, app, source).await;
                }
                Accepted::Other { prefix: bytes, stream: plain } => (prefix, stream) = (bytes, plain),
                Accepted::Refused => return,
            }
        }
        if tls.is_some_and(|tls| tls.mode == MtlsMode::Strict) {
            shared.metrics.refused(Direction::Inbound, "not_mtls");
            tracing::warn!(
                ?source,
                app = %app,
                "connection refused: `inbound.mtls: strict` accepts only mTLS from proxies of this mesh; \
                 send this client through its own sidecar, or make the workload permissive"
            );
            return;
        }
        if opaque {
            protocol = Detected::Opaque;
        }
        let app = self.app(app, Peer::Plaintext, shared);
        conn::serve_detected(shared, PrefixedIo::new(prefix, stream), protocol, app, source).await
    }

    /// Opaque TCP from a peer proxy (`tarmac.tcp`) to a port this workload did not declare
    /// opaque: the bytes inside get the port's own detection, as a plaintext client's would.
    /// The peer proxy sends HTTP as `tarmac.tcp` only when its side declares the port
    /// opaque; the app behind it could then write any `tarmac-client-id`, so HTTP found
    /// here is served as HTTP, with the identity the connection proved. The app's own TLS
    /// and other protocols pass as bytes; a silent client is closed (declare
    /// server-speaks-first ports opaque on both sides).
    async fn serve_mesh_tcp(
        &self,
        mut stream: Box<accept::MeshStream>,
        app: SocketAddr,
        client_id: Arc<str>,
        source: Option<SocketAddr>,
        shared: &Shared,
    ) {
        let target = app.to_string();
        let Some((protocol, prefix)) =
            conn::detect_protocol(shared, &mut stream, Direction::Inbound, &target, Protocol::Detect, false)
                .await
        else {
            return;
        };
        let app = self.app(app, Peer::Authenticated(client_id), shared);
        conn::serve_detected(shared, PrefixedIo::new(prefix, stream), protocol, app, source).await
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
