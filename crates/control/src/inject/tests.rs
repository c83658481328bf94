use super::*;

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "books-1", "namespace": "shop", "labels": {"app": "books"}, "annotations": annotations},
        "spec": {
            "serviceAccountName": "books",
            "initContainers": [{"name": "migrate", "image": "books:1", "args": ["migrate"]}],
            "containers": [{"name": "books", "image": "books:1", "ports": [{"containerPort": 8080}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "someFieldFromANewerApi": {"kept": true},
        },
    })
}

fn enabled() -> Value {
    json!({INJECT_KEY: "enabled"})
}

fn context(namespace_enabled: bool) -> PodContext<'static> {
    PodContext { namespace: "shop", namespace_enabled, owner: None }
}

fn run(pod: &mut Value, namespace_enabled: bool) -> Outcome {
    inject(pod, &context(namespace_enabled), &Settings::default()).unwrap()
}

fn init_names(pod: &Value) -> Vec<&str> {
    pod["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()
}

#[test]
fn an_annotated_pod_gets_init_then_native_sidecar_before_its_own_init_containers() {
    let mut pod = pod(enabled());
    assert_eq!(run(&mut pod, false), Outcome::Injected);
    assert_eq!(init_names(&pod), [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["args"][0], "init");
    assert_eq!(init["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(init["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert!(init.get("restartPolicy").is_none(), "the init step runs once and exits");

    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(proxy["image"], format!("tarmac/proxy:{VERSION}"));
    for probe in ["startupProbe", "readinessProbe"] {
        assert_eq!(proxy[probe]["httpGet"], json!({"path": "/ready", "port": ADMIN_PORT}), "{probe}");
    }
    assert_eq!(proxy["resources"]["requests"], json!({"cpu": "10m", "memory": "20Mi"}));
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["runAsUser"], PROXY_UID);
    assert!(proxy["securityContext"]["capabilities"]["add"].is_null());

    // The app, the pod's own volumes and fields we know nothing of are untouched.
    assert_eq!(pod["spec"]["containers"], self::pod(enabled())["spec"]["containers"]);
    assert_eq!(pod["spec"]["someFieldFromANewerApi"], json!({"kept": true}));
    let volumes: Vec<_> = pod["spec"]["volumes"].as_array().unwrap().iter().map(|v| &v["name"]).collect();
    assert_eq!(volumes, [&json!("data"), &json!(CONFIG_VOLUME)]);
    assert_eq!(pod["metadata"]["annotations"][INJECTED_ANNOTATION], VERSION);
    assert_eq!(pod["metadata"]["annotations"][INJECT_KEY], "enabled");
}

#[test]
fn the_init_rules_are_those_of_local_transparent_mode() {
    let mut pod = pod(enabled());
    run(&mut pod, false);
    let args: Vec<String> = serde_json::from_value(pod["spec"]["initContainers"][0]["args"].clone()).unwrap();
    let expected = format!(
        "init --inbound-port {INBOUND_PORT} --outbound-port {OUTBOUND_PORT} --proxy-uid {PROXY_UID} --skip-inbound-ports {ADMIN_PORT}"
    );
    assert_eq!(args.join(" "), expected);
}

#[test]
fn injecting_twice_changes_nothing() {
    let mut once = pod(enabled());
    run(&mut once, false);
    let mut twice = once.clone();
    assert_eq!(run(&mut twice, true), Outcome::AlreadyInjected);
    assert_eq!(once, twice);
}

#[test]
fn opt_in_by_namespace_or_annotation_and_opt_out_by_annotation() {
    let mut plain = pod(Value::Null);
    assert_eq!(run(&mut plain, false), Outcome::Skipped(Skip::NotEnabled));
    assert_eq!(plain, pod(Value::Null), "a skipped pod is not touched");
    assert_eq!(run(&mut pod(Value::Null), true), Outcome::Injected);
    assert_eq!(run(&mut pod(enabled()), false), Outcome::Injected);
    let disabled = json!({INJECT_KEY: "disabled"});
    assert_eq!(run(&mut pod(disabled.clone()), true), Outcome::Skipped(Skip::Disabled));
    assert_eq!(run(&mut pod(disabled), false), Outcome::Skipped(Skip::Disabled));
}

#[test]
fn host_network_pods_are_never_injected() {
    let mut pod = pod(enabled());
    pod["spec"]["hostNetwork"] = json!(true);
    let before = pod.clone();
    assert_eq!(run(&mut pod, true), Outcome::Skipped(Skip::HostNetwork));
    assert_eq!(pod, before);
}

#[test]
fn a_pod_without_init_containers_annotations_or_volumes_gets_them() {
    let mut pod = json!({"metadata": {"generateName": "worker-"}, "spec": {"containers": [{"name": "w", "image": "w"}]}});
    let settings = Settings {
        proxy_image: "registry.local/proxy:dev".into(),
        control_addr: Some("10.96.0.20:4180".parse().unwrap()),
        identity: None,
    };
    assert_eq!(inject(&mut pod, &context(true), &settings).unwrap(), Outcome::Injected);
    assert_eq!(init_names(&pod), [INIT_CONTAINER, PROXY_CONTAINER]);
    assert_eq!(pod["spec"]["initContainers"][1]["image"], "registry.local/proxy:dev");
    let config = pod["metadata"]["annotations"][CONFIG_ANNOTATION].as_str().unwrap();
    assert!(config.contains("addr: \"10.96.0.20:4180\""), "{config}");
    assert!(config.contains("workload: \"worker\""), "{config}");
    assert!(config.contains("service_account: \"default\""), "{config}");
    assert!(config.contains("namespace: \"shop\""), "{config}");
}

#[test]
fn bad_fields_are_named() {
    let mut pod = pod(json!({INJECT_KEY: "yes"}));
    let e = inject(&mut pod, &context(false), &Settings::default()).unwrap_err();
    assert_eq!(e.field, "metadata.annotations[tarmac.io/inject]");
    let mut taken = self::pod(enabled());
    taken["spec"]["containers"][0]["name"] = json!(PROXY_CONTAINER);
    let e = inject(&mut taken, &context(false), &Settings::default()).unwrap_err();
    assert_eq!(e.field, "spec.containers[0].name");
    let mut port = self::pod(enabled());
    port["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}, {"containerPort": ADMIN_PORT}]);
    let e = inject(&mut port, &context(false), &Settings::default()).unwrap_err();
    assert_eq!(e.field, "spec.containers[0].ports");
    assert!(e.message.starts_with("port 4191 is the sidecar's"), "{e}");
    let mut no_spec = json!({"metadata": {"annotations": enabled()}});
    assert_eq!(inject(&mut no_spec, &context(false), &Settings::default()).unwrap_err().field, "spec");
}

#[test]
fn templates_are_found_in_workloads_cron_jobs_and_lists() {
    let template = json!({"metadata": {}, "spec": {"containers": []}});
    let mut list = json!({"kind": "List", "items": [
        {"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"template": template}},
        {"kind": "CronJob", "metadata": {"name": "nightly"}, "spec": {"jobTemplate": {"spec": {"template": template}}}},
        {"kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": []}},
        {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}},
    ]});
    let found = pod_templates(&mut list);
    let owners: Vec<_> = found.iter().map(|t| (t.owner.as_deref(), t.namespace.as_deref())).collect();
    assert_eq!(owners, [(Some("web"), Some("shop")), (Some("nightly"), None), (None, None)]);
}

#[test]
fn the_sidecar_reads_its_configuration_from_the_annotation_with_the_intercepted_ports() {
    // The proxy's own parser accepting it is checked in the CLI's tests (the control
    // plane does not link the proxy).
    let mut pod = pod(enabled());
    run(&mut pod, false);
    let config = pod["metadata"]["annotations"][CONFIG_ANNOTATION].as_str().unwrap();
    assert!(config.contains(&format!("listen: \"0.0.0.0:{INBOUND_PORT}\"")), "{config}");
    assert!(config.contains(&format!("transparent_listen: \"127.0.0.1:{OUTBOUND_PORT}\"")), "{config}");
    let volume = &pod["spec"]["volumes"][1]["downwardAPI"]["items"][0];
    assert_eq!(volume["fieldRef"]["fieldPath"], format!("metadata.annotations['{CONFIG_ANNOTATION}']"));
}

#[test]
fn with_identity_the_sidecar_alone_gets_the_token_and_the_anchors() {
    let mut pod = pod(json!({INJECT_KEY: "enabled"}));
    let settings = Settings {
        proxy_image: "registry.local/proxy:dev".into(),
        control_addr: Some("10.96.0.20:4180".parse().unwrap()),
        identity: Some(IdentitySettings { trust_anchors: "PEM".into(), audience: "tarmac".into() }),
    };
    assert_eq!(inject(&mut pod, &context(true), &settings).unwrap(), Outcome::Injected);
    assert_eq!(pod["metadata"]["annotations"][ANCHORS_ANNOTATION], "PEM");
    let config = pod["metadata"]["annotations"][CONFIG_ANNOTATION].as_str().unwrap();
    assert!(
        config.contains("service_account_token: \"/var/run/secrets/tarmac.io/serviceaccount/token\""),
        "{config}"
    );
    assert!(config.contains("trust_anchors: \"/var/run/tarmac/config/trust-anchors.pem\""), "{config}");
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let token = volumes.iter().find(|v| v["name"] == TOKEN_VOLUME).unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "tarmac", "expirationSeconds": 3600, "path": "token"})
    );
    let mounts_token =
        |c: &Value| c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["name"] == TOKEN_VOLUME);
    let sidecar = &pod["spec"]["initContainers"][1];
    assert_eq!(sidecar["name"], PROXY_CONTAINER);
    assert!(mounts_token(sidecar));
    assert!(sidecar["volumeMounts"].as_array().unwrap().iter().all(|m| m["readOnly"] == true));
    for c in pod["spec"]["containers"].as_array().unwrap() {
        assert!(!mounts_token(c), "an app container must not see the token: {c}");
    }
    // Without the control plane there is no identity to get: nothing added.
    let mut plain = pod_fixture_enabled();
    let settings = Settings { control_addr: None, ..settings };
    inject(&mut plain, &context(true), &settings).unwrap();
    assert!(plain["metadata"]["annotations"].get(ANCHORS_ANNOTATION).is_none());
}

fn pod_fixture_enabled() -> Value {
    pod(json!({INJECT_KEY: "enabled"}))
}
