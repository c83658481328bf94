//! The CustomResourceDefinitions of Tarmac's own kinds (`tarmac.io/v1alpha1`), for
//! `tarmac install --crds`: their OpenAPI v3 schemas derived from the model's types
//! (`schemars`, the model's `schema` feature), so that what the API server accepts is
//! what the model reads.
//!
//! Kubernetes wants structural schemas: every node typed, no `$ref`, `anyOf` or
//! `oneOf`, optional values `nullable`. [`structural`] turns the derived JSON Schema into
//! one. Defaults are left out: the model applies its own when a field is absent, and an
//! API server writing them into stored objects would only make them look set by the user.
//! So is `additionalProperties: false`: the API server prunes unknown fields, and
//! `kubectl apply` refuses them by name (strict field validation).

use schemars::JsonSchema;
use serde_json::{Map, Value, json};
use tarmac_model::authz::{AuthorizationPolicySpec, RateLimitPolicySpec};
use tarmac_model::fault::FaultInjectionSpec;
use tarmac_model::resilience::ResiliencePolicySpec;
use tarmac_model::telemetry::TelemetrySpec;

/// The group of Tarmac's kinds.
pub const GROUP: &str = "tarmac.io";
pub const VERSION: &str = "v1alpha1";

/// One CRD per kind, in the order `kubectl apply` may take them.
pub fn definitions() -> Vec<Value> {
    vec![
        definition::<FaultInjectionSpec>("FaultInjection", "faultinjections", "fi"),
        definition::<ResiliencePolicySpec>("ResiliencePolicy", "resiliencepolicies", "rp"),
        definition::<AuthorizationPolicySpec>("AuthorizationPolicy", "authorizationpolicies", "authzpolicy"),
        definition::<RateLimitPolicySpec>("RateLimitPolicy", "ratelimitpolicies", "rlp"),
        definition::<TelemetrySpec>("Telemetry", "telemetries", "tel"),
    ]
}

fn definition<Spec: JsonSchema>(kind: &str, plural: &str, short: &str) -> Value {
    let spec = structural(spec_schema::<Spec>());
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{GROUP}"),
            "labels": {"app.kubernetes.io/part-of": "tarmac"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
                "shortNames": [short],
                "categories": ["tarmac"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": format!("Tarmac's {kind} (docs: the repository's docs/)."),
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                    },
                }},
            }],
        },
    })
}

fn spec_schema<Spec: JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    settings.into_generator().into_root_schema_for::<Spec>().to_value()
}

/// `schema` as a Kubernetes structural schema (see the module's documentation).
pub fn structural(schema: Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(structural_object(map)),
        Value::Array(items) => Value::Array(items.into_iter().map(structural).collect()),
        other => other,
    }
}

