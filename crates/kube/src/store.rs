//! The Kubernetes store: desired state from the API server, as complete snapshots.
//!
//! One watcher per kind (kube-runtime: a list, then a watch from its resourceVersion,
//! bookmarks on). Each keeps its kind's objects; a relist (after the watch expired, 410
//! Gone) is buffered and replaces them whole when it completes, so no snapshot ever sees
//! a kind half listed. After any change (debounced) every object is read by the model
//! again, unless its resourceVersion is the one already read, and a complete snapshot is
//! published when it differs from the one in force.
//!
//! An invalid object is refused **on its own**: it is named in [`Status::rejected`]
//! (kind, namespace, name, field) and the snapshot keeps that object's last accepted
//! version, or goes without it if it never had one; every other object is in force. On
//! a cluster the objects are many teams' and already passed the API server's own
//! validation; one team's bad route must not freeze everyone's configuration, which is
//! what the files backend's whole-directory refusal would do here.

use crate::kinds::{MODEL_KINDS, ModelKind};
use crate::translate;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tarmac_control::registry::Registry;
use tarmac_control::store::{Snapshot, Status, Store};
use tarmac_model::{ModelError, ObjectKey, Resource};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// What errors name where a file's name would be.
pub const SOURCE: &str = "kubernetes";

/// How the store follows the API server.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long [`KubeStore::open`] waits for every kind's first list.
    pub sync_timeout: Duration,
    /// Quiet time after a change before the snapshot is rebuilt: a rollout changes many
    /// objects at once, read once.
    pub debounce: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { sync_timeout: Duration::from_secs(60), debounce: Duration::from_millis(100) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Some kinds were never listed: the API server unreachable, the control plane's
    /// ServiceAccount not allowed to list them, or a kind missing.
    #[error(
        "the Kubernetes API did not list {} within {timeout:?}:\n{}",
        .kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        .kinds.iter().map(|(k, e)| format!("  {k}: {e}")).collect::<Vec<_>>().join("\n")
    )]
    NotListed { timeout: Duration, kinds: Vec<(&'static str, String)> },
}

/// One kind's objects as its watcher last saw them.
struct Objects<K> {
    /// Its first list completed (or the kind is optional and not served).
    listed: bool,
    items: BTreeMap<(String, String), Arc<K>>,
    /// The watcher's last error, while it has one.
    error: Option<String>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self { listed: false, items: BTreeMap::new(), error: None }
    }
}

type Follow<K> = watch::Receiver<Arc<Objects<K>>>;

/// Desired state from the API server. Dropping it stops every watch.
pub struct KubeStore {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: watch::Receiver<Arc<Status>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").field("generation", &self.snapshots.borrow().generation).finish()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Store for KubeStore {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    fn status(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }
}

