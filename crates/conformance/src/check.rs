//! Running one case: sending its requests until they converge, and judging each reply
//! against its expectations the way ECHO.md describes (plus the backend-seen path and
//! host, the redirect `Location` and the backend namespace, which the upstream mesh
//! harness leaves unchecked but which Tarmac must get right too).

use crate::case::{Case, CaseError, Convergence, Expectation, Mirror, MirrorShare, Request, Weights};
use crate::client::{ClientError, Connection, Outgoing, Protocol, Reply, WebSocketFailure};
use crate::manifests::{self, ManifestsError};
use crate::mesh::{Mesh, MeshError, RunningPod, ServicePort};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a case did not pass: what the mesh did differently from the case (a verdict), or
/// what kept the runner from judging it (a case it cannot read, a mesh that did not start).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Case(#[from] CaseError),
    #[error(transparent)]
    Manifests(#[from] ManifestsError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// One request of the case failed; `label` names it.
    #[error("{label}: {source}")]
    Request {
        label: String,
        #[source]
        source: Box<Failure>,
    },
    #[error("a weighted case needs its request")]
    NoWeightedRequest,
    #[error("no pod of {namespace}/{workload}")]
    NoPod { namespace: String, workload: String },
    #[error("bad placeholder {0}")]
    BadPlaceholder(String),
    #[error("no Service port {}/{}:{} for the client to call", .0.namespace, .0.name, .0.port)]
    NoServicePort(ServicePort),
    #[error("no pod of {namespace}/{workload} to be mirrored to")]
    NoMirrorPod { namespace: String, workload: String },
    #[error("did not pass {required} times in a row within {seconds}s; last: {last}")]
    NotConsistent { required: usize, seconds: u64, last: LastTry },
    #[error("{namespace}/{workload} received no copy of {path} within {MIRROR_WAIT:?}")]
    NoCopy { namespace: String, workload: String, path: String },
    #[error("mirrors: no batch of {requests} within tolerance {tolerance}; last: {}", joined(last))]
    MirrorShares { requests: usize, tolerance: f64, last: Vec<ShareMiss> },
    #[error("weights: no batch of {requests} within tolerance {tolerance}; last: {last}")]
    Weights { requests: usize, tolerance: f64, last: WeightMiss },
}

/// What differed between one reply and its expectation, every difference listed.
#[derive(Debug)]
pub struct Mismatch(pub Vec<Difference>);

/// One way a reply differed from what the case expects.
#[derive(Debug)]
pub enum Difference {
    Status {
        got: u16,
        expected: u16,
    },
    WebSocket(WebSocketFailure),
    BackendNamespace {
        got: String,
        expected: String,
    },
    Backend {
        got: String,
        expected: String,
    },
    NoBackend {
        expected: String,
    },
    NothingSeen,
    SeenPath {
        got: String,
        expected: String,
    },
    SeenHost {
        got: String,
        expected: String,
    },
    SeenHeader {
        name: String,
        got: String,
        expected: String,
    },
    HeaderNotSeen {
        name: String,
        expected: String,
    },
    UnwantedHeaderSeen {
        name: String,
        got: String,
    },
    ResponseHeader {
        name: String,
        got: String,
        expected: String,
    },
    UnwantedResponseHeader {
        name: String,
        got: http::HeaderValue,
    },
    NoLocation,
    /// `why` says which part of the `Location` differed.
    Location {
        location: String,
        why: String,
    },
}

/// How the last try of a request that must pass repeatedly went wrong (nothing when no
/// try was made).
#[derive(Debug, Default)]
pub enum LastTry {
    #[default]
    None,
    Client(ClientError),
    Mismatch(Mismatch),
}

/// A mirror that got a share of the copies outside the tolerance.
#[derive(Debug)]
pub struct ShareMiss {
    pub workload: String,
    pub got: f64,
    pub expected: f64,
    pub tolerance: f64,
}

