//! `tarmac up examples/hello`, run as a user runs it: a request to the greeter crosses
//! both sidecars to `names`; a killed app is reported and restarted; SIGTERM stops
//! everything, exit 0, and leaves no process behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarmac_testkit::tools::{binary, temp_dir};

/// `tarmac up` as a child process, its output collected line by line (also used by the
/// telemetry tests in `observe.rs`).
pub(crate) struct Up {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start(dir: &str) -> Self {
        Self::start_with(&[dir])
    }

    /// `tarmac up ARGS...`, with a CA of its own (not the user's).
    pub(crate) fn start_with(args: &[&str]) -> Self {
        Self::start_with_ca(args, &temp_dir("up-ca"))
    }

    /// `tarmac up ARGS... --identity-dir CA`.
    pub(crate) fn start_with_ca(args: &[&str], ca: &std::path::Path) -> Self {
        let mut child = Command::new(binary("tarmac"))
            .arg("up")
            .args(args)
            .arg("--identity-dir")
            .arg(ca)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tarmac starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        Self { child, stdout, stderr }
    }

    /// SIGKILL, as a crash: `tarmac up` gets no chance to clean up.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (bounded) for a line of stdout that `find` extracts something from.
    pub(crate) fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        find: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = find(&self.lines()) {
                return found;
            }
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // Its children follow it (they die with their parent).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push(line);
        }
    });
}

/// The pids in `<who> started: pid N` lines, in order.
fn started_pids(lines: &[String], who: &str) -> Vec<u32> {
    let marker = format!("| {who} started: pid ");
    lines.iter().filter_map(|l| l.split_once(&marker)).filter_map(|(_, rest)| number(rest)).collect()
}

/// Every pid `tarmac up` started (apps and sidecars).
fn all_pids(lines: &[String]) -> Vec<u32> {
    lines.iter().filter_map(|l| l.split_once(" started: pid ")).filter_map(|(_, rest)| number(rest)).collect()
}

fn number(text: &str) -> Option<u32> {
    text.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// `GET /` over HTTP/1.1 with a bounded wait; the status code and the body.
fn get(addr: SocketAddr) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: greeter\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(response.clone())?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Waits (bounded) until the greeter answers with names from `names`: the request went
/// test -> greeter's sidecar -> greeter -> its sidecar -> a names sidecar -> names.
pub(crate) fn greeting(up: &Up, greeter: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match get(greeter) {
            Ok((200, body)) if body.contains("Ada") && body.contains("names from names-") => return body,
            Ok((status, body)) => format!("{status}: {body}"),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "the greeter did not greet within 30 s; last: {last}\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A live process (not a zombie) running `tarmac-proxy` or python.
fn is_ours_and_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    state != Some("Z") && (cmdline.contains("tarmac-proxy") || cmdline.contains("python"))
}

/// Sends SIGTERM and waits (bounded) for `tarmac up` to exit 0 having said `stopped`.
pub(crate) fn stop(up: &mut Up) {
    let sent = Command::new("kill").args(["-TERM", &up.child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tarmac up did not stop within 30 s of SIGTERM\n{}", up.output());
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the output threads read the last lines.
    std::thread::sleep(Duration::from_millis(200));
    assert!(status.success(), "tarmac up exited with {status}\n{}", up.output());
    assert!(up.lines().iter().any(|l| l.ends_with("| stopped")), "{}", up.output());
}

/// An address on the line `tarmac up` prints for `replica` as it plans it, after `key`
/// (`"admin "`, `"sidecar inbound "`, `"NAMES_URL=http://"`).
pub(crate) fn replica_addr(up: &Up, replica: &str, key: &str) -> SocketAddr {
    up.wait_for(&format!("{replica}'s {key:?}"), Duration::from_secs(60), |lines| {
        let line = lines.iter().find_map(|l| l.split_once(&format!("| {replica}: PORT=")))?.1;
        line.split_once(key)?.1.split(|c: char| c == ',' || c.is_whitespace()).next()?.parse().ok()
    })
}

/// `GET path` over HTTP/1.1 with a bounded wait (an admin listener's `/metrics`,
/// `/identity`); the body of a 200, else panics.
pub(crate) fn get_ok(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "GET {path}: {response}");
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

pub(crate) fn greeter_addr(up: &Up) -> SocketAddr {
    up.wait_for("greeter ready line", Duration::from_secs(60), |lines| {
        lines
            .iter()
            .rev()
            .find_map(|l| l.split_once("| greeter-0 ready: http://"))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
    })
}

#[test]
fn up_starts_and_stops_replicas_as_the_directory_changes() {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let dir = tarmac_testkit::tools::temp_dir("up-changes");
    for file in ["mesh.yaml", "names.py", "greeter.py"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let mesh = std::fs::read_to_string(dir.join("mesh.yaml")).unwrap();
    assert!(mesh.contains("replicas: 2"), "the example changed: {mesh}");
    let mut up = Up::start(dir.to_str().unwrap());
    let greeter = greeter_addr(&up);
    greeting(&up, greeter);

    // A third replica of names is started and serves.
    std::fs::write(dir.join("mesh.yaml"), mesh.replace("replicas: 2", "replicas: 3")).unwrap();
    up.wait_for("names-2 ready", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains("| names-2 ready: ")).then_some(())
    });
    let names2 = *started_pids(&up.lines(), "names-2").last().unwrap();

    // Back to one: names-1 and names-2 stop; the mesh still answers.
    std::fs::write(dir.join("mesh.yaml"), mesh.replace("replicas: 2", "replicas: 1")).unwrap();
    let stopped = format!("| names-2 (pid {names2}) stopped");
    up.wait_for("names-2 stopped", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains(&stopped)).then_some(())
    });
    // Once their sidecars are gone, only names-0 can answer.
    for sidecar in ["| names-1 proxy (pid ", "| names-2 proxy (pid "] {
        up.wait_for("the sidecars of names-1 and names-2 stopped", Duration::from_secs(30), |lines| {
            lines.iter().any(|l| l.contains(sidecar) && l.ends_with(") stopped")).then_some(())
        });
    }
    assert!(!is_ours_and_alive(names2));
    let body = greeting(&up, greeter);
    assert!(body.contains("names from names-0"), "only names-0 is left: {body}");

    // A broken file is refused and named; nothing stops.
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: []}\n",
    )
    .unwrap();
    up.wait_for("the refusal", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains("|   broken.yaml:")).then_some(())
    });
    greeting(&up, greeter);
    stop(&mut up);
}

