//! The echo backend a conformance pod runs, answering as the suite's echo app does
//! (ECHO.md): plain text `Key=Value` lines describing the request it received, over
//! HTTP/1.1 and h2c, and the same lines in the `message` of a unary gRPC `Echo` call.
//! It adds a `Namespace=` line so that the runner can also check the backend's namespace.
//!
//! Like the Gateway API's own echo, an HTTP request can ask it to wait (`?delay=1s`), to
//! fail a number of times per request id before answering (`?responseCode=500&
//! succeedAfter=2&uuid=...`), and to set response headers (`X-Echo-Set-Header: name:value`);
//! `/ws` speaks WebSocket and echoes every message. Every request is recorded (bounded), so
//! that the runner can ask a mirror whether its copy arrived.

use crate::ws;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Who a pod is.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub workload: String,
    /// `<workload>-<hash>-<suffix>`, the shape of a Deployment's pod names.
    pub hostname: String,
}

/// Requests kept per pod for [`Log::received_since`]; older ones are forgotten.
const LOG_LEN: usize = 1024;
/// Request ids the failure simulation remembers; past it, it starts afresh.
const TRIES_LEN: usize = 10_000;
/// `?delay=` longer than this is refused: a case never needs more, and a wait is bounded.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What a pod's echo received: the request target (path and query) of each request.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<VecDeque<(Instant, String)>>>);

impl Log {
    fn record(&self, target: &str) {
        let mut log = self.0.lock().expect("echo log");
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back((Instant::now(), target.to_string()));
    }

    /// How many requests for `target` arrived at or after `since`.
    pub fn received_since(&self, target: &str, since: Instant) -> usize {
        self.0.lock().expect("echo log").iter().filter(|(at, t)| *at >= since && t == target).count()
    }
}

struct Echo {
    pod: Pod,
    log: Log,
    /// Failed answers so far per request id, for `succeedAfter`.
    tries: Mutex<HashMap<String, u32>>,
}

/// Starts the echo server of `pod` on 127.0.0.1 at a free port; abort the task to stop it.
pub async fn start(pod: Pod) -> std::io::Result<(SocketAddr, Log, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let log = Log::default();
    let echo = Arc::new(Echo { pod, log: log.clone(), tries: Mutex::default() });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            // A gRPC answer is written as headers, data and trailers: with Nagle's algorithm
            // the last ones wait for the peer's delayed ACK, some 40 ms a call.
            let _ = stream.set_nodelay(true);
            let echo = echo.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let echo = echo.clone();
                    async move { Ok::<_, Infallible>(echo.answer(req, peer, addr.port()).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, log, task))
}

/// `x-header-set` → `X-Header-Set`.
pub fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn describe(pod: &Pod, req: &Request<Incoming>, peer: SocketAddr, port: u16, grpc: bool) -> String {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut lines = vec![
        "ServiceVersion=".to_string(),
        format!("ServicePort={port}"),
        format!("Host={host}"),
        format!("URL={}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/")),
        "Cluster=".to_string(),
        "IstioVersion=".to_string(),
        format!("Method={}", req.method()),
        format!("Proto={}", if grpc { "GRPC".to_string() } else { format!("{:?}", req.version()) }),
        format!("IP={}", peer.ip()),
        "Alpn=".to_string(),
    ];
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(name, _)| *name != http::header::HOST)
        .map(|(name, value)| {
            let name = if grpc { name.as_str().to_string() } else { canonical(name.as_str()) };
            (name, String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    // Sorted by name; the values of one name stay in the order they were received.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in headers {
        lines.push(format!("RequestHeader={name}:{value}"));
    }
    lines.push(format!("Hostname={}", pod.hostname));
    lines.push(format!("Namespace={}", pod.namespace));
    lines.join("\n") + "\n"
}

type EchoBody = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<EchoBody> {
    let mut rsp = Response::new(BoxBody::new(http_body_util::Full::new(Bytes::from(body))));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/text"));
    rsp
}

/// The value of `name` in a query string (no percent-decoding: the controls need none).
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// A Go-style duration as the suite writes it: `1s`, `500ms`, `1.5s`, `1m30s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = tail;
    }
    // A duration too long to represent is no duration, not a panic.
    Duration::try_from_secs_f64(total).ok().filter(|_| !text.is_empty())
}

impl Echo {
    async fn answer(&self, mut req: Request<Incoming>, peer: SocketAddr, port: u16) -> Response<EchoBody> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        self.log.record(&target);
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !grpc && req.uri().path() == "/ws" {
            return websocket(&mut req);
        }
        let description = describe(&self.pod, &req, peer, port, grpc);
        if grpc {
            let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            return grpc_answer(&description, &body);
        }
        let query = req.uri().query();
        if let Some(delay) = query_value(query, "delay") {
            match parse_duration(delay) {
                Some(d) if d <= MAX_DELAY => tokio::time::sleep(d).await,
                _ => {
                    let why = format!("delay `{delay}` is not a duration of at most {MAX_DELAY:?}\n");
                    return text(StatusCode::INTERNAL_SERVER_ERROR, why);
                }
            }
        }
        let status = self.simulated_failure(query).unwrap_or(StatusCode::OK);
        let mut rsp = text(status, description);
        set_headers(req.headers(), rsp.headers_mut());
        rsp
    }

    /// With `responseCode`, `succeedAfter` and `uuid`: the first `succeedAfter` requests
    /// of that id get `responseCode`, the ones after succeed (for retry tests).
    fn simulated_failure(&self, query: Option<&str>) -> Option<StatusCode> {
        let code = query_value(query, "responseCode")?.parse::<u16>().ok()?;
        let after: u32 = query_value(query, "succeedAfter")?.parse().ok()?;
        let id = query_value(query, "uuid")?;
        let mut tries = self.tries.lock().expect("echo tries");
        if tries.len() >= TRIES_LEN && !tries.contains_key(id) {
            tries.clear();
        }
        let failed = tries.entry(id.to_string()).or_default();
        if *failed >= after {
            return None;
        }
        *failed += 1;
        StatusCode::from_u16(code).ok()
    }
}

