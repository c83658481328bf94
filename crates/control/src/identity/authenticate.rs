//! Who a proxy is, from the credential it presents on its first certificate request.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The namespace and service account a credential speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub namespace: String,
    pub service_account: String,
}

/// A credential a proxy presents on its first certificate request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A one-time bootstrap token (local mode, `--bootstrap-tokens`).
    BootstrapToken(&'a str),
    /// A projected Kubernetes ServiceAccount token (a JWT), checked with a TokenReview.
    ServiceAccountToken(&'a str),
}

impl Credential<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::BootstrapToken(_) => "a bootstrap token",
            Credential::ServiceAccountToken(_) => "a ServiceAccount token",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this control plane accepts {accepted}, not {presented}: check the proxy's `identity` section")]
    WrongKind { presented: &'static str, accepted: &'static str },
    /// Retryable: the check itself could not be made.
    #[error("the ServiceAccount token could not be checked now (TokenReview: {0}); retry")]
    ReviewUnavailable(String),
    #[error("the Kubernetes API did not authenticate the ServiceAccount token: {0}")]
    NotAuthenticated(String),
    #[error(
        "the ServiceAccount token is not for audience {expected:?} (the API server answered for {got:?}): project the token with `audience: {expected}`"
    )]
    WrongAudience { expected: String, got: Vec<String> },
    #[error(
        "the token authenticates {0:?}, which is not a ServiceAccount (system:serviceaccount:NAMESPACE:NAME)"
    )]
    NotServiceAccount(String),
    #[error(
        "the token was issued for pod {pod}, which is not of service account {namespace}/{service_account}"
    )]
    PodMismatch { pod: String, namespace: String, service_account: String },
    #[error(
        "unknown bootstrap token: it was never handed out by this control plane, or was revoked when its replica stopped or restarted (a forged token, or one from an earlier run)"
    )]
    UnknownToken,
    #[error(
        "bootstrap token already used: each token certifies one proxy once; restart the workload to get a new one"
    )]
    TokenReused,
    #[error(
        "bootstrap token expired: a token is good for a short while after its proxy is started; restart the workload to get a new one"
    )]
    TokenExpired,
}

impl AuthError {
    /// The `reason` label of refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::UnknownToken => "unknown_token",
            AuthError::TokenReused => "token_reused",
            AuthError::TokenExpired => "token_expired",
            AuthError::WrongKind { .. } => "wrong_credential_kind",
            AuthError::ReviewUnavailable(_) => "review_unavailable",
            AuthError::NotAuthenticated(_) => "token_not_authenticated",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::NotServiceAccount(_) => "not_a_service_account",
            AuthError::PodMismatch { .. } => "pod_mismatch",
        }
    }

    /// Whether asking again later may succeed (the check could not be made), as opposed
    /// to a refusal of the credential.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthError::ReviewUnavailable(_))
    }
}

/// What [`Authenticator::authenticate`] returns: a check may be a network call.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<WorkloadIdentity, AuthError>> + Send + 'a>>;

/// Checks a credential. Local mode has [`BootstrapTokens`]; the Kubernetes backend checks
/// ServiceAccount tokens with a TokenReview (`tarmac_kube::TokenReviewer`).
///
/// Checking and spending are two steps so that a request whose CSR turns out to be
/// unusable does not burn the credential: the CA checks the credential, then the CSR,
/// and spends the credential only when it is about to answer with a certificate.
pub trait Authenticator: Send + Sync + 'static {
    /// Who the credential speaks for, if it is good now; spends nothing. A credential of
    /// a kind this authenticator does not check is [`AuthError::WrongKind`].
    fn authenticate<'a>(&'a self, credential: Credential<'a>) -> AuthFuture<'a>;
    /// Spends a one-time credential; fails if it was spent (or went bad) since it was
    /// checked. Credentials good for many requests (ServiceAccount tokens, until they
    /// expire) have nothing to spend.
    fn redeem(&self, credential: Credential<'_>) -> Result<(), AuthError> {
        let _ = credential;
        Ok(())
    }
}

