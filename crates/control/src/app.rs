//! Wiring: the store, discovery, identity, telemetry and the HTTP API, from one typed
//! [`Config`], on listeners the caller bound, until the caller's shutdown completes.
//!
//! Everything that runs a control plane goes through [`start`]: the `tarmac-control`
//! binary, `tarmac up` (in-process), the routing benchmark, the conformance runner and the
//! tests. Listeners are bound by the caller so that it chooses addresses (port 0 in tests,
//! the bridge in transparent mode) and sees a bind error before anything runs.

use crate::api::Api;
use crate::discovery::server::{DiscoveryService, Subscriptions};
use crate::identity::{Authenticator, IdentityService, IdentityStats};
use crate::registry::Registry;
use crate::store::files::{FilesStore, OpenError};
use crate::store::{Snapshot, Status, Store};
use crate::telemetry::Telemetry;
use crate::telemetry::tap::TraceUrl;
use crate::workloads::Restarts;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tarmac_identity::ca::SharedCa;
use tarmac_model::authz::DefaultPolicy;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long the API may take to finish after shutdown: an open tap stream would hold a
/// graceful shutdown forever.
const API_STOP_GRACE: Duration = Duration::from_secs(1);
/// How long the gRPC server may take to finish after shutdown (discovery streams end at
/// once; a certificate request in flight completes).
const GRPC_STOP_GRACE: Duration = Duration::from_secs(5);

/// What a control plane runs.
pub struct Config {
    pub store: StoreConfig,
    /// The CA, when proxies get their certificates from this control plane.
    pub identity: Option<IdentityConfig>,
    /// The running instances discovery joins with the desired state. `tarmac up` and the
    /// tests fill it as they start replicas; the binary in files mode has none; the
    /// Kubernetes backend fills it from Pods and EndpointSlices.
    pub registry: Registry,
    /// The mesh's default policy (`tarmac up --default-policy`): what workloads allow where
    /// no ALLOW policy applies, unless their Workload or Namespace says otherwise.
    pub default_policy: DefaultPolicy,
    /// Where `POST /api/v1/workloads/.../restart` goes: `tarmac up`, which runs the
    /// Workloads. None: the API answers 501.
    pub restarts: Option<Restarts>,
    /// The mesh's telemetry where no Telemetry object says (`tarmac up --otlp`,
    /// `--trace-sampling`).
    pub telemetry_defaults: tarmac_model::telemetry::MeshDefaults,
    /// The user's trace UI, where tap events' trace ids link to (`--trace-url`).
    pub trace_url: Option<TraceUrl>,
}

/// Where desired state comes from.
pub enum StoreConfig {
    /// A directory of YAML, watched: the local mode (`--config-dir`).
    Files { dir: PathBuf },
    /// Snapshots published by the caller through the sender of this channel, each taken
    /// as valid: for benchmarks, the conformance runner and tests that build their
    /// configuration in code.
    Snapshots(watch::Receiver<Arc<Snapshot>>),
    /// A store the caller opened, already holding a complete snapshot: the Kubernetes
    /// backend (`tarmac-kube`), which this crate does not link.
    Opened(Box<dyn Store>),
}

/// The CA and how proxies prove who they are on their first request.
pub struct IdentityConfig {
    pub ca: Arc<SharedCa>,
    pub trust_domain: String,
    /// Lifetime of workload certificates; proxies renew at about 70 % of it.
    pub cert_lifetime: Duration,
    pub authenticator: Arc<dyn Authenticator>,
    /// Certify only the service accounts of the Workloads (and Deployments) in the
    /// configuration as it is now, so that a removed Workload's token or certificate gets
    /// no new certificate (`tarmac up`). Off: whoever the proof names (the binary, whose
    /// token file is the authority).
    pub only_configured_workloads: bool,
}

impl Config {
    pub fn files(dir: impl Into<PathBuf>) -> Self {
        Self {
            store: StoreConfig::Files { dir: dir.into() },
            identity: None,
            registry: Registry::default(),
            default_policy: DefaultPolicy::default(),
            restarts: None,
            telemetry_defaults: Default::default(),
            trace_url: None,
        }
    }

