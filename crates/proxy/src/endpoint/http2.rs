//! The HTTP/2 client between proxies (and to h2c apps), on the `h2` crate directly.
//!
//! hyper's HTTP/2 client runs a dispatch task per connection besides the connection's own,
//! and per request spawns a task that waits for the response and hands it back through a
//! oneshot. Here the request's own task opens the stream and polls its response; the
//! connection's task only reads, writes and answers pings. A request body is sent from the
//! request's task while it waits for the response, and only one still streaming when the
//! response arrives (gRPC streams, long uploads) moves to a task of its own.
//!
//! What hyper did and this keeps: the flow-control windows and header limit the endpoint
//! sets, at most 100 streams until the peer's SETTINGS say otherwise, no server push,
//! `Content-Length` from a body of known size, `te` other than `trailers` dropped, flow
//! control released as the response body is read, trailers, RST_STREAM(CANCEL) when the
//! caller drops the request or the response (h2 resets a stream whose last handle goes),
//! and keep-alive pings (every 30 s, 10 s to answer, else the connection is closed). hyper
//! pinged only while streams were open; h2 does not tell its users how many are, so idle
//! connections are pinged too, which also finds a vanished peer before the next request.

use crate::http::HttpError;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::EndpointIo;

/// A ping goes out this long after the last answer...
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and a peer that does not answer within this long is taken for gone.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams opened before the peer's SETTINGS give its limit (RFC 9113 recommends peers
/// allow at least 100).
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// Request body bytes h2 buffers per stream beyond what the peer's window lets out.
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// A handle on an endpoint's HTTP/2 connection: cheap to clone, one per request.
#[derive(Clone, Debug)]
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// The endpoint's own handle: dropping it (the endpoint went, or replaced the connection)
/// tells the connection's task to close once its streams are done.
#[derive(Debug)]
pub struct Held {
    pub client: Client,
    _release: tokio::sync::oneshot::Sender<()>,
}

/// Connects HTTP/2 over `io`; the returned future drives the connection and must be
/// spawned.
pub async fn handshake(
    io: EndpointIo,
    stream_window: u32,
    connection_window: u32,
    max_header_bytes: u32,
) -> Result<(Held, impl Future<Output = Result<(), h2::Error>> + Send), h2::Error> {
    let (send, mut conn) = h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        .max_header_list_size(max_header_bytes)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let (release, released) = tokio::sync::oneshot::channel();
    let ping = conn.ping_pong();
    let driver = Driver {
        conn,
        ping,
        timer: Box::pin(tokio::time::sleep(KEEP_ALIVE_INTERVAL)),
        awaiting_pong: false,
        released: Some(released),
        closed: closed.clone(),
    };
    let held = Held { client: Client { send, closed }, _release: release };
    Ok((held, driver.run()))
}

impl Client {
    /// Whether the connection is gone or going: a new request needs another.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Waits for room for one more stream. An error means the connection is closing and
    /// nothing was sent.
    pub async fn ready(&mut self) -> Result<(), h2::Error> {
        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await.inspect_err(|_| self.mark_closed())
    }

    /// Opens a stream for `req` (after [`Client::ready`]). Its body, if any, is sent while
    /// the returned exchange is polled for the response.
    pub fn send<B>(&mut self, req: Request<B>) -> Result<Exchange<B>, h2::Error>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let (mut parts, body) = req.into_parts();
        // h2 refuses connection-specific headers; `te` may only say `trailers`.
        if parts.headers.get(header::TE).is_some_and(|te| te != "trailers") {
            parts.headers.remove(header::TE);
        }
        if let Some(len) = body.size_hint().exact()
            && (len != 0
                || !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT))
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let eos = body.is_end_stream();
        let (response, stream) =
            self.send.send_request(Request::from_parts(parts, ()), eos).inspect_err(|e| {
                if e.is_go_away() || e.is_io() {
                    self.mark_closed();
                }
            })?;
        let pipe = (!eos).then(|| Pipe { body, stream });
        Ok(Exchange { response, pipe, closed: self.closed.clone() })
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// The stream or connection failed.
    H2(h2::Error),
    /// The request body being sent failed (the stream was reset with INTERNAL_ERROR).
    RequestBody(HttpError),
}

/// One request in flight: its response, and its body while it is still being sent.
pub struct Exchange<B> {
    response: h2::client::ResponseFuture,
    pipe: Option<Pipe<B>>,
    closed: Arc<AtomicBool>,
}

