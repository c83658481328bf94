//! A throwaway CA for the mTLS routes: certificates written to the run's work directory,
//! for proxies configured with certificate files.

use std::path::{Path, PathBuf};
use tarmac_identity::DEFAULT_TRUST_DOMAIN;
use tarmac_identity::ca::{self, Ca, CaError};
use tarmac_proxy::config::{CertificateFiles, IdentityConfig};

/// A CA made for one run, its files in a work directory: proxies configured with
/// certificate files get mTLS without a control plane.
/// Why the throwaway CA or a certificate of it could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    Ca(#[source] CaError),
    #[error("{0}")]
    Id(#[source] tarmac_identity::spiffe::InvalidSpiffeId),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    WritePrivate(#[from] tarmac_clikit::workdir::WorkDirError),
}

pub struct EphemeralCa {
    ca: Ca,
    dir: PathBuf,
    /// The trust anchors file.
    pub anchors: String,
}

/// A workload certificate on disk, and the SPIFFE ID it proves.
pub struct Certified {
    pub id: String,
    pub cert: String,
    pub key: String,
}

impl EphemeralCa {
    pub fn create(dir: &Path) -> Result<Self, CertsError> {
        let (root, root_key) = ca::generate_root(DEFAULT_TRUST_DOMAIN).map_err(CertsError::Ca)?;
        let ca =
            Ca::from_root(&root, &root_key.serialize_pem(), DEFAULT_TRUST_DOMAIN).map_err(CertsError::Ca)?;
        let anchors = write(&dir.join("trust-anchors.pem"), ca.anchors_pem())?;
        Ok(Self { ca, dir: dir.to_path_buf(), anchors })
    }

    /// A day-long certificate for service account `sa` of namespace `default`.
    pub fn certify(&self, sa: &str) -> Result<Certified, CertsError> {
        let id =
            tarmac_identity::SpiffeId::new(DEFAULT_TRUST_DOMAIN, "default", sa).map_err(CertsError::Id)?;
        let (chain, key) = self
            .ca
            .issue_with_new_key(&id, std::time::Duration::from_secs(24 * 3600))
            .map_err(CertsError::Ca)?;
        Ok(Certified {
            id: id.to_string(),
            cert: write(&self.dir.join(format!("{sa}.pem")), &chain)?,
            key: write_key(&self.dir.join(format!("{sa}.key")), &key)?,
        })
    }

    /// The `identity` section of a proxy presenting `own`.
    pub fn identity(&self, own: &Certified) -> IdentityConfig {
        IdentityConfig {
            trust_anchors: self.anchors.clone(),
            certificate: Some(CertificateFiles { cert: own.cert.clone(), key: own.key.clone() }),
            token_fd: None,
            token_file: None,
            service_account_token: None,
        }
    }
}

fn write(path: &Path, text: &str) -> Result<String, CertsError> {
    std::fs::write(path, text).map_err(|source| CertsError::Write { path: path.to_path_buf(), source })?;
    Ok(path.display().to_string())
}

/// A private key, readable by its owner only (the benchmark certifies the same account
/// again for each route: the older key is replaced).
fn write_key(path: &Path, text: &str) -> Result<String, CertsError> {
    tarmac_clikit::workdir::create_private(path, text)?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throwaway_ca_writes_keys_only_its_owner_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let work = tarmac_clikit::workdir::WorkDir::create("ca-test").unwrap();
        assert_eq!(std::fs::metadata(work.path()).unwrap().permissions().mode() & 0o777, 0o700);
        let ca = EphemeralCa::create(work.path()).unwrap();
        ca.certify("bench-client").unwrap();
        // The benchmark certifies the same account again for each route.
        let certified = ca.certify("bench-client").unwrap();
        let mode = std::fs::metadata(&certified.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", certified.key);
    }
}