/// Why one batch of the weight run missed.
#[derive(Debug)]
pub enum WeightMiss {
    Client(ClientError),
    Unlisted { backend: String, status: u16 },
    Backends { answered: usize, expected: usize, counts: BTreeMap<String, usize> },
    Share { backend: String, got: f64, expected: f64, tolerance: f64 },
}

/// How a case ended.
pub struct Outcome {
    pub name: String,
    pub result: Result<(), Failure>,
    /// The case's `expected_failure`, when it has one.
    pub expected_failure: Option<String>,
}

/// Runs the case in `dir`.
pub async fn run_case(dir: &Path) -> Outcome {
    let fallback = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let case = match Case::load(dir) {
        Ok(case) => case,
        Err(e) => return Outcome { name: fallback, result: Err(e.into()), expected_failure: None },
    };
    let result = async {
        let snapshot = manifests::snapshot(&case.manifests)?;
        let mesh = Mesh::start(snapshot).await?;
        let result = run(&case, &mesh).await;
        mesh.stop().await;
        result
    }
    .await;
    Outcome { name: case.expect.name.clone(), result, expected_failure: case.expect.expected_failure.clone() }
}

async fn run(case: &Case, mesh: &Mesh) -> Result<(), Failure> {
    let default = Convergence::default();
    let convergence = case.expect.convergence.as_ref().unwrap_or(&default);
    for (i, request) in case.expect.requests.iter().enumerate() {
        let label = || request.case.clone().unwrap_or_else(|| format!("request {} ({})", i + 1, request.url));
        let started = Instant::now();
        let labelled = |e: Failure| Failure::Request { label: label(), source: Box::new(e) };
        converge(mesh, request, convergence).await.map_err(labelled)?;
        match &request.expect.mirror_share {
            Some(share) => mirror_shares(mesh, request, share).await,
            None => mirrored(mesh, request, started).await,
        }
        .map_err(labelled)?;
    }
    if let Some(weights) = &case.expect.weights {
        let request = case.expect.requests.first().ok_or(Failure::NoWeightedRequest)?;
        distribution(mesh, request, weights).await?;
    }
    Ok(())
}

/// How long a mirror's copy may take to show in its echo's record (the upstream suite
/// waits its request timeout for the mirror's log line).
const MIRROR_WAIT: Duration = Duration::from_secs(10);
/// While waiting, the request is sent again this often: a copy is best effort (one made
/// before the caller knew the mirror's endpoints is dropped), so the proof is that copies
/// arrive, not that a given one did.
const MIRROR_RESEND: Duration = Duration::from_millis(500);

/// The pods of a mirror, none being an error.
fn mirror_pods<'a>(mesh: &'a Mesh, want: &Mirror) -> Result<Vec<&'a RunningPod>, Failure> {
    let pods: Vec<_> = mesh
        .pods
        .iter()
        .filter(|p| p.pod.namespace == want.namespace && p.pod.workload == want.workload)
        .collect();
    if pods.is_empty() {
        return Err(Failure::NoMirrorPod {
            namespace: want.namespace.clone(),
            workload: want.workload.clone(),
        });
    }
    Ok(pods)
}

/// Copies of `path` the pods received since `since`.
fn copies(pods: &[&RunningPod], path: &str, since: Instant) -> usize {
    pods.iter().map(|p| p.log.received_since(path, since)).sum()
}

