//! `tarmac check --pre`: can Tarmac be installed on this cluster, with these credentials?
//! Asked of the API itself: reachable and authenticated, a version with native sidecars,
//! SelfSubjectAccessReviews for every object `tarmac install` creates, the Gateway API
//! CRDs at a version Tarmac reads, admission webhooks served, and the control plane's
//! namespace free (or Tarmac's own, at this version).

use crate::install::{self, Manifest, Options};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Serialize;

/// The oldest Kubernetes with native sidecars on by default (init containers with
/// `restartPolicy: Always`), which injection relies on.
pub const MIN_MINOR: u32 = 29;
/// The Gateway API version the store watches HTTPRoutes and GRPCRoutes at.
pub const GATEWAY_VERSION: &str = "v1";

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), ok: true, detail: detail.into(), hint: String::new() }
}

fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check { name: name.into(), ok: false, detail: detail.into(), hint: hint.into() }
}

/// Runs every check; stops early only when the API cannot be reached at all.
pub async fn pre_checks(client: &Client, namespace: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let version = match client.apiserver_version().await {
        Ok(version) => version,
        Err(e) => {
            checks.push(fail(
                "API server reachable",
                e.to_string(),
                "check the kubeconfig's current context (`kubectl cluster-info`), or give --kubeconfig",
            ));
            return checks;
        }
    };
    checks.push(pass("API server reachable", format!("Kubernetes {}", version.git_version)));
    checks.push(version_check(&version.major, &version.minor));
    // Only kinds and names matter: the certificates generated here are thrown away.
    let manifests = install::manifests(&Options { namespace: namespace.to_string(), ..Options::default() });
    match manifests {
        Ok(manifests) => checks.extend(access_checks(client, &manifests, namespace).await),
        Err(e) => checks.push(fail("the manifests", e.to_string(), "")),
    }
    checks.extend(gateway_checks(client).await);
    checks.push(match client.list_api_group_resources("admissionregistration.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "mutatingwebhookconfigurations") => pass(
            "admission webhooks",
            "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration is served",
        ),
        Ok(_) => fail(
            "admission webhooks",
            "admissionregistration.k8s.io/v1 does not serve mutatingwebhookconfigurations",
            "sidecar injection needs the MutatingAdmissionWebhook admission plugin",
        ),
        Err(e) => fail(
            "admission webhooks",
            format!("admissionregistration.k8s.io/v1 is not served: {e}"),
            "sidecar injection needs the MutatingAdmissionWebhook admission plugin",
        ),
    });
    checks.push(namespace_check(client, namespace).await);
    checks
}

fn version_check(major: &str, minor: &str) -> Check {
    const NAME: &str = "Kubernetes version";
    // Managed clusters report minors such as "29+".
    let digits = |s: &str| s.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u32>().ok();
    match (digits(major), digits(minor)) {
        (Some(1), Some(minor)) if minor >= MIN_MINOR => {
            pass(NAME, format!("1.{minor} (at least 1.{MIN_MINOR})"))
        }
        (Some(major), Some(minor)) => fail(
            NAME,
            format!("{major}.{minor}: injection needs 1.{MIN_MINOR} or later"),
            "injected sidecars are native sidecars (init containers with restartPolicy: Always), on by default from 1.29",
        ),
        _ => fail(NAME, format!("cannot read the version {major:?}.{minor:?}"), ""),
    }
}

/// One SelfSubjectAccessReview per kind `tarmac install` creates, in the namespace it
/// creates it in.
async fn access_checks(client: &Client, manifests: &[Manifest], namespace: &str) -> Vec<Check> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut seen = std::collections::BTreeSet::new();
    let mut checks = Vec::new();
    for manifest in manifests {
        let resource = &manifest.resource;
        if !seen.insert((resource.group.clone(), resource.plural.clone())) {
            continue;
        }
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(resource.group.clone()),
                    resource: Some(resource.plural.clone()),
                    verb: Some("create".into()),
                    // A namespace does not exist before install: asked of the namespace
                    // the objects will be in.
                    namespace: manifest.namespace.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = match &manifest.namespace {
            Some(_) => format!("create {} in {namespace}", resource.plural),
            None => format!("create {}", resource.plural),
        };
        let name = format!("may {what}");
        checks.push(match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) => match answer.status {
                Some(status) if status.allowed => pass(&name, "allowed"),
                status => fail(
                    &name,
                    format!(
                        "not allowed{}",
                        status.and_then(|s| s.reason).map(|r| format!(": {r}")).unwrap_or_default()
                    ),
                    "install with cluster-admin credentials (install creates cluster-wide RBAC and CRDs)",
                ),
            },
            Err(kube::Error::Api(status)) if status.code == 401 => fail(
                &name,
                "the API server does not know these credentials (401)",
                "refresh the kubeconfig's credentials",
            ),
            Err(e) => fail(&name, format!("cannot ask: {e}"), ""),
        });
    }
    checks
}

async fn gateway_checks(client: &Client) -> Vec<Check> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let hint = "install the Gateway API CRDs (standard channel, v1.1 or later): \
                kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/standard-install.yaml";
    let mut checks = Vec::new();
    for (kind, plural) in [("HTTPRoute", "httproutes"), ("GRPCRoute", "grpcroutes")] {
        let name = format!("Gateway API {kind}");
        let crd_name = format!("{plural}.gateway.networking.k8s.io");
        checks.push(match crds.get_opt(&crd_name).await {
            Ok(Some(crd)) => {
                let served: Vec<&str> =
                    crd.spec.versions.iter().filter(|v| v.served).map(|v| v.name.as_str()).collect();
                if served.contains(&GATEWAY_VERSION) {
                    pass(&name, format!("{crd_name} serves {}", served.join(", ")))
                } else {
                    fail(
                        &name,
                        format!("{crd_name} serves {} but not {GATEWAY_VERSION}", served.join(", ")),
                        hint,
                    )
                }
            }
            Ok(None) => fail(&name, format!("no CRD {crd_name}"), hint),
            Err(e) => fail(&name, format!("cannot read the CRD {crd_name}: {e}"), ""),
        });
    }
    checks
}

async fn namespace_check(client: &Client, namespace: &str) -> Check {
    let name = format!("namespace {namespace}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(None) => pass(&name, "does not exist yet: install creates it"),
        Ok(Some(found)) => {
            let labels = found.metadata.labels.unwrap_or_default();
            let ours = labels.get(install::PART_OF.0).map(String::as_str) == Some(install::PART_OF.1);
            let version = labels.get(install::VERSION_LABEL).cloned().unwrap_or_default();
            if !ours {
                fail(
                    &name,
                    "exists and is not Tarmac's (no app.kubernetes.io/part-of: tarmac label)",
                    "install elsewhere with --namespace, or remove what is there",
                )
            } else if version != install::VERSION {
                fail(
                    &name,
                    format!("holds Tarmac {version}, not {}", install::VERSION),
                    "`tarmac uninstall --apply` with that version first",
                )
            } else {
                pass(&name, format!("holds Tarmac {version} already: install again changes nothing"))
            }
        }
        Err(e) => fail(&name, format!("cannot read it: {e}"), ""),
    }
}
