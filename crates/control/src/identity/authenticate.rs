//! Who a proxy is, from the credential it presents on its first certificate request.

use std::collections::HashMap;
use std::sync::Mutex;

/// The namespace and service account a credential speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "unknown bootstrap token: it was never handed out by this control plane (a forged token, or one from an earlier run)"
    )]
    UnknownToken,
    #[error(
        "bootstrap token already used: each token certifies one proxy once; restart the workload to get a new one"
    )]
    TokenReused,
}

impl AuthError {
    /// The `reason` label of refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::UnknownToken => "unknown_token",
            AuthError::TokenReused => "token_reused",
        }
    }
}

/// Checks a credential. Local mode has [`BootstrapTokens`]; the Kubernetes backend will
/// check ServiceAccount tokens with a TokenReview.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, credential: &str) -> Result<WorkloadIdentity, AuthError>;
}

/// One-time tokens that `tarmac up` hands to each proxy it starts. A token is good for
/// one certificate; renewals are proven with the certificate itself.
#[derive(Debug, Default)]
pub struct BootstrapTokens {
    tokens: Mutex<HashMap<String, Token>>,
}

#[derive(Debug)]
struct Token {
    identity: WorkloadIdentity,
    used: bool,
}

impl BootstrapTokens {
    /// A new token for a proxy of `identity`.
    pub fn issue(&self, identity: WorkloadIdentity) -> String {
        let mut bytes = [0u8; 24];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut bytes)
            .expect("the system random source works");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.lock().insert(token.clone(), Token { identity, used: false });
        token
    }

    /// Tokens handed out by someone else (`tarmac-control --bootstrap-tokens FILE`): one
    /// a line, `TOKEN NAMESPACE SERVICE_ACCOUNT`; blank lines and `#` comments are skipped.
    /// `file` names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, String> {
        let tokens = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, namespace, service_account] = fields[..] else {
                return Err(format!(
                    "{file}:{}: expected `TOKEN NAMESPACE SERVICE_ACCOUNT`, found {} field(s)",
                    n + 1,
                    fields.len()
                ));
            };
            let identity = WorkloadIdentity {
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
            };
            if tokens.lock().insert(token.to_string(), Token { identity, used: false }).is_some() {
                return Err(format!("{file}:{}: this token is listed twice", n + 1));
            }
        }
        Ok(tokens)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate(&self, credential: &str) -> Result<WorkloadIdentity, AuthError> {
        let mut tokens = self.lock();
        let token = tokens.get_mut(credential).ok_or(AuthError::UnknownToken)?;
        if token.used {
            return Err(AuthError::TokenReused);
        }
        token.used = true;
        Ok(token.identity.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_good_once() {
        let tokens = BootstrapTokens::default();
        let id = WorkloadIdentity { namespace: "shop".into(), service_account: "books".into() };
        let token = tokens.issue(id.clone());
        assert_eq!(tokens.authenticate(&token), Ok(id));
        assert_eq!(tokens.authenticate(&token), Err(AuthError::TokenReused));
        assert_eq!(tokens.authenticate("forged"), Err(AuthError::UnknownToken));
        assert_ne!(
            token,
            tokens.issue(WorkloadIdentity { namespace: "a".into(), service_account: "b".into() })
        );
    }

    #[test]
    fn tokens_from_a_file_are_good_once_and_malformed_lines_are_located() {
        let tokens =
            BootstrapTokens::parse("tokens", "# proxies started by hand\n\nabc shop books\n").unwrap();
        let books = WorkloadIdentity { namespace: "shop".into(), service_account: "books".into() };
        assert_eq!(tokens.authenticate("abc"), Ok(books));
        assert_eq!(tokens.authenticate("abc"), Err(AuthError::TokenReused));
        let e = BootstrapTokens::parse("tokens", "abc shop books\nxyz shop\n").unwrap_err();
        assert!(e.starts_with("tokens:2: expected `TOKEN NAMESPACE SERVICE_ACCOUNT`"), "{e}");
        let e = BootstrapTokens::parse("tokens", "abc a b\nabc c d\n").unwrap_err();
        assert_eq!(e, "tokens:2: this token is listed twice");
    }
}