impl KubeStore {
    /// Starts watching every kind in every namespace, waits for their first lists
    /// (bounded by [`Options::sync_timeout`]) and publishes the first snapshot; then
    /// follows changes. The running instances go to `registry`.
    pub async fn open(client: Client, registry: Registry, options: Options) -> Result<Self, OpenError> {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let mut kinds = Vec::new();
        for kind in MODEL_KINDS {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
            let (rx, task) = spawn_follow(api, kind.kind, kind.optional(), changed.clone());
            kinds.push((kind, rx));
            tasks.push(task);
        }
        let (pods, task) = spawn_follow(Api::<Pod>::all(client.clone()), "Pod", false, changed.clone());
        tasks.push(task);
        let (slices, task) =
            spawn_follow(Api::<EndpointSlice>::all(client.clone()), "EndpointSlice", false, changed.clone());
        tasks.push(task);
        let mut builder = Builder { kinds, pods, slices, registry, read: HashMap::new() };

        let deadline = tokio::time::Instant::now() + options.sync_timeout;
        while let Some(missing) = builder.not_listed() {
            if tokio::time::Instant::now() >= deadline {
                tasks.iter().for_each(JoinHandle::abort);
                return Err(OpenError::NotListed { timeout: options.sync_timeout, kinds: missing });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (objects, rejected) = builder.build();
        let (snap_tx, snapshots) = watch::channel(Arc::new(Snapshot { generation: 1, objects }));
        let (status_tx, status) =
            watch::channel(Arc::new(Status { generation: 1, rejected, checked_at: Some(SystemTime::now()) }));
        tracing::info!(objects = snapshots.borrow().objects.len(), "the Kubernetes API listed");
        tasks.push(tokio::spawn(builder.run(changed, options.debounce, snap_tx, status_tx)));
        Ok(Self { snapshots, status, tasks })
    }
}

/// Follows one kind on a task of its own.
fn spawn_follow<K>(
    api: Api<K>,
    name: &'static str,
    optional: bool,
    changed: Arc<Notify>,
) -> (Follow<K>, JoinHandle<()>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(Arc::new(Objects::default()));
    (rx, tokio::spawn(follow(api, name, optional, tx, changed)))
}

fn key_of<K: kube::Resource>(object: &K) -> (String, String) {
    let meta = object.meta();
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

async fn follow<K>(
    api: Api<K>,
    name: &'static str,
    optional: bool,
    tx: watch::Sender<Arc<Objects<K>>>,
    changed: Arc<Notify>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut live: BTreeMap<(String, String), Arc<K>> = BTreeMap::new();
    let mut listed = false;
    // A relist's objects, until it completes.
    let mut relist: Option<BTreeMap<(String, String), Arc<K>>> = None;
    while let Some(event) = stream.next().await {
        let mut error = None;
        match event {
            Ok(Event::Init) => {
                relist = Some(BTreeMap::new());
                continue;
            }
            Ok(Event::InitApply(object)) => {
                relist.get_or_insert_default().insert(key_of(&object), Arc::new(object));
                continue;
            }
            Ok(Event::InitDone) => {
                live = relist.take().unwrap_or_default();
                if listed {
                    tracing::info!(kind = name, objects = live.len(), "listed again");
                }
                listed = true;
            }
            Ok(Event::Apply(object)) => {
                live.insert(key_of(&object), Arc::new(object));
            }
            Ok(Event::Delete(object)) => {
                live.remove(&key_of(&object));
            }
            Err(e) => {
                let not_served = matches!(
                    &e,
                    watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.is_not_found()
                );
                if not_served && optional {
                    // Its CRD is not installed: no objects of it, until it is (the watcher
                    // keeps trying, with backoff: said once, not at every try).
                    if !listed {
                        tracing::warn!(
                            kind = name,
                            "not served by the API server (CRD not installed?): none read"
                        );
                    }
                    listed = true;
                } else if matches!(&e, watcher::Error::WatchError(status) if status.code == 410) {
                    tracing::info!(kind = name, "watch expired (410 Gone): listing again");
                } else {
                    tracing::warn!(kind = name, "watching: {e}");
                }
                error = Some(e.to_string());
            }
        }
        tx.send_replace(Arc::new(Objects { listed, items: live.clone(), error }));
        changed.notify_one();
    }
}

/// Turns what the watchers hold into snapshots and instances.
struct Builder {
    kinds: Vec<(&'static ModelKind, Follow<DynamicObject>)>,
    pods: Follow<Pod>,
    slices: Follow<EndpointSlice>,
    registry: Registry,
    /// Each object as the model last read it, by the resourceVersion read: read again
    /// only when it changes. A refused object keeps its last accepted version here.
    read: HashMap<ObjectKey, Read>,
}

struct Read {
    resource_version: Option<String>,
    outcome: Result<Resource, Vec<ModelError>>,
    /// The last version accepted, kept in force while a later one is refused.
    accepted: Option<Resource>,
}

impl Builder {
    /// The kinds whose first list has not completed, with their watchers' errors.
    fn not_listed(&self) -> Option<Vec<(&'static str, String)>> {
        let mut missing = Vec::new();
        let mut check = |name: &'static str, listed: bool, error: &Option<String>| {
            if !listed {
                missing.push((name, error.clone().unwrap_or_else(|| "no answer yet".into())));
            }
        };
        for (kind, rx) in &self.kinds {
            let objects = rx.borrow();
            check(kind.kind, objects.listed, &objects.error);
        }
        let pods = self.pods.borrow();
        check("Pod", pods.listed, &pods.error);
        let slices = self.slices.borrow();
        check("EndpointSlice", slices.listed, &slices.error);
        (!missing.is_empty()).then_some(missing)
    }

    /// The objects in force and the refusals, and the instances published to the
    /// registry.
    fn build(&mut self) -> (BTreeMap<ObjectKey, Resource>, Vec<ModelError>) {
        let mut objects = BTreeMap::new();
        let mut rejected = Vec::new();
        let mut seen = Vec::new();
        for (kind, rx) in &self.kinds {
            let current = rx.borrow().clone();
            for object in current.items.values() {
                let namespace = match kind.namespaced {
                    true => object.metadata.namespace.clone().unwrap_or_default(),
                    false => tarmac_model::meta::DEFAULT_NAMESPACE.to_string(),
                };
                let key = ObjectKey {
                    kind: kind.kind,
                    namespace,
                    name: object.metadata.name.clone().unwrap_or_default(),
                };
                let version = object.metadata.resource_version.clone();
                let read = self.read.entry(key.clone()).or_insert(Read {
                    resource_version: None,
                    outcome: Err(Vec::new()),
                    accepted: None,
                });
                if read.resource_version.is_none() || read.resource_version != version {
                    read.resource_version = version;
                    read.outcome = match translate::model_document(kind, object) {
                        Ok(document) => tarmac_model::parse_object(SOURCE, document),
                        Err(why) => {
                            tracing::debug!(object = %key, "not the mesh's: {why}");
                            Err(Vec::new())
                        }
                    };
                    match &read.outcome {
                        Ok(resource) => read.accepted = Some(resource.clone()),
                        Err(errors) => {
                            for e in errors {
                                tracing::warn!(
                                    "refused, its last accepted version (if any) stays in force: {e}"
                                );
                            }
                        }
                    }
                }
                match &read.outcome {
                    Ok(resource) => {
                        objects.insert(key.clone(), resource.clone());
                    }
                    Err(errors) => {
                        rejected.extend(errors.iter().cloned());
                        if let Some(resource) = &read.accepted {
                            objects.insert(key.clone(), resource.clone());
                        }
                    }
                }
                seen.push(key);
            }
        }
        let seen: std::collections::HashSet<ObjectKey> = seen.into_iter().collect();
        self.read.retain(|key, _| seen.contains(key));

        let pods: Vec<Arc<Pod>> = self.pods.borrow().items.values().cloned().collect();
        let slices: Vec<Arc<EndpointSlice>> = self.slices.borrow().items.values().cloned().collect();
        let instances = translate::instances(&pods, &slices);
        if **self.registry.subscribe().borrow() != instances {
            self.registry.set(instances);
        }
        (objects, rejected)
    }

    async fn run(
        mut self,
        changed: Arc<Notify>,
        debounce: Duration,
        snapshots: watch::Sender<Arc<Snapshot>>,
        status: watch::Sender<Arc<Status>>,
    ) {
        loop {
            changed.notified().await;
            tokio::time::sleep(debounce).await;
            let (objects, rejected) = self.build();
            let current = snapshots.borrow().clone();
            let generation = if objects == current.objects {
                current.generation
            } else {
                let generation = current.generation + 1;
                tracing::info!(generation, objects = objects.len(), "configuration from the Kubernetes API");
                snapshots.send_replace(Arc::new(Snapshot { generation, objects }));
                generation
            };
            let next = Status { generation, rejected, checked_at: Some(SystemTime::now()) };
            let old = status.borrow().clone();
            if old.generation != next.generation || old.rejected != next.rejected {
                status.send_replace(Arc::new(next));
            }
        }
    }
}
