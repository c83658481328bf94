//! The request path: from a request accepted by the server to a response from an endpoint.
//!
//! Each request is balanced on its own (HTTP/2 connections from an app are not pinned to
//! one endpoint). A request to another Tarmac proxy always travels over the endpoint's
//! shared HTTP/2 connection; one that arrived as HTTP/1 is marked with `tarmac-orig-proto`
//! so the proxy on the other side restores HTTP/1 for its app.

use super::metered::{Metered, TapRecord};
use super::{Body, CLIENT_ID, ORIG_PROTO, error_response, is_grpc, strip_hop_by_hop, upgrade};
use crate::balance;
use crate::endpoint::{ConnectError, Endpoint, EndpointSpec};
use crate::metrics::{Direction, Peer, RouteLabel, TargetMetrics};
use crate::route::RouteSlot;
use crate::tap::{Tap, TapStart};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Where the requests of one target go.
#[derive(Debug)]
pub enum Destination {
    /// A service: each request goes to one of its endpoints, chosen by [`balance::p2c`].
    Balanced(Balancer),
    /// One address: the local app, or a destination outside the mesh.
    Fixed(Arc<Endpoint>),
}

/// A service's endpoints, and its routes when it has any. The endpoint set is replaced
/// as a whole when discovery changes it; endpoints that stay keep their connections and
/// load statistics.
#[derive(Debug, Default)]
pub struct Balancer {
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    /// The HTTPRoutes and GRPCRoutes of the service; empty for most services.
    pub routes: RouteSlot,
}

