//! `tarmac demo`: the bookstore of `examples/bookstore`, run by the `tarmac up` machinery,
//! with traffic, a live table of golden metrics and a summary at the end.
//!
//! Nothing here runs a mesh of its own: the example's YAML (built into the binary, or
//! `--dir`) goes to [`crate::up`], which starts the control plane, a sidecar per replica
//! and the apps (`tarmac sample-app`, whose `traffic` Workload is the traffic generator).
//! The demo is a [`Driver`] beside it: it prints the dashboard's address, then every few
//! seconds the services' golden metrics read from the control plane's telemetry API (the
//! same table as `tarmac stat service`), and at the end of `--for` or on Ctrl-C a summary
//! of the run per service and per edge (with the share secured by mTLS) and the canary's
//! split.

use crate::observe::stat::StatArgs;
use crate::observe::{ControlArgs, Output};
use crate::up::{Driver, UpArgs, UpError};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tarmac_clikit::duration;
use tarmac_clikit::workdir::{WorkDir, WorkDirError};
use tokio::time::Instant;

/// The example the demo runs, built in so that `tarmac demo` works from any directory.
const BOOKSTORE_YAML: &str = include_str!("../../../examples/bookstore/bookstore.yaml");
/// How often the live table is printed.
const REFRESH: Duration = Duration::from_secs(4);
/// The live table's window: recent enough to follow changes, long enough to be steady.
const LIVE_WINDOW: &str = "10s";
/// How long the mesh may take to start before the demo gives up waiting for traffic.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The telemetry API's longest window.
const MAX_WINDOW: Duration = Duration::from_secs(600);

/// Run the sample bookstore on a local mesh, with traffic, and watch its golden metrics.
///
/// The bookstore of examples/bookstore (web calls books, authors and ratings; 10 % of the
/// ratings requests go to ratings v2, a canary; a traffic generator calls web) runs with
/// a tarmac-proxy sidecar beside every replica and mTLS between them, exactly as
/// `tarmac up examples/bookstore` would run it. The control plane's dashboard is on the
/// printed address; every few seconds the services' golden metrics are printed, and at
/// the end a summary of the whole run. Everything listens on 127.0.0.1 and needs no root.
/// Needs the tarmac-proxy binary next to this one (`cargo build --release`) or in
/// $TARMAC_PROXY_BIN.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long to run, e.g. `30s` or `2m`; without it, until Ctrl-C.
    #[arg(long = "for", value_name = "DURATION", value_parser = duration::parse_positive)]
    pub run_for: Option<Duration>,
    /// Run this directory of YAML instead of the built-in copy of examples/bookstore
    /// (e.g. your own copy of it).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Port of the control plane's API and dashboard on 127.0.0.1 (taken: a free one; 0:
    /// always a free one).
    #[arg(long, default_value_t = tarmac_control::api::DEFAULT_PORT)]
    pub api_port: u16,
    /// Show the output of every app and sidecar, as `tarmac up` does.
    #[arg(long)]
    pub verbose: bool,
}

