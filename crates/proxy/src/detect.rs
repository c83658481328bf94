//! Protocol detection from a connection's first bytes.
//!
//! A connection is HTTP/2 if it opens with the prior-knowledge preface, HTTP/1 if it opens
//! like an HTTP/1 request, TLS if it opens with a handshake record, and opaque otherwise.
//! Detection reads at most [`MAX_PEEK`] bytes and waits at most the configured timeout.
//!
//! "Opens like an HTTP/1 request" is deliberately wide: a request line with any
//! `HTTP/` version (`HTTP/9.9`, `HTTP/01.1`), leading empty lines, or a standard method
//! without a version are all HTTP, so that hyper answers them (400, 505) instead of the
//! bytes being forwarded as opaque TCP, where no route, policy or identity header rewrite
//! applies. Only what cannot be HTTP (`HELO ...`, RESP, binary) is opaque. What a silent
//! client gets is the caller's decision ([`Detection::timed_out`]).

use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest first line we wait for; request lines longer than this are still HTTP but are
/// judged from their beginning.
pub const MAX_PEEK: usize = 8192;
const MAX_METHOD_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    Opaque,
}

impl Detected {
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Opaque => "opaque",
        }
    }
}

/// The outcome of detection on a live connection.
#[derive(Debug)]
pub struct Detection {
    pub protocol: Detected,
    /// The client sent nothing decisive before the timeout. `protocol` is then `Opaque`,
    /// but only a port declared opaque may be forwarded: the client may have meant to send
    /// HTTP later, past detection (and past routes, policy and the identity rewrite).
    pub timed_out: bool,
    /// Bytes consumed while looking; they must be replayed to whoever handles the stream.
    pub buffered: BytesMut,
}

/// Classifies a prefix. `None` means more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    // TLS record: handshake (22), then protocol version 3.x.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() { Some(Detected::Http2) } else { None };
    }
    classify_http1(buf)
}

/// Methods of RFC 9110, PATCH and WebDAV's: a line starting with one of these and a
/// space is HTTP even without a version, so it is never forwarded as opaque bytes.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
];

fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

fn classify_http1(buf: &[u8]) -> Option<Detected> {
    // HTTP/1 servers skip empty lines before a request line (RFC 9112, section 2.2), and
    // so does hyper: they must not hide one from detection.
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    let Some(start) = start else {
        return if buf.len() >= MAX_PEEK { Some(Detected::Http1) } else { None };
    };
    let buf = &buf[start..];
    // Method: an uppercase token followed by a space.
    let method_end = match buf.iter().take(MAX_METHOD_LEN + 1).position(|&b| b == b' ') {
        Some(0) => return Some(Detected::Opaque),
        Some(i) => i,
        None if buf.len() > MAX_METHOD_LEN => return Some(Detected::Opaque),
        None => return if buf.iter().all(|&b| is_method_byte(b)) { None } else { Some(Detected::Opaque) },
    };
    let method = &buf[..method_end];
    if !method.iter().all(|&b| is_method_byte(b)) {
        return Some(Detected::Opaque);
    }
    if METHODS.contains(&method) {
        return Some(Detected::Http1);
    }
    let Some(line_end) = buf.iter().position(|&b| b == b'\n') else {
        // A request line longer than we buffer: the method looked right, let the HTTP
        // parser judge (and answer 414 or 400 if it is not a request).
        return if buf.len() >= MAX_PEEK { Some(Detected::Http1) } else { None };
    };
    let line = buf[..line_end].strip_suffix(b"\r").unwrap_or(&buf[..line_end]);
    // An extension method: HTTP when the line ends in a version, whichever (hyper answers
    // 505 to one it does not speak).
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if line[method_end + 1..].contains(&b' ') && version.starts_with(b"HTTP/") {
        Some(Detected::Http1)
    } else {
        Some(Detected::Opaque)
    }
}

/// What a connection whose peer closed before detection decided is: HTTP if what it sent
/// could begin a request (hyper then answers 400), so that a half-closed request line is
/// never forwarded as opaque bytes.
pub fn classify_at_end(buf: &[u8]) -> Detected {
    classify(buf).unwrap_or_else(|| {
        let text: &[u8] = &buf[buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count()..];
        let method_start = !text.is_empty() && text.iter().all(|&b| is_method_byte(b));
        let preface_start = !buf.is_empty() && H2_PREFACE.starts_with(buf);
        if method_start || preface_start { Detected::Http1 } else { Detected::Opaque }
    })
}

