//! Following services through the control plane.
//!
//! One lazily connected gRPC channel per proxy; one `WatchService` stream per discovered
//! service. Each update replaces the service's endpoint set (endpoints that stay keep their
//! connections and load statistics) and its route table (see [`crate::route`]). When the stream fails the proxy keeps the last
//! endpoints it received, indefinitely (fail static), and reconnects with capped,
//! jittered backoff; the control plane resends the full state on the new stream.

use crate::config::{ControlConfig, DiscoverConfig};
use crate::endpoint::{ConnectSettings, Endpoint, EndpointSpec};
use crate::http::forward::{Destination, Forward};
use crate::route::RouteTable;
use std::sync::Arc;
use std::time::Duration;
use tarmac_proto::discovery::discovery_client::DiscoveryClient;
use tarmac_proto::discovery::{ProxyIdentity, ServiceUpdate, WatchServiceRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

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
    pub fn new(config: &ControlConfig) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", config.addr))
            .expect("a socket address is a valid URI authority")
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
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

    /// Follows `discover` for the service behind `forward` until `stop` is cancelled.
    pub async fn watch_service(
        self,
        discover: DiscoverConfig,
        forward: Arc<Forward>,
        connect: ConnectSettings,
        stop: CancellationToken,
    ) {
        let request = WatchServiceRequest {
            proxy: Some(self.identity.clone()),
            service: discover.service.clone().unwrap_or_else(|| forward.name.to_string()),
            namespace: discover.namespace.clone(),
            port: u32::from(discover.port),
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut client = DiscoveryClient::new(self.channel.clone());
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = follow(&mut client, request.clone(), &forward, &connect, discover.port, &mut backoff) => r,
            };
            if let Err(status) = result {
                tracing::warn!(
                    target = %forward.name,
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

async fn follow(
    client: &mut DiscoveryClient<Channel>,
    request: WatchServiceRequest,
    forward: &Forward,
    connect: &ConnectSettings,
    service_port: u16,
    backoff: &mut Duration,
) -> Result<(), tonic::Status> {
    let mut stream = client.watch_service(request).await?.into_inner();
    while let Some(update) = stream.message().await? {
        *backoff = BACKOFF_MIN;
        apply(update, forward, connect, service_port);
    }
    Err(tonic::Status::unavailable("the control plane closed the stream"))
}

fn apply(update: ServiceUpdate, forward: &Forward, connect: &ConnectSettings, service_port: u16) {
    let Destination::Balanced(balancer) = &forward.destination else { return };
    let mut endpoints = Vec::with_capacity(update.endpoints.len());
    for ep in &update.endpoints {
        match ep.address.parse() {
            Ok(addr) => endpoints.push(EndpointSpec {
                addr,
                meshed: ep.meshed,
                identity: (!ep.identity.is_empty()).then(|| ep.identity.as_str().into()),
            }),
            Err(_) => {
                tracing::warn!(target = %forward.name, address = %ep.address, "ignoring an endpoint with an invalid address")
            }
        }
    }
    tracing::info!(
        target = %forward.name,
        generation = update.generation,
        exists = update.exists,
        endpoints = endpoints.len(),
        "endpoints updated"
    );
    let make = |spec: EndpointSpec| Endpoint::new(spec, connect.clone(), (*forward.metrics).clone());
    balancer.update(endpoints, make);
    if update.routes.is_empty() {
        if balancer.routes.get().is_some() {
            tracing::info!(target = %forward.name, "routes removed");
        }
        balancer.routes.set(None);
        return;
    }
    let previous = balancer.routes.get();
    match RouteTable::build(&update.routes, service_port, previous.as_deref(), &make) {
        Ok(table) => {
            tracing::info!(target = %forward.name, routes = update.routes.len(), rules = table.rules.len(), "routes updated");
            balancer.routes.set(Some(table));
        }
        // The control plane validates routes; a proxy that still cannot use them keeps the
        // previous table whole rather than apply part of the new one.
        Err(e) => {
            tracing::warn!(target = %forward.name, error = %e, "refusing a route update; keeping the previous routes")
        }
    }
}
