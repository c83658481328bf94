//! The control plane's HTTP API, for the CLI (`tarmac stat`, `check`, `tap`, ...), the
//! dashboard and Prometheus. JSON everywhere, NDJSON for the live tap; loopback only.
//! docs/observability.md documents every endpoint.
//!
//! A request whose `Host` is a name other than `localhost` is refused (403): a web page
//! could otherwise read the API from the user's browser by making its own name resolve
//! to 127.0.0.1 (DNS rebinding). Tools and the dashboard reach it by address or as
//! `localhost`; on a cluster, through `kubectl port-forward`.
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /api/v1/stat/{kind}` | golden metrics per workload, service, route or edge |
//! | `GET /api/v1/edges` | who calls whom, with golden metrics |
//! | `GET /api/v1/history/{kind}[/{name}]` | the last hour of golden metrics per service, route or edge, every 10 s |
//! | `GET /api/v1/top` | most requested paths over a short tap |
//! | `GET /api/v1/tap` | live request events (NDJSON) |
//! | `GET /api/v1/check` | configuration, route status, replicas, proxies, discovery |
//! | `GET /api/v1/routes` | a Service's routes, their status, and the rule each kind of request takes |
//! | `GET /api/v1/prometheus/sd` | every proxy's admin address, for Prometheus' `http_sd_configs` |
//! | `POST /api/v1/workloads/{namespace}/{name}/restart` | restarts a Workload's replicas one at a time (`tarmac up` only), answering when done |
//! | `GET /` | the dashboard: static files compiled into the binary, nothing fetched from elsewhere |

pub mod authz;
pub mod check;
mod dashboard;
pub mod route_status;

use crate::discovery::server::Subscriptions;
use crate::http_client::HttpClient;
use crate::store::{Snapshot, Status};
use crate::telemetry::history::{self, HistoryKind, HistoryQuery};
use crate::telemetry::stats::{self, Kind};
use crate::telemetry::tap::{self, StatusFilter, TapFilter, Target};
use crate::telemetry::top::TopTable;
use crate::telemetry::{DEFAULT_WINDOW, RETENTION, Telemetry};
use crate::workloads::{RestartError, RestartRequest, Restarts};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::StreamExt;
use http::{StatusCode, header};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarmac_model::Resource;
use tokio::sync::watch;

/// The port `tarmac up` serves the API on, and where the CLI looks for it, by default.
pub const DEFAULT_PORT: u16 = 4190;
/// `top` taps for this long unless asked otherwise, and at most for `TOP_MAX`.
const TOP_DEFAULT: Duration = Duration::from_secs(2);
const TOP_MAX: Duration = Duration::from_secs(60);

/// What the API reads from.
#[derive(Clone)]
pub struct Api {
    telemetry: Telemetry,
    status: watch::Receiver<Arc<Status>>,
    subscriptions: Subscriptions,
    /// The mesh's default policy, for `authz`.
    default_policy: tarmac_model::authz::DefaultPolicy,
    /// Whoever runs the Workloads; `None`: restarts are not this control plane's to make.
    restarts: Option<Restarts>,
    /// The mesh's telemetry defaults, for `check`.
    telemetry_defaults: tarmac_model::telemetry::MeshDefaults,
    /// Where tap events' trace ids link to; `None`: the ids alone.
    trace_url: Option<Arc<tap::TraceUrl>>,
}

impl Api {
    pub fn new(
        telemetry: Telemetry,
        status: watch::Receiver<Arc<Status>>,
        subscriptions: Subscriptions,
    ) -> Self {
        Self {
            telemetry,
            status,
            subscriptions,
            default_policy: Default::default(),
            restarts: None,
            telemetry_defaults: Default::default(),
            trace_url: None,
        }
    }

    pub fn with_telemetry_defaults(mut self, defaults: tarmac_model::telemetry::MeshDefaults) -> Self {
        self.telemetry_defaults = defaults;
        self
    }

    /// Tap events with a trace id get its address in the user's trace UI (`trace_url`).
    pub fn with_trace_url(mut self, trace_url: Option<tap::TraceUrl>) -> Self {
        self.trace_url = trace_url.map(Arc::new);
        self
    }

    pub fn with_default_policy(mut self, default_policy: tarmac_model::authz::DefaultPolicy) -> Self {
        self.default_policy = default_policy;
        self
    }

    /// Serves `POST .../restart` by asking `restarts`.
    pub fn with_restarts(mut self, restarts: Restarts) -> Self {
        self.restarts = Some(restarts);
        self
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(dashboard::index))
            .route("/dashboard.js", get(dashboard::script))
            .route("/dashboard.css", get(dashboard::style))
            .route("/api/v1", get(index))
            .route("/api/v1/stat/{kind}", get(stat))
            .route("/api/v1/edges", get(edges))
            .route("/api/v1/history/{kind}", get(history_all))
            .route("/api/v1/history/{kind}/{name}", get(history_of))
            .route("/api/v1/top", get(top))
            .route("/api/v1/tap", get(tap_stream))
            .route("/api/v1/check", get(check))
            .route("/api/v1/routes", get(routes))
            .route("/api/v1/authz", get(authz))
            .route("/api/v1/prometheus/sd", get(prometheus_sd))
            .route("/api/v1/workloads/{namespace}/{name}/restart", post(restart))
            .layer(axum::middleware::from_fn(refuse_other_hosts))
            .with_state(self)
    }

    /// Serves the API on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }
}

async fn refuse_other_hosts(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or_default());
    match host {
        Some(host) if !tarmac_transport::host_is_address_or_localhost(host) => json_response(
            StatusCode::FORBIDDEN,
            &json!({ "error": format!("Host {host:?} is not served: reach the API by address or as localhost (a name could be DNS rebinding)") }),
        ),
        _ => next.run(req).await,
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a static header is valid")
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message.to_string() }))
}

/// A query the API cannot answer as asked: a 400 naming the parameter.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("window: {0}")]
    Window(#[from] tarmac_model::duration::InvalidDuration),
    #[error("window must be more than 0s and at most {}s", RETENTION.as_secs())]
    WindowRange,
    #[error("target: {0}")]
    Target(#[from] crate::telemetry::tap::TargetError),
    #[error("status: {0}")]
    Status(#[from] crate::telemetry::tap::BadStatus),
    #[error("direction must be inbound or outbound")]
    Direction,
    #[error("from: there is no Workload {namespace}/{workload}")]
    NoSuchWorkload { namespace: String, workload: String },
    #[error("path: `{0}` must start with `/`")]
    RelativePath(String),
    #[error("method: `{0}` is not an HTTP method")]
    Method(String),
    #[error("header: `{0}` is not NAME:VALUE")]
    HeaderPair(String),
    #[error("header: `{0}` is not a header name")]
    HeaderName(String),
    #[error("header: the value of `{0}` is not a header value")]
    HeaderValue(String),
}

/// `a=1&b=x%20y` as a map (`+` is a space; the last of repeated keys wins).
pub fn query_params(raw: Option<&str>) -> BTreeMap<String, String> {
    query_pairs(raw).into_iter().collect()
}

/// `a=1&a=2` as pairs in order, repeated keys kept.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `window=30s` (default one minute, at most the retention).
fn window(params: &BTreeMap<String, String>) -> Result<Duration, QueryError> {
    match params.get("window") {
        None => Ok(DEFAULT_WINDOW),
        Some(text) => match tarmac_model::duration::parse(text)? {
            d if !d.is_zero() && d <= RETENTION => Ok(d),
            _ => Err(QueryError::WindowRange),
        },
    }
}

async fn index() -> Response {
    let text = "tarmac control plane API\n\n\
        GET /api/v1/stat/{workload|service|route|edge}?window=1m&namespace=NS&name=NAME\n\
        GET /api/v1/edges?window=1m\n\
        GET /api/v1/history/{service|route|edge}[/NAME]?namespace=NS&from=WORKLOAD&to=SERVICE&window=1h\n\
        GET /api/v1/top?target=TARGET&duration=2s\n\
        GET /api/v1/tap?target=TARGET&namespace=NS&method=M&path=PREFIX&status=5xx&direction=inbound&limit=N&duration=10s\n\
        GET /api/v1/check\n\
        GET /api/v1/routes?service=NAME&namespace=NS&from=NS[/WORKLOAD]&path=P&method=M&header=NAME:VALUE&query=K=V\n\
        GET /api/v1/authz?service=NAME&namespace=NS\n\
        GET /api/v1/prometheus/sd\n\
        POST /api/v1/workloads/NAMESPACE/NAME/restart\n";
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .expect("a static header is valid")
}

/// The retry and timeouts of requests no rule takes, as `{retry, request_timeout_ms,
/// backend_request_timeout_ms, resilience}`.
fn unrouted_resilience(snapshot: &Snapshot, namespace: &str, service: &str) -> serde_json::Value {
    use crate::discovery::table::{RetryJson, resilience_text};
    let policy = crate::discovery::resilience::of_service(snapshot, namespace, service);
    let policy = policy.as_ref();
    let retry = policy.and_then(|p| p.retry.as_ref()).map(RetryJson::from);
    let request = policy
        .map_or(tarmac_route::policy::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64, |p| p.request_timeout_ms);
    let request = (request > 0).then_some(request);
    let per_try = policy.map(|p| p.backend_request_timeout_ms).filter(|&ms| ms > 0);
    json!({
        "resilience": resilience_text(retry.as_ref(), request, per_try),
        "retry": retry,
        "request_timeout_ms": request,
        "backend_request_timeout_ms": per_try,
    })
}

/// Restarts a Workload's replicas one at a time, answering once the last is ready again.
async fn restart(State(api): State<Api>, Path((namespace, name)): Path<(String, String)>) -> Response {
    let Some(restarts) = &api.restarts else {
        return json_response(
            StatusCode::NOT_IMPLEMENTED,
            &json!({ "error": "this control plane does not run the workloads: restart them where they run (e.g. kubectl rollout restart)" }),
        );
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = RestartRequest { namespace, name, reply };
    if restarts.send(request).await.is_err() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": RestartError::ShuttingDown.to_string() }),
        );
    }
    match answer.await {
        Ok(Ok(restarted)) => json_response(StatusCode::OK, &restarted),
        Ok(Err(e @ RestartError::NotFound { .. })) => {
            json_response(StatusCode::NOT_FOUND, &json!({ "error": e.to_string() }))
        }
        Ok(Err(e @ RestartError::Stopped(_))) => {
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "error": e.to_string() }))
        }
        Ok(Err(RestartError::ShuttingDown)) | Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": RestartError::ShuttingDown.to_string() }),
        ),
    }
}

