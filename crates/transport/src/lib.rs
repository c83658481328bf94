//! Sockets for the Tarmac proxy: reading the original destination of an intercepted
//! connection (`SO_ORIGINAL_DST`), socket options, a reader that replays bytes consumed by
//! protocol detection, and the iptables rules that send a workload's traffic through its
//! sidecar. All socket-level detail lives here so that the proxy crate deals in addresses
//! and byte streams only.
//!
//! # Layout
//! - [`orig_dst`]: where an iptables-redirected connection was really going.
//! - [`prefixed`]: an I/O wrapper that first yields bytes already read from the socket.
//! - [`iptables`]: the interception rules (the sidecar's init step) as data, and their
//!   application inside the current network namespace.
//! - [`process`]: signals for child processes (SIGTERM, dying with the parent), and
//!   children without address-space randomisation, for `tarmac bench`.
//!
//! This is the only crate of the workspace with `unsafe` code: three unsafe blocks in
//! [`process`], each with its safety argument. Every other module forbids it.

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

/// Sets the options every proxied stream gets: no Nagle delay (requests are small and
/// latency matters more than packet count) and TCP keepalive so dead peers are noticed.
pub fn set_stream_options(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(60));
    let _ = sock.set_tcp_keepalive(&keepalive);
}
