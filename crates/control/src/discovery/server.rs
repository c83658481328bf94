//! The discovery gRPC service.
//!
//! Each `WatchService` stream (and each `WatchInbound` stream, a workload's own inbound
//! policy) follows the desired state and the running instances and
//! sends the recomputed [`ServiceUpdate`] whenever either changes and the result differs
//! from what this stream last sent. A stream lives until its proxy goes away.
//!
//! Live streams are listed in [`Subscriptions`] with the newest configuration generation
//! each has taken into account, so that `tarmac check` can say which proxies are
//! connected and whether they follow the configuration in force.

use super::{compute, inbound, telemetry};
use crate::registry::{Instance, Registry};
use crate::store::Snapshot;
use futures_util::Stream;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tarmac_model::authz::DefaultPolicy;
use tarmac_model::telemetry::MeshDefaults;
use tarmac_proto::discovery::discovery_server::{Discovery, DiscoveryServer};
use tarmac_proto::discovery::{
    InboundUpdate, ServiceUpdate, TelemetryUpdate, WatchInboundRequest, WatchServiceRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

type UpdateStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
pub struct DiscoveryService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    registry: Registry,
    subscriptions: Subscriptions,
    /// The mesh's default policy, where neither a Workload nor its Namespace sets one.
    default_policy: DefaultPolicy,
    /// The mesh's telemetry where no Telemetry object says (`tarmac up --otlp`).
    telemetry_defaults: MeshDefaults,
}

/// One live `WatchService` stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The proxy's end of the connection: one proxy's streams share one connection.
    pub peer: Option<SocketAddr>,
    /// Who the proxy says it is.
    pub proxy_namespace: String,
    pub proxy_workload: String,
    /// What it watches.
    pub service_namespace: String,
    pub service: String,
    pub port: u16,
    pub since: SystemTime,
    /// The newest configuration generation the stream has computed its state from (it
    /// sends only when that state changed, so this can be newer than `sent_generation`).
    pub seen_generation: u64,
    /// Generation of the last update sent; None before the first.
    pub sent_generation: Option<u64>,
}

/// The live discovery streams, shared between the server and whoever reports on it.
#[derive(Clone, Debug, Default)]
pub struct Subscriptions {
    inner: Arc<Mutex<SubscriptionTable>>,
}

#[derive(Debug, Default)]
struct SubscriptionTable {
    next_id: u64,
    live: BTreeMap<u64, Subscription>,
}

impl Subscriptions {
    /// Every live stream, oldest first.
    pub fn list(&self) -> Vec<Subscription> {
        self.lock().live.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SubscriptionTable> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, subscription: Subscription) -> SubscriptionGuard {
        let mut table = self.lock();
        let id = table.next_id;
        table.next_id += 1;
        table.live.insert(id, subscription);
        SubscriptionGuard { subscriptions: self.clone(), id }
    }
}

/// Keeps one stream listed; removes it when the stream is dropped (the proxy went away).
struct SubscriptionGuard {
    subscriptions: Subscriptions,
    id: u64,
}

impl SubscriptionGuard {
    fn update(&self, change: impl FnOnce(&mut Subscription)) {
        if let Some(s) = self.subscriptions.lock().live.get_mut(&self.id) {
            change(s);
        }
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.subscriptions.lock().live.remove(&self.id);
    }
}

impl DiscoveryService {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, registry: Registry) -> Self {
        Self {
            snapshots,
            registry,
            subscriptions: Subscriptions::default(),
            default_policy: DefaultPolicy::AllowAll,
            telemetry_defaults: MeshDefaults::default(),
        }
    }

    pub fn with_telemetry_defaults(mut self, defaults: MeshDefaults) -> Self {
        self.telemetry_defaults = defaults;
        self
    }

    pub fn with_default_policy(mut self, default_policy: DefaultPolicy) -> Self {
        self.default_policy = default_policy;
        self
    }

    /// The live streams of this service (and of its clones).
    pub fn subscriptions(&self) -> Subscriptions {
        self.subscriptions.clone()
    }

    pub fn into_server(self) -> DiscoveryServer<Self> {
        DiscoveryServer::new(self)
    }
}

