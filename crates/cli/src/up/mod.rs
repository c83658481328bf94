//! `tarmac up DIR`: a local mesh from a directory of YAML (docs/local-mode.md).
//!
//! It runs the control plane in-process, as `tarmac-control --config-dir DIR` does
//! (`tarmac_control::start`: the files store watching DIR, the registry of running
//! replicas, which `up` fills, discovery and identity over gRPC on 127.0.0.1, the API)
//! and, for every replica of every Workload (a Deployment is read as one), a
//! `tarmac-proxy` sidecar and then the app. Explicit mode: the app reaches
//! each Service port through a listener of its own sidecar, whose address it is told in
//! `<NAME>_URL` variables; the sidecar follows the Service's endpoints through discovery.
//! All output is multiplexed on stdout, prefixed with who wrote it. A replica whose app
//! (or sidecar) exits is reported, taken out of discovery and restarted with backoff.
//! Ctrl-C or SIGTERM stops the apps, then the sidecars, then the control plane.
//! With `--transparent` (root) each replica runs in a network namespace of its own instead
//! and calls Services by name (see `netns`).

mod netns;
mod plan;
pub(crate) mod ports;
pub(crate) mod process;
pub(crate) mod sandbox;
mod trust;

use plan::{ReplicaPlan, Upstream};
use ports::{LocateError, locate_proxy_binary};
use process::note;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tarmac_clikit::ports::{NoFreePort, free_port};
use tarmac_clikit::workdir::{WorkDir, WorkDirError};
use tarmac_control::identity::{BootstrapTokens, WorkloadIdentity};
use tarmac_control::registry::{Instance, Registry};
use tarmac_control::store::files::{OpenError, load_dir};
use tarmac_control::store::{Snapshot, Status};
use tarmac_control::workloads::{RestartError, RestartRequest, Restarted};
use tarmac_identity::DEFAULT_TRUST_DOMAIN;
use tarmac_identity::ca::{Ca, CaError};
use tarmac_transport::process::{Exit, Readiness, Supervised, describe, hand_over, secret_pipe};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Exit status for a configuration that cannot be run.
const EXIT_INVALID_CONFIG: u8 = 2;
/// First wait before restarting a replica; doubles with each exit, up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A replica that ran this long before exiting restarts after the minimum backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a sidecar may take to answer `/ready`.
const SIDECAR_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an app may take to listen on `PORT` before it is registered anyway.
const APP_LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when stopping apps and sidecars (sidecars drain
/// for at most 3 s, see `plan::sidecar_yaml`).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// In a rolling restart, how long a replica stays up after leaving discovery (and a new
/// one is in discovery before the next replica leaves): time for every caller's sidecar
/// to hear of it, so that none picks a replica that is going (a push takes milliseconds
/// on one machine; this is ample).
const DISCOVERY_GRACE: Duration = Duration::from_secs(1);
/// In a rolling restart, how long a new replica may take to be ready (sidecar ready, app
/// listening) before the restart stops.
const RESTART_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a local mesh from a directory of YAML: the control plane, and every Workload's
/// processes, each with a tarmac-proxy sidecar (explicit mode unless `--transparent`).
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The configuration directory: Services, Workloads, HTTPRoutes, ... (`*.yaml`, `*.yml`).
    pub dir: PathBuf,
    /// Port of the control plane's discovery API on 127.0.0.1 (0: a free port).
    #[arg(long, default_value_t = 0)]
    pub control_port: u16,
    /// Where the mesh's CA is kept (generated there on first use; see `tarmac identity`).
    /// Default: `$XDG_STATE_HOME/tarmac/identity` or `~/.local/state/tarmac/identity`.
    #[arg(long)]
    pub identity_dir: Option<PathBuf>,
    /// Lifetime of workload certificates; proxies renew at about 70 % of it.
    #[arg(long, default_value = "24h", value_parser = tarmac_clikit::duration::parse)]
    pub cert_lifetime: Duration,
    /// Mesh-wide handling of plaintext to workloads: `permissive` accepts it from clients
    /// outside the mesh, `strict` refuses it. A Workload's `spec.mtls` overrides it.
    #[arg(long, default_value = "permissive", value_parser = ["permissive", "strict"])]
    pub mtls: String,
    /// Run without mTLS between sidecars (plaintext HTTP/2, no CA).
    #[arg(long)]
    pub no_identity: bool,
    /// Mesh-wide default policy: what workloads allow where no AuthorizationPolicy ALLOWs:
    /// `allow-all`, `all-authenticated`, `deny` or `audit`. A Namespace's or a Workload's
    /// `tarmac.io/default-policy` annotation overrides it (docs/policy.md).
    #[arg(long, default_value = "allow-all", value_name = "POLICY")]
    pub default_policy: tarmac_model::authz::DefaultPolicy,
    /// Port of the control plane's HTTP API (`tarmac stat`, `check`, `tap`, ..., Prometheus
    /// service discovery) on 127.0.0.1. When the default is taken (another `tarmac up`),
    /// a free port is used and printed; 0: always a free port.
    #[arg(long, default_value_t = tarmac_control::api::DEFAULT_PORT)]
    pub api_port: u16,
    /// The trace UI that traced requests in the dashboard and `tarmac tap` link to: a URL
    /// with `{trace_id}` where the trace's id goes (`http://localhost:16686/trace/{trace_id}`).
    #[arg(long, value_name = "URL")]
    pub trace_url: Option<tarmac_control::telemetry::tap::TraceUrl>,
    /// Transparent mode (root): every replica in a network namespace of its own with
    /// interception rules, every Service a virtual IP and names in the namespaces' hosts
    /// files; apps call `http://SERVICE/` (docs/local-mode.md).
    #[arg(long)]
    pub transparent: bool,
    /// Start even though users other than the owner (or root) can change the configuration
    /// directory or its files. Its Workloads are commands `up` runs, as root with
    /// `--transparent`; without this flag such a directory is refused with `--transparent`
    /// and warned about otherwise.
    #[arg(long)]
    pub allow_writable_config: bool,
    /// An OTLP/gRPC collector (`HOST:PORT`, plaintext) every sidecar sends its spans to,
    /// unless a Telemetry object names another (docs/observability.md).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_collector)]
    pub otlp: Option<String>,
    /// Share of the requests arriving without trace context that start a trace at the
    /// caller's sidecar, 0 to 100, unless a Telemetry object says; without it only requests
    /// an app sent with a sampled `traceparent` (or B3) are traced.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub trace_sampling: Option<f64>,
}

