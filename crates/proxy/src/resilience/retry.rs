//! Tries: one request sent to a backend until it succeeds, fails for good, or may not be
//! tried again.
//!
//! A request is tried again only when that is safe and affordable:
//!
//! - **Safe.** A request that never left the proxy (a refused connect, a connection that
//!   closed before the request went out), or that an HTTP/2 peer refused unprocessed (a
//!   draining proxy's GOAWAY), comes back from [`Backend::dispatch`] and may always go
//!   again (hyper keeps a refused request with a body: it goes again only when held). One that left is tried again only under a rule's [`Retry`]
//!   policy (a status it names, a connection failure, a per-try timeout), and only when
//!   its body can be sent again whole: a body is held for replay when it is empty or of a
//!   known length up to [`MAX_REPLAY_BODY`]; one of unknown length (gRPC, chunked) is
//!   recorded as it is sent ([`super::replay`]) and may go again if it ended within that
//!   bound; a longer one is never retried (counted as denied, `body`), so that no backend
//!   ever gets part of a body twice.
//! - **Affordable.** Every retry takes one from the service's [`RetryBudget`]. When the
//!   budget is spent the caller gets the last real response, not a proxy error.
//!
//! Tunnels are retried only while unsent.

use super::budget::RetryBudget;
use super::deadline::{Deadline, Elapsed, GRPC_TIMEOUT, bounded, grpc_timeout_value};
use super::replay::{Shared, TeeBody};
use crate::backend::{Backend, Hop};
use crate::endpoint::send::SendError;
use crate::error::{Class, ProxyError};
use crate::http::Body;
use crate::metrics::TargetMetrics;
use crate::telemetry::Retries;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tarmac_route::Retry;

/// The largest request body held so that it can be sent again.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;
/// Tries of a request that never left the proxy, when no policy says otherwise: enough to
/// get past the endpoint that refused it (each refusal sets that endpoint aside).
pub const UNSENT_TRIES: u32 = 3;
/// A discarded response's body is read to its end so that its connection can be reused,
/// when it is this small and arrives this soon.
const DRAIN_MAX_BODY: u64 = 16 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a request's tries go and under which rules.
#[derive(Clone, Copy)]
pub struct Tries<'a> {
    pub backend: &'a Backend,
    pub hop: Hop,
    /// The rule's policy for requests that left; `None`: only unsent ones are retried.
    pub policy: Option<&'a Retry>,
    pub per_try_timeout: Option<Duration>,
    /// A gRPC caller's deadline: each try tells the server the time left. (The caller
    /// enforces it, around whatever else the request goes through.)
    pub deadline: Option<Deadline>,
    pub budget: &'a RetryBudget,
    pub grpc: bool,
    /// Counted under this route and rule (empty strings when unrouted).
    pub metrics: &'a TargetMetrics,
    pub route: &'a Arc<String>,
    pub rule: &'a Arc<String>,
}

/// A request that can be built again for another try.
struct Replay {
    parts: http::request::Parts,
    body: Bytes,
}

/// Where a retry's body comes from.
enum Source {
    /// Held whole before the first try.
    Whole(Replay),
    /// Recorded as the first try sent it: the head, and what went out.
    Recorded(Replay, Shared),
}

impl Source {
    /// The request again, if its body can be sent whole.
    fn request(&self) -> Option<Request<Body>> {
        match self {
            Source::Whole(replay) => Some(replay.request()),
            Source::Recorded(head, recording) => {
                let body = recording.lock().unwrap_or_else(|e| e.into_inner()).replay()?;
                Some(head.with_body(Body::text(body)))
            }
        }
    }

    fn ready(&self) -> bool {
        match self {
            Source::Whole(_) => true,
            Source::Recorded(_, recording) => {
                recording.lock().unwrap_or_else(|e| e.into_inner()).replay().is_some()
            }
        }
    }
}

impl Replay {
    fn request(&self) -> Request<Body> {
        self.with_body(Body::text(self.body.clone()))
    }

    fn with_body(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        req
    }
}

