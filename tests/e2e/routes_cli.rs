//! `tarmac routes` and the route checks of `tarmac check`, as a user meets them: `tarmac
//! up` on `tests/fixtures/routes-cli` (`front` relays requests to `shop`, whose HTTPRoute
//! sends each kind of request to `shop-v1` or `shop-v2` and names the rule in a header),
//! the CLI run as separate processes, and real requests through the mesh compared with
//! what the CLI said they would take.

use super::observe::{json_of, tarmac, wait_for_check};
use super::up::Up;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tarmac_testkit::tools::temp_dir;

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn fixture_copy() -> PathBuf {
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/routes-cli");
    let dir = temp_dir("routes-cli");
    for file in ["mesh.yaml", "app.py"] {
        std::fs::copy(from.join(file), dir.join(file)).unwrap();
    }
    dir
}

/// `tarmac up DIR --api-port 0`, waited on until every replica is ready; the API's
/// address and the front's (through its sidecar).
fn start_mesh(dir: &Path) -> (Up, String, SocketAddr) {
    super::observe::start_mesh_with(dir, &["shop-v1-0", "shop-v2-0"])
}

/// A request sent through the front, as `(method, path, headers)`.
type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Sends `request` to the front (which relays it to `shop`); status and body.
fn send(front: SocketAddr, (method, path, headers): Request<'_>) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&front, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: front\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(response.clone())?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Sends `request` until it is answered with `status` (bounded: discovery delivers
/// routes and endpoints moments after a change); the body.
fn wait_for_answer(front: SocketAddr, request: Request<'_>, status: u16, up: &Up) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = send(front, request);
        if let Ok((s, body)) = &answer
            && *s == status
        {
            return body.clone();
        }
        assert!(Instant::now() < deadline, "{request:?} never got {status}: {answer:?}\n{}", up.output());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tarmac routes shop --path ... -o json`: port 80's answer for one request.
fn predicted(api: &str, (method, path, headers): Request<'_>) -> Value {
    let mut args = vec!["routes", "shop", "-o", "json", "--path", path, "--method", method];
    let joined: Vec<String> = headers.iter().map(|(n, v)| format!("{n}:{v}")).collect();
    for h in &joined {
        args.extend(["-H", h.as_str()]);
    }
    let out = tarmac(api, &args, CLI_TIMEOUT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json_of(&out)["ports"][0]["request"].clone()
}

#[test]
fn routes_shows_the_rule_each_request_takes_and_check_reports_route_conditions() {
    let dir = fixture_copy();
    let (up, api, front) = start_mesh(&dir);

    // A shadowed rule is a warning: check passes, and says which rule wins.
    let out = wait_for_check(&api, true, "", &up);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("√ routes: 2 routes accepted by their parents, every reference resolved; 1 warning")
            && text.contains(
                "! warning: HTTPRoute default/shop-dup (Service default/shop port 80): Conflicted True Shadowed: \
                 rule 0 `late` (callers in namespace default, port 80): match `PathPrefix /api` is identical \
                 to one of HTTPRoute default/shop rule 1 `api`, which comes first: it is never taken"
            ),
        "{text}"
    );

    // The table, in the order the proxy tries the matches.
    let out = tarmac(&api, &["routes", "shop"], CLI_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("Service default/shop port 80 for callers in namespace default"))
        .unwrap_or_else(|| panic!("{text}"));
    let expected = [
        ("1. Exact /api/exact", "HTTPRoute default/shop rule exact → default/shop-v2:80 weight 1"),
        ("2. PathPrefix /api", "HTTPRoute default/shop rule api → default/shop-v1:80 weight 1"),
        ("3. PathPrefix /api", "HTTPRoute default/shop-dup rule late → default/shop-v2:80 weight 1"),
        ("4. POST", "HTTPRoute default/shop rule post → default/shop-v2:80 weight 1"),
        ("5. header x-canary=yes", "HTTPRoute default/shop rule canary → default/shop-v2:80 weight 1"),
        ("*. every other request", "404: no rule matches"),
    ];
    // Each match's line is followed by its retry and timeouts, after precedence.
    for (i, (request, destination)) in expected.iter().enumerate() {
        let line = lines[header + 1 + 2 * i];
        assert!(
            line.trim_start().starts_with(request) && line.contains(destination),
            "line {} should be `{request} ... {destination}`:\n{text}",
            i + 1
        );
    }
    assert!(lines[header + 3].contains("[request headers: set x-rule=api]"), "{text}");
    let resilience = [
        // exact, late, post: the Service's policy's timeout, no retry.
        "no retry (unsent requests only); timeout 5s",
        // api: its own retry, the Service's timeout.
        "retry 3x on 503, backoff 50ms; timeout 5s",
        "no retry (unsent requests only); timeout 5s",
        "no retry (unsent requests only); timeout 5s",
        // canary: the policy naming the rule comes before the Service's.
        "no retry (unsent requests only); timeout 2s, per try 500ms",
    ];
    for (i, want) in resilience.iter().enumerate() {
        assert_eq!(lines[header + 2 + 2 * i].trim(), *want, "match {}:\n{text}", i + 1);
    }
    assert!(
        text.contains(
            "retry budget of callers: 10 % of requests + 5/s over 10s (ResiliencePolicy default/shop)"
        ),
        "{text}"
    );

    // Each kind of request takes, through the mesh, the rule `tarmac routes` says.
    wait_for_answer(front, ("GET", "/api/books", &[]), 200, &up);
    let requests: [(Request<'_>, Option<(&str, &str)>); 6] = [
        (("GET", "/api/exact", &[("x-canary", "yes")]), Some(("exact", "shop-v2"))),
        (("GET", "/api/books", &[("x-canary", "yes")]), Some(("api", "shop-v1"))),
        (("POST", "/other", &[]), Some(("post", "shop-v2"))),
        (("GET", "/other", &[("x-canary", "yes")]), Some(("canary", "shop-v2"))),
        (("get", "/api", &[]), Some(("api", "shop-v1"))),
        (("GET", "/other", &[("x-canary", "no")]), None),
    ];
    for (request, expected) in requests {
        let said = predicted(&api, request);
        let method = request.0.to_ascii_uppercase();
        let answer = send(front, (&method, request.1, request.2)).unwrap();
        match expected {
            Some((rule, workload)) => {
                assert_eq!(said["taken"]["rule"], rule, "{request:?}: {said}");
                let backend = said["taken"]["backends"][0]["name"].as_str().unwrap();
                assert_eq!(backend, format!("default/{workload}:80"), "{request:?}: {said}");
                assert_eq!(answer, (200, format!("workload={workload} rule={rule}")), "{request:?}");
            }
            None => {
                assert_eq!(
                    (said["taken"].clone(), said["status"].clone()),
                    (Value::Null, 404.into()),
                    "{said}"
                );
                assert_eq!(answer.0, 404, "{request:?}: {answer:?}");
            }
        }
    }
    let out = tarmac(&api, &["routes", "shop", "--path", "/api/x", "-H", "x-canary: yes"], CLI_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "GET /api/x x-canary: yes to Service default/shop port 80 from callers in namespace default:"
        ) && text.contains("takes match 2 (PathPrefix /api)")
            && text.contains("→ HTTPRoute default/shop rule api")
            && text.contains("→ default/shop-v1:80 weight 1 [request headers: set x-rule=api]")
            && text.contains("→ retry 3x on 503, backoff 50ms; timeout 5s"),
        "{text}"
    );

    // A Service without routes: every request goes to its endpoints.
    let out = tarmac(&api, &["routes", "shop-v1", "--path", "/anything"], CLI_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("→ the Service's endpoints: no route applies"), "{text}");
    let out = tarmac(&api, &["routes", "shop-v1"], CLI_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Service default/shop-v1 port 80 for callers in namespace default: no HTTPRoute or GRPCRoute applies")
            && text.contains("*. every request → the Service's endpoints: no route applies")
            && text.contains("retry budget of callers: 20 % of requests + 10/s over 10s (default)")
            && text.contains("no retry (unsent requests only); timeout 30s"),
        "{text}"
    );

    // A route to a missing backend and a route to a missing parent: check fails naming
    // route, parent and reason; the valid routes still serve.
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: to-nowhere}\nspec:\n  \
         parentRefs: [{group: \"\", kind: Service, name: shop, port: 80}]\n  rules:\n  - name: gone\n    \
         matches: [{path: {value: /gone}}]\n    backendRefs: [{name: missing, port: 80}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: orphan}\nspec:\n  \
         parentRefs: [{group: \"\", kind: Service, name: ghost, port: 80}]\n  rules:\n  - backendRefs: [{name: shop-v1, port: 80}]\n",
    )
    .unwrap();
    let out = wait_for_check(&api, false, "BackendNotFound", &up);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "× routes: 2 of 4 routes not accepted or with unresolved references; the rest of the mesh serves; 1 warning",
        "× HTTPRoute default/to-nowhere (Service default/shop port 80): ResolvedRefs False BackendNotFound: \
         spec.rules[0].backendRefs[0]: there is no Service default/missing",
        "× HTTPRoute default/orphan (Service default/ghost port 80): Accepted False NoMatchingParent: \
         there is no Service default/ghost",
        "! warning: HTTPRoute default/shop-dup",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    let report = json_of(&tarmac(&api, &["check", "-o", "json"], CLI_TIMEOUT));
    assert_eq!(report["ok"], false);
    let condition = |route: &str, kind: &str| -> Value {
        let route = report["routes"].as_array().unwrap().iter().find(|r| r["name"] == route).unwrap();
        let conditions = route["parents"][0]["conditions"].as_array().unwrap();
        conditions.iter().find(|c| c["type"] == kind).cloned().unwrap_or(Value::Null)
    };
    assert_eq!(
        (
            condition("to-nowhere", "ResolvedRefs")["status"].clone(),
            condition("to-nowhere", "ResolvedRefs")["reason"].clone()
        ),
        ("False".into(), "BackendNotFound".into()),
        "{report}"
    );
    assert_eq!(condition("orphan", "Accepted")["reason"], "NoMatchingParent", "{report}");
    assert_eq!(condition("shop", "Accepted")["status"], "True", "{report}");
    assert_eq!(condition("shop-dup", "Conflicted")["reason"], "Shadowed", "{report}");
    // The missing backend's share gets 500, and everything else still serves.
    wait_for_answer(front, ("GET", "/gone", &[]), 500, &up);
    assert_eq!(send(front, ("GET", "/api/books", &[])), Ok((200, "workload=shop-v1 rule=api".into())));
    let out = tarmac(&api, &["routes", "shop", "--path", "/gone"], CLI_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("→ HTTPRoute default/to-nowhere rule gone")
            && text.contains("default/missing:80 weight 1 (no such Service port: its share gets 500)"),
        "{text}"
    );

    std::fs::remove_file(dir.join("broken.yaml")).unwrap();
    wait_for_check(&api, true, "", &up);

    // Consumer routes apply only to callers of their namespace: `--from` says whose view.
    std::fs::write(
        dir.join("consumer.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: mobile}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: mobile-shop, namespace: mobile}\n\
         spec:\n  parentRefs: [{group: \"\", kind: Service, name: shop, namespace: default, port: 80}]\n  \
         rules:\n  - backendRefs: [{name: shop-v2, namespace: default, port: 80}]\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let out = tarmac(&api, &["routes", "shop", "--from", "mobile"], CLI_TIMEOUT);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("mobile-shop") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        text.contains(
            "Service default/shop port 80 for callers in namespace mobile: the consumer routes of namespace mobile"
        ) && text.contains("1. every request")
            && text.contains("HTTPRoute mobile/mobile-shop rule #0 → default/shop-v2:80 weight 1")
            && !text.contains("rule api →"),
        "{text}"
    );
    let out = tarmac(&api, &["routes", "shop", "--path", "/x"], CLI_TIMEOUT);
    assert!(String::from_utf8_lossy(&out.stdout).contains("→ 404: no rule matches"), "callers in default");
}
