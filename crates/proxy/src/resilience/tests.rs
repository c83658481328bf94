//! Tries against scripted backends, under paused time.

use super::budget::{BudgetConfig, RetryBudget};
use super::retry::Tries;
use crate::backend::Hop;
use crate::endpoint::scripted::{Answer, Harness, Peer, streamed};
use crate::error::ProxyError;
use crate::http::Body;
use http::Request;
use std::sync::Arc;
use std::time::Duration;
use tarmac_proto::discovery as pb;
use tarmac_route::Retry;

fn policy(attempts: u32, codes: &[u32]) -> Retry {
    Retry::compile(&pb::Retry { attempts, codes: codes.to_vec(), grpc_codes: vec![14], backoff_ms: 10 })
        .unwrap()
}

fn no_rule() -> Arc<String> {
    Arc::default()
}

struct Run<'a> {
    h: &'a Harness,
    budget: &'a RetryBudget,
    policy: Option<&'a Retry>,
    per_try: Option<Duration>,
    grpc: bool,
}

impl Run<'_> {
    async fn send(&self, req: Request<Body>) -> Result<u16, ProxyError> {
        let (route, rule) = (no_rule(), no_rule());
        self.budget.deposit();
        let tries = Tries {
            backend: &self.h.backend,
            hop: Hop::default(),
            policy: self.policy,
            per_try_timeout: self.per_try,
            deadline: None,
            budget: self.budget,
            grpc: self.grpc,
            metrics: &self.h.target,
            route: &route,
            rule: &rule,
        };
        tries.run(req).await.map(|rsp| rsp.status().as_u16())
    }
}

fn budget() -> RetryBudget {
    RetryBudget::new(BudgetConfig::default())
}

