//! `tarmac bench`: the three numbers to measure before adopting a mesh (the baseline
//! latency, the latency through the mesh, and what the sidecars cost), against the user's
//! own service or, with `--suite`, as the standard comparison with Envoy.
//!
//! # Layout
//!
//! * [`topology`]: the routes (direct, Tarmac and Envoy, one and two hops) and starting
//!   their proxies; [`envoy`] finds Envoy and writes its configuration.
//! * [`experiment`]: phases interleaved over routes and rounds, each with its costs and a
//!   check on what else ran on the machine; [`procfs`] reads those costs.
//! * [`report`]: medians, added latency, ratios, tables and the bar; [`plot`]
//!   the SVG of percentile curves; [`regression`]: `--baseline`, the figures against a
//!   recorded landing's.
//! * [`costs`]: memory and idle CPU against connections and configured services.
//! * [`routing`]: `--routing`, a route table of 100 rules against one, and a retried
//!   request (its first try failed by the upstream) against one that is not, its routes served
//!   by the control plane's discovery in this process.
//! * [`telemetry`]: `--telemetry`, one hop tracing 10 % of its requests (to an OTLP
//!   collector in this process that counts spans) and one writing an access log, against
//!   the plain hop.
//! * [`control_plane`]: `--control-plane`, the real `tarmac-control` against a simulated
//!   API server and simulated proxies at a cluster's size: propagation per change and
//!   subscriber, CPU and RSS.
//! * [`upstream`]: the suite's fast upstream; [`processes`]: the child processes and the
//!   scheduling tools; [`ca`]: the mTLS routes' throwaway CA.
//!
//! The load itself comes from `tarmac-loadgen`, on a thread of its own. The `tarmac`
//! command parses [`BenchArgs`] and calls [`main`]; the built-in upstream runs as that same
//! executable again (`tarmac bench --serve-upstream ADDR`).

mod ca;
mod control_plane;
mod costs;
mod envoy;
mod error;
mod experiment;
mod nginx;
mod plot;
mod processes;
mod procfs;
mod regression;
mod report;
mod routing;
mod telemetry;
mod topology;
mod upstream;
mod wrk;

pub use error::{BenchError, LocateError};
use experiment::{LoadSpec, Measured, PhaseRecord, Scheduling, Settings};
use processes::{STOP_GRACE, stop_all};
use report::{BarCheck, RouteSummary};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tarmac_clikit::duration;
use tarmac_clikit::workdir::WorkDir;
use tarmac_loadgen::{Load, Protocol, Target};
use tarmac_transport::process::{Readiness, Supervised};
use topology::{Binaries, Route, Running};

/// Environment variable naming the `tarmac-proxy` binary to measure.
const ENV_PROXY_BIN: &str = "TARMAC_PROXY_BIN";
/// Warm-up before each phase: pools fill and allocators settle; not recorded.
const WARMUP: Duration = Duration::from_millis(500);
/// A phase in which other processes used more than a tenth of a core is contaminated.
const CONTAMINATION_CORES: f64 = 0.1;
/// So is one in which the hypervisor stole more than a hundredth of a core: on this kind
/// of VM, phases at 1000 req/s with 0.02-0.13 cores stolen had p99 two to twelve times that
/// of the same route's phases with none.
const CONTAMINATION_STOLEN_CORES: f64 = 0.01;
/// The suite's core for proxies, and for the upstream and the generator.
const PROXY_CORE: usize = 0;
const CLIENT_CORE: usize = 1;
/// The suite's loads: connections for the open-loop rates and for max throughput.
const SUITE_RATES: [u32; 2] = [1000, 5000];
const SUITE_LATENCY_CONNECTIONS: usize = 10;
const SUITE_MAX_CONNECTIONS: usize = 32;
const MAX_LOAD: &str = "max throughput";
/// The suite's routes, in the order each round runs them.
const SUITE_ROUTES: [Route; 8] = [
    Route::Direct,
    Route::TarmacOneHop,
    Route::TarmacTwoHops,
    Route::TarmacTwoHopsMtls,
    Route::EnvoyOneHop,
    Route::EnvoyTwoHops,
    Route::EnvoyTwoHopsMtls,
    Route::NginxOneHop,
];
/// `--routing`: the baseline, one hop without routes, then the two route tables, the
/// retried route; an inbound hop without policies, then with 100 and a rate limit.
const ROUTING_ROUTES: [Route; 7] = [
    Route::Direct,
    Route::TarmacOneHop,
    Route::TarmacOneRule,
    Route::TarmacManyRules,
    Route::TarmacRetried,
    Route::TarmacInbound,
    Route::TarmacInboundPolicy,
];
/// `--telemetry`: the baseline, one hop as the suite runs it, the same hop tracing 10 % of
/// its requests, and writing an access log.
const TELEMETRY_ROUTES: [Route; 4] =
    [Route::Direct, Route::TarmacOneHop, Route::TarmacTraced, Route::TarmacAccessLog];

