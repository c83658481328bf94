//! Golden metrics from proxy scrapes: pure functions, tested without any network.
//!
//! A [`Reading`] is what one scrape of one proxy says, reduced to the series golden
//! metrics need (responses by classification, latency buckets) keyed by direction,
//! target and route. The numbers of a window are the increase between two readings of
//! the same proxy, summed over proxies as `sum(increase(...))` would, and the latency
//! quantiles are read from the summed bucket increases as `histogram_quantile` does.
//!
//! Routed services have a second latency histogram, by route and rule: its series are
//! keyed by the rule's name like the responses' `route` label, and kept apart
//! ([`Counts::route_latency`]) so that the target's own histogram is never counted twice.

use crate::prometheus::{Bucket, Histogram, Scrape, counter_increase};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// The proxy's response counter: one series per status code and classification.
pub const RESPONSES: &str = "tarmac_responses_total";
/// Inbound requests and connections a policy refused (`mode="enforce"`) and 429s: the
/// same target and client labels as the responses.
pub const DENIED: &str = "tarmac_authz_denied_total";
pub const RATE_LIMITED: &str = "tarmac_rate_limited_total";
/// The proxy's latency histogram (without `_bucket`).
pub const LATENCY: &str = "tarmac_response_latency_seconds";
/// The proxy's latency histogram of routed services, by route and rule (without `_bucket`).
pub const ROUTE_LATENCY: &str = "tarmac_route_response_latency_seconds";
/// Retries callers' proxies made, and those the retry budget denied (`reason="budget"`).
pub const RETRIES: &str = "tarmac_retries_total";
pub const RETRIES_DENIED: &str = "tarmac_retries_denied_total";
/// Endpoints ejected by callers' circuit breakers.
pub const EJECTIONS: &str = "tarmac_endpoint_ejections_total";
/// The proxy's own failures; `kind="overloaded"` are requests a concurrency limit shed.
pub const PROXY_ERRORS: &str = "tarmac_proxy_errors_total";
/// How a rule without a `route` label (or a proxy without routing) is reported.
pub const DEFAULT_ROUTE: &str = "[default]";

/// Which series of a proxy: traffic it received (`inbound`, target = the app) or sent
/// (`outbound`, target = the service as named in its configuration), and the route
/// label when the proxy gives one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub direction: String,
    pub target: String,
    pub route: Option<String>,
    /// Inbound over mTLS: the caller's SPIFFE identity.
    pub client_id: Option<String>,
}

/// Responses and their latencies: cumulative in a reading, an increase in a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub successes: f64,
    pub failures: f64,
    /// Responses on connections secured by mTLS (series labelled `tls="true"`), of
    /// `tls_known` whose series say either way (outbound series do not).
    pub secured: f64,
    pub tls_known: f64,
    /// Refused by an AuthorizationPolicy or the default policy (inbound), and by a rate
    /// limit: already among the responses (403, 429) for HTTP.
    pub denied: f64,
    pub rate_limited: f64,
    pub latency: Histogram,
    /// Routed services only: the latency of the rule named by the key's `route` (of
    /// unnamed rules and unmatched requests when it is None). No buckets at all when the
    /// proxy has no such series.
    pub route_latency: Histogram,
    /// Outbound only: what the caller's proxy did to keep the target's failures from
    /// spreading.
    pub resilience: Resilience,
}

/// Retries made and denied, endpoints ejected, requests shed by a concurrency limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resilience {
    pub retries: f64,
    /// Retries the retry budget denied.
    pub budget_denied: f64,
    pub ejections: f64,
    pub shed: f64,
}

impl Resilience {
    pub fn add(&mut self, other: &Resilience) {
        self.retries += other.retries;
        self.budget_denied += other.budget_denied;
        self.ejections += other.ejections;
        self.shed += other.shed;
    }

