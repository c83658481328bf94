//! Simulated proxies: what a sidecar does towards the control plane, and nothing else.
//!
//! Each gets its workload certificate as `tarmac-proxy` does (the proxy's own
//! `Certifier`: a CSR with its ServiceAccount token, which the control plane has the API
//! server review, over TLS verifying the control
//! plane's SPIFFE ID, then renewals proven with the current certificate), and opens the
//! discovery streams a sidecar opens, over a second channel that presents that
//! certificate: `WatchInbound` and `WatchTelemetry` for its own workload, and one
//! `WatchService` per service its workload calls. Every update is handed to the ledger
//! when it arrives. No listener, no traffic: thousands share one runtime.

use super::cluster::{SERVICE_PORT, state_of};
use super::ledger::Ledger;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarmac_proto::discovery::discovery_client::DiscoveryClient;
use tarmac_proto::discovery::{ProxyIdentity, WatchInboundRequest, WatchServiceRequest};
use tarmac_proto::identity::ServiceAccountToken;
use tarmac_proto::identity::certify_request::Proof;
use tarmac_proxy::config::ControlConfig;
use tarmac_proxy::discovery::ControlClient;
use tarmac_proxy::identity::MeshTls;
use tarmac_proxy::identity::certify::Certifier;
use tarmac_proxy::identity::store::CertStore;
use tarmac_proxy::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One simulated proxy: whose sidecar it is and what its workload calls.
#[derive(Clone, Debug)]
pub struct Plan {
    pub namespace: String,
    pub workload: String,
    pub token: String,
    /// `(namespace, service, ledger subscriber)` of each service called.
    pub calls: Vec<(String, String, usize)>,
}

