//! Making connections to endpoints: the seam between the request path and the network.
//!
//! The proxy connects with [`TcpConnect`]. Tests of retries, breakers and limits give
//! endpoints a connector of scripted peers instead (in-memory pipes served by a real HTTP
//! server), so that those stages run against backends that fail, stall and recover on cue
//! under paused time.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub type Connecting = Pin<Box<dyn Future<Output = io::Result<Transport>> + Send>>;

/// Opens a transport connection to an address. Connecting is rare (connections are
/// pooled), so a boxed future costs nothing that shows.
pub trait Connect: Debug + Send + Sync + 'static {
    fn connect(&self, addr: SocketAddr) -> Connecting;
}

/// TCP with the proxy's socket options.
#[derive(Debug, Default)]
pub struct TcpConnect;

impl Connect for TcpConnect {
    fn connect(&self, addr: SocketAddr) -> Connecting {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            tarmac_transport::set_stream_options(&stream);
            Ok(Transport::Tcp(stream))
        })
    }
}

/// A transport connection. Outside tests it is always TCP, and the match on it compiles
/// away.
#[derive(Debug)]
pub enum Transport {
    Tcp(TcpStream),
    /// One end of an in-memory pipe to a scripted peer.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Transport::Tcp($s) => $e,
            #[cfg(test)]
            Transport::Memory($s) => $e,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}
