//! A case directory: `manifests.yaml` (optional) and `expect.json`, in the format of the
//! shared conformance set (its INDEX.md). Unknown fields are ignored: the format carries
//! notes for people that the runner does not need.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
pub struct Expect {
    pub name: String,
    pub requests: Vec<Request>,
    #[serde(default)]
    pub weights: Option<Weights>,
    #[serde(default)]
    pub convergence: Option<Convergence>,
    /// Why Tarmac is known to fail this case: the runner still runs it, reports `XFAIL`
    /// when it fails and counts it as a failure when it passes (the mark is then stale).
    #[serde(default)]
    pub expected_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct From {
    pub workload: String,
    pub namespace: String,
}

/// `protocol`: `http` (HTTP/1.1), `h2c` (HTTP/2 with prior knowledge), `grpc` (a unary
/// call over h2c), or `websocket` (an upgrade of `path`, then a text and a binary message
/// that must come back unchanged). In `path`, `{{uuid}}` is a fresh id for every try.
#[derive(Debug, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub case: Option<String>,
    pub from: From,
    pub protocol: String,
    pub url: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub expect: Expectation,
}

#[derive(Debug, Deserialize)]
pub struct Expectation {
    pub status: u16,
    #[serde(default)]
    pub backend: Option<Backend>,
    #[serde(default)]
    pub request_seen_by_backend: Option<SeenByBackend>,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub response_headers_absent: Vec<String>,
    #[serde(default)]
    pub redirect_location: Option<RedirectLocation>,
    /// Workloads a copy of the request must reach (RequestMirror), as their echo records.
    #[serde(default)]
    pub mirrored_to: Vec<Mirror>,
    /// With mirrors of a `percent`: how their share of copies is measured.
    #[serde(default)]
    pub mirror_share: Option<MirrorShare>,
}

#[derive(Debug, Deserialize)]
pub struct Mirror {
    pub workload: String,
    pub namespace: String,
    /// The share of requests this mirror gets a copy of, when not every one.
    #[serde(default)]
    pub percent: Option<f64>,
}

/// Batches of requests over one connection; a batch passes when each mirror's copies are
/// within `tolerance` (absolute, as a fraction) of its `percent`.
#[derive(Debug, Deserialize)]
pub struct MirrorShare {
    pub requests_per_attempt: usize,
    pub max_attempts: usize,
    pub tolerance: f64,
}

#[derive(Debug, Deserialize)]
pub struct Backend {
    pub service: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SeenByBackend {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers_present: BTreeMap<String, String>,
    #[serde(default)]
    pub headers_absent: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct RedirectLocation {
    pub scheme: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<String>,
    pub path: String,
}

#[derive(Debug, Deserialize)]
pub struct Weights {
    pub backends: BTreeMap<String, f64>,
    pub tolerance: f64,
    pub requests_per_attempt: usize,
    pub max_attempts: usize,
}

#[derive(Debug, Deserialize)]
pub struct Convergence {
    pub required_consecutive_successes: usize,
    pub max_time_to_consistency_s: u64,
    pub retry_delay_after_failure_ms: u64,
}

impl Default for Convergence {
    fn default() -> Self {
        Self {
            required_consecutive_successes: 3,
            max_time_to_consistency_s: 30,
            retry_delay_after_failure_ms: 100,
        }
    }
}

/// A case ready to run: its expectations and the manifests of its mesh.
pub struct Case {
    pub expect: Expect,
    /// `(file name, text)`: the base manifests first, then the case's own.
    pub manifests: Vec<(String, String)>,
}

/// `base/mesh-base.yaml` in the case directory or one of its ancestors (the shared set
/// keeps it beside `cases/`).
fn find_base(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().map(|d| d.join("base").join("mesh-base.yaml")).find(|p| p.is_file())
}

/// A case directory that cannot be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Expect {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: no base/mesh-base.yaml here or in a parent directory", .0.display())]
    NoBase(PathBuf),
}

impl Case {
    pub fn load(dir: &Path) -> Result<Self, CaseError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|source| CaseError::Read { path: path.to_path_buf(), source })
        };
        let dir = std::fs::canonicalize(dir)
            .map_err(|source| CaseError::Read { path: dir.to_path_buf(), source })?;
        let expect_path = dir.join("expect.json");
        let text = read(&expect_path)?;
        let expect: Expect = match serde_json::from_str(&text) {
            Ok(expect) => expect,
            Err(source) => return Err(CaseError::Expect { path: expect_path, source }),
        };
        let base = find_base(&dir).ok_or_else(|| CaseError::NoBase(dir.clone()))?;
        let mut manifests = Vec::new();
        for path in [base, dir.join("manifests.yaml")] {
            if path.is_file() {
                let text = read(&path)?;
                manifests.push((path.display().to_string(), text));
            }
        }
        Ok(Self { expect, manifests })
    }
}
