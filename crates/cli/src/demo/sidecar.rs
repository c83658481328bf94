//! The demo's sidecars: real `tarmac-proxy` processes, one beside each workload, each
//! started from a configuration file generated here, as an orchestrator would.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tarmac_control::http_client::HttpClient;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Environment variable naming the `tarmac-proxy` binary to run.
pub const ENV_PROXY_BIN: &str = "TARMAC_PROXY_BIN";

/// Finds `tarmac-proxy`: `$TARMAC_PROXY_BIN`, else next to this executable, where Cargo
/// puts both binaries of the workspace.
pub fn locate_proxy_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(ENV_PROXY_BIN) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!("{ENV_PROXY_BIN} is set to {}, which is not a file", path.display()));
        }
        return Ok(path);
    }
    let here = std::env::current_exe().map_err(|e| format!("cannot tell where this executable is: {e}"))?;
    let path = here.with_file_name("tarmac-proxy");
    if !path.is_file() {
        return Err(format!(
            "the sidecar proxy binary is missing: no {}.\n\
             Build it next to `tarmac` with `cargo build --release` (or `cargo build --bins` for a \
             debug build), or point {ENV_PROXY_BIN} at a tarmac-proxy binary.",
            path.display()
        ));
    }
    Ok(path)
}

/// Chooses loopback ports for the sidecars' listeners: consecutive ports from a base, or
/// free ports from the OS. Each port stays bound here until [`PortAllocator::release`], so
/// that no two listeners get the same one; the sidecars bind them right after.
pub struct PortAllocator {
    next_port: Option<u16>,
    held: Vec<std::net::TcpListener>,
}

impl PortAllocator {
    /// `base_port` 0 asks the OS for free ports.
    pub fn new(base_port: u16) -> Self {
        Self { next_port: (base_port != 0).then_some(base_port), held: Vec::new() }
    }

    pub fn next(&mut self) -> Result<SocketAddr, String> {
        let wanted = match self.next_port {
            None => 0,
            Some(port) => {
                self.next_port = Some(port.checked_add(1).ok_or_else(|| {
                    "--base-port is too high: the sidecars need 10 consecutive ports".to_string()
                })?);
                port
            }
        };
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, wanted)).map_err(|e| match wanted {
            0 => format!("cannot find a free port on 127.0.0.1: {e}"),
            port => format!("port {port} on 127.0.0.1 is not available ({e}); choose another --base-port or 0 for free ports"),
        })?;
        let addr = listener.local_addr().map_err(|e| format!("cannot read a bound port: {e}"))?;
        self.held.push(listener);
        Ok(addr)
    }

    /// Frees the ports for the sidecars to bind.
    pub fn release(self) {
        drop(self.held);
    }
}

/// The inbound side of a sidecar: where peers connect, and the app behind it.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub listen: SocketAddr,
    pub app: SocketAddr,
}

/// A service the workload calls through its sidecar, in explicit mode: the app connects to
/// `listen`, and the sidecar forwards to `endpoint`, another sidecar's inbound listener.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub service: &'static str,
    pub listen: SocketAddr,
    pub endpoint: SocketAddr,
    /// The SPIFFE ID the endpoint's sidecar proves.
    pub identity: String,
}

/// What the demo configures in one sidecar.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub workload: &'static str,
    pub admin: SocketAddr,
    pub inbound: Option<Inbound>,
    pub outbound: Vec<Outbound>,
    /// The sidecar's `identity` section (its certificate files and the anchors).
    pub identity_yaml: String,
}

/// Sidecars drain for at most this long on SIGTERM, so that they exit by themselves
/// before the demo's own deadline for killing them.
const DRAIN_TIMEOUT: &str = "3s";

impl SidecarConfig {
    /// The `tarmac-proxy` configuration file (see the proxy's `config.rs`).
    pub fn to_yaml(&self) -> String {
        let mut yaml =
            format!("# The sidecar of `{}` in `tarmac demo`.\nadmin: \"{}\"\n", self.workload, self.admin);
        if let Some(inbound) = &self.inbound {
            let _ = write!(yaml, "inbound:\n  listen: \"{}\"\n  app: \"{}\"\n", inbound.listen, inbound.app);
        }
        if !self.outbound.is_empty() {
            yaml.push_str("outbound:\n  services:\n");
            for out in &self.outbound {
                let _ = write!(
                    yaml,
                    "    - name: {}\n      listen: \"{}\"\n      endpoints: [{{addr: \"{}\", meshed: true, identity: \"{}\"}}]\n",
                    out.service, out.listen, out.endpoint, out.identity
                );
            }
        }
        yaml.push_str(&self.identity_yaml);
        let _ = write!(yaml, "limits:\n  drain_timeout: {DRAIN_TIMEOUT}\n");
        yaml
    }

    pub fn outbound(&self, service: &str) -> Option<SocketAddr> {
        self.outbound.iter().find(|o| o.service == service).map(|o| o.listen)
    }
}

