//! Authorization by identity and inbound rate limits, through `tarmac up --mtls strict`
//! on tests/fixtures/authz: `a` may call `b` only on `GET /public`, `c` nothing. Every
//! request crosses a caller's sidecar and `b`'s over real mTLS; `b`'s sidecar decides.
//!
//! - every combination of caller, method and path, with the policy that refused each;
//! - the namespace switched to `audit`: nothing refused, the would-be denials counted;
//! - policies changed five times under 500 requests a second from `a`: no allowed request
//!   fails;
//! - a RateLimitPolicy of 100 requests a second against 300 offered open-loop for 10 s:
//!   `b` admits 100 ± 5 % in each second;
//! - operators see it: `tarmac authz b` (who may call, under which policy), `tarmac tap`
//!   (the refusing policy), `tarmac stat` (denied and rate-limited per workload), and
//!   `tarmac check` (a policy naming a client no Workload is).

use crate::up::{Up, replica_addr};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tarmac_testkit::metrics::sum;

fn fixture_copy(tag: &str) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/authz/mesh.yaml");
    let dir = tarmac_testkit::tools::temp_dir(tag);
    std::fs::copy(source, dir.join("mesh.yaml")).unwrap();
    dir
}

/// Replaces a file whole (the store must never read half of it).
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

/// `METHOD path` over HTTP/1.1 through a caller's sidecar; the status and the raw head
/// and body, or the connection's failure.
fn send(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(response.clone())?;
    Ok((status, response))
}