/// `--otlp` or `--trace-sampling` as clap prints its refusal.
#[derive(Debug, thiserror::Error)]
enum TelemetryArgError {
    #[error("`{0}` is not HOST:PORT (an OTLP/gRPC collector, e.g. 127.0.0.1:4317)")]
    Collector(String),
    #[error("`{0}` is not a percentage from 0 to 100")]
    Percent(String),
}

fn parse_collector(text: &str) -> Result<String, TelemetryArgError> {
    if tarmac_model::telemetry::valid_collector(text) {
        Ok(text.to_string())
    } else {
        Err(TelemetryArgError::Collector(text.to_string()))
    }
}

fn parse_percent(text: &str) -> Result<f64, TelemetryArgError> {
    match text.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(TelemetryArgError::Percent(text.to_string())),
    }
}

/// Why `tarmac up` could not run the mesh, naming the file, address or directory at fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpError {
    /// Exit 2: the configuration cannot be run; every problem is listed.
    #[error("the configuration is invalid; nothing was started:{}", lines(.0))]
    Config(Vec<String>),
    #[error(transparent)]
    IdentityDir(#[from] crate::identity::IdentityError),
    #[error("the mesh's CA: {0}")]
    Ca(#[source] CaError),
    #[error(transparent)]
    ProxyBinary(#[from] LocateError),
    /// With `--transparent`, refused; otherwise only warned about.
    #[error(
        "users other than the owner can change the configuration in {}, whose Workloads are commands `tarmac up` runs:{}",
        dir.display(),
        lines(problems)
    )]
    LooselyHeld { dir: PathBuf, problems: Vec<String> },
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("cannot handle {signal}: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for the control plane: {source}")]
    ListenControl {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `at` is `127.0.0.1:PORT`, or `127.0.0.1` for any port.
    #[error("cannot listen on {at} for the API: {source}")]
    ListenApi {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(#[source] tarmac_control::StartError),
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error(transparent)]
    NoFreePort(#[from] NoFreePort),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give {} to uid {uid}: {source}", path.display())]
    Chown {
        path: PathBuf,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {} to the sidecars: {source}", path.display())]
    OpenToSidecars {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find this executable (for `tarmac sandbox`): {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error(
        "{what} ({}) is inside the identity directory {}, which apps and sidecars must not see: choose another --identity-dir",
        path.display(),
        identity_dir.display()
    )]
    InsideIdentityDir { what: &'static str, path: PathBuf, identity_dir: PathBuf },
}

impl UpError {
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) => ExitCode::from(EXIT_INVALID_CONFIG),
            _ => ExitCode::FAILURE,
        }
    }

    /// What to do about it, on the lines after the message.
    pub(crate) fn advice(&self) -> Option<String> {
        match self {
            Self::ProxyBinary(e) => e.advice(),
            Self::LooselyHeld { .. } => Some(
                "refusing to run them as root: fix the permissions (chmod go-w, chown), or pass --allow-writable-config"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

/// Each item on a line of its own, indented.
fn lines(items: &[String]) -> String {
    items.iter().map(|item| format!("\n  {item}")).collect()
}

/// Something run alongside the mesh once every replica has been started (`tarmac demo`'s
/// traffic and live table): the mesh stops when [`Driver::run`] returns, or on Ctrl-C;
/// either way [`Driver::finish`] runs next, while the control plane's API still answers.
pub(crate) trait Driver {
    /// Runs until done; `api` is the control plane's HTTP API.
    fn run(&mut self, api: SocketAddr) -> impl Future<Output = ()>;
    /// The last word before everything stops, e.g. a summary read from the API.
    fn finish(&mut self, api: SocketAddr) -> impl Future<Output = ()>;
}

/// `tarmac up` alone: runs until Ctrl-C.
struct UntilInterrupted;

impl Driver for UntilInterrupted {
    async fn run(&mut self, _api: SocketAddr) {
        std::future::pending::<()>().await;
    }
    async fn finish(&mut self, _api: SocketAddr) {}
}

pub async fn run(args: UpArgs) -> ExitCode {
    match run_with(args, UntilInterrupted).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarmac up: {e}");
            if let Some(advice) = e.advice() {
                eprintln!("{advice}");
            }
            e.exit_code()
        }
    }
}

/// Runs a mesh as `tarmac up` does, with `driver` alongside.
pub(crate) async fn run_with(args: UpArgs, driver: impl Driver) -> Result<(), UpError> {
    up(args, driver).await
}

/// Everything about one replica that stays the same across its restarts.
struct Replica {
    plan: ReplicaPlan,
    app: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    /// Each upstream and the URL the app is told for it.
    upstreams: Vec<(Upstream, String)>,
    sidecar_config: PathBuf,
    identity: Option<Arc<SidecarIdentity>>,
    /// Its network namespace in transparent mode (removed when the replica is dropped).
    netns: Option<netns::Namespace>,
}

/// What sidecars need for mTLS: the anchors to trust, and a bootstrap token per start.
struct SidecarIdentity {
    anchors: PathBuf,
    tokens: Arc<BootstrapTokens>,
    default_mtls: String,
}

/// The mesh's CA, and the bootstrap tokens `up` hands to the sidecars it starts.
struct ControlIdentity {
    ca: Arc<tarmac_identity::ca::SharedCa>,
    tokens: Arc<BootstrapTokens>,
    anchors_pem: String,
}

/// Where the CA is kept: `--identity-dir`, or the user's default.
fn identity_dir(args: &UpArgs) -> Result<PathBuf, UpError> {
    match &args.identity_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(crate::identity::default_dir()?),
    }
}

fn load_identity(args: &UpArgs) -> Result<ControlIdentity, UpError> {
    let dir = identity_dir(args)?;
    let (ca, created) = Ca::load_or_generate(&dir, DEFAULT_TRUST_DOMAIN).map_err(UpError::Ca)?;
    if created {
        note(&format!("identity: generated a new trust anchor and issuer in {}", dir.display()));
    } else {
        note(&format!(
            "identity: CA from {} (issuer valid until {})",
            dir.display(),
            crate::identity::format_time(ca.issuer_info().not_after)
        ));
    }
    let anchors_pem = ca.anchors_pem().to_string();
    Ok(ControlIdentity { ca: Arc::new(ca.into()), tokens: Arc::new(BootstrapTokens::default()), anchors_pem })
}

impl Replica {
    /// Whom its bootstrap tokens are issued to: `namespace/workload-N`.
    fn holder(&self) -> String {
        format!("{}/{}-{}", self.plan.namespace, self.plan.workload, self.plan.replica)
    }

    fn instance(&self) -> Instance {
        Instance {
            namespace: self.plan.namespace.clone(),
            workload: self.plan.workload.clone(),
            replica: self.plan.replica,
            labels: self.plan.labels.clone(),
            service_account: self.plan.service_account.clone(),
            addr: self.inbound,
            meshed: true,
            admin: Some(self.admin),
        }
    }

    fn app_command(&self) -> Command {
        let plan = &self.plan;
        let mut program = PathBuf::from(&plan.argv[0]);
        // `./app.py` means the one in the working directory, whatever ours is.
        if program.is_relative() && program.components().count() > 1 {
            program = plan.working_dir.join(program);
        }
        let mut command = match &self.netns {
            Some(netns) => netns.command(&program, netns::Role::App),
            None => Command::new(program),
        };
        // Apps find this `tarmac` first on their PATH (`tarmac sample-app`), unless
        // `spec.env` sets PATH itself.
        if let Some(path) = path_with_our_directory() {
            command.env("PATH", path);
        }
        command.args(&plan.argv[1..]).current_dir(&plan.working_dir).envs(plan::app_env(
            plan,
            self.app,
            self.admin,
            &self.upstreams,
        ));
        command
    }
}

async fn up(args: UpArgs, mut driver: impl Driver) -> Result<(), UpError> {
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(|e| UpError::Config(vec![format!("{}: {e}", args.dir.display())]))?;
    // Checked before anything is bound or started; the control plane reads it again
    // (and from then on follows it).
    let objects =
        load_dir(&dir).map_err(|errors| UpError::Config(errors.iter().map(ToString::to_string).collect()))?;
    let found = problems(&plan::replicas(&Snapshot { generation: 0, objects }, &dir));
    if !found.is_empty() {
        return Err(UpError::Config(found));
    }
    let proxy_binary = locate_proxy_binary()?;
    // The Workloads in DIR are commands this process will run: whoever can change them
    // runs commands as us (as root, with --transparent).
    let loose = trust::loosely_held(&dir);
    if !loose.is_empty() {
        let loose = UpError::LooselyHeld { dir: dir.clone(), problems: loose };
        if args.transparent && !args.allow_writable_config {
            return Err(loose);
        }
        note(&loose.to_string());
    }
    // Held to the end: dropping it removes every namespace, link and hosts file.
    let transparent_host = match args.transparent {
        true => Some(netns::Host::prepare()?),
        false => None,
    };
    // Transparent mode: the namespaces reach the control plane on the bridge.
    let control_ip = if args.transparent { netns::HOST_IP } else { Ipv4Addr::LOCALHOST };
    // Handled from now on: a Ctrl-C while starting stops what has started, in order.
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|source| UpError::Signal { signal: "SIGINT", source })?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|source| UpError::Signal { signal: "SIGTERM", source })?;

    // The control plane, as `tarmac-control --config-dir DIR` runs it.
    let identity = match args.no_identity {
        true => None,
        false => Some(load_identity(&args)?),
    };
    let grpc_addr = SocketAddr::from((control_ip, args.control_port));
    let grpc = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|source| UpError::ListenControl { addr: grpc_addr, source })?;
    // On loopback only, also in transparent mode: the apps in the namespaces have no use
    // for it, and it would show them every request's tap.
    let api = vec![bind_api(args.api_port).await?];
    // `tarmac restart`, through the API: served below, between configuration changes.
    let (restarts, mut restart_requests) = tokio::sync::mpsc::channel::<RestartRequest>(8);
    let mut config = tarmac_control::Config::files(&dir)
        .with_restarts(restarts)
        .with_default_policy(args.default_policy)
        .with_telemetry_defaults(tarmac_model::telemetry::MeshDefaults {
            collector: args.otlp.clone(),
            sampling_percentage: args.trace_sampling,
        })
        .with_trace_url(args.trace_url.clone());
    if let Some(identity) = &identity {
        config = config.with_identity(tarmac_control::IdentityConfig {
            ca: identity.ca.clone(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cert_lifetime: args.cert_lifetime,
            authenticator: identity.tokens.clone(),
            // A Workload removed from the configuration loses its identity: neither a
            // token nor a certificate taken from its replicas gets a new certificate.
            only_configured_workloads: true,
        });
    }
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control = tarmac_control::start(config, tarmac_control::Listeners { grpc, api }, async move {
        let _ = control_stopped.await;
    })
    .await
    .map_err(|e| match e {
        tarmac_control::StartError::Store(OpenError::Invalid(errors)) => {
            UpError::Config(errors.iter().map(ToString::to_string).collect())
        }
        tarmac_control::StartError::Store(e @ OpenError::NotADirectory(_)) => {
            UpError::Config(vec![e.to_string()])
        }
        e => UpError::Control(e),
    })?;
    let control_addr = control.addrs.grpc;
    let api_addr = control.addrs.api[0];
    if let Some(addr) = control.addrs.api.get(1) {
        note(&format!("control plane: API for the namespaces on http://{addr}/"));
    }
    let registry = control.registry.clone();
    let snapshot: Arc<Snapshot> = control.snapshots().borrow().clone();
    let plans = plan::replicas(&snapshot, &dir);
    let found = problems(&plans);
    if !found.is_empty() {
        return Err(UpError::Config(found));
    }
    for plan in &plans {
        process::widen_prefix(plan.name().len() + " proxy".len());
    }
    note(&format!("control plane: discovery on {control_addr}, configuration from {}", dir.display()));
    let flag = if api_addr.port() == tarmac_control::api::DEFAULT_PORT {
        String::new()
    } else {
        format!(" (give the CLI `--control {api_addr}` or set TARMAC_CONTROL={api_addr})")
    };
    note(&format!("control plane: API and dashboard on http://{api_addr}/{flag}"));
    for resource in snapshot.iter_kind("Workload") {
        if let tarmac_model::Resource::Workload(w) = resource
            && let Some(warning) = tarmac_model::deployment::cluster_only_warning(w)
        {
            note(&format!("warning: {warning}"));
        }
    }

    let work_dir = WorkDir::create("up")?;
    let sidecar_identity = match &identity {
        Some(identity) => {
            let anchors = work_dir.path().join("trust-anchors.pem");
            write(&anchors, &identity.anchors_pem)?;
            Some(SidecarIdentity {
                anchors,
                tokens: identity.tokens.clone(),
                default_mtls: args.mtls.clone(),
            })
        }
        None => None,
    };
    if args.transparent {
        // Sidecars run as uids of their own and must reach their configuration (0600,
        // theirs) and the anchors inside: search, but not list.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work_dir.path(), std::fs::Permissions::from_mode(0o711))
            .map_err(|source| UpError::OpenToSidecars { path: work_dir.path().to_path_buf(), source })?;
    }
    let tarmac = std::env::current_exe().map_err(UpError::CurrentExe)?;
    let identity_dir = identity_dir(&args)?;
    if args.transparent {
        // Hidden from every process in the namespaces: it must not hold what they need.
        let identity_dir = std::fs::canonicalize(&identity_dir).unwrap_or_else(|_| identity_dir.clone());
        let needed = [("the configuration directory", dir.as_path()), ("tarmac", tarmac.as_path())];
        for (what, path) in needed
            .into_iter()
            .chain(plans.iter().map(|p| ("a Workload's workingDir", p.working_dir.as_path())))
        {
            if path.starts_with(&identity_dir) {
                return Err(UpError::InsideIdentityDir {
                    what,
                    path: path.to_path_buf(),
                    identity_dir: identity_dir.clone(),
                });
            }
        }
    }
    let confinement = netns::Confinement {
        tarmac,
        hidden_from_app: vec![identity_dir.clone(), work_dir.path().to_path_buf()],
        hidden_from_proxy: vec![identity_dir],
    };
    let mut mesh = Mesh {
        confinement: Arc::new(confinement),
        identity: sidecar_identity.map(Arc::new),
        proxy_binary,
        control: control_addr,
        registry,
        work_dir: work_dir.path().to_path_buf(),
        running: BTreeMap::new(),
        services: plan::services(&snapshot),
        snapshot: snapshot.clone(),
        transparent: args
            .transparent
            .then(|| Transparent { vips: plan::virtual_ips(&snapshot), next_index: 0 }),
    };
    if let Some(transparent) = &mesh.transparent {
        for ((namespace, name), vip) in &transparent.vips {
            note(&format!("Service {namespace}/{name}: virtual IP {vip}"));
        }
    }
    if plans.is_empty() {
        note("no Workloads in the configuration: only the control plane runs");
    }
    mesh.start(plans, &snapshot)?;
    let watcher = tokio::spawn(report_refusals(control.status()));

    let mut snapshots = control.snapshots();
    snapshots.borrow_and_update();
    {
        // Dropped before `finish`, which needs the driver again.
        let driving = driver.run(api_addr);
        tokio::pin!(driving);
        loop {
            tokio::select! {
                () = &mut driving => {
                    note("done: stopping the apps, then the sidecars, then the control plane");
                    break;
                }
                _ = interrupt.recv() => {
                    note("interrupted: stopping the apps, then the sidecars, then the control plane");
                    break;
                }
                _ = terminate.recv() => {
                    note("terminated: stopping the apps, then the sidecars, then the control plane");
                    break;
                }
                Ok(()) = snapshots.changed() => {
                    let snapshot = snapshots.borrow_and_update().clone();
                    mesh.apply(snapshot, &dir).await;
                }
                Some(request) = restart_requests.recv() => {
                    // A restart runs to its end before the next change is applied; Ctrl-C
                    // or SIGTERM cuts it short.
                    let (result, stopping) = tokio::select! {
                        result = mesh.restart(&request.namespace, &request.name) => (result, None),
                        _ = interrupt.recv() => (Err(RestartError::ShuttingDown), Some("interrupted")),
                        _ = terminate.recv() => (Err(RestartError::ShuttingDown), Some("terminated")),
                    };
                    let _ = request.reply.send(result);
                    if let Some(why) = stopping {
                        note(&format!("{why}: stopping the apps, then the sidecars, then the control plane"));
                        break;
                    }
                }
            }
        }
    }
    driver.finish(api_addr).await;
    watcher.abort();
    let everything = std::mem::take(&mut mesh.running).into_values().collect();
    stop_replicas(everything).await;
    let _ = stop_control.send(());
    for problem in control.stopped().await {
        note(&problem);
    }
    drop(work_dir);
    if let Some(host) = transparent_host {
        drop(host);
        note("removed the network namespaces, veth pairs and hosts files");
    }
    note("stopped");
    Ok(())
}

/// Writes a file only `uid` (and root) can read.
fn write_private(path: &Path, content: &str, uid: u32) -> Result<(), UpError> {
    let file = tarmac_clikit::workdir::create_private(path, content)?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(uid)).map_err(|source| UpError::Chown {
        path: path.to_path_buf(),
        uid,
        source,
    })
}

