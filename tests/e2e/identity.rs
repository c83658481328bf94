//! Identity and mTLS with the real parts: the control plane's CA and Identity service over
//! gRPC, proxies that get their certificates by CSR, and OpenSSL (`openssl verify`,
//! `openssl s_client`) as the independent peer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tarmac_control::IdentityConfig;
use tarmac_control::identity::{BootstrapTokens, WorkloadIdentity};
use tarmac_identity::SpiffeId;
use tarmac_identity::ca::{self, Ca};
use tarmac_identity::workload::WorkloadKey;
use tarmac_testkit::echo::{EchoServer, field};
use tarmac_testkit::metrics::{scrape, sum, wait_for};
use tarmac_testkit::proxy::{ProxyProcess, start, wait_ready};
use tarmac_testkit::servers::free_port;
use tarmac_testkit::tools::{curl, http_get, run, temp_dir};

const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// The real control plane with a CA, serving discovery and identity on loopback; it can
/// be stopped and started again on the same port, with the same CA and tokens.
struct ControlPlane {
    dir: PathBuf,
    ca: Arc<Ca>,
    tokens: Arc<BootstrapTokens>,
    lifetime: Duration,
    addr: SocketAddr,
    running: Option<tarmac_control::Running>,
}

impl ControlPlane {
    async fn start(tag: &str, lifetime: Duration) -> Self {
        let dir = temp_dir(tag);
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let (ca, created) = Ca::load_or_generate(&dir.join("ca"), "cluster.local").unwrap();
        assert!(created);
        std::fs::write(dir.join("anchors.pem"), ca.anchors_pem()).unwrap();
        let mut control = Self {
            dir,
            ca: Arc::new(ca),
            tokens: Arc::new(BootstrapTokens::default()),
            lifetime,
            addr: "127.0.0.1:0".parse().unwrap(),
            running: None,
        };
        control.serve().await;
        control
    }

    /// (Re)starts serving, on the same port after the first time.
    async fn serve(&mut self) {
        let config = tarmac_control::Config::files(self.dir.join("config")).with_identity(IdentityConfig {
            ca: self.ca.clone(),
            trust_domain: "cluster.local".into(),
            cert_lifetime: self.lifetime,
            authenticator: self.tokens.clone(),
        });
        let running = tarmac_testkit::control::start_at(config, self.addr).await;
        self.addr = running.addrs.grpc;
        self.running = Some(running);
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Certificates issued and requests refused since the last start.
    fn stats(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.running
            .as_ref()
            .and_then(|r| r.identity_stats.as_ref())
            .expect("running, with identity")
            .snapshot()
    }

    fn anchors(&self) -> String {
        self.dir.join("anchors.pem").display().to_string()
    }

    /// A file holding a new bootstrap token for service account `sa`.
    fn token_file(&self, sa: &str) -> String {
        let token =
            self.tokens.issue(WorkloadIdentity { namespace: "default".into(), service_account: sa.into() });
        let path = self.dir.join(format!("token-{}", fastrand_suffix()));
        std::fs::write(&path, token).unwrap();
        path.display().to_string()
    }

    /// The `control` and `identity` sections of a proxy of service account `sa`.
    fn proxy_yaml(&self, sa: &str, token_file: &str) -> String {
        format!(
            "control: {{addr: \"{}\", service_account: {sa}}}\nidentity: {{trust_anchors: \"{}\", token_file: \"{token_file}\"}}\n",
            self.addr,
            self.anchors()
        )
    }

    /// A certificate and key (PEM files) for `sa`, issued by `ca` (this mesh's or another),
    /// the certificate file holding the chain too.
    fn issue_files(&self, ca: &Ca, sa: &str, lifetime: Duration) -> (String, String) {
        let id = SpiffeId::new("cluster.local", "default", sa).unwrap();
        let (chain, key) = ca.issue_with_new_key(&id, lifetime).unwrap();
        let suffix = fastrand_suffix();
        let cert_path = self.dir.join(format!("{sa}-{suffix}.pem"));
        let key_path = self.dir.join(format!("{sa}-{suffix}.key"));
        std::fs::write(&cert_path, chain).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path.display().to_string(), key_path.display().to_string())
    }
}

