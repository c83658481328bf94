//! Why a request failed in the proxy, and what follows from it.
//!
//! Every failure on the request path is a [`ProxyError`], and each says three things:
//! which status the caller gets ([`ProxyError::status`]), the `kind` label it is counted
//! under ([`ProxyError::kind`]), and its [`Class`]: whether the request left the proxy and
//! whether another try may succeed. Retries read the class, never the message.

use crate::endpoint::ConnectError;
use crate::http::HttpError;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a failure means for trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The request never left the proxy, or its peer refused it unprocessed, and another
    /// try (on another endpoint, or a new connection) may succeed: a refused or timed-out
    /// connect, a connection that closed before the request went out, an HTTP/2 stream
    /// past a draining peer's GOAWAY or reset with REFUSED_STREAM. Always safe to retry.
    Unsent,
    /// The request never left the proxy, and trying again would fail the same way or
    /// defeat the failure's purpose: a bad request, no route, no endpoints, a peer that
    /// failed the mTLS handshake, an injected fault.
    Final,
    /// The request left the proxy, at least in part. It is retried only as a response
    /// with the same status would be, when its body can be sent again whole.
    Sent,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no endpoints for {0}")]
    NoEndpoints(Arc<String>),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed under a request. `sent` is false when the request did not
    /// leave (hyper handed it back) or the peer refused it unprocessed.
    #[error("request to {addr} failed: {source}")]
    Upstream { addr: SocketAddr, source: HttpError, sent: bool },
    #[error("request has no authority: send a Host header")]
    NoAuthority,
    #[error("invalid request target: {0}")]
    BadUri(String),
    #[error("reading the request body: {0}")]
    RequestBody(HttpError),
    #[error("no route rule matches the request")]
    NoRoute,
    #[error("every backend of route {0} has weight 0")]
    NoBackend(Arc<String>),
    #[error("backend {0} does not exist")]
    BackendNotFound(Arc<String>),
    #[error("{what} timeout of {limit:?} exceeded")]
    Timeout { what: &'static str, limit: Duration },
    #[error("fault injected")]
    FaultAbort(StatusCode),
    #[error("route {0} refers to a FaultInjection that does not exist")]
    FaultUnresolved(Arc<String>),
    #[error(
        "{backend} is at its concurrency limit ({max_in_flight} requests in flight, {max_queued} queued)"
    )]
    Overloaded { backend: Arc<String>, max_in_flight: u32, max_queued: u32 },
    #[error("too many tunnels open ({0}, limits.max_connections)")]
    TunnelLimit(usize),
    /// An upgrade answered with a 2xx that switched nothing: fine for an HTTP/1.1 client,
    /// which reads the answer, but an HTTP/2 client would take it for its tunnel.
    #[error("the upstream answered {0} to a protocol upgrade without switching protocols")]
    NotSwitched(StatusCode),
    /// Refused by the workload's inbound policy: the AuthorizationPolicy (or
    /// `default:<mode>`) and why.
    #[error("refused by policy {policy} ({reason})")]
    Forbidden { policy: Arc<str>, reason: &'static str },
    #[error("rate limited by policy {policy}; retry in {retry_after:?}")]
    RateLimited { policy: Arc<str>, retry_after: Duration },
}

