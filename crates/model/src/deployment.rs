//! `apps/v1` Deployment, run in local mode as a [`Workload`] is: one directory of
//! manifests runs on a laptop and applies to a cluster.
//!
//! Local mode runs the pod template's first container's `command` and `args` on this
//! machine with its `env`, as `spec.replicas` replicas, each with the template's labels
//! (what Services select) and `serviceAccountName` (the identity of its certificate).
//!
//! Every other field a Deployment may have falls in one of three sets, so that nothing is
//! accepted and silently ignored:
//! - **owned by the API server** (`status`, `metadata.uid`, ...): ignored, as everywhere;
//! - **cluster only** (the image, resources, probes, rollout strategy, scheduling, ...):
//!   accepted, since they are what the cluster needs, and listed on the Workload
//!   ([`Workload::cluster_only`]) for `tarmac check` and `tarmac up` to warn about;
//! - **needed by the app but impossible here** (volumes, a second container, `valueFrom`,
//!   ...): refused, naming the field and why.
//!
//! Any other field is refused as unknown: a typo must not turn a setting off.

use crate::meta::{ObjectMeta, ServerOwned};
use crate::validate::Problem;
use crate::workload::{Workload, WorkloadSpec};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Deployment {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
    #[serde(default)]
    pub status: ServerOwned,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default = "one")]
    pub replicas: u32,
    pub selector: LabelSelector,
    pub template: PodTemplate,
    // Rollouts: a cluster replaces pods by them; local mode restarts a changed Deployment's
    // replicas whole.
    #[serde(default)]
    pub strategy: Option<ServerOwned>,
    #[serde(default)]
    pub revision_history_limit: Option<ServerOwned>,
    #[serde(default)]
    pub progress_deadline_seconds: Option<ServerOwned>,
    #[serde(default)]
    pub min_ready_seconds: Option<ServerOwned>,
    #[serde(default)]
    pub paused: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Option<ServerOwned>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: PodTemplateMeta,
    pub spec: PodSpec,
}

/// A pod template's metadata: no name of its own.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodTemplateMeta {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `kubectl get -o yaml` prints `creationTimestamp: null` here.
    #[serde(default)]
    pub creation_timestamp: ServerOwned,
}

