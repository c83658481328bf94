//! HTTP proxying: one body type, header hygiene, and the error responses the proxy itself
//! produces.
//!
//! - [`server`]: serves a detected HTTP/1 or HTTP/2 connection with hyper.
//! - [`connections`]: the connections being served, closed when idle or on drain.
//! - [`handle`]: what every request goes through, inbound or outbound: metrics, tap, and
//!   failures turned into responses around a direction's [`handle::Handle`].
//! - [`upgrade`]: recognising `Upgrade` (WebSocket) and `CONNECT` tunnels.
//! - [`metered`]: a response body that records status and gRPC status when it ends.

pub mod connections;
pub mod handle;
pub mod metered;
pub mod server;
pub mod upgrade;

use crate::endpoint::PooledBody;
use crate::endpoint::http2::H2Body;
use crate::error::ProxyError;
use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of a body or exchange: from hyper (served connections, HTTP/1 upstreams) or
/// from h2 (the HTTP/2 client, [`crate::endpoint::http2`]).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    H2(#[from] h2::Error),
}

/// Marks a request that an outbound proxy upgraded from HTTP/1 to HTTP/2 for the hop to
/// another proxy; the inbound proxy removes it and speaks HTTP/1 to the app again.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("tarmac-orig-proto");
/// The verified SPIFFE ID of the client, set by the inbound proxy for the app. Whatever a
/// client sent under this name is dropped first, so the app can trust it.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("tarmac-client-id");
/// Set on responses the proxy generated itself, saying why.
/// HTTP/2 flow-control windows, the same on both sides of the proxy: what one stream,
/// and one connection, may have in flight unread. Fixed rather than adaptive, which grows
/// them to 16 MiB per connection: the proxy holds up to this much for a peer that sends
/// and does not read. A megabyte per connection keeps a mesh hop (sub-millisecond round
/// trips) at full speed.
pub const STREAM_WINDOW: u32 = 256 * 1024;
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

pub const PROXY_ERROR: HeaderName = HeaderName::from_static("tarmac-proxy-error");

pin_project! {
    /// Every body the proxy sends: a peer's streamed body, or a small one it made itself.
    #[project = BodyProj]
    pub enum Body {
        Stream { #[pin] body: Incoming },
        Pooled { #[pin] body: PooledBody },
        Http2 { #[pin] body: H2Body },
        Full { #[pin] body: Full<Bytes> },
        // A request body of unknown length, recorded for a retry as it is sent.
        Tee { #[pin] body: crate::resilience::replay::TeeBody },
    }
}

impl Body {
    pub fn empty() -> Self {
        Body::Full { body: Full::new(Bytes::new()) }
    }

    pub fn text(s: impl Into<Bytes>) -> Self {
        Body::Full { body: Full::new(s.into()) }
    }
}

impl From<Incoming> for Body {
    fn from(body: Incoming) -> Self {
        Body::Stream { body }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match self.project() {
            BodyProj::Stream { body } => body.poll_frame(cx).map_err(HttpError::Hyper),
            BodyProj::Pooled { body } => body.poll_frame(cx).map_err(HttpError::Hyper),
            BodyProj::Http2 { body } => body.poll_frame(cx).map_err(HttpError::H2),
            BodyProj::Tee { body } => body.poll_frame(cx).map_err(HttpError::Hyper),
            BodyProj::Full { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream { body } => body.is_end_stream(),
            Body::Pooled { body } => body.is_end_stream(),
            Body::Http2 { body } => body.is_end_stream(),
            Body::Tee { body } => body.is_end_stream(),
            Body::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream { body } => body.size_hint(),
            Body::Pooled { body } => body.size_hint(),
            Body::Http2 { body } => body.size_hint(),
            Body::Tee { body } => body.size_hint(),
            Body::Full { body } => body.size_hint(),
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus any the
/// `Connection` header names. `te: trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names (compared as known
    // headers, without hashing) is cheaper than a hashed lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in named {
            // The client's identity is the inbound identity stage's to set: a client
            // naming it in `Connection` must not make the proxy drop the verified value.
            if name != header::TE && name != CLIENT_ID {
                headers.remove(&name);
            }
        }
        if !keep_upgrade {
            headers.remove(header::CONNECTION);
        }
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    if let Some(te) = headers.get(header::TE) {
        let wants_trailers = te
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
            .unwrap_or(false);
        if wants_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The names [`strip_hop_by_hop`] may act on (`Connection` may name others).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [header::CONNECTION, header::TE, header::TRANSFER_ENCODING, header::UPGRADE, KEEP_ALIVE, PROXY_CONNECTION]
        .contains(name)
}

/// True for gRPC requests, which want errors as `grpc-status` rather than HTTP codes.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A response made by the proxy for a failure: an HTTP status with a reason header, or
/// for gRPC callers (`grpc` holds the status to give) a trailers-only response.
pub fn error_response(
    status: http::StatusCode,
    grpc: Option<&'static str>,
    reason: &str,
) -> http::Response<Body> {
    let reason_value = HeaderValue::from_str(reason).unwrap_or(HeaderValue::from_static("proxy error"));
    let mut rsp = if let Some(code) = grpc {
        let mut rsp = http::Response::new(Body::empty());
        let h = rsp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", reason_value.clone());
        rsp
    } else {
        let mut rsp = http::Response::new(Body::text(format!("{reason}\n")));
        *rsp.status_mut() = status;
        rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        rsp
    };
    rsp.headers_mut().insert(PROXY_ERROR, reason_value);
    rsp
}

/// The request's authority: from an absolute URI (HTTP/2, or an absolute-form HTTP/1
/// request), otherwise from `Host`.
pub fn authority<B>(req: &Request<B>) -> Result<Authority, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.clone());
    }
    let host = req.headers().get(header::HOST).ok_or(ProxyError::NoAuthority)?;
    Authority::try_from(host.as_bytes()).map_err(|e| ProxyError::BadUri(format!("Host header: {e}")))
}

pub fn set_absolute_uri<B>(req: &mut Request<B>, authority: Authority) -> Result<(), ProxyError> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(Scheme::HTTP);
    }
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::BadUri(e.to_string()))?;
    Ok(())
}

pub fn set_origin_form<B>(req: &mut Request<B>) {
    if req.uri().authority().is_none() {
        return;
    }
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
            ("trailer", "grpc-status"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "trailer"]);
    }

    #[test]
    fn te_trailers_survives_and_other_te_goes() {
        let mut h = headers(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut h = headers(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("te").is_none());
    }

    #[test]
    fn upgrade_headers_are_kept_for_tunnels() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("keep-alive", "1")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        assert!(h.get("keep-alive").is_none());
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let mut req = HeaderMap::new();
        req.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        assert!(is_grpc(&req));
        let rsp = error_response(http::StatusCode::BAD_GATEWAY, Some("14"), "connect failed");
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()[PROXY_ERROR], "connect failed");
    }
}