fn write(path: &Path, content: &str) -> Result<(), UpError> {
    std::fs::write(path, content).map_err(|source| UpError::Write { path: path.to_path_buf(), source })
}

/// `PATH` with the directory of this executable first.
fn path_with_our_directory() -> Option<std::ffi::OsString> {
    let here = std::env::current_exe().ok()?;
    let ours = here.parent()?.to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(ours).chain(std::env::split_paths(&rest))).ok()
}

/// Binds the API listener; a taken default port falls back to a free one.
async fn bind_api(port: u16) -> Result<tokio::net::TcpListener, UpError> {
    match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
        Ok(listener) => Ok(listener),
        Err(e) if port == tarmac_control::api::DEFAULT_PORT && e.kind() == std::io::ErrorKind::AddrInUse => {
            note(&format!("port {port} is taken (another `tarmac up`?): the API uses a free port instead"));
            tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(|source| UpError::ListenApi { at: "127.0.0.1".to_string(), source })
        }
        Err(source) => Err(UpError::ListenApi { at: format!("127.0.0.1:{port}"), source }),
    }
}

/// What makes replicas impossible to start, beyond what the model validates.
fn problems(plans: &[ReplicaPlan]) -> Vec<String> {
    let mut problems = Vec::new();
    for p in plans {
        if p.argv.is_empty() {
            problems.push(format!("Workload {}/{}: spec.command is empty", p.namespace, p.workload));
        }
        if !p.working_dir.is_dir() {
            problems.push(format!(
                "Workload {}/{}: spec.workingDir {} is not a directory",
                p.namespace,
                p.workload,
                p.working_dir.display()
            ));
        }
    }
    problems.dedup();
    problems
}

