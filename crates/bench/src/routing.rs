//! `tarmac bench --routing`: what the size of a route table costs the request path. One
//! Tarmac hop in front of the built-in upstream, following a Service whose HTTPRoute has
//! one rule, and another whose HTTPRoute has [`MANY_RULES`] rules of which the requests
//! take the last one in precedence order: every other rule's match is tried first, and
//! fails. Routes reach the proxies as they do in a mesh, from the control plane's
//! discovery server, which runs in this process.
//!
//! And what inbound policy costs: one Tarmac proxy's inbound side in front of the
//! upstream, its workload's Service without policies, against one with [`POLICIES`]
//! AuthorizationPolicies and a RateLimitPolicy, whose requests every policy is evaluated
//! for: half DENY policies that do not match, then ALLOW policies that do not, and the
//! last ALLOW (by name) that does; the limit is far above any load, so it is checked and
//! never refuses. Policies reach the proxy over `WatchInbound`.
//!
//! The cost of a retried request: a third Service, `retried`, has the one-rule route with
//! a retry on 503, and its rule asks the upstream ([`super::upstream::FAIL_FIRST_HEADER`])
//! to fail the first try of each request, which the generator numbers: every request is
//! tried twice, the second time from the body the proxy held. Its ResiliencePolicy turns
//! the retry budget off (every request is retried, far past the budget's 20 %) and its
//! backoff is the least there is, 1 ms (jittered up to 1.5 ms): the latency a retry adds
//! is mostly that wait, its CPU the proxy's work for the extra try.

use super::report::{RouteSummary, ratio};
use super::topology::{self, Route};
use super::upstream::FAIL_FIRST_HEADER;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tarmac_control::http_client::HttpClient;
use tarmac_control::registry::{Instance, Registry};
use tarmac_control::store::Snapshot;
use tarmac_proxy::config::{Config, ControlConfig, DiscoverConfig, OutboundConfig, ServiceConfig};
use tokio::sync::watch;

/// Why the routing benchmark's discovery could not start, or a proxy's routes are not in
/// force.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// `errors` as the model lists them.
    #[error("the routing benchmark's configuration is invalid: {errors}")]
    InvalidConfig { errors: String },
    #[error("{0}")]
    Listen(#[source] tarmac_control::BindError),
    #[error("the control plane: {0}")]
    ControlPlane(#[source] tarmac_control::StartError),
    #[error("the proxy at {listen} did not route by rule {MATCHED_RULE} within {ROUTES_TIMEOUT:?}")]
    NotInForce { listen: SocketAddr },
}

/// Rules of the large table.
pub const MANY_RULES: usize = 100;
/// The rule the measured requests take, in both tables.
pub const MATCHED_RULE: &str = "last";
/// AuthorizationPolicies of the inbound policy case.
pub const POLICIES: usize = 100;
/// The port of every Service of the benchmark's configuration.
const SERVICE_PORT: u16 = 80;
/// The namespace of every object of the benchmark's configuration (it names none), and
/// its proxies' service account.
const NAMESPACE: &str = "default";
/// How long a routed proxy has to receive its route table.
const ROUTES_TIMEOUT: Duration = Duration::from_secs(15);

/// The Service a routed route's proxy follows, and how many rules its HTTPRoute has.
pub fn service_of(route: Route) -> Option<(&'static str, usize)> {
    match route {
        Route::TarmacOneRule => Some(("one-rule", 1)),
        Route::TarmacManyRules => Some(("many-rules", MANY_RULES)),
        Route::TarmacRetried => Some(("retried", 1)),
        _ => None,
    }
}

/// The workload an inbound route's proxy names, whose Service carries its policies.
pub fn inbound_of(route: Route) -> Option<&'static str> {
    match route {
        Route::TarmacInbound => Some("inbound-none"),
        Route::TarmacInboundPolicy => Some("inbound-policy"),
        _ => None,
    }
}