#[test]
fn up_runs_the_hello_mesh_restarts_a_crashed_app_and_stops_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let mut up = Up::start(dir.to_str().unwrap());

    let greeter = greeter_addr(&up);
    let body = greeting(&up, greeter);
    assert!(body.contains("greeted by greeter-0"), "{body}");

    // An app of the same uid reading its sidecar's environment and descriptors finds no
    // bootstrap token: it came through a pipe the sidecar read to its end and closed.
    let sidecar = *started_pids(&up.lines(), "greeter-0 proxy").last().expect("greeter-0's sidecar started");
    let environ = std::fs::read(format!("/proc/{sidecar}/environ")).expect("same uid: readable");
    assert!(!String::from_utf8_lossy(&environ).contains("TOKEN"), "a token in the sidecar's environment");
    // Descriptor 3 held the token's pipe (`identity.token_fd`).
    let fd3 = std::fs::read_link(format!("/proc/{sidecar}/fd/3")).map(|t| t.display().to_string());
    assert!(!fd3.as_deref().unwrap_or("").starts_with("pipe:"), "the token's pipe is still open: {fd3:?}");

    // Kill one app (once it is ready: the greeting may have come from names-1): it is
    // reported and restarted, and the mesh answers again.
    up.wait_for("names-0 ready", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains("| names-0 ready: ")).then_some(())
    });
    let names0 = *started_pids(&up.lines(), "names-0").last().expect("names-0 started");
    let killed = Command::new("kill").args(["-KILL", &names0.to_string()]).status().unwrap();
    assert!(killed.success());
    let exited = format!("| names-0 (pid {names0}) exited");
    up.wait_for("report of names-0's exit", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains(&exited)).then_some(())
    });
    let restarted = up.wait_for("names-0 restarted", Duration::from_secs(30), |lines| {
        started_pids(lines, "names-0").into_iter().find(|pid| *pid != names0)
    });
    assert!(is_ours_and_alive(restarted), "names-0 restarted as pid {restarted}\n{}", up.output());
    let started_again = format!("| names-0 started: pid {restarted}");
    up.wait_for("names-0 ready again", Duration::from_secs(30), |lines| {
        let since = lines.iter().position(|l| l.contains(&started_again))?;
        lines[since..].iter().any(|l| l.contains("| names-0 ready: ")).then_some(())
    });
    greeting(&up, greeter);

    // Kill a sidecar: its replica is restarted whole, on the same ports.
    let proxy = *started_pids(&up.lines(), "greeter-0 proxy").last().expect("greeter-0's sidecar started");
    let killed = Command::new("kill").args(["-KILL", &proxy.to_string()]).status().unwrap();
    assert!(killed.success());
    let exited = format!("| greeter-0 proxy (pid {proxy}) exited unexpectedly");
    up.wait_for("report of the sidecar's exit", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains(&exited)).then_some(())
    });
    let restarted = up.wait_for("greeter-0's sidecar restarted", Duration::from_secs(30), |lines| {
        started_pids(lines, "greeter-0 proxy").into_iter().find(|pid| *pid != proxy)
    });
    assert!(is_ours_and_alive(restarted));
    greeting(&up, greeter);

    // SIGTERM stops everything; nothing is left behind.
    let pids = all_pids(&up.lines());
    assert!(pids.len() >= 9, "3 apps and 3 sidecars, plus the restarts: {pids:?}\n{}", up.output());
    stop(&mut up);
    let left: Vec<u32> = pids.into_iter().filter(|pid| is_ours_and_alive(*pid)).collect();
    assert!(left.is_empty(), "still running after tarmac up stopped: {left:?}\n{}", up.output());
}

