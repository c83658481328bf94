//! An app cannot make the mesh carry an identity it does not have (issue 17, finding 1).
//!
//! A strict-mTLS server proxy in front of a recorder app that keeps every byte it is sent,
//! and a client proxy in front of the attacker. Before the fix, a request line that did not
//! parse as HTTP/1.x (`HTTP/01.1`, `HTTP/9.9`), or HTTP sent after the detection timeout,
//! was forwarded as opaque TCP and reached the app with the `tarmac-client-id` the attacker
//! wrote, over real mTLS. Now the proxy answers what does not parse, closes what stays
//! silent, and a peer proxy's opaque TCP that turns out to be HTTP is served as HTTP with
//! the identity its certificate proved.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarmac_testkit::metrics::{scrape, sum};
use tarmac_testkit::proxy::{TestPki, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FORGED: &str = "spiffe://cluster.local/ns/default/sa/admin";

/// An app that answers every connection with 200 and keeps what it was sent.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Until the end of a head, or a pause: opaque bytes need not hold one.
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                    kept.lock().unwrap().push(String::from_utf8_lossy(&got).into_owned());
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// (client proxy, server proxy): `app` behind a strict server proxy, reached through the
/// client proxy's listener for service `app`; detection gives up after 300 ms.
async fn strict_mesh(app: SocketAddr) -> (tarmac_proxy::Running, tarmac_proxy::Running) {
    let pki = TestPki::get();
    let server = start(&format!(
        "admin: 127.0.0.1:0\nlimits: {{detect_timeout: 300ms}}\ninbound:\n  listen: 127.0.0.1:0\n  app: {app}\n  mtls: strict\n{}",
        pki.identity_yaml(&pki.server)
    ))
    .await;
    let inbound = server.addrs.inbound.unwrap();
    let client = start(&format!(
        "admin: 127.0.0.1:0\nlimits: {{detect_timeout: 300ms}}\noutbound:\n  services:\n  - name: app\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{inbound}\", meshed: true, identity: \"{}\"}}]\n{}",
        pki.server.0,
        pki.identity_yaml(&pki.client)
    ))
    .await;
    (client, server)
}

/// Sends `raw` and reads until the proxy closes the connection (bounded).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

fn request(first_line: &str) -> Vec<u8> {
    format!("{first_line}\r\nHost: app\r\ntarmac-client-id: {FORGED}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn what_does_not_parse_as_http_is_answered_by_the_proxy_and_never_reaches_the_app() {
    let app = Recorder::start().await;
    let (client, _server) = strict_mesh(app.addr).await;
    let listener = client.addrs.service("app").unwrap();
    for line in ["GET / HTTP/01.1", "GET / HTTP/9.9", "GET / SPDY/3", "GET /", "PURGE /cache HTTP/2"] {
        let reply = exchange(listener, &request(line)).await;
        let got = reply.lines().next().unwrap_or_default().to_string();
        assert_eq!(got, "HTTP/1.1 400 Bad Request", "`{line}` (the app saw {:?})", app.seen());
    }
    assert_eq!(app.seen(), Vec::<String>::new(), "nothing reached the app");
}

#[tokio::test]
async fn empty_lines_before_a_request_do_not_hide_it_and_the_identity_is_the_proven_one() {
    let app = Recorder::start().await;
    let (client, _server) = strict_mesh(app.addr).await;
    let mut raw = b"\r\n\r\n".to_vec();
    raw.extend(request("GET /leading HTTP/1.1"));
    let reply = exchange(client.addrs.service("app").unwrap(), &raw).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let seen = app.seen().join("\n");
    assert!(seen.contains("GET /leading HTTP/1.1"), "{seen}");
    assert!(!seen.contains(FORGED), "the forged identity reached the app: {seen}");
    let own = &TestPki::get().client.0;
    assert!(seen.to_lowercase().contains(&format!("tarmac-client-id: {own}")), "{seen}");
}

#[tokio::test]
async fn a_client_silent_past_detection_is_closed_and_counted_not_forwarded() {
    let app = Recorder::start().await;
    let (client, _server) = strict_mesh(app.addr).await;
    let mut stream = TcpStream::connect(client.addrs.service("app").unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    // The proxy may already have closed: then this write or the read fails, as it should.
    let _ = stream.write_all(&request("GET / HTTP/1.1")).await;
    let reply = read_to_close(&mut stream).await;
    assert_eq!(reply, "", "a silent client got an answer");
    assert_eq!(app.seen(), Vec::<String>::new(), "something reached the app");
    let m = scrape(client.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_protocol_detect_total", &[("result", "timeout")]), 1.0, "{m}");
}

#[tokio::test]
async fn http_inside_a_peers_opaque_tcp_is_served_as_http_with_the_proven_identity() {
    let app = Recorder::start().await;
    let (_client, server) = strict_mesh(app.addr).await;
    // A peer proxy whose side declared the port opaque sends `tarmac.tcp`: the bytes are
    // its app's, forged header included.
    let pki = TestPki::get();
    let (anchors, cert, key) = (
        pki.anchors.display().to_string(),
        pki.client.1.display().to_string(),
        pki.client.2.display().to_string(),
    );
    let target = server.addrs.inbound.unwrap().to_string();
    let raw = request("GET /inside HTTP/1.1");
    let reply = tokio::task::spawn_blocking(move || {
        // `timeout` bounds the exchange; openssl ends when the proxy closes.
        let mut openssl = std::process::Command::new("timeout")
            .args(["10", "openssl", "s_client", "-quiet", "-connect", &target, "-alpn", "tarmac.tcp"])
            .args(["-CAfile", &anchors, "-cert", &cert, "-cert_chain", &cert, "-key", &key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl (run scripts/setup-test-deps.sh)");
        std::io::Write::write_all(&mut openssl.stdin.take().unwrap(), &raw).unwrap();
        let out = openssl.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap();
    assert!(reply.contains("HTTP/1.1 200"), "{reply:?}");
    let seen = app.seen().join("\n");
    assert!(seen.contains("GET /inside HTTP/1.1"), "{seen}");
    assert!(!seen.contains(FORGED), "the forged identity reached the app: {seen}");
    assert!(seen.to_lowercase().contains(&format!("tarmac-client-id: {}", pki.client.0)), "{seen}");
}

#[tokio::test]
async fn an_invalid_chunk_size_is_the_clients_error() {
    let app = Recorder::start().await;
    let (client, _server) = strict_mesh(app.addr).await;
    let raw =
        b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let reply = exchange(client.addrs.service("app").unwrap(), raw).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    let m = scrape(client.addrs.admin).await;
    assert_eq!(sum(&m, "tarmac_proxy_errors_total", &[("kind", "bad_request")]), 1.0, "{m}");
    assert_eq!(sum(&m, "tarmac_proxy_errors_total", &[("kind", "upstream")]), 0.0, "{m}");
}
