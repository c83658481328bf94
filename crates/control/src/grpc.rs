//! The control plane's gRPC server: discovery, and identity when the mesh has a CA.
//!
//! With a CA the API is served over TLS only, with a certificate the control plane issues
//! itself ([`tarmac_identity::control_plane_id`], reissued before it expires), so that a
//! proxy can tell it from anything else listening there and nobody on the path reads or
//! changes what it is told. A proxy presents its workload certificate once it has one
//! (the bootstrap call with a token presents none); each request then carries the
//! [`Caller`] its certificate proves, and discovery serves a proxy only what its own
//! namespace may see. Without a CA (`tarmac up --no-identity`) the API is plaintext and
//! callers are taken at their word: such a mesh authenticates nobody.

use crate::discovery::server::DiscoveryService;
use crate::identity::IdentityService;
use crate::tls::TlsError;
use futures_util::StreamExt;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tarmac_identity::SpiffeId;
use tarmac_identity::ca::{Ca, SharedCa};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// A TLS handshake with the control plane must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the listen backlog.
const HANDSHAKES: usize = 256;

/// Who is calling, as the connection proved it: present in every request's extensions
/// when the API is served over TLS.
#[derive(Clone, Debug)]
pub struct Caller {
    pub remote: Option<SocketAddr>,
    /// The SPIFFE ID of the client certificate, if one was presented.
    pub identity: Option<SpiffeId>,
}

impl Caller {
    /// Whether a proxy claiming to run in `namespace` as `service_account` is one.
    pub fn check(&self, namespace: &str, service_account: &str) -> Result<(), tonic::Status> {
        let Some(id) = &self.identity else {
            return Err(tonic::Status::unauthenticated(
                "present the workload certificate from this mesh's CA: discovery needs one",
            ));
        };
        if id.namespace != namespace || (!service_account.is_empty() && id.service_account != service_account)
        {
            return Err(tonic::Status::permission_denied(format!(
                "the certificate proves {id}, not namespace {namespace:?} and service account {service_account:?}"
            )));
        }
        Ok(())
    }
}

/// The TLS settings of the gRPC listener: the control plane's own certificate (from its
/// CA), client certificates optional and verified against the mesh's trust anchors.
pub fn server_tls(
    ca: Arc<SharedCa>,
    trust_domain: &str,
    lifetime: Duration,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let anchors = tarmac_identity::ca::pem_certs(ca.current().anchors_pem())
        .map_err(|source| TlsError::Certificates { what: "trust anchors".to_string(), source })?;
    for der in anchors {
        roots
            .add(der.into())
            .map_err(|source| TlsError::Rustls { what: "trust anchor".to_string(), source })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let id = tarmac_identity::control_plane_id(trust_domain)?;
    let own = OwnCertificate::new(ca, id, lifetime, provider.clone())?;
    let mut config =
        crate::tls::tls13(provider)?.with_client_cert_verifier(verifier).with_cert_resolver(Arc::new(own));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The control plane's certificate, issued by its own CA and issued again once two
/// thirds of its lifetime have passed (checked at each handshake: they are rare, since
/// proxies keep their connection).
#[derive(Debug)]
struct OwnCertificate {
    ca: Arc<SharedCa>,
    id: SpiffeId,
    lifetime: Duration,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl OwnCertificate {
    fn new(
        ca: Arc<SharedCa>,
        id: SpiffeId,
        lifetime: Duration,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let first = issue(&ca.current(), &id, lifetime, &provider)?;
        Ok(Self { ca, id, lifetime, provider, current: Mutex::new(first) })
    }
}

fn issue(
    ca: &Ca,
    id: &SpiffeId,
    lifetime: Duration,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    const WHAT: &str = "the control plane's certificate";
    let (chain, key) =
        ca.issue_with_new_key(id, lifetime).map_err(|source| TlsError::Issue { what: WHAT, source })?;
    let key = crate::tls::certified_key(WHAT, &chain, &key, provider)?;
    Ok((key, SystemTime::now() + lifetime * 2 / 3))
}

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if SystemTime::now() >= current.1 {
            match issue(&self.ca.current(), &self.id, self.lifetime, &self.provider) {
                Ok(fresh) => *current = fresh,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot issue the control plane's own certificate again")
                }
            }
        }
        Some(current.0.clone())
    }
}

/// A TLS connection to the gRPC server, with the caller it proved.
struct TlsConnection {
    stream: TlsStream<TcpStream>,
    caller: Caller,
}

impl Connected for TlsConnection {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves discovery (and identity, if given) on `listener` until `shutdown` completes:
/// over TLS with `tls`, else in plaintext.
pub async fn serve(
    listener: tokio::net::TcpListener,
    discovery: DiscoveryService,
    identity: Option<IdentityService>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let server = tonic::transport::Server::builder()
        .add_service(discovery.into_server())
        .add_optional_service(identity.map(IdentityService::into_server));
    let Some(tls) = tls else {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        return server.serve_with_incoming_shutdown(incoming, shutdown).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Handshakes run side by side (a slow client must not hold up the others), bounded.
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => return Some(((stream, remote), listener)),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the control plane's gRPC listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .map(move |(stream, remote)| {
        let acceptor = acceptor.clone();
        async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| tarmac_identity::x509::spiffe_id(leaf).ok());
                    Some(Ok::<_, std::io::Error>(TlsConnection {
                        stream,
                        caller: Caller { remote: Some(remote), identity },
                    }))
                }
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake with the control plane failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake with the control plane timed out");
                    None
                }
            }
        }
    })
    .buffer_unordered(HANDSHAKES)
    .filter_map(std::future::ready);
    server.serve_with_incoming_shutdown(incoming, shutdown).await
}
