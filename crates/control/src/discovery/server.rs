//! The discovery gRPC service.
//!
//! Each `WatchService` stream (and each `WatchInbound` stream, a workload's own inbound
//! policy) follows the desired state and the running instances and
//! sends the recomputed [`ServiceUpdate`] whenever either changes and the result differs
//! from what this stream last sent. A stream lives until its proxy goes away.
//!
//! When only the running instances changed, a stream first asks whether any instance it
//! depends on is among those that changed ([`InstanceChanges`], worked out once per change
//! for every stream), and recomputes only then: an endpoint change costs each unconcerned
//! stream a look at a few instances rather than a walk through all of them (at 2000
//! proxies, over 10,000 streams: `tarmac bench --control-plane`, bench/README.md).
//!
//! Live streams are listed in [`Subscriptions`] with the newest configuration generation
//! each has taken into account, so that `tarmac check` can say which proxies are
//! connected and whether they follow the configuration in force.

use super::{compute, inbound, telemetry};
use crate::registry::{Instance, Registry};
use crate::store::Snapshot;
use futures_util::Stream;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;
use tarmac_model::authz::DefaultPolicy;
use tarmac_model::meta::selector_matches;
use tarmac_model::telemetry::MeshDefaults;
use tarmac_model::{ObjectKey, Resource};
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
    changes: InstanceChanges,
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
            changes: InstanceChanges::default(),
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

/// What changed between two versions of the running instances, worked out once for all
/// the streams that follow them.
#[derive(Clone, Default)]
struct InstanceChanges {
    recent: Arc<Mutex<VecDeque<Diff>>>,
}

struct Diff {
    /// Weak: the versions' contents are not kept, but their allocations are, so that no
    /// later version can take their addresses while this entry stands.
    old: Weak<Vec<Instance>>,
    new: Weak<Vec<Instance>>,
    changed: Arc<Vec<Instance>>,
}

/// Version pairs remembered: the streams that keep up all ask about the newest one; one
/// that fell behind asks about its own pair.
const DIFFS_KEPT: usize = 8;

impl InstanceChanges {
    /// The instances in one version and not in the other, either way.
    fn between(&self, old: &Arc<Vec<Instance>>, new: &Arc<Vec<Instance>>) -> Arc<Vec<Instance>> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let same = |weak: &Weak<Vec<Instance>>, arc: &Arc<Vec<Instance>>| {
            std::ptr::eq(weak.as_ptr(), Arc::as_ptr(arc))
        };
        if let Some(diff) = recent.iter().find(|d| same(&d.old, old) && same(&d.new, new)) {
            return diff.changed.clone();
        }
        let before: HashSet<&Instance> = old.iter().collect();
        let after: HashSet<&Instance> = new.iter().collect();
        let changed: Arc<Vec<Instance>> =
            Arc::new(before.symmetric_difference(&after).map(|i| (*i).clone()).collect());
        recent.push_back(Diff {
            old: Arc::downgrade(old),
            new: Arc::downgrade(new),
            changed: changed.clone(),
        });
        while recent.len() > DIFFS_KEPT {
            recent.pop_front();
        }
        changed
    }
}

/// What every stream follows, the desired state and the running instances, and which of
/// their versions it last computed its state from.
struct Inputs {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    instances: watch::Receiver<Arc<Vec<Instance>>>,
    changes: InstanceChanges,
    seen: Option<(Arc<Snapshot>, Arc<Vec<Instance>>)>,
}

impl Inputs {
    fn new(service: &DiscoveryService) -> Self {
        Self {
            snapshots: service.snapshots.clone(),
            instances: service.registry.subscribe(),
            changes: service.changes.clone(),
            seen: None,
        }
    }

    /// The newest versions, marked seen.
    fn latest(&mut self) -> (Arc<Snapshot>, Arc<Vec<Instance>>) {
        (self.snapshots.borrow_and_update().clone(), self.instances.borrow_and_update().clone())
    }

    /// Whether what was computed from the seen versions still holds for these: the same
    /// desired state, and `unaffected` by the instances that changed (not asked when none
    /// did). Records these as seen.
    fn unchanged(
        &mut self,
        snapshot: &Arc<Snapshot>,
        instances: &Arc<Vec<Instance>>,
        unaffected: impl FnOnce(&[Instance]) -> bool,
    ) -> bool {
        let seen = self.seen.replace((snapshot.clone(), instances.clone()));
        let Some((seen_snapshot, seen_instances)) = seen else { return false };
        if !Arc::ptr_eq(&seen_snapshot, snapshot) {
            return false;
        }
        Arc::ptr_eq(&seen_instances, instances)
            || unaffected(&self.changes.between(&seen_instances, instances))
    }

    /// Until either changes; `None` when the control plane is stopping.
    async fn changed(&mut self) -> Option<()> {
        tokio::select! {
            changed = self.snapshots.changed() => changed.ok(),
            changed = self.instances.changed() => changed.ok(),
        }
    }
}

/// State for one stream: what it follows and what it sent last.
struct Watch {
    inputs: Inputs,
    last: Option<ServiceUpdate>,
    /// The calling proxy's namespace: consumer routes there apply to it.
    caller_namespace: String,
    namespace: String,
    name: String,
    port: u16,
    listed: SubscriptionGuard,
}