/// A replica being run by its task.
struct Running {
    replica: Arc<Replica>,
    stop: watch::Sender<bool>,
    /// Set before `stop`: the replica is being restarted, so it leaves discovery and drains
    /// (sidecar first, app last) instead of stopping with the mesh (apps first).
    restarting: Arc<AtomicBool>,
    /// True once the replica has been in discovery (its sidecar ready, its app listening).
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Option<(String, Supervised)>>,
}

/// The replicas `tarmac up` runs, kept in line with the Workloads of the configuration.
struct Mesh {
    /// How transparent mode starts processes in the namespaces.
    confinement: Arc<netns::Confinement>,
    identity: Option<Arc<SidecarIdentity>>,
    proxy_binary: PathBuf,
    control: SocketAddr,
    registry: Registry,
    work_dir: PathBuf,
    running: BTreeMap<String, Running>,
    /// The Services (and ports) of the last configuration, to notice changes.
    services: BTreeMap<String, Vec<u16>>,
    /// The configuration last applied: what a restarted replica starts with.
    snapshot: Arc<Snapshot>,
    transparent: Option<Transparent>,
}

/// Transparent mode's allocations.
struct Transparent {
    /// Fixed at start, like the sidecars' listeners in explicit mode.
    vips: BTreeMap<(String, String), Ipv4Addr>,
    /// Of the next namespace (its address and veth names); never reused while `up` runs.
    next_index: u32,
}

