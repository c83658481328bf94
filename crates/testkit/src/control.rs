//! The real control plane for tests: in-process through `tarmac_control::start` (the fast
//! tier), or the `tarmac-control` binary as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tarmac_control::{Config, Listeners, Running};

/// Starts a control plane in this process, serving discovery (and identity, when the
/// config has it) on loopback port 0, without the HTTP API. Stops when dropped.
pub async fn start(config: Config) -> Running {
    start_at(config, loopback(0)).await
}

/// Like [`start`], on `grpc`: a test restarting the control plane on the port its proxies
/// know.
pub async fn start_at(config: Config, grpc: SocketAddr) -> Running {
    let listeners = Listeners::bind(grpc, &[]).await.expect("bind the control plane's listener");
    tarmac_control::start(config, listeners, std::future::pending()).await.expect("the control plane starts")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `tarmac-control` binary as a child process, its log in a file; killed on drop.
pub struct ControlProcess {
    pub child: Child,
    pub grpc: SocketAddr,
    pub api: SocketAddr,
    pub log: PathBuf,
}

impl ControlProcess {
    /// Runs `tarmac-control --config-dir DIR` on free loopback ports, with `args` added,
    /// and waits until its API answers (or the process exits: then it panics with its log).
    pub fn spawn(config_dir: &Path, args: &[&str]) -> Self {
        let config_dir = config_dir.to_str().expect("a UTF-8 path");
        Self::spawn_with(&[&["--config-dir", config_dir], args].concat())
    }

    /// Runs `tarmac-control ARGS` (its store chosen by `args`: `--store kubernetes
    /// --kubeconfig FILE`) on free loopback ports, and waits until its API answers.
    pub fn spawn_with(args: &[&str]) -> Self {
        let log = crate::tools::temp_dir("control").join("control.log");
        let (grpc, api) = (loopback(crate::servers::free_port()), loopback(crate::servers::free_port()));
        let child = Command::new(crate::tools::binary("tarmac-control"))
            .args(["--grpc-listen", &grpc.to_string(), "--api-listen", &api.to_string()])
            .args(args)
            .env("TARMAC_CONTROL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("create the log file")))
            .spawn()
            .expect("spawn tarmac-control");
        let mut control = Self { child, grpc, api, log };
        control.wait_serving(Duration::from_secs(15));
        control
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_serving(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tarmac-control exited with {status}:\n{}", self.log());
            }
            if std::net::TcpStream::connect_timeout(&self.api, Duration::from_millis(200)).is_ok()
                && std::net::TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "tarmac-control not serving in {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let sent =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
