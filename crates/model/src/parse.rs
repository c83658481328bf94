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
        let parsed = match list_items(file, &doc) {
            Ok(Some(items)) => items,
            Ok(None) => vec![(doc.first_line, parse_document(file, &doc))],
            Err(e) => vec![(doc.first_line, Err(vec![e]))],
        };
        for (line, result) in parsed {
            match result {
                Ok(resource) => {
                    let object = object_name(&resource);
                    let problems = validate::validate(&resource);
                    if problems.is_empty() {
                        resources.push(resource);
                    }
                    errors.extend(problems.into_iter().map(|p| ModelError {
                        file: file.to_string(),
                        line: Some(line),
                        object: Some(object.clone()),
                        field: Some(p.field),
                        message: p.message,
                    }));
                }
                Err(e) => errors.extend(e),
            }
        }
    }
    if errors.is_empty() { Ok(resources) } else { Err(errors) }
}

/// `Kind namespace/name` as the user wrote the kind: a Deployment is named as one, though
/// it runs as a Workload.
fn object_name(resource: &Resource) -> String {
    match resource {
        Resource::Workload(w) if w.kind == "Deployment" => {
            format!("Deployment {}/{}", w.metadata.namespace, w.metadata.name)
        }
        _ => resource.key().to_string(),
    }
}

/// A `v1` `List` (what `kubectl get -o yaml` prints for several objects): its items, each
/// parsed as a document of its own and located at the line where it starts. None when the
/// document is not a List.
type Parsed = Result<Resource, Vec<ModelError>>;

fn list_items(file: &str, doc: &Document) -> Result<Option<Vec<(usize, Parsed)>>, ModelError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ListHeader {
        api_version: Option<String>,
        kind: Option<String>,
    }
    let Ok(header) = serde_saphyr::from_str::<ListHeader>(&doc.padded) else { return Ok(None) };
    if header.kind.as_deref() != Some("List") || header.api_version.as_deref() != Some("v1") {
        return Ok(None);
    }
    // Every field is named only so that no other is accepted.
    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct List {
        api_version: String,
        kind: String,
        #[serde(default)]
        items: Vec<serde_json::Value>,
        #[serde(default)]
        metadata: crate::meta::ServerOwned,
    }
    let list: List = serde_saphyr::from_str(&doc.padded).map_err(|e| {
        let (line, message) = yaml_error(&e);
        ModelError {
            file: file.to_string(),
            line: line.or(Some(doc.first_line)),
            object: Some("List".into()),
            field: None,
            message,
        }
    })?;
    let lines = item_lines(&doc.padded, list.items.len());
    Ok(Some(
        list.items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let line = lines.as_ref().map(|l| l[i]).unwrap_or(doc.first_line);
                (line, parse_value(file, line, i, item))
            })
            .collect(),
    ))
}

/// The line each item of a block-style `items:` sequence starts on (as `kubectl` prints
/// it), when exactly `count` are found.
fn item_lines(text: &str, count: usize) -> Option<Vec<usize>> {
    let mut lines = text.lines().enumerate().skip_while(|(_, l)| !l.starts_with("items:"));
    lines.next()?;
    let mut starts = Vec::new();
    let mut indent = None;
    for (n, line) in lines {
        let trimmed = line.trim_start();
        let this = line.len() - trimmed.len();
        if !trimmed.is_empty() && this == 0 && !trimmed.starts_with('-') {
            break;
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            let first = *indent.get_or_insert(this);
            if this == first {
                starts.push(n + 1);
            }
        }
    }
    (starts.len() == count).then_some(starts)
}

/// One item of a List: read as a document is (lenient header, then strict kind).
fn parse_value(
    file: &str,
    line: usize,
    index: usize,
    item: serde_json::Value,
) -> Result<Resource, Vec<ModelError>> {
    let text = |key: &str| item.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let meta = item.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|v| v.as_str()).unwrap_or("<no name>");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str())
        .unwrap_or(crate::meta::DEFAULT_NAMESPACE);
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let object = format!("{} {namespace}/{name}", kind.as_deref().unwrap_or("<no kind>"));
    let prefix = format!("items[{index}].");
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        let message = format!("an item needs `apiVersion` and `kind`; Tarmac reads {}", supported());
        return Err(TypedError::Read(None, message).located(file, line, &object, &prefix));
    };
    typed(&api_version, &kind, &Source::Json(item)).map_err(|e| e.located(file, line, &object, &prefix))
}