/// State for one stream: the receivers it follows and what it sent last.
struct Watch {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    instances: watch::Receiver<Arc<Vec<Instance>>>,
    last: Option<ServiceUpdate>,
    /// The calling proxy's namespace: consumer routes there apply to it.
    caller_namespace: String,
    namespace: String,
    name: String,
    port: u16,
    listed: SubscriptionGuard,
}

impl Watch {
    async fn next(&mut self) -> Option<ServiceUpdate> {
        loop {
            let update = {
                let snapshot = self.snapshots.borrow_and_update().clone();
                let instances = self.instances.borrow_and_update().clone();
                compute(&snapshot, &instances, &self.caller_namespace, &self.namespace, &self.name, self.port)
            };
            let generation = update.generation;
            self.listed.update(|s| s.seen_generation = generation);
            // The generation alone changing is no news for this service.
            let same = self
                .last
                .as_ref()
                .is_some_and(|last| ServiceUpdate { generation: last.generation, ..update.clone() } == *last);
            if !same {
                self.last = Some(update.clone());
                self.listed.update(|s| s.sent_generation = Some(generation));
                return Some(update);
            }
            tokio::select! {
                changed = self.snapshots.changed() => changed.ok()?,
                changed = self.instances.changed() => changed.ok()?,
            }
        }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchServiceStream = UpdateStream<ServiceUpdate>;
    type WatchInboundStream = UpdateStream<InboundUpdate>;
    type WatchTelemetryStream = UpdateStream<TelemetryUpdate>;

    async fn watch_telemetry(
        &self,
        request: Request<WatchInboundRequest>,
    ) -> Result<Response<Self::WatchTelemetryStream>, Status> {
        let caller = request.extensions().get::<crate::grpc::Caller>().cloned();
        let proxy = request.into_inner().proxy.unwrap_or_default();
        // As for the inbound policy: a proxy learns its own namespace's settings only.
        if let Some(caller) = &caller {
            caller.check(super::namespace_of(&proxy), &proxy.service_account)?;
        }
        if proxy.workload.is_empty() {
            return Err(Status::invalid_argument(
                "the proxy names no workload (`control.workload`): its telemetry cannot be known",
            ));
        }
        let defaults = self.telemetry_defaults.clone();
        let compute = move |snapshot: &Snapshot, instances: &[Instance]| {
            telemetry::compute(snapshot, instances, &defaults, &proxy)
        };
        Ok(Response::new(WorkloadWatch::stream(self.snapshots.clone(), self.registry.subscribe(), compute)))
    }

    async fn watch_service(
        &self,
        request: Request<WatchServiceRequest>,
    ) -> Result<Response<Self::WatchServiceStream>, Status> {
        // Over TLS the certificate says who calls, and the claim must match it.
        let caller = request.extensions().get::<crate::grpc::Caller>().cloned();
        let peer: Option<SocketAddr> = caller.as_ref().map_or_else(|| request.remote_addr(), |c| c.remote);
        let req = request.into_inner();
        if let Some(caller) = &caller {
            let claimed = req.proxy.clone().unwrap_or_default();
            caller.check(super::namespace_of(&claimed), &claimed.service_account)?;
        }
        let port = u16::try_from(req.port).map_err(|_| Status::invalid_argument("port must be 1-65535"))?;
        if req.service.is_empty() || port == 0 {
            return Err(Status::invalid_argument("service and port are required"));
        }
        let namespace = if req.namespace.is_empty() { "default".to_string() } else { req.namespace };
        let caller_namespace = match req.proxy.as_ref().map(|p| p.namespace.as_str()) {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => "default".to_string(),
        };
        tracing::debug!(?peer, service = %req.service, %namespace, port, "watch service");
        let proxy = req.proxy.unwrap_or_default();
        let listed = self.subscriptions.add(Subscription {
            peer,
            proxy_namespace: if proxy.namespace.is_empty() { "default".to_string() } else { proxy.namespace },
            proxy_workload: proxy.workload,
            service_namespace: namespace.clone(),
            service: req.service.clone(),
            port,
            since: SystemTime::now(),
            seen_generation: 0,
            sent_generation: None,
        });
        let watch = Watch {
            snapshots: self.snapshots.clone(),
            instances: self.registry.subscribe(),
            last: None,
            caller_namespace,
            namespace,
            name: req.service,
            port,
            listed,
        };
        let stream = futures_util::stream::unfold(watch, |mut w| async move {
            let update = w.next().await?;
            Some((Ok(update), w))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch_inbound(
        &self,
        request: Request<WatchInboundRequest>,
    ) -> Result<Response<Self::WatchInboundStream>, Status> {
        let caller = request.extensions().get::<crate::grpc::Caller>().cloned();
        let peer: Option<SocketAddr> = caller.as_ref().map_or_else(|| request.remote_addr(), |c| c.remote);
        let proxy = request.into_inner().proxy.unwrap_or_default();
        // Over TLS a proxy gets the policy of its own namespace and service account only:
        // what its certificate proves (the workload name is its claim within them).
        if let Some(caller) = &caller {
            caller.check(super::namespace_of(&proxy), &proxy.service_account)?;
        }
        if proxy.workload.is_empty() {
            return Err(Status::invalid_argument(
                "the proxy names no workload (`control.workload`): its inbound policy cannot be known",
            ));
        }
        tracing::debug!(?peer, namespace = %proxy.namespace, workload = %proxy.workload, "watch inbound");
        let mesh_default = self.default_policy;
        let compute = move |snapshot: &Snapshot, instances: &[Instance]| {
            inbound::compute(snapshot, instances, mesh_default, &proxy)
        };
        Ok(Response::new(WorkloadWatch::stream(self.snapshots.clone(), self.registry.subscribe(), compute)))
    }
}

/// A workload's update (inbound policy, telemetry): equal to the last one sent but for its
/// generation, it is no change and is not sent.
trait WorkloadUpdate: Clone + PartialEq + Send + 'static {
    fn generation(&self) -> u64;
    fn with_generation(self, generation: u64) -> Self;
}

impl WorkloadUpdate for InboundUpdate {
    fn generation(&self) -> u64 {
        self.generation
    }
    fn with_generation(self, generation: u64) -> Self {
        Self { generation, ..self }
    }
}

impl WorkloadUpdate for TelemetryUpdate {
    fn generation(&self) -> u64 {
        self.generation
    }
    fn with_generation(self, generation: u64) -> Self {
        Self { generation, ..self }
    }
}

/// One workload's stream (`WatchInbound`, `WatchTelemetry`): what `compute` makes of the
/// desired state and the running instances, sent again whenever that changes.
struct WorkloadWatch<U, F> {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    instances: watch::Receiver<Arc<Vec<Instance>>>,
    compute: F,
    last: Option<U>,
}

impl<U, F> WorkloadWatch<U, F>
where
    U: WorkloadUpdate,
    F: FnMut(&Snapshot, &[Instance]) -> U + Send + 'static,
{
    fn stream(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        instances: watch::Receiver<Arc<Vec<Instance>>>,
        compute: F,
    ) -> UpdateStream<U> {
        let watch = Self { snapshots, instances, compute, last: None };
        Box::pin(futures_util::stream::unfold(watch, |mut w| async move {
            let update = w.next().await?;
            Some((Ok(update), w))
        }))
    }

    async fn next(&mut self) -> Option<U> {
        loop {
            let update = {
                let snapshot = self.snapshots.borrow_and_update().clone();
                let instances = self.instances.borrow_and_update().clone();
                (self.compute)(&snapshot, &instances)
            };
            let same = self
                .last
                .as_ref()
                .is_some_and(|last| update.clone().with_generation(last.generation()) == *last);
            if !same {
                self.last = Some(update.clone());
                return Some(update);
            }
            tokio::select! {
                changed = self.snapshots.changed() => changed.ok()?,
                changed = self.instances.changed() => changed.ok()?,
            }
        }
    }
}
