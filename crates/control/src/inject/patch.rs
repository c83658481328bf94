//! RFC 6902 JSON patches, for the webhook's answer: [`diff`] gives the operations that turn
//! one document into another. The tests apply them with another implementation (the
//! `json-patch` crate), as the API server applies them with its own.
//!
//! Injection changes few places, so the diff is simple rather than minimal: maps are
//! compared key by key, anything else that differs (a list, a scalar) is replaced whole.
//! A replaced list is also what keeps the patch right if another webhook reordered the
//! pod's containers before ours.

use serde_json::{Value, json};

/// The operations that turn `before` into `after`.
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(String::new(), before, after, &mut ops);
    ops
}

fn diff_at(path: String, before: &Value, after: &Value, ops: &mut Vec<Value>) {
    match (before, after) {
        (Value::Object(before), Value::Object(after)) => {
            for key in before.keys().filter(|key| !after.contains_key(*key)) {
                ops.push(json!({"op": "remove", "path": child(&path, key)}));
            }
            for (key, value) in after {
                match before.get(key) {
                    Some(old) => diff_at(child(&path, key), old, value, ops),
                    None => ops.push(json!({"op": "add", "path": child(&path, key), "value": value})),
                }
            }
        }
        _ if before == after => {}
        _ => ops.push(json!({"op": "replace", "path": path, "value": after})),
    }
}

/// `path` and one more RFC 6901 reference token (`~` and `/` escaped).
fn child(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_then_apply_gives_the_target() {
        let before = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"containers": [{"name": "app"}]}});
        let after = json!({
            "metadata": {"name": "a", "annotations": {"a/b~c": "v"}},
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "i"}]},
        });
        let ops = diff(&before, &after);
        let mut patched = before.clone();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(patched, after);
        assert!(ops.contains(&json!({"op": "remove", "path": "/metadata/labels"})), "{ops:?}");
    }

    #[test]
    fn keys_are_escaped() {
        let ops = diff(&json!({"a": {}}), &json!({"a": {"tarmac.io/injected": "1", "x~y": 2}}));
        let paths: Vec<_> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/a/tarmac.io~1injected", "/a/x~0y"]);
    }

    #[test]
    fn equal_documents_give_no_operations() {
        let doc = json!({"spec": {"containers": [{"name": "app"}]}});
        assert!(diff(&doc, &doc).is_empty());
    }
}