/// Measure latency and proxy cost: a service directly and through the mesh, or the
/// standard comparison with Envoy.
///
/// With --target URL: sends --rate requests per second to the URL directly, then through
/// a client-side and a server-side tarmac-proxy (as in a mesh), alternating for --rounds
/// rounds (--duration is each path's total measured time), and prints p50/p99/p99.9 of
/// both, the difference, and each proxy's CPU seconds per 10k requests and peak memory.
///
/// With --suite: a built-in upstream and the routes direct, Tarmac 1 and 2 hops, Envoy 1
/// and 2 hops (when Envoy is installed: scripts/setup-bench-deps.sh), at 1000 and 5000
/// req/s and at maximum throughput, interleaved over rounds, proxies pinned to core 0 and
/// upstream and generator to core 1 (--duration is each phase's length).
///
/// With --routing: as the suite (same loads, rounds, pinning), one Tarmac hop whose
/// Service has an HTTPRoute of 1 rule against one of 100 rules where requests take the
/// last, and against one whose backend fails every request's first try (retried once),
/// plus direct and an unrouted hop; prints the 100-rule / 1-rule ratios and what a
/// retried request costs.
///
/// Latency is measured from each request's intended send time (no coordinated omission).
/// Needs tarmac-proxy next to this binary (`cargo build --release`) or in
/// $TARMAC_PROXY_BIN.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["target", "suite", "routing", "telemetry", "control_plane", "serve_upstream"])))]
pub struct BenchArgs {
    /// The service to measure, http://HOST:PORT/PATH (for gRPC the path is the method).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Run the standard comparison with Envoy on this machine.
    #[arg(long)]
    pub suite: bool,
    /// Measure what routing costs: a route table of 100 rules against one.
    #[arg(long)]
    pub routing: bool,
    /// Measure what tracing (10 % of requests sampled, spans exported over OTLP) and a JSON
    /// access log cost one hop.
    #[arg(long)]
    pub telemetry: bool,
    /// Measure the control plane at a cluster's size: tarmac-control (--store
    /// kubernetes) against a simulated API server of --services Services with --endpoints
    /// pods each, churned at --churn changes/s for --duration (default 60s), followed by
    /// --proxies simulated proxies (certificates and discovery streams); reports its CPU,
    /// RSS and the time from each change to every subscriber having it.
    #[arg(long, conflicts_with_all = ["rate", "connections", "rounds", "plot", "skip_costs", "routes", "loads", "baseline"])]
    pub control_plane: bool,
    /// --control-plane: Services in the simulated cluster.
    #[arg(long, value_name = "N", default_value_t = 1000, conflicts_with_all = ["target", "suite", "routing", "telemetry"])]
    pub services: usize,
    /// --control-plane: pods (endpoints) per Service.
    #[arg(long, value_name = "M", default_value_t = 2, conflicts_with_all = ["target", "suite", "routing", "telemetry"])]
    pub endpoints: usize,
    /// --control-plane: simulated proxies.
    #[arg(long, value_name = "P", default_value_t = 2000, conflicts_with_all = ["target", "suite", "routing", "telemetry"])]
    pub proxies: usize,
    /// --control-plane: endpoint changes per second.
    #[arg(long, value_name = "R", default_value_t = 10.0, conflicts_with_all = ["target", "suite", "routing", "telemetry"])]
    pub churn: f64,
    /// --control-plane: the workload certificates' lifetime (default: --duration, so
    /// that each proxy renews about once during the churn).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive, conflicts_with_all = ["target", "suite", "routing", "telemetry"])]
    pub cert_lifetime: Option<Duration>,
    /// Requests per second (--target).
    #[arg(long, value_name = "N", default_value_t = 1000.0, conflicts_with_all = ["suite", "routing", "telemetry"])]
    pub rate: f64,
    /// --target: measured time of each path over all rounds (default 30s);
    /// --suite and --routing: length of each phase (default 5s).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub duration: Option<Duration>,
    /// Connections the generator opens (--target; the suite uses 10 for latency and 32 for
    /// max throughput).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000),
          conflicts_with_all = ["suite", "routing", "telemetry"])]
    pub connections: u32,
    /// Rounds: each route is measured once per round, routes taking turns (default 5 for
    /// --suite, 3 otherwise).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// http1, h2c or grpc.
    #[arg(long, value_name = "PROTOCOL", default_value = "http1")]
    pub protocol: Protocol,
    /// Write every figure to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the latency percentile curves of every route to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// --suite: leave out the cost curves (memory and idle CPU at 1 to 10,000 idle
    /// connections and 10 to 1000 configured services).
    #[arg(long, conflicts_with_all = ["target", "routing", "telemetry"])]
    pub skip_costs: bool,
    /// --suite: only these routes (comma-separated, as named in the JSON: tarmac_one_hop,
    /// envoy_two_hops_mtls, ...); `direct`, the baseline, always runs.
    #[arg(long, value_name = "ROUTES", value_delimiter = ',', conflicts_with_all = ["target", "routing", "telemetry"])]
    pub routes: Vec<Route>,
    /// --suite: only these loads (comma-separated request rates, and `max` for maximum
    /// throughput); the default is 1000,5000,max.
    #[arg(long, value_name = "LOADS", value_delimiter = ',', value_parser = parse_suite_load, conflicts_with = "target")]
    pub loads: Vec<SuiteLoad>,
    /// --suite: a suite run recorded with --json (the last landing's, under
    /// bench/results/) to compare this run's Tarmac figures with; those more than 5 % worse
    /// are listed, and the bar's last line is checked.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target", "routing", "telemetry"])]
    pub baseline: Option<PathBuf>,
    /// Internal: serve as the suite's upstream on this address.
    #[arg(long, value_name = "ADDR", hide = true)]
    pub serve_upstream: Option<SocketAddr>,
}

impl BenchArgs {
    /// `--rounds`, or the mode's own: 5 for the suite, whose figures the bar and
    /// `--baseline` judge by their spread over rounds (with 3 rounds a run lands beyond
    /// another by noise alone 1 time in 20 per figure; with 5, 1 in 252), 3 otherwise.
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.suite { 5 } else { 3 }) as usize
    }
}

/// One load of the suite: an open-loop request rate, or maximum throughput.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuiteLoad {
    Rate(u32),
    Max,
}

impl SuiteLoad {
    /// The loads asked for, or the suite's own: each rate, then maximum throughput.
    fn chosen(asked: &[SuiteLoad]) -> Vec<SuiteLoad> {
        if asked.is_empty() {
            SUITE_RATES.iter().map(|&rate| SuiteLoad::Rate(rate)).chain([SuiteLoad::Max]).collect()
        } else {
            asked.to_vec()
        }
    }
}

