//! Identity: the control plane's CA, serving workload certificates by CSR.
//!
//! A proxy proves who it is once with a credential from its platform (an
//! [`Authenticator`]: bootstrap tokens in local mode, ServiceAccount tokens on
//! Kubernetes), and afterwards with the certificate it holds. The CA decides the SPIFFE ID
//! from that proof alone. Every refusal is counted and logged with what to check.

mod authenticate;
mod service;

pub use authenticate::{AuthError, Authenticator, BootstrapTokens, WorkloadIdentity};
pub use service::{IdentityService, IdentityStats};