/// `X-Echo-Set-Header: name:value,name2:value2` (any number of such headers) becomes
/// response headers; values given twice for one name are joined with `,`.
fn set_headers(request: &HeaderMap, response: &mut HeaderMap) {
    for list in request.get_all("x-echo-set-header").iter().filter_map(|v| v.to_str().ok()) {
        for pair in list.split(',') {
            let (name, value) = pair.trim().split_once(':').unwrap_or((pair.trim(), ""));
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value.trim()))
            else {
                continue;
            };
            let joined = match response.get(&name).and_then(|old| old.to_str().ok()) {
                Some(old) => HeaderValue::from_str(&format!("{old},{}", value.to_str().unwrap_or_default()))
                    .unwrap_or(value),
                None => value,
            };
            response.insert(name, joined);
        }
    }
}

/// Accepts a WebSocket upgrade and echoes its messages once the connection is switched.
fn websocket(req: &mut Request<Incoming>) -> Response<EchoBody> {
    let upgrade = req.headers().get(http::header::UPGRADE).and_then(|v| v.to_str().ok());
    let key = req.headers().get("sec-websocket-key").and_then(|v| v.to_str().ok()).map(ws::accept_key);
    let (true, Some(accept)) = (upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")), key) else {
        return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade was expected\n".to_string());
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            ws::echo(TokioIo::new(upgraded)).await;
        }
    });
    let mut rsp = Response::new(BoxBody::new(http_body_util::Empty::new()));
    *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = rsp.headers_mut();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert("sec-websocket-accept", HeaderValue::from_str(&accept).expect("base64 is a header value"));
    rsp
}

fn grpc_answer(description: &str, body: &[u8]) -> Response<EchoBody> {
    let message = grpc_unframe(body).and_then(|m| proto_string(&m)).unwrap_or_default();
    let reply = format!("{description}StatusCode=200\nEcho={message}\n");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![Ok(Frame::data(grpc_frame(&proto_message(&reply)))), Ok(Frame::trailers(trailers))];
    let mut rsp = Response::new(BoxBody::new(StreamBody::new(futures_util::stream::iter(frames))));
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    rsp
}

/// A protobuf message whose field 1 is `text` (`EchoRequest` and `EchoResponse`).
pub fn proto_message(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 6);
    out.put_u8(0x0a); // field 1, length-delimited
    let mut len = text.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_slice(text.as_bytes());
    out.freeze()
}

/// Field 1 of a protobuf message, as text.
pub fn proto_string(mut message: &[u8]) -> Option<String> {
    while message.has_remaining() {
        let key = varint(&mut message)?;
        match key & 7 {
            0 => {
                varint(&mut message)?;
            }
            2 => {
                let len = varint(&mut message)? as usize;
                if len > message.len() {
                    return None;
                }
                let (value, rest) = message.split_at(len);
                if key >> 3 == 1 {
                    return Some(String::from_utf8_lossy(value).into_owned());
                }
                message = rest;
            }
            _ => return None,
        }
    }
    None
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A gRPC length-prefixed message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The first message of a gRPC body.
pub fn grpc_unframe(body: &[u8]) -> Option<Vec<u8>> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    body.get(5..5 + len).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_framing() {
        let text = "x".repeat(300);
        let framed = grpc_frame(&proto_message(&text));
        assert_eq!(proto_string(&grpc_unframe(&framed).unwrap()).unwrap(), text);
        assert_eq!(canonical("x-header-SET"), "X-Header-Set");
    }

    #[test]
    fn controls_read_as_the_suite_writes_them() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m1.5s"), Some(Duration::from_millis(61_500)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1e300h"), None);
        assert_eq!(parse_duration(&format!("{}h", "9".repeat(400))), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(query_value(Some("a=1&delay=2s"), "delay"), Some("2s"));
        assert_eq!(query_value(Some("xdelay=2s"), "delay"), None);
        let mut request = HeaderMap::new();
        request.append("x-echo-set-header", HeaderValue::from_static("X-A: 1, x-b:2"));
        request.append("x-echo-set-header", HeaderValue::from_static("x-a:3"));
        let mut response = HeaderMap::new();
        set_headers(&request, &mut response);
        assert_eq!(
            (&response["x-a"], &response["x-b"]),
            (&HeaderValue::from_static("1,3"), &HeaderValue::from_static("2"))
        );
    }

    #[test]
    fn failures_are_counted_per_request_id() {
        let echo = Echo {
            pod: Pod { namespace: "n".into(), workload: "w".into(), hostname: "w-a-b".into() },
            log: Log::default(),
            tries: Mutex::default(),
        };
        let q = Some("responseCode=503&succeedAfter=2&uuid=one");
        assert_eq!(echo.simulated_failure(q), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            echo.simulated_failure(Some("responseCode=503&succeedAfter=2&uuid=two")),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(echo.simulated_failure(q), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(echo.simulated_failure(q), None);
        assert_eq!(echo.simulated_failure(Some("responseCode=503")), None, "all three are needed");
    }
}
