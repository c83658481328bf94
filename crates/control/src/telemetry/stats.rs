//! Rows of golden metrics per workload, service, route and edge, grouped from the
//! proxies' windows. Pure functions of the windows and the configuration.
//!
//! - A *workload*'s and a *service*'s numbers are the server side: what the proxies of
//!   its replicas received (direction `inbound`), from meshed and non-meshed clients alike.
//! - A *route*'s numbers are the client side (direction `outbound`): routing happens in
//!   the caller's proxy, which labels its series with the route; series without that
//!   label count for the service's default route. Their latency comes from the route
//!   histogram of routed services (the target's own histogram, of services without
//!   routes, covers every rule at once).
//! - An *edge* is a calling workload and the service it calls, from the caller's
//!   outbound series.

use super::ProxyWindow;
use super::golden::{Counts, DEFAULT_ROUTE, Golden, parse_service_target};
use crate::prometheus::Histogram;
use crate::store::Snapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use tarmac_model::Resource;
use tarmac_model::meta::selector_matches;

/// What `stat` can report on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Workload,
    Service,
    Route,
    Edge,
}

impl Kind {
    /// Accepts the singular, the plural and the short forms (`wl`, `svc`).
    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "workload" | "workloads" | "wl" | "deploy" | "deployment" => Some(Kind::Workload),
            "service" | "services" | "svc" => Some(Kind::Service),
            "route" | "routes" | "rt" => Some(Kind::Route),
            "edge" | "edges" => Some(Kind::Edge),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::Service => "service",
            Kind::Route => "route",
            Kind::Edge => "edge",
        }
    }
}

/// Golden metrics of one workload, service or route.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatRow {
    pub namespace: String,
    pub name: String,
    /// Routes: the Service they belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Workloads: proxies reporting / replicas wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meshed: Option<String>,
    #[serde(flatten)]
    pub golden: Golden,
}

/// Golden metrics of one caller → callee pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeRow {
    pub src_namespace: String,
    pub src_workload: String,
    /// The service called, when the target names one of the configuration.
    pub dst_namespace: Option<String>,
    pub dst_service: Option<String>,
    /// The target as the caller's proxy names it.
    pub dst_target: String,
    /// The workloads the service selects: where the calls went.
    pub dst_workloads: Vec<String>,
    #[serde(flatten)]
    pub golden: Golden,
}

/// Counts summed over proxies, with the longest period any of them covers.
#[derive(Default)]
struct Sum {
    counts: Counts,
    seconds: f64,
}

impl Sum {
    fn add(&mut self, counts: &Counts, seconds: f64) {
        self.counts.add(counts);
        self.seconds = self.seconds.max(seconds);
    }

    fn golden(&self) -> Golden {
        self.counts.golden(self.seconds)
    }
}

fn inbound_total(window: &ProxyWindow) -> Counts {
    let mut total = Counts::default();
    for (key, counts) in &window.series {
        if key.direction == "inbound" {
            total.add(counts);
        }
    }
    total
}

fn workloads(snapshot: &Snapshot) -> impl Iterator<Item = &tarmac_model::Workload> {
    snapshot.iter_kind("Workload").filter_map(|r| match r {
        Resource::Workload(w) => Some(w),
        _ => None,
    })
}

fn services(snapshot: &Snapshot) -> impl Iterator<Item = &tarmac_model::Service> {
    snapshot.iter_kind("Service").filter_map(|r| match r {
        Resource::Service(s) => Some(s),
        _ => None,
    })
}

/// One row per Workload of the configuration (and per workload that reports without
/// being in it any more).
pub fn workload_rows(windows: &[ProxyWindow], snapshot: &Snapshot) -> Vec<StatRow> {
    let mut rows: BTreeMap<(String, String), (Sum, u32, u32)> = BTreeMap::new();
    for w in workloads(snapshot) {
        rows.entry((w.metadata.namespace.clone(), w.metadata.name.clone())).or_default().2 = w.spec.replicas;
    }
    for window in windows {
        let key = (window.instance.namespace.clone(), window.instance.workload.clone());
        let entry = rows.entry(key).or_default();
        entry.0.add(&inbound_total(window), window.seconds);
        if window.reporting {
            entry.1 += 1;
        }
    }
    rows.into_iter()
        .map(|((namespace, name), (sum, reporting, wanted))| StatRow {
            namespace,
            name,
            service: None,
            meshed: Some(format!("{reporting}/{wanted}")),
            golden: sum.golden(),
        })
        .collect()
}