async fn stat(State(api): State<Api>, Path(kind): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let params = query_params(raw.as_deref());
    let Some(kind) = Kind::parse(&kind) else {
        return bad_request(format!("unknown kind `{kind}`: use workload, service, route or edge"));
    };
    let window = match window(&params) {
        Ok(w) => w,
        Err(message) => return bad_request(message),
    };
    api.telemetry.refresh().await;
    let windows = api.telemetry.windows(window);
    let snapshot = api.telemetry.snapshot();
    let namespace = params.get("namespace").filter(|n| !n.is_empty());
    let name = params.get("name").filter(|n| !n.is_empty());
    let rows = match kind {
        Kind::Edge => {
            let rows: Vec<_> = stats::edge_rows(&windows, &snapshot)
                .into_iter()
                .filter(|r| namespace.is_none_or(|ns| *ns == r.src_namespace))
                .filter(|r| name.is_none_or(|n| *n == r.src_workload || r.dst_service.as_ref() == Some(n)))
                .collect();
            serde_json::to_value(rows)
        }
        _ => {
            let rows = match kind {
                Kind::Workload => stats::workload_rows(&windows, &snapshot),
                Kind::Service => stats::service_rows(&windows, &snapshot),
                _ => stats::route_rows(&windows, &snapshot),
            };
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| namespace.is_none_or(|ns| *ns == r.namespace))
                .filter(|r| name.is_none_or(|n| *n == r.name || r.service.as_ref() == Some(n)))
                .collect();
            serde_json::to_value(rows)
        }
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": kind.as_str(),
            "window_seconds": window.as_secs_f64(),
            "generation": snapshot.generation,
            "rows": rows.unwrap_or_default(),
        }),
    )
}

