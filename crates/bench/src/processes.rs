//! The benchmark's child processes (proxies, Envoy, nginx, the upstream), supervised by
//! `tarmac_transport::process`: started pinned to a core when `taskset` is there and
//! without address-space randomisation, logged to files; and the scheduling knobs
//! (`taskset`, `chrt`) applied to running processes.

use super::topology::Running;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tarmac_transport::process::{self, Output, Supervised};

/// How long a stopped process may drain before it is killed.
/// A helper tool (`taskset`, `chrt`) that could not be run or refused.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// `command` as the standard library shows a command.
    #[error("cannot run {command}: {source}")]
    Run {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Starts `program args` as `name`, pinned to `core` if given, without address-space
/// randomisation (so that its RSS is repeatable), its output in `dir/NAME.log`.
pub fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    core: Option<usize>,
    dir: &Path,
) -> Result<Supervised, process::ProcessError> {
    let mut command = process::command(program, core);
    command.args(args);
    process::without_address_randomisation(command.as_std_mut());
    Supervised::spawn(name, command, Output::Log(dir.join(format!("{name}.log"))))
}

/// Stops every proxy of `routes`, client side first, each within [`STOP_GRACE`].
pub async fn stop_all(routes: Vec<Running>) {
    for proxy in routes.into_iter().flat_map(|r| r.proxies) {
        proxy.stop(STOP_GRACE).await;
    }
}

/// Whether a scheduling tool (`taskset`, `chrt`) can be run.
pub fn tool_available(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Pins every thread of `pid` (and threads it starts later) to `core`.
pub fn pin(pid: u32, core: usize) -> Result<(), ToolError> {
    run_quietly(Command::new("taskset").args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()]))
}

/// Moves every thread of `pid` to SCHED_FIFO priority 1, so that ordinary load on the
/// machine cannot preempt it, or back to normal scheduling.
pub fn set_realtime(pid: u32, realtime: bool) -> Result<(), ToolError> {
    let (policy, priority) = if realtime { ("-f", "1") } else { ("-o", "0") };
    run_quietly(Command::new("chrt").args(["-a", policy, "-p", priority, &pid.to_string()]))
}

fn run_quietly(command: &mut Command) -> Result<(), ToolError> {
    let output =
        command.output().map_err(|source| ToolError::Run { command: format!("{command:?}"), source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ToolError::Failed {
            command: format!("{command:?}"),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
