//! Telemetry, as a user meets it: `tarmac up` on a small mesh (`tests/fixtures/observe`:
//! `front` calls `backend`, which answers the status asked for), a known mix of
//! successes and failures sent through it, and then `tarmac stat`, `edges`, `tap`,
//! `top`, `routes` and `check` run as separate processes against the control plane's
//! API; a real Prometheus, configured by `tarmac prometheus-config`, computing the same
//! rates and running every query of the Grafana dashboard (docs/grafana); the history the
//! control plane keeps (`/api/v1/history/...`); and the dashboard loaded in headless
//! Chromium, charts of that history included.

use super::up::Up;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarmac_testkit::tools::{binary, temp_dir};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/observe")
}

/// A copy of the fixture that a test may change.
fn fixture_copy(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    for file in ["mesh.yaml", "app.py"] {
        std::fs::copy(fixture().join(file), dir.join(file)).unwrap();
    }
    dir
}

/// Starts `tarmac up DIR --api-port 0` and waits (bounded) for every replica to be ready;
/// returns it with the API's address and the front's (through its sidecar).
fn start_mesh(dir: &Path) -> (Up, String, SocketAddr) {
    start_mesh_with(dir, &["backend-0", "backend-1"])
}

/// [`start_mesh`] for a fixture whose replicas other than `front-0` are `replicas`.
pub(crate) fn start_mesh_with(dir: &Path, replicas: &[&str]) -> (Up, String, SocketAddr) {
    let (up, api) = up_and_ready(dir.to_str().unwrap(), replicas);
    let front = up.wait_for("front-0 ready", Duration::from_secs(60), |lines| {
        lines
            .iter()
            .find_map(|l| l.split_once("| front-0 ready: http://"))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
    });
    (up, api, front)
}

/// Starts `tarmac up DIR --api-port 0` and waits (bounded) for its API and for `replicas`
/// to be ready; returns it with the API's address.
pub(crate) fn up_and_ready(dir: &str, replicas: &[&str]) -> (Up, String) {
    let up = Up::start_with(&[dir, "--api-port", "0"]);
    let api = up.wait_for("the API address", Duration::from_secs(30), |lines| {
        lines.iter().find_map(|l| l.split_once("control plane: API and dashboard on http://")).map(
            |(_, rest)| rest.split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_string(),
        )
    });
    for replica in replicas {
        let ready = format!("| {replica} ready: ");
        up.wait_for(&format!("{replica} ready"), Duration::from_secs(60), |lines| {
            lines.iter().any(|l| l.contains(&ready)).then_some(())
        });
    }
    (up, api)
}

/// `GET path` over HTTP/1.1 with bounded waits; the status code.
fn get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(response)
}

