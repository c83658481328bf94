//! Sidecar injection as the API server meets it: the `tarmac-control` binary serving its
//! mutating admission webhook (`--webhook-listen`) over TLS with a serving certificate
//! made by `openssl` for the name the API server calls it by, sent `admission.k8s.io/v1`
//! AdmissionReviews of Pod CREATEs by curl (`--cacert`, the name resolved to loopback).
//! Each returned JSON patch is applied to the pod and must give exactly what
//! `tarmac inject` gives for the same pod; pods that do not opt in get no patch.

use base64::Engine;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use tarmac_testkit::control::ControlProcess;
use tarmac_testkit::servers::free_port;
use tarmac_testkit::tools::{binary, temp_dir};

/// The webhook's Service name, as the certificate and the API server know it.
const HOST: &str = "tarmac-webhook.tarmac-system.svc";
const IMAGE: &str = "registry.local/tarmac/proxy:test";

struct Webhook {
    control: ControlProcess,
    port: u16,
    ca: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn start_webhook() -> Webhook {
    let dir = temp_dir("inject-webhook");
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"];
    openssl(
        &dir,
        &[
            &["req", "-x509"][..],
            &key,
            &["-subj", "/CN=test webhook CA", "-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    let san = format!("subjectAltName=DNS:{HOST}");
    openssl(
        &dir,
        &[
            &["req", "-x509", "-CA", "ca.crt", "-CAkey", "ca.key"][..],
            &key,
            &[
                "-subj",
                "/CN=tarmac-webhook",
                "-addext",
                &san,
                "-keyout",
                "webhook.key",
                "-out",
                "webhook.crt",
            ],
        ]
        .concat(),
    );
    let (cert, key) = (dir.join("webhook.crt"), dir.join("webhook.key"));
    let tls =
        ["--webhook-cert", cert.to_str().unwrap(), "--webhook-key", key.to_str().unwrap(), "--no-identity"];
    spawn_webhook(&dir, &tls, dir.join("ca.crt"))
}

/// `tarmac-control` with its webhook on a free port, TLS as `tls` says, trusted through
/// the CA in `ca`.
fn spawn_webhook(dir: &Path, tls: &[&str], ca: std::path::PathBuf) -> Webhook {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [&["--webhook-listen", &listen, "--proxy-image", IMAGE][..], tls].concat();
    let control = ControlProcess::spawn(&config, &args);
    Webhook { control, port, ca: ca.display().to_string() }
}

impl Webhook {
    /// POSTs `body` to `path`; the status and the body of the answer.
    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        let mut curl = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert", &self.ca])
            .args(["--resolve", &format!("{HOST}:{}:127.0.0.1", self.port)])
            .args(["-H", &format!("Content-Type: {content_type}"), "--data-binary", "@-"])
            .args(["-w", "\n%{http_code}", &format!("https://{HOST}:{}{path}", self.port)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run curl");
        std::io::Write::write_all(&mut curl.stdin.take().unwrap(), body).unwrap();
        let out = curl.wait_with_output().unwrap();
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), body.to_string())
    }

    /// Reviews a Pod CREATE in `namespace`; the AdmissionReview answered.
    fn review(&self, path: &str, uid: &str, namespace: &str, pod: &Value) -> Value {
        let (status, body) =
            self.post(path, "application/json", review(uid, namespace, pod).to_string().as_bytes());
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], uid);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        answer
    }
}

/// An AdmissionReview as the API server sends it for a Pod a ReplicaSet creates (the
/// field layout of the kube-apiserver Admission (v1) reference).
fn review(uid: &str, namespace: &str, pod: &Value) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5d6c3a3e-4f1b-4c55-9a6f-2f1f1d0b8e11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// A pod as a ReplicaSet creates it: a generated name, no namespace in the object.
fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "books-7d4b9c-",
            "labels": {"app": "books", "pod-template-hash": "7d4b9c"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "books-7d4b9c",
                                 "uid": "0b1c2d3e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "containers": [{"name": "books", "image": "books:1", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {}, "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "books",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
        },
    })
}

/// The pod after the answer's patch, or `None` when the answer has no patch.
fn patched(pod: &Value, answer: &Value) -> Option<Value> {
    let response = &answer["response"];
    let encoded = response.get("patch")?.as_str().expect("a base64 string");
    assert_eq!(response["patchType"], "JSONPatch");
    let ops: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
    let mut pod = pod.clone();
    // Applied by an implementation other than the webhook's, as the API server does.
    let ops: json_patch::Patch = serde_json::from_value(ops).expect("an RFC 6902 patch");
    json_patch::patch(&mut pod, &ops).unwrap();
    Some(pod)
}

