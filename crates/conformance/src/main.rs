//! `conformance`: runs Gateway API mesh conformance cases against a local Tarmac mesh.
//!
//! Usage: `conformance CASE_DIR...`. Each case directory holds `expect.json` and usually
//! `manifests.yaml`, in the format of the shared conformance set; `base/mesh-base.yaml`
//! is found in the case directory or one of its parents. For each case the runner builds
//! a fresh mesh from the base and the case's manifests (Deployments become Workloads whose
//! pods are echo servers behind real `tarmac-proxy` sidecars; see [`mesh`]), sends every
//! request from the stated workload through its sidecar, checks every expectation, and
//! prints `PASS <name>` or `FAIL <name>: <what differed>` (`XFAIL`/`XPASS` for a case
//! marked `expected_failure`). The exit status is non-zero if any case failed or a marked
//! case passed. Nothing here knows a particular case: a new directory needs no code.

mod case;
mod check;
mod client;
mod echo;
mod manifests;
mod mesh;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() || dirs.iter().any(|d| d == "-h" || d == "--help") {
        eprintln!(
            "usage: conformance CASE_DIR...\n  each CASE_DIR holds expect.json (and manifests.yaml); base/mesh-base.yaml is found in it or a parent"
        );
        return ExitCode::from(2);
    }
    // Diagnostics of the in-process control plane and sidecars, when asked for.
    if let Ok(filter) = std::env::var("TARMAC_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for dir in &dirs {
        let outcome = runtime.block_on(check::run_case(dir));
        let name = &outcome.name;
        match (outcome.result, outcome.expected_failure) {
            (Ok(()), None) => println!("PASS {name}"),
            (Err(why), None) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
            // Known and reported, so that it is neither hidden nor a failure of the run.
            (Err(why), Some(known)) => println!("XFAIL {name}: {why} (expected to fail: {known})"),
            (Ok(()), Some(known)) => {
                failed += 1;
                println!("XPASS {name}: passes, but is marked expected to fail ({known}): remove the mark");
            }
        }
    }
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
