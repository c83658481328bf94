//! The route table of one Service port, for one caller namespace, as a proxy evaluates
//! it: the routes discovery would send ([`super::routes::routes_for`]) compiled by the
//! proxy's own [`RouteTable::build`], whose matches come out in the proxy's precedence
//! order and whose [`RouteTable::select`] picks the rule of a request. `tarmac routes`
//! and the shadowed-rule check of `tarmac check` read these tables, so what they say is
//! what the data plane does: there is no second implementation of matching to drift.
//!
//! Endpoints are left out: they do not take part in choosing a rule.

use super::routes::{Parent, routes_for};
use crate::store::Snapshot;
use serde::Serialize;
use tarmac_proto::discovery::{self as pb, path_modifier, route_filter};
use tarmac_route::{MatchSummary, RouteTable, ValueSummary};

/// The compiled routes of a Service port for callers in one namespace.
pub struct CompiledRoutes {
    /// In discovery's order (`namespace/name`).
    pub routes: Vec<pb::Route>,
    /// `None` when no route applies: requests go to the Service's endpoints.
    pub table: Option<RouteTable<()>>,
    /// For each rule of the table, its route (index in `routes`) and its index there.
    origins: Vec<(usize, usize)>,
}

/// One match of the table, in precedence order, with where it sends requests.
#[derive(Clone, Debug, Serialize)]
pub struct TableEntry {
    /// The kind of request, in a few words: `GET Exact /a, header x=1, query q=2`.
    pub request: String,
    #[serde(rename = "match")]
    pub summary: MatchJson,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    /// `namespace/name`.
    pub route: String,
    /// The rule's name, when it has one.
    pub rule: Option<String>,
    pub rule_index: usize,
    /// Filters in short form: `request headers: set x-rule=a`, `redirect 301 ...`.
    pub filters: Vec<String>,
    pub backends: Vec<BackendJson>,
    /// The backends and filters in a few words.
    pub destination: String,
    /// The retry the rule's requests get (its own, else a ResiliencePolicy's: the rule's,
    /// the route's, the Service's); `None`: only requests never sent are tried again.
    pub retry: Option<RetryJson>,
    /// Time to the response head, all tries included; `None`: no limit.
    pub request_timeout_ms: Option<u64>,
    /// Time to the response head of each try; `None`: no limit.
    pub backend_request_timeout_ms: Option<u64>,
    /// Retry and timeouts in a few words: `retry 2x on 503, backoff 25ms; timeout 1s`.
    pub resilience: String,
}

/// A rule's retry as proxies apply it.
#[derive(Clone, Debug, Serialize)]
pub struct RetryJson {
    /// Retries after the first try.
    pub attempts: u32,
    pub codes: Vec<u32>,
    pub grpc_codes: Vec<u32>,
    pub backoff_ms: u64,
}

impl From<&pb::Retry> for RetryJson {
    fn from(r: &pb::Retry) -> Self {
        let backoff_ms = match r.backoff_ms {
            0 => tarmac_route::policy::DEFAULT_BACKOFF.as_millis() as u64,
            set => set,
        };
        Self { attempts: r.attempts, codes: r.codes.clone(), grpc_codes: r.grpc_codes.clone(), backoff_ms }
    }
}

