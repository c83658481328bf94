//! `tarmac inject`: adds the sidecar to the pod templates of Kubernetes manifests, with the
//! function the control plane's admission webhook runs (`tarmac_control::inject`), so that
//! `tarmac inject -f app.yaml | kubectl apply -f -` and a plain `kubectl apply` into an
//! enabled namespace give the same pods.

use clap::Args;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use tarmac_control::inject::{self, INJECT_KEY, Outcome, PodContext, Settings};
use tarmac_transport::host_port::HostPort;

/// Add the Tarmac sidecar to the pods of Kubernetes manifests (YAML, several documents),
/// written to stdout. A pod template is injected when it is annotated
/// `tarmac.io/inject: enabled`, or when its namespace is enabled: a Namespace in the
/// input labelled `tarmac.io/inject: enabled`, or every namespace with `--all`. A template
/// annotated `tarmac.io/inject: disabled` and hostNetwork pods are left alone, as are
/// documents without pods. Injecting twice changes nothing.
#[derive(Args, Debug)]
pub struct InjectArgs {
    /// The manifests (`-` or nothing: stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Inject every pod template that does not opt out, as if its namespace were labelled
    /// `tarmac.io/inject: enabled`.
    #[arg(long)]
    pub all: bool,
    /// The namespace of objects that name none (as kubectl's `--namespace`).
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The image of the injected containers.
    #[arg(long, value_name = "IMAGE", default_value_t = inject::default_image())]
    pub proxy_image: String,
    /// Where sidecars reach the control plane's gRPC: `HOST:PORT`, an address or a name
    /// (`tarmac-control.tarmac-system.svc:4180`). Without it they run without discovery.
    #[arg(long, value_name = "HOST:PORT")]
    pub control_addr: Option<HostPort>,
    /// The mesh's trust anchors (PEM: the CA Secret's `ca.crt`): sidecars then get their
    /// certificates from the control plane with a projected ServiceAccount token (needs
    /// `--control-addr`). Without it they run without mTLS.
    #[arg(long, value_name = "FILE", requires = "control_addr")]
    pub trust_anchors: Option<PathBuf>,
    /// The audience of the sidecars' ServiceAccount token (`tarmac-control --token-audience`).
    #[arg(long, value_name = "AUDIENCE", default_value = "tarmac")]
    pub token_audience: String,
}

