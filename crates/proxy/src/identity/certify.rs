//! Getting the workload certificate from the control plane, and keeping it fresh.
//!
//! The key is generated here, in memory, once per process. The first request proves the
//! proxy's identity with its bootstrap token; renewals prove it with the current
//! certificate. Renewal starts at about 70 % of the certificate's life (with jitter, so
//! that proxies started together do not renew together) and is retried with backoff. A
//! proxy that cannot renew keeps serving with its certificate until it expires, and says
//! so in its logs and in `tarmac_identity_certificate_requests_total{result="failed"}`.
//! Once it has expired nothing can renew it (the CA refuses an expired certificate as
//! proof, and the bootstrap token was spent), so renewal gives up and the proxy exits for
//! its supervisor to start it again with a new token.

use super::store::{CertStore, Current};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tarmac_identity::SpiffeId;
use tarmac_identity::workload::WorkloadKey;
use tarmac_proto::identity::certify_request::Proof;
use tarmac_proto::identity::identity_client::IdentityClient;
use tarmac_proto::identity::{CertifyRequest, CertifyResponse};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long start-up waits for the first certificate before giving up.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the proxy got no workload certificate, or can no longer keep one.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot generate a key: {0}")]
    Key(Box<dyn std::error::Error + Send + Sync>),
    /// Final: the token was wrong, spent or expired.
    #[error("the control plane refused the bootstrap token: {0}")]
    Refused(String),
    /// The ServiceAccount token file (`identity.service_account_token`) cannot be read.
    #[error("cannot read the ServiceAccount token (`identity.service_account_token`) {path}: {source}")]
    ServiceAccountToken {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate after {BOOTSTRAP_TIMEOUT:?}: the control plane is unreachable ({0})")]
    Unreachable(String),
    /// Nothing can renew an expired certificate: the proxy exits for its supervisor.
    #[error(
        "the workload certificate EXPIRED and could not be renewed ({0}): peers refuse it now; check that the control plane is running"
    )]
    Expired(String),
}

/// Talks to the control plane's CA on behalf of one proxy.
pub struct Certifier {
    client: IdentityClient<Channel>,
    key: WorkloadKey,
    /// The identity asked for; the CA decides the one certified.
    requested: SpiffeId,
    certs: Arc<CertStore>,
    metrics: Arc<Metrics>,
}

impl Certifier {
    pub fn new(
        channel: Channel,
        requested: SpiffeId,
        certs: Arc<CertStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CertifyError> {
        let key = WorkloadKey::generate().map_err(|e| CertifyError::Key(e.into()))?;
        Ok(Self { client: IdentityClient::new(channel), key, requested, certs, metrics })
    }

    /// Gets the first certificate with `proof` (made again for every attempt: a
    /// ServiceAccount token file is read again, since the kubelet rotates it), retrying
    /// while the control plane is unreachable; a refusal is final.
    pub async fn bootstrap(
        &mut self,
        mut proof: impl FnMut() -> Result<Proof, CertifyError>,
    ) -> Result<Arc<Current>, CertifyError> {
        let deadline = tokio::time::Instant::now() + BOOTSTRAP_TIMEOUT;
        let mut backoff = RETRY_MIN;
        loop {
            match self.request(proof()?).await {
                Ok(current) => return Ok(current),
                Err(e) if is_refusal(&e) => return Err(CertifyError::Refused(e.message().to_string())),
                Err(e) if tokio::time::Instant::now() + backoff > deadline => {
                    return Err(CertifyError::Unreachable(e.message().to_string()));
                }
                Err(e) => {
                    tracing::info!(error = e.message(), retry_in = ?backoff, "waiting for the control plane to issue a certificate");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Renews before expiry, for as long as the proxy runs. Returns `Ok` when stopped, and
    /// the reason once the certificate has expired without being renewed.
    pub async fn renew_forever(mut self, stop: CancellationToken) -> Result<(), CertifyError> {
        loop {
            let Some(current) = self.certs.current() else { return Ok(()) };
            let wait = renewal_delay(current.installed, current.info.not_after, SystemTime::now());
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            let mut backoff = RETRY_MIN;
            loop {
                match self.request(Proof::CurrentCertificate(current.leaf_der.clone())).await {
                    Ok(_) => {
                        self.certs.renewal_succeeded();
                        break;
                    }
                    Err(e) => {
                        self.certs.renewal_failed(e.message().to_string());
                        let left =
                            current.info.not_after.duration_since(SystemTime::now()).unwrap_or_default();
                        if left.is_zero() {
                            return Err(CertifyError::Expired(e.message().to_string()));
                        } else {
                            tracing::warn!(
                                error = e.message(),
                                expires_in = ?left,
                                retry_in = ?backoff,
                                "certificate renewal failed; still serving with the current certificate until it expires"
                            );
                        }
                        // Retry sooner than the expiry, however long the backoff has grown.
                        let wait = backoff.min(left / 2).max(RETRY_MIN);
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }

    async fn request(&mut self, proof: Proof) -> Result<Arc<Current>, tonic::Status> {
        let csr = self
            .key
            .csr_der(&self.requested)
            .map_err(|e| tonic::Status::internal(format!("cannot build the CSR: {e}")))?;
        let result = self.client.certify(CertifyRequest { csr, proof: Some(proof) }).await;
        let response = match result {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.metrics.certificate_request(if is_refusal(&e) { "refused" } else { "failed" });
                return Err(e);
            }
        };
        match self.install(response) {
            Ok(current) => {
                self.metrics.certificate_request("issued");
                let expiry = current.info.not_after.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                self.metrics.cert_expiry.set(expiry as i64);
                tracing::info!(identity = %current.identity, serial = %current.info.serial, not_after = ?current.info.not_after, "workload certificate installed");
                Ok(current)
            }
            Err(e) => {
                self.metrics.certificate_request("invalid");
                Err(tonic::Status::internal(format!("the issued certificate is unusable: {e}")))
            }
        }
    }

    fn install(&self, response: CertifyResponse) -> Result<Arc<Current>, super::store::CertLoadError> {
        let chain = std::iter::once(response.leaf).chain(response.intermediates).collect();
        self.certs.install(chain, self.key.private_key_der())
    }
}

/// A refusal is an answer: retrying the same request cannot succeed.
fn is_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
    )
}

/// How long to wait before renewing: until 65-75 % of the certificate's remaining life
/// when it was installed.
fn renewal_delay(installed: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    let life = not_after.duration_since(installed).unwrap_or_default();
    let at = installed + life.mul_f64(0.65 + 0.10 * fastrand::f64());
    at.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_at_about_seventy_percent() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(100);
        for _ in 0..100 {
            let d = renewal_delay(start, end, start);
            assert!(d >= Duration::from_secs(65) && d <= Duration::from_secs(75), "{d:?}");
        }
        assert_eq!(renewal_delay(start, end, end), Duration::ZERO);
    }
}
