//! `GET /api/v1/authz?service=NAME&namespace=NS`: who may call a Service, port by port,
//! under which policy, and how often: for each workload the Service selects, the inbound
//! policy its sidecar is sent ([`crate::discovery::inbound::compute`]), described.

use crate::discovery::inbound;
use crate::registry::Instance;
use crate::store::Snapshot;
use serde_json::{Value, json};
use tarmac_model::authz::DefaultPolicy;
use tarmac_model::meta::selector_matches;
use tarmac_model::{ObjectKey, Resource};
use tarmac_proto::discovery::{self as pb, ProxyIdentity};

/// The Service asked about is not in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("there is no Service {namespace}/{name}")]
pub struct NoSuchService {
    pub namespace: String,
    pub name: String,
}

/// The answer, or why there is none (no such Service).
pub fn authz_of(
    snapshot: &Snapshot,
    instances: &[Instance],
    mesh: DefaultPolicy,
    namespace: &str,
    name: &str,
) -> Result<Value, NoSuchService> {
    let key = ObjectKey { kind: "Service", namespace: namespace.to_string(), name: name.to_string() };
    let Some(Resource::Service(service)) = snapshot.objects.get(&key) else {
        return Err(NoSuchService { namespace: key.namespace, name: key.name });
    };
    // The workloads it selects: configured ones, and running ones the configuration
    // does not hold.
    let mut workloads: Vec<(String, String)> = snapshot
        .iter_kind("Workload")
        .filter_map(|r| match r {
            Resource::Workload(w)
                if w.metadata.namespace == namespace
                    && selector_matches(&service.spec.selector, &w.metadata.labels) =>
            {
                Some((w.metadata.name.clone(), w.spec.service_account_name.clone()))
            }
            _ => None,
        })
        .collect();
    for i in instances {
        if i.namespace == namespace
            && selector_matches(&service.spec.selector, &i.labels)
            && !workloads.iter().any(|(w, _)| *w == i.workload)
        {
            workloads.push((i.workload.clone(), i.service_account.clone()));
        }
    }
    let mut ports = Vec::new();
    for port in &service.spec.ports {
        let mut seen = Vec::new();
        for (workload, service_account) in &workloads {
            let proxy = ProxyIdentity {
                namespace: namespace.to_string(),
                workload: workload.clone(),
                service_account: service_account.clone(),
            };
            let update = inbound::compute(snapshot, instances, mesh, &proxy);
            let default = inbound::default_from_pb(
                pb::DefaultPolicy::try_from(update.default_policy).unwrap_or_default(),
            );
            let target = port.target_number();
            let inbound = update
                .ports
                .iter()
                .find(|p| target.is_none_or(|t| p.port == u32::from(t)) || update.ports.len() == 1);
            seen.push(json!({
                "workload": workload,
                "default_policy": default.as_str(),
                "target_port": inbound.map(|p| p.port),
                "authorizations": inbound.map(|p| p.authorizations.iter().map(describe_authorization).collect::<Vec<_>>()).unwrap_or_default(),
                "rate_limits": inbound.map(|p| p.rate_limits.iter().map(describe_limit).collect::<Vec<_>>()).unwrap_or_default(),
            }));
        }
        ports.push(json!({ "port": port.port, "name": port.name, "workloads": seen }));
    }
    Ok(json!({ "service": format!("{namespace}/{name}"), "ports": ports }))
}

fn scope(scope: Option<&pb::PolicyScope>) -> String {
    match scope {
        None => "every request and connection".to_string(),
        Some(s) if s.rule.is_empty() => format!("{} {} (every rule)", s.route_kind, s.route),
        Some(s) => format!("{} {} rule {}", s.route_kind, s.route, s.rule),
    }
}

/// One `from` entry in words: every part must hold.
fn clients(m: &pb::ClientMatch) -> String {
    let mut parts = Vec::new();
    if !m.identities.is_empty() {
        parts.push(format!("identity {}", m.identities.join(" or ")));
    }
    if !m.namespaces.is_empty() {
        parts.push(format!("namespace {}", m.namespaces.join(" or ")));
    }
    match m.authenticated {
        Some(true) => parts.push("authenticated".into()),
        Some(false) => parts.push("unauthenticated".into()),
        None => {}
    }
    if !m.cidrs.is_empty() {
        parts.push(format!("address in {}", m.cidrs.join(" or ")));
    }
    parts.join(", and ")
}

fn describe_authorization(a: &pb::Authorization) -> Value {
    json!({
        "policy": a.name,
        "action": if a.deny { "DENY" } else { "ALLOW" },
        "applies_to": scope(a.scope.as_ref()),
        "from": a.from.iter().map(clients).collect::<Vec<_>>(),
    })
}

fn rate(r: Option<&pb::Rate>) -> Value {
    match r {
        Some(r) => json!(format!("{}/s (burst {})", r.requests_per_second, r.burst)),
        None => Value::Null,
    }
}

fn describe_limit(l: &pb::RateLimit) -> Value {
    json!({
        "policy": l.name,
        "applies_to": scope(l.scope.as_ref()),
        "total": rate(l.total.as_ref()),
        "per_caller": rate(l.per_caller.as_ref()),
        "overrides": l.overrides.iter().map(|o| json!({"identities": o.identities, "rate": rate(o.rate.as_ref())})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_call_a_service_is_what_its_workloads_proxies_are_sent() {
        let yaml = include_str!("../../../../tests/fixtures/authz/mesh.yaml");
        let objects = tarmac_model::parse_documents("mesh.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let snapshot = Snapshot { generation: 1, objects };
        let answer = authz_of(&snapshot, &[], DefaultPolicy::AllowAll, "default", "b").unwrap();
        let b = &answer["ports"][0]["workloads"][0];
        assert_eq!(b["workload"], "b");
        assert_eq!(b["default_policy"], "deny");
        assert_eq!(b["target_port"], 8080);
        let a = &b["authorizations"][0];
        assert_eq!(a["policy"], "default/a-public");
        assert_eq!(a["action"], "ALLOW");
        assert_eq!(a["applies_to"], "HTTPRoute default/b-routes rule public");
        assert_eq!(a["from"][0], "identity spiffe://cluster.local/ns/default/sa/a");
        assert!(
            authz_of(&snapshot, &[], DefaultPolicy::AllowAll, "default", "nope")
                .unwrap_err()
                .to_string()
                .contains("no Service default/nope")
        );
    }
}
