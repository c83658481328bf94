//! Per-request telemetry beyond metrics: trace spans (exported over OTLP) and access
//! logs, both off unless configured.
//!
//! The settings (the proxy's `telemetry` configuration, replaced by what the control plane
//! says of the workload's Telemetry objects) are compiled into one [`Stage`], swapped
//! whole on every change. With tracing and access logs both off there is no stage: the
//! request path reads one atomic ([`Swap::get`]) and does nothing else. With a stage, a
//! request gets a [`RequestRecord`] at its start ([`Stage::begin`]): its trace context is
//! read, a span started when the trace is sampled, the forwarded `traceparent` set; at the
//! end of its response body the record becomes a span on the exporter's queue and a line
//! on the access log's, neither of which ever waits: a full queue drops (and counts).
//!
//! - [`context`]: W3C Trace Context and B3, read and written.
//! - [`export`]: the OTLP/gRPC exporter: a bounded queue, batches, a task.
//! - [`access_log`]: lines in JSON or the common log format, written by a thread.

pub mod access_log;
pub mod context;
pub mod export;

use crate::metrics::{Direction, Metrics, Peer};
use crate::swap::Swap;
use access_log::{AccessLog, LogFormat};
use context::Incoming;
use export::{Exporter, SpanKind, SpanRecord};
use http::Request;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// The `telemetry` section of the proxy's configuration; the control plane's Telemetry
/// settings for the workload replace all but `access_log_path`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `service.name` of the spans (the control plane sends the workload's Service).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of requests arriving without trace context that start a trace at this
    /// (outbound) proxy, 0 to 100. Requests whose caller sampled them are traced whatever
    /// this is.
    #[serde(default)]
    pub sampling_percent: f64,
    /// `host:port` of an OTLP/gRPC collector. Absent: no spans, and trace headers pass
    /// through untouched.
    #[serde(default)]
    pub collector: Option<String>,
    /// Absent: no access log.
    #[serde(default)]
    pub access_log: Option<LogFormat>,
    /// Where access log lines are appended; absent: the proxy's standard output (its own
    /// logs go to standard error).
    #[serde(default)]
    pub access_log_path: Option<String>,
}

impl TelemetryConfig {
    /// Checks what types cannot; `field` is the section's name in errors.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(0.0..=100.0).contains(&self.sampling_percent) {
            return Err(("telemetry.sampling_percent".into(), "must be between 0 and 100".into()));
        }
        if let Some(collector) = &self.collector
            && export::endpoint_uri(collector).is_none()
        {
            return Err(("telemetry.collector".into(), format!("`{collector}` is not host:port")));
        }
        Ok(())
    }
}

/// The telemetry in force, and what builds it: one per proxy.
#[derive(Debug)]
pub struct Telemetry {
    stage: Swap<Stage>,
    metrics: Arc<Metrics>,
    /// The default service name and the access log's destination, from the configuration.
    local: TelemetryConfig,
    /// Kept across updates that keep the collector (and its queue) or the log file.
    exporter: Mutex<Option<Arc<Exporter>>>,
    log: Mutex<Option<Arc<AccessLog>>>,
}

/// What a request goes through when tracing or access logs are on, compiled once per
/// update.
#[derive(Debug)]
pub struct Stage {
    /// Parts per million of context-less requests that start a trace.
    sample_ppm: u32,
    /// Some: spans are made for sampled requests.
    exporter: Option<Arc<Exporter>>,
    log: Option<(Arc<AccessLog>, LogFormat)>,
}

impl Telemetry {
    /// Off until [`Self::apply`]; `local` is the proxy's configuration.
    pub fn new(local: TelemetryConfig, metrics: Arc<Metrics>) -> Self {
        Self { stage: Swap::default(), metrics, local, exporter: Mutex::default(), log: Mutex::default() }
    }

    /// The stage in force; `None` (one atomic load) when telemetry is off.
    pub fn get(&self) -> Option<Arc<Stage>> {
        self.stage.get()
    }

    /// True when some stage is in force: whether the routed path should say which rule
    /// took a request.
    pub fn is_on(&self) -> bool {
        self.stage.is_set()
    }

    /// The configuration's own settings; a proxy the control plane configures applies its
    /// updates instead, as they come.
    pub fn apply_local(&self) {
        self.apply(&self.local.clone());
    }

