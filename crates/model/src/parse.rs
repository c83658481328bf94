//! From YAML text to validated [`Resource`]s.
//!
//! A file holds one or more documents separated by `---`. Each document is read twice:
//! first leniently for its `apiVersion`, `kind` and name (so every later error can say which
//! object it is about), then strictly as its kind. Line numbers in errors are the file's:
//! a document is parsed with as many blank lines before it as precede it in the file.

use crate::validate;
use crate::{Resource, SUPPORTED_KINDS};
use serde::Deserialize;
use std::fmt;

/// An error in a configuration file, located as precisely as the parser allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelError {
    pub file: String,
    pub line: Option<usize>,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    /// A path such as `spec.rules[0].matches[1].path.value`, when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ModelError {}

/// The lenient first read of a document.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<HeaderMeta>,
}

#[derive(Deserialize, Default)]
struct HeaderMeta {
    name: Option<String>,
    namespace: Option<String>,
}

/// A document of a multi-document file: the line it starts on (1-based) and its text
/// padded with blank lines so that parser line numbers are the file's.
struct Document {
    first_line: usize,
    padded: String,
}

fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    let mut has_content = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            if has_content {
                docs.push(Document { first_line, padded: std::mem::take(&mut current) });
            }
            current = "\n".repeat(i + 1);
            first_line = i + 2;
            has_content = false;
            continue;
        }
        if i == 0 {
            first_line = 1;
        }
        let stripped = line.trim_start();
        if !stripped.is_empty() && !stripped.starts_with('#') {
            if !has_content {
                first_line = i + 1;
            }
            has_content = true;
        }
        current.push_str(line);
        current.push('\n');
    }
    if has_content {
        docs.push(Document { first_line, padded: current });
    }
    docs
}

