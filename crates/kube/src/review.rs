//! ServiceAccount tokens checked with a TokenReview: how a proxy on Kubernetes proves who
//! it is on its first certificate request.
//!
//! The proxy presents its projected ServiceAccount token (an audience of its own,
//! `--token-audience`, so that a token meant for another service cannot be replayed
//! here); the control plane asks the API server (`POST
//! /apis/authentication.k8s.io/v1/tokenreviews` with that audience) and accepts only an
//! authenticated token, for that audience, of a ServiceAccount
//! (`system:serviceaccount:NAMESPACE:NAME`). Reviews are bounded by a timeout; positive
//! answers are remembered briefly (keyed by a hash of the token, never past its `exp`),
//! so that a restarting fleet does not send the API server one review per retry.

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tarmac_control::identity::{AuthError, AuthFuture, Authenticator, Credential, WorkloadIdentity};
use tokio::time::Instant;

/// The audience proxies' tokens are projected for unless `--token-audience` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "tarmac";
/// How long one review may take.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a positive review is remembered at most.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// How many positive reviews are remembered at most.
pub const CACHE_ENTRIES: usize = 1024;

/// The `user.extra` key naming the pod a bound token was issued for.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// An [`Authenticator`] of ServiceAccount tokens, by TokenReview.
pub struct TokenReviewer {
    client: Client,
    audience: String,
    timeout: Duration,
    cache: ReviewCache,
}

impl TokenReviewer {
    pub fn new(client: Client, audience: &str) -> Self {
        Self {
            client,
            audience: audience.to_string(),
            timeout: REVIEW_TIMEOUT,
            cache: ReviewCache::default(),
        }
    }

    async fn review(&self, token: &str) -> Result<WorkloadIdentity, AuthError> {
        let key = ReviewCache::key(token);
        if let Some(who) = self.cache.get(&key, Instant::now()) {
            return Ok(who);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answered = tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| AuthError::ReviewUnavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| AuthError::ReviewUnavailable(api_error(&e)))?;
        let status = answered.status.unwrap_or_default();
        let who = identity_of(&status, &self.audience)?;
        if let Some(exp) = token_expiry(token) {
            self.cache.put(key, who.clone(), Instant::now(), exp, SystemTime::now());
        }
        Ok(who)
    }
}

fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{e}: the control plane's ServiceAccount needs `create` on `tokenreviews` (group authentication.k8s.io)"
        ),
        e => e.to_string(),
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, credential: Credential<'a>) -> AuthFuture<'a> {
        Box::pin(async move {
            match credential {
                Credential::ServiceAccountToken(token) => self.review(token).await,
                other => {
                    Err(AuthError::WrongKind { presented: other.kind(), accepted: "ServiceAccount tokens" })
                }
            }
        })
    }
}

/// Who an answered TokenReview says the token is, if it is good here.
pub fn identity_of(status: &TokenReviewStatus, audience: &str) -> Result<WorkloadIdentity, AuthError> {
    if status.authenticated != Some(true) {
        let reason =
            status.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "no reason given".into());
        return Err(AuthError::NotAuthenticated(reason));
    }
    // An API server that ignores audiences answers without them: that is not a yes.
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::WrongAudience { expected: audience.to_string(), got: audiences });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(AuthError::NotServiceAccount(username));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    // A bound token names its pod: one in another namespace than the ServiceAccount's
    // is an API server answer we cannot make sense of, and is refused.
    if let (Some(pod), Some(_uid)) = (one(EXTRA_POD_NAME), one(EXTRA_POD_UID))
        && (pod.is_empty() || pod.contains('/'))
    {
        return Err(AuthError::PodMismatch {
            pod,
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        });
    }
    Ok(WorkloadIdentity { namespace: namespace.to_string(), service_account: service_account.to_string() })
}

/// The `exp` claim of a JWT, read without checking the signature (the TokenReview checks
/// the token; this only bounds how long its answer is remembered). None: not a JWT with
/// an `exp`, and nothing is cached.
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// Positive reviews, by SHA-256 of the token (the tokens themselves are not kept).
#[derive(Default)]
pub struct ReviewCache {
    entries: Mutex<HashMap<[u8; 32], (WorkloadIdentity, Instant)>>,
}

