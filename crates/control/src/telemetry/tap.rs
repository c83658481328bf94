//! Live tap, relayed: one watcher's stream gathers the `/tap` streams of the proxies it
//! targets, adds who each event came from, filters, and hands the events on as NDJSON.
//!
//! Buffers are bounded at every step: a proxy drops events for a watcher that falls
//! behind (its `{"dropped":N}` lines are added up here), and the relay drops events when
//! its own buffer to the watcher is full, reporting both as `{"dropped":N}` lines. So a
//! slow watcher loses events; it never slows a proxy down or grows memory. Proxies that
//! start or stop while the watcher watches are followed.
//!
//! Events are relayed as the proxies wrote them, fields this relay does not know (a
//! traced request's `trace_id`) included; with a [`TraceUrl`] configured, an event with a
//! trace id also gets `trace_url`, the address of that trace in the user's trace UI.

use crate::http_client::HttpClient;
use crate::registry::{Instance, Registry};
use crate::store::Snapshot;
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::BodyExt;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tarmac_model::Resource;
use tarmac_model::meta::selector_matches;
use tokio::sync::{mpsc, watch};

/// Events buffered for one watcher before the relay starts dropping them.
pub const BUFFER: usize = 1024;
/// Events a proxy's `/tap` sends before ending its stream (the relay reconnects).
const PROXY_STREAM_LIMIT: usize = 100_000;
/// Wait before reconnecting to a proxy whose tap stream ended or failed.
const RECONNECT: Duration = Duration::from_millis(500);

/// Where a trace is shown: a URL template with `{trace_id}` (`tarmac-control --trace-url
/// 'http://localhost:16686/trace/{trace_id}'`), filled with an event's W3C trace id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceUrl(String);

/// Why a trace URL template was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceUrlError {
    #[error("the trace URL `{0}` has no `{{trace_id}}` to replace with the trace's id")]
    NoPlaceholder(String),
    #[error("the trace URL `{0}` must start with http:// or https://")]
    NotHttp(String),
    #[error("the trace URL `{0}` contains spaces or control characters")]
    NotAUrl(String),
}

impl TraceUrl {
    /// The placeholder replaced by the trace id.
    pub const PLACEHOLDER: &'static str = "{trace_id}";

    pub fn parse(template: &str) -> Result<Self, TraceUrlError> {
        if !(template.starts_with("http://") || template.starts_with("https://")) {
            return Err(TraceUrlError::NotHttp(template.into()));
        }
        if template.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TraceUrlError::NotAUrl(template.into()));
        }
        if !template.contains(Self::PLACEHOLDER) {
            return Err(TraceUrlError::NoPlaceholder(template.into()));
        }
        Ok(Self(template.into()))
    }

    /// The address of trace `trace_id`, if it is one: 32 lowercase hex digits, not all
    /// zero (W3C Trace Context), so that nothing else is ever put into the URL.
    pub fn of(&self, trace_id: &str) -> Option<String> {
        let valid = trace_id.len() == 32
            && trace_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && trace_id.bytes().any(|b| b != b'0');
        valid.then(|| self.0.replace(Self::PLACEHOLDER, trace_id))
    }

    pub fn template(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TraceUrl {
    type Err = TraceUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What to tap: whose proxies, and which of their events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TapFilter {
    /// `workload/NAME`, `service/NAME`, a bare `NAME` (a workload or service of that
    /// name), or None for every proxy.
    pub target: Option<Target>,
    /// Namespace of the target; every namespace when None.
    pub namespace: Option<String>,
    pub method: Option<String>,
    /// A path prefix.
    pub path: Option<String>,
    pub status: Option<StatusFilter>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Workload(String),
    Service(String),
    Either(String),
}

/// A tap target that is not `workload/NAME`, `service/NAME` or `NAME`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}`: the kind must be `workload` or `service`")]
    Kind(String),
    #[error("`{0}` is not a target: write `workload/NAME`, `service/NAME` or `NAME`")]
    Malformed(String),
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        let name_ok = |n: &str| !n.is_empty() && !n.contains('/');
        match text.split_once('/') {
            Some((kind, name)) if name_ok(name) => match kind {
                "workload" | "workloads" | "wl" | "deploy" | "deployment" => {
                    Ok(Target::Workload(name.into()))
                }
                "service" | "services" | "svc" => Ok(Target::Service(name.into())),
                _ => Err(TargetError::Kind(text.to_string())),
            },
            None if name_ok(text) => Ok(Target::Either(text.into())),
            _ => Err(TargetError::Malformed(text.to_string())),
        }
    }
}

/// An exact status code or a class (`2xx`, `4xx`, `5xx`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StatusFilter {
    Code(u16),
    Class(u16),
}