async fn edges(state: State<Api>, raw: RawQuery) -> Response {
    stat(state, Path("edge".to_string()), raw).await
}

/// The longest history kept, as a window.
const HISTORY_SPAN: Duration = Duration::from_secs(history::RESOLUTION.as_secs() * history::POINTS as u64);

async fn history_all(State(api): State<Api>, Path(kind): Path<String>, RawQuery(raw): RawQuery) -> Response {
    history_answer(&api, &kind, None, raw.as_deref())
}

async fn history_of(
    State(api): State<Api>,
    Path((kind, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    history_answer(&api, &kind, Some(name), raw.as_deref())
}

/// The last hour (or `window=`) of a kind's series: all of them, those of `namespace=`,
/// edges `from=` a workload or `to=` a service, or one service's (`.../services/NAME`) or
/// one service's routes (`.../routes/SERVICE`). Compact JSON, unlike the other answers:
/// a series is seven columns of up to 360 numbers.
fn history_answer(api: &Api, kind: &str, name: Option<String>, raw: Option<&str>) -> Response {
    let params = query_params(raw);
    let Some(kind) = HistoryKind::parse(kind) else {
        return bad_request(format!(
            "no history of `{kind}`: it is kept for service, route and edge (workloads: see their services)"
        ));
    };
    if kind == HistoryKind::Edge && name.is_some() {
        return bad_request("edges are chosen with from=WORKLOAD and to=SERVICE, not by name");
    }
    let window = match params.get("window") {
        None => HISTORY_SPAN,
        Some(text) => match tarmac_model::duration::parse(text) {
            Ok(d) if !d.is_zero() && d <= HISTORY_SPAN => d,
            Ok(_) => {
                return bad_request(format!(
                    "window must be more than 0s and at most {}s",
                    HISTORY_SPAN.as_secs()
                ));
            }
            Err(e) => return bad_request(format!("window: {e}")),
        },
    };
    let get = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();
    let mut query = HistoryQuery {
        namespace: get("namespace"),
        name: name.clone(),
        from: get("from"),
        to: get("to"),
        points: window.as_secs().div_ceil(history::RESOLUTION.as_secs()) as usize,
    };
    // One Service by name: in `default` unless said otherwise, as `tarmac routes`.
    if name.is_some() && query.namespace.is_none() {
        query.namespace = Some(tarmac_model::meta::DEFAULT_NAMESPACE.to_string());
    }
    let answer = api.telemetry.history(kind, &query);
    if let (Some(name), true) = (&name, answer.series.is_empty()) {
        let namespace = query.namespace.as_deref().unwrap_or_default();
        let what = match kind {
            HistoryKind::Route => format!("routes of service {namespace}/{name}"),
            _ => format!("service {namespace}/{name}"),
        };
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no history of {what}: no such Service in the configuration, or none for the last hour") }),
        );
    }
    let mut body = serde_json::to_vec(&answer).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a static header is valid")
}

/// Reads tap filters from the query.
fn tap_filter(params: &BTreeMap<String, String>) -> Result<TapFilter, QueryError> {
    let get = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();
    let target = match get("target") {
        Some(t) => Some(Target::parse(&t)?),
        None => None,
    };
    let status = match get("status") {
        Some(s) => Some(StatusFilter::parse(&s)?),
        None => None,
    };
    let direction = get("direction");
    if direction.as_deref().is_some_and(|d| d != "inbound" && d != "outbound") {
        return Err(QueryError::Direction);
    }
    Ok(TapFilter {
        target,
        namespace: get("namespace"),
        method: get("method"),
        path: get("path"),
        status,
        direction,
        authority: get("authority"),
    })
}

async fn tap_stream(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let params = query_params(raw.as_deref());
    let filter = match tap_filter(&params) {
        Ok(f) => f,
        Err(message) => return bad_request(message),
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => return bad_request("limit must be a positive number"),
    };
    let duration = match params.get("duration").map(|d| tarmac_model::duration::parse(d)) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(_) => return bad_request("duration must be a duration such as 10s"),
    };
    let events = tap::watch(
        api.telemetry.registry(),
        api.telemetry.snapshots(),
        filter,
        limit,
        duration,
        api.trace_url.clone(),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(events.map(Ok::<_, Infallible>)))
        .expect("a static header is valid")
}