fn fastrand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An echo app behind an inbound proxy of identity `server`, and a client proxy of
/// identity `client` whose service `books` is that inbound, expected to prove `expect`.
async fn mesh(
    control: &ControlPlane,
    mtls: &str,
    expect: &str,
) -> (EchoServer, tarmac_proxy::Running, tarmac_proxy::Running) {
    let app = EchoServer::start("books").await;
    let server = start(&format!(
        "admin: 127.0.0.1:0\ninbound: {{listen: 127.0.0.1:0, app: \"{}\", mtls: {mtls}}}\n{}",
        app.addr,
        control.proxy_yaml("server", &control.token_file("server"))
    ))
    .await;
    let inbound = server.addrs.inbound.unwrap();
    let client = start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{inbound}\", meshed: true, identity: \"{expect}\"}}]\n{}",
        control.proxy_yaml("client", &control.token_file("client"))
    ))
    .await;
    (app, client, server)
}

async fn serial(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/identity").await;
    assert_eq!(status, 200, "{body}");
    body.split("\"serial\":\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_string()
}

#[tokio::test]
async fn proxies_speak_mtls_with_spiffe_identities_and_hybrid_key_exchange() {
    let control = ControlPlane::start("id-mtls", Duration::from_secs(3600)).await;
    let (_app, client, server) = mesh(&control, "permissive", SERVER_ID).await;
    let listen = client.addrs.service("books").unwrap();

    // An app cannot claim an identity: its header is replaced by the verified one.
    let (body, _) = curl(&[
        "-H",
        "tarmac-client-id: spiffe://cluster.local/ns/default/sa/admin",
        &format!("http://{listen}/a"),
    ])
    .await;
    assert_eq!(field(&body, "header tarmac-client-id"), Some(CLIENT_ID), "{body}");
    assert_eq!(body.matches("tarmac-client-id").count(), 1, "{body}");

    let text = scrape(server.addrs.admin).await;
    let inbound = [("direction", "inbound"), ("tls", "true"), ("client_id", CLIENT_ID)];
    assert_eq!(sum(&text, "tarmac_requests_total", &inbound), 1.0, "{text}");
    // Both sides negotiated the hybrid post-quantum group.
    let hybrid = [("result", "ok"), ("group", "X25519MLKEM768")];
    assert_eq!(sum(&text, "tarmac_tls_handshakes_total", &hybrid), 1.0, "{text}");
    let text = scrape(client.addrs.admin).await;
    assert_eq!(sum(&text, "tarmac_tls_handshakes_total", &hybrid), 1.0, "{text}");
    // The client side counts the response under the identity the server proved.
    let outbound = [("direction", "outbound"), ("tls", "true"), ("server_id", SERVER_ID)];
    assert_eq!(sum(&text, "tarmac_responses_total", &outbound), 1.0, "{text}");
    let (_, identity) = http_get(server.addrs.admin, "/identity").await;
    assert!(identity.contains(SERVER_ID), "{identity}");

    // Permissive: a client outside the mesh gets through in plaintext, labelled so, and
    // without an identity however it asks.
    let inbound = server.addrs.inbound.unwrap();
    let (body, _) =
        curl(&["-H", &format!("tarmac-client-id: {CLIENT_ID}"), &format!("http://{inbound}/b")]).await;
    assert_eq!(field(&body, "header tarmac-client-id"), None, "{body}");
    let text = scrape(server.addrs.admin).await;
    assert_eq!(
        sum(&text, "tarmac_requests_total", &[("direction", "inbound"), ("tls", "false")]),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn openssl_verifies_the_certificate_a_proxy_is_issued() {
    let control = ControlPlane::start("id-openssl", Duration::from_secs(24 * 3600)).await;
    // The whole path: a CSR over gRPC with a bootstrap token, as a proxy sends it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", control.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tarmac_proto::identity::identity_client::IdentityClient::new(channel);
    let key = WorkloadKey::generate().unwrap();
    let asked = SpiffeId::new("cluster.local", "default", "books").unwrap();
    let token =
        control.tokens.issue(WorkloadIdentity { namespace: "shop".into(), service_account: "books".into() });
    let rsp = client
        .certify(tarmac_proto::identity::CertifyRequest {
            csr: key.csr_der(&asked).unwrap(),
            proof: Some(tarmac_proto::identity::certify_request::Proof::Token(token.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    // The token's identity, not the CSR's.
    assert_eq!(rsp.identity, "spiffe://cluster.local/ns/shop/sa/books");
    let dir = &control.dir;
    std::fs::write(dir.join("leaf.pem"), ca::certs_pem([rsp.leaf.as_slice()])).unwrap();
    std::fs::write(dir.join("chain.pem"), ca::certs_pem(rsp.intermediates.iter().map(Vec::as_slice)))
        .unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    let out = run(
        "openssl",
        &["verify", "-CAfile", &control.anchors(), "-untrusted", &path("chain.pem"), &path("leaf.pem")],
    )
    .await;
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && verdict.contains(": OK"),
        "{verdict}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("openssl", &["x509", "-in", &path("leaf.pem"), "-noout", "-text"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "URI:spiffe://cluster.local/ns/shop/sa/books",
        "CA:FALSE",
        "Digital Signature",
        "TLS Web Server Authentication, TLS Web Client Authentication",
    ] {
        assert!(text.contains(expected), "no `{expected}` in\n{text}");
    }
    let info = tarmac_identity::x509::CertInfo::parse(&rsp.leaf).unwrap();
    let life = info.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        life > Duration::from_secs(24 * 3600 - 120) && life <= Duration::from_secs(24 * 3600),
        "{life:?}"
    );

    // A token is good once.
    let again = client
        .certify(tarmac_proto::identity::CertifyRequest {
            csr: key.csr_der(&asked).unwrap(),
            proof: Some(tarmac_proto::identity::certify_request::Proof::Token(token)),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::PermissionDenied);
    assert!(again.message().contains("already used"), "{}", again.message());
}

/// Runs `openssl s_client` against `addr` as a mesh client with `cert`/`key`; returns
/// its output.
async fn s_client(addr: SocketAddr, anchors: &str, cert: &str, key: &str, extra: &[&str]) -> String {
    let target = addr.to_string();
    // `-cert` sends the first certificate only; `-cert_chain` adds the intermediates.
    let mut args = vec![
        "s_client",
        "-connect",
        &target,
        "-tls1_3",
        "-alpn",
        "tarmac.h2",
        "-CAfile",
        anchors,
        "-cert",
        cert,
        "-cert_chain",
        cert,
        "-key",
        key,
    ];
    args.extend_from_slice(extra);
    let out =
        tokio::time::timeout(Duration::from_secs(20), run("openssl", &args)).await.expect("s_client ends");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn a_classical_tls_client_still_connects() {
    let control = ControlPlane::start("id-classic", Duration::from_secs(3600)).await;
    let (_app, _client, server) = mesh(&control, "permissive", SERVER_ID).await;
    let (cert, key) = control.issue_files(&control.ca, "legacy", Duration::from_secs(3600));
    let out =
        s_client(server.addrs.inbound.unwrap(), &control.anchors(), &cert, &key, &["-groups", "X25519"])
            .await;
    assert!(out.contains("TLSv1.3"), "{out}");
    wait_for(
        server.addrs.admin,
        "tarmac_tls_handshakes_total",
        &[("direction", "inbound"), ("result", "ok"), ("group", "X25519")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn refusals_are_counted_and_say_what_to_check() {
    let control = ControlPlane::start("id-refusals", Duration::from_secs(3600)).await;
    let app = EchoServer::start("books").await;
    // The server as a process, to read what it logs.
    let (admin, inbound) = (free_port(), free_port());
    let log = control.dir.join("server.log");
    let proxy = ProxyProcess::spawn_logged(
        &format!(
            "admin: 127.0.0.1:{admin}\ninbound: {{listen: \"127.0.0.1:{inbound}\", app: \"{}\", mtls: strict}}\n{}",
            app.addr,
            control.proxy_yaml("server", &control.token_file("server"))
        ),
        &log,
    );
    let admin: SocketAddr = ([127, 0, 0, 1], admin).into();
    let inbound: SocketAddr = ([127, 0, 0, 1], inbound).into();
    wait_ready(admin, Duration::from_secs(20)).await;
    let logged = |needle: &'static str| {
        let log = log.clone();
        async move {
            for _ in 0..100 {
                if std::fs::read_to_string(&log).unwrap_or_default().contains(needle) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "the proxy never logged `{needle}`:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    };
    let refused = |result: &'static str| [("direction", "inbound"), ("result", result)];

    // A certificate from another CA.
    let (foreign_root, foreign_key) = ca::generate_root("cluster.local").unwrap();
    let foreign = Ca::from_root(&foreign_root, &foreign_key.serialize_pem(), "cluster.local").unwrap();
    let (cert, key) = control.issue_files(&foreign, "intruder", Duration::from_secs(3600));
    s_client(inbound, &control.anchors(), &cert, &key, &[]).await;
    wait_for(admin, "tarmac_tls_handshakes_total", &refused("untrusted"), 1.0).await;
    logged("does not chain to this mesh's trust anchors").await;

    // An expired certificate from the right CA.
    let (cert, key) = control.issue_files(&control.ca, "late", Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s_client(inbound, &control.anchors(), &cert, &key, &[]).await;
    wait_for(admin, "tarmac_tls_handshakes_total", &refused("expired"), 1.0).await;
    logged("a certificate has expired").await;

    // Plaintext to a strict workload.
    let out = run("curl", &["-sS", "--max-time", "10", &format!("http://{inbound}/")]).await;
    assert!(!out.status.success(), "strict inbound answered plaintext");
    wait_for(admin, "tarmac_connections_refused_total", &[("reason", "not_mtls")], 1.0).await;
    logged("accepts only mTLS").await;
    assert_eq!(app.requests(), 0, "a refused client reached the app");
    drop(proxy);

    // A valid certificate, but not the identity discovery says the endpoint has.
    let (_app, client, _server) =
        mesh(&control, "permissive", "spiffe://cluster.local/ns/default/sa/other").await;
    let listen = client.addrs.service("books").unwrap();
    let out =
        run("curl", &["-sS", "--max-time", "10", "-w", "%{http_code}", &format!("http://{listen}/")]).await;
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.ends_with("502"), "{body}");
    assert!(body.contains("endpoint proved another identity"), "{body}");
    let text = scrape(client.addrs.admin).await;
    assert_eq!(
        sum(&text, "tarmac_tls_handshakes_total", &[("direction", "outbound"), ("result", "wrong_identity")]),
        1.0,
        "{text}"
    );

    // Bootstrap tokens: a reused one and a forged one are refused, and the proxy says why.
    let used = control.token_file("server");
    start(&format!(
        "admin: 127.0.0.1:0\ninbound: {{listen: 127.0.0.1:0, app: \"{}\"}}\n{}",
        app.addr,
        control.proxy_yaml("server", &used)
    ))
    .await;
    for (token_file, reason) in [
        (used, "already used"),
        (control.dir.join("forged").display().to_string(), "unknown bootstrap token"),
    ] {
        std::fs::write(control.dir.join("forged"), "0123456789abcdef").unwrap();
        let yaml = format!(
            "admin: 127.0.0.1:0\ninbound: {{listen: 127.0.0.1:0, app: \"{}\"}}\n{}",
            app.addr,
            control.proxy_yaml("server", &token_file)
        );
        let config = tarmac_proxy::Config::from_yaml(&yaml, "test").unwrap();
        let err =
            tarmac_proxy::start(config).await.expect_err("a bad token must not start a proxy").to_string();
        assert!(err.contains(reason), "{err}");
    }
    let stats = control.stats();
    assert_eq!(stats.get("token_reused"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("unknown_token"), Some(&1), "{stats:?}");
}

#[tokio::test]
async fn certificates_outlive_a_control_plane_outage_and_renew_when_it_returns() {
    let mut control = ControlPlane::start("id-outage", Duration::from_secs(10)).await;
    let (_app, client, server) = mesh(&control, "permissive", SERVER_ID).await;
    let listen = client.addrs.service("books").unwrap();
    let first = (serial(client.addrs.admin).await, serial(server.addrs.admin).await);
    control.stop().await;
    // Renewal is due at 65-75 % of the 10 s life; it fails while the CA is away.
    let failed = [("result", "failed")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    loop {
        let (status, _) = http_get(listen, "/during-outage").await;
        assert_eq!(status, 200, "traffic must continue while the control plane is away");
        let client_failed =
            sum(&scrape(client.addrs.admin).await, "tarmac_identity_certificate_requests_total", &failed);
        let server_failed =
            sum(&scrape(server.addrs.admin).await, "tarmac_identity_certificate_requests_total", &failed);
        if client_failed >= 1.0 && server_failed >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "renewal was never attempted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The proxy says so where `tarmac check` reads it.
    let (_, identity) = http_get(server.addrs.admin, "/identity").await;
    assert!(!identity.contains("\"renewal_failing_since\":null"), "{identity}");
    control.serve().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = (serial(client.addrs.admin).await, serial(server.addrs.admin).await);
        if now.0 != first.0 && now.1 != first.1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificates were not renewed after the control plane returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = http_get(listen, "/after").await;
    assert_eq!(status, 200);
    let (_, identity) = http_get(server.addrs.admin, "/identity").await;
    assert!(identity.contains("\"renewal_failing_since\":null"), "{identity}");
}

/// 300 requests per second for 5 minutes across two proxies whose certificates live 60 s:
/// every request succeeds while both rotate several times.
#[tokio::test]
async fn rotation_under_load_fails_no_request() {
    const RATE: u64 = 300;
    const DURATION: Duration = Duration::from_secs(300);
    const WORKERS: u64 = 10;
    let control = ControlPlane::start("id-rotation", Duration::from_secs(60)).await;
    let (_app, client, server) = mesh(&control, "strict", SERVER_ID).await;
    let listen = client.addrs.service("books").unwrap();
    let serials = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let watcher = {
        let serials = serials.clone();
        let admins = [client.addrs.admin, server.addrs.admin];
        tokio::spawn(async move {
            loop {
                for admin in admins {
                    let s = serial(admin).await;
                    serials.lock().unwrap().insert((admin, s));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * WORKERS / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = tokio::time::Instant::now() + DURATION;
            let mut sender = None;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                match get(&mut sender, listen, w).await {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    watcher.abort();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(10)]
    );
    assert!(ok >= RATE * DURATION.as_secs() * 8 / 10, "only {ok} requests were sent");
    let serials = serials.lock().unwrap();
    for admin in [client.addrs.admin, server.addrs.admin] {
        let n = serials.iter().filter(|(a, _)| *a == admin).count();
        assert!(
            n >= 4,
            "the proxy at {admin} served only {n} certificates in 5 minutes of 60 s certificates"
        );
    }
}

/// One GET on a kept-alive HTTP/1.1 connection (reconnecting when it closed).
async fn get(
    sender: &mut Option<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>>,
    addr: SocketAddr,
    worker: u64,
) -> Result<u16, String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().unwrap();
    s.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::get(format!("/rotation/{worker}"))
        .header("host", "books")
        .body(http_body_util::Empty::new())
        .unwrap();
    let rsp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    use http_body_util::BodyExt;
    rsp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(status)
}
