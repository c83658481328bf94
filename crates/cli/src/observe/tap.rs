//! `tarmac tap` (live request events) and `tarmac top` (the most requested paths, counted
//! from the same events), both over the control plane's tap relay.

use super::{ApiError, ControlArgs, Output, format_table, millis, print_json, query};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tarmac_control::telemetry::top::TopTable;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Which requests to watch.
#[derive(clap::Args, Debug, Clone)]
pub struct TapFilterArgs {
    /// `workload/NAME`, `service/NAME` or `NAME`; every proxy when absent.
    pub target: Option<String>,
    /// Only this namespace (default: every namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Only this method (GET, POST, ...).
    #[arg(long)]
    pub method: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only this status (`503`) or class (`5xx`).
    #[arg(long)]
    pub status: Option<String>,
    /// Only what proxies received (`inbound`) or sent (`outbound`).
    #[arg(long)]
    pub direction: Option<String>,
    /// Only this authority (Host).
    #[arg(long)]
    pub authority: Option<String>,
}

impl TapFilterArgs {
    fn query(&self) -> String {
        query(&[
            ("target", self.target.clone()),
            ("namespace", self.namespace.clone()),
            ("method", self.method.clone()),
            ("path", self.path.clone()),
            ("status", self.status.clone()),
            ("direction", self.direction.clone()),
            ("authority", self.authority.clone()),
        ])
    }
}

/// Watch requests live, as the proxies see them.
#[derive(clap::Args, Debug)]
pub struct TapArgs {
    #[command(flatten)]
    pub filter: TapFilterArgs,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Stop after this long, e.g. `30s`.
    #[arg(long = "for", value_parser = tarmac_clikit::duration::parse_positive)]
    pub duration: Option<Duration>,
    /// `json`: one JSON object per line (NDJSON), as the API sends them.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// The most requested paths, live.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: TapFilterArgs,
    /// Stop after this long (with `-o json`: count for this long, default 5s, then print).
    #[arg(long = "for", value_parser = tarmac_clikit::duration::parse_positive)]
    pub duration: Option<Duration>,
    /// Rows shown.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// `table` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Streams tap lines from the API into a channel until the stream ends.
async fn open(control: &ControlArgs, query: String) -> Result<mpsc::Receiver<String>, ApiError> {
    let client = control.client(Duration::from_secs(10));
    let (status, mut body) =
        client.get_streaming(&format!("/api/v1/tap?{query}")).await.map_err(|e| control.unreachable(e))?;
    if !status.is_success() {
        let bytes: Bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let message: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Err(ApiError::Refused { what: "tap", message: super::reason(&message) });
    }
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

pub async fn tap(args: TapArgs) -> Result<(), ApiError> {
    let mut lines = open(&args.control, args.filter.query()).await?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(next) => next,
                Err(_) => return Ok(()),
            },
            None => lines.recv().await,
        };
        let Some(line) = next else {
            return Err(ApiError::StreamEnded);
        };
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        let text = if args.output == Output::Json { line.clone() } else { describe(&event) };
        if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
            return Ok(()); // stdout closed (piped into `head`, say)
        }
        if event.get("dropped").is_none() {
            seen += 1;
            if args.limit.is_some_and(|limit| seen >= limit) {
                return Ok(());
            }
        }
    }
}