/// The fields of a Kubernetes PodSpec, each honoured, cluster only or refused.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Vec<Container>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// The deprecated spelling of `serviceAccountName`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// `Always`, the only value a Deployment allows.
    #[serde(default)]
    pub restart_policy: Option<String>,
    // Cluster only: scheduling, DNS, security and lifecycle of the pod.
    #[serde(default)]
    pub dns_policy: Option<ServerOwned>,
    #[serde(default)]
    pub dns_config: Option<ServerOwned>,
    #[serde(default)]
    pub scheduler_name: Option<ServerOwned>,
    #[serde(default)]
    pub security_context: Option<ServerOwned>,
    #[serde(default)]
    pub termination_grace_period_seconds: Option<ServerOwned>,
    #[serde(default)]
    pub node_selector: Option<ServerOwned>,
    #[serde(default)]
    pub affinity: Option<ServerOwned>,
    #[serde(default)]
    pub tolerations: Option<ServerOwned>,
    #[serde(default)]
    pub topology_spread_constraints: Option<ServerOwned>,
    #[serde(default)]
    pub priority_class_name: Option<ServerOwned>,
    #[serde(default)]
    pub priority: Option<ServerOwned>,
    #[serde(default)]
    pub preemption_policy: Option<ServerOwned>,
    #[serde(default)]
    pub runtime_class_name: Option<ServerOwned>,
    #[serde(default)]
    pub image_pull_secrets: Option<ServerOwned>,
    #[serde(default)]
    pub automount_service_account_token: Option<ServerOwned>,
    #[serde(default)]
    pub enable_service_links: Option<ServerOwned>,
    #[serde(default)]
    pub hostname: Option<ServerOwned>,
    #[serde(default)]
    pub subdomain: Option<ServerOwned>,
    #[serde(default, rename = "setHostnameAsFQDN")]
    pub set_hostname_as_fqdn: Option<ServerOwned>,
    // Refused: the app would miss them.
    #[serde(default)]
    pub init_containers: Option<ServerOwned>,
    #[serde(default)]
    pub volumes: Option<ServerOwned>,
    #[serde(default)]
    pub host_network: Option<ServerOwned>,
    #[serde(default, rename = "hostPID")]
    pub host_pid: Option<ServerOwned>,
    #[serde(default, rename = "hostIPC")]
    pub host_ipc: Option<ServerOwned>,
    #[serde(default)]
    pub host_aliases: Option<ServerOwned>,
    #[serde(default)]
    pub share_process_namespace: Option<ServerOwned>,
    #[serde(default)]
    pub ephemeral_containers: Option<ServerOwned>,
    #[serde(default)]
    pub node_name: Option<ServerOwned>,
    #[serde(default)]
    pub active_deadline_seconds: Option<ServerOwned>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    // Cluster only.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_pull_policy: Option<ServerOwned>,
    #[serde(default)]
    pub resources: Option<ServerOwned>,
    #[serde(default)]
    pub liveness_probe: Option<ServerOwned>,
    #[serde(default)]
    pub readiness_probe: Option<ServerOwned>,
    #[serde(default)]
    pub startup_probe: Option<ServerOwned>,
    #[serde(default)]
    pub security_context: Option<ServerOwned>,
    #[serde(default)]
    pub lifecycle: Option<ServerOwned>,
    #[serde(default)]
    pub termination_message_path: Option<ServerOwned>,
    #[serde(default)]
    pub termination_message_policy: Option<ServerOwned>,
    #[serde(default)]
    pub resize_policy: Option<ServerOwned>,
    // Refused: the app would miss them.
    #[serde(default)]
    pub env_from: Option<ServerOwned>,
    #[serde(default)]
    pub volume_mounts: Option<ServerOwned>,
    #[serde(default)]
    pub volume_devices: Option<ServerOwned>,
    /// A path inside the image; local mode runs in the configuration directory.
    #[serde(default)]
    pub working_dir: Option<ServerOwned>,
    #[serde(default)]
    pub stdin: Option<ServerOwned>,
    #[serde(default)]
    pub tty: Option<ServerOwned>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_from: Option<ServerOwned>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    pub container_port: u16,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub host_port: Option<ServerOwned>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<ServerOwned>,
}

fn one() -> u32 {
    1
}

// === impl Deployment ===

impl Deployment {
    /// The Workload local mode runs for this Deployment, or every field it cannot honour.
    pub fn into_workload(self) -> Result<Workload, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut refuse =
            |field: String, message: &str| problems.push(Problem { field, message: message.into() });
        let mut cluster_only = Vec::new();
        let spec = self.spec;
        let pod = &spec.template.spec;
        let template_labels = &spec.template.metadata.labels;

        if spec.paused == Some(true) {
            refuse(
                "spec.paused".into(),
                "a paused Deployment cannot run in local mode; unpause it or remove it",
            );
        }
        if spec.selector.match_expressions.is_some() {
            refuse(
                "spec.selector.matchExpressions".into(),
                "is not supported in local mode: select the pod template's labels with `matchLabels`",
            );
        }
        if spec.selector.match_labels.is_empty() {
            refuse(
                "spec.selector.matchLabels".into(),
                "a Deployment selects its pods by labels, e.g. `app: books`",
            );
        }
        for (key, value) in &spec.selector.match_labels {
            if template_labels.get(key) != Some(value) {
                refuse(
                    format!("spec.selector.matchLabels.{key}"),
                    "must also be a label of the pod template (`spec.template.metadata.labels`), as the API server requires",
                );
            }
        }
        for (present, field) in [
            (spec.strategy.is_some(), "spec.strategy"),
            (spec.revision_history_limit.is_some(), "spec.revisionHistoryLimit"),
            (spec.progress_deadline_seconds.is_some(), "spec.progressDeadlineSeconds"),
            (spec.min_ready_seconds.is_some(), "spec.minReadySeconds"),
        ] {
            if present {
                cluster_only.push(field.to_string());
            }
        }