/// One object as an API returns it (a Kubernetes watch event's object, as JSON): read
/// strictly as its `apiVersion` and `kind` say, then validated, as a document of a file
/// is. `source` stands where a file's name does in errors (`kubernetes`); there are no
/// lines to name.
pub fn parse_object(source: &str, object: serde_json::Value) -> Result<Resource, Vec<ModelError>> {
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|v| v.as_str()).unwrap_or("<no name>");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str())
        .unwrap_or(crate::meta::DEFAULT_NAMESPACE);
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let named = format!("{} {namespace}/{name}", kind.as_deref().unwrap_or("<no kind>"));
    let unlocated = |mut errors: Vec<ModelError>| {
        errors.iter_mut().for_each(|e| e.line = None);
        errors
    };
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        let message = format!("an object needs `apiVersion` and `kind`; Tarmac reads {}", supported());
        return Err(unlocated(TypedError::Read(None, message).located(source, 0, &named, "")));
    };
    let resource = typed(&api_version, &kind, &Source::Json(object))
        .map_err(|e| unlocated(e.located(source, 0, &named, "")))?;
    let named = object_name(&resource);
    let problems = validate::validate(&resource);
    if problems.is_empty() {
        return Ok(resource);
    }
    Err(problems
        .into_iter()
        .map(|p| ModelError {
            file: source.to_string(),
            line: None,
            object: Some(named.clone()),
            field: Some(p.field),
            message: p.message,
        })
        .collect())
}

/// A document's text, or a List item already read.
enum Source<'a> {
    Yaml(&'a str),
    Json(serde_json::Value),
}

impl Source<'_> {
    fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, (Option<usize>, String)> {
        match self {
            Source::Yaml(text) => serde_saphyr::from_str(text).map_err(|e| yaml_error(&e)),
            Source::Json(value) => T::deserialize(value).map_err(|e| (None, e.to_string())),
        }
    }
}

