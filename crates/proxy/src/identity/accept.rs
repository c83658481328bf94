//! The inbound side of mesh TLS. A TLS connection is mesh TLS when its ClientHello offers
//! one of the mesh's ALPN protocols; any other TLS is the app's own business and passes
//! through untouched, as in a mesh without identity.

use super::{ALPN_H2, ALPN_HTTP1, ALPN_TCP, MeshTls, handshake_advice, handshake_failure};
use crate::detect::Detected;
use crate::metrics::{Direction, Metrics};
use std::sync::Arc;
use tarmac_transport::PrefixedIo;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// A ClientHello larger than this is not one a proxy sends (its hybrid key share makes
/// it about 1.5 KiB): the connection is treated as not mesh TLS.
const MAX_CLIENT_HELLO: usize = 16 * 1024;

pub type MeshStream = TlsStream<PrefixedIo<TcpStream>>;

pub enum Accepted {
    /// mTLS from another proxy, authenticated.
    Mesh { stream: Box<MeshStream>, protocol: Detected, client_id: Arc<str> },
    /// Not mesh TLS: the bytes read so far, to replay, and the untouched connection.
    Other { prefix: Vec<u8>, stream: TcpStream },
    /// Mesh TLS that failed (counted and logged), or a connection that broke.
    Refused,
}

/// Reads the ClientHello that `prefix` starts and, if it is mesh TLS, completes the
/// handshake by `deadline`.
pub async fn accept(
    tls: &MeshTls,
    prefix: Vec<u8>,
    mut stream: TcpStream,
    deadline: Instant,
    metrics: &Metrics,
) -> Accepted {
    let mut buffered = prefix;
    // Closed, failed or silent mid-hello: nothing to serve.
    let Some(hello) = read_client_hello(&mut buffered, &mut stream, deadline).await else {
        return Accepted::Refused;
    };
    if !hello.mesh {
        return Accepted::Other { prefix: buffered, stream };
    }
    let peer = stream.peer_addr().ok();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let handshake =
        tokio::time::timeout_at(deadline, acceptor.accept(PrefixedIo::new(buffered, stream))).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return refuse(metrics, peer, handshake_failure(&e), &e.to_string()),
        Err(_) => return refuse(metrics, peer, "timeout", "the handshake did not finish in time"),
    };
    let (_, conn) = stream.get_ref();
    let client_id = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| tarmac_identity::x509::spiffe_id(leaf));
    let client_id: Arc<str> = match client_id {
        Some(Ok(id)) => id.to_string().into(),
        Some(Err(e)) => return refuse(metrics, peer, "no_identity", &e.to_string()),
        None => return refuse(metrics, peer, "no_client_certificate", "no client certificate"),
    };
    let protocol = match conn.alpn_protocol() {
        Some(ALPN_H2) => Detected::Http2,
        Some(ALPN_HTTP1) => Detected::Http1,
        _ => Detected::Opaque,
    };
    metrics.tls_handshake(Direction::Inbound, "ok", super::group_name(conn));
    Accepted::Mesh { stream: Box::new(stream), protocol, client_id }
}

fn refuse(
    metrics: &Metrics,
    peer: Option<std::net::SocketAddr>,
    result: &'static str,
    error: &str,
) -> Accepted {
    metrics.tls_handshake(Direction::Inbound, result, "");
    tracing::warn!(
        ?peer,
        result,
        error,
        advice = handshake_advice(result, Direction::Inbound),
        "inbound mTLS handshake refused"
    );
    Accepted::Refused
}

/// What the proxy reads in a ClientHello without answering it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// It offers one of the mesh's ALPN protocols: mesh TLS, from another proxy.
    pub mesh: bool,
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
}

/// Reads from `stream` into `buffered` (which holds what was read before) until it holds
/// a whole ClientHello, by `deadline`; `None` if the client closed, failed or stayed
/// silent first. Bytes that are not a ClientHello, or one larger than any a proxy sends,
/// read as a hello that offers nothing.
pub async fn read_client_hello<I: AsyncRead + Unpin>(
    buffered: &mut Vec<u8>,
    stream: &mut I,
    deadline: Instant,
) -> Option<Hello> {
    loop {
        match client_hello(buffered) {
            Some(hello) => return Some(hello),
            None if buffered.len() >= MAX_CLIENT_HELLO => return Some(Hello::default()),
            None => {}
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buffered)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// The ClientHello in `buf`; `None` while incomplete.
pub fn client_hello(buf: &[u8]) -> Option<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(Hello::default()),
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let mesh = hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| [ALPN_H2, ALPN_HTTP1, ALPN_TCP].contains(&p)));
            Some(Hello { mesh, server_name: hello.server_name().map(str::to_owned) })
        }
        Err(_) => Some(Hello::default()),
    }
}

/// Whether the ClientHello in `buf` offers a mesh ALPN protocol; `None` while incomplete.
pub fn offers_mesh_alpn(buf: &[u8]) -> Option<bool> {
    client_hello(buf).map(|hello| hello.mesh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_and_partial_hellos() {
        assert_eq!(offers_mesh_alpn(b"GET / HTTP/1.1\r\n"), Some(false));
        // A record header announcing more than was sent: wait for the rest.
        assert_eq!(offers_mesh_alpn(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), None);
    }

    #[tokio::test]
    async fn an_apps_hello_is_read_whole_for_its_server_name() {
        let config = rustls::ClientConfig::builder_with_provider(crate::identity::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("books.shop.svc.cluster.local").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        // Detection saw the record's first bytes; the rest arrives after.
        let (mut buffered, rest) = (hello[..2].to_vec(), &hello[2..]);
        let mut stream = rest;
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let read = read_client_hello(&mut buffered, &mut stream, deadline).await.unwrap();
        assert_eq!(read, Hello { mesh: false, server_name: Some("books.shop.svc.cluster.local".into()) });
        assert_eq!(buffered, hello, "every byte kept, to replay");
    }
}