async fn top(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let params = query_params(raw.as_deref());
    let filter = match tap_filter(&params) {
        Ok(f) => f,
        Err(message) => return bad_request(message),
    };
    let duration = match params.get("duration").map(|d| tarmac_model::duration::parse(d)) {
        None => TOP_DEFAULT,
        Some(Ok(d)) if !d.is_zero() && d <= TOP_MAX => d,
        Some(_) => {
            return bad_request(format!("duration must be more than 0s and at most {}s", TOP_MAX.as_secs()));
        }
    };
    let mut events = Box::pin(tap::watch(
        api.telemetry.registry(),
        api.telemetry.snapshots(),
        filter,
        None,
        Some(duration),
        None,
    ));
    let mut table = TopTable::default();
    let deadline = tokio::time::Instant::now() + duration;
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, events.next()).await {
        table.add_line(&String::from_utf8_lossy(&line));
    }
    json_response(
        StatusCode::OK,
        &json!({ "duration_seconds": duration.as_secs_f64(), "dropped": table.dropped, "rows": table.top(100) }),
    )
}

async fn check(State(api): State<Api>) -> Response {
    let snapshot = api.telemetry.snapshot();
    let status = api.status.borrow().clone();
    let instances: Vec<_> = api.telemetry.registry().subscribe().borrow().as_ref().clone();
    let mut probes = tokio::task::JoinSet::new();
    for (n, instance) in instances.iter().enumerate() {
        let admin = instance.admin;
        probes.spawn(async move {
            let Some(admin) = admin else { return (n, false, None) };
            let client = HttpClient::new(admin, Duration::from_secs(1));
            let ready = client.get("/ready").await.is_ok_and(|r| r.status.is_success());
            let identity = match client.get("/identity").await {
                Ok(r) if r.status.is_success() => {
                    serde_json::from_slice::<check::IdentityState>(&r.body).ok()
                }
                _ => None,
            };
            (n, ready, identity)
        });
    }
    let mut ready = vec![false; instances.len()];
    let mut identities = vec![None; instances.len()];
    while let Some(Ok((n, ok, identity))) = probes.join_next().await {
        ready[n] = ok;
        identities[n] = identity;
    }
    let mut report =
        check::report(&status, &snapshot, &instances, &ready, &identities, &api.subscriptions.list());
    if let Some(telemetry) = check::telemetry_check(&snapshot, &instances, &api.telemetry_defaults) {
        report.checks.push(telemetry);
    }
    json_response(StatusCode::OK, &report)
}

