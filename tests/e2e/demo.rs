//! `tarmac demo`, the README's main job, run as a user runs it: the bookstore of
//! examples/bookstore on the `tarmac up` machinery, for a few seconds, with its summary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarmac_testkit::tools::{binary, run};

/// The columns of `tarmac stat service` and `tarmac edges` (the demo prints those tables).
fn cells<'a>(table: &'a str, first: &str, second: Option<&str>) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&first) && second.is_none_or(|s| cols.get(1) == Some(&s)))
}

fn percent(cell: &str) -> f64 {
    cell.trim_end_matches('%').parse().unwrap_or_else(|_| panic!("not a percentage: {cell}"))
}

#[tokio::test]
async fn demo_runs_the_bookstore_with_mtls_and_a_canary_and_summarises_golden_metrics() {
    let tarmac = binary("tarmac");
    // `--for 8s` ends it; the bound covers a slow start on a busy machine.
    let out = tokio::time::timeout(
        Duration::from_secs(150),
        run(tarmac.to_str().unwrap(), &["demo", "--for", "8s", "--api-port", "0"]),
    )
    .await
    .expect("the demo ends by itself");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Dashboard: http://127.0.0.1:"), "no dashboard line:\n{stdout}");
    let summary =
        stdout.split("Summary of the whole run").nth(1).unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let (services, edges) = summary.split_once("Who calls whom").expect("an edges table");

    // Every service of the bookstore answered; the columns are `tarmac stat service`'s:
    // NAME SUCCESS RPS P50 P95 P99 REQUESTS.
    let requests = |service: &str| -> u64 {
        let row =
            cells(services, service, None).unwrap_or_else(|| panic!("no row for {service}:\n{summary}"));
        row[6].parse().unwrap()
    };
    for service in ["web", "books", "authors", "ratings", "ratings-v1", "ratings-v2"] {
        assert!(requests(service) > 0, "{service} had no requests:\n{summary}");
    }
    // 8 s at 20 rps: web saw most of its ~160 requests, nearly all fine (books fails 2 %).
    assert!(requests("web") >= 80, "{summary}");
    let web = cells(services, "web", None).unwrap();
    assert!(percent(web[1]) >= 85.0, "{summary}");

    // Between sidecars, requests are mTLS: the telemetry's secured share of every edge.
    for (src, dst) in [("traffic", "web"), ("web", "books"), ("web", "authors"), ("web", "ratings")] {
        let row =
            cells(edges, src, Some(dst)).unwrap_or_else(|| panic!("no edge {src} -> {dst}:\n{summary}"));
        // SRC DST DST_WORKLOADS SECURED ...; the very first requests may precede certificates.
        assert!(percent(row[3]) >= 95.0, "{src} -> {dst} not secured:\n{summary}");
    }

    // The canary route: ratings v2 takes about 10 % of the ratings requests, per request.
    // With ~160 of them the share is within 1 % to 30 % but in one run in a million; the
    // balancer alone (no route) would give the slower v2 almost nothing.
    let (v1, v2) = (requests("ratings-v1"), requests("ratings-v2"));
    let share = v2 as f64 / (v1 + v2) as f64;
    assert!((0.01..0.3).contains(&share), "ratings-v2 took {v2} of {} requests:\n{summary}", v1 + v2);
    assert!(stdout.contains("Canary: ratings-v2 answered"), "{summary}");

    // What retries bought: books' failures retried by web's sidecar, counted against the
    // budget, the same number as the RETRIES column of the table (books fails at random,
    // so the count itself may be 0 in a short run).
    let retries_column: u64 = ["web", "books", "authors", "ratings", "ratings-v1", "ratings-v2", "traffic"]
        .iter()
        .filter_map(|s| cells(services, s, None))
        .map(|row| row[7].parse::<u64>().unwrap())
        .sum();
    assert!(
        summary.contains(&format!("Retries: {retries_column}")) && summary.contains("denied by it"),
        "{summary}"
    );
}

/// Still running, and one of the demo's (an app or a sidecar, not a recycled pid).
fn is_ours_and_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().next());
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .into_owned();
    state.is_some_and(|s| s != "Z") && cmdline.contains("tarmac")
}

#[test]
fn ctrl_c_stops_the_demo_and_everything_it_started_after_a_summary() {
    let mut child = Command::new(binary("tarmac"))
        .args(["demo", "--api-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tarmac starts");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child.stdout.take().unwrap();
    let collected = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            collected.lock().unwrap().push(line);
        }
    });
    let output = || lines.lock().unwrap().join("\n");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !lines.lock().unwrap().iter().any(|l| l.starts_with("Traffic flows")) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no traffic within 90 s:\n{}", output());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids: Vec<u32> = lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.split_once(" started: pid "))
        .filter_map(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert!(pids.len() >= 14, "7 apps and 7 sidecars: {pids:?}\n{}", output());

    // What Ctrl-C in a terminal sends.
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop within 40 s of SIGINT:\n{}", output());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(status.success(), "exit {status}:\n{}", output());
    let text = output();
    assert!(text.contains("Summary of the whole run"), "{text}");
    assert!(text.lines().any(|l| l.ends_with("| stopped")), "{text}");
    let left: Vec<u32> = pids.into_iter().filter(|pid| is_ours_and_alive(*pid)).collect();
    assert!(left.is_empty(), "still running after the demo stopped: {left:?}\n{text}");
}
