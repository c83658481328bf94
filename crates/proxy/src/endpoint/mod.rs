//! An endpoint: one address the proxy sends requests to, with its load statistics and its
//! connections.
//!
//! HTTP/2 endpoints (other Tarmac proxies, and apps that speak h2c) get one multiplexed
//! connection, shared by every request and re-established when it closes. HTTP/1 endpoints
//! get a pool of keep-alive connections: a connection returns to the pool when its
//! response body has been read to the end, and is taken again only once hyper reports it
//! ready for the next request.
//!
//! - [`connect`]: how connections are made ([`Connect`]: TCP here, scripted peers in tests).
//! - [`send`]: one request (or tunnel) to this endpoint, in the protocol the hop speaks.
//! - [`http2`]: the HTTP/2 client, on `h2` directly.

pub mod connect;
pub mod http2;
#[cfg(test)]
pub mod scripted;
pub mod send;

pub use connect::{Connect, TcpConnect, Transport};

use crate::balance::PeakEwma;
use crate::http::Body;
use crate::identity::{self, MeshTls};
use crate::metrics::{Direction, Peer, TargetMetrics};
use crate::resilience::breaker::Accrual;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Idle HTTP/1 connections kept per endpoint; more are closed when they finish.
const MAX_IDLE_H1: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: crate::http::HttpError },
    #[error("mTLS with {addr} failed: {source}; {advice}")]
    Tls { addr: SocketAddr, source: std::io::Error, advice: &'static str },
    #[error(
        "{addr} is a meshed endpoint with no identity to verify: refusing to reach it in plaintext \
         (discovery gives every meshed endpoint one; a static endpoint needs `identity`)"
    )]
    NoPeerIdentity { addr: SocketAddr },
}

/// Settings shared by all endpoints of a proxy.
#[derive(Clone, Debug)]
pub struct ConnectSettings {
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
    /// The proxy's mesh identity: meshed endpoints with a known identity get mTLS.
    pub tls: Option<Arc<MeshTls>>,
    /// Opens transport connections: TCP, or scripted peers in tests.
    pub connector: Arc<dyn Connect>,
    pub tunnels: Tunnels,
}

impl ConnectSettings {
    pub fn new(connect_timeout: Duration, max_header_bytes: usize) -> Self {
        let tunnels = Tunnels::new(10_000, TaskTracker::new(), Duration::from_secs(3600));
        Self { connect_timeout, max_header_bytes, tls: None, connector: Arc::new(TcpConnect), tunnels }
    }
}

/// Tunnels (WebSocket upgrades, CONNECT) outlive the HTTP connection they began on, and
/// so its place under the connection cap: they get a cap of their own, the drain waits
/// for them, and one quiet for the idle timeout is closed, as opaque TCP is.
#[derive(Clone, Debug)]
pub struct Tunnels {
    pub open: Arc<Semaphore>,
    pub max: usize,
    pub tasks: TaskTracker,
    pub idle_timeout: Duration,
}

impl Tunnels {
    pub fn new(max: usize, tasks: TaskTracker, idle_timeout: Duration) -> Self {
        Self { open: Arc::new(Semaphore::new(max)), max, tasks, idle_timeout }
    }
}

/// Where an endpoint is and what it is, as discovery or the config file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    /// Another Tarmac proxy's inbound port: HTTP goes over HTTP/2 whatever the app spoke.
    pub meshed: bool,
    /// The SPIFFE ID a meshed endpoint must prove.
    pub identity: Option<Arc<str>>,
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Another Tarmac proxy's inbound port: HTTP goes over HTTP/2 whatever the app spoke.
    pub meshed: bool,
    pub identity: Option<Arc<str>>,
    /// mTLS to the endpoint, verifying this identity.
    tls: Option<(Arc<MeshTls>, Arc<str>)>,
    pub ewma: PeakEwma,
    /// Failures in a row, and the ejection they led to (see [`crate::resilience::breaker`]).
    pub accrual: Accrual,
    settings: ConnectSettings,
    metrics: TargetMetrics,
    /// For mTLS endpoints: response metrics labelled with the identity the endpoint proved
    /// (`tls="true", server_id=...`).
    pub peer_metrics: Option<Arc<TargetMetrics>>,
    h2: Mutex<Option<http2::Held>>,
    h2_connecting: tokio::sync::Mutex<()>,
    h1_idle: Arc<Mutex<Vec<http1::SendRequest<Body>>>>,
}

impl Endpoint {
    /// Whether this endpoint is what `spec` describes (and so keeps its connections).
    pub fn is(&self, spec: &EndpointSpec) -> bool {
        self.addr == spec.addr && self.meshed == spec.meshed && self.identity == spec.identity
    }

