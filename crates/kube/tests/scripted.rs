//! The Kubernetes store against a scripted API server (`tarmac_testkit::apiserver`): a
//! real HTTP server on loopback answering kube-rs's list and watch requests in the API's
//! shapes, reached through a kubeconfig as a cluster would be.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tarmac_control::registry::Registry;
use tarmac_control::store::{Snapshot, Status, Store};
use tarmac_kube::{KubeStore, OpenError, Options};
use tarmac_model::Resource;
use tarmac_testkit::apiserver::ApiServer;
use tokio::sync::watch;

const SERVICES: &str = "/api/v1/services";
const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const HTTPROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPCROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const FAULTS: &str = "/apis/tarmac.io/v1alpha1/faultinjections";
const AUTHZ: &str = "/apis/tarmac.io/v1alpha1/authorizationpolicies";
const RATE_LIMITS: &str = "/apis/tarmac.io/v1alpha1/ratelimitpolicies";

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
        "spec": {
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster", "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "appProtocol": "http"}]
        },
        "status": {"loadBalancer": {}}
    })
}

fn route(name: &str, backend: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop", "generation": 1},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": backend, "port": 80, "weight": 1}]
            }]
        },
        "status": {"parents": []}
    })
}

fn fault(name: &str, status: u16) -> Value {
    json!({
        "apiVersion": "tarmac.io/v1alpha1", "kind": "FaultInjection",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"abort": {"httpStatus": status, "percentage": 5.0}}
    })
}

fn pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "books"},
                     "annotations": {"tarmac.io/injected": "0.1.0"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "books-7d9f8c", "uid": "rs-1", "controller": true}]},
        "spec": {"serviceAccountName": "books", "nodeName": "node-1",
                 "containers": [{"name": "books", "image": "books:1", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn slice(ips: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|(pod, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": format!("uid-{pod}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "books-x7k2p", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "books", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": endpoints
    })
}

/// A server holding a small mesh: Namespace, two Services, a route, a fault, a pod.
async fn mesh() -> ApiServer {
    let server = ApiServer::start().await;
    server.apply(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
    );
    server.apply(SERVICES, service("books"));
    server.apply(SERVICES, service("authors"));
    server.apply(HTTPROUTES, route("books-v2", "books"));
    server.apply(FAULTS, fault("books-errors", 503));
    server.apply(GRPCROUTES, json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "authors-lookup", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "authors"}],
                 "rules": [{"matches": [{"method": {"type": "Exact", "service": "shop.Authors", "method": "Lookup"}}],
                            "backendRefs": [{"name": "authors", "port": 80}]}]}
    }));
    server.apply(PODS, pod("books-7d9f8c-a1", "10.1.0.7"));
    server.apply(SLICES, slice(&[("books-7d9f8c-a1", "10.1.0.7")]));
    // A cluster without the RateLimitPolicy CRD: none are read, the rest works.
    server.not_served(RATE_LIMITS);
    server
}

fn options() -> Options {
    Options { sync_timeout: Duration::from_secs(20), debounce: Duration::from_millis(20) }
}