impl Mesh {
    /// Chooses ports for `plans`, writes their sidecars' configurations and starts them.
    fn start(&mut self, plans: Vec<ReplicaPlan>, snapshot: &Snapshot) -> Result<(), UpError> {
        let mut replicas = Vec::new();
        for plan in plans {
            process::widen_prefix(plan.name().len() + " proxy".len());
            if let Some(mut transparent) = self.transparent.take() {
                let replica = self.transparent_replica(plan, snapshot, &mut transparent);
                self.transparent = Some(transparent);
                replicas.push(Arc::new(replica?));
                continue;
            }
            let app = free_port()?;
            let inbound = free_port()?;
            let admin = free_port()?;
            let mut upstreams = Vec::new();
            for upstream in plan::upstreams(snapshot, &plan.namespace) {
                upstreams.push((upstream, free_port()?));
            }
            let file_name = plan.name().replace('/', "_");
            let sidecar_config = self.work_dir.join(format!("{file_name}-proxy.yaml"));
            let identity = self.identity.as_ref().map(|i| {
                plan::SidecarTls::new(i.anchors.clone(), plan.mtls.as_deref().unwrap_or(&i.default_mtls))
            });
            let yaml = plan::sidecar_yaml(
                &plan,
                self.control,
                admin,
                inbound,
                app,
                &upstreams,
                identity.as_ref(),
                false,
            );
            write(&sidecar_config, &yaml)?;
            let urls: Vec<String> = upstreams
                .iter()
                .flat_map(|(u, listen)| u.env.iter().map(move |var| format!("{var}=http://{listen}")))
                .collect();
            note(&format!(
                "{}: PORT={}, sidecar inbound {inbound}, admin {admin}{}{}",
                plan.name(),
                app.port(),
                if urls.is_empty() { "" } else { ", " },
                urls.join(", ")
            ));
            replicas.push(Arc::new(Replica {
                plan,
                app,
                inbound,
                admin,
                upstreams: upstreams.into_iter().map(|(u, listen)| (u, format!("http://{listen}"))).collect(),
                sidecar_config,
                identity: self.identity.clone(),
                netns: None,
            }));
        }
        for replica in replicas {
            let (stop, stopped) = watch::channel(false);
            let (ready_tx, ready) = watch::channel(false);
            let restarting = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(run_replica(
                replica.clone(),
                self.proxy_binary.clone(),
                self.registry.clone(),
                stopped,
                ReplicaSignals { restarting: restarting.clone(), ready: ready_tx },
            ));
            self.running.insert(replica.plan.name(), Running { replica, stop, restarting, ready, task });
        }
        Ok(())
    }