/// Runs `tarmac ARGS --control API` to completion, killed if it outlives `timeout`.
pub(crate) fn tarmac(api: &str, args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(binary("tarmac"))
        .args(args)
        .args(["--control", api])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tarmac starts");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub(crate) fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `tarmac stat RESOURCE -o json` rows.
pub(crate) fn stat(api: &str, resource: &str, window: &str) -> Vec<Value> {
    let out = tarmac(api, &["stat", resource, "-o", "json", "--window", window], Duration::from_secs(30));
    assert!(out.status.success(), "tarmac stat failed: {}", String::from_utf8_lossy(&out.stderr));
    json_of(&out)["rows"].as_array().cloned().unwrap_or_default()
}

/// (requests, successes) of the row whose `key` field is `name`.
fn counts(rows: &[Value], key: &str, name: &str) -> (u64, u64) {
    rows.iter()
        .find(|r| r[key] == name)
        .map(|r| (r["requests"].as_u64().unwrap(), r["successes"].as_u64().unwrap()))
        .unwrap_or((0, 0))
}

/// Everything `stat` says about front and backend, to compare before and after.
fn snapshot_counts(api: &str) -> Vec<(u64, u64)> {
    let (workloads, services, edges) =
        (stat(api, "workload", "10m"), stat(api, "service", "10m"), stat(api, "edge", "10m"));
    let routes = stat(api, "route", "10m");
    let backend_routes = routes
        .iter()
        .filter(|r| r["service"] == "backend")
        .map(|r| (r["requests"].as_u64().unwrap(), r["successes"].as_u64().unwrap()))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    vec![
        counts(&workloads, "name", "front"),
        counts(&workloads, "name", "backend"),
        counts(&services, "name", "front"),
        counts(&services, "name", "backend"),
        counts(&edges, "src_workload", "front"),
        backend_routes,
    ]
}

/// Waits (bounded) until `tarmac check` passes (`want_ok`) or fails with `mentions` in
/// its output; returns that output.
pub(crate) fn wait_for_check(api: &str, want_ok: bool, mentions: &str, up: &Up) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tarmac(api, &["check"], Duration::from_secs(30));
        if out.status.success() == want_ok && String::from_utf8_lossy(&out.stdout).contains(mentions) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "tarmac check did not {} within 30 s:\n{}\n{}",
            if want_ok { "pass".to_string() } else { format!("fail mentioning {mentions}") },
            String::from_utf8_lossy(&out.stdout),
            up.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `/call?status=...` through the front in the background until stopped (bounded
/// to `limit` in time), cycling through `statuses`; counts what was answered.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(front: SocketAddr, statuses: &'static [u16], every: Duration, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + limit;
            let mut next = Instant::now();
            for status in statuses.iter().cycle() {
                if s.load(Ordering::Relaxed) || Instant::now() > end {
                    return;
                }
                let _ = get(front, &format!("/call?status={status}"));
                n.fetch_add(1, Ordering::Relaxed);
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Self { stop, sent, thread: Some(thread) }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A child whose stdout lines are collected as they come.
pub(crate) fn spawn_collecting(mut command: Command) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let into = lines.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

#[test]
fn stat_tap_top_routes_and_check_follow_a_running_mesh() {
    let dir = fixture_copy("observe");
    let (up, api, front) = start_mesh(&dir);

    // A healthy mesh passes `check` once every proxy has connected.
    let out = wait_for_check(&api, true, "", &up);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("√ workload backend: 2/2 replicas running"), "{text}");

    // The front reaches the backend (discovery has delivered its endpoints).
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(front, "/call?status=200") != Ok(200) {
        assert!(Instant::now() < deadline, "front cannot reach backend\n{}", up.output());
        std::thread::sleep(Duration::from_millis(100));
    }

    // 30 successes and 10 failures, each answered as asked.
    let before = snapshot_counts(&api);
    for i in 0..40 {
        let status = if i % 4 == 3 { 500 } else { 200 };
        assert_eq!(get(front, &format!("/call?status={status}")), Ok(status));
    }
    let after = snapshot_counts(&api);
    let delta: Vec<(u64, u64)> = before.iter().zip(&after).map(|(b, a)| (a.0 - b.0, a.1 - b.1)).collect();
    assert_eq!(
        delta,
        vec![(40, 30); 6],
        "workload front, workload backend, service front, service backend, edge front->backend, \
         routes of backend: (requests, successes) counted while 40 requests (10 failing) were sent"
    );
    let workloads = stat(&api, "workload", "10m");
    let backend = workloads.iter().find(|r| r["name"] == "backend").unwrap();
    assert_eq!(backend["meshed"], "2/2");
    assert_eq!(backend["secured_rate"], 1.0, "only the front calls the backend, over mTLS: {backend}");
    assert!(backend["latency_ms_p50"].as_f64().is_some_and(|ms| ms > 0.0), "{backend}");
    let edges = stat(&api, "edge", "10m");
    let edge = edges.iter().find(|r| r["src_workload"] == "front").unwrap();
    assert_eq!(
        (edge["dst_service"].as_str(), edge["dst_workloads"].clone()),
        (Some("backend"), serde_json::json!(["backend"]))
    );
    assert_eq!(edge["secured_rate"], 1.0, "sidecars talk mTLS: {edge}");
    let table = tarmac(&api, &["edges"], Duration::from_secs(30));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("SRC ") && table.contains("front   backend"), "{table}");

    // Tap: only the backend's 5xx, while successes and failures flow.
    let mut command = Command::new(binary("tarmac"));
    command.args([
        "tap",
        "workload/backend",
        "--status",
        "5xx",
        "-o",
        "json",
        "--limit",
        "3",
        "--for",
        "60s",
    ]);
    command.args(["--control", &api]);
    let (mut tap, lines) = spawn_collecting(command);
    let traffic = Traffic::start(front, &[200, 503], Duration::from_millis(50), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while tap.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tap saw no 3 events in 60 s: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(traffic);
    let events: Vec<Value> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e.get("dropped").is_none())
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    for e in &events {
        assert_eq!(
            (e["workload"].as_str(), e["direction"].as_str()),
            (Some("backend"), Some("inbound")),
            "{e}"
        );
        assert_eq!((e["status"].as_u64(), e["method"].as_str()), (Some(503), Some("GET")), "{e}");
        assert!(e["path"].as_str().unwrap().starts_with("/work"), "{e}");
    }

    // Top: the paths requested while it counts.
    let traffic = Traffic::start(front, &[200], Duration::from_millis(50), Duration::from_secs(10));
    let out = tarmac(&api, &["top", "-o", "json", "--for", "3s"], Duration::from_secs(30));
    drop(traffic);
    let top = json_of(&out);
    let rows = top["rows"].as_array().unwrap();
    let row = |dst: &str, path: &str| {
        rows.iter()
            .find(|r| r["destination"] == dst && r["path"] == path)
            .unwrap_or_else(|| panic!("no {dst} {path}: {top}"))
    };
    assert!(row("workload/front", "/call")["count"].as_u64().unwrap() > 0);
    assert!(row("workload/backend", "/work")["count"].as_u64().unwrap() > 0);
    assert!(row("service/backend", "/work")["successes"].as_u64().unwrap() > 0);

    // Routes: the HTTPRoute attached to backend, with its rule.
    let out = tarmac(&api, &["routes", "backend", "-o", "json"], Duration::from_secs(30));
    let routes = json_of(&out);
    assert_eq!(routes["routes"][0]["name"], "backend-work", "{routes}");
    assert_eq!(routes["routes"][0]["rules"][0]["name"], "work", "{routes}");
    let out = tarmac(&api, &["routes", "backend"], Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("HTTPRoute default/backend-work (port 80)") && text.contains("PathPrefix /work"),
        "{text}"
    );

    // An invalid file: check fails naming file and field; the mesh keeps serving.
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec: {ports: []}\n",
    )
    .unwrap();
    let out = wait_for_check(&api, false, "broken.yaml", &up);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("× configuration") && text.contains("broken.yaml") && text.contains("spec.ports"),
        "{text}"
    );
    let report = json_of(&tarmac(&api, &["check", "-o", "json"], Duration::from_secs(30)));
    let error = &report["checks"][1]["errors"][0];
    assert!(error["file"].as_str().unwrap().ends_with("broken.yaml"), "{report}");
    assert_eq!(error["field"], "spec.ports", "{report}");
    assert_eq!(get(front, "/call?status=200"), Ok(200), "the last good configuration serves");

    // Fixed: check passes again.
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();
    wait_for_check(&api, true, "", &up);
}

