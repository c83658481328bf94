//! Asking whoever runs the Workloads to restart one: `POST
//! /api/v1/workloads/{namespace}/{name}/restart` (`tarmac restart`). The control plane runs
//! no process itself; `tarmac up` does, and hands [`crate::Config::with_restarts`] the
//! sending end of a channel it serves. A control plane without one (the `tarmac-control`
//! binary, whose workloads an orchestrator runs) answers 501.

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Restart every replica of a Workload, one at a time (docs/local-mode.md).
#[derive(Debug)]
pub struct RestartRequest {
    pub namespace: String,
    pub name: String,
    /// Answered when the last replica is ready again, or when the restart stopped.
    pub reply: oneshot::Sender<Result<Restarted, RestartError>>,
}

/// A finished rolling restart.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Restarted {
    pub namespace: String,
    pub workload: String,
    /// The replicas, in the order they were restarted.
    pub replicas: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestartError {
    #[error("no Workload {namespace}/{name} is running")]
    NotFound { namespace: String, name: String },
    /// A replica did not come back; those after it were left running as they were.
    #[error("{0}")]
    Stopped(String),
    #[error("the mesh is stopping")]
    ShuttingDown,
}

/// Where restart requests go.
pub type Restarts = mpsc::Sender<RestartRequest>;
