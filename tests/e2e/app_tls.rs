//! An app's own TLS crosses two sidecars untouched: OpenSSL's `s_server` is the app, with
//! a certificate for `books.example` from a CA the test makes; curl and `openssl s_client`
//! call it through a client sidecar and a server sidecar (mTLS between them). The client
//! verifies the app's certificate, so the sidecars neither terminated nor re-encrypted it;
//! they detected TLS and carried it as opaque bytes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tarmac_testkit::echo::EchoServer;
use tarmac_testkit::metrics::{scrape, sum};
use tarmac_testkit::proxy::{TestPki, mesh_pair, start};
use tarmac_testkit::servers::free_port;
use tarmac_testkit::tools::{curl, run, temp_dir};

/// `openssl s_server`, killed on drop.
pub(crate) struct SServer(std::process::Child);

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `openssl ARGS` (split at whitespace: the paths are temporary directories without
/// spaces) and panics with its output if it fails.
pub(crate) fn openssl(args: &str) {
    let out = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .output()
        .expect("openssl (run scripts/setup-test-deps.sh)");
    assert!(
        out.status.success(),
        "openssl {args} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Options of `openssl req` for a new P-256 key, unencrypted.
pub(crate) const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// A CA of the app's own (`ca.pem`) and a certificate for `books.example` signed by it
/// (`app.pem`, `app.key`), as an app brings from its own PKI. Also used by the
/// transparent-mode test in `netns.rs`.
pub(crate) fn app_pki(dir: &Path) {
    let d = dir.display();
    openssl(&format!(
        "req -x509 {NEW_KEY} -keyout {d}/ca.key -out {d}/ca.pem -days 2 -subj /O=BooksInc/CN=BooksAppCA \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
    ));
    openssl(&format!(
        "req -new {NEW_KEY} -keyout {d}/app.key -out {d}/app.csr -subj /O=BooksInc/CN=books.example"
    ));
    std::fs::write(
        dir.join("app.ext"),
        "subjectAltName=DNS:books.example\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&format!(
        "x509 -req -in {d}/app.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 2 \
         -extfile {d}/app.ext -out {d}/app.pem"
    ));
    // Read by the apps and clients of the namespace test, which run as other users.
    for f in ["ca.pem", "app.pem", "app.key"] {
        std::fs::set_permissions(dir.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
}

/// `openssl s_server -www` (answers `GET /` with a page describing the TLS session) on a
/// free loopback port, once it accepts connections.
pub(crate) async fn s_server(dir: &Path) -> (SServer, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = std::process::Command::new("openssl")
        .args(["s_server", "-accept", &addr.to_string(), "-www", "-quiet"])
        .arg("-cert")
        .arg(dir.join("app.pem"))
        .arg("-key")
        .arg(dir.join("app.key"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("openssl (run scripts/setup-test-deps.sh)");
    let server = SServer(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (server, addr);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("openssl s_server did not listen on {addr}");
}

#[tokio::test]
async fn an_apps_own_tls_crosses_two_sidecars_untouched() {
    let dir = temp_dir("app-tls");
    app_pki(&dir);
    let (_app, app) = s_server(&dir).await;
    let (client, server) = mesh_pair("books", app).await;
    let listen = client.addrs.service("books").unwrap();
    let ca = dir.join("ca.pem").display().to_string();

    // curl verifies the certificate it gets against the app's CA and the name it asked
    // for: only the app holds that key.
    let resolve = format!("books.example:{}:127.0.0.1", listen.port());
    let url = format!("https://books.example:{}/", listen.port());
    let (page, _) =
        curl(&["--cacert", &ca, "--resolve", &resolve, "-w", "\nverify=%{ssl_verify_result}", &url]).await;
    assert!(page.contains("s_server -accept"), "not the app's page:\n{page}");
    assert!(page.ends_with("\nverify=0"), "{page}");

    // The same with OpenSSL's client: the peer certificate is the app's, verified.
    let target = listen.to_string();
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &target,
            "-servername",
            "books.example",
            "-verify_hostname",
            "books.example",
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-brief",
        ],
    )
    .await;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("Verification: OK"), "{said}");
    assert!(said.contains("CN=books.example") || said.contains("CN = books.example"), "{said}");

    // Both sidecars carried it as bytes: the client's detected TLS, neither parsed HTTP,
    // and both counted the bytes (when each connection closed).
    let m = eventually(client.addrs.admin, |m| {
        sum(m, "tarmac_tcp_read_bytes_total", &[("target", "books")]) > 0.0
            && sum(m, "tarmac_tcp_write_bytes_total", &[("target", "books")]) > 0.0
    })
    .await;
    let tls = sum(&m, "tarmac_protocol_detect_total", &[("direction", "outbound"), ("result", "tls")]);
    assert!(tls >= 2.0, "{m}");
    assert_eq!(sum(&m, "tarmac_requests_total", &[]), 0.0, "{m}");
    let m = eventually(server.addrs.admin, |m| {
        sum(m, "tarmac_tcp_write_bytes_total", &[("direction", "inbound")]) > 0.0
    })
    .await;
    assert_eq!(sum(&m, "tarmac_requests_total", &[]), 0.0, "{m}");
}

#[tokio::test]
async fn an_apps_tls_goes_to_the_service_its_server_name_names() {
    let dir = temp_dir("app-tls-sni");
    app_pki(&dir);
    let (_app, app) = s_server(&dir).await;
    let pki = TestPki::get();
    let server = start(&format!(
        "admin: 127.0.0.1:0\ninbound:\n  listen: 127.0.0.1:0\n  app: {app}\n{}",
        pki.identity_yaml(&pki.server)
    ))
    .await;
    // The app sends its TLS to one listener, `egress`, whatever it calls; the proxy also
    // knows the service `books.example`. Where `egress` itself goes counts connections.
    let elsewhere = EchoServer::start("elsewhere").await;
    let client = start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: egress\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\"}}]\n  - name: books.example\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\", meshed: true, identity: \"{}\"}}]\n{}",
        elsewhere.addr,
        server.addrs.inbound.unwrap(),
        pki.server.0,
        pki.identity_yaml(&pki.client)
    ))
    .await;
    let egress = client.addrs.service("egress").unwrap();
    let ca = dir.join("ca.pem").display().to_string();

    // Called as books.example: to the app behind the server's sidecar, whose certificate
    // curl verifies, so the TLS is still the app's own end to end.
    let resolve = format!("books.example:{}:127.0.0.1", egress.port());
    let url = format!("https://books.example:{}/", egress.port());
    let (page, _) =
        curl(&["--cacert", &ca, "--resolve", &resolve, "-w", "\nverify=%{ssl_verify_result}", &url]).await;
    assert!(page.contains("s_server -accept"), "not the app's page:\n{page}");
    assert!(page.ends_with("\nverify=0"), "{page}");
    let target = egress.to_string();
    let s_client = |name: &'static str| {
        let target = target.clone();
        let ca = ca.clone();
        async move {
            let args = ["s_client", "-connect", &target, "-servername", name, "-verify_hostname", name];
            let out =
                run("openssl", &[&args[..], &["-CAfile", &ca, "-verify_return_error", "-brief"]].concat())
                    .await;
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        }
    };
    let said = s_client("books.example").await;
    assert!(said.contains("Verification: OK"), "{said}");
    assert_eq!(elsewhere.connections(), 0, "nothing went where the listener goes");
    // Counted as the service it named, and carried over mTLS to the server's sidecar.
    let m = eventually(client.addrs.admin, |m| {
        sum(m, "tarmac_tcp_write_bytes_total", &[("target", "books.example")]) > 0.0
    })
    .await;
    assert_eq!(sum(&m, "tarmac_tcp_open_total", &[("target", "books.example")]), 2.0, "{m}");
    assert_eq!(sum(&m, "tarmac_tcp_open_total", &[("target", "egress")]), 0.0, "{m}");
    assert!(
        sum(&m, "tarmac_tls_handshakes_total", &[("direction", "outbound"), ("result", "ok")]) >= 1.0,
        "{m}"
    );
    assert_eq!(sum(&m, "tarmac_requests_total", &[]), 0.0, "never parsed as HTTP: {m}");

    // A name that is no service of the proxy's goes where the listener goes, as before.
    let said = s_client("other.example").await;
    assert!(!said.contains("Verification: OK"), "{said}");
    let m =
        eventually(client.addrs.admin, |m| sum(m, "tarmac_tcp_open_total", &[("target", "egress")]) == 1.0)
            .await;
    assert_eq!(sum(&m, "tarmac_tcp_open_total", &[("target", "books.example")]), 2.0, "{m}");
    assert_eq!(elsewhere.connections(), 1);
}

/// Scrapes `admin` until `holds` (10 s at most); the last scrape.
async fn eventually(admin: SocketAddr, holds: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(admin).await;
        if holds(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "never held:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
