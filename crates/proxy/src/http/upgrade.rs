//! Tunnels: `Upgrade` (WebSocket and friends), `CONNECT`, and HTTP/2's extended CONNECT.
//!
//! A tunnel is routed like any request (matching, filters, redirects, rewrites, weights;
//! response header modifiers apply to the `101`), dispatched like any request, and then
//! spliced by [`crate::endpoint::Endpoint::tunnel`]: the request goes over a fresh
//! HTTP/1.1 connection to the endpoint (to the next proxy too: an upgrade cannot ride the
//! shared HTTP/2 connection), and once the endpoint agrees (101, or 2xx to CONNECT) the
//! bytes of both upgraded connections are copied until either side closes. Tunnels are
//! never mirrored nor retried once sent: a second copy would be a second conversation.
//!
//! An HTTP/2 client asks for a WebSocket with an extended CONNECT (RFC 8441: method
//! CONNECT, `:protocol websocket`, a path). The proxy serves it as the HTTP/1.1 upgrade it
//! stands for, as RFC 8441 section 5 allows: [`from_extended_connect`] turns it into
//! `GET` with `Upgrade` as it is read, so that routes (method matches, path rewrites) see
//! one WebSocket whichever protocol the client spoke, and every later hop is the HTTP/1.1
//! tunnel above; [`to_extended_connect`] turns the `101` back into the `200` that opens
//! the client's stream.

use crate::error::ProxyError;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

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

/// Turns an extended CONNECT into the HTTP/1.1 upgrade it stands for; false for any other
/// request. A WebSocket gets the `Sec-WebSocket-Key` that HTTP/1.1 servers require and
/// RFC 8441 clients do not send.
pub fn from_extended_connect<B>(req: &mut Request<B>) -> Result<bool, ProxyError> {
    if req.method() != Method::CONNECT {
        return Ok(false);
    }
    let Some(protocol) = req.extensions_mut().remove::<hyper::ext::Protocol>() else {
        return Ok(false);
    };
    let upgrade = HeaderValue::from_str(protocol.as_str())
        .map_err(|_| ProxyError::BadUri(format!("invalid :protocol {:?}", protocol.as_str())))?;
    let websocket = protocol.as_str().eq_ignore_ascii_case("websocket");
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    headers.insert(header::UPGRADE, upgrade);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if websocket && !headers.contains_key(SEC_WEBSOCKET_KEY) {
        headers.insert(SEC_WEBSOCKET_KEY, websocket_key());
    }
    Ok(true)
}

/// The answer to an extended CONNECT, from the answer to its HTTP/1.1 upgrade: `101`
/// becomes `200`, without the headers of the HTTP/1.1 handshake. Any other 2xx did not
/// switch protocols, and yet would open the client's tunnel (HTTP/2 takes every 2xx to
/// CONNECT as success) with nothing behind it: it is a failure. Other answers pass.
pub fn to_extended_connect<B>(mut rsp: Response<B>) -> Result<Response<B>, ProxyError> {
    match rsp.status() {
        StatusCode::SWITCHING_PROTOCOLS => {
            *rsp.status_mut() = StatusCode::OK;
            let headers = rsp.headers_mut();
            for name in [header::UPGRADE, header::CONNECTION, header::CONTENT_LENGTH, SEC_WEBSOCKET_ACCEPT] {
                headers.remove(name);
            }
            Ok(rsp)
        }
        status if status.is_success() => Err(ProxyError::NotSwitched(status)),
        _ => Ok(rsp),
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455, 4.1). It only
/// proves to the client that the server speaks WebSocket; the proxy is that client.
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_be_bytes());
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extended(protocol: &str) -> Request<()> {
        let mut req = Request::connect("http://books.default:80/chat?room=1").body(()).unwrap();
        *req.version_mut() = Version::HTTP_2;
        req.extensions_mut().insert(hyper::ext::Protocol::from(protocol));
        req
    }

    #[test]
    fn an_extended_connect_becomes_the_http1_upgrade_it_stands_for() {
        let mut req = extended("websocket");
        assert!(from_extended_connect(&mut req).unwrap());
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "http://books.default:80/chat?room=1", "path and authority stay");
        assert_eq!(req.headers()[header::UPGRADE], "websocket");
        assert!(is_tunnel(&req), "it takes the tunnel's path");
        let key = req.headers()[SEC_WEBSOCKET_KEY].to_str().unwrap().to_string();
        assert_eq!(key.len(), 24, "{key}");
        assert!(key.ends_with("=="), "{key}");
        assert!(key[..22].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'), "{key}");
        assert_ne!(websocket_key(), websocket_key(), "a fresh nonce each time");
        // Done once: the request no longer carries a `:protocol`.
        assert!(!from_extended_connect(&mut req).unwrap());
    }

    #[test]
    fn a_plain_connect_and_other_protocols() {
        let mut connect = Request::connect("books.default:443").body(()).unwrap();
        assert!(!from_extended_connect(&mut connect).unwrap());
        assert_eq!(connect.method(), Method::CONNECT);
        let mut other = extended("connect-udp");
        assert!(from_extended_connect(&mut other).unwrap());
        assert_eq!(other.headers()[header::UPGRADE], "connect-udp");
        assert!(other.headers().get(SEC_WEBSOCKET_KEY).is_none(), "a key is WebSocket's alone");
        let mut own_key = extended("websocket");
        own_key.headers_mut().insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        from_extended_connect(&mut own_key).unwrap();
        assert_eq!(own_key.headers()[SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn a_switch_opens_the_stream_and_a_2xx_without_one_fails() {
        let switched = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .header("x-rule", "chat")
            .body(())
            .unwrap();
        let rsp = to_extended_connect(switched).unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers().len(), 1, "{:?}", rsp.headers());
        let ok = Response::builder().status(200).body(()).unwrap();
        assert!(matches!(to_extended_connect(ok), Err(ProxyError::NotSwitched(StatusCode::OK))));
        let refused = Response::builder().status(403).body(()).unwrap();
        assert_eq!(to_extended_connect(refused).unwrap().status(), 403);
    }
}