/// One event as a line for people.
fn describe(event: &Value) -> String {
    if let Some(n) = event.get("dropped") {
        return format!("(fell behind: {n} events dropped)");
    }
    let s = |key: &str| event[key].as_str().unwrap_or("-").to_string();
    let workload = format!("{}-{}", s("workload"), event["replica"].as_u64().unwrap_or(0));
    let peer = match s("direction").as_str() {
        "outbound" => format!("-> service/{}", s("target")),
        // The caller's proven identity when it came over mTLS, else its address.
        _ => format!("<- {}", event["client_id"].as_str().map_or_else(|| s("source"), str::to_string)),
    };
    let grpc = event["grpc_status"].as_u64().map(|g| format!(" grpc-status={g}")).unwrap_or_default();
    // A traced request: where its trace is shown (`--trace-url`), else its id to look up.
    let trace = match (event["trace_url"].as_str(), event["trace_id"].as_str()) {
        (Some(url), _) => format!(" trace={url}"),
        (None, Some(id)) => format!(" trace={id}"),
        _ => String::new(),
    };
    // The policy that refused the request, or would have (audit).
    let policy = match (event["policy"].as_str(), event["audit"].as_bool()) {
        (Some(p), Some(true)) => format!(" (audit: {p} would refuse)"),
        (Some(p), _) => format!(" (refused by {p})"),
        _ => String::new(),
    };
    format!(
        "{} {:<8} {workload} {peer} {} {} {} -> {}{grpc} {}{policy}{trace}",
        time_of_day(event["ts_ms"].as_u64().unwrap_or(0)),
        s("direction"),
        s("method"),
        s("authority"),
        s("path"),
        event["status"].as_u64().unwrap_or(0),
        millis(&event["duration_ms"]),
    )
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn time_of_day(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

pub async fn top(args: TopArgs) -> Result<(), ApiError> {
    let mut lines = open(&args.control, args.filter.query()).await?;
    let json = args.output == Output::Json;
    let duration = args.duration.or(json.then_some(Duration::from_secs(5)));
    let deadline = duration.map(|d| Instant::now() + d);
    let terminal = std::io::stdout().is_terminal();
    let mut table = TopTable::default();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    redraw.tick().await;
    let started = Instant::now();
    loop {
        let stop = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => table.add_line(&line),
                None => return Err(ApiError::StreamEnded),
            },
            _ = redraw.tick(), if !json => print_top(&table, args.rows, started.elapsed(), terminal),
            _ = stop => break,
        }
    }
    if json {
        print_json(&json!({
            "duration_seconds": started.elapsed().as_secs_f64(),
            "dropped": table.dropped,
            "rows": table.top(args.rows),
        }));
    } else {
        print_top(&table, args.rows, started.elapsed(), terminal);
    }
    Ok(())
}

fn print_top(table: &TopTable, rows: usize, elapsed: Duration, terminal: bool) {
    let top = table.top(rows);
    let body: Vec<Vec<String>> = top
        .iter()
        .map(|r| {
            vec![
                r.destination.clone(),
                r.method.clone(),
                r.path.clone(),
                r.count.to_string(),
                format!("{:.2}%", 100.0 * r.successes as f64 / r.count.max(1) as f64),
                millis(&json!(r.best_ms)),
                millis(&json!(r.worst_ms)),
                millis(&json!(r.last_ms)),
            ]
        })
        .collect();
    let mut out = String::new();
    if terminal {
        // Redraw in place: clear the screen, cursor home.
        out.push_str("\x1b[2J\x1b[H");
    }
    out.push_str(&format!(
        "tarmac top: {:.0}s of live requests{}\n\n",
        elapsed.as_secs_f64(),
        if table.dropped > 0 {
            format!(" ({} events dropped: too many to follow)", table.dropped)
        } else {
            String::new()
        }
    ));
    out.push_str(&format_table(
        &["DESTINATION", "METHOD", "PATH", "COUNT", "SUCCESS", "BEST", "WORST", "LAST"],
        &body,
    ));
    if !terminal {
        out.push('\n');
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line() {
        let event = json!({
            "ts_ms": 3_723_004u64, "direction": "inbound", "workload": "names", "replica": 1,
            "source": "127.0.0.1:5555", "method": "GET", "authority": "names", "path": "/x",
            "status": 200, "grpc_status": null, "duration_ms": 1.5
        });
        assert_eq!(
            describe(&event),
            "01:02:03.004 inbound  names-1 <- 127.0.0.1:5555 GET names /x -> 200 1.5ms"
        );
        assert_eq!(describe(&json!({"dropped": 3})), "(fell behind: 3 events dropped)");
        let mut secured = event.clone();
        secured["client_id"] = json!("spiffe://cluster.local/ns/default/sa/front");
        assert!(describe(&secured).contains("<- spiffe://cluster.local/ns/default/sa/front GET"));
        let mut refused = secured.clone();
        refused["status"] = json!(403);
        refused["policy"] = json!("default/a-public");
        refused["audit"] = json!(false);
        assert!(
            describe(&refused).ends_with("-> 403 1.5ms (refused by default/a-public)"),
            "{}",
            describe(&refused)
        );
        refused["audit"] = json!(true);
        assert!(describe(&refused).ends_with("(audit: default/a-public would refuse)"));
    }

    #[test]
    fn traced_events_end_with_their_trace() {
        let mut event = json!({
            "ts_ms": 0u64, "direction": "outbound", "workload": "web", "replica": 0, "target": "books",
            "method": "GET", "authority": "books", "path": "/slow", "status": 200, "duration_ms": 812.5,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"
        });
        assert!(
            describe(&event).ends_with("-> 200 812ms trace=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{}",
            describe(&event)
        );
        event["trace_url"] = json!("http://localhost:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            describe(&event)
                .ends_with(" trace=http://localhost:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
