//! Scripted peers for unit tests: endpoints whose connections are in-memory pipes to a
//! real HTTP/1 server that answers as a script says (a status, after a delay, or no
//! connection at all), so that retries, breakers and limits are tested against backends
//! that fail and recover on cue, under paused time.

use super::connect::{Connect, Connecting, Transport};
use super::{ConnectSettings, Endpoint, EndpointSpec};
use crate::backend::Backend;
use crate::http::Body;
use crate::metrics::{self, Direction, Metrics, TargetMetrics};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a scripted peer does with its `n`th request (0-based, over all its connections).
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Status(u16),
    /// Answers after a delay.
    Slow(Duration, u16),
    /// A trailers-only gRPC response with this status (and `grpc-retry-pushback-ms`).
    Grpc(u32, Option<i64>),
    /// HTTP/2 peers only: the stream is reset with REFUSED_STREAM, unprocessed.
    Refuse,
    /// HTTP/2 peers only: 200 at once, its body (`late`) only after the delay.
    SlowBody(Duration),
    /// HTTP/2 peers only: 200 at once, before the request body is read, then that body
    /// sent back as it arrives (a gRPC stream's shape).
    Echo,
}

type Script = dyn Fn(u32) -> Answer + Send + Sync;

/// One scripted peer: its script, whether it takes connections, and what it saw.
pub struct Peer {
    script: Box<Script>,
    /// Connects refused before the next one is taken.
    refuse: AtomicU32,
    /// Speaks HTTP/2 (as another proxy does) rather than HTTP/1.
    h2: bool,
    /// HTTP/2: connections sent GOAWAY before any of their streams is read (a proxy that
    /// began to drain as they arrived).
    go_away: AtomicU32,
    requests: AtomicU32,
    /// The bodies of the requests it received, in order.
    pub bodies: Mutex<Vec<Bytes>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("requests", &self.requests()).finish()
    }
}

impl Peer {
    pub fn new(script: impl Fn(u32) -> Answer + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(script),
            refuse: AtomicU32::new(0),
            h2: false,
            go_away: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            bodies: Mutex::default(),
        })
    }

    /// A peer speaking HTTP/2, as the proxies between them do.
    pub fn h2(script: impl Fn(u32) -> Answer + Send + Sync + 'static) -> Arc<Self> {
        let mut peer = Self::new(script);
        Arc::get_mut(&mut peer).expect("just made").h2 = true;
        peer
    }

    /// Sends the next `n` HTTP/2 connections GOAWAY before reading any stream.
    pub fn go_away(&self, n: u32) {
        self.go_away.store(n, Ordering::Relaxed);
    }

    /// A peer answering every request with `status`.
    pub fn always(status: u16) -> Arc<Self> {
        Self::new(move |_| Answer::Status(status))
    }

    /// Refuses the next `n` connects.
    pub fn refuse(&self, n: u32) {
        self.refuse.store(n, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    async fn answer(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        self.bodies.lock().unwrap().push(body);
        let mut rsp = Response::new(Full::new(Bytes::new()));
        match (self.script)(n) {
            Answer::Status(status) => *rsp.status_mut() = StatusCode::from_u16(status).unwrap(),
            Answer::Slow(delay, status) => {
                tokio::time::sleep(delay).await;
                *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
            }
            Answer::Refuse | Answer::SlowBody(_) | Answer::Echo => {
                unreachable!("only HTTP/2 peers are scripted so")
            }
            Answer::Grpc(code, pushback) => {
                let h = rsp.headers_mut();
                h.insert("content-type", "application/grpc".parse().unwrap());
                h.insert("grpc-status", code.into());
                if let Some(ms) = pushback {
                    h.insert("grpc-retry-pushback-ms", ms.into());
                }
            }
        }
        Ok(rsp)
    }
}

/// A connector to scripted peers by address.
#[derive(Debug, Default)]
pub struct Scripted {
    peers: Mutex<Vec<(SocketAddr, Arc<Peer>)>>,
}

impl Connect for Scripted {
    fn connect(&self, addr: SocketAddr) -> Connecting {
        let peer = self.peers.lock().unwrap().iter().find(|(a, _)| *a == addr).map(|(_, p)| p.clone());
        Box::pin(async move {
            let peer = peer.ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionRefused))?;
            let refused =
                peer.refuse.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if refused.is_ok() {
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            }
            let (client, server) = tokio::io::duplex(64 * 1024);
            if peer.h2 {
                tokio::spawn(serve_h2(peer, server));
                return Ok(Transport::Memory(client));
            }
            tokio::spawn(async move {
                let svc = service_fn(move |req| peer.clone().answer(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(server), svc)
                    .await;
            });
            Ok(Transport::Memory(client))
        })
    }
}

