//! The last hour of golden metrics per service, route and edge, at a fixed resolution,
//! in memory bounded up front: what the dashboard's charts draw and
//! `GET /api/v1/history/...` serves.
//!
//! Every [`RESOLUTION`] the telemetry computes the rows `tarmac stat --window 10s` would
//! print at that moment (services, routes, edges) and [`History::record`]s them under the
//! number of that period since the control plane started (its *bucket*). Each series
//! keeps [`POINTS`] points in a ring indexed by bucket modulo its size; a slot remembers
//! which bucket it holds, so a slot last written an hour ago (or more) reads as empty and
//! nothing needs clearing when time moves on or jumps.
//!
//! Two absences are told apart. A bucket that was never recorded (the control plane was
//! busy, or not running yet) is a gap: every value is null. A bucket that was recorded
//! but in which a series had no row with traffic (an edge nobody used) is zero traffic:
//! 0 requests, 0 rps, no success rate or latency.
//!
//! Memory: a point is [`POINT_BYTES`] bytes, a series `POINTS` of them (11.25 KiB), and
//! at most [`MAX_SERIES`] series are kept (about 11.25 MiB at most, whatever the traffic);
//! a series first seen past that is refused and counted (`series_refused`, and a warning
//! in the log), not silently lost. A series whose last traffic is older than the ring, and which the
//! configuration no longer lists, is forgotten.

use super::golden::Golden;
use super::stats::{EdgeRow, StatRow};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The period one point covers.
pub const RESOLUTION: Duration = Duration::from_secs(10);
/// Points kept per series: one hour at [`RESOLUTION`].
pub const POINTS: usize = 360;
/// Series kept at most, services, routes and edges together.
pub const MAX_SERIES: usize = 1024;
/// The size of one point in memory.
pub const POINT_BYTES: usize = std::mem::size_of::<Point>();

/// The golden metrics of one series over one period, as small as they can be kept:
/// f32 is ample for rates and milliseconds, and NaN stands for "none" (no traffic).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    /// The bucket this slot holds; [`EMPTY`] for a slot never written.
    bucket: u32,
    requests: u32,
    rps: f32,
    success_rate: f32,
    secured_rate: f32,
    p50: f32,
    p95: f32,
    p99: f32,
}

const EMPTY: u32 = u32::MAX;

impl Point {
    const NONE: Point = Point {
        bucket: EMPTY,
        requests: 0,
        rps: 0.0,
        success_rate: f32::NAN,
        secured_rate: f32::NAN,
        p50: f32::NAN,
        p95: f32::NAN,
        p99: f32::NAN,
    };

    fn of(bucket: u32, golden: &Golden) -> Self {
        let nan = |v: Option<f64>| v.map_or(f32::NAN, |v| v as f32);
        Point {
            bucket,
            requests: u32::try_from(golden.requests).unwrap_or(u32::MAX),
            rps: golden.rps as f32,
            success_rate: nan(golden.success_rate),
            secured_rate: nan(golden.secured_rate),
            p50: nan(golden.latency_ms_p50),
            p95: nan(golden.latency_ms_p95),
            p99: nan(golden.latency_ms_p99),
        }
    }
}

/// [`POINTS`] points of one series, by bucket modulo the size.
#[derive(Debug)]
struct Ring {
    slots: Box<[Point]>,
}

impl Ring {
    fn new() -> Self {
        Self { slots: vec![Point::NONE; POINTS].into_boxed_slice() }
    }

    fn put(&mut self, point: Point) {
        let slot = point.bucket as usize % POINTS;
        self.slots[slot] = point;
    }

    /// The point of `bucket`, if this ring holds it (a slot may hold an older bucket).
    fn get(&self, bucket: u32) -> Option<&Point> {
        let point = &self.slots[bucket as usize % POINTS];
        (point.bucket == bucket).then_some(point)
    }
}

/// One series: its ring and the last bucket in which it had traffic.
#[derive(Debug)]
struct Series<M> {
    /// Who the series is about, as the API names it (edges: their destination too).
    meta: M,
    ring: Ring,
    last_traffic: Option<u32>,
}

/// A route's series: the Service it belongs to and the rule's name.
type RouteKey = (String, String, String);
/// An edge's series: the caller's namespace and workload, and what it called.
type EdgeKey = (String, String, String);