/// Sends until the answer is `want` (policies apply within moments of a change).
fn until(up: &Up, addr: SocketAddr, method: &str, path: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = send(addr, method, path);
        if let Ok((status, response)) = &last
            && *status == want
        {
            return response.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path} via {addr} never answered {want}; last: {last:?}\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(admin: SocketAddr) -> String {
    crate::up::get_ok(admin, "/metrics")
}

struct Mesh {
    up: Up,
    dir: PathBuf,
    /// The control plane's API, for the operators' commands.
    api: String,
    /// `a`'s and `c`'s sidecar listeners for Service `b`.
    a: SocketAddr,
    c: SocketAddr,
    b_admin: SocketAddr,
    b_inbound: SocketAddr,
}

fn start(tag: &str) -> Mesh {
    let dir = fixture_copy(tag);
    let up = Up::start_with(&[dir.to_str().unwrap(), "--mtls", "strict", "--api-port", "0"]);
    let api = up.wait_for("the API address", Duration::from_secs(30), |lines| {
        lines.iter().find_map(|l| l.split_once("control plane: API and dashboard on http://")).map(
            |(_, rest)| rest.split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_string(),
        )
    });
    let a = replica_addr(&up, "a-0", "B_URL=http://");
    let c = replica_addr(&up, "c-0", "B_URL=http://");
    let b_admin = replica_addr(&up, "b-0", "admin ");
    let b_inbound = replica_addr(&up, "b-0", "sidecar inbound ");
    up.wait_for("b-0, a-0 and c-0 ready", Duration::from_secs(60), |lines| {
        ["b-0", "a-0", "c-0"]
            .iter()
            .all(|r| lines.iter().any(|l| l.contains(&format!("| {r} ready: "))))
            .then_some(())
    });
    let mesh = Mesh { up, dir, api, a, c, b_admin, b_inbound };
    until(&mesh.up, mesh.a, "GET", "/public", 200);
    mesh
}

const A_ID: &str = "spiffe://cluster.local/ns/default/sa/a";
const C_ID: &str = "spiffe://cluster.local/ns/default/sa/c";

#[test]
fn a_may_call_b_only_on_get_public_and_c_nothing() {
    let mesh = start("authz");
    let (a, c) = (mesh.a, mesh.c);
    // Every combination, over real mTLS: b's sidecar says which policy refused.
    for (who, via, method, path, want, policy) in [
        ("a", a, "GET", "/public", 200, None),
        ("a", a, "POST", "/public", 403, Some("default:deny")),
        ("a", a, "GET", "/private", 403, Some("default:deny")),
        ("a", a, "GET", "/public/more", 403, Some("default:deny")),
        ("a", a, "GET", "/%70ublic", 200, None),
        ("c", c, "GET", "/public", 403, Some("default/a-public")),
        ("c", c, "POST", "/public", 403, Some("default:deny")),
        ("c", c, "GET", "/private", 403, Some("default:deny")),
    ] {
        let (status, response) = send(via, method, path).unwrap();
        assert_eq!(status, want, "{who}: {method} {path}:\n{response}");
        if let Some(policy) = policy {
            let line = response.lines().find(|l| l.to_ascii_lowercase().starts_with("tarmac-proxy-error:"));
            assert!(line.is_some_and(|l| l.contains(policy)), "{who}: {method} {path}: {response}");
        }
    }
    // A client outside the mesh does not reach b at all (strict mTLS).
    if let Ok((status, response)) = send(mesh.b_inbound, "GET", "/public") {
        panic!("plaintext to strict b answered {status}:\n{response}");
    }
    let text = metrics(mesh.b_admin);
    let denied = |client: &str, policy: &str, reason: &str| {
        sum(
            &text,
            "tarmac_authz_denied_total",
            &[("client_id", client), ("policy", policy), ("reason", reason), ("mode", "enforce")],
        )
    };
    assert!(denied(C_ID, "default/a-public", "not_allowed") >= 1.0, "{text}");
    assert!(denied(A_ID, "default:deny", "default_deny") >= 3.0, "{text}");
    assert_eq!(denied(A_ID, "default/a-public", "not_allowed"), 0.0, "{text}");

    operators_see_it(&mesh);

    // Audit: nothing is refused, what would be is counted.
    let mesh_yaml = std::fs::read_to_string(mesh.dir.join("mesh.yaml")).unwrap();
    write(&mesh.dir, "mesh.yaml", &mesh_yaml.replace("default-policy: deny}", "default-policy: audit}"));
    until(&mesh.up, c, "GET", "/public", 200);
    assert_eq!(send(a, "POST", "/public").unwrap().0, 200);
    let text = metrics(mesh.b_admin);
    let audited = sum(&text, "tarmac_authz_denied_total", &[("client_id", C_ID), ("mode", "audit")]);
    assert!(audited >= 1.0, "{text}");
    assert!(sum(&text, "tarmac_authz_denied_total", &[("client_id", A_ID), ("mode", "audit")]) >= 1.0);

    // Back to deny, then policies change under 500 requests a second from a: every one
    // of a's requests is still allowed, and answered.
    write(&mesh.dir, "mesh.yaml", &mesh_yaml);
    until(&mesh.up, c, "GET", "/public", 403);
    let target = tarmac_loadgen::Target::parse(&format!("http://{a}/public")).unwrap();
    let config = tarmac_loadgen::Config::open_loop(target, 500.0, Duration::from_secs(5), 8);
    let load = std::thread::spawn(move || tarmac_loadgen::run_blocking(config));
    let deny_c = "apiVersion: tarmac.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-c}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: b}]\n  action: DENY\n  from: [{serviceAccounts: [c]}]\n";
    let authenticated = mesh_yaml.replace("default-policy: deny}", "default-policy: all-authenticated}");
    for step in 0..5 {
        std::thread::sleep(Duration::from_millis(1000));
        match step % 2 {
            0 => write(&mesh.dir, "deny-c.yaml", deny_c),
            _ => std::fs::remove_file(mesh.dir.join("deny-c.yaml")).unwrap(),
        }
        write(&mesh.dir, "mesh.yaml", if step % 2 == 0 { &authenticated } else { &mesh_yaml });
    }
    let report = load.join().unwrap().expect("the load generator runs");
    assert_eq!(
        report.failures(),
        0,
        "allowed requests failed while policies changed: {:?}",
        report.first_error
    );
    assert!(report.responses >= 2400, "{} responses in 5 s at 500/s", report.responses);
    // The last state (a DENY for c, all-authenticated) is in force.
    until(&mesh.up, c, "GET", "/private", 403);
    assert_eq!(send(a, "GET", "/private").unwrap().0, 200, "all-authenticated lets a in elsewhere");
}

#[test]
fn a_rate_limit_admits_its_rate_whatever_is_offered() {
    let mesh = start("ratelimit");
    let limit = "apiVersion: tarmac.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: b-limit}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: b}]\n  total: {requestsPerSecond: 100, burst: 5}\n";
    write(&mesh.dir, "limit.yaml", limit);
    // Applied once a burst of requests meets a 429 with its Retry-After.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answers: Vec<_> = (0..20).filter_map(|_| send(mesh.a, "GET", "/public").ok()).collect();
        if let Some((_, response)) = answers.iter().find(|(s, _)| *s == 429) {
            assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
            assert!(response.contains("default/b-limit"), "{response}");
            break;
        }
        assert!(Instant::now() < deadline, "the limit never applied\n{}", mesh.up.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));

    // 300 a second, open loop, for 10 s after a second of warm-up; b's sidecar counts
    // what it let through, read every second.
    let target = tarmac_loadgen::Target::parse(&format!("http://{}/public", mesh.a)).unwrap();
    let config = tarmac_loadgen::Config::open_loop(target, 300.0, Duration::from_secs(10), 8);
    let load = std::thread::spawn(move || tarmac_loadgen::run_blocking(config));
    let admitted = |text: &str| {
        sum(
            text,
            "tarmac_responses_total",
            &[("direction", "inbound"), ("client_id", A_ID), ("status_code", "200")],
        )
    };
    let limited = |text: &str| sum(text, "tarmac_rate_limited_total", &[("policy", "default/b-limit")]);
    std::thread::sleep(Duration::from_millis(1500));
    let mut last = (Instant::now(), metrics(mesh.b_admin));
    let mut per_second = Vec::new();
    for _ in 0..9 {
        std::thread::sleep(Duration::from_secs(1));
        let now = (Instant::now(), metrics(mesh.b_admin));
        let seconds = now.0.duration_since(last.0).as_secs_f64();
        per_second.push((
            (admitted(&now.1) - admitted(&last.1)) / seconds,
            (limited(&now.1) - limited(&last.1)) / seconds,
        ));
        last = now;
    }
    let report = load.join().unwrap().expect("the load generator runs");
    for (second, (ok, refused)) in per_second.iter().enumerate() {
        println!("rate limit | second {second}: {ok:.1} admitted/s, {refused:.1} refused/s");
    }
    println!(
        "rate limit | offered {:.1}/s, answered {} ({} not 2xx), transport errors {}, timeouts {}",
        report.throughput(),
        report.responses,
        report.bad_status,
        report.transport_errors,
        report.timeouts
    );
    for (second, (ok, refused)) in per_second.iter().enumerate() {
        assert!(
            (95.0..=105.0).contains(ok),
            "second {second}: {ok:.1} admitted, want 100 ± 5 %: {per_second:?}"
        );
        assert!(
            *refused >= 150.0,
            "second {second}: {refused:.1} refused of ~200 over the limit: {per_second:?}"
        );
    }
    assert_eq!(report.transport_errors + report.timeouts, 0, "{:?}", report.first_error);
}