fn structural_object(mut map: Map<String, Value>) -> Map<String, Value> {
    // `anyOf`/`oneOf` first: a branch merged into this node brings keys the rewrites
    // below apply to.
    for combinator in ["anyOf", "oneOf"] {
        let Some(Value::Array(branches)) = map.remove(combinator) else { continue };
        let (nulls, others): (Vec<Value>, Vec<Value>) = branches.into_iter().partition(|b| {
            b.get("type").and_then(Value::as_str) == Some("null") || b.get("enum") == Some(&json!([null]))
        });
        if !nulls.is_empty() {
            map.insert("nullable".into(), Value::Bool(true));
        }
        // Every branch one string (a unit enum's variants, each documented).
        let enumerated: Option<Vec<Value>> = others
            .iter()
            .map(|b| match b.get("enum").or_else(|| b.get("const")) {
                Some(Value::Array(values)) if values.len() == 1 && values[0].is_string() => {
                    Some(values[0].clone())
                }
                Some(value @ Value::String(_)) => Some(value.clone()),
                _ => None,
            })
            .collect();
        match (others.len(), enumerated) {
            (1, _) => {
                if let Value::Object(only) = &others[0] {
                    for (k, v) in only {
                        map.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
            (_, Some(values)) if !values.is_empty() => {
                map.insert("type".into(), Value::String("string".into()));
                map.insert("enum".into(), Value::Array(values));
            }
            _ => {
                map.insert(combinator.into(), Value::Array(others));
            }
        }
    }
    for key in ["$schema", "$defs", "definitions", "title", "default", "examples", "$id"] {
        map.remove(key);
    }
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        map.remove("additionalProperties");
    }
    // `type: [X, "null"]`: X, nullable.
    if let Some(Value::Array(types)) = map.get("type").cloned() {
        let named: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
        if named.len() == 1 {
            map.insert("type".into(), named[0].clone());
            if named.len() < types.len() {
                map.insert("nullable".into(), Value::Bool(true));
            }
        }
    }
    // Integers: Kubernetes knows `int32` and `int64`; the range says the rest.
    if map.get("format").and_then(Value::as_str).is_some_and(|f| f.starts_with("uint")) {
        map.remove("format");
    }
    map.into_iter()
        .map(|(k, v)| match k.as_str() {
            // Values, not schemas.
            "enum" | "required" | "description" => (k, v),
            // Field names to schemas.
            "properties" => {
                let v = match v {
                    Value::Object(fields) => {
                        Value::Object(fields.into_iter().map(|(name, s)| (name, structural(s))).collect())
                    }
                    other => other,
                };
                (k, v)
            }
            _ => (k, structural(v)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes' rules for a structural schema, as far as Tarmac's kinds need them.
    fn assert_structural(path: &str, node: &Value) {
        let map = node.as_object().unwrap_or_else(|| panic!("{path}: not a schema: {node}"));
        for banned in ["$ref", "anyOf", "oneOf", "allOf", "$schema", "definitions", "$defs", "default"] {
            assert!(!map.contains_key(banned), "{path}: `{banned}` in {node}");
        }
        let kind = map.get("type").and_then(Value::as_str);
        assert!(kind.is_some(), "{path}: no `type` (a single string) in {node}");
        assert_ne!(map.get("additionalProperties"), Some(&Value::Bool(false)), "{path}");
        if let Some(Value::Object(properties)) = map.get("properties") {
            assert_eq!(kind, Some("object"), "{path}");
            for (name, child) in properties {
                assert_structural(&format!("{path}.{name}"), child);
            }
        }
        if let Some(items) = map.get("items") {
            assert_eq!(kind, Some("array"), "{path}");
            assert_structural(&format!("{path}[]"), items);
        }
    }

    #[test]
    fn every_crd_has_a_structural_schema_of_its_kind() {
        let crds = definitions();
        assert_eq!(crds.len(), 5);
        for crd in &crds {
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            assert_structural(kind, schema);
        }
        let fault = &crds[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let delay = &fault["properties"]["delay"];
        assert_eq!(delay["nullable"], true, "{fault:#}");
        assert_eq!(delay["required"], json!(["fixedDelay"]), "{fault:#}");
        let authz = &crds[2]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(authz["properties"]["action"]["enum"], json!(["ALLOW", "DENY"]), "{authz:#}");
        assert_eq!(authz["properties"]["action"]["type"], "string", "{authz:#}");
    }

    #[test]
    fn every_field_of_the_model_is_in_the_schema() {
        // A FaultInjection using every field: nothing the model reads may be pruned by
        // the API server.
        let crds = definitions();
        let spec = &crds[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let fields: Vec<&str> = spec["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["abort", "delay", "headers"]);
        let header = &spec["properties"]["headers"]["items"]["properties"];
        assert!(header.get("name").is_some() && header.get("type").is_some(), "{header:#}");
    }

    /// What the API server would do to `value` under `schema`: fields the schema lacks
    /// (pruned) and values of another type (refused).
    fn mismatches(path: &str, value: &Value, schema: &Value, out: &mut Vec<String>) {
        let kind = schema["type"].as_str().unwrap_or("?");
        let fits = match value {
            Value::Object(map) => {
                for (key, child) in map {
                    // A field, or an entry of a map (`additionalProperties`: its values' schema).
                    let field = schema["properties"]
                        .get(key)
                        .or(schema.get("additionalProperties").filter(|a| a.is_object()));
                    match field {
                        Some(field) => mismatches(&format!("{path}.{key}"), child, field, out),
                        None => out.push(format!("{path}.{key}: not in the schema, pruned")),
                    }
                }
                kind == "object"
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    mismatches(&format!("{path}[{i}]"), item, &schema["items"], out);
                }
                kind == "array"
            }
            Value::String(_) => kind == "string",
            Value::Number(n) => kind == "number" || (kind == "integer" && !n.is_f64()),
            Value::Bool(_) => kind == "boolean",
            Value::Null => schema["nullable"] == true,
        };
        if !fits {
            out.push(format!("{path}: {value} where the schema says {kind}"));
        }
    }

    /// Every object of Tarmac's kinds in the repository's examples and test fixtures,
    /// and a RateLimitPolicy using every field (none of those has one), as the API server
    /// would store them under these CRDs: nothing pruned, nothing refused.
    #[test]
    fn the_examples_survive_the_schemas_unchanged() {
        let crds = definitions();
        let schema_of = |kind: &str| {
            let crd = crds.iter().find(|c| c["spec"]["names"]["kind"] == kind).unwrap();
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
        };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut texts = vec![(
            "rate-limit".to_string(),
            "apiVersion: tarmac.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: books, namespace: shop}\n\
             spec:\n  targetRefs: [{group: \"\", kind: Service, name: books, sectionName: http}]\n  \
             total: {requestsPerSecond: 100, burst: 10}\n  perCaller: {requestsPerSecond: 10}\n  \
             overrides: [{requestsPerSecond: 50, burst: 5, identities: [\"spiffe://cluster.local/ns/shop/sa/web\"], serviceAccounts: [web]}]\n"
                .to_string(),
        )];
        for dir in ["examples", "tests/fixtures"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                for file in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                    let path = file.path();
                    if path.extension().is_some_and(|e| e == "yaml") {
                        texts.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
                    }
                }
            }
        }
        let mut checked = std::collections::BTreeMap::<String, usize>::new();
        for (name, text) in texts {
            // Each must be what the model accepts, or the test proves nothing.
            tarmac_model::parse_documents(&name, &text).unwrap();
            for doc in text.split("\n---") {
                let Ok(object) = serde_saphyr::from_str::<Value>(doc) else { continue };
                if object["apiVersion"] != "tarmac.io/v1alpha1" || object["kind"] == "Workload" {
                    continue;
                }
                let kind = object["kind"].as_str().unwrap().to_string();
                let mut out = Vec::new();
                mismatches("spec", &object["spec"], &schema_of(&kind)["properties"]["spec"], &mut out);
                assert!(out.is_empty(), "{name}: {kind}: {out:#?}");
                *checked.entry(kind).or_default() += 1;
            }
        }
        let kinds: Vec<&str> = checked.keys().map(String::as_str).collect();
        assert_eq!(
            kinds,
            ["AuthorizationPolicy", "FaultInjection", "RateLimitPolicy", "ResiliencePolicy", "Telemetry"]
        );

        // And the check itself: a misspelt field is pruned, a wrong type refused.
        let mut out = Vec::new();
        let schema = schema_of("FaultInjection");
        let typo = json!({"abort": {"httpStatus": "503", "percentag": 5}});
        mismatches("spec", &typo, &schema["properties"]["spec"], &mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
    }
}
