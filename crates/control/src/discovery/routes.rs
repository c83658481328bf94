//! The routes of one Service port as one caller sees them (the Gateway API mesh profile,
//! GAMMA), translated to the discovery contract with every backend resolved.
//!
//! Which routes apply: those whose `parentRefs` name the Service (with no `port`, or
//! this port; with no `sectionName`, or this port's name). Consumer routes, in the
//! caller's namespace, apply only to that caller and replace the producer routes (in the
//! Service's namespace) for it. Routes are ordered by `namespace/name`, the Gateway API's
//! tie-break after creation time, which the files store does not have.

use super::{endpoints_of, resilience};
use crate::registry::Instance;
use crate::store::Snapshot;
use tarmac_model::route::{
    GrpcRouteMatch, HeaderMatch, HttpBackendRef, HttpRouteFilter, HttpRouteMatch, HttpRouteTimeouts,
    ParentRef, PathModifier,
};
use tarmac_model::service::ServicePort;
use tarmac_model::{ObjectKey, Resource, Service};
use tarmac_proto::discovery::{
    self as pb, PathMatchType, Route, RouteBackend, RouteFilter, RouteMatch, RouteRule, ValueMatch,
    path_modifier, route_filter,
};

/// The Service port a route is asked about.
pub struct Parent<'a> {
    pub service: &'a Service,
    pub port: &'a ServicePort,
}

/// Whether a route with `refs` (in `route_namespace`) attaches to `parent`.
pub fn attaches(refs: &[ParentRef], route_namespace: &str, parent: &Parent<'_>) -> bool {
    refs.iter().any(|r| {
        r.is_service()
            && r.name == parent.service.metadata.name
            && r.namespace.as_deref().unwrap_or(route_namespace) == parent.service.metadata.namespace
            && r.port.is_none_or(|p| p == parent.port.port)
            && r.section_name.as_deref().is_none_or(|s| parent.port.name.as_deref() == Some(s))
    })
}

/// The routes of `parent` for a caller in `caller_namespace`, in precedence order.
pub fn routes_for(
    snapshot: &Snapshot,
    instances: &[Instance],
    caller_namespace: &str,
    parent: &Parent<'_>,
) -> Vec<Route> {
    let producer_namespace = parent.service.metadata.namespace.as_str();
    let in_namespace = |ns: &str| -> Vec<&Resource> {
        snapshot
            .iter_kind_in("HTTPRoute", ns)
            .chain(snapshot.iter_kind_in("GRPCRoute", ns))
            .filter(|r| match r {
                Resource::HttpRoute(h) => attaches(&h.spec.parent_refs, ns, parent),
                Resource::GrpcRoute(g) => attaches(&g.spec.parent_refs, ns, parent),
                _ => false,
            })
            .collect()
    };
    let mut chosen = Vec::new();
    if caller_namespace != producer_namespace {
        chosen = in_namespace(caller_namespace);
    }
    if chosen.is_empty() {
        chosen = in_namespace(producer_namespace);
    }
    chosen.sort_by(|a, b| {
        (&a.meta().namespace, &a.meta().name, a.kind()).cmp(&(&b.meta().namespace, &b.meta().name, b.kind()))
    });
    let service = resilience::of_service(snapshot, producer_namespace, &parent.service.metadata.name);
    chosen.into_iter().filter_map(|r| translate(snapshot, instances, r, service.as_ref())).collect()
}

/// A rule's retry and timeouts: its own (HTTPRoute), else a ResiliencePolicy's naming the
/// rule or the route, else the parent Service's policy, field by field.
fn rule_resilience(
    snapshot: &Snapshot,
    resource: &Resource,
    rule_name: Option<&str>,
    own_retry: Option<pb::Retry>,
    own: Option<&HttpRouteTimeouts>,
    service: Option<&pb::Resilience>,
) -> (Option<pb::Retry>, u64, u64) {
    let meta = resource.meta();
    let (policy_retry, policy) =
        resilience::of_rule(snapshot, resource.kind(), &meta.namespace, &meta.name, rule_name);
    let ms = |d: &Option<String>| {
        d.as_deref().and_then(|d| tarmac_model::duration::parse(d).ok()).map(|d| d.as_millis() as u64)
    };
    let request = own.and_then(|t| ms(&t.request)).or_else(|| ms(&policy.request)).unwrap_or_else(|| {
        service.map_or(tarmac_route::policy::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64, |s| {
            s.request_timeout_ms
        })
    });
    let backend_request = own
        .and_then(|t| ms(&t.backend_request))
        .or_else(|| ms(&policy.backend_request))
        .unwrap_or_else(|| service.map_or(0, |s| s.backend_request_timeout_ms));
    let retry = own_retry.or(policy_retry).or_else(|| service.and_then(|s| s.retry.clone()));
    (retry, request, backend_request)
}

