//! The routed request path: the rule a request takes, the rule's request stages, a
//! backend by weight, the backendRef's stages, the tries, then the response stages of the
//! backendRef and of the rule. Failures the Gateway API assigns a status become
//! [`ProxyError`]s with that status: no matching rule 404, a missing backend 500, a
//! timeout 504.
//!
//! Stages are the filters the route compiled (see [`tarmac_route::RequestFilter`]), run in
//! order; a stage may answer the request itself (a CORS preflight, a redirect), fail it (a
//! fault), change it, or copy it (a mirror). Tunnels take the same path to their backend
//! and are never mirrored: a copy of a tunnel would be a second conversation.

use super::logical::{Logical, NO_RULE};
use crate::backend::{Backend, Hop};
use crate::error::ProxyError;
use crate::http::handle::failure;
use crate::http::{Body, authority, is_grpc, upgrade};
use crate::metrics::RouteLabel;
use crate::resilience::deadline::{Deadline, within};
use crate::resilience::retry::Tries;
use crate::telemetry::Matched;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tarmac_route::filters::{Fault, Mirror, Redirect, Rewrite, path_and_query, split_host_port};
use tarmac_route::{RequestFilter, ResponseFilter, RouteTable, Rule, Target};

/// Requests whose body is larger (or of unknown length) are not mirrored: a copy would
/// have to be buffered before the request could go on.
const MIRROR_MAX_BODY: u64 = 64 * 1024;
/// Mirrored copies in flight at once, the whole proxy together: past it a request is not
/// mirrored (a mirror is a copy for testing; it must never hold the proxy's memory or
/// connections when its backend is slow).
const MIRRORS_IN_FLIGHT: usize = 1024;
static MIRRORS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MIRRORS_IN_FLIGHT);
/// A mirrored copy, response included, gives up after this long.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A service's compiled routes, with their backends by `namespace/name:port` so that the
/// next update reuses them (their endpoints keep connections and statistics).
#[derive(Debug)]
pub struct Routes {
    pub table: RouteTable<Arc<Backend>>,
    pub backends: HashMap<String, Arc<Backend>>,
}

/// What a request carries through the stages of its rule.
struct Cx<'a> {
    svc: &'a Logical,
    table: &'a RouteTable<Arc<Backend>>,
    rule: &'a Rule<Arc<Backend>>,
    /// The prefix the match took, for `ReplacePrefixMatch`.
    prefix: &'a str,
    tunnel: bool,
    /// The request's `Origin`, kept by a CORS stage for the response's CORS headers.
    origin: Option<HeaderValue>,
    deadline: Option<Deadline>,
}

/// How a request stage leaves the request.
enum Flow {
    Next,
    /// The stage answered; the response stages still apply.
    Answer(Response<Body>),
    /// The stage answered with a response of its own kind (a CORS preflight's), as is.
    Done(Response<Body>),
}

/// Serves one request through `routes`.
pub async fn serve(
    svc: &Logical,
    routes: Arc<Routes>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let meta = crate::http::handle::Handle::meta(svc);
    let table = &routes.table;
    if let Some(path) = tarmac_route::path::normalize(req.uri().path()) {
        set_path(&mut req, &path)?;
    }
    let Some((rule, matched)) =
        table.select(req.method(), req.uri().path(), req.uri().query(), req.headers())
    else {
        meta.metrics.route_response(&NO_RULE, &NO_RULE, 404);
        meta.metrics.route_latency(&NO_RULE, &NO_RULE, started.elapsed().as_secs_f64());
        return Err(ProxyError::NoRoute);
    };
    let grpc = is_grpc(req.headers());
    let deadline = Deadline::of(rule.request_timeout, req.headers());
    let cx = Cx {
        svc,
        table,
        rule,
        prefix: matched.matched_prefix(),
        tunnel: upgrade::is_tunnel(&req),
        origin: None,
        deadline,
    };
    // The deadline covers the stages too: a fault's delay counts against it.
    let result = within(deadline, cx.through(req.map(Body::from), grpc)).await;
    // Failures of a rule become responses here, so that they too carry the rule's name
    // to the response metrics (`route` label).
    let mut rsp = result.unwrap_or_else(|e| failure(meta, &e, grpc));
    meta.metrics.route_response(&rule.route, &rule.rule, rsp.status().as_u16());
    meta.metrics.route_latency(&rule.route, &rule.rule, started.elapsed().as_secs_f64());
    if rule.name.is_some() {
        rsp.extensions_mut().insert(RouteLabel(rule.name.clone()));
    }
    // For spans and access logs; one atomic load when they are off.
    if meta.telemetry.is_on() {
        rsp.extensions_mut().insert(Matched { route: rule.route.clone(), rule: rule.rule.clone() });
    }
    Ok(rsp)
}