        let at = "spec.template.spec";
        if let Some(policy) = pod.restart_policy.as_deref().filter(|p| *p != "Always") {
            refuse(
                format!("{at}.restartPolicy"),
                &format!("`{policy}`: a Deployment's pods restart `Always`"),
            );
        }
        let service_account = match (&pod.service_account_name, &pod.service_account) {
            (Some(name), Some(old)) if name != old => {
                refuse(format!("{at}.serviceAccount"), "differs from `serviceAccountName`; remove it");
                name.clone()
            }
            (Some(name), _) | (None, Some(name)) => name.clone(),
            (None, None) => "default".to_string(),
        };
        for (present, field) in [
            (pod.dns_policy.is_some(), "dnsPolicy"),
            (pod.dns_config.is_some(), "dnsConfig"),
            (pod.scheduler_name.is_some(), "schedulerName"),
            (pod.security_context.is_some(), "securityContext"),
            (pod.termination_grace_period_seconds.is_some(), "terminationGracePeriodSeconds"),
            (pod.node_selector.is_some(), "nodeSelector"),
            (pod.affinity.is_some(), "affinity"),
            (pod.tolerations.is_some(), "tolerations"),
            (pod.topology_spread_constraints.is_some(), "topologySpreadConstraints"),
            (pod.priority_class_name.is_some(), "priorityClassName"),
            (pod.priority.is_some(), "priority"),
            (pod.preemption_policy.is_some(), "preemptionPolicy"),
            (pod.runtime_class_name.is_some(), "runtimeClassName"),
            (pod.image_pull_secrets.is_some(), "imagePullSecrets"),
            (pod.automount_service_account_token.is_some(), "automountServiceAccountToken"),
            (pod.enable_service_links.is_some(), "enableServiceLinks"),
            (pod.hostname.is_some(), "hostname"),
            (pod.subdomain.is_some(), "subdomain"),
            (pod.set_hostname_as_fqdn.is_some(), "setHostnameAsFQDN"),
        ] {
            if present {
                cluster_only.push(format!("{at}.{field}"));
            }
        }
        for (present, field, why) in [
            (
                pod.init_containers.is_some(),
                "initContainers",
                "local mode runs one process per replica, not init containers",
            ),
            (
                pod.volumes.is_some(),
                "volumes",
                "local mode mounts no volumes: the app would not find its files",
            ),
            (
                pod.host_network.is_some(),
                "hostNetwork",
                "local mode runs every replica on this machine's loopback already",
            ),
            (pod.host_pid.is_some(), "hostPID", "has no meaning for a process on this machine"),
            (pod.host_ipc.is_some(), "hostIPC", "has no meaning for a process on this machine"),
            (pod.host_aliases.is_some(), "hostAliases", "local mode does not write hosts files from it"),
            (
                pod.share_process_namespace.is_some(),
                "shareProcessNamespace",
                "has no meaning for a process on this machine",
            ),
            (
                pod.ephemeral_containers.is_some(),
                "ephemeralContainers",
                "local mode runs one process per replica",
            ),
            (pod.node_name.is_some(), "nodeName", "local mode has one node, this machine"),
            (
                pod.active_deadline_seconds.is_some(),
                "activeDeadlineSeconds",
                "local mode does not stop replicas after a deadline",
            ),
        ] {
            if present {
                refuse(format!("{at}.{field}"), &format!("cannot be honoured in local mode: {why}"));
            }
        }

