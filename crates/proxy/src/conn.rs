//! What every accepted connection goes through, inbound or outbound: the connection cap,
//! protocol detection, then HTTP serving or opaque TCP forwarding.

use crate::backend::Backend;
use crate::config::{Config, Limits, Protocol};
use crate::detect::{self, Detected};
use crate::endpoint::{ConnectSettings, Endpoint, EndpointSpec, Tunnels};
use crate::error::ProxyError;
use crate::http::connections::HttpConnections;
use crate::http::handle::{Handle, Meta};
use crate::identity;
use crate::metrics::{Direction, Metrics, Peer, TargetMetrics};
use crate::tap::Tap;
use crate::telemetry::Telemetry;
use crate::{http, tcp};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by all listeners of one proxy.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub opaque_ports: Vec<u16>,
    pub connect: ConnectSettings,
    /// Caps connections open at once: inbound and outbound apart, and inbound per client.
    pub caps: ConnectionCaps,
    /// Cancelled on SIGTERM: listeners stop accepting, connections finish and close.
    pub drain: CancellationToken,
    pub tasks: TaskTracker,
    /// The HTTP connections being served, for closing idle ones and draining.
    pub http_connections: Arc<HttpConnections>,
    /// Every address the proxy listens on, for the loop guard.
    pub own_addrs: Vec<SocketAddr>,
    pub tap: Arc<Tap>,
    /// Tracing and access logs, replaced whole when their settings change.
    pub telemetry: Arc<Telemetry>,
}

impl Shared {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let limits = &config.limits;
        let tasks = TaskTracker::new();
        let mut connect = ConnectSettings::new(limits.connect_timeout, limits.max_header_bytes);
        connect.tunnels = Tunnels::new(limits.max_connections, tasks.clone(), limits.tcp_idle_timeout);
        Self {
            metrics: metrics.clone(),
            limits: config.limits.clone(),
            opaque_ports: config.opaque_ports.clone(),
            connect,
            caps: ConnectionCaps::new(&config.limits),
            drain: CancellationToken::new(),
            tasks,
            http_connections: Arc::new(HttpConnections::new(config.limits.http_idle_timeout)),
            own_addrs: Vec::new(),
            tap: Arc::default(),
            telemetry: Arc::new(Telemetry::new(config.telemetry.clone().unwrap_or_default(), metrics)),
        }
    }

    /// True when `dst` is one of our own listeners: connecting there would loop.
    /// `local` is the accepted connection's local address; a connection that was not
    /// redirected reports it as its original destination.
    pub fn is_own(&self, dst: SocketAddr, local: SocketAddr) -> bool {
        dst == local
            || self.own_addrs.iter().any(|own| {
                own.port() == dst.port()
                    && (own.ip() == dst.ip() || (own.ip().is_unspecified() && dst.ip() == local.ip()))
            })
    }

    pub fn is_opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }

    pub fn target_metrics(&self, direction: Direction, name: Arc<String>, peer: Peer) -> Arc<TargetMetrics> {
        Arc::new(self.metrics.target(direction, name, peer))
    }

    /// What metrics, logs and tap call the requests of one target.
    pub fn meta(&self, direction: Direction, name: Arc<String>, peer: Peer) -> Meta {
        let metrics = self.target_metrics(direction, name.clone(), peer.clone());
        Meta { direction, name, metrics, tap: self.tap.clone(), peer, telemetry: self.telemetry.clone() }
    }

    /// A backend of one fixed address (the local app, or a destination outside the mesh),
    /// counted under `meta`.
    pub fn fixed_backend(&self, addr: SocketAddr, meta: &Meta) -> Backend {
        let spec = EndpointSpec { addr, meshed: false, identity: None };
        let endpoint = Endpoint::new(spec, self.connect.clone(), (*meta.metrics).clone());
        Backend::new(meta.name.clone(), vec![Arc::new(endpoint)])
    }
}

/// Targets remembered by key (a fixed address, and who connects), so that connections to
/// one address share its connection pool and metrics. Past `capacity` entries (a port
/// scan, an app calling thousands of hosts, many client identities), new ones get a
/// target of their own named `overflow`: traffic still flows, and metrics cardinality
/// stays bounded.
#[derive(Debug)]
pub struct Targets<K, V> {
    capacity: usize,
    map: Mutex<HashMap<K, Arc<V>>>,
}

