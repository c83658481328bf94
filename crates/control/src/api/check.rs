//! `GET /api/v1/check`: is the configuration valid, are the workloads' replicas running,
//! are their proxies ready, connected to discovery and following the configuration in
//! force. Each check says what is wrong and what to do about it.

use super::route_status::{self, Condition, RouteStatus};
use crate::discovery::server::Subscription;
use crate::registry::Instance;
use crate::store::{Snapshot, Status};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use tarmac_model::Resource;

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    /// Generation of the configuration in force.
    pub generation: u64,
    pub checks: Vec<Check>,
    pub proxies: Vec<ProxyState>,
    /// Every HTTPRoute and GRPCRoute in force with its conditions per parentRef.
    pub routes: Vec<RouteStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Configuration errors, each naming file, line, object and field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ConfigError>,
    /// Route conditions that are not as they should be: errors fail the check, warnings
    /// do not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<RouteCondition>,
    /// What is accepted but not applied here; never fails the check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A route condition that needs attention, for `tarmac check`.
#[derive(Clone, Debug, Serialize)]
pub struct RouteCondition {
    /// `HTTPRoute NAMESPACE/NAME`.
    pub route: String,
    /// `Service NAMESPACE/NAME port N`.
    pub parent: String,
    /// Its severity is `error` or `warning` here.
    #[serde(flatten)]
    pub condition: Condition,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub object: Option<String>,
    pub field: Option<String>,
    pub message: String,
    /// The whole error as one line.
    pub text: String,
}

/// One replica's proxy.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyState {
    pub namespace: String,
    pub workload: String,
    pub replica: u32,
    pub admin: Option<SocketAddr>,
    /// Its `/ready` answered 200.
    pub ready: bool,
    /// Its workload certificate, as its `/identity` shows it (absent without mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityState>,
}

/// A proxy's certificate, from its admin `/identity`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct IdentityState {
    pub identity: String,
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: u64,
    /// Since when renewal has been failing (seconds since the epoch), if it is.
    #[serde(default)]
    pub renewal_failing_since: Option<u64>,
    #[serde(default)]
    pub renewal_error: Option<String>,
}

/// Discovery streams of one workload's proxies.
#[derive(Default)]
struct Streams {
    peers: BTreeSet<Option<SocketAddr>>,
    total: usize,
    behind: usize,
}

/// Deployments run as local processes: which of their fields only a cluster applies.
fn deployments_check(snapshot: &Snapshot) -> Option<Check> {
    let deployments: Vec<&tarmac_model::Workload> = snapshot
        .iter_kind("Workload")
        .filter_map(|r| match r {
            Resource::Workload(w) if w.kind == "Deployment" => Some(w),
            _ => None,
        })
        .collect();
    if deployments.is_empty() {
        return None;
    }
    Some(Check {
        name: "deployments".into(),
        ok: true,
        detail: format!(
            "{} Deployment{} run here as processes: the first container's command, env, replicas, labels and service account",
            deployments.len(),
            if deployments.len() == 1 { "" } else { "s" }
        ),
        hint: None,
        errors: Vec::new(),
        conditions: Vec::new(),
        warnings: deployments
            .iter()
            .filter_map(|w| tarmac_model::deployment::cluster_only_warning(w))
            .collect(),
    })
}

