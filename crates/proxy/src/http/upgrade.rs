//! Tunnels: `Upgrade` (WebSocket and friends) and `CONNECT`.
//!
//! A tunnel is routed like any request (matching, filters, redirects, rewrites, weights;
//! response header modifiers apply to the `101`), dispatched like any request, and then
//! spliced by [`crate::endpoint::Endpoint::tunnel`]: the request goes over a fresh
//! HTTP/1.1 connection to the endpoint (to the next proxy too: an upgrade cannot ride the
//! shared HTTP/2 connection), and once the endpoint agrees (101, or 2xx to CONNECT) the
//! bytes of both upgraded connections are copied until either side closes. Tunnels are
//! never mirrored nor retried once sent: a second copy would be a second conversation.

use http::header;
use http::{Method, Request, Version};

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
