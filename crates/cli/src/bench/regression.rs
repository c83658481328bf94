//! The bar's last line: no figure may get more than 5 % worse from one landing to the
//! next. `--baseline FILE` compares this run's Tarmac figures with a suite run recorded
//! under `bench/results/`, figure by figure, and says which got worse by more than that.

use super::report::{BarCheck, MIB, RouteSummary};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// How much worse a figure may get before it counts as a regression.
pub const TOLERANCE: f64 = 0.05;

/// A recorded suite run, as far as the comparison reads it.
#[derive(Debug, Deserialize)]
pub struct Recorded {
    pub commit: Option<String>,
    summaries: Vec<RecordedSummary>,
    #[serde(default)]
    idle_rss: Vec<RecordedIdleRss>,
}

#[derive(Debug, Deserialize)]
struct RecordedSummary {
    route: String,
    load: String,
    #[serde(flatten)]
    figures: Figures,
    #[serde(default)]
    contaminated_rounds: usize,
    #[serde(default)]
    failures: u64,
}

/// The figures of one route under one load that a landing must not make worse, named as
/// in [`RouteSummary`] and in the JSON.
#[derive(Debug, Deserialize)]
struct Figures {
    added_p50_us: Option<f64>,
    added_p99_us: Option<f64>,
    cpu_per_10k: Option<f64>,
    peak_rss_mib: Option<f64>,
    rps_per_proxy_core: Option<f64>,
}

impl From<&RouteSummary> for Figures {
    fn from(s: &RouteSummary) -> Self {
        Self {
            added_p50_us: s.added_p50_us,
            added_p99_us: s.added_p99_us,
            cpu_per_10k: s.cpu_per_10k,
            peak_rss_mib: s.peak_rss_mib,
            rps_per_proxy_core: s.rps_per_proxy_core,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RecordedIdleRss {
    proxy: String,
    bytes: u64,
}

/// The highest idle RSS of Tarmac's proxies, in MiB, from (proxy name, bytes) pairs.
pub fn idle_tarmac_mib<'a>(idle_rss: impl IntoIterator<Item = (&'a str, u64)>) -> Option<f64> {
    idle_rss
        .into_iter()
        .filter(|(proxy, _)| proxy.starts_with("tarmac"))
        .map(|(_, bytes)| bytes as f64 / MIB)
        .reduce(f64::max)
}

/// One figure in both runs.
#[derive(Debug, Serialize)]
pub struct Compared {
    pub route: String,
    pub load: String,
    pub figure: &'static str,
    pub before: f64,
    pub after: f64,
    /// Relative change, positive when the figure got worse.
    pub worse_by: f64,
    /// Either run measured it in rounds flagged contaminated.
    pub contaminated: bool,
}

impl Compared {
    pub fn regressed(&self) -> bool {
        self.worse_by > TOLERANCE
    }
}

/// The comparison with one recorded run, as printed and as written to the JSON.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub file: String,
    pub commit: Option<String>,
    pub figures: Vec<Compared>,
}

/// Reads a suite run recorded with `--json`.
pub fn load(path: &Path) -> Result<Recorded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--baseline {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("--baseline {}: not a `tarmac bench --suite` JSON report: {e}", path.display()))
}

/// The loads a figure is compared under. CPU-s per 10k and req/s per core are one figure
/// seen two ways: compared once, the first under open-loop rates and the second at maximum
/// throughput, as the bar states them.
#[derive(Clone, Copy, PartialEq)]
enum Loads {
    All,
    Rates,
    Max,
}

/// How a figure is judged.
struct Figure {
    name: &'static str,
    lower_is_better: bool,
    /// Changes are measured against at least this much: added latency can be near zero or
    /// negative (a hop faster than the noise), and 0.1 → 0.3 µs is not "200 % worse".
    floor: f64,
}

const fn figure(name: &'static str, lower_is_better: bool, floor: f64) -> Figure {
    Figure { name, lower_is_better, floor }
}

/// Where a figure is read from a route's [`Figures`].
type Read = fn(&Figures) -> Option<f64>;

/// The figures of a route and load, the loads each is compared under, and where it is read.
const ROUTE_FIGURES: [(Figure, Loads, Read); 5] = [
    (figure("added p50 µs", true, 1.0), Loads::All, |f| f.added_p50_us),
    (figure("added p99 µs", true, 1.0), Loads::All, |f| f.added_p99_us),
    (figure("CPU-s per 10k", true, 0.0), Loads::Rates, |f| f.cpu_per_10k),
    (figure("peak RSS MiB", true, 0.0), Loads::All, |f| f.peak_rss_mib),
    (figure("req/s per core", false, 0.0), Loads::Max, |f| f.rps_per_proxy_core),
];

