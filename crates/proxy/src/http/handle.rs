//! What every request goes through, inbound or outbound, around the direction's own
//! stages: counted, tapped when someone watches, failures turned into responses (never
//! dropped connections), the response's version set back to the client's, and its body
//! metered to its end.

use super::metered::{Metered, TapRecord};
use super::{Body, authority, error_response, is_grpc, upgrade};
use crate::backend::Backend;
use crate::endpoint::send::PeerMetrics;
use crate::error::ProxyError;
use crate::metrics::{Direction, Peer, RouteLabel, TargetMetrics};
use crate::tap::{DecidedBy, Tap, TapStart};
use crate::telemetry::{Matched, Retries, Telemetry};
use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What a handler's requests are called in metrics, logs and tap.
#[derive(Debug)]
pub struct Meta {
    pub direction: Direction,
    pub name: Arc<String>,
    pub metrics: Arc<TargetMetrics>,
    pub tap: Arc<Tap>,
    /// Who the requests come from (inbound) as far as the connection proves it.
    pub peer: Peer,
    /// Tracing and access logs: absent from the path unless on.
    pub telemetry: Arc<Telemetry>,
}

/// A direction's request path: the inbound app's, or an outbound logical service's.
pub trait Handle: Send + Sync + 'static {
    fn meta(&self) -> &Meta;

    /// Where opaque TCP connections of this target go.
    fn backend(&self) -> &Backend;

    /// The direction's stages, from the request as the server read it (on a connection
    /// from `source`) to a response.
    fn call(
        &self,
        req: Request<Incoming>,
        source: Option<SocketAddr>,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send;

    /// Whether a connection from `source` that is not HTTP may go to [`Self::backend`];
    /// refused, it is closed.
    fn admit_connection(&self, _source: Option<SocketAddr>) -> bool {
        true
    }
}

/// Serves one request through `handler`.
pub async fn respond<H: Handle>(
    handler: Arc<H>,
    mut req: Request<Incoming>,
    source: Option<SocketAddr>,
) -> Response<Metered> {
    let started = Instant::now();
    let meta = handler.meta();
    meta.metrics.request();
    let grpc = is_grpc(req.headers());
    let client_version = req.version();
    let extended = upgrade::from_extended_connect(&mut req);
    // One atomic load when tracing and access logs are off.
    let mut record = match meta.telemetry.get() {
        Some(stage) => stage.begin(&mut req, meta.direction, &meta.name, &meta.peer, source, started),
        None => None,
    };
    let mut tap = meta.tap.is_watched().then(|| {
        Box::new(TapRecord {
            tap: meta.tap.clone(),
            start: TapStart {
                method: req.method().to_string(),
                authority: authority(&req).map(|a| a.to_string()).unwrap_or_default(),
                path: req.uri().path().to_string(),
                source,
                client_id: match &meta.peer {
                    Peer::Authenticated(id) => Some(id.clone()),
                    _ => None,
                },
                started,
                policy: None,
                trace_id: record.as_ref().and_then(|r| r.trace_id()),
            },
            direction: meta.direction.as_str(),
            target: meta.name.clone(),
        })
    });
    let rsp = match extended {
        Ok(extended) => handler
            .call(req, source)
            .await
            .and_then(|rsp| if extended { upgrade::to_extended_connect(rsp) } else { Ok(rsp) }),
        Err(e) => Err(e),
    };
    let rsp = rsp.unwrap_or_else(|e| failure(meta, &e, grpc));
    let (mut parts, body) = rsp.into_parts();
    parts.version = client_version;
    // A response from an mTLS endpoint is counted under the identity it proved.
    let metrics = parts.extensions.remove::<PeerMetrics>().map_or_else(|| meta.metrics.clone(), |m| m.0);
    metrics.latency(started.elapsed().as_secs_f64());
    if let Some(record) = record.as_mut() {
        if let Peer::Authenticated(id) = metrics.peer() {
            record.server_id = Some(id.clone());
        }
        record.route = parts.extensions.remove::<Matched>();
        record.retries = parts.extensions.remove::<Retries>().map_or(0, |r| r.0);
    }
    // A routed request's response says which named rule took it.
    let route = parts.extensions.remove::<RouteLabel>().unwrap_or_default();
    if let Some(decided) = parts.extensions.remove::<DecidedBy>()
        && let Some(record) = tap.as_mut()
    {
        record.start.policy = Some(decided);
    }
    let body = Metered::new(body, metrics, route, parts.status, &parts.headers, grpc, tap, record);
    Response::from_parts(parts, body)
}

/// The response for a failure, counted and logged.
pub fn failure(meta: &Meta, e: &ProxyError, grpc: bool) -> Response<Body> {
    meta.metrics.error(e.kind());
    tracing::info!(direction = meta.direction.as_str(), target = %meta.name, error = %e, "request failed");
    let mut rsp = error_response(e.status(), grpc.then(|| e.grpc_status()), &e.to_string());
    if let ProxyError::RateLimited { retry_after, .. } = e {
        // Whole seconds, rounded up: a client that waits that long finds room.
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        rsp.headers_mut().insert(http::header::RETRY_AFTER, seconds.max(1).into());
    }
    if let Some(policy) = e.policy() {
        rsp.extensions_mut().insert(DecidedBy { policy: policy.clone(), audit: false });
    }
    rsp
}