/// A [`MatchSummary`] for JSON.
#[derive(Clone, Debug, Serialize)]
pub struct MatchJson {
    pub path_type: &'static str,
    pub path: String,
    pub method: Option<String>,
    pub headers: Vec<ValueJson>,
    pub query_params: Vec<ValueJson>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ValueJson {
    pub name: String,
    pub value: String,
    /// `Exact` or `RegularExpression`.
    #[serde(rename = "type")]
    pub match_type: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendJson {
    /// `namespace/name:port`.
    pub name: String,
    pub weight: u32,
    /// False: the backendRef names no Service port; its share of requests gets 500.
    pub exists: bool,
    pub filters: Vec<String>,
}

impl CompiledRoutes {
    /// Compiles the routes `parent` has for callers in `caller_namespace`.
    pub fn compile(
        snapshot: &Snapshot,
        caller_namespace: &str,
        parent: &Parent<'_>,
    ) -> Result<Self, tarmac_route::RouteError> {
        // Endpoints take no part in choosing a rule: none are asked for.
        let routes = routes_for(snapshot, &[], caller_namespace, parent);
        let origins = routes
            .iter()
            .enumerate()
            .flat_map(|(r, route)| (0..route.rules.len()).map(move |i| (r, i)))
            .collect();
        let table = if routes.is_empty() {
            None
        } else {
            Some(RouteTable::build(&routes, parent.port.port, &mut |_| ())?)
        };
        Ok(Self { routes, table, origins })
    }

    /// The route and rule of rule `index` of the table.
    pub fn origin(&self, index: usize) -> (&pb::Route, usize) {
        let (route, rule) = self.origins[index];
        (&self.routes[route], rule)
    }

    /// Every match in the order the proxy tries them, with its rule index.
    pub fn summaries(&self) -> Vec<(MatchSummary, usize)> {
        self.table.iter().flat_map(|t| t.entries().map(|(m, rule)| (m.summary(), rule))).collect()
    }

    /// The table as [`TableEntry`] rows, in precedence order.
    pub fn entries(&self) -> Vec<TableEntry> {
        self.summaries().into_iter().map(|(summary, rule)| self.entry(&summary, rule)).collect()
    }

    fn entry(&self, summary: &MatchSummary, index: usize) -> TableEntry {
        let (route, rule_index) = self.origin(index);
        let rule = &route.rules[rule_index];
        let grpc = route.kind == "GRPCRoute";
        let filters: Vec<String> = rule.filters.iter().filter_map(filter_text).collect();
        let backends: Vec<BackendJson> = rule
            .backends
            .iter()
            .map(|b| BackendJson {
                name: format!("{}/{}:{}", b.namespace, b.service, b.port),
                weight: b.weight,
                exists: b.exists,
                filters: b.filters.iter().filter_map(filter_text).collect(),
            })
            .collect();
        let redirects =
            rule.filters.iter().any(|f| matches!(f.filter, Some(route_filter::Filter::RequestRedirect(_))));
        let mut parts = Vec::new();
        if backends.is_empty() && !redirects {
            parts.push("the Service's own endpoints".to_string());
        }
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        if !backends.is_empty() && total == 0 {
            parts.push("every backend has weight 0: 500".to_string());
        }
        for b in &backends {
            let mut text = format!("{} weight {}", b.name, b.weight);
            if !b.exists {
                text.push_str(" (no such Service port: its share gets 500)");
            }
            if !b.filters.is_empty() {
                text.push_str(&format!(" [{}]", b.filters.join("; ")));
            }
            parts.push(text);
        }
        let mut destination = parts.join(", ");
        if !filters.is_empty() {
            let joined = filters.join("; ");
            destination = if destination.is_empty() { joined } else { format!("{destination} [{joined}]") };
        }
        let retry = rule.retry.as_ref().map(RetryJson::from);
        let request_timeout_ms = (rule.request_timeout_ms > 0).then_some(rule.request_timeout_ms);
        let backend_request_timeout_ms =
            (rule.backend_request_timeout_ms > 0).then_some(rule.backend_request_timeout_ms);
        let resilience = resilience_text(retry.as_ref(), request_timeout_ms, backend_request_timeout_ms);
        TableEntry {
            request: describe(summary, grpc),
            summary: match_json(summary),
            kind: route.kind.clone(),
            route: format!("{}/{}", route.namespace, route.name),
            rule: (!rule.name.is_empty()).then(|| rule.name.clone()),
            rule_index,
            filters,
            backends,
            destination,
            retry,
            request_timeout_ms,
            backend_request_timeout_ms,
            resilience,
        }
    }

    /// The entry a request takes (its position in [`CompiledRoutes::entries`]), chosen by
    /// the proxy's own [`RouteTable::select`]; `None` when no rule matches (404).
    pub fn select(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Option<usize> {
        self.table.as_ref()?.select_entry(method, path, query, headers)
    }
}

/// `retry 2x on 500, 503 (gRPC 14), backoff 25ms; timeout 1s, per try 250ms`.
pub fn resilience_text(
    retry: Option<&RetryJson>,
    request_ms: Option<u64>,
    per_try_ms: Option<u64>,
) -> String {
    let ms = |ms: u64| if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") };
    let retry = match retry {
        None => "no retry (unsent requests only)".to_string(),
        Some(r) => {
            let mut on: Vec<String> = r.codes.iter().map(u32::to_string).collect();
            if !r.grpc_codes.is_empty() {
                let grpc: Vec<String> = r.grpc_codes.iter().map(u32::to_string).collect();
                on.push(format!("gRPC {}", grpc.join(", ")));
            }
            let on = if on.is_empty() { "connection failures".to_string() } else { on.join(", ") };
            format!("retry {}x on {on}, backoff {}", r.attempts, ms(r.backoff_ms))
        }
    };
    let timeout = match (request_ms, per_try_ms) {
        (None, None) => "no timeout".to_string(),
        (Some(r), None) => format!("timeout {}", ms(r)),
        (None, Some(t)) => format!("per try {}", ms(t)),
        (Some(r), Some(t)) => format!("timeout {}, per try {}", ms(r), ms(t)),
    };
    format!("{retry}; {timeout}")
}

fn match_json(s: &MatchSummary) -> MatchJson {
    let values = |list: &[ValueSummary]| {
        list.iter()
            .map(|v| ValueJson {
                name: v.name.clone(),
                value: v.value.clone(),
                match_type: if v.regex { "RegularExpression" } else { "Exact" },
            })
            .collect()
    };
    MatchJson {
        path_type: s.path_type,
        path: s.path.clone(),
        method: s.method.clone(),
        headers: values(&s.headers),
        query_params: values(&s.query_params),
    }
}

/// A match in a few words. A GRPCRoute's method match is a match on the path
/// `/<service>/<method>`; it reads as the gRPC service and method again.
pub fn describe(s: &MatchSummary, grpc: bool) -> String {
    let mut parts = Vec::new();
    if let Some(method) = &s.method {
        parts.push(method.clone());
    }
    let every_path = s.path_type == "PathPrefix" && s.path == "/";
    if grpc {
        match s.path_type {
            _ if every_path => {}
            "Exact" => parts.push(format!("gRPC {}", s.path.trim_start_matches('/'))),
            "PathPrefix" => parts.push(format!("gRPC {}/*", s.path.trim_matches('/'))),
            _ => parts.push(format!("gRPC path ~ {}", s.path)),
        }
    } else if !every_path {
        parts.push(format!("{} {}", s.path_type, s.path));
    }
    let value = |kind: &str, v: &ValueSummary| {
        format!("{kind} {}{}{}", v.name, if v.regex { " ~ " } else { "=" }, v.value)
    };
    parts.extend(s.headers.iter().map(|v| value("header", v)));
    parts.extend(s.query_params.iter().map(|v| value("query", v)));
    if parts.is_empty() { "every request".to_string() } else { parts.join(", ") }
}

fn header_modifier_text(kind: &str, m: &pb::HeaderModifier) -> String {
    let mut parts = Vec::new();
    for (verb, list) in [("set", &m.set), ("add", &m.add)] {
        if !list.is_empty() {
            let values: Vec<String> = list.iter().map(|h| format!("{}={}", h.name, h.value)).collect();
            parts.push(format!("{verb} {}", values.join(" ")));
        }
    }
    if !m.remove.is_empty() {
        parts.push(format!("remove {}", m.remove.join(" ")));
    }
    format!("{kind} headers: {}", parts.join(", "))
}

fn path_modifier_text(m: &Option<pb::PathModifier>) -> Option<String> {
    match m.as_ref()?.modifier.as_ref()? {
        path_modifier::Modifier::ReplaceFullPath(p) => Some(format!("path {p}")),
        path_modifier::Modifier::ReplacePrefixMatch(p) => Some(format!("prefix {p}")),
    }
}

/// A filter in a few words.
fn filter_text(f: &pb::RouteFilter) -> Option<String> {
    Some(match f.filter.as_ref()? {
        route_filter::Filter::RequestHeaderModifier(m) => header_modifier_text("request", m),
        route_filter::Filter::ResponseHeaderModifier(m) => header_modifier_text("response", m),
        route_filter::Filter::RequestRedirect(r) => {
            let mut parts = Vec::new();
            if !r.scheme.is_empty() {
                parts.push(format!("scheme {}", r.scheme));
            }
            if !r.hostname.is_empty() {
                parts.push(format!("host {}", r.hostname));
            }
            if r.port != 0 {
                parts.push(format!("port {}", r.port));
            }
            parts.extend(path_modifier_text(&r.path));
            let status = if r.status_code == 0 { 302 } else { r.status_code };
            format!("redirect {status}{}{}", if parts.is_empty() { "" } else { " " }, parts.join(" "))
        }
        route_filter::Filter::UrlRewrite(r) => {
            let mut parts = Vec::new();
            if !r.hostname.is_empty() {
                parts.push(format!("host {}", r.hostname));
            }
            parts.extend(path_modifier_text(&r.path));
            format!("rewrite {}", parts.join(" "))
        }
        route_filter::Filter::RequestMirror(m) => {
            let to = m
                .backend
                .as_ref()
                .map(|b| format!("{}/{}:{}", b.namespace, b.service, b.port))
                .unwrap_or_default();
            format!("mirror {}/{} to {to}", m.numerator, m.denominator)
        }
        route_filter::Filter::Cors(_) => "cors".to_string(),
        route_filter::Filter::Fault(f) if f.unresolved => {
            "fault: its FaultInjection does not exist (500)".to_string()
        }
        route_filter::Filter::Fault(f) => {
            let mut parts = Vec::new();
            if f.abort_per_million > 0 {
                parts.push(format!("abort {} {}%", f.abort_status, f.abort_per_million as f64 / 10_000.0));
            }
            if f.delay_per_million > 0 {
                parts.push(format!("delay {}ms {}%", f.delay_ms, f.delay_per_million as f64 / 10_000.0));
            }
            format!("fault {}", parts.join(", "))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarmac_model::Resource;

    const CONFIG: &str = "\
apiVersion: v1
kind: Service
metadata: {name: shop}
spec: {selector: {app: shop}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: shop-v2}
spec: {selector: {app: shop}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: shop, port: 80}]
  rules:
  - name: canary
    matches: [{headers: [{name: X-Canary, value: 'yes'}]}]
    backendRefs: [{name: shop-v2, port: 80}]
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: api}]}}]
    backendRefs: [{name: shop-v2, port: 80, weight: 3}, {name: gone, port: 80}]
  - name: exact
    matches: [{path: {type: Exact, value: /api/exact}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}}]
  - name: post
    matches: [{method: POST}]