/// The edge's destination as the latest row named it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EdgeMeta {
    dst_namespace: Option<String>,
    dst_service: Option<String>,
    dst_workloads: Vec<String>,
}

/// Which kind of series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryKind {
    Service,
    Route,
    Edge,
}

impl HistoryKind {
    /// The singular, the plural and the short forms, as `stat` takes them.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "service" | "services" | "svc" => Some(Self::Service),
            "route" | "routes" | "rt" => Some(Self::Route),
            "edge" | "edges" => Some(Self::Edge),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Route => "route",
            Self::Edge => "edge",
        }
    }
}

/// Which series a query wants; None fields match anything.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub namespace: Option<String>,
    /// Services: the name; routes: the Service they belong to.
    pub name: Option<String>,
    /// Edges: the calling workload.
    pub from: Option<String>,
    /// Edges: the service called (its name, or the target as the caller names it).
    pub to: Option<String>,
    /// The most recent points wanted (at most [`POINTS`]).
    pub points: usize,
}

/// The answer of `GET /api/v1/history/...`: columns, one value per bucket, oldest first.
#[derive(Debug, Serialize)]
pub struct HistoryAnswer {
    pub kind: &'static str,
    pub resolution_seconds: u64,
    /// The longest history kept.
    pub capacity: usize,
    /// The end of each point's period (when it was recorded, to within a scrape),
    /// milliseconds since the Unix epoch.
    pub timestamps_ms: Vec<u64>,
    pub series: Vec<SeriesAnswer>,
    /// Rows of the latest record that were not kept because [`MAX_SERIES`] series were
    /// already (of every kind).
    pub series_refused: u64,
}

/// One series' columns; `null` where the bucket was not recorded (a gap) and, for rates
/// and latencies, where there was no traffic.
#[derive(Debug, Serialize)]
pub struct SeriesAnswer {
    #[serde(flatten)]
    pub who: BTreeMap<&'static str, serde_json::Value>,
    pub requests: Vec<Option<u32>>,
    pub rps: Vec<Option<f64>>,
    pub success_rate: Vec<Option<f64>>,
    pub secured_rate: Vec<Option<f64>>,
    pub latency_ms_p50: Vec<Option<f64>>,
    pub latency_ms_p95: Vec<Option<f64>>,
    pub latency_ms_p99: Vec<Option<f64>>,
}

/// Every series, and which buckets were recorded at all.
#[derive(Debug)]
pub struct History {
    /// Milliseconds since the epoch at bucket 0's start.
    epoch_ms: u64,
    /// The buckets recorded (a ring of bucket numbers, as the series' slots).
    recorded: Box<[u32]>,
    newest: Option<u32>,
    services: BTreeMap<(String, String), Series<()>>,
    routes: BTreeMap<RouteKey, Series<()>>,
    edges: BTreeMap<EdgeKey, Series<EdgeMeta>>,
    /// Rows of the latest record not kept: no room for their series.
    refused: u64,
    max_series: usize,
}

impl History {
    /// An empty history whose bucket 0 starts at `epoch_ms` (Unix milliseconds).
    pub fn new(epoch_ms: u64) -> Self {
        Self::with_max_series(epoch_ms, MAX_SERIES)
    }

    fn with_max_series(epoch_ms: u64, max_series: usize) -> Self {
        Self {
            epoch_ms,
            recorded: vec![EMPTY; POINTS].into_boxed_slice(),
            newest: None,
            services: BTreeMap::new(),
            routes: BTreeMap::new(),
            edges: BTreeMap::new(),
            refused: 0,
            max_series,
        }
    }

    /// The bucket a moment `elapsed` after bucket 0's start falls in.
    pub fn bucket_at(elapsed: Duration) -> u32 {
        u32::try_from(elapsed.as_secs() / RESOLUTION.as_secs()).unwrap_or(EMPTY - 1)
    }

    /// Whether `bucket` is newer than everything recorded.
    pub fn wants(&self, bucket: u32) -> bool {
        self.newest.is_none_or(|newest| bucket > newest)
    }

    fn series_count(&self) -> usize {
        self.services.len() + self.routes.len() + self.edges.len()
    }

