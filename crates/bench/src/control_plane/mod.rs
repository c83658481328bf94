//! `tarmac bench --control-plane`: the control plane at a cluster's size (issue 21).
//!
//! Real: the `tarmac-control` binary, as a cluster runs it (`--store kubernetes`), its
//! Kubernetes client (kube-rs's watchers), its CA, its gRPC server over TLS, and the
//! proxies' own certificate code and TLS settings. Simulated: the API server (this
//! process serves N Services, their pods and EndpointSlices in the API's shapes, and
//! churns endpoints), and the proxies (P sets of discovery streams and certificate
//! renewals on one runtime, no data plane). A change is timed from the API server's first
//! watch event of it to each subscribed proxy's receipt of the new endpoint set: the
//! whole path watch event → store → snapshot → discovery push.

mod apiserver;
mod cluster;
pub mod ledger;
mod proxies;

use crate::report::{BarCheck, bar_text};
use apiserver::ApiServer;
use cluster::{ChangeKind, Cluster};
use ledger::{Ledger, Propagation};
use proxies::{Plan, Shared};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarmac_clikit::ports::{NoFreePort, free_port};
use tarmac_clikit::workdir::{WorkDir, WorkDirError};
use tarmac_transport::process::{self, Output, ProcessError, Readiness, Supervised};
use tokio_util::sync::CancellationToken;

/// Points at another `tarmac-control` binary.
pub const ENV_CONTROL_BIN: &str = "TARMAC_CONTROL_BIN";
/// How long the control plane may take to list the cluster and listen.
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long every proxy may take to be certified and have its first updates.
const SYNC_LIMIT: Duration = Duration::from_secs(300);
/// How long after the churn the last changes may take to arrive before they count as
/// missed.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);
/// Quiet time before idle memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// A service is changed again only after this long (or a shorter time when there are
/// few services for the rate): each change is then seen on its own.
const COOLDOWN: Duration = Duration::from_secs(5);
/// Targets of issue 21 at 1000 services and 2000 proxies.
const TARGET_P99: Duration = Duration::from_secs(1);
const TARGET_RSS_MIB: f64 = 150.0;
const MIB: f64 = 1024.0 * 1024.0;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    pub services: usize,
    pub endpoints: usize,
    pub proxies: usize,
    pub churn_per_second: f64,
    pub duration: Duration,
    /// The certificates' lifetime; by default the churn's duration, so that each proxy
    /// renews about once while changes are being measured.
    pub cert_lifetime: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "tarmac-control is missing: no {}. Build it next to `tarmac` (`cargo build --release -p tarmac-cli -p tarmac-kube`), \
         or point {ENV_CONTROL_BIN} at a tarmac-control binary.",
        .0.display()
    )]
    NoControl(PathBuf),
    #[error("{ENV_CONTROL_BIN} is set to {}, which is not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("cannot tell where this executable is: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("--{what} must be at least {min}, not {value}")]
    Setting { what: &'static str, min: String, value: String },
    #[error("the simulated API server cannot listen on loopback: {0}")]
    ApiServer(#[source] std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bench's CA in {}: {source}", dir.display())]
    Ca {
        dir: PathBuf,
        #[source]
        source: tarmac_identity::ca::CaError,
    },
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error(transparent)]
    NoFreePort(#[from] NoFreePort),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(
        "the simulated proxies did not all sync within {limit:?}: {certified} of {proxies} certified, \
         {synced} of {streams} streams had their first update; bootstrap errors: {errors:?}; \
         stream errors: {stream_errors:?}\ntarmac-control's log ends:\n{log_tail}"
    )]
    NoSync {
        limit: Duration,
        certified: usize,
        proxies: usize,
        synced: usize,
        streams: usize,
        errors: Vec<String>,
        stream_errors: Vec<String>,
        log_tail: String,
    },
    #[error("tarmac-control exited during the run: {0}")]
    Exited(#[source] ProcessError),
    #[error("cannot encode the JSON report: {0}")]
    Encode(#[source] serde_json::Error),
}

impl Options {
    fn check(&self) -> Result<(), ControlPlaneError> {
        let bad = |what, min: &str, value: String| {
            Err(ControlPlaneError::Setting { what, min: min.to_string(), value })
        };
        if self.services < 2 {
            return bad("services", "2", self.services.to_string());
        }
        if self.endpoints < 1 {
            return bad("endpoints", "1", self.endpoints.to_string());
        }
        if self.proxies < 1 {
            return bad("proxies", "1", self.proxies.to_string());
        }
        if !(self.churn_per_second.is_finite() && self.churn_per_second > 0.0) {
            return bad(
                "churn",
                "a positive number of changes per second",
                self.churn_per_second.to_string(),
            );
        }
        if let Some(lifetime) = self.cert_lifetime
            && lifetime < Duration::from_secs(10)
        {
            return bad("cert-lifetime", "10s", format!("{lifetime:?}"));
        }
        Ok(())
    }

    fn cooldown(&self) -> Duration {
        // Leave at least half the services free to change at any moment.
        COOLDOWN.min(Duration::from_secs_f64(self.services as f64 / (2.0 * self.churn_per_second)))
    }
}

fn locate_control() -> Result<PathBuf, ControlPlaneError> {
    if let Some(path) = std::env::var_os(ENV_CONTROL_BIN) {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(ControlPlaneError::NotAFile(path)) };
    }
    let here = std::env::current_exe().map_err(ControlPlaneError::CurrentExe)?;
    let path = here.with_file_name("tarmac-control");
    if path.is_file() { Ok(path) } else { Err(ControlPlaneError::NoControl(path)) }
}

