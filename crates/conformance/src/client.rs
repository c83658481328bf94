//! The in-mesh client: sends a case's request to a sidecar listener (or straight to a
//! pod) over HTTP/1.1 or h2c, as a unary gRPC call over h2c, or as a WebSocket, and reads
//! back what the client and the backend saw.

use crate::echo::{grpc_frame, grpc_unframe, proto_message, proto_string};
use crate::ws;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no reply to judge, naming the address or header.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("protocol `{0}` is not http, h2c, grpc or websocket")]
    UnknownProtocol(String),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `version` is `h2` or `HTTP/1.1`.
    #[error("{version} handshake with {addr}: {source}")]
    Handshake {
        version: &'static str,
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("no answer within 10s")]
    NoAnswer,
    #[error("{0}")]
    Method(#[source] http::method::InvalidMethod),
    #[error("invalid request: {0}")]
    Invalid(#[source] http::Error),
    #[error("header {name}: {source}")]
    HeaderName {
        name: String,
        #[source]
        source: http::header::InvalidHeaderName,
    },
    #[error("header {name}: {source}")]
    HeaderValue {
        name: String,
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    #[error("connection closed: {0}")]
    Closed(#[source] hyper::Error),
    #[error("request failed: {0}")]
    Request(#[source] hyper::Error),
    #[error("reading the response: {0}")]
    Read(#[source] hyper::Error),
}

/// How a WebSocket's exchange went wrong: part of the verdict on the reply.
#[derive(Debug, thiserror::Error)]
pub enum WebSocketFailure {
    #[error("the upgrade was answered with {0}")]
    Status(u16),
    #[error("Sec-WebSocket-Accept {0:?} does not answer the key sent")]
    Accept(Option<String>),
    #[error("upgrade: {0}")]
    Upgrade(#[source] hyper::Error),
    #[error("sending: {0}")]
    Send(#[source] std::io::Error),
    #[error("receiving: {0}")]
    Receive(#[source] std::io::Error),
    #[error("sent {sent:?} (opcode {opcode}), got {got:?} (opcode {got_opcode})")]
    Changed { sent: Vec<u8>, opcode: u8, got: Vec<u8>, got_opcode: u8 },
}

/// What one request produced.
#[derive(Debug)]
pub struct Reply {
    /// As the client saw it; an OK gRPC call counts as 200.
    pub status: u16,
    pub headers: HeaderMap,
    /// The backend's description of the request, when a backend answered.
    pub seen: Option<Seen>,
    /// For a WebSocket: whether its messages came back unchanged.
    pub websocket: Option<Result<(), WebSocketFailure>>,
}

/// The backend's `Key=Value` lines.
#[derive(Debug, Default)]
pub struct Seen {
    pub hostname: String,
    pub namespace: String,
    pub url: String,
    pub host: String,
    /// In the order the backend listed them.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    fn parse(text: &str) -> Option<Self> {
        let mut seen = Seen::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "Hostname" => seen.hostname = value.to_string(),
                "Namespace" => seen.namespace = value.to_string(),
                "URL" => seen.url = value.to_string(),
                "Host" => seen.host = value.to_string(),
                "RequestHeader" => {
                    if let Some((name, v)) = value.split_once(':') {
                        seen.headers.push((name.to_string(), v.to_string()));
                    }
                }
                _ => {}
            }
        }
        (!seen.hostname.is_empty()).then_some(seen)
    }

    /// Every value of header `name` (case-insensitive), joined with `,`.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    Grpc,
    WebSocket,
}

impl Protocol {
    pub fn parse(name: &str) -> Result<Self, ClientError> {
        match name {
            "http" => Ok(Protocol::Http1),
            "h2c" => Ok(Protocol::H2c),
            "grpc" => Ok(Protocol::Grpc),
            "websocket" => Ok(Protocol::WebSocket),
            other => Err(ClientError::UnknownProtocol(other.to_string())),
        }
    }

    fn http2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::Grpc)
    }
}

/// What a WebSocket case sends, each message to come back as it went (the upstream test's).
const WS_TEXT: &str = "Websocket Support!";
const WS_BINARY: &[u8] = &[1, 2, 3, 4, 5, 6, 7];

/// What to send.
pub struct Outgoing<'a> {
    pub protocol: Protocol,
    pub method: &'a str,
    pub path: &'a str,
    /// The `Host` header (HTTP) or `:authority` (gRPC).
    pub authority: &'a str,
    /// Extra headers (gRPC: metadata), `Host` excluded.
    pub headers: Vec<(&'a str, &'a str)>,
}

/// A connection to one listener, reused for batches (weights are per request).
pub enum Connection {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Connection {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(addr))?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if protocol.http2() {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|source| ClientError::Handshake { version: "h2", addr, source })?;
            tokio::spawn(conn);
            Ok(Connection::Http2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(|source| ClientError::Handshake {
                version: "HTTP/1.1",
                addr,
                source,
            })?;
            tokio::spawn(conn.with_upgrades());
            Ok(Connection::Http1(sender))
        }
    }

    pub async fn send(&mut self, out: &Outgoing<'_>) -> Result<Reply, ClientError> {
        tokio::time::timeout(TIMEOUT, self.exchange(out)).await.map_err(|_| ClientError::NoAnswer)?
    }

    async fn exchange(&mut self, out: &Outgoing<'_>) -> Result<Reply, ClientError> {
        let method = Method::from_bytes(out.method.as_bytes()).map_err(ClientError::Method)?;
        let mut builder = Request::builder().method(method);
        let grpc = out.protocol == Protocol::Grpc;
        let ws_key = ws::new_key();
        let body = match out.protocol {
            Protocol::Grpc => {
                builder = builder
                    .uri(format!("http://{}{}", out.authority, out.path))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .header("x-request-id", format!("{:016x}", fastrand::u64(..)));
                grpc_frame(&proto_message("conformance"))
            }
            // HTTP/2 carries the authority in the URI.
            Protocol::H2c => {
                builder = builder.uri(format!("http://{}{}", out.authority, out.path));
                Bytes::new()
            }
            Protocol::Http1 => {
                builder = builder.uri(out.path).header(http::header::HOST, out.authority);
                Bytes::new()
            }
            Protocol::WebSocket => {
                builder = builder
                    .uri(out.path)
                    .header(http::header::HOST, out.authority)
                    .header(http::header::CONNECTION, "Upgrade")
                    .header(http::header::UPGRADE, "websocket")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", &ws_key);
                Bytes::new()
            }
        };
        let mut req = builder.body(Full::new(body)).map_err(ClientError::Invalid)?;
        for (name, value) in &out.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|source| ClientError::HeaderName { name: name.to_string(), source })?;
            let value = HeaderValue::from_str(value)
                .map_err(|source| ClientError::HeaderValue { name: name.to_string(), source })?;
            req.headers_mut().append(name, value);
        }
        let rsp = match self {
            Connection::Http1(s) => {
                s.ready().await.map_err(ClientError::Closed)?;
                s.send_request(req).await
            }
            Connection::Http2(s) => {
                s.ready().await.map_err(ClientError::Closed)?;
                s.send_request(req).await
            }
        }
        .map_err(ClientError::Request)?;
        if out.protocol == Protocol::WebSocket {
            return Ok(websocket(rsp, &ws_key).await);
        }
        let (parts, body) = rsp.into_parts();
        let collected = body.collect().await.map_err(ClientError::Read)?;
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        if !grpc {
            let seen = Seen::parse(&String::from_utf8_lossy(&bytes));
            return Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                seen,
                websocket: None,
            });
        }
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        let status = match (parts.status.as_u16(), grpc_status) {
            (200, Some(0)) => 200,
            (200, Some(code)) => grpc_to_http(code),
            (other, _) => other,
        };
        let seen = grpc_unframe(&bytes).and_then(|m| proto_string(&m)).and_then(|text| Seen::parse(&text));
        Ok(Reply { status, headers: parts.headers, seen, websocket: None })
    }
}