impl<B> Future for Exchange<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<HttpError>,
{
    type Output = Result<Response<H2Body>, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(pipe) = &mut this.pipe {
            match pipe.poll(cx) {
                Poll::Ready(Ok(())) => this.pipe = None,
                Poll::Ready(Err(PipeError::Body(e))) => return Poll::Ready(Err(Failure::RequestBody(e))),
                // The stream is reset or the connection gone: the response says how.
                Poll::Ready(Err(PipeError::H2(_))) => this.pipe = None,
                Poll::Pending => {}
            }
        }
        match ready!(Pin::new(&mut this.response).poll(cx)) {
            Ok(rsp) => {
                if let Some(pipe) = this.pipe.take() {
                    // The response came first (a stream, or an early answer): the body
                    // goes on in a task of its own, as the caller reads the response.
                    tokio::spawn(async move {
                        let mut pipe = pipe;
                        if let Err(e) = std::future::poll_fn(|cx| pipe.poll(cx)).await {
                            tracing::debug!(error = ?e, "HTTP/2 request body ended early");
                        }
                    });
                }
                let remaining = content_length(rsp.headers());
                Poll::Ready(Ok(rsp.map(|recv| H2Body { recv, remaining, trailers: false })))
            }
            Err(e) => {
                if e.is_go_away() || e.is_io() {
                    this.closed.store(true, Ordering::Release);
                }
                Poll::Ready(Err(Failure::H2(e)))
            }
        }
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[derive(Debug)]
enum PipeError {
    H2(#[allow(dead_code)] h2::Error),
    Body(HttpError),
}

/// A request body on its way into its stream, as the peer's flow control lets it.
struct Pipe<B> {
    body: B,
    stream: h2::SendStream<Bytes>,
}

impl<B> Pipe<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipeError>> {
        loop {
            // Room for at least a byte before the next chunk is read: the body waits
            // while the peer's window is shut (h2 sends the chunk as the window opens).
            self.stream.reserve_capacity(1);
            if self.stream.capacity() == 0 {
                loop {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Poll::Ready(Err(PipeError::H2(e))),
                        None => {
                            return Poll::Ready(Err(PipeError::H2(h2::Error::from(h2::Reason::CANCEL))));
                        }
                    }
                }
            } else if let Poll::Ready(reset) = self.stream.poll_reset(cx) {
                let e = reset.map_or_else(|e| e, h2::Error::from);
                return Poll::Ready(Err(PipeError::H2(e)));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = self.body.is_end_stream();
                        self.stream.send_data(data, eos).map_err(PipeError::H2)?;
                        if eos {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.reserve_capacity(0);
                            self.stream.send_trailers(trailers).map_err(PipeError::H2)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(Err(PipeError::Body(e.into())));
                }
                None => {
                    self.stream.reserve_capacity(0);
                    self.stream.send_data(Bytes::new(), true).map_err(PipeError::H2)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A response body read from its stream, handing flow control back as it is read.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    /// What `Content-Length` says is still to come (h2 checks that it is kept).
    remaining: Option<u64>,
    trailers: bool,
}

impl HttpBody for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.trailers {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read means released: the window reopens as the caller takes data.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.trailers = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None if self.recv.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

/// The connection's task: reads and writes for every stream, and pings.
struct Driver {
    conn: h2::client::Connection<EndpointIo, Bytes>,
    ping: Option<h2::PingPong>,
    timer: Pin<Box<tokio::time::Sleep>>,
    awaiting_pong: bool,
    /// Resolves when the endpoint lets go of the connection: h2 closes a connection with
    /// no handles and no streams left, but is not woken by the last handle going.
    released: Option<tokio::sync::oneshot::Receiver<()>>,
    closed: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 keep-alive ping not answered within {0:?}")]
struct KeepAliveTimedOut(Duration);

impl Driver {
    async fn run(mut self) -> Result<(), h2::Error> {
        let result = std::future::poll_fn(|cx| self.poll(cx)).await;
        self.closed.store(true, Ordering::Release);
        result
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        if let Some(released) = &mut self.released
            && Pin::new(released).poll(cx).is_ready()
        {
            self.released = None;
        }
        if self.poll_keep_alive(cx)? {
            tracing::debug!(error = %KeepAliveTimedOut(KEEP_ALIVE_TIMEOUT), "closing the HTTP/2 connection");
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.conn).poll(cx)
    }

    /// True when the peer failed to answer a ping in time.
    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> Result<bool, h2::Error> {
        let Some(ping) = &mut self.ping else { return Ok(false) };
        if self.awaiting_pong && ping.poll_pong(cx)?.is_ready() {
            self.awaiting_pong = false;
            self.timer.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE_INTERVAL);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.awaiting_pong {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            ping.send_ping(h2::Ping::opaque())?;
            self.awaiting_pong = true;
            self.timer.as_mut().reset(now + KEEP_ALIVE_TIMEOUT);
            // Registers for the answer.
            if ping.poll_pong(cx)?.is_ready() {
                self.awaiting_pong = false;
                self.timer.as_mut().reset(now + KEEP_ALIVE_INTERVAL);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::scripted::{Answer, Harness, Peer, paced};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_request_body_still_streaming_when_the_response_arrives_is_sent_to_its_end() {
        // A gRPC stream's shape: the peer answers at once and echoes what the client sends
        // after that; the body must go on once the response is back in the caller's hands.
        let peer = Peer::h2(|_| Answer::Echo);
        let h = Harness::meshed(std::slice::from_ref(&peer));
        let endpoint = h.backend.endpoints()[0].clone();
        let (chunks, body) = paced().await;
        let mut req = http::Request::post("http://svc/").body(body).unwrap();
        *req.version_mut() = http::Version::HTTP_2;
        chunks.send("first ").await.unwrap();
        let rsp = endpoint.send(req, false).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let mut body = rsp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first ", "the echo of what was sent before the response");
        chunks.send("second").await.unwrap();
        drop(chunks);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second", "sent after the response arrived, and echoed back");
    }
}