/// What `tarmac inject` makes of `pod` (the binary, with the webhook's settings).
fn tarmac_inject(pod: &Value, extra: &[&str]) -> Value {
    let mut child = Command::new(binary("tarmac"))
        .args(["inject", "--proxy-image", IMAGE])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tarmac inject");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), pod.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tarmac inject: {}", String::from_utf8_lossy(&out.stderr));
    serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[test]
fn the_webhook_patches_opted_in_pods_as_tarmac_inject_does_and_leaves_others_alone() {
    let webhook = start_webhook();

    // Annotated: injected through either webhook.
    let annotated = pod(json!({"tarmac.io/inject": "enabled"}));
    let answer = webhook.review("/inject", "b6f1d9a2-1", "shop", &annotated);
    let injected = patched(&annotated, &answer).expect("a patch");
    assert_eq!(injected, tarmac_inject(&annotated, &["-n", "shop"]));
    let names: Vec<_> =
        injected["spec"]["initContainers"].as_array().unwrap().iter().map(|c| &c["name"]).collect();
    assert_eq!(names, [&json!("tarmac-init"), &json!("tarmac-proxy")]);
    assert_eq!(injected["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(injected["spec"]["initContainers"][1]["image"], IMAGE);

    // Not annotated: no patch unless the call came for an enabled namespace.
    let plain = pod(json!({}));
    let answer = webhook.review("/inject", "b6f1d9a2-2", "shop", &plain);
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    let answer = webhook.review("/inject/enabled-namespace", "b6f1d9a2-3", "shop", &plain);
    assert_eq!(patched(&plain, &answer).expect("a patch"), tarmac_inject(&plain, &["--all", "-n", "shop"]));

    // Opted out, hostNetwork, already injected: no patch, even in an enabled namespace.
    let mut host_network = pod(json!({}));
    host_network["spec"]["hostNetwork"] = json!(true);
    for (uid, pod) in
        [("c-1", pod(json!({"tarmac.io/inject": "disabled"}))), ("c-2", host_network), ("c-3", injected)]
    {
        let answer = webhook.review("/inject/enabled-namespace", uid, "shop", &pod);
        assert!(answer["response"].get("patch").is_none(), "{uid}: {answer}");
    }

    // Not a Pod CREATE: allowed, untouched.
    let mut update = review("d-1", "shop", &annotated);
    update["request"]["operation"] = json!("UPDATE");
    let (status, body) = webhook.post("/inject", "application/json", update.to_string().as_bytes());
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"], json!({"uid": "d-1", "allowed": true}));

    // A pod that opts in but cannot be injected is refused, naming the field.
    let bad = pod(json!({"tarmac.io/inject": "yes"}));
    let (status, body) =
        webhook.post("/inject", "application/json", review("e-1", "shop", &bad).to_string().as_bytes());
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("metadata.annotations[tarmac.io/inject]"), "{message}");
}

#[test]
fn the_mesh_ca_issues_the_webhook_its_serving_certificate() {
    let dir = temp_dir("inject-webhook-ca");
    let identity = dir.join("identity");
    let webhook =
        spawn_webhook(&dir, &["--identity-dir", identity.to_str().unwrap()], identity.join("anchors.pem"));
    let annotated = pod(json!({"tarmac.io/inject": "enabled"}));
    let answer = webhook.review("/inject", "f-1", "shop", &annotated);
    assert!(patched(&annotated, &answer).is_some(), "{answer}");
}

#[test]
fn malformed_and_oversized_reviews_get_4xx_with_a_reason() {
    let webhook = start_webhook();
    let cases: [(&str, &str, Vec<u8>, u16, &str); 5] = [
        ("/inject", "application/json", b"{\"apiVersion\":".to_vec(), 400, "not JSON"),
        ("/inject", "application/json", br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(), 400, "expected an admission.k8s.io/v1 AdmissionReview"),
        ("/inject", "application/json", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"group":"","version":"v1","kind":"Pod"}}}"#.to_vec(), 400, "request.uid: missing"),
        ("/inject", "text/plain", b"{}".to_vec(), 415, "application/json"),
        ("/elsewhere", "application/json", b"{}".to_vec(), 404, "POST /inject"),
    ];
    for (path, content_type, body, status, reason) in cases {
        let (got, answer) = webhook.post(path, content_type, &body);
        assert_eq!(got, status, "{answer}");
        assert!(answer.contains(reason), "{reason} in {answer}");
    }
    let huge = vec![b' '; tarmac_control::inject::webhook::MAX_BODY_BYTES + 1];
    let (status, answer) = webhook.post("/inject", "application/json", &huge);
    assert_eq!(status, 413, "{answer}");

    // The webhook stops with the control plane.
    let mut webhook = webhook;
    let status = webhook.control.terminate(std::time::Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{status}: {}", webhook.control.log());
}