fn translate(
    snapshot: &Snapshot,
    instances: &[Instance],
    resource: &Resource,
    service: Option<&pb::Resilience>,
) -> Option<Route> {
    let meta = resource.meta();
    let ns = meta.namespace.as_str();
    let scope = Scope { snapshot, instances, namespace: ns };
    let rules = match resource {
        Resource::HttpRoute(route) => route
            .spec
            .rules
            .iter()
            .map(|rule| {
                let own_retry = rule.retry.as_ref().map(|r| pb::Retry {
                    attempts: r.attempts.unwrap_or(tarmac_route::policy::DEFAULT_ATTEMPTS),
                    codes: r.codes.iter().map(|&c| u32::from(c)).collect(),
                    grpc_codes: Vec::new(),
                    backoff_ms: resilience::millis(&r.backoff),
                });
                let (retry, request_timeout_ms, backend_request_timeout_ms) = rule_resilience(
                    snapshot,
                    resource,
                    rule.name.as_deref(),
                    own_retry,
                    rule.timeouts.as_ref(),
                    service,
                );
                RouteRule {
                    name: rule.name.clone().unwrap_or_default(),
                    matches: rule.matches.iter().map(http_match).collect(),
                    filters: filters(&scope, &rule.filters),
                    backends: backends(&scope, &rule.backend_refs),
                    request_timeout_ms,
                    backend_request_timeout_ms,
                    retry,
                }
            })
            .collect(),
        Resource::GrpcRoute(route) => route
            .spec
            .rules
            .iter()
            .map(|rule| {
                let (retry, request_timeout_ms, backend_request_timeout_ms) =
                    rule_resilience(snapshot, resource, rule.name.as_deref(), None, None, service);
                RouteRule {
                    name: rule.name.clone().unwrap_or_default(),
                    matches: rule.matches.iter().map(grpc_match).collect(),
                    filters: filters(&scope, &rule.filters),
                    backends: backends(&scope, &rule.backend_refs),
                    request_timeout_ms,
                    backend_request_timeout_ms,
                    retry,
                }
            })
            .collect(),
        _ => return None,
    };
    Some(Route {
        kind: resource.kind().to_string(),
        namespace: ns.to_string(),
        name: meta.name.clone(),
        rules,
    })
}

fn value_matches(matches: &[HeaderMatch]) -> Vec<ValueMatch> {
    matches
        .iter()
        .map(|m| ValueMatch {
            name: m.name.clone(),
            value: m.value.clone(),
            regex: m.match_type == "RegularExpression",
        })
        .collect()
}

fn http_match(m: &HttpRouteMatch) -> RouteMatch {
    RouteMatch {
        path: m.path.as_ref().map(|p| pb::PathMatch {
            r#type: match p.match_type.as_str() {
                "Exact" => PathMatchType::Exact,
                "RegularExpression" => PathMatchType::RegularExpression,
                _ => PathMatchType::Prefix,
            } as i32,
            value: p.value.clone(),
        }),
        headers: value_matches(&m.headers),
        query_params: value_matches(&m.query_params),
        method: m.method.clone().unwrap_or_default(),
    }
}