/// Builds the report. `ready` holds the `/ready` outcome of each instance's proxy, in
/// the order of `instances`.
pub fn report(
    status: &Status,
    snapshot: &Snapshot,
    instances: &[Instance],
    ready: &[bool],
    identities: &[Option<IdentityState>],
    subscriptions: &[Subscription],
) -> CheckReport {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut checks = vec![Check {
        name: "control plane".into(),
        ok: true,
        detail: format!("running; configuration generation {} in force", snapshot.generation),
        hint: None,
        errors: Vec::new(),
        conditions: Vec::new(),
        warnings: Vec::new(),
    }];

    let errors: Vec<ConfigError> = status
        .rejected
        .iter()
        .map(|e| ConfigError {
            file: e.file.clone(),
            line: e.line,
            object: e.object.clone(),
            field: e.field.clone(),
            message: e.message.clone(),
            text: e.to_string(),
        })
        .collect();
    checks.push(if errors.is_empty() {
        Check {
            name: "configuration".into(),
            ok: true,
            detail: format!("valid ({} objects)", snapshot.objects.len()),
            hint: None,
            errors,
            conditions: Vec::new(),
            warnings: Vec::new(),
        }
    } else {
        Check {
            name: "configuration".into(),
            ok: false,
            detail: format!(
                "the directory as it is now was refused ({} problem{}); generation {} (the last good one) stays in force",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                snapshot.generation
            ),
            hint: Some("fix the files named below (or remove them); the change applies as soon as it validates".into()),
            errors,
            conditions: Vec::new(),
            warnings: Vec::new(),
        }
    });

    if let Some(check) = deployments_check(snapshot) {
        checks.push(check);
    }

    let mut wanted: BTreeMap<(String, String), u32> = BTreeMap::new();
    for resource in snapshot.iter_kind("Workload") {
        if let Resource::Workload(w) = resource {
            wanted.insert((w.metadata.namespace.clone(), w.metadata.name.clone()), w.spec.replicas);
        }
    }
    let mut streams: BTreeMap<(String, String), Streams> = BTreeMap::new();
    for s in subscriptions {
        let entry = streams.entry((s.proxy_namespace.clone(), s.proxy_workload.clone())).or_default();
        entry.peers.insert(s.peer);
        entry.total += 1;
        if s.seen_generation != snapshot.generation {
            entry.behind += 1;
        }
    }
    let has_services = snapshot.iter_kind("Service").next().is_some();
    for ((namespace, workload), replicas) in &wanted {
        let mine: Vec<(usize, &Instance)> = instances
            .iter()
            .enumerate()
            .filter(|(_, i)| &i.namespace == namespace && &i.workload == workload)
            .collect();
        let running = mine.len() as u32;
        let ready_count = mine.iter().filter(|(n, _)| ready.get(*n).copied().unwrap_or(false)).count() as u32;
        let s = streams.remove(&(namespace.clone(), workload.clone())).unwrap_or_default();
        let connected = s.peers.len() as u32;
        let mut problems = Vec::new();
        let mut hints = Vec::new();
        if running < *replicas {
            problems.push(format!("{running}/{replicas} replicas running"));
            hints.push("look for its exit or restart messages in the output of `tarmac up`");
        }
        if ready_count < running {
            problems.push(format!("{ready_count}/{running} proxies ready"));
            hints.push("a proxy that is not ready is starting, draining or failing: see its log lines");
        }
        if has_services && connected < running {
            problems.push(format!("{connected}/{running} proxies connected to discovery"));
            hints.push("proxies reconnect by themselves with backoff; if this lasts, check the `control.addr` of their configuration");
        }
        for (n, instance) in &mine {
            let Some(Some(id)) = identities.get(*n) else { continue };
            if id.not_after <= now {
                problems.push(format!(
                    "replica {}: its certificate EXPIRED; mesh connections to and from it fail",
                    instance.replica
                ));
                hints.push(
                    "an expired proxy cannot renew: restart the replica once the control plane is reachable",
                );
            } else if let Some(since) = id.renewal_failing_since {
                problems.push(format!(
                    "replica {}: certificate renewal failing for {} s ({}); it still serves, and expires in {} s",
                    instance.replica,
                    now.saturating_sub(since),
                    id.renewal_error.as_deref().unwrap_or("no detail"),
                    id.not_after - now
                ));
                hints.push("the proxy cannot reach the control plane's identity service: check `control.addr` and that the control plane runs");
            }
        }
        if s.behind > 0 {
            problems.push(format!(
                "{} of {} discovery streams not yet at generation {}",
                s.behind, s.total, snapshot.generation
            ));
            hints.push("streams catch up within moments of a change; if this lasts, restart the replica");
        }
        let name = if namespace == tarmac_model::meta::DEFAULT_NAMESPACE {
            format!("workload {workload}")
        } else {
            format!("workload {namespace}/{workload}")
        };
        checks.push(if problems.is_empty() {
            Check {
                name,
                ok: true,
                detail: format!(
                    "{running}/{replicas} replicas running, proxies ready, {connected} connected with {} discovery streams in sync",
                    s.total
                ),
                hint: None,
                errors: Vec::new(),
                conditions: Vec::new(),
                warnings: Vec::new(),
            }
        } else {
            Check {
                name,
                ok: false,
                detail: problems.join("; "),
                hint: Some(hints.join("; ")),
                errors: Vec::new(),
                conditions: Vec::new(),
            warnings: Vec::new(),
            }
        });
    }

    let routes = route_status::statuses(snapshot);
    checks.push(routes_check(&routes));
    if let Some(check) = resilience_check(snapshot) {
        checks.push(check);
    }
    if let Some(check) = policy_check(snapshot, instances) {
        checks.push(check);
    }

    let proxies = instances
        .iter()
        .enumerate()
        .map(|(n, i)| ProxyState {
            namespace: i.namespace.clone(),
            workload: i.workload.clone(),
            replica: i.replica,
            admin: i.admin,
            ready: ready.get(n).copied().unwrap_or(false),
            identity: identities.get(n).cloned().flatten(),
        })
        .collect();
    CheckReport { ok: checks.iter().all(|c| c.ok), generation: snapshot.generation, checks, proxies, routes }
}

