//! Measuring routes against each other: for each load, rounds in which every route runs
//! one phase in turn (A B C A B C ...), so that a slow minute of the machine hits all of
//! them alike; each phase records the generator's report, what the proxies cost, and the
//! CPU the rest of the machine used meanwhile.

use super::processes;
use super::procfs::{PhaseCost, PhaseMeter};
use super::topology::{Route, Running};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tarmac_loadgen::{
    Config, LatencyHistogram, LatencySummary, Load, LoadgenError, Protocol, Report, Target,
};
use tarmac_transport::process::ProcessError;

/// Why a measured phase failed: `route` and `load` name it.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("the load generator panicked: {0}")]
    Panicked(#[source] tokio::task::JoinError),
    /// A proxy of the route exited while it was measured.
    #[error("{route} during {load} ({url}): {source}")]
    ProxyExited {
        route: &'static str,
        load: String,
        url: String,
        #[source]
        source: ProcessError,
    },
    #[error("{route} at {load}: {source}")]
    Load {
        route: &'static str,
        load: String,
        #[source]
        source: LoadgenError,
    },
}

/// How often the proxies' memory is sampled during a phase.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// One load every route is measured under.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `1000 req/s`, `max`.
    pub name: String,
    pub load: Load,
    pub connections: usize,
    /// Run this load's phases at real-time priority, when permitted: latency phases,
    /// whose tails ordinary load on the machine would otherwise shift. Never for
    /// max-throughput phases, which keep a core busy.
    pub realtime: bool,
}

/// Settings shared by every phase.
#[derive(Clone, Debug)]
pub struct Settings {
    pub protocol: Protocol,
    pub phase_duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    /// A phase during which other processes used more than this many cores on average is
    /// flagged contaminated.
    pub contamination_cores: f64,
    /// So is a phase during which the hypervisor took more than this many cores from the
    /// machine (steal time): a stolen millisecond stalls whatever was due to run.
    pub contamination_stolen_cores: f64,
    /// Run a contaminated phase once more and keep the cleaner of the two.
    pub repeat_contaminated: bool,
}

/// Every figure of one phase, as written to the JSON report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub route: Route,
    pub load: String,
    pub round: usize,
    pub latency: LatencySummary,
    pub service_time: LatencySummary,
    pub pacing_lag_p99_us: Option<f64>,
    pub throughput_rps: f64,
    pub responses: u64,
    /// Responses during the warm-up. The proxies' CPU is measured over warm-up and
    /// measured window together, so it is divided by both counts.
    pub warmup_responses: u64,
    pub failures: u64,
    pub first_error: Option<String>,
    pub generator_warning: Option<String>,
    /// Each proxy of the route, client side first.
    pub proxies: Vec<ProxyCost>,
    /// CPU used by processes other than the benchmark's, in cores.
    pub other_cores: Option<f64>,
    /// CPU the hypervisor gave to other machines while this one was ready to run, in
    /// cores (steal time).
    pub stolen_cores: Option<f64>,
    pub contaminated: bool,
    pub realtime: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProxyCost {
    pub name: String,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// A phase's record and its full latency histogram (for merged percentiles and curves).
pub struct Measured {
    pub record: PhaseRecord,
    pub latency: LatencyHistogram,
}

/// Pids to raise to real-time priority for latency phases, and whether that worked.
pub struct Scheduling {
    pub realtime_pids: Vec<u32>,
    /// None until tried; then whether `chrt` was permitted.
    pub realtime_works: Option<bool>,
}

// === impl PhaseRecord ===

impl PhaseRecord {
    /// Every request the proxies carried during the phase, warm-up included.
    fn requests_carried(&self) -> u64 {
        self.responses + self.warmup_responses
    }

    /// Proxy CPU seconds per 10,000 requests, all the route's proxies together.
    pub fn cpu_per_10k(&self) -> Option<f64> {
        if self.proxies.is_empty() || self.requests_carried() == 0 {
            return None;
        }
        Some(
            self.proxies.iter().map(|p| p.cpu_seconds).sum::<f64>() / self.requests_carried() as f64
                * 10_000.0,
        )
    }

    /// Requests per second per core the proxies used: throughput normalised by the CPU
    /// the proxies actually had, so that a proxy held back by the generator is not
    /// ranked by the generator's speed. For two hops, per core of the two together.
    pub fn rps_per_proxy_core(&self) -> Option<f64> {
        let cpu: f64 = self.proxies.iter().map(|p| p.cpu_seconds).sum();
        (!self.proxies.is_empty() && cpu > 0.0).then(|| self.requests_carried() as f64 / cpu)
    }

    /// Cores taken from the benchmark during the phase, by other processes and by the
    /// hypervisor: the lower, the cleaner.
    fn disturbance(&self) -> f64 {
        self.other_cores.unwrap_or(0.0) + self.stolen_cores.unwrap_or(0.0)
    }

    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.proxies.iter().map(|p| p.peak_rss_bytes).max()
    }
}