        let mut workload_spec = WorkloadSpec {
            replicas: spec.replicas,
            service_account_name: service_account,
            ..Default::default()
        };
        match pod.containers.as_slice() {
            [] => refuse(format!("{at}.containers"), "a pod needs a container"),
            [container, rest @ ..] => {
                let at = format!("{at}.containers[0]");
                if !rest.is_empty() {
                    refuse(
                        "spec.template.spec.containers[1]".into(),
                        "local mode runs one process per replica, the first container's: a second container cannot run beside it",
                    );
                }
                if container.command.is_empty() {
                    refuse(
                        format!("{at}.command"),
                        "local mode runs `command` (and `args`) on this machine, not the image's entrypoint: set it",
                    );
                }
                let mut env = BTreeMap::new();
                for (i, var) in container.env.iter().enumerate() {
                    if var.name.is_empty() || var.name.contains('=') || var.name.contains('\0') {
                        refuse(format!("{at}.env[{i}].name"), "is not a valid environment variable name");
                    }
                    if var.value_from.is_some() {
                        refuse(
                            format!("{at}.env[{i}].valueFrom"),
                            "cannot be resolved in local mode (Secrets, ConfigMaps and the pod's fields are the cluster's): give `value`",
                        );
                    }
                    env.insert(var.name.clone(), expand(var.value.as_deref().unwrap_or(""), &env));
                }
                workload_spec.command = container.command.iter().map(|a| expand(a, &env)).collect();
                workload_spec.args = container.args.iter().map(|a| expand(a, &env)).collect();
                workload_spec.env = env;
                match container.ports.first() {
                    Some(port) => workload_spec.port = port.container_port,
                    None => refuse(
                        format!("{at}.ports"),
                        "local mode needs the port the app serves on: list it as a `containerPort`",
                    ),
                }
                for (i, port) in container.ports.iter().enumerate() {
                    if let Some(proto) = port.protocol.as_deref().filter(|p| *p != "TCP") {
                        refuse(
                            format!("{at}.ports[{i}].protocol"),
                            &format!("`{proto}` is not supported: Tarmac proxies TCP"),
                        );
                    }
                    if port.host_port.is_some() || port.host_ip.is_some() {
                        refuse(
                            format!("{at}.ports[{i}].hostPort"),
                            "cannot be honoured in local mode: every replica gets a free port of its own in `PORT`",
                        );
                    }
                    if i > 0 {
                        cluster_only.push(format!("{at}.ports[{i}] (local mode serves the first port only)"));
                    }
                }
                for (present, field) in [
                    (container.image.is_some(), "image"),
                    (container.image_pull_policy.is_some(), "imagePullPolicy"),
                    (container.resources.is_some(), "resources"),
                    (container.liveness_probe.is_some(), "livenessProbe"),
                    (container.readiness_probe.is_some(), "readinessProbe"),
                    (container.startup_probe.is_some(), "startupProbe"),
                    (container.security_context.is_some(), "securityContext"),
                    (container.lifecycle.is_some(), "lifecycle"),
                    (container.termination_message_path.is_some(), "terminationMessagePath"),
                    (container.termination_message_policy.is_some(), "terminationMessagePolicy"),
                    (container.resize_policy.is_some(), "resizePolicy"),
                ] {
                    if present {
                        cluster_only.push(format!("{at}.{field}"));
                    }
                }
                for (present, field, why) in [
                    (
                        container.env_from.is_some(),
                        "envFrom",
                        "Secrets and ConfigMaps are the cluster's: list the variables in `env`",
                    ),
                    (
                        container.volume_mounts.is_some(),
                        "volumeMounts",
                        "local mode mounts no volumes: the app would not find its files",
                    ),
                    (container.volume_devices.is_some(), "volumeDevices", "local mode mounts no volumes"),
                    (
                        container.working_dir.is_some(),
                        "workingDir",
                        "it is a path inside the image; local mode runs the command in the configuration directory",
                    ),
                    (container.stdin.is_some(), "stdin", "local mode gives apps no input"),
                    (container.tty.is_some(), "tty", "local mode gives apps no terminal"),
                ] {
                    if present {
                        refuse(format!("{at}.{field}"), &format!("cannot be honoured in local mode: {why}"));
                    }
                }
            }
        }
        if template_labels.is_empty() {
            refuse(
                "spec.template.metadata.labels".into(),
                "the pod template needs labels for Services to select its replicas, e.g. `app: books`",
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // The pods' annotations; the default policy may also be set on the Deployment
        // itself (the pod template's wins).
        let mut annotations = spec.template.metadata.annotations;
        if let Some(policy) = self.metadata.annotations.get(crate::authz::DEFAULT_POLICY_ANNOTATION) {
            annotations
                .entry(crate::authz::DEFAULT_POLICY_ANNOTATION.to_string())
                .or_insert_with(|| policy.clone());
        }
        let metadata = ObjectMeta {
            name: self.metadata.name,
            namespace: self.metadata.namespace,
            // What Services select: the pods' labels, not the Deployment's own.
            labels: spec.template.metadata.labels,
            annotations,
            ..Default::default()
        };
        Ok(Workload {
            api_version: self.api_version,
            kind: self.kind,
            metadata,
            spec: workload_spec,
            status: ServerOwned,
            cluster_only,
        })
    }
}

/// One line saying which fields of the Deployment `workload` was read from only a cluster
/// applies, for `tarmac check` and `tarmac up`; None when there are none (or it is a
/// Workload).
pub fn cluster_only_warning(workload: &Workload) -> Option<String> {
    if workload.cluster_only.is_empty() {
        return None;
    }
    Some(format!(
        "Deployment {}/{}: applied on a cluster only, not here: {}",
        workload.metadata.namespace,
        workload.metadata.name,
        workload.cluster_only.join(", ")
    ))
}

/// Kubernetes' expansion of `$(NAME)` in a container's command, args and env values:
/// a variable defined (earlier, for env) is replaced, `$$` is a literal `$`, anything else
/// stays as written.
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(reference) = tail.strip_prefix("$(")
            && let Some(end) = reference.find(')')
            && let Some(value) = env.get(&reference[..end])
        {
            out.push_str(value);
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Resource, parse_documents};

