//! A workload's inbound policy as its own proxy enforces it: per port, the
//! AuthorizationPolicies and RateLimitPolicies that name a Service selecting the workload
//! (or that Service's port, or a route attached to it, or one of its rules), and the
//! default policy.
//!
//! The workload is the one the proxy names (`control.namespace` and `control.workload`):
//! its labels say which Services select it, its port is where their `targetPort`s lead.
//! A workload the configuration does not hold (a proxy configured by hand) is known by
//! the labels of its running instances, and its ports are the Services' target ports.
//! The default policy is the Workload's `tarmac.io/default-policy` annotation, else its
//! Namespace's, else the mesh's.

use super::routes::{self, Parent};
use super::spiffe_id;
use crate::registry::Instance;
use crate::store::Snapshot;
use std::collections::BTreeMap;
use tarmac_model::authz::{self, Action, DefaultPolicy, Source};
use tarmac_model::meta::selector_matches;
use tarmac_model::resilience::PolicyTargetRef;
use tarmac_model::service::ServicePort;
use tarmac_model::{ObjectKey, Resource, Service};
use tarmac_proto::discovery::{self as pb, InboundPort, InboundUpdate, ProxyIdentity};

/// The contract's value of a default policy.
pub fn default_to_pb(default: DefaultPolicy) -> pb::DefaultPolicy {
    match default {
        DefaultPolicy::AllowAll => pb::DefaultPolicy::AllowAll,
        DefaultPolicy::AllAuthenticated => pb::DefaultPolicy::AllAuthenticated,
        DefaultPolicy::Deny => pb::DefaultPolicy::Deny,
        DefaultPolicy::Audit => pb::DefaultPolicy::Audit,
    }
}

/// A default policy as the contract carries it.
pub fn default_from_pb(default: pb::DefaultPolicy) -> DefaultPolicy {
    match default {
        pb::DefaultPolicy::AllowAll => DefaultPolicy::AllowAll,
        pb::DefaultPolicy::AllAuthenticated => DefaultPolicy::AllAuthenticated,
        pb::DefaultPolicy::Deny => DefaultPolicy::Deny,
        pb::DefaultPolicy::Audit => DefaultPolicy::Audit,
    }
}

/// The default policy of `namespace/workload` (annotations may be absent: the mesh's).
pub fn default_policy(
    snapshot: &Snapshot,
    namespace: &str,
    workload: &str,
    mesh: DefaultPolicy,
) -> DefaultPolicy {
    let key = ObjectKey { kind: "Workload", namespace: namespace.to_string(), name: workload.to_string() };
    let own = snapshot.objects.get(&key).and_then(|w| DefaultPolicy::of(w.meta()));
    let of_namespace = || {
        snapshot
            .iter_kind("Namespace")
            .find(|n| n.meta().name == namespace)
            .and_then(|n| DefaultPolicy::of(n.meta()))
    };
    own.or_else(of_namespace).unwrap_or(mesh)
}

/// The inbound policy of the workload `proxy` names.
pub fn compute(
    snapshot: &Snapshot,
    instances: &[Instance],
    mesh: DefaultPolicy,
    proxy: &ProxyIdentity,
) -> InboundUpdate {
    let namespace = super::namespace_of(proxy);
    let labels = super::labels_of(snapshot, instances, namespace, &proxy.workload);
    let key = ObjectKey { kind: "Workload", namespace: namespace.to_string(), name: proxy.workload.clone() };
    let workload_port = match snapshot.objects.get(&key) {
        Some(Resource::Workload(w)) => Some(w.spec.port),
        _ => None,
    };
    let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
    for resource in snapshot.iter_kind_in("Service", namespace) {
        let Resource::Service(service) = resource else { continue };
        if service.metadata.namespace != namespace || !selector_matches(&service.spec.selector, &labels) {
            continue;
        }
        for port in &service.spec.ports {
            // A named targetPort leads to the workload's one port.
            let target = match (port.target_number(), workload_port) {
                (Some(n), Some(w)) if n != w => continue,
                (Some(n), _) => n,
                (None, Some(w)) => w,
                (None, None) => continue,
            };
            let entry = ports
                .entry(target)
                .or_insert_with(|| InboundPort { port: u32::from(target), ..Default::default() });
            add_policies(snapshot, service, port, entry);
        }
    }
    for port in ports.values_mut() {
        port.authorizations.sort_by(|a, b| a.name.cmp(&b.name));
        port.rate_limits.sort_by(|a, b| a.name.cmp(&b.name));
    }
    InboundUpdate {
        generation: snapshot.generation,
        ports: ports.into_values().collect(),
        default_policy: default_to_pb(default_policy(snapshot, namespace, &proxy.workload, mesh)) as i32,
    }
}

