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
    /// The same CA, as the control plane holds it.
    shared: Arc<tarmac_identity::ca::SharedCa>,
    tokens: Arc<BootstrapTokens>,
    lifetime: Duration,
    addr: SocketAddr,
    running: Option<tarmac_control::Running>,
    /// Certify only the configured Workloads' identities, as `tarmac up` does.
    only_configured: bool,
}

impl ControlPlane {
    async fn start(tag: &str, lifetime: Duration) -> Self {
        Self::start_with_tokens(tag, lifetime, BootstrapTokens::default()).await
    }

    async fn start_with_tokens(tag: &str, lifetime: Duration, tokens: BootstrapTokens) -> Self {
        let dir = temp_dir(tag);
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let (ca, created) = Ca::load_or_generate(&dir.join("ca"), "cluster.local").unwrap();
        assert!(created);
        std::fs::write(dir.join("anchors.pem"), ca.anchors_pem()).unwrap();
        let shared = Arc::new(tarmac_identity::ca::SharedCa::new(ca));
        let mut control = Self {
            dir,
            ca: shared.current(),
            shared,
            tokens: Arc::new(tokens),
            lifetime,
            addr: "127.0.0.1:0".parse().unwrap(),
            running: None,
            only_configured: false,
        };
        control.serve().await;
        control
    }