/// Every workload of `mirrored_to` received the request's path since `since`.
async fn mirrored(mesh: &Mesh, request: &Request, since: Instant) -> Result<(), Failure> {
    if request.expect.mirrored_to.is_empty() {
        return Ok(());
    }
    let target = target(mesh, request)?;
    let out = outgoing(request, &target.authority, &request.path)?;
    let deadline = Instant::now() + MIRROR_WAIT;
    for want in &request.expect.mirrored_to {
        let pods = mirror_pods(mesh, want)?;
        let mut resent = Instant::now();
        while copies(&pods, &request.path, since) == 0 {
            if Instant::now() >= deadline {
                return Err(Failure::NoCopy {
                    namespace: want.namespace.clone(),
                    workload: want.workload.clone(),
                    path: request.path.clone(),
                });
            }
            if resent.elapsed() >= MIRROR_RESEND {
                resent = Instant::now();
                if let Ok(mut conn) = Connection::open(target.addr, out.protocol).await {
                    let _ = conn.send(&out).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// For mirrors of a `percent`: batches of the request over one connection (so the share
/// must be drawn per request), each mirror's copies counted once they stop arriving.
async fn mirror_shares(mesh: &Mesh, request: &Request, share: &MirrorShare) -> Result<(), Failure> {
    let target = target(mesh, request)?;
    let out = outgoing(request, &target.authority, &request.path)?;
    let mut last = Vec::new();
    for n in 0..share.max_attempts.max(1) {
        if n > 0 {
            tokio::time::sleep(ATTEMPT_PAUSE).await;
        }
        let since = Instant::now();
        let mut conn = Connection::open(target.addr, out.protocol).await?;
        for _ in 0..share.requests_per_attempt {
            conn.send(&out).await?;
        }
        let mut failures = Vec::new();
        for want in &request.expect.mirrored_to {
            let pods = mirror_pods(mesh, want)?;
            // Copies go in the background: count until two readings agree, within bounds.
            let deadline = Instant::now() + MIRROR_WAIT;
            let mut count = copies(&pods, &request.path, since);
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = copies(&pods, &request.path, since);
                if now == count || Instant::now() >= deadline {
                    break;
                }
                count = now;
            }
            let got = count as f64 / share.requests_per_attempt as f64;
            let expected = want.percent.unwrap_or(100.0) / 100.0;
            if (got - expected).abs() > share.tolerance {
                failures.push(ShareMiss {
                    workload: want.workload.clone(),
                    got,
                    expected,
                    tolerance: share.tolerance,
                });
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        last = failures;
    }
    Err(Failure::MirrorShares { requests: share.requests_per_attempt, tolerance: share.tolerance, last })
}

/// Where a request goes and what it says its authority is.
struct Target {
    addr: SocketAddr,
    authority: String,
}

/// The sidecar listener for the Service the request's host and port name, as seen from
/// the client's namespace (`svc`, `svc.ns`, `svc.ns.svc.cluster.local`); or, for
/// `{{pod_ip:ns/workload}}`, that pod's own address, where no Service route applies.
fn target(mesh: &Mesh, request: &Request) -> Result<Target, Failure> {
    let no_pod = |namespace: &str, workload: &str| Failure::NoPod {
        namespace: namespace.to_string(),
        workload: workload.to_string(),
    };
    let client = mesh
        .pod(&request.from.namespace, &request.from.workload)
        .ok_or_else(|| no_pod(&request.from.namespace, &request.from.workload))?;
    if let Some(inner) = request.host.strip_prefix("{{pod_ip:").and_then(|h| h.strip_suffix("}}")) {
        let (ns, workload) =
            inner.split_once('/').ok_or_else(|| Failure::BadPlaceholder(request.host.clone()))?;
        let pod = mesh.pod(ns, workload).ok_or_else(|| no_pod(ns, workload))?;
        return Ok(Target { addr: pod.inbound, authority: format!("{}:{}", pod.inbound.ip(), request.port) });
    }
    let mut parts = request.host.split('.');
    let name = parts.next().unwrap_or_default().to_string();
    let namespace = parts.next().unwrap_or(&request.from.namespace).to_string();
    let service = ServicePort { namespace, name, port: request.port };
    let Some(&addr) = client.listeners.get(&service) else {
        return Err(Failure::NoServicePort(service));
    };
    // The URL's authority as written: `echo`, `echo-v1:8080`.
    let authority = request
        .url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_string())
        .unwrap_or_else(|| request.host.clone());
    Ok(Target { addr, authority })
}

/// The request to send; `path` is the request's, with any `{{uuid}}` already replaced.
fn outgoing<'a>(
    request: &'a Request,
    authority: &'a str,
    path: &'a str,
) -> Result<Outgoing<'a>, ClientError> {
    let protocol = Protocol::parse(&request.protocol)?;
    let host = request.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v.as_str());
    Ok(Outgoing {
        protocol,
        method: if protocol == Protocol::Grpc { "POST" } else { request.method.as_deref().unwrap_or("GET") },
        path: if path.is_empty() { "/" } else { path },
        authority: host.unwrap_or(authority),
        headers: request
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    })
}

/// `{{uuid}}` in a path: a fresh id per try, as the suite's retry test makes one per probe
/// so that the echo counts each probe's failures afresh.
fn fresh_path(path: &str) -> String {
    if path.contains("{{uuid}}") {
        path.replace("{{uuid}}", &format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
    } else {
        path.to_string()
    }
}

/// Sends `request` until it passes the required number of times in a row, or time runs out.
async fn converge(mesh: &Mesh, request: &Request, c: &Convergence) -> Result<(), Failure> {
    let target = target(mesh, request)?;
    let deadline = Instant::now() + Duration::from_secs(c.max_time_to_consistency_s);
    let mut in_a_row = 0;
    let mut last_error = LastTry::None;
    while Instant::now() < deadline {
        let path = fresh_path(&request.path);
        let out = outgoing(request, &target.authority, &path)?;
        // A new connection per request, as the suite's client makes.
        let verdict = match Connection::open(target.addr, out.protocol).await {
            Ok(mut conn) => match conn.send(&out).await {
                Ok(reply) => judge(&request.expect, reply).map_err(LastTry::Mismatch),
                Err(e) => Err(LastTry::Client(e)),
            },
            Err(e) => Err(LastTry::Client(e)),
        };
        match verdict {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row >= c.required_consecutive_successes {
                    return Ok(());
                }
            }
            Err(e) => {
                in_a_row = 0;
                last_error = e;
                tokio::time::sleep(Duration::from_millis(c.retry_delay_after_failure_ms)).await;
            }
        }
    }
    Err(Failure::NotConsistent {
        required: c.required_consecutive_successes,
        seconds: c.max_time_to_consistency_s,
        last: last_error,
    })
}

/// Compares one reply with its expectations; the mismatch lists every difference.
fn judge(expect: &Expectation, mut reply: Reply) -> Result<(), Mismatch> {
    use Difference as D;
    let mut diffs = Vec::new();
    if reply.status != expect.status {
        diffs.push(D::Status { got: reply.status, expected: expect.status });
    }
    if let Some(Err(e)) = reply.websocket.take() {
        diffs.push(D::WebSocket(e));
    }
    if let Some(backend) = &expect.backend {
        match &reply.seen {
            Some(seen) if seen.hostname.starts_with(&backend.service) => {
                if let Some(ns) = &backend.namespace
                    && &seen.namespace != ns
                {
                    diffs.push(D::BackendNamespace { got: seen.namespace.clone(), expected: ns.clone() });
                }
            }
            Some(seen) => {
                diffs.push(D::Backend { got: seen.hostname.clone(), expected: backend.service.clone() })
            }
            None => diffs.push(D::NoBackend { expected: backend.service.clone() }),
        }
    }
    if let Some(want) = &expect.request_seen_by_backend {
        match &reply.seen {
            None => diffs.push(D::NothingSeen),
            Some(seen) => {
                if let Some(path) = &want.path
                    && &seen.url != path
                {
                    diffs.push(D::SeenPath { got: seen.url.clone(), expected: path.clone() });
                }
                if let Some(host) = &want.host
                    && &seen.host != host
                {
                    diffs.push(D::SeenHost { got: seen.host.clone(), expected: host.clone() });
                }
                for (name, value) in &want.headers_present {
                    match seen.header(name) {
                        Some(v) if &v == value => {}
                        Some(v) => {
                            diffs.push(D::SeenHeader { name: name.clone(), got: v, expected: value.clone() })
                        }
                        None => diffs.push(D::HeaderNotSeen { name: name.clone(), expected: value.clone() }),
                    }
                }
                for name in &want.headers_absent {
                    if let Some(v) = seen.header(name) {
                        diffs.push(D::UnwantedHeaderSeen { name: name.clone(), got: v });
                    }
                }
            }
        }
    }
    for (name, value) in &expect.response_headers {
        let got: Vec<&str> =
            reply.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
        if got.join(",") != *value {
            diffs.push(D::ResponseHeader { name: name.clone(), got: got.join(","), expected: value.clone() });
        }
    }
    for name in &expect.response_headers_absent {
        if let Some(v) = reply.headers.get(name.as_str()) {
            diffs.push(D::UnwantedResponseHeader { name: name.clone(), got: v.clone() });
        }
    }
    if let Some(want) = &expect.redirect_location {
        match reply.headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok()) {
            None => diffs.push(D::NoLocation),
            Some(location) => {
                if let Some(d) = location_differs(location, want) {
                    diffs.push(d);
                }
            }
        }
    }
    if diffs.is_empty() { Ok(()) } else { Err(Mismatch(diffs)) }
}

/// Compares a `Location` with the expected parts (INDEX.md: a null host is not
/// constrained; a null port means absent or the scheme's default).
fn location_differs(location: &str, want: &crate::case::RedirectLocation) -> Option<Difference> {
    let bad = |why: &str| Some(Difference::Location { location: location.to_string(), why: why.to_string() });
    let Some((scheme, rest)) = location.split_once("://") else { return bad("not an absolute URL") };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    let default = match scheme {
        "http" => Some("80"),
        "https" => Some("443"),
        _ => None,
    };
    let path = path.split('?').next().unwrap_or(path);
    if scheme != want.scheme {
        return bad(&format!("scheme {scheme} (expected {})", want.scheme));
    }
    if let Some(h) = &want.host
        && host != h
    {
        return bad(&format!("host {host} (expected {h})"));
    }
    match (&want.port, port) {
        (None, None) => {}
        (None, Some(p)) if Some(p) == default => {}
        (Some(w), Some(p)) if w == p => {}
        (Some(w), None) if Some(w.as_str()) == default => {}
        (w, p) => {
            return bad(&format!(
                "port {} (expected {})",
                p.unwrap_or("none"),
                w.as_deref().unwrap_or("none")
            ));
        }
    }
    if path != want.path {
        return bad(&format!("path {path} (expected {})", want.path));
    }
    None
}

const ATTEMPT_PAUSE: Duration = Duration::from_secs(1);

/// The weight run: batches of requests over one connection (so weights must apply per
/// request), each judged on which backends answered and in what proportions.
async fn distribution(mesh: &Mesh, request: &Request, weights: &Weights) -> Result<(), Failure> {
    let target = target(mesh, request)?;
    let out = outgoing(request, &target.authority, &request.path)?;
    let mut last = None;
    for n in 0..weights.max_attempts.max(1) {
        if n > 0 {
            // A failed batch often ends within a few requests; without a pause all the
            // attempts would fit in the moment a change takes to reach the caller.
            tokio::time::sleep(ATTEMPT_PAUSE).await;
        }
        match attempt(&target, &out, weights).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(Failure::Weights {
        requests: weights.requests_per_attempt,
        tolerance: weights.tolerance,
        last: last.expect("at least one attempt is made"),
    })
}

/// `echo-v1-5d8c7f9b6d-x7k2p` → `echo-v1`.
fn deployment_of(hostname: &str) -> &str {
    let mut cut = hostname;
    for _ in 0..2 {
        cut = cut.rsplit_once('-').map_or("", |(head, _)| head);
    }
    cut
}

async fn attempt(target: &Target, out: &Outgoing<'_>, weights: &Weights) -> Result<(), WeightMiss> {
    let mut conn = Connection::open(target.addr, out.protocol).await.map_err(WeightMiss::Client)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..weights.requests_per_attempt {
        let reply = conn.send(out).await.map_err(WeightMiss::Client)?;
        let backend = reply.seen.as_ref().map(|s| deployment_of(&s.hostname).to_string()).unwrap_or_default();
        if !weights.backends.contains_key(&backend) {
            return Err(WeightMiss::Unlisted { backend, status: reply.status });
        }
        *counts.entry(backend).or_default() += 1;
    }
    let expected = weights.backends.values().filter(|w| **w > 0.0).count();
    if counts.len() != expected {
        return Err(WeightMiss::Backends { answered: counts.len(), expected, counts });
    }
    for (backend, want) in &weights.backends {
        let got = *counts.get(backend).unwrap_or(&0) as f64 / weights.requests_per_attempt as f64;
        if (got - want).abs() > weights.tolerance {
            return Err(WeightMiss::Share {
                backend: backend.clone(),
                got,
                expected: *want,
                tolerance: weights.tolerance,
            });
        }
    }
    Ok(())
}

/// Items' texts joined by `; `.
fn joined<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

// === impl Mismatch ===

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&joined(&self.0))
    }
}

