//! Where requests go and how: the target URL, the protocol, and one connection's sender.

use crate::LoadgenError;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue, TE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs};
use tokio::net::TcpStream;

/// What the generator speaks to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: requests multiplexed per connection.
    H2c,
    /// Unary gRPC calls (an empty message) over h2c; success is `grpc-status: 0`.
    Grpc,
}

/// The URL to load: where to connect, and the request to send.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    uri: Uri,
    authority: HeaderValue,
    /// Number every request in [`SEQUENCE_HEADER`] (off by default: it costs a header).
    numbered: bool,
}

/// With [`Target::numbered`], every request carries a number no other request of this
/// process has, so that an upstream can tell a retry from a new request.
pub const SEQUENCE_HEADER: &str = "x-bench-seq";

static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How one request ended, when the target answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Success,
    /// An HTTP status outside 2xx.
    BadStatus(u16),
    /// A gRPC call that ended with a status other than OK (or none at all: `None`).
    BadGrpcStatus(Option<u32>),
}

/// One connection's request sender.
#[derive(Debug)]
pub(crate) enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

// === impl Protocol ===

/// A protocol name the load generator does not speak.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol `{0}`: use http1, h2c or grpc")]
pub struct UnknownProtocol(String);

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(text: &str) -> Result<Self, UnknownProtocol> {
        match text {
            "http1" | "http/1.1" | "h1" => Ok(Self::Http1),
            "h2c" | "http2" | "h2" => Ok(Self::H2c),
            "grpc" => Ok(Self::Grpc),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http1 => "HTTP/1.1",
            Self::H2c => "h2c",
            Self::Grpc => "gRPC",
        })
    }
}

// === impl Target ===

impl Target {
    /// Parses `http://HOST:PORT/PATH` and resolves HOST. For gRPC the path is the method,
    /// `/package.Service/Method`. `https` is refused: TLS comes with the mesh's identity
    /// work, where the generator will present a client certificate.
    pub fn parse(url: &str) -> Result<Self, LoadgenError> {
        let refuse = |reason: &str| LoadgenError::Target { url: url.to_string(), reason: reason.to_string() };
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| refuse(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(refuse(&format!("scheme `{other}` is not supported; use http://"))),
            None => return Err(refuse("it has no scheme; write http://HOST:PORT/PATH")),
        }
        let authority = uri.authority().ok_or_else(|| refuse("it has no host"))?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = (authority.host().trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|e| refuse(&format!("cannot resolve {}: {e}", authority.host())))?
            .next()
            .ok_or_else(|| refuse(&format!("{} has no address", authority.host())))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|e| refuse(&e.to_string()))?;
        let authority = HeaderValue::from_str(authority.as_str()).map_err(|e| refuse(&e.to_string()))?;
        Ok(Self { addr, uri, authority, numbered: false })
    }

    /// The same target, every request numbered in [`SEQUENCE_HEADER`].
    pub fn numbered(self) -> Self {
        Self { numbered: true, ..self }
    }

    /// The same request, sent to another address (a proxy in front of the target): the
    /// URL's host stays in the `Host` header and `:authority`.
    pub fn via(&self, addr: SocketAddr) -> Self {
        Self { addr, ..self.clone() }
    }

    pub fn url(&self) -> String {
        self.uri.to_string()
    }

    fn request(&self, protocol: Protocol) -> Request<Full<Bytes>> {
        let mut builder = match protocol {
            // Origin form and a Host header, as HTTP/1.1 clients send.
            Protocol::Http1 => Request::get(self.uri.path_and_query().map_or("/", |p| p.as_str()))
                .header(HOST, self.authority.clone()),
            // HTTP/2 carries scheme and authority as pseudo-headers, taken from the URI.
            Protocol::H2c => Request::get(self.uri.clone()),
            Protocol::Grpc => Request::builder()
                .method(Method::POST)
                .uri(self.uri.clone())
                .header(CONTENT_TYPE, "application/grpc")
                .header(TE, "trailers"),
        };
        if self.numbered {
            let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            builder = builder.header(SEQUENCE_HEADER, n);
        }
        let body = match protocol {
            // One uncompressed, empty message: the flag byte and a zero length.
            Protocol::Grpc => Bytes::from_static(&[0, 0, 0, 0, 0]),
            Protocol::Http1 | Protocol::H2c => Bytes::new(),
        };
        builder.body(Full::new(body)).expect("requests built from a parsed URI are valid")
    }
}