/// How long a bootstrap token is good for after it is issued. A sidecar reads its token as
/// it starts and gives up on bootstrapping after 30 s; a token nobody used by then was
/// lost or stolen.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// One-time tokens that `tarmac up` hands to each proxy it starts: good for one
/// certificate, for a short while, and only the latest one of each replica (its
/// `holder`). Renewals are proven with the certificate itself.
#[derive(Debug)]
pub struct BootstrapTokens {
    tokens: Mutex<HashMap<String, Token>>,
    lifetime: Duration,
}

#[derive(Debug)]
struct Token {
    identity: WorkloadIdentity,
    /// The replica it was issued to (`namespace/workload-N`).
    holder: String,
    expires: Instant,
    used: bool,
}

impl Default for BootstrapTokens {
    fn default() -> Self {
        Self::with_lifetime(DEFAULT_TOKEN_LIFETIME)
    }
}

impl BootstrapTokens {
    /// Tokens good for `lifetime` after they are issued.
    pub fn with_lifetime(lifetime: Duration) -> Self {
        Self { tokens: Mutex::default(), lifetime }
    }

    /// A new token for the replica `holder`, a proxy of `identity`. Any token issued to
    /// `holder` before is revoked: a replica has one live token, the one of its latest start.
    pub fn issue(&self, holder: &str, identity: WorkloadIdentity) -> String {
        let mut bytes = [0u8; 24];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut bytes)
            .expect("the system random source works");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut tokens = self.lock();
        tokens.retain(|_, t| t.holder != holder && !t.stale(now, self.lifetime));
        tokens.insert(
            token.clone(),
            Token { identity, holder: holder.to_string(), expires: now + self.lifetime, used: false },
        );
        token
    }

    /// Tokens handed out by someone else (`tarmac-control --bootstrap-tokens FILE`): one
    /// a line, `TOKEN NAMESPACE SERVICE_ACCOUNT`; blank lines and `#` comments are skipped.
    /// `file` names the source in errors. They do not expire (whoever wrote the file
    /// decides when to remove a line and restart); each is still good once.
    pub fn parse(file: &str, text: &str) -> Result<Self, TokensFileError> {
        let tokens = Self::default();
        let now = Instant::now();
        let never =
            now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)).unwrap_or(now + tokens.lifetime);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, namespace, service_account] = fields[..] else {
                return Err(TokensFileError::Fields { file: file.into(), line: n + 1, found: fields.len() });
            };
            let identity = WorkloadIdentity {
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
            };
            let token_entry =
                Token { identity, holder: format!("{file}:{}", n + 1), expires: never, used: false };
            if tokens.lock().insert(token.to_string(), token_entry).is_some() {
                return Err(TokensFileError::Twice { file: file.into(), line: n + 1 });
            }
        }
        Ok(tokens)
    }

    /// Revokes every token of `holder` (its replica stopped or was removed).
    pub fn revoke(&self, holder: &str) {
        self.lock().retain(|_, t| t.holder != holder);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A line of a bootstrap tokens file (`--bootstrap-tokens`) that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("{file}:{line}: expected `TOKEN NAMESPACE SERVICE_ACCOUNT`, found {found} field(s)")]
    Fields { file: String, line: usize, found: usize },
    #[error("{file}:{line}: this token is listed twice")]
    Twice { file: String, line: usize },
}

impl Token {
    fn check(&self, now: Instant) -> Result<(), AuthError> {
        if self.used {
            return Err(AuthError::TokenReused);
        }
        if now >= self.expires {
            return Err(AuthError::TokenExpired);
        }
        Ok(())
    }

    /// Kept a while after it expires, so that a late use is told "expired" rather than
    /// "unknown"; then forgotten, so that the map does not grow with every restart.
    fn stale(&self, now: Instant, lifetime: Duration) -> bool {
        now >= self.expires + lifetime.max(Duration::from_secs(600))
    }
}

impl BootstrapTokens {
    /// Who the token speaks for, if it is good now; spends nothing.
    pub fn check(&self, credential: &str) -> Result<WorkloadIdentity, AuthError> {
        let tokens = self.lock();
        let token = tokens.get(credential).ok_or(AuthError::UnknownToken)?;
        token.check(Instant::now())?;
        Ok(token.identity.clone())
    }

