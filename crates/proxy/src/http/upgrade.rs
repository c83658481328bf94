//! Tunnels: `Upgrade` (WebSocket and friends) and `CONNECT`.
//!
//! A Service with routes routes its tunnels like any request (`route::serve`), which then
//! hands the chosen endpoint to [`tunnel`]; without routes [`forward`] picks one itself.
//!
//! A tunnel takes a connection of its own: the request goes over a fresh HTTP/1.1
//! connection to the endpoint (to the next proxy too: an upgrade cannot ride the shared
//! HTTP/2 connection), and once the endpoint agrees (101, or 2xx to CONNECT) the bytes of
//! both upgraded connections are copied until either side closes.

use super::forward::{Forward, ProxyError, authority, set_origin_form};
use super::{Body, ORIG_PROTO, strip_hop_by_hop};
use crate::endpoint::Endpoint;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// A CONNECT, or an HTTP/1 request asking to switch protocols.
pub fn is_tunnel<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return true;
    }
    req.version() <= Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// A tunnel of a Service without routes (or of the inbound app): to an endpoint of its own.
pub async fn forward(fwd: &Forward, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    let endpoint = fwd.pick()?;
    tunnel(fwd, req.map(Body::from), endpoint).await
}

/// Opens the tunnel `req` asks for through `endpoint`. The client's side of the upgrade
/// travels in the request's extensions, which survive the body's conversion.
pub async fn tunnel(
    fwd: &Forward,
    mut req: Request<Body>,
    endpoint: Arc<Endpoint>,
) -> Result<Response<Body>, ProxyError> {
    let is_connect = req.method() == Method::CONNECT;
    let client_side = hyper::upgrade::on(&mut req);
    req.headers_mut().remove(ORIG_PROTO);
    strip_hop_by_hop(req.headers_mut(), true);
    if !is_connect {
        if !req.headers().contains_key(header::HOST) {
            let host = authority(&req)?;
            let host = HeaderValue::from_str(host.as_str()).map_err(|e| ProxyError::BadUri(e.to_string()))?;
            req.headers_mut().insert(header::HOST, host);
        }
        set_origin_form(&mut req);
    }
    *req.version_mut() = Version::HTTP_11;

    let in_flight = endpoint.ewma.start();
    let mut sender = endpoint.h1_connect(true).await?;
    let mut rsp = sender
        .send_request(req)
        .await
        .map_err(|source| ProxyError::Upstream { addr: endpoint.addr, source })?;
    in_flight.complete();

    let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched || (is_connect && rsp.status().is_success()) {
        let upstream_side = hyper::upgrade::on(&mut rsp);
        let target = fwd.name.clone();
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client_side, upstream_side) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(%target, error = %e, "tunnel upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%target, error = %e, "tunnel closed with an error");
            }
        });
    }
    strip_hop_by_hop(rsp.headers_mut(), switched);
    Ok(rsp.map(Body::from))
}
