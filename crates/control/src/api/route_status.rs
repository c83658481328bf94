//! The status of every HTTPRoute and GRPCRoute in force, per parentRef, in the terms of
//! the Gateway API's route conditions (docs/traffic-management.md, "Route status"):
//!
//! - `Accepted`: `False` with reason `NoMatchingParent` when the parent Service, its
//!   `port` or its `sectionName` does not exist. The route then applies nowhere.
//! - `ResolvedRefs`: `False` with reason `BackendNotFound` when a backendRef (or a
//!   RequestMirror's) names a Service or port that does not exist, `InvalidKind` when it
//!   names something other than a Service, and `ExtensionRefNotFound` (Tarmac's own) when
//!   an ExtensionRef names a FaultInjection that does not exist. Proxies answer the
//!   requests such a reference would take with 500; the rest of the route serves.
//!   Cross-namespace backendRefs are allowed (the files store has no ReferenceGrant), so
//!   `RefNotPermitted` never occurs.
//! - `Conflicted` (Tarmac's own, a warning): `True` with reason `Shadowed` when a match of
//!   a rule is identical to a match that comes before it in the proxy's precedence order
//!   (of the same route or another route of the same parent, for the same callers), so
//!   that the requests it describes never reach it. The message names the winner.

use crate::discovery::routes::Parent;
use crate::discovery::table::{CompiledRoutes, describe};
use crate::store::Snapshot;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use tarmac_model::route::{HttpBackendRef, HttpRouteFilter, ParentRef};
use tarmac_model::{ObjectKey, Resource, Service};

/// One route's status.
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub parents: Vec<ParentStatus>,
}

