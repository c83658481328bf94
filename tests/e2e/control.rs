//! The `tarmac-control` binary as a user runs it, `tarmac-control --config-dir DIR`: a
//! proxy gets its certificate from its CA with a bootstrap token from `--bootstrap-tokens`,
//! follows a Service's routes through its discovery, and follows a change of the
//! directory; the API answers from the same state, to addresses and `localhost` only (as
//! does the proxy's admin listener); SIGTERM stops it with exit 0 while the
//! proxy is still connected.

use std::time::Duration;
use tarmac_testkit::control::ControlProcess;
use tarmac_testkit::metrics::{scrape, sum};
use tarmac_testkit::proxy::start;
use tarmac_testkit::tools::{http_get, run, temp_dir};

/// The Service `books` with an HTTPRoute whose one rule answers every request with a
/// redirect of status `code`: what the proxy answers shows which configuration it follows.
fn books(code: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: books}}\nspec:\n  selector: {{app: books}}\n  ports: [{{port: 80}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: books}}\nspec:\n  \
         parentRefs: [{{group: \"\", kind: Service, name: books, port: 80}}]\n  rules:\n  \
         - filters: [{{type: RequestRedirect, requestRedirect: {{hostname: books.example, statusCode: {code}}}}}]\n"
    )
}

// Two workers: the proxy's side of the HTTP/2 shutdown runs while the test waits for the
// process (blocking) on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_binary_certifies_and_configures_a_proxy_and_stops_on_sigterm() {
    let dir = temp_dir("control-bin");
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("books.yaml"), books(301)).unwrap();
    write_token(&dir.join("tokens"), "# proxies started by hand\nweb-token default web\n");
    write_token(&dir.join("token"), "web-token");
    let ca = dir.join("ca");
    let mut control = ControlProcess::spawn(
        &config,
        &["--identity-dir", ca.to_str().unwrap(), "--bootstrap-tokens", dir.join("tokens").to_str().unwrap()],
    );

    // The proxy does not start without a certificate: starting proves the CA answered.
    let proxy = start(&format!(
        "admin: 127.0.0.1:0\ncontrol: {{addr: \"{}\", workload: web, service_account: web}}\n\
         identity: {{trust_anchors: \"{}\", token_file: \"{}\"}}\n\
         outbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    discover: {{port: 80}}\n",
        control.grpc,
        ca.join("anchors.pem").display(),
        dir.join("token").display()
    ))
    .await;
    let issued = sum(
        &scrape(proxy.addrs.admin).await,
        "tarmac_identity_certificate_requests_total",
        &[("result", "issued")],
    );
    assert_eq!(issued, 1.0, "{}", control.log());
    let books_listener = proxy.addrs.service("books").unwrap();
    eventually_status(books_listener, 301, &control).await;

    // The directory changes: the proxy follows, pushed by the binary's discovery.
    std::fs::write(config.join("books.yaml"), books(302)).unwrap();
    eventually_status(books_listener, 302, &control).await;

    // The API serves the same state.
    let (status, routes) = http_get(control.api, "/api/v1/routes?service=books").await;
    assert_eq!(status, 200, "{routes}");
    assert!(routes.contains("books.example") || routes.contains("RequestRedirect"), "{routes}");
    // DNS rebinding: a page whose own name resolves to 127.0.0.1 reaches the API and the
    // proxy's admin with its name as Host, and is refused; addresses and localhost pass.
    for (addr, path) in [(control.api, "/api/v1/routes?service=books"), (proxy.addrs.admin, "/config")] {
        let status = |host: &str| {
            let (url, header) = (format!("http://{addr}{path}"), format!("Host: {host}"));
            async move {
                let out =
                    run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &header, &url]).await;
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        assert_eq!(status(&format!("rebind.example:{}", addr.port())).await, "403", "{addr}");
        assert_eq!(status(&format!("localhost:{}", addr.port())).await, "200", "{addr}");
        assert_eq!(status(&addr.to_string()).await, "200", "{addr}");
    }
    // It runs no workloads: a restart is refused with where to make it.
    let client = tarmac_control::http_client::HttpClient::new(control.api, std::time::Duration::from_secs(5));
    let restart = client.post("/api/v1/workloads/default/books/restart").await.unwrap();
    let text = String::from_utf8_lossy(&restart.body);
    assert_eq!(restart.status, 501, "{text}");
    assert!(text.contains("does not run the workloads"), "{text}");

    // A token is good once: a second proxy with it is refused (the file is written again:
    // a proxy removes its token file once read).
    write_token(&dir.join("token"), "web-token");
    let second = tarmac_proxy::Config::from_yaml(
        &format!(
            "admin: 127.0.0.1:0\ncontrol: {{addr: \"{}\", workload: web, service_account: web}}\n\
             identity: {{trust_anchors: \"{}\", token_file: \"{}\"}}\n\
             outbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    discover: {{port: 80}}\n",
            control.grpc,
            ca.join("anchors.pem").display(),
            dir.join("token").display()
        ),
        "second proxy",
    )
    .unwrap();
    let refused = tarmac_proxy::start(second).await.expect_err("a used token certifies no one").to_string();
    assert!(refused.contains("already used"), "{refused}");

    // SIGTERM with the proxy still following: a clean, prompt exit.
    let status = control.terminate(Duration::from_secs(5)).expect("tarmac-control exits within 5 s");
    assert!(status.success(), "exit {status}\n{}", control.log());
    let log = control.log();
    assert!(log.contains("tarmac-control ready") && log.contains("stopped"), "{log}");
    assert!(!log.contains("did not stop in time"), "{log}");
    // The proxy keeps what it had (fail static).
    let (status, _) = http_get(books_listener, "/").await;
    assert_eq!(status, 302);
}

#[test]
fn a_tokens_file_other_users_can_read_is_refused() {
    let dir = temp_dir("control-bin-tokens");
    std::fs::write(dir.join("tokens"), "web-token default web\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tokens"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = std::process::Command::new(tarmac_testkit::tools::binary("tarmac-control"))
        .arg("--config-dir")
        .arg(&dir)
        .arg("--bootstrap-tokens")
        .arg(dir.join("tokens"))
        .args(["--identity-dir", dir.join("ca").to_str().unwrap(), "--grpc-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mode 644") && stderr.contains("make it 0600"), "{stderr}");
}

#[test]
fn an_invalid_directory_is_refused_with_exit_2_naming_file_and_field() {
    let dir = temp_dir("control-bin-invalid");
    std::fs::write(
        dir.join("books.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec:\n  selecter: {app: books}\n  ports: [{port: 80}]\n",
    )
    .unwrap();
    let output = std::process::Command::new(tarmac_testkit::tools::binary("tarmac-control"))
        .arg("--config-dir")
        .arg(&dir)
        .args(["--no-identity", "--grpc-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("books.yaml:5") && stderr.contains("Service default/books"), "{stderr}");
    assert!(stderr.contains("selecter"), "{stderr}");
}

/// A token file as the proxy (and `tarmac-control --bootstrap-tokens`) requires it: mode
/// 0600.
fn write_token(path: &std::path::Path, token: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    std::io::Write::write_all(&mut file, token.as_bytes()).unwrap();
}

async fn eventually_status(addr: std::net::SocketAddr, want: u16, control: &ControlProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = http_get(addr, "/").await;
        if status == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {want}, last {status}\n{}", control.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
