//! One request to one endpoint, in the protocol the hop speaks.
//!
//! A request to another Tarmac proxy always travels over the endpoint's shared HTTP/2
//! connection; one that arrived as HTTP/1 is marked with `tarmac-orig-proto` so that the
//! proxy on the other side restores HTTP/1 for its app. Tunnels (`Upgrade`, `CONNECT`)
//! take a fresh HTTP/1.1 connection of their own: an upgrade cannot ride a shared HTTP/2
//! connection.
//!
//! Sending is idempotent on the request: a request handed back unsent can be sent again,
//! to this endpoint or another, whatever the first try did to it.

use super::{Endpoint, http2};
use crate::error::{Class, ProxyError, refused_unprocessed};
use crate::http::{
    Body, HttpError, ORIG_PROTO, authority, set_absolute_uri, set_origin_form, strip_hop_by_hop,
};
use crate::metrics::TargetMetrics;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

/// A failed send, with the request when it never left (so that it may be tried again).
/// The request is boxed: failures are rare, and every `Result` of a send would otherwise
/// carry room for it.
pub struct SendError {
    pub error: ProxyError,
    pub request: Option<Box<Request<Body>>>,
}

impl std::fmt::Debug for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .field("unsent", &self.request.is_some())
            .finish()
    }
}

impl SendError {
    pub fn unsent(error: impl Into<ProxyError>, request: Request<Body>) -> Self {
        Self { error: error.into(), request: Some(Box::new(request)) }
    }
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        Self { error, request: None }
    }
}

/// Response metrics of the endpoint that answered, when they carry its identity.
#[derive(Clone, Debug)]
pub struct PeerMetrics(pub Arc<TargetMetrics>);

