//! The retry storm of examples/retry-storm, run as a user runs it (`tarmac up`): 60 orders
//! a second through checkout -> payments -> logging, logging's capacity halved for 20 s,
//! then restored, with logging's route misconfigured to retry every 5xx 5 times.
//!
//! - With Tarmac's defaults the retry budget holds logging's load to 1.2 × offered +
//!   10/s, payments keeps its objective while logging fails, and logging is back to
//!   normal within 5 s of getting its capacity back.
//! - With the budget turned off for logging (a `ResiliencePolicy`), the same trigger
//!   starts a storm that outlives it: logging sees several times the offered load and
//!   is still failing, and payments still turning customers away, well after its
//!   capacity has returned.
//!
//! Load is counted where it lands, by logging itself (`GET /stats` at its `PORT`); payments
//! counts its payments and its calls to logging, traffic the orders it sent. Every figure
//! is printed per second (`-- --nocapture` to see a passing run's).

use super::observe::up_and_ready;
use super::up::{Up, get_ok, replica_addr};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tarmac_testkit::tools::temp_dir;

/// Logging's capacity in the example, and while degraded.
const NORMAL_RPS: u32 = 100;
const DEGRADED_RPS: u32 = 50;
/// Seconds measured before the trigger (enough for the budget's window to fill), during
/// it, and after it.
const BEFORE: usize = 10;
const DEGRADED: usize = 20;
const AFTER: usize = 12;
/// Payments' objective: the share of payments that succeed.
const PAYMENTS_OBJECTIVE: f64 = 0.999;
/// What the retry budget promises: retries add at most 20 % plus 10 a second, over its
/// window of 10 s.
const BUDGET_RATIO: f64 = 0.2;
const BUDGET_FLOOR_PER_SECOND: f64 = 10.0;
const BUDGET_WINDOW: usize = 10;
/// Requests that may fall in the next second's reading: a retry leaves the sidecar up to
/// its backoff (25 to 38 ms) before logging counts it, and at the 200 retries a second of
/// a budget spent at once, a few do.
const MEASUREMENT_SLACK: f64 = 10.0;
/// The storm's least amplification, and how long after the trigger it must still rage.
const STORM_FACTOR: f64 = 3.0;
const RECOVERY: usize = 5;

/// The storm tests load two cores heavily: one at a time, so that neither measures the
/// other.
static ONE_STORM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/retry-storm")
}

/// Turns the retry budget off for calls to logging.
const BUDGET_OFF: &str = "\
apiVersion: tarmac.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: logging}
spec:
  targetRefs: [{group: \"\", kind: Service, name: logging}]
  retryBudget: {enabled: false}
";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Before,
    Degraded,
    After,
}

/// One second of the run, as rates per second.
#[derive(Clone, Copy, Debug)]
struct Second {
    phase: Phase,
    /// Orders sent by traffic: one payment and one log line each.
    offered: f64,
    /// Requests arriving at logging, tries of every caller included.
    load: f64,
    /// Of them, refused at once (queue full), and served after their caller had gone.
    rejected: f64,
    abandoned: f64,
    /// Payments completed (all succeed) and turned away (every worker busy).
    paid: f64,
    shed: f64,
    /// Payments' calls to logging that got a 2xx, and the others.
    logged: f64,
    not_logged: f64,
}

impl Second {
    fn print(&self, t: usize) {
        let calls = self.logged + self.not_logged;
        println!(
            "storm | t={t:>2}s {:<8} offered {:>5.1}/s  logging: load {:>6.1}/s ({:>4.1}x) rejected {:>6.1} \
             abandoned {:>5.1}  payments: ok {:>5.1}/s shed {:>5.1}/s success {:>5.1} %  logging calls ok {:>5.1} %",
            format!("{:?}", self.phase),
            self.offered,
            self.load,
            self.load / self.offered.max(1.0),
            self.rejected,
            self.abandoned,
            self.paid,
            self.shed,
            100.0 * ratio(self.paid, self.paid + self.shed),
            100.0 * ratio(self.logged, calls),
        );
    }
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 1.0 }
}

