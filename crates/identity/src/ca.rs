//! The mesh's certificate authority: a trust anchor (root) and an issuer (intermediate)
//! that signs workload certificates.
//!
//! Generated on first use and kept in a directory (keys readable by the owner only), or
//! supplied by the user from their own PKI: a root and its key (Tarmac makes the issuer),
//! or an issuer with its key and the anchors it chains to. The directory holds:
//!
//! | file | what |
//! |---|---|
//! | `anchors.pem` | the trust anchors every proxy verifies peers against |
//! | `issuer.pem` | the issuer's certificate (and any intermediates up to the anchors) |
//! | `issuer.key` | the issuer's private key (PKCS#8, mode 0600) |
//! | `root.key` | the root's key, only when Tarmac generated the root (mode 0600) |

use crate::SpiffeId;
use crate::x509::CertInfo;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod server;
mod shared;

pub use shared::SharedCa;

pub const ANCHORS_FILE: &str = "anchors.pem";
pub const ISSUER_CERT_FILE: &str = "issuer.pem";
pub const ISSUER_KEY_FILE: &str = "issuer.key";
pub const ROOT_KEY_FILE: &str = "root.key";

/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated issuer.
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this far in the past so that small clock differences between
/// machines do not make a fresh certificate "not yet valid".
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("identity directory {dir} is incomplete: it has {present} but not {missing}")]
    Incomplete { dir: PathBuf, present: &'static str, missing: &'static str },
    #[error("cannot create certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CSR is not valid: {0}")]
    BadCsr(String),
    #[error("the issuer expired at {0:?}; renew it (see `tarmac identity`)")]
    IssuerExpired(SystemTime),
    #[error(
        "{path}: a CA key other users can read or change (mode {mode:o}) may already be someone else's; make it 0600 (`chmod 600`), or replace the CA if others could have copied it"
    )]
    LooseKey { path: PathBuf, mode: u32 },
}

/// A workload certificate and the chain that links it to the anchors.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf_der: Vec<u8>,
    /// Intermediates, issuer first; the anchors are not included.
    pub chain_der: Vec<Vec<u8>>,
    pub not_after: SystemTime,
}

