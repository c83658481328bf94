//! `tarmac install --apply` and `tarmac uninstall --apply`: [`crate::install`]'s objects
//! through the API. Server-side apply (field manager `tarmac`), in order, each CRD
//! waited for (bounded) until `Established`; the Secrets that hold keys are created only
//! when absent, so a second run changes nothing and never replaces the mesh's CA.
//! Uninstall deletes in reverse order; an object already gone is fine.

use crate::install::{
    self, IDENTITY_SECRET, IdentitySource, Manifest, Options, WEBHOOK_SECRET, WebhookSource,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::time::Duration;

/// How long a CRD may take to be `Established` (the API server names and serves it in
/// well under a second; this is for a struggling one).
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Install(#[from] install::InstallError),
    #[error("{object}: {source}")]
    Api {
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{object}: not Established after {}s", timeout.as_secs())]
    NotEstablished { object: String, timeout: Duration },
    #[error("Secret {namespace}/{WEBHOOK_SECRET}: no ca.crt in it, so the webhook's caBundle is unknown")]
    NoWebhookCa { namespace: String },
}

impl ApplyError {
    pub fn advice(&self) -> Option<String> {
        match self {
            Self::Api { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 403) => Some(
                "the API refused: your credentials may not create this (`tarmac check --pre` lists what is missing)"
                    .into(),
            ),
            Self::NoWebhookCa { namespace } => Some(format!(
                "add the CA that signed tls.crt to the Secret as ca.crt, or delete the Secret \
                 (`kubectl -n {namespace} delete secret {WEBHOOK_SECRET}`) for a new one"
            )),
            _ => None,
        }
    }
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    /// A Secret that exists is kept as it is.
    Kept,
    Deleted,
    /// Not there to delete.
    Absent,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Kept => "kept (exists; not regenerated)",
            Self::Deleted => "deleted",
            Self::Absent => "not found (already gone)",
        })
    }
}

fn api_for(client: &Client, manifest: &Manifest) -> Api<DynamicObject> {
    match &manifest.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &manifest.resource),
        None => Api::all_with(client.clone(), &manifest.resource),
    }
}

fn api_error(manifest: &Manifest) -> impl Fn(kube::Error) -> ApplyError + '_ {
    move |source| ApplyError::Api { object: manifest.describe(), source: Box::new(source) }
}

/// The Secrets already on the cluster decide what is generated: an existing identity or
/// webhook Secret is kept, and the webhook's caBundle is then the CA in it.
pub async fn plan(client: &Client, mut options: Options) -> Result<(Vec<Manifest>, Vec<String>), ApplyError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &options.namespace);
    let get = |name: &'static str| {
        let secrets = secrets.clone();
        let namespace = options.namespace.clone();
        async move {
            secrets.get_opt(name).await.map_err(|source| ApplyError::Api {
                object: format!("Secret {namespace}/{name}"),
                source: Box::new(source),
            })
        }
    };
    let mut kept = Vec::new();
    if get(IDENTITY_SECRET).await?.is_some() {
        options.identity = IdentitySource::External;
        kept.push(format!("Secret {}/{IDENTITY_SECRET}", options.namespace));
    }
    if let Some(secret) = get(WEBHOOK_SECRET).await? {
        let ca = secret.data.as_ref().and_then(|data| data.get("ca.crt"));
        let ca_pem = ca
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .ok_or_else(|| ApplyError::NoWebhookCa { namespace: options.namespace.clone() })?;
        if options.webhook == WebhookSource::Generate {
            options.webhook = WebhookSource::External { ca_pem };
        }
        kept.push(format!("Secret {}/{WEBHOOK_SECRET}", options.namespace));
    }
    Ok((install::manifests(&options)?, kept))
}

/// Applies `manifests` in order, calling `report` after each.
pub async fn apply(
    client: &Client,
    manifests: &[Manifest],
    mut report: impl FnMut(&Manifest, &Outcome),
) -> Result<(), ApplyError> {
    let params = PatchParams::apply(install::FIELD_MANAGER).force();
    for manifest in manifests {
        let api = api_for(client, manifest);
        let before = api.get_opt(&manifest.name).await.map_err(api_error(manifest))?;
        let applied = api
            .patch(&manifest.name, &params, &Patch::Apply(&manifest.object))
            .await
            .map_err(api_error(manifest))?;
        let outcome = match before {
            None => Outcome::Created,
            Some(before) if before.resource_version() == applied.resource_version() => Outcome::Unchanged,
            Some(_) => Outcome::Configured,
        };
        report(manifest, &outcome);
        if manifest.is_crd() {
            wait_established(client, manifest, ESTABLISH_TIMEOUT).await?;
        }
    }
    Ok(())
}

async fn wait_established(client: &Client, manifest: &Manifest, timeout: Duration) -> Result<(), ApplyError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let crd = crds.get(&manifest.name).await.map_err(api_error(manifest))?;
        let established = crd
            .status
            .and_then(|status| status.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApplyError::NotEstablished { object: manifest.describe(), timeout });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What `tarmac uninstall` deletes, in delete order (the reverse of install's): the
/// objects `tarmac install` creates (the CRDs only with `crds`), never anything else.
pub fn uninstall_plan(namespace: &str, crds: bool) -> Result<Vec<Manifest>, ApplyError> {
    let options = Options {
        namespace: namespace.to_string(),
        // Only names and kinds matter here: nothing is generated.
        identity: IdentitySource::External,
        webhook: WebhookSource::External { ca_pem: String::new() },
        ..Options::default()
    };
    let mut manifests = install::manifests(&options)?;
    if !crds {
        manifests.retain(|m| !m.is_crd());
    }
    // The Secrets are deleted by name even when not generated (they may be the user's:
    // they live in Tarmac's namespace, which is deleted anyway).
    let at = manifests.iter().position(|m| m.resource.kind == "Deployment").unwrap_or(manifests.len());
    for name in [IDENTITY_SECRET, WEBHOOK_SECRET] {
        let secret = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        manifests.insert(
            at,
            Manifest {
                resource: kube::core::ApiResource::erase::<Secret>(&()),
                namespace: Some(namespace.into()),
                name: name.into(),
                object: serde_json::to_value(&secret).map_err(install::InstallError::Serialize)?,
            },
        );
    }
    manifests.reverse();
    Ok(manifests)
}

/// Deletes `manifests` in order; 404 is [`Outcome::Absent`].
pub async fn delete(
    client: &Client,
    manifests: &[Manifest],
    mut report: impl FnMut(&Manifest, &Outcome),
) -> Result<(), ApplyError> {
    for manifest in manifests {
        let api = api_for(client, manifest);
        let outcome = match api.delete(&manifest.name, &DeleteParams::foreground()).await {
            Ok(_) => Outcome::Deleted,
            Err(kube::Error::Api(status)) if status.code == 404 => Outcome::Absent,
            Err(source) => return Err(api_error(manifest)(source)),
        };
        report(manifest, &outcome);
    }
    Ok(())
}