/// The routes attached to `service=NAME` (in `namespace=NS`, default `default`): as
/// configured, with their status, and compiled as a proxy of a caller in `from=NS` (or
/// `from=NS/WORKLOAD`; default: the Service's namespace) holds them, in precedence order.
/// With `path=P` (and `method=M`, `header=NAME:VALUE`..., `query=K=V`...), also the rule
/// that request takes on each port.
async fn routes(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(raw.as_deref());
    let params: BTreeMap<String, String> = pairs.iter().cloned().collect();
    let Some(service) = params.get("service").filter(|s| !s.is_empty()) else {
        return bad_request("service=NAME is required");
    };
    let namespace = params
        .get("namespace")
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| tarmac_model::meta::DEFAULT_NAMESPACE.to_string());
    let snapshot = api.telemetry.snapshot();
    let caller = match params.get("from").filter(|f| !f.is_empty()) {
        None => Caller { namespace: namespace.clone(), workload: None },
        Some(from) => match Caller::parse(&snapshot, from) {
            Ok(c) => c,
            Err(message) => return bad_request(message),
        },
    };
    let request = match params.get("path") {
        None => None,
        Some(path) => match RequestSpec::parse(path, params.get("method"), &pairs) {
            Ok(r) => Some(r),
            Err(message) => return bad_request(message),
        },
    };
    json_response(StatusCode::OK, &routes_of(&snapshot, &namespace, service, &caller, request.as_ref()))
}

