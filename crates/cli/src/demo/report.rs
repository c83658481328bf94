//! The demo's tables: live golden metrics every refresh, and the summary of the run.

use super::metrics::Period;
use std::fmt::Write as _;
use std::time::Duration;

/// One workload's row: its golden metrics over the period, or why they are missing.
pub struct Row<'a> {
    pub workload: &'a str,
    pub period: Result<Period, String>,
    /// False for the traffic client, which serves nothing: only its sidecar's cost is shown.
    pub serves: bool,
}

const LIVE_COLUMNS: &[(&str, usize)] = &[
    ("SERVICE", 9),
    ("SUCCESS", 8),
    ("RPS", 7),
    ("P50", 9),
    ("P99", 9),
    ("SIDECAR RSS", 13),
    ("SIDECAR CPU", 12),
];
const SUMMARY_COLUMNS: &[(&str, usize)] = &[
    ("SERVICE", 9),
    ("SUCCESS", 8),
    ("REQUESTS", 9),
    ("AVG RPS", 8),
    ("P50", 9),
    ("P99", 9),
    ("SIDECAR RSS", 13),
    ("SIDECAR CPU", 12),
];

/// The live table: each service's golden metrics over the last period.
pub fn live_table(elapsed: Duration, rows: &[Row<'_>]) -> String {
    let mut out = format!("── {} ", seconds(elapsed));
    out.push_str(&"─".repeat(70usize.saturating_sub(out.chars().count())));
    out.push('\n');
    table(&mut out, LIVE_COLUMNS, rows, |p| vec![percent(p.success_rate), format!("{:.1}", p.rps)]);
    out
}

/// The summary: each service's golden metrics over the whole run.
pub fn summary_table(rows: &[Row<'_>]) -> String {
    let mut out = String::new();
    table(&mut out, SUMMARY_COLUMNS, rows, |p| {
        vec![percent(p.success_rate), format!("{}", p.responses), format!("{:.1}", p.rps)]
    });
    out
}

/// Writes the header and rows. `rate_cells` gives the columns between the service's name
/// and its latencies; the sidecar's cost comes last.
fn table(
    out: &mut String,
    columns: &[(&str, usize)],
    rows: &[Row<'_>],
    rate_cells: impl Fn(&Period) -> Vec<String>,
) {
    let line = |out: &mut String, cells: &[String]| {
        for (i, (cell, (_, width))) in cells.iter().zip(columns).enumerate() {
            match i {
                0 => {
                    let _ = write!(out, "{cell:<width$}");
                }
                _ => {
                    let _ = write!(out, " {cell:>width$}");
                }
            }
        }
        out.push('\n');
    };
    line(out, &columns.iter().map(|(title, _)| title.to_string()).collect::<Vec<_>>());
    for row in rows {
        let period = match &row.period {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(out, "{:<width$} (no metrics: {e})", row.workload, width = columns[0].1);
                continue;
            }
        };
        let mut cells = vec![row.workload.to_string()];
        if row.serves {
            cells.extend(rate_cells(period));
            cells.extend([millis(period.p50_seconds), millis(period.p99_seconds)]);
        } else {
            cells.extend(std::iter::repeat_n("-".to_string(), columns.len() - 3));
        }
        cells.extend([mebibytes(period.rss_bytes), percent(Some(period.cpu_share))]);
        line(out, &cells);
    }
}

/// `4s`, `1m 30s`: elapsed time at the precision a refresh has.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    if s < 60 { format!("{s}s") } else { format!("{}m {:02}s", s / 60, s % 60) }
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_string(), |s| format!("{:.1}%", s * 100.0))
}

fn millis(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_string(),
        Some(s) if s < 0.01 => format!("{:.2}ms", s * 1000.0),
        Some(s) => format!("{:.1}ms", s * 1000.0),
    }
}

fn mebibytes(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_for_people() {
        assert_eq!(percent(Some(0.9812)), "98.1%");
        assert_eq!(percent(None), "-");
        assert_eq!(millis(Some(0.0004)), "0.40ms");
        assert_eq!(millis(Some(0.0125)), "12.5ms");
        assert_eq!(mebibytes(5.5 * 1024.0 * 1024.0), "5.5 MiB");
        assert_eq!(seconds(Duration::from_millis(3999)), "4s");
        assert_eq!(seconds(Duration::from_secs(95)), "1m 35s");
    }
}
