//! A second load generator, to check the suite's own: `wrk` (Debian's), closed loop with
//! one thread and the suite's 32 connections, pinned to the generator's core, against the
//! one-hop routes. What it gives is compared with the suite's max-throughput phases: if
//! both generators rank the proxies alike and measure similar requests per proxy core,
//! the figures belong to the proxies, not to how the load reaches them.

use super::procfs::PhaseMeter;
use super::topology::{Route, Running};
use serde::Serialize;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

/// Why the second load generator's check failed, naming the route.
#[derive(Debug, thiserror::Error)]
pub enum WrkError {
    #[error("wrk's runner panicked: {0}")]
    Panicked(#[source] tokio::task::JoinError),
    #[error("cannot run wrk: {0}")]
    Run(#[source] std::io::Error),
    #[error("wrk against {route} printed no request count:\n{stdout}{stderr}")]
    NoCount { route: &'static str, stdout: String, stderr: String },
    /// `line` is wrk's line counting them.
    #[error("wrk against {route} met errors: {line}")]
    Errors { route: &'static str, line: String },
}

/// One route under wrk.
#[derive(Clone, Debug, Serialize)]
pub struct WrkRun {
    pub route: Route,
    pub requests: u64,
    pub throughput_rps: f64,
    /// CPU seconds the route's proxies used while wrk ran.
    pub cpu_seconds: f64,
    /// Requests per core the proxies used, as in the suite's max-throughput table.
    pub rps_per_proxy_core: Option<f64>,
    pub other_cores: Option<f64>,
}

/// Whether `wrk` can be run.
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Runs wrk against each of `routes` for `duration`, one after another, pinned to `core`
/// when given. `ours` are every process of the benchmark, for the contamination figure.
pub async fn check(
    routes: &[Running],
    connections: usize,
    duration: Duration,
    core: Option<usize>,
    ours: &[u32],
) -> Result<Vec<WrkRun>, WrkError> {
    let mut runs = Vec::new();
    for running in routes {
        let mut command = match core {
            Some(core) => {
                let mut command = Command::new("taskset");
                command.args(["-c", &core.to_string(), "wrk"]);
                command
            }
            None => Command::new("wrk"),
        };
        command.args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            &format!("http://{}/", running.entry),
        ]);
        let pids: Vec<u32> = running.proxies.iter().map(|p| p.pid()).collect();
        let meter = PhaseMeter::start(pids, ours.to_vec());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .map_err(WrkError::Panicked)?
            .map_err(WrkError::Run)?;
        let cost = meter.finish(&[]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (requests, seconds) = parse(&stdout).ok_or_else(|| WrkError::NoCount {
            route: running.route.label(),
            stdout: stdout.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })?;
        if let Some(errors) = stdout.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
            return Err(WrkError::Errors { route: running.route.label(), line: errors.trim().to_string() });
        }
        let cpu_seconds: f64 = cost.cpu_seconds.iter().sum();
        let run = WrkRun {
            route: running.route,
            requests,
            throughput_rps: requests as f64 / seconds,
            cpu_seconds,
            rps_per_proxy_core: (cpu_seconds > 0.0).then(|| requests as f64 / cpu_seconds),
            other_cores: cost.other_cores,
        };
        eprintln!(
            "  wrk      {:<20} {:>8.0} req/s  {:>8.0} req/s per proxy core",
            running.route.label(),
            run.throughput_rps,
            run.rps_per_proxy_core.unwrap_or(0.0)
        );
        runs.push(run);
    }
    Ok(runs)
}

/// From wrk's summary line, `  123456 requests in 5.00s, 11.30MB read`: the count and the
/// seconds.
fn parse(stdout: &str) -> Option<(u64, f64)> {
    let line = stdout.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_whitespace();
    let requests = words.next()?.parse().ok()?;
    let seconds = words.nth(2)?.trim_end_matches(',');
    let seconds = if let Some(ms) = seconds.strip_suffix("ms") {
        ms.parse::<f64>().ok()? / 1000.0
    } else if let Some(m) = seconds.strip_suffix('m') {
        m.parse::<f64>().ok()? * 60.0
    } else {
        seconds.strip_suffix('s')?.parse().ok()?
    };
    (seconds > 0.0).then_some((requests, seconds))
}

/// wrk's figures beside the suite generator's for the same routes.
pub fn table(runs: &[WrkRun], suite_rps_per_core: impl Fn(Route) -> Option<f64>) -> String {
    let mut out =
        "max throughput with wrk (a second generator: one thread, the same connections)\n".to_string();
    let _ = writeln!(
        out,
        "  {:<19} {:>9} {:>15} {:>9} {:>21}",
        "route", "req/s", "req/s per core", "CPU-s/10k", "suite's req/s per core"
    );
    for run in runs {
        let per_10k = (run.requests > 0).then(|| run.cpu_seconds / run.requests as f64 * 10_000.0);
        let _ = writeln!(
            out,
            "  {:<19} {:>9.0} {:>15} {:>9} {:>21}",
            run.route.label(),
            run.throughput_rps,
            run.rps_per_proxy_core.map_or_else(|| "-".to_string(), |v| format!("{v:.0}")),
            per_10k.map_or_else(|| "-".to_string(), |v| format!("{v:.3}")),
            suite_rps_per_core(run.route).map_or_else(|| "-".to_string(), |v| format!("{v:.0}")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_and_duration_come_from_the_summary_line() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   448.12us  \
                   100.00us   2.00ms   90.00%\n  352210 requests in 5.00s, 30.23MB read\n\
                   Requests/sec:  70441.22\nTransfer/sec:      6.05MB\n";
        assert_eq!(parse(out), Some((352210, 5.0)));
        assert_eq!(parse("  10 requests in 500.00ms, 1KB read\n"), Some((10, 0.5)));
        assert_eq!(parse("unable to connect to 127.0.0.1:1 Connection refused\n"), None);
    }
}