/// The CA: the anchors, and the issuer that signs with its key. The key stays here.
pub struct Ca {
    anchors_pem: String,
    issuer_pem: String,
    issuer_chain_der: Vec<Vec<u8>>,
    issuer: Issuer<'static, KeyPair>,
    issuer_info: CertInfo,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("issuer", &self.issuer_info.subject).finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA kept in `dir`, or generates a new root and issuer there when the
    /// directory has none. Returns whether it was generated.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<(Self, bool), CaError> {
        let anchors = dir.join(ANCHORS_FILE);
        let issuer_cert = dir.join(ISSUER_CERT_FILE);
        let issuer_key = dir.join(ISSUER_KEY_FILE);
        match (anchors.exists(), issuer_cert.exists(), issuer_key.exists()) {
            (true, true, true) => {
                for key in [issuer_key.clone(), dir.join(ROOT_KEY_FILE)] {
                    check_private(&key)?;
                }
                let ca = Self::from_issuer(&read(&anchors)?, &read(&issuer_cert)?, &read(&issuer_key)?)
                    .map_err(|e| relabel(e, &issuer_cert))?;
                Ok((ca, false))
            }
            (false, false, false) => {
                let (root_pem, root_key) = generate_root(trust_domain)?;
                let ca = Self::from_root(&root_pem, &root_key.serialize_pem(), trust_domain)?;
                // Written aside and renamed into place whole: two `tarmac up` starting at
                // once must not mix one's anchors with the other's issuer.
                let staging = dir.with_extension(format!("new-{}", std::process::id()));
                ca.save(&staging, Some(&root_key.serialize_pem()))?;
                match fs::rename(&staging, dir) {
                    Ok(()) => Ok((ca, true)),
                    Err(_) if dir.join(ISSUER_KEY_FILE).exists() => {
                        let _ = fs::remove_dir_all(&staging);
                        Self::load_or_generate(dir, trust_domain)
                    }
                    Err(source) => Err(CaError::Io { path: dir.to_path_buf(), source }),
                }
            }
            (a, c, k) => {
                let name = |p: bool, n: &'static str| if p { Some(n) } else { None };
                let present = [name(a, ANCHORS_FILE), name(c, ISSUER_CERT_FILE), name(k, ISSUER_KEY_FILE)];
                let missing = [name(!a, ANCHORS_FILE), name(!c, ISSUER_CERT_FILE), name(!k, ISSUER_KEY_FILE)];
                Err(CaError::Incomplete {
                    dir: dir.to_path_buf(),
                    present: present.into_iter().flatten().next().unwrap_or(""),
                    missing: missing.into_iter().flatten().next().unwrap_or(""),
                })
            }
        }
    }

    /// A CA from the user's root: Tarmac generates an issuer signed by it. The root
    /// certificate becomes the only anchor.
    pub fn from_root(root_pem: &str, root_key_pem: &str, trust_domain: &str) -> Result<Self, CaError> {
        let root_key = KeyPair::from_pem(root_key_pem)?;
        let root = Issuer::from_ca_cert_pem(root_pem, root_key)?;
        let issuer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(&format!("Tarmac issuer for {trust_domain}"), ISSUER_LIFETIME, 0);
        params.serial_number = Some(random_serial());
        let issuer_cert = params.signed_by(&issuer_key, &root)?;
        Self::from_issuer(root_pem, &issuer_cert.pem(), &issuer_key.serialize_pem())
    }

    /// A CA from an issuer certificate (followed by any intermediates), its key, and the
    /// anchors it chains to.
    pub fn from_issuer(anchors_pem: &str, issuer_pem: &str, issuer_key_pem: &str) -> Result<Self, CaError> {
        let invalid = |what: &str, reason: String| CaError::Invalid { path: PathBuf::from(what), reason };
        let anchors = pem_certs(anchors_pem).map_err(|e| invalid("anchors", e.to_string()))?;
        if anchors.is_empty() {
            return Err(invalid("anchors", "no CERTIFICATE blocks".into()));
        }
        let chain = pem_certs(issuer_pem).map_err(|e| invalid("issuer certificate", e.to_string()))?;
        let Some(issuer_der) = chain.first() else {
            return Err(invalid("issuer certificate", "no CERTIFICATE blocks".into()));
        };
        let issuer_info =
            CertInfo::parse(issuer_der).map_err(|e| invalid("issuer certificate", e.to_string()))?;
        if !issuer_info.is_ca {
            return Err(invalid(
                "issuer certificate",
                "it is not a CA certificate (basicConstraints CA:TRUE)".into(),
            ));
        }
        let key = KeyPair::from_pem(issuer_key_pem).map_err(|e| invalid("issuer key", e.to_string()))?;
        if !key_matches(issuer_der, &key) {
            return Err(invalid("issuer key", "it is not the key of the issuer certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&issuer_der.clone().into(), key)?;
        Ok(Self {
            anchors_pem: anchors_pem.to_string(),
            issuer_pem: issuer_pem.to_string(),
            issuer_chain_der: chain,
            issuer,
            issuer_info,
        })
    }

    /// Writes the CA into `dir` (created with mode 0700); keys get mode 0600.
    pub fn save(&self, dir: &Path, root_key_pem: Option<&str>) -> Result<(), CaError> {
        create_private_dir(dir)?;
        write_file(&dir.join(ANCHORS_FILE), &self.anchors_pem, 0o644)?;
        write_file(&dir.join(ISSUER_CERT_FILE), &self.issuer_pem, 0o644)?;
        write_file(&dir.join(ISSUER_KEY_FILE), &self.issuer.key().serialize_pem(), 0o600)?;
        if let Some(root_key) = root_key_pem {
            write_file(&dir.join(ROOT_KEY_FILE), root_key, 0o600)?;
        }
        Ok(())
    }

    pub fn anchors_pem(&self) -> &str {
        &self.anchors_pem
    }

    pub fn issuer_pem(&self) -> &str {
        &self.issuer_pem
    }

    /// The issuer's private key (PEM): for writing the CA somewhere other than a directory
    /// (`tarmac install`'s Secret), never for logging.
    pub fn issuer_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The issuer's certificate, then any intermediates up to the anchors.
    pub fn issuer_chain_der(&self) -> &[Vec<u8>] {
        &self.issuer_chain_der
    }

    pub fn issuer_info(&self) -> &CertInfo {
        &self.issuer_info
    }

    /// Checks that `csr_der` is a CSR this CA would sign: it parses, and its signature
    /// proves the requester holds its key. Done before a one-time credential is spent on it.
    pub fn check_csr(&self, csr_der: &[u8]) -> Result<(), CaError> {
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map(|_| ())
            .map_err(|e| CaError::BadCsr(e.to_string()))
    }

    /// Signs a workload certificate for `id` with the public key of `csr_der`. Only the
    /// key is taken from the CSR (after checking its signature, which proves the requester
    /// holds the key): names, usages and lifetime are the CA's.
    pub fn issue(&self, csr_der: &[u8], id: &SpiffeId, lifetime: Duration) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let now = SystemTime::now();
        if self.issuer_info.not_after <= now {
            return Err(CaError::IssuerExpired(self.issuer_info.not_after));
        }
        let not_after = (now + lifetime).min(self.issuer_info.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let signing = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let leaf = signing.signed_by(&self.issuer)?;
        Ok(Issued { leaf_der: leaf.der().to_vec(), chain_der: self.issuer_chain_der.clone(), not_after })
    }
}

impl Ca {
    /// Checks that what this CA issues is trusted by its own anchors: a short-lived
    /// certificate is issued to a throwaway key and verified, as a proxy verifies its
    /// peers, against the anchors through the issuer's chain (signatures, CA constraints,
    /// path length, validity now). An imported issuer that belongs to another root, or
    /// whose intermediates are missing, is refused here instead of every mTLS handshake
    /// failing later.
    pub fn check_chains_to_anchors(&self) -> Result<(), CaError> {
        use rustls::pki_types::{CertificateDer, UnixTime};
        let refused = |reason: String| CaError::Invalid {
            path: PathBuf::from("issuer certificate"),
            reason: format!("it does not chain to the trust anchors: {reason}"),
        };
        let mut roots = rustls::RootCertStore::empty();
        for der in pem_certs(&self.anchors_pem).map_err(|e| refused(e.to_string()))? {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| refused(format!("an anchor is unusable: {e}")))?;
        }
        let probe = SpiffeId::new(crate::DEFAULT_TRUST_DOMAIN, "tarmac", "chain-check")
            .map_err(|e| refused(e.to_string()))?;
        let key = crate::workload::WorkloadKey::generate()?;
        let issued = self.issue(&key.csr_der(&probe)?, &probe, Duration::from_secs(60))?;
        let leaf = CertificateDer::from(issued.leaf_der);
        let intermediates: Vec<CertificateDer<'_>> =
            issued.chain_der.into_iter().map(CertificateDer::from).collect();
        let parsed =
            rustls::server::ParsedCertificate::try_from(&leaf).map_err(|e| refused(e.to_string()))?;
        let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &intermediates,
            UnixTime::now(),
            algorithms.all,
        )
        .map_err(|e| refused(e.to_string()))
    }

    /// A key generated here and a certificate for it, both PEM (the chain after the
    /// leaf): for proxies configured with files instead of the control plane, such as
    /// `tarmac bench`'s and tests'.
    pub fn issue_with_new_key(&self, id: &SpiffeId, lifetime: Duration) -> Result<(String, String), CaError> {
        let key = crate::workload::WorkloadKey::generate()?;
        let issued = self.issue(&key.csr_der(id)?, id, lifetime)?;
        let chain =
            std::iter::once(issued.leaf_der.as_slice()).chain(issued.chain_der.iter().map(Vec::as_slice));
        Ok((certs_pem(chain), key.private_key_pem()))
    }
}