/// A clap `value_parser`: its error implements `std::error::Error`, which clap prints.
fn parse_suite_load(text: &str) -> Result<SuiteLoad, NotALoad> {
    match text.trim() {
        "max" => Ok(SuiteLoad::Max),
        rate => match rate.parse::<u32>() {
            Ok(rate) if rate > 0 => Ok(SuiteLoad::Rate(rate)),
            _ => Err(NotALoad(rate.to_string())),
        },
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither a request rate (a positive whole number) nor `max`")]
struct NotALoad(String);

/// The JSON report: settings, every phase, the summaries and the bar.
#[derive(Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    mode: &'static str,
    commit: Option<String>,
    unix_time: u64,
    cores: usize,
    target: Option<String>,
    protocol: Protocol,
    rounds: usize,
    phase_seconds: f64,
    warmup_seconds: f64,
    pinned: bool,
    realtime: Option<bool>,
    envoy_version: Option<String>,
    envoy_missing: Option<String>,
    /// Which comparators these figures were measured against, and how each was run
    /// (runs recorded before this field existed: see bench/README, History).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    comparators: Vec<Comparator>,
    /// The machine the figures belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Host>,
    idle_rss: Vec<IdleRss>,
    /// `--suite`: the one-hop routes under wrk, a second load generator.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    wrk: Vec<wrk::WrkRun>,
    costs: Vec<costs::CostPoint>,
    summaries: &'a [RouteSummary],
    bar: &'a [BarCheck],
    /// `--suite`: the targets past nginx (issue 19).
    #[serde(skip_serializing_if = "<[BarCheck]>::is_empty")]
    targets: &'a [BarCheck],
    /// `--suite --baseline`: this run's Tarmac figures against the recorded run's.
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<regression::Comparison>,
    /// `--routing`: the 100-rule table against the 1-rule table, per load.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routing: Vec<routing::RoutingComparison>,
    /// `--routing`: 100 AuthorizationPolicies and a rate limit against none, inbound, per load.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy: Vec<routing::RoutingComparison>,
    /// `--routing`: the route whose backend fails each first try against the same route
    /// without failures, per load: what a retried request costs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    retried: Vec<routing::RetryCost>,
    /// `--telemetry`: one hop tracing 10 % of its requests against the same hop without,
    /// per load (`rules` holds the sampled percent of each side).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tracing: Vec<routing::RoutingComparison>,
    /// `--telemetry`: the same with a JSON access log (`rules`: log lines per request).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    access_log: Vec<routing::RoutingComparison>,
    /// `--telemetry`: spans the collector received over the whole run.
    #[serde(skip_serializing_if = "Option::is_none")]
    spans_exported: Option<u64>,
    phases: Vec<&'a PhaseRecord>,
}

impl<'a> JsonReport<'a> {
    /// What every mode reports the same way; each sets what it adds (commit, pinning,
    /// Envoy, costs, bar, routing) over this.
    fn common(
        mode: &'static str,
        protocol: Protocol,
        rounds: usize,
        phase_duration: Duration,
        summaries: &'a [RouteSummary],
        measured: &'a [Measured],
    ) -> Self {
        Self {
            tool: "tarmac bench",
            mode,
            commit: None,
            unix_time: unix_time(),
            cores: cores(),
            target: None,
            protocol,
            rounds,
            phase_seconds: phase_duration.as_secs_f64(),
            warmup_seconds: WARMUP.as_secs_f64(),
            pinned: false,
            realtime: None,
            envoy_version: None,
            envoy_missing: None,
            comparators: Vec::new(),
            host: Some(Host::read()),
            idle_rss: Vec::new(),
            wrk: Vec::new(),
            costs: Vec::new(),
            summaries,
            bar: &[],
            targets: &[],
            baseline: None,
            routing: Vec::new(),
            policy: Vec::new(),
            retried: Vec::new(),
            tracing: Vec::new(),
            access_log: Vec::new(),
            spans_exported: None,
            phases: measured.iter().map(|m| &m.record).collect(),
        }
    }
}

/// A proxy Tarmac is compared with, as this run ran it.
#[derive(Serialize)]
struct Comparator {
    proxy: &'static str,
    version: Option<String>,
    setup: &'static str,
}

/// What a figure depends on beyond the code: the same commit measures differently on
/// another CPU or clock source.
#[derive(Serialize)]
struct Host {
    cpu: Option<String>,
    kernel: Option<String>,
    clocksource: Option<String>,
}

impl Host {
    fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok().map(|s| s.trim().to_string());
        let cpu = read("/proc/cpuinfo").and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        });
        Self {
            cpu,
            kernel: read("/proc/sys/kernel/osrelease"),
            clocksource: read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        }
    }
}

#[derive(Serialize)]
struct IdleRss {
    proxy: String,
    bytes: u64,
}

/// Runs `tarmac bench`. The upstream mode runs its own runtime, so it is dispatched
/// before `runtime` is entered.
pub fn main(args: BenchArgs, runtime: &tokio::runtime::Runtime) -> Result<(), BenchError> {
    if let Some(addr) = args.serve_upstream {
        return upstream::serve(addr);
    }
    runtime.block_on(async {
        if args.suite {
            suite(args).await
        } else if args.routing {
            routing(args).await
        } else if args.telemetry {
            telemetry_costs(args).await
        } else if args.control_plane {
            control_plane(args).await
        } else {
            target(args).await
        }
    })
}