    /// A Deployment as `kubectl get deploy books -o yaml` prints it: what was written plus
    /// what the API server added (defaults, `status`, metadata).
    const BOOKS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    deployment.kubernetes.io/revision: "1"
  creationTimestamp: "2026-11-30T09:12:44Z"
  generation: 1
  labels:
    team: shop
  name: books
  namespace: shop
  resourceVersion: "48250"
  uid: 7f6e5d4c-1111-2222-3333-444455556666
spec:
  progressDeadlineSeconds: 600
  replicas: 2
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      app: books
  strategy:
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 25%
    type: RollingUpdate
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: books
        version: v1
    spec:
      containers:
      - args:
        - --port=$(PORT)
        - --greeting=$(GREETING)
        command:
        - python3
        - -u
        - books.py
        env:
        - name: GREETING
          value: hello
        image: registry.example/books:1.4
        imagePullPolicy: IfNotPresent
        name: books
        ports:
        - containerPort: 8080
          name: http
          protocol: TCP
        resources:
          limits:
            memory: 128Mi
        terminationMessagePath: /dev/termination-log
        terminationMessagePolicy: File
      dnsPolicy: ClusterFirst
      restartPolicy: Always
      schedulerName: default-scheduler
      securityContext: {}
      serviceAccountName: books
      terminationGracePeriodSeconds: 30
status:
  availableReplicas: 2
  observedGeneration: 1
  readyReplicas: 2
  replicas: 2
"#;

    fn workload(yaml: &str) -> Workload {
        match parse_documents("books.yaml", yaml).unwrap_or_else(|e| panic!("{e:?}")).remove(0) {
            Resource::Workload(w) => w,
            other => panic!("{other:?}"),
        }
    }