    /// Rows of the latest record not kept: no room for their series.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Bytes the rings take now: at most `MAX_SERIES × (POINTS × POINT_BYTES)`, plus the
    /// recorded buckets' ring.
    pub fn ring_bytes(&self) -> usize {
        self.series_count() * POINTS * POINT_BYTES + POINTS * std::mem::size_of::<u32>()
    }

    /// Records the rows of the period that ends as `bucket` starts. A bucket not newer than the
    /// newest recorded is ignored: the past is not rewritten.
    pub fn record(&mut self, bucket: u32, services: &[StatRow], routes: &[StatRow], edges: &[EdgeRow]) {
        if !self.wants(bucket) || bucket == EMPTY {
            return;
        }
        self.recorded[bucket as usize % POINTS] = bucket;
        self.newest = Some(bucket);
        self.refused = 0;
        let mut listed = Listed::default();
        for row in services {
            let key = (row.namespace.clone(), row.name.clone());
            listed.services.insert(key.clone());
            let room = self.series_count() < self.max_series;
            if let Some(series) = series_in(&mut self.services, room, &mut self.refused, key, ()) {
                put(series, bucket, &row.golden);
            }
        }
        for row in routes {
            let key = (row.namespace.clone(), row.service.clone().unwrap_or_default(), row.name.clone());
            listed.routes.insert(key.clone());
            let room = self.series_count() < self.max_series;
            if let Some(series) = series_in(&mut self.routes, room, &mut self.refused, key, ()) {
                put(series, bucket, &row.golden);
            }
        }
        for row in edges {
            let key = (row.src_namespace.clone(), row.src_workload.clone(), row.dst_target.clone());
            let meta = EdgeMeta {
                dst_namespace: row.dst_namespace.clone(),
                dst_service: row.dst_service.clone(),
                dst_workloads: row.dst_workloads.clone(),
            };
            listed.edges.insert(key.clone());
            let room = self.series_count() < self.max_series;
            if let Some(series) = series_in(&mut self.edges, room, &mut self.refused, key, meta) {
                put(series, bucket, &row.golden);
            }
        }
        self.forget(bucket, &listed);
    }

    /// Drops the series that neither the rows list nor had traffic within the ring.
    fn forget(&mut self, bucket: u32, listed: &Listed) {
        let stale = |s: &Option<u32>| s.is_none_or(|last| bucket - last >= POINTS as u32);
        self.services.retain(|k, s| listed.services.contains(k) || !stale(&s.last_traffic));
        self.routes.retain(|k, s| listed.routes.contains(k) || !stale(&s.last_traffic));
        self.edges.retain(|k, s| listed.edges.contains(k) || !stale(&s.last_traffic));
    }

    /// The buckets a query covers: the `points` most recent, from the oldest recorded on.
    fn buckets(&self, points: usize) -> std::ops::RangeInclusive<u32> {
        let Some(newest) = self.newest else {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        };
        let points = points.clamp(1, POINTS) as u32;
        let oldest_kept = (newest + 1).saturating_sub(points);
        // Nothing before the first bucket ever recorded (a young control plane).
        let first =
            (oldest_kept..=newest).find(|b| self.recorded[*b as usize % POINTS] == *b).unwrap_or(newest);
        first..=newest
    }

