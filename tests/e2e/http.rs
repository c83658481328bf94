//! HTTP through a client proxy and a server proxy, as in a mesh.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use tarmac_testkit::echo::{EchoServer, field};
use tarmac_testkit::metrics::{scrape, sum};
use tarmac_testkit::proxy::mesh_pair;
use tarmac_testkit::tools::curl;

#[tokio::test]
async fn curl_http1_crosses_both_proxies_and_reaches_the_app_as_http1() {
    let app = EchoServer::start("books").await;
    let (client, server) = mesh_pair("books", app.addr).await;
    let url = format!("http://{}/shelf?x=1", client.addrs.service("books").unwrap());
    let (body, _) = curl(&["-H", "x-custom: kept", &url]).await;
    assert_eq!(field(&body, "server"), Some("books"));
    assert_eq!(field(&body, "path"), Some("/shelf?x=1"));
    // The hop between proxies is HTTP/2, but the app sees the HTTP/1.1 the client spoke,
    // with the marker header removed and the Host restored.
    assert_eq!(field(&body, "version"), Some("HTTP/1.1"));
    assert_eq!(field(&body, "header x-custom"), Some("kept"));
    assert!(field(&body, "header tarmac-orig-proto").is_none(), "{body}");
    assert_eq!(
        field(&body, "header host"),
        Some(client.addrs.service("books").unwrap().to_string().as_str())
    );

    let out = scrape(client.addrs.admin).await;
    assert_eq!(sum(&out, "tarmac_requests_total", &[("direction", "outbound"), ("target", "books")]), 1.0);
    let inb = scrape(server.addrs.admin).await;
    assert_eq!(
        sum(
            &inb,
            "tarmac_responses_total",
            &[("direction", "inbound"), ("status_code", "200"), ("classification", "success")]
        ),
        1.0
    );
}

#[tokio::test]
async fn curl_h2_prior_knowledge_reaches_the_app_as_http2() {
    let app = EchoServer::start("books").await;
    let (client, _server) = mesh_pair("books", app.addr).await;
    let url = format!("http://{}/h2", client.addrs.service("books").unwrap());
    let (body, _) = curl(&["--http2-prior-knowledge", &url]).await;
    assert_eq!(field(&body, "version"), Some("HTTP/2.0"), "{body}");
    assert_eq!(field(&body, "path"), Some("/h2"));
}

#[tokio::test]
async fn concurrent_http1_requests_share_one_connection_between_proxies() {
    let app = EchoServer::start("books").await;
    let (client, server) = mesh_pair("books", app.addr).await;
    let addr = client.addrs.service("books").unwrap();
    // 20 clients, each on its own HTTP/1.1 connection, at the same time.
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(async move {
            let (status, body) = tarmac_testkit::tools::http_get(addr, &format!("/c{i}?delay_ms=200")).await;
            assert_eq!(status, 200, "{body}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let inbound = scrape(server.addrs.admin).await;
    let outbound = scrape(client.addrs.admin).await;
    assert_eq!(sum(&inbound, "tarmac_requests_total", &[("direction", "inbound")]), 20.0);
    // The client proxy opened exactly one connection to the server proxy...
    assert_eq!(sum(&outbound, "tarmac_http_connections_total", &[("target", "books")]), 1.0, "{outbound}");
    // ...and the server proxy accepted one mTLS connection carrying HTTP/2.
    assert_eq!(
        sum(&inbound, "tarmac_protocol_detect_total", &[("direction", "inbound"), ("result", "tls")]),
        1.0
    );
    assert_eq!(
        sum(&inbound, "tarmac_tls_handshakes_total", &[("direction", "inbound"), ("result", "ok")]),
        1.0
    );
    // The app, served over HTTP/1.1, needed one connection per concurrent request.
    assert!(app.connections() >= 2);
}

#[tokio::test]
async fn connections_to_the_app_are_kept_alive_and_reused() {
    let app = EchoServer::start("books").await;
    let (client, server) = mesh_pair("books", app.addr).await;
    let addr = client.addrs.service("books").unwrap();
    // One request at a time, bodies with and without a known length, and an empty one.
    for path in ["/a", "/b?status=204", "/c", "/d?status=404", "/e"] {
        tarmac_testkit::tools::http_get(addr, path).await;
    }
    assert_eq!(app.requests(), 5);
    assert_eq!(app.connections(), 1, "the inbound proxy should reuse its connection to the app");
    let m = scrape(server.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_http_connections_total", &[("direction", "inbound")]), 1.0, "{m}");
}

#[tokio::test]
async fn chunked_bodies_and_trailers_pass_through() {
    let app = EchoServer::start("books").await;
    let (client, _server) = mesh_pair("books", app.addr).await;
    let addr = client.addrs.service("books").unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b'a'; 1000]))),
        Ok(http_body::Frame::data(Bytes::from(vec![b'b'; 500]))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = http::Request::post("/upload")
        .header("host", "books")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .body(body)
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let text = String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(field(&text, "body-bytes"), Some("1500"), "{text}");
    assert_eq!(field(&text, "trailer x-checksum"), Some("abc123"), "{text}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_and_the_body_arrives() {
    let app = EchoServer::start("books").await;
    let (client, _server) = mesh_pair("books", app.addr).await;
    let url = format!("http://{}/upload", client.addrs.service("books").unwrap());
    let body = "x".repeat(4096);
    let (out, verbose) = curl(&["-v", "-H", "Expect: 100-continue", "--data-binary", &body, &url]).await;
    assert!(verbose.contains("HTTP/1.1 100 Continue"), "{verbose}");
    assert_eq!(field(&out, "body-bytes"), Some("4096"));
}

#[tokio::test]
async fn large_bodies_stream_over_http1_and_http2_flow_control() {
    let app = EchoServer::start("books").await;
    let (client, _server) = mesh_pair("books", app.addr).await;
    let url = format!("http://{}/big", client.addrs.service("books").unwrap());
    let path = tarmac_testkit::tools::temp_dir("big").join("body");
    // Far more than HTTP/2's initial windows (64 KiB): only flow control moves it.
    std::fs::write(&path, vec![7u8; 8 * 1024 * 1024]).unwrap();
    let upload = format!("@{}", path.display());
    let (out, _) = curl(&["--data-binary", &upload, &url]).await;
    assert_eq!(field(&out, "body-bytes"), Some("8388608"));
    let (out, _) = curl(&["--http2-prior-knowledge", "--data-binary", &upload, &url]).await;
    assert_eq!(field(&out, "body-bytes"), Some("8388608"));
    assert_eq!(field(&out, "version"), Some("HTTP/2.0"));
}

#[tokio::test]
async fn status_codes_and_failure_classification() {
    let app = EchoServer::start("books").await;
    let (client, _server) = mesh_pair("books", app.addr).await;
    let base = format!("http://{}", client.addrs.service("books").unwrap());
    for status in ["404", "503"] {
        let (code, _) =
            curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/?status={status}")]).await;
        assert_eq!(code, status);
    }
    let m = scrape(client.addrs.admin).await;
    assert_eq!(
        sum(&m, "tarmac_responses_total", &[("status_code", "404"), ("classification", "success")]),
        1.0
    );
    assert_eq!(
        sum(&m, "tarmac_responses_total", &[("status_code", "503"), ("classification", "failure")]),
        1.0
    );
}

#[tokio::test]
async fn unreachable_endpoint_gives_502_with_a_reason() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = tarmac_testkit::proxy::start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: gone\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{dead}\"}}]\n"
    ))
    .await;
    let url = format!("http://{}/", client.addrs.service("gone").unwrap());
    let (out, _) = curl(&["-D", "-", &url]).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(out.to_lowercase().contains("tarmac-proxy-error: connect to"), "{out}");
    let m = scrape(client.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_proxy_errors_total", &[("target", "gone"), ("kind", "connect")]), 1.0);
}

