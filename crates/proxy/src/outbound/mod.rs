//! The outbound side: the app's connections to other services.
//!
//! Explicit mode gives each service a local listener (`books -> 127.0.0.1:7001`).
//! Transparent mode has one listener for connections redirected by iptables; the original
//! destination selects the service by its address, and destinations that are no known
//! service are proxied to where they were going (still measured, not meshed).
//!
//! The app's own TLS is never terminated, but where the address does not name a service
//! (an explicit listener, or a destination that is no known service) the name its
//! ClientHello asks for (SNI) may: TLS to `books.shop.svc.cluster.local` goes to the
//! Service `books` of namespace `shop` when this proxy follows it, as opaque TCP to its
//! endpoints (mTLS between the sidecars), counted under that service.

//!
//! - [`logical`]: a service the app calls: its routes, its retry budget, its backend.
//! - [`route`]: the routed request path, stage by stage.

pub mod logical;
pub mod route;

use crate::backend::Backend;
use crate::config::{OutboundConfig, Protocol, ServiceConfig};
use crate::conn::{self, Shared, Targets};
use crate::detect::Detected;
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::http::handle::Handle;
use crate::identity::accept::read_client_hello;
use crate::metrics::{Direction, Peer};
use logical::Logical;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tarmac_transport::PrefixedIo;
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

/// A service a TLS client's server name may mean, and the Service port it stands for.
type Named = (Option<u16>, Arc<Service>);

#[derive(Debug)]
pub struct Outbound {
    by_addr: HashMap<SocketAddr, Arc<Service>>,
    /// The services by the names TLS clients may ask for.
    by_name: HashMap<String, Vec<Named>>,
    passthrough: Targets<SocketAddr, Logical>,
}

impl Outbound {
    /// Builds the services of a proxy in `namespace`; returns them with their explicit
    /// listen addresses.
    pub fn new(config: &OutboundConfig, shared: &Shared, namespace: &str) -> (Self, Vec<ExplicitService>) {
        let mut by_addr = HashMap::new();
        let mut by_name: HashMap<String, Vec<_>> = HashMap::new();
        let mut services = Vec::new();
        for svc_config in &config.services {
            let svc = Arc::new(Service::new(svc_config, shared));
            for addr in &svc_config.addrs {
                by_addr.insert(*addr, svc.clone());
            }
            let port =
                svc_config.discover.as_ref().map(|d| d.port).or(svc_config.addrs.first().map(|a| a.port()));
            for name in server_names(svc_config, namespace) {
                by_name.entry(name).or_default().push((port, svc.clone()));
            }
            services.push((svc, svc_config.listen));
        }
        (Self { by_addr, by_name, passthrough: Targets::new(MAX_PASSTHROUGH) }, services)
    }

