//! `tarmac sample-app NAME` (hidden): the bookstore that `tarmac demo` runs, one process
//! per Workload of `examples/bookstore`, started by the `tarmac up` machinery.
//!
//! They are ordinary HTTP/1.1 servers and clients that know nothing of the mesh: each
//! listens on `PORT` (127.0.0.1) and reaches the others at the `*_URL` addresses that
//! `tarmac up` gives it, its sidecar's listeners (docs/local-mode.md). Their behaviour is
//! chosen so that the golden metrics have something to show: `books` fails now and then,
//! `authors` is slower, `ratings` v2 is slower still, and `web` inherits all of it.
//! `traffic` is the demo's traffic generator: it calls `web` (or the Service named in
//! `TARGET`) at `RPS` requests per second. `client` only listens: a caller to send requests
//! through by hand, at its sidecar's `*_URL` listeners (examples/canary).
//!
//! [`storm`] holds the apps of examples/retry-storm: `checkout`, `payments` and `logging`.

mod storm;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tarmac_control::http_client::HttpClient;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// The share of `books` requests that fail with 500, so that the success rate visibly
/// differs from 100 %.
const BOOKS_FAILURE_RATE: f64 = 0.02;
/// `authors` takes this long per request, jittered uniformly: a service a few
/// milliseconds slower than its neighbour, visible in the latency columns.
const AUTHORS_DELAY_MS: std::ops::RangeInclusive<u64> = 5..=15;
/// `ratings` v2 computes its stars "more carefully": slower than v1, which the canary shows.
const RATINGS_V2_DELAY_MS: std::ops::RangeInclusive<u64> = 20..=40;
/// How long `web` waits for its upstreams, and `traffic` for `web`.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests `traffic` lets be in flight at once; past this, ticks are skipped.
const MAX_IN_FLIGHT: usize = 1000;
/// `traffic`'s rate when `RPS` is not set.
const DEFAULT_RPS: u32 = 20;
/// The response header naming the version that answered (`ratings` answers `v1` or `v2`).
pub const VERSION_HEADER: &str = "x-sample-version";

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

/// Run one app of the sample bookstore (used by examples/bookstore, examples/canary and
/// examples/faults; started by `tarmac up`).
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// Which app: `web`, `books`, `authors`, `ratings` (version from `VERSION`, default
    /// v1), `traffic` (calls the Service `TARGET`, default web, at `RPS` requests per
    /// second), `client` (only listens), or the retry storm's `checkout`, `payments`
    /// (`LOGGING_TIMEOUT_MS`, `MAX_CONCURRENT`, `MAX_WAITING`) and `logging` (`CAPACITY_RPS`, `QUEUE`).
    #[arg(value_parser = ["web", "books", "authors", "ratings", "traffic", "client", "checkout", "payments", "logging"])]
    pub app: String,
}