/// Sums of a stretch of seconds.
fn total(seconds: &[Second]) -> Second {
    let mut sum = Second {
        phase: seconds.first().map_or(Phase::Before, |s| s.phase),
        offered: 0.0,
        load: 0.0,
        rejected: 0.0,
        abandoned: 0.0,
        paid: 0.0,
        shed: 0.0,
        logged: 0.0,
        not_logged: 0.0,
    };
    for s in seconds {
        sum.offered += s.offered;
        sum.load += s.load;
        sum.rejected += s.rejected;
        sum.abandoned += s.abandoned;
        sum.paid += s.paid;
        sum.shed += s.shed;
        sum.logged += s.logged;
        sum.not_logged += s.not_logged;
    }
    sum
}

/// An HTTP/1.1 request with bounded waits: the status and the body.
fn request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: storm\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(response.clone())?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// An app's counters (`GET /stats`: `name value` lines).
struct Counts(Vec<(String, f64)>);

impl Counts {
    fn read(app: SocketAddr) -> Counts {
        let (status, body) = request(app, "GET", "/stats").unwrap_or_else(|e| panic!("GET {app}/stats: {e}"));
        assert_eq!(status, 200, "GET {app}/stats: {body}");
        Counts(
            body.lines()
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> f64 {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no counter {name}"))
    }
}

/// The apps, reached directly at their `PORT`s (not through the mesh).
struct Apps {
    traffic: SocketAddr,
    payments: SocketAddr,
    logging: SocketAddr,
}

/// One reading of every app's counters.
struct Reading {
    at: Instant,
    traffic: Counts,
    payments: Counts,
    logging: Counts,
}

impl Apps {
    fn find(up: &Up) -> Apps {
        let port = |replica: &str| -> SocketAddr {
            let marker = format!("| {replica}: PORT=");
            up.wait_for(&format!("{replica}'s PORT"), Duration::from_secs(60), |lines| {
                let rest = lines.iter().find_map(|l| l.split_once(&marker))?.1;
                let port: u16 = rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
                Some(SocketAddr::from(([127, 0, 0, 1], port)))
            })
        };
        Apps { traffic: port("traffic-0"), payments: port("payments-0"), logging: port("logging-0") }
    }

    fn read(&self) -> Reading {
        Reading {
            at: Instant::now(),
            traffic: Counts::read(self.traffic),
            payments: Counts::read(self.payments),
            logging: Counts::read(self.logging),
        }
    }

    fn set_capacity(&self, rps: u32) {
        let (status, body) = request(self.logging, "POST", &format!("/capacity?rps={rps}")).unwrap();
        assert_eq!(status, 200, "POST /capacity?rps={rps}: {body}");
    }
}

/// The rates between two readings.
fn second(phase: Phase, before: &Reading, after: &Reading) -> Second {
    let elapsed = after.at.duration_since(before.at).as_secs_f64().max(0.001);
    let rate = |counts: fn(&Reading) -> &Counts, name: &str| {
        (counts(after).get(name) - counts(before).get(name)).max(0.0) / elapsed
    };
    Second {
        phase,
        offered: rate(|r| &r.traffic, "sent"),
        load: rate(|r| &r.logging, "received"),
        rejected: rate(|r| &r.logging, "rejected"),
        abandoned: rate(|r| &r.logging, "abandoned"),
        paid: rate(|r| &r.payments, "succeeded"),
        shed: rate(|r| &r.payments, "shed"),
        logged: rate(|r| &r.payments, "logging_ok"),
        not_logged: rate(|r| &r.payments, "logging_failed"),
    }
}

/// The sum of `name` over payments' sidecar's series for `target="logging"`.
fn sidecar_counter(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{name}{{")) && l.contains("target=\"logging\"") && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

/// What a run measured, and payments' sidecar's retry counters for logging.
struct Run {
    seconds: Vec<Second>,
    retries: f64,
    denied_by_budget: f64,
}

/// `tarmac up DIR`, steady traffic, logging degraded for [`DEGRADED`] seconds, then
/// restored; the figures of every second.
fn run(dir: &Path, label: &str) -> Run {
    let (up, _api) =
        up_and_ready(dir.to_str().unwrap(), &["logging-0", "payments-0", "checkout-0", "traffic-0"]);
    let apps = Apps::find(&up);
    let admin = replica_addr(&up, "payments-0", "admin ");

    // Steady first: orders flow end to end and every log line is written, 3 s in a row
    // (the sidecars learn their endpoints and certificates in the first seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = apps.read();
    let mut steady = 0;
    while steady < 3 {
        assert!(Instant::now() < deadline, "{label}: no steady traffic within 30 s\n{}", up.output());
        std::thread::sleep(Duration::from_secs(1));
        let now = apps.read();
        let s = second(Phase::Before, &last, &now);
        steady =
            if s.offered > 30.0 && s.logged >= 0.9 * s.offered && s.shed == 0.0 { steady + 1 } else { 0 };
        last = now;
    }

    println!("storm | {label}");
    let start = Instant::now();
    let mut seconds = Vec::new();
    for i in 0..BEFORE + DEGRADED + AFTER {
        if i == BEFORE {
            apps.set_capacity(DEGRADED_RPS);
        }
        if i == BEFORE + DEGRADED {
            apps.set_capacity(NORMAL_RPS);
        }
        let phase = match i {
            i if i < BEFORE => Phase::Before,
            i if i < BEFORE + DEGRADED => Phase::Degraded,
            _ => Phase::After,
        };
        assert!(
            start.elapsed() < Duration::from_secs((BEFORE + DEGRADED + AFTER) as u64 + 30),
            "{label}: the apps' counters answer too slowly to measure each second\n{}",
            up.output()
        );
        // Ticks on a fixed schedule, so that a slow reading does not shift the phases.
        let tick = start + Duration::from_secs(i as u64 + 1);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let now = apps.read();
        let s = second(phase, &last, &now);
        s.print(i + 1);
        seconds.push(s);
        last = now;
    }
    let metrics = get_ok(admin, "/metrics");
    let retries = sidecar_counter(&metrics, "tarmac_retries_total", "");
    let denied_by_budget = sidecar_counter(&metrics, "tarmac_retries_denied_total", "reason=\"budget\"");
    println!(
        "storm | {label}: payments' sidecar retried {retries} calls to logging, {denied_by_budget} denied by the budget"
    );
    drop(up);
    Run { seconds, retries, denied_by_budget }
}

fn degraded(seconds: &[Second]) -> &[Second] {
    &seconds[BEFORE..BEFORE + DEGRADED]
}

fn after(seconds: &[Second]) -> &[Second] {
    &seconds[BEFORE + DEGRADED..]
}

fn print_summary(label: &str, seconds: &[Second]) {
    for (name, stretch) in
        [("before", &seconds[..BEFORE]), ("degraded", degraded(seconds)), ("after", after(seconds))]
    {
        let sum = total(stretch);
        let peak = stretch.iter().map(|s| s.load).fold(0.0, f64::max);
        let worst_ten = stretch
            .windows(BUDGET_WINDOW)
            .map(|w| {
                let sum = total(w);
                sum.load / sum.offered.max(1.0)
            })
            .fold(0.0, f64::max);
        println!(
            "storm | {label} {name:<8}: offered {:.1}/s, logging load {:.1}/s ({:.2}x; worst 10 s {:.2}x; \
             peak {:.0}/s in one second), payments success {:.2} %, logging calls ok {:.1} %",
            sum.offered / stretch.len() as f64,
            sum.load / stretch.len() as f64,
            sum.load / sum.offered.max(1.0),
            worst_ten,
            peak,
            100.0 * ratio(sum.paid, sum.paid + sum.shed),
            100.0 * ratio(sum.logged, sum.logged + sum.not_logged),
        );
    }
}

#[test]
fn with_the_default_retry_budget_a_degraded_logging_neither_storms_nor_takes_payments_down() {
    let _one = ONE_STORM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let label = "defaults (retry budget on)";
    let Run { seconds, retries, denied_by_budget } = run(&example(), label);
    print_summary(label, &seconds);
    let table = || {
        seconds.iter().enumerate().map(|(t, s)| format!("t={}s {s:?}", t + 1)).collect::<Vec<_>>().join("\n")
    };

    // The budget's promise, as its window is kept: ten slots of a second, the current one
    // partial, so 9 to 10 s. Every retry within any 9 s is counted by the window of the
    // last of them, which lies within the 11 s ending there: over any 9 s, logging gets at
    // most the offered requests, plus 20 % of those of the 11 s around them, plus the
    // floor's 100. (Within one second the budget may spend a whole window's allowance:
    // the per-second figures above show how much.)
    for end in BUDGET_WINDOW..seconds.len() {
        let nine = total(&seconds[end + 2 - BUDGET_WINDOW..=end]);
        let eleven = total(&seconds[end - BUDGET_WINDOW..=end]);
        let bound = nine.offered
            + BUDGET_RATIO * eleven.offered
            + BUDGET_FLOOR_PER_SECOND * BUDGET_WINDOW as f64
            + MEASUREMENT_SLACK;
        assert!(
            nine.load <= bound,
            "seconds {}..={}: logging received {:.0} requests for {:.0} offered, more than the budget's {bound:.0}\n{}",
            end + 3 - BUDGET_WINDOW,
            end + 1,
            nine.load,
            nine.offered,
            table()
        );
    }
    assert!(
        denied_by_budget > 0.0,
        "the budget denied no retry ({retries} made): did logging fail at all?\n{}",
        table()
    );

    // Logging really was failing, and payments did not notice beyond its latency.
    let during = total(degraded(&seconds));
    assert!(
        ratio(during.logged, during.logged + during.not_logged) < 0.5,
        "logging hardly failed\n{}",
        table()
    );
    let success = ratio(during.paid, during.paid + during.shed);
    assert!(
        success >= PAYMENTS_OBJECTIVE,
        "payments' success {:.2} % while logging was degraded, objective {:.1} %\n{}",
        100.0 * success,
        100.0 * PAYMENTS_OBJECTIVE,
        table()
    );

    // Back to normal within 5 s of the capacity returning, and staying there: every log
    // line written, nothing refused or wasted, no payment turned away, no extra load.
    for (i, s) in after(&seconds).iter().enumerate().skip(RECOVERY) {
        let normal = s.not_logged <= 0.01 * (s.logged + s.not_logged)
            && s.rejected == 0.0
            && s.abandoned == 0.0
            && s.shed == 0.0
            && s.load <= (1.0 + BUDGET_RATIO) * s.offered + BUDGET_FLOOR_PER_SECOND;
        assert!(normal, "{} s after the capacity returned, not back to normal: {s:?}\n{}", i + 1, table());
    }
}

#[test]
fn with_the_retry_budget_off_the_same_trigger_starts_a_storm_that_outlasts_it() {
    let _one = ONE_STORM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("storm-budget-off");
    std::fs::copy(example().join("retry-storm.yaml"), dir.join("retry-storm.yaml")).unwrap();
    std::fs::write(dir.join("budget-off.yaml"), BUDGET_OFF).unwrap();
    let label = "retry budget off for logging";
    let Run { seconds, retries, denied_by_budget } = run(&dir, label);
    print_summary(label, &seconds);
    let table = || {
        seconds.iter().enumerate().map(|(t, s)| format!("t={}s {s:?}", t + 1)).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(denied_by_budget, 0.0, "the budget was off, yet denied retries\n{}", table());

    // The storm: the last 10 s of the trigger, at least 3 × the offered load on logging.
    let late = total(&degraded(&seconds)[DEGRADED - 10..]);
    assert!(
        late.load >= STORM_FACTOR * late.offered,
        "logging got {:.0} requests for {:.0} offered ({retries} retries): no storm\n{}",
        late.load,
        late.offered,
        table()
    );

    // Outlasting its trigger: from 5 s after the capacity returned to the end, logging is
    // still under several times the offered load and failing nearly every call, and
    // payments is still below its objective.
    let persisting = total(&after(&seconds)[RECOVERY..]);
    assert!(
        persisting.load >= STORM_FACTOR * persisting.offered,
        "the storm ended with its trigger: {:.0} requests for {:.0} offered\n{}",
        persisting.load,
        persisting.offered,
        table()
    );
    assert!(
        ratio(persisting.logged, persisting.logged + persisting.not_logged) < 0.1,
        "logging recovered\n{}",
        table()
    );
    let success = ratio(persisting.paid, persisting.paid + persisting.shed);
    assert!(
        success < PAYMENTS_OBJECTIVE,
        "payments kept its objective ({:.2} %)\n{}",
        100.0 * success,
        table()
    );
}