    /// The series of `kind` that `query` selects.
    pub fn answer(&self, kind: HistoryKind, query: &HistoryQuery) -> HistoryAnswer {
        let buckets = self.buckets(query.points);
        let timestamps_ms =
            buckets.clone().map(|b| self.epoch_ms + u64::from(b) * RESOLUTION.as_millis() as u64).collect();
        let wanted = |field: &Option<String>, value: &str| field.as_deref().is_none_or(|f| f == value);
        let mut series = Vec::new();
        match kind {
            HistoryKind::Service => {
                for ((namespace, name), s) in &self.services {
                    if wanted(&query.namespace, namespace) && wanted(&query.name, name) {
                        let who = [("namespace", namespace.as_str().into()), ("name", name.as_str().into())];
                        series.push(self.columns(who.into_iter().collect(), &s.ring, buckets.clone()));
                    }
                }
            }
            HistoryKind::Route => {
                for ((namespace, service, name), s) in &self.routes {
                    if wanted(&query.namespace, namespace) && wanted(&query.name, service) {
                        let who = [
                            ("namespace", namespace.as_str().into()),
                            ("service", service.as_str().into()),
                            ("name", name.as_str().into()),
                        ];
                        series.push(self.columns(who.into_iter().collect(), &s.ring, buckets.clone()));
                    }
                }
            }
            HistoryKind::Edge => {
                for ((src_namespace, src_workload, dst_target), s) in &self.edges {
                    let to = s.meta.dst_service.as_deref().unwrap_or(dst_target);
                    if wanted(&query.namespace, src_namespace)
                        && wanted(&query.from, src_workload)
                        && (wanted(&query.to, to) || wanted(&query.to, dst_target))
                    {
                        let who = [
                            ("src_namespace", src_namespace.as_str().into()),
                            ("src_workload", src_workload.as_str().into()),
                            ("dst_namespace", s.meta.dst_namespace.clone().into()),
                            ("dst_service", s.meta.dst_service.clone().into()),
                            ("dst_target", dst_target.as_str().into()),
                            ("dst_workloads", s.meta.dst_workloads.clone().into()),
                        ];
                        series.push(self.columns(who.into_iter().collect(), &s.ring, buckets.clone()));
                    }
                }
            }
        }
        HistoryAnswer {
            kind: kind.as_str(),
            resolution_seconds: RESOLUTION.as_secs(),
            capacity: POINTS,
            timestamps_ms,
            series,
            series_refused: self.refused,
        }
    }

    fn columns(
        &self,
        who: BTreeMap<&'static str, serde_json::Value>,
        ring: &Ring,
        buckets: std::ops::RangeInclusive<u32>,
    ) -> SeriesAnswer {
        let mut answer = SeriesAnswer {
            who,
            requests: Vec::new(),
            rps: Vec::new(),
            success_rate: Vec::new(),
            secured_rate: Vec::new(),
            latency_ms_p50: Vec::new(),
            latency_ms_p95: Vec::new(),
            latency_ms_p99: Vec::new(),
        };
        // f32 kept, shown rounded as the stat rows are (rates to 4 places, ms to 3).
        let value = |v: f32, places: i32| {
            let scale = 10f64.powi(places);
            (!v.is_nan()).then(|| (f64::from(v) * scale).round() / scale)
        };
        for bucket in buckets {
            let recorded = self.recorded[bucket as usize % POINTS] == bucket;
            let point = match (recorded, ring.get(bucket)) {
                (false, _) => None,
                (true, Some(point)) => Some(*point),
                // Recorded without this series: it had no traffic then.
                (true, None) => Some(Point { bucket, ..Point::NONE }),
            };
            answer.requests.push(point.map(|p| p.requests));
            answer.rps.push(point.and_then(|p| value(p.rps, 3)));
            answer.success_rate.push(point.and_then(|p| value(p.success_rate, 4)));
            answer.secured_rate.push(point.and_then(|p| value(p.secured_rate, 4)));
            answer.latency_ms_p50.push(point.and_then(|p| value(p.p50, 3)));
            answer.latency_ms_p95.push(point.and_then(|p| value(p.p95, 3)));
            answer.latency_ms_p99.push(point.and_then(|p| value(p.p99, 3)));
        }
        answer
    }
}

fn put<M>(series: &mut Series<M>, bucket: u32, golden: &Golden) {
    series.ring.put(Point::of(bucket, golden));
    if golden.requests > 0 {
        series.last_traffic = Some(bucket);
    }
}

/// The keys the rows of one record listed.
#[derive(Default)]
struct Listed {
    services: BTreeSet<(String, String)>,
    routes: BTreeSet<RouteKey>,
    edges: BTreeSet<EdgeKey>,
}

