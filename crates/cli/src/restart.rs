//! `tarmac restart WORKLOAD`: a rolling restart of a Workload that a running `tarmac up`
//! runs, as `kubectl rollout restart` does for a Deployment: one replica at a time, the
//! next only once the new one is ready, so that callers lose no request
//! (docs/local-mode.md says how each replica is taken out and put back).

use crate::observe::{ApiError, ControlArgs};
use std::time::Duration;

/// Restart a Workload's replicas one at a time (a running `tarmac up`).
#[derive(clap::Args, Debug)]
pub struct RestartArgs {
    /// The Workload (or Deployment): `NAME` or `NAMESPACE/NAME`.
    pub workload: String,
    /// The Workload's namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// How long to wait for the whole restart; it goes on in `tarmac up` if this passes.
    #[arg(long, default_value = "5m", value_parser = tarmac_clikit::duration::parse)]
    pub timeout: Duration,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub async fn restart(args: RestartArgs) -> Result<(), ApiError> {
    let (namespace, name) = match args.workload.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (args.namespace.clone().unwrap_or_else(|| "default".to_string()), args.workload.clone()),
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(ApiError::NotAWorkload(args.workload));
    }
    println!("restarting {namespace}/{name}, one replica at a time...");
    let path = format!("/api/v1/workloads/{}/{}/restart", encode(&namespace), encode(&name));
    let response =
        args.control.client(args.timeout).post(&path).await.map_err(|e| args.control.unreachable(e))?;
    let answer = args.control.json(&response.body)?;
    if !response.status.is_success() {
        let message = crate::observe::reason(&answer);
        return Err(ApiError::RestartFailed { workload: format!("{namespace}/{name}"), message });
    }
    let replicas: Vec<&str> =
        answer["replicas"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
    println!(
        "restarted {namespace}/{name}: {} ({} replicas), each ready again",
        replicas.join(", "),
        replicas.len()
    );
    Ok(())
}

/// Percent-encodes what is not a path segment's plain character.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
