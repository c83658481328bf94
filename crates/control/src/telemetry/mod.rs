//! Telemetry: the control plane scrapes every proxy's `/metrics` and serves golden
//! metrics (success rate, requests per second, latency percentiles) per workload,
//! service, route and edge over a recent window; and it relays the proxies' live tap.
//!
//! Proxies count with labels bounded by their configuration (direction, target, route);
//! who a proxy belongs to is known here, from the registry, so edges (which workload
//! calls which service) need no extra label on the request path. A proxy's numbers over
//! a window are the increase between its newest reading and the newest reading at least
//! a window older (or zero, when the proxy is younger than the window: it started from
//! zero), the way PromQL's `increase` works on the same counters.
//!
//! - [`golden`]: readings, increases and quantiles (pure).
//! - [`stats`]: grouping proxies' windows into rows per kind (pure).
//! - [`history`]: the last hour of those rows for services, routes and edges, in rings
//!   of fixed size (pure; recorded after the first scrape round of every period).
//! - [`tap`]: relaying proxies' tap streams with filters and bounded buffers.
//! - [`top`]: the most requested paths, aggregated from tap events.

pub mod golden;
pub mod history;
pub mod stats;
pub mod tap;
pub mod top;

use crate::http_client::HttpClient;
use crate::prometheus::Scrape;
use crate::registry::{Instance, Registry};
use crate::store::Snapshot;
use golden::{Counts, Reading, SeriesKey};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often every proxy is scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// How long readings are kept: the longest window that can be asked for.
pub const RETENTION: Duration = Duration::from_secs(600);
/// The window golden metrics cover unless asked otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// A scrape (or a `/ready` probe) of a proxy that takes longer than this failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One proxy, as long as its instance keeps the same admin address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ProxyKey {
    namespace: String,
    workload: String,
    replica: u32,
    admin: SocketAddr,
}

#[derive(Debug)]
struct History {
    instance: Instance,
    first_seen: Instant,
    readings: VecDeque<Reading>,
    /// Why the last scrape failed; None when it succeeded.
    last_error: Option<String>,
    registered: bool,
}

/// One proxy's traffic over a window.
#[derive(Clone, Debug)]
pub struct ProxyWindow {
    pub instance: Instance,
    /// Seconds the window really covers for this proxy (shorter when it is younger).
    pub seconds: f64,
    pub series: BTreeMap<SeriesKey, Counts>,
    /// Registered now and its last scrape succeeded.
    pub reporting: bool,
}

/// What is known of a proxy's scrapes, for `tarmac check` and service discovery.
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    pub instance: Instance,
    pub admin: SocketAddr,
    pub last_error: Option<String>,
    pub scraped: bool,
}

/// The scraper and its readings; clones share them.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    histories: Mutex<BTreeMap<ProxyKey, History>>,
    /// Held while a round of scrapes runs; holds when the last round started.
    round: tokio::sync::Mutex<Option<Instant>>,
    /// When bucket 0 of the history started.
    started: Instant,
    history: Mutex<history::History>,
}

