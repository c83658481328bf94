//! The `tarmac-control` binary: parses its arguments once into a [`tarmac_control::Config`],
//! sets up logging and the runtime, opens the store (a directory, or the Kubernetes API),
//! binds its listeners and runs the control plane until SIGTERM or Ctrl-C. `tarmac up`
//! runs the same [`tarmac_control::start`] in-process. It lives in this crate because the
//! Kubernetes store is here.

use clap::Parser;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tarmac_control::identity::{BootstrapTokens, default_ca_dir};
use tarmac_control::registry::Registry;
use tarmac_control::{Config, IdentityConfig, Listeners, StartError};
use tarmac_identity::DEFAULT_TRUST_DOMAIN;
use tarmac_identity::ca::{Ca, SharedCa};
use tarmac_transport::host_port::HostPort;

/// Log filter, in `tracing` env-filter syntax (default `info`).
const ENV_LOG: &str = "TARMAC_CONTROL_LOG";
/// Exit status for a configuration that cannot be served (as `tarmac up`).
const EXIT_INVALID_CONFIG: u8 = 2;

/// The Tarmac control plane: desired state from a directory of YAML (watched) or the
/// Kubernetes API, discovery and identity (gRPC) for the proxies, telemetry and the HTTP
/// API with the dashboard.
#[derive(Parser, Debug)]
#[command(name = "tarmac-control", version)]
struct Args {
    /// Where desired state comes from: `files` (`--config-dir`) or `kubernetes` (the API
    /// server of `--kubeconfig`, else of `$KUBECONFIG` or `~/.kube/config`, else the
    /// cluster the control plane runs in).
    #[arg(long, value_enum, default_value = "files")]
    store: StoreKind,
    /// The configuration directory: Services, Workloads, Deployments, HTTPRoutes, ...
    /// (`*.yaml`, `*.yml`), as `tarmac up DIR` reads it.
    #[arg(long, value_name = "DIR", required_if_eq("store", "files"))]
    config_dir: Option<PathBuf>,
    /// With `--store kubernetes`: the kubeconfig file naming the API server and the
    /// credentials (its current context).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// With `--store kubernetes`: how long to wait for the first list of every kind before
    /// giving up (`60s`).
    #[arg(long, default_value = "60s", value_parser = tarmac_model::duration::parse)]
    kube_sync_timeout: Duration,
    /// With `--store kubernetes`: the namespace of the Lease `tarmac-control`, which
    /// elects the one replica that writes route status (the control plane's namespace).
    #[arg(long, default_value = "tarmac-system", value_name = "NAMESPACE")]
    lease_namespace: String,
    /// With `--store kubernetes`: write no route status (and take no Lease).
    #[arg(long)]
    no_route_status: bool,
    /// Where proxies reach discovery and identity (gRPC).
    #[arg(long, default_value = "127.0.0.1:4180", value_name = "ADDR")]
    grpc_listen: SocketAddr,
    /// Where the HTTP API and dashboard are served (`tarmac stat`, `check`, ... with
    /// `--control`). Repeat to serve on several addresses.
    #[arg(long, default_value = "127.0.0.1:4190", value_name = "ADDR")]
    api_listen: Vec<SocketAddr>,
    /// Where the mesh's CA is kept (generated there on first use; see `tarmac identity`).
    /// Default: `$XDG_STATE_HOME/tarmac/identity` or `~/.local/state/tarmac/identity`.
    #[arg(long, value_name = "DIR")]
    identity_dir: Option<PathBuf>,
    /// With `--store kubernetes`: the mesh's CA from this Secret (`NAMESPACE/NAME`), in
    /// cert-manager's shape: `tls.crt` the issuer certificate (and its chain), `tls.key`
    /// its key, `ca.crt` the trust anchors. Watched: a renewed issuer is used without a
    /// restart; a Secret that cannot be a CA is refused and the issuer in use stays.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "identity_dir")]
    identity_secret: Option<tarmac_kube::ca_secret::SecretRef>,
    /// With `--store kubernetes`: the audience proxies' projected ServiceAccount tokens
    /// are for; each is checked with a TokenReview for it.
    #[arg(long, value_name = "AUDIENCE", default_value = tarmac_kube::review::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// Proxies' one-time bootstrap tokens, one a line: `TOKEN NAMESPACE SERVICE_ACCOUNT`.
    /// Each certifies one proxy once; renewals are proven with the certificate. For
    /// `--store files`: on Kubernetes proxies present ServiceAccount tokens.
    #[arg(long, value_name = "FILE")]
    bootstrap_tokens: Option<PathBuf>,
    /// Lifetime of workload certificates (`24h`, `1h30m`); proxies renew at about 70 %.
    #[arg(long, default_value = "24h", value_parser = tarmac_model::duration::parse)]
    cert_lifetime: Duration,
    /// What workloads allow where no ALLOW policy applies and neither their Workload nor
    /// their Namespace sets `tarmac.io/default-policy`: allow-all, all-authenticated, deny
    /// or audit (docs/policy.md).
    #[arg(long, default_value = "allow-all", value_name = "POLICY")]
    default_policy: tarmac_model::authz::DefaultPolicy,
    /// The trace UI tap events link to: a URL with `{trace_id}` where the trace's id goes,
    /// e.g. `http://localhost:16686/trace/{trace_id}`. Without it, the dashboard and
    /// `tarmac tap` show traced requests' ids alone.
    #[arg(long, value_name = "URL")]
    trace_url: Option<tarmac_control::telemetry::tap::TraceUrl>,
    /// Serve no identity: proxies run without mTLS or with certificates from files.
    #[arg(long, conflicts_with_all = ["identity_dir", "identity_secret", "bootstrap_tokens"])]
    no_identity: bool,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The sidecar injection webhook (docs/kubernetes.md): off unless `--webhook-listen`.
#[derive(clap::Args, Debug)]
struct WebhookArgs {
    /// Where the mutating admission webhook (`POST /inject`) is served over HTTPS.
    #[arg(long, value_name = "ADDR")]
    webhook_listen: Option<SocketAddr>,
    /// The webhook's serving certificate (PEM, leaf first), for the name the API server
    /// calls it by. Without it (and `--webhook-key`), the mesh's CA issues one for
    /// `--webhook-dns-name`, and its anchors are the caBundle.
    #[arg(long, value_name = "FILE", requires = "webhook_key")]
    webhook_cert: Option<String>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "webhook_cert")]
    webhook_key: Option<String>,
    /// The names the CA's webhook certificate is issued for (repeat for several): the
    /// webhook's Service as the API server calls it.
    #[arg(long, value_name = "NAME", default_value = "tarmac-webhook.tarmac-system.svc")]
    webhook_dns_name: Vec<String>,
    /// The image injected sidecars run.
    #[arg(long, value_name = "IMAGE", default_value_t = tarmac_control::inject::default_image())]
    proxy_image: String,
    /// Where injected sidecars reach this control plane's gRPC: `HOST:PORT`, on a cluster
    /// its Service's name (`tarmac-control.tarmac-system.svc:4180`), which sidecars
    /// resolve at every connection. Without it they run without discovery.
    #[arg(long, value_name = "HOST:PORT")]
    sidecar_control_addr: Option<HostPort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Files,
    Kubernetes,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.store == StoreKind::Files && (args.kubeconfig.is_some() || args.no_route_status) {
        eprintln!("tarmac-control: --kubeconfig and --no-route-status are for --store kubernetes");
        return ExitCode::FAILURE;
    }
    if args.store == StoreKind::Files && args.identity_secret.is_some() {
        eprintln!("tarmac-control: --identity-secret is for --store kubernetes (with files, --identity-dir)");
        return ExitCode::FAILURE;
    }
    if args.store == StoreKind::Kubernetes && args.config_dir.is_some() {
        eprintln!("tarmac-control: --config-dir is for --store files (the default)");
        return ExitCode::FAILURE;
    }
    if args.store == StoreKind::Kubernetes && args.bootstrap_tokens.is_some() {
        eprintln!(
            "tarmac-control: --bootstrap-tokens is for --store files: on Kubernetes proxies prove who they are with their ServiceAccount token"
        );
        return ExitCode::FAILURE;
    }
    let filter = std::env::var(ENV_LOG).unwrap_or_else(|_| "info".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The control plane waits on the network and on timers, never on the CPU: one thread.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tarmac-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let config = match store_config(&args).await {
            Ok((config, client)) => config_with(&args, config, client).await,
            Err(e) => Err(e),
        };
        let config = match config {
            Ok(config) => config,
            Err(message) => {
                eprintln!("tarmac-control: {message}");
                return ExitCode::FAILURE;
            }
        };
        run(args, config).await
    })
}

