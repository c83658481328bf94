//! `tarmac install`: the Kubernetes manifests of the mesh, printed for `kubectl apply -f -`.
//! So far only the sidecar injection webhook's configuration; the control plane's
//! Deployment, Service, RBAC and CRDs are still to come (docs/kubernetes.md).

use clap::Args;
use std::path::PathBuf;
use tarmac_control::inject::webhook::{ServiceRef, configuration};

/// Print the Kubernetes manifests of the mesh (so far: the MutatingWebhookConfiguration
/// of sidecar injection).
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// PEM file of the CA that issued the webhook's serving certificate (the caBundle the
    /// API server trusts it with).
    #[arg(long, value_name = "FILE")]
    pub webhook_ca: PathBuf,
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

pub fn run(args: InstallArgs) -> Result<(), String> {
    let path = args.webhook_ca.display();
    let ca = std::fs::read_to_string(&args.webhook_ca).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !ca.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{path}: no PEM CERTIFICATE in it"));
    }
    let service =
        ServiceRef { namespace: &args.namespace, name: &args.webhook_service, port: args.webhook_port };
    let yaml =
        serde_saphyr::to_string(&configuration(&ca, &service)).map_err(|e| format!("writing YAML: {e}"))?;
    print!("{yaml}");
    Ok(())
}
