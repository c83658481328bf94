//! Golden metrics in Prometheus text format.
//!
//! Labels are bounded by configuration, never by traffic: `target` is a configured service
//! name or an address, `status_code` is one of the few hundred HTTP codes. Paths never
//! become labels. Per-target handles are resolved once per connection or service so the
//! request path touches only atomics for counting and timing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder,
    LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::fmt::Write as _;
use std::sync::Arc;

/// Latency buckets in seconds: fine where requests usually fall (a local hop takes
/// 100 µs, a typical service 1-50 ms) so that percentiles read from them are close.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// Buckets of protocol detection's duration in seconds: a client that speaks first is
/// decided within a read or two (tens of microseconds), a slow one within milliseconds,
/// and one that waits for the server to speak first only at `limits.detect_timeout`
/// (10 s by default, which lands in the 30 s bucket).
const DETECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Whether a response counts as a success for the success rate. HTTP 5xx fail; for gRPC
/// the `grpc-status` decides, since gRPC failures travel in HTTP 200 responses.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

impl EncodeLabelValue for Classification {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        })
    }
}

/// The other side of a target's connections, for the `tls` and `client_id` (inbound) or
/// `server_id` (outbound) labels.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub enum Peer {
    /// Not known at this level: no `tls` label.
    #[default]
    Unlabelled,
    /// A plaintext connection: `tls="false"`.
    Plaintext,
    /// An mTLS peer with its verified SPIFFE ID.
    Authenticated(Arc<str>),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TargetLabels {
    pub direction: Direction,
    pub target: Arc<String>,
    pub peer: Peer,
}

impl EncodeLabelSet for TargetLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("target", self.target.as_str()).encode(encoder.encode_label())?;
        match &self.peer {
            Peer::Unlabelled => {}
            Peer::Plaintext => ("tls", "false").encode(encoder.encode_label())?,
            Peer::Authenticated(id) => {
                ("tls", "true").encode(encoder.encode_label())?;
                let key = match self.direction {
                    Direction::Inbound => "client_id",
                    Direction::Outbound => "server_id",
                };
                (key, id.as_ref()).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    #[prometheus(flatten)]
    pub route: RouteLabel,
    pub status_code: u16,
    /// gRPC status code when the response was gRPC, otherwise empty.
    pub grpc_status: Option<u32>,
    pub classification: Classification,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    pub direction: Direction,
    /// `http1`, `http2`, `tls`, `opaque`, `timeout` or `skipped` (an opaque port).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: Direction,
    /// `ok`, or why the handshake failed: `untrusted`, `expired`, `wrong_identity`,
    /// `no_identity`, `no_client_certificate`, `timeout`, `other`.
    pub result: &'static str,
    /// The key exchange negotiated (`X25519MLKEM768` between proxies); empty on failure.
    pub group: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub direction: Direction,
    pub target: Arc<String>,
    pub kind: &'static str,
}

/// The `route` label of a response: the name of the route rule that took the request.
/// Absent (not empty) for services without routes and for unnamed rules, so that series
/// of unrouted traffic look as they always did.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct RouteLabel(pub Option<Arc<str>>);

impl EncodeLabelSet for RouteLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        match &self.0 {
            Some(rule) => ("route", rule.as_ref()).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub target: Arc<String>,
    /// `namespace/name` of the route; empty when no rule matched.
    pub route: Arc<String>,
    /// The rule's `name`; empty when unnamed.
    pub rule: Arc<String>,
    pub status_code: u16,
}

/// The labels of the route latency histogram: [`RouteLabels`] without the status, as
/// shared strings of the route table so that observing allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLatencyLabels {
    pub direction: Direction,
    pub target: Arc<String>,
    /// `namespace/name` of the route; empty when no rule matched.
    pub route: Arc<String>,
    /// The rule's `name`; empty when unnamed.
    pub rule: Arc<String>,
}

/// The labels of retry counters: the route and rule as in [`RouteLatencyLabels`] (empty
/// for unrouted requests), and why the retry was made or not.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub direction: Direction,
    pub target: Arc<String>,
    pub route: Arc<String>,
    pub rule: Arc<String>,
    /// Made: `unsent` (never left the proxy), `status`, `error` (a connection failure
    /// after sending), `timeout` (per try). Denied: `budget`, `body` (not replayable).
    pub reason: &'static str,
}