/// examples/hello written as one would for a cluster: the Services as `kubectl get svc -o
/// yaml` prints them (a `List`, with everything the API server adds) and the apps as
/// `apps/v1` Deployments. `tarmac up` runs it as it runs the Workloads: the greeter's
/// request crosses both sidecars to a `names` replica; `tarmac check` says what of the
/// Deployments only a cluster applies.
#[test]
fn up_runs_kubernetes_manifests_services_from_kubectl_and_deployments() {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let dir = tarmac_testkit::tools::temp_dir("up-deployments");
    for file in ["names.py", "greeter.py"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let service = |name: &str, ip: &str| {
        format!(
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    creationTimestamp: \"2026-11-30T09:12:44Z\"\n    name: {name}\n    namespace: default\n    resourceVersion: \"4821\"\n    uid: 5d0c3f0e-8d0b-4b5e-9a53-0f4b1c2d7e6{}\n  spec:\n    clusterIP: {ip}\n    clusterIPs: [{ip}]\n    internalTrafficPolicy: Cluster\n    ipFamilies: [IPv4]\n    ipFamilyPolicy: SingleStack\n    ports:\n    - appProtocol: http\n      port: 80\n      protocol: TCP\n      targetPort: 8080\n    selector:\n      app: {name}\n    sessionAffinity: None\n    type: ClusterIP\n  status:\n    loadBalancer: {{}}\n",
            name.len()
        )
    };
    std::fs::write(
        dir.join("services.yaml"),
        format!(
            "apiVersion: v1\nitems:\n{}{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
            service("greeter", "10.96.0.21"),
            service("names", "10.96.0.22")
        ),
    )
    .unwrap();
    let deployment = |name: &str, replicas: u32, env: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  strategy: {{type: RollingUpdate}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      serviceAccountName: {name}\n      containers:\n      - name: {name}\n        image: python:3.12-slim\n        command: [python3, -u, {name}.py]\n        env: [{env}]\n        ports: [{{containerPort: 8080}}]\n        resources: {{limits: {{memory: 64Mi}}}}\n"
        )
    };
    std::fs::write(
        dir.join("apps.yaml"),
        format!(
            "{}---\n{}",
            deployment("greeter", 1, "{name: GREETING, value: Hello}"),
            deployment("names", 2, "")
        ),
    )
    .unwrap();

    let mut up = Up::start_with(&[dir.to_str().unwrap(), "--api-port", "0"]);
    let greeter = greeter_addr(&up);
    let body = greeting(&up, greeter);
    assert!(body.starts_with("Hello, ") && body.contains("greeted by greeter-0"), "{body}");
    // Both replicas of the names Deployment run, each behind its sidecar.
    up.wait_for("names-1 ready", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains("| names-1 ready: ")).then_some(())
    });
    let warning = "warning: Deployment default/names: applied on a cluster only, not here: spec.strategy, spec.template.spec.containers[0].image, spec.template.spec.containers[0].resources";
    assert!(up.lines().iter().any(|l| l.ends_with(warning)), "{}", up.output());

    let api = up.wait_for("the API address", Duration::from_secs(5), |lines| {
        lines.iter().find_map(|l| l.split_once("control plane: API and dashboard on http://")).map(
            |(_, rest)| rest.split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_string(),
        )
    });
    let check = crate::observe::tarmac(&api, &["check"], Duration::from_secs(30));
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("√ deployments: 2 Deployments run here as processes"), "{text}");
    assert!(text.contains(&format!("! {warning}")), "{text}");
    stop(&mut up);
}
