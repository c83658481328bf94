//! A logical service: what the app called (a Service port, or an address outside the
//! mesh), with what belongs to it rather than to any one backend: its routes and its retry
//! budget.
//!
//! A request without routes goes to the service's own backend; a routed one takes its
//! rule's stages to a backend of the rule (see [`super::route`]). Either way its tries go
//! through [`Tries`], which draws every retry from the service's budget.

use super::route::{self, Routes};
use crate::backend::{Backend, Hop};
use crate::config::Protocol;
use crate::endpoint::{ConnectSettings, Endpoint, EndpointSpec};
use crate::error::ProxyError;
use crate::http::handle::{Handle, Meta};
use crate::http::{Body, ORIG_PROTO, is_grpc, upgrade};
use crate::resilience::budget::{BudgetConfig, RetryBudget};
use crate::resilience::deadline::{Deadline, within};
use crate::resilience::retry::Tries;
use crate::resilience::{ServicePolicy, Unrouted, breaker_from_pb, limit_from_pb};
use crate::swap::Swap;
use http::{Request, Response};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use tarmac_proto::discovery::{self as pb, ServiceUpdate};
use tarmac_route::RouteTable;

/// The `route` and `rule` labels of requests no rule took.
pub static NO_RULE: LazyLock<Arc<String>> = LazyLock::new(Arc::default);

#[derive(Debug)]
pub struct Logical {
    meta: Meta,
    /// The service's own endpoints: its unrouted requests, and rules without backendRefs.
    pub backend: Arc<Backend>,
    routes: Swap<Routes>,
    /// What a ResiliencePolicy says of requests no rule takes; most services have none.
    unrouted: Swap<Unrouted>,
    pub budget: RetryBudget,
    /// How its connections are handled ([`Protocol`] as a number): what discovery says
    /// (the Service port's `appProtocol`), or else the configuration's.
    protocol: AtomicU8,
    configured: Protocol,
}

impl Logical {
    pub fn new(meta: Meta, backend: Backend, configured: Protocol) -> Self {
        Self {
            meta,
            backend: Arc::new(backend),
            routes: Swap::default(),
            unrouted: Swap::default(),
            budget: RetryBudget::new(BudgetConfig::default()),
            protocol: AtomicU8::new(configured as u8),
            configured,
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Relaxed) {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            3 => Protocol::Opaque,
            _ => Protocol::Detect,
        }
    }

    fn set_protocol(&self, protocol: Protocol) {
        self.protocol.store(protocol as u8, Ordering::Relaxed);
    }

    /// Applies what discovery says of the service now: its endpoints, and its routes
    /// compiled whole (a route update that does not compile is refused whole, and the
    /// previous routes stay).
    pub fn update(&self, update: &ServiceUpdate, connect: &ConnectSettings, service_port: u16) {
        let name = &self.meta.name;
        let endpoints = endpoint_specs(&update.endpoints, name);
        tracing::info!(
            target = %name,
            generation = update.generation,
            exists = update.exists,
            endpoints = endpoints.len(),
            "endpoints updated"
        );
        self.set_protocol(match pb::Protocol::try_from(update.protocol).unwrap_or_default() {
            pb::Protocol::Detect => self.configured,
            pb::Protocol::Http1 => Protocol::Http1,
            pb::Protocol::Http2 => Protocol::Http2,
            pb::Protocol::Opaque => Protocol::Opaque,
        });
        // The Service's ResiliencePolicy: refused whole if it does not compile, as routes are.
        match ServicePolicy::from_pb(update.resilience.as_ref()) {
            Ok(policy) => {
                if self.budget.config() != policy.budget {
                    tracing::info!(target = %name, budget = ?policy.budget, "retry budget set");
                }
                self.budget.configure(policy.budget);
                self.backend.set_breaker(policy.breaker);
                self.backend.set_limit(policy.limit);
                self.unrouted.set((!policy.unrouted.is_empty()).then_some(policy.unrouted));
            }
            Err(e) => {
                tracing::warn!(target = %name, error = %e, "refusing a resilience policy; keeping the previous one")
            }
        }
        let make = |spec: EndpointSpec| Endpoint::new(spec, connect.clone(), (*self.meta.metrics).clone());
        self.backend.update(endpoints, make);
        if update.routes.is_empty() {
            if self.routes.get().is_some() {
                tracing::info!(target = %name, "routes removed");
            }
            self.routes.set(None);
            return;
        }
        let previous = self.routes.get();
        let mut backends = HashMap::new();
        let mut resolve = |b: &pb::RouteBackend| {
            let key = format!("{}/{}:{}", b.namespace, b.service, b.port);
            let backend = backends
                .get(&key)
                .or_else(|| previous.as_ref().and_then(|p| p.backends.get(&key)))
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Backend::new(Arc::new(key.clone()), Vec::new()).counted_in(&self.meta.metrics))
                });
            // Backends are meshed like the Service itself: their proxies must prove the
            // identity discovery names.
            backend.update(endpoint_specs(&b.endpoints, name), make);
            backend.set_breaker(breaker_from_pb(b.circuit_breaker.as_ref()));
            backend.set_limit(limit_from_pb(b.limit.as_ref()));
            backends.insert(key, backend.clone());
            backend
        };
        match RouteTable::build(&update.routes, service_port, &mut resolve) {
            Ok(table) => {
                tracing::info!(target = %name, routes = update.routes.len(), rules = table.rules.len(), "routes updated");
                self.routes.set(Some(Routes { table, backends }));
            }
            // The control plane validates routes; a proxy that still cannot use them keeps
            // the previous table whole rather than apply part of the new one.
            Err(e) => {
                tracing::warn!(target = %name, error = %e, "refusing a route update; keeping the previous routes")
            }
        }
    }
}

