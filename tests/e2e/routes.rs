//! Routes applied by real proxies, as discovery sends them: the control plane's discovery
//! in-process on loopback, fed a snapshot of Services and HTTPRoutes, and replicas that are
//! echo servers behind their own inbound proxies.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tarmac_control::registry::{Instance, Registry};
use tarmac_control::store::Snapshot;
use tarmac_testkit::echo::{EchoServer, field};
use tarmac_testkit::proxy::start;
use tarmac_testkit::tools::{ServerProcess, curl, peer_script, run};
use tokio::sync::watch;

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: books}
spec: {selector: {app: books}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: books-v1}
spec: {selector: {app: books, version: v1}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: books-v2}
spec: {selector: {app: books, version: v2}, ports: [{port: 80}]}
";

fn snapshot(generation: u64, routes: &str) -> Arc<Snapshot> {
    let text = if routes.is_empty() { SERVICES.to_string() } else { format!("{SERVICES}---\n{routes}") };
    let objects = tarmac_model::parse_documents("routes.yaml", &text)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_iter()
        .map(|r| (r.key(), r))
        .collect();
    Arc::new(Snapshot { generation, objects })
}

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: books}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: books, port: 80}}]\n  rules:\n{rules}"
    )
}

/// A mesh of two versions of `books` and a client proxy following `books`.
struct Mesh {
    snapshots: watch::Sender<Arc<Snapshot>>,
    v1: EchoServer,
    v2: EchoServer,
    books: SocketAddr,
    client: tarmac_proxy::Running,
    _servers: Vec<tarmac_proxy::Running>,
    _control: tarmac_control::Running,
}

async fn mesh(routes: &str) -> Mesh {
    let v1 = EchoServer::start("books-v1").await;
    let v2 = EchoServer::start("books-v2").await;
    let p = proxies(routes, [v1.addr, v2.addr]).await;
    Mesh {
        snapshots: p.snapshots,
        v1,
        v2,
        books: p.books,
        client: p.client,
        _servers: p.servers,
        _control: p._control,
    }
}

/// The control plane (discovery), the inbound proxies of `books-v1` and `books-v2` (whose apps listen at
/// `apps`) and a client proxy following `books`.
struct Proxies {
    snapshots: watch::Sender<Arc<Snapshot>>,
    books: SocketAddr,
    client: tarmac_proxy::Running,
    servers: Vec<tarmac_proxy::Running>,
    _control: tarmac_control::Running,
}

async fn proxies(routes: &str, apps: [SocketAddr; 2]) -> Proxies {
    let (snapshots, receiver) = watch::channel(snapshot(1, routes));
    let registry = Registry::default();
    let mut instances = Vec::new();
    let mut servers = Vec::new();
    for (replica, (version, app)) in ["v1", "v2"].into_iter().zip(apps).enumerate() {
        let proxy =
            start(&format!("admin: 127.0.0.1:0\ninbound:\n  listen: 127.0.0.1:0\n  app: {app}\n")).await;
        instances.push(Instance {
            namespace: "default".into(),
            workload: format!("books-{version}"),
            replica: replica as u32,
            labels: BTreeMap::from([("app".into(), "books".into()), ("version".into(), version.into())]),
            service_account: "books".into(),
            addr: proxy.addrs.inbound.unwrap(),
            meshed: true,
            admin: Some(proxy.addrs.admin),
        });
        servers.push(proxy);
    }
    registry.set(instances);
    let control_plane =
        tarmac_testkit::control::start(tarmac_control::Config::snapshots(receiver).with_registry(registry))
            .await;
    let control = control_plane.addrs.grpc;
    let client = start(&format!(
        "admin: 127.0.0.1:0\ncontrol: {{addr: \"{control}\", workload: web}}\noutbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    discover: {{port: 80}}\n"
    ))
    .await;
    let books = client.addrs.service("books").unwrap();
    Proxies { snapshots, books, client, servers, _control: control_plane }
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn server(&self) -> Option<&str> {
        field(&self.body, "server")
    }
}

/// A keep-alive HTTP/1.1 connection to a proxy listener.
struct Conn(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Conn(sender)
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(http::Method::GET, path, headers).await
    }

    async fn send(&mut self, method: http::Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = http::Request::builder().method(method).uri(path).header("host", "books");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.0.ready().await.unwrap();
        let rsp = self.0.send_request(req.body(Empty::new()).unwrap()).await.unwrap();
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into(),
        }
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    Conn::open(addr).await.get(path, headers).await
}

