//! The simulated cluster's API server: list (paginated, `limit` and `continue`) and watch
//! (`watch=true` from a `resourceVersion`, `410 Gone` below what it still holds) of
//! Namespaces, Services, Pods and EndpointSlices, in the API's shapes, on loopback.
//!
//! The bench has its own rather than the test kit's scripted server
//! (`crates/testkit/src/apiserver.rs`): that one keeps every event forever, answers a
//! list in one piece whatever `limit` asks, feeds watches through unbounded channels and
//! records every request, which suits a test of a few objects; this one holds thousands of
//! objects for minutes, so its history and its watchers' buffers are bounded (a watcher
//! that falls behind is cut off, as the API server does, and lists again), and it tells
//! the churn when each event went out, which is where propagation is timed from.
//! Other collections (the mesh's CRDs, which the control plane treats as optional) answer
//! 404, as on a cluster without them. It also answers the TokenReviews the control plane
//! makes of the proxies' ServiceAccount tokens, for the tokens the bench handed out.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The collections served, with their list kind's `apiVersion` and `kind`.
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const SERVICES: &str = "/api/v1/services";
pub const PODS: &str = "/api/v1/pods";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const SERVED: [(&str, &str, &str); 4] = [
    (NAMESPACES, "v1", "Namespace"),
    (SERVICES, "v1", "Service"),
    (PODS, "v1", "Pod"),
    (SLICES, "discovery.k8s.io/v1", "EndpointSlice"),
];

/// Events each collection keeps for watches that resume from a version.
const HISTORY: usize = 20_000;
/// Events queued to one watcher before it is cut off as too slow.
const WATCH_BUFFER: usize = 8192;
/// Lists whose remaining pages are kept for their `continue` tokens.
const OPEN_LISTS: usize = 16;

pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    version: u64,
    collections: BTreeMap<&'static str, Collection>,
    /// Lists being paged: id, the version listed at, the items.
    open_lists: VecDeque<(u64, u64, Arc<Vec<Value>>)>,
    next_list: u64,
    /// Watchers cut off for falling behind: a sign the bench's own process is the
    /// bottleneck, reported.
    dropped_watchers: u64,
    /// ServiceAccount tokens handed to the simulated proxies: namespace and account.
    tokens: std::collections::HashMap<String, (String, String)>,
}

/// Where TokenReviews are posted.
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// A TokenReview is a token and an audience or two; anything larger is refused.
const MAX_REVIEW_BYTES: usize = 64 * 1024;

struct Collection {
    api_version: &'static str,
    kind: &'static str,
    objects: BTreeMap<(String, String), Value>,
    history: VecDeque<(u64, Bytes)>,
    /// Watches from below this version get 410 Gone: their events are no longer held.
    oldest: u64,
    watchers: Vec<mpsc::Sender<Bytes>>,
}

