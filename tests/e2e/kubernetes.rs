//! Tarmac against the Kubernetes API, with no cluster (docs/kubernetes.md): the
//! `tarmac-control --store kubernetes` binary against a scripted API server on loopback
//! (`tarmac_testkit::apiserver`), reached through a kubeconfig, configuring a proxy; and
//! `tarmac install --crds` against the API's published schemas (`kubernetes-validate`).

use serde_json::{Value, json};
use std::time::Duration;
use tarmac_testkit::apiserver::ApiServer;
use tarmac_testkit::control::ControlProcess;
use tarmac_testkit::proxy::start;
use tarmac_testkit::tools::{binary, http_get, temp_dir};

const SERVICES: &str = "/api/v1/services";
const HTTPROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";

/// The Service `books` as the API server holds it.
fn books() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "books", "namespace": "default", "labels": {"app": "books"}},
        "spec": {"clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"], "type": "ClusterIP",
                 "sessionAffinity": "None", "selector": {"app": "books"},
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]},
        "status": {"loadBalancer": {}}
    })
}

/// An HTTPRoute on `books` whose one rule answers with a redirect of status `code`: what
/// the proxy answers shows which version it follows.
fn redirect(code: u16) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "books", "namespace": "default", "generation": 1},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
            "rules": [{"filters": [{"type": "RequestRedirect",
                                    "requestRedirect": {"hostname": "books.example", "statusCode": code}}]}]
        }
    })
}

// Two workers: the scripted API server and the proxy run in this process while the test
// waits on the control plane's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_binary_configures_a_proxy_from_the_kubernetes_api() {
    let server = ApiServer::start().await;
    server.apply(SERVICES, books());
    server.apply(HTTPROUTES, redirect(301));
    let dir = temp_dir("kube-control");
    let kubeconfig = server.kubeconfig(&dir);
    let mut control = ControlProcess::spawn_with(&[
        "--store",
        "kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--no-identity",
    ]);

    let proxy = start(&format!(
        "admin: 127.0.0.1:0\ncontrol: {{addr: \"{}\", workload: web, service_account: web}}\n\
         outbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    discover: {{port: 80}}\n",
        control.grpc,
    ))
    .await;
    let books_listener = proxy.addrs.service("books").unwrap();
    eventually_status(books_listener, 301, &control).await;

    // The one replica holds the Lease and writes the route's status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let accepted = |server: &ApiServer| {
        let route = server.get(HTTPROUTES, "default", "books")?;
        let parent = route["status"]["parents"].as_array()?.first()?.clone();
        Some((
            parent["controllerName"].clone(),
            parent["conditions"][0]["type"].clone(),
            parent["conditions"][0]["status"].clone(),
        ))
    };
    while accepted(&server).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no route status written:\n{}", control.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted(&server).unwrap(), (json!("tarmac.io/mesh"), json!("Accepted"), json!("True")));

    // The route is MODIFIED through the API: the proxy follows.
    server.apply(HTTPROUTES, redirect(302));
    eventually_status(books_listener, 302, &control).await;

    // A change Gateway API allows but the mesh cannot honour (a Gateway parent besides
    // the Service): named in `tarmac check`, while the route's last accepted version
    // keeps serving.
    let mut gateway_parent = redirect(307);
    gateway_parent["spec"]["parentRefs"].as_array_mut().unwrap().push(json!({"name": "edge"}));
    server.apply(HTTPROUTES, gateway_parent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let check = loop {
        let (_, check) = http_get(control.api, "/api/v1/check").await;
        if check.contains("parentRefs[1]") || tokio::time::Instant::now() > deadline {
            break check;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(check.contains("kubernetes: HTTPRoute default/books: field `spec.parentRefs[1]`"), "{check}");
    let (status, _) = http_get(books_listener, "/").await;
    assert_eq!(status, 302);

    let status = control.terminate(Duration::from_secs(5)).expect("tarmac-control exits within 5 s");
    assert!(status.success(), "exit {status}\n{}", control.log());
    assert!(control.log().contains("the Kubernetes API listed"), "{}", control.log());
}

#[test]
fn the_control_plane_binary_names_the_kinds_it_could_not_list() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(ApiServer::start());
    server.not_served("/api/v1/pods");
    let dir = temp_dir("kube-control-unlisted");
    let output = std::process::Command::new(binary("tarmac-control"))
        .args(["--store", "kubernetes", "--kubeconfig", server.kubeconfig(&dir).to_str().unwrap()])
        .args(["--kube-sync-timeout", "2s", "--no-identity", "--grpc-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not list Pod within 2s"), "{stderr}");
}

#[test]
fn the_crds_validate_against_the_api_schemas() {
    let out = std::process::Command::new(binary("tarmac")).args(["install", "--crds"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let crds = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = crds
        .split("---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .map(|crd| format!("{} {}", crd["kind"].as_str().unwrap(), crd["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition faultinjections.tarmac.io",
            "CustomResourceDefinition resiliencepolicies.tarmac.io",
            "CustomResourceDefinition authorizationpolicies.tarmac.io",
            "CustomResourceDefinition ratelimitpolicies.tarmac.io",
            "CustomResourceDefinition telemetries.tarmac.io",
        ]
    );
    if crate::inject::validate_strict("crds.yaml", &crds) {
        // The validator refuses what the API would: a misspelt field of the CRD itself.
        let typo = crds.replacen("listKind:", "listKnd:", 1);
        let path = temp_dir("kube-crds").join("typo.yaml");
        std::fs::write(&path, typo).unwrap();
        let out =
            std::process::Command::new("kubernetes-validate").arg("--strict").arg(&path).output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && report.contains("'listKnd' was unexpected"), "{report}");
    }
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