/// Replaces the request's path, keeping its query.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), ProxyError> {
    let pq = path_and_query(path, req.uri().query()).map_err(|e| ProxyError::BadUri(e.to_string()))?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::BadUri(e.to_string()))?;
    Ok(())
}

impl Cx<'_> {
    async fn through(mut self, mut req: Request<Body>, grpc: bool) -> Result<Response<Body>, ProxyError> {
        let rule = self.rule;
        match self.request_stages(&rule.filters.request, &mut req).await? {
            Flow::Next => {}
            Flow::Answer(mut rsp) => {
                self.response_stages(&rule.filters.response, &mut rsp);
                return Ok(rsp);
            }
            Flow::Done(rsp) => return Ok(rsp),
        }
        let backend = rule.pick().ok_or_else(|| ProxyError::NoBackend(rule.route.clone()))?;
        let mut rsp = match self.request_stages(&backend.filters.request, &mut req).await? {
            Flow::Next => {
                let target = match &backend.target {
                    Target::Parent => &self.svc.backend,
                    Target::Service(b) => b,
                    Target::Missing => return Err(ProxyError::BackendNotFound(backend.name.clone())),
                };
                let svc = self.svc;
                svc.budget.deposit();
                Tries {
                    backend: target,
                    hop: Hop { tunnel: self.tunnel, restore_h1: false },
                    policy: rule.retry.as_ref(),
                    per_try_timeout: rule.backend_timeout,
                    // Enforced around the whole rule; the tries only pass it on.
                    deadline: self.deadline,
                    budget: &svc.budget,
                    grpc,
                    metrics: &crate::http::handle::Handle::meta(svc).metrics,
                    route: &rule.route,
                    rule: &rule.rule,
                }
                .run(req)
                .await?
            }
            Flow::Answer(rsp) => rsp,
            Flow::Done(rsp) => return Ok(rsp),
        };
        self.response_stages(&backend.filters.response, &mut rsp);
        self.response_stages(&rule.filters.response, &mut rsp);
        Ok(rsp)
    }

    async fn request_stages(
        &mut self,
        stages: &[RequestFilter<Arc<Backend>>],
        req: &mut Request<Body>,
    ) -> Result<Flow, ProxyError> {
        for stage in stages {
            match stage {
                RequestFilter::Cors(cors) => {
                    if let Some(headers) = cors.preflight(req.method(), req.headers()) {
                        let mut rsp = Response::new(Body::empty());
                        *rsp.headers_mut() = headers;
                        return Ok(Flow::Done(rsp));
                    }
                    self.origin = req.headers().get(header::ORIGIN).cloned();
                }
                RequestFilter::Fault(fault) => inject(fault, &self.rule.route, req).await?,
                RequestFilter::Redirect(redirect) => return Ok(Flow::Answer(self.redirect(redirect, req)?)),
                RequestFilter::Headers(m) => m.apply(req.headers_mut()),
                RequestFilter::Rewrite(rewrite) => self.rewrite(rewrite, req)?,
                RequestFilter::Mirror(mirror) if !self.tunnel => mirror_copy(mirror, req).await?,
                RequestFilter::Mirror(_) => {}
            }
        }
        Ok(Flow::Next)
    }

    fn response_stages(&self, stages: &[ResponseFilter], rsp: &mut Response<Body>) {
        for stage in stages {
            match stage {
                ResponseFilter::Headers(m) => m.apply(rsp.headers_mut()),
                ResponseFilter::Cors(cors) => {
                    if let Some(origin) = &self.origin {
                        cors.decorate(origin, rsp.headers_mut());
                    }
                }
            }
        }
    }

    fn redirect(&self, redirect: &Redirect, req: &Request<Body>) -> Result<Response<Body>, ProxyError> {
        let host = authority(req)?;
        let scheme = req.uri().scheme_str().unwrap_or("http");
        let location = redirect.location(
            scheme,
            host.as_str(),
            self.table.service_port,
            req.uri().path(),
            req.uri().query(),
            self.prefix,
        );
        let mut rsp = Response::new(Body::empty());
        *rsp.status_mut() = redirect.status;
        let location = HeaderValue::from_str(&location).map_err(|e| ProxyError::BadUri(e.to_string()))?;
        rsp.headers_mut().insert(header::LOCATION, location);
        Ok(rsp)
    }

    fn rewrite(&self, rewrite: &Rewrite, req: &mut Request<Body>) -> Result<(), ProxyError> {
        // A CONNECT's target is an authority: it has no path to rewrite.
        if let Some(path) = &rewrite.path
            && req.method() != http::Method::CONNECT
        {
            let new_path = path.apply(req.uri().path(), self.prefix);
            set_path(req, &new_path)?;
        }
        if let Some(host) = &rewrite.hostname {
            // The port the request was addressed to stays.
            let old = authority(req).ok();
            let port = old.as_ref().and_then(|a| split_host_port(a.as_str()).1);
            let new = match port {
                Some(p) => format!("{}:{p}", host.to_str().unwrap_or_default()),
                None => host.to_str().unwrap_or_default().to_string(),
            };
            let value = HeaderValue::from_str(&new).map_err(|e| ProxyError::BadUri(e.to_string()))?;
            if req.uri().authority().is_some() {
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.authority =
                    Some(Authority::try_from(new.as_str()).map_err(|e| ProxyError::BadUri(e.to_string()))?);
                *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::BadUri(e.to_string()))?;
            }
            req.headers_mut().insert(header::HOST, value);
        }
        Ok(())
    }
}

