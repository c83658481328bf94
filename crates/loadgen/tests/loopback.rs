//! The generator against a tiny hyper server on loopback: every protocol, both loops, and
//! a stall that must show in the latency instead of being omitted.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tarmac_loadgen::{Config, Load, Protocol, Target};
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Answers every request with 200 and a short body; gRPC calls (by content type) with an
/// empty message and `grpc-status: 0`. The request numbered `stall_at` (counting from 1)
/// is held for `stall` first.
async fn serve(stall_at: u64, stall: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let number = counter.fetch_add(1, Ordering::Relaxed) + 1;
                    async move {
                        if number == stall_at {
                            tokio::time::sleep(stall).await;
                        }
                        Ok::<_, Infallible>(answer(&request))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, served)
}

fn answer(request: &Request<Incoming>) -> Response<Body> {
    if request.headers().get("content-type").is_some_and(|v| v == "application/grpc") {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("valid"));
        let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        return Response::builder().header("content-type", "application/grpc").body(body).expect("valid");
    }
    Response::new(Full::new(Bytes::from_static(b"ok\n")).boxed())
}

fn config(addr: SocketAddr, path: &str, protocol: Protocol, load: Load, connections: usize) -> Config {
    Config {
        target: Target::parse(&format!("http://{addr}{path}")).expect("valid URL"),
        protocol,
        connections,
        load,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn open_loop_sends_exactly_the_schedule_in_every_protocol() {
    for (protocol, path) in
        [(Protocol::Http1, "/"), (Protocol::H2c, "/"), (Protocol::Grpc, "/bench.Echo/Call")]
    {
        let (addr, served) = serve(0, Duration::ZERO).await;
        let load = Load::OpenLoop { rate_per_second: 1000.0 };
        let report = tarmac_loadgen::run(config(addr, path, protocol, load, 4)).await.expect("run");
        // 300 measured requests after 100 of warm-up; all of them served.
        assert_eq!(report.responses, 300, "{protocol}: {:?}", report.first_error);
        assert_eq!(report.failures(), 0, "{protocol}: {:?}", report.first_error);
        assert_eq!(served.load(Ordering::Relaxed), 400, "{protocol}");
        assert_eq!(report.warmup_responses, 100, "{protocol}");
        assert_eq!(report.latency.count(), 300);
        assert_eq!(report.pacing_lag.as_ref().map(|h| h.count()), Some(300));
        assert!(report.latency.percentile(50.0) >= report.service_time.percentile(0.0));
    }
}

#[tokio::test]
async fn a_stall_is_charged_to_every_request_it_delayed() {
    // One HTTP/1.1 connection at 1000 req/s; request 150 (in the measured window) is held
    // for 60 ms. The ~60 requests due meanwhile queue behind it: measured from their
    // intended send times, they are all slow, though each is fast once sent.
    let (addr, _) = serve(150, Duration::from_millis(60)).await;
    let load = Load::OpenLoop { rate_per_second: 1000.0 };
    let report = tarmac_loadgen::run(config(addr, "/", Protocol::Http1, load, 1)).await.expect("run");
    assert_eq!(report.failures(), 0, "{:?}", report.first_error);
    assert!(report.latency.max() >= Duration::from_millis(60));
    // The slowest tenth of 300 requests is all queued ones.
    assert!(
        report.latency.percentile(90.0) >= Duration::from_millis(10),
        "p90 {:?} hides the queued requests",
        report.latency.percentile(90.0)
    );
    // Service time, from the actual send, sees one slow request only.
    assert!(report.service_time.percentile(90.0) < Duration::from_millis(10));
    assert!(report.send_delay.as_ref().expect("open loop").max() >= Duration::from_millis(40));
}

#[tokio::test]
async fn closed_loop_keeps_every_stream_busy() {
    let (addr, served) = serve(0, Duration::ZERO).await;
    for (protocol, in_flight) in [(Protocol::Http1, 1), (Protocol::H2c, 8)] {
        let load = Load::ClosedLoop { in_flight_per_connection: in_flight };
        let report = tarmac_loadgen::run(config(addr, "/", protocol, load, 2)).await.expect("run");
        assert!(report.responses > 100, "{protocol}: {} responses", report.responses);
        assert_eq!(report.failures(), 0, "{protocol}: {:?}", report.first_error);
        assert!(report.pacing_lag.is_none() && report.generator_warning().is_none());
    }
    assert!(served.load(Ordering::Relaxed) > 200);
}

#[tokio::test]
async fn an_unreachable_target_fails_at_the_start_with_its_address() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let load = Load::OpenLoop { rate_per_second: 10.0 };
    let error = tarmac_loadgen::run(config(addr, "/", Protocol::Http1, load, 1)).await.unwrap_err();
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}
