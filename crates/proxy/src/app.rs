//! Wiring: binds every listener, starts the accept loops, and drains on shutdown.

use crate::admin::Admin;
use crate::config::{Config, IdentityConfig};
use crate::conn::Shared;
use crate::discovery::ControlClient;
use crate::identity::certify::{Certifier, CertifyError};
use crate::identity::store::{CertLoadError, CertStore};
use crate::identity::{MeshTls, TlsSetupError};
use crate::inbound::Inbound;
use crate::inbound::policy::Policies;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tarmac_proto::identity::certify_request::Proof;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (`{field}`): {source}")]
pub struct BindError {
    pub field: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
}

/// Why the proxy's identity could not be set up, naming the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{path}: {source}")]
    Certificates { path: String, source: tarmac_identity::ca::PemError },
    #[error("{path}: not a PEM private key: {source}")]
    Key { path: String, source: rustls::pki_types::pem::Error },
    #[error("{path}: {source}")]
    Install { path: String, source: CertLoadError },
    #[error("`identity` without `certificate` needs `control`")]
    NoControl,
    #[error(transparent)]
    SpiffeId(#[from] tarmac_identity::spiffe::InvalidSpiffeId),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Certify(#[from] CertifyError),
}

/// Why the bootstrap token could not be had, naming the field it comes through
/// (`identity.token_fd` or `identity.token_file`) and the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "set only one of `identity.token_fd`, `identity.token_file` and `identity.service_account_token`"
    )]
    Both,
    #[error(
        "no bootstrap token: set `identity.token_fd` (an inherited pipe), `identity.token_file`, or on Kubernetes `identity.service_account_token`"
    )]
    Neither,
    #[error("cannot read the bootstrap token (`identity.token_fd`): {0}")]
    Fd(std::io::Error),
    #[error("cannot read {TOKEN_FILE} {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{TOKEN_FILE} {path} can be read by other users (mode {mode:o}): make it 0600")]
    Readable { path: String, mode: u32 },
    #[error("cannot remove {TOKEN_FILE} {path} after reading it: {source}")]
    Remove { path: String, source: std::io::Error },
    #[error("the bootstrap token is not text")]
    NotText,
}

const TOKEN_FILE: &str = "the bootstrap token (`identity.token_file`)";

/// The addresses the proxy actually bound (port 0 in the config becomes a real port).
#[derive(Clone, Debug)]
pub struct BoundAddrs {
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    pub outbound_transparent: Option<SocketAddr>,
    /// Explicit outbound listeners by service name.
    pub services: Vec<(String, SocketAddr)>,
}

impl BoundAddrs {
    pub fn service(&self, name: &str) -> Option<SocketAddr> {
        self.services.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    pub addrs: BoundAddrs,
    pub metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    admin: Arc<Admin>,
    admin_stop: CancellationToken,
    drain_timeout: Duration,
    /// Set when the proxy cannot go on (its certificate expired and could not be
    /// renewed): the reason, for `main` to exit with so that a supervisor starts it again.
    fatal: tokio::sync::watch::Receiver<Option<String>>,
}

fn bind(field: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    tarmac_transport::bind_listener(addr).map_err(|source| BindError {
        field: field.to_string(),
        addr,
        source,
    })
}

/// Binds all listeners and starts serving. Readiness is reported only once every listener
/// is bound; a listener that cannot bind fails the whole start.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let drain = CancellationToken::new();
    let (fatal_tx, fatal) = tokio::sync::watch::channel(None);
    let tls = match &config.identity {
        Some(identity) => {
            Some(Arc::new(setup_identity(identity, &config, &metrics, &drain, fatal_tx).await?))
        }
        None => None,
    };
    // Made once the proxy has its certificate, so that discovery's connections present it.
    let control = config.control.as_ref().map(|c| ControlClient::new(c, tls.as_deref()));
    let admin_listener = bind("admin", config.admin)?;
    let mut bound = BoundAddrs {
        admin: admin_listener.local_addr().expect("bound"),
        inbound: None,
        outbound_transparent: None,
        services: Vec::new(),
    };