/// The HTTPRoute of the fixture gets a second rule, `slow`, delayed 200 ms by a
/// FaultInjection.
const SLOW_RULE: &str = "  - name: slow
    matches: [{path: {type: PathPrefix, value: /slow}}]
    filters: [{type: ExtensionRef, extensionRef: {group: tarmac.io, kind: FaultInjection, name: slow-down}}]
    backendRefs: [{name: backend, port: 80}]
---
apiVersion: tarmac.io/v1alpha1
kind: FaultInjection
metadata: {name: slow-down}
spec:
  delay: {fixedDelay: 200ms, percentage: 100}
---
";

#[test]
fn stat_route_reports_latency_percentiles_per_rule() {
    let dir = fixture_copy("observe-route-latency");
    let mesh = std::fs::read_to_string(dir.join("mesh.yaml")).unwrap();
    let last_line = "    backendRefs: [{name: backend, port: 80}]\n";
    let rule_end = format!("{last_line}---\n");
    assert!(mesh.contains(&rule_end), "the fixture's HTTPRoute changed");
    std::fs::write(dir.join("mesh.yaml"), mesh.replacen(&rule_end, &format!("{last_line}{SLOW_RULE}"), 1))
        .unwrap();
    let (up, api, front) = start_mesh(&dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(front, "/call/slow") != Ok(200) {
        assert!(Instant::now() < deadline, "front cannot reach backend's slow rule\n{}", up.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..20 {
        assert_eq!(get(front, "/call/work"), Ok(200));
    }
    for _ in 0..10 {
        assert_eq!(get(front, "/call/slow"), Ok(200));
    }
    // The control plane scrapes every 2 s: wait (bounded) until it has seen them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = stat(&api, "route/backend", "10m");
        if counts(&rows, "name", "work").0 >= 20 && counts(&rows, "name", "slow").0 >= 11 {
            break rows;
        }
        assert!(Instant::now() < deadline, "stat route never counted the requests: {rows:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    let (slow, work) = (row("slow"), row("work"));
    for q in ["latency_ms_p50", "latency_ms_p95", "latency_ms_p99"] {
        assert!(slow[q].as_f64().is_some_and(|ms| ms >= 200.0), "the delayed rule's {q}: {slow}");
    }
    assert!(work["latency_ms_p50"].as_f64().is_some_and(|ms| ms < 100.0), "the other rule: {work}");

    let table = tarmac(&api, &["stat", "route/backend", "--window", "10m"], Duration::from_secs(30));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("SERVICE ") && table.contains("LATENCY_P99"), "{table}");
    let slow_line = table.lines().find(|l| l.contains(" slow ")).unwrap_or_else(|| panic!("{table}"));
    assert!(!slow_line.contains(" - "), "every column of the slow rule is known: {table}");
    println!("{table}");
}

#[test]
fn check_fails_with_advice_when_no_control_plane_answers() {
    // A port nothing listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tarmac(&format!("127.0.0.1:{port}"), &["check"], Duration::from_secs(30));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("× control plane") && text.contains("tarmac up"), "{text}");
}

/// Prometheus, started by the test, with its HTTP API on loopback.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _storage: PathBuf,
}

impl Prometheus {
    fn start(config: &Path, storage: PathBuf) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], tarmac_testkit::servers::free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (scripts/setup-test-deps.sh installs it)");
        Self { child, addr, _storage: storage }
    }

    /// An instant PromQL query; the value of the only series, None when empty.
    fn query(&self, promql: &str) -> Option<f64> {
        let json = self.query_json(promql)?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// An instant PromQL query's whole answer (`status`, `data` or `error`), whatever its
    /// HTTP status.
    fn query_json(&self, promql: &str) -> Option<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            stream,
            "GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        // Chunked or not, the JSON is one object from the first `{` to the last `}`.
        serde_json::from_str(&body[body.find('{')?..=body.rfind('}')?]).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._storage);
    }
}

