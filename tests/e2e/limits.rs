//! Bad input and limits: malformed requests, oversized headers, the connection cap, the
//! loop guard, and a clean Prometheus exposition.

use std::time::Duration;
use tarmac_testkit::echo::EchoServer;
use tarmac_testkit::metrics::{scrape, sum, wait_for};
use tarmac_testkit::proxy::{mesh_pair, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

async fn inbound_proxy(app: &EchoServer, extra: &str) -> tarmac_proxy::Running {
    start(&format!("admin: 127.0.0.1:0\n{extra}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n", app.addr)).await
}

#[tokio::test]
async fn malformed_request_gets_400_and_never_reaches_the_app() {
    let app = EchoServer::start("app").await;
    let proxy = inbound_proxy(&app, "").await;
    let rsp = raw_exchange(
        proxy.addrs.inbound.unwrap(),
        b"GET / HTTP/1.1\r\nHost: a\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp:?}");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let app = EchoServer::start("app").await;
    let proxy = inbound_proxy(&app, "limits: {max_header_bytes: 16384}\n").await;
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nx-big: {big}\r\n\r\n");
    let rsp = raw_exchange(proxy.addrs.inbound.unwrap(), req.as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "{rsp:?}");
    assert_eq!(app.requests(), 0);
    // Just under the limit passes.
    let ok = "a".repeat(12_000);
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nx-big: {ok}\r\n\r\n");
    let rsp = raw_exchange(proxy.addrs.inbound.unwrap(), req.as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{}", &rsp[..rsp.len().min(200)]);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted() {
    let app = EchoServer::start("app").await;
    let proxy = inbound_proxy(&app, "limits: {max_connections: 2}\n").await;
    let addr = proxy.addrs.inbound.unwrap();
    // Two connections held open (waiting in protocol detection) fill the cap.
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    wait_for(proxy.addrs.admin, "tarmac_connections_refused_total", &[], 0.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rsp = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(rsp, "", "the third connection is closed without an answer");
    let m = scrape(proxy.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_connections_refused_total", &[("reason", "limit")]), 1.0, "{m}");
    // Once one closes, a new connection is served again.
    drop(_a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rsp = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp:?}");
}

#[tokio::test]
async fn a_connection_straight_to_the_transparent_listener_is_refused_not_looped() {
    // Without an iptables redirect, the original destination is the listener itself.
    let proxy = start("admin: 127.0.0.1:0\noutbound:\n  transparent_listen: 127.0.0.1:0\n").await;
    let rsp =
        raw_exchange(proxy.addrs.outbound_transparent.unwrap(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(rsp, "");
    let m = scrape(proxy.addrs.admin).await;
    let refused = sum(&m, "tarmac_connections_refused_total", &[("reason", "loop")])
        + sum(&m, "tarmac_connections_refused_total", &[("reason", "no_target")]);
    assert_eq!(refused, 1.0, "{m}");
    assert_eq!(sum(&m, "tarmac_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn request_without_host_gets_400_from_the_proxy() {
    let app = EchoServer::start("app").await;
    let (client, _server) = mesh_pair("books", app.addr).await;
    let rsp = raw_exchange(client.addrs.service("books").unwrap(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.0 400") || rsp.starts_with("HTTP/1.1 400"), "{rsp:?}");
    assert!(rsp.contains("Host"), "{rsp:?}");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn exposition_passes_promtool() {
    let app = EchoServer::start("app").await;
    let (client, server) = mesh_pair("books", app.addr).await;
    for path in ["/", "/?status=500", "/?status=404"] {
        tarmac_testkit::tools::http_get(client.addrs.service("books").unwrap(), path).await;
    }
    for admin in [client.addrs.admin, server.addrs.admin] {
        let text = scrape(admin).await;
        let path = tarmac_testkit::tools::temp_dir("promtool").join("metrics.txt");
        std::fs::write(&path, &text).unwrap();
        let out = tarmac_testkit::tools::run(
            "sh",
            &["-c", &format!("promtool check metrics < {}", path.display())],
        )
        .await;
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Reads one HTTP/1 response with a `content-length` body from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .map_or(0, |v| v.parse::<usize>().unwrap());
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// Waits for the proxy to close `s`, and says how long that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(limit, s.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&chunk[..n])),
        Err(_) => panic!("the connection is still open after {limit:?}"),
    }
}

#[tokio::test]
async fn http1_connections_with_no_request_open_are_closed_after_the_idle_timeout() {
    let app = EchoServer::start("app").await;
    let proxy = inbound_proxy(&app, "limits: {http_idle_timeout: 1s}\n").await;
    let addr = proxy.addrs.inbound.unwrap();

    // A response slower than the timeout is waited for: its request is open.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /?delay_ms=2500 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // The connection is still good for the next request...
    s.write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // ...and closed once it has been idle for the timeout (not before).
    let idle = closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?} idle");

    // A client that sends its request head a line at a time is cut off.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    slow.write_all(b"GET /never HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut chunk = [0u8; 1024];
    loop {
        assert!(started.elapsed() < Duration::from_secs(10), "a request head still open after 10 s");
        if slow.write_all(b"x-slow: 1\r\n").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                panic!("an answer to an unfinished head: {:?}", String::from_utf8_lossy(&chunk[..n]))
            }
            Err(_) => {}
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "cut off after {:?}", started.elapsed());
    assert_eq!(app.requests(), 2, "the unfinished head never reached the app");
}
