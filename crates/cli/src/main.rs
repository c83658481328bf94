//! `tarmac`, the Tarmac command line: how people first meet the mesh and then operate it.
//! Today it has `tarmac demo`, which runs a complete local mesh (sample services, real
//! `tarmac-proxy` sidecars and traffic) in one command and shows the golden metrics the
//! sidecars measure, and `tarmac bench`, which measures the latency and cost the mesh
//! adds; the other commands of the design (`up`, `check`, `stat`, `tap`, ...) will join it
//! here. This file only parses arguments and dispatches.

mod bench;
mod demo;
mod duration;
mod http_client;
mod identity;
mod prometheus;
mod up;
mod workdir;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
    Bench(bench::BenchArgs),
    Up(up::UpArgs),
    Identity(identity::IdentityArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        // `up` has its own exit codes (2: invalid configuration).
        Command::Up(args) => return runtime.block_on(up::run(args)),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Bench(args) => bench::main(args, &runtime),
        Command::Identity(args) => identity::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tarmac: {message}");
            ExitCode::FAILURE
        }
    }
}
