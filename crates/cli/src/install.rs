//! `tarmac install` and `tarmac uninstall`: the mesh's Kubernetes objects
//! ([`tarmac_kube::install`]), printed as one YAML stream for `kubectl apply -f -`, or
//! applied (deleted) through the API with `--apply`.

use clap::Args;
use std::path::PathBuf;
use tarmac_kube::apply::{self, ApplyError, Outcome};
use tarmac_kube::install::{
    self as manifests, DEFAULT_NAMESPACE, IDENTITY_SECRET, IdentitySource, Manifest, Options, WEBHOOK_SECRET,
    WebhookSource,
};

/// Print the mesh's Kubernetes objects (CRDs, the tarmac-system namespace, RBAC, the
/// control plane's Secrets, Deployment, Services and PodDisruptionBudget, the sidecar
/// injection webhook), or apply them with --apply.
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Only the CustomResourceDefinitions of Tarmac's kinds (FaultInjection,
    /// ResiliencePolicy, AuthorizationPolicy, RateLimitPolicy, Telemetry).
    #[arg(long, conflicts_with_all = ["namespace", "image", "proxy_image", "replicas", "webhook_ca", "identity_external"])]
    pub crds: bool,
    /// The control plane's namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// The control plane's image.
    #[arg(long, default_value_t = manifests::default_image())]
    pub image: String,
    /// The image injected sidecars run.
    #[arg(long, default_value_t = tarmac_control::inject::default_image())]
    pub proxy_image: String,
    /// Replicas of the control plane (one holds the Lease and writes route status; all
    /// serve discovery, identity and the webhook).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..=10))]
    pub replicas: i32,
    /// Bring your own webhook serving certificate: the PEM CA that signed it (the
    /// webhook's caBundle). You create the Secret tarmac-webhook-tls (type
    /// kubernetes.io/tls, for tarmac-webhook.NAMESPACE.svc); none is generated.
    #[arg(long, value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,
    /// Do not generate the mesh's CA: you create the Secret tarmac-identity
    /// (cert-manager's shape: ca.crt, tls.crt, tls.key; e.g. a cert-manager Certificate
    /// with isCA: true).
    #[arg(long)]
    pub identity_external: bool,
    /// Apply through the API (server-side apply, field manager `tarmac`) instead of
    /// printing. Existing Secrets are kept.
    #[arg(long)]
    pub apply: bool,
    /// With --apply: the kubeconfig (else $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", requires = "apply")]
    pub kubeconfig: Option<PathBuf>,
}

/// Print (or delete with --apply) what `tarmac install` creates. Users' namespaces and
/// workloads are never touched; injected pods keep their sidecars until restarted.
#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Also delete Tarmac's CustomResourceDefinitions, and with them every
    /// FaultInjection, ResiliencePolicy, AuthorizationPolicy, RateLimitPolicy and
    /// Telemetry in the cluster.
    #[arg(long)]
    pub crds: bool,
    /// The control plane's namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Delete through the API instead of printing what would be deleted.
    #[arg(long)]
    pub apply: bool,
    /// With --apply: the kubeconfig (else $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", requires = "apply")]
    pub kubeconfig: Option<PathBuf>,
}

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
    #[error(transparent)]
    Manifests(#[from] manifests::InstallError),
    #[error(transparent)]
    Client(#[from] tarmac_kube::ClientError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl InstallError {
    pub fn advice(&self) -> Option<String> {
        match self {
            Self::Apply(e) => e.advice(),
            _ => None,
        }
    }
}

fn options(args: &InstallArgs) -> Result<Options, InstallError> {
    let webhook = match &args.webhook_ca {
        Some(path) => {
            let ca_pem = std::fs::read_to_string(path)
                .map_err(|source| InstallError::Read { path: path.clone(), source })?;
            if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(InstallError::NoCertificate { path: path.clone() });
            }
            WebhookSource::External { ca_pem }
        }
        None => WebhookSource::Generate,
    };
    Ok(Options {
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        proxy_image: args.proxy_image.clone(),
        replicas: args.replicas,
        identity: if args.identity_external { IdentitySource::External } else { IdentitySource::Generate },
        webhook,
    })
}

/// What the user must create themselves, said on stderr so that stdout stays YAML.
fn say_external(options: &Options) {
    let ns = &options.namespace;
    if options.identity == IdentitySource::External {
        eprintln!(
            "tarmac: --identity-external: create the Secret {ns}/{IDENTITY_SECRET} (ca.crt: the trust anchors, \
             tls.crt: an issuer CA certificate chaining to them, tls.key: its key), e.g. a cert-manager \
             Certificate with isCA: true and secretName: {IDENTITY_SECRET}"
        );
    }
    if matches!(options.webhook, WebhookSource::External { .. }) {
        eprintln!(
            "tarmac: --webhook-ca: create the Secret {ns}/{WEBHOOK_SECRET} (type kubernetes.io/tls) with a \
             certificate for tarmac-webhook.{ns}.svc signed by that CA, and the CA as ca.crt"
        );
    }
}

fn print_yaml(manifests: &[Manifest]) -> Result<(), InstallError> {
    let docs = manifests.iter().map(|m| serde_saphyr::to_string(&m.object).map_err(InstallError::WriteYaml));
    print!("{}", docs.collect::<Result<Vec<_>, _>>()?.join("---\n"));
    Ok(())
}

fn report(manifest: &Manifest, outcome: &Outcome) {
    println!("{}: {outcome}", manifest.describe());
}

pub async fn install(args: InstallArgs) -> Result<(), InstallError> {
    if args.crds {
        let crds = manifests::crds()?;
        if !args.apply {
            return print_yaml(&crds);
        }
        let client = tarmac_kube::client(args.kubeconfig.as_deref()).await?;
        return Ok(apply::apply(&client, &crds, report).await?);
    }
    let options = options(&args)?;
    say_external(&options);
    if !args.apply {
        return print_yaml(&manifests::manifests(&options)?);
    }
    let client = tarmac_kube::client(args.kubeconfig.as_deref()).await?;
    let (manifests, kept) = apply::plan(&client, options).await?;
    apply::apply(&client, &manifests, report).await?;
    for secret in kept {
        println!("{secret}: kept (exists; not regenerated)");
    }
    Ok(())
}

pub async fn uninstall(args: UninstallArgs) -> Result<(), InstallError> {
    let plan = apply::uninstall_plan(&args.namespace, args.crds)?;
    eprintln!(
        "tarmac: injected pods keep their sidecars until they are restarted (`kubectl rollout restart`), \
         and without the control plane those sidecars get no discovery or certificates"
    );
    if args.crds {
        eprintln!(
            "tarmac: --crds: deleting the CRDs deletes every FaultInjection, ResiliencePolicy, \
             AuthorizationPolicy, RateLimitPolicy and Telemetry in the cluster"
        );
    } else {
        eprintln!("tarmac: Tarmac's CRDs and their objects are kept (--crds deletes them)");
    }
    if !args.apply {
        for manifest in &plan {
            println!("{}", manifest.describe());
        }
        eprintln!("tarmac: nothing deleted: --apply deletes the objects above, in that order");
        return Ok(());
    }
    let client = tarmac_kube::client(args.kubeconfig.as_deref()).await?;
    apply::delete(&client, &plan, report).await?;
    Ok(())
}
