//! A proxy's side of identity: a private key that never leaves its memory, and the CSR
//! that asks the control plane to certify it.

use crate::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// An ECDSA P-256 key: small certificates, fast handshakes, supported everywhere.
pub struct WorkloadKey {
    key: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(..)")
    }
}

impl WorkloadKey {
    pub fn generate() -> Result<Self, rcgen::Error> {
        Ok(Self { key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)? })
    }

    /// A key read from PKCS#8 PEM (statically configured certificates).
    pub fn from_pem(pem: &str) -> Result<Self, rcgen::Error> {
        Ok(Self { key: KeyPair::from_pem(pem)? })
    }

    /// A CSR for `id`, signed with this key (the proof that the requester holds it). The CA
    /// decides the identity from the requester's credentials; the SAN here is a courtesy.
    pub fn csr_der(&self, id: &SpiffeId) -> Result<Vec<u8>, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        Ok(params.serialize_request(&self.key)?.der().to_vec())
    }

    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// PKCS#8 PEM, for files (`identity.certificate.key`).
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn public_key_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.key.subject_public_key_info()
    }
}
