//! Wiring: binds every listener, starts the accept loops, and drains on shutdown.

use crate::admin::Admin;
use crate::config::{Config, IdentityConfig};
use crate::conn::Shared;
use crate::discovery::ControlClient;
use crate::identity::MeshTls;
use crate::identity::certify::Certifier;
use crate::identity::store::CertStore;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
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
    Identity(String),
}

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
    let control = config.control.as_ref().map(ControlClient::new);
    let drain = CancellationToken::new();
    let tls = match &config.identity {
        Some(identity) => Some(Arc::new(
            setup_identity(identity, &config, control.as_ref(), &metrics, &drain)
                .await
                .map_err(StartError::Identity)?,
        )),
        None => None,
    };
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

    if let (Some(config), Some(listener)) = (config.inbound.clone(), inbound_listener) {
        let inbound = Arc::new(Inbound::new(config));
        tokio::spawn(inbound.serve(listener, shared.clone()));
    }
    if let Some(outbound_config) = &config.outbound {
        let (outbound, services) = Outbound::new(outbound_config, &shared);
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
                tokio::spawn(Outbound::serve_explicit(svc, listener, shared.clone()));
            }
        }
        if let Some(listener) = transparent_listener {
            tokio::spawn(Arc::new(outbound).serve_transparent(listener, shared.clone()));
        }
    }

    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        ready: false.into(),
        config_yaml: config.to_yaml(),
        tap: shared.tap.clone(),
        certs: tls.as_ref().map(|t| t.certs.clone()),
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
    })
}

/// The workload certificate (from files, or from the control plane with renewal started)
/// and the TLS state built on it.
async fn setup_identity(
    identity: &IdentityConfig,
    config: &Config,
    control: Option<&ControlClient>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<MeshTls, String> {
    let read = |path: &str, what: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {path}: {e}"))
    };
    let anchors = read(&identity.trust_anchors, "trust anchors (`identity.trust_anchors`)")?;
    let certs = Arc::new(CertStore::default());
    let mode = config.inbound.as_ref().map(|i| i.mtls).unwrap_or_default();
    let tls =
        MeshTls::new(&anchors, &identity.trust_anchors, certs.clone(), mode).map_err(|e| e.to_string())?;
    if let Some(files) = &identity.certificate {
        let chain = tarmac_identity::ca::pem_certs(&read(&files.cert, "certificate")?)
            .map_err(|e| format!("{}: {e}", files.cert))?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(read(&files.key, "key")?.as_bytes())
            .map_err(|e| format!("{}: not a PEM private key: {e}", files.key))?;
        let current = certs.install(chain, key).map_err(|e| format!("{}: {e}", files.cert))?;
        let expiry = current.info.not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        metrics.cert_expiry.set(expiry.as_secs() as i64);
        return Ok(tls);
    }
    let (Some(control), Some(control_config)) = (control, &config.control) else {
        return Err("`identity` without `certificate` needs `control`".into());
    };
    let token = match &identity.token_file {
        Some(path) => read(path, "bootstrap token (`identity.token_file`)")?.trim().to_string(),
        None => std::env::var(ENV_IDENTITY_TOKEN)
            .map_err(|_| format!("no bootstrap token: set `identity.token_file` or {ENV_IDENTITY_TOKEN}"))?,
    };
    let requested = tarmac_identity::SpiffeId::new(
        tarmac_identity::DEFAULT_TRUST_DOMAIN,
        &control_config.namespace,
        &control_config.service_account,
    )
    .map_err(|e| e.to_string())?;
    let mut certifier = Certifier::new(control.channel(), requested, certs, metrics.clone())?;
    certifier.bootstrap(token).await?;
    tokio::spawn(certifier.renew_forever(stop.clone()));
    Ok(tls)
}

/// The environment variable that carries the bootstrap token when no file is configured.
pub const ENV_IDENTITY_TOKEN: &str = "TARMAC_PROXY_IDENTITY_TOKEN";

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

    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        self.shared.tasks.len()
    }
}
