//! A local mesh for one case: the control plane in-process (`tarmac_control::start`,
//! discovery only), and for every replica of every Workload a pod made of an echo server
//! and a real `tarmac-proxy` sidecar (in-process, explicit mode) with an outbound listener
//! per Service port.

use crate::echo::{self, Log, Pod};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarmac_control::registry::Instance;
use tarmac_control::store::Snapshot;
use tarmac_model::Resource;
use tarmac_proxy::config::{
    ControlConfig, DiscoverConfig, InboundConfig, Limits, MtlsMode, OutboundConfig, Protocol, ServiceConfig,
};
use tokio::sync::watch;

/// A Service port as a sidecar's outbound listener knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

pub struct RunningPod {
    pub pod: Pod,
    /// The sidecar's inbound listener: the pod's address for traffic straight to it.
    pub inbound: SocketAddr,
    /// The sidecar's outbound listener for each Service port.
    pub listeners: BTreeMap<ServicePort, SocketAddr>,
    /// What the pod's echo received.
    pub log: Log,
    proxy: tarmac_proxy::Running,
    echo: tokio::task::JoinHandle<()>,
}

pub struct Mesh {
    pub pods: Vec<RunningPod>,
    control: tarmac_control::Running,
    /// The snapshot's sender: discovery streams end when it is gone.
    _snapshots: watch::Sender<Arc<Snapshot>>,
}

/// A stable pod-template-hash-like string for a workload, and a random pod suffix.
fn pod_hostname(workload: &str) -> String {
    let hash = workload
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let pick = |n: u64, len: usize| -> String {
        let mut n = n;
        (0..len)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
                n /= ALPHABET.len() as u64;
                c
            })
            .collect()
    };
    format!("{workload}-{}-{}", pick(hash, 10), pick(fastrand::u64(..), 5))
}

/// What kept the case's mesh from starting.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("control plane: {0}")]
    Bind(#[source] tarmac_control::BindError),
    #[error("control plane: {0}")]
    ControlPlane(#[source] tarmac_control::StartError),
    #[error("echo server: {0}")]
    Echo(#[source] std::io::Error),
    #[error("sidecar configuration: {0}")]
    SidecarConfig(#[source] tarmac_proxy::config::ConfigError),
    #[error("sidecar: {0}")]
    Sidecar(#[source] tarmac_proxy::app::StartError),
    #[error("the sidecar has no inbound listener")]
    NoInbound,
}

impl Mesh {
    pub async fn start(snapshot: Snapshot) -> Result<Self, MeshError> {
        let snapshot = Arc::new(snapshot);
        let service_ports: Vec<ServicePort> = snapshot
            .iter_kind("Service")
            .filter_map(|r| match r {
                Resource::Service(s) => Some(s),
                _ => None,
            })
            .flat_map(|s| {
                s.spec.ports.iter().map(|p| ServicePort {
                    namespace: s.metadata.namespace.clone(),
                    name: s.metadata.name.clone(),
                    port: p.port,
                })
            })
            .collect();
        let (keep, snapshots) = watch::channel(snapshot.clone());
        let listeners = tarmac_control::Listeners::bind(([127, 0, 0, 1], 0).into(), &[])
            .await
            .map_err(MeshError::Bind)?;
        let control_plane = tarmac_control::start(
            tarmac_control::Config::snapshots(snapshots),
            listeners,
            std::future::pending(),
        )
        .await
        .map_err(MeshError::ControlPlane)?;
        let control = control_plane.addrs.grpc;
        let registry = control_plane.registry.clone();

        let mut pods = Vec::new();
        let mut instances = Vec::new();
        for resource in snapshot.iter_kind("Workload") {
            let Resource::Workload(w) = resource else { continue };
            for replica in 0..w.spec.replicas {
                let pod = Pod {
                    namespace: w.metadata.namespace.clone(),
                    workload: w.metadata.name.clone(),
                    hostname: pod_hostname(&w.metadata.name),
                };
                let (app, log, echo) = echo::start(pod.clone()).await.map_err(MeshError::Echo)?;
                let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
                let services = service_ports
                    .iter()
                    .map(|sp| ServiceConfig {
                        name: format!("{}.{}:{}", sp.name, sp.namespace, sp.port),
                        listen: Some(any_port),
                        addrs: Vec::new(),
                        protocol: Protocol::default(),
                        endpoints: Vec::new(),
                        discover: Some(DiscoverConfig {
                            service: Some(sp.name.clone()),
                            namespace: sp.namespace.clone(),
                            port: sp.port,
                        }),
                    })
                    .collect();
                let config = tarmac_proxy::Config {
                    admin: any_port,
                    control: Some(ControlConfig {
                        addr: control.into(),
                        namespace: pod.namespace.clone(),
                        workload: pod.workload.clone(),
                        service_account: w.spec.service_account_name.clone(),
                    }),
                    inbound: Some(InboundConfig {
                        listen: any_port,
                        app: Some(app),
                        transparent: false,
                        mtls: MtlsMode::Permissive,
                    }),
                    outbound: Some(OutboundConfig { transparent_listen: None, services }),
                    limits: Limits { drain_timeout: Duration::from_secs(1), ..Limits::default() },
                    ..tarmac_proxy::Config::default()
                };
                config.validate("conformance sidecar").map_err(MeshError::SidecarConfig)?;
                let proxy = tarmac_proxy::start(config).await.map_err(MeshError::Sidecar)?;
                let inbound = proxy.addrs.inbound.ok_or(MeshError::NoInbound)?;
                let listeners = service_ports
                    .iter()
                    .filter_map(|sp| {
                        let name = format!("{}.{}:{}", sp.name, sp.namespace, sp.port);
                        proxy.addrs.service(&name).map(|addr| (sp.clone(), addr))
                    })
                    .collect();
                instances.push(Instance {
                    namespace: pod.namespace.clone(),
                    workload: pod.workload.clone(),
                    replica,
                    labels: w.metadata.labels.clone(),
                    service_account: w.spec.service_account_name.clone(),
                    addr: inbound,
                    meshed: true,
                    admin: Some(proxy.addrs.admin),
                });
                pods.push(RunningPod { pod, inbound, listeners, log, proxy, echo });
            }
        }
        // All at once, as a cluster that is already up: any update a sidecar receives
        // then names every backend's endpoints, so a case that converged once sees the
        // whole mesh (one pod at a time, a weighted run could start before the last
        // backend's endpoints reached the caller).
        registry.set(instances);
        Ok(Self { pods, control: control_plane, _snapshots: keep })
    }

    /// The first pod of `namespace/workload`.
    pub fn pod(&self, namespace: &str, workload: &str) -> Option<&RunningPod> {
        self.pods.iter().find(|p| p.pod.namespace == namespace && p.pod.workload == workload)
    }

    /// Stops the sidecars (draining briefly), the echo servers and the control plane.
    pub async fn stop(self) {
        let mut stopping = Vec::new();
        for pod in self.pods {
            pod.echo.abort();
            stopping.push(tokio::spawn(pod.proxy.shutdown()));
        }
        for s in stopping {
            let _ = s.await;
        }
        self.control.shutdown().await;
    }
}
