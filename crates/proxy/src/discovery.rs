//! Following services through the control plane.
//!
//! One lazily connected gRPC channel per proxy; one `WatchService` stream per discovered
//! service. Each update replaces the service's endpoint set (endpoints that stay keep their
//! connections and load statistics) and its route table (see [`crate::route`]). When the stream fails the proxy keeps the last
//! endpoints it received, indefinitely (fail static), and reconnects with capped,
//! jittered backoff; the control plane resends the full state on the new stream.
//!
//! The workload's telemetry settings (`WatchTelemetry`: tracing and access logs) are
//! followed the same way, and applied as they change.
//!
//! The workload's own inbound policy is followed the same way (`WatchInbound`, see
//! [`crate::inbound::policy`]): kept while the control plane is away, and never opened
//! up for its absence.

use crate::config::{ControlConfig, DiscoverConfig};
use crate::endpoint::ConnectSettings;
use crate::http::handle::Handle;
use crate::identity::MeshTls;
use crate::inbound::policy::Policies;
use crate::outbound::logical::Logical;
use crate::telemetry::access_log::LogFormat;
use crate::telemetry::{Telemetry, TelemetryConfig};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tarmac_proto::discovery::discovery_client::DiscoveryClient;
use tarmac_proto::discovery::{
    AccessLogFormat, ProxyIdentity, TelemetryUpdate, WatchInboundRequest, WatchServiceRequest,
};
use tarmac_transport::host_port::HostPort;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A connection to the control plane, shared by all of a proxy's streams.
#[derive(Clone, Debug)]
pub struct ControlClient {
    channel: Channel,
    identity: ProxyIdentity,
}

impl ControlClient {
    /// Does not connect yet: the channel connects on first use and reconnects by itself.
    /// With `tls` (a proxy with a mesh identity) the control plane must prove the control
    /// plane's SPIFFE ID under the mesh's trust anchors, and the proxy presents its
    /// workload certificate when it has one; without, plaintext (a mesh without identity).
    pub fn new(config: &ControlConfig, tls: Option<&MeshTls>) -> Self {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", config.addr))
            .expect("an IP address or DNS name and a port make a valid URI authority")
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = match tls {
            Some(tls) => {
                // The trust domain the proxy asks its own identity in (setup_identity).
                let expected: Arc<str> =
                    tarmac_identity::control_plane_id(tarmac_identity::DEFAULT_TRUST_DOMAIN)
                        .expect("the default trust domain makes a valid SPIFFE ID")
                        .to_string()
                        .into();
                let tls = tls.control_client_config(expected);
                endpoint.connect_with_connector_lazy(TlsConnector { addr: config.addr.clone(), tls })
            }
            None => endpoint.connect_lazy(),
        };
        let identity = ProxyIdentity {
            namespace: config.namespace.clone(),
            workload: config.workload.clone(),
            service_account: config.service_account.clone(),
        };
        Self { channel, identity }
    }

    /// The channel, for the other control-plane APIs (identity).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Follows `discover` for `service` until `stop` is cancelled.
    pub async fn watch_service(
        self,
        discover: DiscoverConfig,
        service: Arc<Logical>,
        connect: ConnectSettings,
        stop: CancellationToken,
    ) {
        let request = WatchServiceRequest {
            proxy: Some(self.identity.clone()),
            service: discover.service.clone().unwrap_or_else(|| service.meta().name.to_string()),
            namespace: discover.namespace.clone(),
            port: u32::from(discover.port),
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut client = DiscoveryClient::new(self.channel.clone());
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = follow(&mut client, request.clone(), &service, &connect, discover.port, &mut backoff) => r,
            };
            if let Err(status) = result {
                tracing::warn!(
                    target = %service.meta().name,
                    error = %status.message(),
                    retry_in = ?backoff,
                    "control plane unreachable; keeping the last endpoints"
                );
            }
            let jitter = Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64 / 4));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

impl ControlClient {
    /// Follows the workload's inbound policy until `stop` is cancelled.
    pub async fn watch_inbound(self, policies: Arc<Policies>, stop: CancellationToken) {
        let request = WatchInboundRequest { proxy: Some(self.identity.clone()) };
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut client = DiscoveryClient::new(self.channel.clone());
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = follow_inbound(&mut client, request.clone(), &policies, &mut backoff) => r,
            };
            if let Err(status) = result {
                tracing::warn!(
                    error = %status.message(),
                    retry_in = ?backoff,
                    "control plane unreachable; keeping the last inbound policy{}",
                    if policies.ready() { "" } else { " (none yet: refusing what a `deny` default would)" }
                );
            }
            let jitter = Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64 / 4));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