async fn control_plane(args: BenchArgs) -> Result<(), BenchError> {
    if args.protocol != Protocol::Http1 {
        return Err(BenchError::NotThisMode("--protocol"));
    }
    let options = control_plane::Options {
        services: args.services,
        endpoints: args.endpoints,
        proxies: args.proxies,
        churn_per_second: args.churn,
        duration: args.duration.unwrap_or(Duration::from_secs(60)),
        cert_lifetime: args.cert_lifetime,
    };
    let report = control_plane::run(options).await?;
    println!("{}", report.text());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn target(args: BenchArgs) -> Result<(), BenchError> {
    let url = args.target.as_deref().expect("clap requires a mode");
    let target = Target::parse(url).map_err(BenchError::Target)?;
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(BenchError::Rate(args.rate));
    }
    let rounds = args.rounds();
    let total = args.duration.unwrap_or(Duration::from_secs(30));
    let binaries = Binaries::tarmac_only(locate_proxy_binary()?);
    let workdir = WorkDir::create("bench")?;
    let routes = vec![
        topology::start(Route::Direct, target.addr, &binaries, None, workdir.path()).await?,
        // The mesh path as users get it: two sidecars with mTLS between them.
        topology::start(Route::TarmacTwoHopsMtls, target.addr, &binaries, None, workdir.path()).await?,
    ];
    let idle_rss = idle_rss(&routes);
    let load_name = format!("{} req/s", args.rate);
    let loads = [LoadSpec {
        name: load_name.clone(),
        load: Load::OpenLoop { rate_per_second: args.rate },
        connections: args.connections as usize,
        realtime: false,
    }];
    let settings = Settings {
        protocol: args.protocol,
        // Whole milliseconds, so that it reads as `333ms`.
        phase_duration: Duration::from_millis(((total / rounds as u32).as_millis() as u64).max(1)),
        warmup: WARMUP,
        rounds,
        // The target is someone else's process: its CPU cannot be told apart from other
        // load on the machine, so only the hypervisor's steal flags a phase.
        contamination_cores: f64::INFINITY,
        contamination_stolen_cores: CONTAMINATION_STOLEN_CORES,
        repeat_contaminated: false,
    };
    eprintln!(
        "tarmac bench: {} at {} req/s, {rounds} rounds of {:?} per path (direct, then through two tarmac-proxy sidecars)",
        target.url(),
        args.rate,
        settings.phase_duration
    );
    let mut scheduling = Scheduling { realtime_pids: Vec::new(), realtime_works: None };
    let mut ours = vec![std::process::id()];
    ours.extend(routes.iter().flat_map(|r| r.proxies.iter().map(|p| p.pid())));
    let measured = experiment::run(&target, &routes, &loads, &settings, &mut scheduling, &ours).await;
    stop_all(routes).await;
    let measured = measured?;
    let summaries = report::summarise(&measured);

    println!(
        "{}",
        report::latency_table(
            &summaries,
            &load_name,
            &format!("{} at {load_name}, {}", target.url(), args.protocol)
        )
    );
    if let (Some(direct), Some(meshed)) = (
        summaries.iter().find(|s| s.route == Route::Direct),
        summaries.iter().find(|s| s.route == Route::TarmacTwoHopsMtls),
    ) {
        println!(
            "  baseline   p50 {:>7.0} µs  p99 {:>7.0} µs  p99.9 {:>7.0} µs",
            direct.p50_us, direct.p99_us, direct.p999_us
        );
        println!(
            "  meshed     p50 {:>7.0} µs  p99 {:>7.0} µs  p99.9 {:>7.0} µs",
            meshed.p50_us, meshed.p99_us, meshed.p999_us
        );
        println!(
            "  difference p50 {:>+7.0} µs  p99 {:>+7.0} µs  p99.9 {:>+7.0} µs  (added p50/p99 round by round: {}/{} µs)",
            meshed.p50_us - direct.p50_us,
            meshed.p99_us - direct.p99_us,
            meshed.p999_us - direct.p999_us,
            meshed.added_p50_us.map_or("-".into(), |v| format!("{v:+.0}")),
            meshed.added_p99_us.map_or("-".into(), |v| format!("{v:+.0}")),
        );
    }
    print_proxy_costs(&measured, &idle_rss);
    print_warnings(&summaries, &settings);
    let json = JsonReport {
        target: Some(target.url()),
        idle_rss,
        ..JsonReport::common("target", args.protocol, rounds, settings.phase_duration, &summaries, &measured)
    };
    write_outputs(&args, &json, &summaries, &[load_name], &format!("tarmac bench: {}", target.url()))
}