    /// (Re)starts serving, on the same port after the first time.
    async fn serve(&mut self) {
        let config = tarmac_control::Config::files(self.dir.join("config")).with_identity(IdentityConfig {
            ca: self.shared.clone(),
            trust_domain: "cluster.local".into(),
            cert_lifetime: self.lifetime,
            authenticator: self.tokens.clone(),
            only_configured_workloads: self.only_configured,
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

    /// The configuration in force, as the running control plane reads it.
    fn snapshots(&self) -> tokio::sync::watch::Receiver<Arc<tarmac_control::store::Snapshot>> {
        self.running.as_ref().expect("running").snapshots()
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

    /// A new bootstrap token for a replica of service account `sa`.
    fn token(&self, sa: &str) -> String {
        let holder = format!("default/{sa}-{}", fastrand_suffix());
        self.tokens
            .issue(&holder, WorkloadIdentity { namespace: "default".into(), service_account: sa.into() })
    }

    /// A file holding a new bootstrap token for service account `sa`.
    fn token_file(&self, sa: &str) -> String {
        self.write_token(&self.token(sa))
    }

    /// A file (mode 0600, as the proxy requires) holding `token`.
    fn write_token(&self, token: &str) -> String {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(format!("token-{}", fastrand_suffix()));
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
        std::io::Write::write_all(&mut file, token.as_bytes()).unwrap();
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
    let mut client = identity_client(&control).await;
    let key = WorkloadKey::generate().unwrap();
    let asked = SpiffeId::new("cluster.local", "default", "books").unwrap();
    let token = control.tokens.issue(
        "shop/books-0",
        WorkloadIdentity { namespace: "shop".into(), service_account: "books".into() },
    );
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

    // Bootstrap tokens: a reused one, a forged one and one in a file other users can read
    // are refused, and the proxy says why; a token file is removed once read.
    let used = control.token("server");
    let used_file = control.write_token(&used);
    start(&format!(
        "admin: 127.0.0.1:0\ninbound: {{listen: 127.0.0.1:0, app: \"{}\"}}\n{}",
        app.addr,
        control.proxy_yaml("server", &used_file)
    ))
    .await;
    assert!(!std::path::Path::new(&used_file).exists(), "the proxy left its token file behind");
    let readable = control.token_file("server");
    std::fs::set_permissions(&readable, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    for (token_file, reason) in [
        (control.write_token(&used), "already used"),
        (control.write_token("0123456789abcdef"), "unknown bootstrap token"),
        (readable, "can be read by other users (mode 644): make it 0600"),
    ] {
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

/// The identity service over gRPC, as a bootstrapping proxy (or an attacker on the host)
/// reaches it: over TLS, verifying the control plane, without a certificate.
async fn identity_client(
    control: &ControlPlane,
) -> tarmac_proto::identity::identity_client::IdentityClient<tonic::transport::Channel> {
    let anonymous = control_client(control.addr, control.ca.anchors_pem(), &control.ca, "default", "");
    tarmac_proto::identity::identity_client::IdentityClient::new(anonymous.channel())
}

async fn certify(
    client: &mut tarmac_proto::identity::identity_client::IdentityClient<tonic::transport::Channel>,
    csr: Vec<u8>,
    proof: tarmac_proto::identity::certify_request::Proof,
) -> Result<tarmac_proto::identity::CertifyResponse, tonic::Status> {
    client
        .certify(tarmac_proto::identity::CertifyRequest { csr, proof: Some(proof) })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_token_survives_garbage_csrs_but_not_its_expiry() {
    use tarmac_proto::identity::certify_request::Proof;
    let control = ControlPlane::start_with_tokens(
        "id-token-attacks",
        Duration::from_secs(3600),
        BootstrapTokens::with_lifetime(Duration::from_secs(2)),
    )
    .await;
    let mut client = identity_client(&control).await;
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&SpiffeId::new("cluster.local", "default", "server").unwrap()).unwrap();
    let token = control.token("server");

    // Someone who saw the token races the proxy with requests the CA cannot sign: garbage,
    // and a CSR whose signature does not hold. Neither spends the token.
    let mut tampered = csr.clone();
    *tampered.last_mut().unwrap() ^= 1;
    for bad in [b"not a CSR".to_vec(), tampered] {
        let refused = certify(&mut client, bad, Proof::Token(token.clone())).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    let issued = certify(&mut client, csr.clone(), Proof::Token(token.clone())).await.unwrap();
    assert_eq!(issued.identity, SERVER_ID);

    // A token nobody used in time is refused, even with a good CSR.
    let late = control.token("server");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let refused = certify(&mut client, csr, Proof::Token(late)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("expired"), "{}", refused.message());
    let stats = control.stats();
    assert_eq!(stats.get("bad_csr"), Some(&2), "{stats:?}");
    assert_eq!(stats.get("token_expired"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("issued"), Some(&1), "{stats:?}");
}

#[tokio::test]
async fn a_workload_removed_from_the_configuration_cannot_renew() {
    use tarmac_proto::identity::certify_request::Proof;
    let mut control = ControlPlane::start("id-removed", Duration::from_secs(3600)).await;
    let workload = control.dir.join("config").join("server.yaml");
    std::fs::write(
        &workload,
        "apiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: server, labels: {app: server}}\nspec: {command: [\"true\"], port: 8080, serviceAccountName: server}\n",
    )
    .unwrap();
    let configured = |snapshots: &tokio::sync::watch::Receiver<Arc<tarmac_control::store::Snapshot>>| {
        snapshots.borrow().iter_kind("Workload").count()
    };
    let snapshots = control.snapshots();
    wait_until("the Workload is in the configuration", || configured(&snapshots) == 1).await;
    // The control plane as `tarmac up` runs it: only configured Workloads are served.
    control.stop().await;
    control.only_configured = true;
    control.serve().await;
    let snapshots = control.snapshots();

    let mut client = identity_client(&control).await;
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&SpiffeId::new("cluster.local", "default", "server").unwrap()).unwrap();
    let issued = certify(&mut client, csr.clone(), Proof::Token(control.token("server"))).await.unwrap();
    let renewed =
        certify(&mut client, csr.clone(), Proof::CurrentCertificate(issued.leaf.clone())).await.unwrap();
    assert_eq!(renewed.identity, SERVER_ID);

    std::fs::remove_file(&workload).unwrap();
    wait_until("the Workload is gone from the configuration", || configured(&snapshots) == 0).await;
    // Its certificate (say, copied out of a replica that was removed) proves nothing now,
    // and neither does a token issued before the removal.
    let token = control.token("server");
    for proof in [Proof::CurrentCertificate(renewed.leaf), Proof::Token(token)] {
        let refused = certify(&mut client, csr.clone(), proof).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("not the identity of any Workload"), "{}", refused.message());
    }
    let stats = control.stats();
    assert_eq!(stats.get("not_configured"), Some(&2), "{stats:?}");
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A certificate that expires while the control plane is away: the proxy reports itself
/// unready (peers would refuse it), then exits for its supervisor to start it again,
/// instead of running on as a silent outage.
#[tokio::test]
async fn an_expired_certificate_fails_readiness_and_stops_the_proxy() {
    let mut control = ControlPlane::start("id-expiry", Duration::from_secs(4)).await;
    let app = EchoServer::start("books").await;
    let (admin, inbound) = (free_port(), free_port());
    let log = control.dir.join("proxy.log");
    let mut proxy = ProxyProcess::spawn_logged(
        &format!(
            "admin: 127.0.0.1:{admin}\ninbound: {{listen: \"127.0.0.1:{inbound}\", app: \"{}\"}}\n{}",
            app.addr,
            control.proxy_yaml("server", &control.token_file("server"))
        ),
        &log,
    );
    let admin: SocketAddr = ([127, 0, 0, 1], admin).into();
    wait_ready(admin, Duration::from_secs(20)).await;
    control.stop().await;

    let url = format!("http://{admin}/ready");
    let mut unready = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        let out = run("curl", &["-s", "--max-time", "2", "-w", " %{http_code}", &url]).await;
        let answer = String::from_utf8_lossy(&out.stdout).to_string();
        if answer.ends_with(" 503") && unready.is_none() {
            unready = Some(answer);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy runs on with an expired certificate\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let unready = unready.unwrap_or_else(|| panic!("/ready never answered 503 before the exit\n{log}"));
    assert!(unready.contains("not ready: the workload certificate"), "{unready}");
    assert_eq!(status.code(), Some(3), "{status:?}\n{log}");
    assert!(log.contains("EXPIRED and could not be renewed"), "{log}");
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

/// A proxy's TLS state trusting `anchors_pem`, with no certificate yet.
fn mesh_tls(
    anchors_pem: &str,
) -> (tarmac_proxy::identity::MeshTls, Arc<tarmac_proxy::identity::store::CertStore>) {
    let certs = Arc::new(tarmac_proxy::identity::store::CertStore::default());
    let tls = tarmac_proxy::identity::MeshTls::new(anchors_pem, "anchors", certs.clone(), Default::default())
        .unwrap();
    (tls, certs)
}

/// Puts a certificate for `namespace/sa` from `ca` in `certs`.
fn install(certs: &tarmac_proxy::identity::store::CertStore, ca: &Ca, namespace: &str, sa: &str) {
    let key = WorkloadKey::generate().unwrap();
    let id = SpiffeId::new("cluster.local", namespace, sa).unwrap();
    let issued = ca.issue(&key.csr_der(&id).unwrap(), &id, Duration::from_secs(3600)).unwrap();
    let chain = std::iter::once(issued.leaf_der).chain(issued.chain_der).collect();
    certs.install(chain, key.private_key_der()).unwrap();
}

/// A `ControlClient` as a proxy of `namespace/sa` makes it, with a certificate from `ca`
/// (none when `sa` is empty), trusting `anchors_pem`.
fn control_client(
    addr: SocketAddr,
    anchors_pem: &str,
    ca: &Ca,
    namespace: &str,
    sa: &str,
) -> tarmac_proxy::discovery::ControlClient {
    let (tls, certs) = mesh_tls(anchors_pem);
    if !sa.is_empty() {
        install(&certs, ca, namespace, sa);
    }
    control_client_with(addr, &tls, namespace, sa)
}

fn control_client_with(
    addr: SocketAddr,
    tls: &tarmac_proxy::identity::MeshTls,
    namespace: &str,
    sa: &str,
) -> tarmac_proxy::discovery::ControlClient {
    let config = tarmac_proxy::config::ControlConfig {
        addr: addr.into(),
        namespace: namespace.into(),
        workload: "w".into(),
        service_account: sa.into(),
    };
    tarmac_proxy::discovery::ControlClient::new(&config, Some(tls))
}

/// Opens `WatchService` for `books` claiming to be a proxy of `namespace/sa`; the first
/// update, or the status the control plane answered with.
async fn watch_as(
    channel: tonic::transport::Channel,
    namespace: &str,
    sa: &str,
) -> Result<tarmac_proto::discovery::ServiceUpdate, tonic::Status> {
    use tarmac_proto::discovery::discovery_client::DiscoveryClient;
    use tarmac_proto::discovery::{ProxyIdentity, WatchServiceRequest};
    let request = WatchServiceRequest {
        service: "books".into(),
        namespace: "default".into(),
        port: 80,
        proxy: Some(ProxyIdentity {
            namespace: namespace.into(),
            workload: "w".into(),
            service_account: sa.into(),
        }),
    };
    let call = async {
        let mut stream = DiscoveryClient::new(channel).watch_service(request).await?.into_inner();
        stream.message().await?.ok_or_else(|| tonic::Status::unknown("the stream ended"))
    };
    tokio::time::timeout(Duration::from_secs(10), call).await.expect("an answer within 10 s")
}

/// Issue 17, finding 4: the control channel is TLS, the proxy verifies the control
/// plane's identity, and a proxy is served as what its certificate proves, not as what it
/// claims.
#[tokio::test]
async fn the_control_channel_is_tls_and_a_proxy_is_what_its_certificate_proves() {
    let control = ControlPlane::start("id-channel", Duration::from_secs(3600)).await;
    let anchors = control.ca.anchors_pem().to_string();

    // A proxy's own path: a channel without a certificate (bootstrap), then, once it has
    // one, a new channel from the same TLS state follows discovery as default/client.
    let (tls, certs) = mesh_tls(&anchors);
    let bootstrap = control_client_with(control.addr, &tls, "default", "client");
    let refused = watch_as(bootstrap.channel(), "default", "client").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    install(&certs, &control.ca, "default", "client");
    let own = control_client_with(control.addr, &tls, "default", "client");
    let followed = watch_as(own.channel(), "default", "client").await;
    assert!(followed.is_ok(), "a resumed session must not hide the new certificate: {followed:?}");

    // Claiming another namespace than the certificate proves is refused, for routes and
    // for inbound policy alike.
    let refused = watch_as(own.channel(), "shop", "client").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let inbound = {
        use tarmac_proto::discovery::discovery_client::DiscoveryClient;
        use tarmac_proto::discovery::{ProxyIdentity, WatchInboundRequest};
        let proxy = ProxyIdentity {
            namespace: "shop".into(),
            workload: "w".into(),
            service_account: "client".into(),
        };
        let mut client = DiscoveryClient::new(own.channel());
        let call = client.watch_inbound(WatchInboundRequest { proxy: Some(proxy) });
        tokio::time::timeout(Duration::from_secs(10), call).await.expect("an answer").unwrap_err()
    };
    assert_eq!(inbound.code(), tonic::Code::PermissionDenied, "{inbound:?}");
    // No certificate (a bootstrapping proxy has none): no discovery.
    let anonymous = control_client(control.addr, &anchors, &control.ca, "default", "");
    let refused = watch_as(anonymous.channel(), "default", "client").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // Plaintext gets nothing: the API is not served without TLS.
    let plain =
        tonic::transport::Endpoint::from_shared(format!("http://{}", control.addr)).unwrap().connect_lazy();
    assert!(watch_as(plain, "default", "client").await.is_err());

    // A control plane with another CA is not this mesh's: the proxy will not talk to it.
    let other = ControlPlane::start("id-channel-other", Duration::from_secs(3600)).await;
    let fooled = control_client(other.addr, &anchors, &control.ca, "default", "client");
    let failed = watch_as(fooled.channel(), "default", "client").await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
}
