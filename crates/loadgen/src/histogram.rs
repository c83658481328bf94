//! Latency histograms: HDR histograms in nanoseconds, with the percentiles people compare
//! and the percentile curve a plot draws.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Smallest distinguishable latency. A coarser unit would cost precision at the low end:
/// with a microsecond floor the histogram counts in 512 ns steps there.
const LOWEST_NANOS: u64 = 1;
/// Largest recordable latency; longer ones are recorded as this (and are timeouts anyway).
const HIGHEST_NANOS: u64 = 100 * 1_000_000_000;
/// Three significant digits: every value is kept within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency distribution.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    nanos: Histogram<u64>,
}

/// The usual percentiles of a distribution, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One point of a percentile curve: `percentile` (0 to 100) of requests took at most
/// `latency_us`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    pub percentile: f64,
    pub latency_us: f64,
}

// === impl LatencyHistogram ===

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        let nanos = Histogram::new_with_bounds(LOWEST_NANOS, HIGHEST_NANOS, SIGNIFICANT_DIGITS)
            .expect("constant bounds are valid");
        Self { nanos }
    }

    /// Records one latency; beyond 100 s it counts as 100 s.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.saturating_record(nanos.min(HIGHEST_NANOS));
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.nanos.add(&other.nanos).expect("histograms with the same bounds always merge");
    }

    pub fn count(&self) -> u64 {
        self.nanos.len()
    }

    /// The latency that `percentile` percent of the recorded values do not exceed
    /// (`50.0` for the median). Zero when nothing was recorded.
    pub fn percentile(&self, percentile: f64) -> Duration {
        Duration::from_nanos(self.nanos.value_at_percentile(percentile))
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.nanos.max())
    }

    pub fn summary(&self) -> LatencySummary {
        if self.count() == 0 {
            return LatencySummary::default();
        }
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        LatencySummary {
            count: self.count(),
            min_us: us(self.nanos.min()),
            mean_us: self.nanos.mean() / 1_000.0,
            p50_us: us(self.nanos.value_at_percentile(50.0)),
            p90_us: us(self.nanos.value_at_percentile(90.0)),
            p99_us: us(self.nanos.value_at_percentile(99.0)),
            p999_us: us(self.nanos.value_at_percentile(99.9)),
            max_us: us(self.nanos.max()),
        }
    }

    /// The percentile curve, at percentiles spaced evenly on the "number of nines" scale
    /// that latency plots use (0, 68, 90, 96.8, 99, ... up to 99.999), then the maximum.
    /// Points beyond what the sample can resolve (the 99.99th of 1000 requests) are left
    /// out: they would only repeat the maximum.
    pub fn curve(&self) -> Vec<CurvePoint> {
        let count = self.count();
        if count == 0 {
            return Vec::new();
        }
        let mut points = Vec::new();
        for step in 0..=50 {
            let percentile = 100.0 * (1.0 - 10f64.powf(-(step as f64) / 10.0));
            // The 99.9th percentile needs about a thousand samples to mean anything.
            if step as f64 / 10.0 > (count as f64).log10() + 1e-9 {
                break;
            }
            points.push(CurvePoint {
                percentile,
                latency_us: self.nanos.value_at_percentile(percentile) as f64 / 1_000.0,
            });
        }
        points.push(CurvePoint { percentile: 100.0, latency_us: self.nanos.max() as f64 / 1_000.0 });
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(values: impl IntoIterator<Item = u64>) -> LatencyHistogram {
        let mut histogram = LatencyHistogram::new();
        for value in values {
            histogram.record(Duration::from_micros(value));
        }
        histogram
    }

    /// Within the histogram's 0.1 % resolution.
    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.001 + 0.001
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let summary = micros(1..=10_000).summary();
        assert_eq!(summary.count, 10_000);
        for (name, actual, expected) in [
            ("min", summary.min_us, 1.0),
            ("p50", summary.p50_us, 5_000.0),
            ("p90", summary.p90_us, 9_000.0),
            ("p99", summary.p99_us, 9_900.0),
            ("p99.9", summary.p999_us, 9_990.0),
            ("max", summary.max_us, 10_000.0),
            ("mean", summary.mean_us, 5_000.5),
        ] {
            assert!(close(actual, expected), "{name}: {actual} is not {expected}");
        }
    }

    #[test]
    fn one_slow_request_in_a_hundred_is_the_p99_not_the_p50() {
        // 99 requests of 100 µs and one of 50 ms: the median ignores it, the maximum does not,
        // and the 99th percentile is the highest of the fast ones.
        let summary = micros(std::iter::repeat_n(100, 99).chain([50_000])).summary();
        assert!(close(summary.p50_us, 100.0));
        assert!(close(summary.p99_us, 100.0));
        assert!(close(summary.max_us, 50_000.0));
        assert!(close(summary.p999_us, 50_000.0));
    }

    #[test]
    fn merged_histograms_count_everything_once() {
        let mut merged = micros(1..=5_000);
        merged.merge(&micros(5_001..=10_000));
        assert_eq!(merged.summary(), micros(1..=10_000).summary());
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut histogram = LatencyHistogram::new();
        histogram.record(Duration::from_nanos(10));
        histogram.record(Duration::from_secs(10_000));
        assert_eq!(histogram.count(), 2);
        assert!(histogram.max() >= Duration::from_secs(99));
        assert!(histogram.max() <= Duration::from_secs(101));
        assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
    }

    #[test]
    fn the_curve_rises_and_stops_where_the_sample_runs_out() {
        let curve = micros(1..=1_000).curve();
        // 1000 samples resolve three nines: steps 0..=30, then the maximum.
        assert_eq!(curve.len(), 32);
        assert_eq!(curve[0].percentile, 0.0);
        assert!(close(curve[10].percentile, 90.0));
        assert!(close(curve[10].latency_us, 900.0));
        assert!(close(curve[30].percentile, 99.9));
        assert_eq!(curve.last().unwrap().percentile, 100.0);
        assert!(curve.windows(2).all(|w| w[0].latency_us <= w[1].latency_us));
        assert!(LatencyHistogram::new().curve().is_empty());
    }
}
