//! The certificate in use. Handshakes read it; renewal replaces it whole, so a handshake
//! sees either the old certificate or the new one, never a mix.

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tarmac_identity::x509::CertInfo;

/// The current certificate with what is shown of it (`/identity`, metrics, logs).
#[derive(Debug)]
pub struct Current {
    pub key: Arc<CertifiedKey>,
    pub leaf_der: Vec<u8>,
    pub info: CertInfo,
    pub identity: String,
    /// When it was put in use. CAs backdate `not_before` for clock skew, so renewal is
    /// timed from here.
    pub installed: SystemTime,
}

#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<Current>>>,
    /// Since when renewal has been failing, and the last error; `None` while it works.
    renewal_failure: std::sync::Mutex<Option<(SystemTime, String)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertLoadError {
    #[error("the certificate chain is empty")]
    Empty,
    #[error("the certificate: {0}")]
    Cert(#[from] tarmac_identity::x509::CertError),
    #[error("the private key: {0}")]
    Key(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
}

impl CertStore {
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a certificate chain (leaf first) and its key in use; returns what was installed.
    pub fn install(
        &self,
        chain: Vec<Vec<u8>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Current>, CertLoadError> {
        let leaf_der = chain.first().ok_or(CertLoadError::Empty)?.clone();
        let info = CertInfo::parse(&leaf_der)?;
        let identity = info.spiffe_id()?.to_string();
        let signing = super::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertLoadError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain.into_iter().map(CertificateDer::from).collect(), signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(CertLoadError::KeyMismatch),
            // Unknown: the provider cannot tell; the handshake will.
            Err(_) => {}
        }
        let current = Arc::new(Current {
            key: Arc::new(certified),
            leaf_der,
            info,
            identity,
            installed: SystemTime::now(),
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(current.clone());
        Ok(current)
    }

    /// Records a failed renewal attempt (keeping when the failures began).
    pub fn renewal_failed(&self, error: String) {
        let mut failure = self.renewal_failure.lock().unwrap_or_else(|e| e.into_inner());
        let since = failure.as_ref().map_or_else(SystemTime::now, |(since, _)| *since);
        *failure = Some((since, error));
    }

    pub fn renewal_succeeded(&self) {
        *self.renewal_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn renewal_failure(&self) -> Option<(SystemTime, String)> {
        self.renewal_failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why this certificate should no longer be routed to, if so: it has expired, or it
    /// is in the last stretch of its life (a tenth of it, at most a minute) while renewal
    /// keeps failing. Until then a control plane outage changes nothing (fail static).
    pub fn unfit(&self, now: SystemTime) -> Option<String> {
        let Some(current) = self.current() else {
            return Some("no workload certificate yet".into());
        };
        let not_after = current.info.not_after;
        let Ok(left) = not_after.duration_since(now) else {
            return Some("the workload certificate has expired and could not be renewed".into());
        };
        let life = not_after.duration_since(current.installed).unwrap_or_default();
        let margin = (life / 10).min(std::time::Duration::from_secs(60));
        match self.renewal_failure() {
            Some((_, error)) if left <= margin => Some(format!(
                "the workload certificate expires in {}s and renewal keeps failing: {error}",
                left.as_secs()
            )),
            _ => None,
        }
    }

    pub fn not_after(&self) -> Option<SystemTime> {
        self.current().map(|c| c.info.not_after)
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