impl<K: Hash + Eq, V> Targets<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, map: Mutex::new(HashMap::new()) }
    }

    /// The target of `key`, made by `make` from its name (`name()`, or `overflow`).
    pub fn get(&self, key: K, name: impl FnOnce() -> String, make: impl FnOnce(Arc<String>) -> V) -> Arc<V> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get(&key) {
            return v.clone();
        }
        if map.len() >= self.capacity {
            return Arc::new(make(Arc::new("overflow".to_string())));
        }
        let v = Arc::new(make(Arc::new(name())));
        map.insert(key, v.clone());
        v
    }
}

/// How many connections may be open at once: a cap for each side, so that a flood of
/// inbound connections cannot stop the app's own outbound calls (and the reverse), and on
/// the inbound side a cap per client address, so that one client cannot take them all.
#[derive(Debug)]
pub struct ConnectionCaps {
    inbound: Arc<Semaphore>,
    outbound: Arc<Semaphore>,
    per_client: usize,
    clients: Clients,
}

/// Inbound connections open per client address; only addresses with some are kept.
type Clients = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A connection's place under the caps, given back when it is dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    _side: OwnedSemaphorePermit,
    client: Option<(IpAddr, Clients)>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some((ip, clients)) = self.client.take() {
            let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = clients.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}

impl ConnectionCaps {
    pub fn new(limits: &Limits) -> Self {
        Self {
            inbound: Arc::new(Semaphore::new(limits.max_connections)),
            outbound: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: limits.max_connections_per_client,
            clients: Arc::default(),
        }
    }

    /// A place for a connection from `client` on `direction`'s side, or why there is none
    /// (the `reason` label of `tarmac_connections_refused_total`).
    pub fn admit(&self, direction: Direction, client: IpAddr) -> Result<ConnectionPermit, &'static str> {
        let side = match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        };
        let Ok(permit) = side.clone().try_acquire_owned() else { return Err("limit") };
        if direction == Direction::Outbound {
            return Ok(ConnectionPermit { _side: permit, client: None });
        }
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let open = clients.entry(client).or_default();
        if *open >= self.per_client {
            return Err("client_limit");
        }
        *open += 1;
        Ok(ConnectionPermit { _side: permit, client: Some((client, self.clients.clone())) })
    }
}

/// Accepts connections until drain, spawning `handle` for each within the connection caps.
pub async fn accept_loop<F, Fut>(listener: TcpListener, direction: Direction, shared: Arc<Shared>, handle: F)
where
    F: Fn(TcpStream, ConnectionPermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shared.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match shared.caps.admit(direction, peer.ip()) {
            Ok(permit) => permit,
            Err(reason) => {
                shared.metrics.refused(direction, reason);
                // One line per refusal would be a flood of its own: the counter tells how many.
                tracing::debug!(
                    ?direction,
                    %peer,
                    reason,
                    "connection refused: too many open connections \
                     (limits.max_connections, limits.max_connections_per_client)"
                );
                continue;
            }
        };
        tarmac_transport::set_stream_options(&stream);
        shared.tasks.spawn(handle(stream, permit));
    }
}