/// What every proxy shares: where the control plane is, the mesh's anchors, the
/// ledger, and the counters the report reads.
pub struct Shared {
    pub control: SocketAddr,
    pub anchors_pem: String,
    pub ledger: Mutex<Ledger>,
    /// One registry for all, so that certificate requests are counted together.
    pub metrics: Arc<Metrics>,
    pub stop: CancellationToken,
    pub certified: AtomicUsize,
    pub bootstrap_failures: AtomicUsize,
    /// Streams that have had their first update.
    pub streams_synced: AtomicUsize,
    pub stream_errors: AtomicU64,
    pub updates: AtomicU64,
    pub bootstrap_errors: Mutex<Vec<String>>,
    pub stream_error_samples: Mutex<Vec<String>>,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Certificates issued and refused so far (bootstraps and renewals), from the
    /// proxies' own `tarmac_identity_certificate_requests_total`.
    pub fn certificate_requests(&self) -> (u64, u64) {
        let text = self.metrics.encode();
        let count = |result: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with("tarmac_identity_certificate_requests_total"))
                .filter(|l| l.contains(&format!("result=\"{result}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        (count("issued"), count("failed") + count("refused") + count("invalid"))
    }
}

/// Runs one proxy until `shared.stop`.
pub async fn run(plan: Plan, shared: Arc<Shared>) {
    let certs = Arc::new(CertStore::default());
    let tls = match MeshTls::new(&shared.anchors_pem, "the bench's CA", certs.clone(), Default::default()) {
        Ok(tls) => tls,
        Err(e) => return bootstrap_failed(&shared, e.to_string()),
    };
    // The proxy's own client of the control plane (TLS verifying its SPIFFE ID). As the
    // proxy: the bootstrap call presents no certificate, so it has a channel of its own,
    // kept for renewals; discovery's channel connects once the certificate is in.
    let control = ControlConfig {
        addr: shared.control.into(),
        namespace: plan.namespace.clone(),
        workload: plan.workload.clone(),
        service_account: plan.workload.clone(),
    };
    let identity_channel = ControlClient::new(&control, Some(&tls)).channel();
    let requested = match tarmac_identity::SpiffeId::new(
        tarmac_identity::DEFAULT_TRUST_DOMAIN,
        &plan.namespace,
        &plan.workload,
    ) {
        Ok(id) => id,
        Err(e) => return bootstrap_failed(&shared, e.to_string()),
    };
    let mut certifier = match Certifier::new(identity_channel, requested, certs, shared.metrics.clone()) {
        Ok(c) => c,
        Err(e) => return bootstrap_failed(&shared, e.to_string()),
    };
    let bootstrapped = tokio::select! {
        _ = shared.stop.cancelled() => return,
        result = certifier.bootstrap(|| Ok(Proof::ServiceAccountToken(ServiceAccountToken {
            token: plan.token.clone(),
            namespace: plan.namespace.clone(),
            service_account: plan.workload.clone(),
        }))) => result,
    };
    if let Err(e) = bootstrapped {
        return bootstrap_failed(&shared, e.to_string());
    }
    shared.certified.fetch_add(1, Ordering::Relaxed);
    let stop = shared.stop.clone();
    tokio::spawn(async move {
        if let Err(e) = certifier.renew_forever(stop).await {
            tracing::warn!("a simulated proxy's certificate expired: {e}");
        }
    });

    let discovery = ControlClient::new(&control, Some(&tls)).channel();
    let proxy = ProxyIdentity {
        namespace: plan.namespace.clone(),
        workload: plan.workload.clone(),
        service_account: plan.workload.clone(),
    };
    let mut streams = tokio::task::JoinSet::new();
    for which in [Workload::Inbound, Workload::Telemetry] {
        let client = DiscoveryClient::new(discovery.clone());
        let request = WatchInboundRequest { proxy: Some(proxy.clone()) };
        streams.spawn(follow_workload(client, request, which, shared.clone()));
    }
    for (namespace, service, subscriber) in plan.calls {
        let client = DiscoveryClient::new(discovery.clone());
        let request = WatchServiceRequest {
            proxy: Some(proxy.clone()),
            service,
            namespace,
            port: u32::from(SERVICE_PORT),
        };
        streams.spawn(follow_service(client, request, subscriber, shared.clone()));
    }
    while streams.join_next().await.is_some() {}
}

fn bootstrap_failed(shared: &Shared, error: String) {
    shared.bootstrap_failures.fetch_add(1, Ordering::Relaxed);
    let mut samples = shared.bootstrap_errors.lock().unwrap_or_else(|e| e.into_inner());
    if samples.len() < 5 {
        samples.push(error);
    }
}

fn stream_failed(shared: &Shared, status: &tonic::Status) {
    shared.stream_errors.fetch_add(1, Ordering::Relaxed);
    let mut samples = shared.stream_error_samples.lock().unwrap_or_else(|e| e.into_inner());
    if samples.len() < 5 {
        samples.push(status.message().to_string());
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Inbound,
    Telemetry,
}

/// A `WatchService` stream, reopened after a failure as the proxy does.
async fn follow_service(
    mut client: DiscoveryClient<Channel>,
    request: WatchServiceRequest,
    subscriber: usize,
    shared: Arc<Shared>,
) {
    let mut first = true;
    let mut backoff = BACKOFF_MIN;
    loop {
        let follow = async {
            let mut stream = client.watch_service(request.clone()).await?.into_inner();
            while let Some(update) = stream.message().await? {
                let at = Instant::now();
                let state = state_of(update.endpoints.into_iter().map(|e| e.address));
                shared.ledger().received(subscriber, state, at);
                shared.updates.fetch_add(1, Ordering::Relaxed);
                if std::mem::take(&mut first) {
                    shared.streams_synced.fetch_add(1, Ordering::Relaxed);
                }
                backoff = BACKOFF_MIN;
            }
            Err(tonic::Status::unavailable("the control plane closed the stream"))
        };
        let result: Result<(), tonic::Status> = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = follow => r,
        };
        if let Err(status) = result {
            stream_failed(&shared, &status);
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A `WatchInbound` or `WatchTelemetry` stream.
async fn follow_workload(
    mut client: DiscoveryClient<Channel>,
    request: WatchInboundRequest,
    which: Workload,
    shared: Arc<Shared>,
) {
    let mut first = true;
    let mut backoff = BACKOFF_MIN;
    loop {
        let follow = async {
            let mut received = |shared: &Shared| {
                shared.updates.fetch_add(1, Ordering::Relaxed);
                if std::mem::take(&mut first) {
                    shared.streams_synced.fetch_add(1, Ordering::Relaxed);
                }
            };
            match which {
                Workload::Inbound => {
                    let mut stream = client.watch_inbound(request.clone()).await?.into_inner();
                    while stream.message().await?.is_some() {
                        received(&shared);
                    }
                }
                Workload::Telemetry => {
                    let mut stream = client.watch_telemetry(request.clone()).await?.into_inner();
                    while stream.message().await?.is_some() {
                        received(&shared);
                    }
                }
            }
            Err::<(), _>(tonic::Status::unavailable("the control plane closed the stream"))
        };
        let result = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = follow => r,
        };
        if let Err(status) = result {
            stream_failed(&shared, &status);
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