    fn increase_since(&self, e: &Resilience) -> Resilience {
        Resilience {
            retries: counter_increase(self.retries, e.retries),
            budget_denied: counter_increase(self.budget_denied, e.budget_denied),
            ejections: counter_increase(self.ejections, e.ejections),
            shed: counter_increase(self.shed, e.shed),
        }
    }
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.successes += other.successes;
        self.failures += other.failures;
        self.secured += other.secured;
        self.tls_known += other.tls_known;
        self.denied += other.denied;
        self.rate_limited += other.rate_limited;
        self.latency = self.latency.merge(&other.latency);
        self.route_latency = self.route_latency.merge(&other.route_latency);
        self.resilience.add(&other.resilience);
    }

    /// What happened since `earlier` (None: since the proxy started, when it counted 0).
    pub fn increase_since(&self, earlier: Option<&Counts>) -> Counts {
        match earlier {
            None => self.clone(),
            Some(e) => Counts {
                successes: counter_increase(self.successes, e.successes),
                failures: counter_increase(self.failures, e.failures),
                secured: counter_increase(self.secured, e.secured),
                tls_known: counter_increase(self.tls_known, e.tls_known),
                denied: counter_increase(self.denied, e.denied),
                rate_limited: counter_increase(self.rate_limited, e.rate_limited),
                latency: self.latency.increase_since(&e.latency),
                route_latency: self.route_latency.increase_since(&e.route_latency),
                resilience: self.resilience.increase_since(&e.resilience),
            },
        }
    }

    /// The golden metrics of these counts observed over `seconds`.
    pub fn golden(&self, seconds: f64) -> Golden {
        let responses = self.successes + self.failures;
        let ms = |q: f64| self.latency.quantile(q).map(|s| round(s * 1000.0, 3));
        Golden {
            requests: responses.round() as u64,
            successes: self.successes.round() as u64,
            success_rate: (responses > 0.0).then(|| round(self.successes / responses, 4)),
            secured_rate: (self.tls_known > 0.0).then(|| round(self.secured / self.tls_known, 4)),
            rps: if seconds > 0.0 { round(responses / seconds, 3) } else { 0.0 },
            denied: self.denied.round() as u64,
            rate_limited: self.rate_limited.round() as u64,
            latency_ms_p50: ms(0.5),
            latency_ms_p95: ms(0.95),
            latency_ms_p99: ms(0.99),
            retries: self.resilience.retries.round() as u64,
            retries_denied_by_budget: self.resilience.budget_denied.round() as u64,
            ejections: self.resilience.ejections.round() as u64,
            shed: self.resilience.shed.round() as u64,
        }
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Success rate, request rate and latency of one thing over a window. `requests` counts
/// completed responses (a request still in flight is not counted yet).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Golden {
    pub requests: u64,
    pub successes: u64,
    /// None when there was no traffic (not 100 %, not 0 %).
    pub success_rate: Option<f64>,
    /// The share of responses that travelled over mTLS; None when unknown (no traffic,
    /// or only series without a `tls` label).
    pub secured_rate: Option<f64>,
    pub rps: f64,
    /// Refused by policy (403, PERMISSION_DENIED, or a closed connection) and by a rate
    /// limit (429, RESOURCE_EXHAUSTED); inbound series only.
    pub denied: u64,
    pub rate_limited: u64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Counted by callers' proxies (services, routes, edges): retries made, retries the
    /// retry budget denied, endpoints ejected by circuit breaking, requests a concurrency
    /// limit shed (503 at once).
    pub retries: u64,
    pub retries_denied_by_budget: u64,
    pub ejections: u64,
    pub shed: u64,
}

/// What one scrape of one proxy says about its traffic.
#[derive(Clone, Debug)]
pub struct Reading {
    pub at: Instant,
    pub series: BTreeMap<SeriesKey, Counts>,
}

