//! Route status, written back to the API as Gateway API implementations do: for every
//! HTTPRoute and GRPCRoute in force, `status.parents[]` with Tarmac's controller name and
//! the `Accepted` and `ResolvedRefs` conditions (with their reasons: `NoMatchingParent`,
//! `BackendNotFound`, `InvalidKind`, ...) the control plane computes for `tarmac check`
//! (`tarmac_control::api::route_status`).
//!
//! Only one replica writes: the holder of the `coordination.k8s.io/v1` Lease
//! `tarmac-control`. Each replica tries to take or renew it every `renew_every`; a lease
//! not renewed for its duration may be taken over. Taking and renewing go through the
//! API's optimistic concurrency (the Lease's resourceVersion): of two replicas trying at
//! once, one gets a 409 Conflict and stays a follower. A route's status is written only
//! when what Tarmac would say changed, and again by each new leader.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tarmac_control::api::route_status;
use tarmac_control::store::Snapshot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `controllerName` of the parents Tarmac writes (Gateway API: a domain-prefixed path).
pub const CONTROLLER_NAME: &str = "tarmac.io/mesh";
/// The Lease the replicas elect their writer with.
pub const LEASE_NAME: &str = "tarmac-control";

#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// Where the Lease lives: the control plane's namespace.
    pub lease_namespace: String,
    /// This replica, as the Lease names its holder (the pod's name).
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub lease_duration: Duration,
    /// How often the Lease is taken or renewed.
    pub renew_every: Duration,
}

/// Writes route status while this replica holds the Lease, until the returned task is
/// aborted or the snapshots end.
pub fn spawn(
    client: Client,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    options: StatusOptions,
) -> JoinHandle<()> {
    tokio::spawn(run(client, snapshots, options))
}

async fn run(client: Client, mut snapshots: watch::Receiver<Arc<Snapshot>>, options: StatusOptions) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &options.lease_namespace);
    // What was last written per route, so that an unchanged status is not written again.
    let mut written: HashMap<(String, String, String), Value> = HashMap::new();
    let mut leader = false;
    loop {
        let held = match hold_lease(&leases, &options).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!("the Lease {}/{LEASE_NAME}: {e}", options.lease_namespace);
                false
            }
        };
        if held != leader {
            tracing::info!(identity = %options.identity, "{}", match held {
                true => "holding the Lease: writing route status",
                false => "not holding the Lease: another replica writes route status",
            });
            // A new term starts from nothing: another leader may have written meanwhile.
            written.clear();
            leader = held;
        }
        if leader {
            let snapshot = snapshots.borrow_and_update().clone();
            write(&client, &snapshot, &mut written).await;
        }
        tokio::select! {
            () = tokio::time::sleep(options.renew_every) => {}
            changed = snapshots.changed(), if leader => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Takes or renews the Lease; whether this replica holds it now.
async fn hold_lease(leases: &Api<Lease>, options: &StatusOptions) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(options.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1);
    let spec = LeaseSpec {
        holder_identity: Some(options.identity.clone()),
        lease_duration_seconds: Some(seconds),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    };
    let outcome = match leases.get_opt(LEASE_NAME).await? {
        None => {
            let lease = Lease {
                metadata: kube::core::ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
                spec: Some(LeaseSpec {
                    acquire_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..spec
                }),
            };
            leases.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let mine = current.holder_identity.as_deref() == Some(options.identity.as_str());
            let expired = match (&current.renew_time, current.lease_duration_seconds) {
                (Some(MicroTime(renewed)), Some(duration)) => {
                    now > *renewed + SignedDuration::from_secs(i64::from(duration))
                }
                _ => true,
            };
            if !mine && !expired {
                return Ok(false);
            }
            lease.spec = Some(match mine {
                true => LeaseSpec {
                    acquire_time: current.acquire_time,
                    lease_transitions: current.lease_transitions,
                    ..spec
                },
                false => LeaseSpec {
                    acquire_time: Some(MicroTime(now)),
                    lease_transitions: Some(current.lease_transitions.unwrap_or(0) + 1),
                    ..spec
                },
            });
            // The resourceVersion read: a replica that took it meanwhile makes this a 409.
            leases.replace(LEASE_NAME, &PostParams::default(), &lease).await
        }
    };
    match outcome {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The `status.parents` Tarmac reports for each route of `snapshot`, without times.
pub fn route_parents(snapshot: &Snapshot) -> Vec<((String, String, String), Value)> {
    let mut out = Vec::new();
    for route in route_status::statuses(snapshot) {
        let parents: Vec<Value> = route
            .parents
            .iter()
            .map(|parent| {
                let mut parent_ref = json!({"group": "", "kind": "Service", "namespace": parent.namespace, "name": parent.name});
                if let Some(port) = parent.port {
                    parent_ref["port"] = json!(port);
                }
                if let Some(section) = &parent.section_name {
                    parent_ref["sectionName"] = json!(section);
                }
                let conditions: Vec<Value> = parent
                    .conditions
                    .iter()
                    .filter(|c| matches!(c.condition_type, "Accepted" | "ResolvedRefs"))
                    .map(|c| json!({"type": c.condition_type, "status": c.status, "reason": c.reason, "message": c.message}))
                    .collect();
                json!({"parentRef": parent_ref, "controllerName": CONTROLLER_NAME, "conditions": conditions})
            })
            .collect();
        out.push(((route.kind, route.namespace, route.name), Value::Array(parents)));
    }
    out
}

async fn write(client: &Client, snapshot: &Snapshot, written: &mut HashMap<(String, String, String), Value>) {
    let now = Timestamp::now().to_string();
    for (key, parents) in route_parents(snapshot) {
        if written.get(&key) == Some(&parents) {
            continue;
        }
        let (kind, namespace, name) = &key;
        let plural = match kind.as_str() {
            "HTTPRoute" => "httproutes",
            "GRPCRoute" => "grpcroutes",
            _ => continue,
        };
        let resource = kube::core::ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: kind.clone(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let mut timed = parents.clone();
        for parent in timed.as_array_mut().into_iter().flatten() {
            for condition in parent["conditions"].as_array_mut().into_iter().flatten() {
                condition["lastTransitionTime"] = json!(now);
            }
        }
        let patch = Patch::Merge(json!({"status": {"parents": timed}}));
        match api.patch_status(name, &PatchParams::default(), &patch).await {
            Ok(_) => {
                written.insert(key, parents);
            }
            Err(e) => tracing::warn!("cannot write the status of {kind} {namespace}/{name}: {e}"),
        }
    }
}
