//! What `tarmac up` needs to start sidecars: the `tarmac-proxy` binary, and free loopback
//! ports for their listeners.

use std::net::{Ipv4Addr, SocketAddr};
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

/// Chooses free loopback ports. Each stays bound here until [`PortAllocator::release`],
/// so that no two listeners get the same one; the sidecars and apps bind them right after.
#[derive(Default)]
pub struct PortAllocator {
    held: Vec<std::net::TcpListener>,
}

impl PortAllocator {
    pub fn next(&mut self) -> Result<SocketAddr, String> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("cannot read a bound port: {e}"))?;
        self.held.push(listener);
        Ok(addr)
    }

    /// Frees the ports for the sidecars and apps to bind.
    pub fn release(self) {
        drop(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_loopback_and_distinct_while_held() {
        let mut ports = PortAllocator::default();
        let a = ports.next().unwrap();
        let b = ports.next().unwrap();
        assert_ne!(a.port(), b.port());
        assert!(a.ip().is_loopback());
        ports.release();
    }
}