/// Why the demo could not run: its own files, or what `tarmac up` says.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error("cannot write the example into {}: {source}", dir.display())]
    Example {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Up(#[from] UpError),
}

pub async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarmac demo: {e}");
            match e {
                DemoError::Up(e) => {
                    if let Some(advice) = e.advice() {
                        eprintln!("{advice}");
                    }
                    e.exit_code()
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn demo(args: DemoArgs) -> Result<(), DemoError> {
    // The demo's files (the example when built in, and a CA made for this run, so that
    // the user's own is neither needed nor touched) go away with it.
    let work_dir = WorkDir::create("demo")?;
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            let dir = work_dir.path().join("bookstore");
            if let Err(source) = std::fs::create_dir(&dir)
                .and_then(|()| std::fs::write(dir.join("bookstore.yaml"), BOOKSTORE_YAML))
            {
                return Err(DemoError::Example { dir, source });
            }
            dir
        }
    };
    if !args.verbose {
        crate::up::process::quiet_children();
    }
    let up = UpArgs {
        dir,
        control_port: 0,
        identity_dir: Some(work_dir.path().join("identity")),
        cert_lifetime: Duration::from_secs(24 * 3600),
        mtls: "permissive".into(),
        no_identity: false,
        default_policy: Default::default(),
        api_port: args.api_port,
        trace_url: None,
        // Explicit mode: no root needed.
        transparent: false,
        allow_writable_config: false,
        otlp: None,
        trace_sampling: None,
    };
    let driver = Demo { run_for: args.run_for, traffic_since: None };
    let result = crate::up::run_with(up, driver).await;
    drop(work_dir);
    Ok(result?)
}

/// Watches the bookstore while `tarmac up` runs it.
struct Demo {
    run_for: Option<Duration>,
    /// When traffic was first seen through web: the start of the summary's window.
    traffic_since: Option<Instant>,
}

impl Demo {
    fn control(api: SocketAddr) -> ControlArgs {
        ControlArgs { control: api }
    }

    async fn print_stat(api: SocketAddr, resource: &str, window: &str) {
        let args = StatArgs {
            resource: resource.into(),
            namespace: None,
            window: window.into(),
            output: Output::Table,
            control: Self::control(api),
        };
        if let Err(e) = crate::observe::stat::stat(args).await {
            println!("(cannot read the golden metrics: {})", e.with_advice());
        }
    }

    /// Waits (bounded) until `web` has answered requests: the mesh is up and traffic flows.
    async fn wait_for_traffic(api: SocketAddr) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(answer) = Self::control(api).get_json("/api/v1/stat/service?window=10s&name=web").await
                && rows(&answer).iter().any(|r| r["requests"].as_u64().unwrap_or(0) > 0)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }
}

fn rows(answer: &Value) -> Vec<Value> {
    answer["rows"].as_array().cloned().unwrap_or_default()
}

impl Driver for Demo {
    async fn run(&mut self, api: SocketAddr) {
        println!();
        println!("Dashboard: http://{api}/  (open it in a browser: services, topology, routes, live tap)");
        println!(
            "From another terminal: tarmac stat --control {api}, tarmac edges, tarmac top, tarmac tap deploy/web, \
             tarmac routes ratings"
        );
        println!("The mesh is starting; the bookstore's golden metrics follow as soon as traffic flows.");
        println!();
        if !Self::wait_for_traffic(api).await {
            println!("No traffic through web after {START_TIMEOUT:?}: see `tarmac demo --verbose` for why.");
            return;
        }
        let started = Instant::now();
        self.traffic_since = Some(started);
        match self.run_for {
            Some(run_for) => println!("Traffic flows; running for {}.", seconds(run_for)),
            None => println!("Traffic flows; Ctrl-C stops the demo and prints a summary."),
        }
        let mut refresh = tokio::time::interval_at(started + REFRESH, REFRESH);
        let end = self.run_for.map(|d| started + d);
        loop {
            tokio::select! {
                _ = refresh.tick() => {}
                () = sleep_until(end) => return,
            }
            let title = format!("── {}s, last {LIVE_WINDOW} ", started.elapsed().as_secs());
            println!("{title}{}", "─".repeat(78usize.saturating_sub(title.chars().count())));
            Self::print_stat(api, "service", LIVE_WINDOW).await;
        }
    }

