//! Verifying a server by the SPIFFE ID it must have, not by a DNS name.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The endpoint presented a valid certificate for another workload.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint presented {presented}, but discovery says it is {expected}")]
pub struct WrongIdentity {
    pub expected: Arc<str>,
    pub presented: String,
}

/// The certificate chains to the anchors but carries no workload SPIFFE ID.
#[derive(Debug, thiserror::Error)]
#[error("the peer's certificate has no workload SPIFFE ID: {0}")]
pub struct NoIdentity(pub String);

/// Accepts a server whose chain leads to the mesh's anchors and whose one URI SAN is
/// exactly `expected`.
#[derive(Debug)]
pub struct ExpectedIdentity {
    expected: Arc<str>,
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ExpectedIdentity {
    pub fn new(expected: Arc<str>, roots: Arc<RootCertStore>) -> Self {
        Self { expected, roots, algorithms: super::provider().signature_verification_algorithms }
    }
}

impl ServerCertVerifier for ExpectedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let other = |e: Arc<dyn std::error::Error + Send + Sync>| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(e)))
        };
        match tarmac_identity::x509::spiffe_id(end_entity) {
            Ok(id) if *id.to_string() == *self.expected => Ok(ServerCertVerified::assertion()),
            Ok(id) => Err(other(Arc::new(WrongIdentity {
                expected: self.expected.clone(),
                presented: id.to_string(),
            }))),
            Err(e) => Err(other(Arc::new(NoIdentity(e.to_string())))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