impl Handle for Logical {
    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn backend(&self) -> &Backend {
        &self.backend
    }

    async fn call(
        &self,
        mut req: Request<Incoming>,
        _source: Option<std::net::SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        // Only a proxy may set the marker: on the way out an app's copy is dropped.
        req.headers_mut().remove(ORIG_PROTO);
        // Routes come first: they apply to tunnels (WebSocket, CONNECT) too. The routed
        // path is boxed: its state is large, and inline it would be moved (copied) with
        // every request's future, routed or not.
        if let Some(routes) = self.routes.get() {
            return Box::pin(route::serve(self, routes, req)).await;
        }
        self.budget.deposit();
        let hop = Hop { tunnel: upgrade::is_tunnel(&req), restore_h1: false };
        let unrouted = self.unrouted.get();
        let unrouted = unrouted.as_deref();
        let deadline = Deadline::of(unrouted.and_then(|u| u.request_timeout), req.headers());
        let policy = unrouted.and_then(|u| u.retry.as_ref());
        let tries = Tries {
            backend: &self.backend,
            hop,
            policy,
            per_try_timeout: unrouted.and_then(|u| u.backend_timeout),
            deadline,
            budget: &self.budget,
            grpc: policy.is_some() && is_grpc(req.headers()),
            metrics: &self.meta.metrics,
            route: &NO_RULE,
            rule: &NO_RULE,
        };
        within(deadline, tries.run(req.map(Body::from))).await
    }
}

/// The endpoints of a discovery message that have a valid address.
fn endpoint_specs(endpoints: &[pb::Endpoint], target: &str) -> Vec<EndpointSpec> {
    endpoints
        .iter()
        .filter_map(|ep| match ep.address.parse() {
            Ok(addr) => Some(EndpointSpec {
                addr,
                meshed: ep.meshed,
                identity: (!ep.identity.is_empty()).then(|| ep.identity.as_str().into()),
            }),
            Err(_) => {
                tracing::warn!(target, address = %ep.address, "ignoring an endpoint with an invalid address");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Metrics, Peer};

    /// hyper keeps room for a request's whole future in every HTTP/1 connection, for as
    /// long as it lives: each byte here is a byte per idle connection. The future holds
    /// one dispatch, not two (an `async fn` around a timeout held its work twice, which
    /// cost about 4 KiB per connection).
    #[tokio::test]
    async fn a_requests_future_holds_its_dispatch_once() {
        let metrics = Arc::new(Metrics::new());
        let target = Arc::new(metrics.target(Direction::Outbound, Arc::new("svc".into()), Peer::Unlabelled));
        let meta = Meta {
            direction: Direction::Outbound,
            name: Arc::new("svc".into()),
            metrics: target,
            tap: Arc::new(crate::tap::Tap::default()),
            peer: Peer::Unlabelled,
            telemetry: Arc::new(crate::telemetry::Telemetry::new(Default::default(), metrics.clone())),
        };
        let backend = Backend::new(Arc::new("svc".into()), Vec::new());
        let logical = Arc::new(Logical::new(meta, backend, Protocol::Detect));
        let dispatch =
            std::mem::size_of_val(&logical.backend.dispatch(Request::new(Body::empty()), Hop::default()));
        // A request as the server hands it over: read from a real HTTP/1 connection.
        let (client, server) = tokio::io::duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(req);
                }
                async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) }
            });
            let io = hyper_util::rt::TokioIo::new(server);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client)).await.unwrap();
        tokio::spawn(conn);
        tokio::spawn(
            async move { sender.send_request(Request::get("/").body(Body::empty()).unwrap()).await },
        );
        let call = std::mem::size_of_val(&logical.call(rx.await.unwrap(), None));
        // The dispatch, the tries' state around it (a held body, a backoff's timer) and the
        // deadline's timer: well under two dispatches (it was more than four).
        assert!(call < 2 * dispatch + 512, "Logical::call's future is {call} bytes, a dispatch {dispatch}");
    }
}