/// One row per Service: what the proxies of the replicas it selects received.
pub fn service_rows(windows: &[ProxyWindow], snapshot: &Snapshot) -> Vec<StatRow> {
    services(snapshot)
        .map(|service| {
            let mut sum = Sum::default();
            for window in windows.iter().filter(|w| {
                w.instance.namespace == service.metadata.namespace
                    && selector_matches(&service.spec.selector, &w.instance.labels)
            }) {
                sum.add(&inbound_total(window), window.seconds);
            }
            // Retries, denials, ejections and shed requests are counted by the callers.
            for window in windows {
                for (key, counts) in window.series.iter().filter(|(k, _)| k.direction == "outbound") {
                    if resolve(snapshot, &key.target, &window.instance.namespace).is_some_and(|s| {
                        s.metadata.namespace == service.metadata.namespace
                            && s.metadata.name == service.metadata.name
                    }) {
                        sum.counts.resilience.add(&counts.resilience);
                    }
                }
            }
            StatRow {
                namespace: service.metadata.namespace.clone(),
                name: service.metadata.name.clone(),
                service: None,
                meshed: None,
                golden: sum.golden(),
            }
        })
        .collect()
}

/// The Service (namespace, name) an outbound target of a proxy in `caller_namespace`
/// names, if the configuration has it.
fn resolve<'a>(
    snapshot: &'a Snapshot,
    target: &str,
    caller_namespace: &str,
) -> Option<&'a tarmac_model::Service> {
    let (namespace, name) = parse_service_target(target, caller_namespace)?;
    services(snapshot).find(|s| s.metadata.namespace == namespace && s.metadata.name == name)
}

/// One row per route of every service called in the window (the default route
/// included), and one per named route rule attached to a Service in the configuration.
pub fn route_rows(windows: &[ProxyWindow], snapshot: &Snapshot) -> Vec<StatRow> {
    let mut rows: BTreeMap<(String, String, String), Sum> = BTreeMap::new();
    let configured = configured_route_names(snapshot);
    for (namespace, service, route) in &configured {
        rows.entry((namespace.clone(), service.clone(), route.clone())).or_default();
    }
    for window in windows {
        let outbound = || window.series.iter().filter(|(k, _)| k.direction == "outbound");
        // Targets this proxy routes: their rules are timed by the route histogram.
        let routed: Vec<&str> = outbound()
            .filter(|(_, c)| c.route_latency != Histogram::EMPTY)
            .map(|(k, _)| k.target.as_str())
            .collect();
        for (key, counts) in outbound() {
            let Some(service) = resolve(snapshot, &key.target, &window.instance.namespace) else { continue };
            let route = key.route.clone().unwrap_or_else(|| DEFAULT_ROUTE.to_string());
            let row = rows
                .entry((service.metadata.namespace.clone(), service.metadata.name.clone(), route))
                .or_default();
            if routed.contains(&key.target.as_str()) {
                let by_rule = Counts { latency: counts.route_latency.clone(), ..counts.clone() };
                row.add(&by_rule, window.seconds);
            } else {
                row.add(counts, window.seconds);
            }
        }
    }
    rows.into_iter()
        .filter(|((namespace, service, route), sum)| {
            sum.counts.successes + sum.counts.failures > 0.0
                || configured.iter().any(|(n, s, r)| (n, s, r) == (namespace, service, route))
        })
        .map(|((namespace, service, route), sum)| StatRow {
            namespace,
            name: route,
            service: Some(service),
            meshed: None,
            golden: sum.golden(),
        })
        .collect()
}

/// (namespace, service, rule name) of every named rule of the routes attached to a
/// Service: the rows `stat route` shows even before they carry traffic.
fn configured_route_names(snapshot: &Snapshot) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for resource in snapshot.objects.values() {
        let (meta, parents, names): (_, _, Vec<Option<String>>) = match resource {
            Resource::HttpRoute(r) => {
                (&r.metadata, &r.spec.parent_refs, r.spec.rules.iter().map(|x| x.name.clone()).collect())
            }
            Resource::GrpcRoute(r) => {
                (&r.metadata, &r.spec.parent_refs, r.spec.rules.iter().map(|x| x.name.clone()).collect())
            }
            _ => continue,
        };
        for parent in parents.iter().filter(|p| p.is_service()) {
            let namespace = parent.namespace.clone().unwrap_or_else(|| meta.namespace.clone());
            for name in names.iter().flatten() {
                out.push((namespace.clone(), parent.name.clone(), name.clone()));
            }
        }
    }
    out
}