/// The conditions of a route for one of its parentRefs.
#[derive(Clone, Debug, Serialize)]
pub struct ParentStatus {
    /// `Service NAMESPACE/NAME`, with `port N` or `sectionName S` when the ref has them.
    pub parent: String,
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    pub section_name: Option<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs` or `Conflicted`.
    #[serde(rename = "type")]
    pub condition_type: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// `error` (the route, or part of it, does not work as written), `warning` (it works,
    /// but something in it is never used) or `ok`.
    pub severity: &'static str,
}

impl Condition {
    /// Whether `tarmac check` fails on it.
    pub fn is_error(&self) -> bool {
        self.severity == "error"
    }
}

impl RouteStatus {
    pub fn conditions(&self) -> impl Iterator<Item = (&ParentStatus, &Condition)> {
        self.parents.iter().flat_map(|p| p.conditions.iter().map(move |c| (p, c)))
    }
}

fn find_service<'a>(snapshot: &'a Snapshot, namespace: &str, name: &str) -> Option<&'a Service> {
    let key = ObjectKey { kind: "Service", namespace: namespace.to_string(), name: name.to_string() };
    match snapshot.objects.get(&key) {
        Some(Resource::Service(s)) => Some(s),
        _ => None,
    }
}

/// Why no Service port matches `r`, or the ports it attaches to.
fn parent_ports<'a>(
    snapshot: &'a Snapshot,
    route_namespace: &str,
    r: &ParentRef,
) -> Result<(&'a Service, Vec<usize>), NoMatchingParent> {
    let namespace = r.namespace.as_deref().unwrap_or(route_namespace);
    let Some(service) = find_service(snapshot, namespace, &r.name) else {
        return Err(NoMatchingParent::NoService(format!("{namespace}/{}", r.name)));
    };
    let ports: Vec<usize> = (0..service.spec.ports.len())
        .filter(|&i| {
            let p = &service.spec.ports[i];
            r.port.is_none_or(|n| n == p.port)
                && r.section_name.as_deref().is_none_or(|s| p.name.as_deref() == Some(s))
        })
        .collect();
    if ports.is_empty() {
        let what = match (r.port, &r.section_name) {
            (Some(p), Some(s)) => format!("port {p} named `{s}`"),
            (Some(p), None) => format!("port {p}"),
            (None, Some(s)) => format!("port named `{s}`"),
            (None, None) => "ports".to_string(),
        };
        return Err(NoMatchingParent::NoPort { service: format!("{namespace}/{}", r.name), what });
    }
    Ok((service, ports))
}

/// Why a parentRef attaches to no Service port (the route's `NoMatchingParent` reason).
#[derive(Debug, thiserror::Error)]
enum NoMatchingParent {
    #[error("there is no Service {0}")]
    NoService(String),
    #[error("Service {service} has no {what}")]
    NoPort { service: String, what: String },
}

/// The problems of one backendRef: (reason, message).
fn backend_problem(
    snapshot: &Snapshot,
    route_namespace: &str,
    at: &str,
    b: &HttpBackendRef,
) -> Option<(&'static str, String)> {
    let kind = b.kind.as_deref().unwrap_or("Service");
    let group = b.group.as_deref().unwrap_or("");
    if kind != "Service" || !(group.is_empty() || group == "core") {
        let group = if group.is_empty() { "core".to_string() } else { group.to_string() };
        return Some((
            "InvalidKind",
            format!("{at}: `{group}` `{kind}` is not a backend kind Tarmac supports (use a Service)"),
        ));
    }
    let namespace = b.namespace.as_deref().unwrap_or(route_namespace);
    let port = b.port.unwrap_or(0);
    match find_service(snapshot, namespace, &b.name) {
        None => Some(("BackendNotFound", format!("{at}: there is no Service {namespace}/{}", b.name))),
        Some(s) if !s.spec.ports.iter().any(|p| p.port == port) => {
            Some(("BackendNotFound", format!("{at}: Service {namespace}/{} has no port {port}", b.name)))
        }
        Some(_) => None,
    }
}

fn filter_problems(
    snapshot: &Snapshot,
    route_namespace: &str,
    at: &str,
    filters: &[HttpRouteFilter],
    out: &mut Vec<(&'static str, String)>,
) {
    for (i, f) in filters.iter().enumerate() {
        if let Some(m) = &f.request_mirror {
            let as_backend = m.backend_ref.as_backend();
            let at = format!("{at}.filters[{i}].requestMirror.backendRef");
            out.extend(backend_problem(snapshot, route_namespace, &at, &as_backend));
        }
        if let Some(r) = &f.extension_ref {
            let key = ObjectKey {
                kind: "FaultInjection",
                namespace: route_namespace.to_string(),
                name: r.name.clone(),
            };
            if !snapshot.objects.contains_key(&key) {
                out.push((
                    "ExtensionRefNotFound",
                    format!(
                        "{at}.filters[{i}].extensionRef: there is no FaultInjection {route_namespace}/{}; requests it applies to get 500",
                        r.name
                    ),
                ));
            }
        }
    }
}

/// `rules[0] (named)`, for messages.
fn rule_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("rule {index} `{n}`"),
        _ => format!("rule {index}"),
    }
}

/// The ResolvedRefs problems of a route: (reason, message), in rule order.
fn ref_problems(snapshot: &Snapshot, resource: &Resource) -> Vec<(&'static str, String)> {
    let ns = resource.meta().namespace.as_str();
    let mut out = Vec::new();
    let mut check_rule = |i: usize, backends: &[HttpBackendRef], filters: &[HttpRouteFilter]| {
        let at = format!("spec.rules[{i}]");
        for (j, b) in backends.iter().enumerate() {
            let bat = format!("{at}.backendRefs[{j}]");
            out.extend(backend_problem(snapshot, ns, &bat, b));
            filter_problems(snapshot, ns, &bat, &b.filters, &mut out);
        }
        filter_problems(snapshot, ns, &at, filters, &mut out);
    };
    match resource {
        Resource::HttpRoute(r) => {
            for (i, rule) in r.spec.rules.iter().enumerate() {
                check_rule(i, &rule.backend_refs, &rule.filters);
            }
        }
        Resource::GrpcRoute(r) => {
            for (i, rule) in r.spec.rules.iter().enumerate() {
                check_rule(i, &rule.backend_refs, &rule.filters);
            }
        }
        _ => {}
    }
    out
}

/// Tables compiled once per (Service, port, caller namespace).
type Tables = HashMap<(String, String, u16, String), Option<CompiledRoutes>>;

/// The Shadowed conditions of `resource`'s rules on one Service port. A producer route
/// (in the Service's namespace) is evaluated for callers in that namespace (callers of
/// other namespaces without consumer routes see the same table); a consumer route for
/// callers in its own namespace.
fn shadowed(
    snapshot: &Snapshot,
    tables: &mut Tables,
    resource: &Resource,
    service: &Service,
    port_index: usize,
) -> Vec<String> {
    let meta = resource.meta();
    let port = &service.spec.ports[port_index];
    let caller = meta.namespace.clone();
    let key = (service.metadata.namespace.clone(), service.metadata.name.clone(), port.port, caller.clone());
    let compiled = tables
        .entry(key)
        .or_insert_with(|| CompiledRoutes::compile(snapshot, &caller, &Parent { service, port }).ok());
    let Some(compiled) = compiled else { return Vec::new() };
    let summaries = compiled.summaries();
    let mine = |rule: usize| {
        let (route, _) = compiled.origin(rule);
        route.kind == resource.kind() && route.namespace == meta.namespace && route.name == meta.name
    };
    // For each rule of this route: its matches, and those shadowed by an earlier one.
    let mut first_seen: HashMap<_, usize> = HashMap::new();
    let mut per_rule: BTreeMap<usize, (usize, Vec<String>)> = BTreeMap::new();
    for (summary, rule) in &summaries {
        let winner = *first_seen.entry(summary.clone()).or_insert(*rule);
        if !mine(*rule) {
            continue;
        }
        let entry = per_rule.entry(*rule).or_default();
        entry.0 += 1;
        if winner != *rule {
            let (win_route, win_index) = compiled.origin(winner);
            let win_rule = &win_route.rules[win_index];
            entry.1.push(format!(
                "match `{}` is identical to one of {} {}/{} {}, which comes first",
                describe(summary, resource.kind() == "GRPCRoute"),
                win_route.kind,
                win_route.namespace,
                win_route.name,
                rule_label(win_index, Some(&win_rule.name)),
            ));
        }
    }
    per_rule
        .into_iter()
        .filter(|(_, (_, shadowed))| !shadowed.is_empty())
        .map(|(rule, (total, shadowed))| {
            let (route, index) = compiled.origin(rule);
            let whole =
                if shadowed.len() == total { "it is never taken" } else { "its other matches still apply" };
            format!(
                "{} (callers in namespace {caller}, port {}): {}: {whole}",
                rule_label(index, Some(&route.rules[index].name)),
                port.port,
                shadowed.join("; ")
            )
        })
        .collect()
}

/// The status of every route in `snapshot`, ordered by kind, namespace and name.
pub fn statuses(snapshot: &Snapshot) -> Vec<RouteStatus> {
    let mut tables = Tables::new();
    let mut out = Vec::new();
    for resource in snapshot.objects.values() {
        let parent_refs = match resource {
            Resource::HttpRoute(r) => &r.spec.parent_refs,
            Resource::GrpcRoute(r) => &r.spec.parent_refs,
            _ => continue,
        };
        let meta = resource.meta();
        let refs = ref_problems(snapshot, resource);
        let mut parents = Vec::new();
        for r in parent_refs {
            let namespace = r.namespace.clone().unwrap_or_else(|| meta.namespace.clone());
            let mut parent = format!("Service {namespace}/{}", r.name);
            if let Some(p) = r.port {
                parent.push_str(&format!(" port {p}"));
            }
            if let Some(s) = &r.section_name {
                parent.push_str(&format!(" sectionName {s}"));
            }
            let mut conditions = Vec::new();
            let attached = parent_ports(snapshot, &meta.namespace, r);
            conditions.push(match &attached {
                Ok(_) => Condition {
                    condition_type: "Accepted",
                    status: "True",
                    reason: "Accepted",
                    message: format!("attached to {parent}"),
                    severity: "ok",
                },
                Err(why) => Condition {
                    condition_type: "Accepted",
                    status: "False",
                    reason: "NoMatchingParent",
                    message: format!("{why}: the route applies to no request"),
                    severity: "error",
                },
            });
            conditions.push(match refs.first() {
                None => Condition {
                    condition_type: "ResolvedRefs",
                    status: "True",
                    reason: "ResolvedRefs",
                    message: "every reference resolves".into(),
                    severity: "ok",
                },
                Some((reason, _)) => Condition {
                    condition_type: "ResolvedRefs",
                    status: "False",
                    reason,
                    message: refs.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
                    severity: "error",
                },
            });
            if let Ok((service, ports)) = &attached {
                let mut messages: Vec<String> = Vec::new();
                for &port in ports {
                    for m in shadowed(snapshot, &mut tables, resource, service, port) {
                        if !messages.contains(&m) {
                            messages.push(m);
                        }
                    }
                }
                if !messages.is_empty() {
                    conditions.push(Condition {
                        condition_type: "Conflicted",
                        status: "True",
                        reason: "Shadowed",
                        message: messages.join("; "),
                        severity: "warning",
                    });
                }
            }
            parents.push(ParentStatus {
                parent,
                namespace,
                name: r.name.clone(),
                port: r.port,
                section_name: r.section_name.clone(),
                conditions,
            });
        }
        out.push(RouteStatus {
            kind: resource.kind().to_string(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            parents,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: shop}
spec: {selector: {app: shop}, ports: [{name: http, port: 80}, {name: admin, port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: shop-v2}
spec: {selector: {app: shop}, ports: [{port: 80}]}
";

    fn route(name: &str, ns: &str, parent: &str, rules: &str) -> String {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, namespace: default, {parent}}}]\n  rules:\n{rules}"
        )
    }

    fn statuses_of(routes: &str) -> Vec<RouteStatus> {
        let ns = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n";
        let objects = tarmac_model::parse_documents("t.yaml", &format!("{SERVICES}{ns}{routes}"))
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        statuses(&Snapshot { generation: 1, objects })
    }

    fn condition<'a>(s: &'a [RouteStatus], route: &str, kind: &str) -> Option<&'a Condition> {
        s.iter()
            .find(|r| r.name == route)
            .and_then(|r| r.conditions().map(|(_, c)| c).find(|c| c.condition_type == kind))
    }

    #[test]
    fn missing_parents_and_backends_are_reported_with_their_reason() {
        let ok_rule = "  - backendRefs: [{name: shop-v2, port: 80}]\n";
        let s = statuses_of(&format!(
            "{}{}{}{}{}",
            route("good", "default", "name: shop, port: 80", ok_rule),
            route("no-parent", "default", "name: nowhere", ok_rule),
            route("no-port", "default", "name: shop, port: 81", ok_rule),
            route("no-section", "default", "name: shop, sectionName: grpc", ok_rule),
            route(
                "bad-refs",
                "default",
                "name: shop",
                "  - backendRefs: [{name: gone, port: 80}, {name: shop-v2, port: 81}]\n  - backendRefs: [{group: example.com, kind: Bucket, name: b}]\n    filters: [{type: ExtensionRef, extensionRef: {group: tarmac.io, kind: FaultInjection, name: chaos}}]\n",
            ),
        ));
        assert_eq!(condition(&s, "good", "Accepted").unwrap().status, "True");
        assert_eq!(condition(&s, "good", "ResolvedRefs").unwrap().status, "True");
        for (route, says) in [
            ("no-parent", "there is no Service default/nowhere"),
            ("no-port", "Service default/shop has no port 81"),
            ("no-section", "Service default/shop has no port named `grpc`"),
        ] {
            let c = condition(&s, route, "Accepted").unwrap();
            assert_eq!((c.status, c.reason), ("False", "NoMatchingParent"), "{route}");
            assert!(c.message.contains(says) && c.is_error(), "{route}: {c:?}");
        }
        let c = condition(&s, "bad-refs", "ResolvedRefs").unwrap();
        assert_eq!((c.status, c.reason), ("False", "BackendNotFound"));
        for says in [
            "spec.rules[0].backendRefs[0]: there is no Service default/gone",
            "spec.rules[0].backendRefs[1]: Service default/shop-v2 has no port 81",
            "spec.rules[1].backendRefs[0]: `example.com` `Bucket` is not a backend kind",
            "spec.rules[1].filters[0].extensionRef: there is no FaultInjection default/chaos",
        ] {
            assert!(c.message.contains(says), "{says}: {c:?}");
        }
    }

    #[test]
    fn the_examples_routes_are_accepted_with_every_reference_resolved_and_nothing_shadowed() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for dir in std::fs::read_dir(&examples).unwrap() {
            let dir = dir.unwrap().path();
            let mut objects = BTreeMap::new();
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                if file.extension().is_some_and(|e| e == "yaml") {
                    let text = std::fs::read_to_string(&file).unwrap();
                    for r in tarmac_model::parse_documents(&file.display().to_string(), &text).unwrap() {
                        objects.insert(r.key(), r);
                    }
                }
            }
            let statuses = statuses(&Snapshot { generation: 1, objects });
            let attention: Vec<_> =
                statuses.iter().flat_map(|r| r.conditions()).filter(|(_, c)| c.severity != "ok").collect();
            assert!(attention.is_empty(), "{}: {attention:#?}", dir.display());
        }
    }

    #[test]
    fn identical_matches_shadow_the_later_rule_and_name_the_winner() {
        let a = "  - name: api\n    matches: [{path: {value: /api}, headers: [{name: X-A, value: '1'}]}]\n  - name: again\n    matches: [{path: {value: /api/}, headers: [{name: x-a, value: '1'}]}, {path: {value: /other}}]\n";
        let b = "  - name: late\n    matches: [{path: {value: /api}, headers: [{name: x-a, value: '1'}]}]\n  - name: fine\n    matches: [{path: {value: /api}, headers: [{name: x-a, value: '2'}]}]\n";
        let consumer = "  - matches: [{path: {value: /api}, headers: [{name: x-a, value: '1'}]}]\n";
        let s = statuses_of(&format!(
            "{}{}{}",
            route("a", "default", "name: shop, port: 80", a),
            route("b", "default", "name: shop", b),
            route("c", "other", "name: shop, port: 80", consumer),
        ));
        let again = condition(&s, "a", "Conflicted").unwrap();
        assert_eq!((again.status, again.reason, again.severity), ("True", "Shadowed", "warning"));
        assert!(
            again.message.starts_with("rule 1 `again` (callers in namespace default, port 80): match `PathPrefix /api, header x-a=1` is identical to one of HTTPRoute default/a rule 0 `api`")
                && again.message.ends_with("its other matches still apply"),
            "{again:?}"
        );
        let late = condition(&s, "b", "Conflicted").unwrap();
        assert!(
            late.message.contains("rule 0 `late`")
                && late.message.contains("HTTPRoute default/a rule 0 `api`")
                && late.message.ends_with("it is never taken")
                && !late.message.contains("fine"),
            "{late:?}"
        );
        assert!(!late.message.contains("port 9000"), "route a is not on port 9000: {late:?}");
        assert!(condition(&s, "c", "Conflicted").is_none(), "consumer routes serve other callers");
        assert_eq!(condition(&s, "a", "Accepted").unwrap().status, "True");
    }
}