impl ApiServer {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let collections = SERVED
            .iter()
            .map(|&(path, api_version, kind)| {
                let collection = Collection {
                    api_version,
                    kind,
                    objects: BTreeMap::new(),
                    history: VecDeque::new(),
                    oldest: 0,
                    watchers: Vec::new(),
                };
                (path, collection)
            })
            .collect();
        let state = Arc::new(Mutex::new(State {
            version: 1,
            collections,
            open_lists: VecDeque::new(),
            next_list: 0,
            dropped_watchers: 0,
            tokens: Default::default(),
        }));
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// A kubeconfig naming this server (plain HTTP on loopback).
    pub fn kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: http://{}\n\
             users:\n- name: bench\n  user:\n    token: bench\n\
             contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\n\
             current-context: bench\n",
            self.addr,
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A ServiceAccount token of `namespace/service_account`, for TokenReviews to accept.
    pub fn add_token(&self, token: &str, namespace: &str, service_account: &str) {
        self.lock().tokens.insert(token.to_string(), (namespace.to_string(), service_account.to_string()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces `object` in the collection at `path` and sends the event to its
    /// watchers.
    pub fn apply(&self, path: &'static str, mut object: Value) {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
        if object["metadata"].get("uid").is_none() {
            object["metadata"]["uid"] = Value::String(format!("uid-{version}"));
            object["metadata"]["creationTimestamp"] = Value::String("2026-12-01T10:00:00Z".into());
        }
        let collection = state.collections.get_mut(path).expect("a served collection");
        object["apiVersion"] = Value::String(collection.api_version.into());
        object["kind"] = Value::String(collection.kind.into());
        let key = key_of(&object);
        let event =
            if collection.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let dropped = collection.publish(version, event, &object);
        state.dropped_watchers += dropped;
    }

    /// Deletes `namespace/name` from the collection at `path`.
    pub fn delete(&self, path: &'static str, namespace: &str, name: &str) {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        let collection = state.collections.get_mut(path).expect("a served collection");
        let Some(mut object) = collection.objects.remove(&(namespace.to_string(), name.to_string())) else {
            return;
        };
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
        let dropped = collection.publish(version, "DELETED", &object);
        state.dropped_watchers += dropped;
    }

    /// Watchers cut off so far for not reading their events.
    pub fn dropped_watchers(&self) -> u64 {
        self.lock().dropped_watchers
    }
}

impl Collection {
    /// Sends the event to every watcher; returns how many were cut off for being full.
    fn publish(&mut self, version: u64, event: &str, object: &Value) -> u64 {
        let message = line(&json!({"type": event, "object": object}));
        let before = self.watchers.len();
        self.watchers.retain(|w| w.try_send(message.clone()).is_ok());
        let dropped = (before - self.watchers.len()) as u64;
        self.history.push_back((version, message));
        while self.history.len() > HISTORY {
            if let Some((v, _)) = self.history.pop_front() {
                self.oldest = v;
            }
        }
        dropped
    }
}

fn key_of(object: &Value) -> (String, String) {
    let text = |field: &str| object["metadata"][field].as_str().unwrap_or("").to_string();
    (text("namespace"), text("name"))
}

fn line(value: &Value) -> Bytes {
    let mut text = serde_json::to_vec(value).expect("JSON values serialise");
    text.push(b'\n');
    Bytes::from(text)
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
                    if request.method() == http::Method::POST && request.uri().path() == TOKEN_REVIEWS {
                        return Ok::<_, Infallible>(review(&state, request).await);
                    }
                    Ok::<_, Infallible>(answer(&state, &request))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// A TokenReview as the API server answers one: authenticated for a token the bench handed
/// out, as its ServiceAccount, with the audiences asked for.
async fn review(state: &Mutex<State>, request: Request<Incoming>) -> Response<ResponseBody> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_REVIEW_BYTES).collect().await;
    let Some(review) = body.ok().and_then(|b| serde_json::from_slice::<Value>(&b.to_bytes()).ok()) else {
        return json_response(StatusCode::BAD_REQUEST, &status_body(400, "BadRequest", "not a TokenReview"));
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let audiences = review["spec"]["audiences"].clone();
    let who = state.lock().unwrap_or_else(|e| e.into_inner()).tokens.get(token).cloned();
    let status = match who {
        Some((namespace, account)) => json!({
            "authenticated": true,
            "audiences": audiences,
            "user": {"username": format!("system:serviceaccount:{namespace}:{account}")},
        }),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json_response(
        StatusCode::CREATED,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON values serialise"))).boxed())
        .expect("a valid response")
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn answer<B>(state: &Mutex<State>, request: &Request<B>) -> Response<ResponseBody> {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    let param = |name: &str| {
        query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    };
    if request.method() != http::Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status_body(405, "MethodNotAllowed", "the bench's API server is read only"),
        );
    }
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let version = state.version;
    let Some(collection) = state.collections.get_mut(path) else {
        let message = "the server could not find the requested resource";
        return json_response(StatusCode::NOT_FOUND, &status_body(404, "NotFound", message));
    };
    if matches!(param("watch"), Some("true") | Some("1")) {
        let from: u64 = param("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        if from < collection.oldest {
            let gone = json!({"type": "ERROR", "object": status_body(410, "Expired",
                &format!("too old resource version: {from} ({})", collection.oldest))});
            let _ = tx.try_send(line(&gone));
        } else {
            let backlog: Vec<Bytes> =
                collection.history.iter().filter(|(at, _)| *at > from).map(|(_, m)| m.clone()).collect();
            // A backlog larger than the buffer would be cut off at once: 410, list again.
            if backlog.len() >= WATCH_BUFFER {
                let gone = json!({"type": "ERROR", "object": status_body(410, "Expired", "too far behind")});
                let _ = tx.try_send(line(&gone));
            } else {
                for message in backlog {
                    let _ = tx.try_send(message);
                }
                collection.watchers.push(tx);
            }
        }
        return Response::builder()
            .header("content-type", "application/json")
            .body(ChannelBody(rx).boxed())
            .expect("a valid response");
    }
    let (api_version, kind) = (collection.api_version, collection.kind);
    let limit: usize = param("limit").and_then(|v| v.parse().ok()).filter(|&l| l > 0).unwrap_or(usize::MAX);
    // A continued list pages through the items as they were at its first page.
    let (id, listed_at, items, offset) = match param("continue").and_then(parse_continue) {
        Some((id, offset)) => match state.open_lists.iter().find(|(i, _, _)| *i == id) {
            Some((id, at, items)) => (*id, *at, items.clone(), offset),
            None => {
                let message = "the provided continue parameter is too old";
                return json_response(StatusCode::GONE, &status_body(410, "Expired", message));
            }
        },
        None => {
            let items: Vec<Value> = collection
                .objects
                .values()
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
            let id = state.next_list;
            state.next_list += 1;
            (id, version, Arc::new(items), 0)
        }
    };
    let end = offset.saturating_add(limit).min(items.len());
    let mut metadata = json!({"resourceVersion": listed_at.to_string()});
    if end < items.len() {
        metadata["continue"] = Value::String(format!("{id}-{end}"));
        if !state.open_lists.iter().any(|(i, _, _)| *i == id) {
            state.open_lists.push_back((id, listed_at, items.clone()));
            while state.open_lists.len() > OPEN_LISTS {
                state.open_lists.pop_front();
            }
        }
    }
    let page = items.get(offset.min(end)..end).unwrap_or_default();
    let list = json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": metadata, "items": page});
    json_response(StatusCode::OK, &list)
}

fn parse_continue(token: &str) -> Option<(u64, usize)> {
    let (id, offset) = token.split_once('-')?;
    Some((id.parse().ok()?, offset.parse().ok()?))
}

/// A watch's body, fed event by event, open until the server stops or cuts it off.
struct ChannelBody(mpsc::Receiver<Bytes>);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn get(state: &Mutex<State>, uri: &str) -> Value {
        let request = Request::get(uri).body(()).unwrap();
        let response = answer(state, &request);
        let body = futures_executor(response.into_body());
        serde_json::from_slice(&body).unwrap()
    }

    fn futures_executor(body: ResponseBody) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { body.collect().await.unwrap().to_bytes() })
    }

    #[tokio::test]
    async fn lists_page_through_a_consistent_snapshot() {
        let server = ApiServer::start().await.unwrap();
        for i in 0..5 {
            server.apply(PODS, json!({"metadata": {"name": format!("p{i}"), "namespace": "a"}}));
        }
        let state = server.state.clone();
        let (first, second, third) = tokio::task::spawn_blocking(move || {
            let first = get(&state, "/api/v1/pods?limit=2");
            let token = first["metadata"]["continue"].as_str().unwrap().to_string();
            // Changes after the first page do not show in the later pages.
            state.lock().unwrap().collections.get_mut(PODS).unwrap().objects.clear();
            let second = get(&state, &format!("/api/v1/pods?limit=2&continue={token}"));
            let token = second["metadata"]["continue"].as_str().unwrap().to_string();
            let third = get(&state, &format!("/api/v1/pods?limit=2&continue={token}"));
            (first, second, third)
        })
        .await
        .unwrap();
        let names = |list: &Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().into())
                .collect()
        };
        assert_eq!(names(&first), ["p0", "p1"]);
        assert_eq!(names(&second), ["p2", "p3"]);
        assert_eq!(names(&third), ["p4"]);
        assert!(third["metadata"].get("continue").is_none());
        assert_eq!(first["kind"], "PodList");
        assert!(first["items"][0].get("kind").is_none(), "list items carry no kind");
        assert_eq!(first["metadata"]["resourceVersion"], third["metadata"]["resourceVersion"]);
    }
}
