//! Discovery: what a proxy needs to know about the services its workload calls.
//!
//! [`compute`] is a pure function of the desired state and the running instances, so
//! that it is tested without any network, and so is [`inbound::compute`], a workload's
//! own inbound policy, and [`telemetry::compute`], its tracing and access logs; [`server`] streams its result over gRPC and
//! pushes a new message whenever the result changes.

pub mod inbound;
pub mod resilience;
pub mod routes;
pub mod server;
pub mod table;
pub mod telemetry;

use crate::registry::Instance;
use crate::store::Snapshot;
use std::collections::BTreeMap;
use tarmac_model::meta::selector_matches;
use tarmac_model::{ObjectKey, Resource, Service};
use tarmac_proto::discovery::{Endpoint, Protocol, ProxyIdentity, ServiceUpdate};

/// The trust domain of SPIFFE identities until identity is configurable.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The namespace a proxy names, `default` when it names none.
pub fn namespace_of(proxy: &ProxyIdentity) -> &str {
    if proxy.namespace.is_empty() { "default" } else { proxy.namespace.as_str() }
}

/// The workload's labels: its Workload's, or (a proxy configured by hand) its running
/// instances'.
pub fn labels_of(
    snapshot: &Snapshot,
    instances: &[Instance],
    namespace: &str,
    workload: &str,
) -> BTreeMap<String, String> {
    let key = ObjectKey { kind: "Workload", namespace: namespace.to_string(), name: workload.to_string() };
    match snapshot.objects.get(&key) {
        Some(Resource::Workload(w)) => w.metadata.labels.clone(),
        _ => instances
            .iter()
            .find(|i| i.namespace == namespace && i.workload == workload)
            .map(|i| i.labels.clone())
            .unwrap_or_default(),
    }
}

pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// The state of `namespace/name:port` as a proxy in `caller_namespace` should see it:
/// its endpoints, and the routes that apply to that caller.
pub fn compute(
    snapshot: &Snapshot,
    instances: &[Instance],
    caller_namespace: &str,
    namespace: &str,
    name: &str,
    port: u16,
) -> ServiceUpdate {
    let key = ObjectKey { kind: "Service", namespace: namespace.to_string(), name: name.to_string() };
    let Some(Resource::Service(service)) = snapshot.objects.get(&key) else {
        return ServiceUpdate { generation: snapshot.generation, exists: false, ..Default::default() };
    };
    let Some(service_port) = service.spec.ports.iter().find(|p| p.port == port) else {
        return ServiceUpdate { generation: snapshot.generation, exists: false, ..Default::default() };
    };
    let protocol = match service_port.app_protocol.as_deref() {
        Some("http") => Protocol::Http1,
        Some("kubernetes.io/h2c") | Some("http2") | Some("grpc") => Protocol::Http2,
        Some("tcp") | Some("opaque") => Protocol::Opaque,
        _ => Protocol::Detect,
    };
    let parent = routes::Parent { service, port: service_port };
    ServiceUpdate {
        generation: snapshot.generation,
        exists: true,
        endpoints: endpoints_of(service, instances),
        protocol: protocol as i32,
        routes: routes::routes_for(snapshot, instances, caller_namespace, &parent),
        resilience: resilience::of_service(snapshot, namespace, name),
    }
}

/// The running instances a Service selects, in a stable order (so that equal states
/// compare equal and are not re-sent).
pub fn endpoints_of(service: &Service, instances: &[Instance]) -> Vec<Endpoint> {
    let namespace = &service.metadata.namespace;
    let mut endpoints: Vec<Endpoint> = instances
        .iter()
        .filter(|i| &i.namespace == namespace && selector_matches(&service.spec.selector, &i.labels))
        .map(|i| Endpoint {
            address: i.addr.to_string(),
            meshed: i.meshed,
            identity: if i.meshed { spiffe_id(&i.namespace, &i.service_account) } else { String::new() },
            weight: 1,
            zone: String::new(),
            labels: i.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
        .collect();
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn snapshot() -> Snapshot {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: books, namespace: shop}\nspec:\n  selector: {app: books}\n  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}, {name: grpc, port: 90, appProtocol: kubernetes.io/h2c}]\n";
        let objects = tarmac_model::parse_documents("t.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 7, objects }
    }

    fn instance(workload: &str, app: &str, ns: &str, addr: &str) -> Instance {
        Instance {
            namespace: ns.into(),
            workload: workload.into(),
            replica: 0,
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            service_account: workload.into(),
            addr: addr.parse().unwrap(),
            meshed: true,
            admin: None,
        }
    }

    #[test]
    fn endpoints_are_the_selected_instances_of_the_namespace() {
        let instances = [
            instance("books-v2", "books", "shop", "127.0.0.1:4002"),
            instance("books-v1", "books", "shop", "127.0.0.1:4001"),
            instance("authors", "authors", "shop", "127.0.0.1:4003"),
            instance("books-other", "books", "elsewhere", "127.0.0.1:4004"),
        ];
        let update = compute(&snapshot(), &instances, "shop", "shop", "books", 80);
        assert!(update.exists);
        assert_eq!(update.generation, 7);
        let addrs: Vec<&str> = update.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:4001", "127.0.0.1:4002"]);
        assert_eq!(update.endpoints[0].identity, "spiffe://cluster.local/ns/shop/sa/books-v1");
        assert_eq!(update.protocol, Protocol::Http1 as i32);
        assert_eq!(
            compute(&snapshot(), &instances, "shop", "shop", "books", 90).protocol,
            Protocol::Http2 as i32
        );
    }

    #[test]
    fn unknown_services_and_ports_do_not_exist() {
        assert!(!compute(&snapshot(), &[], "shop", "shop", "nope", 80).exists);
        assert!(!compute(&snapshot(), &[], "shop", "shop", "books", 81).exists);
        assert!(!compute(&snapshot(), &[], "shop", "default", "books", 80).exists);
    }
}
