//! The mesh's CA from a Secret, in cert-manager's shape, followed as it rotates.
//!
//! `tls.crt` is the issuer's certificate (then any chain up to the anchors), `tls.key` its
//! private key (PKCS#8, SEC1 or PKCS#1 PEM, as cert-manager writes them), `ca.crt` the
//! trust anchors. Only the one Secret is watched (a field selector on `metadata.name`,
//! so RBAC can name it). A change swaps the issuer without a restart; a Secret that
//! cannot be a CA (a field missing, the key not the certificate's, the issuer not a CA or
//! not chaining to `ca.crt`) is refused, logged, and the issuer in use stays.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tarmac_identity::ca::{Ca, CaError, SharedCa};
use tokio::task::JoinHandle;

pub const ANCHORS_KEY: &str = "ca.crt";
pub const ISSUER_CERT_KEY: &str = "tls.crt";
pub const ISSUER_KEY_KEY: &str = "tls.key";

/// `NAMESPACE/NAME` of the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.into(), name: name.into() })
            }
            _ => Err(format!("expected NAMESPACE/NAME, found {s:?}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretCaError {
    #[error("cannot read the Secret {secret}: {source}")]
    Api {
        secret: SecretRef,
        /// Boxed: the client's error is large, and this is a rare path.
        #[source]
        source: Box<kube::Error>,
    },
    #[error("the Secret {secret} does not exist: create it (see docs/kubernetes.md, \"Identity\")")]
    NotFound { secret: SecretRef },
    #[error("the Secret {secret} has no `{field}` in its data")]
    Missing { secret: SecretRef, field: &'static str },
    #[error("the Secret {secret}: `{field}` is not PEM text")]
    NotText { secret: SecretRef, field: &'static str },
    #[error("the Secret {secret} cannot be the mesh's CA: {field}: {reason}")]
    Invalid { secret: SecretRef, field: &'static str, reason: String },
}

/// The CA a Secret holds, checked: the issuer's key is its certificate's, the issuer is a
/// CA and chains to the anchors.
pub fn ca_from_secret(secret_ref: &SecretRef, secret: &Secret) -> Result<Ca, SecretCaError> {
    let field = |field: &'static str| -> Result<String, SecretCaError> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(field))
            .filter(|b| !b.0.is_empty())
            .ok_or_else(|| SecretCaError::Missing { secret: secret_ref.clone(), field })?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| SecretCaError::NotText { secret: secret_ref.clone(), field })
    };
    let (anchors, issuer, key) = (field(ANCHORS_KEY)?, field(ISSUER_CERT_KEY)?, field(ISSUER_KEY_KEY)?);
    let invalid = |e: CaError| {
        let (field, reason) = match e {
            CaError::Invalid { path, reason } => {
                let field = match path.to_str() {
                    Some("anchors") => ANCHORS_KEY,
                    Some("issuer key") => ISSUER_KEY_KEY,
                    _ => ISSUER_CERT_KEY,
                };
                (field, reason)
            }
            other => (ISSUER_CERT_KEY, other.to_string()),
        };
        SecretCaError::Invalid { secret: secret_ref.clone(), field, reason }
    };
    let ca = Ca::from_issuer(&anchors, &issuer, &key).map_err(invalid)?;
    ca.check_chains_to_anchors().map_err(invalid)?;
    Ok(ca)
}

/// Reads the Secret once (bounded by `timeout`) for the CA to start with, then follows
/// it: each change that makes a valid CA becomes the issuer.
pub async fn follow(
    client: Client,
    secret_ref: SecretRef,
    timeout: Duration,
) -> Result<(Arc<SharedCa>, JoinHandle<()>), SecretCaError> {
    let api: Api<Secret> = Api::namespaced(client, &secret_ref.namespace);
    let first = tokio::time::timeout(timeout, api.get_opt(&secret_ref.name))
        .await
        .unwrap_or_else(|_| Err(kube::Error::Service(format!("no answer within {timeout:?}").into())))
        .map_err(|source| SecretCaError::Api { secret: secret_ref.clone(), source: Box::new(source) })?
        .ok_or_else(|| SecretCaError::NotFound { secret: secret_ref.clone() })?;
    let shared = Arc::new(SharedCa::new(ca_from_secret(&secret_ref, &first)?));
    let task = tokio::spawn(watch(api, secret_ref, shared.clone()));
    Ok((shared, task))
}

async fn watch(api: Api<Secret>, secret_ref: SecretRef, shared: Arc<SharedCa>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret_ref.name));
    let mut events = std::pin::pin!(watcher::watcher(api, config));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(secret) | Event::InitApply(secret)) => apply(&secret_ref, &secret, &shared),
            Ok(Event::Delete(_)) => tracing::warn!(
                secret = %secret_ref,
                "the identity Secret was deleted: still issuing with the issuer in memory; a restart will fail until it is back"
            ),
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(secret = %secret_ref, error = %e, "watching the identity Secret failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn apply(secret_ref: &SecretRef, secret: &Secret, shared: &SharedCa) {
    let next = match ca_from_secret(secret_ref, secret) {
        Ok(next) => next,
        Err(e) => {
            tracing::error!(error = %e, "refused the identity Secret's new contents; still issuing with the previous issuer");
            return;
        }
    };
    let before = shared.current();
    if before.issuer_chain_der() == next.issuer_chain_der() && before.anchors_pem() == next.anchors_pem() {
        return;
    }
    let subject = next.issuer_info().subject.clone();
    match shared.rotate(next) {
        Ok(()) => {
            tracing::info!(secret = %secret_ref, issuer = %subject, "the mesh's CA now issues with the Secret's new issuer")
        }
        Err(e) => {
            tracing::error!(secret = %secret_ref, error = %e, "refused the identity Secret's new issuer; still issuing with the previous one")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(fields: &[(&str, &str)]) -> Secret {
        let data = fields.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())));
        Secret { data: Some(data.collect::<BTreeMap<_, _>>()), ..Default::default() }
    }

    fn at() -> SecretRef {
        "tarmac-system/tarmac-identity".parse().unwrap()
    }

    /// An issuer under a fresh root: (anchors, issuer certificate, its PKCS#8 key), PEM.
    fn issuer(dir: &std::path::Path) -> (String, String, String) {
        let (root, root_key) = tarmac_identity::ca::generate_root("cluster.local").unwrap();
        let ca = Ca::from_root(&root, &root_key.serialize_pem(), "cluster.local").unwrap();
        ca.save(dir, None).unwrap();
        let key = std::fs::read_to_string(dir.join(tarmac_identity::ca::ISSUER_KEY_FILE)).unwrap();
        (root, ca.issuer_pem().to_string(), key)
    }

    #[test]
    fn cert_managers_key_encodings_are_read_and_bad_secrets_name_the_field() {
        let dir = std::env::temp_dir().join(format!("tarmac-ca-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (anchors, cert, pkcs8) = issuer(&dir);
        let ok = |key: &str| {
            ca_from_secret(&at(), &secret(&[("ca.crt", &anchors), ("tls.crt", &cert), ("tls.key", key)]))
        };
        ok(&pkcs8).unwrap();
        // cert-manager writes ECDSA keys as SEC1 (`EC PRIVATE KEY`) unless told PKCS#8.
        let out = std::process::Command::new("openssl")
            .args(["ec", "-in"])
            .arg(dir.join(tarmac_identity::ca::ISSUER_KEY_FILE))
            .output()
            .expect("openssl (scripts/setup-test-deps.sh)");
        let sec1 = String::from_utf8(out.stdout).unwrap();
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        ok(&sec1).unwrap();

        let e = ca_from_secret(&at(), &secret(&[("ca.crt", &anchors), ("tls.crt", &cert)])).unwrap_err();
        assert_eq!(e.to_string(), "the Secret tarmac-system/tarmac-identity has no `tls.key` in its data");
        let other = issuer(&dir.join("other")).2;
        let e = ok(&other).unwrap_err().to_string();
        assert!(e.contains("tls.key: it is not the key of the issuer certificate"), "{e}");
        let e = ca_from_secret(
            &at(),
            &secret(&[("ca.crt", &anchors), ("tls.crt", &anchors), ("tls.key", &pkcs8)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls.key"), "the root's certificate with the issuer's key: {e}");
        let (foreign, _, _) = issuer(&dir.join("foreign"));
        let e =
            ca_from_secret(&at(), &secret(&[("ca.crt", &foreign), ("tls.crt", &cert), ("tls.key", &pkcs8)]))
                .unwrap_err()
                .to_string();
        assert!(e.contains("does not chain to the trust anchors"), "{e}");
        assert!("no-slash".parse::<SecretRef>().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