impl Reading {
    pub fn from_scrape(scrape: &Scrape, at: Instant) -> Self {
        let mut series: BTreeMap<SeriesKey, Counts> = BTreeMap::new();
        let key = |s: &crate::prometheus::Sample| SeriesKey {
            direction: s.label("direction").unwrap_or_default().to_string(),
            target: s.label("target").unwrap_or_default().to_string(),
            route: s.label("route").filter(|r| !r.is_empty()).map(str::to_string),
            client_id: s.label("client_id").filter(|c| !c.is_empty()).map(str::to_string),
        };
        // The route histogram's `route` label is the route object; its `rule` label is what
        // the responses call `route`.
        let rule_key = |s: &crate::prometheus::Sample| SeriesKey {
            direction: s.label("direction").unwrap_or_default().to_string(),
            target: s.label("target").unwrap_or_default().to_string(),
            route: s.label("rule").filter(|r| !r.is_empty()).map(str::to_string),
            client_id: None,
        };
        // Counted per target only.
        let target_key = |s: &crate::prometheus::Sample| SeriesKey {
            direction: s.label("direction").unwrap_or_default().to_string(),
            target: s.label("target").unwrap_or_default().to_string(),
            route: None,
            client_id: None,
        };
        let bucket_name = format!("{LATENCY}_bucket");
        let route_bucket_name = format!("{ROUTE_LATENCY}_bucket");
        let mut buckets: BTreeMap<SeriesKey, Vec<Bucket>> = BTreeMap::new();
        let mut route_buckets: BTreeMap<SeriesKey, Vec<Bucket>> = BTreeMap::new();
        for sample in scrape.samples() {
            if sample.name == DENIED && sample.label("mode") != Some("audit") {
                series.entry(key(sample)).or_default().denied += sample.value;
                continue;
            }
            if sample.name == RATE_LIMITED {
                series.entry(key(sample)).or_default().rate_limited += sample.value;
                continue;
            }
            if sample.name == RESPONSES {
                let counts = series.entry(key(sample)).or_default();
                match sample.label("classification") {
                    Some("success") => counts.successes += sample.value,
                    _ => counts.failures += sample.value,
                }
                match sample.label("tls") {
                    Some("true") => {
                        counts.secured += sample.value;
                        counts.tls_known += sample.value;
                    }
                    Some(_) => counts.tls_known += sample.value,
                    None => {}
                }
            } else if sample.name == RETRIES {
                series.entry(rule_key(sample)).or_default().resilience.retries += sample.value;
            } else if sample.name == RETRIES_DENIED && sample.label("reason") == Some("budget") {
                series.entry(rule_key(sample)).or_default().resilience.budget_denied += sample.value;
            } else if sample.name == EJECTIONS {
                series.entry(target_key(sample)).or_default().resilience.ejections += sample.value;
            } else if sample.name == PROXY_ERRORS && sample.label("kind") == Some("overloaded") {
                series.entry(target_key(sample)).or_default().resilience.shed += sample.value;
            } else if sample.name == bucket_name {
                add_bucket(&mut buckets, key(sample), sample);
            } else if sample.name == route_bucket_name {
                add_bucket(&mut route_buckets, rule_key(sample), sample);
            }
        }
        for (key, list) in buckets {
            series.entry(key).or_default().latency = Histogram::new(list);
        }
        for (key, list) in route_buckets {
            series.entry(key).or_default().route_latency = Histogram::new(list);
        }
        Self { at, series }
    }

    /// Every series' increase since `earlier` (None: since the proxy started).
    pub fn increase_since(&self, earlier: Option<&Reading>) -> BTreeMap<SeriesKey, Counts> {
        self.series
            .iter()
            .map(|(key, counts)| {
                let before = earlier.and_then(|e| e.series.get(key));
                // A series absent earlier was created since, from zero.
                let before = match (earlier, before) {
                    (Some(_), None) => Some(&EMPTY),
                    (_, b) => b,
                };
                (key.clone(), counts.increase_since(before))
            })
            .collect()
    }
}

/// Adds a `_bucket` sample to the buckets of `key` (series that differ only in labels
/// the key leaves out are summed).
fn add_bucket(
    buckets: &mut BTreeMap<SeriesKey, Vec<Bucket>>,
    key: SeriesKey,
    sample: &crate::prometheus::Sample,
) {
    let Some(upper_bound) = sample.label("le").and_then(|le| match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }) else {
        return;
    };
    let list = buckets.entry(key).or_default();
    match list.iter_mut().find(|b| b.upper_bound == upper_bound) {
        Some(b) => b.cumulative_count += sample.value,
        None => list.push(Bucket { upper_bound, cumulative_count: sample.value }),
    }
}

static EMPTY: Counts = Counts {
    successes: 0.0,
    failures: 0.0,
    secured: 0.0,
    tls_known: 0.0,
    denied: 0.0,
    rate_limited: 0.0,
    latency: Histogram::EMPTY,
    route_latency: Histogram::EMPTY,
    resilience: Resilience { retries: 0.0, budget_denied: 0.0, ejections: 0.0, shed: 0.0 },
};

