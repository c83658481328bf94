//! The proxy as a process: startup errors, readiness, and draining on SIGTERM.

use std::time::Duration;
use tarmac_testkit::echo::EchoServer;
use tarmac_testkit::proxy::{ProxyProcess, wait_ready};
use tarmac_testkit::servers::free_port;
use tarmac_testkit::tools::{binary, http_get, run};

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let app = EchoServer::start("app").await;
    let (admin, inbound) = (free_port(), free_port());
    let mut proxy = ProxyProcess::spawn(&format!(
        "admin: 127.0.0.1:{admin}\ninbound:\n  listen: 127.0.0.1:{inbound}\n  app: {}\nlimits: {{drain_timeout: 10s}}\n",
        app.addr
    ));
    let admin_addr = ([127, 0, 0, 1], admin).into();
    let inbound_addr: std::net::SocketAddr = ([127, 0, 0, 1], inbound).into();
    wait_ready(admin_addr, Duration::from_secs(10)).await;

    let slow = tokio::spawn(async move { http_get(inbound_addr, "/slow?delay_ms=1500").await });
    // Wait until the request is at the app, then ask the proxy to stop.
    while app.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("TERM");

    // New connections are refused promptly (the listener is closed)...
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(inbound_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the inbound listener still accepts after SIGTERM");
    // ...readiness reports the drain while the admin listener stays up...
    assert_eq!(http_get(admin_addr, "/ready").await.0, 503);
    // ...and the request in flight completes normally.
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let exit = proxy.wait_timeout(Duration::from_secs(10)).expect("exits after draining");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn invalid_config_is_refused_with_file_and_field() {
    let dir = tarmac_testkit::tools::temp_dir("badconfig");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "admin: 127.0.0.1:0\ninbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:8080\n  port: 9\n",
    )
    .unwrap();
    let proxy = binary("tarmac-proxy");
    let out = run(proxy.to_str().unwrap(), &["--config", path.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml") && stderr.contains("port"), "{stderr}");

    std::fs::write(&path, "outbound:\n  services:\n  - name: x\n    endpoints: []\n").unwrap();
    let out = run(proxy.to_str().unwrap(), &["check", "--config", path.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("outbound.services[0]") && stderr.contains("neither `listen` nor `addrs`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_taken_port_fails_startup_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tarmac_testkit::tools::temp_dir("taken");
    let path = dir.join("p.yaml");
    std::fs::write(
        &path,
        format!("admin: 127.0.0.1:0\ninbound:\n  listen: 127.0.0.1:{port}\n  app: 127.0.0.1:1\n"),
    )
    .unwrap();
    let out = run(binary("tarmac-proxy").to_str().unwrap(), &["--config", path.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("inbound.listen") && stderr.contains(&port.to_string()), "{stderr}");
}

#[tokio::test]
async fn admin_serves_config_liveness_and_readiness() {
    let admin = free_port();
    let _proxy = ProxyProcess::spawn(&format!(
        "admin: 127.0.0.1:{admin}\noutbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"127.0.0.1:9\"}}]\n"
    ));
    let admin = ([127, 0, 0, 1], admin).into();
    wait_ready(admin, Duration::from_secs(10)).await;
    assert_eq!(http_get(admin, "/live").await.0, 200);
    let (status, config) = http_get(admin, "/config").await;
    assert_eq!(status, 200);
    // The effective config includes defaults the file left out.
    assert!(config.contains("name: books") && config.contains("detect_timeout: 10s"), "{config}");
    assert!(config.contains("opaque_ports"), "{config}");
}
