//! Opaque TCP: redis through the mesh, server-speaks-first protocols, half-close, idle
//! timeouts and byte counters.

use std::time::Duration;
use tarmac_testkit::metrics::{scrape, sum, wait_for};
use tarmac_testkit::proxy::{mesh_pair, start};
use tarmac_testkit::servers::{banner_server, free_port, half_close_server};
use tarmac_testkit::tools::run;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_redis() -> (Redis, u16) {
    let port = free_port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (run scripts/setup-test-deps.sh)");
    let redis = Redis(child);
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (redis, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start");
}

#[tokio::test]
async fn redis_benchmark_through_the_mesh_as_opaque_tcp() {
    let (_redis, port) = start_redis().await;
    let (client, server) = mesh_pair("cache", ([127, 0, 0, 1], port).into()).await;
    let listen = client.addrs.service("cache").unwrap();
    let p = listen.port().to_string();
    let out = run("redis-cli", &["-h", "127.0.0.1", "-p", &p, "SET", "tarmac", "mesh"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let out = run("redis-cli", &["-h", "127.0.0.1", "-p", &p, "GET", "tarmac"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "mesh");
    let out = run(
        "redis-benchmark",
        &["-h", "127.0.0.1", "-p", &p, "-n", "2000", "-c", "10", "-t", "set,get", "-q"],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SET:") && text.contains("GET:") && text.contains("requests per second"), "{text}");

    let m = scrape(client.addrs.admin).await;
    assert!(
        sum(&m, "tarmac_protocol_detect_total", &[("direction", "outbound"), ("result", "opaque")]) >= 10.0,
        "{m}"
    );
    // SET/GET of 2000 requests each carry well over 2000 * 20 bytes each way.
    assert!(sum(&m, "tarmac_tcp_read_bytes_total", &[("target", "cache")]) > 80_000.0, "{m}");
    assert!(sum(&m, "tarmac_tcp_write_bytes_total", &[("target", "cache")]) > 20_000.0, "{m}");
    wait_for(client.addrs.admin, "tarmac_tcp_connections_open", &[("target", "cache")], 0.0).await;
    let m =
        wait_for(server.addrs.admin, "tarmac_tcp_connections_open", &[("direction", "inbound")], 0.0).await;
    assert!(sum(&m, "tarmac_tcp_close_total", &[("direction", "inbound")]) >= 10.0, "{m}");
}

async fn read_line(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("banner in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn server_speaks_first_on_an_opaque_service_without_waiting() {
    let banner = banner_server().await;
    let proxy = start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: smtp\n    listen: 127.0.0.1:0\n    protocol: opaque\n    endpoints: [{{addr: \"{banner}\"}}]\n"
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addrs.service("smtp").unwrap()).await.unwrap();
    assert_eq!(read_line(&mut s).await, "220 ready\r\n");
    let m = scrape(proxy.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_protocol_detect_total", &[("result", "skipped")]), 1.0);
}

#[tokio::test]
async fn a_silent_client_on_a_port_not_declared_opaque_is_closed_and_counted() {
    let banner = banner_server().await;
    let proxy = start(&format!(
        "admin: 127.0.0.1:0\nlimits: {{detect_timeout: 200ms}}\noutbound:\n  services:\n  - name: smtp\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{banner}\"}}]\n"
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addrs.service("smtp").unwrap()).await.unwrap();
    // Nothing is sent: detection can only time out. Forwarding then as opaque TCP would
    // let HTTP sent later pass unparsed (issue 17, finding 1): the proxy closes instead,
    // and a server-speaks-first protocol must be declared opaque (the test above).
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.expect("closed").ok();
    assert_eq!(String::from_utf8_lossy(&got), "", "the banner flowed through an undeclared port");
    let m = scrape(proxy.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_protocol_detect_total", &[("result", "timeout")]), 1.0, "{m}");
    assert_eq!(sum(&m, "tarmac_tcp_open_total", &[]), 0.0, "no upstream connection: {m}");
}

#[tokio::test]
async fn detection_time_is_measured_by_outcome() {
    let banner = banner_server().await;
    let web = tarmac_testkit::echo::EchoServer::start("web").await;
    let proxy = start(&format!(
        "admin: 127.0.0.1:0\nlimits: {{detect_timeout: 2s}}\noutbound:\n  services:\n  - name: smtp\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{banner}\"}}]\n  - name: web\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\"}}]\n",
        web.addr
    ))
    .await;
    // A client waiting for its server to speak first, on a port not declared opaque:
    // detection waits the whole timeout, and closes it.
    let mut s = TcpStream::connect(proxy.addrs.service("smtp").unwrap()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.expect("closed").ok();
    // A client that speaks first is decided on its first bytes.
    let url = format!("http://{}/", proxy.addrs.service("web").unwrap());
    let (body, _) = tarmac_testkit::tools::curl(&["-sS", &url]).await;
    assert!(body.contains("server: web"), "{body}");

    let m = scrape(proxy.addrs.admin).await;
    let seconds = |result: &str, series: &str, le: Option<&str>| {
        let mut labels = vec![("direction", "outbound"), ("result", result)];
        labels.extend(le.map(|le| ("le", le)));
        sum(&m, &format!("tarmac_protocol_detect_duration_seconds_{series}"), &labels)
    };
    assert_eq!(seconds("timeout", "count", None), 1.0, "{m}");
    assert!(seconds("timeout", "sum", None) >= 2.0, "the stall lasted the timeout: {m}");
    assert_eq!(seconds("timeout", "bucket", Some("1")), 0.0, "{m}");
    assert_eq!(seconds("http1", "count", None), 1.0, "{m}");
    assert_eq!(seconds("http1", "bucket", Some("1")), 1.0, "decided long before the timeout: {m}");
    // The outcome counter agrees.
    assert_eq!(sum(&m, "tarmac_protocol_detect_total", &[("result", "timeout")]), 1.0, "{m}");
}

#[tokio::test]
async fn half_close_is_forwarded_both_ways() {
    let server = half_close_server().await;
    let (client, _server_proxy) = mesh_pair("sink", server).await;
    let mut s = TcpStream::connect(client.addrs.service("sink").unwrap()).await.unwrap();
    s.write_all(&[0u8; 5000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .expect("reply")
        .unwrap();
    assert_eq!(reply, "got 5000 bytes");
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let banner = banner_server().await;
    let proxy = start(&format!(
        "admin: 127.0.0.1:0\nlimits: {{tcp_idle_timeout: 300ms}}\noutbound:\n  services:\n  - name: idle\n    listen: 127.0.0.1:0\n    protocol: opaque\n    endpoints: [{{addr: \"{banner}\"}}]\n"
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addrs.service("idle").unwrap()).await.unwrap();
    assert_eq!(read_line(&mut s).await, "220 ready\r\n");
    // Then silence: the proxy closes the connection (read returns EOF) on its own.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed by the proxy")
        .unwrap_or(0);
    assert_eq!(n, 0);
    wait_for(proxy.addrs.admin, "tarmac_tcp_connections_open", &[("target", "idle")], 0.0).await;
}
