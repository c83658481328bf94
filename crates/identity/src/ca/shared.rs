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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_root;

    #[test]
    fn a_rotation_keeps_the_old_issuer_for_renewals_and_a_broken_one_is_refused() {
        let (root, key) = generate_root("cluster.local").unwrap();
        let key = key.serialize_pem();
        let first = Ca::from_root(&root, &key, "cluster.local").unwrap();
        let first_issuer = first.issuer_chain_der().to_vec();
        let shared = SharedCa::new(first);
        let second = Ca::from_root(&root, &key, "cluster.local").unwrap();
        let second_issuer = second.issuer_chain_der().to_vec();
        shared.rotate(second).unwrap();
        assert_eq!(shared.current().issuer_chain_der(), &second_issuer[..]);
        let known = shared.known_issuers_der();
        assert!(
            first_issuer.iter().all(|d| known.contains(d)) && second_issuer.iter().all(|d| known.contains(d))
        );

        // An issuer under another root, with this root as its anchors: refused, kept.
        let (other_root, other_key) = generate_root("cluster.local").unwrap();
        let foreign = Ca::from_root(&other_root, &other_key.serialize_pem(), "cluster.local").unwrap();
        let mut dir = std::env::temp_dir();
        dir.push(format!("tarmac-shared-ca-{}", std::process::id()));
        foreign.save(&dir, None).unwrap();
        let foreign_key = std::fs::read_to_string(dir.join(crate::ca::ISSUER_KEY_FILE)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mislabelled = Ca::from_issuer(&root, foreign.issuer_pem(), &foreign_key).unwrap();
        assert!(shared.rotate(mislabelled).is_err());
        assert_eq!(shared.current().issuer_chain_der(), &second_issuer[..], "the issuer in use stays");
    }
}
