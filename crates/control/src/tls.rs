//! The control plane's servers that present a certificate it issues itself (the gRPC API,
//! the admission webhook): one way to turn the CA's PEM into a rustls key, one error.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use tarmac_identity::ca::{CaError, PemError};

/// Why a server's TLS settings cannot be made. Each variant names the file or the
/// certificate concerned, since an operator fixes one of those.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: cannot issue it: {source}")]
    Issue { what: &'static str, source: CaError },
    #[error("{what}: {source}")]
    Certificates { what: String, source: PemError },
    #[error("{what}: no CERTIFICATE in it")]
    NoCertificate { what: String },
    #[error("{what}: {source}")]
    Pem { what: String, source: rustls::pki_types::pem::Error },
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("the trust anchors cannot verify clients: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the control plane's identity: {0}")]
    Identity(#[from] tarmac_identity::spiffe::InvalidSpiffeId),
}

/// A certified key from a PEM chain and key as [`tarmac_identity::ca::Ca`] issues them.
pub(crate) fn certified_key(
    what: &'static str,
    chain_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = tarmac_identity::ca::pem_certs(chain_pem)
        .map_err(|source| TlsError::Certificates { what: what.to_string(), source })?
        .into_iter()
        .map(Into::into)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|source| TlsError::Pem { what: format!("{what}'s key"), source })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Rustls { what: what.to_string(), source })?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// TLS 1.3 only, with `provider`: the mesh's own servers speak nothing older.
pub(crate) fn tls13(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TlsError> {
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "TLS 1.3".to_string(), source })
}