/// A self-signed root for `trust_domain`, and its key.
pub fn generate_root(trust_domain: &str) -> Result<(String, KeyPair), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(&format!("Tarmac trust anchor for {trust_domain}"), ROOT_LIFETIME, 1);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key))
}

fn ca_params(common_name: &str, lifetime: Duration, path_len: u8) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tarmac");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
    params
}

/// 128 random bits, as CAs use: serials must not repeat, even for the same key.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system random source works");
    // Positive and without a leading zero byte, as DER integers for serials must be.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn key_matches(cert_der: &[u8], key: &KeyPair) -> bool {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert_der)
        .map(|(_, c)| c.tbs_certificate.subject_pki.raw == key.subject_public_key_info().as_slice())
        .unwrap_or(false)
}

/// PEM text that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad PEM: {0}")]
pub struct PemError(#[from] rustls::pki_types::pem::Error);

/// Every CERTIFICATE block of a PEM text, as DER.
pub fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, PemError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| Ok(c?.to_vec())).collect()
}

/// PEM text of DER certificates.
pub fn certs_pem<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter().map(|d| pem_block("CERTIFICATE", d)).collect()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Refuses a key file that a group or other users can access (a missing one is fine:
/// the root's key is optional).
fn check_private(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    match fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            Err(CaError::LooseKey { path: path.to_path_buf(), mode: meta.permissions().mode() & 0o777 })
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CaError::Io { path: path.to_path_buf(), source }),
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io { path: path.to_path_buf(), source })
}

