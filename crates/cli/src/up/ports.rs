//! Where `tarmac up` finds the `tarmac-proxy` binary it starts as every replica's sidecar
//! (their ports come from `tarmac_clikit::ports`).

use std::path::PathBuf;

/// Environment variable naming the `tarmac-proxy` binary to run.
pub const ENV_PROXY_BIN: &str = "TARMAC_PROXY_BIN";

/// Finds `tarmac-proxy`: `$TARMAC_PROXY_BIN`, else next to this executable, where Cargo
/// puts both binaries of the workspace.
pub fn locate_proxy_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(ENV_PROXY_BIN) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!("{ENV_PROXY_BIN} is set to {}, which is not a file", path.display()));
        }
        return Ok(path);
    }
    let here = std::env::current_exe().map_err(|e| format!("cannot tell where this executable is: {e}"))?;
    let path = here.with_file_name("tarmac-proxy");
    if !path.is_file() {
        return Err(format!(
            "the sidecar proxy binary is missing: no {}.\n\
             Build it next to `tarmac` with `cargo build --release` (or `cargo build --bins` for a \
             debug build), or point {ENV_PROXY_BIN} at a tarmac-proxy binary.",
            path.display()
        ));
    }
    Ok(path)
}