/// Splits serde-saphyr's message ("line 7 column 13: invalid u32" plus a source snippet)
/// into the line and a one-line message.
fn yaml_error(e: &serde_saphyr::Error) -> (Option<usize>, String) {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    if let Some(rest) = first.strip_prefix("line ") {
        let (num, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Ok(line) = num.parse::<usize>() {
            let tail = tail.trim_start_matches([':', ' ']);
            return (Some(line), tail.to_string());
        }
    }
    (None, first.to_string())
}

/// Parses every document of `text` (read from `file`) and validates each object.
/// Returns every error found, not just the first: a user fixes a file in one go.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Resource>, Vec<ModelError>> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for doc in split_documents(text) {
        match parse_document(file, &doc) {
            Ok(resource) => {
                let object = resource.key().to_string();
                let problems = validate::validate(&resource);
                if problems.is_empty() {
                    resources.push(resource);
                }
                errors.extend(problems.into_iter().map(|p| ModelError {
                    file: file.to_string(),
                    line: Some(doc.first_line),
                    object: Some(object.clone()),
                    field: Some(p.field),
                    message: p.message,
                }));
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(resources) } else { Err(errors) }
}

fn parse_document(file: &str, doc: &Document) -> Result<Resource, ModelError> {
    let error = |line: Option<usize>, object: Option<String>, message: String| ModelError {
        file: file.to_string(),
        line,
        object,
        field: None,
        message,
    };
    let header: Header = serde_saphyr::from_str(&doc.padded).map_err(|e| {
        let (line, message) = yaml_error(&e);
        error(line, None, format!("not valid YAML: {message}"))
    })?;
    let supported = || SUPPORTED_KINDS.iter().map(|(v, k)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
    let (Some(api_version), Some(kind)) = (header.api_version.as_deref(), header.kind.as_deref()) else {
        return Err(error(
            Some(doc.first_line),
            None,
            format!("a document needs `apiVersion` and `kind`; Tarmac reads {}", supported()),
        ));
    };
    let meta = header.metadata.unwrap_or_default();
    let object = format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or(crate::meta::DEFAULT_NAMESPACE),
        meta.name.as_deref().unwrap_or("<no name>")
    );
    let strict = |e: serde_saphyr::Error| {
        let (line, message) = yaml_error(&e);
        error(line.or(Some(doc.first_line)), Some(object.clone()), message)
    };
    let text = &doc.padded;
    let resource = match (api_version, kind) {
        ("v1", "Namespace") => Resource::Namespace(serde_saphyr::from_str(text).map_err(strict)?),
        ("v1", "Service") => Resource::Service(serde_saphyr::from_str(text).map_err(strict)?),
        ("tarmac.io/v1alpha1", "Workload") => {
            Resource::Workload(serde_saphyr::from_str(text).map_err(strict)?)
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            Resource::HttpRoute(serde_saphyr::from_str(text).map_err(strict)?)
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            Resource::GrpcRoute(serde_saphyr::from_str(text).map_err(strict)?)
        }
        ("tarmac.io/v1alpha1", "FaultInjection") => {
            Resource::FaultInjection(serde_saphyr::from_str(text).map_err(strict)?)
        }
        ("tarmac.io/v1alpha1", "ResiliencePolicy") => {
            Resource::ResiliencePolicy(serde_saphyr::from_str(text).map_err(strict)?)
        }
        _ => {
            let hint = SUPPORTED_KINDS
                .iter()
                .find(|(_, k)| *k == kind)
                .map(|(v, _)| format!(" (did you mean apiVersion `{v}`?)"))
                .unwrap_or_default();
            return Err(error(
                Some(doc.first_line),
                Some(object.clone()),
                format!("Tarmac does not read `{api_version}` `{kind}`{hint}; it reads {}", supported()),
            ));
        }
    };
    Ok(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
# a comment
apiVersion: v1
kind: Service
metadata: {name: books}
spec:
  selector: {app: books}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata:
  name: books
  namespace: shop
  labels: {app: books}
spec:
  command: [python3, books.py]
  port: 8080
";

    #[test]
    fn multiple_documents_parse_with_defaults() {
        let resources = parse_documents("mesh.yaml", TWO).unwrap();
        assert_eq!(resources.len(), 2);
        assert_eq!(resources[0].key().to_string(), "Service default/books");
        let Resource::Workload(w) = &resources[1] else { panic!() };
        assert_eq!(w.metadata.namespace, "shop");
        assert_eq!(w.spec.replicas, 1);
        assert_eq!(w.spec.service_account_name, "default");
    }

    #[test]
    fn a_type_error_names_file_line_and_object() {
        let text = TWO.replace("port: 8080\n", "port: eighty\n");
        let errors = parse_documents("mesh.yaml", &text).unwrap_err();
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.starts_with("mesh.yaml:17: Workload shop/books: "), "{e}");
    }

    #[test]
    fn an_unknown_field_is_refused_with_the_valid_ones() {
        let text = TWO.replace("  selector:", "  selecter:");
        let e = parse_documents("mesh.yaml", &text).unwrap_err()[0].to_string();
        assert!(
            e.contains("mesh.yaml:6") && e.contains("Service default/books") && e.contains("selecter"),
            "{e}"
        );
        assert!(e.contains("selector"), "the valid field names are listed: {e}");
    }

    #[test]
    fn an_unsupported_kind_says_what_is_supported() {
        let e = parse_documents("x.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n")
            .unwrap_err()[0]
            .to_string();
        assert!(e.contains("Deployment default/web") && e.contains("v1 Service"), "{e}");
        let e = parse_documents(
            "x.yaml",
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: r}\n",
        )
        .unwrap_err()[0]
            .to_string();
        assert!(e.contains("did you mean apiVersion `gateway.networking.k8s.io/v1`"), "{e}");
    }

    #[test]
    fn broken_yaml_is_located() {
        let e = parse_documents("x.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: [\n").unwrap_err();
        assert!(e[0].to_string().starts_with("x.yaml:"), "{}", e[0]);
        assert!(e[0].line.is_some());
    }

    #[test]
    fn empty_documents_and_comments_are_skipped() {
        assert_eq!(parse_documents("x.yaml", "---\n# nothing\n---\n").unwrap().len(), 0);
    }
}