impl Endpoint {
    /// Sends `req`, adapting it to the protocol the hop speaks. `restore_h1`: the request
    /// came from another proxy as HTTP/1 carried over HTTP/2, and goes on as HTTP/1.
    pub async fn send(&self, mut req: Request<Body>, restore_h1: bool) -> Result<Response<Body>, SendError> {
        // Our own mark from an earlier try (the outbound handler drops an app's copy).
        let was_h1 = req.headers_mut().remove(ORIG_PROTO).is_some() || restore_h1;
        if was_h1 {
            *req.version_mut() = Version::HTTP_11;
        }
        // Counted from here, so that concurrent picks see each other even while the
        // first of them is still connecting.
        let in_flight = self.ewma.start();
        strip_hop_by_hop(req.headers_mut(), false);
        let authority = authority(&req)?;
        if self.meshed || req.version() == Version::HTTP_2 {
            if req.version() != Version::HTTP_2 {
                req.headers_mut().insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
            }
            *req.version_mut() = Version::HTTP_2;
            set_absolute_uri(&mut req, authority)?;
            req.headers_mut().remove(header::HOST);
            // A request the peer refused unprocessed (a draining proxy's GOAWAY,
            // REFUSED_STREAM) may go again, but its head went into the stream: for a
            // request without a body, the head is kept to build it anew (a body is only
            // held for replay under a retry policy, see `resilience::retry`). This is what
            // keeps a rolling restart of the endpoints from failing requests.
            let head = http_body::Body::is_end_stream(req.body()).then(|| Head::of(&req));
            // A connection that closed under us is replaced once; the request was not sent.
            let mut attempt = 0;
            let exchange = loop {
                let mut client = match self.h2_sender().await {
                    Ok(client) => client,
                    Err(e) => return Err(SendError::unsent(e, req)),
                };
                if let Err(e) = client.ready().await {
                    if attempt == 0 {
                        tracing::debug!(addr = %self.addr, error = %e, "HTTP/2 connection closing before the request was sent; reconnecting");
                        attempt += 1;
                        continue;
                    }
                    return Err(SendError::unsent(ProxyError::upstream(self.addr, e, false), req));
                }
                match client.send(req) {
                    Ok(exchange) => break exchange,
                    Err(e) => return Err(h2_failure(self.addr, e.into(), head.as_ref())),
                }
            };
            match exchange.await {
                Ok(rsp) => {
                    in_flight.complete();
                    let mut rsp = rsp.map(|body| Body::Http2 { body });
                    strip_hop_by_hop(rsp.headers_mut(), false);
                    if let Some(metrics) = &self.peer_metrics {
                        rsp.extensions_mut().insert(PeerMetrics(metrics.clone()));
                    }
                    Ok(rsp)
                }
                Err(http2::Failure::RequestBody(e)) => Err(ProxyError::RequestBody(e).into()),
                Err(http2::Failure::H2(e)) => Err(h2_failure(self.addr, e.into(), head.as_ref())),
            }
        } else {
            if req.version() != Version::HTTP_10 {
                *req.version_mut() = Version::HTTP_11;
            }
            if !req.headers().contains_key(header::HOST) {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|e| ProxyError::BadUri(e.to_string()))?;
                req.headers_mut().insert(header::HOST, host);
            }
            set_origin_form(&mut req);
            for attempt in 0..2 {
                let mut sender = match self.h1_sender().await {
                    Ok(sender) => sender,
                    Err(e) => return Err(SendError::unsent(e, req)),
                };
                match sender.try_send_request(req).await {
                    Ok(rsp) => {
                        in_flight.complete();
                        let (mut parts, body) = rsp.into_parts();
                        strip_hop_by_hop(&mut parts.headers, false);
                        let body = Body::Pooled { body: self.pooled_body(body, sender) };
                        return Ok(Response::from_parts(parts, body));
                    }
                    Err(e) => req = unsent(attempt, e, self.addr)?,
                }
            }
            unreachable!("the second attempt returns")
        }
    }

    /// Opens the tunnel `req` asks for (see [`crate::http::upgrade`]). The client's side of
    /// the upgrade travels in the request's extensions, which survive the body's conversion.
    pub async fn tunnel(&self, mut req: Request<Body>) -> Result<Response<Body>, SendError> {
        let tunnels = &self.settings.tunnels;
        let Ok(permit) = tunnels.open.clone().try_acquire_owned() else {
            return Err(ProxyError::TunnelLimit(tunnels.max).into());
        };
        let is_connect = req.method() == Method::CONNECT;
        req.headers_mut().remove(ORIG_PROTO);
        strip_hop_by_hop(req.headers_mut(), true);
        if !is_connect {
            if !req.headers().contains_key(header::HOST) {
                let host = authority(&req)?;
                let host =
                    HeaderValue::from_str(host.as_str()).map_err(|e| ProxyError::BadUri(e.to_string()))?;
                req.headers_mut().insert(header::HOST, host);
            }
            set_origin_form(&mut req);
        }
        *req.version_mut() = Version::HTTP_11;

        let in_flight = self.ewma.start();
        let mut sender = match self.h1_connect(true).await {
            Ok(sender) => sender,
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        let client_side = hyper::upgrade::on(&mut req);
        let mut rsp =
            sender.send_request(req).await.map_err(|source| ProxyError::upstream(self.addr, source, true))?;
        in_flight.complete();

        let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switched || (is_connect && rsp.status().is_success()) {
            let upstream_side = hyper::upgrade::on(&mut rsp);
            let (addr, idle_timeout) = (self.addr, tunnels.idle_timeout);
            let metrics = self.metrics.clone();
            tunnels.tasks.spawn(async move {
                let _permit = permit;
                let (client, upstream) = match tokio::try_join!(client_side, upstream_side) {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "tunnel upgrade failed");
                        return;
                    }
                };
                let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                crate::tcp::proxy(client, upstream, metrics.tcp_connection(), idle_timeout).await;
            });
        }
        strip_hop_by_hop(rsp.headers_mut(), switched);
        Ok(rsp.map(Body::from))
    }
}

/// The head of a request without a body, enough to build it again.
struct Head {
    method: Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
}

impl Head {
    fn of(req: &Request<Body>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> Request<Body> {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A failed HTTP/2 exchange: unsent when the peer refused it unprocessed, and then with
/// the request built again from its head if it had no body.
fn h2_failure(addr: SocketAddr, e: HttpError, head: Option<&Head>) -> SendError {
    let sent = !refused_unprocessed(&e);
    let mut failure = SendError::from(ProxyError::upstream(addr, e, sent));
    if let (Some(head), Class::Unsent) = (head, failure.error.class()) {
        failure.request = Some(Box::new(head.request()));
    }
    failure
}

/// After a failed send on the first attempt: the request, if it never left and may be
/// sent again on a new connection. Otherwise the failure, with the request if hyper gave
/// it back.
fn unsent(
    attempt: usize,
    mut e: TrySendError<Request<Body>>,
    addr: SocketAddr,
) -> Result<Request<Body>, SendError> {
    match e.take_message() {
        Some(req) if attempt == 0 => {
            tracing::debug!(%addr, error = %e.error(), "connection closed before the request was sent; reconnecting");
            Ok(req)
        }
        Some(req) => Err(SendError::unsent(ProxyError::upstream(addr, e.into_error(), false), req)),
        None => {
            let e = HttpError::from(e.into_error());
            let sent = !refused_unprocessed(&e);
            Err(ProxyError::upstream(addr, e, sent).into())
        }
    }
}
