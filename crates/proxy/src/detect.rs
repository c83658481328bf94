//! Protocol detection from a connection's first bytes.
//!
//! A connection is HTTP/2 if it opens with the prior-knowledge preface, HTTP/1 if its first
//! line is a request line ending in `HTTP/1.x`, TLS if it opens with a handshake record,
//! and opaque otherwise. Detection reads at most [`MAX_PEEK`] bytes and waits at most the
//! configured timeout; a client that sends nothing (a server-speaks-first protocol on a
//! port not marked opaque) is forwarded as opaque TCP once the timeout passes.

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
    /// The client sent nothing decisive before the timeout.
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

fn classify_http1(buf: &[u8]) -> Option<Detected> {
    // Method: an uppercase token followed by a space.
    let method_end = match buf.iter().take(MAX_METHOD_LEN + 1).position(|&b| b == b' ') {
        Some(0) => return Some(Detected::Opaque),
        Some(i) => i,
        None if buf.len() > MAX_METHOD_LEN => return Some(Detected::Opaque),
        None => {
            return if buf.iter().all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_') {
                None
            } else {
                Some(Detected::Opaque)
            };
        }
    };
    if !buf[..method_end].iter().all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_') {
        return Some(Detected::Opaque);
    }
    let Some(line_end) = buf.iter().position(|&b| b == b'\n') else {
        // A request line longer than we buffer: the method looked right, let the HTTP
        // parser judge (and answer 414 or 400 if it is not a request).
        return if buf.len() >= MAX_PEEK { Some(Detected::Http1) } else { None };
    };
    let line = buf[..line_end].strip_suffix(b"\r").unwrap_or(&buf[..line_end]);
    if line.len() >= 8 && line[line.len() - 8..].starts_with(b"HTTP/1.") {
        Some(Detected::Http1)
    } else {
        Some(Detected::Opaque)
    }
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
                let protocol = classify(&buffered).unwrap_or(Detected::Opaque);
                return Ok(Detection { protocol, timed_out: false, buffered });
            }
            Ok(Ok(_)) => {
                if let Some(protocol) = classify(&buffered) {
                    return Ok(Detection { protocol, timed_out: false, buffered });
                }
                if buffered.len() >= MAX_PEEK {
                    return Ok(Detection { protocol: Detected::Opaque, timed_out: false, buffered });
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
        assert_eq!(classify(b"GET /index.ht"), None);
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
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Some(Detected::Opaque));
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
