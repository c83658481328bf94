//! The discovery gRPC service.
//!
//! Each `WatchService` stream follows the desired state and the running instances and
//! sends the recomputed [`ServiceUpdate`] whenever either changes and the result differs
//! from what this stream last sent. A stream lives until its proxy goes away.

use super::compute;
use crate::registry::{Instance, Registry};
use crate::store::Snapshot;
use futures_util::Stream;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tarmac_proto::discovery::discovery_server::{Discovery, DiscoveryServer};
use tarmac_proto::discovery::{InboundUpdate, ServiceUpdate, WatchInboundRequest, WatchServiceRequest};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

type UpdateStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
pub struct DiscoveryService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    registry: Registry,
}

impl DiscoveryService {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, registry: Registry) -> Self {
        Self { snapshots, registry }
    }

    pub fn into_server(self) -> DiscoveryServer<Self> {
        DiscoveryServer::new(self)
    }
}

/// State for one stream: the receivers it follows and what it sent last.
struct Watch {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    instances: watch::Receiver<Arc<Vec<Instance>>>,
    last: Option<ServiceUpdate>,
    namespace: String,
    name: String,
    port: u16,
}

impl Watch {
    async fn next(&mut self) -> Option<ServiceUpdate> {
        loop {
            let update = {
                let snapshot = self.snapshots.borrow_and_update().clone();
                let instances = self.instances.borrow_and_update().clone();
                compute(&snapshot, &instances, &self.namespace, &self.name, self.port)
            };
            // The generation alone changing is no news for this service.
            let same = self.last.as_ref().is_some_and(|last| {
                last.exists == update.exists
                    && last.endpoints == update.endpoints
                    && last.protocol == update.protocol
            });
            if !same {
                self.last = Some(update.clone());
                return Some(update);
            }
            tokio::select! {
                changed = self.snapshots.changed() => changed.ok()?,
                changed = self.instances.changed() => changed.ok()?,
            }
        }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchServiceStream = UpdateStream<ServiceUpdate>;
    type WatchInboundStream = UpdateStream<InboundUpdate>;

    async fn watch_service(
        &self,
        request: Request<WatchServiceRequest>,
    ) -> Result<Response<Self::WatchServiceStream>, Status> {
        let peer: Option<SocketAddr> = request.remote_addr();
        let req = request.into_inner();
        let port = u16::try_from(req.port).map_err(|_| Status::invalid_argument("port must be 1-65535"))?;
        if req.service.is_empty() || port == 0 {
            return Err(Status::invalid_argument("service and port are required"));
        }
        let namespace = if req.namespace.is_empty() { "default".to_string() } else { req.namespace };
        tracing::debug!(?peer, service = %req.service, %namespace, port, "watch service");
        let watch = Watch {
            snapshots: self.snapshots.clone(),
            instances: self.registry.subscribe(),
            last: None,
            namespace,
            name: req.service,
            port,
        };
        let stream = futures_util::stream::unfold(watch, |mut w| async move {
            let update = w.next().await?;
            Some((Ok(update), w))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch_inbound(
        &self,
        _request: Request<WatchInboundRequest>,
    ) -> Result<Response<Self::WatchInboundStream>, Status> {
        Err(Status::unimplemented(
            "inbound settings come with the policy work; proxies use their local config",
        ))
    }
}