/// The JSON report (`bench/results/control-plane-COMMIT.json`).
#[derive(Serialize)]
pub struct Report {
    tool: &'static str,
    mode: &'static str,
    commit: Option<String>,
    unix_time: u64,
    cores: usize,
    host: super::Host,
    /// `/proc/loadavg` (1, 5, 15 minutes) before and after: the machine is shared.
    load_average_before: Option<[f64; 3]>,
    load_average_after: Option<[f64; 3]>,
    settings: Settings,
    control_plane: ControlPlaneCost,
    /// This process (API server, churn and every simulated proxy): if it saturates, the
    /// figures are its, not the control plane's.
    bench_process: BenchCost,
    sync: Sync,
    churn: Churn,
    propagation: Propagation,
    certificates: Certificates,
    targets: Vec<BarCheck>,
}

#[derive(Serialize)]
struct Settings {
    services: usize,
    endpoints_per_service: usize,
    proxies: usize,
    churn_per_second: f64,
    churn_seconds: f64,
    cert_lifetime_seconds: f64,
    store: &'static str,
    /// Outbound services each proxy watches: chosen with a skew (the service at
    /// `N * u^3`, u uniform), 3 to 10 per proxy.
    fan_out_min: usize,
    fan_out_max: usize,
    fan_out_mean: f64,
    /// Every discovery stream: each proxy's WatchInbound and WatchTelemetry, and its
    /// WatchService streams.
    streams: usize,
    service_streams: usize,
    cooldown_seconds: f64,
}

#[derive(Serialize, Default)]
struct ControlPlaneCost {
    /// After its first list, before any proxy.
    rss_listed_mib: f64,
    /// Every proxy synced.
    rss_synced_mib: f64,
    /// After the churn, quiet for a few seconds, proxies still connected.
    rss_idle_after_mib: f64,
    /// VmHWM over the whole run.
    rss_peak_mib: f64,
    /// CPU seconds to certify and sync every proxy.
    cpu_sync_seconds: f64,
    /// Cores used while churning (changes and renewals).
    cores_churn: f64,
    cpu_seconds_per_change: f64,
}

#[derive(Serialize, Default)]
struct BenchCost {
    cpu_sync_seconds: f64,
    cores_churn: f64,
    /// The runtime's worker threads, what it can use at most.
    workers: usize,
    /// Watch connections the simulated API server cut off for not reading.
    dropped_watchers: u64,
}

#[derive(Serialize, Default)]
struct Sync {
    /// From starting the proxies to every stream having its first update.
    seconds: f64,
    certified: usize,
    updates: u64,
}

#[derive(Serialize, Default)]
struct Churn {
    changes: usize,
    unready: usize,
    ready: usize,
    replaced: usize,
    /// Ticks with every service in its cooldown (none changed).
    skipped: usize,
    /// Changes to a service no proxy watches (in `changes`, with no pairs).
    unwatched: usize,
    /// Discovery streams that failed and were reopened.
    stream_errors: u64,
    /// The first few of their errors.
    stream_error_samples: Vec<String>,
}