/// The store: the directory (opened by [`tarmac_control::start`]), or the Kubernetes API,
/// listed here and filling the registry from the cluster's Pods.
async fn store_config(args: &Args) -> Result<(Config, Option<kube::Client>), String> {
    let Some(dir) = &args.config_dir else {
        let client = kube_client(args.kubeconfig.as_deref()).await?;
        let registry = Registry::default();
        let options = tarmac_kube::Options { sync_timeout: args.kube_sync_timeout, ..Default::default() };
        let store = tarmac_kube::KubeStore::open(client.clone(), registry.clone(), options)
            .await
            .map_err(|e| e.to_string())?;
        if !args.no_route_status {
            use tarmac_control::store::Store;
            // A pod's hostname is its name: what the Lease names its holder by.
            let identity = std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("tarmac-control-{}", std::process::id()));
            let options = tarmac_kube::status::StatusOptions {
                lease_namespace: args.lease_namespace.clone(),
                identity,
                lease_duration: Duration::from_secs(15),
                renew_every: Duration::from_secs(5),
            };
            tarmac_kube::status::spawn(client.clone(), store.snapshots(), options);
        }
        return Ok((Config::opened(Box::new(store), registry), Some(client)));
    };
    Ok((Config::files(dir), None))
}

/// A client of the API server `kubeconfig` names, else the one kube-rs infers.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    tarmac_kube::client(kubeconfig).await.map_err(|e| e.to_string())
}