    /// Compiles `settings` into the stage in force (none when nothing is on). Must run on
    /// the proxy's runtime: an exporter is a task.
    pub fn apply(&self, settings: &TelemetryConfig) {
        let service_name = settings
            .service_name
            .clone()
            .or_else(|| self.local.service_name.clone())
            .unwrap_or_else(|| "tarmac-proxy".into());
        let exporter = match &settings.collector {
            Some(collector) => {
                let mut kept = self.exporter.lock().unwrap_or_else(|e| e.into_inner());
                match kept.as_ref().filter(|e| e.collector() == collector && e.service_name() == service_name)
                {
                    Some(e) => Some(e.clone()),
                    None => match Exporter::spawn(collector, &service_name, self.metrics.clone()) {
                        Ok(e) => {
                            tracing::info!(%collector, service = %service_name, "exporting spans over OTLP");
                            *kept = Some(Arc::new(e));
                            kept.clone()
                        }
                        Err(e) => {
                            tracing::warn!(%collector, error = %e, "no tracing: the collector address is unusable");
                            None
                        }
                    },
                }
            }
            None => None,
        };
        if exporter.is_none() {
            // Dropping the last handle lets the task send what it holds and end.
            *self.exporter.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let log = settings.access_log.map(|format| {
            let mut kept = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let log = kept
                .get_or_insert_with(|| {
                    Arc::new(AccessLog::start(self.local.access_log_path.as_deref(), self.metrics.clone()))
                })
                .clone();
            (log, format)
        });
        let on = exporter.is_some() || log.is_some();
        let ppm = (settings.sampling_percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        self.stage.set(on.then_some(Stage { sample_ppm: ppm, exporter, log }));
    }
}

/// The ids of the proxy's span for one request.
#[derive(Clone, Debug)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span; `None` for a trace the proxy started.
    pub parent: Option<[u8; 8]>,
    pub tracestate: Option<String>,
}

/// What is known of a traced or logged request, from its start to its end.
#[derive(Debug)]
pub struct RequestRecord {
    stage: Arc<Stage>,
    pub span: Option<SpanIds>,
    direction: Direction,
    target: Arc<String>,
    method: http::Method,
    authority: String,
    path: String,
    version: http::Version,
    source: Option<SocketAddr>,
    /// The client's verified identity (inbound mTLS).
    client_id: Option<Arc<str>>,
    /// The server's verified identity (outbound, set at the response head).
    pub server_id: Option<Arc<str>>,
    start: SystemTime,
    started: Instant,
    request_bytes: Option<u64>,
    /// Set at the response head and body's end.
    pub route: Option<Matched>,
    pub retries: u32,
    pub response_bytes: u64,
}

/// The route and rule that took a routed request, carried on its response (an extension)
/// while telemetry is on.
#[derive(Clone, Debug)]
pub struct Matched {
    /// `namespace/name` of the HTTPRoute or GRPCRoute.
    pub route: Arc<String>,
    /// The rule's name; empty when unnamed.
    pub rule: Arc<String>,
}

/// Retries a response took (an extension, present only when there were some).
#[derive(Clone, Copy, Debug)]
pub struct Retries(pub u32);

impl Stage {
    /// Starts telemetry for one request: reads its trace context, decides whether this
    /// proxy makes a span (a sampled caller's context: always; none, outbound: drawn at the
    /// sampling rate), and if so names that span as the parent on the request it
    /// forwards. `None` when the request is neither traced nor logged.
    pub fn begin<B>(
        self: &Arc<Self>,
        req: &mut Request<B>,
        direction: Direction,
        target: &Arc<String>,
        peer: &Peer,
        source: Option<SocketAddr>,
        started: Instant,
    ) -> Option<Box<RequestRecord>> {
        let span = match &self.exporter {
            Some(_) => self.decide(req, direction),
            None => None,
        };
        if span.is_none() && self.log.is_none() {
            return None;
        }
        Some(Box::new(RequestRecord {
            stage: self.clone(),
            span,
            direction,
            target: target.clone(),
            method: req.method().clone(),
            authority: crate::http::authority(req).map(|a| a.to_string()).unwrap_or_default(),
            path: req.uri().path().to_string(),
            version: req.version(),
            source,
            client_id: match peer {
                Peer::Authenticated(id) => Some(id.clone()),
                _ => None,
            },
            server_id: None,
            start: SystemTime::now(),
            started,
            request_bytes: req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            route: None,
            retries: 0,
            response_bytes: 0,
        }))
    }