const IDLE_RSS: Figure = figure("idle RSS MiB", true, 0.0);

/// Every Tarmac figure measured in both runs (same route and load, no failures in either),
/// and the idle RSS of Tarmac's proxies. `max_load` names the maximum-throughput load.
pub fn compare(
    file: &Path,
    before: &Recorded,
    now: &[RouteSummary],
    idle_rss_mib: Option<f64>,
    max_load: &str,
) -> Comparison {
    let mut figures = Vec::new();
    for s in now.iter().filter(|s| s.route.proxy() == Some(super::topology::ProxyKind::Tarmac)) {
        let route = s.route.name();
        let Some(then) = before.summaries.iter().find(|b| b.route == route && b.load == s.load) else {
            continue;
        };
        if s.failures > 0 || then.failures > 0 {
            continue;
        }
        let loads = if s.load == max_load { Loads::Max } else { Loads::Rates };
        let (now, then_figures) = (Figures::from(s), &then.figures);
        let contaminated = s.contaminated_rounds > 0 || then.contaminated_rounds > 0;
        for (judged, under, read) in &ROUTE_FIGURES {
            if *under != Loads::All && *under != loads {
                continue;
            }
            if let (Some(before), Some(after)) = (read(then_figures), read(&now)) {
                figures.push(compared(&route, &s.load, judged, before, after, contaminated));
            }
        }
    }
    let idle_before = idle_tarmac_mib(before.idle_rss.iter().map(|r| (r.proxy.as_str(), r.bytes)));
    if let (Some(before), Some(after)) = (idle_before, idle_rss_mib) {
        figures.push(compared("tarmac (any proxy)", "idle", &IDLE_RSS, before, after, false));
    }
    Comparison { file: file.display().to_string(), commit: before.commit.clone(), figures }
}

fn compared(
    route: &str,
    load: &str,
    figure: &Figure,
    before: f64,
    after: f64,
    contaminated: bool,
) -> Compared {
    // From a recorded 0 any rise is an infinite change: counted as worse.
    let change = (after - before) / before.abs().max(figure.floor);
    let worse_by = if figure.lower_is_better { change } else { -change };
    Compared {
        route: route.to_string(),
        load: load.to_string(),
        figure: figure.name,
        before,
        after,
        worse_by,
        contaminated,
    }
}

/// The bar line for this comparison, or why it could not be checked.
pub fn bar_check(comparison: Option<&Comparison>) -> BarCheck {
    let rule = format!("no figure more than {:.0} % worse than at the last landing", TOLERANCE * 100.0);
    let Some(c) = comparison else {
        return BarCheck {
            rule,
            passed: None,
            detail: "not checked: name the last landing's JSON with --baseline bench/results/COMMIT.json"
                .to_string(),
        };
    };
    if c.figures.is_empty() {
        return BarCheck {
            rule,
            passed: None,
            detail: format!("no figure of {} was measured in this run", c.file),
        };
    }
    let worse = c.figures.iter().filter(|f| f.regressed()).count();
    BarCheck {
        rule,
        passed: Some(worse == 0),
        detail: format!("{worse} of {} figures against {}", c.figures.len(), c.file),
    }
}

