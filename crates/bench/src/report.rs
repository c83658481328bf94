//! From phases to what people read: per route and load, the medians over rounds, the
//! latency each route adds over the direct path in the same round, cost per request, and
//! ratios against Envoy; printed as tables and checked against the bar.

use super::experiment::{Measured, PhaseRecord};
use super::topology::{ProxyKind, Route};
use serde::Serialize;
use std::fmt::Write as _;
use tarmac_loadgen::{CurvePoint, LatencyHistogram, LatencySummary};

pub const MIB: f64 = 1024.0 * 1024.0;

/// One route under one load, over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct RouteSummary {
    pub route: Route,
    pub label: &'static str,
    pub load: String,
    pub rounds: usize,
    /// Medians over the rounds of each round's percentile.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// The spread of the rounds' p99: lowest and highest.
    pub p99_min_us: f64,
    pub p99_max_us: f64,
    /// Median over rounds of (this route − direct) in the same round; absent for direct.
    pub added_p50_us: Option<f64>,
    pub added_p99_us: Option<f64>,
    /// Proxy CPU seconds per 10,000 requests (all the route's proxies), median.
    pub cpu_per_10k: Option<f64>,
    /// Highest resident memory of any of the route's proxies during these phases.
    pub peak_rss_mib: Option<f64>,
    pub throughput_rps: f64,
    /// Requests per second per core the proxies used, median.
    pub rps_per_proxy_core: Option<f64>,
    pub failures: u64,
    /// What the first failed request met, e.g. `the target answered grpc-status 12`.
    pub first_error: Option<String>,
    pub contaminated_rounds: usize,
    pub generator_warnings: Vec<String>,
    /// All rounds' latencies together.
    pub merged: LatencySummary,
    pub curve: Vec<CurvePoint>,
}