/// The typed configuration, with the CA loaded (or generated, or read from its Secret)
/// and how proxies prove who they are (bootstrap tokens read, or TokenReviews).
async fn config_with(args: &Args, config: Config, client: Option<kube::Client>) -> Result<Config, String> {
    let config = config.with_default_policy(args.default_policy).with_trace_url(args.trace_url.clone());
    if args.no_identity {
        return Ok(config);
    }
    let ca: Arc<SharedCa> = match (&args.identity_secret, &client) {
        (Some(secret), Some(client)) => {
            let (ca, _follow) =
                tarmac_kube::ca_secret::follow(client.clone(), secret.clone(), args.kube_sync_timeout)
                    .await
                    .map_err(|e| e.to_string())?;
            tracing::info!(%secret, issuer = %ca.current().issuer_info().subject, "the mesh's CA from its Secret");
            ca
        }
        _ => {
            let dir = match &args.identity_dir {
                Some(dir) => dir.clone(),
                None => default_ca_dir().map_err(|e| e.to_string())?,
            };
            let (ca, created) = Ca::load_or_generate(&dir, DEFAULT_TRUST_DOMAIN)
                .map_err(|e| format!("the mesh's CA in {}: {e}", dir.display()))?;
            if created {
                tracing::info!(dir = %dir.display(), "generated a new trust anchor and issuer");
            }
            Arc::new(ca.into())
        }
    };
    if let Some(client) = client {
        return Ok(config.with_identity(IdentityConfig {
            ca,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cert_lifetime: args.cert_lifetime,
            authenticator: Arc::new(tarmac_kube::TokenReviewer::new(client, &args.token_audience)),
            only_configured_workloads: false,
        }));
    }
    let tokens = match &args.bootstrap_tokens {
        Some(path) => {
            // Whoever reads a token can take its identity, as for a proxy's token file.
            let mode = std::fs::metadata(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{} can be read or changed by other users (mode {:o}): make it 0600",
                    path.display(),
                    mode & 0o777
                ));
            }
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            BootstrapTokens::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?
        }
        None => {
            tracing::warn!(
                "no --bootstrap-tokens: no proxy can get its first certificate (renewals of certificates this CA issued still work)"
            );
            BootstrapTokens::default()
        }
    };
    Ok(config.with_identity(IdentityConfig {
        ca,
        trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
        cert_lifetime: args.cert_lifetime,
        authenticator: Arc::new(tokens),
        only_configured_workloads: false,
    }))
}

