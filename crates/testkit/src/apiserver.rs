//! A scripted Kubernetes API server: a real HTTP server on loopback that answers the list
//! and watch requests of a client (kube-rs's watchers) in the API's shapes, with the
//! objects a test puts in and takes out. No cluster can run where Tarmac is built; this
//! holds the client to the API's contracts (API concepts: efficient detection of changes,
//! watch bookmarks, 410 Gone) instead.
//!
//! - `GET /api/v1/services` (any collection path): a list, `{"kind": "ServiceList",
//!   "metadata": {"resourceVersion": "N"}, "items": [...]}`, each object with its own
//!   `metadata.resourceVersion` and without `kind` or `apiVersion`, as the API server
//!   sends list items.
//! - `GET ...?watch=true&resourceVersion=R`: a stream of `{"type": "ADDED" | "MODIFIED" |
//!   "DELETED", "object": ...}` lines for every change after R, then a `BOOKMARK` at the
//!   current version, then changes as they happen. A watch from a version the server has
//!   expired ([`ApiServer::expire`]) gets an `ERROR` event with a 410 `Status`, as does
//!   every watch open when it expires: the client must list again.
//! - Collections marked [`ApiServer::not_served`] answer 404 with a `Status`, as a kind
//!   whose CRD is not installed does.
//! - Writes, for what the control plane writes (Leases, route status): `POST` to a
//!   namespaced collection creates (409 if taken), `PUT` of an object replaces it only
//!   from its current resourceVersion (409 otherwise), `PATCH .../status` merges
//!   `status`; each is an event to the watches, and is recorded with the client's token.
//! - For `tarmac install --apply`, `uninstall --apply` and `check --pre` (the functions
//!   under "Install, uninstall, check --pre" below): server-side apply (`PATCH` with
//!   `application/apply-patch+yaml` and a `fieldManager`; creates the object, or overlays
//!   the applied fields on it; an apply that changes nothing keeps the resourceVersion
//!   and sends no event, as the API server's no-op applies; a namespaced object needs its
//!   Namespace), `DELETE` (404 when absent), cluster-scoped objects
//!   (`/apis/G/V/PLURAL/NAME`, `/api/v1/namespaces/NAME`), `GET /version`,
//!   `SelfSubjectAccessReview`s answered from a deny list, discovery of a group version
//!   (`GET /apis/G/V`), and CRDs `Established` after a number of reads.
//! - `fieldSelector=metadata.name=NAME` on a list or watch: only that object, as a
//!   narrowly authorized client asks for one Secret.
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: the TokenReview of a token the
//!   test minted ([`ApiServer::mint_token`]) as the API server answers it: authenticated
//!   only if the token is known and, when `spec.audiences` is given, was minted for one of
//!   them (`status.audiences` the ones in common); its user is the ServiceAccount's, with
//!   the pod in `extra`. Anything else: `authenticated: false` with an `error`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A running scripted API server; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// The last resourceVersion given out, over every collection (as etcd's revision).
    version: u64,
    collections: BTreeMap<String, Collection>,
    not_served: HashSet<String>,
    /// How long each list takes to answer (a large cluster's relist is not instant).
    list_delay: std::time::Duration,
    /// Every request, `GET path?query`, in order.
    requests: Vec<String>,
    /// Every write accepted, `TOKEN METHOD PATH`, in order.
    writes: Vec<String>,
    install: InstallState,
    /// ServiceAccount tokens the test minted, for TokenReviews.
    minted: BTreeMap<String, Minted>,
    /// TokenReviews answered.
    reviews: usize,
    /// Whether TokenReviews fail with 503 (the API server overloaded).
    reviews_unavailable: bool,
}

struct Minted {
    audiences: Vec<String>,
    namespace: String,
    service_account: String,
    pod: String,
}

