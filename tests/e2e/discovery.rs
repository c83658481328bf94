//! Proxies following services through the real control plane: the files store, the
//! registry of running instances and the discovery stream, in-process on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tarmac_control::registry::{Instance, Registry};
use tarmac_testkit::echo::{EchoServer, field};
use tarmac_testkit::proxy::start;
use tarmac_testkit::tools::{http_get, temp_dir};

const BOOKS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec:\n  selector: {app: books}\n  ports: [{port: 80}]\n";

fn instance(replica: u32, addr: SocketAddr) -> Instance {
    Instance {
        namespace: "default".into(),
        workload: "books".into(),
        replica,
        labels: BTreeMap::from([("app".to_string(), "books".to_string())]),
        service_account: "books".into(),
        addr,
        meshed: true,
        admin: None,
    }
}

/// The real control plane on the files store of `dir`, with the instances of `registry`,
/// serving discovery on `addr` (port 0: any) until it is shut down or dropped.
async fn control_plane(dir: &Path, registry: &Registry, addr: SocketAddr) -> tarmac_control::Running {
    tarmac_testkit::control::start_at(
        tarmac_control::Config::files(dir).with_registry(registry.clone()),
        addr,
    )
    .await
}

/// The control plane's inputs: a directory holding the Service `books`, and an empty
/// registry of instances.
fn books_config(tag: &str) -> (PathBuf, Registry) {
    let dir = temp_dir(tag);
    std::fs::write(dir.join("books.yaml"), BOOKS).unwrap();
    (dir, Registry::default())
}

/// An echo app called `name` behind its own inbound proxy: one replica of `books`.
async fn replica(name: &str) -> (EchoServer, tarmac_proxy::Running) {
    let app = EchoServer::start(name).await;
    let proxy =
        start(&format!("admin: 127.0.0.1:0\ninbound:\n  listen: 127.0.0.1:0\n  app: {}\n", app.addr)).await;
    (app, proxy)
}

/// A client proxy following `books` through the control plane at `control`; returns it and
/// its listener for `books`.
async fn follower(control: SocketAddr) -> (tarmac_proxy::Running, SocketAddr) {
    let client = start(&format!(
        "admin: 127.0.0.1:0\ncontrol: {{addr: \"{control}\", workload: web}}\noutbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    discover: {{port: 80}}\n"
    ))
    .await;
    let books = client.addrs.service("books").unwrap();
    (client, books)
}

/// Sends requests until `ok` holds for one answer's server name, up to 10 s.
async fn eventually_served_by(addr: SocketAddr, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/").await;
        if status == 200 && field(&body, "server") == Some(want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served by {want}: last {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_registry_and_survive_the_control_plane_going_away() {
    let (dir, registry) = books_config("discovery");
    let ((_app_a, proxy_a), (_app_b, proxy_b)) = (replica("books-a").await, replica("books-b").await);
    registry.set(vec![instance(0, proxy_a.addrs.inbound.unwrap())]);
    let control = control_plane(&dir, &registry, "127.0.0.1:0".parse().unwrap()).await;
    let control_addr = control.addrs.grpc;
    let (_client, books) = follower(control_addr).await;
    eventually_served_by(books, "books-a").await;

    // A new replica appears and the old one goes: traffic moves, pushed, not polled.
    registry.set(vec![instance(1, proxy_b.addrs.inbound.unwrap())]);
    eventually_served_by(books, "books-b").await;
    for _ in 0..20 {
        let (status, body) = http_get(books, "/").await;
        assert_eq!((status, field(&body, "server")), (200, Some("books-b")));
    }

    // The control plane dies: the proxy keeps the endpoints it has.
    control.shutdown().await;
    for _ in 0..50 {
        let (status, body) = http_get(books, "/").await;
        assert_eq!((status, field(&body, "server")), (200, Some("books-b")), "fail static");
    }

    // It returns, knowing different instances: the proxy resubscribes and follows.
    registry.set(vec![instance(0, proxy_a.addrs.inbound.unwrap())]);
    let _control = control_plane(&dir, &registry, control_addr).await;
    eventually_served_by(books, "books-a").await;

    // A configuration change that selects nothing leaves the service without endpoints.
    std::fs::write(dir.join("books.yaml"), BOOKS.replace("app: books", "app: nobody")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while http_get(books, "/").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "the change was never pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_endpoint_changes_under_load_fail_no_request() {
    let (dir, registry) = books_config("discovery-churn");
    let ((app_a, proxy_a), (app_b, proxy_b)) = (replica("books-a").await, replica("books-b").await);
    let (a, b) = (instance(0, proxy_a.addrs.inbound.unwrap()), instance(1, proxy_b.addrs.inbound.unwrap()));
    registry.set(vec![a.clone(), b.clone()]);
    let _control = control_plane(&dir, &registry, "127.0.0.1:0".parse().unwrap()).await;
    let control_addr = _control.addrs.grpc;
    let (_client, books) = follower(control_addr).await;
    eventually_served_by(books, "books-a").await;

    // About 500 requests per second from 4 callers (each paced at 8 ms), for as long as
    // the changes take, bounded at 10 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(8));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                tick.tick().await;
                let (status, body) = http_get(books, "/").await;
                if status == 200 { ok += 1 } else { failed.push(format!("{status} {body}")) }
            }
            (ok, failed)
        }));
    }
    // 100 changes of the endpoint set, 20 ms apart: {A}, {B}, {A, B}, ...
    for i in 0..100 {
        let set = match i % 3 {
            0 => vec![a.clone()],
            1 => vec![b.clone()],
            _ => vec![a.clone(), b.clone()],
        };
        registry.set(set);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok >= 400, "only {ok} requests were sent");
    assert!(app_a.requests() > 0 && app_b.requests() > 0);
}

