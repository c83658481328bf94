//! Running one case: sending its requests until they converge, and judging each reply
//! against its expectations the way ECHO.md describes (plus the backend-seen path and
//! host, the redirect `Location` and the backend namespace, which the upstream mesh
//! harness leaves unchecked but which Tarmac must get right too).

use crate::case::{Case, Convergence, Expectation, Mirror, MirrorShare, Request, Weights};
use crate::client::{Connection, Outgoing, Protocol, Reply};
use crate::manifests;
use crate::mesh::{Mesh, RunningPod, ServicePort};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a case ended.
pub struct Outcome {
    pub name: String,
    pub result: Result<(), String>,
    /// The case's `expected_failure`, when it has one.
    pub expected_failure: Option<String>,
}

/// Runs the case in `dir`.
pub async fn run_case(dir: &Path) -> Outcome {
    let fallback = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let case = match Case::load(dir) {
        Ok(case) => case,
        Err(e) => return Outcome { name: fallback, result: Err(e), expected_failure: None },
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

async fn run(case: &Case, mesh: &Mesh) -> Result<(), String> {
    let default = Convergence::default();
    let convergence = case.expect.convergence.as_ref().unwrap_or(&default);
    for (i, request) in case.expect.requests.iter().enumerate() {
        let label = request.case.clone().unwrap_or_else(|| format!("request {} ({})", i + 1, request.url));
        let started = Instant::now();
        converge(mesh, request, convergence).await.map_err(|e| format!("{label}: {e}"))?;
        match &request.expect.mirror_share {
            Some(share) => mirror_shares(mesh, request, share).await,
            None => mirrored(mesh, request, started).await,
        }
        .map_err(|e| format!("{label}: {e}"))?;
    }
    if let Some(weights) = &case.expect.weights {
        let request = case.expect.requests.first().ok_or("a weighted case needs its request")?;
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
fn mirror_pods<'a>(mesh: &'a Mesh, want: &Mirror) -> Result<Vec<&'a RunningPod>, String> {
    let pods: Vec<_> = mesh
        .pods
        .iter()
        .filter(|p| p.pod.namespace == want.namespace && p.pod.workload == want.workload)
        .collect();
    if pods.is_empty() {
        return Err(format!("no pod of {}/{} to be mirrored to", want.namespace, want.workload));
    }
    Ok(pods)
}

/// Copies of `path` the pods received since `since`.
fn copies(pods: &[&RunningPod], path: &str, since: Instant) -> usize {
    pods.iter().map(|p| p.log.received_since(path, since)).sum()
}

/// Every workload of `mirrored_to` received the request's path since `since`.
async fn mirrored(mesh: &Mesh, request: &Request, since: Instant) -> Result<(), String> {
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
                return Err(format!(
                    "{}/{} received no copy of {} within {MIRROR_WAIT:?}",
                    want.namespace, want.workload, request.path
                ));
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
async fn mirror_shares(mesh: &Mesh, request: &Request, share: &MirrorShare) -> Result<(), String> {
    let target = target(mesh, request)?;
    let out = outgoing(request, &target.authority, &request.path)?;
    let mut last = String::new();
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
            let wanted = want.percent.unwrap_or(100.0) / 100.0;
            if (got - wanted).abs() > share.tolerance {
                failures.push(format!(
                    "{} got a copy of {got:.3} of the requests (expected {wanted} ± {})",
                    want.workload, share.tolerance
                ));
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        last = failures.join("; ");
    }
    Err(format!(
        "mirrors: no batch of {} within tolerance {}; last: {last}",
        share.requests_per_attempt, share.tolerance
    ))
}

/// Where a request goes and what it says its authority is.
struct Target {
    addr: SocketAddr,
    authority: String,
}

/// The sidecar listener for the Service the request's host and port name, as seen from
/// the client's namespace (`svc`, `svc.ns`, `svc.ns.svc.cluster.local`); or, for
/// `{{pod_ip:ns/workload}}`, that pod's own address, where no Service route applies.
fn target(mesh: &Mesh, request: &Request) -> Result<Target, String> {
    let client = mesh
        .pod(&request.from.namespace, &request.from.workload)
        .ok_or_else(|| format!("no pod of {}/{}", request.from.namespace, request.from.workload))?;
    if let Some(inner) = request.host.strip_prefix("{{pod_ip:").and_then(|h| h.strip_suffix("}}")) {
        let (ns, workload) =
            inner.split_once('/').ok_or_else(|| format!("bad placeholder {}", request.host))?;
        let pod = mesh.pod(ns, workload).ok_or_else(|| format!("no pod of {ns}/{workload}"))?;
        return Ok(Target { addr: pod.inbound, authority: format!("{}:{}", pod.inbound.ip(), request.port) });
    }
    let mut parts = request.host.split('.');
    let name = parts.next().unwrap_or_default().to_string();
    let namespace = parts.next().unwrap_or(&request.from.namespace).to_string();
    let service = ServicePort { namespace, name, port: request.port };
    let addr = *client.listeners.get(&service).ok_or_else(|| {
        format!(
            "no Service port {}/{}:{} for the client to call",
            service.namespace, service.name, service.port
        )
    })?;
    // The URL's authority as written: `echo`, `echo-v1:8080`.
    let authority = request
        .url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_string())
        .unwrap_or_else(|| request.host.clone());
    Ok(Target { addr, authority })
}

/// The request to send; `path` is the request's, with any `{{uuid}}` already replaced.
fn outgoing<'a>(request: &'a Request, authority: &'a str, path: &'a str) -> Result<Outgoing<'a>, String> {
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
async fn converge(mesh: &Mesh, request: &Request, c: &Convergence) -> Result<(), String> {
    let target = target(mesh, request)?;
    let deadline = Instant::now() + Duration::from_secs(c.max_time_to_consistency_s);
    let mut in_a_row = 0;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let path = fresh_path(&request.path);
        let out = outgoing(request, &target.authority, &path)?;
        // A new connection per request, as the suite's client makes.
        let verdict = match Connection::open(target.addr, out.protocol).await {
            Ok(mut conn) => match conn.send(&out).await {
                Ok(reply) => judge(&request.expect, &reply),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
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
    Err(format!(
        "did not pass {} times in a row within {}s; last: {last_error}",
        c.required_consecutive_successes, c.max_time_to_consistency_s
    ))
}

/// Compares one reply with its expectations; the error lists every difference.
fn judge(expect: &Expectation, reply: &Reply) -> Result<(), String> {
    let mut diffs = Vec::new();
    if reply.status != expect.status {
        diffs.push(format!("status {} (expected {})", reply.status, expect.status));
    }
    if let Some(Err(e)) = &reply.websocket {
        diffs.push(format!("WebSocket: {e}"));
    }
    if let Some(backend) = &expect.backend {
        match &reply.seen {
            Some(seen) if seen.hostname.starts_with(&backend.service) => {
                if let Some(ns) = &backend.namespace
                    && &seen.namespace != ns
                {
                    diffs.push(format!("backend namespace {} (expected {ns})", seen.namespace));
                }
            }
            Some(seen) => diffs.push(format!("backend {} (expected {})", seen.hostname, backend.service)),
            None => diffs.push(format!("no backend answered (expected {})", backend.service)),
        }
    }
    if let Some(want) = &expect.request_seen_by_backend {
        match &reply.seen {
            None => diffs.push("no backend answered, so nothing was seen by one".to_string()),
            Some(seen) => {
                if let Some(path) = &want.path
                    && &seen.url != path
                {
                    diffs.push(format!("backend saw path {} (expected {path})", seen.url));
                }
                if let Some(host) = &want.host
                    && &seen.host != host
                {
                    diffs.push(format!("backend saw host {} (expected {host})", seen.host));
                }
                for (name, value) in &want.headers_present {
                    match seen.header(name) {
                        Some(v) if &v == value => {}
                        Some(v) => diffs.push(format!("backend saw {name}: {v} (expected {value})")),
                        None => diffs.push(format!("backend did not see {name} (expected {value})")),
                    }
                }
                for name in &want.headers_absent {
                    if let Some(v) = seen.header(name) {
                        diffs.push(format!("backend saw {name}: {v} (expected none)"));
                    }
                }
            }
        }
    }
    for (name, value) in &expect.response_headers {
        let got: Vec<&str> =
            reply.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
        if got.join(",") != *value {
            diffs.push(format!("response header {name}: {:?} (expected {value})", got.join(",")));
        }
    }
    for name in &expect.response_headers_absent {
        if let Some(v) = reply.headers.get(name.as_str()) {
            diffs.push(format!("response header {name}: {v:?} (expected none)"));
        }
    }
    if let Some(want) = &expect.redirect_location {
        match reply.headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok()) {
            None => diffs.push("no Location header".to_string()),
            Some(location) => {
                if let Some(d) = location_differs(location, want) {
                    diffs.push(d);
                }
            }
        }
    }
    if diffs.is_empty() { Ok(()) } else { Err(diffs.join("; ")) }
}

/// Compares a `Location` with the expected parts (INDEX.md: a null host is not
/// constrained; a null port means absent or the scheme's default).
fn location_differs(location: &str, want: &crate::case::RedirectLocation) -> Option<String> {
    let bad = |why: &str| Some(format!("Location {location}: {why}"));
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
async fn distribution(mesh: &Mesh, request: &Request, weights: &Weights) -> Result<(), String> {
    let target = target(mesh, request)?;
    let out = outgoing(request, &target.authority, &request.path)?;
    let mut last = String::new();
    for n in 0..weights.max_attempts.max(1) {
        if n > 0 {
            // A failed batch often ends within a few requests; without a pause all the
            // attempts would fit in the moment a change takes to reach the caller.
            tokio::time::sleep(ATTEMPT_PAUSE).await;
        }
        match attempt(&target, &out, weights).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(format!(
        "weights: no batch of {} within tolerance {}; last: {last}",
        weights.requests_per_attempt, weights.tolerance
    ))
}

/// `echo-v1-5d8c7f9b6d-x7k2p` → `echo-v1`.
fn deployment_of(hostname: &str) -> &str {
    let mut cut = hostname;
    for _ in 0..2 {
        cut = cut.rsplit_once('-').map_or("", |(head, _)| head);
    }
    cut
}

async fn attempt(target: &Target, out: &Outgoing<'_>, weights: &Weights) -> Result<(), String> {
    let mut conn = Connection::open(target.addr, out.protocol).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..weights.requests_per_attempt {
        let reply = conn.send(out).await?;
        let backend = reply.seen.as_ref().map(|s| deployment_of(&s.hostname).to_string()).unwrap_or_default();
        if !weights.backends.contains_key(&backend) {
            return Err(format!(
                "a response came from {backend:?} (status {}), not a listed backend",
                reply.status
            ));
        }
        *counts.entry(backend).or_default() += 1;
    }
    let expected = weights.backends.values().filter(|w| **w > 0.0).count();
    if counts.len() != expected {
        return Err(format!("{} backends answered, expected {expected}: {counts:?}", counts.len()));
    }
    for (backend, want) in &weights.backends {
        let got = *counts.get(backend).unwrap_or(&0) as f64 / weights.requests_per_attempt as f64;
        if (got - want).abs() > weights.tolerance {
            return Err(format!(
                "{backend} got {got:.3} of requests (expected {want} ± {})",
                weights.tolerance
            ));
        }
    }
    Ok(())
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