#[tokio::test]
async fn service_with_no_endpoints_gives_503() {
    let client = tarmac_testkit::proxy::start(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: empty\n    listen: 127.0.0.1:0\n",
    )
    .await;
    let url = format!("http://{}/", client.addrs.service("empty").unwrap());
    let (code, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]).await;
    assert_eq!(code, "503");
}

#[tokio::test]
async fn spoofed_orig_proto_header_from_an_app_is_dropped() {
    let app = EchoServer::start("books").await;
    let server = tarmac_testkit::proxy::start(&format!(
        "admin: 127.0.0.1:0\ninbound:\n  listen: 127.0.0.1:0\n  app: {}\n",
        app.addr
    ))
    .await;
    // A non-mesh HTTP/2 client claims the request was HTTP/1 in origin: the inbound proxy
    // must not trust it (it only matters between proxies) and still serves the app.
    let url = format!("http://{}/", server.addrs.inbound.unwrap());
    let (body, _) = curl(&["--http2-prior-knowledge", "-H", "tarmac-orig-proto: HTTP/1.1", &url]).await;
    assert!(field(&body, "header tarmac-orig-proto").is_none(), "{body}");
    let _ = Full::new(Bytes::new());
}

#[tokio::test]
async fn tap_streams_live_request_events() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = EchoServer::start("books").await;
    let (client, _server) = mesh_pair("books", app.addr).await;
    let books = client.addrs.service("books").unwrap();
    let mut tap = tokio::net::TcpStream::connect(client.addrs.admin).await.unwrap();
    tap.write_all(b"GET /tap?target=books&limit=2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tap.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    });
    // The watcher may not be subscribed yet: keep calling until the stream has its 2 events.
    for i in 0..100 {
        if reader.is_finished() {
            break;
        }
        tarmac_testkit::tools::http_get(books, &format!("/tapped/{i}?x=1")).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stream = reader.await.unwrap();
    assert!(stream.starts_with("HTTP/1.1 200") && stream.contains("application/x-ndjson"), "{stream}");
    let events: Vec<&str> = stream.lines().filter(|l| l.starts_with("{\"ts_ms\"")).collect();
    assert_eq!(events.len(), 2, "{stream}");
    for e in events {
        for needle in [
            "\"direction\":\"outbound\"",
            "\"target\":\"books\"",
            "\"method\":\"GET\"",
            "\"status\":200",
            "\"source\":\"127.0.0.1:",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        assert!(e.contains("\"path\":\"/tapped/"), "{e}");
    }
}