";

    fn compiled() -> CompiledRoutes {
        let objects = tarmac_model::parse_documents("t.yaml", CONFIG)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let snapshot = Snapshot { generation: 1, objects };
        let shop = snapshot
            .iter_kind("Service")
            .find_map(|r| match r {
                Resource::Service(s) if s.metadata.name == "shop" => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        CompiledRoutes::compile(&snapshot, "default", &Parent { service: &shop, port: &shop.spec.ports[0] })
            .unwrap()
    }

    #[test]
    fn entries_come_in_the_proxys_precedence_order_with_destinations_in_short() {
        let entries = compiled().entries();
        let rows: Vec<(&str, Option<&str>)> =
            entries.iter().map(|e| (e.request.as_str(), e.rule.as_deref())).collect();
        assert_eq!(
            rows,
            [
                ("Exact /api/exact", Some("exact")),
                ("PathPrefix /api", Some("api")),
                ("POST", Some("post")),
                ("header x-canary=yes", Some("canary")),
            ]
        );
        assert_eq!(entries[0].destination, "redirect 301 path /new");
        assert_eq!(
            entries[1].destination,
            "default/shop-v2:80 weight 3, default/gone:80 weight 1 (no such Service port: its share gets 500) \
             [request headers: set x-rule=api]"
        );
        assert_eq!(entries[2].destination, "the Service's own endpoints");
    }

    #[test]
    fn a_request_takes_the_entry_the_proxy_selects() {
        let routes = compiled();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-canary", "yes".parse().unwrap());
        let taken = |method: http::Method, path: &str, headers: &http::HeaderMap| {
            routes.select(&method, path, None, headers).map(|i| routes.entries()[i].rule.clone().unwrap())
        };
        assert_eq!(taken(http::Method::GET, "/api/x", &headers).as_deref(), Some("api"));
        assert_eq!(taken(http::Method::POST, "/other", &headers).as_deref(), Some("post"));
        assert_eq!(taken(http::Method::GET, "/other", &headers).as_deref(), Some("canary"));
        assert_eq!(taken(http::Method::GET, "/other", &http::HeaderMap::new()), None);
    }

    #[test]
    fn grpc_matches_read_as_service_and_method() {
        let summary = |path_type, path: &str| MatchSummary {
            path_type,
            path: path.into(),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        };
        assert_eq!(describe(&summary("Exact", "/pkg.Svc/Get"), true), "gRPC pkg.Svc/Get");
        assert_eq!(describe(&summary("PathPrefix", "/pkg.Svc"), true), "gRPC pkg.Svc/*");
        assert_eq!(describe(&summary("PathPrefix", "/"), true), "every request");
    }
}