/// A status filter that is neither a code (100-599) nor a class (`1xx` to `5xx`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("`{0}` is not a status: write e.g. `503` or `5xx`")]
pub struct BadStatus(pub String);

impl StatusFilter {
    pub fn parse(text: &str) -> Result<StatusFilter, BadStatus> {
        let bad = || BadStatus(text.to_string());
        if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
            let class: u16 = class.parse().map_err(|_| bad())?;
            return if (1..=5).contains(&class) { Ok(StatusFilter::Class(class)) } else { Err(bad()) };
        }
        let code: u16 = text.parse().map_err(|_| bad())?;
        if (100..=599).contains(&code) { Ok(StatusFilter::Code(code)) } else { Err(bad()) }
    }

    fn matches(self, status: u64) -> bool {
        match self {
            StatusFilter::Code(code) => status == u64::from(code),
            StatusFilter::Class(class) => status / 100 == u64::from(class),
        }
    }
}

/// Which events of an instance's proxy the filter wants: None for no proxy of it; for a
/// service target only what its proxies received (`inbound`).
fn wants(filter: &TapFilter, snapshot: &Snapshot, instance: &Instance) -> Option<Option<&'static str>> {
    instance.admin?;
    if filter.namespace.as_ref().is_some_and(|ns| ns != &instance.namespace) {
        return None;
    }
    let selected_by = |name: &str| {
        snapshot.iter_kind("Service").any(|r| match r {
            Resource::Service(s) => {
                s.metadata.name == name
                    && s.metadata.namespace == instance.namespace
                    && selector_matches(&s.spec.selector, &instance.labels)
            }
            _ => false,
        })
    };
    match &filter.target {
        None => Some(None),
        Some(Target::Workload(name)) => (instance.workload == *name).then_some(None),
        Some(Target::Service(name)) => selected_by(name).then_some(Some("inbound")),
        Some(Target::Either(name)) if instance.workload == *name => Some(None),
        Some(Target::Either(name)) => selected_by(name).then_some(Some("inbound")),
    }
}

impl TapFilter {
    /// Whether an event (already carrying its proxy's `direction`) passes the filter.
    fn matches(&self, event: &Map<String, Value>, only: Option<&str>) -> bool {
        let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("");
        if only.is_some_and(|d| d != text("direction")) {
            return false;
        }
        if self.direction.as_deref().is_some_and(|d| d != text("direction")) {
            return false;
        }
        if self.method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case(text("method"))) {
            return false;
        }
        if self.path.as_deref().is_some_and(|p| !text("path").starts_with(p)) {
            return false;
        }
        if self.authority.as_deref().is_some_and(|a| a != text("authority")) {
            return false;
        }
        if let Some(status) = self.status {
            let code = event.get("status").and_then(Value::as_u64).unwrap_or(0);
            if !status.matches(code) {
                return false;
            }
        }
        true
    }
}

/// One proxy being relayed, identified by its replica and admin address.
type ProxyKey = (String, String, u32, SocketAddr);

/// Starts relaying; the stream yields NDJSON lines and ends after `limit` events or
/// after `duration` (None: until the watcher goes away). Dropping it stops every relay
/// task. Events with a trace id get its `trace_url` when `trace_url` is set.
pub fn watch(
    registry: &Registry,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    filter: TapFilter,
    limit: Option<usize>,
    duration: Option<Duration>,
    trace_url: Option<Arc<TraceUrl>>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    let dropped = Arc::new(AtomicU64::new(0));
    let relay = Arc::new(Relay { filter, trace_url });
    tokio::spawn(follow(registry.subscribe(), snapshots, relay, tx, dropped.clone()));
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    futures_util::stream::unfold((rx, dropped, limit), move |(mut rx, dropped, left)| async move {
        if left == Some(0) {
            return None;
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            return Some((Bytes::from(format!("{{\"dropped\":{lost}}}\n")), (rx, dropped, left)));
        }
        let line = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, rx.recv()).await.ok()??,
            None => rx.recv().await?,
        };
        Some((line, (rx, dropped, left.map(|n| n - 1))))
    })
}

/// What every relay task of one watcher applies to the events.
#[derive(Debug, Default)]
struct Relay {
    filter: TapFilter,
    trace_url: Option<Arc<TraceUrl>>,
}

