//! The API server's objects as Tarmac reads them.
//!
//! Objects of the model's kinds become the JSON documents the model parses
//! ([`tarmac_model::parse_object`]): one translator, shared with the files backend, so
//! an object means the same whether `kubectl apply` or a file put it there. Pods, with
//! the EndpointSlices that list them, become the registry's running instances.

use crate::kinds::ModelKind;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tarmac_control::registry::Instance;

/// The annotation injection writes on a pod with the sidecar (docs/kubernetes.md).
pub const INJECTED_ANNOTATION: &str = "tarmac.io/injected";
/// The injected sidecar's admin port, where telemetry scrapes it.
pub const ADMIN_PORT: u16 = 4191;

/// What the model reads of `object`: `apiVersion` and `kind` set (the API server leaves
/// them out of list items), `metadata` reduced to what a manifest carries (`name`,
/// `namespace`, `labels`, `annotations`: the rest, owner references, finalizers and the
/// like, is the cluster's bookkeeping, validated by the API server), and the rest as the
/// API server sent it. An error, saying why, for an object that is not the mesh's to
/// serve.
pub fn model_document(kind: &ModelKind, object: &DynamicObject) -> Result<Value, &'static str> {
    let Ok(Value::Object(mut document)) = serde_json::to_value(object) else {
        return Err("not a JSON object");
    };
    document.insert("apiVersion".into(), Value::String(kind.api_version()));
    document.insert("kind".into(), Value::String(kind.kind.into()));
    let mut metadata = Map::new();
    let meta = &object.metadata;
    if let Some(name) = &meta.name {
        metadata.insert("name".into(), Value::String(name.clone()));
    }
    if let Some(namespace) = meta.namespace.as_ref().filter(|_| kind.namespaced) {
        metadata.insert("namespace".into(), Value::String(namespace.clone()));
    }
    for (field, map) in [("labels", &meta.labels), ("annotations", &meta.annotations)] {
        if let Some(map) = map.as_ref().filter(|m| !m.is_empty()) {
            let map = map.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            metadata.insert(field.into(), Value::Object(map));
        }
    }
    document.insert("metadata".into(), Value::Object(metadata));
    if kind.kind == "Service" {
        service_ports_for_the_mesh(&mut document)?;
    }
    Ok(Value::Object(document))
}

/// A cluster's Services are not all written for the mesh (DNS serves UDP, an
/// ExternalName Service is a DNS alias): the mesh carries TCP, so other ports stay with
/// the cluster's own networking and a Service left without a port is not the mesh's.
/// Everything else is the model's to accept or refuse.
fn service_ports_for_the_mesh(document: &mut Map<String, Value>) -> Result<(), &'static str> {
    let Some(spec) = document.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return Err("an ExternalName Service is a DNS alias, not served by the mesh");
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        ports.retain(|p| p.get("protocol").and_then(Value::as_str).is_none_or(|proto| proto == "TCP"));
        if ports.is_empty() {
            return Err("no TCP port: the mesh carries TCP");
        }
    }
    Ok(())
}

/// The workload a pod belongs to, named as injection names it for the sidecar's
/// discovery (`crates/control/src/inject`): the usual name labels, else the name its
/// controller generated it from, else its own name.
fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
    label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .or_else(|| meta.generate_name.as_deref().map(|g| g.trim_end_matches('-').to_string()))
        .or_else(|| meta.name.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether the pod's `Ready` condition is true: the kubelet's view of its probes.
fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Where the EndpointSlices send a Service's traffic to each pod: the pod's port (the
/// lowest, when Services reach it on several) and whether the slice counts it ready.
fn slice_ports(slices: &[Arc<EndpointSlice>]) -> BTreeMap<(String, String), (u16, bool)> {
    let mut ports: BTreeMap<(String, String), (u16, bool)> = BTreeMap::new();
    for slice in slices {
        let Some(namespace) = slice.metadata.namespace.as_deref() else { continue };
        let port = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .min();
        let Some(port) = port else { continue };
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(pod) = endpoint.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")) else {
                continue;
            };
            let Some(name) = pod.name.clone() else { continue };
            // The API's contract: an absent `ready` is to be read as ready.
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let entry = ports.entry((namespace.to_string(), name)).or_insert((port, ready));
            *entry = (entry.0.min(port), entry.1 && ready);
        }
    }
    ports
}