    /// Spends the token.
    pub fn spend(&self, credential: &str) -> Result<(), AuthError> {
        let mut tokens = self.lock();
        let token = tokens.get_mut(credential).ok_or(AuthError::UnknownToken)?;
        token.check(Instant::now())?;
        token.used = true;
        Ok(())
    }
}

fn bootstrap_only<'a>(credential: Credential<'a>) -> Result<&'a str, AuthError> {
    match credential {
        Credential::BootstrapToken(token) => Ok(token),
        other => Err(AuthError::WrongKind { presented: other.kind(), accepted: "bootstrap tokens" }),
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(&'a self, credential: Credential<'a>) -> AuthFuture<'a> {
        let checked = bootstrap_only(credential).and_then(|token| self.check(token));
        Box::pin(std::future::ready(checked))
    }

    fn redeem(&self, credential: Credential<'_>) -> Result<(), AuthError> {
        self.spend(bootstrap_only(credential)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn books() -> WorkloadIdentity {
        WorkloadIdentity { namespace: "shop".into(), service_account: "books".into() }
    }

    #[test]
    fn tokens_are_checked_without_being_spent_and_spent_once() {
        let tokens = BootstrapTokens::default();
        let token = tokens.issue("shop/books-0", books());
        assert_eq!(tokens.check(&token), Ok(books()));
        assert_eq!(tokens.check(&token), Ok(books()), "checking spends nothing");
        assert_eq!(tokens.spend(&token), Ok(()));
        assert_eq!(tokens.check(&token), Err(AuthError::TokenReused));
        assert_eq!(tokens.spend(&token), Err(AuthError::TokenReused));
        assert_eq!(tokens.check("forged"), Err(AuthError::UnknownToken));
        assert_ne!(token, tokens.issue("a/b-0", books()));
    }

    #[tokio::test]
    async fn a_service_account_token_is_not_a_bootstrap_token() {
        let tokens = BootstrapTokens::default();
        let token = tokens.issue("shop/books-0", books());
        let e = tokens.authenticate(Credential::ServiceAccountToken(&token)).await.unwrap_err();
        assert_eq!(e.reason(), "wrong_credential_kind");
        assert_eq!(
            tokens.redeem(Credential::ServiceAccountToken(&token)).unwrap_err().reason(),
            "wrong_credential_kind"
        );
        assert_eq!(tokens.authenticate(Credential::BootstrapToken(&token)).await, Ok(books()));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = BootstrapTokens::with_lifetime(Duration::from_millis(50));
        let token = tokens.issue("shop/books-0", books());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(tokens.check(&token), Err(AuthError::TokenExpired));
        assert_eq!(tokens.spend(&token), Err(AuthError::TokenExpired));
    }

    #[test]
    fn a_replica_has_one_live_token_and_loses_it_when_revoked() {
        let tokens = BootstrapTokens::default();
        let first = tokens.issue("shop/books-0", books());
        let other = tokens.issue("shop/books-1", books());
        let second = tokens.issue("shop/books-0", books());
        assert_eq!(tokens.check(&first), Err(AuthError::UnknownToken), "replaced by the restart's");
        assert_eq!(tokens.check(&second), Ok(books()));
        tokens.revoke("shop/books-0");
        assert_eq!(tokens.check(&second), Err(AuthError::UnknownToken));
        assert_eq!(tokens.check(&other), Ok(books()), "another replica's token stays good");
    }

    #[test]
    fn tokens_from_a_file_are_good_once_and_malformed_lines_are_located() {
        let tokens =
            BootstrapTokens::parse("tokens", "# proxies started by hand\n\nabc shop books\n").unwrap();
        let books = WorkloadIdentity { namespace: "shop".into(), service_account: "books".into() };
        assert_eq!(tokens.check("abc"), Ok(books));
        assert_eq!(tokens.spend("abc"), Ok(()));
        assert_eq!(tokens.check("abc"), Err(AuthError::TokenReused));
        let e = BootstrapTokens::parse("tokens", "abc shop books\nxyz shop\n").unwrap_err().to_string();
        assert!(e.starts_with("tokens:2: expected `TOKEN NAMESPACE SERVICE_ACCOUNT`"), "{e}");
        let e = BootstrapTokens::parse("tokens", "abc a b\nabc c d\n").unwrap_err().to_string();
        assert_eq!(e, "tokens:2: this token is listed twice");
    }
}