async fn suite(args: BenchArgs) -> Result<(), BenchError> {
    let rounds = args.rounds();
    let phase_duration = args.duration.unwrap_or(Duration::from_secs(5));
    // Read first: a bad file is refused before minutes of measuring.
    let baseline = args
        .baseline
        .as_deref()
        .map(|path| Ok::<_, BenchError>((path, regression::load(path)?)))
        .transpose()?;
    let workdir = WorkDir::create("bench")?;
    let (envoy, envoy_missing) = match envoy::locate() {
        Ok(path) => (Some(path), None),
        Err(e) => {
            eprintln!("warning: {e}");
            (None, Some(e.to_string()))
        }
    };
    let envoy_version = envoy.as_deref().and_then(envoy::version);
    let nginx = nginx::locate().map_err(|message| eprintln!("warning: {message}")).ok();
    let mut comparators = Vec::new();
    if envoy.is_some() {
        comparators.push(Comparator { proxy: "envoy", version: envoy_version.clone(), setup: envoy::SETUP });
    }
    if let Some(nginx) = &nginx {
        comparators.push(Comparator { proxy: "nginx", version: nginx::version(nginx), setup: nginx::SETUP });
    }
    let binaries = Binaries { tarmac_proxy: locate_proxy_binary()?, envoy, nginx };

    let layout = Layout::choose()?;
    let (upstream, upstream_addr) = start_upstream(&layout, workdir.path()).await?;
    let (pinned, proxy_core) = (layout.pinned, layout.proxy_core);

    let mut routes: Vec<Running> = Vec::new();
    let chosen =
        |route: &Route| args.routes.is_empty() || *route == Route::Direct || args.routes.contains(route);
    for route in SUITE_ROUTES.into_iter().filter(chosen) {
        let missing = match route.proxy() {
            Some(topology::ProxyKind::Envoy) => binaries.envoy.is_none(),
            Some(topology::ProxyKind::Nginx) => binaries.nginx.is_none(),
            _ => false,
        };
        if missing {
            continue;
        }
        routes.push(topology::start(route, upstream_addr, &binaries, proxy_core, workdir.path()).await?);
    }
    let target = Target::parse(&format!("http://{upstream_addr}/")).map_err(BenchError::Target)?;
    let what = if pinned { "proxies on core 0, upstream and generator on core 1" } else { "" };
    let Run { measured, idle_rss, chosen_loads, load_names, conditions, settings, realtime, ours } =
        measure(&args, "suite", what, &target, &upstream, &routes).await?;
    let wrk_runs = if chosen_loads.contains(&SuiteLoad::Max) && wrk::available() {
        eprintln!("max throughput with wrk, a second load generator, against the one-hop routes");
        let (one_hop, others): (Vec<Running>, Vec<Running>) = routes
            .into_iter()
            .partition(|r| matches!(r.route, Route::TarmacOneHop | Route::EnvoyOneHop | Route::NginxOneHop));
        stop_all(others).await;
        let runs =
            wrk::check(&one_hop, SUITE_MAX_CONNECTIONS, phase_duration, layout.client_core, &ours).await;
        stop_all(one_hop).await;
        runs?
    } else {
        stop_all(routes).await;
        Vec::new()
    };
    let cost_points = if args.skip_costs {
        Vec::new()
    } else {
        eprintln!("cost curves: a fresh proxy per point, idle");
        let mut proxies = vec![(topology::ProxyKind::Tarmac, binaries.tarmac_proxy.as_path())];
        if let Some(envoy) = binaries.envoy.as_deref() {
            proxies.push((topology::ProxyKind::Envoy, envoy));
        }
        costs::measure(&proxies, upstream_addr, proxy_core, workdir.path()).await?
    };
    upstream.stop(STOP_GRACE).await;

    let summaries = report::summarise(&measured);
    let idle_tarmac_mib = regression::idle_tarmac_mib(idle_rss.iter().map(|r| (r.proxy.as_str(), r.bytes)));
    let comparison = baseline.map(|(path, recorded)| {
        let phases = measured.iter().map(|m| &m.record);
        regression::compare(path, &recorded, phases, idle_tarmac_mib, MAX_LOAD)
    });
    let mut bar = report::bar(&summaries, idle_tarmac_mib, MAX_LOAD);
    bar.push(regression::bar_check(comparison.as_ref()));
    let targets = report::targets(&summaries, costs::per_idle_connection_kib(&cost_points), MAX_LOAD);
    print_suite_tables(&summaries, &conditions, &chosen_loads);
    if let Some(message) = &envoy_missing {
        println!("Envoy rows are missing: {message}\n");
    }
    if !wrk_runs.is_empty() {
        let suite_rps_per_core =
            |route| report::find(&summaries, MAX_LOAD, route).and_then(|s| s.rps_per_proxy_core);
        println!("{}", wrk::table(&wrk_runs, suite_rps_per_core));
    }
    if !cost_points.is_empty() {
        println!("{}", costs::table(&cost_points));
    }
    if let Some(comparison) = &comparison {
        println!("{}", regression::text(comparison));
    }
    println!("{}", report::bar_text("The bar (issue 3)", &bar));
    println!("{}", report::bar_text("Targets past nginx (issue 19)", &targets));
    print_warnings(&summaries, &settings);

    let json = JsonReport {
        commit: commit(),
        pinned,
        realtime,
        envoy_version,
        envoy_missing,
        comparators,
        idle_rss,
        wrk: wrk_runs,
        costs: cost_points,
        bar: &bar,
        targets: &targets,
        baseline: comparison,
        ..JsonReport::common("suite", args.protocol, rounds, phase_duration, &summaries, &measured)
    };
    write_outputs(&args, &json, &summaries, &load_names, "tarmac bench --suite: latency percentiles")
}

