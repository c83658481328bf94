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

/// Runs `ws_peer.py h2client` (WebSocket over HTTP/2, RFC 8441) against `url` with
/// `headers` (`name:value`) and returns its JSON line.
pub(crate) async fn h2_websocket(url: &str, headers: &[&str]) -> serde_json::Value {
    let script = peer_script("ws_peer.py");
    let args: Vec<&str> =
        [script.as_str(), "h2client", url].into_iter().chain(headers.iter().copied()).collect();
    let out = run("python3", &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2 client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test]
async fn websocket_over_http2_crosses_the_mesh_to_an_http1_server() {
    // The server speaks WebSocket over HTTP/1.1 only: the extended CONNECT an HTTP/2
    // client sends becomes an Upgrade on the way, and the 101 a 200 on the way back.
    let server =
        ServerProcess::spawn_listening("python3", &[&peer_script("ws_peer.py"), "serve", "0", "h1-ws"]);
    let (client, server_proxy) = mesh_pair("chat", server.addr()).await;
    let through_both = client.addrs.service("chat").unwrap();
    // And from a client outside the mesh, straight to the server's sidecar.
    let inbound = server_proxy.addrs.inbound.unwrap();
    for addr in [through_both, inbound] {
        let got = h2_websocket(&format!("ws://{addr}/chat"), &[]).await;
        assert_eq!(got["connect_protocol"], true, "SETTINGS_ENABLE_CONNECT_PROTOCOL from {addr}: {got}");
        assert_eq!(got["status"], 200, "{got}");
        assert_eq!(got["text"], "hello", "{got}");
        assert_eq!(got["binary_len"], 102400, "{got}");
        assert_eq!(got["binary_ok"], true, "{got}");
        assert_eq!(got["who"]["server"], "h1-ws", "{got}");
        assert_eq!(got["who"]["path"], "/chat", "{got}");
        assert_eq!(got["last"], "bye", "{got}");
        assert_eq!(got["closed"], true, "the server's close came back: {got}");
    }
    // The tunnel is counted as every tunnel is: a response, then TCP bytes both ways.
    let m = scrape(client.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_responses_total", &[("target", "chat"), ("status_code", "200")]), 1.0, "{m}");
    assert_eq!(sum(&m, "tarmac_tcp_open_total", &[("target", "chat")]), 1.0, "{m}");
    for bytes in ["tarmac_tcp_read_bytes_total", "tarmac_tcp_write_bytes_total"] {
        assert!(sum(&m, bytes, &[("target", "chat")]) > 102400.0, "{bytes}: {m}");
    }
}

#[tokio::test]
async fn websocket_over_http2_refused_ends_the_stream_with_the_answer() {
    let ws = ServerProcess::spawn_listening("python3", &[&peer_script("ws_peer.py"), "serve", "0"]);
    let (client, _server_proxy) = mesh_pair("chat", ws.addr()).await;
    // The WebSocket server refuses the handshake: its answer reaches the client.
    let got = h2_websocket(&format!("ws://{}/refuse", client.addrs.service("chat").unwrap()), &[]).await;
    assert_eq!(got["status"], 403, "{got}");
    assert_eq!(got["ended"], true, "{got}");
    assert_eq!(got["body"], "refused by the test server\n", "{got}");

    // A server that answers 200 without switching would open the client's tunnel with
    // nothing behind it: a 502 instead.
    let plain = EchoServer::start("not-websocket").await;
    let (client, _server_proxy) = mesh_pair("plain", plain.addr).await;
    let got = h2_websocket(&format!("ws://{}/chat", client.addrs.service("plain").unwrap()), &[]).await;
    assert_eq!(got["status"], 502, "{got}");
    assert_eq!(got["ended"], true, "{got}");
    let reason = got["proxy_error"].as_str().unwrap_or_default();
    assert!(reason.contains("answered 200 OK to a protocol upgrade without switching"), "{got}");

    // Nothing listens behind the server's sidecar.
    let gone = std::net::SocketAddr::from(([127, 0, 0, 1], tarmac_testkit::servers::free_port()));
    let (client, _server_proxy) = mesh_pair("gone", gone).await;
    let got = h2_websocket(&format!("ws://{}/chat", client.addrs.service("gone").unwrap()), &[]).await;
    assert_eq!(got["status"], 502, "{got}");
    assert_eq!(got["ended"], true, "{got}");
}