    pub fn new(spec: EndpointSpec, settings: ConnectSettings, metrics: TargetMetrics) -> Self {
        let tls = match (&settings.tls, &spec.identity) {
            (Some(tls), Some(id)) if spec.meshed => Some((tls.clone(), id.clone())),
            _ => None,
        };
        let peer_metrics =
            tls.as_ref().map(|(_, id)| Arc::new(metrics.for_peer(Peer::Authenticated(id.clone()))));
        Self {
            peer_metrics,
            addr: spec.addr,
            meshed: spec.meshed,
            identity: spec.identity,
            tls,
            ewma: PeakEwma::default(),
            accrual: Accrual::default(),
            settings,
            metrics,
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
            h1_idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Opens a transport connection within the connect timeout.
    pub async fn connect_transport(&self) -> Result<Transport, ConnectError> {
        let addr = self.addr;
        let timeout = self.settings.connect_timeout;
        let stream = match tokio::time::timeout(timeout, self.settings.connector.connect(addr)).await {
            Err(_) => Err(ConnectError::Timeout { addr, timeout }),
            Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
            Ok(Ok(s)) => Ok(s),
        };
        if stream.is_err() {
            self.ewma.mark_failed();
        }
        stream
    }

    /// A connection that carries `alpn` to an endpoint: mTLS to a meshed endpoint when this
    /// proxy has an identity (refused if the endpoint has none), plain TCP otherwise.
    pub async fn connect(&self, alpn: &'static [u8]) -> Result<EndpointIo, ConnectError> {
        // A proxy with an identity never downgrades a peer proxy to plaintext: whoever
        // could strip the endpoint's identity could then read and change its traffic.
        if self.meshed && self.tls.is_none() && self.settings.tls.is_some() {
            self.ewma.mark_failed();
            return Err(ConnectError::NoPeerIdentity { addr: self.addr });
        }
        let tcp = self.connect_transport().await?;
        let Some((tls, identity)) = &self.tls else { return Ok(EndpointIo::Plain(tcp)) };
        let connector = tokio_rustls::TlsConnector::from(tls.client_config(identity, alpn));
        // Peers are verified by SPIFFE ID; the name is not sent (no SNI) nor checked.
        let name = rustls::pki_types::ServerName::try_from("tarmac.mesh").expect("a valid DNS name");
        let addr = self.addr;
        let handshake =
            tokio::time::timeout(self.settings.connect_timeout, connector.connect(name, tcp)).await;
        let result = match handshake {
            Ok(Ok(stream)) => Ok(EndpointIo::Tls(Box::new(stream))),
            Ok(Err(source)) => Err(source),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
        };
        result
            .map_err(|source| {
                let result = identity::handshake_failure(&source);
                self.metrics.tls_handshake(result, "");
                self.ewma.mark_failed();
                ConnectError::Tls {
                    addr,
                    source,
                    advice: identity::handshake_advice(result, Direction::Outbound),
                }
            })
            .inspect(|io| {
                if let EndpointIo::Tls(tls) = io {
                    self.metrics.tls_handshake("ok", identity::group_name(tls.get_ref().1));
                }
            })
    }

    /// A sender on the endpoint's shared HTTP/2 connection, connecting if there is none.
    pub async fn h2_sender(&self) -> Result<http2::Client, ConnectError> {
        if let Some(sender) = self.current_h2() {
            return Ok(sender);
        }
        // Connecting is rare and its state (TCP, TLS and HTTP/2 handshakes) large: boxed,
        // it stays out of every request's future.
        Box::pin(self.connect_h2()).await
    }

    async fn connect_h2(&self) -> Result<http2::Client, ConnectError> {
        // One task connects; the others wait for it and reuse its connection.
        let _connecting = self.h2_connecting.lock().await;
        if let Some(sender) = self.current_h2() {
            return Ok(sender);
        }
        let io = self.connect(identity::ALPN_H2).await?;
        let (held, conn) = http2::handshake(
            io,
            crate::http::STREAM_WINDOW,
            crate::http::CONNECTION_WINDOW,
            self.settings.max_header_bytes as u32,
        )
        .await
        .map_err(|source| ConnectError::Handshake { addr: self.addr, source: source.into() })?;
        self.metrics.http_connections.inc();
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection closed");
            }
        });
        let client = held.client.clone();
        *lock(&self.h2) = Some(held);
        Ok(client)
    }

    fn current_h2(&self) -> Option<http2::Client> {
        let mut slot = lock(&self.h2);
        match &*slot {
            Some(s) if !s.client.is_closed() => Some(s.client.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// An HTTP/1 connection ready for one request: a pooled one, or a new one.
    pub async fn h1_sender(&self) -> Result<http1::SendRequest<Body>, ConnectError> {
        loop {
            let pooled = lock(&self.h1_idle).pop();
            let Some(mut sender) = pooled else { break };
            if sender.is_closed() {
                continue;
            }
            // Returned at end of body; the connection task flips to ready right after.
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        // Boxed for the same reason as `connect_h2`.
        Box::pin(self.h1_connect(false)).await
    }

    /// A new HTTP/1 connection; `upgrades` keeps the socket usable after a 101 or CONNECT.
    pub async fn h1_connect(&self, upgrades: bool) -> Result<http1::SendRequest<Body>, ConnectError> {
        let io = TokioIo::new(self.connect(identity::ALPN_HTTP1).await?);
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.settings.max_header_bytes.max(8192))
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr: self.addr, source: source.into() })?;
        self.metrics.http_connections.inc();
        let addr = self.addr;
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "HTTP/1 connection closed");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "HTTP/1 connection closed");
                }
            });
        }
        Ok(sender)
    }

    /// Wraps a response body so that its connection returns to the pool at end of stream.
    pub fn pooled_body(&self, body: Incoming, sender: http1::SendRequest<Body>) -> PooledBody {
        let mut ret = Some((sender, Arc::downgrade(&self.h1_idle)));
        // An empty body may never be polled: the connection is free already.
        if body.is_end_stream() {
            PooledBody::release(&mut ret);
        }
        PooledBody { body, ret }
    }
}

