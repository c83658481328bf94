//! Tracing and access logs end to end.
//!
//! `tarmac up examples/tracing --otlp 127.0.0.1:P` (a copy, sampling every request), `P`
//! an OTLP/gRPC receiver written with the `opentelemetry-proto` package
//! (`tests/peers/otlp_receiver.py`: the specification's messages, not ours): a request
//! from the test with a sampled `traceparent` crosses web's sidecar (inbound), web, web's
//! sidecar (outbound) and books' sidecar to books; the receiver gets one trace of three
//! spans, each the child of the one before, the first the child of the test's, with the
//! HTTP attributes and the peers' SPIFFE identities, timed within each other. A request
//! without context gets a trace started by web's outbound sidecar. The same requests leave
//! an access log line in each sidecar: the common log format in web's, JSON in books'.
//! Then a Telemetry added to the directory stops web's tracing and logging, live.
//!
//! Then a dead collector, with proxies in-process: a port nobody listens on, and one that
//! accepts and never answers. Requests all succeed, and the spans are dropped and counted.

use crate::up::{Up, replica_addr, stop};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The receiver as a child process; its spans, one JSON value per line.
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (run scripts/setup-test-deps.sh)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first.strip_prefix("listening ").and_then(|p| p.parse().ok()).unwrap_or_else(|| {
            panic!("the receiver did not start (opentelemetry-proto installed?): {first:?}")
        });
        let spans = Arc::new(Mutex::new(Vec::new()));
        let into = spans.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { return };
                let span = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                into.lock().unwrap().push(span);
            }
        });
        Self { child, port, spans }
    }

    /// Waits (bounded) for `n` spans of `trace_id`, then returns them.
    fn trace(&self, trace_id: &str, n: usize, timeout: Duration) -> Option<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<_> =
                self.spans.lock().unwrap().iter().filter(|s| s["trace_id"] == trace_id).cloned().collect();
            if found.len() >= n {
                return Some(found);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn all(&self) -> Vec<serde_json::Value> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1 with extra headers; the status, or what went wrong.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(response)
}

fn hex_id(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", fastrand::u8(1..))).collect()
}

fn by_kind<'a>(spans: &'a [serde_json::Value], kind: &str, service: &str) -> &'a serde_json::Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind && s["resource"]["service.name"] == service)
        .unwrap_or_else(|| panic!("no {kind} span of {service} in {spans:#?}"))
}

fn nanos(span: &serde_json::Value, key: &str) -> u64 {
    span[key].as_u64().unwrap_or_else(|| panic!("{key} of {span}"))
}

/// Lines `prefix | ...` of `tarmac up`'s output that contain every needle.
fn log_lines(up: &Up, prefix: &str, needles: &[&str]) -> Vec<String> {
    up.lines()
        .iter()
        .filter_map(|l| l.split_once(" | ").filter(|(who, _)| who.trim() == prefix).map(|(_, line)| line))
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_string)
        .collect()
}

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const BOOKS: &str = "spiffe://cluster.local/ns/default/sa/books";

