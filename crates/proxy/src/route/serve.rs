//! The routed request path: match, filter, pick a backend by weight, forward, filter the
//! response. Failures that the Gateway API assigns a status become [`ProxyError`]s with
//! that status: no matching rule 404, a missing backend 500, a timeout 504.
//!
//! Tunnels (WebSocket and other upgrades, CONNECT) take the same path up to the endpoint
//! (matching, filters, redirects, rewrites, weights, the errors above; response header
//! modifiers apply to the `101`) and are then spliced by [`upgrade::tunnel`]. They are
//! never mirrored: a copy of a tunnel would be a second conversation with side effects.

use super::filters::{Fault, Mirror, path_and_query, split_host_port};
use super::{RouteTable, Rule, Target};
use crate::http::forward::{Forward, ProxyError, authority};
use crate::http::{Body, error_response, is_grpc, upgrade};
use http::header::{self, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// The `route` and `rule` labels of requests no rule matched.
static NO_RULE: LazyLock<Arc<String>> = LazyLock::new(Arc::default);

/// Requests whose body is larger (or of unknown length) are not mirrored: a copy would
/// have to be buffered before the request could go on.
const MIRROR_MAX_BODY: u64 = 64 * 1024;

impl Forward {
    /// Serves one request through `table`.
    pub async fn routed(
        self: &Arc<Self>,
        table: Arc<RouteTable>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let started = Instant::now();
        let path = req.uri().path();
        let query = req.uri().query();
        let Some((rule, matched)) = table.select(req.method(), path, query, req.headers()) else {
            self.metrics.route_response(&NO_RULE, &NO_RULE, 404);
            self.metrics.route_latency(&NO_RULE, &NO_RULE, started.elapsed().as_secs_f64());
            return Err(ProxyError::NoRoute);
        };
        let prefix = matched.matched_prefix();
        let grpc = is_grpc(req.headers());
        let tunnel = upgrade::is_tunnel(&req);
        let through = self.through_rule(&table, rule, prefix, tunnel, req);
        let result = match rule.request_timeout {
            Some(limit) => match tokio::time::timeout(limit, through).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::Timeout { what: "request", limit }),
            },
            None => through.await,
        };
        // Failures of a rule become responses here, so that they too carry the rule's
        // name to the response metrics (`route` label).
        let mut rsp = match result {
            Ok(rsp) => rsp,
            Err(e) => {
                self.metrics.error(e.kind());
                tracing::info!(direction = self.direction.as_str(), target = %self.name, route = %rule.route, error = %e, "request failed");
                error_response(e.status(), grpc, &e.to_string())
            }
        };
        self.metrics.route_response(&rule.route, &rule.rule, rsp.status().as_u16());
        self.metrics.route_latency(&rule.route, &rule.rule, started.elapsed().as_secs_f64());
        if rule.label.0.is_some() {
            rsp.extensions_mut().insert(rule.label.clone());
        }
        Ok(rsp)
    }

    async fn through_rule(
        self: &Arc<Self>,
        table: &RouteTable,
        rule: &Rule,
        prefix: &str,
        tunnel: bool,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let mut req = req.map(Body::from);
        // CORS decorates the response from the request's Origin: keep just that.
        let cors_request = rule.filters.cors.as_ref().map(|_| {
            req.headers()
                .get(header::ORIGIN)
                .map(|o| (header::ORIGIN, o.clone()))
                .into_iter()
                .collect::<http::HeaderMap>()
        });
        if let Some(cors) = &rule.filters.cors
            && let Some(headers) = cors.preflight(req.method(), req.headers())
        {
            let mut rsp = Response::new(Body::empty());
            *rsp.headers_mut() = headers;
            return Ok(rsp);
        }
        if let Some(fault) = &rule.filters.fault {
            inject(fault, rule, &req).await?;
        }
        if let Some(redirect) = &rule.filters.redirect {
            let host = authority(&req)?;
            let scheme = req.uri().scheme_str().unwrap_or("http");
            let location = redirect.location(
                scheme,
                host.as_str(),
                table.service_port,
                req.uri().path(),
                req.uri().query(),
                prefix,
            );
            let mut rsp = Response::new(Body::empty());
            *rsp.status_mut() = redirect.status;
            let location = HeaderValue::from_str(&location).map_err(|e| ProxyError::BadUri(e.to_string()))?;
            rsp.headers_mut().insert(header::LOCATION, location);
            if let Some(m) = &rule.filters.response_headers {
                m.apply(rsp.headers_mut());
            }
            return Ok(rsp);
        }
        if let Some(m) = &rule.filters.request_headers {
            m.apply(req.headers_mut());
        }
        if let Some(rewrite) = &rule.filters.rewrite {
            // A CONNECT's target is an authority: it has no path to rewrite.
            if let Some(path) = &rewrite.path
                && req.method() != http::Method::CONNECT
            {
                let new_path = path.apply(req.uri().path(), prefix);
                let pq = path_and_query(&new_path, req.uri().query()).map_err(ProxyError::BadUri)?;
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.path_and_query = Some(pq);
                *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::BadUri(e.to_string()))?;
            }
            if let Some(host) = &rewrite.hostname {
                // The port the request was addressed to stays.
                let old = authority(&req).ok();
                let port = old.as_ref().and_then(|a| split_host_port(a.as_str()).1);
                let new = match port {
                    Some(p) => format!("{}:{p}", host.to_str().unwrap_or_default()),
                    None => host.to_str().unwrap_or_default().to_string(),
                };
                let value = HeaderValue::from_str(&new).map_err(|e| ProxyError::BadUri(e.to_string()))?;
                if req.uri().authority().is_some() {
                    let mut parts = std::mem::take(req.uri_mut()).into_parts();
                    parts.authority = Some(
                        Authority::try_from(new.as_str()).map_err(|e| ProxyError::BadUri(e.to_string()))?,
                    );
                    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::BadUri(e.to_string()))?;
                }
                req.headers_mut().insert(header::HOST, value);
            }
        }
        let Some(backend) = rule.pick() else {
            return Err(ProxyError::NoBackend(rule.route.clone()));
        };
        if let Some(m) = &backend.filters.request_headers {
            m.apply(req.headers_mut());
        }
        if let Some(fault) = &backend.filters.fault {
            inject(fault, rule, &req).await?;
        }
        if !tunnel && (!rule.filters.mirrors.is_empty() || !backend.filters.mirrors.is_empty()) {
            req = self.mirror(req, rule.filters.mirrors.iter().chain(&backend.filters.mirrors)).await?;
        }
        let endpoint = match &backend.target {
            Target::Parent => self.pick()?,
            Target::Service(balancer) => {
                balancer.pick().ok_or_else(|| ProxyError::NoEndpoints(backend.name.clone()))?
            }
            Target::Missing => return Err(ProxyError::BackendNotFound(backend.name.clone())),
        };
        // A tunnel's timeout ends with its response head: the spliced bytes are not timed.
        let send = async {
            if tunnel { upgrade::tunnel(self, req, endpoint).await } else { self.send(req, endpoint).await }
        };
        let mut rsp = match rule.backend_timeout {
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(result) => result?,
                Err(_) => return Err(ProxyError::Timeout { what: "backend request", limit }),
            },
            None => send.await?,
        };
        if let Some(m) = &backend.filters.response_headers {
            m.apply(rsp.headers_mut());
        }
        if let Some(m) = &rule.filters.response_headers {
            m.apply(rsp.headers_mut());
        }
        if let (Some(cors), Some(request)) = (&rule.filters.cors, &cors_request) {
            cors.decorate(request, rsp.headers_mut());
        }
        Ok(rsp)
    }

    /// Sends a copy of `req` to each mirror that draws it, in the background: the copies'
    /// responses are discarded and their failures only logged. A small body is read
    /// first (and the request goes on with the copy); a large or unsized one is not
    /// mirrored.
    async fn mirror(
        self: &Arc<Self>,
        req: Request<Body>,
        mirrors: impl Iterator<Item = &Mirror>,
    ) -> Result<Request<Body>, ProxyError> {
        let wanted: Vec<_> = mirrors
            .filter(|m| m.wanted())
            .filter_map(|m| match &m.target {
                Target::Service(balancer) => balancer.pick(),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(req);
        }
        let (parts, body) = req.into_parts();
        let bytes = if body.is_end_stream() {
            bytes::Bytes::new()
        } else if body.size_hint().upper().is_some_and(|n| n <= MIRROR_MAX_BODY) {
            match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => return Err(ProxyError::BadUri(format!("reading the request body: {e}"))),
            }
        } else {
            return Ok(Request::from_parts(parts, body));
        };
        for endpoint in wanted {
            let mut copy = Request::new(Body::text(bytes.clone()));
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.version_mut() = parts.version;
            *copy.headers_mut() = parts.headers.clone();
            let forward = self.clone();
            tokio::spawn(async move {
                let addr = endpoint.addr;
                match forward.send(copy, endpoint).await {
                    Ok(rsp) => {
                        let _ = rsp.into_body().collect().await;
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "mirrored request failed"),
                }
            });
        }
        Ok(Request::from_parts(parts, Body::text(bytes)))
    }
}

/// Applies a FaultInjection: waits, and/or fails the request, as drawn.
async fn inject(fault: &Fault, rule: &Rule, req: &Request<Body>) -> Result<(), ProxyError> {
    if fault.unresolved {
        return Err(ProxyError::FaultUnresolved(rule.route.clone()));
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