fn relabel(e: CaError, path: &Path) -> CaError {
    match e {
        CaError::Invalid { path: what, reason } => {
            CaError::Invalid { path: path.to_path_buf(), reason: format!("{}: {reason}", what.display()) }
        }
        other => other,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| CaError::Io { path: dir.to_path_buf(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io { path: path.to_path_buf(), source };
    // Written aside and renamed, so that a crash never leaves half a key; created with its
    // final mode, so that a key is never readable by others even for a moment.
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadKey;

    #[test]
    fn issues_spiffe_leaf_with_the_csr_key_only() {
        let (root_pem, root_key) = generate_root("cluster.local").unwrap();
        let ca = Ca::from_root(&root_pem, &root_key.serialize_pem(), "cluster.local").unwrap();
        let key = WorkloadKey::generate().unwrap();
        // The CSR asks for another identity; the CA certifies the one it was told.
        let asked = SpiffeId::new("cluster.local", "other", "admin").unwrap();
        let id = SpiffeId::new("cluster.local", "shop", "books").unwrap();
        let issued = ca.issue(&key.csr_der(&asked).unwrap(), &id, Duration::from_secs(3600)).unwrap();
        let info = CertInfo::parse(&issued.leaf_der).unwrap();
        assert_eq!(info.spiffe_id().unwrap(), id);
        assert!(!info.is_ca);
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert_eq!(life, Duration::from_secs(3600) + BACKDATE);
        assert_eq!(issued.chain_der.len(), 1);
        assert!(key_matches(
            &issued.leaf_der,
            &KeyPair::from_der_and_sign_algo(&key.private_key_der(), &PKCS_ECDSA_P256_SHA256).unwrap()
        ));
        // Two certificates for one key differ in serial.
        let again = ca.issue(&key.csr_der(&id).unwrap(), &id, Duration::from_secs(3600)).unwrap();
        assert_ne!(CertInfo::parse(&again.leaf_der).unwrap().serial, info.serial);
    }

    #[test]
    fn refuses_tampered_csr() {
        let (root_pem, root_key) = generate_root("cluster.local").unwrap();
        let ca = Ca::from_root(&root_pem, &root_key.serialize_pem(), "cluster.local").unwrap();
        let id = SpiffeId::new("cluster.local", "shop", "books").unwrap();
        let mut csr = WorkloadKey::generate().unwrap().csr_der(&id).unwrap();
        let n = csr.len();
        csr[n - 5] ^= 0x55;
        assert!(matches!(ca.issue(&csr, &id, Duration::from_secs(60)), Err(CaError::BadCsr(_))));
    }

    #[test]
    fn generated_once_then_loaded_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tarmac-ca-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (first, created) = Ca::load_or_generate(&dir, "cluster.local").unwrap();
        assert!(created);
        let (second, created) = Ca::load_or_generate(&dir, "cluster.local").unwrap();
        assert!(!created);
        assert_eq!(first.anchors_pem(), second.anchors_pem());
        for key in [ISSUER_KEY_FILE, ROOT_KEY_FILE] {
            let mode = fs::metadata(dir.join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // A key others could read is refused on load, with what to do.
        for key in [ISSUER_KEY_FILE, ROOT_KEY_FILE] {
            fs::set_permissions(dir.join(key), fs::Permissions::from_mode(0o644)).unwrap();
            let err = Ca::load_or_generate(&dir, "cluster.local").unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("mode 644") && err.contains("chmod 600"), "{err}");
            fs::set_permissions(dir.join(key), fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::remove_file(dir.join(ISSUER_KEY_FILE)).unwrap();
        let err = Ca::load_or_generate(&dir, "cluster.local").unwrap_err().to_string();
        assert!(err.contains("issuer.key"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_an_issuer_key_that_is_not_the_certificates() {
        let (root_pem, root_key) = generate_root("cluster.local").unwrap();
        let ca = Ca::from_root(&root_pem, &root_key.serialize_pem(), "cluster.local").unwrap();
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let err = Ca::from_issuer(ca.anchors_pem(), &ca.issuer_pem, &other).unwrap_err().to_string();
        assert!(err.contains("not the key of the issuer certificate"), "{err}");
    }

    #[test]
    fn a_generated_or_root_made_ca_chains_to_its_anchors() {
        let (root_pem, root_key) = generate_root("cluster.local").unwrap();
        let ca = Ca::from_root(&root_pem, &root_key.serialize_pem(), "cluster.local").unwrap();
        ca.check_chains_to_anchors().unwrap();
    }

    #[test]
    fn refuses_an_issuer_that_belongs_to_other_anchors() {
        let (root_pem, root_key) = generate_root("cluster.local").unwrap();
        let ours = Ca::from_root(&root_pem, &root_key.serialize_pem(), "cluster.local").unwrap();
        let (other_root, other_key) = generate_root("cluster.local").unwrap();
        let theirs = Ca::from_root(&other_root, &other_key.serialize_pem(), "cluster.local").unwrap();
        // Their issuer and its key, presented with our anchors: every piece is valid alone.
        let mixed =
            Ca::from_issuer(ours.anchors_pem(), theirs.issuer_pem(), &theirs.issuer.key().serialize_pem())
                .unwrap();
        let err = mixed.check_chains_to_anchors().unwrap_err().to_string();
        assert!(err.contains("does not chain to the trust anchors"), "{err}");
        // Both anchors: it chains to one of them.
        let both = format!("{}{}", ours.anchors_pem(), theirs.anchors_pem());
        Ca::from_issuer(&both, theirs.issuer_pem(), &theirs.issuer.key().serialize_pem())
            .unwrap()
            .check_chains_to_anchors()
            .unwrap();
    }

    #[test]
    fn pem_round_trip() {
        let (root_pem, _) = generate_root("cluster.local").unwrap();
        let ders = pem_certs(&root_pem).unwrap();
        assert_eq!(certs_pem(ders.iter().map(Vec::as_slice)), root_pem);
    }
}