#[test]
fn prometheus_computes_the_rates_tarmac_stat_reports() {
    let (up, api, front) = start_mesh(&fixture());
    let out = tarmac(&api, &["prometheus-config", "--scrape-interval", "1s"], Duration::from_secs(30));
    assert!(out.status.success());
    let dir = temp_dir("prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, &out.stdout).unwrap();
    let prometheus = Prometheus::start(&config, dir.join("data"));

    // Prometheus finds the three proxies through the control plane.
    let deadline = Instant::now() + Duration::from_secs(60);
    while prometheus.query("count(up{job=\"tarmac-proxies\"} == 1)") != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape 3 proxies within 60 s\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Steady traffic, one request in four failing; both compare the last 20 s of it.
    let traffic =
        Traffic::start(front, &[200, 200, 200, 500], Duration::from_millis(50), Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(25));
    let selector = "direction=\"inbound\",workload=\"front\"";
    let prom_rps = prometheus.query(&format!("sum(rate(tarmac_responses_total{{{selector}}}[20s]))"));
    let prom_success = prometheus.query(&format!(
        "sum(rate(tarmac_responses_total{{{selector},classification=\"success\"}}[20s])) / sum(rate(tarmac_responses_total{{{selector}}}[20s]))"
    ));
    let rows = stat(&api, "workload/front", "20s");
    let sent = traffic.sent.load(Ordering::Relaxed);
    drop(traffic);
    let (prom_rps, prom_success) = (prom_rps.expect("a request rate"), prom_success.expect("a success rate"));
    let tarmac_rps = rows[0]["rps"].as_f64().unwrap();
    let tarmac_success = rows[0]["success_rate"].as_f64().unwrap();
    println!(
        "sent {sent} requests; Prometheus: {prom_rps:.2} rps, {prom_success:.3} success; tarmac stat: {tarmac_rps:.2} rps, {tarmac_success:.3} success"
    );
    // Tolerances: the two look at windows that end up to one scrape apart and
    // Prometheus extrapolates to the window's edges.
    assert!(prom_rps > 1.0, "traffic flowed: {prom_rps}");
    assert!(
        (prom_rps - tarmac_rps).abs() <= 0.2 * prom_rps.max(tarmac_rps),
        "request rates differ by more than 20 %: Prometheus {prom_rps}, tarmac {tarmac_rps}"
    );
    assert!(
        (prom_success - tarmac_success).abs() <= 0.05,
        "success rates differ by more than 5 points: Prometheus {prom_success}, tarmac {tarmac_success}"
    );
    assert!((tarmac_success - 0.75).abs() <= 0.05, "one request in four failed: {tarmac_success}");

    // The Grafana dashboard (docs/grafana/tarmac.json), every namespace, workload and
    // service chosen: each panel's expressions run, and those of the golden metrics (per
    // workload, service, route and edge) return series for this traffic.
    let queries = super::grafana::queries();
    let mut empty = Vec::new();
    for q in &queries {
        let answer =
            prometheus.query_json(&q.expr).unwrap_or_else(|| panic!("Prometheus did not answer {}", q.expr));
        assert_eq!(answer["status"], "success", "{} / {}: {}\n{answer}", q.row, q.panel, q.expr);
        let series = answer["data"]["result"].as_array().map_or(0, Vec::len);
        if q.golden() && series == 0 {
            empty.push(format!("{} / {}: {}", q.row, q.panel, q.expr));
        }
    }
    assert!(empty.is_empty(), "golden-metric panels without data:\n{}", empty.join("\n"));
    println!(
        "the Grafana dashboard's {} queries ran, {} of them golden",
        queries.len(),
        queries.iter().filter(|q| q.golden()).count()
    );
}

/// `GET path` from the control plane's API: the status and the JSON body.
fn api_get(api: &str, path: &str) -> (u16, Value) {
    let addr: SocketAddr = api.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) => serde_json::from_str(&body[start..=end]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// The numbers of a history column, gaps left out.
fn values(series: &Value, column: &str) -> Vec<f64> {
    series[column].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

/// The control plane's history with real traffic through `tarmac up`: a point every 10 s
/// per service, route and edge, with the traffic's rate, failures, latency and mTLS.
fn history_follows_the_traffic(api: &str, up: &Up) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let backend = loop {
        let (status, answer) = api_get(api, "/api/v1/history/services/backend");
        if status == 200 && values(&answer["series"][0], "rps").iter().any(|r| *r > 0.0) {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no history of backend's traffic within 60 s: {answer}\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        (backend["kind"].as_str(), backend["resolution_seconds"].as_u64()),
        (Some("service"), Some(10))
    );
    assert_eq!(backend["capacity"], 360);
    let times: Vec<u64> =
        backend["timestamps_ms"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] == 10_000), "a point every 10 s: {times:?}");
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(
        times.last().is_some_and(|t| t.abs_diff(now_ms) < 30_000),
        "the newest point is recent: {times:?}"
    );
    let series = &backend["series"][0];
    assert_eq!((series["namespace"].as_str(), series["name"].as_str()), (Some("default"), Some("backend")));
    for column in ["rps", "requests", "success_rate", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99"] {
        assert_eq!(
            series[column].as_array().map(Vec::len),
            Some(times.len()),
            "{column}: one value per point"
        );
    }
    // One request in four fails (and a few retried 503s): no point of traffic is all success.
    let success = values(series, "success_rate");
    assert!(success.iter().any(|s| (0.5..0.95).contains(s)), "the failing quarter shows: {series}");
    assert!(!values(series, "latency_ms_p99").is_empty(), "{series}");

    let (status, edges) = api_get(api, "/api/v1/history/edges?from=front&to=backend");
    assert_eq!(status, 200, "{edges}");
    let edge = &edges["series"][0];
    assert_eq!(
        (edge["src_workload"].as_str(), edge["dst_service"].as_str()),
        (Some("front"), Some("backend")),
        "{edges}"
    );
    assert!(values(edge, "rps").iter().any(|r| *r > 0.0), "{edge}");
    let secured = values(edge, "secured_rate");
    assert!(!secured.is_empty() && secured.iter().all(|s| *s == 1.0), "every call went over mTLS: {edge}");

    let (status, routes) = api_get(api, "/api/v1/history/routes/backend");
    assert_eq!(status, 200, "{routes}");
    let work = routes["series"].as_array().unwrap().iter().find(|s| s["name"] == "work");
    assert!(
        work.is_some_and(|w| values(w, "rps").iter().any(|r| *r > 0.0)),
        "the rule `work` carried the traffic: {routes}"
    );

    // Errors as the rest of the API: what is wrong, and what to write instead.
    let (status, answer) = api_get(api, "/api/v1/history/workload");
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("service, route and edge"), "{answer}");
    let (status, answer) = api_get(api, "/api/v1/history/services/nope");
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("default/nope"), "{answer}");
    let (status, answer) = api_get(api, "/api/v1/history/services?window=2h");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = api_get(api, "/api/v1/history/services?window=30s");
    assert!(status == 200 && answer["timestamps_ms"].as_array().unwrap().len() <= 3, "{answer}");
}