/// Warns (never fails) about telemetry proxies cannot honour: sampling with no collector to
/// send spans to (no span is made), and Telemetry objects whose selector matches no
/// workload. `None` when there is no telemetry at all.
pub fn telemetry_check(
    snapshot: &Snapshot,
    instances: &[Instance],
    defaults: &tarmac_model::telemetry::MeshDefaults,
) -> Option<Check> {
    use tarmac_model::telemetry::resolve;
    let objects: Vec<_> = snapshot
        .objects
        .values()
        .filter_map(|r| match r {
            Resource::Telemetry(t) => Some(t),
            _ => None,
        })
        .collect();
    if objects.is_empty() && defaults == &Default::default() {
        return None;
    }
    let mut workloads: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for r in snapshot.iter_kind("Workload") {
        workloads.insert((r.meta().namespace.clone(), r.meta().name.clone()), r.meta().labels.clone());
    }
    for i in instances {
        workloads.entry((i.namespace.clone(), i.workload.clone())).or_insert_with(|| i.labels.clone());
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut warnings = Vec::new();
    let (mut tracing, mut logging) = (0, 0);
    for ((ns, name), labels) in &workloads {
        let r = resolve(objects.iter().copied(), ns, labels, defaults);
        if r.sampling_percentage > 0.0 && r.collector.is_none() {
            warnings.push(format!(
                "Workload {ns}/{name}: samples {} % of requests for tracing, but no collector is set, so no span is \
                 made (set `spec.tracing.collector` in a Telemetry{}, or run `tarmac up --otlp HOST:PORT`)",
                r.sampling_percentage,
                if r.sources.is_empty() { String::new() } else { format!(" such as {}", r.sources[0]) }
            ));
        }
        tracing += usize::from(r.collector.is_some());
        logging += usize::from(r.access_log.is_some());
    }
    for t in &objects {
        if t.spec.selector.is_some()
            && !workloads.iter().any(|((ns, _), labels)| {
                t.applies_to(ns, labels) == Some(tarmac_model::telemetry::Level::Workload)
            })
        {
            warnings.push(format!(
                "Telemetry {}/{}: its selector matches no workload of its namespace",
                t.metadata.namespace, t.metadata.name
            ));
        }
    }
    Some(Check {
        name: "telemetry".into(),
        ok: true,
        detail: format!(
            "{} Telemetry object{}; {tracing} workload{} traced, {logging} with access logs",
            objects.len(),
            plural(objects.len()),
            plural(tracing),
        ),
        hint: (!warnings.is_empty())
            .then(|| "give sampled workloads a collector; fix the selectors named".into()),
        errors: Vec::new(),
        conditions: Vec::new(),
        warnings,
    })
}

/// Warns (never fails) about ResiliencePolicies proxies cannot honour as written: a
/// target or rule that does not exist, and a retry budget turned off. `None` when there
/// are no policies.
fn resilience_check(snapshot: &Snapshot) -> Option<Check> {
    let policies: Vec<_> = snapshot
        .objects
        .values()
        .filter_map(|r| match r {
            Resource::ResiliencePolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    if policies.is_empty() {
        return None;
    }
    let mut warnings = Vec::new();
    for p in &policies {
        let ns = &p.metadata.namespace;
        let me = format!("ResiliencePolicy {ns}/{}", p.metadata.name);
        for t in &p.spec.target_refs {
            warnings.extend(target_problem(snapshot, &me, ns, t, false));
        }
        if p.spec.retry_budget.as_ref().is_some_and(|b| !b.enabled) {
            warnings.push(format!(
                "{me}: the retry budget is OFF: callers' retries are bounded only by their attempts, and a failing \
                 service can get several times its load (a retry storm)"
            ));
        }
    }
    let n = policies.len();
    Some(Check {
        name: "resilience policies".into(),
        ok: true,
        detail: format!("{n} polic{} in force", if n == 1 { "y" } else { "ies" }),
        hint: (!warnings.is_empty()).then(|| {
            "fix the targets named; turn the retry budget off only to study a retry storm".to_string()
        }),
        errors: Vec::new(),
        conditions: Vec::new(),
        warnings,
    })
}

/// What is wrong with a policy's target (`me` names the policy): a target that does not
/// exist, or a `sectionName` that names no rule (nor, where `ports` allows it, a port of
/// the Service).
fn target_problem(
    snapshot: &Snapshot,
    me: &str,
    ns: &str,
    t: &tarmac_model::resilience::PolicyTargetRef,
    ports: bool,
) -> Option<String> {
    let kind = if t.is_service() { "Service" } else { t.route_kind().unwrap_or("?") };
    let key = |kind: &'static str| tarmac_model::ObjectKey {
        kind,
        namespace: ns.to_string(),
        name: t.name.clone(),
    };
    let target = match kind {
        "Service" => snapshot.objects.get(&key("Service")),
        "HTTPRoute" => snapshot.objects.get(&key("HTTPRoute")),
        _ => snapshot.objects.get(&key("GRPCRoute")),
    };
    let Some(target) = target else {
        return Some(format!(
            "{me}: its target {kind} {ns}/{} does not exist; it applies to nothing",
            t.name
        ));
    };
    let section = t.section_name.as_deref()?;
    let (what, names): (&str, Vec<Option<&str>>) = match target {
        Resource::HttpRoute(r) => ("rule", r.spec.rules.iter().map(|r| r.name.as_deref()).collect()),
        Resource::GrpcRoute(r) => ("rule", r.spec.rules.iter().map(|r| r.name.as_deref()).collect()),
        Resource::Service(s) if ports => ("port", s.spec.ports.iter().map(|p| p.name.as_deref()).collect()),
        _ => return None,
    };
    (!names.contains(&Some(section))).then(|| {
        format!(
            "{me}: {kind} {ns}/{} has no {what} named `{section}`; the policy applies to none of its {what}s",
            t.name
        )
    })
}

/// A policy's clients: per entry, its identities, service accounts and namespaces.
type Clients<'a> = Vec<(&'a [String], &'a [String], &'a [String])>;

/// Warns (never fails) about AuthorizationPolicies and RateLimitPolicies that match
/// nothing (a target that does not exist or selects no workload, a section that names
/// nothing) or name clients no Workload is (an unknown service account, namespace or
/// identity: a typo there silently allows or denies no one). `None` without policies.
fn policy_check(snapshot: &Snapshot, instances: &[Instance]) -> Option<Check> {
    let workloads: Vec<&tarmac_model::Workload> = snapshot
        .objects
        .values()
        .filter_map(|r| match r {
            Resource::Workload(w) => Some(w),
            _ => None,
        })
        .collect();
    let identities: BTreeSet<String> = workloads
        .iter()
        .map(|w| crate::discovery::spiffe_id(&w.metadata.namespace, &w.spec.service_account_name))
        .chain(instances.iter().map(|i| crate::discovery::spiffe_id(&i.namespace, &i.service_account)))
        .collect();
    let known_namespace = |ns: &str| identities.iter().any(|id| id.contains(&format!("/ns/{ns}/sa/")));
    let mut warnings = Vec::new();
    let mut count = 0;
    for resource in snapshot.objects.values() {
        let (kind, meta, targets, clients): (&str, _, _, Clients<'_>) = match resource {
            Resource::AuthorizationPolicy(p) => (
                "AuthorizationPolicy",
                &p.metadata,
                &p.spec.target_refs,
                p.spec
                    .from
                    .iter()
                    .map(|f| (&f.identities[..], &f.service_accounts[..], &f.namespaces[..]))
                    .collect(),
            ),
            Resource::RateLimitPolicy(p) => (
                "RateLimitPolicy",
                &p.metadata,
                &p.spec.target_refs,
                p.spec
                    .overrides
                    .iter()
                    .map(|o| (&o.identities[..], &o.service_accounts[..], &[][..]))
                    .collect(),
            ),
            _ => continue,
        };
        count += 1;
        let ns = &meta.namespace;
        let me = format!("{kind} {ns}/{}", meta.name);
        for t in targets {
            if let Some(problem) = target_problem(snapshot, &me, ns, t, true) {
                warnings.push(problem);
                continue;
            }
            let service = match t.is_service() {
                true => snapshot.objects.get(&tarmac_model::ObjectKey {
                    kind: "Service",
                    namespace: ns.clone(),
                    name: t.name.clone(),
                }),
                false => None,
            };
            if let Some(Resource::Service(s)) = service {
                let selected = workloads.iter().any(|w| {
                    w.metadata.namespace == *ns
                        && tarmac_model::meta::selector_matches(&s.spec.selector, &w.metadata.labels)
                }) || instances.iter().any(|i| {
                    i.namespace == *ns && tarmac_model::meta::selector_matches(&s.spec.selector, &i.labels)
                });
                if !selected {
                    warnings.push(format!(
                        "{me}: Service {ns}/{} selects no workload; the policy applies to nothing",
                        t.name
                    ));
                }
            }
        }
        for (ids, service_accounts, namespaces) in clients {
            for sa in service_accounts {
                let (sa_ns, name) = tarmac_model::authz::service_account(sa, ns);
                if !identities.contains(&crate::discovery::spiffe_id(&sa_ns, &name)) {
                    warnings.push(format!(
                        "{me}: no Workload runs as service account {sa_ns}/{name}; `{sa}` matches no client"
                    ));
                }
            }
            for id in ids {
                let known = match id.strip_suffix('*') {
                    Some(prefix) => identities.iter().any(|known| known.starts_with(prefix)),
                    None => identities.contains(id),
                };
                if !known {
                    warnings.push(format!(
                        "{me}: no Workload has the identity `{id}`; it matches no client of this mesh"
                    ));
                }
            }
            for other in namespaces {
                if !known_namespace(other) {
                    warnings
                        .push(format!("{me}: no Workload runs in namespace `{other}`; it matches no client"));
                }
            }
        }
    }
    if count == 0 {
        return None;
    }
    Some(Check {
        name: "authorization and rate-limit policies".into(),
        ok: true,
        detail: format!("{count} polic{} in force", if count == 1 { "y" } else { "ies" }),
        hint: (!warnings.is_empty()).then(|| {
            "fix the targets and clients named: a policy that matches nothing protects nothing".to_string()
        }),
        errors: Vec::new(),
        conditions: Vec::new(),
        warnings,
    })
}

/// Fails when a route is not Accepted or has unresolved references; shadowed rules are
/// warnings: the route works, deterministically, but part of it is never used.
fn routes_check(routes: &[RouteStatus]) -> Check {
    let conditions: Vec<RouteCondition> = routes
        .iter()
        .flat_map(|r| {
            r.conditions().filter(|(_, c)| c.severity != "ok").map(|(p, c)| RouteCondition {
                route: format!("{} {}/{}", r.kind, r.namespace, r.name),
                parent: p.parent.clone(),
                condition: c.clone(),
            })
        })
        .collect();
    let failing: BTreeSet<&str> =
        conditions.iter().filter(|c| c.condition.severity == "error").map(|c| c.route.as_str()).collect();
    let warnings = conditions.iter().filter(|c| c.condition.severity == "warning").count();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut detail = if routes.is_empty() {
        "no HTTPRoute or GRPCRoute in force".to_string()
    } else if failing.is_empty() {
        format!(
            "{} route{} accepted by their parents, every reference resolved",
            routes.len(),
            plural(routes.len())
        )
    } else {
        format!(
            "{} of {} route{} not accepted or with unresolved references; the rest of the mesh serves",
            failing.len(),
            routes.len(),
            plural(routes.len())
        )
    };
    if warnings > 0 {
        detail.push_str(&format!("; {warnings} warning{}", plural(warnings)));
    }
    Check {
        name: "routes".into(),
        ok: failing.is_empty(),
        detail,
        hint: (!failing.is_empty()).then(|| {
            "fix the parentRefs or backendRefs named below; requests to a missing backend get 500 meanwhile".into()
        }),
        errors: Vec::new(),
        conditions,
        warnings: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use tarmac_model::ModelError;

    const CONFIG: &str = "\
apiVersion: v1
kind: Service
metadata: {name: names}
spec: {selector: {app: names}, ports: [{port: 80}]}
---
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata: {name: names, labels: {app: names}}
spec: {command: [x], port: 8080, replicas: 2}
";

    fn snapshot() -> Snapshot {
        let objects = tarmac_model::parse_documents("t.yaml", CONFIG)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 4, objects }
    }

    fn instance(replica: u32) -> Instance {
        Instance {
            namespace: "default".into(),
            workload: "names".into(),
            replica,
            labels: [("app".to_string(), "names".to_string())].into(),
            service_account: "names".into(),
            addr: format!("127.0.0.1:{}", 1000 + replica).parse().unwrap(),
            meshed: true,
            admin: Some(format!("127.0.0.1:{}", 2000 + replica).parse().unwrap()),
        }
    }

    fn stream(peer: u16, seen: u64) -> Subscription {
        Subscription {
            peer: Some(format!("127.0.0.1:{peer}").parse().unwrap()),
            proxy_namespace: "default".into(),
            proxy_workload: "names".into(),
            service_namespace: "default".into(),
            service: "names".into(),
            port: 80,
            since: SystemTime::now(),
            seen_generation: seen,
            sent_generation: Some(seen),
        }
    }

    #[test]
    fn resilience_policies_that_cannot_be_honoured_are_warned_about() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: logging}\nspec: {selector: {app: logging}, ports: [{port: 80}]}\n---\napiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: storm}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: logging}]\n  retryBudget: {enabled: false}\n---\napiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: lost}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: gone}]\n  retry: {codes: [503]}\n";
        let objects = tarmac_model::parse_documents("t.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let check = resilience_check(&Snapshot { generation: 1, objects }).unwrap();
        assert!(check.ok, "warnings never fail the check: {check:?}");
        let warnings = check.warnings.join("\n");
        assert!(warnings.contains("retry budget is OFF"), "{warnings}");
        assert!(warnings.contains("HTTPRoute default/gone does not exist"), "{warnings}");
        assert!(resilience_check(&snapshot()).is_none(), "no policies, no check");
    }

    #[test]
    fn policies_matching_nothing_or_naming_unknown_clients_are_warned_about() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {selector: {app: b}, ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: empty}\nspec: {selector: {app: nobody}, ports: [{port: 80}]}\n---\napiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: b, labels: {app: b}}\nspec: {command: [b], port: 8080, serviceAccountName: b}\n---\napiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: a, labels: {app: a}}\nspec: {command: [a], port: 8080, serviceAccountName: a}\n---\napiVersion: tarmac.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: b, sectionName: grpc}, {group: \"\", kind: Service, name: empty}, {group: \"\", kind: Service, name: gone}]\n  from: [{serviceAccounts: [a, ab]}, {namespaces: [shop]}, {identities: ['spiffe://cluster.local/ns/default/*', 'spiffe://cluster.local/ns/x/sa/y']}]\n---\napiVersion: tarmac.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: l}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: b, sectionName: http}]\n  overrides: [{requestsPerSecond: 5, serviceAccounts: [a]}]\n";
        let objects = tarmac_model::parse_documents("t.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let check = policy_check(&Snapshot { generation: 1, objects }, &[]).unwrap();
        assert!(check.ok, "warnings never fail the check: {check:?}");
        let warnings = check.warnings.join("\n");
        for needle in [
            "AuthorizationPolicy default/p: Service default/b has no port named `grpc`",
            "AuthorizationPolicy default/p: Service default/empty selects no workload",
            "AuthorizationPolicy default/p: its target Service default/gone does not exist",
            "no Workload runs as service account default/ab",
            "no Workload runs in namespace `shop`",
            "no Workload has the identity `spiffe://cluster.local/ns/x/sa/y`",
        ] {
            assert!(warnings.contains(needle), "missing {needle} in\n{warnings}");
        }
        assert_eq!(check.warnings.len(), 6, "the rate limit and the known clients are fine:\n{warnings}");
        assert!(policy_check(&snapshot(), &[]).is_none(), "no policies, no check");
    }

    #[test]
    fn a_healthy_mesh_passes() {
        let report = report(
            &Status::default(),
            &snapshot(),
            &[instance(0), instance(1)],
            &[true, true],
            &[None, None],
            &[stream(1, 4), stream(2, 4)],
        );
        assert!(report.ok, "{report:#?}");
    }

    #[test]
    fn certificates_that_cannot_be_renewed_or_expired_fail_with_advice() {
        let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let id = |not_after: u64, failing: Option<u64>| {
            Some(IdentityState {
                identity: "spiffe://cluster.local/ns/default/sa/names".into(),
                serial: "01".into(),
                not_after,
                renewal_failing_since: failing,
                renewal_error: failing.map(|_| "transport error".into()),
            })
        };
        let instances = [instance(0), instance(1)];
        let streams = [stream(1, 4), stream(2, 4)];
        let healthy = report(
            &Status::default(),
            &snapshot(),
            &instances,
            &[true, true],
            &[id(now + 600, None), id(now + 600, None)],
            &streams,
        );
        assert!(healthy.ok, "{healthy:#?}");
        for (identities, expected) in [
            (
                [id(now + 600, None), id(now + 300, Some(now - 30))],
                "replica 1: certificate renewal failing for 30 s (transport error)",
            ),
            ([id(now - 1, None), id(now + 600, None)], "replica 0: its certificate EXPIRED"),
        ] {
            let r = report(&Status::default(), &snapshot(), &instances, &[true, true], &identities, &streams);
            let workload = r.checks.iter().find(|c| c.name == "workload names").unwrap();
            assert!(!workload.ok && workload.detail.contains(expected), "{expected}: {workload:?}");
            assert!(workload.hint.as_deref().unwrap_or("").contains("control plane"), "{workload:?}");
        }
    }

    #[test]
    fn unresolved_routes_fail_and_shadowed_rules_only_warn() {
        let route = |name: &str, backend: &str| {
            format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: names, port: 80}}]\n  rules:\n  - matches: [{{path: {{value: /a}}}}]\n    backendRefs: [{{name: {backend}, port: 80}}]\n"
            )
        };
        let with = |routes: &str| {
            let objects = tarmac_model::parse_documents("t.yaml", &format!("{CONFIG}{routes}"))
                .unwrap()
                .into_iter()
                .map(|r| (r.key(), r))
                .collect();
            let snapshot = Snapshot { generation: 4, objects };
            report(
                &Status::default(),
                &snapshot,
                &[instance(0), instance(1)],
                &[true, true],
                &[None, None],
                &[stream(1, 4), stream(2, 4)],
            )
        };
        let shadowed = with(&format!("{}{}", route("a", "names"), route("b", "names")));
        assert!(shadowed.ok, "a shadowed rule is a warning: {shadowed:#?}");
        let routes = shadowed.checks.iter().find(|c| c.name == "routes").unwrap();
        assert_eq!(routes.conditions.len(), 1);
        let c = &routes.conditions[0].condition;
        assert_eq!((c.reason, c.severity), ("Shadowed", "warning"));
        assert!(routes.detail.ends_with("1 warning"), "{routes:?}");

        let missing = with(&route("a", "nobody"));
        assert!(!missing.ok);
        let routes = missing.checks.iter().find(|c| c.name == "routes").unwrap();
        let c = &routes.conditions[0];
        assert_eq!(
            (c.route.as_str(), c.parent.as_str(), c.condition.reason),
            ("HTTPRoute default/a", "Service default/names port 80", "BackendNotFound")
        );
        assert!(routes.hint.is_some() && missing.routes.len() == 1);
    }

    #[test]
    fn refused_configuration_names_file_and_field() {
        let status = Status {
            generation: 4,
            rejected: vec![ModelError {
                file: "broken.yaml".into(),
                line: Some(3),
                object: Some("Service default/x".into()),
                field: Some("spec.ports".into()),
                message: "a Service needs at least one port".into(),
            }],
            checked_at: None,
        };
        let report = report(
            &status,
            &snapshot(),
            &[instance(0), instance(1)],
            &[true, true],
            &[None, None],
            &[stream(1, 4), stream(2, 4)],
        );
        assert!(!report.ok);
        let config = &report.checks[1];
        assert!(!config.ok && config.detail.contains("generation 4"), "{config:?}");
        assert_eq!(config.errors[0].field.as_deref(), Some("spec.ports"));
        assert!(config.errors[0].text.contains("broken.yaml"));
    }

    #[test]
    fn missing_replicas_unready_disconnected_or_lagging_proxies_fail_with_advice() {
        // (running instances, their /ready, discovery streams, what the check must say)
        type Case<'a> = (&'a [Instance], &'a [bool], &'a [Subscription], &'a str);
        let cases: [Case<'_>; 4] = [
            (&[instance(0)], &[true], &[stream(1, 4)], "1/2 replicas running"),
            (&[instance(0), instance(1)], &[true, false], &[stream(1, 4), stream(2, 4)], "1/2 proxies ready"),
            (&[instance(0), instance(1)], &[true, true], &[stream(1, 4)], "1/2 proxies connected"),
            (
                &[instance(0), instance(1)],
                &[true, true],
                &[stream(1, 4), stream(2, 3)],
                "1 of 2 discovery streams",
            ),
        ];
        for (instances, ready, streams, expected) in cases {
            let report = report(&Status::default(), &snapshot(), instances, ready, &[None, None], streams);
            let workload = report.checks.iter().find(|c| c.name == "workload names").unwrap();
            assert!(!workload.ok && workload.detail.contains(expected), "{expected}: {workload:?}");
            assert!(workload.hint.is_some());
        }
    }

    #[test]
    fn sampling_without_a_collector_is_warned_about() {
        let yaml = "apiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: web, labels: {app: web}}\nspec: {command: [x], port: 8080}\n---\napiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: sample}\nspec: {tracing: {samplingPercentage: 10}}\n---\napiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: nobody}\nspec: {selector: {matchLabels: {app: gone}}, accessLogging: {}}\n";
        let objects = tarmac_model::parse_documents("t.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let snapshot = Snapshot { generation: 1, objects };
        let none = tarmac_model::telemetry::MeshDefaults::default();
        let check = telemetry_check(&snapshot, &[], &none).unwrap();
        assert!(check.ok, "warnings never fail the check");
        let warnings = check.warnings.join("\n");
        assert!(
            warnings.contains("Workload default/web: samples 10 % of requests for tracing, but no collector"),
            "{warnings}"
        );
        assert!(
            warnings.contains("Telemetry default/nobody: its selector matches no workload"),
            "{warnings}"
        );
        let with_collector = tarmac_model::telemetry::MeshDefaults {
            collector: Some("127.0.0.1:4317".into()),
            sampling_percentage: None,
        };
        let check = telemetry_check(&snapshot, &[], &with_collector).unwrap();
        assert_eq!(check.warnings.len(), 1, "{:?}", check.warnings);
        assert!(check.detail.contains("1 workload traced"), "{}", check.detail);
        let empty = Snapshot { generation: 1, objects: Default::default() };
        assert!(telemetry_check(&empty, &[], &none).is_none(), "no telemetry, no check");
    }
}
