//! A small HTTP/1.1 client for local processes: the control plane scraping proxies' admin
//! endpoints and relaying their tap streams, the CLI calling the control plane's API, the
//! sample apps (`tarmac sample-app`) calling each other through their sidecars.
//!
//! Built on hyper's connection-level API with a minimal pool of keep-alive connections to
//! one address. A general-purpose client (DNS, TLS, proxies, many hosts) would be more
//! machinery than talking to loopback needs.

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;

/// Idle connections kept per client; more concurrent requests than this open connections
/// that close after use.
const MAX_IDLE_CONNECTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("request to {addr} failed: {source}")]
    Request { addr: SocketAddr, source: hyper::Error },
    #[error("no response from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// GET requests (and the odd POST) to one address over reused connections.
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    host: HeaderValue,
    timeout: Duration,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

impl HttpClient {
    /// `timeout` bounds each request, connecting included.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        let host = HeaderValue::from_str(&addr.to_string()).expect("a socket address is a valid Host");
        Self { addr, host, timeout, idle: Mutex::new(Vec::new()) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `GET path` and reads the whole response.
    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        tokio::time::timeout(self.timeout, self.get_without_timeout(path))
            .await
            .map_err(|_| ClientError::Timeout { addr: self.addr, timeout: self.timeout })?
    }

    /// Sends `POST path` without a body on a new connection (never sent twice: a POST is
    /// not safe to repeat) and reads the whole response.
    pub async fn post(&self, path: &str) -> Result<Response, ClientError> {
        let post = async {
            let sender = self.connect().await?;
            self.send(sender, Method::POST, path).await
        };
        tokio::time::timeout(self.timeout, post)
            .await
            .map_err(|_| ClientError::Timeout { addr: self.addr, timeout: self.timeout })?
    }

    /// Sends `GET path` on a connection of its own and returns as soon as the response
    /// headers arrive (within the timeout); the body is read as it streams (tap, NDJSON).
    /// Dropping the body closes the connection.
    pub async fn get_streaming(&self, path: &str) -> Result<(StatusCode, Incoming), ClientError> {
        let start = async {
            let mut sender = self.connect().await?;
            let failed = |source| ClientError::Request { addr: self.addr, source };
            sender.ready().await.map_err(failed)?;
            let request = Request::get(path)
                .header(HOST, self.host.clone())
                .body(Empty::new())
                .expect("paths are written by this program and valid");
            let response = sender.send_request(request).await.map_err(failed)?;
            Ok((response.status(), response.into_body()))
        };
        tokio::time::timeout(self.timeout, start)
            .await
            .map_err(|_| ClientError::Timeout { addr: self.addr, timeout: self.timeout })?
    }

    async fn get_without_timeout(&self, path: &str) -> Result<Response, ClientError> {
        if let Some(sender) = self.take_idle() {
            match self.send(sender, Method::GET, path).await {
                Ok(response) => return Ok(response),
                // The server may close a kept-alive connection just as it is reused; a GET
                // is safe to send again on a fresh one.
                Err(e) => {
                    tracing::debug!(error = %e, "request on a reused connection failed; retrying on a new one")
                }
            }
        }
        let sender = self.connect().await?;
        self.send(sender, Method::GET, path).await
    }

    fn take_idle(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, ClientError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|source| ClientError::Connect { addr: self.addr, source })?;
        // Small requests and responses: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Request { addr: self.addr, source })?;
        // The connection lives as long as someone holds its sender: the pool or a request.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn send(
        &self,
        mut sender: SendRequest<Empty<Bytes>>,
        method: Method,
        path: &str,
    ) -> Result<Response, ClientError> {
        let failed = |source| ClientError::Request { addr: self.addr, source };
        sender.ready().await.map_err(failed)?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .body(Empty::new())
            .expect("paths are written by this program and valid");
        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(failed)?.to_bytes();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(sender);
        }
        Ok(Response { status, body })
    }
}