/// Keeps one relay task per targeted proxy while the watcher is there.
async fn follow(
    mut instances: watch::Receiver<Arc<Vec<Instance>>>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    relay_with: Arc<Relay>,
    tx: mpsc::Sender<Bytes>,
    dropped: Arc<AtomicU64>,
) {
    let mut relays = tokio::task::JoinSet::new();
    let mut running: BTreeMap<ProxyKey, tokio::task::AbortHandle> = BTreeMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let current = instances.borrow_and_update().clone();
        let mut wanted = BTreeMap::new();
        for instance in current.iter() {
            if let (Some(only), Some(admin)) =
                (wants(&relay_with.filter, &snapshot, instance), instance.admin)
            {
                let key = (instance.namespace.clone(), instance.workload.clone(), instance.replica, admin);
                wanted.insert(key, (instance.clone(), only));
            }
        }
        running.retain(|key, handle| {
            let keep = wanted.contains_key(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, (instance, only)) in wanted {
            running.entry(key).or_insert_with(|| {
                relays.spawn(relay(instance, only, relay_with.clone(), tx.clone(), dropped.clone()))
            });
        }
        tokio::select! {
            _ = tx.closed() => return,
            changed = instances.changed() => if changed.is_err() { return },
            changed = snapshots.changed() => if changed.is_err() { return },
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// Relays one proxy's tap until the watcher goes away, reconnecting as needed.
async fn relay(
    instance: Instance,
    only: Option<&'static str>,
    relay_with: Arc<Relay>,
    tx: mpsc::Sender<Bytes>,
    dropped: Arc<AtomicU64>,
) {
    let Some(admin) = instance.admin else { return };
    let client = HttpClient::new(admin, Duration::from_secs(2));
    let mut path = format!("/tap?limit={PROXY_STREAM_LIMIT}");
    if let Some(direction) = only.or(relay_with.filter.direction.as_deref()) {
        path.push_str("&direction=");
        path.push_str(direction);
    }
    loop {
        if tx.is_closed() {
            return;
        }
        match client.get_streaming(&path).await {
            Ok((status, mut body)) if status.is_success() => {
                let mut pending = Vec::new();
                loop {
                    let frame = tokio::select! {
                        _ = tx.closed() => return,
                        frame = body.frame() => frame,
                    };
                    let Some(Ok(frame)) = frame else { break };
                    let Ok(data) = frame.into_data() else { continue };
                    pending.extend_from_slice(&data);
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        if !forward(&line, &instance, only, &relay_with, &tx, &dropped) {
                            return;
                        }
                    }
                }
            }
            Ok((status, _)) => {
                tracing::debug!(%admin, %status, "tap refused by the proxy");
            }
            Err(e) => tracing::debug!(%admin, error = %e, "cannot tap the proxy"),
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// Annotates, filters and hands on one line; false once the watcher is gone.
fn forward(
    line: &[u8],
    instance: &Instance,
    only: Option<&str>,
    relay_with: &Relay,
    tx: &mpsc::Sender<Bytes>,
    dropped: &AtomicU64,
) -> bool {
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(line) else { return true };
    if let Some(n) = event.get("dropped").and_then(Value::as_u64) {
        dropped.fetch_add(n, Ordering::Relaxed);
        return true;
    }
    if !relay_with.filter.matches(&event, only) {
        return true;
    }
    event.insert("namespace".into(), instance.namespace.clone().into());
    event.insert("workload".into(), instance.workload.clone().into());
    event.insert("replica".into(), instance.replica.into());
    let link = relay_with
        .trace_url
        .as_ref()
        .zip(event.get("trace_id").and_then(Value::as_str))
        .and_then(|(url, id)| url.of(id));
    if let Some(link) = link {
        event.insert("trace_url".into(), link.into());
    }
    let mut out = serde_json::to_vec(&event).unwrap_or_default();
    out.push(b'\n');
    match tx.try_send(Bytes::from(out)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn filters_match_method_path_prefix_status_and_direction() {
        let e =
            event(r#"{"direction":"inbound","method":"GET","path":"/books/1","status":503,"authority":"x"}"#);
        let f = |f: TapFilter| f.matches(&e, None);
        assert!(f(TapFilter::default()));
        assert!(f(TapFilter { method: Some("get".into()), ..Default::default() }));
        assert!(!f(TapFilter { method: Some("POST".into()), ..Default::default() }));
        assert!(f(TapFilter { path: Some("/books".into()), ..Default::default() }));
        assert!(!f(TapFilter { path: Some("/authors".into()), ..Default::default() }));
        assert!(f(TapFilter { status: Some(StatusFilter::parse("5xx").unwrap()), ..Default::default() }));
        assert!(!f(TapFilter { status: Some(StatusFilter::parse("200").unwrap()), ..Default::default() }));
        assert!(!f(TapFilter { direction: Some("outbound".into()), ..Default::default() }));
        assert!(!TapFilter::default().matches(&e, Some("outbound")));
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_waiting() {
        let instance = Instance {
            namespace: "default".into(),
            workload: "names".into(),
            replica: 1,
            labels: Default::default(),
            service_account: "names".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            meshed: true,
            admin: Some("127.0.0.1:2".parse().unwrap()),
        };
        let (tx, mut rx) = mpsc::channel(1);
        let dropped = AtomicU64::new(0);
        let line = br#"{"direction":"inbound","method":"GET","path":"/x","status":200}"#;
        let filter = Relay::default();
        assert!(forward(line, &instance, None, &filter, &tx, &dropped));
        assert!(forward(line, &instance, None, &filter, &tx, &dropped), "a full buffer is no reason to stop");
        // What the proxy itself dropped for this watcher adds up too.
        assert!(forward(br#"{"dropped":5}"#, &instance, None, &filter, &tx, &dropped));
        assert_eq!(dropped.load(Ordering::Relaxed), 6);
        let relayed: Value = serde_json::from_slice(&rx.try_recv().unwrap()).unwrap();
        assert_eq!((relayed["workload"].as_str(), relayed["replica"].as_u64()), (Some("names"), Some(1)));
        drop(rx);
        assert!(!forward(line, &instance, None, &filter, &tx, &dropped), "the watcher left: stop relaying");
    }

    fn instance() -> Instance {
        Instance {
            namespace: "default".into(),
            workload: "books".into(),
            replica: 0,
            labels: Default::default(),
            service_account: "books".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            meshed: true,
            admin: Some("127.0.0.1:2".parse().unwrap()),
        }
    }

    const TRACED: &[u8] = br#"{"direction":"inbound","method":"GET","path":"/x","status":200,"duration_ms":812.5,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;

    #[test]
    fn trace_ids_are_relayed_and_linked_when_a_trace_url_is_set() {
        let (tx, mut rx) = mpsc::channel(4);
        let dropped = AtomicU64::new(0);
        // Without a trace URL: the id as the proxy sent it, and no link.
        assert!(forward(TRACED, &instance(), None, &Relay::default(), &tx, &dropped));
        let relayed: Value = serde_json::from_slice(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(relayed["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(relayed.get("trace_url").is_none(), "{relayed}");

        let trace_url = TraceUrl::parse("http://localhost:16686/trace/{trace_id}").unwrap();
        let relay_with = Relay { filter: TapFilter::default(), trace_url: Some(Arc::new(trace_url)) };
        assert!(forward(TRACED, &instance(), None, &relay_with, &tx, &dropped));
        let relayed: Value = serde_json::from_slice(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(relayed["trace_url"], "http://localhost:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(relayed["workload"], "books");

        // Untraced requests, and ids that are not W3C trace ids, get no link.
        let untraced = br#"{"direction":"inbound","method":"GET","path":"/x","status":200}"#;
        let forged = br#"{"direction":"inbound","status":200,"trace_id":"x\"><script>"}"#;
        for line in [&untraced[..], &forged[..]] {
            assert!(forward(line, &instance(), None, &relay_with, &tx, &dropped));
            let relayed: Value = serde_json::from_slice(&rx.try_recv().unwrap()).unwrap();
            assert!(relayed.get("trace_url").is_none(), "{relayed}");
        }
    }

    #[test]
    fn trace_url_templates_are_checked() {
        let url = TraceUrl::parse("https://traces.example/t/{trace_id}?x=1").unwrap();
        assert_eq!(
            url.of("0af7651916cd43dd8448eb211c80319c").unwrap(),
            "https://traces.example/t/0af7651916cd43dd8448eb211c80319c?x=1"
        );
        assert_eq!(url.of("00000000000000000000000000000000"), None, "the invalid all-zero id");
        assert_eq!(url.of("0AF7651916CD43DD8448EB211C80319C"), None, "W3C ids are lowercase");
        assert_eq!(url.of("0af7651916cd43dd"), None, "a B3 64-bit id is not one");
        assert!(matches!(
            TraceUrl::parse("http://localhost:16686/trace/"),
            Err(TraceUrlError::NoPlaceholder(_))
        ));
        assert!(matches!(TraceUrl::parse("javascript:alert({trace_id})"), Err(TraceUrlError::NotHttp(_))));
        assert!(matches!(TraceUrl::parse("http://x/{trace_id} y"), Err(TraceUrlError::NotAUrl(_))));
        assert!(TraceUrl::parse("http://x/").unwrap_err().to_string().contains("{trace_id}"));
    }

    #[test]
    fn targets_and_statuses_parse_or_say_what_is_valid() {
        assert_eq!(Target::parse("svc/names"), Ok(Target::Service("names".into())));
        assert_eq!(Target::parse("workload/greeter"), Ok(Target::Workload("greeter".into())));
        assert_eq!(Target::parse("greeter"), Ok(Target::Either("greeter".into())));
        assert_eq!(Target::parse("pod/x"), Err(TargetError::Kind("pod/x".into())));
        assert!(StatusFilter::parse("6xx").is_err());
        assert!(StatusFilter::parse("abc").unwrap_err().to_string().contains("5xx"));
    }
}
