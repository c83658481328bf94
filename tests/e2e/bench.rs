//! `tarmac bench` run as a user runs it: `--target` against a real service (measured
//! directly and through two meshed proxies), and a short `--suite`. The figures themselves
//! are the benchmarks' business (timing goals do not belong in tests); these check that
//! every phase really carried its requests, the target saw them, and the reports say what
//! they measured.

use serde_json::Value;
use std::time::Duration;
use tarmac_testkit::echo::EchoServer;
use tarmac_testkit::tools::{ServerProcess, binary, peer_script, temp_dir};

/// Runs `tarmac` with `args` and `envs` to completion; panics with its output if it fails.
async fn tarmac(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(binary("tarmac"));
    command.args(args).envs(envs.iter().copied());
    // Its phases are bounded; this bounds a hang.
    let out =
        tokio::time::timeout(Duration::from_secs(180), tokio::task::spawn_blocking(move || command.output()))
            .await
            .expect("tarmac bench ends by itself")
            .unwrap()
            .expect("tarmac runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tarmac {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

/// The phases of `route`, checked to have carried requests without failures; returns how
/// many responses they had.
fn responses_of(report: &Value, route: &str, proxies: usize) -> u64 {
    let phases: Vec<&Value> =
        report["phases"].as_array().expect("phases").iter().filter(|p| p["route"] == route).collect();
    assert!(!phases.is_empty(), "no phase of {route}: {report:#}");
    let mut total = 0;
    for phase in phases {
        let responses = phase["responses"].as_u64().unwrap();
        assert!(responses > 0, "{route} carried nothing: {phase:#}");
        assert_eq!(phase["failures"], 0, "{route} had failures: {phase:#}");
        assert!(phase["latency"]["p50_us"].as_f64().unwrap() > 0.0, "{phase:#}");
        assert!(phase["stolen_cores"].is_number(), "steal is recorded: {phase:#}");
        let costs = phase["proxies"].as_array().unwrap();
        assert_eq!(costs.len(), proxies, "{route}: {phase:#}");
        for cost in costs {
            assert!(cost["cpu_seconds"].as_f64().unwrap() > 0.0, "{route}: a proxy that did no work: {cost}");
            assert!(cost["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{route}: {cost}");
        }
        total += responses + phase["warmup_responses"].as_u64().unwrap();
    }
    total
}

#[tokio::test]
async fn bench_target_measures_a_service_directly_and_through_two_meshed_proxies() {
    let service = EchoServer::start("bench-target").await;
    let url = format!("http://{}/", service.addr);
    let dir = temp_dir("bench-target");
    for protocol in ["http1", "h2c"] {
        let before = service.requests();
        let json = dir.join(format!("{protocol}.json"));
        let stdout = tarmac(
            &[
                "bench",
                "--target",
                &url,
                "--protocol",
                protocol,
                "--rate",
                "200",
                "--duration",
                "1s",
                "--rounds",
                "2",
                "--json",
                json.to_str().unwrap(),
            ],
            &[],
        )
        .await;
        for line in ["baseline   p50", "meshed     p50", "difference p50", "tarmac-2-hops-mTLS-client"] {
            assert!(stdout.contains(line), "{protocol}: no `{line}` in:\n{stdout}");
        }
        let report = read_json(&json);
        assert_eq!(report["target"], url.as_str());
        let carried = responses_of(&report, "direct", 0) + responses_of(&report, "tarmac_two_hops_mtls", 2);
        // Every response came from the service; the bench sends nothing else to it but
        // the readiness of its own proxies, which go to their admin ports.
        let seen = (service.requests() - before) as u64;
        assert!(seen >= carried, "{protocol}: the service answered {seen}, the report counts {carried}");
        // 200 req/s for 1 s per path plus warm-ups: about 400 requests and no more than
        // a few seconds' worth.
        assert!((300..=1200).contains(&carried), "{protocol}: {carried} requests carried");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bench_target_measures_a_grpc_service_and_says_why_calls_fail() {
    let server = ServerProcess::spawn_listening("python3", &[&peer_script("grpc_peer.py"), "serve", "0"]);
    let dir = temp_dir("bench-grpc");
    let bench = |method: &str, json: &std::path::Path| {
        let url = format!("http://{}/tarmac.test.Echo/{method}", server.addr());
        let json = json.to_str().unwrap().to_string();
        async move {
            let args = ["bench", "--target", &url, "--protocol", "grpc", "--rate", "100", "--duration", "1s"];
            tarmac(&[&args[..], &["--rounds", "1", "--json", &json]].concat(), &[]).await
        }
    };

    // grpcio's unary echo answers every call with grpc-status 0, directly and meshed.
    let json = dir.join("unary.json");
    bench("Unary", &json).await;
    let report = read_json(&json);
    responses_of(&report, "direct", 0);
    responses_of(&report, "tarmac_two_hops_mtls", 2);

    // A method the service lacks: HTTP 200 carrying grpc-status 12 (UNIMPLEMENTED) is a
    // failed call, and the report says so, on both paths alike.
    let json = dir.join("missing.json");
    let stdout = bench("NoSuchMethod", &json).await;
    for route in ["direct", "tarmac 2 hops mTLS"] {
        let note = format!("note: {route} at 100 req/s: ");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&note) && l.contains("the first: the target answered grpc-status 12")),
            "no failure note for {route}:\n{stdout}"
        );
    }
    for phase in read_json(&json)["phases"].as_array().unwrap() {
        assert!(phase["failures"].as_u64().unwrap() > 0, "{phase:#}");
        assert_eq!(phase["failures"], phase["responses"], "every call failed: {phase:#}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bench_suite_measures_the_tarmac_routes_says_which_bar_lines_need_envoy_and_compares_with_a_landing()
{
    let dir = temp_dir("bench-suite");
    let (json, plot) = (dir.join("suite.json"), dir.join("suite.svg"));
    let missing = dir.join("no-envoy-here");
    let landing =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results/62f62b6fb79a.json");
    let stdout = tarmac(
        &[
            "bench",
            "--suite",
            "--skip-costs",
            "--routes",
            "tarmac_one_hop,tarmac_two_hops_mtls",
            "--loads",
            "1000,max",
            "--rounds",
            "1",
            "--duration",
            "500ms",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
            "--baseline",
            landing.to_str().unwrap(),
        ],
        &[("TARMAC_ENVOY_BIN", missing.to_str().unwrap())],
    )
    .await;
    assert!(stdout.contains("Envoy rows are missing"), "{stdout}");
    assert!(stdout.contains("The bar (issue 3), in this run"), "{stdout}");

    let report = read_json(&json);
    assert_eq!(report["mode"], "suite");
    assert!(report["envoy_missing"].as_str().is_some_and(|m| m.contains("TARMAC_ENVOY_BIN")), "{report:#}");
    responses_of(&report, "direct", 0);
    responses_of(&report, "tarmac_one_hop", 1);
    responses_of(&report, "tarmac_two_hops_mtls", 2);
    for load in ["1000 req/s", "max throughput"] {
        assert!(report["phases"].as_array().unwrap().iter().any(|p| p["load"] == load), "no phase at {load}");
    }
    // Lines that compare with Envoy say so instead of passing; idle RSS needs no Envoy.
    let bar = report["bar"].as_array().expect("bar");
    let envoy_lines: Vec<&Value> =
        bar.iter().filter(|l| l["rule"].as_str().unwrap().contains("Envoy")).collect();
    assert!(!envoy_lines.is_empty(), "{bar:#?}");
    for line in envoy_lines {
        assert_ne!(line["passed"], true, "passed without Envoy: {line}");
    }
    let idle = bar.iter().find(|l| l["rule"].as_str().unwrap().contains("RSS idle")).expect("idle RSS line");
    assert!(idle["passed"].is_boolean(), "{idle}");
    // Every Tarmac figure of this short run that the recorded landing has too is compared
    // with it; whether they got worse depends on the machine, but they are checked.
    let compared = report["baseline"]["figures"].as_array().expect("figures against the landing");
    for (route, load) in [("tarmac_one_hop", "1000 req/s"), ("tarmac_two_hops_mtls", "1000 req/s")] {
        assert!(
            compared
                .iter()
                .any(|f| f["route"] == route && f["load"] == load && f["figure"] == "added p99 µs"),
            "{route} at {load} not compared: {compared:#?}"
        );
    }
    assert!(compared.iter().any(|f| f["figure"] == "req/s per core"), "{compared:#?}");
    assert_eq!(report["baseline"]["commit"], "62f62b6fb79a");
    let regression =
        bar.iter().find(|l| l["rule"].as_str().unwrap().contains("last landing")).expect("the line");
    assert!(regression["passed"].is_boolean(), "{regression}");
    assert!(stdout.contains("Against ") && stdout.contains("62f62b6fb79a.json"), "{stdout}");

    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("tarmac 2 hops mTLS"), "every route has a curve");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bench_telemetry_measures_a_traced_hop_and_a_logging_hop_against_a_plain_one() {
    let dir = temp_dir("bench-telemetry");
    let json = dir.join("telemetry.json");
    let stdout = tarmac(
        &[
            "bench",
            "--telemetry",
            "--loads",
            "1000",
            "--rounds",
            "1",
            "--duration",
            "1s",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(stdout.contains("tracing: 10 % of requests sampled ÷ off"), "{stdout}");
    assert!(stdout.contains("access log: a JSON line per request ÷ none"), "{stdout}");

    let report = read_json(&json);
    assert_eq!(report["mode"], "telemetry");
    responses_of(&report, "direct", 0);
    responses_of(&report, "tarmac_one_hop", 1);
    let traced = responses_of(&report, "tarmac_traced", 1);
    responses_of(&report, "tarmac_access_log", 1);
    for side in ["tracing", "access_log"] {
        let rows = report[side].as_array().unwrap_or_else(|| panic!("no {side}: {report:#}"));
        assert_eq!(rows.len(), 1, "one row per load: {rows:#?}");
        assert!(rows[0]["ratio_cpu_per_10k"].is_number(), "{rows:#?}");
    }
    // The traced hop traced about a tenth of its requests, one span each: the binomial's
    // spread on 1,500 requests is about 12. A phase run among other processes is run once
    // more (its spans count, its requests not), so up to twice 15 %.
    let spans = report["spans_exported"].as_u64().expect("spans counted");
    assert!(spans * 20 >= traced && spans * 10 <= traced * 3, "{spans} spans for {traced} requests");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bench_control_plane_carries_every_change_to_every_subscribed_proxy() {
    let dir = temp_dir("bench-control-plane");
    let json = dir.join("control-plane.json");
    // Certificates of 10 s are renewed at 6.5-7.5 s; the run lasts longer than that after
    // every proxy is certified (5 s of churn, 1 s before it, 3 s after), so each renews.
    let stdout = tarmac(
        &[
            "bench",
            "--control-plane",
            "--services",
            "20",
            "--proxies",
            "50",
            "--churn",
            "4",
            "--duration",
            "5s",
            "--cert-lifetime",
            "10s",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(stdout.contains("[pass] every change reaches every subscriber"), "{stdout}");

    let report = read_json(&json);
    assert_eq!(report["mode"], "control-plane");
    let settings = &report["settings"];
    assert_eq!((settings["services"].as_u64(), settings["proxies"].as_u64()), (Some(20), Some(50)));
    let fan_out = settings["fan_out_mean"].as_f64().unwrap();
    assert!((3.0..=10.0).contains(&fan_out), "{settings:#}");
    assert_eq!(
        settings["streams"].as_u64().unwrap(),
        settings["service_streams"].as_u64().unwrap() + 2 * 50,
        "each proxy watches its inbound policy and telemetry too: {settings:#}"
    );
    assert_eq!(report["sync"]["certified"], 50, "{report:#}");

    // Every change went out and reached every proxy watching its service.
    let churn = &report["churn"];
    let changes = churn["changes"].as_u64().unwrap();
    assert_eq!(changes + churn["skipped"].as_u64().unwrap(), 20, "4/s for 5 s: {churn:#}");
    assert!(changes > 0 && churn["replaced"].as_u64().unwrap() + churn["unready"].as_u64().unwrap() > 0);
    let p = &report["propagation"];
    assert_eq!(p["changes"].as_u64(), Some(changes), "{p:#}");
    assert!(p["pairs"].as_u64().unwrap() > 0, "some changed service is watched: {p:#}");
    assert_eq!(p["delivered"], p["pairs"], "{p:#}");
    assert_eq!((p["missed"].as_u64(), p["wrong_final_state"].as_u64()), (Some(0), Some(0)), "{p:#}");
    let (p50, p99, max) =
        (p["p50_ms"].as_f64().unwrap(), p["p99_ms"].as_f64().unwrap(), p["max_ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p:#}");

    // The control plane's own figures, read from its process.
    let cp = &report["control_plane"];
    for field in
        ["rss_listed_mib", "rss_synced_mib", "rss_idle_after_mib", "rss_peak_mib", "cpu_sync_seconds"]
    {
        assert!(cp[field].as_f64().unwrap() > 0.0, "{field}: {cp:#}");
    }
    assert!(cp["rss_peak_mib"].as_f64() >= cp["rss_synced_mib"].as_f64(), "{cp:#}");
    assert!(report["bench_process"]["cpu_sync_seconds"].as_f64().unwrap() > 0.0, "{report:#}");

    // Each proxy bootstrapped with its token and renewed with its certificate.
    let certificates = &report["certificates"];
    assert!(certificates["renewals"].as_u64().unwrap() >= 50, "{certificates:#}");
    assert_eq!(certificates["failed"], 0, "{certificates:#}");
    assert_eq!(report["targets"].as_array().map(Vec::len), Some(3), "{report:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bench_control_plane_options_are_refused_elsewhere_and_its_settings_checked() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary("tarmac")).args(args).output().expect("tarmac runs");
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let stderr = run(&["bench", "--suite", "--proxies", "10"]);
    assert!(stderr.contains("cannot be used with '--proxies"), "{stderr}");
    let stderr = run(&["bench", "--control-plane", "--rounds", "2"]);
    assert!(stderr.contains("cannot be used with '--rounds"), "{stderr}");
    let stderr = run(&["bench", "--control-plane", "--services", "1"]);
    assert!(stderr.contains("--services must be at least 2"), "{stderr}");
}