/// One line of the bar, checked against this run.
#[derive(Clone, Debug, Serialize)]
pub struct BarCheck {
    pub rule: String,
    /// None when it cannot be checked in this run (Envoy missing).
    pub passed: Option<bool>,
    pub detail: String,
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

/// Summaries for every (load, route) in `measured`, loads and routes in the order run.
pub fn summarise(measured: &[Measured]) -> Vec<RouteSummary> {
    loads_and_routes(measured.iter().map(|m| &m.record))
        .into_iter()
        .map(|(load, route)| summarise_one(measured, load, route))
        .collect()
}

/// Every (load, route) that `phases` measured, once each, in the order run.
pub fn loads_and_routes<'a>(phases: impl Iterator<Item = &'a PhaseRecord>) -> Vec<(&'a str, Route)> {
    let mut keys = Vec::new();
    for p in phases {
        let key = (p.load.as_str(), p.route);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// One route's figures under one load, round by round; added latency is taken against
/// direct in the same round. Their medians are the route's summary, and their range is
/// the spread that a comparison between two runs has to see past.
#[derive(Debug, Default)]
pub struct Rounds {
    pub added_p50_us: Vec<f64>,
    pub added_p99_us: Vec<f64>,
    pub cpu_per_10k: Vec<f64>,
    pub peak_rss_mib: Vec<f64>,
    pub rps_per_proxy_core: Vec<f64>,
}

impl Rounds {
    /// `route` under `load`, from the phases of a run (every route's, for direct).
    pub fn of<'a>(phases: impl Iterator<Item = &'a PhaseRecord> + Clone, load: &str, route: Route) -> Self {
        let direct_in_round = |round: usize| {
            phases
                .clone()
                .find(|p| p.load == load && p.route == Route::Direct && p.round == round)
                .map(|p| p.latency)
        };
        let mut rounds = Rounds::default();
        for p in phases.clone().filter(|p| p.load == load && p.route == route) {
            if route != Route::Direct
                && let Some(direct) = direct_in_round(p.round)
            {
                rounds.added_p50_us.push(p.latency.p50_us - direct.p50_us);
                rounds.added_p99_us.push(p.latency.p99_us - direct.p99_us);
            }
            rounds.cpu_per_10k.extend(p.cpu_per_10k());
            rounds.peak_rss_mib.extend(p.peak_rss_bytes().map(|b| b as f64 / MIB));
            rounds.rps_per_proxy_core.extend(p.rps_per_proxy_core());
        }
        rounds
    }
}

fn summarise_one(measured: &[Measured], load: &str, route: Route) -> RouteSummary {
    let phases: Vec<&Measured> =
        measured.iter().filter(|m| m.record.load == load && m.record.route == route).collect();
    let collect =
        |f: &dyn Fn(&Measured) -> Option<f64>| -> Vec<f64> { phases.iter().filter_map(|m| f(m)).collect() };
    let mut merged = LatencyHistogram::new();
    for m in &phases {
        merged.merge(&m.latency);
    }
    let p99s = collect(&|m| Some(m.record.latency.p99_us));
    let mut rounds = Rounds::of(measured.iter().map(|m| &m.record), load, route);
    RouteSummary {
        route,
        label: route.label(),
        load: load.to_string(),
        rounds: phases.len(),
        p50_us: median(&mut collect(&|m| Some(m.record.latency.p50_us))).unwrap_or(0.0),
        p99_us: median(&mut p99s.clone()).unwrap_or(0.0),
        p999_us: median(&mut collect(&|m| Some(m.record.latency.p999_us))).unwrap_or(0.0),
        p99_min_us: p99s.iter().copied().fold(f64::INFINITY, f64::min),
        p99_max_us: p99s.iter().copied().fold(0.0, f64::max),
        added_p50_us: median(&mut rounds.added_p50_us),
        added_p99_us: median(&mut rounds.added_p99_us),
        cpu_per_10k: median(&mut rounds.cpu_per_10k),
        peak_rss_mib: rounds.peak_rss_mib.iter().copied().reduce(f64::max),
        throughput_rps: median(&mut collect(&|m| Some(m.record.throughput_rps))).unwrap_or(0.0),
        rps_per_proxy_core: median(&mut rounds.rps_per_proxy_core),
        failures: phases.iter().map(|m| m.record.failures).sum(),
        first_error: phases.iter().find_map(|m| m.record.first_error.clone()),
        contaminated_rounds: phases.iter().filter(|m| m.record.contaminated).count(),
        generator_warnings: phases.iter().filter_map(|m| m.record.generator_warning.clone()).collect(),
        merged: merged.summary(),
        curve: merged.curve(),
    }
}

pub fn find<'a>(summaries: &'a [RouteSummary], load: &str, route: Route) -> Option<&'a RouteSummary> {
    summaries.iter().find(|s| s.load == load && s.route == route)
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// `ours / theirs`, when both are positive: a ratio of a negative added latency (noise
/// that made a proxy look faster than direct) would mean nothing.
pub fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The proxies Tarmac's routes are compared with in a table, each with its route of as
/// many hops; only those this run measured get a column.
fn comparators(summaries: &[RouteSummary]) -> Vec<(&'static str, ProxyKind)> {
    [("envoy", ProxyKind::Envoy), ("nginx", ProxyKind::Nginx)]
        .into_iter()
        .filter(|(_, kind)| summaries.iter().any(|s| s.route.proxy() == Some(*kind)))
        .collect()
}