/// The configuration discovery serves: the Service `upstream` (the built-in upstream,
/// not meshed), for each routed route a Service selecting the same upstream with its
/// HTTPRoute, and for each inbound route a Service selecting its workload (with the
/// policies, for [`Route::TarmacInboundPolicy`]).
pub fn configuration() -> String {
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{selector: {{app: upstream}}, ports: [{{port: {SERVICE_PORT}}}]}}\n"
        )
    };
    let mut yaml = service("upstream");
    for route in [Route::TarmacOneRule, Route::TarmacManyRules] {
        let (name, rules) = service_of(route).expect("a routed route");
        yaml.push_str("---\n");
        yaml.push_str(&service(name));
        yaml.push_str("---\n");
        yaml.push_str(&http_route(name, rules));
    }
    let (retried, _) = service_of(Route::TarmacRetried).expect("a routed route");
    yaml.push_str("---\n");
    yaml.push_str(&service(retried));
    let _ = write!(
        yaml,
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {retried}}}\nspec:\n  \
         parentRefs: [{{group: \"\", kind: Service, name: {retried}, port: {SERVICE_PORT}}}]\n  rules:\n  \
         - name: {MATCHED_RULE}\n    matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    \
         filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: {FAIL_FIRST_HEADER}, value: \"1\"}}]}}}}]\n    \
         retry: {{codes: [503], attempts: 1, backoff: 1ms}}\n    \
         backendRefs: [{{name: upstream, port: {SERVICE_PORT}}}]\n\
         ---\napiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {retried}}}\nspec:\n  \
         targetRefs: [{{group: \"\", kind: Service, name: {retried}}}]\n  retryBudget: {{enabled: false}}\n"
    );
    for route in [Route::TarmacInbound, Route::TarmacInboundPolicy] {
        let workload = inbound_of(route).expect("an inbound route");
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {workload}}}\nspec: {{selector: {{app: {workload}}}, ports: [{{port: {SERVICE_PORT}}}]}}\n"
        );
    }
    yaml.push_str(&policies(inbound_of(Route::TarmacInboundPolicy).expect("an inbound route")));
    yaml
}

/// [`POLICIES`] AuthorizationPolicies and a RateLimitPolicy on `service`: half DENY
/// identities the generator does not have, the rest ALLOW, the last of them by name
/// the generator's address; a limit it never reaches.
fn policies(service: &str) -> String {
    let target = format!("targetRefs: [{{group: \"\", kind: Service, name: {service}}}]");
    let mut yaml = String::new();
    for i in 0..POLICIES {
        let (name, action, from) = match i {
            i if i < POLICIES / 2 => (
                format!("deny-{i:03}"),
                "DENY",
                format!("identities: ['spiffe://cluster.local/ns/other/sa/deny-{i}']"),
            ),
            i if i < POLICIES - 1 => {
                (format!("allow-{i:03}"), "ALLOW", format!("serviceAccounts: [other/allow-{i}]"))
            }
            _ => ("allow-zz-generator".to_string(), "ALLOW", "cidrs: [127.0.0.0/8, '::1/128']".to_string()),
        };
        let _ = write!(
            yaml,
            "---\napiVersion: tarmac.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n  {target}\n  action: {action}\n  from: [{{{from}}}]\n"
        );
    }
    let _ = write!(
        yaml,
        "---\napiVersion: tarmac.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {service}}}\nspec:\n  {target}\n  total: {{requestsPerSecond: 1000000, burst: 100000}}\n  perCaller: {{requestsPerSecond: 1000000, burst: 100000}}\n"
    );
    yaml
}

