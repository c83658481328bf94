//! Sockets for the Tarmac proxy: reading the original destination of an intercepted
//! connection (`SO_ORIGINAL_DST`), socket options, a reader that replays bytes consumed by
//! protocol detection, and the iptables rules that send a workload's traffic through its
//! sidecar. All socket-level detail lives here so that the proxy crate deals in addresses
//! and byte streams only. It also picks unused loopback ports for the processes that
//! `tarmac bench` and the tests start, and holds the DNS-rebinding guard that the proxy's
//! admin listener and the control plane's API share ([`host_is_address_or_localhost`]).
//!
//! # Layout
//! - [`host_port`]: `HOST:PORT` where the host may be a DNS name, resolved per connection.
//! - [`orig_dst`]: where an iptables-redirected connection was really going.
//! - [`prefixed`]: an I/O wrapper that first yields bytes already read from the socket.
//! - [`iptables`]: the interception rules (the sidecar's init step) as data, and their
//!   application inside the current network namespace.
//! - [`process`]: child processes supervised for `tarmac up` and the benchmark (process
//!   groups, log files or piped output, readiness, SIGTERM then SIGKILL, dying with the
//!   parent), children pinned to a core or without address-space randomisation, and a
//!   secret handed to one child through a pipe.
//!
//! Unsafe code: only in [`process`] (signals and `pre_exec` hooks, through libc), which
//! allows it and gives each block its safety argument; the workspace denies `unsafe_code`
//! everywhere else (root `Cargo.toml`, `[workspace.lints]`).

pub mod host_port;
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

/// A loopback port free a moment ago (checked by binding it), for a child process or a
/// server that must be told its port before it binds, and never handed out before by this
/// process.
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`), which
/// the kernel never hands out by itself: a port from inside that range can be taken by any
/// outgoing connection's source port, or any `bind(0)`, between this check and the child's
/// bind, which made spawned control planes and proxies fail now and then with "Address
/// already in use" in a busy test run. Each process starts its walk at an offset drawn from
/// its pid, so that two test processes do not walk the same ports. Where the range leaves
/// too little room below it, the kernel's own choice is used, as before.
pub fn unused_loopback_port() -> std::io::Result<SocketAddr> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    const FLOOR: u16 = 20_000;

    let below = ephemeral_floor().filter(|low| *low >= FLOOR + 2_000).map(|low| (FLOOR, low - FLOOR));
    let claim = |port: u16| HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner()).insert(port);
    if let Some((floor, width)) = below {
        let width = u32::from(width);
        // The pid spreads processes over the range; the multiplier is a prime near width/φ
        // so neighbouring pids land far apart.
        let seed = std::process::id().wrapping_mul(7_919) % width;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
        for _ in 0..width {
            let port = floor + (NEXT.fetch_add(1, Ordering::Relaxed) % width) as u16;
            let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
            if std::net::TcpListener::bind(addr).is_ok() && claim(port) {
                return Ok(addr);
            }
        }
    } else {
        for _ in 0..1000 {
            let addr = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
            if claim(addr.port()) {
                return Ok(addr);
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no loopback port left that this process has not handed out",
    ))
}

/// The lowest port the kernel picks by itself, read from `ip_local_port_range`.
fn ephemeral_floor() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Whether an HTTP `Host` names the server by address (`127.0.0.1:4190`, `[::1]`,
/// `10.211.0.7:4191`) or as `localhost`. A web page cannot send such a `Host` from a
/// name of its own: DNS rebinding (a page whose name is made to resolve to 127.0.0.1, so
/// that the browser lets it read a local API) always arrives with the page's name.
/// Listeners that serve only tools and scrapers refuse every other name.
pub fn host_is_address_or_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
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
    fn only_addresses_and_localhost_pass_the_rebinding_guard() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:4190",
            "[::1]",
            "[::1]:4191",
            "10.211.0.7:4191",
            "localhost",
            "LOCALHOST:4190",
            "web.localhost",
            "localhost.",
        ] {
            assert!(host_is_address_or_localhost(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:4190",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1",
            "",
            "1.2.3",
        ] {
            assert!(!host_is_address_or_localhost(host), "{host}");
        }
    }

    #[test]
    fn unused_loopback_ports_are_never_handed_out_twice() {
        let ports: Vec<SocketAddr> = (0..300).map(|_| unused_loopback_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().map(|a| a.port()).collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|a| a.ip().is_loopback()));
        if let Some(low) = ephemeral_floor() {
            assert!(ports.iter().all(|a| a.port() < low), "never from the kernel's own range (from {low})");
        }
    }
}