/// The latency table of one open-loop load.
pub fn latency_table(summaries: &[RouteSummary], load: &str, heading: &str) -> String {
    let comparators = comparators(summaries);
    let mut out = format!("{heading}\n");
    let _ = write!(
        out,
        "  {:<19} {:>8} {:>8} {:>9} {:>15} {:>8} {:>8} {:>9} {:>8}",
        "route", "p50 µs", "p99 µs", "p99.9 µs", "p99 spread", "+p50 µs", "+p99 µs", "CPU-s/10k", "RSS MiB",
    );
    for (name, _) in &comparators {
        let _ = write!(out, " {:>17}", format!("÷ {name} +p50/+p99"));
    }
    out.push('\n');
    for s in summaries.iter().filter(|s| s.load == load) {
        let _ = write!(
            out,
            "  {:<19} {:>8.0} {:>8.0} {:>9.0} {:>15} {:>8} {:>8} {:>9} {:>8}",
            s.label,
            s.p50_us,
            s.p99_us,
            s.p999_us,
            format!("{:.0}–{:.0}", s.p99_min_us, s.p99_max_us),
            cell(s.added_p50_us, 0),
            cell(s.added_p99_us, 0),
            cell(s.cpu_per_10k, 3),
            cell(s.peak_rss_mib, 1),
        );
        for &(_, kind) in &comparators {
            let versus = s.route.counterpart(kind).and_then(|c| find(summaries, load, c)).map_or_else(
                || "-".to_string(),
                |c| {
                    format!(
                        "{}/{}",
                        cell(ratio(s.added_p50_us, c.added_p50_us), 2),
                        cell(ratio(s.added_p99_us, c.added_p99_us), 2)
                    )
                },
            );
            let _ = write!(out, " {versus:>17}");
        }
        let _ = writeln!(out, "{}", flags(s));
    }
    out
}

/// The table of the closed-loop load.
pub fn throughput_table(summaries: &[RouteSummary], load: &str, heading: &str) -> String {
    let comparators = comparators(summaries);
    let mut out = format!("{heading}\n");
    let _ = write!(
        out,
        "  {:<19} {:>9} {:>15} {:>9} {:>8} {:>8}",
        "route", "req/s", "req/s per core", "CPU-s/10k", "RSS MiB", "p50 µs"
    );
    for (name, _) in &comparators {
        let _ = write!(out, " {:>17}", format!("÷ {name} per core"));
    }
    out.push('\n');
    for s in summaries.iter().filter(|s| s.load == load) {
        let _ = write!(
            out,
            "  {:<19} {:>9.0} {:>15} {:>9} {:>8} {:>8.0}",
            s.label,
            s.throughput_rps,
            cell(s.rps_per_proxy_core, 0),
            cell(s.cpu_per_10k, 3),
            cell(s.peak_rss_mib, 1),
            s.p50_us,
        );
        for &(_, kind) in &comparators {
            let versus = s
                .route
                .counterpart(kind)
                .and_then(|c| find(summaries, load, c))
                .and_then(|c| ratio(s.rps_per_proxy_core, c.rps_per_proxy_core));
            let _ = write!(out, " {:>17}", cell(versus, 2));
        }
        let _ = writeln!(out, "{}", flags(s));
    }
    out
}

fn flags(s: &RouteSummary) -> String {
    let mut flags = Vec::new();
    if s.failures > 0 {
        flags.push(format!("{} failed", s.failures));
    }
    if s.contaminated_rounds > 0 {
        flags.push(format!("{}/{} rounds contaminated", s.contaminated_rounds, s.rounds));
    }
    if !s.generator_warnings.is_empty() {
        flags.push("generator lagged".to_string());
    }
    if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) }
}