/// What keeps a sample app from starting: its environment (as `tarmac up` sets it) or its
/// port.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("sample-app {app}: {name} is not set")]
    NotSet { app: String, name: String },
    #[error("sample-app {app}: {name}={url} is not http://IP:PORT")]
    NotAnUpstream { app: String, name: String, url: String },
    #[error("sample-app traffic: RPS={0} is not a number of requests per second in 1..=10000")]
    Rps(String),
    #[error("sample-app {app}: {name}={text} is not a positive number")]
    NotPositive { app: String, name: String, text: String },
    #[error("sample-app {app}: PORT={port} is not a port")]
    NotAPort { app: String, port: String },
    #[error("sample-app {app}: cannot listen on 127.0.0.1:{port}: {source}")]
    Listen {
        app: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

pub async fn run(args: SampleArgs) -> Result<(), SampleError> {
    let env = |name: &str| {
        std::env::var(name).map_err(|_| SampleError::NotSet { app: args.app.clone(), name: name.to_string() })
    };
    let upstream = |name: &str| -> Result<HttpClient, SampleError> {
        let url = env(name)?;
        let Ok(addr) = url.trim_start_matches("http://").trim_end_matches('/').parse::<SocketAddr>() else {
            return Err(SampleError::NotAnUpstream { app: args.app.clone(), name: name.to_string(), url });
        };
        Ok(HttpClient::new(addr, CALL_TIMEOUT))
    };
    if args.app == "traffic" {
        let rps = match std::env::var("RPS") {
            Ok(text) => match text.parse::<u32>().ok().filter(|r| (1..=10_000).contains(r)) {
                Some(rps) => rps,
                None => return Err(SampleError::Rps(text)),
            },
            Err(_) => DEFAULT_RPS,
        };
        let target = std::env::var("TARGET").unwrap_or_else(|_| "web".into());
        let variable =
            format!("{}_URL", target.to_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let client = Arc::new(upstream(&variable)?);
        // It listens too, like any Workload, and says what it does.
        let listener = listen(&args.app, &env("PORT")?).await?;
        println!("traffic: {rps} requests per second to {target} at {}", client.addr());
        let traffic = Arc::new(Traffic::new(rps, target));
        tokio::spawn(serve(listener, traffic.clone()));
        generate_traffic(client, rps, traffic).await;
        return Ok(());
    }
    let listener = listen(&args.app, &env("PORT")?).await?;
    match args.app.as_str() {
        "books" => serve(listener, Arc::new(Books)).await,
        "authors" => serve(listener, Arc::new(Authors)).await,
        "client" => serve(listener, Arc::new(Traffic::new(0, "nothing by itself".into()))).await,
        "checkout" => serve(listener, Arc::new(storm::Checkout::new(upstream("PAYMENTS_URL")?))).await,
        "payments" => {
            let timeout = storm::env_number(
                "payments",
                "LOGGING_TIMEOUT_MS",
                storm::DEFAULT_LOGGING_TIMEOUT.as_millis() as u64,
            )?;
            let workers = storm::env_number("payments", "MAX_CONCURRENT", storm::DEFAULT_MAX_CONCURRENT)?;
            let waiting = storm::env_number("payments", "MAX_WAITING", storm::DEFAULT_MAX_WAITING)?;
            // Payments' own patience with logging, not the sample apps' common timeout.
            let logging = HttpClient::new(upstream("LOGGING_URL")?.addr(), Duration::from_millis(timeout));
            println!(
                "payments: waits {timeout} ms for logging, {workers} payments at once, {waiting} waiting"
            );
            serve(listener, Arc::new(storm::Payments::new(logging, workers, waiting))).await
        }
        "logging" => {
            let capacity = storm::env_number("logging", "CAPACITY_RPS", storm::DEFAULT_CAPACITY_RPS)?;
            let queue = storm::env_number("logging", "QUEUE", storm::DEFAULT_QUEUE)?;
            println!("logging: {capacity} requests per second, {queue} queued at most");
            serve(listener, Arc::new(storm::Logging::start(capacity, queue))).await
        }
        "ratings" => {
            let version = std::env::var("VERSION").unwrap_or_else(|_| "v1".into());
            serve(listener, Arc::new(Ratings { version })).await
        }
        _ => {
            let web = Web {
                books: upstream("BOOKS_URL")?,
                authors: upstream("AUTHORS_URL")?,
                ratings: upstream("RATINGS_URL")?,
            };
            serve(listener, Arc::new(web)).await
        }
    }
    Ok(())
}

/// Listens on 127.0.0.1:`port` (the `PORT` that `tarmac up` gives).
async fn listen(app: &str, port: &str) -> Result<TcpListener, SampleError> {
    let port: u16 =
        port.parse().map_err(|_| SampleError::NotAPort { app: app.to_string(), port: port.to_string() })?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|source| SampleError::Listen { app: app.to_string(), port, source })?;
    println!("{app} listening on 127.0.0.1:{port}");
    Ok(listener)
}

/// A sample service: answers one request given its path.
trait Service: Send + Sync + 'static {
    fn handle(&self, method: &Method, uri: &Uri) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

async fn serve(listener: TcpListener, service: Arc<impl Service>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("cannot accept: {e}; retrying");
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
                async move { Ok::<_, Infallible>(service.handle(request.method(), request.uri()).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), handler)
                .await;
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
    async fn handle(&self, _method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        let path = uri.path();
        if fastrand::f64() < BOOKS_FAILURE_RATE {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "books: the database timed out\n".into());
        }
        text(StatusCode::OK, CATALOGUE[catalogue_id(path)].0.to_string())
    }
}

struct Authors;