/// The series of `key` in `map`, created if there is `room` (else counted in `refused`),
/// with its metadata updated to `meta`.
fn series_in<'a, K: Ord + Clone, M>(
    map: &'a mut BTreeMap<K, Series<M>>,
    room: bool,
    refused: &mut u64,
    key: K,
    meta: M,
) -> Option<&'a mut Series<M>> {
    use std::collections::btree_map::Entry;
    match map.entry(key) {
        Entry::Occupied(entry) => {
            let series = entry.into_mut();
            series.meta = meta;
            Some(series)
        }
        Entry::Vacant(entry) if room => {
            Some(entry.insert(Series { meta, ring: Ring::new(), last_traffic: None }))
        }
        Entry::Vacant(_) => {
            *refused += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, requests: u64, rps: f64) -> StatRow {
        StatRow {
            namespace: "default".into(),
            name: name.into(),
            service: None,
            meshed: None,
            golden: Golden {
                requests,
                successes: requests,
                success_rate: (requests > 0).then_some(1.0),
                rps,
                latency_ms_p50: (requests > 0).then_some(1.5),
                latency_ms_p99: (requests > 0).then_some(9.25),
                ..Default::default()
            },
        }
    }

    fn edge(from: &str, to: &str, requests: u64) -> EdgeRow {
        EdgeRow {
            src_namespace: "default".into(),
            src_workload: from.into(),
            dst_namespace: Some("default".into()),
            dst_service: Some(to.into()),
            dst_target: format!("default/{to}"),
            dst_workloads: vec![to.into()],
            golden: Golden {
                requests,
                rps: requests as f64 / 10.0,
                secured_rate: Some(1.0),
                ..Default::default()
            },
        }
    }

    fn all() -> HistoryQuery {
        HistoryQuery { points: POINTS, ..Default::default() }
    }

    #[test]
    fn the_ring_wraps_around_keeping_the_last_hour() {
        let mut history = History::new(1_000_000);
        for bucket in 0..400u32 {
            history.record(bucket, &[service("books", 10, f64::from(bucket))], &[], &[]);
        }
        let answer = history.answer(HistoryKind::Service, &all());
        assert_eq!(answer.timestamps_ms.len(), POINTS, "an hour, no more");
        let rps = &answer.series[0].rps;
        assert_eq!((rps[0], rps[POINTS - 1]), (Some(40.0), Some(399.0)), "the oldest went first");
        // Each timestamp is when its bucket starts: the end of the 10 s recorded then.
        assert_eq!(answer.timestamps_ms[POINTS - 1], 1_000_000 + 399 * 10_000);
        assert!(answer.timestamps_ms.windows(2).all(|w| w[1] - w[0] == 10_000));
        // A shorter query is the newest points.
        let recent = history.answer(HistoryKind::Service, &HistoryQuery { points: 3, ..all() });
        assert_eq!(recent.series[0].rps, [Some(397.0), Some(398.0), Some(399.0)]);
    }

    #[test]
    fn a_missed_record_is_a_gap_and_a_series_without_traffic_is_zero() {
        let mut history = History::new(0);
        history.record(0, &[service("books", 10, 1.0)], &[], &[edge("web", "books", 10)]);
        // Recorded, but web called nobody: the edge has no row.
        history.record(1, &[service("books", 0, 0.0)], &[], &[]);
        // Buckets 2 and 3 were never recorded (the scrape round did not come): gaps.
        history.record(4, &[service("books", 20, 2.0)], &[], &[edge("web", "books", 20)]);
        let services = history.answer(HistoryKind::Service, &all());
        let books = &services.series[0];
        assert_eq!(books.rps, [Some(1.0), Some(0.0), None, None, Some(2.0)]);
        assert_eq!(books.requests, [Some(10), Some(0), None, None, Some(20)]);
        assert_eq!(books.success_rate, [Some(1.0), None, None, None, Some(1.0)], "no traffic: no rate");
        assert_eq!(books.latency_ms_p99[0], Some(9.25));
        let edges = history.answer(HistoryKind::Edge, &all());
        let web = &edges.series[0];
        assert_eq!(web.rps, [Some(1.0), Some(0.0), None, None, Some(2.0)]);
        assert_eq!(web.secured_rate, [Some(1.0), None, None, None, Some(1.0)]);
        assert_eq!(web.who["dst_service"], "books");
        assert_eq!(edges.timestamps_ms, [0, 10_000, 20_000, 30_000, 40_000]);
    }

    #[test]
    fn an_hour_without_records_leaves_nothing_stale_in_the_slots() {
        let mut history = History::new(0);
        history.record(5, &[service("books", 10, 7.0)], &[], &[]);
        // Same slot (5 + 360), an hour later: the old point must not show through.
        history.record(5 + POINTS as u32, &[service("books", 10, 3.0)], &[], &[]);
        let answer = history.answer(HistoryKind::Service, &all());
        let rps = &answer.series[0].rps;
        assert_eq!(rps.len(), 1, "only the new bucket was recorded within the hour: {rps:?}");
        assert_eq!(rps[0], Some(3.0));
        // The past is not rewritten.
        history.record(5, &[service("books", 10, 99.0)], &[], &[]);
        assert_eq!(history.answer(HistoryKind::Service, &all()).series[0].rps, [Some(3.0)]);
    }

    #[test]
    fn memory_is_bounded_by_the_series_cap_and_refusals_are_counted() {
        assert_eq!(POINT_BYTES, 32);
        assert_eq!(MAX_SERIES * POINTS * POINT_BYTES, 11_796_480, "11.25 MiB, as documented");
        let mut history = History::with_max_series(0, 4);
        let many: Vec<StatRow> = (0..10).map(|i| service(&format!("s{i}"), 1, 0.1)).collect();
        for bucket in 0..3 {
            history.record(bucket, &many, &[], &[edge("web", "books", 1)]);
        }
        let answer = history.answer(HistoryKind::Service, &all());
        assert_eq!(answer.series.len(), 4);
        assert_eq!(answer.series_refused, 7, "six services and the edge of the latest record");
        assert_eq!(history.ring_bytes(), 4 * POINTS * POINT_BYTES + POINTS * 4);
    }

    #[test]
    fn series_gone_from_the_rows_are_forgotten_an_hour_after_their_last_traffic() {
        let mut history = History::with_max_series(0, 2);
        history.record(0, &[], &[], &[edge("web", "books", 5)]);
        for bucket in 1..POINTS as u32 {
            history.record(bucket, &[service("books", 0, 0.0)], &[], &[]);
        }
        assert_eq!(history.answer(HistoryKind::Edge, &all()).series.len(), 1, "within the hour");
        history.record(POINTS as u32, &[service("books", 0, 0.0)], &[], &[]);
        assert!(history.answer(HistoryKind::Edge, &all()).series.is_empty(), "an hour since its traffic");
        // A listed series stays, traffic or not, and the room freed is used.
        assert_eq!(history.answer(HistoryKind::Service, &all()).series.len(), 1);
        history.record(POINTS as u32 + 1, &[service("books", 0, 0.0), service("authors", 1, 0.1)], &[], &[]);
        assert_eq!(history.answer(HistoryKind::Service, &all()).series.len(), 2);
    }

    #[test]
    fn queries_select_by_namespace_name_and_edge_ends() {
        let mut history = History::new(0);
        let route = StatRow { service: Some("books".into()), ..service("reads", 4, 0.4) };
        history.record(
            0,
            &[service("books", 1, 0.1), service("authors", 1, 0.1)],
            &[route],
            &[edge("web", "books", 1), edge("web", "authors", 1), edge("books", "authors", 1)],
        );
        let q = |kind, query: HistoryQuery| history.answer(kind, &query).series.len();
        assert_eq!(q(HistoryKind::Service, HistoryQuery { name: Some("books".into()), ..all() }), 1);
        assert_eq!(q(HistoryKind::Service, HistoryQuery { namespace: Some("shop".into()), ..all() }), 0);
        assert_eq!(q(HistoryKind::Route, HistoryQuery { name: Some("books".into()), ..all() }), 1);
        assert_eq!(q(HistoryKind::Edge, HistoryQuery { from: Some("web".into()), ..all() }), 2);
        assert_eq!(q(HistoryKind::Edge, HistoryQuery { to: Some("authors".into()), ..all() }), 2);
        assert_eq!(q(HistoryKind::Edge, HistoryQuery { to: Some("default/authors".into()), ..all() }), 2);
        let routes = history.answer(HistoryKind::Route, &all());
        assert_eq!(
            (&routes.series[0].who["service"], &routes.series[0].who["name"]),
            (&"books".into(), &"reads".into())
        );
    }

    #[test]
    fn an_empty_history_answers_no_points() {
        let answer = History::new(0).answer(HistoryKind::Service, &all());
        assert!(answer.timestamps_ms.is_empty() && answer.series.is_empty());
    }
}
