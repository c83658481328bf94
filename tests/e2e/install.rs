//! `tarmac install`, `tarmac uninstall` and `tarmac check --pre` (docs/kubernetes.md), with
//! no cluster: the printed objects against the API's published schemas
//! (`kubernetes-validate --strict`), the Deployment's command line against the real
//! `tarmac-control`, the generated certificates verified by openssl and rustls, the RBAC
//! against every request `tarmac-control --store kubernetes` makes, and `--apply`,
//! `uninstall --apply` and `check --pre` against the scripted API server.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;
use tarmac_testkit::apiserver::ApiServer;
use tarmac_testkit::control::ControlProcess;
use tarmac_testkit::tools::{binary, temp_dir};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const NAMESPACES: &str = "/api/v1/namespaces";
const SECRETS: &str = "/api/v1/secrets";

fn tarmac(args: &[&str]) -> Output {
    Command::new(binary("tarmac")).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("---\n").map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap()).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn secret_data(secret: &Value, key: &str) -> String {
    use base64::Engine;
    let text = secret["data"][key].as_str().unwrap_or_else(|| panic!("no {key}"));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text).unwrap()).unwrap()
}

#[test]
fn install_prints_every_object_in_order_and_each_validates_against_the_api_schemas() {
    let yaml = stdout(&tarmac(&["install"]));
    let docs = documents(&yaml);
    let order: Vec<String> = docs
        .iter()
        .map(|d| format!("{} {}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            "CustomResourceDefinition faultinjections.tarmac.io",
            "CustomResourceDefinition resiliencepolicies.tarmac.io",
            "CustomResourceDefinition authorizationpolicies.tarmac.io",
            "CustomResourceDefinition ratelimitpolicies.tarmac.io",
            "CustomResourceDefinition telemetries.tarmac.io",
            "Namespace tarmac-system",
            "ServiceAccount tarmac-control",
            "ClusterRole tarmac-control",
            "ClusterRoleBinding tarmac-control",
            "Role tarmac-control",
            "RoleBinding tarmac-control",
            "Secret tarmac-identity",
            "Secret tarmac-webhook-tls",
            "Service tarmac-control",
            "Service tarmac-webhook",
            "Deployment tarmac-control",
            "PodDisruptionBudget tarmac-control",
            "MutatingWebhookConfiguration tarmac-sidecar-injector",
        ]
    );
    let namespace = find(&docs, "Namespace", "tarmac-system");
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    let deployment = find(&docs, "Deployment", "tarmac-control");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("tarmac/control:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(find(&docs, "PodDisruptionBudget", "tarmac-control")["spec"]["minAvailable"], 1);
    // Never the control plane's own pods, nor kube-system's: the control plane must not
    // wait for itself to start.
    let webhook = find(&docs, "MutatingWebhookConfiguration", "tarmac-sidecar-injector");
    for hook in webhook["webhooks"].as_array().unwrap() {
        let excluded = hook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name")
            .expect("a selector on the namespace's name");
        assert_eq!(excluded["operator"], "NotIn");
        assert_eq!(excluded["values"], json!(["kube-system", "tarmac-system"]));
        assert_eq!(hook["clientConfig"]["service"]["name"], "tarmac-webhook");
    }
    if crate::inject::validate_strict("install.yaml", &yaml) {
        // And at the oldest Kubernetes Tarmac supports (native sidecars).
        let path = temp_dir("install-validate").join("install-1.29.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", "1.29.0"])
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !report.contains("ERROR"), "{report}");
        assert_eq!(report.matches("passed").count(), docs.len(), "{report}");
    }

    // The flags reach the objects; --crds alone cannot take them.
    let yaml = stdout(&tarmac(&[
        "install",
        "--namespace",
        "mesh",
        "--image",
        "registry.example/control:dev",
        "--replicas",
        "3",
        "--identity-external",
    ]));
    let docs = documents(&yaml);
    assert!(
        !yaml.contains("tarmac-identity\n  namespace")
            && !docs.iter().any(|d| d["metadata"]["name"] == "tarmac-identity")
    );
    let deployment = find(&docs, "Deployment", "tarmac-control");
    assert_eq!(deployment["metadata"]["namespace"], "mesh");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&json!("--identity-secret=mesh/tarmac-identity")), "{args:?}");
    let cert = secret_data(find(&docs, "Secret", "tarmac-webhook-tls"), "tls.crt");
    let webhook_names = cert_names(&cert);
    assert!(webhook_names.contains("DNS:tarmac-webhook.mesh.svc"), "{webhook_names}");
    let out = tarmac(&["install", "--crds", "--image", "x"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

fn cert_names(pem: &str) -> String {
    let path = temp_dir("install-cert").join("cert.pem");
    std::fs::write(&path, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl verify` of `cert` against `ca` (and, when given, for `hostname`).
fn openssl_verify(ca: &str, cert: &str, hostname: Option<&str>) -> (bool, String) {
    let dir = temp_dir("install-verify");
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    let mut command = Command::new("openssl");
    command.arg("verify").arg("-CAfile").arg(dir.join("ca.pem"));
    if let Some(hostname) = hostname {
        command.args(["-verify_hostname", hostname]);
    }
    let out = command.arg(dir.join("cert.pem")).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn the_generated_certificates_chain_as_the_api_server_and_proxies_check_them() {
    use base64::Engine;
    let docs = documents(&stdout(&tarmac(&["install"])));
    // The webhook: its serving certificate is for the Service's name and chains to the
    // caBundle the API server is given.
    let secret = find(&docs, "Secret", "tarmac-webhook-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let (ca, cert) = (secret_data(secret, "ca.crt"), secret_data(secret, "tls.crt"));
    let webhook = find(&docs, "MutatingWebhookConfiguration", "tarmac-sidecar-injector");
    for hook in webhook["webhooks"].as_array().unwrap() {
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(hook["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(bundle).unwrap(), ca);
    }
    let (ok, report) = openssl_verify(&ca, &cert, Some("tarmac-webhook.tarmac-system.svc"));
    assert!(ok, "{report}");
    // The attack: the same certificate presented for another Service's name is refused,
    // and so is one signed by another install's CA.
    let (ok, report) = openssl_verify(&ca, &cert, Some("evil.tarmac-system.svc"));
    assert!(!ok, "{report}");
    let other = documents(&stdout(&tarmac(&["install"])));
    let other_ca = secret_data(find(&other, "Secret", "tarmac-webhook-tls"), "ca.crt");
    let (ok, report) = openssl_verify(&other_ca, &cert, None);
    assert!(!ok, "{report}");
    // And the webhook really serves with it: tarmac-control's own TLS setup takes the pair.
    let dir = temp_dir("install-webhook-pair");
    std::fs::write(dir.join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.join("tls.key"), secret_data(secret, "tls.key")).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    tarmac_control::inject::webhook::tls_config(cert_path.to_str().unwrap(), key_path.to_str().unwrap())
        .expect("the webhook's TLS takes the Secret");

    // The mesh's CA, cert-manager's shape: the issuer is a CA chaining to ca.crt, with its key.
    let secret = find(&docs, "Secret", "tarmac-identity");
    let (anchors, issuer, key) =
        (secret_data(secret, "ca.crt"), secret_data(secret, "tls.crt"), secret_data(secret, "tls.key"));
    let ca =
        tarmac_identity::ca::Ca::from_issuer(&anchors, &issuer, &key).expect("a CA the control plane loads");
    assert!(ca.issuer_info().is_ca);
    ca.check_chains_to_anchors().expect("what it issues verifies against ca.crt");
    let (ok, report) = openssl_verify(&anchors, &issuer, None);
    assert!(ok, "{report}");
    // Not the webhook's CA: a workload certificate must never pass as the webhook.
    assert_ne!(anchors, secret_data(find(&docs, "Secret", "tarmac-webhook-tls"), "ca.crt"));
}

/// The Deployment's args, which the kubelet passes as they are (no `$(VAR)` to expand).
fn deployment_args() -> Vec<String> {
    let docs = documents(&stdout(&tarmac(&["install"])));
    let deployment = find(&docs, "Deployment", "tarmac-control");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> =
        container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert!(args.iter().all(|a| !a.contains("$(")), "a variable for the kubelet to expand: {args:?}");
    args
}

fn flag(arg: &str) -> &str {
    arg.split('=').next().unwrap()
}

#[test]
fn the_deployments_args_are_accepted_by_the_real_tarmac_control() {
    let args = deployment_args();
    assert!(
        args.contains(&"--sidecar-control-addr=tarmac-control.tarmac-system.svc:4180".to_string()),
        "{args:?}"
    );
    assert!(args.len() >= 8, "{args:?}");
    // clap parses left to right and stops at --help: an unknown flag or a bad value
    // before it fails the parse, exit 2.
    let out = Command::new(binary("tarmac-control")).args(&args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{:?} refused:\n{}", args, String::from_utf8_lossy(&out.stderr));
    // The check is real: a misspelt flag fails it.
    let out =
        Command::new(binary("tarmac-control")).arg("--grpc-lisen=0.0.0.0:1").arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A request to the API as RBAC sees it.
#[derive(Debug)]
struct Attributes {
    verb: String,
    group: String,
    resource: String,
    namespace: String,
    name: String,
}

/// RBAC's reading of `METHOD PATH?QUERY` (the API's request attributes).
fn attributes(request: &str) -> Attributes {
    let (method, url) = request.split_once(' ').unwrap();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let param = |name: &str| {
        query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')).map(|v| v.replace("%3D", "="))
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts[0] {
        "api" => (String::new(), &parts[2..]),
        _ => (parts[1].to_string(), &parts[3..]),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        rest => (String::new(), rest),
    };
    let resource = match rest {
        [plural, _, sub] => format!("{plural}/{sub}"),
        [plural, ..] => plural.to_string(),
        [] => panic!("not a resource request: {request}"),
    };
    let mut name = rest.get(1).map(|n| n.to_string()).unwrap_or_default();
    let verb = match method {
        "GET" if param("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        "GET" if rest.len() == 1 => "list",
        "GET" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        other => panic!("{other}"),
    };
    if rest.len() == 1
        && let Some(selected) =
            param("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=").map(str::to_string))
    {
        name = selected;
    }
    Attributes { verb: verb.into(), group, resource, namespace, name }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().map(|v| v.as_str().unwrap().to_string()).collect()
}

// Two workers: the scripted API server runs in this process while the test waits on the
// control plane's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_rbac_allows_every_request_tarmac_control_makes_and_nothing_it_does_not() {
    let docs = documents(&stdout(&tarmac(&["install"])));
    // The rules, each `(role, rule index, resource, verb)` for the unused check.
    let mut rules: Vec<(&str, Value)> = Vec::new();
    for kind in ["ClusterRole", "Role"] {
        for rule in find(&docs, kind, "tarmac-control")["rules"].as_array().unwrap() {
            rules.push((kind, rule.clone()));
        }
    }
    let server = ApiServer::start().await;
    let seed = |path: &str, value: Value| server.apply(path, value);
    seed(
        "/api/v1/services",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "books", "namespace": "default"},
        "spec": {"selector": {"app": "books"}, "ports": [{"port": 80, "protocol": "TCP"}]}}),
    );
    // A route, so that its status is written (patch on httproutes/status); grpcroutes/status
    // is the same code path for the other kind.
    seed(
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "books", "namespace": "default", "generation": 1},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
                 "rules": [{"backendRefs": [{"name": "books", "port": 80}]}]}}),
    );
    seed(
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "books-grpc", "namespace": "default", "generation": 1},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
                 "rules": [{"backendRefs": [{"name": "books", "port": 80}]}]}}),
    );
    // The mesh's CA as install creates it, for a control plane that reads it
    // (--identity-secret).
    seed(SECRETS, find(&docs, "Secret", "tarmac-identity").clone());
    let dir = temp_dir("install-rbac");
    let kubeconfig = server.kubeconfig(&dir);
    // The Deployment's own command line, on loopback ports, with the webhook's generated
    // certificate written where the Secret would be mounted.
    let secret = find(&docs, "Secret", "tarmac-webhook-tls");
    std::fs::write(dir.join("tls.crt"), secret_data(secret, "tls.crt")).unwrap();
    std::fs::write(dir.join("tls.key"), secret_data(secret, "tls.key")).unwrap();
    let args = deployment_args();
    let webhook = format!("127.0.0.1:{}", tarmac_testkit::servers::free_port());
    let mut run: Vec<String> = Vec::new();
    for arg in &args {
        match flag(arg) {
            "--grpc-listen" | "--api-listen" => {} // ControlProcess gives loopback ports
            "--webhook-listen" => run.push(format!("--webhook-listen={webhook}")),
            "--webhook-cert" => run.push(format!("--webhook-cert={}", dir.join("tls.crt").display())),
            "--webhook-key" => run.push(format!("--webhook-key={}", dir.join("tls.key").display())),
            _ => run.push(arg.clone()),
        }
    }
    run.push(format!("--kubeconfig={}", kubeconfig.display()));
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let mut control = ControlProcess::spawn_with(&run);
    // A sidecar bootstraps with its ServiceAccount token, as an injected one does: the
    // control plane reviews it (create on tokenreviews).
    std::fs::write(dir.join("anchors.pem"), secret_data(find(&docs, "Secret", "tarmac-identity"), "ca.crt"))
        .unwrap();
    let token = server.mint_token(&["tarmac"], "default", "books", "books-1");
    std::fs::write(dir.join("token"), &token).unwrap();
    let proxy = tarmac_testkit::proxy::start(&format!(
        "admin: 127.0.0.1:0\ninbound: {{listen: 127.0.0.1:0, app: \"127.0.0.1:9\"}}\n\
         control: {{addr: \"{}\", namespace: default, service_account: books}}\n\
         identity: {{trust_anchors: \"{}\", service_account_token: \"{}\"}}\n",
        control.grpc,
        dir.join("anchors.pem").display(),
        dir.join("token").display()
    ))
    .await;
    // Wait for the Lease to be taken (create) and renewed (update, every 5 s) and both
    // routes' status written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = |requests: &[String]| {
        requests.iter().any(|r| {
            r.starts_with("PUT /apis/coordination.k8s.io/v1/namespaces/tarmac-system/leases/tarmac-control")
        }) && requests.iter().any(|r| r.starts_with("PATCH") && r.contains("httproutes/books/status"))
            && requests.iter().any(|r| r.starts_with("PATCH") && r.contains("grpcroutes/books-grpc/status"))
    };
    while !done(&server.requests()) {
        assert!(tokio::time::Instant::now() < deadline, "{:#?}\n{}", server.requests(), control.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.token_reviews(), 1, "the sidecar's token was reviewed");
    drop(proxy);
    let status = control.terminate(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{}", control.log());

    let mut used: BTreeSet<(usize, String, String)> = BTreeSet::new();
    for request in server.requests() {
        let a = attributes(&request);
        let allowed = rules.iter().enumerate().find(|(_, (kind, rule))| {
            (*kind == "ClusterRole" || a.namespace == "tarmac-system")
                && strings(&rule["apiGroups"]).contains(&a.group)
                && strings(&rule["resources"]).contains(&a.resource)
                && strings(&rule["verbs"]).contains(&a.verb)
                && (rule["resourceNames"].is_null() || strings(&rule["resourceNames"]).contains(&a.name))
        });
        let Some((index, _)) = allowed else {
            panic!("the printed RBAC does not allow {request} ({a:?})");
        };
        used.insert((index, a.resource.clone(), a.verb.clone()));
    }
    // Every rule's every resource and verb was needed.
    for (index, (_, rule)) in rules.iter().enumerate() {
        for resource in strings(&rule["resources"]) {
            for verb in strings(&rule["verbs"]) {
                assert!(
                    used.contains(&(index, resource.clone(), verb.clone())),
                    "rule {index} grants {verb} on {resource}, which tarmac-control never used:\n{:#?}",
                    server.requests()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_apply_creates_everything_in_order_and_a_second_run_changes_nothing() {
    let server = ApiServer::start().await;
    server.establish_crds_after_reads(3);
    let dir = temp_dir("install-apply");
    let kubeconfig = server.kubeconfig(&dir);
    let kubeconfig = kubeconfig.to_str().unwrap();
    let first = stdout(&tarmac(&["install", "--apply", "--kubeconfig", kubeconfig]));
    assert_eq!(first.matches(": created").count(), 18, "{first}");
    // Applied in order, the namespace before what lives in it, each CRD established
    // before the next object (the server establishes a CRD on its third read).
    let writes: Vec<String> =
        server.writes().iter().map(|w| w.split(' ').nth(2).unwrap().to_string()).collect();
    assert!(writes[0].starts_with(CRDS), "{writes:#?}");
    let established = server.requests().iter().filter(|r| r.starts_with(&format!("GET {CRDS}/"))).count();
    assert!(established >= 5 * 3, "{:#?}", server.requests());
    for crd in ["faultinjections.tarmac.io", "telemetries.tarmac.io"] {
        let crd = server.get(CRDS, "", crd).unwrap();
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
    }
    let identity = server.get(SECRETS, "tarmac-system", "tarmac-identity").expect("the identity Secret");
    let webhook_tls = server.get(SECRETS, "tarmac-system", "tarmac-webhook-tls").expect("the webhook Secret");
    let deployment = server.get("/apis/apps/v1/deployments", "tarmac-system", "tarmac-control").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(server.get(NAMESPACES, "", "tarmac-system").is_some());

    // --crds --apply: the CRDs alone, unchanged.
    let crds = stdout(&tarmac(&["install", "--crds", "--apply", "--kubeconfig", kubeconfig]));
    assert_eq!(crds.lines().count(), 5, "{crds}");
    assert!(
        crds.lines().all(|l| l.starts_with("CustomResourceDefinition ") && l.ends_with(": unchanged")),
        "{crds}"
    );

    // Again: nothing changes, the Secrets are not regenerated, and the webhook's caBundle
    // stays the CA in the Secret.
    let writes = server.writes().len();
    let second = stdout(&tarmac(&["install", "--apply", "--kubeconfig", kubeconfig]));
    assert_eq!(second.matches(": unchanged").count(), 16, "{second}");
    assert!(second.contains("Secret tarmac-system/tarmac-identity: kept"), "{second}");
    assert!(second.contains("Secret tarmac-system/tarmac-webhook-tls: kept"), "{second}");
    assert_eq!(server.writes().len(), writes, "{:#?}", &server.writes()[writes..]);
    assert_eq!(server.get(SECRETS, "tarmac-system", "tarmac-identity").unwrap(), identity);
    assert_eq!(server.get(SECRETS, "tarmac-system", "tarmac-webhook-tls").unwrap(), webhook_tls);

    // A changed flag configures what it changes, nothing else.
    let third = stdout(&tarmac(&["install", "--apply", "--kubeconfig", kubeconfig, "--replicas", "3"]));
    assert!(third.contains("Deployment tarmac-system/tarmac-control: configured"), "{third}");
    assert_eq!(third.matches(": configured").count(), 1, "{third}");
    let deployment = server.get("/apis/apps/v1/deployments", "tarmac-system", "tarmac-control").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_deletes_only_tarmacs_objects_in_reverse_order_and_keeps_the_crds_unless_asked() {
    let server = ApiServer::start().await;
    let dir = temp_dir("install-uninstall");
    let kubeconfig = server.kubeconfig(&dir);
    let kubeconfig = kubeconfig.to_str().unwrap();
    stdout(&tarmac(&["install", "--apply", "--kubeconfig", kubeconfig]));
    // A user's namespace, workload and policy.
    server.apply(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"tarmac.io/inject": "enabled"}}}));
    server.apply(
        "/api/v1/services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "books", "namespace": "shop"}}),
    );
    server.apply("/apis/tarmac.io/v1alpha1/faultinjections", json!({"apiVersion": "tarmac.io/v1alpha1", "kind": "FaultInjection", "metadata": {"name": "slow", "namespace": "shop"}}));

    // Without --apply: a list, and nothing deleted.
    let out = tarmac(&["uninstall"]);
    let listed = stdout(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keep their sidecars until they are restarted"), "{stderr}");
    assert!(stderr.contains("CRDs and their objects are kept"), "{stderr}");
    assert_eq!(
        listed.lines().next(),
        Some("MutatingWebhookConfiguration tarmac-sidecar-injector"),
        "{listed}"
    );
    assert_eq!(listed.lines().last(), Some("Namespace tarmac-system"), "{listed}");
    assert!(!listed.contains("CustomResourceDefinition"), "{listed}");
    let before = server.objects();
    assert!(before.len() > 20);

    let out = stdout(&tarmac(&["uninstall", "--apply", "--kubeconfig", kubeconfig]));
    assert!(out.contains("Namespace tarmac-system: deleted"), "{out}");
    let left = server.objects();
    assert_eq!(
        left,
        [
            "CustomResourceDefinition /authorizationpolicies.tarmac.io",
            "CustomResourceDefinition /faultinjections.tarmac.io",
            "CustomResourceDefinition /ratelimitpolicies.tarmac.io",
            "CustomResourceDefinition /resiliencepolicies.tarmac.io",
            "CustomResourceDefinition /telemetries.tarmac.io",
            "FaultInjection shop/slow",
            "Namespace /shop",
            "Service shop/books",
        ]
    );
    // Deleted in the reverse of install's order: the webhook first (no pod creation waits
    // on a control plane being deleted), the namespace last.
    let deletes: Vec<String> = server.writes().into_iter().filter(|w| w.contains(" DELETE ")).collect();
    assert!(deletes[0].contains("mutatingwebhookconfigurations"), "{deletes:#?}");
    assert!(deletes.last().unwrap().ends_with("/api/v1/namespaces/tarmac-system"), "{deletes:#?}");

    // Again: everything already gone is fine. Then --crds.
    let again = stdout(&tarmac(&["uninstall", "--apply", "--kubeconfig", kubeconfig]));
    assert!(again.lines().all(|l| l.ends_with("not found (already gone)")), "{again}");
    let out = stdout(&tarmac(&["uninstall", "--apply", "--crds", "--kubeconfig", kubeconfig]));
    assert!(out.contains("CustomResourceDefinition faultinjections.tarmac.io: deleted"), "{out}");
    assert!(server.objects().iter().all(|o| !o.starts_with("CustomResourceDefinition")));
    assert!(server.get(NAMESPACES, "", "shop").is_some());
}

fn gateway_crd(plural: &str, kind: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"name": v, "served": true, "storage": *v == "v1", "schema": {"openAPIV3Schema": {"type": "object"}}}))
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.gateway.networking.k8s.io")},
        "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                 "names": {"plural": plural, "kind": kind}, "versions": versions}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_pre_passes_a_cluster_that_can_take_tarmac_and_names_what_another_lacks() {
    let server = ApiServer::start().await;
    let dir = temp_dir("install-check-pre");
    let kubeconfig = server.kubeconfig(&dir);
    let kubeconfig = kubeconfig.to_str().unwrap();
    server.apply(CRDS, gateway_crd("httproutes", "HTTPRoute", &["v1", "v1beta1"]));
    server.apply(CRDS, gateway_crd("grpcroutes", "GRPCRoute", &["v1"]));
    server.serve_group(
        "admissionregistration.k8s.io/v1",
        &[
            ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", false),
            ("validatingwebhookconfigurations", "ValidatingWebhookConfiguration", false),
        ],
    );
    let out = tarmac(&["check", "--pre", "--kubeconfig", kubeconfig]);
    let report = stdout(&out);
    assert!(report.contains("√ Kubernetes version: 1.31"), "{report}");
    assert!(report.contains("√ may create clusterroles"), "{report}");
    assert!(report.contains("√ may create deployments in tarmac-system"), "{report}");
    assert!(report.contains("√ Gateway API GRPCRoute"), "{report}");
    assert!(report.contains("√ namespace tarmac-system: does not exist yet"), "{report}");
    assert!(!report.contains('×'), "{report}");
    // One review per kind install creates.
    let reviews = server.requests().iter().filter(|r| r.contains("selfsubjectaccessreviews")).count();
    assert_eq!(reviews, 12, "{:#?}", server.requests());
    // After an install of this version, it still passes.
    stdout(&tarmac(&["install", "--apply", "--kubeconfig", kubeconfig]));
    let report = stdout(&tarmac(&["check", "--pre", "--kubeconfig", kubeconfig]));
    assert!(report.contains("√ namespace tarmac-system: holds Tarmac"), "{report}");

    // A cluster that cannot take it: every reason named, exit 1.
    let server = ApiServer::start().await;
    let kubeconfig = server.kubeconfig(&dir);
    let kubeconfig = kubeconfig.to_str().unwrap();
    server.set_version("1", "28+");
    server.deny("create", "rbac.authorization.k8s.io", "clusterroles");
    server.apply(CRDS, gateway_crd("httproutes", "HTTPRoute", &["v1beta1"]));
    server.apply(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tarmac-system"}}),
    );
    let out = tarmac(&["check", "--pre", "--kubeconfig", kubeconfig]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "× Kubernetes version: 1.28: injection needs 1.29 or later",
        "× may create clusterroles: not allowed: denied by the scripted server",
        "× Gateway API HTTPRoute: httproutes.gateway.networking.k8s.io serves v1beta1 but not v1",
        "× Gateway API GRPCRoute: no CRD grpcroutes.gateway.networking.k8s.io",
        "× admission webhooks: admissionregistration.k8s.io/v1 is not served",
        "× namespace tarmac-system: exists and is not Tarmac's",
        "√ may create deployments in tarmac-system",
    ] {
        assert!(report.contains(expected), "{expected}\n{report}");
    }
    assert!(report.contains("hint: install the Gateway API CRDs"), "{report}");

    // No API server at all.
    drop(server);
    let out = tarmac(&["check", "--pre", "--kubeconfig", kubeconfig]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.contains("× API server reachable"), "{report}");
}
