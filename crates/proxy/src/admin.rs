//! The admin listener: `/metrics`, `/ready`, `/live`, `/config`, `/identity`, `/tap`.
//!
//! `/ready` is 503 until the proxy has started and once it drains, and also when its
//! workload certificate has expired, or is in its last stretch with renewal failing:
//! peers refuse an expired certificate, so whoever routes here should stop. A proxy that
//! follows its workload's inbound policy is not ready before the policy has arrived.
//!
//! `/identity` shows the workload certificate in use as JSON (identity, serial, validity,
//! and since when renewal has been failing, if it is), or 404 when the proxy has no
//! identity.
//!
//! `/tap` streams one JSON line per completed request (`?target=NAME` and
//! `?direction=inbound|outbound` filter, `?limit=N` ends the stream after N events, default
//! 100, at most 100000); a line `{"dropped":N}` says the watcher fell behind and lost N.
//!
//! A `Host` other than an address or `localhost` gets 403, so that a web page cannot read
//! the admin endpoints from a browser on this host by DNS rebinding.
//!
//! Kept apart from the data path: it has its own accept loop, stays up while the proxy
//! drains (so `/ready` can report 503 to whoever is routing to this workload), and is
//! never subject to the connection cap.

use crate::identity::store::CertStore;
use crate::metrics::Metrics;
use crate::tap::{Tap, json_string};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once every listener is bound; cleared when draining starts.
    pub ready: AtomicBool,
    pub config_yaml: String,
    pub tap: Arc<Tap>,
    pub certs: Option<Arc<CertStore>>,
    /// The inbound policy followed, if any: not ready until it has arrived.
    pub inbound_policy: Option<Arc<crate::inbound::policy::Policies>>,
}

type AdminBody = BoxBody<Bytes, Infallible>;

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req)) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<AdminBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        if let Some(host) = req.headers().get(header::HOST)
            && !tarmac_transport::host_is_address_or_localhost(host.to_str().unwrap_or_default())
        {
            return text(
                StatusCode::FORBIDDEN,
                "reach the admin endpoints by address or as localhost\n".into(),
            );
        }
        match req.uri().path() {
            "/metrics" => {
                let mut rsp = text(StatusCode::OK, self.metrics.encode());
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                rsp
            }
            "/ready" if !self.ready.load(Ordering::Acquire) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
            }
            "/ready" if self.inbound_policy.as_ref().is_some_and(|p| !p.ready()) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no inbound policy from the control plane yet (inbound traffic is refused until it arrives)\n"
                    .into(),
            ),
            "/ready" => match self.certs.as_ref().and_then(|c| c.unfit(std::time::SystemTime::now())) {
                // Peers refuse an expired certificate: whoever routes here should stop.
                Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
                None => text(StatusCode::OK, "ready\n".into()),
            },
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/config" => {
                let mut rsp = text(StatusCode::OK, self.config_yaml.clone());
                rsp.headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/yaml"));
                rsp
            }
            "/tap" => self.tap_stream(req.uri().query().unwrap_or("")),
            "/identity" => match self.certs.as_ref().and_then(|c| c.current()) {
                Some(current) => {
                    let secs = |t: std::time::SystemTime| {
                        t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
                    };
                    let failure = self.certs.as_ref().and_then(|c| c.renewal_failure());
                    let (failing_since, error) = match &failure {
                        Some((since, error)) => (secs(*since).to_string(), json_string(error)),
                        None => ("null".to_string(), "null".to_string()),
                    };
                    let json = format!(
                        "{{\"identity\":{},\"serial\":{},\"issuer\":{},\"not_before\":{},\"not_after\":{},\"renewal_failing_since\":{failing_since},\"renewal_error\":{error}}}\n",
                        json_string(&current.identity),
                        json_string(&current.info.serial),
                        json_string(&current.info.issuer),
                        secs(current.info.not_before),
                        secs(current.info.not_after),
                    );
                    let mut rsp = text(StatusCode::OK, json);
                    rsp.headers_mut()
                        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                    rsp
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "this proxy has no identity (no `identity` in its configuration)\n".into(),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live, /config, /identity or /tap\n".into(),
            ),
        }
    }
}

impl Admin {
    fn tap_stream(&self, query: &str) -> Response<AdminBody> {
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')).map(str::to_string))
        };
        let limit = match param("limit").map(|l| l.parse::<usize>()) {
            None => 100,
            Some(Ok(n)) if (1..=100_000).contains(&n) => n,
            Some(_) => return text(StatusCode::BAD_REQUEST, "limit must be 1-100000\n".into()),
        };
        let target = param("target");
        let direction = param("direction");
        let watch = self.tap.watch();
        let events = futures_util::stream::unfold((watch, limit), move |(mut watch, left)| {
            let (target, direction) = (target.clone(), direction.clone());
            async move {
                if left == 0 {
                    return None;
                }
                loop {
                    match watch.rx.recv().await {
                        Ok(e) => {
                            if target.as_deref().is_some_and(|t| t != e.target.as_str())
                                || direction.as_deref().is_some_and(|d| d != e.direction)
                            {
                                continue;
                            }
                            return Some((Ok(Frame::data(Bytes::from(e.to_json()))), (watch, left - 1)));
                        }
                        Err(RecvError::Lagged(n)) => {
                            let line = format!("{{\"dropped\":{n}}}\n");
                            return Some((Ok(Frame::data(Bytes::from(line))), (watch, left)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        let mut rsp = Response::new(BoxBody::new(StreamBody::new(events)));
        rsp.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
        rsp
    }
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut rsp = Response::new(BoxBody::new(Full::new(Bytes::from(body))));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    rsp
}
