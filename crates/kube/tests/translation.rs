//! Same YAML, really: every object of the model's kinds in the repository's manifests (the
//! Gateway API conformance cases, the examples, the test fixtures), as the API server
//! would hand it to the Kubernetes store (a list item: no `kind` or `apiVersion`, a
//! namespace always set, `uid`, `resourceVersion`, `managedFields` added), reads as the
//! very object the files backend reads from the file.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tarmac_kube::kinds::MODEL_KINDS;
use tarmac_kube::translate::model_document;
use tarmac_model::{ObjectKey, Resource};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// `document` as a list item of the API server's answer.
fn as_served(mut document: Value) -> Value {
    let map = document.as_object_mut().unwrap();
    map.remove("kind");
    map.remove("apiVersion");
    let meta = map.get_mut("metadata").unwrap().as_object_mut().unwrap();
    meta.entry("namespace").or_insert_with(|| json!("default"));
    meta.insert("uid".into(), json!("0c1d2e3f-aaaa-bbbb-cccc-000000000001"));
    meta.insert("resourceVersion".into(), json!("48213"));
    meta.insert("creationTimestamp".into(), json!("2026-12-01T10:00:00Z"));
    meta.insert("managedFields".into(), json!([{"manager": "kubectl", "operation": "Update"}]));
    document
}

#[test]
fn the_repositorys_manifests_read_the_same_from_the_api_as_from_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["tests/conformance", "examples", "tests/fixtures"] {
        yaml_files(&root.join(dir), &mut files);
    }
    let mut compared: BTreeMap<&str, usize> = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = path.display().to_string();
        // Manifests the files backend refuses (a conformance case's deliberate mistakes)
        // have nothing to compare.
        let Ok(from_files) = tarmac_model::parse_documents(&shown, &text) else { continue };
        let from_files: BTreeMap<ObjectKey, Resource> =
            from_files.into_iter().map(|r| (r.key(), r)).collect();
        for doc in text.split("\n---") {
            let Ok(document) = serde_saphyr::from_str::<Value>(doc) else { continue };
            let (Some(api_version), Some(kind)) =
                (document["apiVersion"].as_str(), document["kind"].as_str())
            else {
                continue;
            };
            let Some(model_kind) =
                MODEL_KINDS.iter().find(|k| k.api_version() == api_version && k.kind == kind)
            else {
                continue;
            };
            let object = serde_json::from_value(as_served(document.clone())).unwrap();
            let translated = model_document(model_kind, &object).unwrap();
            let resource = tarmac_model::parse_object("kubernetes", translated)
                .unwrap_or_else(|e| panic!("{shown}: {kind}: {e:?}"));
            let written =
                from_files.get(&resource.key()).unwrap_or_else(|| panic!("{shown}: {}", resource.key()));
            assert_eq!(&resource, written, "{shown}");
            *compared.entry(model_kind.kind).or_default() += 1;
        }
    }
    // Every kind the store reads appears in the repository's manifests but
    // RateLimitPolicy (the authz e2e test writes its own).
    let kinds = [
        "Service",
        "HTTPRoute",
        "GRPCRoute",
        "FaultInjection",
        "ResiliencePolicy",
        "AuthorizationPolicy",
        "Namespace",
    ];
    for kind in kinds {
        assert!(compared.get(kind).is_some_and(|n| *n > 0), "no {kind} compared: {compared:?}");
    }
    eprintln!("compared: {compared:?}");
    assert!(compared.values().sum::<usize>() > 50, "{compared:?}");
}