/// Headless Chromium, kept from reaching anything but loopback, with a profile of its own.
fn chromium(args: &[&str], profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .args(["--disable-default-apps", "--disable-domain-reliability", "--no-default-browser-check"])
        // No name resolves (so nothing beyond loopback is reached); 127.0.0.1 stays itself.
        .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Runs a command to completion, killed if it outlives `timeout`.
fn output_within(mut command: Command, timeout: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts (scripts/setup-test-deps.sh installs chromium)");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = BufReader::new(stdout).read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut output = child.wait_with_output().unwrap();
    output.stdout = reader.join().unwrap();
    output
}

/// The numbers in `data-rps="..."` of the elements whose opening tag contains `marker`.
fn rps_of(dom: &str, marker: &str) -> Vec<f64> {
    attr_of(dom, marker, "data-rps")
}

/// The numeric attribute `attr` of every tag carrying `marker`.
fn attr_of(dom: &str, marker: &str, attr: &str) -> Vec<f64> {
    let attr = format!("{attr}=\"");
    dom.match_indices(marker)
        .filter_map(|(at, _)| {
            let tag_end = at + dom[at..].find('>')?;
            let tag = &dom[dom[..at].rfind('<')?..tag_end];
            let value = tag.split_once(attr.as_str())?.1.split('"').next()?;
            value.parse().ok()
        })
        .collect()
}

#[test]
fn the_dashboard_shows_services_edges_and_live_tap_in_chromium() {
    let (up, api, front) = start_mesh(&fixture());
    let _traffic =
        Traffic::start(front, &[200, 200, 200, 500], Duration::from_millis(40), Duration::from_secs(120));
    // Wait (bounded) until the edge carries traffic, so that the page has something to show.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&stat(&api, "edge", "1m"), "src_workload", "front").0 == 0 {
        assert!(Instant::now() < deadline, "no traffic front -> backend within 60 s\n{}", up.output());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A few requests that front's sidecar retries (the `flaky` rule, once on 503), until
    // the telemetry counts them.
    for _ in 0..5 {
        assert_eq!(get(front, "/call/flaky?status=503"), Ok(503));
    }
    let retries = |rows: &[serde_json::Value]| {
        rows.iter().find(|r| r["name"] == "backend").and_then(|r| r["retries"].as_u64()).unwrap_or(0)
    };
    while retries(&stat(&api, "service", "1m")) == 0 {
        assert!(Instant::now() < deadline, "no retries counted for backend\n{}", up.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    // `tarmac stat service` shows them in its resilience columns.
    let out = tarmac(&api, &["stat", "service", "--window", "10m"], Duration::from_secs(30));
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    let column =
        |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}:\n{table}"));
    let backend: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.first() == Some(&"backend"))
        .unwrap();
    assert!(backend[column("RETRIES")].parse::<u64>().unwrap() > 0, "{table}");
    // No limit is configured: nothing shed. (An endpoint may be ejected: a quarter of the
    // traffic fails by design.)
    assert_eq!(backend[column("SHED")], "0", "{table}");
    for name in ["BUDGET_DENIED", "EJECTED"] {
        assert!(backend[column(name)].parse::<u64>().is_ok(), "{table}");
    }

    // The control plane's history has caught some of this traffic (for the charts below).
    history_follows_the_traffic(&api, &up);

    let profile = temp_dir("chromium");
    let url = format!("http://{api}/");
    // Chromium waits this much virtual time for the page's polls and tap to run.
    let dom = output_within(
        chromium(&["--virtual-time-budget=8000", "--dump-dom", &url], &profile),
        Duration::from_secs(120),
    );
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    for service in ["front", "backend"] {
        let rps = rps_of(&dom, &format!("data-service=\"{service}\""));
        assert!(
            rps.first().is_some_and(|r| *r > 0.0),
            "service {service} with RPS > 0 in the page: {rps:?}\n{dom}"
        );
    }
    // Retries as callers' sidecars count them, in the services table.
    let retried = attr_of(&dom, "data-service=\"backend\"", "data-retries");
    assert!(retried.iter().any(|n| *n > 0.0), "backend's retries in the page: {retried:?}\n{dom}");
    assert!(dom.contains("retries denied by budget"), "the summary cards\n{dom}");
    let edge = rps_of(&dom, "data-src=\"front\" data-dst=\"backend\"");
    assert!(
        edge.first().is_some_and(|r| *r > 0.0),
        "the edge front -> backend in the graph: {edge:?}\n{dom}"
    );
    // The header shows the outcome of `check` (which may vary on a loaded machine).
    assert!(
        dom.contains("all checks pass") || dom.contains(" failing</div>"),
        "check results in the header\n{dom}"
    );
    let events = dom.matches("class=\"tap-event").count();
    assert!(events > 0, "the live tap received events\n{dom}");
    // The last hour's charts, from the control plane's history: backend's lines (requests
    // per second, success rate, p50 and p99) have points, and so does the edge's sparkline.
    let lines = attr_of(&dom, "data-series=\"backend\"", "data-points");
    assert!(
        lines.len() >= 4 && lines.iter().all(|n| *n >= 1.0),
        "backend's history charts: {lines:?}\n{dom}"
    );
    let spark = attr_of(&dom, "class=\"spark\"", "data-points");
    assert!(spark.iter().any(|n| *n >= 1.0), "the edge's last hour in the edges table: {spark:?}\n{dom}");
    // The topology's time slider spans the points kept, its last position live.
    let slider = attr_of(&dom, "id=\"graph-time\"", "max");
    assert!(slider.first().is_some_and(|n| *n >= 1.0), "a slider over the history: {slider:?}\n{dom}");

    let screenshot = tarmac_testkit::tools::artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = format!("--screenshot={}", screenshot.display());
    output_within(
        chromium(&["--virtual-time-budget=8000", "--window-size=1400,1900", &shot, &url], &profile),
        Duration::from_secs(120),
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "a screenshot at {}",
        screenshot.display()
    );
    let _ = std::fs::remove_dir_all(&profile);
}

/// A traced request as a proxy's `/tap` reports it (with the `trace_id` the proxies add to
/// traced requests' events).
const TRACED_EVENT: &str = r#"{"ts_ms":1700000000000,"direction":"inbound","target":"127.0.0.1:8080","source":"127.0.0.1:5555","client_id":null,"method":"GET","authority":"books","path":"/slow","status":200,"grpc_status":null,"duration_ms":812.5,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;
const TRACE_URL: &str = "http://127.0.0.1:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736";

/// A proxy's admin listener that answers `/tap` with [`TRACED_EVENT`] every 200 ms (for
/// at most 60 s per watcher) and everything else with an empty 200.
fn scripted_admin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                if !head.starts_with(b"GET /tap") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    return;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                let line = format!("{TRACED_EVENT}\n");
                let end = Instant::now() + Duration::from_secs(60);
                while Instant::now() < end {
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    if stream.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            });
        }
    });
    addr
}