impl Balancer {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        Self { endpoints: RwLock::new(endpoints.into()), routes: RouteSlot::default() }
    }

    pub fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the endpoint set; `make` builds endpoints not seen before.
    pub fn update(&self, specs: Vec<EndpointSpec>, make: impl Fn(EndpointSpec) -> Endpoint) {
        let current = self.endpoints();
        let next: Vec<Arc<Endpoint>> = specs
            .into_iter()
            .map(|spec| current.iter().find(|e| e.is(&spec)).cloned().unwrap_or_else(|| Arc::new(make(spec))))
            .collect();
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = next.into();
    }

    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints();
        let i = balance::p2c(&endpoints, |e| &e.ewma)?;
        Some(endpoints[i].clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no endpoints for {0}")]
    NoEndpoints(Arc<String>),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("request to {addr} failed: {source}")]
    Upstream { addr: SocketAddr, source: hyper::Error },
    #[error("request has no authority: send a Host header")]
    NoAuthority,
    #[error("invalid request target: {0}")]
    BadUri(String),
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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(ConnectError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_) | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::NoAuthority | ProxyError::BadUri(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_) | ProxyError::BackendNotFound(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::FaultAbort(status) => *status,
            ProxyError::FaultUnresolved(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `kind` label of `tarmac_proxy_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoEndpoints(_) => "no_endpoints",
            ProxyError::Connect(ConnectError::Timeout { .. }) => "connect_timeout",
            ProxyError::Connect(ConnectError::Tls { .. }) => "tls",
            ProxyError::Connect(_) => "connect",
            ProxyError::Upstream { .. } => "upstream",
            ProxyError::NoAuthority | ProxyError::BadUri(_) => "bad_request",
            ProxyError::NoRoute => "no_route",
            ProxyError::NoBackend(_) | ProxyError::BackendNotFound(_) => "no_backend",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::FaultAbort(_) => "fault",
            ProxyError::FaultUnresolved(_) => "bad_filter",
        }
    }
}

/// Forwards the requests of one target (an outbound service, or the inbound app).
#[derive(Debug)]
pub struct Forward {
    pub direction: Direction,
    pub name: Arc<String>,
    pub metrics: Arc<TargetMetrics>,
    pub destination: Destination,
    pub tap: Arc<Tap>,
    /// Who the requests come from (inbound) as far as the connection proves it.
    pub peer: Peer,
}

impl Forward {
    /// Handles one request; failures become responses, never dropped connections.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        source: Option<SocketAddr>,
    ) -> Response<Metered> {
        let started = Instant::now();
        self.metrics.request();
        if self.direction == Direction::Inbound {
            set_client_id(req.headers_mut(), &self.peer);
        }
        let grpc = is_grpc(req.headers());
        let client_version = req.version();
        let tap = self.tap.is_watched().then(|| {
            Box::new(TapRecord {
                tap: self.tap.clone(),
                start: TapStart {
                    method: req.method().to_string(),
                    authority: authority(&req).map(|a| a.to_string()).unwrap_or_default(),
                    path: req.uri().path().to_string(),
                    source,
                    client_id: match &self.peer {
                        Peer::Authenticated(id) => Some(id.clone()),
                        _ => None,
                    },
                    started,
                },
                direction: self.direction.as_str(),
                target: self.name.clone(),
            })
        });
        let rsp = match self.proxy(req).await {
            Ok(rsp) => rsp,
            Err(e) => {
                self.metrics.error(e.kind());
                tracing::info!(direction = self.direction.as_str(), target = %self.name, error = %e, "request failed");
                error_response(e.status(), grpc, &e.to_string())
            }
        };
        let (mut parts, body) = rsp.into_parts();
        parts.version = client_version;
        // A response from an mTLS endpoint is counted under the identity it proved.
        let metrics = parts.extensions.remove::<PeerMetrics>().map_or_else(|| self.metrics.clone(), |m| m.0);
        metrics.latency(started.elapsed().as_secs_f64());
        // A routed request's response says which named rule took it (see `route::serve`).
        let route = parts.extensions.remove::<RouteLabel>().unwrap_or_default();
        let body = Metered::new(body, metrics, route, parts.status, &parts.headers, grpc, tap);
        Response::from_parts(parts, body)
    }

    pub fn pick(&self) -> Result<Arc<Endpoint>, ProxyError> {
        match &self.destination {
            Destination::Fixed(endpoint) => Ok(endpoint.clone()),
            Destination::Balanced(balancer) => {
                balancer.pick().ok_or_else(|| ProxyError::NoEndpoints(self.name.clone()))
            }
        }
    }

    async fn proxy(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
        // Routes come first: they apply to tunnels (WebSocket, CONNECT) too. Both paths
        // are boxed: their state is large, and inline it would be moved (copied) with
        // every request's future, routed or not.
        if let Destination::Balanced(balancer) = &self.destination
            && let Some(table) = balancer.routes.get()
        {
            return Box::pin(self.routed(table, req)).await;
        }
        if upgrade::is_tunnel(&req) {
            return Box::pin(upgrade::forward(self, req)).await;
        }
        let endpoint = self.pick()?;
        self.send(req.map(Body::from), endpoint).await
    }

    /// Sends a request to `endpoint`, adapting it to the protocol the hop speaks.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        endpoint: Arc<Endpoint>,
    ) -> Result<Response<Body>, ProxyError> {
        // Only a proxy may set the marker: on the way out an app's copy is dropped.
        let was_h1 = req.headers_mut().remove(ORIG_PROTO).is_some() && self.direction == Direction::Inbound;
        // Counted from the pick, so that concurrent picks see each other even while the
        // first of them is still connecting.
        let in_flight = endpoint.ewma.start();
        strip_hop_by_hop(req.headers_mut(), false);
        let authority = authority(&req)?;
        let to_h2 = endpoint.meshed || (req.version() == Version::HTTP_2 && !was_h1);
        if to_h2 {
            if req.version() != Version::HTTP_2 {
                req.headers_mut().insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
            }
            *req.version_mut() = Version::HTTP_2;
            set_absolute_uri(&mut req, authority)?;
            req.headers_mut().remove(header::HOST);
            let mut req = Some(req);
            let mut in_flight = Some(in_flight);
            // A connection that closed under us is replaced once; the request was not sent.
            for attempt in 0..2 {
                let mut sender = endpoint.h2_sender().await?;
                match sender.try_send_request(req.take().expect("request")).await {
                    Ok(mut rsp) => {
                        if let Some(f) = in_flight.take() {
                            f.complete();
                        }
                        strip_hop_by_hop(rsp.headers_mut(), false);
                        if let Some(metrics) = &endpoint.peer_metrics {
                            rsp.extensions_mut().insert(PeerMetrics(metrics.clone()));
                        }
                        return Ok(rsp.map(Body::from));
                    }
                    Err(e) => req = Some(unsent(attempt, e, endpoint.addr)?),
                }
            }
            unreachable!("the second attempt returns")
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
            let mut req = Some(req);
            let mut in_flight = Some(in_flight);
            for attempt in 0..2 {
                let mut sender = endpoint.h1_sender().await?;
                match sender.try_send_request(req.take().expect("request")).await {
                    Ok(rsp) => {
                        if let Some(f) = in_flight.take() {
                            f.complete();
                        }
                        let (mut parts, body) = rsp.into_parts();
                        strip_hop_by_hop(&mut parts.headers, false);
                        let body = Body::Pooled { body: endpoint.pooled_body(body, sender) };
                        return Ok(Response::from_parts(parts, body));
                    }
                    Err(e) => req = Some(unsent(attempt, e, endpoint.addr)?),
                }
            }
            unreachable!("the second attempt returns")
        }
    }
}

/// Response metrics of the endpoint that answered, when they carry its identity.
#[derive(Clone, Debug)]
struct PeerMetrics(Arc<TargetMetrics>);

/// Replaces any client-sent identity header with the one the connection proved.
fn set_client_id(headers: &mut http::HeaderMap, peer: &Peer) {
    headers.remove(CLIENT_ID);
    if let Peer::Authenticated(id) = peer
        && let Ok(value) = HeaderValue::from_str(id)
    {
        headers.insert(CLIENT_ID, value);
    }
}

/// After a failed send on the first attempt: the request, if it never left and may be
/// sent again on a new connection. Otherwise the failure.
fn unsent(
    attempt: usize,
    mut e: TrySendError<Request<Body>>,
    addr: SocketAddr,
) -> Result<Request<Body>, ProxyError> {
    match e.take_message() {
        Some(req) if attempt == 0 => {
            tracing::debug!(%addr, error = %e.error(), "connection closed before the request was sent; reconnecting");
            Ok(req)
        }
        _ => Err(ProxyError::Upstream { addr, source: e.into_error() }),
    }
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

fn set_absolute_uri<B>(req: &mut Request<B>, authority: Authority) -> Result<(), ProxyError> {
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