/// Characters with a meaning in a regular expression, escaped for a literal match.
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A gRPC method match is a match on the request path, `/<service>/<method>`.
fn grpc_match(m: &GrpcRouteMatch) -> RouteMatch {
    let path = m.method.as_ref().map(|method| {
        let regex = method.match_type == "RegularExpression";
        match (method.service.as_deref(), method.method.as_deref(), regex) {
            (Some(s), Some(m), false) => {
                pb::PathMatch { r#type: PathMatchType::Exact as i32, value: format!("/{s}/{m}") }
            }
            (Some(s), None, false) => {
                pb::PathMatch { r#type: PathMatchType::Prefix as i32, value: format!("/{s}/") }
            }
            (service, method, regex) => {
                let part = |p: Option<&str>| match p {
                    Some(p) if regex => format!("(?:{p})"),
                    Some(p) => escape_regex(p),
                    None => "[^/]+".to_string(),
                };
                pb::PathMatch {
                    r#type: PathMatchType::RegularExpression as i32,
                    value: format!("/{}/{}", part(service), part(method)),
                }
            }
        }
    });
    RouteMatch { path, headers: value_matches(&m.headers), query_params: Vec::new(), method: String::new() }
}

fn path_modifier(m: &PathModifier) -> pb::PathModifier {
    let modifier = if m.modifier_type == "ReplaceFullPath" {
        path_modifier::Modifier::ReplaceFullPath(m.replace_full_path.clone().unwrap_or_default())
    } else {
        path_modifier::Modifier::ReplacePrefixMatch(m.replace_prefix_match.clone().unwrap_or_default())
    };
    pb::PathModifier { modifier: Some(modifier) }
}

fn header_modifier(m: &tarmac_model::route::HeaderModifier) -> pb::HeaderModifier {
    let values = |list: &[tarmac_model::route::HeaderValue]| {
        list.iter().map(|h| pb::HeaderValue { name: h.name.clone(), value: h.value.clone() }).collect()
    };
    pb::HeaderModifier { set: values(&m.set), add: values(&m.add), remove: m.remove.clone() }
}

/// Where filters are resolved: mirrors name backends like backendRefs do.
struct Scope<'a> {
    snapshot: &'a Snapshot,
    instances: &'a [Instance],
    namespace: &'a str,
}

/// A FaultInjection of the route's namespace, or a marker that it does not exist.
fn fault(scope: &Scope<'_>, name: &str) -> pb::Fault {
    let key =
        ObjectKey { kind: "FaultInjection", namespace: scope.namespace.to_string(), name: name.to_string() };
    let Some(Resource::FaultInjection(f)) = scope.snapshot.objects.get(&key) else {
        return pb::Fault { unresolved: true, ..Default::default() };
    };
    let per_million = |percentage: f64| (percentage.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    let mut out = pb::Fault { headers: value_matches(&f.spec.headers), ..Default::default() };
    if let Some(d) = &f.spec.delay {
        out.delay_ms = tarmac_model::duration::parse(&d.fixed_delay).map_or(0, |d| d.as_millis() as u64);
        out.delay_per_million = per_million(d.percentage);
    }
    if let Some(a) = &f.spec.abort {
        out.abort_status = u32::from(a.http_status);
        out.abort_per_million = per_million(a.percentage);
    }
    out
}

/// The filters, as the proxy applies them.
fn filters(scope: &Scope<'_>, list: &[HttpRouteFilter]) -> Vec<RouteFilter> {
    list.iter()
        .filter_map(|f| {
            let filter = if let Some(m) = &f.request_header_modifier {
                route_filter::Filter::RequestHeaderModifier(header_modifier(m))
            } else if let Some(m) = &f.response_header_modifier {
                route_filter::Filter::ResponseHeaderModifier(header_modifier(m))
            } else if let Some(r) = &f.request_redirect {
                route_filter::Filter::RequestRedirect(pb::RequestRedirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.hostname.clone().unwrap_or_default(),
                    port: r.port.map_or(0, u32::from),
                    path: r.path.as_ref().map(path_modifier),
                    status_code: r.status_code.map_or(0, u32::from),
                })
            } else if let Some(r) = &f.url_rewrite {
                route_filter::Filter::UrlRewrite(pb::UrlRewrite {
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r.path.as_ref().map(path_modifier),
                })
            } else if let Some(m) = &f.request_mirror {
                let as_backend = m.backend_ref.as_backend();
                let (numerator, denominator) = match (&m.percent, &m.fraction) {
                    (Some(p), _) => (*p, 100),
                    (None, Some(f)) => (f.numerator, f.denominator),
                    (None, None) => (100, 100),
                };
                route_filter::Filter::RequestMirror(pb::RequestMirror {
                    backend: backends(scope, std::slice::from_ref(&as_backend)).pop(),
                    numerator,
                    denominator,
                })
            } else if let Some(r) = &f.extension_ref {
                // Validation admits only FaultInjection here.
                route_filter::Filter::Fault(fault(scope, &r.name))
            } else if let Some(c) = &f.cors {
                route_filter::Filter::Cors(pb::Cors {
                    allow_origins: c.allow_origins.clone(),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    allow_methods: c.allow_methods.clone(),
                    allow_headers: c.allow_headers.clone(),
                    expose_headers: c.expose_headers.clone(),
                    max_age: c.max_age.unwrap_or(0),
                })
            } else {
                return None;
            };
            Some(RouteFilter { filter: Some(filter) })
        })
        .collect()
}

fn backends(scope: &Scope<'_>, refs: &[HttpBackendRef]) -> Vec<RouteBackend> {
    let Scope { snapshot, instances, namespace: route_namespace } = *scope;
    refs.iter()
        .map(|b| {
            let namespace = b.namespace.clone().unwrap_or_else(|| route_namespace.to_string());
            let port = b.port.unwrap_or(0);
            let is_service = b.kind.as_deref().unwrap_or("Service") == "Service"
                && matches!(b.group.as_deref(), None | Some("") | Some("core"));
            let key = ObjectKey { kind: "Service", namespace: namespace.clone(), name: b.name.clone() };
            let service = match snapshot.objects.get(&key) {
                Some(Resource::Service(s)) if is_service && s.spec.ports.iter().any(|p| p.port == port) => {
                    Some(s)
                }
                _ => None,
            };
            RouteBackend {
                service: b.name.clone(),
                namespace: namespace.clone(),
                port: u32::from(port),
                weight: b.weight,
                exists: service.is_some(),
                endpoints: service.map(|s| endpoints_of(s, instances)).unwrap_or_default(),
                filters: filters(scope, &b.filters),
                ..match service.and_then(|_| resilience::of_service(snapshot, &namespace, &b.name)) {
                    Some(r) => RouteBackend {
                        circuit_breaker: r.circuit_breaker,
                        limit: r.limit,
                        ..Default::default()
                    },
                    None => RouteBackend::default(),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::compute;
    use super::*;
    use std::collections::BTreeMap;

    const BASE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {selector: {app: echo}, ports: [{name: http, port: 80}, {name: alt, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: mesh}
spec: {selector: {version: v1}, ports: [{name: http, port: 80}]}
";

    fn snapshot(routes: &str) -> Snapshot {
        let objects = tarmac_model::parse_documents("t.yaml", &format!("{BASE}---\n{routes}"))
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 1, objects }
    }

    fn route(ns: &str, name: &str, parent_port: &str, backend: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, namespace: mesh{parent_port}}}]\n  rules:\n  - backendRefs: [{{name: {backend}, namespace: mesh, port: 80}}]\n"
        )
    }

    fn names(update: &pb::ServiceUpdate) -> Vec<String> {
        update.routes.iter().map(|r| format!("{}/{}", r.namespace, r.name)).collect()
    }

    fn v1_instance() -> Instance {
        Instance {
            namespace: "mesh".into(),
            workload: "echo-v1".into(),
            replica: 0,
            labels: BTreeMap::from([("app".into(), "echo".into()), ("version".into(), "v1".into())]),
            service_account: "default".into(),
            addr: "127.0.0.1:4001".parse().unwrap(),
            meshed: true,
            admin: None,
        }
    }

    #[test]
    fn a_parent_port_limits_the_route_to_that_port() {
        let s = snapshot(&format!(
            "{}---\n{}",
            route("mesh", "only-80", ", port: 80", "echo-v1"),
            route("mesh", "all-ports", "", "echo-v1")
        ));
        assert_eq!(names(&compute(&s, &[], "mesh", "mesh", "echo", 80)), ["mesh/all-ports", "mesh/only-80"]);
        assert_eq!(names(&compute(&s, &[], "mesh", "mesh", "echo", 8080)), ["mesh/all-ports"]);
        assert!(compute(&s, &[], "mesh", "mesh", "echo-v1", 80).routes.is_empty());
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
        let s = snapshot(&format!(
            "{}---\n{}",
            route("mesh", "producer", "", "echo-v1"),
            route("consumer", "consumer", "", "echo-v1")
        ));
        assert_eq!(names(&compute(&s, &[], "consumer", "mesh", "echo", 80)), ["consumer/consumer"]);
        assert_eq!(names(&compute(&s, &[], "mesh", "mesh", "echo", 80)), ["mesh/producer"]);
        assert_eq!(names(&compute(&s, &[], "elsewhere", "mesh", "echo", 80)), ["mesh/producer"]);
    }

    #[test]
    fn backends_carry_their_endpoints_or_say_they_do_not_exist() {
        let s = snapshot(&format!(
            "{}---\n{}",
            route("mesh", "a", "", "echo-v1"),
            route("mesh", "b", "", "echo-v3")
        ));
        let update = compute(&s, &[v1_instance()], "mesh", "mesh", "echo", 80);
        let a = &update.routes[0].rules[0].backends[0];
        assert!(a.exists);
        assert_eq!(a.endpoints.len(), 1);
        assert_eq!(a.endpoints[0].address, "127.0.0.1:4001");
        let b = &update.routes[1].rules[0].backends[0];
        assert!(!b.exists && b.endpoints.is_empty());
    }

    #[test]
    fn grpc_method_matches_become_path_matches() {
        let s = snapshot(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - matches:\n    - method: {service: pkg.Echo, method: Call}\n    - method: {service: pkg.Echo}\n    - method: {method: Call}\n    - method: {type: RegularExpression, service: 'pkg\\..*'}\n",
        );
        let update = compute(&s, &[], "mesh", "mesh", "echo", 80);
        let paths: Vec<(i32, String)> = update.routes[0].rules[0]
            .matches
            .iter()
            .map(|m| m.path.as_ref().map(|p| (p.r#type, p.value.clone())).unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                (PathMatchType::Exact as i32, "/pkg.Echo/Call".to_string()),
                (PathMatchType::Prefix as i32, "/pkg.Echo/".to_string()),
                (PathMatchType::RegularExpression as i32, "/[^/]+/Call".to_string()),
                (PathMatchType::RegularExpression as i32, "/(?:pkg\\..*)/[^/]+".to_string()),
            ]
        );
    }

    #[test]
    fn mirrors_resolve_their_backend_and_share() {
        let s = snapshot(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: m, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: echo-v1, port: 80}, percent: 25}\n    - type: CORS\n      cors: {allowOrigins: ['https://*.example.com'], maxAge: 60}\n",
        );
        let update = compute(&s, &[v1_instance()], "mesh", "mesh", "echo", 80);
        let filters = &update.routes[0].rules[0].filters;
        let Some(route_filter::Filter::RequestMirror(m)) = &filters[0].filter else { panic!("{filters:?}") };
        assert_eq!((m.numerator, m.denominator), (25, 100));
        let backend = m.backend.as_ref().unwrap();
        assert!(backend.exists && backend.endpoints.len() == 1);
        let Some(route_filter::Filter::Cors(c)) = &filters[1].filter else { panic!("{filters:?}") };
        assert_eq!((c.allow_origins.as_slice(), c.max_age), (&["https://*.example.com".to_string()][..], 60));
    }

    #[test]
    fn extension_refs_carry_their_fault_injection_or_say_it_is_missing() {
        let s = snapshot(
            "apiVersion: tarmac.io/v1alpha1\nkind: FaultInjection\nmetadata: {name: flaky, namespace: mesh}\nspec:\n  delay: {fixedDelay: 200ms, percentage: 10}\n  abort: {httpStatus: 503, percentage: 5}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: f, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - filters: [{type: ExtensionRef, extensionRef: {group: tarmac.io, kind: FaultInjection, name: flaky}}]\n  - filters: [{type: ExtensionRef, extensionRef: {group: tarmac.io, kind: FaultInjection, name: nope}}]\n",
        );
        let update = compute(&s, &[], "mesh", "mesh", "echo", 80);
        let fault = |rule: usize| match &update.routes[0].rules[rule].filters[0].filter {
            Some(route_filter::Filter::Fault(f)) => f.clone(),
            other => panic!("{other:?}"),
        };
        let f = fault(0);
        assert_eq!(
            (f.delay_ms, f.delay_per_million, f.abort_status, f.abort_per_million),
            (200, 100_000, 503, 50_000)
        );
        assert!(!f.unresolved && fault(1).unresolved);
    }

    #[test]
    fn resilience_policies_reach_the_service_and_its_rules_in_order_of_precedence() {
        let policy = |name: &str, target: &str, body: &str| {
            format!(
                "apiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}, namespace: mesh}}\nspec:\n  targetRefs: [{target}]\n{body}"
            )
        };
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - name: own\n    matches: [{path: {value: /own}}]\n    retry: {codes: [502], attempts: 1}\n    timeouts: {request: 3s}\n  - name: section\n    matches: [{path: {value: /section}}]\n  - name: plain\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: rpc, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 8080}]\n  rules:\n  - name: reads\n";
        let s = snapshot(&[
            routes.to_string(),
            policy("a-service", "{group: \"\", kind: Service, name: echo}", "  retryBudget: {enabled: false}\n  circuitBreaker: {consecutiveFailures: 3}\n  retry: {codes: [503]}\n  timeouts: {request: 9s, backendRequest: 1s}\n"),
            policy("b-section", "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web, sectionName: section}", "  retry: {codes: [504], attempts: 4}\n"),
            policy("c-route", "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}", "  retry: {codes: [500]}\n  timeouts: {request: 5s}\n"),
            policy("d-grpc", "{group: gateway.networking.k8s.io, kind: GRPCRoute, name: rpc}", "  retry: {attempts: 3}\n  timeouts: {request: 2s}\n"),
        ]
        .join("---\n"));
        let update = compute(&s, &[], "mesh", "mesh", "echo", 80);
        let r = update.resilience.as_ref().expect("the Service's policy");
        assert!(r.retry_budget.as_ref().unwrap().disabled);
        assert_eq!(r.circuit_breaker.as_ref().unwrap().consecutive_failures, Some(3));
        assert_eq!((r.request_timeout_ms, r.backend_request_timeout_ms), (9000, 1000));
        let rules = &update.routes[0].rules;
        let rule = |name: &str| rules.iter().find(|r| r.name == name).unwrap();
        // Its own retry and request timeout; the Service's per-try timeout.
        assert_eq!(rule("own").retry.as_ref().unwrap().codes, [502]);
        assert_eq!((rule("own").request_timeout_ms, rule("own").backend_request_timeout_ms), (3000, 1000));
        // A policy naming the rule beats one naming the route.
        assert_eq!(rule("section").retry.as_ref().unwrap().codes, [504]);
        assert_eq!(rule("section").retry.as_ref().unwrap().attempts, 4);
        assert_eq!(rule("section").request_timeout_ms, 5000);
        assert_eq!(rule("plain").retry.as_ref().unwrap().codes, [500]);
        // GRPCRoute rules get retries only this way; a retry naming no codes retries UNAVAILABLE.
        let grpc = compute(&s, &[], "mesh", "mesh", "echo", 8080);
        let reads = &grpc.routes[0].rules[0];
        assert_eq!(reads.retry.as_ref().unwrap().grpc_codes, [14]);
        assert_eq!(reads.request_timeout_ms, 2000);
        // Without policies: nothing, and the proxies keep their defaults.
        assert!(compute(&snapshot(""), &[], "mesh", "mesh", "echo", 80).resilience.is_none());
    }

    #[test]
    fn a_services_request_timeout_defaults_and_a_policy_changes_or_removes_it() {
        let default = tarmac_route::policy::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64;
        let with = |timeouts: &str| {
            let policy = format!(
                "apiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: p, namespace: mesh}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: echo}}]\n{timeouts}---\n{}",
                route("mesh", "web", ", port: 80", "echo-v1")
            );
            let update = compute(&snapshot(&policy), &[], "mesh", "mesh", "echo", 80);
            (update.resilience.unwrap().request_timeout_ms, update.routes[0].rules[0].request_timeout_ms)
        };
        // A policy that says nothing of it: the default, for unrouted requests and rules.
        assert_eq!(with("  retryBudget: {ratio: 0.1}\n"), (default, default));
        assert_eq!(with("  timeouts: {backendRequest: 1s}\n"), (default, default));
        assert_eq!(with("  timeouts: {request: 5s}\n"), (5000, 5000));
        // `0s`: no timeout at all.
        assert_eq!(with("  timeouts: {request: 0s}\n"), (0, 0));
        // No policy: the rule still gets the default (the proxy applies it to unrouted ones).
        let plain = compute(
            &snapshot(&route("mesh", "web", ", port: 80", "echo-v1")),
            &[],
            "mesh",
            "mesh",
            "echo",
            80,
        );
        assert_eq!(plain.routes[0].rules[0].request_timeout_ms, default);
    }
}
