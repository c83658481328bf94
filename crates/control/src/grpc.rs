//! The control plane's gRPC server: discovery, and identity when the mesh has a CA.

use crate::discovery::server::DiscoveryService;
use crate::identity::IdentityService;

/// Serves discovery (and identity, if given) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    discovery: DiscoveryService,
    identity: Option<IdentityService>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(discovery.into_server())
        .add_optional_service(identity.map(IdentityService::into_server))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
