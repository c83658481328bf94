//! The apps of examples/retry-storm: `checkout` calls `payments`, which calls a
//! non-critical `logging` service for every payment.
//!
//! The story is the one that motivates the mesh's retry budget: a misconfigured retry
//! policy on a non-critical service amplifies that service's failure until it can no
//! longer recover, and the payment flow suffers with it. So each app is built to behave
//! as its real counterpart would, not to make the mesh look good:
//!
//! - `logging` has a fixed capacity: one worker doing a fixed amount of work per request
//!   (`CAPACITY_RPS` a second), a bounded FIFO queue in front of it (`QUEUE`), and a 503
//!   at once when the queue is full. It does the work of every request it queued, even
//!   when the caller has given up on it: an abandoned try still costs capacity. That is
//!   what makes a storm metastable: once the queue is long enough that every try waits
//!   longer than its caller will, the worker spends all its capacity on tries nobody waits
//!   for, every try fails, each failure is retried, and the queue stays full even after
//!   the capacity that was lost comes back. `POST /capacity?rps=N` changes the capacity
//!   while it runs.
//! - `payments` calls logging for each payment and waits for its answer (it wants the
//!   record written), but only for `LOGGING_TIMEOUT_MS`; a payment succeeds whether
//!   logging answered, failed or did not answer in time, since losing a log line must not
//!   lose a sale. What logging's failure does cost payments is time and concurrency: it
//!   holds a payment open while it waits, and it works on at most `MAX_CONCURRENT`
//!   payments at once (a worker pool), with `MAX_WAITING` more waiting for a worker and
//!   503 for the rest. A logging that fails fast costs little; one that makes every call
//!   wait the whole timeout for long fills the pool and its backlog.
//! - `checkout` answers an order as a success when payments does.
//!
//! Each app counts what it did at `GET /stats` (`name value` lines), read by the storm
//! test and by anyone curious, directly at the app's `PORT`.

use super::{Service, text};
use bytes::Bytes;
use http::{Method, Response, StatusCode, Uri};
use http_body_util::Full;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tarmac_control::http_client::HttpClient;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// `logging`'s requests per second when `CAPACITY_RPS` is not set.
pub const DEFAULT_CAPACITY_RPS: u32 = 100;
/// `logging`'s queue when `QUEUE` is not set: at the default capacity, 0.4 s of work.
pub const DEFAULT_QUEUE: usize = 40;
/// How long `payments` waits for logging when `LOGGING_TIMEOUT_MS` is not set.
pub const DEFAULT_LOGGING_TIMEOUT: Duration = Duration::from_secs(1);
/// Payments worked on at once when `MAX_CONCURRENT` is not set.
pub const DEFAULT_MAX_CONCURRENT: usize = 50;
/// Payments waiting for a worker when `MAX_WAITING` is not set.
pub const DEFAULT_MAX_WAITING: usize = 50;
/// The capacities `POST /capacity` accepts.
const CAPACITY_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;