#[tokio::test(start_paused = true)]
async fn a_request_that_never_left_is_retried_without_a_policy() {
    let peer = Peer::always(200);
    peer.refuse(1);
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let run = Run { h: &h, budget: &b, policy: None, per_try: None, grpc: false };
    assert_eq!(run.send(Harness::request(Some("order"))).await.unwrap(), 200);
    assert_eq!(peer.requests(), 1);
    assert_eq!(*peer.bodies.lock().unwrap(), ["order"], "the body went whole, once");
    assert_eq!(h.counter("tarmac_retries_total", &["reason=\"unsent\""]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stream_an_http2_peer_refused_unprocessed_is_sent_again() {
    // A draining proxy resets a stream it will not process (REFUSED_STREAM): hyper keeps
    // the request, yet it may go again, with no policy, since no part of it was handled.
    let peer = Peer::h2(|n| if n == 0 { Answer::Refuse } else { Answer::Status(200) });
    let h = Harness::meshed(std::slice::from_ref(&peer));
    let b = budget();
    let run = Run { h: &h, budget: &b, policy: None, per_try: None, grpc: false };
    assert_eq!(run.send(Harness::request(None)).await.unwrap(), 200);
    assert_eq!(peer.requests(), 2);
    assert_eq!(h.counter("tarmac_retries_total", &["reason=\"unsent\""]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_past_an_http2_peers_goaway_is_sent_again() {
    // The peer's GOAWAY came before it read the stream: unprocessed, sent again on a new
    // connection (whether hyper hands the request back or keeps it, which depends on when
    // the GOAWAY is read).
    let peer = Peer::h2(|_| Answer::Status(200));
    peer.go_away(1);
    let h = Harness::meshed(std::slice::from_ref(&peer));
    let b = budget();
    let run = Run { h: &h, budget: &b, policy: None, per_try: None, grpc: false };
    assert_eq!(run.send(Harness::request(None)).await.unwrap(), 200);
    assert_eq!(peer.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_with_a_body_goes_again_only_when_held() {
    // Without a policy its body is not held: hyper keeps the request, which fails.
    let peer = Peer::h2(|n| if n == 0 { Answer::Refuse } else { Answer::Status(200) });
    let h = Harness::meshed(std::slice::from_ref(&peer));
    let b = budget();
    let run = Run { h: &h, budget: &b, policy: None, per_try: None, grpc: false };
    let error = run.send(Harness::request(Some("order"))).await.unwrap_err();
    assert!(matches!(error, ProxyError::Upstream { sent: false, .. }), "{error:?}");
    // Under a policy it is held, and goes again whole.
    let held = policy(2, &[503]);
    let run = Run { h: &h, budget: &b, policy: Some(&held), per_try: None, grpc: false };
    assert_eq!(run.send(Harness::request(Some("order"))).await.unwrap(), 200);
    assert_eq!(*peer.bodies.lock().unwrap(), ["order"], "the body reached the peer once, whole");
}

#[tokio::test(start_paused = true)]
async fn without_a_policy_a_response_is_never_retried() {
    let peer = Peer::always(503);
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let run = Run { h: &h, budget: &b, policy: None, per_try: None, grpc: false };
    assert_eq!(run.send(Harness::request(None)).await.unwrap(), 503);
    assert_eq!(peer.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_status_the_policy_names_is_retried_with_the_body_again() {
    let peer = Peer::new(|n| Answer::Status(if n < 2 { 503 } else { 200 }));
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let p = policy(2, &[503]);
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: None, grpc: false };
    let started = tokio::time::Instant::now();
    assert_eq!(run.send(Harness::request(Some("pay 10"))).await.unwrap(), 200);
    assert_eq!(peer.requests(), 3);
    assert_eq!(*peer.bodies.lock().unwrap(), ["pay 10", "pay 10", "pay 10"]);
    assert_eq!(h.counter("tarmac_retries_total", &["reason=\"status\""]), 2);
    // 10 ms, then 20 ms, each with up to half again of jitter.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(30) && waited <= Duration::from_millis(46), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn attempts_run_out_with_the_last_real_response() {
    let peer = Peer::always(503);
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let p = policy(3, &[503]);
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: None, grpc: false };
    assert_eq!(run.send(Harness::request(None)).await.unwrap(), 503);
    assert_eq!(peer.requests(), 4, "one try and three retries");
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_returns_the_last_real_response_and_is_counted() {
    let peer = Peer::always(503);
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = RetryBudget::new(BudgetConfig { ratio: 0.0, min_per_second: 0, window: Duration::from_secs(10) });
    let p = policy(3, &[503]);
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: None, grpc: false };
    assert_eq!(run.send(Harness::request(None)).await.unwrap(), 503);
    assert_eq!(peer.requests(), 1);
    assert_eq!(h.counter("tarmac_retries_denied_total", &["reason=\"budget\""]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_of_unknown_length_is_recorded_as_sent_and_retried_whole() {
    // A streamed body (its length known only at its end, as every gRPC call's): the first
    // try sends it as it comes, and the retry sends the recording, whole.
    let peer = Peer::new(|n| Answer::Status(if n == 0 { 503 } else { 200 }));
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let p = policy(3, &[503]);
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: None, grpc: false };
    let mut req = Harness::request(None);
    *req.method_mut() = http::Method::POST;
    *req.body_mut() = streamed(&["part one, ", "part two"]).await;
    assert_eq!(run.send(req).await.unwrap(), 200);
    assert_eq!(*peer.bodies.lock().unwrap(), ["part one, part two", "part one, part two"], "whole, twice");
    assert_eq!(h.counter("tarmac_retries_total", &["reason=\"status\""]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_of_unknown_length_past_the_bound_is_sent_once_and_not_retried() {
    static LONG: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
        Box::leak("x".repeat(super::retry::MAX_REPLAY_BODY as usize / 2 + 1).into_boxed_str())
    });
    let chunks: &'static [&'static str] = Box::leak(vec![*LONG, *LONG].into_boxed_slice());
    let peer = Peer::always(503);
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let p = policy(3, &[503]);
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: None, grpc: false };
    let mut req = Harness::request(None);
    *req.method_mut() = http::Method::POST;
    *req.body_mut() = streamed(chunks).await;
    assert_eq!(run.send(req).await.unwrap(), 503);
    let bodies = peer.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1, "sent once");
    assert_eq!(bodies[0].len(), 2 * LONG.len(), "whole");
    assert_eq!(h.counter("tarmac_retries_denied_total", &["reason=\"body\""]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_try_past_its_timeout_is_retried() {
    let peer =
        Peer::new(|n| if n == 0 { Answer::Slow(Duration::from_secs(30), 200) } else { Answer::Status(200) });
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let p = policy(1, &[]);
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: Some(Duration::from_secs(1)), grpc: false };
    assert_eq!(run.send(Harness::request(None)).await.unwrap(), 200);
    assert_eq!(h.counter("tarmac_retries_total", &["reason=\"timeout\""]), 1);
    let without = Run { policy: None, ..run };
    let err = without.send(Harness::request(None)).await;
    assert!(matches!(err, Ok(200)), "the second peer request is fast");
}

#[tokio::test(start_paused = true)]
async fn grpc_statuses_are_retried_and_pushback_is_obeyed() {
    let peer = Peer::new(|n| match n {
        0 => Answer::Grpc(14, Some(500)),
        1 => Answer::Grpc(14, Some(-1)),
        _ => Answer::Grpc(0, None),
    });
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let p = policy(3, &[]);
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: None, grpc: true };
    let started = tokio::time::Instant::now();
    run.send(Harness::request(None)).await.unwrap();
    assert_eq!(peer.requests(), 2, "a negative pushback ends the retries");
    assert!(started.elapsed() >= Duration::from_millis(500), "the server's wait replaced the backoff");
}

#[tokio::test(start_paused = true)]
async fn a_failing_backend_sees_at_most_the_budget_in_retries() {
    // 5 attempts on every 503 and a backend that always fails: without the budget, six
    // times the load. With it: the offered load, 20 % more, and 10 per second.
    let peer = Peer::always(503);
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let p = Retry::compile(&pb::Retry { attempts: 5, codes: vec![503], grpc_codes: vec![], backoff_ms: 1 })
        .unwrap();
    let run = Run { h: &h, budget: &b, policy: Some(&p), per_try: None, grpc: false };
    let offered = 2000u32;
    for _ in 0..offered / 100 {
        for _ in 0..100 {
            run.send(Harness::request(None)).await.unwrap();
        }
        tokio::time::advance(Duration::from_millis(1000)).await;
    }
    // 20 seconds of it.
    let bound = f64::from(offered) * 1.2 + 10.0 * 20.0 + 100.0;
    assert!(f64::from(peer.requests()) <= bound, "{} requests for {offered} offered", peer.requests());
    assert!(peer.requests() > offered, "some retries were made");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_in_a_row_is_ejected_probed_and_brought_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    let sick = Peer::new(move |_| Answer::Status(if flag.load(Ordering::Relaxed) { 503 } else { 200 }));
    let well = Peer::always(200);
    let h = Harness::new(&[sick.clone(), well.clone()]);
    let send = || h.backend.dispatch(Harness::request(None), Hop::default());
    // Enough requests that the sick endpoint gets its seven in a row.
    for _ in 0..100 {
        let _ = send().await;
    }
    assert_eq!(h.counter("tarmac_endpoint_ejections_total", &[]), 1);
    let before = sick.requests();
    assert!(before >= 7, "{before}");
    for _ in 0..50 {
        assert_eq!(
            send().await.unwrap().status(),
            200,
            "only the well endpoint answers while the other is out"
        );
    }
    assert_eq!(sick.requests(), before);
    // The ejection ends (1 s and jitter); the sick endpoint has recovered; its probe
    // brings it back and it takes its share again.
    broken.store(false, Ordering::Relaxed);
    tokio::time::advance(Duration::from_millis(1200)).await;
    for _ in 0..100 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    assert!(sick.requests() > before + 10, "{} after {before}", sick.requests());
}

#[tokio::test(start_paused = true)]
async fn at_most_half_of_a_backends_endpoints_are_ejected() {
    let peers = [Peer::always(503), Peer::always(503), Peer::always(503), Peer::always(503)];
    let h = Harness::new(&peers);
    for _ in 0..200 {
        let _ = h.backend.dispatch(Harness::request(None), Hop::default()).await;
    }
    let ejected = h.backend.endpoints().iter().filter(|e| e.accrual.is_ejected()).count();
    assert_eq!(ejected, 2);
    assert!(peers.iter().all(|p| p.requests() > 0));
}

#[tokio::test(start_paused = true)]
async fn a_backend_at_its_limit_queues_what_fits_and_refuses_the_rest_at_once() {
    use crate::resilience::limit::LimitConfig;
    let peer = Peer::new(|_| Answer::Slow(Duration::from_secs(10), 200));
    let h = Arc::new(Harness::new(std::slice::from_ref(&peer)));
    h.backend.set_limit(Some(LimitConfig { max_in_flight: 2, max_queued: 1 }));
    let send =
        |h: Arc<Harness>| async move { h.backend.dispatch(Harness::request(None), Hop::default()).await };
    let started = tokio::time::Instant::now();
    let held: Vec<_> = (0..3).map(|_| tokio::spawn(send(h.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let Err(refused) = send(h.clone()).await else { panic!("a fourth request was let in") };
    assert!(matches!(refused.error, ProxyError::Overloaded { .. }), "{:?}", refused.error);
    assert_eq!(refused.error.status(), 503);
    assert_eq!(refused.error.grpc_status(), "8", "RESOURCE_EXHAUSTED for gRPC callers");
    assert!(started.elapsed() < Duration::from_millis(10), "refused at once, not after a wait");
    for (i, task) in held.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap().status(), 200, "request {i}");
    }
    // Two at a time: the queued one started when the first two finished.
    assert!(started.elapsed() >= Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(peer.requests(), 3);
}

#[tokio::test(start_paused = true)]
async fn without_a_policy_a_service_answers_504_past_the_default_request_timeout() {
    use super::ServicePolicy;
    use super::deadline::{Deadline, within};
    let default = tarmac_route::policy::DEFAULT_REQUEST_TIMEOUT;
    let timeout = ServicePolicy::from_pb(None).unwrap().unrouted.request_timeout;
    assert_eq!(timeout, Some(default));
    let peer = Peer::new(move |n| {
        if n == 0 {
            Answer::Slow(default + Duration::from_secs(1), 200)
        } else {
            Answer::Slow(default / 2, 200)
        }
    });
    let h = Harness::new(std::slice::from_ref(&peer));
    let b = budget();
    let run = Run { h: &h, budget: &b, policy: None, per_try: None, grpc: false };
    let req = Harness::request(None);
    let deadline = Deadline::of(timeout, req.headers());
    let error = within(deadline, run.send(req)).await.unwrap_err();
    assert!(matches!(error, ProxyError::Timeout { what: "request", limit } if limit == default), "{error:?}");
    assert_eq!(error.status(), http::StatusCode::GATEWAY_TIMEOUT);
    // An answer within it is untouched.
    let req = Harness::request(None);
    let deadline = Deadline::of(timeout, req.headers());
    assert_eq!(within(deadline, run.send(req)).await.unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_limit_place_is_freed_at_the_response_head_not_at_the_body_end() {
    // A bulkhead bounds the wait for answers; a body streams under the caller's own flow
    // control. Held to the body's end, a place would belong to whoever reads slowly, and
    // every long stream would hold one for its whole life.
    use crate::resilience::limit::LimitConfig;
    use http_body_util::BodyExt;
    let peer = Peer::h2(|_| Answer::SlowBody(Duration::from_secs(10)));
    let h = Harness::meshed(std::slice::from_ref(&peer));
    h.backend.set_limit(Some(LimitConfig { max_in_flight: 1, max_queued: 0 }));
    let first = h.backend.dispatch(Harness::request(None), Hop::default()).await.unwrap();
    assert!(!http_body::Body::is_end_stream(first.body()), "its body is still to come");
    let second = h.backend.dispatch(Harness::request(None), Hop::default()).await;
    let second = second.expect("the only place was free again at the first response's head");
    assert_eq!(second.status(), 200);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "late");
    assert_eq!(peer.requests(), 2);
}
