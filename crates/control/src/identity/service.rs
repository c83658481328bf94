//! The `Identity` gRPC service: CSR in, workload certificate out.

use super::authenticate::{AuthError, Authenticator, Credential, WorkloadIdentity};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tarmac_identity::SpiffeId;
use tarmac_identity::ca::SharedCa;
use tarmac_proto::identity::certify_request::Proof;
use tarmac_proto::identity::identity_server::{Identity, IdentityServer};
use tarmac_proto::identity::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};

/// Certificates issued and requests refused, by reason; shown by `tarmac check`.
#[derive(Debug, Default)]
pub struct IdentityStats {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl IdentityStats {
    fn count(&self, outcome: &'static str) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry(outcome).or_default() += 1;
    }

    /// `issued`, or the reason of a refusal, with how often each happened.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Whether an identity is still one the configuration runs.
pub type Wanted = Arc<dyn Fn(&WorkloadIdentity) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct IdentityService {
    ca: Arc<SharedCa>,
    trust_domain: String,
    authenticator: Arc<dyn Authenticator>,
    lifetime: Duration,
    /// Absent: every identity the proof gives is served.
    wanted: Option<Wanted>,
    pub stats: Arc<IdentityStats>,
}

/// Who a request proves to be, and the one-time credential to spend if it is served.
struct Identified {
    id: SpiffeId,
    token: Option<String>,
}

fn auth_status(e: &AuthError) -> Status {
    match e.is_retryable() {
        // The proxy retries UNAVAILABLE with backoff, and gives up on PERMISSION_DENIED.
        true => Status::unavailable(e.to_string()),
        false => Status::permission_denied(e.to_string()),
    }
}

impl IdentityService {
    pub fn new(
        ca: Arc<SharedCa>,
        trust_domain: &str,
        authenticator: Arc<dyn Authenticator>,
        lifetime: Duration,
    ) -> Self {
        Self {
            ca,
            trust_domain: trust_domain.to_string(),
            authenticator,
            lifetime,
            wanted: None,
            stats: Arc::default(),
        }
    }

    /// Serves only identities `wanted` says the configuration still runs: a certificate
    /// of a Workload removed from the configuration (or a proof taken from it) cannot
    /// be renewed into a new one.
    pub fn serving_only(mut self, wanted: Wanted) -> Self {
        self.wanted = Some(wanted);
        self
    }

    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }

    /// Who the request proves to be, or why it proves nothing. Spends nothing: a
    /// one-time token comes back to be spent once the certificate is ready.
    async fn identify(&self, csr: &[u8], proof: Option<Proof>) -> Result<Identified, (&'static str, Status)> {
        let identified = match proof {
            None => {
                return Err((
                    "no_proof",
                    Status::unauthenticated(
                        "no proof of identity: send a bootstrap token, a ServiceAccount token or the current certificate",
                    ),
                ));
            }
            Some(Proof::Token(token)) => {
                let who = self
                    .authenticator
                    .authenticate(Credential::BootstrapToken(&token))
                    .await
                    .map_err(|e| (e.reason(), auth_status(&e)))?;
                let id = SpiffeId::new(&self.trust_domain, &who.namespace, &who.service_account)
                    .map_err(|e| ("invalid_identity", Status::invalid_argument(e.to_string())))?;
                // A CSR that cannot be signed must not burn the token: whoever sent it
                // (a bug, or someone racing the real proxy with garbage) would otherwise
                // lock the replica out of its identity.
                self.ca
                    .current()
                    .check_csr(csr)
                    .map_err(|e| ("bad_csr", Status::invalid_argument(e.to_string())))?;
                Identified { id, token: Some(token) }
            }
            Some(Proof::ServiceAccountToken(proof)) => {
                let who = self
                    .authenticator
                    .authenticate(Credential::ServiceAccountToken(&proof.token))
                    .await
                    .map_err(|e| (e.reason(), auth_status(&e)))?;
                // The identity is the token's, never the claim's; a claim that differs
                // is a proxy configured as someone else (or a stolen token) and is refused
                // rather than quietly certified as the token's service account.
                if who.namespace != proof.namespace || who.service_account != proof.service_account {
                    return Err((
                        "claim_mismatch",
                        Status::permission_denied(format!(
                            "the ServiceAccount token is of {}/{}, but the proxy claims {}/{} (`control.namespace`, `control.service_account`)",
                            who.namespace, who.service_account, proof.namespace, proof.service_account
                        )),
                    ));
                }
                let id = SpiffeId::new(&self.trust_domain, &who.namespace, &who.service_account)
                    .map_err(|e| ("invalid_identity", Status::invalid_argument(e.to_string())))?;
                Identified { id, token: None }
            }
            Some(Proof::CurrentCertificate(cert)) => {
                Identified { id: self.renewal_identity(csr, &cert)?, token: None }
            }
        };
        if let Some(wanted) = &self.wanted {
            let who = WorkloadIdentity {
                namespace: identified.id.namespace.clone(),
                service_account: identified.id.service_account.clone(),
            };
            if !wanted(&who) {
                return Err((
                    "not_configured",
                    Status::permission_denied(format!(
                        "{} is not the identity of any Workload in the configuration any more: no certificate for it",
                        identified.id
                    )),
                ));
            }
        }
        Ok(identified)
    }

