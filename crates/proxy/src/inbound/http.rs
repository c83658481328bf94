//! The inbound request stages: the client's identity, authorization and rate limits
//! (the workload's policy, [`super::policy`]), then the app.
//!
//! The identity stage always runs: whatever a client wrote under `tarmac-client-id` is
//! replaced by the identity its connection proved, so the app can trust the header. The
//! policy stages cost one atomic load when nothing can be refused or limited.

use super::policy::Policies;
use crate::backend::{Backend, Hop};
use crate::conn::Shared;
use crate::error::ProxyError;
use crate::http::handle::{Handle, Meta};
use crate::http::{Body, CLIENT_ID, ORIG_PROTO, upgrade};
use crate::metrics::Peer;
use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// The local app at one address, as seen by one kind of client.
#[derive(Debug)]
pub struct App {
    meta: Meta,
    backend: Backend,
    /// The workload's inbound policy, and the app's port it is looked up by.
    policies: Arc<Policies>,
    port: u16,
}

impl App {
    pub fn new(addr: SocketAddr, meta: Meta, shared: &Shared, policies: Arc<Policies>) -> Self {
        let backend = shared.fixed_backend(addr, &meta);
        Self { meta, backend, policies, port: addr.port() }
    }
}

impl Handle for App {
    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn backend(&self) -> &Backend {
        &self.backend
    }

    async fn call(
        &self,
        mut req: Request<Incoming>,
        source: Option<SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let audited = match self.policies.get() {
            Some(policy) => self.policies.check_request(&policy, self.port, &mut req, &self.meta, source)?,
            None => None,
        };
        set_client_id(req.headers_mut(), &self.meta.peer);
        // Only a proxy sets the marker, and only a proxy can reach this far with it: an
        // app's own copy was dropped by its outbound proxy.
        let restore_h1 = req.headers_mut().remove(ORIG_PROTO).is_some();
        let hop = Hop { tunnel: upgrade::is_tunnel(&req), restore_h1 };
        let mut rsp = self.backend.dispatch(req.map(Body::from), hop).await.map_err(|e| e.error)?;
        if let Some(audited) = audited {
            rsp.extensions_mut().insert(audited);
        }
        Ok(rsp)
    }

    fn admit_connection(&self, source: Option<SocketAddr>) -> bool {
        match self.policies.get() {
            Some(policy) => self.policies.admit_connection(&policy, self.port, &self.meta, source),
            None => true,
        }
    }
}

/// The identity header's name spelt with underscores: many app servers (CGI and its
/// heirs: WSGI, PHP, Rack) read `tarmac_client_id` and `tarmac-client-id` as the same
/// variable, so a client-sent one must not survive beside the verified header.
const CLIENT_ID_UNDERSCORED: [&str; 3] = ["tarmac_client_id", "tarmac_client-id", "tarmac-client_id"];

/// Replaces any client-sent identity header with the one the connection proved.
fn set_client_id(headers: &mut http::HeaderMap, peer: &Peer) {
    headers.remove(CLIENT_ID);
    for name in CLIENT_ID_UNDERSCORED {
        headers.remove(name);
    }
    if let Peer::Authenticated(id) = peer
        && let Ok(value) = HeaderValue::from_str(id)
    {
        headers.insert(CLIENT_ID, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_proven_identity_reaches_the_app_whatever_the_spelling() {
        let mut headers = http::HeaderMap::new();
        for name in ["tarmac-client-id", "tarmac_client_id", "tarmac_client-id", "tarmac-client_id"] {
            headers.append(name, HeaderValue::from_static("spiffe://cluster.local/ns/default/sa/admin"));
        }
        set_client_id(&mut headers, &Peer::Authenticated("spiffe://cluster.local/ns/default/sa/web".into()));
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers[CLIENT_ID], "spiffe://cluster.local/ns/default/sa/web");
        set_client_id(&mut headers, &Peer::Plaintext);
        assert!(headers.is_empty(), "a plaintext client has no identity: {headers:?}");
    }

    #[test]
    fn naming_the_identity_in_connection_does_not_remove_it() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("keep-alive, tarmac-client-id"));
        set_client_id(&mut headers, &Peer::Authenticated("spiffe://cluster.local/ns/default/sa/web".into()));
        crate::http::strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers[CLIENT_ID], "spiffe://cluster.local/ns/default/sa/web");
    }
}