#[derive(Serialize, Default)]
struct Certificates {
    /// Issued: bootstraps and renewals.
    issued: u64,
    renewals: u64,
    renewals_during_churn: u64,
    failed: u64,
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

fn sample(pid: u32) -> crate::procfs::ProcessSample {
    crate::procfs::read_process(pid).unwrap_or_default()
}

/// The simulated proxies' plans: proxy `j` is a sidecar of service `j mod N`'s workload,
/// and calls 3 to 10 other services, popular ones more often.
fn plans(cluster: &Cluster, proxies: usize, ledger: &mut Ledger, rng: &mut fastrand::Rng) -> Vec<Plan> {
    let n = cluster.services.len();
    let mut tokens = fastrand::Rng::new();
    (0..proxies)
        .map(|j| {
            let own = j % n;
            let fan_out = rng.usize(3..=10).min(n - 1);
            let mut called: Vec<usize> = Vec::with_capacity(fan_out);
            while called.len() < fan_out {
                let u = rng.f64();
                let pick = ((n as f64 * u * u * u) as usize).min(n - 1);
                if pick != own && !called.contains(&pick) {
                    called.push(pick);
                }
            }
            let service = &cluster.services[own];
            Plan {
                namespace: service.namespace.clone(),
                workload: service.name.clone(),
                token: (0..32).map(|_| tokens.alphanumeric()).collect(),
                calls: called
                    .into_iter()
                    .map(|s| {
                        let target = &cluster.services[s];
                        (target.namespace.clone(), target.name.clone(), ledger.subscribe(s))
                    })
                    .collect(),
            }
        })
        .collect()
}

pub async fn run(options: Options) -> Result<Report, ControlPlaneError> {
    options.check()?;
    let control_bin = locate_control()?;
    let load_before = load_average();
    let workdir = WorkDir::create("bench-control-plane")?;
    let dir = workdir.path().to_path_buf();
    let write_err = |path: PathBuf| move |source| ControlPlaneError::Write { path, source };

    // The cluster, in the API server.
    let api = ApiServer::start().await.map_err(ControlPlaneError::ApiServer)?;
    let mut cluster = Cluster::new(options.services, options.endpoints);
    cluster.publish(&api);
    let kubeconfig = api.kubeconfig(&dir).map_err(write_err(dir.join("kubeconfig")))?;
    let mut rng = fastrand::Rng::with_seed(21);
    let mut ledger = Ledger::new((0..cluster.services.len()).map(|i| cluster.state(i)));
    let plans = plans(&cluster, options.proxies, &mut ledger, &mut rng);

    // The mesh's CA, made here so that the proxies know its anchors; the control plane
    // loads it from the same directory.
    let ca_dir = dir.join("ca");
    let (ca, _) = tarmac_identity::ca::Ca::load_or_generate(&ca_dir, tarmac_identity::DEFAULT_TRUST_DOMAIN)
        .map_err(|source| ControlPlaneError::Ca { dir: ca_dir.clone(), source })?;
    // Each proxy's ServiceAccount token, which the control plane reviews with the API server.
    for plan in &plans {
        api.add_token(&plan.token, &plan.namespace, &plan.workload);
    }
    let lifetime = options.cert_lifetime.unwrap_or(options.duration).max(Duration::from_secs(10));

    let grpc = free_port()?;
    let api_listen = free_port()?;
    let mut command = process::command(&control_bin, None);
    command
        .arg("--store")
        .arg("kubernetes")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--no-route-status")
        .arg("--grpc-listen")
        .arg(grpc.to_string())
        .arg("--api-listen")
        .arg(api_listen.to_string())
        .arg("--identity-dir")
        .arg(&ca_dir)
        .arg("--cert-lifetime")
        .arg(format!("{}s", lifetime.as_secs()));
    let log = dir.join("tarmac-control.log");
    let control = Supervised::spawn("tarmac-control", command, Output::Log(log.clone()))?;
    let pid = control.pid();
    eprintln!(
        "tarmac bench --control-plane: {} services × {} endpoints, {} proxies, {} changes/s for {:?}; \
         tarmac-control {} (--store kubernetes) against a simulated API server",
        options.services,
        options.endpoints,
        options.proxies,
        options.churn_per_second,
        options.duration,
        control_bin.display()
    );
    // It listens once the store has listed every kind.
    control.wait_ready(&Readiness::Accepts(grpc), START_LIMIT).await?;
    let mut cost =
        ControlPlaneCost { rss_listed_mib: sample(pid).rss_bytes as f64 / MIB, ..Default::default() };

    let streams = plans.iter().map(|p| p.calls.len() + 2).sum::<usize>();
    let service_streams = plans.iter().map(|p| p.calls.len()).sum::<usize>();
    let fan_outs: Vec<usize> = plans.iter().map(|p| p.calls.len()).collect();
    let settings = Settings {
        services: options.services,
        endpoints_per_service: options.endpoints,
        proxies: options.proxies,
        churn_per_second: options.churn_per_second,
        churn_seconds: options.duration.as_secs_f64(),
        cert_lifetime_seconds: lifetime.as_secs_f64(),
        store: "kubernetes",
        fan_out_min: fan_outs.iter().copied().min().unwrap_or(0),
        fan_out_max: fan_outs.iter().copied().max().unwrap_or(0),
        fan_out_mean: service_streams as f64 / plans.len() as f64,
        streams,
        service_streams,
        cooldown_seconds: options.cooldown().as_secs_f64(),
    };

    // Every proxy at once, as after a control plane's restart on a running cluster.
    let shared = Arc::new(Shared {
        control: grpc,
        anchors_pem: ca.anchors_pem().to_string(),
        ledger: Mutex::new(ledger),
        metrics: Arc::new(tarmac_proxy::metrics::Metrics::new()),
        stop: CancellationToken::new(),
        certified: Default::default(),
        bootstrap_failures: Default::default(),
        streams_synced: Default::default(),
        stream_errors: Default::default(),
        updates: Default::default(),
        bootstrap_errors: Default::default(),
        stream_error_samples: Default::default(),
    });
    let me = std::process::id();
    let (cp_before, bench_before) = (sample(pid), sample(me));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for plan in plans {
        tasks.spawn(proxies::run(plan, shared.clone()));
    }
    let result =
        measure(&options, &shared, &api, &mut cluster, &control, &mut cost, started, &mut rng, &log).await;
    let (cp_synced, bench_synced, sync, churn_window) = match result {
        Ok(figures) => figures,
        Err(e) => {
            shared.stop.cancel();
            tasks.shutdown().await;
            let _ = control.stop(Duration::from_secs(5)).await;
            return Err(e);
        }
    };
    cost.cpu_sync_seconds = cp_synced.cpu_seconds - cp_before.cpu_seconds;
    let mut bench = BenchCost {
        cpu_sync_seconds: bench_synced.cpu_seconds - bench_before.cpu_seconds,
        workers: tokio::runtime::Handle::current().metrics().num_workers(),
        ..Default::default()
    };
    let ChurnWindow { churn, cp_cpu, bench_cpu, seconds, renewals_during_churn } = churn_window;
    cost.cores_churn = cp_cpu / seconds;
    cost.cpu_seconds_per_change = if churn.changes > 0 { cp_cpu / churn.changes as f64 } else { 0.0 };
    bench.cores_churn = bench_cpu / seconds;
    bench.dropped_watchers = api.dropped_watchers();

    tokio::time::sleep(SETTLE).await;
    let idle = sample(pid);
    cost.rss_idle_after_mib = idle.rss_bytes as f64 / MIB;
    cost.rss_peak_mib = idle.peak_rss_bytes as f64 / MIB;
    let (issued, failed) = shared.certificate_requests();
    let propagation = shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).propagation();
    let mut churn = churn;
    churn.stream_errors = shared.stream_errors.load(Ordering::Relaxed);
    churn.stream_error_samples =
        shared.stream_error_samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let certificates = Certificates {
        issued,
        renewals: issued.saturating_sub(sync.certified as u64),
        renewals_during_churn,
        failed,
    };