    fn decide<B>(&self, req: &mut Request<B>, direction: Direction) -> Option<SpanIds> {
        let incoming = context::extract(req.headers());
        let sampled = match (&incoming, direction) {
            (Some(Incoming { sampled: Some(sampled), .. }), _) => *sampled,
            // No context, or a caller that left the decision downstream: only the caller's
            // own sidecar decides, so that one request is not drawn twice.
            (_, Direction::Outbound) => self.draw(),
            (_, Direction::Inbound) => false,
        };
        if !sampled {
            return None;
        }
        let span_id = nonzero_id();
        let ids = match &incoming {
            Some(ctx) => SpanIds {
                trace_id: ctx.trace_id,
                span_id,
                parent: Some(ctx.span_id),
                tracestate: ctx.tracestate.clone(),
            },
            None => {
                let trace_id = loop {
                    let id = fastrand::u128(..).to_be_bytes();
                    if id != [0; 16] {
                        break id;
                    }
                };
                SpanIds { trace_id, span_id, parent: None, tracestate: None }
            }
        };
        context::inject(req.headers_mut(), &ids.trace_id, &ids.span_id, incoming.as_ref());
        Some(ids)
    }

    fn draw(&self) -> bool {
        self.sample_ppm > 0 && fastrand::u32(..1_000_000) < self.sample_ppm
    }
}

fn nonzero_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

impl RequestRecord {
    /// The trace id, for tap and access logs.
    pub fn trace_id(&self) -> Option<String> {
        self.span.as_ref().map(|s| context::hex(&s.trace_id))
    }

    /// The request ended (its response body finished, failed, or was dropped): its span
    /// goes to the exporter's queue and its line to the access log's, or are dropped
    /// (counted) when those are full.
    pub fn finish(self: Box<Self>, status: u16, grpc_status: Option<u32>, failed: bool) {
        let end = SystemTime::now();
        let duration = self.started.elapsed();
        if let Some((log, format)) = &self.stage.log {
            log.write(access_log::line(*format, &self, status, grpc_status, duration));
        }
        if let (Some(exporter), Some(ids)) = (&self.stage.exporter, &self.span) {
            let kind = match self.direction {
                Direction::Outbound => SpanKind::Client,
                Direction::Inbound => SpanKind::Server,
            };
            // A client span is an error from 400 on, a server span from 500 (semantic
            // conventions for HTTP spans).
            let error = failed || status >= 500 || (kind == SpanKind::Client && status >= 400);
            exporter.send(SpanRecord {
                ids: ids.clone(),
                kind,
                start: self.start,
                end: end.max(self.start),
                error,
                attributes: self.attributes(status, grpc_status),
            });
        }
    }

    fn attributes(&self, status: u16, grpc_status: Option<u32>) -> Vec<(&'static str, export::Value)> {
        use export::Value::{Int, Str};
        let mut out = vec![
            ("http.request.method", Str(self.method.as_str().into())),
            ("url.path", Str(self.path.clone())),
            ("http.response.status_code", Int(i64::from(status))),
            ("network.protocol.version", Str(version(self.version).into())),
            ("tarmac.target", Str(self.target.to_string())),
        ];
        let (host, port) = tarmac_route::filters::split_host_port(&self.authority);
        if !host.is_empty() {
            out.push(("server.address", Str(host.to_string())));
        }
        if let Some(port) = port {
            out.push(("server.port", Int(i64::from(port))));
        }
        if let Some(source) = self.source {
            out.push(("network.peer.address", Str(source.ip().to_string())));
            out.push(("network.peer.port", Int(i64::from(source.port()))));
        }
        let peer_id = match self.direction {
            Direction::Inbound => &self.client_id,
            Direction::Outbound => &self.server_id,
        };
        if let Some(id) = peer_id {
            out.push(("tarmac.peer.identity", Str(id.to_string())));
        }
        if let Some(n) = self.request_bytes {
            out.push(("http.request.body.size", Int(n as i64)));
        }
        out.push(("http.response.body.size", Int(self.response_bytes as i64)));
        if let Some(m) = &self.route {
            out.push(("http.route", Str(m.route.to_string())));
            out.push(("tarmac.route", Str(m.route.to_string())));
            out.push(("tarmac.rule", Str(m.rule.to_string())));
        }
        out.push(("tarmac.retries", Int(i64::from(self.retries))));
        if let Some(code) = grpc_status {
            out.push(("rpc.grpc.status_code", Int(i64::from(code))));
        }
        out
    }
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(ppm: u32, metrics: &Arc<Metrics>) -> Arc<Stage> {
        // An exporter whose collector nobody listens on: spans are made, and dropped.
        let exporter = Exporter::spawn("127.0.0.1:9", "web", metrics.clone()).unwrap();
        Arc::new(Stage { sample_ppm: ppm, exporter: Some(Arc::new(exporter)), log: None })
    }