/// Sends GETs on one keep-alive connection every `period` until `stop`; returns the
/// number of 200s and a description of every other outcome.
async fn keep_alive_caller(
    addr: SocketAddr,
    period: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    limit: Duration,
) -> (u64, Vec<String>) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (mut ok, mut failed) = (0, Vec::new());
    let mut tick = tokio::time::interval(period);
    let deadline = tokio::time::Instant::now() + limit;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let req = http::Request::get("/")
            .header("host", "books")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        match sender.send_request(req).await {
            Ok(rsp) if rsp.status() == 200 => {
                let _ = rsp.into_body().collect().await;
                ok += 1;
            }
            Ok(rsp) => failed.push(format!("status {}", rsp.status())),
            Err(e) => {
                failed.push(format!("error {e}"));
                break;
            }
        }
    }
    (ok, failed)
}

/// The fail-static check: 500 requests per second through a two-service mesh,
/// the control plane gone for a minute, then back: not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_the_control_plane_at_500_rps_fails_no_request() {
    let (dir, registry) = books_config("discovery-static");
    let (_app, server) = replica("books-a").await;
    registry.set(vec![instance(0, server.addrs.inbound.unwrap())]);
    let control = control_plane(&dir, &registry, "127.0.0.1:0".parse().unwrap()).await;
    let control_addr = control.addrs.grpc;
    let (_client, books) = follower(control_addr).await;
    eventually_served_by(books, "books-a").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(keep_alive_caller(
                books,
                Duration::from_millis(10),
                stop.clone(),
                Duration::from_secs(90),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    control.shutdown().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let _control = control_plane(&dir, &registry, control_addr).await;
    // Back: a change made now reaches the proxy, so it has resubscribed.
    let (app_b, server_b) = replica("books-b").await;
    registry.set(vec![instance(1, server_b.addrs.inbound.unwrap())]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app_b.requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the proxy did not resubscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{} requests failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    // 5 callers at 100/s for over a minute.
    assert!(ok >= 25_000, "only {ok} requests");
    eprintln!("fail static: {ok} requests, 0 failed, control plane away for 60 s");
}

/// An app's own TLS sent to another service's listener (`egress`) reaches the discovered
/// Service its server name names, by the names a cluster's DNS gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_tls_reaches_the_discovered_service_its_server_name_names() {
    let (dir, registry) = books_config("discovery-sni");
    let pki = temp_dir("discovery-sni-pki");
    crate::app_tls::app_pki(&pki);
    let (_app, app) = crate::app_tls::s_server(&pki).await;
    let server = start(&format!("admin: 127.0.0.1:0\ninbound:\n  listen: 127.0.0.1:0\n  app: {app}\n")).await;
    registry.set(vec![instance(0, server.addrs.inbound.unwrap())]);
    let control = control_plane(&dir, &registry, "127.0.0.1:0".parse().unwrap()).await;
    let elsewhere = EchoServer::start("elsewhere").await;
    let client = start(&format!(
        "admin: 127.0.0.1:0\ncontrol: {{addr: \"{}\", workload: web}}\noutbound:\n  services:\n  - name: egress\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\"}}]\n  - name: books\n    listen: 127.0.0.1:0\n    discover: {{port: 80}}\n",
        control.addrs.grpc, elsewhere.addr
    ))
    .await;
    let egress = client.addrs.service("egress").unwrap().to_string();
    let ca = pki.join("ca.pem").display().to_string();
    for name in ["books.default.svc.cluster.local", "books.default", "books"] {
        // The app's certificate is for books.example: verified as that, whatever name routed it.
        let args =
            ["s_client", "-connect", &egress, "-servername", name, "-verify_hostname", "books.example"];
        let args = [&args[..], &["-CAfile", &ca, "-verify_return_error", "-brief"]].concat();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = tarmac_testkit::tools::run("openssl", &args).await;
            let said =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if said.contains("Verification: OK") {
                break;
            }
            // Until discovery has given books its endpoint, books has none to send it to.
            assert!(tokio::time::Instant::now() < deadline, "{name}: {said}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(elsewhere.connections(), 0, "nothing went where the listener goes");
}
