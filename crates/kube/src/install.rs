//! What `tarmac install` creates on a cluster, as typed values (k8s-openapi) in the order
//! they are applied: Tarmac's CRDs, the control plane's namespace, its ServiceAccount and
//! RBAC (least privilege: what the code calls, checked by the RBAC drift test), the
//! identity and webhook Secrets (certificates generated here), the Deployment, its
//! Services, PodDisruptionBudget, and the sidecar injection webhook's configuration.
//! [`crate::apply`] applies them through the API; the CLI prints them as YAML.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{ByteString, Metadata};
use kube::core::ApiResource;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use tarmac_control::inject::webhook::{ServiceRef, configuration};

/// The version this build installs: the images' tag, and the label on every object.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const DEFAULT_NAMESPACE: &str = "tarmac-system";
/// The name of the control plane's ServiceAccount, ClusterRole, Role, bindings,
/// Deployment, Service, PodDisruptionBudget and Lease.
pub const CONTROL: &str = "tarmac-control";
pub const IDENTITY_SECRET: &str = "tarmac-identity";
pub const WEBHOOK_SECRET: &str = "tarmac-webhook-tls";
pub const WEBHOOK_SERVICE: &str = "tarmac-webhook";
/// The Lease [`crate::status`] elects its writer with.
pub const LEASE: &str = "tarmac-control";
/// The audience of the projected ServiceAccount tokens proxies prove themselves with.
pub const TOKEN_AUDIENCE: &str = "tarmac";
pub const GRPC_PORT: u16 = 4180;
pub const API_PORT: u16 = 4190;
/// The webhook's port in the pod: unprivileged, so a non-root process may bind it.
pub const WEBHOOK_PORT: u16 = 8443;
/// Where the webhook's Secret is mounted in the control plane's pods.
pub const WEBHOOK_MOUNT: &str = "/var/run/tarmac/webhook";
/// Labels every object carries: `tarmac uninstall` and `tarmac check --pre` recognise
/// Tarmac's own namespace by them.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "tarmac");
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
/// The field manager of server-side apply.
pub const FIELD_MANAGER: &str = "tarmac";
/// The uid and gid of the control plane's image (docker/tarmac-control.Dockerfile).
const CONTROL_UID: i64 = 65532;
const WEBHOOK_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The webhook's serving certificate is read once at start and nothing renews it: a long
/// life, and `tarmac install --apply` after deleting the Secret makes a new one.
const WEBHOOK_CERT_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// What to install.
#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    /// The control plane's image.
    pub image: String,
    /// The image injected sidecars run.
    pub proxy_image: String,
    pub replicas: i32,
    pub identity: IdentitySource,
    pub webhook: WebhookSource,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_string(),
            image: default_image(),
            proxy_image: tarmac_control::inject::default_image(),
            replicas: 2,
            identity: IdentitySource::Generate,
            webhook: WebhookSource::Generate,
        }
    }
}

/// `tarmac/control:<version>`, the tag docker/tarmac-control.Dockerfile documents.
pub fn default_image() -> String {
    format!("tarmac/control:{VERSION}")
}

/// Where the mesh's CA (the Secret `tarmac-identity`) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A trust anchor and an issuer signed by it, generated here.
    Generate,
    /// The Secret is someone else's to create (cert-manager's Certificate, or one kept
    /// from an earlier install): none is written.
    External,
}

/// Where the webhook's serving certificate (the Secret `tarmac-webhook-tls`) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookSource {
    /// A CA generated here, and a serving certificate it signs; the CA is the caBundle.
    Generate,
    /// The Secret is someone else's (or already on the cluster); `ca_pem` signed it and
    /// becomes the caBundle.
    External { ca_pem: String },
}

/// One object to apply: its API resource (for the URL), and the object as JSON.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub object: Value,
}

impl Manifest {
    fn typed<K>(object: &K) -> Result<Self, InstallError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + Metadata<Ty = ObjectMeta>,
    {
        let meta = object.metadata();
        Ok(Self {
            resource: ApiResource::erase::<K>(&()),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            object: serde_json::to_value(object).map_err(InstallError::Serialize)?,
        })
    }