/// The running instances: every pod with an address, not being deleted, ready (by its
/// `Ready` condition and by every EndpointSlice listing it), at the port the
/// EndpointSlices send it traffic on, else its first TCP container port. Discovery
/// selects them by their labels, as the Services do. A pod with the sidecar
/// (`tarmac.io/injected`) is meshed, its identity its service account's.
pub fn instances(pods: &[Arc<Pod>], slices: &[Arc<EndpointSlice>]) -> Vec<Instance> {
    let by_slice = slice_ports(slices);
    let mut found: Vec<(String, String, String, Instance)> = Vec::new();
    for pod in pods {
        let meta = &pod.metadata;
        let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else { continue };
        if meta.deletion_timestamp.is_some() || !pod_ready(pod) {
            continue;
        }
        let Some(ip) =
            pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let spec = pod.spec.as_ref();
        let port = match by_slice.get(&(namespace.clone(), name.clone())) {
            Some((_, false)) => continue,
            Some((port, true)) => Some(*port),
            None => spec
                .and_then(|s| s.containers.first())
                .and_then(|c| c.ports.as_ref())
                .and_then(|ports| {
                    ports.iter().find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
                })
                .and_then(|p| u16::try_from(p.container_port).ok()),
        };
        let Some(port) = port else { continue };
        let meshed = meta.annotations.as_ref().is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
        let workload = workload_name(pod);
        found.push((
            namespace.clone(),
            workload.clone(),
            name,
            Instance {
                namespace,
                workload,
                replica: 0,
                labels: meta.labels.clone().unwrap_or_default(),
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
                addr: SocketAddr::new(ip, port),
                meshed,
                admin: meshed.then(|| SocketAddr::new(ip, ADMIN_PORT)),
            },
        ));
    }
    // Replicas are numbered by pod name within their workload, so that the numbers (and
    // the registry) stay the same while the pods do.
    found.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    let mut instances: Vec<Instance> = Vec::with_capacity(found.len());
    for (_, _, _, mut instance) in found {
        if let Some(last) = instances.last()
            && last.namespace == instance.namespace
            && last.workload == instance.workload
        {
            instance.replica = last.replica + 1;
        }
        instances.push(instance);
    }
    instances
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::MODEL_KINDS;
    use tarmac_model::Resource;

    fn kind(name: &str) -> &'static ModelKind {
        MODEL_KINDS.iter().find(|k| k.kind == name).unwrap()
    }

    fn dynamic(json: Value) -> DynamicObject {
        serde_json::from_value(json).unwrap()
    }

    /// A Service as a list's item: no kind, the API server's metadata and defaults.
    fn service() -> Value {
        serde_json::json!({
            "metadata": {
                "name": "books", "namespace": "shop", "uid": "5d0c3f0e", "resourceVersion": "48213",
                "creationTimestamp": "2026-11-30T09:12:44Z", "labels": {"app": "books"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Foo", "name": "x", "uid": "u"}],
                "finalizers": ["example.com/keep"],
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {
                "clusterIP": "10.96.112.7", "clusterIPs": ["10.96.112.7"], "type": "ClusterIP",
                "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "sessionAffinity": "None", "selector": {"app": "books"},
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}
                ]
            },
            "status": {"loadBalancer": {}}
        })
    }

    #[test]
    fn an_api_service_reads_as_the_model_service_with_its_tcp_ports() {
        let document = model_document(kind("Service"), &dynamic(service())).unwrap();
        let resource = tarmac_model::parse_object("kubernetes", document).unwrap();
        let Resource::Service(s) = resource else { panic!() };
        assert_eq!(s.metadata.namespace, "shop");
        assert_eq!(s.spec.ports.len(), 1, "the UDP port is the cluster's, not the mesh's");
        assert_eq!(s.spec.ports[0].target_number(), Some(8080));
    }

    #[test]
    fn services_the_mesh_cannot_serve_are_left_to_the_cluster() {
        let mut udp = service();
        udp["spec"]["ports"] = serde_json::json!([{"port": 53, "protocol": "UDP"}]);
        assert!(model_document(kind("Service"), &dynamic(udp)).is_err());
        let mut alias = service();
        alias["spec"]["type"] = "ExternalName".into();
        assert!(model_document(kind("Service"), &dynamic(alias)).is_err());
    }

    #[test]
    fn what_the_mesh_cannot_honour_is_refused_by_name() {
        let mut affinity = service();
        affinity["spec"]["sessionAffinity"] = "ClientIP".into();
        let document = model_document(kind("Service"), &dynamic(affinity)).unwrap();
        let errors = tarmac_model::parse_object("kubernetes", document).unwrap_err();
        let text = errors[0].to_string();
        assert!(text.starts_with("kubernetes: Service shop/books: field `spec.sessionAffinity`"), "{text}");
    }

    fn pod(name: &str, ip: &str, ready: bool, injected: bool) -> Arc<Pod> {
        let mut annotations = serde_json::Map::new();
        if injected {
            annotations.insert(INJECTED_ANNOTATION.into(), "0.1.0".into());
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop", "generateName": "books-7d9f8c-",
                             "labels": {"app": "books"}, "annotations": annotations},
                "spec": {"serviceAccountName": "books",
                         "containers": [{"name": "app", "ports": [{"containerPort": 9000}]}]},
                "status": {"podIP": ip, "phase": "Running",
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    fn slice(pods: &[(&str, &str, Option<bool>)]) -> Arc<EndpointSlice> {
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|(name, ip, ready)| {
                serde_json::json!({"addresses": [ip], "conditions": {"ready": ready},
                                   "targetRef": {"kind": "Pod", "name": name, "namespace": "shop"}})
            })
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "books-abc", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "books"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_pods_are_instances_at_their_endpoint_port() {
        let pods = [
            pod("books-7d9f8c-b", "10.1.0.2", true, true),
            pod("books-7d9f8c-a", "10.1.0.1", true, false),
            pod("books-7d9f8c-c", "10.1.0.3", false, true),
            pod("books-7d9f8c-d", "10.1.0.4", true, true),
        ];
        let slices = [slice(&[
            ("books-7d9f8c-a", "10.1.0.1", Some(true)),
            ("books-7d9f8c-d", "10.1.0.4", Some(false)),
        ])];
        let found = instances(&pods, &slices);
        let addrs: Vec<String> = found.iter().map(|i| i.addr.to_string()).collect();
        // -a through its slice's port; -b in no slice, at its container port; -c not
        // ready; -d ready as a pod but not as an endpoint.
        assert_eq!(addrs, ["10.1.0.1:8080", "10.1.0.2:9000"]);
        assert_eq!((found[0].replica, found[1].replica), (0, 1));
        assert_eq!(found[0].workload, "books");
        assert_eq!(found[0].service_account, "books");
        assert!(!found[0].meshed && found[0].admin.is_none());
        assert!(found[1].meshed);
        assert_eq!(found[1].admin, Some("10.1.0.2:4191".parse().unwrap()));
    }
}
