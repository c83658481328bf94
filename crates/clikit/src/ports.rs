//! Loopback ports for child processes (sidecars, apps, proxies under benchmark).

use std::net::SocketAddr;

/// A loopback port for a child to bind, never one this process handed out before. It comes
/// from below the kernel's ephemeral range ([`tarmac_transport::unused_loopback_port`]): a
/// port the kernel picked for a `bind(0)` could be taken, between this choice and the
/// child's bind, by any outgoing connection's source port on the machine, and the child
/// would fail with "Address already in use". It still fails, and says so, if another
/// process binds the port in between.
pub fn free_port() -> Result<SocketAddr, NoFreePort> {
    tarmac_transport::unused_loopback_port().map_err(NoFreePort)
}

/// Every port below the ephemeral range is taken, or the search itself failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot find a free port on 127.0.0.1: {0}")]
pub struct NoFreePort(#[source] pub std::io::Error);

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