    shared.stop.cancel();
    tasks.shutdown().await;
    let exited = control.exit();
    let _ = control.stop(Duration::from_secs(5)).await;
    if let Some(exit) = exited {
        return Err(ControlPlaneError::Exited(ProcessError::Exited {
            name: "tarmac-control".into(),
            exit,
            log_tail: log_tail(&log),
        }));
    }
    let targets = targets(&propagation, &cost);
    Ok(Report {
        tool: "tarmac bench",
        mode: "control-plane",
        commit: super::commit(),
        unix_time: super::unix_time(),
        cores: super::cores(),
        host: super::Host::read(),
        load_average_before: load_before,
        load_average_after: load_average(),
        settings,
        control_plane: cost,
        bench_process: bench,
        sync,
        churn,
        propagation,
        certificates,
        targets,
    })
}

struct ChurnWindow {
    churn: Churn,
    cp_cpu: f64,
    bench_cpu: f64,
    seconds: f64,
    renewals_during_churn: u64,
}

type Sampled = crate::procfs::ProcessSample;

/// Sync, churn and drain, with the control plane's figures of each.
#[allow(clippy::too_many_arguments)]
async fn measure(
    options: &Options,
    shared: &Arc<Shared>,
    api: &ApiServer,
    cluster: &mut Cluster,
    control: &Supervised,
    cost: &mut ControlPlaneCost,
    started: Instant,
    rng: &mut fastrand::Rng,
    log: &std::path::Path,
) -> Result<(Sampled, Sampled, Sync, ChurnWindow), ControlPlaneError> {
    let pid = control.pid();
    let me = std::process::id();
    let proxies = options.proxies;
    let streams = shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).subscribers() + 2 * proxies;
    // Sync: every proxy certified and every stream's first update in.
    loop {
        let certified = shared.certified.load(Ordering::Relaxed);
        let failed = shared.bootstrap_failures.load(Ordering::Relaxed);
        let synced = shared.streams_synced.load(Ordering::Relaxed);
        if certified == proxies && synced == streams {
            break;
        }
        if let Some(e) = control.failure() {
            return Err(ControlPlaneError::Exited(e));
        }
        if failed > 0 || started.elapsed() > SYNC_LIMIT {
            let lock = |m: &Mutex<Vec<String>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(ControlPlaneError::NoSync {
                limit: SYNC_LIMIT,
                certified,
                proxies,
                synced,
                streams,
                errors: lock(&shared.bootstrap_errors),
                stream_errors: lock(&shared.stream_error_samples),
                log_tail: log_tail(log),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sync = Sync {
        seconds: started.elapsed().as_secs_f64(),
        certified: shared.certified.load(Ordering::Relaxed),
        updates: shared.updates.load(Ordering::Relaxed),
    };
    let (cp_synced, bench_synced) = (sample(pid), sample(me));
    cost.rss_synced_mib = cp_synced.rss_bytes as f64 / MIB;
    eprintln!(
        "  {} proxies certified, {streams} streams synced in {:.1} s; churning for {:?}",
        sync.certified, sync.seconds, options.duration
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Churn: R changes per second, each to a service outside its cooldown.
    let (issued_before, _) = shared.certificate_requests();
    let (cp_start, bench_start) = (sample(pid), sample(me));
    let churn_started = Instant::now();
    let mut churn = Churn::default();
    let period = Duration::from_secs_f64(1.0 / options.churn_per_second);
    let ticks = (options.duration.as_secs_f64() * options.churn_per_second).round() as u64;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cooldown = options.cooldown();
    for _ in 0..ticks {
        interval.tick().await;
        if let Some(e) = control.failure() {
            return Err(ControlPlaneError::Exited(e));
        }
        // The ledger is held while the change is written, so that no proxy can report
        // it before it is recorded.
        let mut ledger = shared.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match cluster.churn(api, rng, cooldown, now) {
            Some((service, kind)) => {
                ledger.change(service, cluster.state(service), now);
                churn.changes += 1;
                if ledger.subscribers_of(service) == 0 {
                    churn.unwatched += 1;
                }
                match kind {
                    ChangeKind::Unready => churn.unready += 1,
                    ChangeKind::Ready => churn.ready += 1,
                    ChangeKind::Replaced => churn.replaced += 1,
                }
            }
            None => churn.skipped += 1,
        }
    }
    // Drain: the last changes' time to arrive, bounded.
    let drain_until = Instant::now() + DRAIN_LIMIT;
    while Instant::now() < drain_until && !shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).complete()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cp_end, bench_end) = (sample(pid), sample(me));
    let seconds = churn_started.elapsed().as_secs_f64();
    let (issued_after, _) = shared.certificate_requests();
    let window = ChurnWindow {
        churn,
        cp_cpu: cp_end.cpu_seconds - cp_start.cpu_seconds,
        bench_cpu: bench_end.cpu_seconds - bench_start.cpu_seconds,
        seconds,
        renewals_during_churn: issued_after.saturating_sub(issued_before),
    };
    Ok((cp_synced, bench_synced, sync, window))
}

/// The last lines of the control plane's log, for an error (the work directory holding
/// it is removed).
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The targets, and that every change reached every subscriber.
fn targets(propagation: &Propagation, cost: &ControlPlaneCost) -> Vec<BarCheck> {
    let target_ms = TARGET_P99.as_secs_f64() * 1000.0;
    vec![
        BarCheck {
            rule: "every change reaches every subscriber".into(),
            passed: Some(
                propagation.missed == 0 && propagation.wrong_final_state == 0 && propagation.pairs > 0,
            ),
            detail: format!(
                "{} of {} (change, subscriber) pairs delivered, {} missed, {} subscribers with a wrong final state",
                propagation.delivered, propagation.pairs, propagation.missed, propagation.wrong_final_state
            ),
        },
        match propagation.p99_ms {
            Some(p99) => BarCheck {
                rule: format!("p99 propagation under {target_ms:.0} ms"),
                passed: Some(p99 < target_ms),
                detail: format!("{p99:.0} ms"),
            },
            None => BarCheck {
                rule: format!("p99 propagation under {target_ms:.0} ms"),
                passed: None,
                detail: "no change was delivered".into(),
            },
        },
        BarCheck {
            rule: format!("control-plane RSS under {TARGET_RSS_MIB:.0} MiB"),
            passed: Some(cost.rss_peak_mib < TARGET_RSS_MIB),
            detail: format!(
                "peak {:.1} MiB, idle after load {:.1} MiB",
                cost.rss_peak_mib, cost.rss_idle_after_mib
            ),
        },
    ]
}

impl Report {
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let s = &self.settings;
        let cp = &self.control_plane;
        let p = &self.propagation;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\ntarmac-control at {} services × {} endpoints, {} proxies ({} streams, {:.1} services watched per proxy), \
             {} changes/s for {:.0} s",
            s.services,
            s.endpoints_per_service,
            s.proxies,
            s.streams,
            s.fan_out_mean,
            s.churn_per_second,
            s.churn_seconds
        );
        let rows: Vec<(&str, String)> = vec![
            (
                "first full sync",
                format!("{:.1} s ({} proxies certified)", self.sync.seconds, self.sync.certified),
            ),
            ("CPU, sync", format!("{:.2} CPU-s", cp.cpu_sync_seconds)),
            (
                "CPU, churn",
                format!("{:.3} cores, {:.4} CPU-s per change", cp.cores_churn, cp.cpu_seconds_per_change),
            ),
            ("RSS listed / synced", format!("{:.1} / {:.1} MiB", cp.rss_listed_mib, cp.rss_synced_mib)),
            ("RSS idle after / peak", format!("{:.1} / {:.1} MiB", cp.rss_idle_after_mib, cp.rss_peak_mib)),
            (
                "changes",
                format!(
                    "{} ({} unready, {} ready, {} replaced; {} unwatched, {} ticks skipped)",
                    self.churn.changes,
                    self.churn.unready,
                    self.churn.ready,
                    self.churn.replaced,
                    self.churn.unwatched,
                    self.churn.skipped
                ),
            ),
            (
                "propagation p50 / p99 / max",
                format!("{} / {} / {}", ms(p.p50_ms), ms(p.p99_ms), ms(p.max_ms)),
            ),
            (
                "pairs delivered",
                format!(
                    "{} of {} ({} late > 1 s, {} missed, {} wrong final state, {} intermediate updates)",
                    p.delivered, p.pairs, p.late, p.missed, p.wrong_final_state, p.unmatched_updates
                ),
            ),
            (
                "certificates",
                format!(
                    "{} issued, {} renewals ({} during churn), {} failed",
                    self.certificates.issued,
                    self.certificates.renewals,
                    self.certificates.renewals_during_churn,
                    self.certificates.failed
                ),
            ),
            (
                "stream errors",
                match self.churn.stream_error_samples.first() {
                    Some(first) => format!("{} (first: {first})", self.churn.stream_errors),
                    None => self.churn.stream_errors.to_string(),
                },
            ),
            (
                "bench process",
                format!(
                    "{:.2} cores during churn (of {} workers), {:.1} CPU-s sync, {} watchers cut off",
                    self.bench_process.cores_churn,
                    self.bench_process.workers,
                    self.bench_process.cpu_sync_seconds,
                    self.bench_process.dropped_watchers
                ),
            ),
            (
                "load average",
                format!(
                    "{} before, {} after",
                    fmt_load(self.load_average_before),
                    fmt_load(self.load_average_after)
                ),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<30} {value}");
        }
        out.push('\n');
        out.push_str(&bar_text("Issue 21's targets", &self.targets));
        out
    }

    pub fn write_json(&self, path: &PathBuf) -> Result<(), ControlPlaneError> {
        let text = serde_json::to_string_pretty(self).map_err(ControlPlaneError::Encode)?;
        std::fs::write(path, text + "\n")
            .map_err(|source| ControlPlaneError::Write { path: path.clone(), source })
    }
}

fn fmt_load(load: Option<[f64; 3]>) -> String {
    load.map_or("-".into(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
}
