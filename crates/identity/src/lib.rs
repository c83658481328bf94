//! `tarmac-identity`: X.509 and SPIFFE for the Tarmac mesh, shared by the control plane
//! and the proxy so that both read and write certificates the same way.
//!
//! - [`spiffe`]: the SPIFFE ID every workload is known by,
//!   `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! - [`ca`]: the control plane's certificate authority: a trust anchor (root) and an
//!   issuer (intermediate), generated or supplied by the user, that signs workload CSRs.
//! - [`workload`]: a proxy's side: a key generated in memory and the CSR that asks for
//!   a certificate for it.
//! - [`x509`]: reading identities and lifetimes back out of certificates.

pub mod ca;
pub mod spiffe;
pub mod workload;
pub mod x509;

pub use spiffe::SpiffeId;

/// The trust domain of local meshes, as in a default Kubernetes cluster.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The identity the control plane serves its gRPC API with, and that proxies expect of
/// it: `spiffe://<trust-domain>/ns/tarmac-system/sa/tarmac-control`.
pub fn control_plane_id(trust_domain: &str) -> Result<SpiffeId, spiffe::InvalidSpiffeId> {
    SpiffeId::new(trust_domain, "tarmac-system", "tarmac-control")
}