async fn authz(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let params: BTreeMap<String, String> = query_pairs(raw.as_deref()).into_iter().collect();
    let Some(service) = params.get("service").filter(|s| !s.is_empty()) else {
        return bad_request("service=NAME is required");
    };
    let namespace = params
        .get("namespace")
        .filter(|n| !n.is_empty())
        .map_or(tarmac_model::meta::DEFAULT_NAMESPACE, |n| n.as_str());
    let snapshot = api.telemetry.snapshot();
    let instances = api.telemetry.registry().subscribe().borrow().clone();
    match authz::authz_of(&snapshot, &instances, api.default_policy, namespace, service) {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(e) => json_response(StatusCode::NOT_FOUND, &json!({ "error": e.to_string() })),
    }
}

/// Whose view of the routes: consumer routes apply only to callers in their namespace.
pub struct Caller {
    pub namespace: String,
    pub workload: Option<String>,
}

impl Caller {
    /// `NAMESPACE` or `NAMESPACE/WORKLOAD` (the Workload must exist).
    pub fn parse(snapshot: &Snapshot, text: &str) -> Result<Self, QueryError> {
        let Some((namespace, workload)) = text.split_once('/') else {
            return Ok(Self { namespace: text.to_string(), workload: None });
        };
        let key = tarmac_model::ObjectKey {
            kind: "Workload",
            namespace: namespace.to_string(),
            name: workload.to_string(),
        };
        if !snapshot.objects.contains_key(&key) {
            return Err(QueryError::NoSuchWorkload {
                namespace: namespace.to_string(),
                workload: workload.to_string(),
            });
        }
        Ok(Self { namespace: namespace.to_string(), workload: Some(workload.to_string()) })
    }
}

/// A request described by `tarmac routes --path ...`.
pub struct RequestSpec {
    pub method: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
}

impl RequestSpec {
    fn parse(path: &str, method: Option<&String>, pairs: &[(String, String)]) -> Result<Self, QueryError> {
        let (path, mut query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), vec![q.to_string()]),
            None => (path.to_string(), Vec::new()),
        };
        if !path.starts_with('/') {
            return Err(QueryError::RelativePath(path));
        }
        let method = method.map_or("GET", |m| m.as_str());
        let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| QueryError::Method(method.to_string()))?;
        let mut headers = http::HeaderMap::new();
        for (key, value) in pairs {
            match key.as_str() {
                "header" => {
                    let (name, value) =
                        value.split_once(':').ok_or_else(|| QueryError::HeaderPair(value.clone()))?;
                    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|_| QueryError::HeaderName(name.to_string()))?;
                    let value = http::HeaderValue::from_str(value.trim())
                        .map_err(|_| QueryError::HeaderValue(name.to_string()))?;
                    headers.append(name, value);
                }
                "query" => query.push(value.clone()),
                _ => {}
            }
        }
        let query = (!query.is_empty()).then(|| query.join("&"));
        Ok(Self { method, path, query, headers })
    }

    fn describe(&self) -> String {
        let mut text = format!("{} {}", self.method, self.path);
        if let Some(q) = &self.query {
            text.push('?');
            text.push_str(q);
        }
        for (name, value) in &self.headers {
            text.push_str(&format!(" {name}: {}", value.to_str().unwrap_or("?")));
        }
        text
    }
}

