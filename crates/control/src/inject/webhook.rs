//! The mutating admission webhook: `POST /inject` over HTTPS, on a port of its own.
//!
//! The API server sends an `admission.k8s.io/v1` AdmissionReview for each Pod CREATE the
//! webhook configuration selects; the answer is an AdmissionReview whose `response.uid`
//! is the request's, `allowed: true`, and, when the pod opts in, a base64 JSON patch
//! (`patchType: JSONPatch`) from [`super::inject`], the function `tarmac inject` runs.
//!
//! The API server does not send the namespace's labels, so the namespace's opt-in comes
//! from which webhook called: `/inject/enabled-namespace` is registered for namespaces
//! labelled `tarmac.io/inject: enabled` (every pod injected unless it opts out), `/inject`
//! for the others (only pods annotated `tarmac.io/inject: enabled`).
//!
//! A pod that opts in but cannot be injected is refused (`allowed: false`, with the field
//! at fault): starting it without its sidecar would be a silent hole in the mesh.

use super::{Outcome, PodContext, Settings, inject, patch};
use crate::tls::TlsError;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tarmac_identity::ca::{Ca, SharedCa};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The largest AdmissionReview read. The API server refuses objects past about 1.5 MiB
/// (etcd's request limit), and a review holds at most the object and the old object.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Time allowed for a TLS handshake, a request head, or a request body: the API server
/// gives a webhook 10 s in all by default, and a review is answered in microseconds, so
/// only a stuck client meets these.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const PATH: &str = "/inject";
const PATH_ENABLED_NAMESPACE: &str = "/inject/enabled-namespace";

/// A request the webhook cannot review: the status and what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ReviewError {
    pub status: StatusCode,
    pub message: String,
}

fn bad_request(message: impl Into<String>) -> ReviewError {
    ReviewError { status: StatusCode::BAD_REQUEST, message: message.into() }
}

/// Answers one AdmissionReview (the request body) with one (the response body).
/// `namespace_enabled`: the call came through the enabled namespaces' webhook.
pub fn review(body: &[u8], namespace_enabled: bool, settings: &Settings) -> Result<Value, ReviewError> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))?;
    let api_version = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if api_version != Some("admission.k8s.io/v1") || kind != Some("AdmissionReview") {
        return Err(bad_request(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got apiVersion {} kind {}",
            show(api_version),
            show(kind)
        )));
    }
    let request =
        review.get("request").filter(|r| r.is_object()).ok_or_else(|| bad_request("request: missing"))?;
    let uid =
        request.get("uid").and_then(Value::as_str).ok_or_else(|| bad_request("request.uid: missing"))?;
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    let resource_kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let group = request.pointer("/kind/group").and_then(Value::as_str).unwrap_or_default();
    let allowed = json!({"uid": uid, "allowed": true});
    // Anything but a Pod CREATE is let through unchanged: the configuration asks for
    // those only, and an UPDATE could not add containers anyway.
    if resource_kind != Some("Pod") || !group.is_empty() || field("operation") != Some("CREATE") {
        return Ok(answer(allowed));
    }
    let before = request
        .get("object")
        .filter(|o| o.is_object())
        .ok_or_else(|| bad_request("request.object: missing"))?;
    let namespace = field("namespace")
        .or_else(|| before.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("default");
    let mut after = before.clone();
    let context = PodContext { namespace, namespace_enabled, owner: None };
    match inject(&mut after, &context, settings) {
        Ok(Outcome::Injected) => {
            let ops = Value::Array(patch::diff(before, &after));
            let encoded = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
            let mut response = allowed;
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(encoded);
            Ok(answer(response))
        }
        Ok(Outcome::AlreadyInjected | Outcome::Skipped(_)) => Ok(answer(allowed)),
        Err(e) => Ok(answer(json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 400, "reason": "BadRequest", "message": format!("tarmac sidecar injection: {e}")},
        }))),
    }
}

fn show(value: Option<&str>) -> String {
    value.map_or_else(|| "(none)".to_string(), |v| format!("`{v}`"))
}

fn answer(response: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// The serving certificate and key, PEM files (the key PKCS#8, SEC1 or PKCS#1).
pub fn tls_config(cert_path: &str, key_path: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let what = || format!("webhook certificate {cert_path}");
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem { what: what(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what: what() });
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|source| TlsError::Pem { what: format!("webhook key {key_path}"), source })?;
    let config = server_config()?.with_single_cert(certs, key).map_err(|source| TlsError::Rustls {
        what: format!("webhook certificate {cert_path} and key {key_path}"),
        source,
    })?;
    Ok(with_alpn(config))
}

/// A serving certificate for the DNS names `names` from the mesh's CA (whose anchors are
/// then the `caBundle`), issued again once two thirds of its lifetime have passed.
pub fn tls_from_ca(
    ca: Arc<SharedCa>,
    names: Vec<String>,
    lifetime: Duration,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let first = issue(&ca.current(), &names, lifetime, &provider)?;
    let own = CaCertificate { ca, names, lifetime, provider, current: Mutex::new(first) };
    Ok(with_alpn(server_config()?.with_cert_resolver(Arc::new(own))))
}