/// Waits until the route table is in force: `probe` answers as `ok` says.
async fn until(addr: SocketAddr, path: &str, ok: impl Fn(&Answer) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(addr, path, &[]).await;
        if ok(&a) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routes never applied: {path} gave {} {}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const RULES: &str = "  - name: canary
    matches:
    - headers: [{name: x-user-country, value: DE}, {name: x-device, value: mobile}]
    backendRefs: [{name: books-v2, port: 80}]
  - name: old-api
    matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: books.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - name: rewrite
    matches: [{path: {type: PathPrefix, value: /api/v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-routed, value: 'yes'}], remove: [x-secret]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-rule, value: rewrite}]}
    backendRefs: [{name: books-v1, port: 80}]
  - name: gone
    matches: [{path: {type: Exact, value: /gone}}]
    backendRefs: [{name: books-v3, port: 80}]
  - name: slow
    matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: books-v1, port: 80}]
  - name: default
    matches: [{path: {type: PathPrefix, value: /books}}]
    backendRefs: [{name: books-v1, port: 80}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_choose_backends_filter_redirect_and_fail_as_the_specification_says() {
    let m = mesh(&route(RULES)).await;
    until(m.books, "/elsewhere", |a| a.status == 404).await;

    let a = get(m.books, "/", &[("x-user-country", "DE"), ("X-Device", "mobile")]).await;
    assert_eq!((a.status, a.server()), (200, Some("books-v2")), "the canary's header match: {}", a.body);
    assert_eq!(get(m.books, "/", &[("x-user-country", "DE")]).await.status, 404, "both headers must match");
    let a = get(m.books, "/books", &[("x-user-country", "DE"), ("x-device", "mobile")]).await;
    assert_eq!(a.server(), Some("books-v1"), "a longer path prefix takes precedence over header matches");

    let a = get(m.books, "/old/list?page=2", &[]).await;
    assert_eq!(a.status, 301);
    assert_eq!(a.headers["location"], "http://books.example/new/list?page=2");

    let a = get(m.books, "/api/v1/shelves?x=1", &[("x-secret", "s"), ("x-routed", "orig")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(field(&a.body, "path"), Some("/v1/shelves?x=1"), "{}", a.body);
    assert!(a.body.contains("header x-routed: orig\nheader x-routed: yes\n"), "{}", a.body);
    assert!(!a.body.contains("x-secret"), "{}", a.body);
    assert_eq!(a.headers["x-rule"], "rewrite");

    assert_eq!(get(m.books, "/gone", &[]).await.status, 500, "a backendRef to a missing Service");
    assert_eq!(get(m.books, "/elsewhere", &[]).await.status, 404, "no rule matches");
    assert_eq!(get(m.books, "/booksx", &[]).await.status, 404, "prefixes match whole segments");
    // Other spellings of a path match as the path they spell, and the app is sent that path
    // (so that a rule, and the authorization that relies on it, cannot be slipped past).
    for spelt in
        ["/%62ooks/shelf", "/books//shelf", "/x/../books/shelf", "/books/./shelf", "/x/%2e%2e/books/shelf"]
    {
        let a = get(m.books, spelt, &[]).await;
        assert_eq!((a.status, a.server()), (200, Some("books-v1")), "{spelt}: {}", a.body);
        assert_eq!(field(&a.body, "path"), Some("/books/shelf"), "{spelt}");
    }
    assert_eq!(get(m.books, "/slow?delay_ms=2000", &[]).await.status, 504, "timeouts.request");
    assert_eq!(get(m.books, "/slow?delay_ms=1", &[]).await.status, 200);

    // The route and rule label the metrics.
    let metrics = m.client.metrics.encode();
    assert!(
        metrics.contains("route=\"default/books\",rule=\"canary\",status_code=\"200\""),
        "{}",
        metrics.lines().filter(|l| l.contains("route")).collect::<Vec<_>>().join("\n")
    );
    assert!(metrics.contains("rule=\"gone\",status_code=\"500\""));
    // The golden metrics carry the rule's name as `route`, for `tarmac stat route`.
    let routed = |rule: &str, status: &str| {
        metrics.lines().any(|l| {
            l.starts_with("tarmac_responses_total{")
                && l.contains(&format!("route=\"{rule}\""))
                && l.contains(&format!("status_code=\"{status}\""))
        })
    };
    assert!(routed("canary", "200") && routed("gone", "500") && routed("slow", "504"), "{metrics}");
    assert!(metrics.contains("rule=\"slow\",status_code=\"504\""));

    // Routes removed: the Service goes straight to its own endpoints again.
    m.snapshots.send_replace(snapshot(2, ""));
    until(m.books, "/elsewhere", |a| a.status == 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_apply_to_each_request_on_one_connection() {
    let m = mesh(&route(
        "  - backendRefs:\n    - {name: books-v1, port: 80, weight: 80}\n    - {name: books-v2, port: 80, weight: 20}\n    - {name: books-v3, port: 80, weight: 0}\n",
    ))
    .await;
    until(m.books, "/", |a| a.status == 200 && a.server() == Some("books-v1")).await;
    let mut conn = Conn::open(m.books).await;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..1000 {
        let a = conn.get("/", &[]).await;
        assert_eq!(a.status, 200, "weight 0 on a missing Service gets no request: {}", a.body);
        *counts.entry(a.server().unwrap_or("?").to_string()).or_default() += 1;
    }
    let v2 = counts.get("books-v2").copied().unwrap_or(0);
    // 20 % of 1000: a binomial with standard deviation 12.6; ±60 is beyond 4.5 sigma.
    assert!((140..=260).contains(&v2), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_route_changes_under_load_fail_no_request() {
    let to = |backend: &str| route(&format!("  - backendRefs: [{{name: {backend}, port: 80}}]\n"));
    let m = mesh(&to("books-v1")).await;
    until(m.books, "/", |a| a.status == 200 && a.server() == Some("books-v1")).await;

    // About 500 requests per second from 5 keep-alive callers, bounded at 15 s.
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..5 {
        let (stop, books) = (stop.clone(), m.books);
        callers.push(tokio::spawn(async move {
            let mut conn = Conn::open(books).await;
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                tick.tick().await;
                let a = conn.get("/", &[]).await;
                if a.status == 200 { ok += 1 } else { failed.push(format!("{} {}", a.status, a.body)) }
            }
            (ok, failed)
        }));
    }
    // 100 changes, 20 ms apart: to v1, to v2, split, no routes, ...
    for i in 0..100u64 {
        let routes = match i % 4 {
            0 => to("books-v2"),
            1 => route("  - backendRefs: [{name: books-v1, port: 80}, {name: books-v2, port: 80}]\n"),
            2 => String::new(),
            _ => to("books-v1"),
        };
        m.snapshots.send_replace(snapshot(i + 2, &routes));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last change (to v1) is in force.
    m.snapshots.send_replace(snapshot(200, &to("books-v2")));
    until(m.books, "/", |a| a.server() == Some("books-v2")).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok >= 300, "only {ok} requests were sent");
    assert!(m.v1.requests() > 0 && m.v2.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_a_copy_and_cors_preflights_are_answered_by_the_sidecar() {
    let m = mesh(&route(
        "  - filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: books-v2, port: 80}}\n    - type: CORS\n      cors: {allowOrigins: ['https://*.example.com'], allowMethods: [GET, PUT], maxAge: 600}\n    backendRefs: [{name: books-v1, port: 80}]\n",
    ))
    .await;
    let origin = [("origin", "https://shop.example.com")];
    // In force once an allowed origin gets its CORS header.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !get(m.books, "/", &origin).await.headers.contains_key("access-control-allow-origin") {
        assert!(tokio::time::Instant::now() < deadline, "routes never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mirrored_before = m.v2.requests();
    for _ in 0..20 {
        let a = get(m.books, "/books", &origin).await;
        assert_eq!((a.status, a.server()), (200, Some("books-v1")), "the mirror's answer is discarded");
        assert_eq!(a.headers["access-control-allow-origin"], "https://shop.example.com");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while m.v2.requests() < mirrored_before + 20 {
        assert!(tokio::time::Instant::now() < deadline, "only {} copies", m.v2.requests() - mirrored_before);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let served_before = m.v1.requests();
    let preflight = [("origin", "https://shop.example.com"), ("access-control-request-method", "PUT")];
    let a = Conn::open(m.books).await.send(http::Method::OPTIONS, "/books", &preflight).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["access-control-allow-origin"], "https://shop.example.com");
    assert_eq!(a.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(a.headers["access-control-max-age"], "600");
    let stranger = [("origin", "https://example.org"), ("access-control-request-method", "PUT")];
    let a = Conn::open(m.books).await.send(http::Method::OPTIONS, "/books", &stranger).await;
    assert!(!a.headers.contains_key("access-control-allow-origin"));
    assert_eq!(m.v1.requests(), served_before, "preflights are answered by the sidecar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injections_abort_and_delay_their_share_of_matching_requests() {
    let faults = "\
apiVersion: tarmac.io/v1alpha1
kind: FaultInjection
metadata: {name: chaos}
spec:
  abort: {httpStatus: 503}
  headers: [{name: x-chaos, value: 'on'}]
---
apiVersion: tarmac.io/v1alpha1
kind: FaultInjection
metadata: {name: flaky}
spec:
  abort: {httpStatus: 503, percentage: 30}
  delay: {fixedDelay: 1ms, percentage: 50}
---
";
    let rules = "  - matches: [{path: {value: /chaos}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: tarmac.io, kind: FaultInjection, name: chaos}}]\n    backendRefs: [{name: books-v1, port: 80}]\n  - matches: [{path: {value: /flaky}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: tarmac.io, kind: FaultInjection, name: flaky}}]\n    backendRefs: [{name: books-v1, port: 80}]\n  - matches: [{path: {value: /missing}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: tarmac.io, kind: FaultInjection, name: missing}}]\n    backendRefs: [{name: books-v1, port: 80}]\n";
    let m = mesh(&format!("{faults}{}", route(rules))).await;
    until(m.books, "/missing", |a| a.status == 500).await;

    let before = m.v1.requests();
    for _ in 0..20 {
        assert_eq!(get(m.books, "/chaos", &[("x-chaos", "on")]).await.status, 503);
    }
    assert_eq!(m.v1.requests(), before, "an aborted request never reaches the backend");
    assert_eq!(get(m.books, "/chaos", &[]).await.status, 200, "only requests with the headers");

    let mut conn = Conn::open(m.books).await;
    let mut aborted = 0;
    for _ in 0..1000 {
        match conn.get("/flaky", &[]).await.status {
            503 => aborted += 1,
            200 => {}
            other => panic!("status {other}"),
        }
    }
    // 30 % of 1000: a binomial with standard deviation 14.5; ±75 is beyond 5 sigma.
    assert!((225..=375).contains(&aborted), "{aborted} of 1000 aborted");
}

/// What `ws_peer.py who` reports: the upgrade's status and, when it switched, which
/// WebSocket server answered, the path and `x-routed` header it saw, and the `x-rule`
/// header of the 101.
async fn websocket_who(books: SocketAddr, path: &str, headers: &[&str]) -> serde_json::Value {
    let url = format!("ws://{books}{path}");
    let script = peer_script("ws_peer.py");
    let args: Vec<&str> =
        [script.as_str(), "who", url.as_str()].into_iter().chain(headers.iter().copied()).collect();
    let out = run("python3", &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ws_peer who {path} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_routed_filtered_and_spliced() {
    let rules = "  - name: pinned
    matches: [{path: {type: PathPrefix, value: /chat}, headers: [{name: x-pin, value: v1}]}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /pinned}}
    backendRefs: [{name: books-v1, port: 80}]
  - name: chat
    matches: [{path: {type: PathPrefix, value: /chat}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-routed, value: chat}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-rule, value: chat}]}
    backendRefs: [{name: books-v2, port: 80}]
  - name: app
    matches: [{path: {type: PathPrefix, value: /app}}]
    backendRefs: [{name: books-v1, port: 80}]
  - name: gone
    matches: [{path: {type: PathPrefix, value: /gone}}]
    backendRefs: [{name: books-v3, port: 80}]
  - name: split
    matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: books-v1, port: 80, weight: 1}, {name: books-v2, port: 80, weight: 1}]
";
    let v1 =
        ServerProcess::spawn_listening("python3", &[&peer_script("ws_peer.py"), "serve", "0", "books-v1"]);
    let v2 =
        ServerProcess::spawn_listening("python3", &[&peer_script("ws_peer.py"), "serve", "0", "books-v2"]);
    let m = proxies(&route(rules), [v1.addr(), v2.addr()]).await;
    until(m.books, "/nowhere", |a| a.status == 404 && a.headers.contains_key("tarmac-proxy-error")).await;

    let chat = websocket_who(m.books, "/chat/room", &[]).await;
    assert_eq!(chat["status"], 101, "{chat}");
    assert_eq!(chat["who"]["server"], "books-v2", "/chat goes to books-v2: {chat}");
    assert_eq!(chat["who"]["path"], "/chat/room");
    assert_eq!(chat["who"]["x_routed"], "chat", "request headers are filtered: {chat}");
    assert_eq!(chat["x_rule"], "chat", "the 101 gets the response headers: {chat}");

    let pinned = websocket_who(m.books, "/chat/room", &["x-pin:v1"]).await;
    assert_eq!(pinned["who"]["server"], "books-v1", "the header match wins: {pinned}");
    assert_eq!(pinned["who"]["path"], "/pinned/room", "the path is rewritten: {pinned}");
    assert_eq!(pinned["x_rule"], serde_json::Value::Null);

    let app = websocket_who(m.books, "/app", &[]).await;
    assert_eq!(app["who"]["server"], "books-v1", "{app}");
    assert_eq!(websocket_who(m.books, "/nowhere", &[]).await["status"], 404, "no rule matches");
    assert_eq!(websocket_who(m.books, "/gone", &[]).await["status"], 500, "the backend does not exist");
    // Weights are drawn per upgrade: 16 sockets all on one side would happen 1 in 32768.
    let mut servers = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let split = websocket_who(m.books, "/split", &[]).await;
        servers.insert(split["who"]["server"].as_str().unwrap_or_else(|| panic!("{split}")).to_string());
    }
    assert_eq!(servers.len(), 2, "both weighted backends get sockets: {servers:?}");

    // The routed tunnel carries a conversation both ways, large frames included.
    let url = format!("ws://{}/chat/big", m.books);
    let out = run("python3", &[&peer_script("ws_peer.py"), "client", &url]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ws client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(r#""binary_ok": true"#) && stdout.contains(r#""last": "bye""#), "{stdout}");

    let metrics = m.client.metrics.encode();
    let count = |needle: &str| {
        metrics
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(
        count(
            "tarmac_route_responses_total{direction=\"outbound\",target=\"books\",route=\"default/books\",rule=\"chat\",status_code=\"101\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        count("route=\"pinned\",status_code=\"101\""),
        1.0,
        "the route label of the response metrics: {metrics}"
    );

    // An HTTP/2 client's WebSocket (extended CONNECT) is routed as the HTTP/1.1 handshake
    // it stands for: matched, filtered and rewritten alike.
    let chat = super::peers::h2_websocket(&format!("ws://{}/chat/room", m.books), &[]).await;
    assert_eq!(chat["status"], 200, "{chat}");
    assert_eq!(chat["who"]["server"], "books-v2", "{chat}");
    assert_eq!(chat["who"]["x_routed"], "chat", "{chat}");
    assert_eq!(chat["x_rule"], "chat", "the 200 gets the response headers: {chat}");
    assert_eq!(chat["last"], "bye", "{chat}");
    let pinned = super::peers::h2_websocket(&format!("ws://{}/chat/room", m.books), &["x-pin:v1"]).await;
    assert_eq!(pinned["who"]["server"], "books-v1", "{pinned}");
    assert_eq!(pinned["who"]["path"], "/pinned/room", "the path is rewritten: {pinned}");
    let nowhere = super::peers::h2_websocket(&format!("ws://{}/nowhere", m.books), &[]).await;
    assert_eq!(nowhere["status"], 404, "{nowhere}");
    assert_eq!(nowhere["ended"], true, "{nowhere}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_are_routed_by_method() {
    // books-v1 is a forward proxy, books-v2 an echo server: only a route sends every
    // CONNECT to the one that can open tunnels.
    let forward_proxy = tarmac_testkit::servers::connect_proxy().await;
    let echo = EchoServer::start("books-v2").await;
    let behind = EchoServer::start("behind-tunnel").await;
    let rules = "  - name: tunnels
    matches: [{method: CONNECT}]
    backendRefs: [{name: books-v1, port: 80}]
  - name: plain
    matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: books-v2, port: 80}]
";
    let m = proxies(&route(rules), [forward_proxy, echo.addr]).await;
    until(m.books, "/probe", |a| a.status == 200 && a.server() == Some("books-v2")).await;
    let proxy_url = format!("http://{}", m.books);
    for _ in 0..8 {
        let (body, verbose) =
            curl(&["-v", "-p", "-x", &proxy_url, &format!("http://{}/through", behind.addr)]).await;
        assert!(verbose.contains("200 Connection Established"), "{verbose}");
        assert_eq!(field(&body, "server"), Some("behind-tunnel"), "{body}");
    }
    let metrics = m.client.metrics.encode();
    assert!(
        metrics.contains("rule=\"tunnels\",status_code=\"200\"} 8"),
        "every CONNECT took the tunnels rule: {metrics}"
    );
}

const RETRY_RULES: &str = "  - name: retried
    matches: [{path: {type: PathPrefix, value: /retried}}]
    retry: {codes: [503], attempts: 2, backoff: 1ms}
    backendRefs: [{name: books-v1, port: 80}]
  - name: per-try
    matches: [{path: {type: PathPrefix, value: /per-try}}]
    timeouts: {backendRequest: 200ms}
    retry: {attempts: 1, backoff: 1ms}
    backendRefs: [{name: books-v1, port: 80}]
  - name: untried
    matches: [{path: {type: PathPrefix, value: /untried}}]
    timeouts: {backendRequest: 200ms}
    backendRefs: [{name: books-v1, port: 80}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_retries_and_per_try_timeouts_are_honoured_within_the_retry_budget() {
    let m = mesh(&route(RETRY_RULES)).await;
    until(m.books, "/retried", |a| a.status == 200).await;
    let admin = m.client.addrs.admin;
    let retries = |text: &str, reason: &str| {
        tarmac_testkit::metrics::sum(text, "tarmac_retries_total", &[("rule", "retried"), ("reason", reason)])
    };

    // Twice 503, then 200: the caller sees 200, and v1 saw all three tries.
    let before = m.v1.requests();
    let a = Conn::open(m.books).await.get("/retried?first=2&status=503", &[("x-request-id", "a")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(m.v1.requests() - before, 3);
    // Three times 503: two retries are all the rule allows, and the last real answer
    // comes back.
    let a = Conn::open(m.books).await.get("/retried?first=3&status=503", &[("x-request-id", "b")]).await;
    assert_eq!(a.status, 503);
    assert_eq!(field(&a.body, "server"), Some("books-v1"), "the backend's own answer, not the proxy's");
    assert_eq!(retries(&tarmac_testkit::metrics::scrape(admin).await, "status"), 4.0);

    // A try past `backendRequest` is abandoned and tried again; without a retry policy the
    // caller gets 504.
    let started = std::time::Instant::now();
    let a = Conn::open(m.books).await.get("/per-try?first=1&delay_ms=3000", &[("x-request-id", "c")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(started.elapsed() < Duration::from_millis(2000), "{:?}", started.elapsed());
    let a = Conn::open(m.books).await.get("/untried?delay_ms=3000", &[]).await;
    assert_eq!(a.status, 504, "{}", a.body);
    let text = tarmac_testkit::metrics::scrape(admin).await;
    assert_eq!(
        tarmac_testkit::metrics::sum(
            &text,
            "tarmac_retries_total",
            &[("rule", "per-try"), ("reason", "timeout")]
        ),
        1.0
    );

    // A backend that always fails: every request wants two retries, and the budget (20 %
    // of requests plus 10 per second over 10 s) lets only some through.
    let before = m.v1.requests();
    let offered = 400;
    let mut conn = Conn::open(m.books).await;
    for _ in 0..offered {
        assert_eq!(conn.get("/retried?status=503", &[]).await.status, 503);
    }
    let seen = m.v1.requests() - before;
    let text = tarmac_testkit::metrics::scrape(admin).await;
    let denied = tarmac_testkit::metrics::sum(&text, "tarmac_retries_denied_total", &[("reason", "budget")]);
    assert!(seen <= offered + offered / 5 + 100, "{seen} tries for {offered} requests");
    assert!(seen > offered, "some retries were made");
    assert!(denied > 0.0, "{text}");
}

/// One gRPC call by the grpcio peer (`grpc_peer.py call`) through `books`'s listener.
async fn grpc_call(books: SocketAddr, method: &str, metadata: &[&str]) -> serde_json::Value {
    let target = books.to_string();
    let mut args = vec![peer_script("grpc_peer.py"), "call".into(), target, method.into()];
    args.extend(metadata.iter().map(|m| m.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("python3", &args).await;
    assert!(out.status.success(), "grpc_peer call: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GRPCRoute method and header matches, for a real grpcio client and servers (two
/// `grpc_peer.py` servers saying who they are in a trailer): a method goes to its rule's
/// backend, a header narrows a method's match, a regular expression matches methods,
/// and a call no rule matches is answered UNIMPLEMENTED by the sidecar (both servers
/// implement it).
#[tokio::test]
async fn grpc_routes_match_methods_and_headers_for_a_grpcio_client() {
    let script = peer_script("grpc_peer.py");
    let v1 = ServerProcess::spawn_listening("python3", &[&script, "serve", "0", "books-v1"]);
    let v2 = ServerProcess::spawn_listening("python3", &[&script, "serve", "0", "books-v2"]);
    let routes = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: books-grpc}
spec:
  parentRefs: [{group: \"\", kind: Service, name: books, port: 80}]
  rules:
  - matches: [{method: {service: tarmac.test.Echo, method: ServerStream}}]
    backendRefs: [{name: books-v2, port: 80}]
  - matches:
    - method: {service: tarmac.test.Echo, method: Unary}
      headers: [{name: x-canary, value: \"yes\"}]
    backendRefs: [{name: books-v2, port: 80}]
  - matches: [{method: {type: RegularExpression, service: 'tarmac\\.test\\.E.*', method: 'Un.*'}}]
    backendRefs: [{name: books-v1, port: 80}]
";
    let p = proxies(routes, [v1.addr(), v2.addr()]).await;
    // Until discovery has delivered the route: before it, both servers answer Bidi.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let bidi = grpc_call(p.books, "Bidi", &[]).await;
        if bidi["code"] == "UNIMPLEMENTED" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the GRPCRoute never applied: {bidi}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let peer = |v: &serde_json::Value| (v["code"].as_str().unwrap().to_string(), v["peer"].clone());
    // Three rounds: weights are not involved, every call must take its rule.
    for _ in 0..3 {
        // The method rule.
        let stream = grpc_call(p.books, "ServerStream", &[]).await;
        assert_eq!(stream["messages"], serde_json::json!(["msg-0", "msg-1"]), "{stream}");
        assert_eq!(peer(&stream), ("OK".into(), "books-v2".into()), "{stream}");
        // Method and header, ANDed; without the header (or with another value) the
        // regular expression's rule takes it.
        let canary = grpc_call(p.books, "Unary", &["x-canary=yes"]).await;
        assert_eq!(peer(&canary), ("OK".into(), "books-v2".into()), "{canary}");
        let other = grpc_call(p.books, "Unary", &["x-canary=no"]).await;
        assert_eq!(peer(&other), ("OK".into(), "books-v1".into()), "{other}");
        let plain = grpc_call(p.books, "Unary", &[]).await;
        assert_eq!(peer(&plain), ("OK".into(), "books-v1".into()), "{plain}");
        assert_eq!(plain["messages"], serde_json::json!(["echo:hi"]), "{plain}");
    }
    // No rule matches Bidi: the sidecar answers UNIMPLEMENTED, as the specification says.
    let bidi = grpc_call(p.books, "Bidi", &[]).await;
    assert_eq!(bidi["code"], "UNIMPLEMENTED", "{bidi}");
    assert_eq!(bidi["peer"], serde_json::Value::Null, "{bidi}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resilience_policy_retries_a_services_unrouted_requests_and_can_turn_its_budget_off() {
    let policy = |budget: &str| {
        format!(
            "apiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: books}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: books}}]\n  retry: {{codes: [503], attempts: 2, backoff: 1ms}}\n{budget}"
        )
    };
    let m = mesh(&policy("  retryBudget: {enabled: false}\n")).await;
    let seen = || m.v1.requests() + m.v2.requests();
    // In force once a request failing once comes back 200 (no route: the Service's own
    // policy retried it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for id in 0.. {
        let a = Conn::open(m.books)
            .await
            .get("/?first=1&status=503", &[("x-request-id", &format!("probe-{id}"))])
            .await;
        if a.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the policy never applied: {}", a.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Budget off: every request to an always-failing Service is tried three times.
    let offered = 200;
    let before = seen();
    let mut conn = Conn::open(m.books).await;
    for _ in 0..offered {
        assert_eq!(conn.get("/?status=503", &[]).await.status, 503);
    }
    assert_eq!(seen() - before, 3 * offered, "attempts alone bound the retries");

    // The budget back on (the policy without `retryBudget`): retries add at most a fifth
    // of the requests in the window (these and the 200 before, which still count) and
    // the floor of 10 per second over it.
    m.snapshots.send(snapshot(2, &policy(""))).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let offered = 400;
    let before = seen();
    for _ in 0..offered {
        assert_eq!(conn.get("/?status=503", &[]).await.status, 503);
    }
    let tries = seen() - before;
    assert!(tries <= offered + (offered + 200 + 10) / 5 + 100, "{tries} tries for {offered} requests");
    assert!(tries > offered, "{tries} tries for {offered} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_sheds_requests_past_it_at_once() {
    let policy = "apiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: books}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: books}]\n  limits: {maxInFlight: 2, maxQueued: 0}\n";
    let m = mesh(policy).await;
    until(m.books, "/", |a| a.status == 200).await;
    // Two slow requests hold both places; a third gets 503 at once, saying why.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let books = m.books;
            tokio::spawn(async move { get(books, "/?delay_ms=1500", &[]).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let shed = get(m.books, "/", &[]).await;
    assert_eq!(shed.status, 503, "{}", shed.body);
    assert!(shed.body.contains("concurrency limit"), "{}", shed.body);
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(get(m.books, "/", &[]).await.status, 200, "places free again");
}

/// The request timeout of a Service's calls (to the response head; 30 s unless said
/// otherwise) is changed by its ResiliencePolicy: shortened, a slow answer becomes 504
/// from the caller's sidecar; lengthened again, the same answer comes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resilience_policy_changes_a_services_request_timeout() {
    let policy = |request: &str| {
        format!(
            "apiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: books}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: books}}]\n  timeouts: {{request: {request}}}\n"
        )
    };
    let m = mesh(&policy("300ms")).await;
    until(m.books, "/?delay_ms=1000", |a| a.status == 504).await;
    let a = get(m.books, "/?delay_ms=1000", &[]).await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(a.body.contains("request timeout of 300ms exceeded"), "{}", a.body);
    m.snapshots.send(snapshot(2, &policy("5s"))).unwrap();
    until(m.books, "/?delay_ms=1000", |a| a.status == 200).await;
    assert_eq!(get(m.books, "/?delay_ms=1000", &[]).await.status, 200);
}

/// GRPCRoute retries and deadlines for a real grpcio client and server: a ResiliencePolicy
/// naming the rule gives it a retry (no codes named: `UNAVAILABLE`) and a request timeout
/// of 3 s. Calls failing with UNAVAILABLE are tried again and succeed; past `attempts` the
/// server's own status comes back; each try tells the server the time left (the sooner of
/// the rule's timeout and the caller's deadline, less what earlier tries took); past the
/// timeout the caller's sidecar ends the call with DEADLINE_EXCEEDED.
#[tokio::test]
async fn grpc_route_retries_unavailable_and_passes_the_time_left_on_for_grpcio() {
    let script = peer_script("grpc_peer.py");
    let v1 = ServerProcess::spawn_listening("python3", &[&script, "serve", "0", "books-v1"]);
    let v2 = ServerProcess::spawn_listening("python3", &[&script, "serve", "0", "books-v2"]);
    let routes = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: books-grpc}
spec:
  parentRefs: [{group: \"\", kind: Service, name: books, port: 80}]
  rules:
  - name: unary
    matches: [{method: {service: tarmac.test.Echo, method: Unary}}]
    backendRefs: [{name: books-v1, port: 80}]
---
apiVersion: tarmac.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: books-unary}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: books-grpc, sectionName: unary}]
  retry: {attempts: 2, backoff: 10ms}
  timeouts: {request: 3s}
";
    let p = proxies(routes, [v1.addr(), v2.addr()]).await;
    // Until discovery has delivered the route and policy: a call failing once succeeds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for id in 0.. {
        let probe =
            grpc_call(p.books, "Unary", &["x-fail-first=1", &format!("x-request-id=probe-{id}")]).await;
        if probe["code"] == "OK" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the policy never applied: {probe}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // UNAVAILABLE twice, then OK: the caller sees OK from the third call.
    let a = grpc_call(p.books, "Unary", &["x-fail-first=2", "x-request-id=a"]).await;
    assert_eq!((a["code"].as_str(), a["peer"].as_str()), (Some("OK"), Some("books-v1")), "{a}");
    assert_eq!(a["trailers"]["x-calls"], "3", "{a}");
    // Always UNAVAILABLE: two retries, then the server's own status and message.
    let b = grpc_call(p.books, "Unary", &["x-fail-first=5", "x-request-id=b"]).await;
    assert_eq!(b["code"], "UNAVAILABLE", "{b}");
    assert_eq!(b["details"], "failing on purpose, call 3", "{b}");

    // The caller allows 10 s, the rule 3 s; the first try takes 800 ms to fail. The second
    // try is told what is left of the sooner: at most 2.2 s.
    let c = grpc_call(
        p.books,
        "Unary",
        &["x-fail-first=1", "x-fail-sleep-ms=800", "x-request-id=c", "deadline=10"],
    )
    .await;
    assert_eq!(c["code"], "OK", "{c}");
    let left: u64 = c["trailers"]["x-time-remaining-ms"].as_str().unwrap().parse().unwrap();
    assert!(left > 0 && left <= 2200, "the server was given {left} ms: {c}");

    // A server slower than the rule's timeout: the sidecar ends the call, long before the
    // caller's own deadline, with DEADLINE_EXCEEDED and its reason.
    let d = grpc_call(p.books, "Unary", &["x-sleep-ms=6000", "x-request-id=d", "deadline=10"]).await;
    assert_eq!(d["code"], "DEADLINE_EXCEEDED", "{d}");
    assert!(d["details"].as_str().is_some_and(|m| m.contains("request timeout of 3s exceeded")), "{d}");
}

/// GRPCRoute has no `timeouts` in the Gateway API: its rules take them from
/// ResiliencePolicies, as HTTPRoute rules that set none do. For a real grpcio client and
/// a slow grpcio server: the Service's policy (request 1 s) times a rule no policy names,
/// even for a caller with no deadline of its own, and the server is told that deadline;
/// a policy naming another rule goes before it (8 s, and 3 s per try with one retry), so
/// the same slow call succeeds there, and a try past its 3 s is abandoned and tried again.
#[tokio::test]
async fn grpc_route_rules_take_their_timeouts_from_resilience_policies_for_grpcio() {
    let script = peer_script("grpc_peer.py");
    let v1 = ServerProcess::spawn_listening("python3", &[&script, "serve", "0", "books-v1"]);
    let v2 = ServerProcess::spawn_listening("python3", &[&script, "serve", "0", "books-v2"]);
    let routes = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: books-grpc}
spec:
  parentRefs: [{group: \"\", kind: Service, name: books, port: 80}]
  rules:
  - name: unary
    matches: [{method: {service: tarmac.test.Echo, method: Unary}}]
    backendRefs: [{name: books-v1, port: 80}]
  - name: patient
    matches:
    - method: {service: tarmac.test.Echo, method: Unary}
      headers: [{name: x-lane, value: patient}]
    backendRefs: [{name: books-v1, port: 80}]
---
apiVersion: tarmac.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: books}
spec:
  targetRefs: [{group: \"\", kind: Service, name: books}]
  timeouts: {request: 1s}
---
apiVersion: tarmac.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: books-patient}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: books-grpc, sectionName: patient}]
  retry: {attempts: 1, backoff: 10ms}
  timeouts: {request: 8s, backendRequest: 3s}
";
    let p = proxies(routes, [v1.addr(), v2.addr()]).await;
    // Until discovery has delivered the policies: a call taking 2 s no longer succeeds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let slow = loop {
        let slow = grpc_call(p.books, "Unary", &["x-sleep-ms=2000", "deadline=none"]).await;
        if slow["code"] != "OK" {
            break slow;
        }
        assert!(tokio::time::Instant::now() < deadline, "the policy never applied: {slow}");
    };
    // The caller set no deadline: the sidecar ended the call at the Service's timeout,
    // with the status gRPC callers expect and its reason.
    assert_eq!(slow["code"], "DEADLINE_EXCEEDED", "{slow}");
    assert!(slow["details"].as_str().is_some_and(|m| m.contains("request timeout of 1s exceeded")), "{slow}");
    assert_eq!(slow["peer"], serde_json::Value::Null, "{slow}");

    // A quick call succeeds, and the server was given the sidecar's deadline.
    let quick = grpc_call(p.books, "Unary", &["x-request-id=quick", "deadline=none"]).await;
    assert_eq!((quick["code"].as_str(), quick["peer"].as_str()), (Some("OK"), Some("books-v1")), "{quick}");
    let left = &quick["trailers"]["x-time-remaining-ms"];
    let left: u64 =
        left.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no deadline: {quick}"));
    assert!(left > 0 && left <= 1000, "the server was given {left} ms: {quick}");

    // The rule's own policy goes before the Service's: the same slow call succeeds.
    let patient = grpc_call(p.books, "Unary", &["x-lane=patient", "x-sleep-ms=2000", "deadline=none"]).await;
    assert_eq!(patient["code"], "OK", "{patient}");

    // Its per-try timeout: a first try that would take 5 s is abandoned at 3 s and the
    // call tried again; the second try is told at most the 3 s it has.
    let retried = grpc_call(
        p.books,
        "Unary",
        &[
            "x-lane=patient",
            "x-fail-first=1",
            "x-fail-sleep-ms=5000",
            "x-request-id=retried",
            "deadline=none",
        ],
    )
    .await;
    assert_eq!(retried["code"], "OK", "{retried}");
    assert_eq!(retried["trailers"]["x-calls"], "2", "{retried}");
    let left: u64 = retried["trailers"]["x-time-remaining-ms"].as_str().unwrap().parse().unwrap();
    assert!(left > 0 && left <= 3000, "the second try was given {left} ms: {retried}");
}