    let inbound_listener = match &config.inbound {
        Some(inbound) => Some(bind("inbound.listen", inbound.listen)?),
        None => None,
    };
    bound.inbound = inbound_listener.as_ref().map(|l| l.local_addr().expect("bound"));
    let transparent_listener = match config.outbound.as_ref().and_then(|o| o.transparent_listen) {
        Some(addr) => Some(bind("outbound.transparent_listen", addr)?),
        None => None,
    };
    bound.outbound_transparent = transparent_listener.as_ref().map(|l| l.local_addr().expect("bound"));
    let mut service_listeners = Vec::new();
    if let Some(outbound) = &config.outbound {
        for (i, svc) in outbound.services.iter().enumerate() {
            if let Some(addr) = svc.listen {
                let listener = bind(&format!("outbound.services[{i}].listen"), addr)?;
                bound.services.push((svc.name.clone(), listener.local_addr().expect("bound")));
                service_listeners.push(listener);
            }
        }
    }

    let mut shared = Shared::new(&config, metrics.clone());
    shared.connect.tls = tls.clone();
    shared.drain = drain;
    shared.own_addrs = std::iter::once(bound.admin)
        .chain(bound.inbound)
        .chain(bound.outbound_transparent)
        .chain(bound.services.iter().map(|(_, a)| *a))
        .collect();
    let shared = Arc::new(shared);
    tokio::spawn(shared.http_connections.clone().run(shared.drain.clone()));
    // The configuration's telemetry, until the control plane says the workload's.
    shared.telemetry.apply_local();
    if let (Some(client), Some(control)) = (&control, &config.control)
        && !control.workload.is_empty()
    {
        tokio::spawn(client.clone().watch_telemetry(shared.telemetry.clone(), shared.drain.clone()));
    }

    let mut inbound_policy = None;
    if let (Some(inbound_config), Some(listener)) = (config.inbound.clone(), inbound_listener) {
        let one_app = !inbound_config.transparent;
        let mut inbound = Inbound::new(inbound_config);
        // A proxy that names its workload follows the workload's inbound policy, and is
        // closed until it arrives.
        if let (Some(client), Some(control)) = (&control, &config.control)
            && !control.workload.is_empty()
        {
            let policies = Arc::new(Policies::followed(one_app));
            tokio::spawn(client.clone().watch_inbound(policies.clone(), shared.drain.clone()));
            inbound.policies = policies.clone();
            inbound_policy = Some(policies);
        }
        tokio::spawn(Arc::new(inbound).serve(listener, shared.clone()));
    }
    if let Some(outbound_config) = &config.outbound {
        let namespace = config.control.as_ref().map_or("default", |c| c.namespace.as_str());
        let (outbound, services) = Outbound::new(outbound_config, &shared, namespace);
        let outbound = Arc::new(outbound);
        if let Some(client) = &control {
            for (svc_config, (svc, _)) in outbound_config.services.iter().zip(&services) {
                if let Some(discover) = &svc_config.discover {
                    tokio::spawn(client.clone().watch_service(
                        discover.clone(),
                        svc.logical.clone(),
                        shared.connect.clone(),
                        shared.drain.clone(),
                    ));
                }
            }
        }
        let mut listeners = service_listeners.into_iter();
        for (svc, listen) in services {
            if listen.is_some() {
                let listener = listeners.next().expect("one listener per service with `listen`");
                tokio::spawn(outbound.clone().serve_explicit(svc, listener, shared.clone()));
            }
        }
        if let Some(listener) = transparent_listener {
            tokio::spawn(outbound.serve_transparent(listener, shared.clone()));
        }
    }

    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        ready: false.into(),
        config_yaml: config.to_yaml(),
        tap: shared.tap.clone(),
        certs: tls.as_ref().map(|t| t.certs.clone()),
        inbound_policy,
    });
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin.clone().serve(admin_listener, admin_stop.clone()));
    admin.ready.store(true, Ordering::Release);
    Ok(Running {
        addrs: bound,
        metrics,
        shared,
        admin,
        admin_stop,
        drain_timeout: config.limits.drain_timeout,
        fatal,
    })
}

