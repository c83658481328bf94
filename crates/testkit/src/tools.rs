//! External programs and small clients.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Path of a binary built by this workspace (`tarmac-proxy`, `tarmac`), next to the test
/// executable's target directory. `scripts/test` builds them before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/e2e-xxxx -> target/<profile>/<name>
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --bins` first (the test script does)",
        path.display()
    );
    path
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tarmac-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where tests keep artifacts worth looking at (screenshots, logs).
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command to completion off the async runtime, with proxies from the environment
/// disabled so that only loopback is ever contacted.
pub async fn run(program: &str, args: &[&str]) -> Output {
    let program = program.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}; run scripts/setup-test-deps.sh"))
    })
    .await
    .unwrap()
}

/// Runs curl with `-sS` and returns (stdout, stderr); panics if curl fails.
pub async fn curl(args: &[&str]) -> (String, String) {
    let mut all = vec!["-sS", "--max-time", "20"];
    all.extend_from_slice(args);
    let out = run("curl", &all).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "curl {args:?} failed: {stderr}\n{stdout}");
    (stdout, stderr)
}

/// Path of a Python peer under tests/peers.
pub fn peer_script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/peers")
        .join(name)
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// A minimal HTTP/1.1 GET with hyper; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path).header("host", addr.to_string()).body(Empty::<Bytes>::new()).unwrap();
    let rsp = sender.send_request(req).await.expect("response");
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// A server process started for a test; killed on drop.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl ServerProcess {
    /// Starts a program that prints `LISTENING <port>` once bound (the Python peers do).
    pub fn spawn_listening(program: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}; run scripts/setup-test-deps.sh"));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{program} {args:?} did not report its port: {line:?}"));
        Self { child, port }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