/// A connection to an endpoint: plain, or mTLS to another proxy.
#[derive(Debug)]
pub enum EndpointIo {
    Plain(Transport),
    Tls(Box<tokio_rustls::client::TlsStream<Transport>>),
}

impl tokio::io::AsyncRead for EndpointIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EndpointIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            EndpointIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for EndpointIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            EndpointIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            EndpointIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            EndpointIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            EndpointIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            EndpointIo::Plain(s) => s.is_write_vectored(),
            EndpointIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EndpointIo::Plain(s) => Pin::new(s).poll_flush(cx),
            EndpointIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EndpointIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            EndpointIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type IdleReturn = (http1::SendRequest<Body>, Weak<Mutex<Vec<http1::SendRequest<Body>>>>);

pin_project! {
    /// An HTTP/1 response body that hands its connection back to the pool once the peer has
    /// sent all of it. Dropped early, the connection is dropped too: hyper cannot reuse a
    /// connection whose response was not read to the end.
    pub struct PooledBody {
        #[pin]
        body: Incoming,
        ret: Option<IdleReturn>,
    }
}

impl PooledBody {
    fn release(ret: &mut Option<IdleReturn>) {
        if let Some((sender, pool)) = ret.take()
            && let Some(pool) = pool.upgrade()
        {
            let mut idle = lock(&pool);
            if idle.len() < MAX_IDLE_H1 {
                idle.push(sender);
            }
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(None) => Self::release(this.ret),
            // Servers stop polling once `is_end_stream` is true (a body with a known
            // length ends with its last frame, not with a `None`): release right there.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => Self::release(this.ret),
            Poll::Ready(Some(Err(_))) => {
                this.ret.take();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn a_proxy_with_an_identity_never_reaches_a_meshed_endpoint_without_one_in_plaintext() {
        let (root, key) = tarmac_identity::ca::generate_root("cluster.local").unwrap();
        let ca = tarmac_identity::ca::Ca::from_root(&root, &key.serialize_pem(), "cluster.local").unwrap();
        let tls = MeshTls::new(ca.anchors_pem(), "anchors", Arc::default(), Default::default()).unwrap();
        // A peer that would take plaintext.
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut settings = ConnectSettings::new(Duration::from_secs(1), 8192);
        settings.tls = Some(Arc::new(tls));
        let metrics =
            Arc::new(Metrics::new()).target(Direction::Outbound, Arc::new("peer".into()), Peer::Unlabelled);
        let spec = EndpointSpec { addr: peer.local_addr().unwrap(), meshed: true, identity: None };
        let endpoint = Endpoint::new(spec, settings, metrics);
        let refused = endpoint.connect(identity::ALPN_H2).await.err();
        assert!(matches!(refused, Some(ConnectError::NoPeerIdentity { .. })), "{refused:?}");
        assert!(peer.accept().is_err(), "not even a TCP connection was made");
    }
}