    /// A renewal: the current certificate must be ours, still valid, and for the CSR's key.
    fn renewal_identity(&self, csr: &[u8], cert: &[u8]) -> Result<SpiffeId, (&'static str, Status)> {
        use rustls::pki_types::{CertificateDer, UnixTime};
        let refuse = |reason, msg: String| Err((reason, Status::permission_denied(msg)));
        let end_entity = CertificateDer::from(cert);
        let parsed = match rustls::server::ParsedCertificate::try_from(&end_entity) {
            Ok(p) => p,
            Err(e) => {
                return refuse("bad_certificate", format!("the current certificate does not parse: {e}"));
            }
        };
        // Issuers the CA rotated away from still link a certificate they issued to the
        // anchors: such a certificate renews into one of the current issuer.
        let intermediates: Vec<CertificateDer<'_>> =
            self.ca.known_issuers_der().into_iter().map(CertificateDer::from).collect();
        let mut anchors = rustls::RootCertStore::empty();
        for der in tarmac_identity::ca::pem_certs(self.ca.current().anchors_pem()).unwrap_or_default() {
            // The CA checked its anchors when it loaded them.
            let _ = anchors.add(der.into());
        }
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        if let Err(e) = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &anchors,
            &intermediates,
            UnixTime::now(),
            algs.all,
        ) {
            return refuse(
                "untrusted_certificate",
                format!(
                    "the current certificate is not valid under this mesh's trust anchors ({e}); an expired proxy must be restarted to bootstrap again"
                ),
            );
        }
        if spki(cert) != csr_spki(csr) {
            return refuse("key_mismatch", "the CSR's key is not the key of the current certificate".into());
        }
        match tarmac_identity::x509::spiffe_id(cert) {
            Ok(id) if id.trust_domain == self.trust_domain => Ok(id),
            Ok(id) => {
                refuse("foreign_trust_domain", format!("{id} is not in trust domain {}", self.trust_domain))
            }
            Err(e) => refuse("no_identity", e.to_string()),
        }
    }
}

fn spki(cert: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert).ok().map(|(_, c)| c.tbs_certificate.subject_pki.raw.to_vec())
}

fn csr_spki(csr: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    X509CertificationRequest::from_der(csr)
        .ok()
        .map(|(_, c)| c.certification_request_info.subject_pki.raw.to_vec())
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.remote_addr();
        let CertifyRequest { csr, proof } = request.into_inner();
        let refuse = |reason: &'static str, status: Status| {
            self.stats.count(reason);
            tracing::warn!(?peer, reason, error = status.message(), "certificate request refused");
            Err(status)
        };
        let Identified { id, token } = match self.identify(&csr, proof).await {
            Ok(identified) => identified,
            Err((reason, status)) => return refuse(reason, status),
        };
        match self.ca.current().issue(&csr, &id, self.lifetime) {
            Ok(issued) => {
                // Spent only now, atomically: of two requests racing with one token, one
                // gets a certificate and the other is refused.
                if let Some(token) = token
                    && let Err(e) = self.authenticator.redeem(Credential::BootstrapToken(&token))
                {
                    return refuse(e.reason(), auth_status(&e));
                }
                self.stats.count("issued");
                tracing::info!(%id, not_after = ?issued.not_after, "certificate issued");
                Ok(Response::new(CertifyResponse {
                    identity: id.to_string(),
                    leaf: issued.leaf_der,
                    intermediates: issued.chain_der,
                    not_after_unix: issued.not_after.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
                        as i64,
                }))
            }
            Err(e) => {
                self.stats.count("bad_csr");
                tracing::warn!(?peer, %id, error = %e, "certificate request refused");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}