/// Where a policy's target lands on `service`'s `port`: the whole port, a route attached
/// to it, or a rule of that route; None when the target is elsewhere.
fn scope_on(
    snapshot: &Snapshot,
    target: &PolicyTargetRef,
    parent: &Parent<'_>,
) -> Option<Option<pb::PolicyScope>> {
    let ns = &parent.service.metadata.namespace;
    if target.is_service() {
        let here = target.name == parent.service.metadata.name
            && target.section_name.as_deref().is_none_or(|s| parent.port.name.as_deref() == Some(s));
        return here.then_some(None);
    }
    let kind = target.route_kind()?;
    let key = ObjectKey {
        kind: if kind == "HTTPRoute" { "HTTPRoute" } else { "GRPCRoute" },
        namespace: ns.clone(),
        name: target.name.clone(),
    };
    let attached = match snapshot.objects.get(&key)? {
        Resource::HttpRoute(r) => routes::attaches(&r.spec.parent_refs, ns, parent),
        Resource::GrpcRoute(r) => routes::attaches(&r.spec.parent_refs, ns, parent),
        _ => false,
    };
    attached.then(|| {
        Some(pb::PolicyScope {
            route_kind: kind.to_string(),
            route: format!("{ns}/{}", target.name),
            rule: target.section_name.clone().unwrap_or_default(),
        })
    })
}

/// The SPIFFE IDs a policy's identities and service accounts name.
fn identities(identities: &[String], service_accounts: &[String], namespace: &str) -> Vec<String> {
    identities
        .iter()
        .cloned()
        .chain(service_accounts.iter().map(|sa| {
            let (ns, name) = authz::service_account(sa, namespace);
            spiffe_id(&ns, &name)
        }))
        .collect()
}

pub fn client_match(source: &Source, namespace: &str) -> pb::ClientMatch {
    pb::ClientMatch {
        identities: identities(&source.identities, &source.service_accounts, namespace),
        namespaces: source.namespaces.clone(),
        authenticated: match (source.authenticated, source.unauthenticated) {
            (Some(true), _) => Some(true),
            (_, Some(true)) => Some(false),
            _ => None,
        },
        cidrs: source.cidrs.clone(),
    }
}

fn rate(rate: &authz::Rate) -> pb::Rate {
    pb::Rate { requests_per_second: rate.requests_per_second, burst: rate.burst_or_default() }
}

fn add_policies(snapshot: &Snapshot, service: &Service, port: &ServicePort, entry: &mut InboundPort) {
    let parent = Parent { service, port };
    let ns = service.metadata.namespace.as_str();
    let mut routed = false;
    for (key, resource) in &snapshot.objects {
        if key.namespace != ns {
            continue;
        }
        match resource {
            Resource::AuthorizationPolicy(p) => {
                for target in &p.spec.target_refs {
                    let Some(scope) = scope_on(snapshot, target, &parent) else { continue };
                    routed |= scope.is_some();
                    let authorization = pb::Authorization {
                        name: format!("{ns}/{}", p.metadata.name),
                        deny: p.spec.action == Action::Deny,
                        from: p.spec.from.iter().map(|s| client_match(s, ns)).collect(),
                        scope,
                    };
                    if !entry.authorizations.contains(&authorization) {
                        entry.authorizations.push(authorization);
                    }
                }
            }
            Resource::RateLimitPolicy(p) => {
                for target in &p.spec.target_refs {
                    let Some(scope) = scope_on(snapshot, target, &parent) else { continue };
                    routed |= scope.is_some();
                    let limit = pb::RateLimit {
                        name: format!("{ns}/{}", p.metadata.name),
                        scope,
                        total: p.spec.total.as_ref().map(rate),
                        per_caller: p.spec.per_caller.as_ref().map(rate),
                        overrides: p
                            .spec
                            .overrides
                            .iter()
                            .map(|o| pb::RateOverride {
                                rate: Some(rate(&o.rate())),
                                identities: identities(&o.identities, &o.service_accounts, ns),
                            })
                            .collect(),
                    };
                    if !entry.rate_limits.contains(&limit) {
                        entry.rate_limits.push(limit);
                    }
                }
            }
            _ => {}
        }
    }
    if routed {
        // Matches only: the inbound proxy tells rules apart, it does not route.
        for mut route in routes::routes_for(snapshot, &[], ns, &parent) {
            for rule in &mut route.rules {
                rule.filters.clear();
                rule.backends.clear();
                rule.retry = None;
                (rule.request_timeout_ms, rule.backend_request_timeout_ms) = (0, 0);
            }
            if !entry
                .routes
                .iter()
                .any(|r| r.kind == route.kind && r.namespace == route.namespace && r.name == route.name)
            {
                entry.routes.push(route);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        let objects = tarmac_model::parse_documents("t.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 3, objects }
    }

    const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {tarmac.io/default-policy: all-authenticated}}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: shop}
spec:
  selector: {app: b}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata: {name: b, namespace: shop, labels: {app: b}, annotations: {tarmac.io/default-policy: deny}}
spec: {command: [b], port: 8080}
---
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata: {name: c, namespace: shop, labels: {app: c}}
spec: {command: [c], port: 9090}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-routes, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: \"\", name: b, port: 80}]
  rules:
  - name: public
    matches: [{path: {type: Exact, value: /public}, method: GET}]
    backendRefs: [{name: b, port: 80}]
  - name: rest
---
apiVersion: tarmac.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: a-public, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: b-routes, sectionName: public}]
  from: [{serviceAccounts: [a]}]
