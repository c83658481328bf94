//! Serving a detected HTTP connection with hyper.
//!
//! The request head is capped (`limits.max_header_bytes`, over it: 431); hyper answers
//! malformed requests with 400 itself. On drain, HTTP/1 connections finish the request in
//! flight and close; HTTP/2 connections send GOAWAY and finish their open streams.

use super::forward::Forward;
use crate::config::Limits;
use crate::detect::Detected;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub async fn serve<I>(
    io: I,
    protocol: Detected,
    fwd: Arc<Forward>,
    source: Option<std::net::SocketAddr>,
    limits: &Limits,
    drain: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let fwd = fwd.clone();
        async move { Ok::<_, Infallible>(fwd.handle(req, source).await) }
    });
    let io = TokioIo::new(io);
    let result = match protocol {
        Detected::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .adaptive_window(true)
                .keep_alive_interval(Duration::from_secs(30))
                .serve_connection(io, svc);
            until_drained(conn, &drain, |c| c.graceful_shutdown()).await
        }
        _ => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .max_header_size(limits.max_header_bytes)
                .auto_date_header(false)
                .serve_connection(io, svc)
                .with_upgrades();
            until_drained(conn, &drain, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Runs a connection; on drain, asks it to shut down gracefully and lets it finish.
async fn until_drained<C, E>(
    conn: C,
    drain: &CancellationToken,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.cancelled() => {
            shutdown(conn.as_mut());
            conn.await
        }
    }
}
