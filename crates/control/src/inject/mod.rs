//! Sidecar injection: one function that adds `tarmac-proxy` to a Kubernetes pod, used by
//! `tarmac inject` (manifests on disk) and by the mutating admission webhook
//! ([`webhook`]), so that both give the same pod.
//!
//! Pods are handled as JSON values with the field names of the Kubernetes API (`core/v1`
//! Pod and PodTemplateSpec), not as typed structs: a round trip through types would drop
//! whatever field the types do not know (a newer API's, an alpha feature's), and both
//! `tarmac inject` and the webhook promise to change nothing but what they add.
//!
//! What an injected pod gets, and why:
//! - `tarmac-init`, an init container running `tarmac-proxy init`, which writes the same
//!   iptables rules as `tarmac up --transparent` writes in each replica's namespace. It is
//!   the only part with privileges: `NET_ADMIN` to change the pod's `nat` table and
//!   `NET_RAW` because `iptables-legacy` talks to the kernel through a raw socket, every
//!   other capability dropped, and it exits before any app code runs.
//! - `tarmac-proxy`, the sidecar, as a native sidecar (an init container with
//!   `restartPolicy: Always`, Kubernetes 1.29 and later): the kubelet starts the app
//!   containers only once its startup probe (`/ready`) passes, so an app's first
//!   connections never meet an interception rule with no proxy behind it, and a Job's pod
//!   ends when its containers do instead of waiting for a sidecar that never exits (the
//!   two oldest complaints about sidecar meshes). Both go before the pod's own init
//!   containers, which then run with the mesh too.
//! - the proxy's configuration in the annotation `tarmac.io/proxy-config`, mounted as a
//!   file through a `downwardAPI` volume: no ConfigMap per workload to create or garbage
//!   collect, and what the sidecar runs with is visible on the pod.
//! - with the mesh's identity: the trust anchors in the annotation `tarmac.io/trust-anchors`
//!   (a second file of the same `downwardAPI` volume), and a projected ServiceAccount token
//!   for the control plane's audience (`expirationSeconds: 3600`, the kubelet rotates it)
//!   in a volume mounted read-only into the sidecar alone: the app containers never see a
//!   credential that would get them the workload's certificate.
//! - `tarmac.io/injected: <version>`: an injected pod is never injected again, so
//!   injecting twice (or the API server reinvoking the webhook) changes nothing.

pub mod patch;
pub mod webhook;

use serde_json::{Map, Value, json};
use tarmac_transport::host_port::HostPort;

/// The annotation (on a pod or pod template) or label (on a namespace) that opts in
/// (`enabled`) or out (`disabled`).
pub const INJECT_KEY: &str = "tarmac.io/inject";
/// Set on every injected pod, to Tarmac's version: what makes injection idempotent.
pub const INJECTED_ANNOTATION: &str = "tarmac.io/injected";
/// The sidecar's configuration (YAML), read by the sidecar through a `downwardAPI` volume.
pub const CONFIG_ANNOTATION: &str = "tarmac.io/proxy-config";
/// The injected containers and volume.
pub const PROXY_CONTAINER: &str = "tarmac-proxy";
pub const INIT_CONTAINER: &str = "tarmac-init";
pub const CONFIG_VOLUME: &str = "tarmac-proxy-config";
const CONFIG_DIR: &str = "/var/run/tarmac/config";
const CONFIG_FILE: &str = "proxy.yaml";
/// The mesh's trust anchors (PEM), read by the sidecar through the config volume.
pub const ANCHORS_ANNOTATION: &str = "tarmac.io/trust-anchors";
const ANCHORS_FILE: &str = "trust-anchors.pem";
/// The projected ServiceAccount token's volume, the sidecar's only.
pub const TOKEN_VOLUME: &str = "tarmac-token";
const TOKEN_DIR: &str = "/var/run/secrets/tarmac.io/serviceaccount";
const TOKEN_FILE: &str = "token";
/// How long a projected token lives; the kubelet rewrites it at 80 % of this.
pub const TOKEN_EXPIRATION_SECONDS: u32 = 3600;

/// The sidecar's ports, as `tarmac up --transparent` uses them (ARCHITECTURE.md, Ports).
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
/// The proxy's uid: its own connections are the ones the interception rules let out.
pub const PROXY_UID: u32 = 2102;

