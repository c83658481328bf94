//! Just enough WebSocket (RFC 6455) for the echo's `/ws` endpoint and the runner's client:
//! the opening handshake's accept key, and single frames read and written whole. The
//! runner needs no dependency for it, and a frame's size is bounded.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Larger frames are refused: the conformance messages are a few bytes.
const MAX_PAYLOAD: u64 = 1 << 20;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xa;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    base64(&sha1(format!("{}{GUID}", key.trim()).as_bytes()))
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn new_key() -> String {
    let bytes: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    base64(&bytes)
}

/// Reads one frame: `(opcode, payload)`, unmasked. Fragmented messages are not needed here.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(io.read_u16().await?),
        127 => io.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a {len}-byte frame")));
    }
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// Writes one final frame; a client masks it (RFC 6455 §5.3), a server does not.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    opcode: u8,
    payload: &[u8],
    mask: bool,
) -> std::io::Result<()> {
    let mut out = vec![0x80 | opcode];
    let bit = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = fastrand::u32(..).to_be_bytes();
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    io.write_all(&out).await?;
    io.flush().await
}

/// Echoes every data frame back until the peer closes, as the suite's echo does on `/ws`.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    while let Ok((opcode, payload)) = read_frame(&mut io).await {
        let reply = match opcode {
            TEXT | BINARY => opcode,
            PING => PONG,
            CLOSE => {
                let _ = write_frame(&mut io, CLOSE, &payload, false).await;
                return;
            }
            _ => continue,
        };
        if write_frame(&mut io, reply, &payload, false).await.is_err() {
            return;
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// SHA-1, which the handshake requires; nothing else here relies on it.
fn sha1(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_the_one_of_rfc_6455() {
        // RFC 6455 §1.3's example.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_not() {
        for (mask, len) in [(true, 5), (false, 200), (true, 70_000)] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            write_frame(&mut wire, BINARY, &payload, mask).await.unwrap();
            let (opcode, got) = read_frame(&mut wire.as_slice()).await.unwrap();
            assert_eq!((opcode, got), (BINARY, payload));
        }
    }
}
