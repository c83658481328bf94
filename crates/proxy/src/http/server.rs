//! Serving a detected HTTP connection with hyper.
//!
//! The request head is capped (`limits.max_header_bytes`, over it: 431); hyper answers
//! malformed requests with 400 itself. An HTTP/1 connection with no request open for
//! `limits.http_idle_timeout` is closed, whether it sits idle between requests or sends
//! its request head too slowly (see [`super::connections`]); an HTTP/2 connection with no
//! stream open that long gets GOAWAY. On drain, HTTP/1 connections finish the request in
//! flight and close; HTTP/2 connections send GOAWAY and finish their open streams.

use super::connections::{Close, ConnState, HttpConnections, OpenRequest};
use super::handle::{self, Handle};
use crate::config::Limits;
use crate::detect::Detected;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

pub async fn serve<I, H: Handle>(
    io: I,
    protocol: Detected,
    handler: Arc<H>,
    source: Option<std::net::SocketAddr>,
    limits: &Limits,
    connections: &Arc<HttpConnections>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let registered = connections.register();
    let state = registered.state.clone();
    let result = match protocol {
        Detected::Http2 => {
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                let open = state.begin();
                async move {
                    Ok::<_, Infallible>(
                        handle::respond(handler, req, source).await.map(|body| Open { body, open }),
                    )
                }
            });
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                // Fixed windows: adaptive ones grow to 16 MiB per connection, which a
                // client that sends and never reads its responses makes us hold.
                .initial_stream_window_size(super::STREAM_WINDOW)
                .initial_connection_window_size(super::CONNECTION_WINDOW)
                .keep_alive_interval(Duration::from_secs(30))
                // WebSocket over HTTP/2 (RFC 8441), served as an HTTP/1.1 upgrade.
                .enable_connect_protocol()
                .serve_connection(io, svc);
            // Idle HTTP/2 connections are told to go (GOAWAY) rather than dropped, so that
            // a request crossing the close is refused unprocessed and may be sent again.
            until_closed(conn, &registered.state, Idle::Shutdown, |c| c.graceful_shutdown()).await
        }
        _ => {
            // Boxed per request: hyper keeps a slot the size of the service's future for
            // the whole connection, and ours is 4.5 KB. An idle keep-alive connection then
            // holds 8 bytes instead; the price is one allocation per request.
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                let open = state.begin();
                Box::pin(async move {
                    Ok::<_, Infallible>(
                        handle::respond(handler, req, source).await.map(|body| Open { body, open }),
                    )
                })
            });
            // No timer: hyper's header read timeout would arm, and allocate, one for every
            // request; idle and slow clients are closed by the sweep instead.
            let conn = http1::Builder::new()
                .max_header_size(limits.max_header_bytes)
                .auto_date_header(false)
                .serve_connection(io, svc)
                .with_upgrades();
            until_closed(conn, &registered.state, Idle::Drop, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// What an idle connection gets.
enum Idle {
    /// Dropped, which closes it: HTTP/1 with no request open has nothing to lose.
    Drop,
    /// Asked to shut down gracefully, as on drain.
    Shutdown,
}

/// Runs a connection until it ends or must close: when idle, as `idle` says; on drain it
/// is asked to shut down gracefully and left to finish.
async fn until_closed<C, E>(
    conn: C,
    state: &ConnState,
    idle: Idle,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        biased;
        r = conn.as_mut() => r,
        close = state.closing() => match (close, idle) {
            (Close::Idle, Idle::Drop) => Ok(()),
            (Close::Drain, _) | (Close::Idle, Idle::Shutdown) => {
                shutdown(conn.as_mut());
                conn.await
            }
        },
    }
}

pin_project! {
    /// A response body that keeps its request open until hyper has written it and drops it.
    struct Open<B> {
        #[pin]
        body: B,
        open: OpenRequest,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Open<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
