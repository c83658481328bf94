//! Wiring: binds every listener, starts the accept loops, and drains on shutdown.

use crate::admin::Admin;
use crate::config::Config;
use crate::conn::Shared;
use crate::discovery::ControlClient;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
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
pub async fn start(config: Config) -> Result<Running, BindError> {
    let metrics = Arc::new(Metrics::new());
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
    shared.own_addrs = std::iter::once(bound.admin)
        .chain(bound.inbound)
        .chain(bound.outbound_transparent)
        .chain(bound.services.iter().map(|(_, a)| *a))
        .collect();
    let shared = Arc::new(shared);

    if let (Some(config), Some(listener)) = (config.inbound.clone(), inbound_listener) {
        let inbound = Arc::new(Inbound::new(config));
        tokio::spawn(inbound.serve(listener, shared.clone()));
    }
    if let Some(outbound_config) = &config.outbound {
        let (outbound, services) = Outbound::new(outbound_config, &shared);
        if let Some(control) = &config.control {
            let client = ControlClient::new(control);
            for (svc_config, (svc, _)) in outbound_config.services.iter().zip(&services) {
                if let Some(discover) = &svc_config.discover {
                    tokio::spawn(client.clone().watch_service(
                        discover.clone(),
                        svc.forward.clone(),
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