    pub fn snapshots(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            store: StoreConfig::Snapshots(snapshots),
            identity: None,
            registry: Registry::default(),
            default_policy: DefaultPolicy::default(),
            restarts: None,
            telemetry_defaults: Default::default(),
            trace_url: None,
        }
    }

    /// Desired state from `store`, opened by the caller (the Kubernetes backend, which
    /// also fills `registry` from the cluster's Pods).
    pub fn opened(store: Box<dyn Store>, registry: Registry) -> Self {
        Self {
            store: StoreConfig::Opened(store),
            identity: None,
            registry,
            default_policy: DefaultPolicy::default(),
            restarts: None,
            telemetry_defaults: Default::default(),
            trace_url: None,
        }
    }

    pub fn with_identity(mut self, identity: IdentityConfig) -> Self {
        self.identity = Some(identity);
        self
    }

    pub fn with_default_policy(mut self, default_policy: DefaultPolicy) -> Self {
        self.default_policy = default_policy;
        self
    }

    pub fn with_telemetry_defaults(mut self, defaults: tarmac_model::telemetry::MeshDefaults) -> Self {
        self.telemetry_defaults = defaults;
        self
    }

    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Tap events with a trace id link to it in the user's trace UI.
    pub fn with_trace_url(mut self, trace_url: Option<TraceUrl>) -> Self {
        self.trace_url = trace_url;
        self
    }

    /// Restart requests go to `restarts`: the caller runs the Workloads.
    pub fn with_restarts(mut self, restarts: Restarts) -> Self {
        self.restarts = Some(restarts);
        self
    }
}

/// The listeners a control plane serves on, bound by the caller.
pub struct Listeners {
    /// Discovery, and identity when configured (gRPC).
    pub grpc: TcpListener,
    /// The HTTP API and dashboard, on each of these (`tarmac up --transparent` serves it
    /// on loopback and on the bridge). None: no API, and no telemetry scraping.
    pub api: Vec<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {what}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl Listeners {
    /// Binds the gRPC listener on `grpc` and an API listener on each of `api`.
    pub async fn bind(grpc: SocketAddr, api: &[SocketAddr]) -> Result<Self, BindError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| BindError { what, addr, source })
        };
        let grpc = bind("control plane's gRPC (discovery, identity)", grpc).await?;
        let mut apis = Vec::new();
        for addr in api {
            apis.push(bind("control plane's HTTP API", *addr).await?);
        }
        Ok(Self { grpc, api: apis })
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration directory is missing, invalid (every error listed) or cannot be
    /// watched.
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("a listener has no local address: {0}")]
    Listener(std::io::Error),
    #[error("cannot set up TLS for the gRPC API: {0}")]
    Tls(#[source] crate::tls::TlsError),
}

/// The addresses the control plane actually serves on.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub grpc: SocketAddr,
    pub api: Vec<SocketAddr>,
}

/// A running control plane. Dropping it stops it (without waiting); [`Running::stopped`]
/// waits for the shutdown given to [`start`] and for every server to end.
pub struct Running {
    pub addrs: Addrs,
    pub registry: Registry,
    /// The live discovery streams (`tarmac check` reads them through the API).
    pub subscriptions: Subscriptions,
    /// Certificates issued and refused, when identity is configured.
    pub identity_stats: Option<Arc<IdentityStats>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: watch::Receiver<Arc<Status>>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    apis: Vec<JoinHandle<std::io::Result<()>>>,
    /// Holds the directory watch (files mode), the watches of the API server (Kubernetes)
    /// or the status channel (snapshots mode).
    _store: Box<dyn Store>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .field("generation", &self.snapshots.borrow().generation)
            .finish()
    }
}

/// A store over snapshots the caller publishes: every one is in force as it arrives.
struct PublishedSnapshots {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: watch::Receiver<Arc<Status>>,
    _status: watch::Sender<Arc<Status>>,
}

impl Store for PublishedSnapshots {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    fn status(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }
}

