//! Transparent interception for real: two network namespaces joined by a veth pair, an
//! unmodified curl in one and an unmodified HTTP server in the other, each with a sidecar
//! and the iptables rules `tarmac-proxy init` writes. Needs root; in CI a non-root run
//! fails instead of skipping, so these tests cannot silently disappear.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tarmac_testkit::metrics::sum;
use tarmac_testkit::tools::{binary, temp_dir};

const PROXY_UID: &str = "2102";

/// False (and a note) when not root outside CI; panics when not root in CI.
pub(crate) fn can_run_privileged() -> bool {
    let uid =
        Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.is_ok_and(|u| u == "0") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("network-namespace tests need root, and CI must run them");
    }
    eprintln!("skipping: network-namespace tests need root");
    false
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A network namespace; deleted (with everything in it) on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        Self(name)
    }

    fn exec(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.0))
    }

    /// `program` to be run inside this namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, program]);
        command
    }

    fn spawn(&self, args: &[&str]) -> Background {
        let child = self
            .command(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Background(child)
    }

    /// Runs a tarmac-proxy in this namespace as the proxy user, which the iptables rules
    /// exempt from redirection.
    fn spawn_proxy(&self, config: &Path) -> Background {
        let bin = binary("tarmac-proxy");
        self.spawn(&[
            "setpriv",
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
            bin.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
    }

    /// Polls `done` for up to 10 s; fails the test naming `what` otherwise.
    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} in {}: not within 10 s", self.0);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&self) {
        let ready = || {
            let out = self
                .command("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:4191/ready"])
                .output()
                .unwrap();
            out.stdout == b"200"
        };
        self.wait_until("proxy ready", ready);
    }

    fn metrics(&self) -> String {
        self.exec("curl -s http://127.0.0.1:4191/metrics")
    }

    /// Waits until something in this namespace listens on TCP `port`: a client sent in
    /// before that would be accepted by its sidecar and then closed, which is right for the
    /// proxy but says nothing about the path under test.
    fn wait_listening(&self, port: u16) {
        let listening = || !self.exec(&format!("ss -Hltn 'sport = :{port}'")).trim().is_empty();
        self.wait_until(&format!("a listener on :{port}"), listening);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two namespaces on one veth pair: `client` at 10.233.0.1 and fd00:233::1, `server` at
/// 10.233.0.2 and fd00:233::2 (addresses that exist only inside these namespaces).
fn two_hosts(tag: &str) -> (Netns, Netns) {
    let id = std::process::id() % 100_000;
    let client = Netns::new(format!("tm-{tag}-c{id}"));
    let server = Netns::new(format!("tm-{tag}-s{id}"));
    let (vc, vs) = (format!("tm{tag}c{id}"), format!("tm{tag}s{id}"));
    sh(&format!(
        "ip link add {vc} type veth peer name {vs} && ip link set {vc} netns {c} && ip link set {vs} netns {s} \
         && ip -n {c} addr add 10.233.0.1/24 dev {vc} && ip -n {s} addr add 10.233.0.2/24 dev {vs} \
         && ip -n {c} -6 addr add fd00:233::1/64 dev {vc} nodad && ip -n {s} -6 addr add fd00:233::2/64 dev {vs} nodad \
         && ip -n {c} link set {vc} up && ip -n {s} link set {vs} up",
        c = client.0,
        s = server.0
    ));
    (client, server)
}

/// The address family of a namespace test.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn server_ip(self) -> &'static str {
        match self {
            Family::V4 => "10.233.0.2",
            Family::V6 => "[fd00:233::2]",
        }
    }
    fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0",
            Family::V6 => "[::]",
        }
    }
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1",
            Family::V6 => "[::1]",
        }
    }
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

#[test]
fn curl_in_one_namespace_reaches_a_server_in_another_through_both_sidecars() {
    if can_run_privileged() {
        http_through_both_sidecars(Family::V4, "h4");
    }
}

#[test]
fn curl_through_both_sidecars_over_ipv6() {
    if can_run_privileged() {
        http_through_both_sidecars(Family::V6, "h6");
    }
}