#[derive(Default)]
struct Collection {
    /// `(namespace, name)` to the object as stored.
    objects: BTreeMap<(String, String), Value>,
    /// `(version, type, object)`: every change, for watches resuming from a version.
    events: Vec<(u64, &'static str, Value)>,
    /// Watches from an older version get 410 Gone.
    expired_below: u64,
    kind: Option<(String, String)>,
    watchers: Vec<Watcher>,
}

struct Watcher {
    tx: mpsc::UnboundedSender<Bytes>,
    /// The watch's field selector.
    selected: Box<dyn Fn(&Value) -> bool + Send>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the scripted API server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { version: 1000, ..Default::default() }));
        let task = tokio::spawn(serve(listener, state.clone()));
        Self { addr, state, task }
    }

    /// A kubeconfig naming this server (plain HTTP on loopback) as its current context.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        self.kubeconfig_as(dir, "scripted-token")
    }

    /// A kubeconfig with `token` as its bearer token: [`ApiServer::writes`] tells clients
    /// apart by it.
    pub fn kubeconfig_as(&self, dir: &Path, token: &str) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{token}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: scripted\n  cluster:\n    server: http://{}\n\
             users:\n- name: tester\n  user:\n    token: {token}\n\
             contexts:\n- name: scripted\n  context:\n    cluster: scripted\n    user: tester\n\
             current-context: scripted\n",
            self.addr,
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Creates or replaces `object` (with `apiVersion`, `kind` and `metadata`) in the
    /// collection at `path` (`/api/v1/services`): an `ADDED` or `MODIFIED` event.
    pub fn apply(&self, path: &str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
        if object["metadata"].get("uid").is_none() {
            object["metadata"]["uid"] = Value::String(format!("uid-{version}"));
            object["metadata"]["creationTimestamp"] = Value::String("2026-12-01T10:00:00Z".into());
        }
        let collection = state.collections.entry(path.to_string()).or_default();
        let kind = (
            object["apiVersion"].as_str().unwrap_or("v1").to_string(),
            object["kind"].as_str().unwrap_or("Unknown").to_string(),
        );
        collection.kind = Some(kind);
        let key = key_of(&object);
        let event =
            if collection.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        collection.publish(version, event, object);
    }

    /// Deletes `namespace/name` (`namespace` empty for cluster-scoped objects) from the
    /// collection at `path`: a `DELETED` event with the object's last state.
    pub fn delete(&self, path: &str, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let collection = state.collections.get_mut(path).expect("a collection with objects");
        let mut object =
            collection.objects.remove(&(namespace.to_string(), name.to_string())).expect("the object exists");
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
        collection.publish(version, "DELETED", object);
    }

    /// Expires every version up to now in the collection at `path`: open watches get an
    /// `ERROR` event with a 410 `Status` and end, and a watch from any version up to now
    /// gets the same.
    pub fn expire(&self, path: &str) {
        let mut state = self.state.lock().unwrap();
        let version = state.version;
        let collection = state.collections.entry(path.to_string()).or_default();
        collection.expired_below = version;
        for watcher in collection.watchers.drain(..) {
            let _ = watcher.tx.send(line(&gone(version)));
        }
    }

    /// The collection at `path` answers 404, as a kind whose CRD is not installed.
    pub fn not_served(&self, path: &str) {
        self.state.lock().unwrap().not_served.insert(path.to_string());
    }

    /// Lists (not watches) answer only after `delay`, as a large collection's do: what a
    /// client shows while it lists again becomes visible.
    pub fn slow_lists(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().list_delay = delay;
    }

    /// A ServiceAccount token of `namespace/service_account` for `audiences`, bound to
    /// `pod`, as the kubelet projects one: a JWT-shaped string (unsigned: only this
    /// server's TokenReview vouches for it) with an `exp` an hour ahead.
    pub fn mint_token(
        &self,
        audiences: &[&str],
        namespace: &str,
        service_account: &str,
        pod: &str,
    ) -> String {
        use base64::Engine as _;
        let mut state = self.state.lock().unwrap();
        let n = state.minted.len();
        let exp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
        let subject = format!("system:serviceaccount:{namespace}:{service_account}");
        let claims = json!({"aud": audiences, "exp": exp, "sub": subject, "n": n});
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token =
            format!("{}.{}.{}", b64(br#"{"alg":"none"}"#), b64(claims.to_string().as_bytes()), b64(b"sig"));
        state.minted.insert(
            token.clone(),
            Minted {
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                namespace: namespace.into(),
                service_account: service_account.into(),
                pod: pod.into(),
            },
        );
        token
    }

    /// How many TokenReviews were answered.
    pub fn token_reviews(&self) -> usize {
        self.state.lock().unwrap().reviews
    }

    /// TokenReviews answer 503 from now on (`true`), or normally again.
    pub fn reviews_unavailable(&self, unavailable: bool) {
        self.state.lock().unwrap().reviews_unavailable = unavailable;
    }

    /// Every write accepted so far, `TOKEN METHOD PATH` (the kubeconfig's token tells
    /// which client wrote).
    pub fn writes(&self) -> Vec<String> {
        self.state.lock().unwrap().writes.clone()
    }

    /// The object `namespace/name` of the collection at `path`, as stored now.
    pub fn get(&self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state.collections.get(path)?.objects.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Every request so far, `GET path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The list requests (not watches) of the collection at `path` so far.
    pub fn lists_of(&self, path: &str) -> usize {
        let prefix = format!("GET {path}");
        self.requests()
            .iter()
            .filter(|r| r.split('?').next() == Some(prefix.as_str()) && !r.contains("watch="))
            .count()
    }
}

impl Collection {
    fn publish(&mut self, version: u64, event: &'static str, object: Value) {
        let message = line(&json!({"type": event, "object": object}));
        self.watchers.retain(|w| !(w.selected)(&object) || w.tx.send(message.clone()).is_ok());
        self.events.push((version, event, object));
    }
}

fn key_of(object: &Value) -> (String, String) {
    let text = |field: &str| object["metadata"][field].as_str().unwrap_or("").to_string();
    (text("namespace"), text("name"))
}

fn line(value: &Value) -> Bytes {
    let mut text = serde_json::to_vec(value).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}

/// The watch event of an expired resourceVersion, as the API server sends it.
fn gone(version: u64) -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: expired below {version}"),
        "reason": "Expired", "code": 410
    }})
}

type ResponseBody = BoxBody<Bytes, Infallible>;

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let is_watch = request.uri().query().is_some_and(|q| q.contains("watch="));
                    let delay = state.lock().unwrap().list_delay;
                    if !is_watch && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let (head, body) = request.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let request = Request::from_parts(head, body);
                    Ok::<_, Infallible>(answer(&state, &request))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed())
        .unwrap()
}

fn answer(state: &Mutex<State>, request: &Request<Bytes>) -> Response<ResponseBody> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let param = |name: &str| {
        query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    };
    let mut state = state.lock().unwrap();
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    state.requests.push(format!("{} {path}?{query}", request.method()));
    if let Some(response) = answer_install(&mut state, request, &token) {
        return response;
    }
    if let Some(item) = Item::parse(&path) {
        return answer_item(&mut state, request, &item, &token);
    }
    if request.method() == http::Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return review(&mut state, request.body());
    }
    if request.method() == http::Method::POST {
        return create(&mut state, &path, request.body(), &token);
    }
    if request.method() != http::Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status_body(405, "MethodNotAllowed", "read only"),
        );
    }
    if state.not_served.contains(&path) {
        let message = "the server could not find the requested resource";
        return json_response(StatusCode::NOT_FOUND, &status_body(404, "NotFound", message));
    }
    let only_name: Option<String> = param("fieldSelector").and_then(|f| {
        let f = f.replace("%3D", "=").replace("%3d", "=");
        f.strip_prefix("metadata.name=").map(str::to_string)
    });
    // A namespaced list (`/api/v1/namespaces/NS/secrets`) is the collection over every
    // namespace, where [`ApiServer::apply`] keeps objects, narrowed to NS.
    let (path, only_namespace) = match collection_of(&path) {
        Some((collection, namespace)) => (collection, Some(namespace)),
        None => (path, None),
    };
    let selected = move |object: &Value| {
        only_name.as_deref().is_none_or(|name| object["metadata"]["name"] == name)
            && only_namespace.as_deref().is_none_or(|ns| object["metadata"]["namespace"] == ns)
    };
    let version = state.version;
    let collection = state.collections.entry(path.clone()).or_default();
    let (api_version, kind) = collection.kind.clone().unwrap_or_else(|| ("v1".into(), "Unknown".into()));
    if matches!(param("watch"), Some("true") | Some("1")) {
        let from: u64 = param("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel();
        if from < collection.expired_below {
            let _ = tx.send(line(&gone(collection.expired_below)));
        } else {
            for (at, event, object) in &collection.events {
                if *at > from && selected(object) {
                    let _ = tx.send(line(&json!({"type": event, "object": object})));
                }
            }
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": version.to_string()}
            }});
            let _ = tx.send(line(&bookmark));
            collection.watchers.push(Watcher { tx, selected: Box::new(selected) });
        }
        return Response::builder()
            .header("content-type", "application/json")
            .body(ChannelBody(rx).boxed())
            .unwrap();
    }
    let items: Vec<Value> = collection
        .objects
        .values()
        .filter(|object| selected(object))
        .map(|object| {
            // List items carry no type: the list's kind says it.
            let mut item = object.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let list = json!({
        "kind": format!("{kind}List"), "apiVersion": api_version,
        "metadata": {"resourceVersion": version.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

/// `/apis/G/V/namespaces/NS/PLURAL/NAME[/status]` (or `/api/v1/...`): one object.
struct Item {
    /// The collection over every namespace, where [`ApiServer::apply`] keeps it.
    collection: String,
    namespace: String,
    name: String,
    status: bool,
}

impl Item {
    fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (prefix, rest) = match parts.first() {
            Some(&"api") if parts.len() >= 2 => (format!("/api/{}", parts[1]), &parts[2..]),
            Some(&"apis") if parts.len() >= 3 => (format!("/apis/{}/{}", parts[1], parts[2]), &parts[3..]),
            _ => return None,
        };
        match rest {
            ["namespaces", namespace, plural, name] | ["namespaces", namespace, plural, name, "status"] => {
                Some(Self {
                    collection: format!("{prefix}/{plural}"),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    status: rest.len() == 5,
                })
            }
            // Cluster-scoped: `/apis/G/V/PLURAL/NAME[/status]`, `/api/v1/namespaces/NAME`.
            [plural, name] | [plural, name, "status"] if *plural != "namespaces" || rest.len() == 2 => {
                Some(Self {
                    collection: format!("{prefix}/{plural}"),
                    namespace: String::new(),
                    name: name.to_string(),
                    status: rest.len() == 3,
                })
            }
            _ => None,
        }
    }
}

/// A namespaced collection (`.../namespaces/NS/PLURAL`) as the one over every namespace.
fn collection_of(path: &str) -> Option<(String, String)> {
    let (head, plural) = path.rsplit_once('/')?;
    let (prefix, namespace) = head.rsplit_once("/namespaces/")?;
    Some((format!("{prefix}/{plural}"), namespace.to_string()))
}

impl State {
    /// Stores `object` under a new version, with its event; the stored object.
    fn store(&mut self, collection: &str, mut object: Value, event: &'static str) -> Value {
        self.version += 1;
        let version = self.version;
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
        let entry = self.collections.entry(collection.to_string()).or_default();
        entry.objects.insert(key_of(&object), object.clone());
        entry.publish(version, event, object.clone());
        object
    }

    fn wrote(&mut self, token: &str, method: &http::Method, path: &str) {
        self.writes.push(format!("{token} {method} {path}"));
    }
}

/// A TokenReview, answered as the API server does (see the module's documentation).
fn review(state: &mut State, body: &Bytes) -> Response<ResponseBody> {
    let Ok(asked) = serde_json::from_slice::<Value>(body) else { return bad_request() };
    if state.reviews_unavailable {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &status_body(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
        );
    }
    state.reviews += 1;
    let token = asked["spec"]["token"].as_str().unwrap_or("");
    let wanted: Vec<String> = asked["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let status = match state.minted.get(token) {
        None => {
            json!({"authenticated": false, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})
        }
        Some(minted) => {
            let common: Vec<&String> = if wanted.is_empty() {
                minted.audiences.iter().collect()
            } else {
                wanted.iter().filter(|a| minted.audiences.contains(a)).collect()
            };
            if common.is_empty() {
                json!({"authenticated": false, "error": format!(
                    "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                    minted.audiences, wanted
                )})
            } else {
                json!({
                    "authenticated": true,
                    "audiences": common,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", minted.namespace, minted.service_account),
                        "uid": "sa-uid",
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", minted.namespace), "system:authenticated"],
                        "extra": {
                            "authentication.kubernetes.io/pod-name": [minted.pod],
                            "authentication.kubernetes.io/pod-uid": [format!("uid-of-{}", minted.pod)],
                        },
                    },
                })
            }
        }
    };
    let answer = json!({
        "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": asked["spec"],
        "status": status,
    });
    json_response(StatusCode::CREATED, &answer)
}

fn bad_request() -> Response<ResponseBody> {
    json_response(StatusCode::BAD_REQUEST, &status_body(400, "BadRequest", "not JSON"))
}

/// `POST` to a namespaced collection: creates, or 409 if the name is taken.
fn create(state: &mut State, path: &str, body: &Bytes, token: &str) -> Response<ResponseBody> {
    let Some((collection, namespace)) = collection_of(path) else {
        return json_response(StatusCode::NOT_FOUND, &status_body(404, "NotFound", "no such collection"));
    };
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else { return bad_request() };
    object["metadata"]["namespace"] = Value::String(namespace);
    let exists = state.collections.get(&collection).is_some_and(|c| c.objects.contains_key(&key_of(&object)));
    if exists {
        return json_response(StatusCode::CONFLICT, &status_body(409, "AlreadyExists", "already exists"));
    }
    state.wrote(token, &http::Method::POST, path);
    let stored = state.store(&collection, object, "ADDED");
    json_response(StatusCode::CREATED, &stored)
}

/// One object: `GET`; `PUT` (409 unless the body's resourceVersion is the stored one, the
/// API's optimistic concurrency); `PATCH` of `/status`, a JSON merge patch of `status`.
fn answer_item(
    state: &mut State,
    request: &Request<Bytes>,
    item: &Item,
    token: &str,
) -> Response<ResponseBody> {
    let key = (item.namespace.clone(), item.name.clone());
    let stored = state.collections.get(&item.collection).and_then(|c| c.objects.get(&key)).cloned();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match (&method, stored) {
        (&http::Method::GET, Some(object)) => json_response(StatusCode::OK, &object),
        (&http::Method::PUT, Some(object)) if !item.status => {
            let Ok(new) = serde_json::from_slice::<Value>(request.body()) else { return bad_request() };
            if new["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                let message = "the object has been modified; please apply your changes to the latest version";
                return json_response(StatusCode::CONFLICT, &status_body(409, "Conflict", message));
            }
            state.wrote(token, &method, &path);
            json_response(StatusCode::OK, &state.store(&item.collection, new, "MODIFIED"))
        }
        (&http::Method::PATCH, Some(mut object)) if item.status => {
            let Ok(patch) = serde_json::from_slice::<Value>(request.body()) else { return bad_request() };
            if let Some(Value::Object(fields)) = patch.get("status") {
                for (field, value) in fields {
                    object["status"][field] = value.clone();
                }
            }
            state.wrote(token, &method, &path);
            json_response(StatusCode::OK, &state.store(&item.collection, object, "MODIFIED"))
        }
        (_, None) => json_response(StatusCode::NOT_FOUND, &status_body(404, "NotFound", "not found")),
        _ => json_response(StatusCode::METHOD_NOT_ALLOWED, &status_body(405, "MethodNotAllowed", "not here")),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A response body fed line by line, open until the server stops or the watch expires.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

// ---------------------------------------------------------------------------------------
// Install, uninstall, check --pre: server-side apply, DELETE, `/version`,
// SelfSubjectAccessReview, discovery, CRDs' `Established` condition.

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const NAMESPACES: &str = "/api/v1/namespaces";

struct InstallState {
    /// What `GET /version` reports: major, minor.
    version: (String, String),
    /// `(verb, group, resource)` SelfSubjectAccessReviews answer not allowed.
    denied: HashSet<(String, String, String)>,
    /// `group/version` to its resources: `(plural, kind, namespaced)`.
    groups: BTreeMap<String, Vec<(String, String, bool)>>,
    /// A new CRD is `Established` on its Nth read (0: at once), as the API server
    /// establishes it shortly after creating it.
    establish_after_reads: u32,
    crd_reads: BTreeMap<String, u32>,
}

impl Default for InstallState {
    fn default() -> Self {
        Self {
            version: ("1".into(), "31".into()),
            denied: HashSet::new(),
            groups: BTreeMap::new(),
            establish_after_reads: 0,
            crd_reads: BTreeMap::new(),
        }
    }
}

impl ApiServer {
    /// `GET /version` reports `major.minor` (1.31 unless set).
    pub fn set_version(&self, major: &str, minor: &str) {
        self.state.lock().unwrap().install.version = (major.into(), minor.into());
    }

    /// SelfSubjectAccessReviews of `verb` on `group`/`resource` answer not allowed.
    pub fn deny(&self, verb: &str, group: &str, resource: &str) {
        self.state.lock().unwrap().install.denied.insert((verb.into(), group.into(), resource.into()));
    }

    /// `GET /apis/{group_version}` lists these resources: `(plural, kind, namespaced)`.
    pub fn serve_group(&self, group_version: &str, resources: &[(&str, &str, bool)]) {
        let resources = resources.iter().map(|(p, k, n)| (p.to_string(), k.to_string(), *n)).collect();
        self.state.lock().unwrap().install.groups.insert(group_version.into(), resources);
    }

    /// CRDs created from now on are `Established` on their `reads`th read, not at once.
    pub fn establish_crds_after_reads(&self, reads: u32) {
        self.state.lock().unwrap().install.establish_after_reads = reads;
    }

    /// Every object of every collection, `Kind namespace/name` (namespace empty for
    /// cluster-scoped ones).
    pub fn objects(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut all: Vec<String> = state
            .collections
            .values()
            .flat_map(|c| {
                c.objects.iter().map(|((ns, name), object)| {
                    format!("{} {ns}/{name}", object["kind"].as_str().unwrap_or("?"))
                })
            })
            .collect();
        all.sort();
        all
    }
}

/// The requests only install, uninstall and `check --pre` make; `None` for the others.
fn answer_install(
    state: &mut State,
    request: &Request<Bytes>,
    token: &str,
) -> Option<Response<ResponseBody>> {
    let path = request.uri().path();
    let method = request.method();
    if method == http::Method::GET && path == "/version" {
        let (major, minor) = &state.install.version;
        return Some(json_response(
            StatusCode::OK,
            &json!({
                "major": major, "minor": minor, "gitVersion": format!("v{major}.{minor}.0"),
                "platform": "linux/amd64",
            }),
        ));
    }
    if method == http::Method::POST && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        let Ok(mut review) = serde_json::from_slice::<Value>(request.body()) else {
            return Some(bad_request());
        };
        let attributes = &review["spec"]["resourceAttributes"];
        let text = |field: &str| attributes[field].as_str().unwrap_or("").to_string();
        let key = (text("verb"), text("group"), text("resource"));
        let allowed = !state.install.denied.contains(&key);
        review["status"] = if allowed {
            json!({"allowed": true, "reason": "scripted"})
        } else {
            json!({"allowed": false, "reason": "denied by the scripted server"})
        };
        return Some(json_response(StatusCode::CREATED, &review));
    }
    if method == http::Method::GET
        && let Some(group_version) = path.strip_prefix("/apis/").filter(|gv| gv.matches('/').count() == 1)
    {
        let Some(resources) = state.install.groups.get(group_version) else {
            return Some(json_response(StatusCode::NOT_FOUND, &status_body(404, "NotFound", "not served")));
        };
        let resources: Vec<Value> = resources
            .iter()
            .map(|(plural, kind, namespaced)| {
                json!({
                    "name": plural, "singularName": "", "namespaced": namespaced, "kind": kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                })
            })
            .collect();
        return Some(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources,
            }),
        ));
    }
    let item = Item::parse(path)?;
    if item.status {
        return None;
    }
    let is_apply = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    match *method {
        http::Method::PATCH if is_apply => Some(server_side_apply(state, request, &item, token)),
        http::Method::DELETE => Some(delete_item(state, &item, token, path)),
        http::Method::GET if item.collection == CRDS => {
            establish(state, &item.name);
            None
        }
        _ => None,
    }
}

/// `PATCH` with `application/apply-patch+yaml`. Simplified: the applied fields overlay
/// the stored object (fields this manager stopped applying are not removed, as the API
/// server would through managedFields).
fn server_side_apply(
    state: &mut State,
    request: &Request<Bytes>,
    item: &Item,
    token: &str,
) -> Response<ResponseBody> {
    let query = request.uri().query().unwrap_or("");
    if !query.split('&').any(|pair| pair.starts_with("fieldManager=") && pair.len() > "fieldManager=".len()) {
        let message = "PATCH, fieldManager is required for apply requests";
        return json_response(StatusCode::BAD_REQUEST, &status_body(400, "BadRequest", message));
    }
    // JSON is YAML: what kube-rs sends.
    let Ok(applied) = serde_json::from_slice::<Value>(request.body()) else { return bad_request() };
    if applied["metadata"]["name"].as_str() != Some(item.name.as_str()) {
        let message = "the name of the object does not match the name on the URL";
        return json_response(StatusCode::BAD_REQUEST, &status_body(400, "BadRequest", message));
    }
    if !item.namespace.is_empty() {
        let exists = state
            .collections
            .get(NAMESPACES)
            .is_some_and(|c| c.objects.contains_key(&(String::new(), item.namespace.clone())));
        if !exists {
            let message = format!("namespaces \"{}\" not found", item.namespace);
            return json_response(StatusCode::NOT_FOUND, &status_body(404, "NotFound", &message));
        }
    }
    let key = (item.namespace.clone(), item.name.clone());
    let stored = state.collections.get(&item.collection).and_then(|c| c.objects.get(&key)).cloned();
    let path = request.uri().path().to_string();
    let (mut object, event, status) = match stored {
        Some(stored) => {
            let mut merged = stored.clone();
            overlay(&mut merged, &applied);
            if merged == stored {
                return json_response(StatusCode::OK, &stored);
            }
            (merged, "MODIFIED", StatusCode::OK)
        }
        None => {
            let mut object = applied;
            if !item.namespace.is_empty() {
                object["metadata"]["namespace"] = Value::String(item.namespace.clone());
            }
            object["metadata"]["uid"] = Value::String(format!("uid-{}", state.version + 1));
            object["metadata"]["creationTimestamp"] = Value::String("2026-12-01T10:00:00Z".into());
            (object, "ADDED", StatusCode::CREATED)
        }
    };
    if item.collection == CRDS && event == "ADDED" {
        object["status"] = json!({"conditions": []});
        state.install.crd_reads.insert(item.name.clone(), 0);
    }
    state.wrote(token, &http::Method::PATCH, &path);
    let stored = state.store(&item.collection, object, event);
    if item.collection == CRDS && event == "ADDED" && state.install.establish_after_reads == 0 {
        establish(state, &item.name);
        return json_response(status, &state.collections[CRDS].objects[&key]);
    }
    json_response(status, &stored)
}

/// Counts a read of the CRD `name`; on the configured read, its `NamesAccepted` and
/// `Established` conditions become `True`.
fn establish(state: &mut State, name: &str) {
    let after = state.install.establish_after_reads;
    let Some(reads) = state.install.crd_reads.get_mut(name) else { return };
    *reads += 1;
    if *reads < after && after > 0 {
        return;
    }
    state.install.crd_reads.remove(name);
    let key = (String::new(), name.to_string());
    let Some(mut crd) = state.collections.get(CRDS).and_then(|c| c.objects.get(&key)).cloned() else {
        return;
    };
    let condition = |kind: &str| {
        json!({
            "type": kind, "status": "True", "reason": kind, "message": "scripted",
            "lastTransitionTime": "2026-12-01T10:00:00Z",
        })
    };
    crd["status"] = json!({
        "conditions": [condition("NamesAccepted"), condition("Established")],
        "acceptedNames": crd["spec"]["names"].clone(),
        "storedVersions": ["v1alpha1"],
    });
    state.store(CRDS, crd, "MODIFIED");
}

/// Overlays `applied` on `target`: objects merge field by field, anything else replaces.
fn overlay(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (field, value) in applied {
                overlay(target.entry(field.clone()).or_insert(Value::Null), value);
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// `DELETE` of one object: gone at once (no finalizers here), a `DELETED` event; 404 when
/// there is none.
fn delete_item(state: &mut State, item: &Item, token: &str, path: &str) -> Response<ResponseBody> {
    let key = (item.namespace.clone(), item.name.clone());
    let removed = state.collections.get_mut(&item.collection).and_then(|c| c.objects.remove(&key));
    let Some(mut object) = removed else {
        let message = format!("\"{}\" not found", item.name);
        return json_response(StatusCode::NOT_FOUND, &status_body(404, "NotFound", &message));
    };
    state.wrote(token, &http::Method::DELETE, path);
    state.version += 1;
    let version = state.version;
    object["metadata"]["resourceVersion"] = Value::String(version.to_string());
    if let Some(collection) = state.collections.get_mut(&item.collection) {
        collection.publish(version, "DELETED", object);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": item.name},
        }),
    )
}
