//! `tarmac bench --telemetry`: what tracing and access logs cost the request path. One
//! Tarmac hop in front of the built-in upstream as the suite runs it, against the same hop
//! starting a trace for [`SAMPLING_PERCENT`] of its requests (the generator sends no trace
//! context, so the proxy decides, as an outbound sidecar does for an app that does not
//! trace) and exporting the spans over OTLP/gRPC to a collector in this process, and
//! against the same hop writing a JSON access log line per request to a file.
//!
//! The collector answers each export at once and only counts its spans: what is measured
//! is the proxy's work (parsing trace headers, the sampling draw, building and encoding
//! spans, formatting and writing log lines), not a collector's. Every thread of the proxy
//! is counted, the exporter's and the log writer's included.

use super::topology::{self, Binaries, Route, Running, TopologyError, endpoint, tarmac_client_config};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tarmac_clikit::ports::free_port;
use tarmac_proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use tarmac_proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tarmac_proxy::telemetry::TelemetryConfig;
use tarmac_proxy::telemetry::access_log::LogFormat;
use tokio_util::sync::CancellationToken;

/// Share of the traced route's requests that start a trace.
pub const SAMPLING_PERCENT: f64 = 10.0;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
#[error("the benchmark's OTLP collector cannot listen on {addr}: {source}")]
pub struct SinkError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// An OTLP/gRPC trace collector that keeps nothing but the number of spans it was sent.
pub struct Sink {
    pub addr: SocketAddr,
    spans: Arc<AtomicU64>,
    stop: CancellationToken,
}

struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Sink {
    pub async fn start() -> Result<Self, SinkError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| SinkError { addr, source })?;
        let addr = listener.local_addr().map_err(|source| SinkError { addr, source })?;
        let spans = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Counter(spans.clone())))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "the benchmark's OTLP collector stopped");
            }
        });
        Ok(Self { addr, spans, stop })
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The telemetry `route` turns on: tracing to `collector`, or a JSON access log in `dir`.
fn telemetry(route: Route, collector: SocketAddr, dir: &Path) -> Option<TelemetryConfig> {
    match route {
        Route::TarmacTraced => Some(TelemetryConfig {
            service_name: Some("bench".to_string()),
            sampling_percent: SAMPLING_PERCENT,
            collector: Some(collector.to_string()),
            ..TelemetryConfig::default()
        }),
        Route::TarmacAccessLog => Some(TelemetryConfig {
            access_log: Some(LogFormat::Json),
            access_log_path: Some(dir.join("access.log").display().to_string()),
            ..TelemetryConfig::default()
        }),
        _ => None,
    }
}

/// Starts the proxy of a telemetry route in front of `upstream`, pinned to `core` if given.
pub async fn start(
    route: Route,
    upstream: SocketAddr,
    collector: SocketAddr,
    binaries: &Binaries,
    core: Option<usize>,
    dir: &Path,
) -> Result<Running, TopologyError> {
    let Some(telemetry) = telemetry(route, collector, dir) else {
        return topology::start(route, upstream, binaries, core, dir).await;
    };
    let (admin, listen) = (free_port()?, free_port()?);
    let config = tarmac_proxy::config::Config {
        telemetry: Some(telemetry),
        ..tarmac_client_config(admin, listen, endpoint(upstream, false))
    };
    let proxy =
        topology::start_tarmac(&route.label().replace([' ', '%'], "-"), &config, binaries, core, dir).await?;
    Ok(Running { route, entry: listen, proxies: vec![proxy] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_telemetry_routes_configurations_are_accepted_by_the_proxy() {
        let dir = Path::new("/tmp/bench");
        let collector = SocketAddr::from(([127, 0, 0, 1], 4317));
        for route in [Route::TarmacTraced, Route::TarmacAccessLog] {
            let config = tarmac_proxy::config::Config {
                telemetry: telemetry(route, collector, dir),
                ..tarmac_client_config(
                    SocketAddr::from(([127, 0, 0, 1], 1)),
                    SocketAddr::from(([127, 0, 0, 1], 2)),
                    endpoint(SocketAddr::from(([127, 0, 0, 1], 3)), false),
                )
            };
            let yaml = topology::tarmac_yaml(&config);
            tarmac_proxy::config::Config::from_yaml(&yaml, "bench.yaml").expect("accepted");
        }
        assert!(telemetry(Route::TarmacOneHop, collector, dir).is_none());
    }
}