fn http_through_both_sidecars(family: Family, tag: &str) {
    let (client, server) = two_hosts(tag);
    let server_ip = family.server_ip();
    let dir = temp_dir("netns");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the server namespace\n").unwrap();

    // Server side: an ordinary HTTP server on :8080, and a sidecar that gets every inbound
    // connection through iptables.
    let bind = family.any().trim_matches(|c| c == '[' || c == ']');
    let _app = server.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        bind,
        "--directory",
        dir.to_str().unwrap(),
    ]);
    let server_cfg = dir.join("server.yaml");
    std::fs::write(
        &server_cfg,
        format!(
            "admin: 127.0.0.1:4191\ninbound:\n  listen: \"{}:4143\"\n  transparent: true\n",
            family.any()
        ),
    )
    .unwrap();
    let proxy = binary("tarmac-proxy");
    let iptables = family.iptables();
    server.exec(&format!("{} init --proxy-uid {PROXY_UID} --iptables {iptables}", proxy.display()));
    let _server_proxy = server.spawn_proxy(&server_cfg);

    // Client side: the service `web` lives at server_ip:8080 and its endpoint is meshed.
    let client_cfg = dir.join("client.yaml");
    std::fs::write(
        &client_cfg,
        format!(
            "admin: 127.0.0.1:4191\noutbound:\n  transparent_listen: \"{}:4140\"\n  services:\n  - name: web\n    addrs: [\"{server_ip}:8080\"]\n    endpoints: [{{addr: \"{server_ip}:8080\", meshed: true}}]\n",
            family.loopback()
        ),
    )
    .unwrap();
    client.exec(&format!("{} init --proxy-uid {PROXY_UID} --iptables {iptables}", proxy.display()));
    let _client_proxy = client.spawn_proxy(&client_cfg);
    client.wait_ready();
    server.wait_ready();
    server.wait_listening(8080);
    let rules = client.exec(&format!("{iptables} -t nat -S TARMAC_OUTBOUND"));
    assert!(rules.contains("--uid-owner 2102") && rules.contains("--to-ports 4140"), "{rules}");

    // An unmodified client, unaware of any proxy.
    let url = format!("http://{server_ip}:8080/hello.txt");
    let out = client.command("curl").args(["-gsSf", "--max-time", "5", &url]).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert_eq!(body, "hello from the server namespace\n", "{}", String::from_utf8_lossy(&out.stderr));

    // Both sidecars carried it: the client's outbound side as service `web`, over the
    // meshed HTTP/2 hop, and the server's inbound side to the app's port.
    let out = client.metrics();
    assert!(
        sum(
            &out,
            "tarmac_responses_total",
            &[("direction", "outbound"), ("target", "web"), ("status_code", "200")]
        ) >= 1.0,
        "{out}"
    );
    assert_eq!(sum(&out, "tarmac_http_connections_total", &[("target", "web")]), 1.0, "{out}");
    let inb = server.metrics();
    assert!(
        sum(&inb, "tarmac_responses_total", &[("direction", "inbound"), ("status_code", "200")]) >= 1.0,
        "{inb}"
    );
    assert_eq!(
        sum(&inb, "tarmac_protocol_detect_total", &[("direction", "inbound"), ("result", "http2")]),
        1.0,
        "{inb}"
    );
}

#[test]
fn opaque_tcp_to_an_unknown_destination_is_intercepted_and_passed_through() {
    if !can_run_privileged() {
        return;
    }
    let (client, server) = two_hosts("tc");
    let dir = temp_dir("netns-tcp");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A raw TCP echo server; no proxy on the server side this time.
    let _app = server.spawn(&["python3", "-c", "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',9000));s.listen()\nwhile True:\n c,_=s.accept();d=c.recv(100);c.sendall(b'echo:'+d);c.close()"]);
    let client_cfg = dir.join("client.yaml");
    std::fs::write(&client_cfg, "admin: 127.0.0.1:4191\noutbound:\n  transparent_listen: 127.0.0.1:4140\n")
        .unwrap();
    let proxy = binary("tarmac-proxy");
    client.exec(&format!("{} init --proxy-uid {PROXY_UID}", proxy.display()));
    let _client_proxy = client.spawn_proxy(&client_cfg);
    client.wait_ready();
    server.wait_listening(9000);
    let out = client.command("python3")
        .args(["-c", "import socket;s=socket.create_connection(('10.233.0.2',9000),timeout=5);s.sendall(b'ping');print(s.recv(100).decode(),end='')"])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert_eq!(reply, "echo:ping", "{}", String::from_utf8_lossy(&out.stderr));
    let m = client.metrics();
    assert_eq!(
        sum(&m, "tarmac_tcp_open_total", &[("direction", "outbound"), ("target", "10.233.0.2:9000")]),
        1.0,
        "{m}"
    );
    assert_eq!(sum(&m, "tarmac_tcp_read_bytes_total", &[("target", "10.233.0.2:9000")]), 4.0, "{m}");
}