/// Serves one HTTP/2 connection with the h2 crate, which can refuse streams and send
/// GOAWAY where hyper's server cannot be told to.
async fn serve_h2(peer: Arc<Peer>, io: tokio::io::DuplexStream) {
    let Ok(mut conn) = h2::server::handshake(io).await else { return };
    if peer.go_away.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
        // No stream read yet: GOAWAY says none was processed.
        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
        while conn.accept().await.is_some() {}
        return;
    }
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let n = peer.requests.fetch_add(1, Ordering::Relaxed);
        let answer = (peer.script)(n);
        if let Answer::Refuse = answer {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let peer = peer.clone();
        tokio::spawn(async move {
            let mut body = req.into_body();
            if let Answer::Echo = answer {
                let rsp = Response::builder().status(200).body(()).unwrap();
                let Ok(mut echo) = respond.send_response(rsp, false) else { return };
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    let _ = echo.send_data(chunk, false);
                }
                let _ = echo.send_data(Bytes::new(), true);
                return;
            }
            let mut bytes = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            peer.bodies.lock().unwrap().push(Bytes::from(bytes));
            let status = match answer {
                Answer::Status(status) => status,
                Answer::Slow(delay, status) => {
                    tokio::time::sleep(delay).await;
                    status
                }
                Answer::SlowBody(delay) => {
                    let rsp = Response::builder().status(200).body(()).unwrap();
                    if let Ok(mut body) = respond.send_response(rsp, false) {
                        tokio::time::sleep(delay).await;
                        let _ = body.send_data(Bytes::from_static(b"late"), true);
                    }
                    return;
                }
                Answer::Grpc(..) | Answer::Refuse | Answer::Echo => {
                    unimplemented!("not scripted for HTTP/2 peers")
                }
            };
            let rsp = Response::builder().status(status).body(()).unwrap();
            let _ = respond.send_response(rsp, true);
        });
    }
}

/// A backend of scripted peers, with the metrics its requests are counted in.
pub struct Harness {
    pub metrics: Arc<Metrics>,
    pub target: TargetMetrics,
    pub backend: Backend,
}

impl Harness {
    pub fn new(peers: &[Arc<Peer>]) -> Self {
        Self::with(peers, false)
    }

    /// Peers that are other proxies: requests travel over HTTP/2.
    pub fn meshed(peers: &[Arc<Peer>]) -> Self {
        Self::with(peers, true)
    }

    fn with(peers: &[Arc<Peer>], meshed: bool) -> Self {
        let scripted = Scripted::default();
        let metrics = Arc::new(Metrics::new());
        let target = metrics.target(Direction::Outbound, Arc::new("svc".into()), metrics::Peer::Unlabelled);
        let mut settings = ConnectSettings::new(Duration::from_secs(1), 64 * 1024);
        let mut endpoints = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let addr = // Never dialled: the scripted connector answers for it.
            SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16));
            scripted.peers.lock().unwrap().push((addr, peer.clone()));
            endpoints.push(addr);
        }
        settings.connector = Arc::new(scripted);
        let endpoints = endpoints
            .into_iter()
            .map(|addr| {
                let spec = EndpointSpec { addr, meshed, identity: None };
                Arc::new(Endpoint::new(spec, settings.clone(), target.clone()))
            })
            .collect();
        let backend = Backend::new(Arc::new("svc".into()), endpoints).counted_in(&target);
        Self { backend, metrics, target }
    }

    /// A request to the backend with `body` (sized) or none.
    pub fn request(body: Option<&'static str>) -> Request<Body> {
        let mut req = Request::new(body.map_or_else(Body::empty, Body::text));
        *req.uri_mut() = "http://svc/".parse().unwrap();
        req
    }

    /// The value of a counter series whose text contains every one of `parts`.
    pub fn counter(&self, name: &str, parts: &[&str]) -> u64 {
        self.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// A streamed body whose chunks the test sends when it wants (and ends by dropping the
/// sender), as the proxy's server would hand it over: read from a real HTTP/1 connection.
pub async fn paced() -> (tokio::sync::mpsc::Sender<&'static str>, Body) {
    let (chunks, rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(chunk.as_bytes()))), rx))
    });
    (chunks, over_http1(http_body_util::StreamBody::new(frames)).await)
}

/// A body of unknown length (sent chunked, as a client streams it), as the proxy's server
/// would hand it over: read from a real HTTP/1 connection.
pub async fn streamed(chunks: &'static [&'static str]) -> Body {
    let frames = futures_util::stream::iter(
        chunks.iter().map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c.as_bytes())))),
    );
    over_http1(http_body_util::StreamBody::new(frames)).await
}

/// `body` as it arrives at a server over a real HTTP/1 connection.
async fn over_http1<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(req.into_body());
            }
            // Answered only long after the test is over: an answer would end the body.
            async {
                tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), svc).await;
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://svc/").body(body).unwrap();
    tokio::spawn(async move {
        let _ = sender.send_request(req).await;
    });
    Body::from(rx.await.unwrap())
}