    /// A replica in a network namespace of its own: the app on `spec.port`, the sidecar's
    /// inbound listener taking every connection to it, its outbound side every Service's
    /// virtual IP.
    fn transparent_replica(
        &self,
        plan: ReplicaPlan,
        snapshot: &Snapshot,
        transparent: &mut Transparent,
    ) -> Result<Replica, UpError> {
        let index = transparent.next_index;
        transparent.next_index += 1;
        let hosts = plan::hosts_file(&transparent.vips, &plan.namespace);
        let name = netns::namespace_name(&plan.namespace, &plan.workload, plan.replica);
        let namespace = netns::Namespace::create(
            name,
            index,
            plan.port,
            &hosts,
            &self.proxy_binary,
            self.confinement.clone(),
        )?;
        let ip = namespace.addr;
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, plan.port));
        let admin = SocketAddr::from((ip, netns::ADMIN_PORT));
        let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, netns::INBOUND_PORT));
        let mut upstreams = Vec::new();
        for upstream in plan::upstreams(snapshot, &plan.namespace) {
            // A Service added after the start has no virtual IP until `up` restarts.
            if let Some(vip) = transparent.vips.get(&(upstream.namespace.clone(), upstream.service.clone())) {
                let port = upstream.port;
                upstreams.push((upstream, SocketAddr::from((*vip, port))));
            }
        }
        let file_name = plan.name().replace('/', "_");
        let sidecar_config = self.work_dir.join(format!("{file_name}-proxy.yaml"));
        let identity = self.identity.as_ref().map(|i| {
            plan::SidecarTls::new(i.anchors.clone(), plan.mtls.as_deref().unwrap_or(&i.default_mtls))
        });
        let yaml =
            plan::sidecar_yaml(&plan, self.control, admin, listen, app, &upstreams, identity.as_ref(), true);
        write_private(&sidecar_config, &yaml, namespace.proxy_uid)?;
        note(&format!(
            "{}: network namespace {} at {ip}, PORT={}, app as uid {}, sidecar as uid {}, admin {admin}",
            plan.name(),
            namespace.name,
            plan.port,
            namespace.app_uid,
            namespace.proxy_uid,
        ));
        let urls = upstreams.into_iter().map(|(u, _)| {
            let url = plan::url_by_name(&u, &plan.namespace);
            (u, url)
        });
        Ok(Replica {
            app,
            // Peers connect to the app's own address; the rules hand it to the sidecar.
            inbound: SocketAddr::from((ip, plan.port)),
            admin,
            upstreams: urls.collect(),
            sidecar_config,
            identity: self.identity.clone(),
            netns: Some(namespace),
            plan,
        })
    }

    /// Follows an accepted configuration: stops the replicas of removed or changed
    /// Workloads and starts those of added or changed ones.
    /// Restarts the replicas of Workload `namespace/name` one at a time: each leaves
    /// discovery, drains (its sidecar finishes what it took, then its app stops), and starts
    /// again with the configuration in force; the next goes once the new one is ready and
    /// in discovery. A replica that does not come back stops the restart.
    async fn restart(&mut self, namespace: &str, name: &str) -> Result<Restarted, RestartError> {
        let mut names: Vec<(u32, String)> = self
            .running
            .iter()
            .filter(|(_, r)| r.replica.plan.namespace == namespace && r.replica.plan.workload == name)
            .map(|(key, r)| (r.replica.plan.replica, key.clone()))
            .collect();
        if names.is_empty() {
            return Err(RestartError::NotFound { namespace: namespace.to_string(), name: name.to_string() });
        }
        names.sort();
        let count = names.len();
        note(&format!("restarting {namespace}/{name}: {count} replicas, one at a time"));
        let mut restarted = Vec::new();
        for (i, (_, key)) in names.into_iter().enumerate() {
            let Some(old) = self.running.remove(&key) else { continue };
            note(&format!(
                "restarting {key} ({} of {count}): out of discovery, then its sidecar drains",
                i + 1
            ));
            let plan = old.replica.plan.clone();
            old.restarting.store(true, Ordering::Release);
            let _ = old.stop.send(true);
            let Running { replica, task, .. } = old;
            match task.await {
                Ok(Some((_, sidecar))) => {
                    sidecar.stop(STOP_GRACE).await;
                }
                Ok(None) => {}
                Err(e) => note(&format!("the supervisor of {key} failed: {e}")),
            }
            // Before the new one gets its token (the holder's name is the same).
            if let Some(identity) = &replica.identity {
                identity.tokens.revoke(&replica.holder());
            }
            // The last reference: a transparent replica's namespace goes with it.
            drop(replica);
            let snapshot = self.snapshot.clone();
            self.start(vec![plan], &snapshot)
                .map_err(|e| RestartError::Stopped(format!("cannot start {key} again: {e}")))?;
            let mut ready = self.running.get(&key).map(|r| r.ready.clone()).expect("just started");
            match tokio::time::timeout(RESTART_READY_TIMEOUT, ready.wait_for(|ready| *ready)).await {
                Ok(Ok(_)) => {}
                _ => {
                    let message = format!(
                        "{key} was not ready again within {RESTART_READY_TIMEOUT:?}; the restart stopped there, the replicas after it run as they were"
                    );
                    note(&message);
                    return Err(RestartError::Stopped(message));
                }
            }
            // In discovery: callers' sidecars hear of it before the next one leaves.
            tokio::time::sleep(DISCOVERY_GRACE).await;
            note(&format!("{key} restarted and ready ({} of {count})", i + 1));
            restarted.push(key);
        }
        note(&format!("restarted {namespace}/{name}"));
        Ok(Restarted { namespace: namespace.to_string(), workload: name.to_string(), replicas: restarted })
    }

    async fn apply(&mut self, snapshot: Arc<Snapshot>, dir: &std::path::Path) {
        self.snapshot = snapshot.clone();
        let snapshot = &*snapshot;
        note(&format!(
            "configuration generation {} accepted; the sidecars follow it through discovery",
            snapshot.generation
        ));
        let mut wanted: BTreeMap<String, ReplicaPlan> =
            plan::replicas(snapshot, dir).into_iter().map(|p| (p.name(), p)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| wanted.get(*name) != Some(&running.replica.plan))
            .map(|(name, _)| name.clone())
            .collect();
        wanted.retain(|name, plan| self.running.get(name).is_none_or(|r| r.replica.plan != *plan));
        if !stale.is_empty() {
            note(&format!("stopping {} (removed or changed in the configuration)", stale.join(", ")));
            let entries = stale.iter().filter_map(|name| self.running.remove(name)).collect();
            stop_replicas(entries).await;
        }
        let services = plan::services(snapshot);
        if services != self.services && !self.running.is_empty() {
            note(
                "Services were added or removed or their ports changed: replicas already running keep the \
                 *_URL variables and sidecar listeners they started with; restart `tarmac up` to update them",
            );
        }
        self.services = services;
        let plans: Vec<ReplicaPlan> = wanted.into_values().collect();
        let problems = problems(&plans);
        if !problems.is_empty() {
            for p in problems {
                note(&format!("cannot start: {p}"));
            }
            return;
        }
        if !plans.is_empty() {
            let names: Vec<String> = plans.iter().map(ReplicaPlan::name).collect();
            note(&format!("starting {}", names.join(", ")));
            if let Err(e) = self.start(plans, snapshot) {
                note(&format!("cannot start them: {e}"));
            }
        }
    }
}