// === impl Difference ===

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { got, expected } => write!(f, "status {got} (expected {expected})"),
            Self::WebSocket(e) => write!(f, "WebSocket: {e}"),
            Self::BackendNamespace { got, expected } => {
                write!(f, "backend namespace {got} (expected {expected})")
            }
            Self::Backend { got, expected } => write!(f, "backend {got} (expected {expected})"),
            Self::NoBackend { expected } => write!(f, "no backend answered (expected {expected})"),
            Self::NothingSeen => f.write_str("no backend answered, so nothing was seen by one"),
            Self::SeenPath { got, expected } => write!(f, "backend saw path {got} (expected {expected})"),
            Self::SeenHost { got, expected } => write!(f, "backend saw host {got} (expected {expected})"),
            Self::SeenHeader { name, got, expected } => {
                write!(f, "backend saw {name}: {got} (expected {expected})")
            }
            Self::HeaderNotSeen { name, expected } => {
                write!(f, "backend did not see {name} (expected {expected})")
            }
            Self::UnwantedHeaderSeen { name, got } => write!(f, "backend saw {name}: {got} (expected none)"),
            Self::ResponseHeader { name, got, expected } => {
                write!(f, "response header {name}: {got:?} (expected {expected})")
            }
            Self::UnwantedResponseHeader { name, got } => {
                write!(f, "response header {name}: {got:?} (expected none)")
            }
            Self::NoLocation => f.write_str("no Location header"),
            Self::Location { location, why } => write!(f, "Location {location}: {why}"),
        }
    }
}

// === impl LastTry ===

impl fmt::Display for LastTry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => Ok(()),
            Self::Client(e) => e.fmt(f),
            Self::Mismatch(m) => m.fmt(f),
        }
    }
}

// === impl ShareMiss ===

impl fmt::Display for ShareMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { workload, got, expected, tolerance } = self;
        write!(f, "{workload} got a copy of {got:.3} of the requests (expected {expected} ± {tolerance})")
    }
}

// === impl WeightMiss ===

impl fmt::Display for WeightMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(e) => e.fmt(f),
            Self::Unlisted { backend, status } => {
                write!(f, "a response came from {backend:?} (status {status}), not a listed backend")
            }
            Self::Backends { answered, expected, counts } => {
                write!(f, "{answered} backends answered, expected {expected}: {counts:?}")
            }
            Self::Share { backend, got, expected, tolerance } => {
                write!(f, "{backend} got {got:.3} of requests (expected {expected} ± {tolerance})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_lose_their_hash_and_suffix() {
        assert_eq!(deployment_of("echo-v1-5d8c7f9b6d-x7k2p"), "echo-v1");
        assert_eq!(deployment_of("echo"), "");
    }
}
