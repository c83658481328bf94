//! Where `tarmac up` finds the `tarmac-proxy` binary it starts as every replica's sidecar
//! (their ports come from `tarmac_clikit::ports`).

use std::path::PathBuf;

/// Environment variable naming the `tarmac-proxy` binary to run.
pub const ENV_PROXY_BIN: &str = "TARMAC_PROXY_BIN";

/// Why there is no `tarmac-proxy` to start.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{ENV_PROXY_BIN} is set to {}, which is not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("cannot tell where this executable is: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// Not beside this executable, where a build puts it.
    #[error("the sidecar proxy binary is missing: no {}.", .0.display())]
    Missing(PathBuf),
}

impl LocateError {
    /// What to do about it, on the lines after the message.
    pub fn advice(&self) -> Option<String> {
        match self {
            Self::Missing(_) => Some(format!(
                "Build it next to `tarmac` with `cargo build --release` (or `cargo build --bins` for a \
                 debug build), or point {ENV_PROXY_BIN} at a tarmac-proxy binary."
            )),
            _ => None,
        }
    }
}

/// Finds `tarmac-proxy`: `$TARMAC_PROXY_BIN`, else next to this executable, where Cargo
/// puts both binaries of the workspace.
pub fn locate_proxy_binary() -> Result<PathBuf, LocateError> {
    if let Some(path) = std::env::var_os(ENV_PROXY_BIN) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(LocateError::NotAFile(path));
        }
        return Ok(path);
    }
    let here = std::env::current_exe().map_err(LocateError::CurrentExe)?;
    let path = here.with_file_name("tarmac-proxy");
    if !path.is_file() {
        return Err(LocateError::Missing(path));
    }
    Ok(path)
}