/// The connection's protocol (from `hint`, or read from its first bytes) and the bytes
/// read to learn it; `None` if the connection failed meanwhile, or its client stayed
/// silent on a port not declared opaque (`opaque_port`): forwarding that as opaque TCP
/// would let HTTP sent after the timeout pass unparsed, past routes, policy and the
/// identity header's rewrite.
pub async fn detect_protocol<I: AsyncRead + Unpin>(
    shared: &Shared,
    stream: &mut I,
    direction: Direction,
    target: &str,
    hint: Protocol,
    opaque_port: bool,
) -> Option<(Detected, Vec<u8>)> {
    let detected = match hint {
        Protocol::Opaque => (Detected::Opaque, Vec::new()),
        Protocol::Http1 => (Detected::Http1, Vec::new()),
        Protocol::Http2 => (Detected::Http2, Vec::new()),
        Protocol::Detect => {
            let started = std::time::Instant::now();
            let detection = detect::detect(stream, shared.limits.detect_timeout).await;
            let took = Some(started.elapsed());
            match detection {
                Err(e) => {
                    tracing::debug!(error = %e, "connection failed during protocol detection");
                    return None;
                }
                Ok(d) if d.timed_out => {
                    shared.metrics.detected(direction, "timeout", took);
                    if opaque_port {
                        return Some((Detected::Opaque, d.buffered.to_vec()));
                    }
                    tracing::warn!(
                        target,
                        timeout = ?shared.limits.detect_timeout,
                        "protocol detection timed out: the client sent nothing, closing the connection; \
                         if this is a server-speaks-first protocol, declare its port opaque \
                         (`opaque_ports`, or `appProtocol: tcp` on the Service port)"
                    );
                    return None;
                }
                Ok(d) => {
                    shared.metrics.detected(direction, d.protocol.as_str(), took);
                    return Some((d.protocol, d.buffered.to_vec()));
                }
            }
        }
    };
    shared.metrics.detected(direction, "skipped", None);
    Some(detected)
}

/// Serves a connection whose protocol is known: HTTP through `handler`, or opaque TCP to
/// its backend.
pub async fn serve_detected<I, H: Handle>(
    shared: &Shared,
    io: I,
    protocol: Detected,
    handler: Arc<H>,
    source: Option<SocketAddr>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        Detected::Http1 | Detected::Http2 => {
            http::server::serve(io, protocol, handler, source, &shared.limits, &shared.http_connections).await
        }
        Detected::Tls | Detected::Opaque => {
            if handler.admit_connection(source) {
                forward_tcp(shared, io, handler.meta(), handler.backend()).await
            }
        }
    }
}

async fn forward_tcp<I>(shared: &Shared, client: I, meta: &Meta, backend: &Backend)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connected = match backend.pick() {
        Ok(endpoint) => endpoint.connect(identity::ALPN_TCP).await.map_err(ProxyError::from),
        Err(e) => Err(e),
    };
    let upstream = match connected {
        Ok(s) => s,
        Err(e) => {
            meta.metrics.error(e.kind());
            tracing::info!(target = %meta.name, error = %e, "TCP connection failed");
            return;
        }
    };
    let metrics = meta.metrics.tcp_connection();
    tcp::proxy(client, upstream, metrics, shared.limits.tcp_idle_timeout).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_and_each_inbound_client_have_caps_of_their_own() {
        let limits = Limits { max_connections: 3, max_connections_per_client: 2, ..Limits::default() };
        let caps = ConnectionCaps::new(&limits);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = caps.admit(Direction::Inbound, a).unwrap();
        let _a2 = caps.admit(Direction::Inbound, a).unwrap();
        assert_eq!(caps.admit(Direction::Inbound, a).unwrap_err(), "client_limit");
        let _b1 = caps.admit(Direction::Inbound, b).unwrap();
        assert_eq!(caps.admit(Direction::Inbound, b).unwrap_err(), "limit", "the inbound side is full");
        let outbound: Vec<_> = (0..3).map(|_| caps.admit(Direction::Outbound, a).unwrap()).collect();
        assert_eq!(caps.admit(Direction::Outbound, b).unwrap_err(), "limit");
        drop(outbound);
        drop(a1);
        let _a3 = caps.admit(Direction::Inbound, a).expect("a closed connection gives its place back");
        assert_eq!(
            caps.clients.lock().unwrap().len(),
            2,
            "only clients with connections open are remembered"
        );
    }

    #[test]
    fn targets_are_shared_and_bounded() {
        let targets: Targets<SocketAddr, String> = Targets::new(2);
        let get = |port: u16| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            targets.get(addr, || addr.to_string(), |name| name.to_string())
        };
        let first = get(1001);
        assert!(Arc::ptr_eq(&first, &get(1001)));
        get(1002);
        assert_eq!(first.as_str(), "127.0.0.1:1001");
        assert_eq!(get(1003).as_str(), "overflow");
    }
}