    fn errors(yaml: &str) -> Vec<String> {
        parse_documents("books.yaml", yaml).unwrap_err().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_deployment_runs_as_a_workload_with_the_pod_templates_labels() {
        let w = workload(BOOKS);
        assert_eq!(
            (w.kind.as_str(), w.metadata.namespace.as_str(), w.metadata.name.as_str()),
            ("Deployment", "shop", "books")
        );
        assert_eq!(
            w.metadata.labels,
            BTreeMap::from([
                ("app".to_string(), "books".to_string()),
                ("version".to_string(), "v1".to_string())
            ])
        );
        assert_eq!(w.spec.replicas, 2);
        assert_eq!(w.spec.command, ["python3", "-u", "books.py"]);
        // `$(NAME)` of a variable the container defines expands; `PORT` is local mode's own.
        assert_eq!(w.spec.args, ["--port=$(PORT)", "--greeting=hello"]);
        assert_eq!(w.spec.env, BTreeMap::from([("GREETING".to_string(), "hello".to_string())]));
        assert_eq!(w.spec.port, 8080);
        assert_eq!(w.spec.service_account_name, "books");
        // What only a cluster applies is listed for `tarmac check`, not dropped silently.
        for field in [
            "spec.strategy",
            "spec.template.spec.containers[0].image",
            "spec.template.spec.containers[0].resources",
            "spec.template.spec.terminationGracePeriodSeconds",
        ] {
            assert!(w.cluster_only.iter().any(|f| f == field), "{field} missing from {:?}", w.cluster_only);
        }
        assert_eq!(crate::Resource::Workload(w).key().to_string(), "Workload shop/books");
    }

    #[test]
    fn what_local_mode_cannot_honour_is_refused_by_field() {
        let cases = [
            (
                BOOKS.replace(
                    "      serviceAccountName: books\n",
                    "      serviceAccountName: books\n      volumes: [{name: data, emptyDir: {}}]\n",
                ),
                "spec.template.spec.volumes",
                "mounts no volumes",
            ),
            (
                BOOKS.replace(
                    "        - name: GREETING\n          value: hello\n",
                    "        - name: GREETING\n          valueFrom: {secretKeyRef: {name: s, key: k}}\n",
                ),
                "spec.template.spec.containers[0].env[0].valueFrom",
                "give `value`",
            ),
            (
                BOOKS.replace("        command:\n        - python3\n        - -u\n        - books.py\n", ""),
                "spec.template.spec.containers[0].command",
                "not the image's entrypoint",
            ),
            (
                BOOKS.replace(
                    "      dnsPolicy: ClusterFirst\n",
                    "      dnsPolicy: ClusterFirst\n      initContainers: [{name: migrate, image: m}]\n",
                ),
                "spec.template.spec.initContainers",
                "init containers",
            ),
            (
                BOOKS.replace(
                    "      dnsPolicy: ClusterFirst\n",
                    "      - name: logs\n        image: fluent-bit\n      dnsPolicy: ClusterFirst\n",
                ),
                "spec.template.spec.containers[1]",
                "second container",
            ),
            (
                BOOKS.replace("      app: books\n  strategy", "      app: ratings\n  strategy"),
                "spec.selector.matchLabels.app",
                "label of the pod template",
            ),
        ];
        for (yaml, field, why) in cases {
            let errors = errors(&yaml);
            assert!(
                errors.iter().any(|e| e.starts_with("books.yaml:1: Deployment shop/books: ")
                    && e.contains(&format!("field `{field}`"))
                    && e.contains(why)),
                "{field}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_misspelt_field_of_a_deployment_is_refused() {
        let errors =
            errors(&BOOKS.replace("      serviceAccountName: books", "      serviceAcountName: books"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("Deployment shop/books") && errors[0].contains("`serviceAcountName`"),
            "{errors:?}"
        );
        assert!(errors[0].contains("serviceAccountName"), "the valid names are listed: {errors:?}");
    }

    #[test]
    fn variable_references_expand_as_kubernetes_does() {
        let env = BTreeMap::from([("PORT".to_string(), "8080".to_string())]);
        assert_eq!(expand("--listen=:$(PORT)", &env), "--listen=:8080");
        assert_eq!(expand("$$(PORT) $(OTHER) $ $(", &env), "$(PORT) $(OTHER) $ $(");
    }
}
