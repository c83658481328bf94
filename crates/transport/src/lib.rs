//! Sockets for the Tarmac proxy: reading the original destination of an intercepted
//! connection (`SO_ORIGINAL_DST`), socket options, a reader that replays bytes consumed by
//! protocol detection, and the iptables rules that send a workload's traffic through its
//! sidecar. All socket-level detail lives here so that the proxy crate deals in addresses
//! and byte streams only. It also picks unused loopback ports for the processes that
//! `tarmac bench` and the tests start.
//!
//! # Layout
//! - [`orig_dst`]: where an iptables-redirected connection was really going.
//! - [`prefixed`]: an I/O wrapper that first yields bytes already read from the socket.
//! - [`iptables`]: the interception rules (the sidecar's init step) as data, and their
//!   application inside the current network namespace.
//! - [`process`]: signals for child processes (SIGTERM, dying with the parent), and
//!   children without address-space randomisation, for `tarmac bench`.
//!
//! Unsafe code: three unsafe blocks in [`process`], each with its safety argument; the
//! crate denies `unsafe_code` everywhere else. Two other crates have some, confined to
//! modules that say why: the CLI (`up/process.rs`, `up/netns.rs`: libc calls such as
//! kill(2), geteuid(2) and flock(2)) and the load generator (`timer.rs`: registering a
//! timer's file descriptor with tokio).

#![deny(rust_2018_idioms, unsafe_code)]

pub mod iptables;
pub mod orig_dst;
pub mod prefixed;
pub mod process;

pub use orig_dst::original_dst;
pub use prefixed::PrefixedIo;

use std::net::SocketAddr;

/// Binds a TCP listener with the options a proxy wants: address reuse so a restarted proxy
/// binds at once, and a backlog large enough for bursts of connections.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// A loopback port free a moment ago (bound, then released), for a child process or a
/// server that must be told its port before it binds, and never handed out before by this
/// process: the kernel may offer a port it just got back again, and two listeners given
/// the same port (say a proxy's admin and traffic ports) would not both start. Another
/// process could still take the port in between.
pub fn unused_loopback_port() -> std::io::Result<SocketAddr> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let addr = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        if HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "the kernel offered only loopback ports this process already handed out, 1000 times",
    ))
}

/// Sets the options every proxied stream gets: no Nagle delay (requests are small and
/// latency matters more than packet count) and TCP keepalive so dead peers are noticed.
pub fn set_stream_options(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(60));
    let _ = sock.set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_loopback_ports_are_never_handed_out_twice() {
        let ports: Vec<SocketAddr> = (0..300).map(|_| unused_loopback_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().map(|a| a.port()).collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|a| a.ip().is_loopback()));
    }
}