/// After the upgrade (accepted for the key sent), a text and a binary message, each to
/// come back unchanged.
async fn websocket(mut rsp: hyper::Response<hyper::body::Incoming>, key: &str) -> Reply {
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let exchanged = async {
        if status != 101 {
            return Err(WebSocketFailure::Status(status));
        }
        let accept = headers.get("sec-websocket-accept").and_then(|v| v.to_str().ok());
        if accept != Some(ws::accept_key(key).as_str()) {
            return Err(WebSocketFailure::Accept(accept.map(str::to_string)));
        }
        let upgraded = hyper::upgrade::on(&mut rsp).await.map_err(WebSocketFailure::Upgrade)?;
        let mut io = TokioIo::new(upgraded);
        for (opcode, message) in [(ws::TEXT, WS_TEXT.as_bytes()), (ws::BINARY, WS_BINARY)] {
            ws::write_frame(&mut io, opcode, message, true).await.map_err(WebSocketFailure::Send)?;
            let (got_opcode, got) = ws::read_frame(&mut io).await.map_err(WebSocketFailure::Receive)?;
            if (got_opcode, got.as_slice()) != (opcode, message) {
                return Err(WebSocketFailure::Changed { sent: message.to_vec(), opcode, got, got_opcode });
            }
        }
        let _ = ws::write_frame(&mut io, ws::CLOSE, &[], true).await;
        Ok(())
    }
    .await;
    Reply { status, headers, seen: None, websocket: Some(exchanged) }
}

/// How a failed gRPC call is reported as a status, as the suite's echo client does.
fn grpc_to_http(code: u32) -> u16 {
    match code {
        4 => 504,
        5 | 12 => 404,
        7 | 16 => 403,
        8 => 429,
        14 => 503,
        _ => 500,
    }
}
