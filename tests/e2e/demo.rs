//! `tarmac demo`, the README's main job, run as a user runs it.

use tarmac_testkit::tools::{binary, run};

#[tokio::test]
async fn demo_runs_a_mesh_with_traffic_and_reports_golden_metrics() {
    let tarmac = binary("tarmac");
    let out = run(tarmac.to_str().unwrap(), &["demo", "--for", "6s", "--rps", "40"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let summary =
        stdout.split("Summary of the whole run").nth(1).unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    for service in ["web", "books", "authors"] {
        let row = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(service))
            .unwrap_or_else(|| panic!("no row for {service}:\n{summary}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        let success: f64 = cols[1].trim_end_matches('%').parse().unwrap();
        let requests: u64 = cols[2].parse().unwrap();
        // 6 s at 40 rps: every service saw most of the ~240 requests, nearly all fine.
        assert!(requests >= 150, "{service}: {row}");
        assert!(success >= 90.0, "{service}: {row}");
    }
}