fn supported() -> String {
    SUPPORTED_KINDS.iter().map(|(v, k)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

/// Why a document is not an object of its kind.
enum TypedError {
    /// It does not read as one: the line where the parser knows it, and why.
    Read(Option<usize>, String),
    /// It reads, but fields cannot be honoured (a Deployment in local mode).
    Fields(Vec<crate::validate::Problem>),
}

impl From<(Option<usize>, String)> for TypedError {
    fn from((line, message): (Option<usize>, String)) -> Self {
        TypedError::Read(line, message)
    }
}

impl TypedError {
    /// As errors of `file`, about `object`, located at `line` unless the parser knows better.
    fn located(self, file: &str, line: usize, object: &str, prefix: &str) -> Vec<ModelError> {
        match self {
            TypedError::Read(at, message) => vec![ModelError {
                file: file.to_string(),
                line: at.or(Some(line)),
                object: Some(object.to_string()),
                field: None,
                message: format!("{prefix}{message}"),
            }],
            TypedError::Fields(problems) => problems
                .into_iter()
                .map(|p| ModelError {
                    file: file.to_string(),
                    line: Some(line),
                    object: Some(object.to_string()),
                    field: Some(format!("{prefix}{}", p.field)),
                    message: p.message,
                })
                .collect(),
        }
    }
}

/// The object of `kind`, read strictly from `source`.
fn typed(api_version: &str, kind: &str, source: &Source<'_>) -> Result<Resource, TypedError> {
    Ok(match (api_version, kind) {
        ("v1", "Namespace") => Resource::Namespace(source.read()?),
        ("v1", "Service") => Resource::Service(source.read()?),
        ("tarmac.io/v1alpha1", "Workload") => Resource::Workload(source.read()?),
        ("apps/v1", "Deployment") => {
            let deployment: crate::deployment::Deployment = source.read()?;
            Resource::Workload(deployment.into_workload().map_err(TypedError::Fields)?)
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => Resource::HttpRoute(source.read()?),
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => Resource::GrpcRoute(source.read()?),
        ("tarmac.io/v1alpha1", "FaultInjection") => Resource::FaultInjection(source.read()?),
        ("tarmac.io/v1alpha1", "ResiliencePolicy") => Resource::ResiliencePolicy(source.read()?),
        ("tarmac.io/v1alpha1", "AuthorizationPolicy") => Resource::AuthorizationPolicy(source.read()?),
        ("tarmac.io/v1alpha1", "RateLimitPolicy") => Resource::RateLimitPolicy(source.read()?),
        ("tarmac.io/v1alpha1", "Telemetry") => Resource::Telemetry(source.read()?),
        _ => {
            let hint = SUPPORTED_KINDS
                .iter()
                .find(|(_, k)| *k == kind)
                .map(|(v, _)| format!(" (did you mean apiVersion `{v}`?)"))
                .unwrap_or_default();
            return Err(TypedError::Read(
                None,
                format!("Tarmac does not read `{api_version}` `{kind}`{hint}; it reads {}", supported()),
            ));
        }
    })
}

fn parse_document(file: &str, doc: &Document) -> Parsed {
    let error = |line: Option<usize>, object: Option<String>, message: String| {
        vec![ModelError { file: file.to_string(), line, object, field: None, message }]
    };
    let header: Header = serde_saphyr::from_str(&doc.padded).map_err(|e| {
        let (line, message) = yaml_error(&e);
        error(line, None, format!("not valid YAML: {message}"))
    })?;
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
    typed(api_version, kind, &Source::Yaml(&doc.padded))
        .map_err(|e| e.located(file, doc.first_line, &object, ""))
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
        let e = parse_documents("x.yaml", "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web}\n")
            .unwrap_err()[0]
            .to_string();
        assert!(e.contains("StatefulSet default/web") && e.contains("v1 Service"), "{e}");
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

    /// What `kubectl get svc books -o yaml` prints for a Service created from a
    /// three-line manifest: everything but `name`, `labels`, `selector` and `ports` was
    /// written by the API server.
    const KUBECTL_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"books","namespace":"shop"},"spec":{"ports":[{"port":80,"targetPort":8080}],"selector":{"app":"books"}}}
  creationTimestamp: "2026-11-30T09:12:44Z"
  labels:
    app: books
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        f:ports:
          .: {}
          k:{"port":80,"protocol":"TCP"}:
            .: {}
            f:port: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-11-30T09:12:44Z"
  name: books
  namespace: shop
  resourceVersion: "48213"
  uid: 5d0c3f0e-8d0b-4b5e-9a53-0f4b1c2d7e61
spec:
  clusterIP: 10.96.112.7
  clusterIPs:
  - 10.96.112.7
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: books
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

    /// The same Service, as it was written.
    const WRITTEN_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: books, namespace: shop, labels: {app: books}}\nspec:\n  selector: {app: books}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";

    /// `kubectl get svc,ns -o yaml`: several objects in a `List`.
    fn kubectl_list() -> String {
        let indented: String = KUBECTL_SERVICE.lines().map(|l| format!("  {l}\n")).collect();
        format!(
            "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    creationTimestamp: \"2026-11-30T09:12:40Z\"\n    labels: {{kubernetes.io/metadata.name: shop}}\n    name: shop\n    resourceVersion: \"48190\"\n    uid: 0c1d2e3f-aaaa-bbbb-cccc-000000000001\n  spec:\n    finalizers: [kubernetes]\n  status:\n    phase: Active\n-{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
            &indented[1..]
        )
    }

    #[test]
    fn kubectl_get_output_loads_and_equals_what_was_written() {
        let from_cluster = parse_documents("books.yaml", KUBECTL_SERVICE).unwrap();
        let written = parse_documents("books.yaml", WRITTEN_SERVICE).unwrap();
        let (Resource::Service(a), Resource::Service(b)) = (&from_cluster[0], &written[0]) else { panic!() };
        // What the proxies are told is the same: selector, ports, names.
        assert_eq!(
            (&a.spec.selector, &a.spec.ports[0].port, &a.metadata.labels),
            (&b.spec.selector, &b.spec.ports[0].port, &b.metadata.labels)
        );
        assert_eq!(a.spec.ports[0].target_number(), Some(8080));

        let items = parse_documents("cluster.yaml", &kubectl_list()).unwrap();
        let keys: Vec<String> = items.iter().map(|r| r.key().to_string()).collect();
        assert_eq!(keys, ["Namespace default/shop", "Service shop/books"]);
    }

    #[test]
    fn a_misspelt_field_is_still_refused_in_a_document_and_in_a_list() {
        let typo = KUBECTL_SERVICE.replace("  selector:\n    app: books", "  selecter:\n    app: books");
        let e = parse_documents("books.yaml", &typo).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        let text = e[0].to_string();
        assert!(
            text.starts_with("books.yaml:")
                && text.contains("Service shop/books")
                && text.contains("`selecter`"),
            "{text}"
        );

        let list =
            kubectl_list().replace("    selector:\n      app: books", "    selecter:\n      app: books");
        let e = parse_documents("cluster.yaml", &list).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        let text = e[0].to_string();
        // The item's own line, its object and the misspelt field.
        let second_item = list.lines().enumerate().filter(|(_, l)| l.starts_with('-')).nth(1).unwrap().0 + 1;
        assert!(
            text.starts_with(&format!("cluster.yaml:{second_item}: Service shop/books: items[1].")),
            "{text}"
        );
        assert!(text.contains("`selecter`"), "{text}");

        // A value the API server would accept but Tarmac cannot honour is refused by name.
        let affinity = WRITTEN_SERVICE.replace("  selector:", "  sessionAffinity: ClientIP\n  selector:");
        let e = parse_documents("books.yaml", &affinity).unwrap_err()[0].to_string();
        assert!(e.contains("field `spec.sessionAffinity`") && e.contains("every request"), "{e}");
    }

    #[test]
    fn an_api_object_reads_as_its_document_does_and_is_refused_by_field() {
        let written = parse_documents("books.yaml", WRITTEN_SERVICE).unwrap();
        let object = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "books", "namespace": "shop", "labels": {"app": "books"}, "uid": "u-1"},
            "spec": {"selector": {"app": "books"}, "clusterIPs": ["10.96.0.1"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {}}
        });
        assert_eq!(parse_object("kubernetes", object.clone()).unwrap(), written[0]);

        let mut typo = object;
        typo["spec"]["ports"][0]["port"] = serde_json::json!(0);
        let e = parse_object("kubernetes", typo).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "kubernetes: Service shop/books: field `spec.ports[0].port`: must be 1-65535"
        );
        let e = parse_object("kubernetes", serde_json::json!({"kind": "Service", "metadata": {"name": "x"}}));
        assert!(e.unwrap_err()[0].to_string().starts_with("kubernetes: Service default/x: an object needs"));
    }
}