/// The service an outbound `target` names, as `tarmac up` names them in sidecar
/// configurations: `books`, `books.shop` (another namespace), `books:8080` or
/// `books.shop:8080` (a port of a multi-port Service). Returns (namespace, name); the
/// namespace defaults to the calling proxy's. None for what cannot be a service name
/// (an address, say).
pub fn parse_service_target<'a>(target: &'a str, caller_namespace: &'a str) -> Option<(&'a str, &'a str)> {
    let host = match target.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        Some(_) => return None,
        None => target,
    };
    let (name, namespace) = host.split_once('.').unwrap_or((host, caller_namespace));
    let label = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.starts_with(|c: char| c.is_ascii_lowercase())
    };
    (label(name) && label(namespace)).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SCRAPE_1: &str = "\
tarmac_responses_total{direction=\"inbound\",target=\"127.0.0.1:8080\",tls=\"true\",client_id=\"spiffe://cluster.local/ns/default/sa/front\",status_code=\"200\",classification=\"success\"} 90
tarmac_responses_total{direction=\"inbound\",target=\"127.0.0.1:8080\",tls=\"true\",client_id=\"spiffe://cluster.local/ns/default/sa/front\",status_code=\"500\",classification=\"failure\"} 10
tarmac_responses_total{direction=\"outbound\",target=\"names\",status_code=\"200\",classification=\"success\"} 5
tarmac_response_latency_seconds_bucket{direction=\"inbound\",target=\"127.0.0.1:8080\",tls=\"true\",client_id=\"spiffe://cluster.local/ns/default/sa/front\",le=\"0.001\"} 50
tarmac_response_latency_seconds_bucket{direction=\"inbound\",target=\"127.0.0.1:8080\",tls=\"true\",client_id=\"spiffe://cluster.local/ns/default/sa/front\",le=\"0.01\"} 100
tarmac_response_latency_seconds_bucket{direction=\"inbound\",target=\"127.0.0.1:8080\",tls=\"true\",client_id=\"spiffe://cluster.local/ns/default/sa/front\",le=\"+Inf\"} 100
";

    fn inbound_key() -> SeriesKey {
        SeriesKey {
            direction: "inbound".into(),
            target: "127.0.0.1:8080".into(),
            route: None,
            client_id: Some("spiffe://cluster.local/ns/default/sa/front".into()),
        }
    }

    #[test]
    fn readings_sum_responses_by_classification_and_keep_buckets() {
        let reading = Reading::from_scrape(&Scrape::parse(SCRAPE_1).unwrap(), Instant::now());
        let inbound = inbound_key();
        let counts = &reading.series[&inbound];
        assert_eq!((counts.successes, counts.failures), (90.0, 10.0));
        assert_eq!(counts.latency.count(), 100.0);
        let golden = counts.golden(10.0);
        assert_eq!(golden.requests, 100);
        assert_eq!(golden.success_rate, Some(0.9));
        assert_eq!(golden.secured_rate, Some(1.0), "every response was over mTLS");
        assert_eq!(golden.rps, 10.0);
        assert_eq!(golden.latency_ms_p50, Some(1.0));
    }

    #[test]
    fn a_window_is_the_increase_between_two_readings() {
        let start = Instant::now();
        let before = Reading::from_scrape(&Scrape::parse(SCRAPE_1).unwrap(), start);
        let later = SCRAPE_1
            .replace("} 90", "} 150")
            .replace("} 5\n", "} 5\ntarmac_responses_total{direction=\"outbound\",target=\"names\",route=\"canary\",status_code=\"503\",classification=\"failure\"} 4\n");
        let after = Reading::from_scrape(&Scrape::parse(&later).unwrap(), start + Duration::from_secs(6));
        let window = after.increase_since(Some(&before));
        let inbound = inbound_key();
        let golden = window[&inbound].golden(6.0);
        assert_eq!((golden.requests, golden.successes, golden.rps), (60, 60, 10.0));
        assert_eq!(golden.latency_ms_p50, None, "no latency observed in the window");
        let canary = SeriesKey {
            direction: "outbound".into(),
            target: "names".into(),
            route: Some("canary".into()),
            client_id: None,
        };
        assert_eq!(window[&canary].failures, 4.0, "a series born in the window counts from zero");
        let since_start = after.increase_since(None);
        assert_eq!(since_start[&inbound].successes, 150.0);
    }

    #[test]
    fn route_latency_is_keyed_by_rule_and_kept_apart_from_the_target_histogram() {
        let text = "\
tarmac_response_latency_seconds_bucket{direction=\"outbound\",target=\"names\",le=\"0.01\"} 10
tarmac_response_latency_seconds_bucket{direction=\"outbound\",target=\"names\",le=\"+Inf\"} 12
tarmac_route_response_latency_seconds_bucket{direction=\"outbound\",target=\"names\",route=\"default/names\",rule=\"slow\",le=\"0.01\"} 0
tarmac_route_response_latency_seconds_bucket{direction=\"outbound\",target=\"names\",route=\"default/names\",rule=\"slow\",le=\"+Inf\"} 2
tarmac_route_response_latency_seconds_bucket{direction=\"outbound\",target=\"names\",route=\"default/names\",rule=\"\",le=\"0.01\"} 10
tarmac_route_response_latency_seconds_bucket{direction=\"outbound\",target=\"names\",route=\"default/names\",rule=\"\",le=\"+Inf\"} 10
";
        let reading = Reading::from_scrape(&Scrape::parse(text).unwrap(), Instant::now());
        let key = |route: Option<&str>| SeriesKey {
            direction: "outbound".into(),
            target: "names".into(),
            route: route.map(Into::into),
            client_id: None,
        };
        let slow = &reading.series[&key(Some("slow"))];
        assert_eq!((slow.latency.count(), slow.route_latency.count()), (0.0, 2.0));
        let unnamed = &reading.series[&key(None)];
        assert_eq!((unnamed.latency.count(), unnamed.route_latency.count()), (12.0, 10.0));
        let later = reading.increase_since(Some(&reading));
        assert_eq!(later[&key(Some("slow"))].route_latency.count(), 0.0);
    }

    #[test]
    fn callers_count_retries_denials_ejections_and_shed_requests_per_target_and_rule() {
        let text = "\
tarmac_retries_total{direction=\"outbound\",target=\"books\",route=\"default/books\",rule=\"reads\",reason=\"status\"} 7
tarmac_retries_total{direction=\"outbound\",target=\"books\",route=\"\",rule=\"\",reason=\"unsent\"} 2
tarmac_retries_denied_total{direction=\"outbound\",target=\"books\",route=\"default/books\",rule=\"reads\",reason=\"budget\"} 3
tarmac_retries_denied_total{direction=\"outbound\",target=\"books\",route=\"default/books\",rule=\"reads\",reason=\"body\"} 5
tarmac_endpoint_ejections_total{direction=\"outbound\",target=\"books\"} 1
tarmac_proxy_errors_total{direction=\"outbound\",target=\"books\",kind=\"overloaded\"} 4
tarmac_proxy_errors_total{direction=\"outbound\",target=\"books\",kind=\"connect\"} 9
";
        let start = Instant::now();
        let reading = Reading::from_scrape(&Scrape::parse(text).unwrap(), start);
        let key = |route: Option<&str>| SeriesKey {
            direction: "outbound".into(),
            target: "books".into(),
            route: route.map(Into::into),
            client_id: None,
        };
        let mut total = Counts::default();
        for counts in reading.series.values() {
            total.add(counts);
        }
        let golden = total.golden(10.0);
        assert_eq!(
            (golden.retries, golden.retries_denied_by_budget, golden.ejections, golden.shed),
            (9, 3, 1, 4),
            "body denials and other proxy errors are not these"
        );
        assert_eq!(reading.series[&key(Some("reads"))].resilience.retries, 7.0, "by rule");
        let later = text.replace("} 7", "} 10");
        let after = Reading::from_scrape(&Scrape::parse(&later).unwrap(), start + Duration::from_secs(5));
        let window = after.increase_since(Some(&reading));
        assert_eq!(window[&key(Some("reads"))].resilience.retries, 3.0, "a window is an increase");
        assert_eq!(window[&key(None)].resilience.ejections, 0.0);
    }

    #[test]
    fn outbound_targets_name_services() {
        assert_eq!(parse_service_target("books", "default"), Some(("default", "books")));
        assert_eq!(parse_service_target("books.shop", "default"), Some(("shop", "books")));
        assert_eq!(parse_service_target("books.shop:8080", "default"), Some(("shop", "books")));
        assert_eq!(parse_service_target("books:80", "shop"), Some(("shop", "books")));
        assert_eq!(parse_service_target("127.0.0.1:8080", "default"), None);
        assert_eq!(parse_service_target("[::1]:80", "default"), None);
    }
}
