//! `--plot FILE.svg`: the latency percentile curves of every route, one chart per load.
//!
//! The x axis is the usual one for latency tails: percentiles spaced by their number of
//! nines (50, 90, 99, 99.9, ...), so the tail gets as much room as the median; the y axis
//! is logarithmic, so a 50 µs median and a 5 ms tail fit on one chart. Written by hand:
//! a few polylines and labels do not need a plotting library.

use super::report::RouteSummary;
use std::fmt::Write as _;

const WIDTH: f64 = 860.0;
const CHART_HEIGHT: f64 = 360.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 190.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
/// Up to 99.999 %.
const MAX_NINES: f64 = 5.0;
const COLOURS: [&str; 7] = ["#444444", "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b"];

/// The number of nines of a percentile: 90 → 1, 99 → 2; 100 is drawn at the right edge.
fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 { MAX_NINES } else { (-(1.0 - percentile / 100.0).log10()).min(MAX_NINES) }
}

/// An SVG document with one chart for each of `loads` (in that order), drawing the curve
/// of every summary of that load.
pub fn svg(summaries: &[RouteSummary], loads: &[String], title: &str) -> String {
    let charts: Vec<&String> = loads
        .iter()
        .filter(|load| summaries.iter().any(|s| &s.load == *load && !s.curve.is_empty()))
        .collect();
    let chart_total = CHART_HEIGHT + MARGIN_TOP + MARGIN_BOTTOM;
    let height = 30.0 + chart_total * charts.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    for (index, load) in charts.iter().enumerate() {
        let top = 30.0 + index as f64 * chart_total + MARGIN_TOP;
        let curves: Vec<&RouteSummary> =
            summaries.iter().filter(|s| &s.load == *load && !s.curve.is_empty()).collect();
        chart(&mut svg, &curves, load, top);
    }
    svg.push_str("</svg>\n");
    svg
}

fn chart(svg: &mut String, curves: &[&RouteSummary], load: &str, top: f64) {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let (min_us, max_us) = curves
        .iter()
        .flat_map(|s| s.curve.iter().map(|p| p.latency_us))
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v.max(1.0)), hi.max(v)));
    // Whole decades, so the grid lines fall on round numbers.
    let (low_decade, high_decade) =
        (min_us.log10().floor(), max_us.log10().ceil().max(min_us.log10().floor() + 1.0));
    let x = |percentile: f64| MARGIN_LEFT + nines(percentile) / MAX_NINES * plot_width;
    let y = |us: f64| {
        top + CHART_HEIGHT - (us.max(1.0).log10() - low_decade) / (high_decade - low_decade) * CHART_HEIGHT
    };

    let _ = writeln!(
        svg,
        "<text x=\"{MARGIN_LEFT}\" y=\"{}\" font-size=\"13\">{}</text>",
        top - 10.0,
        escape(load)
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{MARGIN_LEFT}\" y=\"{top}\" width=\"{plot_width}\" height=\"{CHART_HEIGHT}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for (percentile, label) in
        [(0.0, "0%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (99.99, "99.99%"), (99.999, "99.999%")]
    {
        let gx = x(percentile);
        let _ = writeln!(
            svg,
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            top + CHART_HEIGHT,
            top + CHART_HEIGHT + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>",
        MARGIN_LEFT + plot_width / 2.0,
        top + CHART_HEIGHT + 34.0
    );
    let mut decade = low_decade;
    while decade <= high_decade {
        for factor in [1.0, 2.0, 5.0] {
            let us = factor * 10f64.powf(decade);
            if us.log10() > high_decade + 1e-9 {
                break;
            }
            let gy = y(us);
            let _ = writeln!(
                svg,
                "<line x1=\"{MARGIN_LEFT}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                MARGIN_LEFT + plot_width,
                if factor == 1.0 { "#d0d0d0" } else { "#f0f0f0" },
                MARGIN_LEFT - 6.0,
                gy + 4.0,
                format_us(us)
            );
        }
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">latency</text>",
        top + CHART_HEIGHT / 2.0
    );
    for (index, summary) in curves.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        // The maximum goes where the sample's resolution ends (the 99.9th percentile for a
        // thousand requests), not at the chart's edge: a line out to 99.999 % would claim
        // percentiles that were never measured.
        let resolved = (summary.merged.count.max(1) as f64).log10().min(MAX_NINES);
        let points: Vec<String> = summary
            .curve
            .iter()
            .map(|p| {
                let px = if p.percentile >= 100.0 {
                    MARGIN_LEFT + resolved / MAX_NINES * plot_width
                } else {
                    x(p.percentile)
                };
                format!("{px:.1},{:.1}", y(p.latency_us))
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let ly = top + 14.0 + index as f64 * 18.0;
        let lx = MARGIN_LEFT + plot_width + 12.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
             <text x=\"{:.1}\" y=\"{ly:.1}\">{}</text>",
            ly - 4.0,
            lx + 18.0,
            ly - 4.0,
            lx + 24.0,
            escape(summary.label)
        );
    }
}

fn format_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{} ms", us / 1_000.0)
    } else {
        format!("{us} µs")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Route;
    use tarmac_loadgen::LatencyHistogram;

    #[test]
    fn percentiles_are_placed_by_their_nines() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
    }

    #[test]
    fn one_curve_per_route_and_one_chart_per_load() {
        let mut histogram = LatencyHistogram::new();
        for us in 1..=1000 {
            histogram.record(std::time::Duration::from_micros(50 + us));
        }
        let summary = |route: Route, load: &str| RouteSummary {
            route,
            label: route.label(),
            load: load.to_string(),
            rounds: 1,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            p99_min_us: 0.0,
            p99_max_us: 0.0,
            added_p50_us: None,
            added_p99_us: None,
            cpu_per_10k: None,
            peak_rss_mib: None,
            throughput_rps: 0.0,
            rps_per_proxy_core: None,
            failures: 0,
            first_error: None,
            contaminated_rounds: 0,
            generator_warnings: Vec::new(),
            merged: histogram.summary(),
            curve: histogram.curve(),
        };
        let summaries = [
            summary(Route::Direct, "1000 req/s"),
            summary(Route::TarmacTwoHops, "1000 req/s"),
            summary(Route::Direct, "5000 req/s"),
        ];
        let loads = ["1000 req/s".to_string(), "5000 req/s".to_string(), "max".to_string()];
        let svg = svg(&summaries, &loads, "tarmac bench <suite>");
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains(">tarmac 2 hops</text>") && svg.contains("&lt;suite&gt;"));
        assert!(svg.contains(">5000 req/s</text>") && !svg.contains(">max</text>"));
        assert!(svg.contains("100 µs") && svg.contains("1 ms"));
    }
}
