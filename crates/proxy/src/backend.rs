//! A backend: a set of endpoints that serve one Service port (or one fixed address), and
//! the one place where a request is given to an endpoint.
//!
//! [`Backend::dispatch`] picks an endpoint ([`balance::p2c`]) and sends one try to it. The
//! unrouted request, every routed request, every mirror copy and every retry go through
//! it, so that what belongs to a backend (its endpoints' load, and the resilience state of
//! later stages) sees all of its traffic. The endpoint set is replaced as a whole when
//! discovery changes it; endpoints that stay keep their connections and load statistics.
//!
//! Each try's outcome is recorded on its endpoint at the response head: failures in a row
//! eject it from the balancer for a while ([`crate::resilience::breaker`]), and a 429 or
//! `RESOURCE_EXHAUSTED` sets it aside for a moment, as a failed connect does.

use crate::balance::{self, Eligible};
use crate::endpoint::send::SendError;
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::error::{Class, ProxyError};
use crate::http::Body;
use crate::metrics::TargetMetrics;
use crate::resilience::breaker::{Availability, BreakerConfig, Outcome};
use crate::resilience::limit::{Full, Limit, LimitConfig};
use crate::swap::Swap;
use http::header::HeaderName;
use http::{Request, Response, StatusCode};
use std::sync::{Arc, RwLock};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

#[derive(Debug)]
pub struct Backend {
    /// What errors and logs call it: a Service (`namespace/name:port` for route backends)
    /// or an address.
    pub name: Arc<String>,
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    /// Read when a try fails; a ResiliencePolicy may change it at any time.
    breaker: RwLock<BreakerConfig>,
    /// At most so many requests in flight and queued; most backends have none.
    limit: Swap<Limit>,
    /// Where ejections are counted; `None` for backends no one watches (tests).
    metrics: Option<TargetMetrics>,
}

/// How a try travels.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hop {
    /// An `Upgrade` or `CONNECT`: spliced once the endpoint agrees.
    pub tunnel: bool,
    /// The request came from another proxy as HTTP/1 over HTTP/2; it goes on as HTTP/1.
    pub restore_h1: bool,
}

impl Backend {
    pub fn new(name: Arc<String>, endpoints: Vec<Arc<Endpoint>>) -> Self {
        Self {
            name,
            endpoints: RwLock::new(endpoints.into()),
            breaker: RwLock::new(BreakerConfig::default()),
            limit: Swap::default(),
            metrics: None,
        }
    }

    /// Counts this backend's ejections in `metrics`.
    pub fn counted_in(mut self, metrics: &TargetMetrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Sets or removes the concurrency limit. An unchanged limit keeps its places (and the
    /// requests holding them); a changed one starts afresh.
    pub fn set_limit(&self, config: Option<LimitConfig>) {
        if self.limit.get().map(|l| l.config) != config {
            self.limit.set(config.map(Limit::new));
        }
    }

    pub fn set_breaker(&self, breaker: BreakerConfig) {
        *self.breaker.write().unwrap_or_else(|e| e.into_inner()) = breaker;
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

    /// An endpoint for the next request: by power of two choices among those not
    /// ejected, an ejected one whose probe is due first.
    pub fn pick(&self) -> Result<Arc<Endpoint>, ProxyError> {
        let endpoints = self.endpoints();
        let eligible = |e: &Arc<Endpoint>| match e.accrual.availability() {
            Availability::In => Eligible::Yes,
            Availability::Ejected => Eligible::No,
            Availability::Probe if e.accrual.claim_probe() => Eligible::Now,
            Availability::Probe => Eligible::No,
        };
        let i = balance::p2c(&endpoints, |e| &e.ewma, eligible)
            .ok_or_else(|| ProxyError::NoEndpoints(self.name.clone()))?;
        Ok(endpoints[i].clone())
    }

    /// Records what a try of `endpoint` came to.
    fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        if outcome == Outcome::Success && !endpoint.accrual.is_ejected() {
            // The common case, kept to the accrual's own atomics.
            endpoint.accrual.record_success();
            return;
        }
        let breaker = *self.breaker.read().unwrap_or_else(|e| e.into_inner());
        let may_eject = || {
            let endpoints = self.endpoints();
            let ejected = endpoints.iter().filter(|e| e.accrual.is_ejected()).count();
            (ejected + 1) as f64 <= endpoints.len() as f64 * breaker.max_ejected_share
        };
        if endpoint.accrual.record(outcome, &breaker, may_eject) {
            if let Some(metrics) = &self.metrics {
                metrics.ejection();
            }
            tracing::warn!(backend = %self.name, endpoint = %endpoint.addr, "endpoint ejected after failing requests in a row");
        }
    }

    /// One try: picks an endpoint and sends `req` to it. A request that never left comes
    /// back in the error.
    pub async fn dispatch(&self, req: Request<Body>, hop: Hop) -> Result<Response<Body>, SendError> {
        // Held to the response head.
        let _place = match self.limit.get() {
            None => None,
            Some(limit) => match limit.acquire().await {
                Ok(place) => Some(place),
                Err(Full) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.error("overloaded");
                    }
                    let (max_in_flight, max_queued) = (limit.config.max_in_flight, limit.config.max_queued);
                    let error =
                        ProxyError::Overloaded { backend: self.name.clone(), max_in_flight, max_queued };
                    return Err(SendError::unsent(error, req));
                }
            },
        };
        let endpoint = match self.pick() {
            Ok(endpoint) => endpoint,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        // Tunnels are rare and their state large: boxed, it stays out of every request's
        // future.
        let result = if hop.tunnel {
            Box::pin(endpoint.tunnel(req)).await
        } else {
            endpoint.send(req, hop.restore_h1).await
        };
        match &result {
            Ok(rsp) => {
                // Read once, for both: the response's failure and its overload.
                let grpc_status = rsp.headers().get(GRPC_STATUS).map(|v| v.as_bytes());
                if rsp.status() == StatusCode::TOO_MANY_REQUESTS || grpc_status == Some(b"8") {
                    // Set aside for a moment rather than ejected: it is alive, only busy.
                    endpoint.ewma.mark_failed();
                }
                self.record(&endpoint, Outcome::of_response(rsp.status(), grpc_status));
            }
            Err(e) if e.error.class() != Class::Final => self.record(&endpoint, Outcome::Failure),
            Err(_) => {}
        }
        result
    }
}
