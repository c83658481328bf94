//! Per-request balancing with peak-EWMA power of two choices.

use std::time::Duration;
use tarmac_testkit::echo::EchoServer;
use tarmac_testkit::metrics::{scrape, sum};
use tarmac_testkit::proxy::start;
use tarmac_testkit::tools::http_get;

async fn two_endpoint_proxy(a: &EchoServer, b: &EchoServer) -> tarmac_proxy::Running {
    start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: pool\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\"}}, {{addr: \"{}\"}}]\n",
        a.addr, b.addr
    ))
    .await
}

#[tokio::test]
async fn a_slow_endpoint_receives_less_traffic() {
    let fast = EchoServer::start("fast").await;
    let slow = EchoServer::start_with_delay("slow", Duration::from_millis(40)).await;
    let proxy = two_endpoint_proxy(&fast, &slow).await;
    let addr = proxy.addrs.service("pool").unwrap();
    // Four concurrent callers, 60 requests each.
    let mut callers = Vec::new();
    for _ in 0..4 {
        callers.push(tokio::spawn(async move {
            for _ in 0..60 {
                assert_eq!(http_get(addr, "/").await.0, 200);
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    let (f, s) = (fast.requests(), slow.requests());
    assert_eq!(f + s, 240);
    // Round-robin would give the slow endpoint half; peak-EWMA gives it a small share
    // (it is still probed now and then as its estimate decays).
    assert!(s * 5 < f + s, "slow endpoint got {s} of {}", f + s);
}

#[tokio::test]
async fn requests_on_one_http2_connection_are_spread_over_endpoints() {
    let a = EchoServer::start("a").await;
    let b = EchoServer::start("b").await;
    let proxy = two_endpoint_proxy(&a, &b).await;
    // One HTTP/2 connection from the app, 60 concurrent requests multiplexed on it.
    let stream = tokio::net::TcpStream::connect(proxy.addrs.service("pool").unwrap()).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut calls = Vec::new();
    for i in 0..60 {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            let req = http::Request::get(format!("http://pool/r{i}?delay_ms=5"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            sender.send_request(req).await.unwrap().status()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let m = scrape(proxy.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_protocol_detect_total", &[("result", "http2")]), 1.0, "one client connection");
    assert_eq!(a.requests() + b.requests(), 60);
    assert!(a.requests() >= 10 && b.requests() >= 10, "a={} b={}", a.requests(), b.requests());
}

#[tokio::test]
async fn a_dead_endpoint_is_avoided_after_it_fails() {
    let live = EchoServer::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: pool\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\"}}, {{addr: \"{dead}\"}}]\n",
        live.addr
    ))
    .await;
    let addr = proxy.addrs.service("pool").unwrap();
    let mut failures = 0;
    for _ in 0..50 {
        if http_get(addr, "/").await.0 != 200 {
            failures += 1;
        }
    }
    // The dead endpoint fails its first pick, then sits out its penalty period.
    assert!(failures <= 3, "{failures} of 50 failed");
    assert!(live.requests() >= 47);
}