/// A policy's `namespace/name` (or `default:<mode>`) as a label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PolicyName(pub Arc<str>);

impl EncodeLabelValue for PolicyName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// The labels of inbound denials: the target and its client (bounded as inbound targets
/// are), the policy, why, and whether it was only audited.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    pub policy: PolicyName,
    /// `denied`, `not_allowed`, `unauthenticated`, `default_deny` or `no_policy`.
    pub reason: &'static str,
    /// `enforce`, or `audit` (counted and logged, let through).
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitedLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    pub policy: PolicyName,
    /// Which limit refused: `total` or `caller`.
    pub limit: &'static str,
}

/// All of the proxy's metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<TargetLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<TargetLabels, Histogram, fn() -> Histogram>,
    tcp_opened: Family<TargetLabels, Counter>,
    tcp_closed: Family<TargetLabels, Counter>,
    tcp_open: Family<TargetLabels, Gauge>,
    tcp_read_bytes: Family<TargetLabels, Counter>,
    tcp_write_bytes: Family<TargetLabels, Counter>,
    detect: Family<DetectLabels, Counter>,
    detect_duration: Family<DetectLabels, Histogram, fn() -> Histogram>,
    refused: Family<ReasonLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    http_connections: Family<TargetLabels, Counter>,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Expiry of the certificate in use, seconds since the epoch (0: none yet).
    pub cert_expiry: Gauge,
    certificate_requests: Family<OutcomeLabels, Counter>,
    route_responses: Family<RouteLabels, Counter>,
    route_latency: Family<RouteLatencyLabels, Histogram, fn() -> Histogram>,
    retries: Family<RetryLabels, Counter>,
    retries_denied: Family<RetryLabels, Counter>,
    ejections: Family<TargetLabels, Counter>,
    authz_denied: Family<DeniedLabels, Counter>,
    rate_limited: Family<RateLimitedLabels, Counter>,
    /// Spans sent to the OTLP collector, and spans lost: a full queue, a failed export.
    pub trace_spans_exported: Counter,
    pub trace_spans_dropped: Counter,
    /// Access log lines lost because the writer was behind.
    pub access_log_dropped: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register("tarmac_requests", "HTTP requests received", requests.clone());
        let responses = Family::default();
        registry.register(
            "tarmac_responses",
            "HTTP responses completed, by status and success classification",
            responses.clone(),
        );
        let latency =
            Family::<TargetLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "tarmac_response_latency",
            "Time from receiving a request to receiving its response headers",
            Unit::Seconds,
            latency.clone(),
        );
        let tcp_opened = Family::default();
        registry.register("tarmac_tcp_open", "TCP connections opened", tcp_opened.clone());
        let tcp_closed = Family::default();
        registry.register("tarmac_tcp_close", "TCP connections closed", tcp_closed.clone());
        let tcp_open = Family::default();
        registry.register("tarmac_tcp_connections_open", "TCP connections open now", tcp_open.clone());
        let tcp_read_bytes = Family::default();
        registry.register_with_unit(
            "tarmac_tcp_read",
            "Bytes received from clients on opaque TCP connections",
            Unit::Bytes,
            tcp_read_bytes.clone(),
        );
        let tcp_write_bytes = Family::default();
        registry.register_with_unit(
            "tarmac_tcp_write",
            "Bytes sent to clients on opaque TCP connections",
            Unit::Bytes,
            tcp_write_bytes.clone(),
        );
        let detect = Family::default();
        registry.register("tarmac_protocol_detect", "Protocol detection outcomes", detect.clone());
        let detect_duration =
            Family::<DetectLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(DETECT_BUCKETS.iter().copied())
            });
        registry.register_with_unit(
            "tarmac_protocol_detect_duration",
            "Time protocol detection took, from accepting a connection to its outcome (skipped ones aside)",
            Unit::Seconds,
            detect_duration.clone(),
        );
        let refused = Family::default();
        registry.register(
            "tarmac_connections_refused",
            "Connections refused before proxying (limit, loop, no target)",
            refused.clone(),
        );
        let errors = Family::default();
        registry.register(
            "tarmac_proxy_errors",
            "Requests or connections the proxy failed, by kind",
            errors.clone(),
        );
        let http_connections = Family::default();
        registry.register(
            "tarmac_http_connections",
            "HTTP connections the proxy opened to endpoints or the app",
            http_connections.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register(
            "tarmac_tls_handshakes",
            "mTLS handshakes between proxies, by outcome",
            tls_handshakes.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "tarmac_identity_cert_expiration_timestamp_seconds",
            "When the proxy's workload certificate expires (0 while it has none)",
            cert_expiry.clone(),
        );
        let trace_spans_exported = Counter::default();
        registry.register(
            "tarmac_trace_spans_exported",
            "Spans the OTLP collector accepted",
            trace_spans_exported.clone(),
        );
        let trace_spans_dropped = Counter::default();
        registry.register(
            "tarmac_trace_spans_dropped",
            "Spans lost: the exporter's queue was full, or the collector failed or refused them",
            trace_spans_dropped.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "tarmac_access_log_lines_dropped",
            "Access log lines lost because the writer was behind",
            access_log_dropped.clone(),
        );
        let certificate_requests = Family::default();
        registry.register(
            "tarmac_identity_certificate_requests",
            "Certificate requests to the control plane (first and renewals), by result",
            certificate_requests.clone(),
        );
        let route_responses = Family::default();
        registry.register(
            "tarmac_route_responses",
            "HTTP responses of routed services, by route, rule and status (at the response head)",
            route_responses.clone(),
        );
        let route_latency = Family::<RouteLatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register_with_unit(
            "tarmac_route_response_latency",
            "Time from receiving a request of a routed service to its response headers, by route and rule",
            Unit::Seconds,
            route_latency.clone(),
        );
        let retries = Family::default();
        registry.register(
            "tarmac_retries",
            "Requests tried again, by route, rule and reason",
            retries.clone(),
        );
        let retries_denied = Family::default();
        registry.register(
            "tarmac_retries_denied",
            "Retries a policy wanted but did not make: `budget` (the service's retry budget was spent) \
             or `body` (the request body was too large or of unknown length to send again)",
            retries_denied.clone(),
        );
        let ejections = Family::default();
        registry.register(
            "tarmac_endpoint_ejections",
            "Endpoints ejected from a backend's balancer after failing requests in a row",
            ejections.clone(),
        );
        let authz_denied = Family::default();
        registry.register(
            "tarmac_authz_denied",
            "Inbound requests and connections refused by policy (mode=audit: would have been, let through), \
             by client, policy and reason",
            authz_denied.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "tarmac_rate_limited",
            "Inbound requests refused by a RateLimitPolicy (429), by client, policy and limit",
            rate_limited.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            requests,
            responses,
            latency,
            tcp_opened,
            tcp_closed,
            tcp_open,
            tcp_read_bytes,
            tcp_write_bytes,
            detect,
            detect_duration,
            refused,
            errors,
            http_connections,
            tls_handshakes,
            cert_expiry,
            certificate_requests,
            route_responses,
            route_latency,
            retries,
            retries_denied,
            ejections,
            authz_denied,
            rate_limited,
            trace_spans_exported,
            trace_spans_dropped,
            access_log_dropped,
        }
    }

    /// Renders the Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one target; resolve once, use for many requests.
    pub fn target(self: &Arc<Self>, direction: Direction, target: Arc<String>, peer: Peer) -> TargetMetrics {
        let labels = TargetLabels { direction, target, peer };
        TargetMetrics {
            requests: self.requests.get_or_create_owned(&labels),
            latency: self.latency.get_or_create_owned(&labels),
            http_connections: self.http_connections.get_or_create_owned(&labels),
            outcomes: OutcomeCounters::default(),
            labels,
            metrics: self.clone(),
        }
    }

    /// Counts a detection's outcome and, unless it was skipped, how long it `took`.
    pub fn detected(&self, direction: Direction, result: &'static str, took: Option<std::time::Duration>) {
        let labels = DetectLabels { direction, result };
        self.detect.get_or_create(&labels).inc();
        if let Some(took) = took {
            self.detect_duration.get_or_create(&labels).observe(took.as_secs_f64());
        }
    }

    pub fn tls_handshake(&self, direction: Direction, result: &'static str, group: &'static str) {
        self.tls_handshakes.get_or_create(&HandshakeLabels { direction, result, group }).inc();
    }

    pub fn certificate_request(&self, result: &'static str) {
        self.certificate_requests.get_or_create(&OutcomeLabels { result }).inc();
    }

    pub fn refused(&self, direction: Direction, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { direction, reason }).inc();
    }
}

