//! Rolling restarts lose nothing: a client proxy sending 500 requests a second to three
//! server-side proxies, each drained and started again in turn, while the client's
//! endpoints stay as they were (no discovery telling it first: the worst case, a client
//! that learns of the restart only from its connections). Every request must succeed:
//! the draining proxy finishes what it took, and the client sends again what the draining
//! proxy refused (HTTP/2 GOAWAY, REFUSED_STREAM) or could not take (connection refused).
//! Then the same as users do it: `tarmac restart ratings` against a running `tarmac up`
//! (tests/fixtures/restart: three replicas, one at a time), under the same load through a
//! caller's sidecar.

use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tarmac_testkit::echo::EchoServer;
use tarmac_testkit::proxy::{TestPki, start};

/// Callers, each on a keep-alive connection of its own, and the pace of each.
const CALLERS: usize = 25;
const CALLER_INTERVAL: Duration = Duration::from_millis(50);

async fn server_proxy(app: SocketAddr, inbound: &str) -> tarmac_proxy::Running {
    let pki = TestPki::get();
    start(&format!(
        "admin: 127.0.0.1:0\ninbound:\n  listen: {inbound}\n  app: {app}\nlimits: {{drain_timeout: 5s}}\n{}",
        pki.identity_yaml(&pki.server)
    ))
    .await
}

/// What the callers saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    first_failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut first = self.first_failures.lock().unwrap();
        if first.len() < 10 {
            first.push(why);
        }
    }
}

