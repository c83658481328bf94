//! The echo backend a conformance pod runs, answering as the suite's echo app does
//! (ECHO.md): plain text `Key=Value` lines describing the request it received, over
//! HTTP/1.1 and h2c, and the same lines in the `message` of a unary gRPC `Echo` call.
//! It adds a `Namespace=` line so that the runner can also check the backend's namespace.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Who a pod is.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub workload: String,
    /// `<workload>-<hash>-<suffix>`, the shape of a Deployment's pod names.
    pub hostname: String,
}

/// Starts the echo server of `pod` on 127.0.0.1 at a free port; abort the task to stop it.
pub async fn start(pod: Pod) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pod = Arc::new(pod);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let pod = pod.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let pod = pod.clone();
                    async move { Ok::<_, Infallible>(answer(&pod, req, peer, addr.port()).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
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

async fn answer(pod: &Pod, req: Request<Incoming>, peer: SocketAddr, port: u16) -> Response<EchoBody> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let text = describe(pod, &req, peer, port, grpc);
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    if !grpc {
        let mut rsp = Response::new(BoxBody::new(http_body_util::Full::new(Bytes::from(text))));
        rsp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/text"));
        return rsp;
    }
    let message = grpc_unframe(&body).and_then(|m| proto_string(&m)).unwrap_or_default();
    let reply = format!("{text}StatusCode=200\nEcho={message}\n");
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
}