async fn routing(args: BenchArgs) -> Result<(), BenchError> {
    let rounds = args.rounds();
    let phase_duration = args.duration.unwrap_or(Duration::from_secs(5));
    let workdir = WorkDir::create("bench")?;
    let binaries = Binaries::tarmac_only(locate_proxy_binary()?);
    let layout = Layout::choose()?;
    let (upstream, upstream_addr) = start_upstream(&layout, workdir.path()).await?;
    let discovery = routing::Discovery::start(upstream_addr).await?;
    let mut routes: Vec<Running> = Vec::new();
    for route in ROUTING_ROUTES {
        let (core, dir) = (layout.proxy_core, workdir.path());
        routes.push(match (routing::service_of(route), routing::inbound_of(route)) {
            (Some(_), _) => topology::start_routed(route, discovery.addr, &binaries, core, dir).await?,
            (_, Some(_)) => {
                topology::start_inbound(route, discovery.addr, upstream_addr, &binaries, core, dir).await?
            }
            _ => topology::start(route, upstream_addr, &binaries, core, dir).await?,
        });
    }
    // Numbered, so that the upstream fails only the first try of the retried route's
    // requests (every route's requests carry the number: they stay comparable).
    let target = Target::parse(&format!("http://{upstream_addr}/")).map_err(BenchError::Target)?.numbered();
    let what = format!(
        "HTTPRoutes of 1 and {} rules, requests taking the last; an inbound hop with {} policies and a rate limit, and without",
        routing::MANY_RULES,
        routing::POLICIES,
    );
    let Run { measured, idle_rss, chosen_loads, load_names, conditions, settings, realtime, .. } =
        measure(&args, "routing", &what, &target, &upstream, &routes).await?;
    stop_all(routes).await;
    drop(discovery);
    upstream.stop(STOP_GRACE).await;

    let summaries = report::summarise(&measured);
    let retries = routing::compare_retried(&summaries);
    let comparisons =
        routing::compare(&summaries, Route::TarmacOneRule, Route::TarmacManyRules, [1, routing::MANY_RULES]);
    let policy = routing::compare(
        &summaries,
        Route::TarmacInbound,
        Route::TarmacInboundPolicy,
        [0, routing::POLICIES],
    );
    print_suite_tables(&summaries, &conditions, &chosen_loads);
    println!(
        "{}",
        routing::table(
            &format!("routing: {} rules (the last one taken) ÷ 1 rule, one Tarmac hop", routing::MANY_RULES),
            &comparisons
        )
    );
    println!("{}", routing::retried_table(&retries));
    println!(
        "{}",
        routing::table(
            &format!(
                "inbound policy: {} AuthorizationPolicies (the last one allowing) and a rate limit ÷ none, one Tarmac inbound hop",
                routing::POLICIES
            ),
            &policy
        )
    );
    print_warnings(&summaries, &settings);
    let json = JsonReport {
        commit: commit(),
        pinned: layout.pinned,
        realtime,
        idle_rss,
        routing: comparisons,
        policy,
        retried: retries,
        ..JsonReport::common("routing", args.protocol, rounds, phase_duration, &summaries, &measured)
    };
    write_outputs(&args, &json, &summaries, &load_names, "tarmac bench --routing: latency percentiles")
}

async fn telemetry_costs(args: BenchArgs) -> Result<(), BenchError> {
    let rounds = args.rounds();
    let phase_duration = args.duration.unwrap_or(Duration::from_secs(5));
    let workdir = WorkDir::create("bench")?;
    let binaries = Binaries::tarmac_only(locate_proxy_binary()?);
    let layout = Layout::choose()?;
    let (upstream, upstream_addr) = start_upstream(&layout, workdir.path()).await?;
    let sink = telemetry::Sink::start().await?;
    let mut routes: Vec<Running> = Vec::new();
    for route in TELEMETRY_ROUTES {
        let (core, dir) = (layout.proxy_core, workdir.path());
        routes.push(telemetry::start(route, upstream_addr, sink.addr, &binaries, core, dir).await?);
    }
    let target = Target::parse(&format!("http://{upstream_addr}/")).map_err(BenchError::Target)?;
    let what = format!(
        "one hop tracing {}% of its requests (OTLP to a collector here), one writing a JSON access log, one with neither",
        telemetry::SAMPLING_PERCENT,
    );
    let Run { measured, idle_rss, chosen_loads, load_names, conditions, settings, realtime, .. } =
        measure(&args, "telemetry", &what, &target, &upstream, &routes).await?;
    stop_all(routes).await;
    upstream.stop(STOP_GRACE).await;
    let spans = sink.spans();
    drop(sink);

    let summaries = report::summarise(&measured);
    let sampled = telemetry::SAMPLING_PERCENT as usize;
    let tracing = routing::compare(&summaries, Route::TarmacOneHop, Route::TarmacTraced, [0, sampled]);
    let access_log = routing::compare(&summaries, Route::TarmacOneHop, Route::TarmacAccessLog, [0, 1]);
    print_suite_tables(&summaries, &conditions, &chosen_loads);
    println!(
        "{}",
        routing::table(&format!("tracing: {sampled} % of requests sampled ÷ off, one Tarmac hop"), &tracing)
    );
    println!("{}", routing::table("access log: a JSON line per request ÷ none, one Tarmac hop", &access_log));
    println!("spans received by the collector: {spans}\n");
    print_warnings(&summaries, &settings);
    let json = JsonReport {
        commit: commit(),
        pinned: layout.pinned,
        realtime,
        idle_rss,
        tracing,
        access_log,
        spans_exported: Some(spans),
        ..JsonReport::common("telemetry", args.protocol, rounds, phase_duration, &summaries, &measured)
    };
    write_outputs(&args, &json, &summaries, &load_names, "tarmac bench --telemetry: latency percentiles")
}

/// Where the suite's processes run: proxies on one core, everything that makes or
/// answers the load on the other (when the machine has two cores and `taskset`).
struct Layout {
    pinned: bool,
    proxy_core: Option<usize>,
    client_core: Option<usize>,
}

impl Layout {
    /// Chooses, and pins this process (the generator) to the client core.
    fn choose() -> Result<Self, processes::ToolError> {
        let pinned = cores() >= 2 && processes::tool_available("taskset");
        if pinned {
            processes::pin(std::process::id(), CLIENT_CORE)?;
            Ok(Self { pinned, proxy_core: Some(PROXY_CORE), client_core: Some(CLIENT_CORE) })
        } else {
            eprintln!(
                "warning: not pinning to cores (needs 2 cores and taskset from util-linux): figures will be noisier"
            );
            Ok(Self { pinned, proxy_core: None, client_core: None })
        }
    }
}