/// Counters rendered as `name value` lines, in the order given.
pub(super) struct Counters {
    counters: Vec<(&'static str, AtomicU64)>,
}

impl Counters {
    pub(super) fn new(names: &[&'static str]) -> Self {
        Self { counters: names.iter().map(|n| (*n, AtomicU64::new(0))).collect() }
    }

    pub(super) fn add(&self, name: &str, n: u64) {
        if let Some((_, value)) = self.counters.iter().find(|(c, _)| *c == name) {
            value.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn sub(&self, name: &str, n: u64) {
        if let Some((_, value)) = self.counters.iter().find(|(c, _)| *c == name) {
            value.fetch_sub(n, Ordering::Relaxed);
        }
    }

    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.counters {
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

/// A positive number from the environment, or `default` when the variable is not set.
pub(super) fn env_number<T: std::str::FromStr + PartialOrd + Default>(
    app: &str,
    name: &str,
    default: T,
) -> Result<T, super::SampleError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => match text.parse::<T>().ok().filter(|n| *n > T::default()) {
            Some(n) => Ok(n),
            None => {
                Err(super::SampleError::NotPositive { app: app.to_string(), name: name.to_string(), text })
            }
        },
    }
}

// === impl Checkout ===

pub(super) struct Checkout {
    pub(super) payments: HttpClient,
    pub(super) counts: Counters,
}

impl Checkout {
    pub(super) fn new(payments: HttpClient) -> Self {
        Self { payments, counts: Counters::new(&["orders", "succeeded", "failed"]) }
    }
}

impl Service for Checkout {
    async fn handle(&self, _method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        if uri.path() == "/stats" {
            return text(StatusCode::OK, self.counts.render());
        }
        self.counts.add("orders", 1);
        let order = fastrand::u64(..);
        match self.payments.get(&format!("/pay/{order}")).await {
            Ok(r) if r.status.is_success() => {
                self.counts.add("succeeded", 1);
                text(StatusCode::OK, format!("order {order} placed\n"))
            }
            Ok(r) => {
                self.counts.add("failed", 1);
                text(StatusCode::BAD_GATEWAY, format!("checkout: payments answered {}\n", r.status))
            }
            Err(e) => {
                self.counts.add("failed", 1);
                text(StatusCode::BAD_GATEWAY, format!("checkout: payments: {e}\n"))
            }
        }
    }
}

// === impl Payments ===

pub(super) struct Payments {
    logging: HttpClient,
    /// Payments accepted, working or waiting for a worker: past this, 503 at once.
    admitted: Semaphore,
    workers: Semaphore,
    counts: Counters,
}

impl Payments {
    /// `logging` carries payments' own timeout for logging's answer; `workers` payments
    /// are worked on at once and `waiting` more may wait for one of them.
    pub(super) fn new(logging: HttpClient, workers: usize, waiting: usize) -> Self {
        Self {
            logging,
            admitted: Semaphore::new(workers + waiting),
            workers: Semaphore::new(workers),
            counts: Counters::new(&[
                "payments",
                "succeeded",
                "shed",
                "logging_ok",
                "logging_failed",
                "in_flight",
            ]),
        }
    }
}

impl Service for Payments {
    async fn handle(&self, _method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        if uri.path() == "/stats" {
            return text(StatusCode::OK, self.counts.render());
        }
        self.counts.add("payments", 1);
        // As a server with a pool of workers and a bounded backlog: a short burst waits
        // for a worker, a lasting overload is turned away rather than queued without end.
        let Ok(_admitted) = self.admitted.try_acquire() else {
            self.counts.add("shed", 1);
            return text(StatusCode::SERVICE_UNAVAILABLE, "payments: every worker is busy\n".into());
        };
        let Ok(_worker) = self.workers.acquire().await else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "payments: the pool is closed\n".into());
        };
        self.counts.add("in_flight", 1);
        let payment = uri.path().rsplit('/').next().unwrap_or_default().to_string();
        let logged = match self.logging.get(&format!("/log?payment={payment}")).await {
            Ok(r) if r.status.is_success() => true,
            Ok(_) | Err(_) => false,
        };
        self.counts.sub("in_flight", 1);
        self.counts.add(if logged { "logging_ok" } else { "logging_failed" }, 1);
        self.counts.add("succeeded", 1);
        let note = if logged { "" } else { " (not logged)" };
        text(StatusCode::OK, format!("payment {payment} accepted{note}\n"))
    }
}

// === impl Logging ===

/// A request waiting for the worker: its answer goes back on `done`, if anyone still
/// listens.
struct Job {
    done: oneshot::Sender<()>,
}

pub(super) struct Logging {
    queue: mpsc::Sender<Job>,
    capacity_rps: Arc<AtomicU32>,
    counts: Arc<Counters>,
}

impl Logging {
    /// Starts the worker; `capacity_rps` requests a second, `queue` waiting at most.
    pub(super) fn start(capacity_rps: u32, queue: usize) -> Self {
        let (sender, receiver) = mpsc::channel(queue);
        let capacity = Arc::new(AtomicU32::new(capacity_rps));
        let counts = Arc::new(Counters::new(&[
            "received",
            "rejected",
            "served",
            "abandoned",
            "queued",
            "capacity_rps",
        ]));
        counts.add("capacity_rps", u64::from(capacity_rps));
        tokio::spawn(work(receiver, capacity.clone(), counts.clone()));
        Self { queue: sender, capacity_rps: capacity, counts }
    }

    fn set_capacity(&self, uri: &Uri) -> Response<Full<Bytes>> {
        let rps = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("rps="))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| CAPACITY_RANGE.contains(n));
        let Some(rps) = rps else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("logging: give the capacity as ?rps=N, N in {CAPACITY_RANGE:?}\n"),
            );
        };
        let before = self.capacity_rps.swap(rps, Ordering::Relaxed);
        self.counts.sub("capacity_rps", u64::from(before));
        self.counts.add("capacity_rps", u64::from(rps));
        println!("logging: capacity {before} -> {rps} requests per second");
        text(StatusCode::OK, format!("capacity {rps} requests per second (was {before})\n"))
    }
}

