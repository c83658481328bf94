//! Rate limits: GCRA (the generic cell rate algorithm), so that a burst is bounded by
//! `burst` and the long-run rate by `requests_per_second`, with one atomic word of state
//! per limit and no timer.
//!
//! A [`RateLimit`] is one RateLimitPolicy on one port: a total limit, a limit per caller
//! identity (clients without one share a limit), and limits of their own for named
//! identities. A request must pass its caller's limit, then the total. Time is passed in
//! (nanoseconds on the caller's monotonic clock), so tests step it by hand.

use crate::authz::Scope;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarmac_proto::discovery as pb;

/// Callers remembered per limit; past it, idle ones are forgotten (an idle caller's state
/// is a fresh one's), and if none is idle new callers share one limit.
pub const MAX_CALLERS: usize = 10_000;

/// One GCRA limit.
#[derive(Debug)]
pub struct Gcra {
    /// Nanoseconds between requests at the limit's rate.
    interval: u64,
    /// How far ahead of `now` the theoretical arrival time may run: `interval * burst`.
    tolerance: u64,
    /// The theoretical arrival time of the next request, in the caller's nanoseconds.
    tat: AtomicU64,
}

impl Gcra {
    pub fn new(rate: &pb::Rate) -> Self {
        let rps = u64::from(rate.requests_per_second.max(1));
        let interval = 1_000_000_000 / rps;
        Self { interval, tolerance: interval * u64::from(rate.burst.max(1)), tat: AtomicU64::new(0) }
    }

    /// Admits a request at `now`, or says how long until one would be.
    pub fn admit(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + self.interval;
            if next - now > self.tolerance {
                return Err(Duration::from_nanos(next - self.tolerance - now));
            }
            match self.tat.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Gives back what [`Self::admit`] took, for a request another limit then refused:
    /// otherwise a caller's own limit would be spent by requests the total turned away.
    pub fn refund(&self) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| Some(tat.saturating_sub(self.interval)));
    }

    /// Whether a request now would find the limit as a new one would (nothing owed).
    fn idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }
}

/// Which of a policy's limits refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Total,
    Caller,
}

impl Which {
    pub fn as_str(self) -> &'static str {
        match self {
            Which::Total => "total",
            Which::Caller => "caller",
        }
    }
}

/// A refusal: which limit, and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub which: Which,
    pub retry_after: Duration,
}

/// The state of a policy's limits, kept across updates that leave the policy as it was.
#[derive(Debug)]
struct State {
    total: Option<Gcra>,
    callers: Mutex<HashMap<Arc<str>, Arc<Gcra>>>,
    /// Clients without an identity, together; and callers past [`MAX_CALLERS`].
    anonymous: Option<Arc<Gcra>>,
    overflow: Option<Arc<Gcra>>,
}

/// One RateLimitPolicy on one port.
#[derive(Debug)]
pub struct RateLimit {
    /// `namespace/name`: the `policy` label.
    pub name: Arc<str>,
    pub scope: Scope,
    config: pb::RateLimit,
    per_caller: Option<pb::Rate>,
    overrides: HashMap<Box<str>, pb::Rate>,
    state: Arc<State>,
}

impl RateLimit {
    /// Compiles `config`, keeping the counts of `previous` when it is the same policy
    /// unchanged (an update elsewhere must not hand every caller a fresh burst).
    pub fn compile(config: &pb::RateLimit, previous: Option<&RateLimit>) -> Self {
        let state = match previous {
            Some(p) if p.config == *config => p.state.clone(),
            _ => Arc::new(State {
                total: config.total.as_ref().map(Gcra::new),
                callers: Mutex::new(HashMap::new()),
                anonymous: config.per_caller.as_ref().map(|r| Arc::new(Gcra::new(r))),
                overflow: config.per_caller.as_ref().map(|r| Arc::new(Gcra::new(r))),
            }),
        };
        let overrides = config
            .overrides
            .iter()
            .filter_map(|o| Some((o.rate?, &o.identities)))
            .flat_map(|(rate, ids)| ids.iter().map(move |id| (id.as_str().into(), rate)))
            .collect();
        Self {
            name: config.name.as_str().into(),
            scope: Scope::from_pb(config.scope.as_ref()),
            config: config.clone(),
            per_caller: config.per_caller,
            overrides,
            state,
        }
    }

    /// Admits a request of `identity` at `now` (nanoseconds), or refuses it.
    pub fn check(&self, identity: Option<&str>, now: u64) -> Result<(), Limited> {
        let refused = |which| move |retry_after| Limited { which, retry_after };
        let caller = match identity {
            Some(id) => self.caller(id, now),
            None => self.state.anonymous.clone(),
        };
        if let Some(limit) = &caller {
            limit.admit(now).map_err(refused(Which::Caller))?;
        }
        let Some(total) = &self.state.total else { return Ok(()) };
        total.admit(now).map_err(refused(Which::Total)).inspect_err(|_| {
            if let Some(limit) = &caller {
                limit.refund();
            }
        })
    }

