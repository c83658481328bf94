//! The demo's workloads: three sample services and the traffic client.
//!
//! They are ordinary HTTP/1.1 servers and clients that know nothing of the mesh: each
//! service listens on its own loopback port, and `web` reaches `books` and `authors` at the
//! local ports its sidecar listens on for them, as an app in explicit mode does. Their
//! behaviour is chosen so that the golden metrics have something to show: `books` fails
//! now and then, `authors` is slower, and `web` inherits both.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tarmac_control::http_client::HttpClient;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

/// The share of `books` requests that fail with 500, so that the success rate visibly
/// differs from 100 %.
const BOOKS_FAILURE_RATE: f64 = 0.02;
/// `authors` takes this long per request, jittered uniformly: a service a few
/// milliseconds slower than its neighbour, visible in the latency columns.
const AUTHORS_DELAY_MS: std::ops::RangeInclusive<u64> = 5..=15;
/// How long `web` waits for `books` and `authors`, and the client for `web`.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests the traffic client lets be in flight at once. Past this, `web` is not keeping
/// up and adding requests would only queue them; ticks are skipped and counted instead.
const MAX_IN_FLIGHT: usize = 1000;

/// The shop's catalogue: `books` knows the titles, `authors` the authors, by the same id.
const CATALOGUE: &[(&str, &str)] = &[
    ("Dune", "Frank Herbert"),
    ("The Left Hand of Darkness", "Ursula K. Le Guin"),
    ("Neuromancer", "William Gibson"),
    ("Foundation", "Isaac Asimov"),
    ("Kindred", "Octavia E. Butler"),
    ("Solaris", "Stanisław Lem"),
    ("Hyperion", "Dan Simmons"),
    ("The Dispossessed", "Ursula K. Le Guin"),
];

/// A sample service: answers one request given its path.
trait Service: Send + Sync + 'static {
    fn handle(&self, path: &str) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// A sample service serving on its listener until [`RunningService::stop`].
pub struct RunningService {
    accept_loop: JoinHandle<()>,
}

impl RunningService {
    /// Stops accepting and closes the service's connections.
    pub fn stop(self) {
        self.accept_loop.abort();
    }
}

/// `books`: fast, and fails [`BOOKS_FAILURE_RATE`] of the time.
pub fn start_books(listener: TcpListener) -> RunningService {
    start(listener, Books)
}

/// `authors`: a few milliseconds slower than `books`.
pub fn start_authors(listener: TcpListener) -> RunningService {
    start(listener, Authors)
}

/// `web`: for each request, asks `books` and `authors` (at the given addresses, its
/// sidecar's outbound listeners) at the same time and combines their answers.
pub fn start_web(listener: TcpListener, books: SocketAddr, authors: SocketAddr) -> RunningService {
    start(
        listener,
        Web { books: HttpClient::new(books, CALL_TIMEOUT), authors: HttpClient::new(authors, CALL_TIMEOUT) },
    )
}

fn start(listener: TcpListener, service: impl Service) -> RunningService {
    RunningService { accept_loop: tokio::spawn(serve(listener, Arc::new(service))) }
}

async fn serve(listener: TcpListener, service: Arc<impl Service>) {
    // Connections belong to the accept loop: aborting it closes them too.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sample service cannot accept; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every one ever made.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        connections.spawn(async move {
            let handler = service_fn(move |request: Request<Incoming>| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(request.uri().path()).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), handler)
                .await
            {
                tracing::debug!(error = %e, "sample service connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The catalogue id at the end of a path such as `/books/3`; any id maps to an entry.
fn catalogue_id(path: &str) -> usize {
    path.rsplit('/').next().and_then(|id| id.parse::<usize>().ok()).unwrap_or(0) % CATALOGUE.len()
}

struct Books;

impl Service for Books {
    async fn handle(&self, path: &str) -> Response<Full<Bytes>> {
        if fastrand::f64() < BOOKS_FAILURE_RATE {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "books: the database timed out\n".into());
        }
        text(StatusCode::OK, CATALOGUE[catalogue_id(path)].0.to_string())
    }
}

struct Authors;

impl Service for Authors {
    async fn handle(&self, path: &str) -> Response<Full<Bytes>> {
        let id = catalogue_id(path);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(AUTHORS_DELAY_MS))).await;
        text(StatusCode::OK, CATALOGUE[id].1.to_string())
    }
}