/// Runs every load over every route, interleaved, and returns the phases in the order run.
/// `ours` are every process of the benchmark, this one included. Progress goes to stderr,
/// one line per phase.
pub async fn run(
    target: &Target,
    routes: &[Running],
    loads: &[LoadSpec],
    settings: &Settings,
    scheduling: &mut Scheduling,
    ours: &[u32],
) -> Result<Vec<Measured>, PhaseError> {
    let mut measured = Vec::new();
    for spec in loads {
        let realtime = spec.realtime && set_realtime(scheduling, true);
        for round in 1..=settings.rounds {
            for running in routes {
                let mut phase = run_phase(target, running, spec, settings, ours, round, realtime).await?;
                if phase.record.contaminated && settings.repeat_contaminated {
                    eprintln!("    contaminated; repeating it once");
                    let again = run_phase(target, running, spec, settings, ours, round, realtime).await?;
                    if again.record.disturbance() < phase.record.disturbance() {
                        phase = again;
                    }
                }
                measured.push(phase);
            }
        }
        if realtime {
            set_realtime(scheduling, false);
        }
    }
    Ok(measured)
}

/// Raises (or lowers) every process of the benchmark; returns whether they run
/// real-time now. The first refusal is reported once and not tried again.
fn set_realtime(scheduling: &mut Scheduling, realtime: bool) -> bool {
    if scheduling.realtime_works == Some(false) || scheduling.realtime_pids.is_empty() {
        return false;
    }
    let refusal =
        scheduling.realtime_pids.iter().find_map(|&pid| processes::set_realtime(pid, realtime).err());
    match refusal {
        Some(e) if realtime => {
            eprintln!(
                "note: latency phases run at normal priority: real-time scheduling is not permitted ({e})"
            );
            scheduling.realtime_works = Some(false);
            for &pid in &scheduling.realtime_pids {
                let _ = processes::set_realtime(pid, false);
            }
            false
        }
        // Back to normal: a process that has exited cannot be lowered, and need not be.
        _ => {
            scheduling.realtime_works = Some(true);
            realtime
        }
    }
}