    /// `Kind namespace/name`, as the CLI reports what it did.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} {namespace}/{}", self.resource.kind, self.name),
            None => format!("{} {}", self.resource.kind, self.name),
        }
    }

    pub fn is_crd(&self) -> bool {
        self.resource.kind == "CustomResourceDefinition"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("generating the {what}: {source}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("generating the mesh's CA: {0}")]
    Ca(#[source] tarmac_identity::ca::CaError),
    #[error("a manifest does not fit its Kubernetes type: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("{what} does not fit its Kubernetes type: {source}")]
    Typed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The CustomResourceDefinitions of Tarmac's kinds, typed.
pub fn crds() -> Result<Vec<Manifest>, InstallError> {
    tarmac_control::crds::definitions()
        .into_iter()
        .map(|crd| {
            let crd: CustomResourceDefinition = serde_json::from_value(crd)
                .map_err(|source| InstallError::Typed { what: "a CustomResourceDefinition", source })?;
            Manifest::typed(&crd)
        })
        .collect()
}

/// Everything `tarmac install` creates, in apply order. Certificates are generated anew
/// on each call (unless the options say they come from elsewhere).
pub fn manifests(options: &Options) -> Result<Vec<Manifest>, InstallError> {
    let ns = options.namespace.as_str();
    let mut out = crds()?;
    out.push(Manifest::typed(&namespace(ns))?);
    out.push(Manifest::typed(&ServiceAccount { metadata: meta(CONTROL, Some(ns)), ..Default::default() })?);
    out.push(Manifest::typed(&cluster_role())?);
    out.push(Manifest::typed(&ClusterRoleBinding {
        metadata: meta(CONTROL, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: CONTROL.into(),
        },
        subjects: Some(vec![service_account_subject(ns)]),
    })?);
    out.push(Manifest::typed(&role(ns))?);
    out.push(Manifest::typed(&RoleBinding {
        metadata: meta(CONTROL, Some(ns)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: CONTROL.into(),
        },
        subjects: Some(vec![service_account_subject(ns)]),
    })?);
    if options.identity == IdentitySource::Generate {
        out.push(Manifest::typed(&identity_secret(ns)?)?);
    }
    let ca_bundle = match &options.webhook {
        WebhookSource::Generate => {
            let (secret, ca_pem) = webhook_secret(ns)?;
            out.push(Manifest::typed(&secret)?);
            ca_pem
        }
        WebhookSource::External { ca_pem } => ca_pem.clone(),
    };
    // The Services before the Deployment, so that its pods' first clients find them.
    out.push(Manifest::typed(&control_service(ns))?);
    out.push(Manifest::typed(&webhook_service(ns))?);
    out.push(Manifest::typed(&deployment(options))?);
    out.push(Manifest::typed(&PodDisruptionBudget {
        metadata: meta(CONTROL, Some(ns)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(selector()),
            ..Default::default()
        }),
        ..Default::default()
    })?);
    let service = ServiceRef { namespace: ns, name: WEBHOOK_SERVICE, port: 443 };
    let mut webhook: MutatingWebhookConfiguration =
        serde_json::from_value(configuration(&ca_bundle, &service))
            .map_err(|source| InstallError::Typed { what: "the MutatingWebhookConfiguration", source })?;
    webhook.metadata.labels = Some(labels());
    out.push(Manifest::typed(&webhook)?);
    Ok(out)
}

/// The command line of the control plane's container (after the binary).
pub fn control_args(options: &Options) -> Vec<String> {
    let ns = &options.namespace;
    [
        "--store=kubernetes".to_string(),
        // These two arrive with the identity branch (issue 21, ServiceAccount-token identity).
        format!("--identity-secret={ns}/{IDENTITY_SECRET}"),
        format!("--token-audience={TOKEN_AUDIENCE}"),
        format!("--lease-namespace={ns}"),
        format!("--grpc-listen=0.0.0.0:{GRPC_PORT}"),
        format!("--api-listen=0.0.0.0:{API_PORT}"),
        format!("--webhook-listen=0.0.0.0:{WEBHOOK_PORT}"),
        format!("--webhook-cert={WEBHOOK_MOUNT}/tls.crt"),
        format!("--webhook-key={WEBHOOK_MOUNT}/tls.key"),
        format!("--proxy-image={}", options.proxy_image),
        format!("--sidecar-control-addr={CONTROL}.{ns}.svc:{GRPC_PORT}"),
    ]
    .into()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (PART_OF.0.to_string(), PART_OF.1.to_string()),
        (VERSION_LABEL.to_string(), VERSION.to_string()),
    ])
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels()),
        ..Default::default()
    }
}

fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_string(), CONTROL.to_string())])
}

fn selector() -> LabelSelector {
    LabelSelector { match_labels: Some(selector_labels()), ..Default::default() }
}

fn service_account_subject(namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: CONTROL.into(),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// The control plane's namespace. Pod Security `restricted`, which the control plane's
/// pods meet; the webhook never injects here (the label, and the webhook's own selector).
fn namespace(name: &str) -> Namespace {
    let mut metadata = meta(name, None);
    let labels = metadata.labels.get_or_insert_default();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), "restricted".into());
    }
    labels.insert(tarmac_control::inject::INJECT_KEY.into(), "disabled".into());
    Namespace { metadata, ..Default::default() }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        ..Default::default()
    }
}

