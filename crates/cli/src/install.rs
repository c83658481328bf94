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
    /// ResiliencePolicy, AuthorizationPolicy, RateLimitPolicy), to apply before anything
    /// that uses them.
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

pub fn run(args: InstallArgs) -> Result<(), String> {
    let crds = tarmac_control::crds::definitions();
    let crds = crds.iter().map(|crd| serde_saphyr::to_string(crd).map_err(|e| format!("writing YAML: {e}")));
    let crds = crds.collect::<Result<Vec<_>, _>>()?.join("---\n");
    let Some(webhook_ca) = &args.webhook_ca else {
        print!("{crds}");
        return Ok(());
    };
    let path = webhook_ca.display();
    let ca = std::fs::read_to_string(webhook_ca).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !ca.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{path}: no PEM CERTIFICATE in it"));
    }
    let service =
        ServiceRef { namespace: &args.namespace, name: &args.webhook_service, port: args.webhook_port };
    let yaml =
        serde_saphyr::to_string(&configuration(&ca, &service)).map_err(|e| format!("writing YAML: {e}"))?;
    print!("{crds}---\n{yaml}");
    Ok(())
}