/// What `GET /api/v1/routes` answers.
pub fn routes_of(
    snapshot: &Snapshot,
    namespace: &str,
    service: &str,
    caller: &Caller,
    request: Option<&RequestSpec>,
) -> serde_json::Value {
    let found = snapshot.iter_kind("Service").find_map(|r| match r {
        Resource::Service(s) if s.metadata.name == service && s.metadata.namespace == namespace => Some(s),
        _ => None,
    });
    let mut routes = Vec::new();
    for resource in snapshot.objects.values() {
        let (kind, meta, parents, value) = match resource {
            Resource::HttpRoute(r) => {
                ("HTTPRoute", &r.metadata, &r.spec.parent_refs, serde_json::to_value(r))
            }
            Resource::GrpcRoute(r) => {
                ("GRPCRoute", &r.metadata, &r.spec.parent_refs, serde_json::to_value(r))
            }
            _ => continue,
        };
        let attached: Vec<_> = parents
            .iter()
            .filter(|p| {
                p.is_service()
                    && p.name == service
                    && p.namespace.as_deref().unwrap_or(&meta.namespace) == namespace
            })
            .map(|p| json!({ "port": p.port }))
            .collect();
        if attached.is_empty() {
            continue;
        }
        let Ok(value) = value else { continue };
        routes.push(json!({
            "kind": kind,
            "namespace": meta.namespace,
            "name": meta.name,
            "ports": attached.iter().map(|a| a["port"].clone()).collect::<Vec<_>>(),
            "hostnames": value["spec"]["hostnames"].clone(),
            "rules": value["spec"]["rules"].clone(),
        }));
    }
    let statuses: Vec<_> = route_status::statuses(snapshot)
        .into_iter()
        .filter(|s| {
            routes.iter().any(|r| r["kind"] == s.kind && r["namespace"] == s.namespace && r["name"] == s.name)
        })
        .collect();
    let mut ports = Vec::new();
    let mut consumer_routes = false;
    for port in found.map(|s| s.spec.ports.as_slice()).unwrap_or_default() {
        let parent =
            crate::discovery::routes::Parent { service: found.expect("ports of a found Service"), port };
        let compiled =
            match crate::discovery::table::CompiledRoutes::compile(snapshot, &caller.namespace, &parent) {
                Ok(c) => c,
                Err(e) => {
                    ports.push(json!({ "port": port.port, "name": port.name, "error": e.to_string() }));
                    continue;
                }
            };
        consumer_routes |= compiled.routes.iter().any(|r| r.namespace != namespace);
        let entries = compiled.entries();
        let otherwise = if compiled.table.is_some() {
            "404: no rule matches"
        } else {
            "the Service's endpoints: no route applies"
        };
        let budget = crate::discovery::resilience::budget_of(snapshot, namespace, service);
        let mut answer = json!({
            "port": port.port,
            "name": port.name,
            "routes": compiled.routes.iter().map(|r| format!("{} {}/{}", r.kind, r.namespace, r.name)).collect::<Vec<_>>(),
            "table": entries,
            "otherwise": otherwise,
            "budget": budget,
            "budget_text": budget.describe(),
            "unrouted": unrouted_resilience(snapshot, namespace, service),
        });
        if let Some(req) = request {
            let taken = compiled.select(&req.method, &req.path, req.query.as_deref(), &req.headers);
            answer["request"] = json!({
                "request": req.describe(),
                "entry": taken,
                "taken": taken.map(|i| &entries[i]),
                "status": match (taken, compiled.table.is_some()) {
                    (Some(_), _) => None,
                    (None, true) => Some(404),
                    (None, false) => None,
                },
                "outcome": match taken {
                    Some(i) => format!("{} {} → {}", entries[i].kind, entries[i].route, entries[i].destination),
                    None => otherwise.to_string(),
                },
            });
        }
        ports.push(answer);
    }
    json!({
        "service": service,
        "namespace": namespace,
        "service_exists": found.is_some(),
        "generation": snapshot.generation,
        "caller_namespace": caller.namespace,
        "caller_workload": caller.workload,
        "consumer_routes": consumer_routes,
        "routes": routes,
        "ports": ports,
        "conditions": statuses,
    })
}

/// Prometheus HTTP service discovery: one target group per proxy.
async fn prometheus_sd(State(api): State<Api>) -> Response {
    let instances: Vec<_> = api.telemetry.registry().subscribe().borrow().as_ref().clone();
    let groups: Vec<_> = instances
        .iter()
        .filter_map(|i| {
            let admin: SocketAddr = i.admin?;
            Some(json!({
                "targets": [admin.to_string()],
                "labels": {
                    "namespace": i.namespace,
                    "workload": i.workload,
                    "replica": i.replica.to_string(),
                    "service_account": i.service_account,
                },
            }))
        })
        .collect();
    json_response(StatusCode::OK, &groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = query_params(Some("path=%2Fbooks%2F1&method=GET&x=a+b&bad=%zz&end=%4"));
        assert_eq!(q["path"], "/books/1");
        assert_eq!(q["method"], "GET");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