fn stdout(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `tarmac authz`, `tap`, `stat` and `check` on the mesh as [`start`] left it.
fn operators_see_it(mesh: &Mesh) {
    use crate::observe::tarmac;
    let authz = stdout(&tarmac(&mesh.api, &["authz", "b"], Duration::from_secs(10)));
    for needle in [
        "Service default/b port 80 (http) → workload b port 8080: default policy deny",
        "default/a-public",
        "HTTPRoute default/b-routes rule public",
        "identity spiffe://cluster.local/ns/default/sa/a",
        "default:deny",
    ] {
        assert!(authz.contains(needle), "`tarmac authz b` lacks {needle:?}:\n{authz}");
    }

    // The tap names the policy that refused each request.
    let api = mesh.api.clone();
    let tap = std::thread::spawn(move || {
        tarmac(
            &api,
            &["tap", "workload/b", "--status", "4xx", "--limit", "1", "--for", "20s"],
            Duration::from_secs(30),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tap.is_finished() && Instant::now() < deadline {
        let _ = send(mesh.c, "GET", "/public");
        std::thread::sleep(Duration::from_millis(200));
    }
    let tapped = stdout(&tap.join().unwrap());
    assert!(tapped.contains("-> 403") && tapped.contains("(refused by default/a-public)"), "{tapped}");

    // `tarmac stat` counts the refusals per workload, once telemetry has scraped them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = crate::observe::stat(&mesh.api, "workload", "10m").into_iter().find(|r| r["name"] == "b");
        let edge =
            crate::observe::stat(&mesh.api, "edge", "10m").into_iter().find(|r| r["src_workload"] == "c");
        let denied =
            |row: &Option<serde_json::Value>| row.as_ref().and_then(|r| r["denied"].as_u64()).unwrap_or(0);
        if denied(&b) >= 3 && denied(&edge) >= 1 {
            let table = stdout(&tarmac(&mesh.api, &["stat", "workload"], Duration::from_secs(10)));
            assert!(table.contains("FORBIDDEN") && table.contains("LIMITED"), "{table}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tarmac stat never counted b's denials: {b:?}\nthe edge from c: {edge:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A policy naming a client no Workload is: `tarmac check` says so, and still passes.
    write(
        &mesh.dir,
        "typo.yaml",
        "apiVersion: tarmac.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: typo}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: b}]\n  from: [{serviceAccounts: [aa]}]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let check = stdout(&tarmac(&mesh.api, &["check"], Duration::from_secs(20)));
        if check.contains("no Workload runs as service account default/aa") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tarmac check never flagged the unknown service account:\n{check}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::remove_file(mesh.dir.join("typo.yaml")).unwrap();
}

/// `METHOD url` with curl inside network namespace `ns` (bounded); the status, or 0 when
/// no response came.
fn curl_status(ns: &str, method: &str, url: &str) -> u16 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .args(["--max-time", "5", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The same policies through `tarmac up --transparent`: unmodified curl in `a`'s and
/// `c`'s network namespaces calls `http://b/...` by name, intercepted by their sidecars
/// and by `b`'s, over mTLS. Needs root, like the other namespace tests.
#[test]
fn a_may_call_b_only_on_get_public_through_transparent_interception() {
    if !crate::netns::can_run_privileged() {
        return;
    }
    let _turn = crate::transparent::ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture_copy("authz-transparent");
    let mut up =
        Up::start_with(&["--transparent", dir.to_str().unwrap(), "--mtls", "strict", "--api-port", "0"]);
    for who in ["a-0", "b-0", "c-0"] {
        up.wait_for(&format!("{who} ready"), Duration::from_secs(60), |lines| {
            lines.iter().any(|l| l.contains(&format!("| {who} ready: "))).then_some(())
        });
    }
    let (a, c) = ("tarmac-default-a-0", "tarmac-default-c-0");
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl_status(a, "GET", "http://b/public") != 200 {
        assert!(Instant::now() < deadline, "a never reached b's /public\n{}", up.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    for (who, ns, method, path, want) in [
        ("a", a, "GET", "/public", 200),
        ("a", a, "POST", "/public", 403),
        ("a", a, "GET", "/private", 403),
        ("c", c, "GET", "/public", 403),
        ("c", c, "GET", "/private", 403),
    ] {
        assert_eq!(curl_status(ns, method, &format!("http://b{path}")), want, "{who}: {method} {path}");
    }
    crate::up::stop(&mut up);
}