/// Stops replicas: all their apps first, then all their sidecars.
async fn stop_replicas(entries: Vec<Running>) {
    for entry in &entries {
        let _ = entry.stop.send(true);
    }
    let mut sidecars = Vec::new();
    for entry in entries {
        match entry.task.await {
            Ok(Some((name, sidecar))) => sidecars.push((name, sidecar, entry.replica)),
            Ok(None) => {}
            Err(e) => note(&format!("the supervisor of {} failed: {e}", entry.replica.plan.name())),
        }
    }
    let mut stopping = JoinSet::new();
    for (name, sidecar, replica) in sidecars {
        // A token its sidecar did not use yet must not outlive the replica.
        if let Some(identity) = &replica.identity {
            identity.tokens.revoke(&replica.holder());
        }
        stopping.spawn(async move {
            // Dropped (with its namespace) only once its sidecar has stopped.
            let _replica = replica;
            let pid = sidecar.pid();
            match sidecar.stop(STOP_GRACE).await {
                Some(exit) if is_clean(&exit) => note(&format!("{name} proxy (pid {pid}) stopped")),
                Some(exit) => note(&format!("{name} proxy (pid {pid}) ended badly: {}", describe(&exit))),
                None => note(&format!(
                    "{name} proxy (pid {pid}) did not stop within {STOP_GRACE:?} and was killed"
                )),
            }
        });
    }
    while stopping.join_next().await.is_some() {}
}

fn is_clean(exit: &Exit) -> bool {
    matches!(exit, Ok(status) if status.success() || tarmac_transport::process::was_terminated(status))
}

/// Sleeps for `duration` unless shutdown comes first; true if it did.
async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.wait_for(|stop| *stop) => return true,
    }
    *shutdown.borrow()
}

/// Why a replica's run ended.
enum Ended {
    App(Exit),
    Sidecar(Exit),
    Shutdown,
}

/// How a replica's task tells and is told more than "stop".
struct ReplicaSignals {
    /// Read on stop: drain for a restart rather than stop with the mesh.
    restarting: Arc<AtomicBool>,
    /// Set once the replica is in discovery.
    ready: watch::Sender<bool>,
}