---
apiVersion: tarmac.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-lan, namespace: shop}
spec:
  targetRefs: [{group: \"\", kind: Service, name: b, sectionName: http}, {group: \"\", kind: Service, name: elsewhere}]
  action: DENY
  from: [{cidrs: [192.168.0.0/16]}]
---
apiVersion: tarmac.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: b-limit, namespace: shop}
spec:
  targetRefs: [{group: \"\", kind: Service, name: b}]
  total: {requestsPerSecond: 100, burst: 5}
  overrides: [{requestsPerSecond: 10, serviceAccounts: [c]}]
";

    fn proxy(workload: &str) -> ProxyIdentity {
        ProxyIdentity {
            namespace: "shop".into(),
            workload: workload.into(),
            service_account: workload.into(),
        }
    }

    #[test]
    fn a_workloads_port_carries_the_policies_of_its_services_and_their_routes() {
        let update = compute(&snapshot(MESH), &[], DefaultPolicy::AllowAll, &proxy("b"));
        assert_eq!(update.generation, 3);
        assert_eq!(update.default_policy, pb::DefaultPolicy::Deny as i32, "the Workload's own annotation");
        assert_eq!(update.ports.len(), 1);
        let port = &update.ports[0];
        assert_eq!(port.port, 8080, "the workload's port, where the Service's targetPort leads");
        let names: Vec<&str> = port.authorizations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["shop/a-public", "shop/no-lan"]);
        let public = &port.authorizations[0];
        assert!(!public.deny);
        assert_eq!(public.from[0].identities, ["spiffe://cluster.local/ns/shop/sa/a"]);
        let scope = public.scope.as_ref().unwrap();
        assert_eq!(
            (scope.route_kind.as_str(), scope.route.as_str(), scope.rule.as_str()),
            ("HTTPRoute", "shop/b-routes", "public")
        );
        assert!(port.authorizations[1].deny && port.authorizations[1].scope.is_none());
        let limit = &port.rate_limits[0];
        assert_eq!(limit.total, Some(pb::Rate { requests_per_second: 100, burst: 5 }));
        assert_eq!(limit.overrides[0].identities, ["spiffe://cluster.local/ns/shop/sa/c"]);
        assert_eq!(limit.overrides[0].rate, Some(pb::Rate { requests_per_second: 10, burst: 1 }));
        // The route comes for its rules' matches, without backends.
        assert_eq!(port.routes.len(), 1);
        assert_eq!(port.routes[0].rules[0].name, "public");
        assert!(port.routes[0].rules.iter().all(|r| r.backends.is_empty()));
    }

    #[test]
    fn defaults_fall_back_from_workload_to_namespace_to_mesh() {
        let s = snapshot(MESH);
        let c = compute(&s, &[], DefaultPolicy::Deny, &proxy("c"));
        assert_eq!(c.default_policy, pb::DefaultPolicy::AllAuthenticated as i32, "the Namespace's");
        assert!(c.ports.is_empty(), "no Service selects c");
        let elsewhere =
            ProxyIdentity { namespace: "other".into(), workload: "x".into(), service_account: "x".into() };
        assert_eq!(
            compute(&s, &[], DefaultPolicy::Audit, &elsewhere).default_policy,
            pb::DefaultPolicy::Audit as i32
        );
    }

    #[test]
    fn a_workload_known_only_by_its_instances_gets_its_services_target_ports() {
        let yaml = MESH
            .split("---\napiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: b,")
            .next()
            .unwrap();
        let instance = Instance {
            namespace: "shop".into(),
            workload: "b".into(),
            replica: 0,
            labels: [("app".to_string(), "b".to_string())].into(),
            service_account: "b".into(),
            addr: "127.0.0.1:4143".parse().unwrap(),
            meshed: true,
            admin: None,
        };
        let update = compute(&snapshot(yaml), &[instance], DefaultPolicy::AllowAll, &proxy("b"));
        assert_eq!(update.ports.iter().map(|p| p.port).collect::<Vec<_>>(), [8080]);
    }
}