#[test]
fn a_request_through_two_sidecars_is_one_trace_at_a_real_receiver_and_one_line_per_access_log() {
    let receiver = Receiver::start();
    // A copy of the example: the test changes its Telemetry objects while the mesh runs.
    // It samples every request of the namespace (more specific than the example's 10 %
    // for the mesh), so that a request without context is traced for sure.
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tracing");
    let dir = tarmac_testkit::tools::temp_dir("tracing");
    for file in ["mesh.yaml", "app.py", "telemetry.yaml"] {
        std::fs::copy(example.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(
        dir.join("sample-all.yaml"),
        "apiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: sample-all}\nspec:\n  tracing: {samplingPercentage: 100}\n",
    )
    .unwrap();
    let collector = format!("127.0.0.1:{}", receiver.port);
    let mut up = Up::start_with(&[dir.to_str().unwrap(), "--otlp", &collector, "--api-port", "0"]);
    let web = replica_addr(&up, "web-0", "sidecar inbound ");
    replica_addr(&up, "books-0", "sidecar inbound ");

    // The test is the app's caller, with a sampled context of its own. Until discovery has
    // told the sidecars about books and about their telemetry, requests fail or go
    // untraced: each try is a new trace.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (trace_id, parent, tag, spans) = loop {
        let (trace_id, parent, tag) = (hex_id(16), hex_id(8), hex_id(4));
        let traceparent = format!("00-{trace_id}-{parent}-01");
        let status =
            get(web, &format!("/call/{tag}"), &[("traceparent", &traceparent), ("tracestate", "test=1")]);
        if status == Ok(200)
            && let Some(spans) = receiver.trace(&trace_id, 3, Duration::from_secs(5))
        {
            break (trace_id, parent, tag, spans);
        }
        assert!(
            Instant::now() < deadline,
            "no traced request within 60 s; last {status:?}; spans {:#?}\n{}",
            receiver.all(),
            up.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Give late spans of this trace the time to arrive: there must be no fourth.
    std::thread::sleep(Duration::from_secs(1));
    let spans = receiver.trace(&trace_id, 3, Duration::ZERO).unwrap_or(spans);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let web_in = by_kind(&spans, "SPAN_KIND_SERVER", "web");
    let web_out = by_kind(&spans, "SPAN_KIND_CLIENT", "web");
    let books_in = by_kind(&spans, "SPAN_KIND_SERVER", "books");

    // Each span the child of the one before; the first the child of the test's span.
    assert_eq!(web_in["parent_span_id"], parent.as_str(), "{web_in}");
    assert_eq!(web_out["parent_span_id"], web_in["span_id"], "web forwarded its sidecar's traceparent");
    assert_eq!(books_in["parent_span_id"], web_out["span_id"], "web's sidecar named its span to books'");
    assert_eq!(web_in["trace_state"], "test=1");
    assert_eq!(web_out["trace_state"], "test=1", "web passed tracestate on");
    for s in &spans {
        assert_eq!(s["scope"], "tarmac-proxy");
        assert_eq!(s["attributes"]["http.request.method"], "GET", "{s}");
        assert_eq!(s["attributes"]["http.response.status_code"], 200, "{s}");
        assert_eq!(s["status"], "STATUS_CODE_UNSET", "{s}");
        assert!(s["attributes"]["http.response.body.size"].as_i64() > Some(0), "{s}");
        assert!(s["attributes"]["network.peer.address"].is_string(), "{s}");
        assert!(s["attributes"]["server.address"].is_string(), "{s}");
        assert_eq!(s["attributes"]["tarmac.retries"], 0, "{s}");
    }
    assert_eq!(web_in["attributes"]["url.path"], format!("/call/{tag}"));
    assert_eq!(web_out["attributes"]["url.path"], format!("/books/{tag}"));
    assert_eq!(books_in["attributes"]["url.path"], format!("/books/{tag}"));
    // The peers' proven identities: books' to web's sidecar, web's to books'.
    assert_eq!(web_out["attributes"]["tarmac.peer.identity"], BOOKS, "{web_out}");
    assert_eq!(books_in["attributes"]["tarmac.peer.identity"], WEB, "{books_in}");
    // The route and rule that took the call, at the sidecar that routed it.
    assert_eq!(web_out["attributes"]["http.route"], "default/books-routes", "{web_out}");
    assert_eq!(web_out["attributes"]["tarmac.rule"], "list", "{web_out}");
    // Timing that nests: each span within its parent.
    for (outer, inner) in [(web_in, web_out), (web_out, books_in)] {
        assert!(nanos(outer, "start") <= nanos(inner, "start"), "{outer}\n{inner}");
        assert!(nanos(inner, "end") <= nanos(outer, "end"), "{outer}\n{inner}");
        assert!(nanos(inner, "start") <= nanos(inner, "end"), "{inner}");
    }

    // Without context: web's outbound sidecar starts the trace (the namespace samples 100 %);
    // its span is the root, books' sidecar's its child.
    let bare = hex_id(4);
    assert_eq!(get(web, &format!("/call/{bare}"), &[]), Ok(200));
    let path = format!("/books/{bare}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (root, child) = loop {
        let all = receiver.all();
        let root =
            all.iter().find(|s| s["kind"] == "SPAN_KIND_CLIENT" && s["attributes"]["url.path"] == path);
        let child = root.and_then(|r| {
            all.iter().find(|s| s["kind"] == "SPAN_KIND_SERVER" && s["trace_id"] == r["trace_id"]).cloned()
        });
        if let (Some(root), Some(child)) = (root, child) {
            break (root.clone(), child);
        }
        assert!(Instant::now() < deadline, "no trace for {path}: {all:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(root["parent_span_id"], "", "a new trace's root: {root}");
    assert_eq!(root["resource"]["service.name"], "web");
    assert_eq!(child["parent_span_id"], root["span_id"]);
    assert_eq!(child["resource"]["service.name"], "books");
    let inbound_untraced = receiver
        .all()
        .iter()
        .any(|s| s["kind"] == "SPAN_KIND_SERVER" && s["attributes"]["url.path"] == format!("/call/{bare}"));
    assert!(!inbound_untraced, "an inbound sidecar never starts a trace");

    // Access logs. books' (JSON): the traced request, every field an operator greps for.
    let json_lines = log_lines(&up, "books-0 proxy", &[&format!("\"path\":\"/books/{tag}\"")]);
    assert_eq!(json_lines.len(), 1, "{json_lines:#?}\n{}", up.output());
    let line: serde_json::Value = serde_json::from_str(&json_lines[0]).unwrap();
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{line}");
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["source_identity"], WEB);
    assert_eq!(line["method"], "GET");
    assert!(line["authority"].is_string(), "{line}");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(line["response_bytes"].as_u64() > Some(0), "{line}");
    assert_eq!(line["retries"], 0);
    assert_eq!(line["trace_id"], trace_id.as_str());
    assert!(line["source"].is_string(), "{line}");
    // web's (common log format): its inbound line and its outbound one, which names the
    // peer it proved and the route.
    let inbound = log_lines(&up, "web-0 proxy", &[&format!("\"GET /call/{tag} HTTP/1.1\" 200 ")]);
    assert_eq!(inbound.len(), 1, "{inbound:#?}\n{}", up.output());
    assert!(inbound[0].starts_with("127.0.0.1 - - ["), "{}", inbound[0]);
    assert!(inbound[0].contains(&format!("trace_id={trace_id}")), "{}", inbound[0]);
    assert!(inbound[0].contains("direction=inbound"), "{}", inbound[0]);
    let outbound = log_lines(&up, "web-0 proxy", &[&format!("\"GET /books/{tag} "), " 200 "]);
    assert_eq!(outbound.len(), 1, "{outbound:#?}\n{}", up.output());
    for field in [
        "direction=outbound".to_string(),
        format!("destination_identity={BOOKS}"),
        "route=default/books-routes".into(),
        "rule=list".into(),
        "retries=0".into(),
        format!("trace_id={trace_id}"),
        "duration_ms=".into(),
    ] {
        assert!(outbound[0].contains(&field), "{field} in {}", outbound[0]);
    }

    // `tarmac check` reports the telemetry in force, with nothing to warn about: both
    // workloads have the mesh's collector.
    let api = up.wait_for("the API address", Duration::from_secs(30), |lines| {
        lines.iter().find_map(|l| l.split_once("control plane: API and dashboard on http://")).map(
            |(_, rest)| rest.split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_string(),
        )
    });
    let report = crate::observe::json_of(&crate::observe::tarmac(
        &api,
        &["check", "-o", "json"],
        Duration::from_secs(30),
    ));
    let check = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "telemetry").cloned();
    let check = check.unwrap_or_else(|| panic!("no telemetry check: {report:#}"));
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["detail"], "4 Telemetry objects; 2 workloads traced, 2 with access logs", "{check}");
    assert!(check.get("warnings").is_none(), "{check}");

    // Tap: books' sidecar's event of a traced request names its trace (the id the
    // dashboard and `tarmac tap` link from). Requests go until the watch has one.
    let mut command = Command::new(tarmac_testkit::tools::binary("tarmac"));
    command.args([
        "tap",
        "workload/books",
        "--path",
        "/books/",
        "-o",
        "json",
        "--limit",
        "1",
        "--for",
        "60s",
    ]);
    command.args(["--control", &api]);
    let (mut tap, tapped) = crate::observe::spawn_collecting(command);
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tap.try_wait().unwrap().is_none() {
        let id = hex_id(16);
        let traceparent = format!("00-{id}-{}-01", hex_id(8));
        assert_eq!(get(web, &format!("/call/{}", hex_id(4)), &[("traceparent", &traceparent)]), Ok(200));
        sent.push(id);
        assert!(Instant::now() < deadline, "tap saw nothing in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let event: serde_json::Value = tapped
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|e: &serde_json::Value| e.get("dropped").is_none())
        .expect("one tap event");
    let tapped_trace = event["trace_id"].as_str().unwrap_or_else(|| panic!("no trace_id: {event}"));
    assert!(sent.iter().any(|id| id == tapped_trace), "{event} not one of {sent:?}");

    // Changed live: web stops sampling and logging, its sidecar is not restarted, and
    // requests without context are no longer traced nor logged there.
    let started = |up: &Up| up.lines().iter().filter(|l| l.contains("started: pid")).count();
    let before = started(&up);
    let updates = |up: &Up| log_lines(up, "web-0 proxy", &["telemetry updated"]).len();
    let seen = updates(&up);
    std::fs::write(
        dir.join("quiet-web.yaml"),
        "apiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: quiet-web}\nspec:\n  selector: {matchLabels: {app: web}}\n  tracing: {samplingPercentage: 0}\n  accessLogging: {enabled: false}\n",
    )
    .unwrap();
    up.wait_for("web's sidecar applying the new telemetry", Duration::from_secs(30), |_| {
        (updates(&up) > seen).then_some(())
    });
    let quiet = hex_id(4);
    assert_eq!(get(web, &format!("/call/{quiet}"), &[]), Ok(200));
    // Long enough for a span to have been exported (batches leave within 500 ms).
    std::thread::sleep(Duration::from_secs(2));
    let quiet_path = format!("/books/{quiet}");
    assert!(
        !receiver.all().iter().any(|s| s["attributes"]["url.path"] == quiet_path),
        "web's sidecar still starts traces"
    );
    assert!(log_lines(&up, "web-0 proxy", &[&format!("/call/{quiet} ")]).is_empty(), "web still logs");
    assert_eq!(
        log_lines(&up, "books-0 proxy", &[&format!("\"path\":\"{quiet_path}\"")]).len(),
        1,
        "books' own access log is as it was"
    );
    assert_eq!(started(&up), before, "nothing was restarted\n{}", up.output());
    stop(&mut up);
}

/// A listener that accepts connections and never reads or answers them.
fn silent_collector() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    (addr, held)
}

#[tokio::test]
async fn a_dead_collector_costs_spans_not_requests() {
    use tarmac_testkit::echo::EchoServer;
    use tarmac_testkit::metrics::{scrape, sum};
    use tarmac_testkit::proxy::start;
    use tarmac_testkit::tools::http_get;
    // A port nobody listens on, and one that accepts and never answers.
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (silent, _held) = silent_collector();
    for collector in [nobody, silent] {
        let telemetry = format!("telemetry: {{collector: \"{collector}\", sampling_percent: 100}}\n");
        let app = EchoServer::start("app").await;
        let server = start(&format!(
            "admin: 127.0.0.1:0\ninbound: {{listen: 127.0.0.1:0, app: \"{}\"}}\n{telemetry}",
            app.addr
        ))
        .await;
        let client = start(&format!(
            "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: app\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\", meshed: true}}]\n{telemetry}",
            server.addrs.inbound.unwrap()
        ))
        .await;
        let listener = client.addrs.service("app").unwrap();
        for _ in 0..200 {
            // Bounded, as every wait in the tests is.
            let (status, _) = tokio::time::timeout(Duration::from_secs(30), http_get(listener, "/x"))
                .await
                .expect("the request completes");
            assert_eq!(status, 200, "{collector}");
        }
        // Every request was traced on both sides, and the collector took nothing: the
        // spans are dropped, in batches, as the exports fail (at once for the closed port;
        // after the export's timeout for the silent one), and counted.
        let deadline = Instant::now() + Duration::from_secs(30);
        for proxy in [&client, &server] {
            loop {
                let m = scrape(proxy.addrs.admin).await;
                let dropped = sum(&m, "tarmac_trace_spans_dropped_total", &[]);
                assert_eq!(sum(&m, "tarmac_trace_spans_exported_total", &[]), 0.0, "{collector}");
                if dropped >= 200.0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{collector}: {dropped} spans dropped of 200\n{m}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        client.shutdown().await;
        server.shutdown().await;
    }
}
