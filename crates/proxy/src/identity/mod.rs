//! Mesh identity: this proxy's workload certificate, and mTLS with other proxies.
//!
//! Every connection between two proxies is TLS 1.3 with client authentication, preferring
//! the hybrid post-quantum key exchange X25519MLKEM768. The client verifies that the server
//! presents exactly the SPIFFE ID discovery said the endpoint has (never a DNS name); the
//! server learns the client's SPIFFE ID from its certificate. ALPN says what the
//! connection carries, so the inbound side needs no second detection.
//!
//! - [`store`]: the certificate in use, swapped whole on renewal.
//! - [`verify`]: server verification by expected SPIFFE ID.
//! - [`accept`]: telling mesh TLS from an app's own TLS on the inbound side.
//! - [`certify`]: getting and renewing the certificate from the control plane.

pub mod accept;
pub mod certify;
pub mod store;
pub mod verify;

use crate::config::MtlsMode;
use crate::metrics::Direction;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use store::CertStore;

/// ALPN protocol of HTTP/2 between proxies (all HTTP but upgrades).
pub const ALPN_H2: &[u8] = b"tarmac.h2";
/// ALPN protocol of HTTP/1.1 between proxies: upgrades (WebSocket) and CONNECT.
pub const ALPN_HTTP1: &[u8] = b"tarmac.http1";
/// ALPN protocol of opaque TCP between proxies.
pub const ALPN_TCP: &[u8] = b"tarmac.tcp";

/// The process's TLS provider: aws-lc-rs, whose default groups put X25519MLKEM768 first.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// This proxy's TLS state: what it presents, what it trusts, and how it treats plaintext.
#[derive(Debug)]
pub struct MeshTls {
    pub certs: Arc<CertStore>,
    pub mode: MtlsMode,
    roots: Arc<RootCertStore>,
    server: Arc<ServerConfig>,
    /// Client configurations by (expected server identity, ALPN): each verifies its
    /// identity and keeps its own session cache, so a resumed session never skips
    /// verification of a different identity.
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
}

/// An expected server identity and an ALPN protocol.
type ClientKey = (Arc<str>, &'static [u8]);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {reason}")]
    Anchors { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

impl MeshTls {
    pub fn new(
        anchors_pem: &str,
        anchors_path: &str,
        certs: Arc<CertStore>,
        mode: MtlsMode,
    ) -> Result<Self, TlsSetupError> {
        let bad = |reason: String| TlsSetupError::Anchors { path: anchors_path.to_string(), reason };
        let mut roots = RootCertStore::empty();
        for der in tarmac_identity::ca::pem_certs(anchors_pem).map_err(|e| bad(e.to_string()))? {
            roots.add(der.into()).map_err(|e| bad(format!("not a usable trust anchor: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no CERTIFICATE blocks: the proxy would trust no peer".into()));
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certs.clone());
        server.alpn_protocols = [ALPN_H2, ALPN_HTTP1, ALPN_TCP].map(<[u8]>::to_vec).to_vec();
        // aws-lc seeds its random generator on first use from CPU timing jitter, which
        // takes tens of milliseconds (about 420 million instructions). Drawn here, at
        // start-up, that is not added to the first peer's handshake.
        provider()
            .secure_random
            .fill(&mut [0; 16])
            .map_err(|_| TlsSetupError::Rustls("the random generator failed".into()))?;
        Ok(Self { certs, mode, roots, server: Arc::new(server), clients: Mutex::default() })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The client configuration that accepts only a server proving `expected`.
    pub fn client_config(&self, expected: &Arc<str>, alpn: &'static [u8]) -> Arc<ClientConfig> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((expected.clone(), alpn))
            .or_insert_with(|| Arc::new(self.client(expected.clone(), alpn)))
            .clone()
    }

    fn client(&self, expected: Arc<str>, alpn: &[u8]) -> ClientConfig {
        let verifier = Arc::new(verify::ExpectedIdentity::new(expected, self.roots.clone()));
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by the provider")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.certs.clone());
        config.alpn_protocols = vec![alpn.to_vec()];
        // Names are not how peers are verified; sending none reveals nothing.
        config.enable_sni = false;
        config
    }

    /// The client configuration of the control channel: only a server proving `expected`
    /// (the control plane's ID), HTTP/2, and no session resumption. A resumed TLS 1.3
    /// session keeps the client authentication of the session it resumes, so the channel
    /// opened after bootstrap would go on as the certificate-less bootstrap connection was.
    pub fn control_client_config(&self, expected: Arc<str>) -> Arc<ClientConfig> {
        let mut config = self.client(expected, b"h2");
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// The `group` label: the key exchange a handshake negotiated.
pub fn group_name(conn: &rustls::CommonState) -> &'static str {
    use rustls::NamedGroup;
    match conn.negotiated_key_exchange_group().map(|g| g.name()) {
        Some(NamedGroup::X25519MLKEM768) => "X25519MLKEM768",
        Some(NamedGroup::X25519) => "X25519",
        Some(NamedGroup::secp256r1) => "secp256r1",
        Some(NamedGroup::secp384r1) => "secp384r1",
        Some(_) => "other",
        None => "",
    }
}

/// The `result` label of a failed handshake, from the error rustls reported.
pub fn handshake_failure(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    if error.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else { return "other" };
    match tls {
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "expired"
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "untrusted"
        }
        Error::InvalidCertificate(CertificateError::Other(other))
            if other.0.is::<verify::WrongIdentity>() =>
        {
            "wrong_identity"
        }
        Error::InvalidCertificate(CertificateError::Other(other)) if other.0.is::<verify::NoIdentity>() => {
            "no_identity"
        }
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::AlertReceived(
            rustls::AlertDescription::UnknownCA | rustls::AlertDescription::BadCertificate,
        ) => "untrusted",
        Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => "expired",
        _ => "other",
    }
}

/// What to tell the operator about a failed handshake.
pub fn handshake_advice(result: &str, direction: Direction) -> &'static str {
    match (result, direction) {
        ("untrusted", _) => {
            "the peer's certificate does not chain to this mesh's trust anchors: is it from another mesh or CA?"
        }
        ("expired", _) => {
            "a certificate has expired: check that proxies can reach the control plane to renew"
        }
        ("wrong_identity", _) => {
            "the endpoint proved another identity than discovery says it has: check the Service's endpoints and the workload's service account"
        }
        ("no_identity", _) => "the peer's certificate has no SPIFFE ID",
        ("no_client_certificate", _) => {
            "the client sent no certificate: only mesh proxies may speak mesh TLS"
        }
        ("timeout", _) => "the handshake did not finish in time",
        (_, Direction::Inbound) => {
            "the client is not a proxy of this mesh, or speaks TLS it does not support (TLS 1.3 only)"
        }
        (_, Direction::Outbound) => {
            "the endpoint is not a proxy of this mesh, or speaks TLS it does not support (TLS 1.3 only)"
        }
    }
}