    /// The caller's own limit: its override's, or one at the per-caller rate.
    fn caller(&self, id: &str, now: u64) -> Option<Arc<Gcra>> {
        let rate = self.overrides.get(id).or(self.per_caller.as_ref())?;
        let mut callers = self.state.callers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = callers.get(id) {
            return Some(limit.clone());
        }
        if callers.len() >= MAX_CALLERS {
            callers.retain(|_, limit| !limit.idle(now));
            if callers.len() >= MAX_CALLERS {
                drop(callers);
                return self.state.overflow.clone();
            }
        }
        let limit = Arc::new(Gcra::new(rate));
        callers.insert(id.into(), limit.clone());
        Some(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn rate(requests_per_second: u32, burst: u32) -> Option<pb::Rate> {
        Some(pb::Rate { requests_per_second, burst })
    }

    /// Requests admitted at `offered` per second, evenly spread, for `seconds`.
    fn admitted(limit: &RateLimit, id: Option<&str>, offered: u64, seconds: u64, start: u64) -> Vec<u64> {
        (0..seconds)
            .map(|s| {
                (0..offered)
                    .filter(|i| limit.check(id, start + s * SECOND + i * SECOND / offered).is_ok())
                    .count() as u64
            })
            .collect()
    }

    #[test]
    fn a_total_limit_admits_its_rate_and_bounds_bursts() {
        let config = pb::RateLimit { name: "shop/books".into(), total: rate(100, 10), ..Default::default() };
        let limit = RateLimit::compile(&config, None);
        let per_second = admitted(&limit, None, 300, 10, SECOND);
        // The first second also admits the burst; then exactly the rate.
        assert!((100..=110).contains(&per_second[0]), "{per_second:?}");
        assert!(per_second[1..].iter().all(|n| *n == 100), "{per_second:?}");
        // A burst after a quiet spell: `burst` at once, no more.
        let later = 100 * SECOND;
        let at_once = (0..50).filter(|_| limit.check(None, later).is_ok()).count();
        assert_eq!(at_once, 10);
        let refused = limit.check(None, later).unwrap_err();
        assert_eq!(refused.which, Which::Total);
        assert_eq!(refused.retry_after, Duration::from_millis(10), "one interval at 100/s");
    }

    #[test]
    fn callers_have_limits_of_their_own_and_overrides_theirs() {
        let config = pb::RateLimit {
            name: "shop/books".into(),
            per_caller: rate(10, 1),
            overrides: vec![pb::RateOverride {
                rate: rate(50, 1),
                identities: vec!["spiffe://td/ns/shop/sa/batch".into()],
            }],
            ..Default::default()
        };
        let limit = RateLimit::compile(&config, None);
        let web = admitted(&limit, Some("spiffe://td/ns/shop/sa/web"), 100, 3, SECOND);
        let api = admitted(&limit, Some("spiffe://td/ns/shop/sa/api"), 100, 3, SECOND);
        let batch = admitted(&limit, Some("spiffe://td/ns/shop/sa/batch"), 100, 3, SECOND);
        let anonymous = admitted(&limit, None, 100, 3, SECOND);
        assert_eq!(web, [10, 10, 10]);
        assert_eq!(api, [10, 10, 10], "one caller's use leaves another's limit whole");
        assert_eq!(batch, [50, 50, 50]);
        assert_eq!(anonymous, [10, 10, 10], "clients without an identity share one limit");
        assert_eq!(
            limit.check(Some("spiffe://td/ns/shop/sa/web"), 4 * SECOND + 1).map_err(|l| l.which),
            Ok(())
        );
    }

    #[test]
    fn a_request_the_total_refuses_costs_its_caller_nothing() {
        let config = pb::RateLimit {
            name: "shop/books".into(),
            total: rate(100, 1),
            per_caller: rate(40, 1),
            ..Default::default()
        };
        let limit = RateLimit::compile(&config, None);
        // Four callers at 75 a second each: each under its own 40 only if refusals by
        // the total are given back; together at the total's 100.
        let ids: Vec<String> = (0..4).map(|i| format!("spiffe://td/ns/shop/sa/c{i}")).collect();
        let per_second: Vec<usize> = (1..4)
            .map(|s| {
                (0..300u64)
                    .filter(|i| {
                        limit.check(Some(&ids[(i % 4) as usize]), s * SECOND + i * SECOND / 300).is_ok()
                    })
                    .count()
            })
            .collect();
        assert!(per_second.iter().all(|n| (99..=101).contains(n)), "{per_second:?}");
    }

    #[test]
    fn an_unchanged_policy_keeps_its_counts_across_updates() {
        let config = pb::RateLimit { name: "shop/books".into(), total: rate(1, 1), ..Default::default() };
        let first = RateLimit::compile(&config, None);
        assert!(first.check(None, SECOND).is_ok());
        let same = RateLimit::compile(&config, Some(&first));
        assert!(same.check(None, SECOND).is_err(), "the update handed out no fresh burst");
        let changed = pb::RateLimit { total: rate(2, 1), ..config };
        assert!(RateLimit::compile(&changed, Some(&same)).check(None, SECOND).is_ok());
    }
}