impl ProxyError {
    /// A send to `addr` that failed with `source`: the upstream's failure, or the
    /// caller's when what broke was the request body it was streaming (an invalid chunk
    /// size, a body cut short), which gets 400 and is the caller's to fix, not 502.
    pub fn upstream(addr: SocketAddr, source: impl Into<HttpError>, sent: bool) -> Self {
        let source = source.into();
        if request_body_failed(&source) {
            ProxyError::RequestBody(source)
        } else {
            ProxyError::Upstream { addr, source, sent }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(ConnectError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_) | ProxyError::Upstream { .. } | ProxyError::NotSwitched(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::NoAuthority | ProxyError::BadUri(_) | ProxyError::RequestBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_) | ProxyError::BackendNotFound(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::FaultAbort(status) => *status,
            ProxyError::FaultUnresolved(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Overloaded { .. } | ProxyError::TunnelLimit(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The policy that refused the request, for the tap.
    pub fn policy(&self) -> Option<&Arc<str>> {
        match self {
            ProxyError::Forbidden { policy, .. } | ProxyError::RateLimited { policy, .. } => Some(policy),
            _ => None,
        }
    }

    /// The `grpc-status` a gRPC caller gets instead of [`Self::status`].
    pub fn grpc_status(&self) -> &'static str {
        match self {
            ProxyError::Overloaded { .. } | ProxyError::RateLimited { .. } => "8", // RESOURCE_EXHAUSTED
            ProxyError::Forbidden { .. } => "7",                                   // PERMISSION_DENIED
            _ => match self.status() {
                StatusCode::GATEWAY_TIMEOUT => "4",        // DEADLINE_EXCEEDED
                StatusCode::BAD_REQUEST => "13",           // INTERNAL
                StatusCode::INTERNAL_SERVER_ERROR => "13", // INTERNAL
                StatusCode::NOT_FOUND => "12",             // UNIMPLEMENTED
                StatusCode::TOO_MANY_REQUESTS => "8",      // RESOURCE_EXHAUSTED
                _ => "14",                                 // UNAVAILABLE
            },
        }
    }

    /// The `kind` label of `tarmac_proxy_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoEndpoints(_) => "no_endpoints",
            ProxyError::Connect(ConnectError::Timeout { .. }) => "connect_timeout",
            ProxyError::Connect(ConnectError::Tls { .. } | ConnectError::NoPeerIdentity { .. }) => "tls",
            ProxyError::Connect(_) => "connect",
            ProxyError::Upstream { .. } | ProxyError::NotSwitched(_) => "upstream",
            ProxyError::NoAuthority | ProxyError::BadUri(_) | ProxyError::RequestBody(_) => "bad_request",
            ProxyError::NoRoute => "no_route",
            ProxyError::NoBackend(_) | ProxyError::BackendNotFound(_) => "no_backend",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::FaultAbort(_) => "fault",
            ProxyError::FaultUnresolved(_) => "bad_filter",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::TunnelLimit(_) => "tunnel_limit",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::RateLimited { .. } => "rate_limited",
        }
    }

    pub fn class(&self) -> Class {
        match self {
            // A failed handshake is the peer's identity or the mesh's trust, not a moment's
            // trouble: trying again would only repeat it.
            ProxyError::Connect(ConnectError::Tls { .. }) => Class::Final,
            ProxyError::Connect(_) => Class::Unsent,
            ProxyError::Upstream { sent: false, .. } => Class::Unsent,
            ProxyError::Upstream { sent: true, .. } | ProxyError::Timeout { .. } | ProxyError::NotSwitched(_) => {
                Class::Sent
            }
            ProxyError::NoEndpoints(_)
            | ProxyError::NoAuthority
            | ProxyError::BadUri(_)
            | ProxyError::RequestBody(_)
            | ProxyError::NoRoute
            | ProxyError::NoBackend(_)
            | ProxyError::BackendNotFound(_)
            | ProxyError::FaultAbort(_)
            | ProxyError::FaultUnresolved(_)
            // Shed load is not retried: a retry would only queue it again.
            | ProxyError::Overloaded { .. }
            | ProxyError::TunnelLimit(_)
            | ProxyError::Forbidden { .. }
            | ProxyError::RateLimited { .. } => Class::Final,
        }
    }
}

/// The HTTP/2 error of a failure (under a hyper error, or h2's own), if that is what it was.
fn h2_cause(e: &HttpError) -> Option<&h2::Error> {
    let e = match e {
        HttpError::H2(h2) => return Some(h2),
        HttpError::Hyper(e) => e,
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        cause = c.source();
    }
    None
}

/// Whether a client failed because the request body it was sending failed: over HTTP/1
/// hyper's user-body error caused by the body's own error; over HTTP/2 the stream reset
/// with INTERNAL_ERROR when the body failed.
fn request_body_failed(e: &HttpError) -> bool {
    use std::error::Error as _;
    if let HttpError::Hyper(e) = e
        && e.is_user()
        && e.source().is_some_and(|cause| cause.is::<HttpError>() || cause.is::<hyper::Error>())
    {
        return true;
    }
    h2_cause(e)
        .is_some_and(|h2| h2.is_reset() && !h2.is_remote() && h2.reason() == Some(h2::Reason::INTERNAL_ERROR))
}

/// Whether the HTTP/2 peer refused the request without processing it, so that it may be
/// sent again whatever it is (RFC 9113, 8.7): a stream past the last one its GOAWAY
/// accepts (or opened after that GOAWAY arrived), or one it reset with REFUSED_STREAM.
pub fn refused_unprocessed(e: &HttpError) -> bool {
    h2_cause(e).is_some_and(|h2| {
        h2.is_remote()
            && (h2.is_go_away() || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connect_is_unsent_and_a_timeout_was_sent() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ProxyError::Connect(ConnectError::Io {
            addr,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(refused.class(), Class::Unsent);
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        let timeout = ProxyError::Timeout { what: "backend request", limit: Duration::from_secs(1) };
        assert_eq!(timeout.class(), Class::Sent);
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ProxyError::NoRoute.class(), Class::Final);
        assert_eq!(ProxyError::FaultAbort(StatusCode::SERVICE_UNAVAILABLE).class(), Class::Final);
    }
}