impl Watch {
    /// Whether the state last computed still holds: the same desired state, and no
    /// changed instance that the Service selects. Not when the last state had routes,
    /// whose backends may be other Services.
    fn unchanged(&mut self, snapshot: &Arc<Snapshot>, instances: &Arc<Vec<Instance>>) -> bool {
        let routed = self.last.as_ref().is_none_or(|last| !last.routes.is_empty());
        let (namespace, name) = (&self.namespace, &self.name);
        let unchanged = self.inputs.unchanged(snapshot, instances, |changed| {
            if routed {
                return false;
            }
            let key = ObjectKey { kind: "Service", namespace: namespace.clone(), name: name.clone() };
            let Some(Resource::Service(service)) = snapshot.objects.get(&key) else {
                // Still absent: no instance makes it exist.
                return true;
            };
            !changed
                .iter()
                .any(|i| &i.namespace == namespace && selector_matches(&service.spec.selector, &i.labels))
        });
        unchanged && !routed
    }

    async fn next(&mut self) -> Option<ServiceUpdate> {
        loop {
            let (snapshot, instances) = self.inputs.latest();
            if self.unchanged(&snapshot, &instances) {
                self.inputs.changed().await?;
                continue;
            }
            let update = compute(
                &snapshot,
                &instances,
                &self.caller_namespace,
                &self.namespace,
                &self.name,
                self.port,
            );
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
            self.inputs.changed().await?;
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
        let workload = (super::namespace_of(&proxy).to_string(), proxy.workload.clone());
        let compute = move |snapshot: &Snapshot, instances: &[Instance]| {
            telemetry::compute(snapshot, instances, &defaults, &proxy)
        };
        Ok(Response::new(self.workload_watch(workload, compute)))
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
            inputs: Inputs::new(self),
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
        let workload = (super::namespace_of(&proxy).to_string(), proxy.workload.clone());
        let compute = move |snapshot: &Snapshot, instances: &[Instance]| {
            inbound::compute(snapshot, instances, mesh_default, &proxy)
        };
        Ok(Response::new(self.workload_watch(workload, compute)))
    }
}

impl DiscoveryService {
    fn workload_watch<U, F>(&self, workload: (String, String), compute: F) -> UpdateStream<U>
    where
        U: WorkloadUpdate,
        F: FnMut(&Snapshot, &[Instance]) -> U + Send + 'static,
    {
        let watch = WorkloadWatch { inputs: Inputs::new(self), compute, last: None, workload };
        Box::pin(futures_util::stream::unfold(watch, |mut w| async move {
            let update = w.next().await?;
            Some((Ok(update), w))
        }))
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
/// desired state and the running instances, sent again whenever that changes. Of the
/// instances only the workload's own count (its labels, where no Workload object gives
/// them).
struct WorkloadWatch<U, F> {
    inputs: Inputs,
    compute: F,
    last: Option<U>,
    /// Namespace and name.
    workload: (String, String),
}

impl<U, F> WorkloadWatch<U, F>
where
    U: WorkloadUpdate,
    F: FnMut(&Snapshot, &[Instance]) -> U + Send + 'static,
{
    /// Whether the state last computed still holds: the same desired state, and none of
    /// the workload's instances changed.
    fn unchanged(&mut self, snapshot: &Arc<Snapshot>, instances: &Arc<Vec<Instance>>) -> bool {
        let (namespace, workload) = &self.workload;
        let unchanged = self.inputs.unchanged(snapshot, instances, |changed| {
            !changed.iter().any(|i| &i.namespace == namespace && &i.workload == workload)
        });
        unchanged && self.last.is_some()
    }

    async fn next(&mut self) -> Option<U> {
        loop {
            let (snapshot, instances) = self.inputs.latest();
            if self.unchanged(&snapshot, &instances) {
                self.inputs.changed().await?;
                continue;
            }
            let update = (self.compute)(&snapshot, &instances);
            let same = self
                .last
                .as_ref()
                .is_some_and(|last| update.clone().with_generation(last.generation()) == *last);
            if !same {
                self.last = Some(update.clone());
                return Some(update);
            }
            self.inputs.changed().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(workload: &str, addr: &str) -> Instance {
        Instance {
            namespace: "shop".into(),
            workload: workload.into(),
            replica: 0,
            labels: BTreeMap::from([("app".to_string(), workload.to_string())]),
            service_account: workload.into(),
            addr: addr.parse().unwrap(),
            meshed: true,
            admin: None,
        }
    }

    #[test]
    fn the_changed_instances_are_worked_out_once_per_pair_of_versions() {
        let changes = InstanceChanges::default();
        let old = Arc::new(vec![instance("books", "10.0.0.1:80"), instance("authors", "10.0.0.2:80")]);
        let new = Arc::new(vec![instance("books", "10.0.0.3:80"), instance("authors", "10.0.0.2:80")]);
        let changed = changes.between(&old, &new);
        let mut addrs: Vec<String> = changed.iter().map(|i| i.addr.to_string()).collect();
        addrs.sort();
        assert_eq!(
            addrs,
            ["10.0.0.1:80", "10.0.0.3:80"],
            "the replaced pod, both ways; not the one that stayed"
        );
        assert!(Arc::ptr_eq(&changed, &changes.between(&old, &new)), "the second stream reuses the first's");
        // An equal list in a new allocation is another version: worked out, and empty.
        let same_again = Arc::new((*new).clone());
        assert!(changes.between(&new, &same_again).is_empty());
    }
}