/// The figures that got worse by more than the tolerance, one line each.
pub fn text(c: &Comparison) -> String {
    let commit = c.commit.as_deref().unwrap_or("commit not recorded");
    let mut out = format!("Against {} ({commit}):\n", c.file);
    let worse: Vec<&Compared> = c.figures.iter().filter(|f| f.regressed()).collect();
    if worse.is_empty() {
        let _ = writeln!(
            out,
            "  none of {} figures is more than {:.0} % worse",
            c.figures.len(),
            TOLERANCE * 100.0
        );
    }
    for f in worse {
        let _ = writeln!(
            out,
            "  {:<20} {:<14} {:<15} {:>10.2} → {:<10.2} {:+.1} % worse{}",
            f.route,
            f.load,
            f.figure,
            f.before,
            f.after,
            f.worse_by * 100.0,
            if f.contaminated { " (contaminated rounds)" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(json: &str) -> Recorded {
        serde_json::from_str(json).expect("valid JSON")
    }

    fn judged(name: &str) -> &'static Figure {
        &ROUTE_FIGURES.iter().find(|(f, _, _)| f.name == name).expect("a figure of that name").0
    }

    #[test]
    fn worse_means_higher_latency_cpu_and_memory_but_lower_throughput() {
        let throughput = judged("req/s per core");
        let down = compared("r", "l", throughput, 30_000.0, 27_000.0, false);
        assert!(down.regressed(), "10 % less throughput is worse: {down:?}");
        let up = compared("r", "l", throughput, 30_000.0, 33_000.0, false);
        assert!(!up.regressed() && up.worse_by < 0.0);
        let p50 = judged("added p50 µs");
        assert!(compared("r", "l", p50, 100.0, 106.0, false).regressed());
        assert!(!compared("r", "l", p50, 100.0, 104.0, false).regressed());
        // Near-zero added latency is measured against 1 µs; CPU seconds are not.
        let tiny = compared("r", "l", p50, 0.1, 0.3, false);
        assert!((tiny.worse_by - 0.2).abs() < 1e-9, "{tiny:?}");
        let cpu = compared("r", "l", judged("CPU-s per 10k"), 0.5, 0.6, false);
        assert!((cpu.worse_by - 0.2).abs() < 1e-9, "{cpu:?}");
    }

    #[test]
    fn a_recorded_landing_still_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results/62f62b6fb79a.json");
        let before = load(&path).expect("the recorded landing parses");
        assert_eq!(before.commit.as_deref(), Some("62f62b6fb79a"));
        let tarmac = before.summaries.iter().filter(|s| s.route.starts_with("tarmac")).count();
        assert!(tarmac >= 7, "{tarmac} Tarmac summaries");
        assert!(!before.idle_rss.is_empty());
    }

    #[test]
    fn this_run_is_compared_with_the_recorded_one_figure_by_figure() {
        use crate::bench::report::{summarise, tests::phase};
        use crate::bench::topology::Route;
        let run = |tarmac_cpu: f64, envoy_us: u64| {
            summarise(&[
                phase(Route::Direct, 1, 100, 0.0),
                phase(Route::TarmacOneHop, 1, 150, tarmac_cpu),
                phase(Route::EnvoyOneHop, 1, envoy_us, 1.0),
            ])
        };
        // Recorded as `--json` writes summaries, read back as a baseline.
        let json = serde_json::json!({ "commit": "before", "summaries": run(0.2, 300) }).to_string();
        let before = recorded(&json);
        // Twice the CPU; Envoy slower, which is not Tarmac's figure.
        let c = compare(Path::new("before.json"), &before, &run(0.4, 900), None, "max throughput");
        assert!(c.figures.iter().all(|f| f.route == "tarmac_one_hop"), "{:?}", c.figures);
        let of = |name: &str| c.figures.iter().find(|f| f.figure == name).unwrap();
        let cpu = of("CPU-s per 10k");
        assert!(cpu.regressed() && (cpu.worse_by - 1.0).abs() < 1e-9, "{cpu:?}");
        assert!(!of("added p50 µs").regressed());
        assert!(!of("peak RSS MiB").regressed());
        // Under a request rate CPU is compared as CPU-s per 10k, not again as req/s per core.
        assert!(c.figures.iter().all(|f| f.figure != "req/s per core"), "{:?}", c.figures);
        assert_eq!(bar_check(Some(&c)).passed, Some(false));
        // The same run against itself: every figure present, none worse.
        let same = compare(Path::new("before.json"), &before, &run(0.2, 300), Some(8.0), "max throughput");
        assert_eq!(same.figures.len(), c.figures.len(), "no idle RSS in the recorded run: not compared");
        assert_eq!(bar_check(Some(&same)).passed, Some(true));
    }

    #[test]
    fn the_bar_line_counts_regressions_and_says_when_there_is_no_baseline() {
        let none = bar_check(None);
        assert_eq!(none.passed, None);
        assert!(none.detail.contains("--baseline"));
        let c = Comparison {
            file: "before.json".into(),
            commit: Some("abc".into()),
            figures: vec![
                compared("tarmac_one_hop", "5000 req/s", judged("CPU-s per 10k"), 0.50, 0.60, false),
                compared("tarmac_one_hop", "5000 req/s", judged("peak RSS MiB"), 8.0, 8.1, false),
            ],
        };
        let check = bar_check(Some(&c));
        assert_eq!(check.passed, Some(false));
        assert_eq!(check.detail, "1 of 2 figures against before.json");
        let printed = text(&c);
        assert!(printed.contains("CPU-s per 10k") && printed.contains("+20.0 % worse"), "{printed}");
        assert!(!printed.contains("peak RSS"), "only regressions are listed: {printed}");
    }

    #[test]
    fn a_file_that_is_not_a_suite_report_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("tarmac-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.json");
        std::fs::write(&file, "{\"tool\": \"something else\"}").unwrap();
        let err = load(&file).unwrap_err();
        assert!(err.contains("x.json") && err.contains("not a `tarmac bench --suite` JSON report"), "{err}");
        let missing = load(&dir.join("missing.json")).unwrap_err();
        assert!(missing.contains("missing.json"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