impl Service for Logging {
    async fn handle(&self, method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        match (method, uri.path()) {
            (&Method::GET, "/stats") => return text(StatusCode::OK, self.counts.render()),
            (&Method::POST, "/capacity") => return self.set_capacity(uri),
            (_, "/capacity") => {
                let rps = self.capacity_rps.load(Ordering::Relaxed);
                return text(StatusCode::OK, format!("capacity {rps} requests per second\n"));
            }
            _ => {}
        }
        self.counts.add("received", 1);
        let (done, answer) = oneshot::channel();
        if self.queue.try_send(Job { done }).is_err() {
            self.counts.add("rejected", 1);
            return text(StatusCode::SERVICE_UNAVAILABLE, "logging: queue full\n".into());
        }
        self.counts.add("queued", 1);
        match answer.await {
            Ok(()) => text(StatusCode::OK, "logged\n".into()),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "logging: the worker stopped\n".into()),
        }
    }
}

/// The single worker: each job takes `1 / capacity` of a second, whether or not its caller
/// still waits.
async fn work(mut queue: mpsc::Receiver<Job>, capacity: Arc<AtomicU32>, counts: Arc<Counters>) {
    let mut next = Instant::now();
    loop {
        let job = match queue.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                let Some(job) = queue.recv().await else { return };
                // Idle time is not banked: a worker that waited starts its job now.
                next = next.max(Instant::now());
                job
            }
        };
        counts.sub("queued", 1);
        // Paced by deadlines rather than by sleeping the job's length, so that timer
        // slack and a busy machine do not lower the capacity: a late worker catches up.
        let rps = capacity.load(Ordering::Relaxed).max(1);
        next += Duration::from_secs_f64(1.0 / f64::from(rps));
        tokio::time::sleep_until(next).await;
        counts.add("served", 1);
        if job.done.send(()).is_err() {
            counts.add("abandoned", 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn payments_succeed_whatever_logging_does_and_turn_away_what_their_backlog_cannot_hold() {
        // A logging that accepts connections and never answers: each payment waits out its
        // 200 ms for logging, then succeeds anyway.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let logging = HttpClient::new(silent.local_addr().unwrap(), Duration::from_millis(200));
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        // One worker and one payment waiting for it: a third at once is turned away.
        let payments = Arc::new(Payments::new(logging, 1, 1));
        let pay = |id: &'static str| {
            let payments = payments.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let response = payments.handle(&Method::GET, &Uri::from_static(id)).await;
                (response.status(), body(response).await, start.elapsed())
            })
        };
        let first = pay("/pay/1");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = pay("/pay/2");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, text, _) = pay("/pay/3").await.unwrap();
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "payments: every worker is busy\n")
        );
        for (payment, waited) in [(first.await.unwrap(), 200), (second.await.unwrap(), 380)] {
            let (status, text, elapsed) = payment;
            assert_eq!(status, StatusCode::OK);
            assert!(text.ends_with("accepted (not logged)\n"), "{text}");
            // The second, sent 10 ms later, waited for the worker, then for logging.
            assert!(elapsed >= Duration::from_millis(waited), "{elapsed:?}");
        }
        let stats = body(payments.handle(&Method::GET, &Uri::from_static("/stats")).await).await;
        assert_eq!(stats, "payments 3\nsucceeded 2\nshed 1\nlogging_ok 0\nlogging_failed 2\nin_flight 0\n");
    }

    async fn stat(logging: &Logging, name: &str) -> u64 {
        let body = logging.handle(&Method::GET, &Uri::from_static("/stats")).await.into_body();
        let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn logging_serves_its_capacity_rejects_past_its_queue_and_works_for_callers_gone() {
        let logging = Arc::new(Logging::start(10, 5));
        // 20 requests at once: one taken by the worker, 5 queued, the rest refused at once.
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let logging = logging.clone();
            waiting
                .spawn(async move { logging.handle(&Method::GET, &Uri::from_static("/log")).await.status() });
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(stat(&logging, "rejected").await, 14);
        // Their callers give up; the worker still spends 100 ms on each of the 6.
        waiting.abort_all();
        tokio::time::sleep(Duration::from_millis(550)).await;
        assert_eq!(stat(&logging, "served").await, 5);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stat(&logging, "served").await, 6);
        assert_eq!(stat(&logging, "abandoned").await, 6);

        // Capacity changed at run time: 100 a second now.
        let set = logging.handle(&Method::POST, &Uri::from_static("/capacity?rps=100")).await;
        assert_eq!(set.status(), StatusCode::OK);
        assert_eq!(stat(&logging, "capacity_rps").await, 100);
        let start = Instant::now();
        assert_eq!(logging.handle(&Method::GET, &Uri::from_static("/log")).await.status(), StatusCode::OK);
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        let bad = logging.handle(&Method::POST, &Uri::from_static("/capacity?rps=0")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }
}
