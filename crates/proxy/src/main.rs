//! The `tarmac-proxy` binary: parses arguments and configuration, sets up logging and the
//! runtime, runs the proxy until SIGTERM or Ctrl-C, then drains. `init` writes the
//! interception rules of a workload's network namespace.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tarmac_proxy::Config;
use tarmac_transport::iptables::InterceptRules;

/// Environment variable naming the configuration file when `--config` is not given.
const ENV_CONFIG: &str = "TARMAC_PROXY_CONFIG";
/// Log filter, in `tracing` env-filter syntax (default `info`).
const ENV_LOG: &str = "TARMAC_PROXY_LOG";
/// Exit status when the proxy stops itself because it cannot go on (its certificate
/// expired and could not be renewed): 2 is an invalid configuration, 1 a failed start.
const EXIT_CANNOT_GO_ON: u8 = 3;

#[derive(Parser)]
#[command(name = "tarmac-proxy", version, about = "The Tarmac sidecar proxy")]
struct Args {
    /// YAML configuration file (or set TARMAC_PROXY_CONFIG).
    #[arg(long, global = true)]
    config: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print the effective one.
    Check,
    /// Install iptables rules that send this network namespace's TCP through the proxy.
    Init {
        /// Port of the proxy's inbound listener.
        #[arg(long, default_value_t = 4143)]
        inbound_port: u16,
        /// Port of the proxy's transparent outbound listener.
        #[arg(long, default_value_t = 4140)]
        outbound_port: u16,
        /// The uid the proxy runs as; its own connections are not redirected.
        #[arg(long, default_value_t = 2102)]
        proxy_uid: u32,
        /// Inbound ports not redirected (comma separated); the admin port belongs here.
        #[arg(long, value_delimiter = ',', default_value = "4191")]
        skip_inbound_ports: Vec<u16>,
        /// Outbound destination ports not redirected (comma separated).
        #[arg(long, value_delimiter = ',')]
        skip_outbound_ports: Vec<u16>,
        /// The iptables binary (`iptables`, `iptables-legacy`, `ip6tables`, ...).
        #[arg(long, default_value = "iptables")]
        iptables: String,
        /// Print the commands instead of running them.
        #[arg(long)]
        dry_run: bool,
        /// Remove Tarmac's rules instead of installing them.
        #[arg(long)]
        remove: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var(ENV_LOG).unwrap_or_else(|_| "info".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match args.command {
        Some(Command::Init {
            inbound_port,
            outbound_port,
            proxy_uid,
            skip_inbound_ports,
            skip_outbound_ports,
            iptables,
            dry_run,
            remove,
        }) => {
            let rules = InterceptRules {
                inbound_port,
                outbound_port,
                proxy_uid,
                skip_inbound_ports,
                skip_outbound_ports,
            };
            if dry_run {
                print!("{}", rules.script(&iptables));
                return ExitCode::SUCCESS;
            }
            if remove {
                tarmac_transport::iptables::remove(&iptables);
                return ExitCode::SUCCESS;
            }
            match rules.apply(&iptables) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tarmac-proxy init: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Check) => match load(args.config) {
            Ok(config) => {
                print!("{}", config.to_yaml());
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("{msg}");
                ExitCode::from(2)
            }
        },
        None => match load(args.config) {
            Ok(config) => run(config),
            Err(msg) => {
                eprintln!("{msg}");
                ExitCode::from(2)
            }
        },
    }
}

fn load(path: Option<String>) -> Result<Config, String> {
    let path = path
        .or_else(|| std::env::var(ENV_CONFIG).ok())
        .ok_or_else(|| format!("tarmac-proxy: no configuration: pass --config FILE or set {ENV_CONFIG}"))?;
    Config::from_file(&path).map_err(|e| format!("tarmac-proxy: invalid configuration: {e}"))
}

fn run(config: Config) -> ExitCode {
    let runtime = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tarmac-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        tracing::debug!(config = %config.to_yaml(), "effective configuration");
        let running = match tarmac_proxy::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let a = &running.addrs;
        tracing::info!(admin = %a.admin, inbound = ?a.inbound, outbound_transparent = ?a.outbound_transparent, services = ?a.services, "tarmac-proxy ready");
        let code = tokio::select! {
            () = wait_for_signal() => ExitCode::SUCCESS,
            reason = running.failed() => {
                tracing::error!("{reason}; exiting so that the supervisor starts this proxy again");
                ExitCode::from(EXIT_CANNOT_GO_ON)
            }
        };
        tracing::info!("draining");
        if running.shutdown().await {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!("drain deadline passed with work in flight; exiting");
        }
        code
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
