//! A rule's retry policy, compiled once per update.

use http::StatusCode;
use std::time::Duration;
use tarmac_proto::discovery as pb;

/// The wait before the first retry when a route names none (Envoy's and Istio's 25 ms).
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Retries when a route's `retry` names no `attempts` (Istio's default).
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// The retry budget every caller has for every Service unless a ResiliencePolicy says
/// otherwise (Linkerd's numbers): retries add at most this share of the requests...
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
/// ...plus this many a second...
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// ...counted over this window.
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// How long a request to a Service may wait for its response head when neither its rule
/// nor a ResiliencePolicy says (`timeouts.request`; `0s` turns it off): a backend that
/// never answers must not hold its callers, and their connections, forever. Generous, so
/// that slow answers and long polls up to it are untouched.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// When a request that left the proxy is tried again. Requests that never left are
/// retried whether or not a rule has a policy; every retry needs the service's budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first try.
    pub attempts: u32,
    /// HTTP statuses retried; a failure the proxy itself answers with one of these (a
    /// connection reset 502, a per-try timeout 504) is retried too.
    pub codes: Vec<u16>,
    /// gRPC statuses retried, one bit each.
    grpc_codes: u32,
    /// The least wait before the first retry; each later one waits twice as long.
    pub backoff: Duration,
}

/// A retry policy that cannot be followed: discovery sent a value the model refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    #[error("gRPC status {0} does not exist (0-16)")]
    GrpcCode(u32),
    #[error("retry code {0} is not an HTTP status 400-599")]
    Code(u32),
}

impl Retry {
    pub fn compile(r: &pb::Retry) -> Result<Self, RetryError> {
        let mut grpc_codes = 0u32;
        for &code in &r.grpc_codes {
            if code > 16 {
                return Err(RetryError::GrpcCode(code));
            }
            grpc_codes |= 1 << code;
        }
        let codes = r
            .codes
            .iter()
            .map(|&c| match u16::try_from(c) {
                Ok(c @ 400..=599) => Ok(c),
                _ => Err(RetryError::Code(c)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            attempts: r.attempts,
            codes,
            grpc_codes,
            backoff: match r.backoff_ms {
                0 => DEFAULT_BACKOFF,
                ms => Duration::from_millis(ms),
            },
        })
    }

    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.codes.contains(&status.as_u16())
    }

    pub fn retries_grpc(&self, code: u32) -> bool {
        code < 32 && self.grpc_codes & (1 << code) != 0
    }

    /// The gRPC statuses retried, in order.
    pub fn grpc_codes(&self) -> impl Iterator<Item = u32> + '_ {
        (0..17).filter(|c| self.retries_grpc(*c))
    }

    /// The wait before retry number `retry` (1 for the first), without jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff.saturating_mul(1 << retry.saturating_sub(1).min(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_compiles_with_defaults_and_refuses_what_is_not_a_status() {
        let r =
            Retry::compile(&pb::Retry { attempts: 3, codes: vec![503], grpc_codes: vec![14], backoff_ms: 0 })
                .unwrap();
        assert!(r.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!r.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(r.retries_grpc(14) && !r.retries_grpc(13));
        assert_eq!(r.grpc_codes().collect::<Vec<_>>(), [14]);
        assert_eq!(r.backoff(1), DEFAULT_BACKOFF);
        assert_eq!(r.backoff(3), DEFAULT_BACKOFF * 4);
        assert!(Retry::compile(&pb::Retry { codes: vec![200], ..Default::default() }).is_err());
        assert!(Retry::compile(&pb::Retry { grpc_codes: vec![17], ..Default::default() }).is_err());
    }
}