/// Applies a FaultInjection: waits, and/or fails the request, as drawn.
async fn inject(fault: &Fault, route: &Arc<String>, req: &Request<Body>) -> Result<(), ProxyError> {
    if fault.unresolved {
        return Err(ProxyError::FaultUnresolved(route.clone()));
    }
    let (delay, abort) = fault.draw(req.method(), req.headers());
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match abort {
        Some(status) => Err(ProxyError::FaultAbort(status)),
        None => Ok(()),
    }
}

/// Sends a copy of `req` to the mirror's backend when this request is drawn, in the
/// background, bounded in number and time: the copy's response is read and discarded,
/// and its failure only logged. A small
/// body is read first (and the request goes on with the copy); a large or unsized one is
/// not mirrored.
async fn mirror_copy(mirror: &Mirror<Arc<Backend>>, req: &mut Request<Body>) -> Result<(), ProxyError> {
    let Target::Service(backend) = &mirror.target else { return Ok(()) };
    if !mirror.wanted() {
        return Ok(());
    }
    let Ok(permit) = MIRRORS.try_acquire() else {
        tracing::debug!(backend = %backend.name, "not mirrored: {MIRRORS_IN_FLIGHT} mirrored requests in flight");
        return Ok(());
    };
    let body = req.body();
    let bytes = if body.is_end_stream() {
        bytes::Bytes::new()
    } else if body.size_hint().upper().is_some_and(|n| n <= MIRROR_MAX_BODY) {
        let body = std::mem::replace(req.body_mut(), Body::empty());
        body.collect().await.map_err(ProxyError::RequestBody)?.to_bytes()
    } else {
        return Ok(());
    };
    *req.body_mut() = Body::text(bytes.clone());
    let mut copy = Request::new(Body::text(bytes));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    let backend = backend.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let copied = tokio::time::timeout(MIRROR_TIMEOUT, async {
            match backend.dispatch(copy, Hop::default()).await {
                // Read to its end (so the connection can be reused) without keeping it.
                Ok(rsp) => {
                    let mut body = rsp.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                }
                Err(e) => {
                    tracing::debug!(backend = %backend.name, error = %e.error, "mirrored request failed")
                }
            }
        });
        if copied.await.is_err() {
            tracing::debug!(backend = %backend.name, "mirrored request timed out after {MIRROR_TIMEOUT:?}");
        }
    });
    Ok(())
}