impl ReviewCache {
    pub fn key(token: &str) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<WorkloadIdentity> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, until)| now < *until).map(|(who, _)| who.clone())
    }

    /// Remembers `who` for [`CACHE_TTL`], or until the token's `exp` if sooner
    /// (`wall_now` is the wall clock at `now`).
    pub fn put(
        &self,
        key: [u8; 32],
        who: WorkloadIdentity,
        now: Instant,
        exp: SystemTime,
        wall_now: SystemTime,
    ) {
        let left = exp.duration_since(wall_now).unwrap_or_default().min(CACHE_TTL);
        if left.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (_, until)| now < *until);
        if entries.len() >= CACHE_ENTRIES {
            // Full of live entries: forget one; a miss costs a review, not a refusal.
            if let Some(k) = entries.keys().next().copied() {
                entries.remove(&k);
            }
        }
        entries.insert(key, (who, now + left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn status(authenticated: bool, audiences: &[&str], username: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo { username: Some(username.into()), ..Default::default() }),
            error: None,
        }
    }

    fn books() -> WorkloadIdentity {
        WorkloadIdentity { namespace: "shop".into(), service_account: "books".into() }
    }

    #[test]
    fn only_an_authenticated_service_account_token_for_our_audience_is_accepted() {
        let good = status(true, &["tarmac"], "system:serviceaccount:shop:books");
        assert_eq!(identity_of(&good, "tarmac"), Ok(books()));
        let e = identity_of(&status(false, &[], ""), "tarmac").unwrap_err();
        assert_eq!(e.reason(), "token_not_authenticated");
        let e =
            identity_of(&status(true, &["vault"], "system:serviceaccount:shop:books"), "tarmac").unwrap_err();
        assert_eq!(e.reason(), "wrong_audience", "{e}");
        let mut none = good.clone();
        none.audiences = None;
        assert_eq!(identity_of(&none, "tarmac").unwrap_err().reason(), "wrong_audience");
        for user in ["alice", "system:serviceaccount:shop", "system:serviceaccount::books", "system:node:n1"]
        {
            let e = identity_of(&status(true, &["tarmac"], user), "tarmac").unwrap_err();
            assert_eq!(e.reason(), "not_a_service_account", "{user}");
        }
        let mut bound = good.clone();
        let extra = BTreeMap::from([
            (EXTRA_POD_NAME.to_string(), vec!["books-7d9f-x2".to_string()]),
            (EXTRA_POD_UID.to_string(), vec!["0b6c".to_string()]),
        ]);
        bound.user.as_mut().unwrap().extra = Some(extra);
        assert_eq!(identity_of(&bound, "tarmac"), Ok(books()));
    }

    #[test]
    fn a_jwt_expiry_is_read_and_anything_else_has_none() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp":1900000000,"aud":["tarmac"]}"#);
        let jwt = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        assert_eq!(token_expiry(&jwt), Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)));
        assert_eq!(token_expiry("opaque"), None);
        assert_eq!(token_expiry("a.!!!.c"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_positive_review_is_remembered_briefly_and_never_past_the_tokens_expiry() {
        let cache = ReviewCache::default();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let key = ReviewCache::key("long-lived");
        cache.put(key, books(), Instant::now(), wall + Duration::from_secs(3600), wall);
        assert_eq!(cache.get(&key, Instant::now()), Some(books()));
        tokio::time::advance(CACHE_TTL - Duration::from_secs(1)).await;
        assert_eq!(cache.get(&key, Instant::now()), Some(books()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get(&key, Instant::now()), None, "forgotten after the TTL");

        let short = ReviewCache::key("about-to-expire");
        cache.put(short, books(), Instant::now(), wall + Duration::from_secs(5), wall);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(cache.get(&short, Instant::now()), None, "never past the token's exp");

        let expired = ReviewCache::key("expired");
        cache.put(expired, books(), Instant::now(), wall - Duration::from_secs(1), wall);
        assert_eq!(cache.get(&expired, Instant::now()), None);
        assert_eq!(cache.get(&ReviewCache::key("other"), Instant::now()), None);
    }
}