/// One caller: a GET every [`CALLER_INTERVAL`] on one keep-alive connection (a new one
/// when the client proxy closes it) until `stop`.
async fn caller(addr: SocketAddr, path: &'static str, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>> = None;
    let mut tick = tokio::time::interval(CALLER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(e) => {
                    tally.fail(format!("connect to the client proxy: {e}"));
                    continue;
                }
            };
            let (s, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            sender = Some(s);
        }
        let s = sender.as_mut().unwrap();
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        let request = http::Request::get(path).header("host", "pool").body(Empty::new()).unwrap();
        match tokio::time::timeout(Duration::from_secs(10), s.send_request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                let body = response.into_body().collect().await.map(|b| b.to_bytes());
                match (status.as_u16(), body) {
                    (200, Ok(_)) => {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                    }
                    (status, body) => tally.fail(format!("{status}: {body:?}")),
                }
            }
            Ok(Err(e)) => {
                tally.fail(format!("no response: {e}"));
                sender = None;
            }
            Err(_) => {
                tally.fail("no response within 10 s".to_string());
                sender = None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_proxies_restarted_one_at_a_time_under_load_lose_no_request() {
    let pki = TestPki::get();
    let apps = [EchoServer::start("a").await, EchoServer::start("b").await, EchoServer::start("c").await];
    let mut servers = Vec::new();
    for app in &apps {
        servers.push(Some(server_proxy(app.addr, "127.0.0.1:0").await));
    }
    let inbounds: Vec<SocketAddr> =
        servers.iter().map(|s| s.as_ref().unwrap().addrs.inbound.unwrap()).collect();
    let endpoints: Vec<String> = inbounds
        .iter()
        .map(|a| format!("{{addr: \"{a}\", meshed: true, identity: \"{}\"}}", pki.server.0))
        .collect();
    let client = start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: pool\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n{}",
        endpoints.join(", "),
        pki.identity_yaml(&pki.client)
    ))
    .await;
    let addr = client.addrs.service("pool").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        callers.spawn(caller(addr, "/", stop.clone(), tally.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, app) in apps.iter().enumerate() {
        let before = tally.ok.load(Ordering::SeqCst);
        let drained = servers[i].take().unwrap().shutdown().await;
        assert!(drained, "server proxy {i} drained within its drain timeout");
        let answered = app.requests();
        // As a process would take to start again: meanwhile its port refuses connections.
        tokio::time::sleep(Duration::from_millis(300)).await;
        servers[i] = Some(server_proxy(app.addr, &inbounds[i].to_string()).await);
        // The next only once the new one is taking requests again (it may sit out an
        // ejection first: its port refused connections for a while).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while app.requests() <= answered {
            assert!(tokio::time::Instant::now() < deadline, "the restarted proxy {i} is sent requests again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(tally.ok.load(Ordering::SeqCst) > before, "requests kept succeeding while {i} restarted");
    }
    stop.store(true, Ordering::SeqCst);
    while callers.join_next().await.is_some() {}
    let (ok, failed) = (tally.ok.load(Ordering::SeqCst), tally.failed.load(Ordering::SeqCst));
    let metrics = tarmac_testkit::metrics::scrape(client.addrs.admin).await;
    let retried = tarmac_testkit::metrics::sum(&metrics, "tarmac_retries_total", &[]);
    println!("restart | {ok} requests succeeded, {failed} failed, {retried} retries by the client proxy");
    assert_eq!(failed, 0, "failures: {:?}", tally.first_failures.lock().unwrap());
    assert!(ok > 1000, "the load ran: {ok} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarmac_restart_rolls_a_workload_under_load_without_failing_a_request() {
    let dir = format!("{}/fixtures/restart", env!("CARGO_MANIFEST_DIR"));
    let replicas = ["ratings-0", "ratings-1", "ratings-2", "client-0"];
    let (up, api) =
        tokio::task::spawn_blocking(move || crate::observe::up_and_ready(&dir, &replicas)).await.unwrap();
    let addr: SocketAddr = up.wait_for("the client's RATINGS_URL", Duration::from_secs(10), |lines| {
        let line = lines.iter().find(|l| l.contains("| client-0: PORT="))?;
        let (_, rest) = line.split_once(" RATINGS_URL=http://")?;
        rest.split([',', ' ']).next()?.parse().ok()
    });
    // Until the client's sidecar knows all three (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tarmac_testkit::tools::http_get(addr, "/ratings/1").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "ratings never answered\n{}", up.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = |lines: &[String], replica: &str| {
        lines.iter().filter(|l| l.contains(&format!("| {replica} started: pid"))).count()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        callers.spawn(caller(addr, "/ratings/1", stop.clone(), tally.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restart = {
        let api = api.clone();
        tokio::task::spawn_blocking(move || {
            crate::observe::tarmac(&api, &["restart", "ratings"], Duration::from_secs(120))
        })
    };
    let output = restart.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    while callers.join_next().await.is_some() {}
    assert_ratings_restarted(&output, &up);
    let lines = up.lines();
    for replica in ["ratings-0", "ratings-1", "ratings-2"] {
        assert_eq!(started(&lines, replica), 2, "{replica} was started again, once\n{}", up.output());
    }
    assert_eq!(started(&lines, "client-0"), 1, "other workloads are left alone");
    let (ok, failed) = (tally.ok.load(Ordering::SeqCst), tally.failed.load(Ordering::SeqCst));
    println!("tarmac restart | {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0, "failures: {:?}\n{}", tally.first_failures.lock().unwrap(), up.output());
    assert!(ok > 1000, "the load ran: {ok} requests");

    // A Workload that is not running is named in the refusal.
    let missing = crate::observe::tarmac(&api, &["restart", "shop/nobody"], Duration::from_secs(10));
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no Workload shop/nobody is running"), "{stderr}");
}

/// Keep-alive callers inside a network namespace: Python's http.client on one connection
/// each to `http://ratings/ratings/1` (intercepted by the namespace's sidecar) until the
/// stop file exists; prints `ok failed first-failure`.
const NAMESPACE_CALLER: &str = r#"
import http.client, os, sys, time
stop, ok, failed, first = sys.argv[1], 0, 0, ""
conn = http.client.HTTPConnection("ratings", 80, timeout=10)
while not os.path.exists(stop):
    try:
        conn.request("GET", "/ratings/1")
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            ok += 1
        else:
            failed += 1
            first = first or "status %d" % response.status
    except Exception as e:
        failed += 1
        first = first or repr(e)
        conn.close()
        conn = http.client.HTTPConnection("ratings", 80, timeout=10)
    time.sleep(0.02)
print(ok, failed, first.replace(" ", "_") or "-")
"#;

/// The same under `tarmac up --transparent`, where each replica has a network namespace
/// of its own that goes and comes back with it: unmodified callers in the client's
/// namespace, their requests intercepted, lose none while `tarmac restart ratings` rolls
/// the three replicas. Needs root, like the other namespace tests.
#[test]
fn tarmac_restart_under_transparent_interception_fails_no_request() {
    if !crate::netns::can_run_privileged() {
        return;
    }
    let _turn = crate::transparent::ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = format!("{}/fixtures/restart", env!("CARGO_MANIFEST_DIR"));
    let up = crate::up::Up::start_with(&["--transparent", &dir, "--api-port", "0"]);
    let api = up.wait_for("the API address", Duration::from_secs(30), |lines| {
        lines.iter().find_map(|l| l.split_once("control plane: API and dashboard on http://")).map(
            |(_, rest)| rest.split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_string(),
        )
    });
    for replica in ["ratings-0", "ratings-1", "ratings-2", "client-0"] {
        up.wait_for(&format!("{replica} ready"), Duration::from_secs(60), |lines| {
            lines.iter().any(|l| l.contains(&format!("| {replica} ready: "))).then_some(())
        });
    }
    let ns = "tarmac-default-client-0";
    let curl = || {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--max-time", "5", "http://ratings/ratings/1"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while curl() != "200" {
        assert!(std::time::Instant::now() < deadline, "ratings never answered\n{}", up.output());
        std::thread::sleep(Duration::from_millis(200));
    }

    let stop_file = tarmac_testkit::tools::temp_dir("restart-transparent").join("stop");
    let callers: Vec<std::process::Child> = (0..8)
        .map(|_| {
            std::process::Command::new("ip")
                .args(["netns", "exec", ns, "python3", "-c", NAMESPACE_CALLER, stop_file.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3 starts in the namespace")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let output = crate::observe::tarmac(&api, &["restart", "ratings"], Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop_file, "").unwrap();
    let (mut ok, mut failed, mut first_failures) = (0u64, 0u64, Vec::new());
    for caller in callers {
        let out = caller.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "a caller printed {text:?}");
        ok += fields[0].parse::<u64>().unwrap();
        failed += fields[1].parse::<u64>().unwrap();
        if fields[2] != "-" {
            first_failures.push(fields[2].to_string());
        }
    }
    assert_ratings_restarted(&output, &up);
    println!("tarmac restart --transparent | {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0, "failures: {first_failures:?}\n{}", up.output());
    assert!(ok > 300, "the load ran: {ok} requests");
    let mut up = up;
    crate::up::stop(&mut up);
}

/// `tarmac restart ratings` succeeded and named the three replicas it rolled.
fn assert_ratings_restarted(output: &std::process::Output, up: &crate::up::Up) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tarmac restart failed: {stdout}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        up.output()
    );
    assert!(
        stdout.contains("restarted default/ratings: ratings-0, ratings-1, ratings-2 (3 replicas)"),
        "{stdout}"
    );
}