struct Web {
    books: HttpClient,
    authors: HttpClient,
}

impl Service for Web {
    async fn handle(&self, path: &str) -> Response<Full<Bytes>> {
        let id = catalogue_id(path);
        let (book_path, author_path) = (format!("/books/{id}"), format!("/authors/{id}"));
        let (title, author) = tokio::join!(self.books.get(&book_path), self.authors.get(&author_path));
        let answer = |name: &str, result: Result<tarmac_control::http_client::Response, _>| match result {
            Ok(r) if r.status.is_success() => Ok(String::from_utf8_lossy(&r.body).into_owned()),
            Ok(r) => Err(format!("{name} answered {}", r.status)),
            Err(e) => Err(format!("{name}: {e}")),
        };
        // A page missing either half cannot be shown: web fails when a dependency does,
        // so its success rate is the product of theirs.
        match (answer("books", title), answer("authors", author)) {
            (Ok(title), Ok(author)) => text(StatusCode::OK, format!("{title}, by {author}\n")),
            (Err(e), _) | (_, Err(e)) => text(StatusCode::BAD_GATEWAY, format!("web: {e}\n")),
        }
    }
}

/// What the traffic client saw, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrafficTotals {
    pub sent: u64,
    /// Answered with a 2xx status.
    pub succeeded: u64,
    /// Answered with another status, or not at all.
    pub failed: u64,
    /// Ticks skipped because [`MAX_IN_FLIGHT`] requests were already waiting.
    pub skipped: u64,
}

/// Sends `rps` requests per second to `web` through `client` (the traffic client's sidecar)
/// until `stop` turns true, then waits up to `drain` for the requests in flight. Each
/// request starts on its own tick, whether or not earlier ones have finished, as
/// independent users would: a slow `web` shows as latency, not as fewer requests.
pub async fn generate_traffic(
    client: Arc<HttpClient>,
    rps: u32,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> TrafficTotals {
    let succeeded = Arc::new(AtomicU64::new(0));
    let mut totals = TrafficTotals::default();
    let mut in_flight = JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
    // After a stall (a busy machine), catch up with a burst so that the average rate is the
    // one asked for.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = ticks.tick() => {}
        }
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_IN_FLIGHT {
            totals.skipped += 1;
            continue;
        }
        totals.sent += 1;
        let (client, succeeded) = (client.clone(), succeeded.clone());
        let id = fastrand::usize(..CATALOGUE.len());
        in_flight.spawn(async move {
            match client.get(&format!("/book/{id}")).await {
                Ok(response) if response.status.is_success() => {
                    succeeded.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => tracing::debug!(status = %response.status, "traffic request failed"),
                Err(e) => tracing::debug!(error = %e, "traffic request failed"),
            }
        });
    }
    let deadline = Instant::now() + drain;
    while !in_flight.is_empty() {
        if tokio::time::timeout_at(deadline, in_flight.join_next()).await.is_err() {
            // Requests still unanswered count as failed: that is what a user would see.
            in_flight.abort_all();
            break;
        }
    }
    totals.succeeded = succeeded.load(Ordering::Relaxed);
    totals.failed = totals.sent - totals.succeeded;
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_maps_to_a_catalogue_entry() {
        assert_eq!(catalogue_id("/books/3"), 3);
        assert_eq!(catalogue_id(&format!("/authors/{}", CATALOGUE.len() + 1)), 1);
        assert_eq!(catalogue_id("/"), 0);
        assert_eq!(catalogue_id("/book/x"), 0);
    }
}