/// Tarmac's version, written in `tarmac.io/injected` and the default image's tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Mesh-wide choices that are not read from the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The image holding `tarmac-proxy`, for both injected containers.
    pub proxy_image: String,
    /// Where sidecars reach the control plane's discovery and identity; `None`: sidecars
    /// run without discovery (interception and metrics only). On a cluster, the Service's
    /// name (`tarmac-control.tarmac-system.svc:4180`).
    pub control_addr: Option<HostPort>,
    /// The mesh's identity, for sidecars to get certificates from the control plane (with
    /// `control_addr`); `None`: sidecars run without mTLS.
    pub identity: Option<IdentitySettings>,
}

/// What a sidecar needs for the mesh's identity on Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySettings {
    /// The trust anchors (PEM): the CA's `ca.crt`.
    pub trust_anchors: String,
    /// The audience of the projected ServiceAccount token (`tarmac-control --token-audience`).
    pub audience: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self { proxy_image: default_image(), control_addr: None, identity: None }
    }
}

/// `tarmac/proxy:<version>`.
pub fn default_image() -> String {
    format!("tarmac/proxy:{VERSION}")
}

/// Where a pod sits, as far as injection cares.
#[derive(Clone, Copy, Debug, Default)]
pub struct PodContext<'a> {
    /// The pod's namespace (a CREATE request's `namespace`, or the manifest's).
    pub namespace: &'a str,
    /// Whether the namespace is labelled `tarmac.io/inject: enabled`.
    pub namespace_enabled: bool,
    /// For a template, the name of the object holding it (the Deployment's, the Job's):
    /// the workload name when the pod's labels give none.
    pub owner: Option<&'a str>,
}

/// What [`inject`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// `tarmac.io/injected` was there: nothing changed.
    AlreadyInjected,
    Skipped(Skip),
}

/// Why a pod was left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace opts in.
    NotEnabled,
    /// The pod says `tarmac.io/inject: disabled`.
    Disabled,
    /// `hostNetwork: true`: the pod shares the node's network namespace, where the
    /// interception rules would capture the node's own traffic (the kubelet's, every
    /// host-network pod's). Such pods are never injected.
    HostNetwork,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::NotEnabled => "neither the pod nor its namespace sets tarmac.io/inject: enabled",
            Skip::Disabled => "the pod sets tarmac.io/inject: disabled",
            Skip::HostNetwork => "hostNetwork pods share the node's network and are never injected",
        })
    }
}

/// A pod that cannot be injected, by the field at fault (`spec.initContainers`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InjectError {
    pub field: String,
    pub message: String,
}

fn refused(field: &str, message: impl Into<String>) -> InjectError {
    InjectError { field: field.to_string(), message: message.into() }
}

