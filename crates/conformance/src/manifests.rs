//! From the cases' Kubernetes manifests to Tarmac's model.
//!
//! The model takes Namespaces, Services and routes as they are. The model reads a
//! Deployment too, but only one whose first container has a `command` local mode can run;
//! the cases' Deployments run an image's entrypoint (the conformance echo server), so the
//! runner turns each into a Workload itself, with the Deployment's name, namespace,
//! replicas and pod labels, and plays its pods (an echo server and a sidecar each).

use serde::Deserialize;
use std::collections::BTreeMap;
use tarmac_control::store::Snapshot;
use tarmac_model::workload::WorkloadSpec;
use tarmac_model::{ObjectMeta, Resource, Workload};

#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Deployment {
    metadata: Meta,
    spec: DeploymentSpec,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentSpec {
    #[serde(default)]
    replicas: Option<u32>,
    template: Template,
}

#[derive(Deserialize)]
struct TemplateMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Template {
    metadata: TemplateMeta,
    #[serde(default)]
    spec: Option<PodSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    service_account_name: Option<String>,
}

/// What is wrong with one object of a case's manifests, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// `first` is the first line of the YAML parser's message.
    #[error("{file}: Deployment: {first}")]
    Deployment { file: String, first: String },
    #[error("{file}: Deployment {name}: {field}: {message}")]
    Invalid { file: String, name: String, field: String, message: String },
    #[error("{0}")]
    Model(#[source] tarmac_model::ModelError),
    #[error("{0}: defined twice")]
    Twice(String),
}

/// Every problem of a case's manifests.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ManifestsError(pub Vec<ManifestError>);

/// Documents separated by `---` lines.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().expect("one document");
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.retain(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

fn workload(file: &str, text: &str) -> Result<Resource, ManifestError> {
    let d: Deployment = serde_saphyr::from_str(text).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        ManifestError::Deployment { file: file.to_string(), first }
    })?;
    let namespace = d.metadata.namespace.unwrap_or_else(|| "default".to_string());
    let name = d.metadata.name;
    let spec = WorkloadSpec {
        // The runner plays the pods itself; the command only names what they run.
        command: vec!["tarmac-conformance-echo".to_string()],
        port: 8080,
        replicas: d.spec.replicas.unwrap_or(1),
        service_account_name: d
            .spec
            .template
            .spec
            .and_then(|s| s.service_account_name)
            .unwrap_or_else(|| "default".to_string()),
        ..Default::default()
    };
    let labels = if d.spec.template.metadata.labels.is_empty() {
        d.metadata.labels
    } else {
        d.spec.template.metadata.labels
    };
    let resource = Resource::Workload(Workload {
        api_version: "tarmac.io/v1alpha1".into(),
        kind: "Workload".into(),
        metadata: ObjectMeta { name, namespace, labels, ..Default::default() },
        spec,
        status: Default::default(),
        cluster_only: Vec::new(),
    });
    let problems = tarmac_model::validate::validate(&resource);
    if let Some(p) = problems.first() {
        return Err(ManifestError::Invalid {
            file: file.to_string(),
            name: resource.key().name.clone(),
            field: p.field.to_string(),
            message: p.message.to_string(),
        });
    }
    Ok(resource)
}

/// Every object of `manifests`, validated, as one snapshot. Errors name file and object.
pub fn snapshot(manifests: &[(String, String)]) -> Result<Snapshot, ManifestsError> {
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    for (file, text) in manifests {
        for doc in documents(text) {
            let kind: Kind = serde_saphyr::from_str(&doc).unwrap_or(Kind { kind: None });
            let parsed = if kind.kind.as_deref() == Some("Deployment") {
                workload(file, &doc).map(|r| vec![r]).map_err(|e| vec![e])
            } else {
                tarmac_model::parse_documents(file, &doc)
                    .map_err(|es| es.into_iter().map(ManifestError::Model).collect())
            };
            match parsed {
                Ok(resources) => {
                    for r in resources {
                        if let Some(old) = objects.insert(r.key(), r) {
                            errors.push(ManifestError::Twice(old.key().to_string()));
                        }
                    }
                }
                Err(es) => errors.extend(es),
            }
        }
    }
    if !errors.is_empty() {
        return Err(ManifestsError(errors));
    }
    Ok(Snapshot { generation: 1, objects })
}
