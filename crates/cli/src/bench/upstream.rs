//! The suite's upstream: an HTTP server that answers at once, so that what is measured
//! is the path to it. It runs as a child process (`tarmac bench --serve-upstream ADDR`),
//! pinned to the generator's core, on one thread.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The answer to every plain HTTP request: small, like an API's acknowledgement.
const BODY: &[u8] = b"ok\n";

/// Serves HTTP/1.1, h2c and unary gRPC on `addr` until the process is stopped.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the upstream's runtime: {e}"))?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("the upstream cannot listen on {addr}: {e}"))?;
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
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(|request| async move { Ok::<_, Infallible>(answer(&request)) }),
                    )
                    .await;
            });
        }
    })
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