/// Metric handles for one (direction, target).
#[derive(Clone, Debug)]
pub struct TargetMetrics {
    requests: Counter,
    latency: Histogram,
    pub http_connections: Counter,
    outcomes: OutcomeCounters,
    labels: TargetLabels,
    metrics: Arc<Metrics>,
}

/// The response counters of a target's unrouted responses, by outcome. Finding one in the
/// family hashes the whole label set, target name included; here it is a short scan of
/// the few outcomes a target sees (a status or two, a gRPC status or two).
#[derive(Debug, Default)]
struct OutcomeCounters(std::sync::RwLock<Vec<(u64, Counter)>>);

/// Outcomes beyond this many are looked up in the family each time.
const MAX_CACHED_OUTCOMES: usize = 32;

impl OutcomeCounters {
    fn key(status_code: u16, grpc_status: Option<u32>, classification: Classification) -> u64 {
        let grpc = grpc_status.map_or(0, |s| u64::from(s) + 1);
        u64::from(status_code) | grpc << 16 | (classification as u64) << 56
    }

    /// Counts one response of outcome `key`, if its counter is here.
    fn inc(&self, key: u64) -> bool {
        let cached = self.0.read().unwrap_or_else(|e| e.into_inner());
        cached.iter().find(|(k, _)| *k == key).map(|(_, c)| c.inc()).is_some()
    }