/// Reads from `io` until the protocol is known, the buffer is full, the peer closes, or
/// `timeout` passes.
pub async fn detect<I: AsyncRead + Unpin>(io: &mut I, timeout: Duration) -> std::io::Result<Detection> {
    let mut buffered = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buffered)).await;
        match read {
            Err(_elapsed) => {
                return Ok(Detection { protocol: Detected::Opaque, timed_out: true, buffered });
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                let protocol = classify_at_end(&buffered);
                return Ok(Detection { protocol, timed_out: false, buffered });
            }
            Ok(Ok(_)) => {
                if let Some(protocol) = classify(&buffered) {
                    return Ok(Detection { protocol, timed_out: false, buffered });
                }
                if buffered.len() >= MAX_PEEK {
                    return Ok(Detection {
                        protocol: classify_at_end(&buffered),
                        timed_out: false,
                        buffered,
                    });
                }
                if buffered.capacity() - buffered.len() < 512 {
                    buffered.reserve(1024);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"CONNECT example.org:443 HTTP/1.1\r\n"), Some(Detected::Http1));
        // Bare LF line endings are tolerated, as HTTP parsers do.
        assert_eq!(classify(b"GET / HTTP/1.1\n"), Some(Detected::Http1));
    }

    #[test]
    fn partial_input_waits() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"HELO mail.exa"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(&[0x16]), None);
    }

    #[test]
    fn h2_preface() {
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_frames), Some(Detected::Http2));
    }

    #[test]
    fn tls_client_hello() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Some(Detected::Tls));
    }

    #[test]
    fn other_protocols_are_opaque() {
        // Redis RESP, binary, lowercase text, and a line that is not a request line.
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(&[0, 1, 2, 3]), Some(Detected::Opaque));
        assert_eq!(classify(b"hello world\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"HELO mail.example\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"FETCH / SPDY/3\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Some(Detected::Opaque));
    }

    /// Each of these reached an app as opaque bytes, with a forged `tarmac-client-id`,
    /// through a strict-mTLS mesh (issue 17, finding 1): now hyper answers them.
    #[test]
    fn what_starts_like_http_is_http_whatever_follows() {
        for line in [
            &b"GET / HTTP/01.1\r\n"[..],
            b"GET / HTTP/9.9\r\n",
            b"GET / SPDY/3\r\n",
            b"\r\nGET / HTTP/1.1\r\n",
            b"\r\n\r\nPOST /x HTTP/1.1\n",
            b"GET /\r\n",
            b"DELETE /a b c\r\n",
            b"PURGE /cache HTTP/1.1\r\n",
            b"PURGE /cache HTTP/2\r\n",
            b"GET ",
        ] {
            assert_eq!(classify(line), Some(Detected::Http1), "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(classify(b"\r\n\r\n"), None, "empty lines wait for more");
        assert_eq!(classify(&b"\r\n".repeat(MAX_PEEK / 2)), Some(Detected::Http1), "not forever");
    }

    #[test]
    fn a_peer_closing_early_is_http_if_it_began_like_http() {
        assert_eq!(classify_at_end(b"GE"), Detected::Http1);
        assert_eq!(classify_at_end(b"\r\nPOS"), Detected::Http1);
        assert_eq!(classify_at_end(b"PRI * HTT"), Detected::Http1);
        assert_eq!(classify_at_end(b"hello"), Detected::Opaque);
        assert_eq!(classify_at_end(&[0x16]), Detected::Opaque);
        assert_eq!(classify_at_end(b""), Detected::Opaque);
    }

    #[tokio::test]
    async fn a_request_line_cut_by_a_half_close_is_http() {
        let data: &[u8] = b"PUT /admin HTTP/1.1";
        let mut io = data;
        let d = detect(&mut io, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.protocol, Detected::Http1);
    }

    #[tokio::test]
    async fn silent_client_times_out_as_opaque() {
        let (mut client, _server) = tokio::io::duplex(64);
        let d = detect(&mut client, Duration::from_millis(20)).await.unwrap();
        assert!(d.timed_out);
        assert_eq!(d.protocol, Detected::Opaque);
    }

    #[tokio::test]
    async fn bytes_read_are_kept_for_replay() {
        let data: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut io = data;
        let d = detect(&mut io, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.protocol, Detected::Http1);
        assert!(data.starts_with(&d.buffered));
        assert!(!d.buffered.is_empty());
    }
}
