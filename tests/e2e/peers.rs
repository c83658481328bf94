//! Real clients and servers in other languages through a pair of proxies: grpcio (unary,
//! streaming, bidi, error statuses), a WebSocket client and server, curl through CONNECT.

use tarmac_testkit::echo::{EchoServer, field};
use tarmac_testkit::metrics::{scrape, sum};
use tarmac_testkit::proxy::mesh_pair;
use tarmac_testkit::tools::{ServerProcess, curl, peer_script, run};

#[tokio::test]
async fn grpcio_unary_streaming_bidi_and_error_statuses() {
    let server = ServerProcess::spawn_listening("python3", &[&peer_script("grpc_peer.py"), "serve", "0"]);
    let (client, server_proxy) = mesh_pair("echo-grpc", server.addr()).await;
    let target = client.addrs.service("echo-grpc").unwrap().to_string();
    let out = run("python3", &[&peer_script("grpc_peer.py"), "client", &target]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "grpc client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        r#""unary": "echo:hi""#,
        r#""unary_trailer": "yes""#,
        r#""fail_code": "PERMISSION_DENIED""#,
        r#""fail_details": "denied by test""#,
        r#""stream": ["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]"#,
        r#""bidi": ["bidi:a", "bidi:b", "bidi:c"]"#,
        r#""all_ok": true"#,
    ] {
        assert!(stdout.contains(needle), "missing {needle} in {stdout}");
    }
    // gRPC outcomes are classified by grpc-status, not the HTTP 200 that carries them.
    let m = scrape(client.addrs.admin).await;
    assert_eq!(
        sum(
            &m,
            "tarmac_responses_total",
            &[("target", "echo-grpc"), ("grpc_status", "7"), ("classification", "failure")]
        ),
        1.0,
        "{m}"
    );
    assert!(
        sum(
            &m,
            "tarmac_responses_total",
            &[("target", "echo-grpc"), ("grpc_status", "0"), ("classification", "success")]
        ) >= 3.0
    );
    let m = scrape(server_proxy.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_responses_total", &[("direction", "inbound"), ("grpc_status", "7")]), 1.0);
}

#[tokio::test]
async fn websocket_client_and_server_talk_through_the_mesh() {
    let server = ServerProcess::spawn_listening("python3", &[&peer_script("ws_peer.py"), "serve", "0"]);
    let (client, _server_proxy) = mesh_pair("chat", server.addr()).await;
    let url = format!("ws://{}/chat", client.addrs.service("chat").unwrap());
    let out = run("python3", &[&peer_script("ws_peer.py"), "client", &url]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ws client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(r#""text": "hello""#), "{stdout}");
    assert!(stdout.contains(r#""binary_len": 102400"#), "{stdout}");
    assert!(stdout.contains(r#""binary_ok": true"#), "{stdout}");
    assert!(stdout.contains(r#""last": "bye""#), "{stdout}");
    let m = scrape(client.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_responses_total", &[("target", "chat"), ("status_code", "101")]), 1.0, "{m}");
}

#[tokio::test]
async fn curl_tunnels_through_connect_across_the_mesh() {
    // The app's upstream is a forward proxy; curl asks it for a tunnel with CONNECT,
    // which must cross both Tarmac proxies intact.
    let forward_proxy = tarmac_testkit::servers::connect_proxy().await;
    let target = EchoServer::start("behind-tunnel").await;
    let (client, _server_proxy) = mesh_pair("egress", forward_proxy).await;
    let proxy_url = format!("http://{}", client.addrs.service("egress").unwrap());
    let (body, verbose) =
        curl(&["-v", "-p", "-x", &proxy_url, &format!("http://{}/through", target.addr)]).await;
    assert!(verbose.contains("200 Connection Established"), "{verbose}");
    assert_eq!(field(&body, "server"), Some("behind-tunnel"), "{body}");
    assert_eq!(field(&body, "path"), Some("/through"));
}