    fn insert(&self, key: u64, counter: Counter) {
        let mut cached = self.0.write().unwrap_or_else(|e| e.into_inner());
        if cached.len() < MAX_CACHED_OUTCOMES && !cached.iter().any(|(k, _)| *k == key) {
            cached.push((key, counter));
        }
    }
}

impl Clone for OutcomeCounters {
    fn clone(&self) -> Self {
        Self(std::sync::RwLock::new(self.0.read().unwrap_or_else(|e| e.into_inner()).clone()))
    }
}

impl TargetMetrics {
    /// Who the target's requests go to or come from, as far as it is proven.
    pub fn peer(&self) -> &Peer {
        &self.labels.peer
    }

    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    pub fn response(
        &self,
        route: RouteLabel,
        status_code: u16,
        grpc_status: Option<u32>,
        classification: Classification,
    ) {
        let key = route.0.is_none().then(|| OutcomeCounters::key(status_code, grpc_status, classification));
        if key.is_some_and(|k| self.outcomes.inc(k)) {
            return;
        }
        let labels =
            ResponseLabels { target: self.labels.clone(), route, status_code, grpc_status, classification };
        let counter = self.metrics.responses.get_or_create_owned(&labels);
        counter.inc();
        if let Some(key) = key {
            self.outcomes.insert(key, counter);
        }
    }

    pub fn tls_handshake(&self, result: &'static str, group: &'static str) {
        self.metrics.tls_handshake(self.labels.direction, result, group);
    }

    /// Counts a request or connection of this target (and client) refused by `policy`.
    pub fn authz_denied(&self, policy: &Arc<str>, reason: &'static str, audit: bool) {
        let labels = DeniedLabels {
            target: self.labels.clone(),
            policy: PolicyName(policy.clone()),
            reason,
            mode: if audit { "audit" } else { "enforce" },
        };
        self.metrics.authz_denied.get_or_create(&labels).inc();
    }