/// How a sidecar's process ended: its status, or why waiting for it failed.
pub type Exit = Result<ExitStatus, String>;

/// True when the process ended as a stopped process should: exit status 0 after
/// draining, or killed by the SIGTERM itself when it had not yet installed its handler
/// (stopped while starting).
pub fn is_clean_stop(exit: &Exit) -> bool {
    matches!(exit, Ok(status) if status.success() || tarmac_transport::process::was_terminated(status))
}

pub fn describe(exit: &Exit) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

enum Signal {
    Terminate,
    Kill,
}

/// How [`Sidecar::stop`] went.
pub enum Stopped {
    /// The process had exited before it was asked to; `reported` if the user was told.
    AlreadyExited { exit: Exit, reported: bool },
    /// The process exited after SIGTERM.
    Exited(Exit),
    /// It did not exit within the grace period and was killed.
    Killed,
}

/// A running sidecar process.
pub struct Sidecar {
    pub config: SidecarConfig,
    pub pid: u32,
    log_path: PathBuf,
    signals: mpsc::UnboundedSender<Signal>,
    exited: watch::Receiver<Option<Exit>>,
    /// Set once an unexpected exit has been reported to the user, so it is not again.
    exit_reported: AtomicBool,
}

impl Sidecar {
    /// Writes the configuration into `dir` and starts `binary` with it; its output goes to
    /// a log file beside the configuration. When the process exits, for whatever reason,
    /// the workload's name is sent on `exits`.
    pub fn spawn(
        binary: &Path,
        config: SidecarConfig,
        dir: &Path,
        exits: mpsc::UnboundedSender<&'static str>,
    ) -> Result<Self, String> {
        let workload = config.workload;
        let config_path = dir.join(format!("{workload}-proxy.yaml"));
        std::fs::write(&config_path, config.to_yaml())
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let log_path = dir.join(format!("{workload}-proxy.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_for_stdout =
            log.try_clone().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log)
            // Ctrl-C in a terminal signals the whole foreground process group. The demo, not
            // the terminal, decides when sidecars stop: after their last scrape.
            .process_group(0)
            // If this process ends without stopping them, they must not live on.
            .kill_on_drop(true);
        // If this process dies hard (SIGKILL, abort), `kill_on_drop` cannot act: the kernel
        // stops the sidecar instead. It fires when the *thread* that spawned the child
        // exits; sidecars are spawned from the runtime's long-lived threads.
        tarmac_transport::process::terminate_with_parent(command.as_std_mut());
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {} for the {workload} sidecar: {e}", binary.display()))?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let (exited_tx, exited) = watch::channel(None);
        tokio::spawn(supervise(child, signal_rx, exited_tx, exits, workload));
        Ok(Self { config, pid, log_path, signals, exited, exit_reported: AtomicBool::new(false) })
    }

    /// How the process ended, if it has.
    pub fn exit(&self) -> Option<Exit> {
        self.exited.borrow().clone()
    }

    /// Waits until the sidecar's `/ready` answers 200. Fails, with the sidecar's log, if
    /// it exits or is not ready within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let workload = self.config.workload;
        let admin = HttpClient::new(self.config.admin, Duration::from_secs(1));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exit() {
                self.exit_reported.store(true, Ordering::Relaxed);
                return Err(format!(
                    "the {workload} sidecar (pid {}) exited while starting: {}.\n{}",
                    self.pid,
                    describe(&exit),
                    self.log_tail(20)
                ));
            }
            match admin.get("/ready").await {
                Ok(response) if response.status.is_success() => return Ok(()),
                Ok(response) => tracing::debug!(workload, status = %response.status, "sidecar not ready yet"),
                Err(e) => tracing::debug!(workload, error = %e, "sidecar not ready yet"),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the {workload} sidecar (pid {}) was not ready within {timeout:?}: GET http://{}/ready did not answer 200.\n{}",
                    self.pid,
                    self.config.admin,
                    self.log_tail(20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The report for a sidecar that exited when nobody asked it to.
    pub fn unexpected_exit_report(&self) -> String {
        self.exit_reported.store(true, Ordering::Relaxed);
        let exit = self.exit().map_or_else(|| "still running".to_string(), |e| describe(&e));
        format!(
            "the {} sidecar (tarmac-proxy, pid {}) exited unexpectedly: {exit}.\n{}",
            self.config.workload,
            self.pid,
            self.log_tail(20)
        )
    }

    /// Sends SIGTERM, as an orchestrator stopping a workload does, so the proxy drains;
    /// kills it if it has not exited after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Stopped {
        if let Some(exit) = self.exit() {
            return Stopped::AlreadyExited { exit, reported: self.exit_reported.load(Ordering::Relaxed) };
        }
        let _ = self.signals.send(Signal::Terminate);
        if let Ok(Ok(exit)) = tokio::time::timeout(grace, self.exited.wait_for(Option::is_some)).await {
            return Stopped::Exited(exit.clone().expect("waited for Some"));
        }
        let _ = self.signals.send(Signal::Kill);
        let _ = self.exited.wait_for(Option::is_some).await;
        Stopped::Killed
    }

    /// The last `lines` lines of the sidecar's log, indented, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = match std::fs::read_to_string(&self.log_path) {
            Ok(text) if !text.trim().is_empty() => text,
            Ok(_) => return "(its log is empty)".to_string(),
            Err(e) => return format!("(cannot read its log {}: {e})", self.log_path.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        // Not the log's path: the demo removes its directory on the way out.
        let mut tail = "Last lines of its log:\n".to_string();
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(tail, "    {line}");
        }
        tail
    }
}

/// Owns the child process: waits for it to exit and delivers signals to it. Signals are
/// sent from here because only here is it certain that the pid still names our child: the
/// process is reaped inside `wait`, so between waits its pid cannot be reused.
async fn supervise(
    mut child: Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exited: watch::Sender<Option<Exit>>,
    exits: mpsc::UnboundedSender<&'static str>,
    workload: &'static str,
) {
    let exit = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| e.to_string()),
            Some(signal) = signals.recv() => match signal {
                Signal::Terminate => {
                    if let Some(pid) = child.id() {
                        // `pid` is our child, not yet reaped (see above).
                        let _ = tarmac_transport::process::terminate(pid);
                    }
                }
                Signal::Kill => {
                    let _ = child.start_kill();
                }
            },
        }
    };
    tracing::debug!(workload, exit = %describe(&exit), "sidecar exited");
    let _ = exited.send(Some(exit));
    let _ = exits.send(workload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKS_ID: &str = "spiffe://cluster.local/ns/default/sa/books";
    const AUTHORS_ID: &str = "spiffe://cluster.local/ns/default/sa/authors";

    #[test]
    fn generated_configuration_names_every_listener_and_meshed_endpoints() {
        let addr = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let config = SidecarConfig {
            workload: "web",
            admin: addr(4191),
            inbound: Some(Inbound { listen: addr(4143), app: addr(8080) }),
            outbound: vec![
                Outbound { service: "books", listen: addr(7001), endpoint: addr(5143), identity: BOOKS_ID.into() },
                Outbound { service: "authors", listen: addr(7002), endpoint: addr(6143), identity: AUTHORS_ID.into() },
            ],
            identity_yaml: "identity:\n  trust_anchors: /tmp/anchors.pem\n  certificate: {cert: /tmp/web.pem, key: /tmp/web.key}\n"
                .into(),
        };
        let yaml = config.to_yaml();
        for needle in [
            "admin: \"127.0.0.1:4191\"",
            "inbound:\n  listen: \"127.0.0.1:4143\"\n  app: \"127.0.0.1:8080\"",
            "- name: books\n      listen: \"127.0.0.1:7001\"\n      endpoints: [{addr: \"127.0.0.1:5143\", meshed: true, identity: \"spiffe://cluster.local/ns/default/sa/books\"}]",
            "- name: authors",
            "drain_timeout: 3s",
        ] {
            assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
        }
        assert_eq!(config.outbound("authors"), Some(addr(7002)));

        let parsed = tarmac_proxy::Config::from_yaml(&yaml, "generated").expect("the proxy accepts it");
        let services = parsed.outbound.expect("outbound").services;
        assert_eq!(services[1].name, "authors");
        assert!(services[1].endpoints[0].meshed);
        assert_eq!(services[1].endpoints[0].identity.as_deref(), Some(AUTHORS_ID));
        assert!(parsed.identity.is_some());
        assert_eq!(parsed.inbound.expect("inbound").app, Some(addr(8080)));
        assert_eq!(parsed.limits.drain_timeout, Duration::from_secs(3));

        let client = SidecarConfig {
            workload: "traffic",
            admin: addr(4192),
            inbound: None,
            outbound: config.outbound[..1].to_vec(),
            identity_yaml: String::new(),
        };
        let parsed =
            tarmac_proxy::Config::from_yaml(&client.to_yaml(), "generated").expect("the proxy accepts it");
        assert!(parsed.inbound.is_none());
    }

    #[test]
    fn ports_from_a_base_are_consecutive_and_free_ports_distinct() {
        let mut free = PortAllocator::new(0);
        let a = free.next().unwrap();
        let b = free.next().unwrap();
        assert_ne!(a.port(), b.port());
        assert!(a.ip().is_loopback());
        free.release();

        // Start from a port known to be free a moment ago; its neighbour may not be, so
        // only the first is checked.
        let base =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let mut consecutive = PortAllocator::new(base);
        assert_eq!(consecutive.next().unwrap().port(), base);
        assert_eq!(consecutive.next_port, Some(base + 1));
    }
}