/// The built-in upstream (this executable with `--serve-upstream`) on the client core.
async fn start_upstream(
    layout: &Layout,
    dir: &std::path::Path,
) -> Result<(Supervised, SocketAddr), BenchError> {
    let addr = tarmac_clikit::ports::free_port()?;
    let own_binary = std::env::current_exe().map_err(LocateError::CurrentExe)?;
    let upstream = processes::spawn(
        "upstream",
        &own_binary,
        &["bench".to_string(), "--serve-upstream".to_string(), addr.to_string()],
        layout.client_core,
        dir,
    )?;
    upstream.wait_ready(&Readiness::Accepts(addr), Duration::from_secs(10)).await?;
    Ok((upstream, addr))
}

/// The suite's loads: the open-loop rates, then max throughput.
/// How the suite and the routing comparison run their phases.
/// What a comparison mode measured of its running routes, and how.
struct Run {
    measured: Vec<Measured>,
    idle_rss: Vec<IdleRss>,
    chosen_loads: Vec<SuiteLoad>,
    /// The loads as the reports name them.
    load_names: Vec<String>,
    /// How the phases ran, for the tables' heading.
    conditions: String,
    settings: Settings,
    realtime: Option<bool>,
    /// The benchmark's own processes: anything else running is contamination.
    ours: Vec<u32>,
}

/// Measures `routes` as every comparison mode does: their idle memory once they have
/// settled, then each chosen load for the rounds asked, routes taking turns, at real-time
/// priority where it works. `what` ends the line that says what is about to run.
async fn measure(
    args: &BenchArgs,
    mode: &str,
    what: &str,
    target: &Target,
    upstream: &Supervised,
    routes: &[Running],
) -> Result<Run, BenchError> {
    let rounds = args.rounds();
    let phase_duration = args.duration.unwrap_or(Duration::from_secs(5));
    // Let the proxies finish starting before their idle memory is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = idle_rss(routes);
    let chosen_loads = SuiteLoad::chosen(&args.loads);
    let loads = suite_loads(&chosen_loads);
    let settings = suite_settings(args, rounds, phase_duration);
    let mut scheduling = realtime_scheduling(upstream, routes);
    eprintln!(
        "tarmac bench --{mode}: {} routes × {} loads × {rounds} rounds = {} phases of {:?} (+{:?} warm-up){}{what}",
        routes.len(),
        loads.len(),
        loads.len() * rounds * routes.len(),
        phase_duration,
        WARMUP,
        if what.is_empty() { "" } else { "; " },
    );
    let ours = our_pids(upstream, routes);
    let measured = experiment::run(target, routes, &loads, &settings, &mut scheduling, &ours).await?;
    let conditions = format!(
        "{}, {rounds} rounds of {phase_duration:?}, medians; added = route − direct in the same round",
        args.protocol
    );
    let load_names = loads.iter().map(|l| l.name.clone()).collect();
    Ok(Run {
        measured,
        idle_rss,
        chosen_loads,
        load_names,
        conditions,
        settings,
        realtime: scheduling.realtime_works,
        ours,
    })
}

fn suite_settings(args: &BenchArgs, rounds: usize, phase_duration: Duration) -> Settings {
    Settings {
        protocol: args.protocol,
        phase_duration,
        warmup: WARMUP,
        rounds,
        contamination_cores: CONTAMINATION_CORES,
        contamination_stolen_cores: CONTAMINATION_STOLEN_CORES,
        repeat_contaminated: true,
    }
}

fn suite_loads(chosen: &[SuiteLoad]) -> Vec<LoadSpec> {
    chosen
        .iter()
        .map(|load| match load {
            SuiteLoad::Rate(rate) => LoadSpec {
                name: format!("{rate} req/s"),
                load: Load::OpenLoop { rate_per_second: f64::from(*rate) },
                connections: SUITE_LATENCY_CONNECTIONS,
                realtime: true,
            },
            SuiteLoad::Max => LoadSpec {
                name: MAX_LOAD.to_string(),
                load: Load::ClosedLoop { in_flight_per_connection: 1 },
                connections: SUITE_MAX_CONNECTIONS,
                realtime: false,
            },
        })
        .collect()
}

/// Every process of the benchmark's own: what the machine used beyond them is someone
/// else's.
fn our_pids(upstream: &Supervised, routes: &[Running]) -> Vec<u32> {
    let mut ours = vec![std::process::id(), upstream.pid()];
    ours.extend(routes.iter().flat_map(|r| r.proxies.iter().map(|p| p.pid())));
    ours
}

/// Real-time priority for the latency phases, for every process of the benchmark, when
/// `chrt` is there.
fn realtime_scheduling(upstream: &Supervised, routes: &[Running]) -> Scheduling {
    let realtime_pids = if processes::tool_available("chrt") {
        our_pids(upstream, routes)
    } else {
        eprintln!("note: chrt (util-linux) is missing: latency phases run at normal priority");
        Vec::new()
    };
    Scheduling { realtime_pids, realtime_works: None }
}

/// The latency table of each open-loop rate and the max-throughput table.
fn print_suite_tables(summaries: &[RouteSummary], conditions: &str, chosen: &[SuiteLoad]) {
    for load in chosen {
        let text = match load {
            SuiteLoad::Rate(rate) => {
                let load = format!("{rate} req/s");
                report::latency_table(
                    summaries,
                    &load,
                    &format!("{load}, {SUITE_LATENCY_CONNECTIONS} connections, {conditions}"),
                )
            }
            SuiteLoad::Max => report::throughput_table(
                summaries,
                MAX_LOAD,
                &format!(
                    "max throughput, closed loop over {SUITE_MAX_CONNECTIONS} connections, {conditions}"
                ),
            ),
        };
        println!("{text}");
    }
}

fn idle_rss(routes: &[Running]) -> Vec<IdleRss> {
    routes
        .iter()
        .flat_map(|r| r.proxies.iter())
        .map(|p| IdleRss {
            proxy: p.name().to_string(),
            bytes: procfs::read_process(p.pid()).map_or(0, |s| s.rss_bytes),
        })
        .collect()
}