/// The bar, line by line, as far as this run can check it.
pub fn bar(summaries: &[RouteSummary], idle_rss_mib: Option<f64>, max_load: &str) -> Vec<BarCheck> {
    let mut checks = Vec::new();
    let mut check = |rule: &str, ours: Option<f64>, limit: Option<f64>, unit: &str, missing: &str| {
        let (passed, detail) = match (ours, limit) {
            (Some(o), Some(l)) => (Some(o <= l), format!("{o:.2}{unit} against at most {l:.2}{unit}")),
            _ => (None, missing.to_string()),
        };
        checks.push(BarCheck { rule: rule.to_string(), passed, detail });
    };
    let envoy_missing = "not measured: Envoy missing, or requests through it failed";
    // A route whose requests failed measured failures, not the proxy: it proves nothing.
    let get = |load: &str, route: Route| find(summaries, load, route).filter(|s| s.failures == 0);
    let t1 = get("5000 req/s", Route::TarmacOneHop);
    let e1 = get("5000 req/s", Route::EnvoyOneHop);
    for (name, pick) in [
        ("p50", (|s: &RouteSummary| s.added_p50_us) as fn(&RouteSummary) -> Option<f64>),
        ("p99", |s| s.added_p99_us),
    ] {
        check(
            &format!("one Tarmac hop at 5000 req/s: added {name} at most half of one Envoy hop's"),
            t1.and_then(pick),
            e1.and_then(pick).map(|e| e / 2.0),
            " µs",
            envoy_missing,
        );
    }
    check(
        "proxy CPU-s per 10k requests at 5000 req/s (one hop): at most 0.4× Envoy's",
        t1.and_then(|s| s.cpu_per_10k),
        e1.and_then(|s| s.cpu_per_10k).map(|e| e * 0.4),
        " s",
        envoy_missing,
    );
    check("proxy RSS idle: at most 10 MiB", idle_rss_mib, Some(10.0), " MiB", "not measured");
    check(
        "proxy RSS at 5000 req/s: at most 20 MiB",
        t1.into_iter()
            .chain(get("5000 req/s", Route::TarmacTwoHops))
            .filter_map(|s| s.peak_rss_mib)
            .reduce(f64::max),
        Some(20.0),
        " MiB",
        "not measured",
    );
    let tm = get("1000 req/s", Route::TarmacTwoHopsMtls);
    let em = get("1000 req/s", Route::EnvoyTwoHopsMtls);
    let e1k = get("1000 req/s", Route::EnvoyOneHop);
    for (name, pick) in [
        ("p50", (|s: &RouteSummary| s.added_p50_us) as fn(&RouteSummary) -> Option<f64>),
        ("p99", |s| s.added_p99_us),
    ] {
        check(
            &format!("two-hop mTLS at 1000 req/s: added {name} at most half of Envoy's two-hop mTLS"),
            tm.and_then(pick),
            em.and_then(pick).map(|e| e / 2.0),
            " µs",
            envoy_missing,
        );
        check(
            &format!("two-hop mTLS at 1000 req/s: added {name} no more than one plaintext Envoy hop"),
            tm.and_then(pick),
            e1k.and_then(pick),
            " µs",
            envoy_missing,
        );
    }
    // "At least 2×": compared as Envoy's per-core rate at most half of ours.
    let t_max = get(max_load, Route::TarmacOneHop).and_then(|s| s.rps_per_proxy_core);
    let e_max = get(max_load, Route::EnvoyOneHop).and_then(|s| s.rps_per_proxy_core);
    checks.push(match (t_max, e_max) {
        (Some(t), Some(e)) => BarCheck {
            rule: "max throughput per proxy core: at least 2× Envoy's".to_string(),
            passed: Some(t >= 2.0 * e),
            detail: format!("{t:.0} req/s per core against Envoy's {e:.0} ({:.2}×)", t / e),
        },
        _ => BarCheck {
            rule: "max throughput per proxy core: at least 2× Envoy's".to_string(),
            passed: None,
            detail: envoy_missing.to_string(),
        },
    });
    checks
}

