//! The original destination of a connection redirected by iptables `REDIRECT`.

use std::net::SocketAddr;

/// Returns where the client meant to connect before netfilter redirected the connection to
/// us. For a connection that was not redirected, the kernel reports our own local address
/// (or an error when conntrack has no entry); callers compare against their listeners to
/// catch that case, which would otherwise make the proxy connect to itself.
pub fn original_dst(stream: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() { sock.original_dst_v4()? } else { sock.original_dst_v6()? };
    addr.as_socket().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "SO_ORIGINAL_DST returned a non-IP address")
    })
}
