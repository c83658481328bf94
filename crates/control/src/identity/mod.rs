//! Identity: the control plane's CA, serving workload certificates by CSR.
//!
//! A proxy proves who it is once with a credential from its platform (an
//! [`Authenticator`]: bootstrap tokens in local mode, ServiceAccount tokens on
//! Kubernetes), and afterwards with the certificate it holds. The CA decides the SPIFFE ID
//! from that proof alone. Every refusal is counted and logged with what to check.

mod authenticate;
mod service;

pub use authenticate::{AuthError, Authenticator, BootstrapTokens, DEFAULT_TOKEN_LIFETIME, WorkloadIdentity};
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