/// One row per (calling workload, target) with traffic in the window.
pub fn edge_rows(windows: &[ProxyWindow], snapshot: &Snapshot) -> Vec<EdgeRow> {
    // (caller namespace, caller workload, destination) -> counts, the service called and
    // the caller's service account.
    type Edge = (Sum, Option<(String, String)>, String);
    let mut rows: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
    for window in windows {
        for (key, counts) in window.series.iter().filter(|(k, _)| k.direction == "outbound") {
            let service = resolve(snapshot, &key.target, &window.instance.namespace)
                .map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
            let dst = match &service {
                Some((ns, name)) => format!("{ns}/{name}"),
                None => key.target.clone(),
            };
            let entry = rows
                .entry((window.instance.namespace.clone(), window.instance.workload.clone(), dst))
                .or_default();
            entry.0.add(counts, window.seconds);
            entry.1 = service;
            entry.2 = window.instance.service_account.clone();
        }
    }
    rows.into_iter()
        .filter(|(_, (sum, _, _))| sum.counts.successes + sum.counts.failures > 0.0)
        .map(|((src_namespace, src_workload, dst), (sum, service, service_account))| {
            let dst_workloads = service
                .as_ref()
                .and_then(|(ns, name)| {
                    services(snapshot).find(|s| &s.metadata.namespace == ns && &s.metadata.name == name)
                })
                .map(|s| {
                    workloads(snapshot)
                        .filter(|w| {
                            w.metadata.namespace == s.metadata.namespace
                                && selector_matches(&s.spec.selector, &w.metadata.labels)
                        })
                        .map(|w| w.metadata.name.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut golden = sum.golden();
            // Callers' proxies do not label outbound series with mTLS, nor see why a
            // request was refused; the callee's inbound series carry the caller's proven
            // identity, with what it secured and what its policies refused.
            let from_caller = service.as_ref().and_then(|(ns, name)| {
                let identity = format!("/ns/{src_namespace}/sa/{service_account}");
                let service =
                    services(snapshot).find(|s| &s.metadata.namespace == ns && &s.metadata.name == name)?;
                let mut counts = super::golden::Counts::default();
                for (_, c) in windows
                    .iter()
                    .filter(|w| {
                        w.instance.namespace == *ns
                            && selector_matches(&service.spec.selector, &w.instance.labels)
                    })
                    .flat_map(|w| &w.series)
                    .filter(|(k, _)| {
                        k.direction == "inbound"
                            && k.client_id.as_ref().is_some_and(|c| c.ends_with(&identity))
                    })
                {
                    counts.secured += c.secured;
                    counts.denied += c.denied;
                    counts.rate_limited += c.rate_limited;
                }
                Some(counts)
            });
            let requests = sum.counts.successes + sum.counts.failures;
            golden.secured_rate =
                from_caller.as_ref().map(|c| ((c.secured / requests).min(1.0) * 10_000.0).round() / 10_000.0);
            if let Some(c) = &from_caller {
                golden.denied = c.denied.round() as u64;
                golden.rate_limited = c.rate_limited.round() as u64;
            }
            EdgeRow {
                src_namespace,
                src_workload,
                dst_namespace: service.as_ref().map(|(ns, _)| ns.clone()),
                dst_service: service.map(|(_, name)| name),
                dst_target: dst,
                dst_workloads,
                golden,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Instance;
    use crate::telemetry::golden::SeriesKey;

    const CONFIG: &str = "\
apiVersion: v1
kind: Service
metadata: {name: names}
spec: {selector: {app: names}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: greeter}
spec: {selector: {app: greeter}, ports: [{port: 80}]}
---
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata: {name: names, labels: {app: names}}
spec: {command: [x], port: 8080, replicas: 2}
---
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata: {name: greeter, labels: {app: greeter}}
spec: {command: [x], port: 8080}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: names-split}
spec:
  parentRefs: [{kind: Service, group: \"\", name: names}]
  rules: [{name: canary, backendRefs: [{name: names, port: 80}]}]
";

    fn snapshot() -> Snapshot {
        let objects = tarmac_model::parse_documents("t.yaml", CONFIG)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 3, objects }
    }

    fn window(workload: &str, replica: u32, series: &[(&str, &str, Option<&str>, f64, f64)]) -> ProxyWindow {
        ProxyWindow {
            instance: Instance {
                namespace: "default".into(),
                workload: workload.into(),
                replica,
                labels: [("app".to_string(), workload.to_string())].into(),
                service_account: workload.into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                meshed: true,
                admin: Some("127.0.0.1:2".parse().unwrap()),
            },
            seconds: 10.0,
            series: series
                .iter()
                .map(|&(direction, target, route, successes, failures)| {
                    (
                        SeriesKey {
                            direction: direction.into(),
                            target: target.into(),
                            route: route.map(Into::into),
                            client_id: None,
                        },
                        Counts { successes, failures, ..Default::default() },
                    )
                })
                .collect(),
            reporting: true,
        }
    }

    fn windows() -> Vec<ProxyWindow> {
        vec![
            window(
                "greeter",
                0,
                &[("inbound", "127.0.0.1:10", None, 18.0, 2.0), ("outbound", "names", None, 20.0, 0.0)],
            ),
            window("names", 0, &[("inbound", "127.0.0.1:11", None, 10.0, 0.0)]),
            window("names", 1, &[("inbound", "127.0.0.1:12", None, 9.0, 1.0)]),
        ]
    }

    #[test]
    fn workloads_and_services_are_the_server_side_summed_over_replicas() {
        let rows = workload_rows(&windows(), &snapshot());
        let names = rows.iter().find(|r| r.name == "names").unwrap();
        assert_eq!(names.golden.requests, 20);
        assert_eq!(names.golden.success_rate, Some(0.95));
        assert_eq!(names.golden.rps, 2.0);
        assert_eq!(names.meshed.as_deref(), Some("2/2"));
        let services = service_rows(&windows(), &snapshot());
        let greeter = services.iter().find(|r| r.name == "greeter").unwrap();
        assert_eq!((greeter.golden.requests, greeter.golden.success_rate), (20, Some(0.9)));
    }

    #[test]
    fn edges_are_callers_and_the_services_they_call() {
        let edges = edge_rows(&windows(), &snapshot());
        assert_eq!(edges.len(), 1, "{edges:?}");
        let e = &edges[0];
        assert_eq!((e.src_workload.as_str(), e.dst_service.as_deref()), ("greeter", Some("names")));
        assert_eq!(e.dst_workloads, ["names"]);
        assert_eq!((e.golden.requests, e.golden.success_rate), (20, Some(1.0)));
        assert_eq!(e.golden.secured_rate, Some(0.0), "no request reached names over mTLS as greeter");

        // names-0 received 15 requests over mTLS from greeter's identity.
        let mut w = windows();
        w[1].series.insert(
            SeriesKey {
                direction: "inbound".into(),
                target: "127.0.0.1:11".into(),
                route: None,
                client_id: Some("spiffe://cluster.local/ns/default/sa/greeter".into()),
            },
            Counts { successes: 15.0, secured: 15.0, tls_known: 15.0, ..Default::default() },
        );
        let edges = edge_rows(&w, &snapshot());
        assert_eq!(edges[0].golden.secured_rate, Some(0.75));
    }

    #[test]
    fn routes_default_when_unlabelled_and_configured_rules_are_listed() {
        let mut w = windows();
        w.push(window("greeter", 1, &[("outbound", "names", Some("canary"), 3.0, 1.0)]));
        let rows = route_rows(&w, &snapshot());
        let summary: Vec<(&str, &str, u64)> = rows
            .iter()
            .map(|r| (r.service.as_deref().unwrap(), r.name.as_str(), r.golden.requests))
            .collect();
        assert_eq!(summary, [("names", "[default]", 20), ("names", "canary", 4)]);
    }

    fn latency(fast: f64, slow: f64) -> Histogram {
        use crate::prometheus::Bucket;
        Histogram::new(vec![
            Bucket { upper_bound: 0.01, cumulative_count: fast },
            Bucket { upper_bound: 0.5, cumulative_count: fast + slow },
            Bucket { upper_bound: f64::INFINITY, cumulative_count: fast + slow },
        ])
    }

    #[test]
    fn routed_services_take_route_latency_from_the_route_histogram() {
        let mut w = vec![window("greeter", 0, &[("outbound", "names", None, 10.0, 0.0)])];
        let series = &mut w[0].series;
        // The target's histogram times every request (10 fast, 10 slow)...
        series.values_mut().for_each(|c| c.latency = latency(10.0, 10.0));
        // ...the route histogram times each rule: the unnamed one fast, canary slow.
        series.values_mut().for_each(|c| c.route_latency = latency(10.0, 0.0));
        series.insert(
            SeriesKey {
                direction: "outbound".into(),
                target: "names".into(),
                route: Some("canary".into()),
                client_id: None,
            },
            Counts { successes: 10.0, route_latency: latency(0.0, 10.0), ..Default::default() },
        );
        let rows = route_rows(&w, &snapshot());
        let p50 = |name: &str| rows.iter().find(|r| r.name == name).unwrap().golden.latency_ms_p50.unwrap();
        assert!(p50("canary") > 10.0, "{rows:?}");
        assert!(p50("[default]") <= 10.0, "the slow rule is not counted twice: {rows:?}");

        // Without a route histogram (a proxy that does not route), the target's histogram.
        w[0].series.values_mut().for_each(|c| c.route_latency = Histogram::EMPTY);
        let rows = route_rows(&w, &snapshot());
        let default = rows.iter().find(|r| r.name == "[default]").unwrap();
        assert!(default.golden.latency_ms_p99.unwrap() > 10.0, "{rows:?}");
    }
}