/// The control plane with `--trace-url` relays a traced request's tap event with the link
/// to its trace: `tarmac tap` prints it and the dashboard's tap links to it. The proxy's
/// admin is scripted here: it stands for a proxy tracing requests (the relay passes its
/// events through as they come; the proxies' own tracing is tested with them).
#[test]
fn traced_requests_in_tap_link_to_the_trace_ui() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = tarmac_control::registry::Registry::default();
    let (_snapshots, rx) = tokio::sync::watch::channel(Arc::new(tarmac_control::store::Snapshot {
        generation: 1,
        objects: Default::default(),
    }));
    let trace_url =
        tarmac_control::telemetry::tap::TraceUrl::parse("http://127.0.0.1:16686/trace/{trace_id}").unwrap();
    let config =
        tarmac_control::Config::snapshots(rx).with_registry(registry.clone()).with_trace_url(Some(trace_url));
    let running = runtime.block_on(async {
        let listeners = tarmac_control::Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            &["127.0.0.1:0".parse().unwrap()],
        )
        .await
        .unwrap();
        tarmac_control::start(config, listeners, std::future::pending()).await.unwrap()
    });
    let api = running.addrs.api[0].to_string();
    registry.upsert(tarmac_control::registry::Instance {
        namespace: "default".into(),
        workload: "books".into(),
        replica: 0,
        labels: Default::default(),
        service_account: "books".into(),
        addr: "127.0.0.1:1".parse().unwrap(),
        meshed: true,
        admin: Some(scripted_admin()),
    });

    let out = tarmac(&api, &["tap", "-o", "json", "--limit", "1", "--for", "30s"], Duration::from_secs(60));
    let event: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(event["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{event}");
    assert_eq!(event["trace_url"], TRACE_URL, "{event}");
    assert_eq!(event["workload"], "books", "{event}");
    let out = tarmac(&api, &["tap", "--limit", "1", "--for", "30s"], Duration::from_secs(60));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.trim_end().ends_with(&format!("812ms trace={TRACE_URL}")), "{line}");

    let profile = temp_dir("chromium-trace");
    let dom = output_within(
        chromium(&["--virtual-time-budget=5000", "--dump-dom", &format!("http://{api}/")], &profile),
        Duration::from_secs(120),
    );
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let link = format!("href=\"{TRACE_URL}\"");
    let tag = dom.match_indices(&link).next().map(|(at, _)| {
        let start = dom[..at].rfind('<').unwrap();
        &dom[start..at + dom[at..].find('>').unwrap()]
    });
    assert!(
        tag.is_some_and(|t| t.starts_with("<a class=\"trace\"")
            && t.contains("data-trace-id=\"4bf92f3577b34da6a3ce929d0e0e4736\"")),
        "the tap row links to the trace: {tag:?}\n{dom}"
    );
    let _ = std::fs::remove_dir_all(&profile);
    drop(running);
}