    /// Counts a request of this target (and client) refused by a rate limit.
    pub fn rate_limited(&self, policy: &Arc<str>, limit: &'static str) {
        let labels =
            RateLimitedLabels { target: self.labels.clone(), policy: PolicyName(policy.clone()), limit };
        self.metrics.rate_limited.get_or_create(&labels).inc();
    }

    /// Handles for the same target, labelled with `peer`.
    pub fn for_peer(&self, peer: Peer) -> TargetMetrics {
        self.metrics.target(self.labels.direction, self.labels.target.clone(), peer)
    }

    /// Counts a response of a routed service; labels are the route table's own strings,
    /// so counting allocates nothing.
    pub fn route_response(&self, route: &Arc<String>, rule: &Arc<String>, status_code: u16) {
        self.metrics
            .route_responses
            .get_or_create(&RouteLabels {
                direction: self.labels.direction,
                target: self.labels.target.clone(),
                route: route.clone(),
                rule: rule.clone(),
                status_code,
            })
            .inc();
    }

    /// Times a response of a routed service, at its head like [`Self::route_response`].
    /// The labels are the route table's own strings: nothing is allocated.
    pub fn route_latency(&self, route: &Arc<String>, rule: &Arc<String>, seconds: f64) {
        self.metrics
            .route_latency
            .get_or_create(&RouteLatencyLabels {
                direction: self.labels.direction,
                target: self.labels.target.clone(),
                route: route.clone(),
                rule: rule.clone(),
            })
            .observe(seconds);
    }

    /// Counts a retry made (`made`) or denied, under a route's own strings.
    pub fn retry(&self, route: &Arc<String>, rule: &Arc<String>, reason: &'static str, made: bool) {
        let family = if made { &self.metrics.retries } else { &self.metrics.retries_denied };
        family
            .get_or_create(&RetryLabels {
                direction: self.labels.direction,
                target: self.labels.target.clone(),
                route: route.clone(),
                rule: rule.clone(),
                reason,
            })
            .inc();
    }

    pub fn ejection(&self) {
        self.metrics.ejections.get_or_create(&self.labels).inc();
    }

    pub fn error(&self, kind: &'static str) {
        self.metrics
            .errors
            .get_or_create(&ErrorLabels {
                direction: self.labels.direction,
                target: self.labels.target.clone(),
                kind,
            })
            .inc();
    }

    /// Counts an opaque TCP connection for as long as the returned guard lives.
    pub fn tcp_connection(&self) -> TcpConnectionMetrics {
        let m = &self.metrics;
        m.tcp_opened.get_or_create(&self.labels).inc();
        let open = m.tcp_open.get_or_create_owned(&self.labels);
        open.inc();
        TcpConnectionMetrics {
            read: m.tcp_read_bytes.get_or_create_owned(&self.labels),
            write: m.tcp_write_bytes.get_or_create_owned(&self.labels),
            closed: m.tcp_closed.get_or_create_owned(&self.labels),
            open,
        }
    }
}

/// Byte counters of one opaque connection; closing is counted on drop.
#[derive(Debug)]
pub struct TcpConnectionMetrics {
    pub read: Counter,
    pub write: Counter,
    closed: Counter,
    open: Gauge,
}

impl Drop for TcpConnectionMetrics {
    fn drop(&mut self) {
        self.closed.inc();
        self.open.dec();
    }
}

/// The standard `process_*` metrics, read from /proc at scrape time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read_self() else { return Ok(()) };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            ("process_resident_memory_bytes", "Resident memory size in bytes", stats.rss_bytes as f64),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", stats.vsize_bytes as f64),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                stats.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors", stats.open_fds as f64),
            ("process_threads", "Number of OS threads", stats.threads as f64),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// CPU and memory of a process, from /proc. Also used by the CLI and benchmarks to
/// measure proxies from outside.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub threads: u64,
}

impl ProcessStats {
    pub fn read_self() -> Option<Self> {
        Self::read("self")
    }

