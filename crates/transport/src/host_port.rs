//! An address to connect to that may be a DNS name: `10.96.0.20:4180`, `[::1]:4180`, or
//! `tarmac-control.tarmac-system.svc:4180`. On Kubernetes a sidecar finds the control plane
//! by its Service's name; the name is resolved at every connection, so a Service that is
//! re-created with another cluster IP is followed without restarting anything.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use tokio::net::TcpStream;

/// `HOST:PORT`, the host an IP address or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPort {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

/// Why a `HOST:PORT` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("`{0}`: expected HOST:PORT, the host an IP address (IPv6 in brackets) or a DNS name")]
    Shape(String),
    #[error("`{input}`: `{port}` is not a port (1-65535)")]
    Port { input: String, port: String },
    #[error(
        "`{input}`: `{host}` is not a DNS name (labels of letters, digits and `-`, at most 63 characters each)"
    )]
    Name { input: String, host: String },
}

impl HostPort {
    /// Connects to it, resolving a name now (every address it resolves to, in order).
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        match self {
            HostPort::Addr(addr) => TcpStream::connect(addr).await,
            HostPort::Name { host, port } => TcpStream::connect((host.as_str(), *port)).await,
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        HostPort::Addr(addr)
    }
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = input.parse::<SocketAddr>() {
            return Ok(HostPort::Addr(addr));
        }
        let Some((host, port)) = input.rsplit_once(':') else {
            return Err(HostPortError::Shape(input.to_string()));
        };
        // An unbracketed IPv6 address, or an IP with a bad port, is not a name either.
        if host.contains(':') || host.starts_with('[') {
            return Err(HostPortError::Shape(input.to_string()));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(HostPortError::Port { input: input.to_string(), port: port.to_string() }),
        };
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(HostPort::Addr(SocketAddr::new(host.parse().expect("checked"), port)));
        }
        if !is_dns_name(host) {
            return Err(HostPortError::Name { input: input.to_string(), host: host.to_string() });
        }
        Ok(HostPort::Name { host: host.to_ascii_lowercase(), port })
    }
}

/// RFC 1123 host names: dot-separated labels of letters, digits and `-`, not starting or
/// ending with `-`, 1-63 characters each, 253 in all; a trailing dot (fully qualified) is
/// allowed. An all-numeric last label would read as an address, so it is refused.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label_ok)
        && !host.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPort::Addr(addr) => addr.fmt(f),
            HostPort::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl TryFrom<String> for HostPort {
    type Error = HostPortError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HostPort> for String {
    fn from(h: HostPort) -> String {
        h.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse_and_print_back() {
        for (input, want) in [
            ("10.96.0.20:4180", "10.96.0.20:4180"),
            ("[::1]:4180", "[::1]:4180"),
            ("tarmac-control.tarmac-system.svc:4180", "tarmac-control.tarmac-system.svc:4180"),
            (
                "Tarmac-Control.tarmac-system.svc.cluster.local.:4180",
                "tarmac-control.tarmac-system.svc.cluster.local.:4180",
            ),
            ("localhost:1", "localhost:1"),
        ] {
            assert_eq!(input.parse::<HostPort>().unwrap().to_string(), want, "{input}");
        }
        assert!(matches!("127.0.0.1:9".parse(), Ok(HostPort::Addr(_))));
    }

    #[test]
    fn what_is_neither_is_refused_by_what_is_wrong() {
        assert!(matches!("tarmac-control".parse::<HostPort>(), Err(HostPortError::Shape(_))));
        assert!(matches!("::1:4180".parse::<HostPort>(), Err(HostPortError::Shape(_))));
        assert!(matches!("host:0".parse::<HostPort>(), Err(HostPortError::Port { .. })));
        assert!(matches!("host:http".parse::<HostPort>(), Err(HostPortError::Port { .. })));
        assert!(matches!("10.0.0.1:99999".parse::<HostPort>(), Err(HostPortError::Port { .. })));
        for bad in ["-a.svc:1", "a_b:1", "a..b:1", ":1", "1.2.3:1", "$(VAR):4180"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_name_is_resolved_when_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let name: HostPort = format!("localhost:{port}").parse().unwrap();
        let (stream, accepted) = tokio::join!(name.connect(), listener.accept());
        stream.unwrap();
        accepted.unwrap();
    }
}