/// An app's own TLS in transparent mode: an unmodified curl in one namespace calls
/// `https://books.example:8443/`, served by `openssl s_server` in the other with a
/// certificate of the app's own CA. Both sidecars intercept it (iptables), carry it over
/// mTLS between them, and leave it untouched: curl verifies the app's certificate. Called
/// at an address that is no Service, it goes to the Service its server name names.
#[test]
fn an_apps_own_tls_crosses_both_sidecars_in_transparent_mode() {
    if !can_run_privileged() {
        return;
    }
    let (client, server) = two_hosts("tl");
    let dir = temp_dir("netns-tls");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    crate::app_tls::app_pki(&dir);
    let file = |f: &str| dir.join(f).display().to_string();
    let (cert, key) = (file("app.pem"), file("app.key"));
    let _app = server
        .spawn(&["openssl", "s_server", "-accept", "8443", "-www", "-quiet", "-cert", &cert, "-key", &key]);

    let pki = tarmac_testkit::proxy::TestPki::get();
    let server_cfg = dir.join("server.yaml");
    std::fs::write(
        &server_cfg,
        format!(
            "admin: 127.0.0.1:4191\ninbound:\n  listen: \"0.0.0.0:4143\"\n  transparent: true\n{}",
            pki.identity_yaml(&pki.server)
        ),
    )
    .unwrap();
    let client_cfg = dir.join("client.yaml");
    std::fs::write(
        &client_cfg,
        format!(
            "admin: 127.0.0.1:4191\noutbound:\n  transparent_listen: \"127.0.0.1:4140\"\n  services:\n  - name: books\n    addrs: [\"10.233.0.2:8443\"]\n    endpoints: [{{addr: \"10.233.0.2:8443\", meshed: true, identity: \"{0}\"}}]\n  - name: books.example\n    addrs: [\"10.96.0.9:8443\"]\n    endpoints: [{{addr: \"10.233.0.2:8443\", meshed: true, identity: \"{0}\"}}]\n{1}",
            pki.server.0,
            pki.identity_yaml(&pki.client)
        ),
    )
    .unwrap();
    let proxy = binary("tarmac-proxy");
    for ns in [&server, &client] {
        ns.exec(&format!("{} init --proxy-uid {PROXY_UID}", proxy.display()));
    }
    let _server_proxy = server.spawn_proxy(&server_cfg);
    let _client_proxy = client.spawn_proxy(&client_cfg);
    client.wait_ready();
    server.wait_ready();
    server.wait_listening(8443);

    let out = client
        .command("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &file("ca.pem")])
        .args(["--resolve", "books.example:8443:10.233.0.2", "-w", "\nverify=%{ssl_verify_result}"])
        .arg("https://books.example:8443/")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {}\n{page}", String::from_utf8_lossy(&out.stderr));
    assert!(page.contains("s_server -accept") && page.ends_with("\nverify=0"), "{page}");

    // The client's sidecar detected the app's TLS and sent it as bytes over mTLS to the
    // server's sidecar; neither parsed a request.
    let m = client.metrics();
    assert_eq!(
        sum(&m, "tarmac_protocol_detect_total", &[("direction", "outbound"), ("result", "tls")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        sum(&m, "tarmac_tcp_open_total", &[("direction", "outbound"), ("target", "books")]),
        1.0,
        "{m}"
    );
    assert!(
        sum(&m, "tarmac_tls_handshakes_total", &[("direction", "outbound"), ("result", "ok")]) >= 1.0,
        "{m}"
    );
    assert_eq!(sum(&m, "tarmac_requests_total", &[]), 0.0, "{m}");
    let m = server.metrics();
    assert!(
        sum(&m, "tarmac_tls_handshakes_total", &[("direction", "inbound"), ("result", "ok")]) >= 1.0,
        "{m}"
    );
    assert_eq!(sum(&m, "tarmac_requests_total", &[]), 0.0, "{m}");

    // Called at an address that is no known Service (where nothing listens), the app's TLS
    // goes to the Service its server name names, `books.example`: to the app, verified.
    let out = client
        .command("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &file("ca.pem")])
        .args(["--resolve", "books.example:8443:10.233.0.77", "-w", "\nverify=%{ssl_verify_result}"])
        .arg("https://books.example:8443/")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {}\n{page}", String::from_utf8_lossy(&out.stderr));
    assert!(page.contains("s_server -accept") && page.ends_with("\nverify=0"), "{page}");
    let m = client.metrics();
    assert_eq!(sum(&m, "tarmac_tcp_open_total", &[("target", "books.example")]), 1.0, "{m}");
    assert_eq!(sum(&m, "tarmac_tcp_open_total", &[("target", "10.233.0.77:8443")]), 0.0, "{m}");
}