    /// `pid` is a number or `self`.
    pub fn read(pid: &str) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is parenthesised and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = clock_ticks_per_second();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        let threads: u64 = f.get(17)?.parse().ok()?;
        let starttime: f64 = f.get(19)?.parse().ok()?;
        let vsize: u64 = f.get(20)?.parse().ok()?;
        // VmRSS is in kB whatever the page size; field 24 of stat would be in pages.
        let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
        })?;
        let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
        Some(Self {
            cpu_seconds: (utime + stime) / ticks,
            rss_bytes: rss_kb * 1024,
            vsize_bytes: vsize,
            start_time_seconds: boot_time + starttime / ticks,
            open_fds,
            threads,
        })
    }
}

/// USER_HZ is 100 on every Linux architecture Tarmac builds for.
fn clock_ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_conventional_names() {
        let metrics = Arc::new(Metrics::new());
        let t = metrics.target(Direction::Outbound, Arc::new("books".into()), Peer::Unlabelled);
        t.request();
        t.latency(0.002);
        t.response(RouteLabel::default(), 200, None, Classification::Success);
        t.response(RouteLabel::default(), 200, Some(7), Classification::Failure);
        drop(t.tcp_connection());
        t.route_latency(&Arc::new("default/books".into()), &Arc::new("canary".into()), 0.25);
        let text = metrics.encode();
        for needle in [
            "tarmac_requests_total{direction=\"outbound\",target=\"books\"} 1",
            "tarmac_response_latency_seconds_bucket{direction=\"outbound\",target=\"books\",le=\"0.003\"} 1",
            "status_code=\"200\",grpc_status=\"7\",classification=\"failure\"",
            "tarmac_tcp_close_total{direction=\"outbound\",target=\"books\"} 1",
            "tarmac_tcp_connections_open{direction=\"outbound\",target=\"books\"} 0",
            "tarmac_route_response_latency_seconds_bucket{direction=\"outbound\",target=\"books\",route=\"default/books\",rule=\"canary\",le=\"0.3\"} 1",
            "tarmac_route_response_latency_seconds_bucket{direction=\"outbound\",target=\"books\",route=\"default/books\",rule=\"canary\",le=\"0.2\"} 0",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn each_outcome_is_counted_under_its_own_labels() {
        let metrics = Arc::new(Metrics::new());
        let t = metrics.target(Direction::Inbound, Arc::new("books".into()), Peer::Plaintext);
        let canary = RouteLabel(Some("canary".into()));
        // Twice over, so that the second round counts through the cached counters; more
        // outcomes than are cached, so that the rest go through the family.
        for _ in 0..2 {
            for status in 200..250 {
                t.response(RouteLabel::default(), status, None, Classification::Success);
            }
            t.response(RouteLabel::default(), 200, None, Classification::Failure);
            t.response(RouteLabel::default(), 200, Some(0), Classification::Success);
            t.response(RouteLabel::default(), 200, Some(14), Classification::Failure);
            t.response(canary.clone(), 200, None, Classification::Success);
        }
        let text = metrics.encode();
        let count = |labels: &str| {
            let needle = format!(
                "tarmac_responses_total{{direction=\"inbound\",target=\"books\",tls=\"false\",{labels}}} "
            );
            let line = text
                .lines()
                .find(|l| l.starts_with(&needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"));
            line[needle.len()..].to_string()
        };
        for status in [200, 231, 249] {
            assert_eq!(
                count(&format!("status_code=\"{status}\",grpc_status=\"\",classification=\"success\"")),
                "2"
            );
        }
        assert_eq!(count("status_code=\"200\",grpc_status=\"\",classification=\"failure\""), "2");
        assert_eq!(count("status_code=\"200\",grpc_status=\"0\",classification=\"success\""), "2");
        assert_eq!(count("status_code=\"200\",grpc_status=\"14\",classification=\"failure\""), "2");
        assert_eq!(
            count("route=\"canary\",status_code=\"200\",grpc_status=\"\",classification=\"success\""),
            "2"
        );
        assert_eq!(text.matches("tarmac_responses_total{").count(), 54, "{text}");
    }

    #[test]
    fn process_stats_are_plausible() {
        let s = ProcessStats::read_self().unwrap();
        assert!(s.rss_bytes > 1024 * 1024);
        assert!(s.threads >= 1);
        assert!(s.start_time_seconds > 1.0e9);
    }
}
