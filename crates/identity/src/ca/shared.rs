//! The CA a running control plane issues with, replaceable while it runs: on Kubernetes
//! the issuer comes from a Secret that cert-manager (or the user) renews, and the control
//! plane swaps to the new issuer without a restart.

use super::{Ca, CaError};
use std::sync::{Arc, Mutex, RwLock};

/// How many earlier issuers are remembered, so that a certificate one of them issued can
/// still be renewed: a proxy renews within its certificate's life, so only issuers of the
/// last certificate lifetime matter, and issuers rotate far more slowly than that.
const PREVIOUS_ISSUERS: usize = 4;

/// The current [`Ca`], and the issuers it replaced.
#[derive(Debug)]
pub struct SharedCa {
    current: RwLock<Arc<Ca>>,
    /// DER certificates of earlier issuers (with their own chains), newest first.
    previous: Mutex<Vec<Vec<u8>>>,
}

impl SharedCa {
    pub fn new(ca: Ca) -> Self {
        Self { current: RwLock::new(Arc::new(ca)), previous: Mutex::default() }
    }

    /// The CA to issue with now.
    pub fn current(&self) -> Arc<Ca> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Issues with `next` from now on. It must chain to its own trust anchors (checked
    /// here, so that a broken issuer is refused and the current one stays); certificates
    /// the current issuer gave out stay renewable while they chain to an anchor `next`
    /// still trusts.
    pub fn rotate(&self, next: Ca) -> Result<(), CaError> {
        next.check_chains_to_anchors()?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.issuer_chain_der() != next.issuer_chain_der() {
            let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
            for der in current.issuer_chain_der().iter().rev() {
                previous.retain(|p| p != der);
                previous.insert(0, der.clone());
            }
            previous.truncate(PREVIOUS_ISSUERS * 2);
        }
        *current = Arc::new(next);
        Ok(())
    }

    /// Every issuer certificate a valid workload certificate may have been signed by: the
    /// current chain, then the issuers it replaced. Intermediates for verifying a renewal
    /// (a certificate still proves nothing unless it chains to a current anchor).
    pub fn known_issuers_der(&self) -> Vec<Vec<u8>> {
        let mut all = self.current().issuer_chain_der().to_vec();
        all.extend(self.previous.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        all
    }
}

impl From<Ca> for SharedCa {
    fn from(ca: Ca) -> Self {
        Self::new(ca)
    }
}
