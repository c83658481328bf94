//! Reading identities and lifetimes back out of DER certificates.

use crate::SpiffeId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    #[error("the certificate has no SPIFFE ID (a spiffe:// URI SAN)")]
    NoSpiffeId,
    #[error("the certificate has {0} URI SANs; a workload certificate has exactly one")]
    ManyUris(usize),
    #[error(transparent)]
    Invalid(#[from] crate::spiffe::InvalidSpiffeId),
}

/// What the mesh needs to know of a certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    pub uris: Vec<String>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
        let uris = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(CertError::Parse(e.to_string())),
        };
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs as u64) } else { UNIX_EPOCH }
        };
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            is_ca: cert.is_ca(),
            uris,
        })
    }

    /// The workload identity: the one URI SAN, which must be a workload SPIFFE ID.
    pub fn spiffe_id(&self) -> Result<SpiffeId, CertError> {
        match self.uris.as_slice() {
            [] => Err(CertError::NoSpiffeId),
            [uri] => Ok(uri.parse()?),
            many => Err(CertError::ManyUris(many.len())),
        }
    }
}

/// The SPIFFE ID of a workload certificate.
pub fn spiffe_id(der: &[u8]) -> Result<SpiffeId, CertError> {
    CertInfo::parse(der)?.spiffe_id()
}
