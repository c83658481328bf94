//! The simulated cluster: N Services in a few namespaces, M pods each with the sidecar
//! injected, one EndpointSlice per Service, and the churn a cluster sees: a pod going
//! unready and ready again (its probe failing for a while), or replaced by a new pod at a
//! new address (a rollout), each as the kubelet and the EndpointSlice controller write it.

use super::apiserver::{ApiServer, NAMESPACES, PODS, SERVICES, SLICES};
use serde_json::{Value, json};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The port every Service exposes and the pods' port behind it.
pub const SERVICE_PORT: u16 = 80;
pub const POD_PORT: u16 = 8080;
/// Namespaces the Services are spread over.
const NAMESPACE_COUNT: usize = 10;
/// Pod addresses: loopback, so that nothing ever leaves the machine even if something
/// did connect to one (the simulated proxies do not).
const FIRST_POD_IP: Ipv4Addr = Ipv4Addr::new(127, 16, 0, 1);

pub struct Cluster {
    pub services: Vec<Service>,
    next_ip: u32,
    next_pod: u64,
}

pub struct Service {
    pub namespace: String,
    pub name: String,
    pods: Vec<Pod>,
    /// When its last change started: a service is not changed again within the cooldown,
    /// so that each change can be seen on its own.
    last_change: Option<Instant>,
}

#[derive(Clone)]
struct Pod {
    name: String,
    ip: Ipv4Addr,
    ready: bool,
}

/// What one churn step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Unready,
    Ready,
    Replaced,
}

impl Cluster {
    pub fn new(services: usize, endpoints: usize) -> Self {
        let mut cluster =
            Self { services: Vec::with_capacity(services), next_ip: u32::from(FIRST_POD_IP), next_pod: 0 };
        let namespaces = NAMESPACE_COUNT.min(services.max(1));
        for i in 0..services {
            let mut service = Service {
                namespace: format!("bench-{:02}", i % namespaces),
                name: format!("svc-{i:04}"),
                pods: Vec::new(),
                last_change: None,
            };
            for _ in 0..endpoints {
                let pod = cluster.new_pod(&service.name);
                service.pods.push(pod);
            }
            cluster.services.push(service);
        }
        cluster
    }

    fn new_pod(&mut self, service: &str) -> Pod {
        let ip = Ipv4Addr::from(self.next_ip);
        self.next_ip += 1;
        self.next_pod += 1;
        Pod { name: format!("{service}-{:06}", self.next_pod), ip, ready: true }
    }

    pub fn namespaces(&self) -> Vec<String> {
        let mut namespaces: Vec<String> = self.services.iter().map(|s| s.namespace.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    }

    /// Puts every object in the API server.
    pub fn publish(&self, api: &ApiServer) {
        for namespace in self.namespaces() {
            api.apply(NAMESPACES, json!({"metadata": {"name": namespace}}));
        }
        for service in &self.services {
            api.apply(SERVICES, service.object());
            for pod in &service.pods {
                api.apply(PODS, service.pod_object(pod));
            }
            api.apply(SLICES, service.slice_object(&service.pods));
        }
    }

    /// Service `index`'s endpoint set, as a hash of its sorted addresses.
    pub fn state(&self, index: usize) -> u64 {
        let service = &self.services[index];
        state_of(service.pods.iter().filter(|p| p.ready).map(|p| format!("{}:{POD_PORT}", p.ip)))
    }

    /// Changes one service not changed within `cooldown`, picked with `rng`, and writes
    /// the change to the API server. Returns the service and what was done, or `None`
    /// when every service changed within the cooldown.
    pub fn churn(
        &mut self,
        api: &ApiServer,
        rng: &mut fastrand::Rng,
        cooldown: Duration,
        now: Instant,
    ) -> Option<(usize, ChangeKind)> {
        let eligible = |s: &Service| s.last_change.is_none_or(|at| now.duration_since(at) >= cooldown);
        let count = self.services.len();
        let start = rng.usize(..count);
        let index = (0..count).map(|k| (start + k) % count).find(|&i| eligible(&self.services[i]))?;
        let unready = self.services[index].pods.iter().position(|p| !p.ready);
        let kind = match unready {
            Some(_) => ChangeKind::Ready,
            None if rng.bool() => ChangeKind::Unready,
            None => ChangeKind::Replaced,
        };
        let replacement = (kind == ChangeKind::Replaced).then(|| {
            let name = self.services[index].name.clone();
            self.new_pod(&name)
        });
        let service = &mut self.services[index];
        service.last_change = Some(now);
        match kind {
            ChangeKind::Ready | ChangeKind::Unready => {
                let p = unready.unwrap_or_else(|| rng.usize(..service.pods.len()));
                service.pods[p].ready = kind == ChangeKind::Ready;
                // The kubelet reports the probe's result on the pod; the EndpointSlice
                // controller follows it on the slice.
                api.apply(PODS, service.pod_object(&service.pods[p]));
                api.apply(SLICES, service.slice_object(&service.pods));
            }
            ChangeKind::Replaced => {
                let new = replacement.expect("made above");
                let p = rng.usize(..service.pods.len());
                let old = std::mem::replace(&mut service.pods[p], new.clone());
                // A rollout: the new pod starts and is ready; the slice lists it and
                // marks the old one as going; the old pod is deleted; the slice drops it.
                api.apply(PODS, service.pod_object(&new));
                let mut going = service.pods.clone();
                going.push(Pod { ready: false, ..old.clone() });
                api.apply(SLICES, service.slice_object(&going));
                api.delete(PODS, &service.namespace, &old.name);
                api.apply(SLICES, service.slice_object(&service.pods));
            }
        }
        Some((index, kind))
    }
}

impl Service {
    fn object(&self) -> Value {
        json!({
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": {"app": self.name}},
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": self.name},
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": POD_PORT, "protocol": "TCP",
                           "appProtocol": "http"}]
            }
        })
    }

    fn pod_object(&self, pod: &Pod) -> Value {
        json!({
            "metadata": {
                "name": pod.name, "namespace": self.namespace, "generateName": format!("{}-", self.name),
                "labels": {"app": self.name},
                "annotations": {"tarmac.io/injected": "bench"}
            },
            "spec": {
                "serviceAccountName": self.name,
                "containers": [{"name": "app", "image": "bench", "ports": [{"containerPort": POD_PORT}]}]
            },
            "status": {
                "phase": "Running", "podIP": pod.ip.to_string(),
                "conditions": [{"type": "Ready", "status": if pod.ready { "True" } else { "False" }}]
            }
        })
    }

    fn slice_object(&self, pods: &[Pod]) -> Value {
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|p| {
                json!({"addresses": [p.ip.to_string()], "conditions": {"ready": p.ready},
                       "targetRef": {"kind": "Pod", "name": p.name, "namespace": self.namespace}})
            })
            .collect();
        json!({
            "metadata": {"name": format!("{}-slice", self.name), "namespace": self.namespace,
                         "labels": {"kubernetes.io/service-name": self.name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
            "endpoints": endpoints
        })
    }
}

/// An endpoint set as a hash of its addresses, in any order.
pub fn state_of(addresses: impl Iterator<Item = String>) -> u64 {
    let mut sorted: Vec<String> = addresses.collect();
    sorted.sort();
    let mut hasher = DefaultHasher::new();
    sorted.hash(&mut hasher);
    hasher.finish()
}