    async fn finish(&mut self, api: SocketAddr) {
        let Some(since) = self.traffic_since else { return };
        let ran = since.elapsed();
        // The telemetry reads every sidecar every 2 s: one more reading covers the end.
        println!("Reading the final metrics...");
        tokio::time::sleep(tarmac_control::telemetry::SCRAPE_INTERVAL + Duration::from_millis(500)).await;
        // A little more than the run, to take in its first requests too.
        let window = (ran + Duration::from_secs(5)).min(MAX_WINDOW);
        let window_text = format!("{}s", window.as_secs());
        println!();
        println!(
            "Summary of the whole run ({}{}), per service:",
            seconds(ran),
            if ran + Duration::from_secs(5) > MAX_WINDOW { "; the last 10 minutes" } else { "" }
        );
        Self::print_stat(api, "service", &window_text).await;
        println!();
        println!("Who calls whom (SECURED: the share of requests with mTLS between the sidecars):");
        Self::print_stat(api, "edge", &window_text).await;
        println!();
        let path = format!("/api/v1/stat/service?window={window_text}");
        if let Ok(answer) = Self::control(api).get_json(&path).await {
            let requests = |name: &str| {
                rows(&answer)
                    .iter()
                    .find(|r| r["name"] == name)
                    .and_then(|r| r["requests"].as_u64())
                    .unwrap_or(0)
            };
            let (v1, v2) = (requests("ratings-v1"), requests("ratings-v2"));
            if v1 + v2 > 0 {
                println!(
                    "Canary: ratings-v2 answered {v2} of {} ratings requests ({:.1} %); the route asks for 10 %.",
                    v1 + v2,
                    100.0 * v2 as f64 / (v1 + v2) as f64
                );
            }
            println!("{}", retries_line(&rows(&answer)));
        }
    }
}

/// What retries bought, from `stat service` rows: books fails 2 % of its requests, and
/// web's sidecar retries them (an HTTPRoute retry on 500), paid from the retry budget.
fn retries_line(rows: &[Value]) -> String {
    let count = |key: &str| rows.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum::<u64>();
    let (retries, denied) = (count("retries"), count("retries_denied_by_budget"));
    let per_service: Vec<String> = rows
        .iter()
        .filter(|r| r["retries"].as_u64().unwrap_or(0) > 0)
        .map(|r| format!("{} {}", r["name"].as_str().unwrap_or(""), r["retries"]))
        .collect();
    let which = if per_service.is_empty() { String::new() } else { format!(" ({})", per_service.join(", ")) };
    format!(
        "Retries: {retries}{which}, spent against the retry budget (each caller may add 20 % of its requests \
         + 10/s); {denied} denied by it. Failed requests retried and answered do not count against SUCCESS."
    )
}

/// `8s`, or `2m 05s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    if s < 60 { format!("{s}s") } else { format!("{}m {:02}s", s / 60, s % 60) }
}

async fn sleep_until(end: Option<Instant>) {
    match end {
        Some(end) => tokio::time::sleep_until(end).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    #[test]
    fn the_retries_line_sums_the_services_and_names_those_retried() {
        let rows = serde_json::json!([
            {"name": "books", "retries": 3, "retries_denied_by_budget": 1},
            {"name": "web", "retries": 0, "retries_denied_by_budget": 0},
            {"name": "ratings", "retries": 2, "retries_denied_by_budget": 0},
        ]);
        let line = retries_line(rows.as_array().unwrap());
        assert!(
            line.starts_with("Retries: 5 (books 3, ratings 2), spent against the retry budget"),
            "{line}"
        );
        assert!(line.contains("; 1 denied by it."), "{line}");
    }

    #[test]
    fn arguments_have_defaults_and_check_their_values() {
        let cli = Cli::try_parse_from(["demo"]).unwrap();
        assert_eq!(cli.demo.run_for, None);
        assert_eq!(cli.demo.api_port, tarmac_control::api::DEFAULT_PORT);
        let cli = Cli::try_parse_from(["demo", "--for", "30s"]).unwrap();
        assert_eq!(cli.demo.run_for, Some(Duration::from_secs(30)));
        assert!(Cli::try_parse_from(["demo", "--for", "0s"]).is_err());
    }

    #[tokio::test]
    async fn the_built_in_example_is_examples_bookstore_and_valid() {
        let dir = std::env::temp_dir().join(format!("tarmac-demo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bookstore.yaml"), BOOKSTORE_YAML).unwrap();
        let store = tarmac_control::store::files::FilesStore::open(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let store = store.unwrap_or_else(|e| panic!("examples/bookstore is invalid: {e}"));
        let snapshot = tarmac_control::store::Store::snapshots(&store).borrow().clone();
        assert_eq!(
            snapshot.iter_kind("Workload").count(),
            6,
            "web, books, authors, ratings v1 and v2, traffic"
        );
    }
}
