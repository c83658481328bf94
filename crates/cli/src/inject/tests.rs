use super::*;
use tarmac_control::inject::{CONFIG_ANNOTATION, INJECTED_ANNOTATION, PROXY_CONTAINER};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {tarmac.io/inject: enabled}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: web:1
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data:
  port: "8080"
  flag: "yes"
  nothing: "null"
  script: |
    #!/bin/sh
    echo hi
---
apiVersion: batch/v1
kind: Job
metadata: {name: report}
spec:
  template:
    metadata:
      annotations: {tarmac.io/inject: enabled}
    spec:
      restartPolicy: Never
      containers: [{name: report, image: report:1}]
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: shop
  annotations: {tarmac.io/inject: disabled}
spec:
  containers: [{name: sh, image: busybox}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: shop}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      hostNetwork: true
      containers: [{name: agent, image: agent:1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: legacy, image: legacy:1}]
"#;

fn args(all: bool) -> InjectArgs {
    InjectArgs {
        file: None,
        all,
        namespace: "default".into(),
        proxy_image: inject::default_image(),
        control_addr: Some("10.96.0.20:4180".parse().unwrap()),
        trust_anchors: None,
        token_audience: "tarmac".into(),
    }
}

fn run(text: &str, all: bool) -> (Vec<Value>, Vec<String>) {
    let (output, report) = inject_manifests("test.yaml", text, &args(all)).unwrap();
    (serde_saphyr::from_multiple(&output).unwrap(), report)
}

fn injected(document: &Value, template: &str) -> bool {
    document.pointer(template).unwrap()["metadata"]["annotations"][INJECTED_ANNOTATION].is_string()
}

#[test]
fn opted_in_templates_are_injected_and_everything_else_kept_as_written() {
    let input: Vec<Value> = serde_saphyr::from_multiple(MANIFESTS).unwrap();
    let (output, report) = run(MANIFESTS, false);
    assert_eq!(output.len(), input.len());
    assert!(injected(&output[1], "/spec/template"), "a Deployment in an enabled Namespace of the input");
    assert!(injected(&output[3], "/spec/template"), "an annotated Job in a namespace not enabled");
    assert!(!injected(&output[6], "/spec/template"), "neither annotated nor in an enabled namespace");
    // Documents without pods, opted-out pods and hostNetwork pods are written back as read.
    for i in [0, 2, 4, 5, 6] {
        assert_eq!(output[i], input[i], "document {i}");
    }
    assert_eq!(output[2]["data"]["port"], "8080", "a string that looks like a number stays one");
    assert_eq!(output[2]["data"]["flag"], "yes");
    // Outside the injected places the Deployment is as written.
    let mut deployment = output[1].clone();
    deployment["spec"]["template"] = input[1]["spec"]["template"].clone();
    assert_eq!(deployment, input[1]);
    assert_eq!(
        report,
        [
            "Deployment shop/web: injected",
            "Job report: injected",
            "Pod shop/debug: skipped, the pod sets tarmac.io/inject: disabled",
            "DaemonSet shop/node-agent: skipped, hostNetwork pods share the node's network and are never injected",
            "Deployment legacy: skipped, neither the pod nor its namespace sets tarmac.io/inject: enabled",
        ]
    );
}

#[test]
fn all_injects_every_template_that_does_not_opt_out() {
    let (output, _) = run(MANIFESTS, true);
    assert!(injected(&output[6], "/spec/template"));
    assert!(output[4]["metadata"]["annotations"].get(INJECTED_ANNOTATION).is_none());
    assert!(!injected(&output[5], "/spec/template"));
}

#[test]
fn injecting_the_output_again_changes_nothing() {
    let args = args(true);
    let (once, _) = inject_manifests("a.yaml", MANIFESTS, &args).unwrap();
    let (twice, report) = inject_manifests("b.yaml", &once, &args).unwrap();
    assert_eq!(once, twice);
    assert!(report.iter().any(|line| line == "Deployment shop/web: already injected"), "{report:?}");
}

#[test]
fn the_injected_sidecar_configuration_is_valid_for_the_proxy() {
    let (output, _) = run(MANIFESTS, false);
    let template = &output[1]["spec"]["template"];
    let yaml = template["metadata"]["annotations"][CONFIG_ANNOTATION].as_str().unwrap();
    let config = tarmac_proxy::Config::from_yaml(yaml, "tarmac.io/proxy-config").unwrap();
    let control = config.control.expect("discovery");
    assert_eq!((control.namespace.as_str(), control.workload.as_str()), ("shop", "web"));
    assert!(config.inbound.expect("inbound").transparent);
    let sidecar = &template["spec"]["initContainers"][1];
    assert_eq!(sidecar["name"], PROXY_CONTAINER);
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], config.admin.port());
}

#[test]
fn a_refused_template_names_the_document_and_field() {
    let text =
        "kind: Pod\nmetadata: {name: p, annotations: {tarmac.io/inject: sure}}\nspec: {containers: []}\n";
    let e = inject_manifests("pods.yaml", text, &args(false)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pods.yaml: document 1 (Pod p): metadata.annotations[tarmac.io/inject]: `sure` is neither `enabled` nor `disabled`"
    );
}
