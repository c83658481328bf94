//! Access logs: one line per request, as JSON or in the common log format, written by a
//! thread of their own. Requests put their line on a bounded queue without waiting; when
//! the writer falls behind (a slow disk, a blocked pipe) lines are dropped and counted
//! (`tarmac_access_log_lines_dropped_total`), never the request slowed.
//!
//! Lines go to the proxy's standard output (its diagnostics go to standard error), or
//! are appended to the file `telemetry.access_log_path` names.

use super::RequestRecord;
use crate::metrics::{Direction, Metrics};
use crate::tap::json_string;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer; past this, lines are dropped.
pub const QUEUE: usize = 4096;

/// How long the writer gathers lines after the first of a batch before writing them all.
/// Waking the writer and writing once per line cost more than making the line (+15 µs of
/// CPU per request at 5000 req/s, measured); once per batch they cost next to nothing. A
/// line waits at most this long; the queue holds 200,000 lines a second of it.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// The common log format (NCSA), Tarmac's fields appended as `key=value`.
    Common,
}

/// The queue to the writer thread.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Starts the writer: appending to `path`, or to standard output. A file that cannot
    /// be opened is reported once and its lines dropped (counted).
    pub fn start(path: Option<&str>, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stdout()),
            Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(file) => Box::new(file),
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot open the access log; its lines are dropped");
                    Box::new(std::io::sink())
                }
            },
        };
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
            // Blocks for the next line only once everything written so far is flushed: an
            // idle proxy's writer never wakes. While it gathers a batch it is not waiting,
            // so queueing a line wakes nobody.
            while let Ok(line) = rx.recv() {
                let _ = out.write_all(line.as_bytes());
                std::thread::sleep(BATCH_WINDOW);
                while let Ok(line) = rx.try_recv() {
                    let _ = out.write_all(line.as_bytes());
                }
                let _ = out.flush();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the access log writer; its lines are dropped");
        }
        Self { tx, metrics }
    }

    /// Queues a line, or drops it (counted) when the writer is behind.
    pub fn write(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.metrics.access_log_dropped.inc();
        }
    }
}

/// One request's line, newline included.
pub fn line(
    format: LogFormat,
    r: &RequestRecord,
    status: u16,
    grpc_status: Option<u32>,
    duration: Duration,
) -> String {
    let (source_id, destination_id) = match r.direction {
        Direction::Inbound => (r.client_id.as_deref(), None),
        Direction::Outbound => (None, r.server_id.as_deref()),
    };
    let trace_id = r.trace_id();
    let route = r.route.as_ref();
    let duration_ms = duration.as_secs_f64() * 1000.0;
    match format {
        LogFormat::Json => {
            let opt = |v: Option<&str>| v.map_or_else(|| "null".to_string(), json_string);
            format!(
                "{{\"time\":\"{}\",\"direction\":\"{}\",\"target\":{},\"source\":{},\"source_identity\":{},\"destination_identity\":{},\"method\":{},\"authority\":{},\"path\":{},\"protocol\":\"{:?}\",\"status\":{status},\"grpc_status\":{},\"duration_ms\":{duration_ms:.3},\"request_bytes\":{},\"response_bytes\":{},\"route\":{},\"rule\":{},\"retries\":{},\"trace_id\":{}}}\n",
                rfc3339(r.start),
                r.direction.as_str(),
                json_string(&r.target),
                opt(r.source.map(|s| s.to_string()).as_deref()),
                opt(source_id),
                opt(destination_id),
                json_string(r.method.as_str()),
                json_string(&r.authority),
                json_string(&r.path),
                r.version,
                grpc_status.map_or_else(|| "null".to_string(), |g| g.to_string()),
                r.request_bytes.map_or_else(|| "null".to_string(), |n| n.to_string()),
                r.response_bytes,
                opt(route.map(|m| m.route.as_str())),
                opt(route.map(|m| m.rule.as_str())),
                r.retries,
                opt(trace_id.as_deref()),
            )
        }
        LogFormat::Common => {
            // host ident authuser [date] "request line" status bytes, then ours.
            let host = r.source.map_or_else(|| "-".to_string(), |s| s.ip().to_string());
            let dash =
                |v: Option<&str>| v.filter(|v| !v.is_empty()).map_or_else(|| "-".to_string(), quote_free);
            format!(
                "{host} - {} [{}] \"{} {} {:?}\" {status} {} direction={} target={} authority={} source_identity={} destination_identity={} duration_ms={duration_ms:.3} route={} rule={} retries={} trace_id={}\n",
                dash(source_id),
                clf_time(r.start),
                r.method,
                quote_free(&r.path),
                r.version,
                r.response_bytes,
                r.direction.as_str(),
                quote_free(&r.target),
                dash(Some(&r.authority)),
                dash(source_id),
                dash(destination_id),
                dash(route.map(|m| m.route.as_str())),
                dash(route.map(|m| m.rule.as_str())),
                r.retries,
                dash(trace_id.as_deref()),
            )
        }
    }
}

/// A value with the characters that would break a common-log line (quotes, spaces,
/// control characters) escaped, so that every line splits the same way.
fn quote_free(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' | ' ' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian), Howard Hinnant's
/// well-known algorithm.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn split(t: SystemTime) -> (i64, u32, u32, u64, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil((secs / 86_400) as i64);
    (y, m, d, secs % 86_400, since.subsec_millis())
}

/// `2026-12-02T13:56:52.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, m, d, s, ms) = split(t);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, s / 60 % 60, s % 60)
}

/// `02/Dec/2026:13:56:52 +0000`.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d, s, _) = split(t);
    format!(
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // 2000-02-29T00:00:00.123Z
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        assert_eq!(clf_time(t), "29/Feb/2000:00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_219_812); // 2026-12-02T13:56:52Z
        assert_eq!(rfc3339(t), "2026-12-02T13:56:52.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn common_log_values_never_break_the_line() {
        assert_eq!(quote_free("/a b\"c\n"), "/a\\x20b\\x22c\\x0a");
    }

    #[test]
    fn a_writer_that_cannot_keep_up_costs_lines_not_waits() {
        let metrics = Arc::new(Metrics::new());
        // A queue whose writer never reads: its thread is stuck on a full pipe.
        let (tx, _rx) = std::sync::mpsc::sync_channel(QUEUE);
        let log = AccessLog { tx, metrics: metrics.clone() };
        for _ in 0..QUEUE + 10 {
            log.write("x\n".into());
        }
        assert_eq!(metrics.access_log_dropped.get(), 10);
    }
}