/// Across the cluster: what the store watches (list and watch; it never gets single
/// objects), route status, and TokenReviews for proxies' ServiceAccount tokens.
pub fn cluster_role() -> ClusterRole {
    let tarmac_kinds: Vec<&str> = crate::kinds::MODEL_KINDS
        .iter()
        .filter(|kind| kind.group == "tarmac.io")
        .map(|kind| kind.plural)
        .collect();
    ClusterRole {
        metadata: meta(CONTROL, None),
        rules: Some(vec![
            rule("", &["namespaces", "services", "pods"], &["list", "watch"], &[]),
            rule("discovery.k8s.io", &["endpointslices"], &["list", "watch"], &[]),
            rule("gateway.networking.k8s.io", &["httproutes", "grpcroutes"], &["list", "watch"], &[]),
            rule("gateway.networking.k8s.io", &["httproutes/status", "grpcroutes/status"], &["patch"], &[]),
            rule("tarmac.io", &tarmac_kinds, &["list", "watch"], &[]),
            rule("authentication.k8s.io", &["tokenreviews"], &["create"], &[]),
        ]),
        ..Default::default()
    }
}

/// In the control plane's namespace: its Lease (create cannot be limited to a name: the
/// name is not in a create's URL), and the one Secret holding the mesh's CA (list and
/// watch are limited by name too, as the control plane lists it with a field selector on
/// `metadata.name`).
pub fn role(namespace: &str) -> Role {
    Role {
        metadata: meta(CONTROL, Some(namespace)),
        rules: Some(vec![
            rule("coordination.k8s.io", &["leases"], &["create"], &[]),
            rule("coordination.k8s.io", &["leases"], &["get", "update"], &[LEASE]),
            rule("", &["secrets"], &["get", "list", "watch"], &[IDENTITY_SECRET]),
        ]),
    }
}

fn tls_secret(name: &str, namespace: &str, ca: &str, cert: &str, key: &str) -> Secret {
    let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
    Secret {
        metadata: meta(name, Some(namespace)),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(ca)),
            ("tls.crt".to_string(), bytes(cert)),
            ("tls.key".to_string(), bytes(key)),
        ])),
        ..Default::default()
    }
}

/// The mesh's CA in cert-manager's shape: `ca.crt` the trust anchor, `tls.crt` the
/// issuer (signed by it), `tls.key` the issuer's key. The anchor's key is not kept: a new
/// issuer needs a new anchor (or the user's own, through cert-manager).
fn identity_secret(namespace: &str) -> Result<Secret, InstallError> {
    use tarmac_identity::DEFAULT_TRUST_DOMAIN;
    use tarmac_identity::ca::{Ca, generate_root};
    let (root_pem, root_key) = generate_root(DEFAULT_TRUST_DOMAIN).map_err(InstallError::Ca)?;
    let ca = Ca::from_root(&root_pem, &root_key.serialize_pem(), DEFAULT_TRUST_DOMAIN)
        .map_err(InstallError::Ca)?;
    Ok(tls_secret(IDENTITY_SECRET, namespace, ca.anchors_pem(), ca.issuer_pem(), &ca.issuer_key_pem()))
}

/// The names the API server calls the webhook by.
pub fn webhook_dns_names(namespace: &str) -> Vec<String> {
    vec![
        format!("{WEBHOOK_SERVICE}.{namespace}.svc"),
        format!("{WEBHOOK_SERVICE}.{namespace}.svc.cluster.local"),
    ]
}

/// A CA of its own for the webhook (its certificate is the caBundle, its key is thrown
/// away once it signed), and the serving certificate it signs. The mesh's CA is not used:
/// the API server would then trust every workload certificate as the webhook.
fn webhook_secret(namespace: &str) -> Result<(Secret, String), InstallError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    let failed = |what| move |source| InstallError::Certificate { what, source };
    let now = SystemTime::now();
    let backdate = Duration::from_secs(3600);
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed("webhook CA key"))?;
    let mut ca = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tarmac");
    name.push(DnType::CommonName, format!("Tarmac webhook CA for {namespace}"));
    ca.distinguished_name = name;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = (now - backdate).into();
    ca.not_after = (now + WEBHOOK_CA_LIFETIME).into();
    let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(failed("webhook CA"))?;
    let names = webhook_dns_names(namespace);
    let mut leaf = CertificateParams::new(names.clone()).map_err(failed("webhook certificate"))?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, names[0].clone());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = (now - backdate).into();
    leaf.not_after = (now + WEBHOOK_CERT_LIFETIME).into();
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed("webhook key"))?;
    let leaf = leaf.signed_by(&leaf_key, &ca).map_err(failed("webhook certificate"))?;
    let ca_pem = ca.as_ref().pem();
    let secret = tls_secret(WEBHOOK_SECRET, namespace, &ca_pem, &leaf.pem(), &leaf_key.serialize_pem());
    Ok((secret, ca_pem))
}

