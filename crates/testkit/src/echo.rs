//! An echo backend: answers every request with a description of it.
//!
//! Response body (plain text, one `key: value` per line): `server`, `method`, `path`,
//! `version`, `body-bytes`, then `header <name>: <value>` for every request header and
//! `trailer <name>: <value>` for every request trailer. Query knobs: `delay_ms=N` waits
//! before answering, `status=N` answers with that status, and with `first=N` both apply
//! only to the first N requests of each `x-request-id` (a backend that fails or stalls a
//! given number of times, then succeeds). Also answers with header `x-echo-server: <name>`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct EchoServer {
    pub addr: SocketAddr,
    pub name: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Requests seen per `x-request-id`, for the `first` knob.
    seen: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl EchoServer {
    /// Starts on 127.0.0.1 at a free port.
    pub async fn start(name: &str) -> Self {
        Self::start_with_delay(name, Duration::ZERO).await
    }

    /// Every response waits `delay` first: a slow endpoint.
    pub async fn start_with_delay(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let server = Self {
            addr: listener.local_addr().unwrap(),
            name: name.to_string(),
            connections: Arc::default(),
            requests: Arc::default(),
            seen: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s2.clone();
                        async move { Ok::<_, Infallible>(s.answer(req, delay).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    async fn answer(&self, req: Request<Incoming>, delay: Duration) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let query = req.uri().query().unwrap_or("").to_string();
        let knob = |key: &str| {
            query.split('&').find_map(|kv| {
                kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')).and_then(|v| v.parse::<u64>().ok())
            })
        };
        // `first=N`: `status` and `delay_ms` apply to the first N requests of each
        // `x-request-id` only, and later ones are answered at once with 200 (a backend that
        // fails, or stalls, a given number of times before it succeeds: for retries).
        let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let knobs_apply = match knob("first") {
            None => true,
            Some(first) => {
                let mut seen = self.seen.lock().unwrap();
                let n = seen.entry(id).or_insert(0);
                *n += 1;
                *n <= first
            }
        };
        let delay =
            if knobs_apply { knob("delay_ms").map(Duration::from_millis).unwrap_or(delay) } else { delay };
        let status = knobs_apply
            .then(|| knob("status").and_then(|s| StatusCode::from_u16(s as u16).ok()))
            .flatten()
            .unwrap_or(StatusCode::OK);
        let mut text = format!(
            "server: {}\nmethod: {}\npath: {}\nversion: {:?}\n",
            self.name,
            req.method(),
            req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            req.version()
        );
        for (k, v) in req.headers() {
            text.push_str(&format!("header {}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        let collected = req.into_body().collect().await;
        match collected {
            Ok(c) => {
                if let Some(trailers) = c.trailers() {
                    for (k, v) in trailers {
                        text.push_str(&format!("trailer {}: {}\n", k, v.to_str().unwrap_or("?")));
                    }
                }
                text.push_str(&format!("body-bytes: {}\n", c.to_bytes().len()));
            }
            Err(e) => text.push_str(&format!("body-error: {e}\n")),
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut rsp = Response::new(Full::new(Bytes::from(text)));
        *rsp.status_mut() = status;
        rsp.headers_mut().insert("x-echo-server", self.name.parse().unwrap());
        rsp
    }
}

/// Reads `key: value` from an echo response body.
pub fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}