/// An HTTPRoute of `rules` rules attached to `service`; the generator's requests take only
/// the last. The others match every path and a `Host` no request has, which ranks them
/// before the last rule's bare `PathPrefix /` (more header matches win). Every request
/// carries a `Host`, so none of them fails for a missing header: each request is checked
/// against all of them (path, then the header's value) before the last.
fn http_route(service: &str, rules: usize) -> String {
    let backend = format!("    backendRefs: [{{name: upstream, port: {SERVICE_PORT}}}]\n");
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {service}}}\nspec:\n  \
         parentRefs: [{{group: \"\", kind: Service, name: {service}, port: {SERVICE_PORT}}}]\n  rules:\n"
    );
    for i in 1..rules {
        let _ = write!(
            yaml,
            "  - name: miss-{i}\n    matches: [{{path: {{type: PathPrefix, value: /}}, headers: [{{name: host, value: miss-{i}.example}}]}}]\n{backend}"
        );
    }
    let _ = write!(
        yaml,
        "  - name: {MATCHED_RULE}\n    matches: [{{path: {{type: PathPrefix, value: /}}}}]\n{backend}"
    );
    yaml
}

/// The control plane on loopback (discovery only), serving [`configuration`] with the
/// upstream as the one instance of `upstream`. Stops when dropped.
pub struct Discovery {
    pub addr: SocketAddr,
    _snapshots: watch::Sender<Arc<Snapshot>>,
    _control: tarmac_control::Running,
}

impl Discovery {
    pub async fn start(upstream: SocketAddr) -> Result<Self, RoutingError> {
        let objects = tarmac_model::parse_documents("tarmac-bench-routing.yaml", &configuration())
            .map_err(|errors| RoutingError::InvalidConfig { errors: format!("{errors:?}") })?
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let (snapshots, receiver) = watch::channel(Arc::new(Snapshot { generation: 1, objects }));
        let registry = Registry::default();
        let instance = |workload: &str| Instance {
            namespace: NAMESPACE.into(),
            workload: workload.into(),
            replica: 0,
            labels: BTreeMap::from([("app".to_string(), workload.to_string())]),
            service_account: workload.into(),
            addr: upstream,
            meshed: false,
            admin: None,
        };
        // The inbound routes' workloads are known by their instances' labels.
        registry.set(["upstream", "inbound-none", "inbound-policy"].into_iter().map(instance).collect());
        let listeners = tarmac_control::Listeners::bind(([127, 0, 0, 1], 0).into(), &[])
            .await
            .map_err(RoutingError::Listen)?;
        let config = tarmac_control::Config::snapshots(receiver).with_registry(registry);
        let control = tarmac_control::start(config, listeners, std::future::pending())
            .await
            .map_err(RoutingError::ControlPlane)?;
        Ok(Self { addr: control.addrs.grpc, _snapshots: snapshots, _control: control })
    }
}

/// A client-side sidecar following `service` through discovery at `control`.
pub fn tarmac_routed_config(
    admin: SocketAddr,
    listen: SocketAddr,
    control: SocketAddr,
    service: &str,
) -> Config {
    let discover = DiscoverConfig { service: None, namespace: NAMESPACE.to_string(), port: SERVICE_PORT };
    let service =
        ServiceConfig { discover: Some(discover), ..topology::tarmac_service(service, Some(listen)) };
    Config {
        control: Some(control_of(control, "bench")),
        outbound: Some(OutboundConfig { transparent_listen: None, services: vec![service] }),
        ..topology::tarmac_config(admin)
    }
}

/// A sidecar's inbound side in front of `app`, following the inbound policy of
/// `workload` through discovery at `control` (its `/ready` waits for the policy).
pub fn tarmac_inbound_config(
    admin: SocketAddr,
    listen: SocketAddr,
    control: SocketAddr,
    app: SocketAddr,
    workload: &str,
) -> Config {
    Config {
        control: Some(control_of(control, workload)),
        inbound: Some(topology::tarmac_inbound(listen, app)),
        ..topology::tarmac_config(admin)
    }
}

/// The control plane at `addr`, for `workload` of the benchmark's namespace.
fn control_of(addr: SocketAddr, workload: &str) -> ControlConfig {
    ControlConfig {
        addr: addr.into(),
        namespace: NAMESPACE.to_string(),
        workload: workload.to_string(),
        service_account: NAMESPACE.to_string(),
    }
}

/// Waits until the proxy at `admin` has routed a request through `listen` by
/// [`MATCHED_RULE`]: its route table is in force.
pub async fn wait_for_routes(listen: SocketAddr, admin: SocketAddr) -> Result<(), RoutingError> {
    let deadline = Instant::now() + ROUTES_TIMEOUT;
    let rule = format!("rule=\"{MATCHED_RULE}\"");
    loop {
        let _ = HttpClient::new(listen, Duration::from_secs(1)).get("/").await;
        let metrics = HttpClient::new(admin, Duration::from_secs(1)).get("/metrics").await;
        if metrics.is_ok_and(|m| String::from_utf8_lossy(&m.body).contains(&rule)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RoutingError::NotInForce { listen });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One route against another under one load (the many-rule table against the one-rule
/// table; the policies against none): each side's figures and `case / base` of each.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoutingComparison {
    pub load: String,
    /// Rules (or policies) of the base and of the case.
    pub rules: [usize; 2],
    pub p50_us: [f64; 2],
    pub p99_us: [f64; 2],
    pub added_p50_us: [Option<f64>; 2],
    pub added_p99_us: [Option<f64>; 2],
    pub throughput_rps: [f64; 2],
    pub cpu_per_10k: [Option<f64>; 2],
    /// many / one. Ratios of added latency are absent when either is not positive (noise
    /// made a hop look faster than direct).
    pub ratio_p50: Option<f64>,
    pub ratio_p99: Option<f64>,
    pub ratio_added_p50: Option<f64>,
    pub ratio_added_p99: Option<f64>,
    pub ratio_throughput: Option<f64>,
    pub ratio_cpu_per_10k: Option<f64>,
}

/// One comparison per load that measured both `base` and `case`, of `sizes` rules (or
/// policies) each.
pub fn compare(
    summaries: &[RouteSummary],
    base: Route,
    case: Route,
    sizes: [usize; 2],
) -> Vec<RoutingComparison> {
    let mut loads: Vec<&str> = Vec::new();
    for s in summaries {
        if !loads.contains(&s.load.as_str()) {
            loads.push(&s.load);
        }
    }
    loads
        .into_iter()
        .filter_map(|load| {
            let find = |route| summaries.iter().find(|s| s.load == load && s.route == route);
            let (one, many) = (find(base)?, find(case)?);
            Some(RoutingComparison {
                load: load.to_string(),
                rules: sizes,
                p50_us: [one.p50_us, many.p50_us],
                p99_us: [one.p99_us, many.p99_us],
                added_p50_us: [one.added_p50_us, many.added_p50_us],
                added_p99_us: [one.added_p99_us, many.added_p99_us],
                throughput_rps: [one.throughput_rps, many.throughput_rps],
                cpu_per_10k: [one.cpu_per_10k, many.cpu_per_10k],
                ratio_p50: ratio(Some(many.p50_us), Some(one.p50_us)),
                ratio_p99: ratio(Some(many.p99_us), Some(one.p99_us)),
                ratio_added_p50: ratio(many.added_p50_us, one.added_p50_us),
                ratio_added_p99: ratio(many.added_p99_us, one.added_p99_us),
                ratio_throughput: ratio(Some(many.throughput_rps), Some(one.throughput_rps)),
                ratio_cpu_per_10k: ratio(many.cpu_per_10k, one.cpu_per_10k),
            })
        })
        .collect()
}

/// What a retried request costs under one load: the retried route against the same
/// one-rule route whose requests succeed at once, each side's figures and the difference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryCost {
    pub load: String,
    /// [one rule, retried]
    pub p50_us: [f64; 2],
    pub p99_us: [f64; 2],
    pub throughput_rps: [f64; 2],
    pub cpu_per_10k: [Option<f64>; 2],
    /// retried − one rule: the latency a retry adds to a request.
    pub extra_p50_us: f64,
    pub extra_p99_us: f64,
    /// retried − one rule: the proxy's CPU a retry adds, per 10k requests.
    pub extra_cpu_per_10k: Option<f64>,
    /// retried / one rule.
    pub ratio_cpu_per_10k: Option<f64>,
    pub ratio_throughput: Option<f64>,
}

/// One retry cost per load that measured both routes.
pub fn compare_retried(summaries: &[RouteSummary]) -> Vec<RetryCost> {
    let mut loads: Vec<&str> = Vec::new();
    for s in summaries {
        if !loads.contains(&s.load.as_str()) {
            loads.push(&s.load);
        }
    }
    loads
        .into_iter()
        .filter_map(|load| {
            let find = |route| summaries.iter().find(|s| s.load == load && s.route == route);
            let (one, retried) = (find(Route::TarmacOneRule)?, find(Route::TarmacRetried)?);
            Some(RetryCost {
                load: load.to_string(),
                p50_us: [one.p50_us, retried.p50_us],
                p99_us: [one.p99_us, retried.p99_us],
                throughput_rps: [one.throughput_rps, retried.throughput_rps],
                cpu_per_10k: [one.cpu_per_10k, retried.cpu_per_10k],
                extra_p50_us: retried.p50_us - one.p50_us,
                extra_p99_us: retried.p99_us - one.p99_us,
                extra_cpu_per_10k: retried.cpu_per_10k.zip(one.cpu_per_10k).map(|(r, o)| r - o),
                ratio_cpu_per_10k: ratio(retried.cpu_per_10k, one.cpu_per_10k),
                ratio_throughput: ratio(Some(retried.throughput_rps), Some(one.throughput_rps)),
            })
        })
        .collect()
}

/// The cost of a retried request as a table: one line per load.
pub fn retried_table(costs: &[RetryCost]) -> String {
    let cell =
        |v: Option<f64>, decimals: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"));
    let mut out =
        "retried: every request's first try failed (503) and retried once ÷ the same 1-rule route, one Tarmac hop\n"
            .to_string();
    let _ = writeln!(
        out,
        "  {:<14} {:>17} {:>17} {:>13} {:>13} {:>17} {:>19} {:>9} {:>9}",
        "load",
        "p50 µs 1/retried",
        "p99 µs 1/retried",
        "+p50 µs",
        "+p99 µs",
        "req/s 1/retried",
        "CPU-s/10k 1/retried",
        "+CPU",
        "÷ CPU"
    );
    for c in costs {
        let _ = writeln!(
            out,
            "  {:<14} {:>17} {:>17} {:>13.0} {:>13.0} {:>17} {:>19} {:>9} {:>9}",
            c.load,
            format!("{:.0}/{:.0}", c.p50_us[0], c.p50_us[1]),
            format!("{:.0}/{:.0}", c.p99_us[0], c.p99_us[1]),
            c.extra_p50_us,
            c.extra_p99_us,
            format!("{:.0}/{:.0}", c.throughput_rps[0], c.throughput_rps[1]),
            format!("{}/{}", cell(c.cpu_per_10k[0], 3), cell(c.cpu_per_10k[1], 3)),
            cell(c.extra_cpu_per_10k, 3),
            cell(c.ratio_cpu_per_10k, 2),
        );
    }
    out
}

/// The comparison as a table under `title`: one line per load.
pub fn table(title: &str, comparisons: &[RoutingComparison]) -> String {
    let cell =
        |v: Option<f64>, decimals: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"));
    let pair =
        |v: [Option<f64>; 2], decimals: usize| format!("{}/{}", cell(v[0], decimals), cell(v[1], decimals));
    let mut out = format!("{title}\n");
    let [a, b] = comparisons.first().map_or([1, MANY_RULES], |c| c.rules);
    let _ = writeln!(
        out,
        "  {:<14} {:>15} {:>15} {:>13} {:>13} {:>17} {:>13} {:>13} {:>11}",
        "load",
        format!("+p50 µs {a}/{b}"),
        format!("+p99 µs {a}/{b}"),
        "÷ +p50/+p99",
        "÷ p50/p99",
        format!("req/s {a}/{b}"),
        "÷ req/s",
        "CPU-s/10k",
        "÷ CPU"
    );
    for c in comparisons {
        let _ = writeln!(
            out,
            "  {:<14} {:>15} {:>15} {:>13} {:>13} {:>17} {:>13} {:>13} {:>11}",
            c.load,
            pair(c.added_p50_us, 0),
            pair(c.added_p99_us, 0),
            format!("{}/{}", cell(c.ratio_added_p50, 2), cell(c.ratio_added_p99, 2)),
            format!("{}/{}", cell(c.ratio_p50, 2), cell(c.ratio_p99, 2)),
            format!("{:.0}/{:.0}", c.throughput_rps[0], c.throughput_rps[1]),
            cell(c.ratio_throughput, 2),
            pair(c.cpu_per_10k, 3),
            cell(c.ratio_cpu_per_10k, 2),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarmac_control::discovery::routes::{Parent, routes_for};
    use tarmac_model::Resource;

    fn snapshot() -> Snapshot {
        let objects = tarmac_model::parse_documents("t.yaml", &configuration())
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 1, objects }
    }

    /// The compiled route table of `service`, as the proxy builds it from discovery.
    fn table_of(snapshot: &Snapshot, service: &str) -> tarmac_route::RouteTable<()> {
        let service = snapshot
            .objects
            .values()
            .find_map(|r| match r {
                Resource::Service(s) if s.metadata.name == service => Some(s),
                _ => None,
            })
            .unwrap();
        let parent = Parent { service, port: &service.spec.ports[0] };
        let routes = routes_for(snapshot, &[], "default", &parent);
        tarmac_route::RouteTable::build(&routes, SERVICE_PORT, &mut |_| ()).unwrap()
    }

    fn taken(table: &tarmac_route::RouteTable<()>, headers: &[(&'static str, &str)]) -> Option<String> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        table.select(&http::Method::GET, "/", None, &h).map(|(rule, _)| rule.rule.to_string())
    }

    #[test]
    fn requests_take_the_last_of_the_many_rules_after_trying_every_other() {
        let snapshot = snapshot();
        let one = table_of(&snapshot, "one-rule");
        assert_eq!(one.rules.len(), 1);
        assert_eq!(taken(&one, &[]).as_deref(), Some(MATCHED_RULE));
        let many = table_of(&snapshot, "many-rules");
        assert_eq!(many.rules.len(), MANY_RULES);
        assert_eq!(taken(&many, &[]).as_deref(), Some(MATCHED_RULE));
        // Each other rule outranks the last: a request that satisfies it takes it. So a
        // request without the header is tried against all of them before the last.
        for i in 1..MANY_RULES {
            let value = format!("miss-{i}.example");
            assert_eq!(taken(&many, &[("host", &value)]), Some(format!("miss-{i}")));
        }
    }

    #[test]
    fn the_inbound_policy_case_evaluates_every_policy_and_allows_the_generator() {
        use tarmac_control::discovery::inbound;
        use tarmac_proto::discovery::ProxyIdentity;
        let snapshot = snapshot();
        let instance = |workload: &str| Instance {
            namespace: NAMESPACE.into(),
            workload: workload.into(),
            replica: 0,
            labels: BTreeMap::from([("app".to_string(), workload.to_string())]),
            service_account: workload.into(),
            addr: "127.0.0.1:9".parse().unwrap(),
            meshed: false,
            admin: None,
        };
        let instances = [instance("inbound-none"), instance("inbound-policy")];
        let mesh = tarmac_model::authz::DefaultPolicy::AllowAll;
        let proxy = |w: &str| ProxyIdentity {
            namespace: "default".into(),
            workload: w.into(),
            service_account: w.into(),
        };
        let none = inbound::compute(&snapshot, &instances, mesh, &proxy("inbound-none"));
        assert!(none.ports.iter().all(|p| p.authorizations.is_empty() && p.rate_limits.is_empty()));
        let update = inbound::compute(&snapshot, &instances, mesh, &proxy("inbound-policy"));
        let port = &update.ports[0];
        assert_eq!((port.authorizations.len(), port.rate_limits.len()), (POLICIES, 1));
        // The proxy's own decision: the generator (plaintext, on loopback) is allowed by
        // the last ALLOW policy, after every other was tried.
        let authz =
            tarmac_policy::Authorizations::compile(&port.authorizations, update.default_policy()).unwrap();
        let client = tarmac_policy::Client { identity: None, addr: Some("127.0.0.1".parse().unwrap()) };
        assert_eq!(
            authz.decide(&client, None),
            tarmac_policy::Decision::Allow(Some("default/allow-zz-generator".into()))
        );
        let config = tarmac_inbound_config(
            "127.0.0.1:4191".parse().unwrap(),
            "127.0.0.1:4143".parse().unwrap(),
            "127.0.0.1:4100".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            "inbound-policy",
        );
        let config = topology::tests::accepted(&config);
        assert_eq!(config.control.expect("control").workload, "inbound-policy");
    }

    #[test]
    fn the_retried_route_retries_once_on_503_without_a_budget_and_asks_to_fail_first() {
        let snapshot = snapshot();
        let retried = table_of(&snapshot, "retried");
        assert_eq!(retried.rules.len(), 1);
        assert_eq!(taken(&retried, &[]).as_deref(), Some(MATCHED_RULE));
        let service = snapshot
            .objects
            .values()
            .find_map(|r| match r {
                Resource::Service(s) if s.metadata.name == "retried" => Some(s),
                _ => None,
            })
            .unwrap();
        let parent = Parent { service, port: &service.spec.ports[0] };
        let routes = routes_for(&snapshot, &[], "default", &parent);
        let rule = &routes[0].rules[0];
        let retry = rule.retry.as_ref().expect("a retry");
        assert_eq!((retry.attempts, retry.codes.as_slice(), retry.backoff_ms), (1, &[503][..], 1));
        assert!(format!("{:?}", rule.filters).contains(FAIL_FIRST_HEADER), "{:?}", rule.filters);
        let policy = tarmac_control::discovery::resilience::of_service(&snapshot, "default", "retried");
        assert!(
            policy.and_then(|p| p.retry_budget).is_some_and(|b| b.disabled),
            "every request may be retried"
        );
        // The other routes' requests are never asked to fail.
        let one = routes_for(
            &snapshot,
            &[],
            "default",
            &Parent {
                service: snapshot
                    .objects
                    .values()
                    .find_map(|r| match r {
                        Resource::Service(s) if s.metadata.name == "one-rule" => Some(s),
                        _ => None,
                    })
                    .unwrap(),
                port: &service.spec.ports[0],
            },
        );
        assert!(one[0].rules[0].retry.is_none() && one[0].rules[0].filters.is_empty());
    }

    #[test]
    fn a_retry_cost_is_the_retried_route_less_the_one_rule_route_per_load() {
        let summaries = vec![
            summary(Route::TarmacOneRule, "1000 req/s", 150.0, Some(50.0), 1000.0, 0.2),
            summary(Route::TarmacRetried, "1000 req/s", 230.0, Some(130.0), 1000.0, 0.32),
            summary(Route::TarmacRetried, "5000 req/s", 230.0, Some(130.0), 5000.0, 0.32),
        ];
        let c = compare_retried(&summaries);
        assert_eq!(c.len(), 1, "only loads that measured both: {c:?}");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(c[0].extra_p50_us, 80.0) && close(c[0].extra_p99_us, 160.0), "{:?}", c[0]);
        assert!(c[0].extra_cpu_per_10k.is_some_and(|x| close(x, 0.12)), "{:?}", c[0]);
        assert!(c[0].ratio_cpu_per_10k.is_some_and(|x| close(x, 1.6)), "{:?}", c[0]);
        let text = retried_table(&c);
        assert!(text.contains("150/230") && text.contains("0.200/0.320") && text.contains("1.60"), "{text}");
    }

    #[test]
    fn the_routed_configuration_is_accepted_by_the_proxy() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let config = topology::tests::accepted(&tarmac_routed_config(
            addr(4191),
            addr(7001),
            addr(4100),
            "many-rules",
        ));
        let services = config.outbound.expect("outbound").services;
        assert_eq!(services[0].discover.as_ref().map(|d| d.port), Some(SERVICE_PORT));
    }

    fn summary(
        route: Route,
        load: &str,
        p50: f64,
        added_p50: Option<f64>,
        rps: f64,
        cpu: f64,
    ) -> RouteSummary {
        RouteSummary {
            route,
            label: route.label(),
            load: load.into(),
            rounds: 3,
            p50_us: p50,
            p99_us: p50 * 2.0,
            p999_us: p50 * 3.0,
            p99_min_us: p50 * 2.0,
            p99_max_us: p50 * 2.0,
            added_p50_us: added_p50,
            added_p99_us: added_p50.map(|a| a * 2.0),
            cpu_per_10k: Some(cpu),
            peak_rss_mib: Some(8.0),
            throughput_rps: rps,
            rps_per_proxy_core: None,
            failures: 0,
            first_error: None,
            contaminated_rounds: 0,
            generator_warnings: Vec::new(),
            merged: tarmac_loadgen::LatencyHistogram::new().summary(),
            curve: Vec::new(),
        }
    }

    #[test]
    fn comparisons_divide_the_many_rules_by_the_one_rule_per_load() {
        let summaries = vec![
            summary(Route::Direct, "1000 req/s", 100.0, None, 1000.0, 0.0),
            summary(Route::TarmacOneRule, "1000 req/s", 150.0, Some(50.0), 1000.0, 0.2),
            summary(Route::TarmacManyRules, "1000 req/s", 160.0, Some(60.0), 1000.0, 0.25),
            summary(Route::TarmacOneRule, "max throughput", 300.0, Some(-5.0), 20_000.0, 0.2),
            summary(Route::TarmacManyRules, "max throughput", 330.0, Some(10.0), 18_000.0, 0.22),
            // A load that measured only one of the two has no comparison.
            summary(Route::TarmacOneRule, "5000 req/s", 150.0, Some(50.0), 5000.0, 0.2),
        ];
        let c = compare(&summaries, Route::TarmacOneRule, Route::TarmacManyRules, [1, MANY_RULES]);
        assert_eq!(c.len(), 2, "{c:?}");
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert_eq!(c[0].load, "1000 req/s");
        assert!(close(c[0].ratio_added_p50, 1.2) && close(c[0].ratio_added_p99, 1.2), "{:?}", c[0]);
        assert!(close(c[0].ratio_p50, 160.0 / 150.0) && close(c[0].ratio_cpu_per_10k, 1.25));
        assert!(close(c[0].ratio_throughput, 1.0));
        assert_eq!(c[1].ratio_added_p50, None, "a negative added latency has no ratio");
        assert!(close(c[1].ratio_throughput, 0.9));
        let text = table("routing", &c);
        assert!(
            text.contains("1.20/1.20") && text.contains("20000/18000") && text.contains("0.90"),
            "{text}"
        );
    }
}
