//! The benchmark's child processes (proxies, Envoy, the upstream): started pinned to a
//! core when `taskset` is there and without address-space randomisation (so that their
//! RSS is repeatable), logged to files, stopped with SIGTERM and, failing that,
//! killed; and the scheduling knobs (`taskset`, `chrt`) applied to running processes.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tarmac_control::http_client::HttpClient;

/// How long a stopped process may drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running child process of the benchmark.
pub struct Managed {
    pub name: String,
    child: Child,
    log_path: PathBuf,
}

/// How to tell that a process is ready to serve.
pub enum Readiness {
    /// `GET /ready` on this admin address answers 200.
    AdminReady(SocketAddr),
    /// This address accepts TCP connections.
    Accepts(SocketAddr),
}

impl Managed {
    /// Starts `program args`, pinned to `core` if given (through `taskset`, which execs
    /// the program: the pid is the program's). Output goes to `dir/NAME.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        core: Option<usize>,
        dir: &Path,
    ) -> Result<Self, String> {
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_for_stderr =
            log.try_clone().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let mut command = match core {
            Some(core) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(core.to_string()).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.args(args).stdin(Stdio::null()).stdout(log).stderr(log_for_stderr).process_group(0);
        // If this process dies hard, the kernel stops the child rather than leaving it.
        tarmac_transport::process::terminate_with_parent(&mut command);
        // Memory figures that do not move with a random load address.
        tarmac_transport::process::without_address_randomisation(&mut command);
        let child =
            command.spawn().map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
        Ok(Self { name: name.to_string(), child, log_path })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process is ready, failing with its log if it exits or takes longer
    /// than `timeout`.
    pub async fn wait_ready(&mut self, readiness: &Readiness, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited while starting: {status}.\n{}", self.name, self.log_tail(15)));
            }
            let ready = match readiness {
                Readiness::AdminReady(admin) => HttpClient::new(*admin, Duration::from_secs(1))
                    .get("/ready")
                    .await
                    .is_ok_and(|r| r.status.is_success()),
                Readiness::Accepts(addr) => {
                    TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
                }
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} was not ready within {timeout:?}.\n{}",
                    self.name,
                    self.log_tail(15)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it is still running (a proxy that crashed mid-run invalidates the run).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited: {status}.\n{}", self.name, self.log_tail(15))),
            _ => None,
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let mut tail = format!("Last lines of its log ({}):\n", self.log_path.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(tail, "    {line}");
        }
        tail
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Our own child, not yet reaped, so the pid cannot have been reused.
        let _ = tarmac_transport::process::terminate(self.child.id());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port for a child to bind, never one this run handed out before
/// ([`tarmac_transport::unused_loopback_port`]); the child fails to start, and says so, if
/// another process took it in between.
pub fn free_port() -> Result<SocketAddr, String> {
    tarmac_transport::unused_loopback_port().map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// Whether a scheduling tool (`taskset`, `chrt`) can be run.
pub fn tool_available(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Pins every thread of `pid` (and threads it starts later) to `core`.
pub fn pin(pid: u32, core: usize) -> Result<(), String> {
    run_quietly(Command::new("taskset").args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()]))
}

/// Moves every thread of `pid` to SCHED_FIFO priority 1, so that ordinary load on the
/// machine cannot preempt it, or back to normal scheduling.
pub fn set_realtime(pid: u32, realtime: bool) -> Result<(), String> {
    let (policy, priority) = if realtime { ("-f", "1") } else { ("-o", "0") };
    run_quietly(Command::new("chrt").args(["-a", policy, "-p", priority, &pid.to_string()]))
}

fn run_quietly(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}