async fn run(args: Args, config: Config) -> ExitCode {
    let listeners = match Listeners::bind(args.grpc_listen, &args.api_listen).await {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("tarmac-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            wait_for_signal().await;
            stop.cancel();
        }
    });
    if let Some(addr) = args.webhook.webhook_listen
        && let Err(e) = start_webhook(addr, &args, config.identity.as_ref(), stop.clone()).await
    {
        eprintln!("tarmac-control: {e}");
        return ExitCode::FAILURE;
    }
    let running = match tarmac_control::start(config, listeners, stop.cancelled_owned()).await {
        Ok(running) => running,
        Err(StartError::Store(e)) => {
            let dir = args.config_dir.as_deref().unwrap_or(std::path::Path::new("?"));
            eprintln!("tarmac-control: the configuration in {} is invalid:\n{e}", dir.display());
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
        Err(e) => {
            eprintln!("tarmac-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addrs = &running.addrs;
    tracing::info!(
        grpc = %addrs.grpc,
        api = ?addrs.api,
        store = match &args.config_dir {
            Some(dir) => dir.display().to_string(),
            None => "kubernetes".to_string(),
        },
        generation = running.snapshots().borrow().generation,
        "tarmac-control ready"
    );
    let problems = running.stopped().await;
    for problem in &problems {
        tracing::warn!("{problem}");
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Binds the webhook's port and serves it until `stop`.
async fn start_webhook(
    addr: SocketAddr,
    args: &Args,
    identity: Option<&IdentityConfig>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    use tarmac_control::inject::{Settings, webhook};
    let tls = match (&args.webhook.webhook_cert, &args.webhook.webhook_key, identity) {
        (Some(cert), Some(key), _) => webhook::tls_config(cert, key).map_err(|e| e.to_string())?,
        (_, _, Some(identity)) => webhook::tls_from_ca(
            identity.ca.clone(),
            args.webhook.webhook_dns_name.clone(),
            args.cert_lifetime,
        )
        .map_err(|e| e.to_string())?,
        _ => {
            return Err(
                "--webhook-listen needs --webhook-cert and --webhook-key, or the mesh's CA (not --no-identity)".to_string()
            );
        }
    };
    let token_audience = args.token_audience.clone();
    let args = &args.webhook;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for the webhook: {e}"))?;
    let settings = Settings {
        proxy_image: args.proxy_image.clone(),
        control_addr: args.sidecar_control_addr.clone(),
        // Sidecars trust the anchors the CA has as the webhook starts (an anchor rotation
        // restarts the control plane, docs/kubernetes.md).
        identity: identity.map(|i| tarmac_control::inject::IdentitySettings {
            trust_anchors: i.ca.current().anchors_pem().to_string(),
            audience: token_audience.clone(),
        }),
    };
    tracing::info!(%addr, "sidecar injection webhook listening");
    tokio::spawn(webhook::serve(listener, tls, settings, stop.cancelled_owned()));
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot handle SIGTERM and SIGINT: running until killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
