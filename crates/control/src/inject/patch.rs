//! RFC 6902 JSON patches, for the webhook's answer: [`diff`] gives the operations that turn
//! one document into another, and [`apply`] applies them (what the API server does with
//! the answer; the tests use it to check a patch gives what `tarmac inject` gives).
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

/// Applies `patch` (an RFC 6902 array of `add`, `remove` and `replace` operations) to
/// `document`; the first operation that does not apply is the error.
pub fn apply(document: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch is an array of operations")?;
    for (i, op) in ops.iter().enumerate() {
        apply_one(document, op).map_err(|e| format!("operation {i} ({op}): {e}"))?;
    }
    Ok(())
}

fn apply_one(document: &mut Value, op: &Value) -> Result<(), String> {
    let kind = op.get("op").and_then(Value::as_str).ok_or("no `op`")?;
    let path = op.get("path").and_then(Value::as_str).ok_or("no `path`")?;
    if path.is_empty() {
        return match (kind, op.get("value")) {
            ("add" | "replace", Some(value)) => {
                *document = value.clone();
                Ok(())
            }
            _ => Err("cannot remove the whole document".to_string()),
        };
    }
    let (parent, last) = path.rsplit_once('/').ok_or("a path starts with `/`")?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent = document.pointer_mut(parent).ok_or("no such parent")?;
    let value = || op.get("value").cloned().ok_or("no `value`");
    match (kind, parent) {
        ("add", Value::Object(map)) => {
            map.insert(last, value()?);
        }
        ("replace", Value::Object(map)) => {
            *map.get_mut(&last).ok_or("no such member")? = value()?;
        }
        ("remove", Value::Object(map)) => {
            map.remove(&last).ok_or("no such member")?;
        }
        (_, Value::Array(list)) => {
            let index = match last.as_str() {
                "-" if kind == "add" => list.len(),
                index => index.parse::<usize>().map_err(|_| "not an index")?,
            };
            match kind {
                "add" if index <= list.len() => list.insert(index, value()?),
                "replace" if index < list.len() => list[index] = value()?,
                "remove" if index < list.len() => {
                    list.remove(index);
                }
                _ => return Err("index out of range, or an unsupported operation".to_string()),
            }
        }
        _ => {
            return Err("the parent is neither a map nor a list, or the operation is unsupported".to_string());
        }
    }
    Ok(())
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
        apply(&mut patched, &Value::Array(ops.clone())).unwrap();
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
