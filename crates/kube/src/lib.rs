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
//! - [`install`]: what `tarmac install` creates (CRDs, namespace, RBAC, Secrets with
//!   certificates generated there, the Deployment, Services, PodDisruptionBudget, the
//!   webhook's configuration) as typed objects; [`apply`] applies and deletes them
//!   through the API; [`precheck`] is `tarmac check --pre`.
//! - [`review`]: [`TokenReviewer`], proxies' ServiceAccount tokens checked by TokenReview.
//! - [`ca_secret`]: the mesh's CA from a Secret (cert-manager's shape), followed as it
//!   rotates.

pub mod apply;
pub mod ca_secret;
pub mod install;
pub mod kinds;
pub mod precheck;
pub mod review;
pub mod status;
pub mod store;
pub mod translate;

pub use review::TokenReviewer;
pub use store::{KubeStore, OpenError, Options};

/// A client of the API server `kubeconfig` names (its current context), else the one
/// kube-rs infers: the `KUBECONFIG` variable, `~/.kube/config`, then the in-cluster
/// ServiceAccount. `tarmac-control` and the CLI's `install`, `uninstall` and
/// `check --pre` find the cluster alike.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| ClientError::Kubeconfig { path: path.to_path_buf(), source })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig { path: path.to_path_buf(), source })?
        }
        None => kube::Config::infer().await.map_err(ClientError::Infer)?,
    };
    kube::Client::try_from(config).map_err(ClientError::Client)
}

/// No API server to talk to.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes API to talk to (give --kubeconfig, or run in a cluster): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot make a Kubernetes API client: {0}")]
    Client(#[source] kube::Error),
}