async fn run_phase(
    target: &Target,
    running: &Running,
    spec: &LoadSpec,
    settings: &Settings,
    ours: &[u32],
    round: usize,
    realtime: bool,
) -> Result<Measured, PhaseError> {
    let config = Config {
        target: target.via(running.entry),
        protocol: settings.protocol,
        connections: spec.connections,
        load: spec.load,
        duration: settings.phase_duration,
        warmup: settings.warmup,
        request_timeout: Duration::from_secs(5),
    };
    let watched: Vec<u32> = running.proxies.iter().map(|p| p.pid()).collect();
    let meter = PhaseMeter::start(watched, ours.to_vec());
    let mut generator = tokio::task::spawn_blocking(move || tarmac_loadgen::run_blocking(config));
    let mut peaks = meter.rss_now();
    let report = loop {
        tokio::select! {
            finished = &mut generator => break finished.map_err(PhaseError::Panicked)?,
            () = tokio::time::sleep(RSS_SAMPLE_INTERVAL) => {
                for (peak, now) in peaks.iter_mut().zip(meter.rss_now()) {
                    *peak = (*peak).max(now);
                }
            }
        }
    };
    let cost = meter.finish(&peaks);
    for proxy in &running.proxies {
        if let Some(source) = proxy.failure() {
            return Err(PhaseError::ProxyExited {
                route: running.route.label(),
                load: spec.name.clone(),
                url: target.url(),
                source,
            });
        }
    }
    let report = report.map_err(|source| PhaseError::Load {
        route: running.route.label(),
        load: spec.name.clone(),
        source,
    })?;
    let record = record(running, spec, round, realtime, &report, &cost, settings);
    eprintln!(
        "  {:<8} round {round}  {:<20} p50 {:>7.0} µs  p99 {:>7.0} µs  {:>8.0} req/s{}{}",
        spec.name,
        running.route.label(),
        record.latency.p50_us,
        record.latency.p99_us,
        record.throughput_rps,
        if record.failures > 0 { format!("  {} failed", record.failures) } else { String::new() },
        if record.contaminated {
            format!(
                "  (contaminated: other processes {:.2} cores, stolen {:.2})",
                record.other_cores.unwrap_or(0.0),
                record.stolen_cores.unwrap_or(0.0)
            )
        } else {
            String::new()
        },
    );
    Ok(Measured { record, latency: report.latency })
}

fn record(
    running: &Running,
    spec: &LoadSpec,
    round: usize,
    realtime: bool,
    report: &Report,
    cost: &PhaseCost,
    settings: &Settings,
) -> PhaseRecord {
    let proxies = running
        .proxies
        .iter()
        .enumerate()
        .map(|(i, p)| ProxyCost {
            name: p.name().to_string(),
            cpu_seconds: cost.cpu_seconds.get(i).copied().unwrap_or(0.0),
            peak_rss_bytes: cost.peak_rss_bytes.get(i).copied().unwrap_or(0),
        })
        .collect();
    PhaseRecord {
        route: running.route,
        load: spec.name.clone(),
        round,
        latency: report.latency.summary(),
        service_time: report.service_time.summary(),
        pacing_lag_p99_us: report.pacing_lag.as_ref().map(|h| h.percentile(99.0).as_secs_f64() * 1e6),
        throughput_rps: report.throughput(),
        responses: report.responses,
        warmup_responses: report.warmup_responses,
        failures: report.failures(),
        first_error: report.first_error.clone(),
        generator_warning: report.generator_warning(),
        proxies,
        other_cores: cost.other_cores,
        stolen_cores: cost.stolen_cores,
        contaminated: contaminated(cost, settings),
        realtime,
    }
}

/// Whether other processes or the hypervisor took enough from the phase to distort it.
fn contaminated(cost: &PhaseCost, settings: &Settings) -> bool {
    cost.other_cores.is_some_and(|c| c > settings.contamination_cores)
        || cost.stolen_cores.is_some_and(|c| c > settings.contamination_stolen_cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_contaminated_by_other_processes_or_by_steal() {
        let settings = Settings {
            protocol: Protocol::Http1,
            phase_duration: Duration::from_secs(5),
            warmup: Duration::ZERO,
            rounds: 1,
            contamination_cores: 0.1,
            contamination_stolen_cores: 0.01,
            repeat_contaminated: true,
        };
        let cost =
            |other, stolen| PhaseCost { other_cores: other, stolen_cores: stolen, ..PhaseCost::default() };
        assert!(!contaminated(&cost(Some(0.05), Some(0.005)), &settings));
        assert!(!contaminated(&cost(None, None), &settings), "unknown is not evidence");
        assert!(contaminated(&cost(Some(0.2), Some(0.0)), &settings));
        assert!(contaminated(&cost(Some(0.0), Some(0.03)), &settings));
    }
}
