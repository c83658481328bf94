//! `tarmac install`: the Kubernetes manifests of the mesh, printed for `kubectl apply -f -`.
//! So far the CustomResourceDefinitions of Tarmac's kinds (`--crds`) and the sidecar
//! injection webhook's configuration; the control plane's Deployment, Service and RBAC
//! are still to come (docs/kubernetes.md).

use clap::Args;
use std::path::PathBuf;
use tarmac_control::inject::webhook::{ServiceRef, configuration};

/// Print the Kubernetes manifests of the mesh (so far: the CustomResourceDefinitions of
/// Tarmac's kinds and the MutatingWebhookConfiguration of sidecar injection).
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Print only the CustomResourceDefinitions of Tarmac's kinds (FaultInjection,
    /// ResiliencePolicy, AuthorizationPolicy, RateLimitPolicy, Telemetry), to apply before
    /// anything that uses them.
    #[arg(long, conflicts_with = "webhook_ca")]
    pub crds: bool,
    /// PEM file of the CA that issued the webhook's serving certificate (the caBundle the
    /// API server trusts it with).
    #[arg(long, value_name = "FILE", required_unless_present = "crds")]
    pub webhook_ca: Option<PathBuf>,
    /// The control plane's namespace.
    #[arg(long, default_value = "tarmac-system")]
    pub namespace: String,
    /// The Service in front of the webhook's port.
    #[arg(long, default_value = "tarmac-webhook")]
    pub webhook_service: String,
    /// That Service's port.
    #[arg(long, default_value_t = 443)]
    pub webhook_port: u16,
}

/// What can go wrong reading the webhook's CA or writing the manifests.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM CERTIFICATE in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("writing YAML: {0}")]
    WriteYaml(#[source] serde_saphyr::ser::Error),
}

pub fn run(args: InstallArgs) -> Result<(), InstallError> {
    let crds = tarmac_control::crds::definitions();
    let crds = crds.iter().map(|crd| serde_saphyr::to_string(crd).map_err(InstallError::WriteYaml));
    let crds = crds.collect::<Result<Vec<_>, _>>()?.join("---\n");
    let Some(path) = &args.webhook_ca else {
        print!("{crds}");
        return Ok(());
    };
    let ca =
        std::fs::read_to_string(path).map_err(|source| InstallError::Read { path: path.clone(), source })?;
    if !ca.contains("-----BEGIN CERTIFICATE-----") {
        return Err(InstallError::NoCertificate { path: path.clone() });
    }
    let service =
        ServiceRef { namespace: &args.namespace, name: &args.webhook_service, port: args.webhook_port };
    let yaml = serde_saphyr::to_string(&configuration(&ca, &service)).map_err(InstallError::WriteYaml)?;
    print!("{crds}---\n{yaml}");
    Ok(())
}
