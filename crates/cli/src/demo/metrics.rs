//! The golden metrics of the demo's workloads, read from their sidecars' `/metrics`.
//!
//! A service's numbers come from the inbound side of its own sidecar (direction
//! `inbound`, target = the app's address): every request the service received through
//! the mesh, as Linkerd's `viz stat` reports a workload. Rates and latencies of a period
//! are computed from the difference between two scrapes, so they describe that period
//! only, as PromQL's `rate` and `histogram_quantile` over `increase` would.

use std::time::Instant;
use tarmac_control::http_client::HttpClient;
use tarmac_control::prometheus::{Histogram, Scrape, counter_increase};

const RESPONSES: &str = "tarmac_responses_total";
const LATENCY: &str = "tarmac_response_latency_seconds";
const CPU_SECONDS: &str = "process_cpu_seconds_total";
const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";

/// What one scrape of a sidecar says about its workload and itself.
#[derive(Clone, Debug)]
pub struct Reading {
    pub at: Instant,
    pub succeeded: f64,
    pub failed: f64,
    pub latency: Histogram,
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
}

impl Reading {
    /// `inbound_target` is the app address the sidecar forwards to (the `target` label of
    /// its inbound series); None for a sidecar with no inbound side, which has only its
    /// own footprint to report.
    pub fn from_scrape(scrape: &Scrape, inbound_target: Option<&str>, at: Instant) -> Self {
        let (succeeded, failed, latency) = match inbound_target {
            Some(target) => {
                let series = [("direction", "inbound"), ("target", target)];
                let class = |c| [series[0], series[1], ("classification", c)];
                (
                    scrape.sum(RESPONSES, &class("success")),
                    scrape.sum(RESPONSES, &class("failure")),
                    scrape.histogram(LATENCY, &series),
                )
            }
            None => (0.0, 0.0, Histogram::default()),
        };
        Self {
            at,
            succeeded,
            failed,
            latency,
            cpu_seconds: scrape.sum(CPU_SECONDS, &[]),
            rss_bytes: scrape.sum(RESIDENT_MEMORY, &[]),
        }
    }

    /// The golden metrics of the period from `earlier` to this reading.
    pub fn since(&self, earlier: &Reading) -> Period {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        let succeeded = counter_increase(self.succeeded, earlier.succeeded);
        let failed = counter_increase(self.failed, earlier.failed);
        let responses = succeeded + failed;
        let latency = self.latency.increase_since(&earlier.latency);
        let per_second = |value: f64| if seconds > 0.0 { value / seconds } else { 0.0 };
        Period {
            responses,
            success_rate: (responses > 0.0).then(|| succeeded / responses),
            rps: per_second(responses),
            p50_seconds: latency.quantile(0.5),
            p99_seconds: latency.quantile(0.99),
            rss_bytes: self.rss_bytes,
            cpu_share: per_second(counter_increase(self.cpu_seconds, earlier.cpu_seconds)),
        }
    }
}

/// Golden metrics of one workload over a period, and its sidecar's cost.
#[derive(Clone, Copy, Debug)]
pub struct Period {
    /// Responses completed in the period.
    pub responses: f64,
    /// Share of responses that succeeded (not 5xx); None without responses.
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// The sidecar's resident memory at the end of the period.
    pub rss_bytes: f64,
    /// The sidecar's CPU time per second of the period: 1.0 is one core busy.
    pub cpu_share: f64,
}

/// Fetches and parses a proxy's `/metrics`.
pub async fn scrape(admin: &HttpClient) -> Result<Scrape, String> {
    let response = admin.get("/metrics").await.map_err(|e| e.to_string())?;
    if !response.status.is_success() {
        return Err(format!("GET http://{}/metrics answered {}", admin.addr(), response.status));
    }
    let text = std::str::from_utf8(&response.body)
        .map_err(|e| format!("http://{}/metrics is not UTF-8: {e}", admin.addr()))?;
    Scrape::parse(text).map_err(|e| format!("http://{}/metrics: {e}", admin.addr()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A sidecar's exposition after `ok` successes, `failed` failures (all with latencies
    /// in the 5–10 ms bucket) and `cpu` seconds of CPU.
    fn exposition(ok: u32, failed: u32, cpu: f64) -> String {
        let all = ok + failed;
        let series = "direction=\"inbound\",target=\"127.0.0.1:8080\"";
        format!(
            "tarmac_responses_total{{{series},status_code=\"200\",grpc_status=\"\",classification=\"success\"}} {ok}\n\
             tarmac_responses_total{{{series},status_code=\"500\",grpc_status=\"\",classification=\"failure\"}} {failed}\n\
             tarmac_responses_total{{direction=\"outbound\",target=\"books\",status_code=\"200\",grpc_status=\"\",classification=\"success\"}} 999\n\
             tarmac_response_latency_seconds_bucket{{le=\"0.005\",{series}}} 0\n\
             tarmac_response_latency_seconds_bucket{{le=\"0.01\",{series}}} {all}\n\
             tarmac_response_latency_seconds_bucket{{le=\"+Inf\",{series}}} {all}\n\
             process_cpu_seconds_total {cpu}\n\
             process_resident_memory_bytes 5242880\n"
        )
    }

    #[test]
    fn a_period_reports_rates_success_and_latency_of_the_inbound_side() {
        let start = Instant::now();
        let earlier = Reading::from_scrape(
            &Scrape::parse(&exposition(50, 0, 1.0)).unwrap(),
            Some("127.0.0.1:8080"),
            start,
        );
        let later = Reading::from_scrape(
            &Scrape::parse(&exposition(148, 2, 1.1)).unwrap(),
            Some("127.0.0.1:8080"),
            start + Duration::from_secs(2),
        );
        let period = later.since(&earlier);
        assert_eq!(period.responses, 100.0);
        assert_eq!(period.rps, 50.0);
        assert_eq!(period.success_rate, Some(0.98));
        assert!((period.p50_seconds.unwrap() - 0.0075).abs() < 1e-9);
        assert!((period.cpu_share - 0.05).abs() < 1e-9);
        assert_eq!(period.rss_bytes, 5.0 * 1024.0 * 1024.0);
    }

    #[test]
    fn a_sidecar_without_inbound_reports_only_its_footprint() {
        let start = Instant::now();
        let scrape = Scrape::parse(&exposition(10, 0, 0.5)).unwrap();
        let period = Reading::from_scrape(&scrape, None, start + Duration::from_secs(1))
            .since(&Reading::from_scrape(&scrape, None, start));
        assert_eq!(period.responses, 0.0);
        assert_eq!(period.success_rate, None);
        assert_eq!(period.p99_seconds, None);
        assert_eq!(period.rss_bytes, 5.0 * 1024.0 * 1024.0);
    }
}