/// Injects the sidecar into `pod`, a Pod or a PodTemplateSpec (an object with `metadata`
/// and `spec`), if it opts in. Only `metadata.annotations`, `spec.initContainers` and
/// `spec.volumes` change; everything else is left as written.
pub fn inject(
    pod: &mut Value,
    context: &PodContext<'_>,
    settings: &Settings,
) -> Result<Outcome, InjectError> {
    if pod.get("metadata").is_some_and(|m| !m.is_object() && !m.is_null()) {
        return Err(refused("metadata", "must be a map"));
    }
    let annotations = pod.pointer("/metadata/annotations");
    if annotations.is_some_and(|a| !a.is_object() && !a.is_null()) {
        return Err(refused("metadata.annotations", "must be a map of strings"));
    }
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
    if annotation(INJECTED_ANNOTATION).is_some() {
        return Ok(Outcome::AlreadyInjected);
    }
    match annotation(INJECT_KEY) {
        Some("disabled") => return Ok(Outcome::Skipped(Skip::Disabled)),
        Some("enabled") => {}
        Some(other) => {
            return Err(refused(
                &format!("metadata.annotations[{INJECT_KEY}]"),
                format!("`{other}` is neither `enabled` nor `disabled`"),
            ));
        }
        None if context.namespace_enabled => {}
        None => return Ok(Outcome::Skipped(Skip::NotEnabled)),
    }
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return Err(refused("spec", "missing, or not a map"));
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    for field in ["containers", "initContainers"] {
        let containers = match spec.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(containers)) => containers,
            Some(_) => return Err(refused(&format!("spec.{field}"), "must be a list of containers")),
        };
        for (i, container) in containers.iter().enumerate() {
            let name = container.get("name").and_then(Value::as_str);
            if name == Some(PROXY_CONTAINER) || name == Some(INIT_CONTAINER) {
                return Err(refused(
                    &format!("spec.{field}[{i}].name"),
                    format!("`{}` is the name of an injected container", name.unwrap_or_default()),
                ));
            }
            // The sidecar shares the pod's network namespace: an app on one of its ports
            // would fail to bind, or take its traffic.
            let sidecar_ports = [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT].map(u64::from);
            let ports = container.get("ports").and_then(Value::as_array).into_iter().flatten();
            if let Some(taken) = ports
                .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
                .find(|p| sidecar_ports.contains(p))
            {
                return Err(refused(
                    &format!("spec.{field}[{i}].ports"),
                    format!(
                        "port {taken} is the sidecar's (inbound {INBOUND_PORT}, outbound {OUTBOUND_PORT}, admin {ADMIN_PORT})"
                    ),
                ));
            }
        }
    }
    if !matches!(spec.get("volumes"), None | Some(Value::Null) | Some(Value::Array(_))) {
        return Err(refused("spec.volumes", "must be a list of volumes"));
    }
    if spec.get("volumes").and_then(Value::as_array).is_some_and(|volumes| {
        volumes.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(CONFIG_VOLUME))
    }) {
        return Err(refused("spec.volumes", format!("a volume is already named `{CONFIG_VOLUME}`")));
    }
    if spec.get("volumes").and_then(Value::as_array).is_some_and(|volumes| {
        volumes.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(TOKEN_VOLUME))
    }) {
        return Err(refused("spec.volumes", format!("a volume is already named `{TOKEN_VOLUME}`")));
    }
    // A pod that opts out of its ServiceAccount token still gets the sidecar's: the
    // projected volume is the sidecar's own, for Tarmac's audience only.
    let identity = identity_settings(settings);

    let config = proxy_config(pod, context, settings);
    let metadata = object_at(pod, "metadata");
    let annotations = object_at_map(metadata, "annotations");
    annotations.insert(INJECTED_ANNOTATION.to_string(), Value::String(VERSION.to_string()));
    annotations.insert(CONFIG_ANNOTATION.to_string(), Value::String(config));
    if let Some(identity) = identity {
        annotations.insert(ANCHORS_ANNOTATION.to_string(), Value::String(identity.trust_anchors.clone()));
    }

    let spec = object_at(pod, "spec");
    let init = list_at(spec, "initContainers");
    init.splice(0..0, [init_container(settings), proxy_container(settings, identity.is_some())]);
    let volumes = list_at(spec, "volumes");
    volumes.push(config_volume(identity.is_some()));
    if let Some(identity) = identity {
        volumes.push(token_volume(&identity.audience));
    }
    Ok(Outcome::Injected)
}

/// The map at `key` of `value` (an object), created if missing or null.
fn object_at<'a>(value: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let map = value.as_object_mut().expect("checked to be an object");
    object_at_map(map, key)
}

fn object_at_map<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("just made an object")
}

fn list_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    entry.as_array_mut().expect("just made a list")
}

/// The workload a pod belongs to, as the control plane names it: the usual name labels,
/// else the object holding the template, else the pod's own name.
fn workload_name(pod: &Value, context: &PodContext<'_>) -> String {
    let labels = pod.pointer("/metadata/labels");
    let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    let generated =
        pod.pointer("/metadata/generateName").and_then(Value::as_str).map(|g| g.trim_end_matches('-'));
    label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .or(context.owner)
        .or_else(|| pod.pointer("/metadata/name").and_then(Value::as_str))
        .or(generated)
        .unwrap_or("unknown")
        .to_string()
}

/// The sidecar's configuration file (docs/proxy-config.md): transparent both ways, the
/// admin listener reachable by the kubelet's probes, discovery if the mesh has it.
fn proxy_config(pod: &Value, context: &PodContext<'_>, settings: &Settings) -> String {
    // PREROUTING's REDIRECT sends inbound connections to the pod's own address, so the
    // inbound listener takes every address; OUTPUT's sends the app's to loopback.
    let mut yaml = format!(
        "# Written by Tarmac's sidecar injection {VERSION}.\nadmin: \"0.0.0.0:{ADMIN_PORT}\"\n\
         inbound:\n  listen: \"0.0.0.0:{INBOUND_PORT}\"\n  transparent: true\n\
         outbound:\n  transparent_listen: \"127.0.0.1:{OUTBOUND_PORT}\"\n"
    );
    if let Some(addr) = &settings.control_addr {
        let service_account =
            pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
        yaml.push_str(&format!(
            "control:\n  addr: \"{addr}\"\n  namespace: {}\n  workload: {}\n  service_account: {}\n",
            yaml_string(context.namespace),
            yaml_string(&workload_name(pod, context)),
            yaml_string(service_account),
        ));
    }
    if identity_settings(settings).is_some() {
        yaml.push_str(&format!(
            "identity:\n  trust_anchors: \"{CONFIG_DIR}/{ANCHORS_FILE}\"\n  service_account_token: \"{TOKEN_DIR}/{TOKEN_FILE}\"\n"
        ));
    }
    yaml
}

