//! Deadlines: how long a request may take, from the route's `timeouts.request` and from a
//! gRPC caller's own `grpc-timeout`, whichever ends first.
//!
//! A gRPC call carries its deadline with it (`grpc-timeout`, gRPC over HTTP/2). The proxy
//! ends the call itself with `DEADLINE_EXCEEDED` when it passes, and each try tells the
//! server the time that is left rather than the time the caller first asked for (or the
//! route's, if the caller gave none or a later one; or the try's own limit, if sooner), so
//! that a server never works on a call its caller has given up on.

use crate::error::ProxyError;
use http::HeaderValue;
use http::header::HeaderName;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The time a `grpc-timeout` value allows: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`). `None` when malformed (the call then has no deadline from it).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value, in the finest unit that fits in 8 digits.
pub fn grpc_timeout_value(left: Duration) -> HeaderValue {
    let units: [(u128, &str); 4] = [
        (left.as_nanos(), "n"),
        (left.as_micros(), "u"),
        (left.as_millis(), "m"),
        (u128::from(left.as_secs()), "S"),
    ];
    let hours = u128::from(left.as_secs() / 3600).min(99_999_999);
    let (n, unit) = units.into_iter().find(|(n, _)| *n < 100_000_000).unwrap_or((hours, "H"));
    HeaderValue::from_str(&format!("{n}{unit}")).expect("digits and a unit")
}

/// When a request must have its response head by, and what set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    /// The limit as configured or asked for, for the error message.
    pub limit: Duration,
    /// Set by the caller's `grpc-timeout` (rather than by the route).
    pub grpc: bool,
    /// A gRPC call: each try passes the time left on in its `grpc-timeout`, whichever
    /// deadline is the sooner.
    pub pass_on: bool,
}

impl Deadline {
    /// The sooner of a route's request timeout and the request's `grpc-timeout`.
    pub fn of(request_timeout: Option<Duration>, headers: &http::HeaderMap) -> Option<Self> {
        let grpc = headers.get(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        if request_timeout.is_none() && grpc.is_none() {
            // The common case: no clock read.
            return None;
        }
        let now = Instant::now();
        // A gRPC caller without a deadline of its own still gets the route's: its server
        // is told, as it would be had the caller set one, and stops when the sidecar has.
        let pass_on = grpc.is_some() || crate::http::is_grpc(headers);
        let route = request_timeout.map(|limit| Deadline { at: now + limit, limit, grpc: false, pass_on });
        let grpc = grpc.map(|limit| Deadline { at: now + limit, limit, grpc: true, pass_on });
        match (route, grpc) {
            (Some(r), Some(g)) => Some(if g.at < r.at { g } else { r }),
            (r, g) => r.or(g),
        }
    }

    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// Runs `work` until `deadline`, if there is one; past it, the request fails with 504
/// (`DEADLINE_EXCEEDED` for gRPC callers).
///
/// Not an `async fn`: one would hold `work` twice, as its argument and inside its
/// timeout (the compiler does not overlap the two), and this future is part of every
/// request's, whose room hyper keeps for as long as each connection lives.
pub fn within<T, F>(deadline: Option<Deadline>, work: F) -> impl Future<Output = Result<T, ProxyError>>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    use futures_util::FutureExt as _;
    bounded_at(deadline.map(|d| d.at), work).map(move |result| match result {
        Ok(result) => result,
        Err(Elapsed) => {
            let deadline = deadline.expect("only a deadline elapses");
            let what = if deadline.grpc { "grpc-timeout" } else { "request" };
            Err(ProxyError::Timeout { what, limit: deadline.limit })
        }
    })
}

/// A time limit passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A future with a time limit or none, no larger than the future and a timer.
    #[project = BoundedProj]
    pub enum Bounded<F> {
        Free { #[pin] work: F },
        Timed { #[pin] work: tokio::time::Timeout<F> },
    }
}

impl<F: Future> Future for Bounded<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            BoundedProj::Free { work } => work.poll(cx).map(Ok),
            BoundedProj::Timed { work } => work.poll(cx).map(|r| r.map_err(|_| Elapsed)),
        }
    }
}

/// `work` until `at`, or without a limit.
pub fn bounded_at<F: Future>(at: Option<Instant>, work: F) -> Bounded<F> {
    match at {
        None => Bounded::Free { work },
        Some(at) => Bounded::Timed { work: tokio::time::timeout_at(at, work) },
    }
}

/// `work` for at most `limit`, or without a limit.
pub fn bounded<F: Future>(limit: Option<Duration>, work: F) -> Bounded<F> {
    match limit {
        None => Bounded::Free { work },
        Some(limit) => Bounded::Timed { work: tokio::time::timeout(limit, work) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_malformed_ones_are_none() {
        let parse = |s: &str| parse_grpc_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_time_left_is_written_in_at_most_eight_digits() {
        assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500000u");
        assert_eq!(grpc_timeout_value(Duration::from_nanos(20)), "20n");
        assert_eq!(grpc_timeout_value(Duration::from_secs(500_000)), "500000S");
        assert_eq!(grpc_timeout_value(Duration::from_secs(3600 * 200_000_000)), "99999999H");
        let round = parse_grpc_timeout(&grpc_timeout_value(Duration::from_millis(123_456))).unwrap();
        assert!(round <= Duration::from_millis(123_456) && round >= Duration::from_millis(123_455));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sooner_deadline_wins() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Deadline::of(None, &h), None);
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("100m"));
        let d = Deadline::of(Some(Duration::from_secs(1)), &h).unwrap();
        assert!(d.grpc && d.limit == Duration::from_millis(100));
        let d = Deadline::of(Some(Duration::from_millis(50)), &h).unwrap();
        assert!(!d.grpc && d.limit == Duration::from_millis(50));
        assert!(d.pass_on, "the route's sooner deadline is still passed on to a gRPC server");
        assert!(!Deadline::of(Some(Duration::from_millis(50)), &http::HeaderMap::new()).unwrap().pass_on);
        let mut call = http::HeaderMap::new();
        call.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        let d = Deadline::of(Some(Duration::from_millis(50)), &call).unwrap();
        assert!(!d.grpc && d.pass_on, "a gRPC call without a deadline of its own is given the route's");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(d.left(), Duration::from_millis(30));
    }
}