impl Service for Authors {
    async fn handle(&self, _method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        let id = catalogue_id(uri.path());
        tokio::time::sleep(Duration::from_millis(fastrand::u64(AUTHORS_DELAY_MS))).await;
        text(StatusCode::OK, CATALOGUE[id].1.to_string())
    }
}

struct Ratings {
    version: String,
}

impl Service for Ratings {
    async fn handle(&self, _method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        let id = catalogue_id(uri.path());
        // v1 shows a number; v2 shows stars, and takes longer.
        let stars = 3 + id % 3;
        let body = if self.version == "v2" {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(RATINGS_V2_DELAY_MS))).await;
            format!("{}{}", "★".repeat(stars), "☆".repeat(5 - stars))
        } else {
            format!("{stars}/5")
        };
        let mut response = text(StatusCode::OK, body);
        if let Ok(value) = header::HeaderValue::from_str(&self.version) {
            response.headers_mut().insert(VERSION_HEADER, value);
        }
        response
    }
}

/// What `traffic` (and `client`) answer: what they send, and at `/stats` how it went.
struct Traffic {
    rps: u32,
    target: String,
    counts: storm::Counters,
}

impl Traffic {
    fn new(rps: u32, target: String) -> Self {
        Self { rps, target, counts: storm::Counters::new(&["sent", "succeeded", "failed"]) }
    }
}

impl Service for Traffic {
    async fn handle(&self, _method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        if uri.path() == "/stats" {
            return text(StatusCode::OK, self.counts.render());
        }
        text(StatusCode::OK, format!("{} requests per second to {}\n", self.rps, self.target))
    }
}

struct Web {
    books: HttpClient,
    authors: HttpClient,
    ratings: HttpClient,
}

impl Service for Web {
    async fn handle(&self, _method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        let id = catalogue_id(uri.path());
        let (book_path, author_path, rating_path) =
            (format!("/books/{id}"), format!("/authors/{id}"), format!("/ratings/{id}"));
        let (title, author, rating) = tokio::join!(
            self.books.get(&book_path),
            self.authors.get(&author_path),
            self.ratings.get(&rating_path)
        );
        let answer = |name: &str, result: Result<tarmac_control::http_client::Response, _>| match result {
            Ok(r) if r.status.is_success() => Ok(String::from_utf8_lossy(&r.body).into_owned()),
            Ok(r) => Err(format!("{name} answered {}", r.status)),
            Err(e) => Err(format!("{name}: {e}")),
        };
        // A page missing the book or its author cannot be shown: web fails when either
        // does. Ratings are optional: without them the page still renders.
        let rating = answer("ratings", rating).unwrap_or_else(|_| "(ratings unavailable)".into());
        match (answer("books", title), answer("authors", author)) {
            (Ok(title), Ok(author)) => text(StatusCode::OK, format!("{title}, by {author}: {rating}\n")),
            (Err(e), _) | (_, Err(e)) => text(StatusCode::BAD_GATEWAY, format!("web: {e}\n")),
        }
    }
}

/// Sends `rps` requests per second through `client` (the sidecar's listener for the
/// target Service), forever. Each request starts on its own tick, whether or not earlier
/// ones have finished, as independent users would: a slow target shows as latency, not
/// as fewer requests.
async fn generate_traffic(client: Arc<HttpClient>, rps: u32, traffic: Arc<Traffic>) {
    let mut in_flight = JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
    // After a stall (a busy machine), catch up with a burst so that the average rate is the
    // one asked for.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        ticks.tick().await;
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_IN_FLIGHT {
            continue;
        }
        let client = client.clone();
        let traffic = traffic.clone();
        let id = fastrand::usize(..CATALOGUE.len());
        traffic.counts.add("sent", 1);
        in_flight.spawn(async move {
            let ok = client.get(&format!("/book/{id}")).await.is_ok_and(|r| r.status.is_success());
            traffic.counts.add(if ok { "succeeded" } else { "failed" }, 1);
        });
    }
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

    #[tokio::test]
    async fn ratings_name_their_version() {
        let v2 = Ratings { version: "v2".into() }.handle(&Method::GET, &Uri::from_static("/ratings/1")).await;
        assert_eq!(v2.headers()[VERSION_HEADER], "v2");
        let v1 = Ratings { version: "v1".into() }.handle(&Method::GET, &Uri::from_static("/ratings/1")).await;
        assert_eq!(v1.headers()[VERSION_HEADER], "v1");
    }
}