/// The identity settings, if sidecars can use them (they need the control plane).
fn identity_settings(settings: &Settings) -> Option<&IdentitySettings> {
    settings.identity.as_ref().filter(|_| settings.control_addr.is_some())
}

/// A YAML scalar that stays a string whatever it holds (`"no"`, `"1"`).
fn yaml_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Both containers are small: the proxy runs one thread and holds about 15 KiB per idle
/// connection (bench/README). Requests are what scheduling reserves for every replica of
/// every meshed workload, so they are kept to what an idle sidecar uses. Memory has a
/// limit (a runaway proxy is killed and restarted rather than starving the app beside it)
/// with room for the proxy's connection caps; CPU has none, since a CPU limit throttles a
/// proxy in the middle of requests and shows up as tail latency for the app.
fn resources() -> Value {
    json!({
        "requests": {"cpu": "10m", "memory": "20Mi"},
        "limits": {"memory": "256Mi"},
    })
}

fn init_container(settings: &Settings) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": settings.proxy_image,
        "args": [
            "init",
            "--inbound-port", INBOUND_PORT.to_string(),
            "--outbound-port", OUTBOUND_PORT.to_string(),
            "--proxy-uid", PROXY_UID.to_string(),
            // The kubelet's probes of the sidecar must reach it, not be sent through it.
            "--skip-inbound-ports", ADMIN_PORT.to_string(),
        ],
        "resources": resources(),
        "securityContext": {
            // Capabilities take effect for root only; nothing else in the pod runs as root.
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

fn proxy_container(settings: &Settings, with_token: bool) -> Value {
    let ready = json!({"httpGet": {"path": "/ready", "port": ADMIN_PORT}});
    let mut startup = ready.clone();
    // The app waits for this probe: check often, and give a slow first certificate
    // two minutes.
    startup["periodSeconds"] = json!(1);
    startup["failureThreshold"] = json!(120);
    let mut readiness = ready;
    readiness["periodSeconds"] = json!(5);
    let mut mounts = vec![json!({"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true})];
    if with_token {
        mounts.push(json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}));
    }
    json!({
        "name": PROXY_CONTAINER,
        "image": settings.proxy_image,
        "restartPolicy": "Always",
        "args": ["--config", format!("{CONFIG_DIR}/{CONFIG_FILE}")],
        "ports": [
            {"name": "tarmac-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "tarmac-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "startupProbe": startup,
        "readinessProbe": readiness,
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": resources(),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    })
}

fn config_volume(with_anchors: bool) -> Value {
    let mut items = vec![json!({
        "path": CONFIG_FILE,
        "fieldRef": {"fieldPath": format!("metadata.annotations['{CONFIG_ANNOTATION}']")},
    })];
    if with_anchors {
        items.push(json!({
            "path": ANCHORS_FILE,
            "fieldRef": {"fieldPath": format!("metadata.annotations['{ANCHORS_ANNOTATION}']")},
        }));
    }
    json!({"name": CONFIG_VOLUME, "downwardAPI": {"items": items}})
}

fn token_volume(audience: &str) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": audience,
            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            "path": TOKEN_FILE,
        }}]},
    })
}

/// The pod templates of a manifest, with where they sit: a Pod itself; the template of a
/// Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController or Job; a
/// CronJob's job's template; and those of a `List`'s items. Other kinds have none.
pub fn pod_templates(document: &mut Value) -> Vec<Template<'_>> {
    let mut found = Vec::new();
    collect_templates(document, &mut found);
    found
}

/// A pod template found in a manifest.
#[derive(Debug)]
pub struct Template<'a> {
    /// The object's `metadata.namespace`, if set.
    pub namespace: Option<String>,
    /// The object holding the template, for a workload (not for a Pod).
    pub owner: Option<String>,
    /// The Pod or PodTemplateSpec.
    pub pod: &'a mut Value,
}

fn collect_templates<'a>(document: &'a mut Value, found: &mut Vec<Template<'a>>) {
    let kind = document.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let namespace = document.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from);
    let name = document.pointer("/metadata/name").and_then(Value::as_str).map(String::from);
    let template = match kind.as_str() {
        "Pod" => {
            found.push(Template { namespace, owner: None, pod: document });
            return;
        }
        "List" => {
            if let Some(items) = document.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    collect_templates(item, found);
                }
            }
            return;
        }
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            document.pointer_mut("/spec/template")
        }
        "CronJob" => document.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => None,
    };
    if let Some(pod) = template.filter(|t| t.is_object()) {
        found.push(Template { namespace, owner: name, pod });
    }
}

#[cfg(test)]
mod tests;
