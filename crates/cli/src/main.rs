//! `tarmac`, the Tarmac command line: how people first meet the mesh and then operate it.
//! `tarmac demo` runs the sample bookstore of examples/bookstore on a local mesh (real
//! `tarmac-proxy` sidecars, mTLS, a canary route and traffic) in one command; `tarmac up DIR` runs a mesh from a directory of
//! YAML; `check`, `stat`, `edges`, `top`, `tap`, `routes`, `authz` and `prometheus-config`
//! look at a running mesh through the control plane's API; `tarmac identity` shows or
//! imports the mesh's CA; `tarmac inject` adds the sidecar to Kubernetes manifests and
//! `tarmac install` prints (or applies) the mesh's objects for a cluster and `tarmac
//! uninstall` removes them, `tarmac check --pre` says whether a cluster can take it; `tarmac restart`
//! restarts a Workload of a running `tarmac up` one replica at a time; `tarmac bench`
//! measures the latency and cost the mesh adds. This file only parses arguments and
//! dispatches.
//!
//! Unsafe code (denied by the workspace) only in `up/`'s `process.rs`, `sandbox.rs`,
//! `netns.rs` and `trust.rs`: libc calls std does not offer, each module saying which.

mod demo;
mod identity;
mod inject;
mod install;
mod observe;
mod restart;
mod sample;
mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// What a subcommand that returns here can fail with: each module's own error, printed as
/// `tarmac: MESSAGE`, then the advice it has (`up` and `demo` print theirs themselves).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Api(#[from] observe::ApiError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Inject(#[from] inject::InjectError),
    #[error(transparent)]
    Install(#[from] install::InstallError),
    #[error(transparent)]
    Sample(#[from] sample::SampleError),
    #[error(transparent)]
    Bench(#[from] tarmac_bench::BenchError),
}

impl CliError {
    fn advice(&self) -> Option<String> {
        match self {
            Self::Api(e) => e.advice(),
            Self::Install(e) => e.advice(),
            _ => None,
        }
    }
}

/// Log filter for the CLI's own diagnostics, in `tracing` env-filter syntax.
const ENV_LOG: &str = "TARMAC_LOG";

/// The Tarmac service mesh command line.
#[derive(Parser)]
#[command(name = "tarmac", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(demo::DemoArgs),
    Bench(tarmac_bench::BenchArgs),
    Up(up::UpArgs),
    Identity(identity::IdentityArgs),
    Inject(inject::InjectArgs),
    Install(install::InstallArgs),
    Uninstall(install::UninstallArgs),
    Check(observe::check::CheckArgs),
    Stat(observe::stat::StatArgs),
    Edges(observe::stat::EdgesArgs),
    Top(observe::tap::TopArgs),
    Tap(observe::tap::TapArgs),
    Routes(observe::routes::RoutesArgs),
    Authz(observe::authz::AuthzArgs),
    Restart(restart::RestartArgs),
    PrometheusConfig(observe::PrometheusConfigArgs),
    /// One app of the sample bookstore (`tarmac demo`, examples/): started by `tarmac up`.
    #[command(hide = true)]
    SampleApp(sample::SampleArgs),
    /// Starts a program unprivileged in a replica's namespace (`tarmac up --transparent`).
    #[command(hide = true)]
    Sandbox(up::sandbox::SandboxArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: a new mount namespace needs a single-threaded process.
    let cli = match cli.command {
        Command::Sandbox(args) => return up::sandbox::run(args),
        command => Cli { command },
    };
    // Diagnostics go to stderr and are quiet by default: stdout is the user's tables.
    // `up` reports refused configuration changes itself, once, on stdout; the store logs
    // each refused read.
    let default_filter = match cli.command {
        Command::Up(_) => "warn,tarmac_control::store=error",
        _ => "warn",
    };
    let filter = std::env::var(ENV_LOG).unwrap_or_else(|_| default_filter.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tarmac: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        // `up` and `demo` have their own exit codes (2: invalid configuration).
        Command::Up(args) => return runtime.block_on(up::run(args)),
        Command::Demo(args) => return runtime.block_on(demo::run(args)),
        Command::SampleApp(args) => runtime.block_on(sample::run(args)).map_err(CliError::from),
        Command::Bench(args) => tarmac_bench::main(args, &runtime).map_err(CliError::from),
        Command::Identity(args) => identity::run(args).map_err(CliError::from),
        Command::Inject(args) => inject::run(args).map_err(CliError::from),
        Command::Install(args) => runtime.block_on(install::install(args)).map_err(CliError::from),
        Command::Uninstall(args) => runtime.block_on(install::uninstall(args)).map_err(CliError::from),
        // `check` fails (exit 1) when a check fails, without a second message.
        Command::Check(args) => match runtime.block_on(observe::check::check(args)) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e.into()),
        },
        Command::Stat(args) => runtime.block_on(observe::stat::stat(args)).map_err(CliError::from),
        Command::Edges(args) => runtime.block_on(observe::stat::edges(args)).map_err(CliError::from),
        Command::Top(args) => runtime.block_on(observe::tap::top(args)).map_err(CliError::from),
        Command::Tap(args) => runtime.block_on(observe::tap::tap(args)).map_err(CliError::from),
        Command::Routes(args) => runtime.block_on(observe::routes::routes(args)).map_err(CliError::from),
        Command::Authz(args) => runtime.block_on(observe::authz::authz(args)).map_err(CliError::from),
        Command::Restart(args) => runtime.block_on(restart::restart(args)).map_err(CliError::from),
        Command::PrometheusConfig(args) => observe::prometheus_config(&args).map_err(CliError::from),
        Command::Sandbox(_) => unreachable!("dispatched before the runtime starts"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarmac: {e}");
            if let Some(advice) = e.advice() {
                eprintln!("{advice}");
            }
            ExitCode::FAILURE
        }
    }
}