/// A client of `server` through a kubeconfig, its requests carrying `token`.
async fn client(server: &ApiServer, token: &str) -> kube::Client {
    let dir = std::env::temp_dir().join(format!("tarmac-kube-{}-{}", std::process::id(), server.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig_as(&dir, token)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn open(server: &ApiServer, registry: Registry, options: Options) -> Result<KubeStore, OpenError> {
    KubeStore::open(client(server, "store").await, registry, options).await
}

fn names(snapshot: &Snapshot) -> Vec<String> {
    snapshot.objects.keys().map(ToString::to_string).collect()
}

async fn wait<T: Clone>(rx: &mut watch::Receiver<T>, what: &str, ok: impl Fn(&T) -> bool) -> T {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let value = rx.borrow_and_update().clone();
            if ok(&value) {
                return value;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("within 15 s: {what}"))
}

fn http_route<'a>(snapshot: &'a Snapshot, name: &str) -> &'a tarmac_model::HttpRoute {
    snapshot
        .objects
        .values()
        .find_map(|r| match r {
            Resource::HttpRoute(route) if route.metadata.name == name => Some(route),
            _ => None,
        })
        .unwrap_or_else(|| panic!("HTTPRoute {name} in {:?}", names(snapshot)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_follows_adds_changes_and_deletes() {
    let server = mesh().await;
    let registry = Registry::default();
    let store = open(&server, registry.clone(), options()).await.unwrap();
    let mut snapshots = store.snapshots();
    let first = snapshots.borrow_and_update().clone();
    assert_eq!(
        names(&first),
        [
            "FaultInjection shop/books-errors",
            "GRPCRoute shop/authors-lookup",
            "HTTPRoute shop/books-v2",
            "Namespace default/shop",
            "Service shop/authors",
            "Service shop/books",
        ]
    );
    assert!(store.status().borrow().rejected.is_empty(), "{:?}", store.status().borrow().rejected);
    // The pod is a meshed instance at its EndpointSlice's address, with its identity.
    let instances = registry.subscribe().borrow().clone();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].addr.to_string(), "10.1.0.7:8080");
    assert_eq!((instances[0].workload.as_str(), instances[0].service_account.as_str()), ("books", "books"));
    assert!(instances[0].meshed);

    // MODIFIED: the route's backend changes.
    server.apply(HTTPROUTES, route("books-v2", "authors"));
    let changed = wait(&mut snapshots, "the route's new backend", |s| {
        http_route(s, "books-v2").spec.rules[0].backend_refs[0].name == "authors"
    })
    .await;
    assert!(changed.generation > first.generation);

    // DELETED: the Service leaves the snapshot.
    server.delete(SERVICES, "shop", "authors");
    wait(&mut snapshots, "Service shop/authors gone", |s| !names(s).contains(&"Service shop/authors".into()))
        .await;

    // A second replica becomes ready: the registry follows.
    let mut replicas = registry.subscribe();
    server.apply(PODS, pod("books-7d9f8c-b2", "10.1.0.8"));
    server.apply(SLICES, slice(&[("books-7d9f8c-a1", "10.1.0.7"), ("books-7d9f8c-b2", "10.1.0.8")]));
    let both = wait(&mut replicas, "two instances", |i| i.len() == 2).await;
    assert_eq!(both[1].addr.to_string(), "10.1.0.8:8080");
    assert_eq!((both[0].replica, both[1].replica), (0, 1));
    // The Services were listed once: every change since came on the watch (which the
    // server opened with a BOOKMARK), nothing was listed again.
    assert_eq!(server.lists_of(SERVICES), 1, "{:#?}", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_is_refused_by_name_and_the_rest_stays_in_force() {
    let server = mesh().await;
    let store = open(&server, Registry::default(), options()).await.unwrap();
    let mut snapshots = store.snapshots();
    let mut status = store.status();

    // A new invalid object: refused, named, and never in force.
    server.apply(FAULTS, fault("typo", 99));
    let refused = wait(&mut status, "the refusal", |s: &Arc<Status>| !s.rejected.is_empty()).await;
    let messages: Vec<String> = refused.rejected.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "kubernetes: FaultInjection shop/typo: field `spec.abort.httpStatus`: must be an HTTP status 200-599"
        ]
    );
    assert!(!names(&snapshots.borrow()).contains(&"FaultInjection shop/typo".into()));

    // An accepted object changed into an invalid one keeps its last accepted version;
    // another team's change still applies.
    server.apply(FAULTS, fault("books-errors", 42));
    server.apply(HTTPROUTES, route("books-v2", "authors"));
    let snapshot = wait(&mut snapshots, "the other change applied", |s| {
        http_route(s, "books-v2").spec.rules[0].backend_refs[0].name == "authors"
    })
    .await;
    let kept = snapshot.objects.values().find_map(|r| match r {
        Resource::FaultInjection(f) if f.metadata.name == "books-errors" => Some(f),
        _ => None,
    });
    assert_eq!(kept.unwrap().spec.abort.as_ref().unwrap().http_status, 503);
    let both = wait(&mut status, "both refusals", |s: &Arc<Status>| s.rejected.len() == 2).await;
    assert!(both.rejected.iter().any(|e| e.object.as_deref() == Some("FaultInjection shop/books-errors")));

    // Fixed, and the refusals are gone; deleted, and so is the object.
    server.apply(FAULTS, fault("books-errors", 500));
    server.delete(FAULTS, "shop", "typo");
    wait(&mut status, "no refusal left", |s: &Arc<Status>| s.rejected.is_empty()).await;
    let snapshot = snapshots.borrow().clone();
    assert!(!names(&snapshot).contains(&"FaultInjection shop/typo".into()));
    assert!(snapshot.objects.values().any(
        |r| matches!(r, Resource::FaultInjection(f) if f.spec.abort.as_ref().unwrap().http_status == 500)
    ));

    // Tarmac's own kinds, read like the rest: an AuthorizationPolicy on the Service.
    server.apply(
        AUTHZ,
        json!({
            "apiVersion": "tarmac.io/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "books-readers", "namespace": "shop"},
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "books"}],
                     "from": [{"serviceAccounts": ["web"]}]}
        }),
    );
    wait(&mut snapshots, "the AuthorizationPolicy", |s| {
        names(s).contains(&"AuthorizationPolicy shop/books-readers".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_lists_again_without_losing_state() {
    let server = mesh().await;
    let store = open(&server, Registry::default(), options()).await.unwrap();
    let mut snapshots = store.snapshots();
    assert_eq!(server.lists_of(SERVICES), 1);
    // Every snapshot published from here on must keep the Services.
    let mut every = store.snapshots();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while every.changed().await.is_ok() {
            seen.push(every.borrow_and_update().clone());
        }
        seen
    });

    // The watch expires (410 Gone), and a change lands while the client is away: the
    // relist must bring it.
    // The relist takes its time, as a large cluster's does: long enough for several
    // snapshots to be built while it runs.
    server.slow_lists(Duration::from_millis(300));
    server.expire(SERVICES);
    server.apply(SERVICES, service("ratings"));
    wait(&mut snapshots, "the Service added across the relist", |s| {
        names(s).contains(&"Service shop/ratings".into())
    })
    .await;
    assert!(server.lists_of(SERVICES) >= 2, "listed again: {:#?}", server.requests());
    // The watch after the relist works: a later change arrives as an event.
    server.delete(SERVICES, "shop", "ratings");
    wait(&mut snapshots, "the deletion after the relist", |s| {
        !names(s).contains(&"Service shop/ratings".into())
    })
    .await;

    drop(store);
    let seen = watcher.await.unwrap();
    assert!(!seen.is_empty());
    for snapshot in seen {
        let names = names(&snapshot);
        assert!(
            names.contains(&"Service shop/books".into()) && names.contains(&"Service shop/authors".into()),
            "a snapshot lost the Services during the relist: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_the_api_does_not_serve_fails_the_start_by_name() {
    let server = mesh().await;
    server.not_served(PODS);
    let options = Options { sync_timeout: Duration::from_secs(2), ..options() };
    let e = open(&server, Registry::default(), options).await.unwrap_err().to_string();
    assert!(e.contains("did not list Pod within 2s") && e.contains("404"), "{e}");
}

/// The condition `kind` of the first parent Tarmac wrote on HTTPRoute `shop/name`.
fn written_condition(server: &ApiServer, name: &str, kind: &str) -> Option<(String, String)> {
    let route = server.get(HTTPROUTES, "shop", name)?;
    let parent =
        route["status"]["parents"].as_array()?.iter().find(|p| p["controllerName"] == "tarmac.io/mesh")?;
    let condition = parent["conditions"].as_array()?.iter().find(|c| c["type"] == kind)?;
    Some((condition["status"].as_str()?.to_string(), condition["reason"].as_str()?.to_string()))
}

async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "within 15 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_alone_writes_route_status_and_a_follower_takes_over() {
    use tarmac_kube::status::{StatusOptions, spawn};
    let server = mesh().await;
    // A route whose backend does not exist: ResolvedRefs False, BackendNotFound.
    server.apply(HTTPROUTES, route("broken", "nope"));
    let store = open(&server, Registry::default(), options()).await.unwrap();
    let options = |identity: &str| StatusOptions {
        lease_namespace: "tarmac-system".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(200),
    };
    let a = spawn(client(&server, "replica-a").await, store.snapshots(), options("replica-a"));
    eventually("replica-a writes both routes' status", || {
        written_condition(&server, "broken", "ResolvedRefs")
            == Some(("False".into(), "BackendNotFound".into()))
            && written_condition(&server, "books-v2", "Accepted") == Some(("True".into(), "Accepted".into()))
    })
    .await;
    assert_eq!(
        written_condition(&server, "books-v2", "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into()))
    );

    // A second replica only follows while the first renews.
    let b = spawn(client(&server, "replica-b").await, store.snapshots(), options("replica-b"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = server.writes();
    assert!(!writes.iter().any(|w| w.starts_with("replica-b ")), "{writes:#?}");
    // Unchanged status is not written again at every renewal.
    let patches =
        |token: &str| server.writes().iter().filter(|w| w.starts_with(token) && w.contains("PATCH")).count();
    assert_eq!(patches("replica-a "), 3, "one per route (two HTTPRoutes, a GRPCRoute): {writes:#?}");

    // The first stops renewing: after the lease's duration the second holds it, writes
    // the status again, and follows changes.
    a.abort();
    eventually("replica-b takes over", || patches("replica-b ") >= 3).await;
    let lease = server.get("/apis/coordination.k8s.io/v1/leases", "tarmac-system", "tarmac-control").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    server.apply(SERVICES, service("nope"));
    eventually("the fixed route's status", || {
        written_condition(&server, "broken", "ResolvedRefs") == Some(("True".into(), "ResolvedRefs".into()))
    })
    .await;
    b.abort();
}
