//! Opaque TCP: bytes copied both ways, with half-close, an idle timeout and byte counters.

use crate::metrics::TcpConnectionMetrics;
use prometheus_client::metrics::counter::Counter;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copies until both sides have closed or nothing moved for `idle_timeout`. When one side
/// finishes sending, the other side's write half is shut down and the reverse direction
/// keeps flowing (half-close), as a direct connection would behave.
pub async fn proxy<C, U>(client: C, mut upstream: U, metrics: TcpConnectionMetrics, idle_timeout: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Counted {
        inner: client,
        read: metrics.read.clone(),
        write: metrics.write.clone(),
        activity: activity.clone(),
        start,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let mut deadline = start + idle_timeout;
    loop {
        tokio::select! {
            result = &mut copy => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "TCP connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
                if last + idle_timeout <= Instant::now() {
                    tracing::debug!(?idle_timeout, "closing idle TCP connection");
                    return;
                }
                deadline = last + idle_timeout;
            }
        }
    }
}

/// Counts bytes on the client side of a connection: reads are bytes the client sent,
/// writes are bytes it received. Every transfer also marks the connection active.
struct Counted<T> {
    inner: T,
    read: Counter,
    write: Counter,
    activity: Arc<AtomicU64>,
    start: Instant,
}

impl<T> Counted<T> {
    fn touch(&self) {
        self.activity.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.write.inc_by(n as u64);
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