fn deployment(options: &Options) -> Deployment {
    let ns = options.namespace.as_str();
    let mut pod_labels = labels();
    pod_labels.extend(selector_labels());
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    // The API's index answers once the store has listed every kind (the API is served
    // only after the first complete snapshot), so it is the readiness signal too.
    let probe = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/api/v1".into()),
            port: IntOrString::String("api".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.to_string());
    let container = Container {
        name: CONTROL.into(),
        image: Some(options.image.clone()),
        args: Some(control_args(options)),
        env: Some(vec![EnvVar {
            name: "TARMAC_CONTROL_LOG".into(),
            value: Some("info".into()),
            ..Default::default()
        }]),
        ports: Some(vec![port("grpc", GRPC_PORT), port("api", API_PORT), port("webhook", WEBHOOK_PORT)]),
        readiness_probe: Some(probe(5, 3)),
        // The store's first list may take a minute on a large cluster (--kube-sync-timeout):
        // liveness starts after it and tolerates a minute of silence.
        liveness_probe: Some(Probe { initial_delay_seconds: Some(60), ..probe(10, 6) }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("50m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("512Mi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "webhook-tls".into(),
            mount_path: WEBHOOK_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(CONTROL, Some(ns)),
        spec: Some(DeploymentSpec {
            replicas: Some(options.replicas),
            selector: selector(),
            // One replica at a time, never below the PodDisruptionBudget's one.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROL.into()),
                    // Nothing reads the service link variables; a namespace of many
                    // Services would fill the container's environment with them.
                    enable_service_links: Some(false),
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(CONTROL_UID),
                        run_as_group: Some(CONTROL_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    // Replicas on different nodes where there are several: a node's loss
                    // must not take the webhook (failurePolicy Fail) and discovery with it.
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(selector()),
                        ..Default::default()
                    }]),
                    volumes: Some(vec![Volume {
                        name: "webhook-tls".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(WEBHOOK_SECRET.into()),
                            default_mode: Some(0o440),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service_port(name: &str, port: u16, target: &str, app_protocol: Option<&str>) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        app_protocol: app_protocol.map(str::to_string),
        ..Default::default()
    }
}

fn control_service(namespace: &str) -> Service {
    Service {
        metadata: meta(CONTROL, Some(namespace)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels()),
            ports: Some(vec![
                service_port("grpc", GRPC_PORT, "grpc", Some("kubernetes.io/h2c")),
                service_port("api", API_PORT, "api", Some("http")),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn webhook_service(namespace: &str) -> Service {
    Service {
        metadata: meta(WEBHOOK_SERVICE, Some(namespace)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels()),
            ports: Some(vec![service_port("https", 443, "webhook", Some("https"))]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all() -> Vec<Manifest> {
        manifests(&Options { namespace: "mesh".into(), ..Options::default() }).unwrap()
    }

    fn object<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Value {
        &manifests.iter().find(|m| m.resource.kind == kind && m.name == name).unwrap().object
    }

    #[test]
    fn namespaced_objects_are_in_the_chosen_namespace_and_everything_is_labelled_tarmacs() {
        let manifests = all();
        for m in &manifests {
            if m.object["metadata"].get("namespace").is_some() {
                assert_eq!(m.namespace.as_deref(), Some("mesh"), "{}", m.describe());
            }
            if !m.is_crd() {
                assert_eq!(m.object["metadata"]["labels"][PART_OF.0], PART_OF.1, "{}", m.describe());
            }
        }
        let cluster_scoped: Vec<String> = manifests
            .iter()
            .filter(|m| m.namespace.is_none() && !m.is_crd())
            .map(Manifest::describe)
            .collect();
        assert_eq!(
            cluster_scoped,
            [
                "Namespace mesh",
                "ClusterRole tarmac-control",
                "ClusterRoleBinding tarmac-control",
                "MutatingWebhookConfiguration tarmac-sidecar-injector"
            ]
        );
    }

    #[test]
    fn rbac_has_no_wildcards_and_limits_the_secret_and_the_lease_by_name() {
        let manifests = all();
        for kind in ["ClusterRole", "Role"] {
            for rule in object(&manifests, kind, CONTROL)["rules"].as_array().unwrap() {
                let text = rule.to_string();
                assert!(!text.contains('*'), "{kind}: {text}");
                if rule["resources"] == json!(["secrets"]) {
                    assert_eq!(rule["resourceNames"], json!([IDENTITY_SECRET]));
                }
                if rule["resources"] == json!(["leases"]) && rule["verbs"] != json!(["create"]) {
                    assert_eq!(rule["resourceNames"], json!([LEASE]));
                }
            }
        }
        let cluster_role = object(&manifests, "ClusterRole", CONTROL).to_string();
        assert!(!cluster_role.contains("secrets"), "no Secret across the cluster: {cluster_role}");
        for binding in ["ClusterRoleBinding", "RoleBinding"] {
            let subjects = &object(&manifests, binding, CONTROL)["subjects"];
            assert_eq!(subjects, &json!([{"kind": "ServiceAccount", "name": CONTROL, "namespace": "mesh"}]));
        }
    }

    /// The names that tie the objects together agree: Services' target ports are the
    /// container's ports, whose numbers are the args' listen addresses; the probes'
    /// port exists; the volume is the webhook Secret; the webhook calls the Service.
    #[test]
    fn the_objects_refer_to_each_other_consistently() {
        let manifests = all();
        let deployment = object(&manifests, "Deployment", CONTROL);
        let pod = &deployment["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        let ports: BTreeMap<String, i64> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap()))
            .collect();
        let args: Vec<&str> =
            container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        for (flag, port) in
            [("--grpc-listen", "grpc"), ("--api-listen", "api"), ("--webhook-listen", "webhook")]
        {
            let listen = args.iter().find_map(|a| a.strip_prefix(flag)?.strip_prefix('=')).unwrap();
            assert!(listen.ends_with(&format!(":{}", ports[port])), "{flag} {listen} vs port {port}");
        }
        assert!(args.contains(&"--identity-secret=mesh/tarmac-identity"), "{args:?}");
        assert!(args.contains(&"--lease-namespace=mesh"), "{args:?}");
        // Sidecars find the control plane by its Service's name, in the chosen namespace.
        assert!(
            args.contains(&format!("--sidecar-control-addr={CONTROL}.mesh.svc:{GRPC_PORT}").as_str()),
            "{args:?}"
        );
        for service in [CONTROL, WEBHOOK_SERVICE] {
            let spec = &object(&manifests, "Service", service)["spec"];
            for port in spec["ports"].as_array().unwrap() {
                assert!(ports.contains_key(port["targetPort"].as_str().unwrap()), "{port}");
            }
            for (key, value) in spec["selector"].as_object().unwrap() {
                assert_eq!(&pod["metadata"]["labels"][key], value);
            }
        }
        let pdb = object(&manifests, "PodDisruptionBudget", CONTROL);
        assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
        assert!(ports.contains_key(container["readinessProbe"]["httpGet"]["port"].as_str().unwrap()));
        assert_eq!(pod["spec"]["volumes"][0]["secret"]["secretName"], WEBHOOK_SECRET);
        assert_eq!(pod["spec"]["serviceAccountName"], CONTROL);
        let webhook = object(&manifests, "MutatingWebhookConfiguration", "tarmac-sidecar-injector");
        for hook in webhook["webhooks"].as_array().unwrap() {
            assert_eq!(
                hook["clientConfig"]["service"],
                json!({"namespace": "mesh", "name": WEBHOOK_SERVICE, "port": 443, "path": hook["clientConfig"]["service"]["path"]})
            );
        }
    }

    #[test]
    fn external_sources_leave_their_secrets_out_and_the_given_ca_is_the_ca_bundle() {
        let options = Options {
            identity: IdentitySource::External,
            webhook: WebhookSource::External { ca_pem: "-----BEGIN CERTIFICATE-----\nX\n".into() },
            ..Options::default()
        };
        let manifests = manifests(&options).unwrap();
        assert!(!manifests.iter().any(|m| m.resource.kind == "Secret"));
        let webhook = object(&manifests, "MutatingWebhookConfiguration", "tarmac-sidecar-injector");
        let webhook: MutatingWebhookConfiguration = serde_json::from_value(webhook.clone()).unwrap();
        for hook in webhook.webhooks.unwrap() {
            let bundle = hook.client_config.ca_bundle.unwrap().0;
            assert_eq!(String::from_utf8(bundle).unwrap(), "-----BEGIN CERTIFICATE-----\nX\n");
        }
    }
}
