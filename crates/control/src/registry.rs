//! Running workload instances: where each replica's proxy can be reached.
//!
//! In local mode `tarmac up` fills this as it starts processes; on Kubernetes it will come
//! from Pods and EndpointSlices. Discovery joins it with the desired state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// One running replica of a workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Instance {
    pub namespace: String,
    pub workload: String,
    pub replica: u32,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Where to send its traffic: its proxy's inbound listener when `meshed`, otherwise the
    /// app itself.
    pub addr: SocketAddr,
    pub meshed: bool,
    /// Its proxy's admin listener (`/metrics`, `/tap`, `/ready`), where telemetry scrapes
    /// and taps it; None for an instance without a proxy.
    pub admin: Option<SocketAddr>,
}

/// The current set of instances, published to discovery streams.
#[derive(Clone, Debug)]
pub struct Registry {
    tx: Arc<watch::Sender<Arc<Vec<Instance>>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(Arc::new(Vec::new())).0) }
    }
}

impl Registry {
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Instance>>> {
        self.tx.subscribe()
    }

    /// Replaces the whole set.
    pub fn set(&self, instances: Vec<Instance>) {
        self.tx.send_replace(Arc::new(instances));
    }

    /// Adds or replaces one instance (same namespace, workload and replica).
    pub fn upsert(&self, instance: Instance) {
        self.tx.send_modify(|all| {
            let mut next: Vec<Instance> = all
                .iter()
                .filter(|i| {
                    !(i.namespace == instance.namespace
                        && i.workload == instance.workload
                        && i.replica == instance.replica)
                })
                .cloned()
                .collect();
            next.push(instance);
            *all = Arc::new(next);
        });
    }

    /// Removes one instance.
    pub fn remove(&self, namespace: &str, workload: &str, replica: u32) {
        self.tx.send_modify(|all| {
            let next: Vec<Instance> = all
                .iter()
                .filter(|i| !(i.namespace == namespace && i.workload == workload && i.replica == replica))
                .cloned()
                .collect();
            *all = Arc::new(next);
        });
    }
}