/// The workload certificate (from files, or from the control plane with renewal started)
/// and the TLS state built on it.
async fn setup_identity(
    identity: &IdentityConfig,
    config: &Config,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
    fatal: tokio::sync::watch::Sender<Option<String>>,
) -> Result<MeshTls, IdentityError> {
    let read = |path: &str, what: &'static str| {
        std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
            what,
            path: path.into(),
            source,
        })
    };
    let anchors = read(&identity.trust_anchors, "trust anchors (`identity.trust_anchors`)")?;
    let certs = Arc::new(CertStore::default());
    let mode = config.inbound.as_ref().map(|i| i.mtls).unwrap_or_default();
    let tls = MeshTls::new(&anchors, &identity.trust_anchors, certs.clone(), mode)?;
    if let Some(files) = &identity.certificate {
        let chain = tarmac_identity::ca::pem_certs(&read(&files.cert, "certificate")?)
            .map_err(|source| IdentityError::Certificates { path: files.cert.clone(), source })?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(read(&files.key, "key")?.as_bytes())
            .map_err(|source| IdentityError::Key { path: files.key.clone(), source })?;
        let current = certs
            .install(chain, key)
            .map_err(|source| IdentityError::Install { path: files.cert.clone(), source })?;
        let expiry = current.info.not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        metrics.cert_expiry.set(expiry.as_secs() as i64);
        return Ok(tls);
    }
    let Some(control_config) = &config.control else {
        return Err(IdentityError::NoControl);
    };
    // The bootstrap call presents no certificate (it has none yet): a channel of its own,
    // kept for renewals, which prove themselves with the current certificate's key.
    let control = ControlClient::new(control_config, Some(&tls));
    let requested = tarmac_identity::SpiffeId::new(
        tarmac_identity::DEFAULT_TRUST_DOMAIN,
        &control_config.namespace,
        &control_config.service_account,
    )?;
    let mut certifier = Certifier::new(control.channel(), requested, certs, metrics.clone())?;
    match &identity.service_account_token {
        Some(path) => {
            if identity.token_fd.is_some() || identity.token_file.is_some() {
                return Err(TokenError::Both.into());
            }
            certifier.bootstrap(|| service_account_proof(path, control_config)).await?;
        }
        None => {
            let token = bootstrap_token(identity)?;
            certifier.bootstrap(|| Ok(Proof::Token(token.clone()))).await?;
        }
    }
    let stop = stop.clone();
    tokio::spawn(async move {
        if let Err(reason) = certifier.renew_forever(stop).await {
            fatal.send_replace(Some(reason.to_string()));
        }
    });
    Ok(tls)
}

/// The projected ServiceAccount token as it is now, and who the proxy says it is. The
/// file is the kubelet's (a read-only volume it rewrites before the token expires): read,
/// never removed, and not held to mode 0600, which a projected volume does not have.
fn service_account_proof(path: &str, control: &crate::config::ControlConfig) -> Result<Proof, CertifyError> {
    let token = std::fs::read_to_string(path)
        .map_err(|source| CertifyError::ServiceAccountToken { path: path.to_string(), source })?;
    Ok(Proof::ServiceAccountToken(tarmac_proto::identity::ServiceAccountToken {
        token: token.trim().to_string(),
        namespace: control.namespace.clone(),
        service_account: control.service_account.clone(),
    }))
}

/// The one-time bootstrap token, from the inherited pipe or the file, neither of which
/// outlives this read: a token left where the proxy's uid can read it again could be
/// taken by whatever else runs as that uid.
fn bootstrap_token(identity: &IdentityConfig) -> Result<String, TokenError> {
    let raw = match (identity.token_fd, &identity.token_file) {
        (Some(_), Some(_)) => return Err(TokenError::Both),
        (Some(fd), None) => tarmac_transport::process::read_inherited(fd).map_err(TokenError::Fd)?,
        (None, Some(path)) => {
            use std::os::unix::fs::PermissionsExt;
            let read = |source| TokenError::Read { path: path.clone(), source };
            let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(TokenError::Readable { path: path.clone(), mode: mode & 0o777 });
            }
            let raw = std::fs::read(path).map_err(read)?;
            std::fs::remove_file(path).map_err(|source| TokenError::Remove { path: path.clone(), source })?;
            raw
        }
        (None, None) => return Err(TokenError::Neither),
    };
    let token = String::from_utf8(raw).map_err(|_| TokenError::NotText)?;
    Ok(token.trim().to_string())
}

impl Running {
    /// Stops accepting, lets in-flight work finish for up to `limits.drain_timeout`, then
    /// returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.admin.ready.store(false, Ordering::Release);
        self.shared.drain.cancel();
        self.shared.tasks.close();
        let drained = tokio::time::timeout(self.drain_timeout, self.shared.tasks.wait()).await.is_ok();
        self.admin_stop.cancel();
        drained
    }

    /// Resolves when the proxy cannot go on, with the reason; pending forever otherwise.
    /// The caller should shut down and exit with a failure status: a supervisor (`tarmac
    /// up`, Kubernetes) then starts it again, and it bootstraps a new identity.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        match fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The renewal task ended without a failure (the proxy is draining).
            Err(_) => std::future::pending().await,
        }
    }

    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        self.shared.tasks.len()
    }
}
