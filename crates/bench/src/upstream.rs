//! The suite's upstream: an HTTP server that answers at once, so that what is measured
//! is the path to it. It runs as a child process (`tarmac bench --serve-upstream ADDR`),
//! pinned to the generator's core, on one thread.
//!
//! For `--routing`'s retried route it fails the first try of each request: a request
//! carrying [`FAIL_FIRST_HEADER`] (which that route's rule adds) and a number the load
//! generator gives it ([`tarmac_loadgen::SEQUENCE_HEADER`]) gets 503 the first time that
//! number is seen, and 200 when the proxy tries it again.

use super::error::BenchError;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The answer to every plain HTTP request: small, like an API's acknowledgement.
const BODY: &[u8] = b"ok\n";
/// Asks the upstream to fail the first try of a numbered request.
pub const FAIL_FIRST_HEADER: &str = "x-bench-fail-first";
/// Numbers failed once and not tried again yet, at most this many (a retry that never
/// comes, denied by a budget, must not grow the set forever).
const MAX_PENDING: usize = 65_536;

/// The numbered requests that failed their first try and wait for their retry.
#[derive(Debug, Default)]
pub struct FailFirst {
    pending: std::collections::HashSet<u64>,
}

impl FailFirst {
    /// Whether this try of request `seq` fails: the first does, the next does not.
    pub fn fails(&mut self, seq: u64) -> bool {
        if self.pending.remove(&seq) {
            return false;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.clear();
        }
        self.pending.insert(seq);
        true
    }
}

/// Serves HTTP/1.1, h2c and unary gRPC on `addr` until the process is stopped.
pub fn serve(addr: SocketAddr) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::UpstreamRuntime)?;
    let fail_first = std::rc::Rc::new(std::cell::RefCell::new(FailFirst::default()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let listener =
            TcpListener::bind(addr).await.map_err(|source| BenchError::UpstreamListen { addr, source })?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before accept: keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "upstream accept failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let fail_first = fail_first.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |request| {
                    let failed = must_fail(&request, &fail_first);
                    async move { Ok::<_, Infallible>(if failed { unavailable() } else { answer(&request) }) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(LocalExecutor)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Spawns hyper's HTTP/2 tasks on the upstream's one thread, where the fail-first state
/// lives.
#[derive(Clone, Copy)]
struct LocalExecutor;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExecutor {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Whether this try must fail: it asks to ([`FAIL_FIRST_HEADER`]), and is the first of
/// its number.
fn must_fail(request: &Request<Incoming>, state: &std::cell::RefCell<FailFirst>) -> bool {
    let headers = request.headers();
    if !headers.contains_key(FAIL_FIRST_HEADER) {
        return false;
    }
    let seq = headers.get(tarmac_loadgen::SEQUENCE_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    seq.is_some_and(|seq| state.borrow_mut().fails(seq))
}

fn unavailable() -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"first try\n")).boxed());
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response
}

fn answer(request: &Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let grpc =
        request.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        // An empty message, then grpc-status 0 in the trailers, as a unary call ends.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body =
            Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])).with_trailers(async move { Some(Ok(trailers)) });
        let mut response = Response::new(body.boxed());
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)).boxed());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_try_of_each_number_fails_and_the_next_does_not() {
        let mut state = FailFirst::default();
        assert!(state.fails(1));
        assert!(state.fails(2), "another request's first try");
        assert!(!state.fails(1), "the retry of 1");
        assert!(!state.fails(2));
        assert!(state.fails(1), "a number seen again after its retry starts over");
        assert_eq!(state.pending.len(), 1);
        for seq in 10..10 + MAX_PENDING as u64 + 5 {
            state.fails(seq);
        }
        assert!(state.pending.len() <= MAX_PENDING, "bounded when retries never come");
    }
}