    /// Serves an explicit listener for one service.
    pub async fn serve_explicit(
        self: Arc<Self>,
        svc: Arc<Service>,
        listener: TcpListener,
        shared: Arc<Shared>,
    ) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let opaque_port = shared.is_opaque_port(port);
        let s = shared.clone();
        conn::accept_loop(listener, Direction::Outbound, shared, move |stream, permit| {
            let outbound = self.clone();
            let logical = svc.logical.clone();
            // Read per connection: discovery may change it.
            let hint = if opaque_port { Protocol::Opaque } else { logical.protocol() };
            let shared = s.clone();
            async move {
                // The listener's port says nothing of the Service port the app meant.
                outbound.serve(&shared, stream, logical, hint, ByName::On { port: None }).await;
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
        let (logical, protocol, by_name) = match self.by_addr.get(&dst) {
            Some(svc) => (svc.logical.clone(), svc.logical.protocol(), ByName::Off),
            None => {
                let make = |name| {
                    let meta = shared.meta(Direction::Outbound, name, Peer::Unlabelled);
                    let backend = shared.fixed_backend(dst, &meta);
                    Logical::new(meta, backend, Protocol::Detect)
                };
                let logical = self.passthrough.get(dst, || dst.to_string(), make);
                (logical, Protocol::Detect, ByName::On { port: Some(dst.port()) })
            }
        };
        let hint = if shared.is_opaque_port(dst.port()) { Protocol::Opaque } else { protocol };
        self.serve(shared, stream, logical, hint, by_name).await
    }

    /// Serves a connection its address sent to `logical`, or, as `by_name` allows, to the
    /// service its TLS names.
    async fn serve(
        &self,
        shared: &Shared,
        mut stream: TcpStream,
        mut logical: Arc<Logical>,
        hint: Protocol,
        by_name: ByName,
    ) {
        let source = stream.peer_addr().ok();
        let target = logical.meta().name.clone();
        let Some((protocol, mut prefix)) =
            conn::detect_protocol(shared, &mut stream, Direction::Outbound, &target, hint, false).await
        else {
            return;
        };
        if let (Detected::Tls, ByName::On { port }) = (protocol, by_name)
            && !self.by_name.is_empty()
        {
            // Detection decided on the record's first bytes: the rest of the hello may
            // still be on its way, within the same bound.
            let deadline = tokio::time::Instant::now() + shared.limits.detect_timeout;
            let hello = read_client_hello(&mut prefix, &mut stream, deadline).await;
            if let Some(svc) = hello.and_then(|h| self.by_server_name(h.server_name.as_deref()?, port)) {
                tracing::debug!(from = %target, to = %svc.logical.meta().name, "TLS sent to the service its server name names");
                logical = svc.logical.clone();
            }
        }
        conn::serve_detected(shared, PrefixedIo::new(prefix, stream), protocol, logical, source).await
    }

    /// The service a TLS client's server name means: the only one by that name, or the
    /// one of the Service port the client connected to.
    fn by_server_name(&self, name: &str, port: Option<u16>) -> Option<&Arc<Service>> {
        let candidates = self.by_name.get(&name.trim_end_matches('.').to_ascii_lowercase())?;
        match candidates.as_slice() {
            [(_, only)] => Some(only),
            several => several.iter().find(|(p, _)| port.is_some() && *p == port).map(|(_, svc)| svc),
        }
    }
}

/// Whether a connection's TLS may go to the service its ClientHello names (SNI).
#[derive(Clone, Copy, Debug)]
enum ByName {
    /// No: its address named a service, and that is how the app called it.
    Off,
    /// Yes; a name several services share means the one of this Service port.
    On { port: Option<u16> },
}

/// The names a TLS client may ask for (SNI) to mean a service: its configured name, and for
/// a discovered Service those a cluster's DNS gives it (`books.shop`, `books.shop.svc`,
/// `books.shop.svc.cluster.local`, and `books` alone from its own namespace), as the hosts
/// files of `tarmac up --transparent` do.
fn server_names(config: &ServiceConfig, namespace: &str) -> Vec<String> {
    let mut names = vec![config.name.clone()];
    if let Some(discover) = &config.discover {
        let (svc, ns) = (discover.service.as_deref().unwrap_or(&config.name), &discover.namespace);
        names.extend([
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]);
        if ns == namespace {
            names.push(svc.to_string());
        }
    }
    for name in &mut names {
        name.make_ascii_lowercase();
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discovered_service_is_known_by_its_cluster_names() {
        let config: OutboundConfig = serde_saphyr::from_str(
            "services:\n- {name: Books, listen: \"127.0.0.1:0\", discover: {namespace: shop, port: 443}}\n\
             - {name: authors, addrs: [\"10.96.0.2:80\"]}\n\
             - {name: authors-tls, addrs: [\"10.96.0.2:443\"], discover: {service: authors, namespace: shop, port: 443}}\n",
        )
        .unwrap();
        let shared = Shared::new(&serde_saphyr::from_str("{}").unwrap(), Default::default());
        let (outbound, _) = Outbound::new(&config, &shared, "shop");
        let named = |name: &str, port: Option<u16>| {
            outbound.by_server_name(name, port).map(|svc| svc.logical.meta().name.to_string())
        };
        for name in [
            "books.shop.svc.cluster.local",
            "BOOKS.shop.svc.cluster.local.",
            "books.shop.svc",
            "books.shop",
            "books",
        ] {
            assert_eq!(named(name, None).as_deref(), Some("Books"), "{name}");
        }
        assert_eq!(named("books.default.svc.cluster.local", None), None, "another namespace's books");
        assert_eq!(named("books.example", None), None);
        // `authors` names two services: the port the client connected to decides.
        assert_eq!(named("authors", Some(443)).as_deref(), Some("authors-tls"));
        assert_eq!(named("authors", Some(80)).as_deref(), Some("authors"));
        assert_eq!(named("authors", None), None, "ambiguous");
        assert_eq!(named("authors.shop.svc.cluster.local", None).as_deref(), Some("authors-tls"));
    }
}
