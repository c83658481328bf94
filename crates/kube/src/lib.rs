//! `tarmac-kube`: Tarmac on Kubernetes. The store backend that watches the API server and
//! publishes the same model objects the files backend reads from a directory, route
//! status written back, and the `tarmac-control` binary (`main.rs`), which is the only
//! thing that links kube-rs.
//!
//! # Layout
//! - [`store`]: [`KubeStore`], a [`tarmac_control::store::Store`]: one watcher per kind
//!   (list, then watch; a relist after 410 Gone replaces a kind's objects whole), complete
//!   snapshots rebuilt on every change, an invalid object refused on its own.
//! - [`translate`]: the API server's objects as the model reads them, and Pods with their
//!   EndpointSlices as the registry's running instances.
//! - [`kinds`]: what is watched, by API path.
//! - [`status`]: route status written back by the replica holding the Lease.
//! - [`review`]: [`TokenReviewer`], proxies' ServiceAccount tokens checked by TokenReview.
//! - [`ca_secret`]: the mesh's CA from a Secret (cert-manager's shape), followed as it
//!   rotates.

pub mod ca_secret;
pub mod kinds;
pub mod review;
pub mod status;
pub mod store;
pub mod translate;

pub use review::TokenReviewer;
pub use store::{KubeStore, OpenError, Options};