impl Tries<'_> {
    /// Sends `req` and tries again as allowed.
    pub async fn run(self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let (replay, mut next) = match self.policy {
            Some(_) if !self.hop.tunnel => match hold(req).await? {
                Held::Whole(replay) => (Some(Source::Whole(replay)), None),
                Held::Recorded(first, head, recording) => {
                    (Some(Source::Recorded(head, recording)), Some(*first))
                }
                Held::No(req) => (None, Some(req)),
            },
            _ => (None, Some(req)),
        };
        let replayable = || replay.as_ref().is_some_and(Source::ready);
        let max_retries = match self.policy {
            Some(policy) if replay.is_some() => policy.attempts,
            _ => 0,
        };
        let mut retries = 0u32;
        let mut unsent_tries = 0u32;
        loop {
            let req = match next.take() {
                Some(req) => req,
                None => match replay.as_ref().and_then(Source::request) {
                    Some(req) => req,
                    None => unreachable!("a retry is made only when its body can go again"),
                },
            };
            let wait = match self.once(req).await {
                Ok(mut rsp) => {
                    // Said only of retried requests: for their span and access log line.
                    if retries + unsent_tries > 0 {
                        rsp.extensions_mut().insert(Retries(retries + unsent_tries));
                    }
                    let Some(why) = self.retryable_response(&rsp) else { return Ok(rsp) };
                    if !replayable() {
                        self.deny("body");
                        return Ok(rsp);
                    }
                    let Some(wait) = pushback(rsp.headers()) else { return Ok(rsp) };
                    if retries >= max_retries || !self.take_budget() {
                        return Ok(rsp);
                    }
                    self.count(why);
                    discard(rsp);
                    retries += 1;
                    wait.unwrap_or_else(|| self.backoff(retries))
                }
                Err(SendError { error, request }) => match (error.class(), request) {
                    // Without the request (hyper kept one the peer refused unprocessed),
                    // only a held body lets it go again.
                    (Class::Unsent, req)
                        if (req.is_some() || replayable())
                            && unsent_tries + 1 < UNSENT_TRIES.max(max_retries + 1) =>
                    {
                        if !self.take_budget() {
                            return Err(error);
                        }
                        self.count("unsent");
                        unsent_tries += 1;
                        next = req.map(|req| *req);
                        // Another endpoint, at once: the one that refused is set aside.
                        Duration::ZERO
                    }
                    (Class::Sent, _) if self.policy.is_some() => {
                        let why =
                            if matches!(error, ProxyError::Timeout { .. }) { "timeout" } else { "error" };
                        if !replayable() {
                            self.deny("body");
                            return Err(error);
                        }
                        if retries >= max_retries || !self.take_budget() {
                            return Err(error);
                        }
                        self.count(why);
                        retries += 1;
                        self.backoff(retries)
                    }
                    _ => return Err(error),
                },
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One try, within the per-try timeout. (Not an `async fn`, which would hold the
    /// dispatch twice: see [`super::deadline::within`].)
    fn once(&self, mut req: Request<Body>) -> impl Future<Output = Result<Response<Body>, SendError>> + '_ {
        use futures_util::FutureExt as _;
        let limit = self.per_try_timeout;
        if let Some(deadline) = self.deadline.filter(|d| d.pass_on) {
            // A try past its own limit is abandoned: the server need not work beyond it.
            let left = limit.map_or(deadline.left(), |limit| limit.min(deadline.left()));
            req.headers_mut().insert(GRPC_TIMEOUT, grpc_timeout_value(left));
        }
        // A tunnel's timeout ends with its response head: the spliced bytes are not timed.
        bounded(limit, self.backend.dispatch(req, self.hop)).map(move |result| match result {
            Ok(result) => result,
            Err(Elapsed) => {
                let limit = limit.expect("only a limit elapses");
                Err(ProxyError::Timeout { what: "backend request", limit }.into())
            }
        })
    }

    /// Why the policy would retry this response, if it would.
    fn retryable_response(&self, rsp: &Response<Body>) -> Option<&'static str> {
        let policy = self.policy?;
        if policy.retries_status(rsp.status()) {
            return Some("status");
        }
        // A failed call arrives trailers-only: its status is in the headers.
        let grpc_status = || rsp.headers().get("grpc-status")?.to_str().ok()?.parse::<u32>().ok();
        (self.grpc && grpc_status().is_some_and(|code| policy.retries_grpc(code))).then_some("status")
    }

    fn take_budget(&self) -> bool {
        let granted = self.budget.withdraw();
        if !granted {
            self.deny("budget");
        }
        granted
    }

    fn backoff(&self, retry: u32) -> Duration {
        let base = self.policy.map_or(Duration::ZERO, |p| p.backoff(retry));
        // Up to half again, so that the retries of many callers do not arrive together.
        base.mul_f64(1.0 + fastrand::f64() / 2.0)
    }

    fn count(&self, reason: &'static str) {
        self.metrics.retry(self.route, self.rule, reason, true);
    }

    fn deny(&self, reason: &'static str) {
        self.metrics.retry(self.route, self.rule, reason, false);
    }
}

/// How a request's body is kept for a retry.
enum Held {
    /// Small and sized: read whole first.
    Whole(Replay),
    /// Of unknown length: the first try (its body recorded as it goes), its head, and the
    /// recording.
    Recorded(Box<Request<Body>>, Replay, Shared),
    /// Too long: never sent again.
    No(Request<Body>),
}

/// Holds `req`'s body for replay when it is small and sized, records it as it is sent
/// when its length is unknown; otherwise gives the request back as it was.
async fn hold(req: Request<Body>) -> Result<Held, ProxyError> {
    let body = req.body();
    let sized = body.size_hint().exact();
    if body.is_end_stream() || sized.is_some_and(|n| n <= MAX_REPLAY_BODY) {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(ProxyError::RequestBody)?.to_bytes();
        return Ok(Held::Whole(Replay { parts, body }));
    }
    if sized.is_some() {
        return Ok(Held::No(req));
    }
    let (parts, body) = req.into_parts();
    let Body::Stream { body } = body else {
        return Ok(Held::No(Request::from_parts(parts, body)));
    };
    let (tee, recording) = TeeBody::new(body);
    let head = Replay { parts, body: Bytes::new() };
    Ok(Held::Recorded(Box::new(head.with_body(Body::Tee { body: tee })), head, recording))
}

/// `grpc-retry-pushback-ms`: `None` when the server says not to retry (a negative or
/// malformed value), `Some(None)` without the header, `Some(Some(wait))` with it.
fn pushback(headers: &HeaderMap) -> Option<Option<Duration>> {
    let Some(value) = headers.get("grpc-retry-pushback-ms") else { return Some(None) };
    let ms: i64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Some(Duration::from_millis(u64::try_from(ms).ok()?)))
}

/// Drops a response that will not be used, reading a small body to its end first (within
/// a bound) so that its HTTP/1 connection goes back to the pool.
fn discard(rsp: Response<Body>) {
    let body = rsp.into_body();
    if body.is_end_stream() || body.size_hint().upper().is_none_or(|n| n > DRAIN_MAX_BODY) {
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, body.collect()).await;
    });
}