fn print_proxy_costs(measured: &[Measured], idle: &[IdleRss]) {
    let mut names: Vec<&str> = Vec::new();
    for m in measured {
        for p in &m.record.proxies {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
    }
    for name in names {
        let (mut cpu, mut requests, mut peak) = (0.0, 0u64, 0u64);
        for m in measured {
            if let Some(p) = m.record.proxies.iter().find(|p| p.name == name) {
                cpu += p.cpu_seconds;
                requests += m.record.responses + m.record.warmup_responses;
                peak = peak.max(p.peak_rss_bytes);
            }
        }
        let idle = idle.iter().find(|i| i.proxy == name).map_or(0, |i| i.bytes);
        println!(
            "  {name:<24} {:.3} CPU-s per 10k requests, peak RSS {:.1} MiB (idle {:.1} MiB)",
            if requests > 0 { cpu / requests as f64 * 10_000.0 } else { 0.0 },
            peak as f64 / (1024.0 * 1024.0),
            idle as f64 / (1024.0 * 1024.0)
        );
    }
    println!();
}

fn print_warnings(summaries: &[RouteSummary], settings: &Settings) {
    let mut causes = Vec::new();
    if settings.contamination_cores.is_finite() {
        causes.push(format!("other processes used over {} cores", settings.contamination_cores));
    }
    if settings.contamination_stolen_cores.is_finite() {
        causes.push(format!(
            "the hypervisor took over {} cores (steal time)",
            settings.contamination_stolen_cores
        ));
    }
    for s in summaries {
        if s.failures > 0 {
            println!(
                "note: {} at {}: {} requests failed; the first: {}",
                s.label,
                s.load,
                s.failures,
                s.first_error.as_deref().unwrap_or("no error recorded")
            );
        }
        for warning in s.generator_warnings.iter().take(1) {
            println!("note: {} at {}: {warning}", s.label, s.load);
        }
        if s.contaminated_rounds > 0 {
            println!(
                "note: {} at {}: {} of {} rounds ran while {}",
                s.label,
                s.load,
                s.contaminated_rounds,
                s.rounds,
                causes.join(" or ")
            );
        }
    }
}

fn write_outputs(
    args: &BenchArgs,
    json: &JsonReport<'_>,
    summaries: &[RouteSummary],
    loads: &[String],
    title: &str,
) -> Result<(), BenchError> {
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|source| BenchError::Write { path: path.clone(), source })
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(json).map_err(BenchError::EncodeReport)?;
        write(path, text + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        write(path, plot::svg(summaries, loads, title))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Finds `tarmac-proxy`: `$TARMAC_PROXY_BIN`, else next to this executable, where Cargo
/// puts both binaries of the workspace.
fn locate_proxy_binary() -> Result<PathBuf, LocateError> {
    if let Some(path) = std::env::var_os(ENV_PROXY_BIN) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LocateError::NotAFile { var: ENV_PROXY_BIN, path })
        };
    }
    let here = std::env::current_exe().map_err(LocateError::CurrentExe)?;
    let path = here.with_file_name("tarmac-proxy");
    if !path.is_file() {
        return Err(LocateError::NoProxy(path));
    }
    Ok(path)
}

/// The commit being measured, `-dirty` when the work tree has changes; `None` outside a
/// git checkout.
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// An option that only one mode reads is refused by the others, not silently ignored.
    #[test]
    fn options_of_one_mode_are_refused_by_the_others() {
        let target = ["--target", "http://127.0.0.1:1/"];
        let parse = |mode: &[&str], option: &[&str]| {
            Cli::try_parse_from(["bench"].iter().chain(mode).chain(option)).map(|cli| cli.bench)
        };
        let suite_only: [&[&str]; 3] =
            [&["--baseline", "before.json"], &["--skip-costs"], &["--routes", "tarmac_one_hop"]];
        for option in suite_only {
            let bench = parse(&["--suite"], option).unwrap_or_else(|e| panic!("{option:?}: {e}"));
            assert!(bench.baseline.is_some() || bench.skip_costs || !bench.routes.is_empty());
            for other in [&target[..], &["--routing"]] {
                let err = parse(other, option).err().unwrap_or_else(|| panic!("{other:?} took {option:?}"));
                assert!(err.to_string().contains(option[0]), "{err}");
            }
        }
        let target_only: [&[&str]; 2] = [&["--rate", "500"], &["--connections", "4"]];
        for option in target_only {
            let bench = parse(&target, option).unwrap_or_else(|e| panic!("{option:?}: {e}"));
            assert!(bench.rate == 500.0 || bench.connections == 4);
            for other in [&["--suite"][..], &["--routing"]] {
                assert!(parse(other, option).is_err(), "{other:?} took {option:?}");
            }
        }
        assert_eq!(parse(&["--routing"], &["--loads", "max"]).unwrap().loads, [SuiteLoad::Max]);
        assert!(parse(&target, &["--loads", "max"]).is_err(), "--target took --loads");
    }

    #[test]
    fn the_suite_runs_five_rounds_unless_told_and_the_other_modes_three() {
        let rounds =
            |args: &[&str]| Cli::try_parse_from(["bench"].iter().chain(args)).unwrap().bench.rounds();
        assert_eq!(rounds(&["--suite"]), 5);
        assert_eq!(rounds(&["--routing"]), 3);
        assert_eq!(rounds(&["--target", "http://127.0.0.1:1/"]), 3);
        assert_eq!(rounds(&["--suite", "--rounds", "2"]), 2);
        assert!(Cli::try_parse_from(["bench", "--suite", "--rounds", "0"]).is_err(), "at least one round");
    }
}