/// The targets of issue 19, past nginx, as far as this run can check them. (Its other
/// targets, half of Envoy's added latency and idle RSS, are lines of the bar.)
/// `per_idle_connection_kib`: what one more idle connection costs Tarmac, from the cost
/// curves.
pub fn targets(
    summaries: &[RouteSummary],
    per_idle_connection_kib: Option<f64>,
    max_load: &str,
) -> Vec<BarCheck> {
    let get = |load: &str, route: Route| find(summaries, load, route).filter(|s| s.failures == 0);
    let nginx_missing = "not measured: nginx missing, or requests through it failed";
    let mut checks = Vec::new();
    let mut check = |rule: String, ours: Option<f64>, theirs: Option<f64>, factor: f64, at_least: bool| {
        checks.push(match (ours, theirs) {
            (Some(o), Some(t)) => {
                let limit = t * factor;
                BarCheck {
                    rule,
                    passed: Some(if at_least { o >= limit } else { o <= limit }),
                    detail: format!(
                        "{o:.3} against {} {limit:.3} ({:.2}× nginx's {t:.3})",
                        if at_least { "at least" } else { "at most" },
                        o / t
                    ),
                }
            }
            _ => BarCheck { rule, passed: None, detail: nginx_missing.to_string() },
        });
    };
    let (mesh, nginx) = (get("1000 req/s", Route::TarmacTwoHopsMtls), get("1000 req/s", Route::NginxOneHop));
    for (name, pick) in [
        ("p50", (|s: &RouteSummary| s.added_p50_us) as fn(&RouteSummary) -> Option<f64>),
        ("p99", |s| s.added_p99_us),
    ] {
        check(
            format!(
                "the mesh path (two hops, mTLS) at 1000 req/s: added {name} µs no more than one nginx hop's"
            ),
            mesh.and_then(pick),
            nginx.and_then(pick),
            1.0,
            false,
        );
    }
    for load in ["5000 req/s", max_load] {
        check(
            format!("one hop at {load}: CPU-s per 10k requests at most 0.8× nginx's"),
            get(load, Route::TarmacOneHop).and_then(|s| s.cpu_per_10k),
            get(load, Route::NginxOneHop).and_then(|s| s.cpu_per_10k),
            0.8,
            false,
        );
    }
    check(
        format!("one hop at {max_load}: requests per core at least 1.2× nginx's"),
        get(max_load, Route::TarmacOneHop).and_then(|s| s.rps_per_proxy_core),
        get(max_load, Route::NginxOneHop).and_then(|s| s.rps_per_proxy_core),
        1.2,
        true,
    );
    checks.push(match per_idle_connection_kib {
        Some(kib) => BarCheck {
            rule: "memory per idle connection: at most 8 KiB".to_string(),
            passed: Some(kib <= 8.0),
            detail: format!("{kib:.1} KiB against at most 8.0 KiB"),
        },
        None => BarCheck {
            rule: "memory per idle connection: at most 8 KiB".to_string(),
            passed: None,
            detail: "not measured: the cost curves were skipped".to_string(),
        },
    });
    checks
}