/// Workloads of every kind that holds a pod template, for `tarmac inject --all`.
const WORKLOADS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: shop}
spec:
  initContainers: [{name: wait, image: busybox:1, command: [sh, -c, "true"]}]
  containers: [{name: sh, image: busybox:1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers: [{name: web, image: web:1, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: db:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: shop}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: report:1}]
"#;

/// `kubernetes-validate --strict` (PyPI, installed by scripts/setup-test-deps.sh) on
/// `yaml`: every document against the API's schemas, unknown fields refused.
pub(crate) fn validate_strict(name: &str, yaml: &str) -> bool {
    if Command::new("kubernetes-validate").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing: run scripts/setup-test-deps.sh"
        );
        eprintln!("SKIPPED: kubernetes-validate is not installed (scripts/setup-test-deps.sh installs it)");
        return false;
    }
    let path = temp_dir("inject-validate").join(name);
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new("kubernetes-validate").arg("--strict").arg(&path).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} does not validate:\n{report}\n{yaml}");
    assert!(!report.contains("ERROR") && !report.contains("WARN"), "{report}");
    true
}

#[test]
fn injected_workloads_and_the_webhook_configuration_validate_against_the_api_schemas() {
    // With the mesh's identity: the sidecar's projected token volume and the anchors too.
    let (anchors, _) = tarmac_identity::ca::generate_root("cluster.local").unwrap();
    let anchors = write_temp("anchors.pem", &anchors);
    let out = Command::new(binary("tarmac"))
        .args(["inject", "--all", "--control-addr", "10.96.0.20:4180", "--trust-anchors"])
        .arg(&anchors)
        .stdin(std::fs::File::open(write_temp("workloads.yaml", WORKLOADS)).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let injected = String::from_utf8(out.stdout).unwrap();
    assert_eq!(injected.matches("tarmac.io/injected").count(), 4, "{injected}");
    assert_eq!(injected.matches("serviceAccountToken").count(), 4, "{injected}");
    assert_eq!(
        injected.matches("tarmac.io/trust-anchors").count(),
        8,
        "annotation and volume item:\n{injected}"
    );

    let dir = temp_dir("inject-install");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=webhook CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    let out = Command::new(binary("tarmac"))
        .args(["install", "--webhook-ca", dir.join("ca.crt").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let install = String::from_utf8(out.stdout).unwrap();
    // The CRDs first, then the webhook's configuration.
    let config: Value = install
        .split("---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .find(|doc| doc["kind"] == "MutatingWebhookConfiguration")
        .expect("the webhook's configuration");
    assert_eq!(install.matches("kind: CustomResourceDefinition").count(), 5, "{install}");
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    for webhook in config["webhooks"].as_array().unwrap() {
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(webhook["clientConfig"]["caBundle"].as_str().unwrap());
        assert_eq!(bundle.unwrap(), ca.as_bytes());
        assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(webhook["sideEffects"], "None");
    }

    if validate_strict("injected.yaml", &injected) {
        validate_strict("install.yaml", &install);
        // The validator refuses what the API would: a field it does not know.
        let line = injected.lines().find(|l| l.trim() == "restartPolicy: Always").unwrap();
        let typo =
            injected.replacen(line, &format!("{line}\n{}", line.replace("restartPolicy", "restartPolcy")), 1);
        let path = write_temp("typo.yaml", &typo);
        let out = Command::new("kubernetes-validate").arg("--strict").arg(&path).output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && report.contains("'restartPolcy' was unexpected"), "{report}");
    }
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let path = temp_dir("inject-files").join(name);
    std::fs::write(&path, text).unwrap();
    path
}