fn server_config()
-> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, TlsError> {
    Ok(crate::tls::tls13(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))?.with_no_client_auth())
}

fn with_alpn(mut config: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The webhook's certificate from the mesh's CA, checked at each handshake (rare: the API
/// server keeps its connections).
#[derive(Debug)]
struct CaCertificate {
    ca: Arc<SharedCa>,
    names: Vec<String>,
    lifetime: Duration,
    provider: rustls::crypto::CryptoProvider,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

/// A certificate and when to issue the next one.
fn issue(
    ca: &Ca,
    names: &[String],
    lifetime: Duration,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    const WHAT: &str = "webhook certificate";
    let (chain, key) = ca
        .issue_server_with_new_key(names, lifetime)
        .map_err(|source| TlsError::Issue { what: WHAT, source })?;
    let key = crate::tls::certified_key(WHAT, &chain, &key, provider)?;
    Ok((key, SystemTime::now() + lifetime * 2 / 3))
}

impl ResolvesServerCert for CaCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if SystemTime::now() >= current.1 {
            match issue(&self.ca.current(), &self.names, self.lifetime, &self.provider) {
                Ok(fresh) => *current = fresh,
                Err(e) => tracing::warn!(error = %e, "cannot issue the webhook's certificate again"),
            }
        }
        Some(current.0.clone())
    }
}

/// Serves the webhook on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let settings = Arc::new(settings);
    let stop = CancellationToken::new();
    let _stop_connections = stop.clone().drop_guard();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, settings, stop) = (acceptor.clone(), settings.clone(), stop.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook: TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |request| {
                let settings = settings.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(request, &settings).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(IO_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "webhook: connection failed");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn handle(request: Request<Incoming>, settings: &Settings) -> Response<Full<Bytes>> {
    let namespace_enabled = match request.uri().path() {
        PATH => false,
        PATH_ENABLED_NAMESPACE => true,
        other => {
            return error(StatusCode::NOT_FOUND, format!("no such path {other}: the webhook is POST {PATH}"));
        }
    };
    if request.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, format!("{} takes POST", request.uri().path()));
    }
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an AdmissionReview is sent as application/json".into(),
        );
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let body = match tokio::time::timeout(IO_TIMEOUT, body.collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an AdmissionReview is at most {MAX_BODY_BYTES} bytes"),
            );
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the body took too long".into()),
    };
    match review(&body, namespace_enabled, settings) {
        Ok(answer) => json_response(StatusCode::OK, answer.to_string()),
        Err(e) => error(e.status, e.message),
    }
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json_response(status, json!({"error": message}).to_string())
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

/// Where the API server finds the webhook: the control plane's Service.
#[derive(Clone, Debug)]
pub struct ServiceRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub port: u16,
}

/// The `MutatingWebhookConfiguration` that sends Pod CREATEs here, trusting `ca_pem` (the
/// CA of the webhook's serving certificate). Two webhooks, since the API server tells a
/// webhook nothing of the namespace's labels:
/// - enabled namespaces (labelled `tarmac.io/inject: enabled`) call
///   `/inject/enabled-namespace` with `failurePolicy: Fail`: there a pod without its
///   sidecar is a hole in the mesh (strict mTLS, policies), so it waits for the webhook;
/// - other namespaces not labelled `disabled` call `/inject`, with `Ignore`: only
///   annotated pods are injected there, and an unavailable control plane must not stop
///   every pod of the cluster from starting.
///
/// Both skip `kube-system` and the control plane's own namespace (it cannot wait for
/// itself), ask for `admission.k8s.io/v1` only, declare no side effects (dry runs are
/// safe), and are reinvoked (`IfNeeded`) when a later webhook changes the pod: injection is
/// idempotent, so a second call adds nothing unless the first was undone.
pub fn configuration(ca_pem: &str, service: &ServiceRef<'_>) -> Value {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let webhook = |name: &str, path: &str, failure: &str, label: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure,
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 10,
            "clientConfig": {
                "service": {"namespace": service.namespace, "name": service.name, "path": path, "port": service.port},
                "caBundle": ca_bundle,
            },
            "namespaceSelector": {"matchExpressions": [
                label,
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", service.namespace]},
            ]},
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["pods"], "scope": "Namespaced",
            }],
        })
    };
    let key = super::INJECT_KEY;
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "tarmac-sidecar-injector", "labels": {"app.kubernetes.io/part-of": "tarmac"}},
        "webhooks": [
            webhook("enabled-namespaces.inject.tarmac.io", PATH_ENABLED_NAMESPACE, "Fail",
                json!({"key": key, "operator": "In", "values": ["enabled"]})),
            webhook("annotated-pods.inject.tarmac.io", PATH, "Ignore",
                json!({"key": key, "operator": "NotIn", "values": ["enabled", "disabled"]})),
        ],
    })
}