/// What can go wrong reading, injecting or writing manifests; `origin` is the file
/// (or `stdin`).
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read {origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: more than {} MiB of manifests", MAX_INPUT_BYTES >> 20)]
    TooLarge { origin: String },
    #[error("{origin}: not YAML manifests: {source}")]
    /// The parser's error boxed: it carries its location and snippet, and is large.
    NotYaml {
        origin: String,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{origin}: document {number} ({what}): {source}")]
    Refused {
        origin: String,
        number: usize,
        what: String,
        #[source]
        source: inject::InjectError,
    },
    #[error("the trust anchors {path}: {reason}")]
    Anchors { path: String, reason: String },
    #[error("writing YAML: {0}")]
    WriteYaml(#[source] serde_saphyr::ser::Error),
    #[error("writing stdout: {0}")]
    Stdout(#[source] std::io::Error),
}

/// The largest input read: manifests are text written by people or tools, and a runaway
/// pipe must not fill memory.
const MAX_INPUT_BYTES: u64 = 64 << 20;

pub fn run(args: InjectArgs) -> Result<(), InjectError> {
    let (origin, text) = read_input(args.file.as_deref())?;
    let (output, report) = inject_manifests(&origin, &text, &args)?;
    // Nothing is written until every document has been handled: a refused one leaves no
    // half-injected output behind for `kubectl apply` to read.
    std::io::stdout().write_all(output.as_bytes()).map_err(InjectError::Stdout)?;
    for line in report {
        eprintln!("{line}");
    }
    Ok(())
}

fn read_input(file: Option<&std::path::Path>) -> Result<(String, String), InjectError> {
    let (origin, reader): (String, Box<dyn Read>) = match file {
        None => ("stdin".to_string(), Box::new(std::io::stdin())),
        Some(path) if path.as_os_str() == "-" => ("stdin".to_string(), Box::new(std::io::stdin())),
        Some(path) => {
            let origin = path.display().to_string();
            let file = match std::fs::File::open(path) {
                Ok(file) => file,
                Err(source) => return Err(InjectError::Read { origin, source }),
            };
            (origin, Box::new(file))
        }
    };
    let mut text = String::new();
    if let Err(source) = reader.take(MAX_INPUT_BYTES + 1).read_to_string(&mut text) {
        return Err(InjectError::Read { origin, source });
    }
    if text.len() as u64 > MAX_INPUT_BYTES {
        return Err(InjectError::TooLarge { origin });
    }
    Ok((origin, text))
}

/// The injected manifests as YAML, and a line per pod template saying what was done.
pub fn inject_manifests(
    origin: &str,
    text: &str,
    args: &InjectArgs,
) -> Result<(String, Vec<String>), InjectError> {
    let identity = match &args.trust_anchors {
        Some(path) => {
            let anchors_error =
                |reason: String| InjectError::Anchors { path: path.display().to_string(), reason };
            let pem = std::fs::read_to_string(path).map_err(|e| anchors_error(e.to_string()))?;
            match tarmac_identity::ca::pem_certs(&pem) {
                Ok(certs) if !certs.is_empty() => {}
                Ok(_) => return Err(anchors_error("no CERTIFICATE blocks".into())),
                Err(e) => return Err(anchors_error(e.to_string())),
            }
            Some(inject::IdentitySettings { trust_anchors: pem, audience: args.token_audience.clone() })
        }
        None => None,
    };
    let settings =
        Settings { proxy_image: args.proxy_image.clone(), control_addr: args.control_addr.clone(), identity };
    let mut documents: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|source| InjectError::NotYaml { origin: origin.to_string(), source: Box::new(source) })?;
    // Empty documents (a leading or trailing `---`) carry nothing to keep.
    documents.retain(|d| !d.is_null());
    let enabled_namespaces = enabled_namespaces(&documents);
    let mut report = Vec::new();
    for (index, document) in documents.iter_mut().enumerate() {
        let what = describe(document);
        for template in inject::pod_templates(document) {
            let namespace = template.namespace.as_deref().unwrap_or(&args.namespace).to_string();
            let context = PodContext {
                namespace: &namespace,
                namespace_enabled: args.all || enabled_namespaces.contains(&namespace),
                owner: template.owner.as_deref(),
            };
            let outcome =
                inject::inject(template.pod, &context, &settings).map_err(|source| InjectError::Refused {
                    origin: origin.to_string(),
                    number: index + 1,
                    what: what.clone(),
                    source,
                })?;
            report.push(match outcome {
                Outcome::Injected => format!("{what}: injected"),
                Outcome::AlreadyInjected => format!("{what}: already injected"),
                Outcome::Skipped(why) => format!("{what}: skipped, {why}"),
            });
        }
    }
    let mut output = String::new();
    for document in &documents {
        if !output.is_empty() {
            output.push_str("---\n");
        }
        output.push_str(&serde_saphyr::to_string(document).map_err(InjectError::WriteYaml)?);
    }
    Ok((output, report))
}

/// The Namespaces of the input labelled `tarmac.io/inject: enabled`.
fn enabled_namespaces(documents: &[Value]) -> Vec<String> {
    let namespaces = documents.iter().flat_map(|d| match d.get("kind").and_then(Value::as_str) {
        Some("List") => {
            d.get("items").and_then(Value::as_array).map(|items| items.iter().collect()).unwrap_or_default()
        }
        _ => vec![d],
    });
    namespaces
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("Namespace"))
        .filter(|d| {
            d.pointer("/metadata/labels").and_then(|l| l.get(INJECT_KEY)).and_then(Value::as_str)
                == Some("enabled")
        })
        .filter_map(|d| d.pointer("/metadata/name").and_then(Value::as_str).map(String::from))
        .collect()
}

/// `Deployment shop/web`, for messages.
fn describe(document: &Value) -> String {
    let field = |pointer: &str| document.pointer(pointer).and_then(Value::as_str);
    let kind = field("/kind").unwrap_or("(no kind)");
    match (field("/metadata/namespace"), field("/metadata/name")) {
        (Some(namespace), Some(name)) => format!("{kind} {namespace}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_string(),
    }
}

#[cfg(test)]
mod tests;
