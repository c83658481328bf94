//! `GET /api/v1/check`: is the configuration valid, are the workloads' replicas running,
//! are their proxies ready, connected to discovery and following the configuration in
//! force. Each check says what is wrong and what to do about it.

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
}

/// Discovery streams of one workload's proxies.
#[derive(Default)]
struct Streams {
    peers: BTreeSet<Option<SocketAddr>>,
    total: usize,
    behind: usize,
}

/// Builds the report. `ready` holds the `/ready` outcome of each instance's proxy, in
/// the order of `instances`.
pub fn report(
    status: &Status,
    snapshot: &Snapshot,
    instances: &[Instance],
    ready: &[bool],
    subscriptions: &[Subscription],
) -> CheckReport {
    let mut checks = vec![Check {
        name: "control plane".into(),
        ok: true,
        detail: format!("running; configuration generation {} in force", snapshot.generation),
        hint: None,
        errors: Vec::new(),
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
        }
    });

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
            }
        } else {
            Check { name, ok: false, detail: problems.join("; "), hint: Some(hints.join("; ")), errors: Vec::new() }
        });
    }

    let proxies = instances
        .iter()
        .zip(ready.iter().copied().chain(std::iter::repeat(false)))
        .map(|(i, ready)| ProxyState {
            namespace: i.namespace.clone(),
            workload: i.workload.clone(),
            replica: i.replica,
            admin: i.admin,
            ready,
        })
        .collect();
    CheckReport { ok: checks.iter().all(|c| c.ok), generation: snapshot.generation, checks, proxies }
}
