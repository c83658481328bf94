//! The OTLP/gRPC span exporter: requests put finished spans on a bounded queue without
//! waiting; one task takes them off in batches and sends each batch to the collector's
//! `TraceService/Export`, one batch at a time, each bounded in time. A slow or absent
//! collector fills the queue, and spans past it are dropped and counted
//! (`tarmac_trace_spans_dropped_total`): it costs spans, never a request's latency.
//!
//! Written with tonic and the OTLP messages generated into `tarmac-proto` rather than the
//! OpenTelemetry SDK: the proxy already links tonic for discovery, so this adds a few
//! hundred lines of generated code instead of the SDK's crates.

use super::SpanIds;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tarmac_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
use tarmac_proto::opentelemetry::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
use tarmac_proto::opentelemetry::proto::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use tarmac_proto::opentelemetry::proto::resource::v1::Resource;
use tarmac_proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Finished spans waiting for the exporter; past this, spans are dropped.
pub const QUEUE: usize = 2048;
/// Spans per export request at most.
const BATCH: usize = 512;
/// How long the first span of a batch waits for others before the batch goes.
const LINGER: Duration = Duration::from_millis(500);
/// One export, connection included; a batch that takes longer is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished span, as a request leaves it.
#[derive(Debug)]
pub struct SpanRecord {
    pub ids: SpanIds,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub error: bool,
    pub attributes: Vec<(&'static str, Value)>,
}

/// A collector's queue and the task that drains it; the task ends (after sending what it
/// holds) when the last handle is dropped.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    collector: String,
    service_name: String,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a collector address (host:port)")]
pub struct BadCollector(String);

/// The URI of a collector given as `host:port` (or with an `http://` scheme).
pub fn endpoint_uri(collector: &str) -> Option<http::Uri> {
    let text = if collector.contains("://") { collector.to_string() } else { format!("http://{collector}") };
    let uri: http::Uri = text.parse().ok()?;
    (uri.scheme_str() == Some("http") && uri.port().is_some() && uri.host().is_some_and(|h| !h.is_empty()))
        .then_some(uri)
}

impl Exporter {
    /// Starts the task for `collector`; must run on the proxy's runtime. Nothing is
    /// connected until the first batch.
    pub fn spawn(collector: &str, service_name: &str, metrics: Arc<Metrics>) -> Result<Self, BadCollector> {
        let uri = endpoint_uri(collector).ok_or_else(|| BadCollector(collector.to_string()))?;
        let channel = tonic::transport::Endpoint::from(uri)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        let (tx, rx) = mpsc::channel(QUEUE);
        let resource =
            Resource { attributes: vec![kv("service.name", Value::Str(service_name.to_string()))] };
        tokio::spawn(run(
            rx,
            TraceServiceClient::new(channel),
            resource,
            metrics.clone(),
            collector.to_string(),
        ));
        Ok(Self { tx, collector: collector.to_string(), service_name: service_name.to_string(), metrics })
    }

    pub fn collector(&self) -> &str {
        &self.collector
    }

    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Queues a finished span, or drops it (counted) when the queue is full.
    pub fn send(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.metrics.trace_spans_dropped.inc();
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<SpanRecord>,
    mut client: TraceServiceClient<Channel>,
    resource: Resource,
    metrics: Arc<Metrics>,
    collector: String,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![to_pb(first)];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => batch.push(to_pb(span)),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tarmac-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: batch,
                }],
            }],
        };
        // The channel's own timeout bounds the call; this one bounds it whatever the
        // transport does (a collector that accepts and never answers).
        match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(rsp)) => {
                let rejected = rsp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0));
                metrics.trace_spans_exported.inc_by(n.saturating_sub(rejected));
                metrics.trace_spans_dropped.inc_by(rejected.min(n));
                if failing {
                    tracing::info!(%collector, "the collector takes spans again");
                    failing = false;
                }
            }
            outcome => {
                metrics.trace_spans_dropped.inc_by(n);
                let error = match outcome {
                    Ok(Err(status)) => status.message().to_string(),
                    _ => format!("no answer within {EXPORT_TIMEOUT:?}"),
                };
                // Once per outage, not once per batch.
                if !failing {
                    tracing::warn!(%collector, %error, "cannot export spans; dropping them until the collector answers");
                    failing = true;
                }
            }
        }
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }) }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn to_pb(record: SpanRecord) -> Span {
    let method = record.attributes.iter().find_map(|(k, v)| match (k, v) {
        (&"http.request.method", Value::Str(m)) => Some(m.clone()),
        _ => None,
    });
    Span {
        trace_id: record.ids.trace_id.to_vec(),
        span_id: record.ids.span_id.to_vec(),
        trace_state: record.ids.tracestate.unwrap_or_default(),
        parent_span_id: record.ids.parent.map(|p| p.to_vec()).unwrap_or_default(),
        // Sampled.
        flags: 1,
        // The semantic conventions' name when no route template is known: the method.
        name: method.unwrap_or_else(|| "HTTP".into()),
        kind: match record.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: unix_nanos(record.start),
        end_time_unix_nano: unix_nanos(record.end),
        attributes: record.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: record
            .error
            .then(|| Status { message: String::new(), code: status::StatusCode::Error as i32 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_addresses() {
        assert!(endpoint_uri("127.0.0.1:4317").is_some());
        assert!(endpoint_uri("otel-collector.observability:4317").is_some());
        assert!(endpoint_uri("http://127.0.0.1:4317").is_some());
        assert!(endpoint_uri("127.0.0.1").is_none(), "a port is needed");
        assert!(endpoint_uri("https://127.0.0.1:4317").is_none(), "plaintext only");
        assert!(endpoint_uri("").is_none());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let metrics = Arc::new(Metrics::new());
        // A collector that never answers: the task holds its first batch while the
        // queue fills behind it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let exporter = Exporter::spawn(&addr, "web", metrics.clone()).unwrap();
        let span = || SpanRecord {
            ids: SpanIds { trace_id: [1; 16], span_id: [2; 8], parent: None, tracestate: None },
            kind: SpanKind::Client,
            start: SystemTime::now(),
            end: SystemTime::now(),
            error: false,
            attributes: Vec::new(),
        };
        let extra = 100;
        for _ in 0..QUEUE + BATCH + extra {
            exporter.send(span());
        }
        // The task took at most one batch off the queue; the rest queued or dropped.
        assert!(metrics.trace_spans_dropped.get() >= extra as u64, "{}", metrics.trace_spans_dropped.get());
        drop(listener);
    }
}