// === impl Sender ===

impl Sender {
    pub(crate) async fn connect(target: &Target, protocol: Protocol) -> Result<Self, LoadgenError> {
        let addr = target.addr;
        let stream =
            TcpStream::connect(addr).await.map_err(|source| LoadgenError::Connect { addr, source })?;
        // Small requests: Nagle would hold each back until the previous one is acknowledged.
        stream.set_nodelay(true).map_err(|source| LoadgenError::Connect { addr, source })?;
        let io = TokioIo::new(stream);
        let handshake_failed = |source| LoadgenError::Handshake { addr, source };
        let sender = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = http1::handshake(io).await.map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
                    }
                });
                Self::Http1(sender)
            }
            Protocol::H2c | Protocol::Grpc => {
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), io).await.map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                    }
                });
                Self::Http2(sender)
            }
        };
        Ok(sender)
    }

    /// HTTP/2 senders can have many requests in flight; HTTP/1.1 ones one at a time.
    pub(crate) fn is_multiplexed(&self) -> bool {
        matches!(self, Self::Http2(_))
    }

    /// Another handle on the same HTTP/2 connection, for one more concurrent request;
    /// `None` for HTTP/1.1, whose connection carries one request at a time.
    pub(crate) fn another_stream(&self) -> Option<Self> {
        match self {
            Self::Http1(_) => None,
            Self::Http2(sender) => Some(Self::Http2(sender.clone())),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Http1(sender) => sender.is_closed(),
            Self::Http2(sender) => sender.is_closed(),
        }
    }

    /// Sends one request and reads the whole response, trailers included.
    pub(crate) async fn send(&mut self, target: &Target, protocol: Protocol) -> Result<Answer, hyper::Error> {
        let request = target.request(protocol);
        let response = match self {
            Self::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Self::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let (head, body) = response.into_parts();
        let body = body.collect().await?;
        if !head.status.is_success() {
            return Ok(Answer::BadStatus(head.status.as_u16()));
        }
        if protocol != Protocol::Grpc {
            return Ok(Answer::Success);
        }
        // A failing call may be "trailers-only": its status in the headers.
        let grpc_status = body
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| head.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        Ok(match grpc_status {
            Some(0) => Answer::Success,
            other => Answer::BadGrpcStatus(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_their_host_and_path() {
        let target = Target::parse("http://127.0.0.1:8080/books?id=7").expect("valid");
        assert_eq!(target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target.url(), "http://127.0.0.1:8080/books?id=7");
        let request = target.request(Protocol::Http1);
        assert_eq!(request.uri(), "/books?id=7");
        assert_eq!(request.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(target.request(Protocol::H2c).uri(), "http://127.0.0.1:8080/books?id=7");

        let via = target.via("127.0.0.1:7001".parse().unwrap());
        assert_eq!(via.addr.port(), 7001);
        assert_eq!(via.request(Protocol::Http1).headers()[HOST], "127.0.0.1:8080");

        let v6 = Target::parse("http://[::1]:9000").expect("valid");
        assert_eq!(v6.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(v6.request(Protocol::Http1).uri(), "/");
        assert!(!via.request(Protocol::Http1).headers().contains_key(SEQUENCE_HEADER), "off by default");
        let numbered = via.numbered();
        let (a, b) = (numbered.request(Protocol::Http1), numbered.request(Protocol::H2c));
        assert_ne!(a.headers()[SEQUENCE_HEADER], b.headers()[SEQUENCE_HEADER], "each request its own number");
    }

    #[test]
    fn unusable_urls_are_refused_with_the_reason() {
        let reason = |url| Target::parse(url).unwrap_err().to_string();
        assert!(reason("https://127.0.0.1/").contains("use http://"));
        assert!(reason("/books").contains("no scheme"));
        assert!(reason("http://").contains("not a URL"));
    }

    #[test]
    fn grpc_calls_carry_an_empty_framed_message() {
        let request =
            Target::parse("http://127.0.0.1:50051/bench.Echo/Call").unwrap().request(Protocol::Grpc);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(request.headers()[TE], "trailers");
        assert_eq!("grpc".parse::<Protocol>(), Ok(Protocol::Grpc));
        assert!("spdy".parse::<Protocol>().is_err());
    }
}