/// Runs one replica until shutdown: its sidecar, then its app, restarting what exits with
/// backoff. On shutdown it stops the app and hands back the sidecar (with the replica's
/// name), which is stopped once every app is. Stopped for a restart, it drains instead:
/// out of discovery, a moment for callers to hear of it, the sidecar (which finishes what
/// it took and refuses the rest unprocessed, so that callers' sidecars send it elsewhere),
/// and only then the app; nothing is handed back.
async fn run_replica(
    replica: Arc<Replica>,
    proxy_binary: PathBuf,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
    signals: ReplicaSignals,
) -> Option<(String, Supervised)> {
    let name = replica.plan.name();
    let plan = &replica.plan;
    let mut backoff = BACKOFF_MIN;
    let mut sidecar: Option<Supervised> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // The sidecar first: the app may call its upstreams as soon as it starts.
        let proxy = match sidecar.take() {
            Some(proxy) if proxy.exit().is_none() => proxy,
            _ => {
                let mut command = match &replica.netns {
                    Some(netns) => netns.command(&proxy_binary, netns::Role::Proxy),
                    None => Command::new(&proxy_binary),
                };
                command.arg("--config").arg(&replica.sidecar_config);
                // A fresh one-time token for every start (a restarted sidecar bootstraps
                // again), through a pipe only this sidecar inherits.
                let token = match &replica.identity {
                    Some(identity) => {
                        let token = identity.tokens.issue(
                            &replica.holder(),
                            WorkloadIdentity {
                                namespace: plan.namespace.clone(),
                                service_account: plan.service_account.clone(),
                            },
                        );
                        match secret_pipe(token.as_bytes()) {
                            Ok(pipe) => Some(pipe),
                            Err(e) => {
                                note(&format!("{name} proxy: {e}; retrying in {backoff:?}"));
                                if sleep_or_shutdown(backoff, &mut shutdown).await {
                                    break;
                                }
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                                continue;
                            }
                        }
                    }
                    None => None,
                };
                if let Some(pipe) = &token {
                    hand_over(command.as_std_mut(), pipe, plan::TOKEN_FD);
                }
                let spawned = process::spawn(command, format!("{name} proxy"));
                // Our end: the sidecar holds the only other one.
                drop(token);
                match spawned {
                    Ok(proxy) => {
                        note(&format!("{name} proxy started: pid {}", proxy.pid()));
                        match wait_ready(&proxy, replica.admin, &mut shutdown).await {
                            Ok(true) => proxy,
                            Ok(false) => {
                                sidecar = Some(proxy);
                                break;
                            }
                            Err(e) => {
                                note(&format!("{name} proxy: {e}; retrying in {backoff:?}"));
                                proxy.stop(STOP_GRACE).await;
                                if sleep_or_shutdown(backoff, &mut shutdown).await {
                                    break;
                                }
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        note(&format!("{name} proxy: {e}; retrying in {backoff:?}"));
                        if sleep_or_shutdown(backoff, &mut shutdown).await {
                            break;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
        };

        let app = match process::spawn(replica.app_command(), name.clone()) {
            Ok(app) => app,
            Err(e) => {
                note(&format!(
                    "{name}: cannot start `{}` in {}: {e}; retrying in {backoff:?}",
                    plan.argv.join(" "),
                    plan.working_dir.display()
                ));
                sidecar = Some(proxy);
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let started = Instant::now();
        note(&format!("{name} started: pid {}, PORT={}", app.pid(), replica.app.port()));
        let ended = match wait_listening(&app, replica.app, replica.netns.is_some(), &mut shutdown).await {
            Listening::Yes | Listening::NotInTime => {
                registry.upsert(replica.instance());
                signals.ready.send_replace(true);
                note(&format!("{name} ready: http://{} (through its sidecar)", replica.inbound));
                tokio::select! {
                    exit = app.exited() => Ended::App(exit),
                    exit = proxy.exited() => Ended::Sidecar(exit),
                    _ = shutdown.wait_for(|stop| *stop) => Ended::Shutdown,
                }
            }
            Listening::Exited(exit) => Ended::App(exit),
            Listening::Shutdown => Ended::Shutdown,
        };
        registry.remove(&plan.namespace, &plan.workload, plan.replica);
        match ended {
            Ended::Shutdown if signals.restarting.load(Ordering::Acquire) => {
                tokio::time::sleep(DISCOVERY_GRACE).await;
                let pid = proxy.pid();
                match proxy.stop(STOP_GRACE).await {
                    Some(exit) if is_clean(&exit) => {
                        note(&format!("{name} proxy (pid {pid}) drained and stopped"))
                    }
                    Some(exit) => note(&format!("{name} proxy (pid {pid}) ended badly: {}", describe(&exit))),
                    None => note(&format!(
                        "{name} proxy (pid {pid}) did not stop within {STOP_GRACE:?} and was killed"
                    )),
                }
                let pid = app.pid();
                match app.stop(STOP_GRACE).await {
                    Some(exit) if is_clean(&exit) => note(&format!("{name} (pid {pid}) stopped")),
                    Some(exit) => note(&format!("{name} (pid {pid}) ended badly: {}", describe(&exit))),
                    None => {
                        note(&format!("{name} (pid {pid}) did not stop within {STOP_GRACE:?} and was killed"))
                    }
                }
                return None;
            }
            Ended::Shutdown => {
                let pid = app.pid();
                match app.stop(STOP_GRACE).await {
                    Some(exit) if is_clean(&exit) => note(&format!("{name} (pid {pid}) stopped")),
                    Some(exit) => note(&format!("{name} (pid {pid}) ended badly: {}", describe(&exit))),
                    None => {
                        note(&format!("{name} (pid {pid}) did not stop within {STOP_GRACE:?} and was killed"))
                    }
                }
                sidecar = Some(proxy);
                break;
            }
            Ended::App(exit) => {
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_MIN;
                }
                note(&format!(
                    "{name} (pid {}) exited: {}; restarting in {backoff:?}",
                    app.pid(),
                    describe(&exit)
                ));
                sidecar = Some(proxy);
            }
            Ended::Sidecar(exit) => {
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_MIN;
                }
                note(&format!(
                    "{name} proxy (pid {}) exited unexpectedly: {}; stopping {name} and restarting both in {backoff:?}",
                    proxy.pid(),
                    describe(&exit)
                ));
                app.stop(STOP_GRACE).await;
            }
        }
        if sleep_or_shutdown(backoff, &mut shutdown).await {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    sidecar.map(|proxy| (name, proxy))
}

/// Why a sidecar did not become ready (it is then restarted).
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error("exited while starting: {}", describe(.0))]
    Exited(Exit),
    #[error("not ready within {SIDECAR_READY_TIMEOUT:?} (GET http://{0}/ready)")]
    InTime(SocketAddr),
}

/// Waits for the sidecar's `/ready`: `Ok(true)` when ready, `Ok(false)` on shutdown.
async fn wait_ready(
    proxy: &Supervised,
    admin: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, NotReady> {
    let ready = Readiness::AdminReady(admin);
    let deadline = Instant::now() + SIDECAR_READY_TIMEOUT;
    loop {
        if let Some(exit) = proxy.exit() {
            return Err(NotReady::Exited(exit));
        }
        if ready.probe().await {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Err(NotReady::InTime(admin));
        }
        if sleep_or_shutdown(Duration::from_millis(50), shutdown).await {
            return Ok(false);
        }
    }
}

enum Listening {
    Yes,
    NotInTime,
    Exited(Exit),
    Shutdown,
}

/// Waits until the app accepts connections on its port, so that it is not sent traffic
/// before it can take it.
async fn wait_listening(
    app: &Supervised,
    addr: SocketAddr,
    in_namespace: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> Listening {
    let deadline = Instant::now() + APP_LISTEN_TIMEOUT;
    loop {
        if let Some(exit) = app.exit() {
            return Listening::Exited(exit);
        }
        // In a namespace, a connection from here would be taken by the sidecar whether
        // the app listens or not: look at the namespace's own socket table instead.
        let listening = match in_namespace {
            true => netns::listens(app.pid(), addr.port()),
            false => Readiness::Accepts(addr).probe().await,
        };
        if listening {
            return Listening::Yes;
        }
        if Instant::now() >= deadline {
            note(&format!(
                "pid {} does not listen on PORT={} after {APP_LISTEN_TIMEOUT:?}; registering it anyway",
                app.pid(),
                addr.port()
            ));
            return Listening::NotInTime;
        }
        if sleep_or_shutdown(Duration::from_millis(50), shutdown).await {
            return Listening::Shutdown;
        }
    }
}

/// Reports refused configuration changes (the last good configuration stays in force).
async fn report_refusals(mut status: watch::Receiver<Arc<Status>>) {
    let mut last_rejected = Vec::new();
    while status.changed().await.is_ok() {
        let rejected: Vec<String> =
            status.borrow_and_update().rejected.iter().map(ToString::to_string).collect();
        if !rejected.is_empty() && rejected != last_rejected {
            note("configuration change refused; the last good one stays in force:");
            for e in &rejected {
                note(&format!("  {e}"));
            }
        }
        last_rejected = rejected;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_url_templates_are_checked_as_the_arguments_are_read() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            up: UpArgs,
        }
        use clap::Parser as _;
        let template = "http://localhost:16686/trace/{trace_id}";
        let cli = Cli::try_parse_from(["up", "dir", "--trace-url", template]).unwrap();
        assert_eq!(cli.up.trace_url.as_ref().map(|u| u.template()), Some(template));
        assert!(Cli::try_parse_from(["up", "dir"]).unwrap().up.trace_url.is_none(), "off by default");
        let refused = Cli::try_parse_from(["up", "dir", "--trace-url", "http://localhost:16686/"]);
        let message = refused.err().expect("a template without {trace_id}").to_string();
        assert!(message.contains("--trace-url") && message.contains("{trace_id}"), "{message}");
    }

    #[tokio::test]
    async fn a_taken_default_api_port_falls_back_to_a_free_one() {
        // Taken by this test, or already by someone else: taken either way.
        let _holder =
            tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, tarmac_control::api::DEFAULT_PORT)).await;
        let listener = bind_api(tarmac_control::api::DEFAULT_PORT).await.expect("a free port instead");
        assert_ne!(listener.local_addr().unwrap().port(), tarmac_control::api::DEFAULT_PORT);
        // An explicit port is never silently replaced.
        let taken = listener.local_addr().unwrap().port();
        assert!(bind_api(taken).await.unwrap_err().to_string().contains(&taken.to_string()));
    }
}