/// Opens the store and serves discovery (and identity) on `listeners.grpc` and the API on
/// each of `listeners.api`, until `shutdown` completes or the [`Running`] is dropped.
pub async fn start(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let store: Box<dyn Store> = match config.store {
        StoreConfig::Files { dir } => Box::new(FilesStore::open(dir)?),
        StoreConfig::Snapshots(snapshots) => {
            let generation = snapshots.borrow().generation;
            let (tx, status) = watch::channel(Arc::new(Status {
                generation,
                rejected: Vec::new(),
                checked_at: Some(SystemTime::now()),
            }));
            Box::new(PublishedSnapshots { snapshots, status, _status: tx })
        }
        StoreConfig::Opened(store) => store,
    };
    let addrs = Addrs {
        grpc: listeners.grpc.local_addr().map_err(StartError::Listener)?,
        api: listeners
            .api
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<_, _>>()
            .map_err(StartError::Listener)?,
    };
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
    }

    let registry = config.registry;
    let restarts = config.restarts;
    let trace_url = config.trace_url;
    let discovery = DiscoveryService::new(relay_until(store.snapshots(), stop.clone()), registry.clone())
        .with_default_policy(config.default_policy)
        .with_telemetry_defaults(config.telemetry_defaults.clone());
    let subscriptions = discovery.subscriptions();
    let tls = match &config.identity {
        Some(i) => Some(
            crate::grpc::server_tls(i.ca.clone(), &i.trust_domain, i.cert_lifetime)
                .map_err(StartError::Tls)?,
        ),
        None => None,
    };
    let identity = config.identity.map(|i| {
        let service = IdentityService::new(i.ca, &i.trust_domain, i.authenticator, i.cert_lifetime);
        match i.only_configured_workloads {
            true => service.serving_only(crate::identity::configured_workloads(store.snapshots())),
            false => service,
        }
    });
    let identity_stats = identity.as_ref().map(|i| i.stats.clone());
    let grpc = tokio::spawn(crate::grpc::serve(
        listeners.grpc,
        discovery,
        identity,
        tls,
        stop.clone().cancelled_owned(),
    ));

    let mut apis = Vec::new();
    if !listeners.api.is_empty() {
        let telemetry = Telemetry::new(registry.clone(), store.snapshots());
        let scraper = telemetry.clone();
        let scraping = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = scraper.run() => {}
                () = scraping.cancelled() => {}
            }
        });
        let mut api = Api::new(telemetry, store.status(), subscriptions.clone())
            .with_default_policy(config.default_policy)
            .with_telemetry_defaults(config.telemetry_defaults.clone())
            .with_trace_url(trace_url);
        if let Some(restarts) = restarts {
            api = api.with_restarts(restarts);
        }
        for listener in listeners.api {
            apis.push(tokio::spawn(api.clone().serve(listener, stop.clone().cancelled_owned())));
        }
    }
    Ok(Running {
        addrs,
        registry,
        subscriptions,
        identity_stats,
        snapshots: store.snapshots(),
        status: store.status(),
        _stop_on_drop: stop.clone().drop_guard(),
        stop,
        grpc,
        apis,
        _store: store,
    })
}

/// A copy of `source` that ends at `stop`. Discovery streams end when the snapshots they
/// follow end: without this, a stopped control plane's streams would stay open on their
/// connections (a graceful shutdown waits for them), and proxies would follow a control
/// plane that is gone instead of reconnecting to the next one.
fn relay_until(
    mut source: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
) -> watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = watch::channel(source.borrow_and_update().clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = source.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tx.send_replace(source.borrow_and_update().clone());
                }
                () = stop.cancelled() => return,
            }
        }
    });
    rx
}

// === impl Running ===

impl Running {
    /// The desired state in force, and its changes.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// What the store last concluded about its input (refusals included).
    pub fn status(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    /// Stops now, as if the shutdown given to [`start`] had completed, and waits.
    pub async fn shutdown(self) -> Vec<String> {
        self.stop.cancel();
        self.stopped().await
    }

    /// Waits for the shutdown given to [`start`], then for the servers to end (bounded);
    /// returns what did not end cleanly, for the caller to report.
    pub async fn stopped(self) -> Vec<String> {
        self.stop.cancelled().await;
        let mut problems = Vec::new();
        match tokio::time::timeout(GRPC_STOP_GRACE, self.grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                problems.push(format!("the control plane's gRPC server ended with an error: {e}"))
            }
            Ok(Err(e)) => problems.push(format!("the control plane's gRPC server failed: {e}")),
            Err(_) => problems.push("the control plane's gRPC server did not stop in time".to_string()),
        }
        for api in self.apis {
            match tokio::time::timeout(API_STOP_GRACE, api).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => problems.push(format!("the API ended with an error: {e}")),
                Ok(Err(e)) => problems.push(format!("the API failed: {e}")),
                // Tap streams still open; they end with the process.
                Err(_) => problems.push("the API did not stop in time (tap streams open)".to_string()),
            }
        }
        problems
    }
}