impl Telemetry {
    pub fn new(registry: Registry, snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                snapshots,
                histories: Mutex::new(BTreeMap::new()),
                round: tokio::sync::Mutex::new(None),
                started: Instant::now(),
                history: Mutex::new(history::History::new(
                    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                )),
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshots.borrow().clone()
    }

    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.snapshots.clone()
    }

    /// Scrapes every proxy every [`SCRAPE_INTERVAL`], and at once when replicas come or
    /// go, until the task is dropped.
    pub async fn run(self) {
        let mut instances = self.inner.registry.subscribe();
        loop {
            self.scrape_all().await;
            self.record_history();
            tokio::select! {
                _ = tokio::time::sleep(SCRAPE_INTERVAL) => {}
                changed = instances.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Scrapes every proxy now, unless a round started since this call did: an answer
    /// includes everything completed before it was asked for. Concurrent callers share
    /// one round.
    pub async fn refresh(&self) {
        self.scrape_since(Instant::now()).await;
    }

    async fn scrape_all(&self) {
        self.scrape_since(Instant::now()).await;
    }

    async fn scrape_since(&self, asked: Instant) {
        let mut round = self.inner.round.lock().await;
        if round.is_some_and(|at| at >= asked) {
            return;
        }
        let started = Instant::now();
        let instances: Vec<Instance> = self.inner.registry.subscribe().borrow().as_ref().clone();
        let mut scrapes = tokio::task::JoinSet::new();
        for instance in instances.iter().filter(|i| i.admin.is_some()) {
            let instance = instance.clone();
            scrapes.spawn(async move {
                let admin = instance.admin.expect("filtered on admin");
                let result = scrape(admin).await;
                (instance, admin, result, Instant::now())
            });
        }
        let mut results = Vec::new();
        while let Some(done) = scrapes.join_next().await {
            if let Ok(result) = done {
                results.push(result);
            }
        }
        let now = Instant::now();
        let mut histories = self.inner.histories.lock().unwrap_or_else(|e| e.into_inner());
        for history in histories.values_mut() {
            history.registered = false;
        }
        for (instance, admin, result, at) in results {
            let key = ProxyKey {
                namespace: instance.namespace.clone(),
                workload: instance.workload.clone(),
                replica: instance.replica,
                admin,
            };
            let history = histories.entry(key).or_insert_with(|| History {
                instance: instance.clone(),
                first_seen: started,
                readings: VecDeque::new(),
                last_error: None,
                registered: true,
            });
            history.instance = instance;
            history.registered = true;
            match result {
                Ok(scrape) => {
                    history.readings.push_back(Reading::from_scrape(&scrape, at));
                    history.last_error = None;
                }
                Err(e) => history.last_error = Some(e.to_string()),
            }
        }
        // Keep one reading older than the retention, as the base of the longest window.
        for history in histories.values_mut() {
            while history.readings.len() > 1 && history.readings[1].at + RETENTION + SCRAPE_INTERVAL < now {
                history.readings.pop_front();
            }
        }
        histories.retain(|_, h| h.registered || h.readings.back().is_some_and(|r| r.at + RETENTION > now));
        *round = Some(started);
    }

    /// Every proxy's traffic over the last `window` (at most [`RETENTION`]).
    pub fn windows(&self, window: Duration) -> Vec<ProxyWindow> {
        let window = window.min(RETENTION);
        let now = Instant::now();
        let histories = self.inner.histories.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for history in histories.values() {
            let reporting = history.registered && history.last_error.is_none();
            let Some(newest) = history.readings.back() else {
                if history.registered {
                    out.push(ProxyWindow {
                        instance: history.instance.clone(),
                        seconds: 0.0,
                        series: BTreeMap::new(),
                        reporting,
                    });
                }
                continue;
            };
            if newest.at + window < now && !history.registered {
                continue;
            }
            let start = newest.at.checked_sub(window);
            let base = start.and_then(|start| history.readings.iter().rev().find(|r| r.at <= start));
            let seconds = match base {
                Some(base) => newest.at.duration_since(base.at),
                None => newest.at.duration_since(history.first_seen).clamp(SCRAPE_INTERVAL, window),
            };
            out.push(ProxyWindow {
                instance: history.instance.clone(),
                seconds: seconds.as_secs_f64(),
                series: newest.increase_since(base),
                reporting,
            });
        }
        out
    }

    /// Records the rows of the last [`history::RESOLUTION`] once per period, after the
    /// period's first scrape round. The first period is left out: its windows would start
    /// at the control plane's start, and count what proxies running before it had counted
    /// since theirs.
    fn record_history(&self) {
        let bucket = history::History::bucket_at(self.inner.started.elapsed());
        let wants = |h: &Mutex<history::History>| h.lock().unwrap_or_else(|e| e.into_inner()).wants(bucket);
        if bucket == 0 || !wants(&self.inner.history) {
            return;
        }
        let windows = self.windows(history::RESOLUTION);
        let snapshot = self.snapshot();
        let services = stats::service_rows(&windows, &snapshot);
        let routes = stats::route_rows(&windows, &snapshot);
        let edges = stats::edge_rows(&windows, &snapshot);
        let mut history = self.inner.history.lock().unwrap_or_else(|e| e.into_inner());
        history.record(bucket, &services, &routes, &edges);
        let refused = history.refused();
        if refused > 0 {
            tracing::warn!(
                refused,
                max = history::MAX_SERIES,
                "history: more series than it keeps; the newest are not recorded"
            );
        }
    }

    /// The history of `kind`'s series that `query` selects.
    pub fn history(
        &self,
        kind: history::HistoryKind,
        query: &history::HistoryQuery,
    ) -> history::HistoryAnswer {
        self.inner.history.lock().unwrap_or_else(|e| e.into_inner()).answer(kind, query)
    }

    /// What the last scrape of each registered proxy said.
    pub fn health(&self) -> Vec<ProxyHealth> {
        let histories = self.inner.histories.lock().unwrap_or_else(|e| e.into_inner());
        histories
            .iter()
            .filter(|(_, h)| h.registered)
            .map(|(key, h)| ProxyHealth {
                instance: h.instance.clone(),
                admin: key.admin,
                last_error: h.last_error.clone(),
                scraped: !h.readings.is_empty(),
            })
            .collect()
    }
}

/// Why a proxy's metrics could not be read (kept per proxy for `tarmac check`).
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error(transparent)]
    Client(#[from] crate::http_client::ClientError),
    #[error("GET http://{admin}/metrics answered {status}")]
    Status { admin: SocketAddr, status: http::StatusCode },
    #[error("GET http://{admin}/metrics: the body is not UTF-8")]
    NotUtf8 { admin: SocketAddr },
    #[error("GET http://{admin}/metrics: {source}")]
    Parse { admin: SocketAddr, source: crate::prometheus::ParseError },
}

/// One scrape of a proxy's `/metrics`.
async fn scrape(admin: SocketAddr) -> Result<Scrape, ScrapeError> {
    let client = HttpClient::new(admin, SCRAPE_TIMEOUT);
    let response = client.get("/metrics").await?;
    if !response.status.is_success() {
        return Err(ScrapeError::Status { admin, status: response.status });
    }
    let text = std::str::from_utf8(&response.body).map_err(|_| ScrapeError::NotUtf8 { admin })?;
    Scrape::parse(text).map_err(|source| ScrapeError::Parse { admin, source })
}