pub fn bar_text(heading: &str, checks: &[BarCheck]) -> String {
    let mut out = format!("{heading}, in this run:\n");
    for c in checks {
        let verdict = match c.passed {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "  - ",
        };
        let _ = writeln!(out, "  [{verdict}] {}: {}", c.rule, c.detail);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::experiment::{PhaseRecord, ProxyCost};
    use std::time::Duration;

    /// A phase of 100 requests at `base_us` to `base_us + 99` µs, at 1000 req/s.
    pub(crate) fn phase(route: Route, round: usize, base_us: u64, proxy_cpu: f64) -> Measured {
        let mut latency = LatencyHistogram::new();
        for i in 0..100 {
            latency.record(Duration::from_micros(base_us + i));
        }
        let proxies = if route == Route::Direct {
            Vec::new()
        } else {
            vec![ProxyCost { name: "p".into(), cpu_seconds: proxy_cpu, peak_rss_bytes: 8 << 20 }]
        };
        Measured {
            record: PhaseRecord {
                route,
                load: "1000 req/s".into(),
                round,
                latency: latency.summary(),
                service_time: latency.summary(),
                pacing_lag_p99_us: Some(3.0),
                throughput_rps: 1000.0,
                responses: 10_000,
                warmup_responses: 0,
                failures: 0,
                first_error: None,
                generator_warning: None,
                proxies,
                other_cores: Some(0.01),
                stolen_cores: Some(0.0),
                contaminated: false,
                realtime: true,
            },
            latency,
        }
    }

    #[test]
    fn added_latency_is_taken_round_by_round_and_medians_resist_one_bad_round() {
        let measured = vec![
            phase(Route::Direct, 1, 100, 0.0),
            phase(Route::TarmacOneHop, 1, 150, 0.2),
            phase(Route::EnvoyOneHop, 1, 300, 1.0),
            // Round 2: the whole machine was slower; differences stay the same.
            phase(Route::Direct, 2, 1100, 0.0),
            phase(Route::TarmacOneHop, 2, 1150, 0.2),
            phase(Route::EnvoyOneHop, 2, 1300, 1.0),
            phase(Route::Direct, 3, 100, 0.0),
            phase(Route::TarmacOneHop, 3, 150, 0.4),
            phase(Route::EnvoyOneHop, 3, 300, 1.0),
        ];
        let summaries = summarise(&measured);
        assert_eq!(summaries.len(), 3);
        let tarmac = find(&summaries, "1000 req/s", Route::TarmacOneHop).unwrap();
        assert_eq!(tarmac.rounds, 3);
        // Within the histograms' resolution.
        assert!(
            tarmac.added_p50_us.is_some_and(|added| (added - 50.0).abs() < 0.5),
            "{:?}",
            tarmac.added_p50_us
        );
        assert!((tarmac.p50_us - 199.0).abs() < 1.0, "median round, not the slow one: {}", tarmac.p50_us);
        assert_eq!(tarmac.cpu_per_10k, Some(0.2));
        assert_eq!(tarmac.peak_rss_mib, Some(8.0));
        assert_eq!(find(&summaries, "1000 req/s", Route::Direct).unwrap().added_p50_us, None);
        let table = latency_table(&summaries, "1000 req/s", "heading");
        assert!(table.contains("0.25/0.25"), "tarmac adds a quarter of Envoy's latency:\n{table}");
    }

    #[test]
    fn medians_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn the_bar_says_what_it_could_not_check() {
        let checks = bar(&[], Some(6.0), "max");
        let idle = checks.iter().find(|c| c.rule.contains("idle")).unwrap();
        assert_eq!(idle.passed, Some(true));
        assert!(checks.iter().any(|c| c.passed.is_none() && c.detail.contains("Envoy missing")));
        assert!(checks.iter().any(|c| c.rule.contains("two-hop mTLS") && c.passed.is_none()));
    }

    #[test]
    fn the_targets_compare_with_nginx_in_the_same_run() {
        let measured = vec![
            phase(Route::Direct, 1, 100, 0.0),
            phase(Route::TarmacOneHop, 1, 150, 0.6),
            phase(Route::TarmacTwoHopsMtls, 1, 170, 1.0),
            phase(Route::NginxOneHop, 1, 200, 1.0),
        ];
        let summaries = summarise(&measured);
        let table = latency_table(&summaries, "1000 req/s", "heading");
        assert!(table.contains("÷ nginx +p50/+p99") && !table.contains("÷ envoy"), "{table}");
        assert!(table.contains("0.50/0.50"), "tarmac adds 50 of nginx's 100 µs:\n{table}");
        let targets = targets(&summaries, Some(18.0), "1000 req/s");
        let mesh =
            targets.iter().find(|c| c.rule.contains("the mesh path") && c.rule.contains("p50")).unwrap();
        assert_eq!(mesh.passed, Some(true), "+70 against nginx's +100: {mesh:?}");
        let cpu = targets.iter().find(|c| c.rule.contains("one hop at 1000 req/s: CPU")).unwrap();
        assert_eq!(cpu.passed, Some(true), "0.6 against at most 0.8 × 1.0: {cpu:?}");
        let per_core = targets.iter().find(|c| c.rule.contains("at least 1.2×")).unwrap();
        assert_eq!(per_core.passed, Some(true), "1.67× nginx's: {per_core:?}");
        let memory = targets.iter().find(|c| c.rule.contains("idle connection")).unwrap();
        assert_eq!(memory.passed, Some(false), "18 KiB against 8: {memory:?}");
        let without = self::targets(&summarise(&measured[..3]), None, "1000 req/s");
        assert!(without.iter().all(|c| c.passed.is_none()), "{without:?}");
    }
}