    fn request(headers: &[(&'static str, &str)]) -> Request<()> {
        let mut req = Request::get("http://books/x").body(()).unwrap();
        for (k, v) in headers {
            req.headers_mut().append(*k, v.parse().unwrap());
        }
        req
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn a_sampled_callers_span_is_the_parent_and_the_proxys_span_the_next_one() {
        let metrics = Arc::new(Metrics::new());
        let stage = stage(0, &metrics);
        let target = Arc::new("books".to_string());
        for direction in [Direction::Outbound, Direction::Inbound] {
            let mut req = request(&[("traceparent", PARENT)]);
            let record =
                stage.begin(&mut req, direction, &target, &Peer::Unlabelled, None, Instant::now()).unwrap();
            let ids = record.span.as_ref().unwrap();
            assert_eq!(context::hex(&ids.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(ids.parent, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
            let forwarded = req.headers()["traceparent"].to_str().unwrap();
            assert_eq!(forwarded, context::traceparent(&ids.trace_id, &ids.span_id));
        }
    }

    #[tokio::test]
    async fn without_context_only_the_outbound_side_draws_and_unsampled_callers_are_left_alone() {
        let metrics = Arc::new(Metrics::new());
        let target = Arc::new("books".to_string());
        let never = stage(0, &metrics);
        let always = stage(1_000_000, &metrics);
        let begin = |stage: &Arc<Stage>, req: &mut Request<()>, direction| {
            stage.begin(req, direction, &target, &Peer::Unlabelled, None, Instant::now())
        };
        let mut req = request(&[]);
        assert!(begin(&never, &mut req, Direction::Outbound).is_none());
        assert!(req.headers().is_empty(), "an unsampled request is not touched");
        let mut req = request(&[]);
        let record = begin(&always, &mut req, Direction::Outbound).unwrap();
        assert_eq!(record.span.as_ref().unwrap().parent, None, "a new trace's root");
        assert!(req.headers().contains_key("traceparent"));
        let mut req = request(&[]);
        assert!(begin(&always, &mut req, Direction::Inbound).is_none(), "inbound never starts traces");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut req = request(&[("traceparent", unsampled)]);
        assert!(begin(&always, &mut req, Direction::Outbound).is_none());
        assert_eq!(req.headers()["traceparent"], unsampled, "the caller's decision stands");
        // Malformed context: as if absent, never an error.
        let mut req = request(&[("traceparent", "00-zz"), ("tracestate", "a=b")]);
        let record = begin(&always, &mut req, Direction::Outbound).unwrap();
        assert_eq!(record.span.as_ref().unwrap().parent, None);
        assert!(req.headers().get("tracestate").is_none());
    }

    #[tokio::test]
    async fn a_tenth_is_about_a_tenth() {
        let metrics = Arc::new(Metrics::new());
        let stage = stage(100_000, &metrics);
        let target = Arc::new("books".to_string());
        let traced = (0..10_000)
            .filter(|_| {
                let mut req = request(&[]);
                stage
                    .begin(&mut req, Direction::Outbound, &target, &Peer::Unlabelled, None, Instant::now())
                    .is_some()
            })
            .count();
        // 1000 expected; 5 standard deviations of the binomial is 150.
        assert!((850..=1150).contains(&traced), "{traced}");
    }

    #[tokio::test]
    async fn with_everything_off_there_is_no_stage() {
        let metrics = Arc::new(Metrics::new());
        let telemetry =
            Telemetry::new(TelemetryConfig { sampling_percent: 100.0, ..Default::default() }, metrics);
        telemetry.apply_local();
        assert!(telemetry.get().is_none(), "sampling without a collector makes no stage");
        assert!(!telemetry.is_on());
        telemetry.apply(&TelemetryConfig { collector: Some("127.0.0.1:9".into()), ..Default::default() });
        assert!(telemetry.is_on());
        telemetry.apply(&TelemetryConfig::default());
        assert!(telemetry.get().is_none());
    }
}