impl ControlClient {
    /// Follows the workload's telemetry settings until `stop` is cancelled; while the
    /// control plane is away the last ones stay.
    pub async fn watch_telemetry(self, telemetry: Arc<Telemetry>, stop: CancellationToken) {
        let request = WatchInboundRequest { proxy: Some(self.identity.clone()) };
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut client = DiscoveryClient::new(self.channel.clone());
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = follow_telemetry(&mut client, request.clone(), &telemetry, &mut backoff) => r,
            };
            if let Err(status) = result {
                tracing::debug!(error = %status.message(), retry_in = ?backoff, "control plane unreachable; keeping the last telemetry settings");
            }
            let jitter = Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64 / 4));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

async fn follow_telemetry(
    client: &mut DiscoveryClient<Channel>,
    request: WatchInboundRequest,
    telemetry: &Telemetry,
    backoff: &mut Duration,
) -> Result<(), tonic::Status> {
    let mut stream = client.watch_telemetry(request).await?.into_inner();
    while let Some(update) = stream.message().await? {
        *backoff = BACKOFF_MIN;
        let settings = telemetry_from_pb(&update);
        tracing::info!(
            generation = update.generation,
            sampling_percent = settings.sampling_percent,
            collector = settings.collector.as_deref().unwrap_or("none"),
            access_log = ?settings.access_log,
            sources = ?update.sources,
            "telemetry updated"
        );
        telemetry.apply(&settings);
    }
    Err(tonic::Status::unavailable("the control plane closed the stream"))
}

/// The control plane's telemetry settings as the proxy's configuration says them.
pub fn telemetry_from_pb(update: &TelemetryUpdate) -> TelemetryConfig {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    TelemetryConfig {
        service_name: text(&update.service_name),
        sampling_percent: update.sampling_percent,
        collector: text(&update.collector),
        access_log: update.access_log.as_ref().map(|a| match AccessLogFormat::try_from(a.format) {
            Ok(AccessLogFormat::Common) => LogFormat::Common,
            _ => LogFormat::Json,
        }),
        access_log_path: None,
    }
}

async fn follow_inbound(
    client: &mut DiscoveryClient<Channel>,
    request: WatchInboundRequest,
    policies: &Policies,
    backoff: &mut Duration,
) -> Result<(), tonic::Status> {
    let mut stream = client.watch_inbound(request).await?.into_inner();
    while let Some(update) = stream.message().await? {
        *backoff = BACKOFF_MIN;
        if let Err(e) = policies.update(&update) {
            tracing::warn!(generation = update.generation, error = %e, "refusing an inbound policy update; keeping the previous policy");
        }
    }
    Err(tonic::Status::unavailable("the control plane closed the stream"))
}

async fn follow(
    client: &mut DiscoveryClient<Channel>,
    request: WatchServiceRequest,
    service: &Logical,
    connect: &ConnectSettings,
    service_port: u16,
    backoff: &mut Duration,
) -> Result<(), tonic::Status> {
    let mut stream = client.watch_service(request).await?.into_inner();
    while let Some(update) = stream.message().await? {
        *backoff = BACKOFF_MIN;
        service.update(&update, connect, service_port);
    }
    Err(tonic::Status::unavailable("the control plane closed the stream"))
}

/// Opens the channel's connections: TCP, then TLS verifying the control plane's identity.
#[derive(Clone)]
struct TlsConnector {
    addr: HostPort,
    tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr.clone(), self.tls.clone());
        Box::pin(async move {
            let timed_out = || {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to the control plane timed out")
            };
            // A name is resolved here, at every connection (HostPort).
            let tcp =
                tokio::time::timeout(CONNECT_TIMEOUT, addr.connect()).await.map_err(|_| timed_out())??;
            tcp.set_nodelay(true)?;
            // Verified by SPIFFE ID, not by name: the name only fills the API's slot.
            let name = match &addr {
                HostPort::Addr(addr) => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                HostPort::Name { host, .. } => rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            };
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT * 5,
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .map_err(|_| timed_out())??;
            Ok(TokioIo::new(stream))
        })
    }
}
