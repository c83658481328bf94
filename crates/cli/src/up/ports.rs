//! What `tarmac up` needs to start sidecars: the `tarmac-proxy` binary, and free loopback
//! ports for their listeners.

use std::net::SocketAddr;
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

/// A free loopback port for a sidecar's or an app's listener, never one chosen before.
/// It comes from below the kernel's ephemeral range ([`tarmac_transport::unused_loopback_port`]):
/// a port the kernel picked for a `bind(0)` here could be taken, between this choice and
/// the child's bind, by any outgoing connection's source port on the machine, and the
/// sidecar would exit with "Address already in use" (seen in busy test runs).
pub fn free_port() -> Result<SocketAddr, String> {
    tarmac_transport::unused_loopback_port().map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_loopback_and_never_chosen_twice() {
        let ports: Vec<SocketAddr> = (0..50).map(|_| free_port().unwrap()).collect();
        assert!(ports.iter().all(|p| p.ip().is_loopback()));
        let distinct: std::collections::BTreeSet<u16> = ports.iter().map(SocketAddr::port).collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
