//! Identity: the control plane's CA, serving workload certificates by CSR.
//!
//! A proxy proves who it is once with a credential from its platform (an
//! [`Authenticator`]: bootstrap tokens in local mode, ServiceAccount tokens on
//! Kubernetes), and afterwards with the certificate it holds. The CA decides the SPIFFE ID
//! from that proof alone. Every refusal is counted and logged with what to check.

mod authenticate;
mod service;

pub use authenticate::{
    AuthError, AuthFuture, Authenticator, BootstrapTokens, Credential, DEFAULT_TOKEN_LIFETIME,
    TokensFileError, WorkloadIdentity,
};
pub use service::{IdentityService, IdentityStats, Wanted};

use crate::store::Snapshot;
use std::sync::Arc;
use tokio::sync::watch;

/// The identities of the Workloads in the configuration as it is now (local mode: what
/// `tarmac up` runs), for [`IdentityService::serving_only`].
pub fn configured_workloads(snapshots: watch::Receiver<Arc<Snapshot>>) -> Wanted {
    Arc::new(move |who: &WorkloadIdentity| {
        snapshots.borrow().iter_kind("Workload").any(|resource| match resource {
            tarmac_model::Resource::Workload(w) => {
                w.metadata.namespace == who.namespace && w.spec.service_account_name == who.service_account
            }
            _ => false,
        })
    })
}

/// Where the mesh's CA is kept unless told otherwise (`tarmac up`, `tarmac identity` and
/// `tarmac-control` agree on it): `$XDG_STATE_HOME/tarmac/identity`, or
/// `~/.local/state/tarmac/identity`.
pub fn default_ca_dir() -> Result<std::path::PathBuf, NoStateDir> {
    use std::path::PathBuf;
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(state).join("tarmac/identity"));
    }
    let home = std::env::var_os("HOME").filter(|s| !s.is_empty()).ok_or(NoStateDir)?;
    Ok(PathBuf::from(home).join(".local/state/tarmac/identity"))
}

/// Neither `XDG_STATE_HOME` nor `HOME` says where per-user state goes.
#[derive(Debug, thiserror::Error)]
#[error("cannot place the mesh's CA: neither XDG_STATE_HOME nor HOME is set; pass --identity-dir")]
pub struct NoStateDir;
