//! `tarmac stat [KIND[/NAME]]` and `tarmac edges`: golden metrics over a recent window,
//! in the columns `linkerd viz stat` users know.

use super::{ApiError, ControlArgs, Output, millis, percent, print_json, print_table, qualified, query, rps};
use serde_json::Value;

/// Golden metrics (success rate, requests per second, latency percentiles) per workload,
/// service, route or edge, over a recent window.
#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// `workload`, `service`, `route` or `edge` (plural and short forms work: `wl`, `svc`),
    /// optionally with `/NAME`.
    #[arg(default_value = "workload")]
    pub resource: String,
    /// Only this namespace (default: every namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// How far back to look, e.g. `30s`, `1m`, `10m` (at most 10m).
    #[arg(short = 't', long, default_value = "1m")]
    pub window: String,
    /// `table` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Who calls whom, with golden metrics (the same as `tarmac stat edge`).
#[derive(clap::Args, Debug)]
pub struct EdgesArgs {
    /// Only this namespace (default: every namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// How far back to look, e.g. `30s`, `1m`, `10m` (at most 10m).
    #[arg(short = 't', long, default_value = "1m")]
    pub window: String,
    /// `table` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub async fn edges(args: EdgesArgs) -> Result<(), ApiError> {
    stat(StatArgs {
        resource: "edge".into(),
        namespace: args.namespace,
        window: args.window,
        output: args.output,
        control: args.control,
    })
    .await
}

pub async fn stat(args: StatArgs) -> Result<(), ApiError> {
    let (kind, name) = match args.resource.split_once('/') {
        Some((kind, name)) => (kind.to_string(), Some(name.to_string())),
        None => (args.resource.clone(), None),
    };
    let path = format!(
        "/api/v1/stat/{kind}?{}",
        query(&[
            ("window", Some(args.window.clone())),
            ("namespace", args.namespace.clone()),
            ("name", name)
        ])
    );
    let answer = args.control.get_json(&path).await?;
    if args.output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    let rows = answer["rows"].as_array().cloned().unwrap_or_default();
    let kind = answer["kind"].as_str().unwrap_or("");
    if rows.is_empty() {
        println!("No {kind}s found{}.", if kind == "edge" { " with traffic in the window" } else { "" });
        return Ok(());
    }
    let (header, table) = match kind {
        "workload" => golden_table(&["NAME", "MESHED"], &rows, |r| {
            vec![qualified(&r["namespace"], &r["name"]), r["meshed"].as_str().unwrap_or("-").into()]
        }),
        "route" => golden_table(&["SERVICE", "ROUTE"], &rows, |r| {
            vec![qualified(&r["namespace"], &r["service"]), r["name"].as_str().unwrap_or("").into()]
        }),
        "edge" => golden_table(&["SRC", "DST", "DST_WORKLOADS", "SECURED"], &rows, |r| {
            let dst = match r["dst_service"].as_str() {
                Some(_) => qualified(&r["dst_namespace"], &r["dst_service"]),
                None => r["dst_target"].as_str().unwrap_or("").into(),
            };
            let workloads: Vec<&str> =
                r["dst_workloads"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            vec![
                qualified(&r["src_namespace"], &r["src_workload"]),
                dst,
                if workloads.is_empty() { "-".into() } else { workloads.join(",") },
                percent(&r["secured_rate"]),
            ]
        }),
        _ => golden_table(&["NAME"], &rows, |r| vec![qualified(&r["namespace"], &r["name"])]),
    };
    let (header, table) = match kind {
        // What callers' sidecars did about the Service's failures; a workload row counts
        // what reached it, so these are not its own.
        "service" | "route" | "edge" => with_resilience(header, table, &rows),
        _ => (header, table),
    };
    print_table(&header, &table);
    Ok(())
}

/// Resilience columns after the golden metrics: retries made, retries the budget denied,
/// endpoints ejected, requests shed by a concurrency limit, over the window.
const RESILIENCE: [&str; 4] = ["RETRIES", "BUDGET_DENIED", "EJECTED", "SHED"];

fn with_resilience(
    mut header: Vec<&'static str>,
    mut table: Vec<Vec<String>>,
    rows: &[Value],
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    header.extend(RESILIENCE);
    for (cells, r) in table.iter_mut().zip(rows) {
        for key in ["retries", "retries_denied_by_budget", "ejections", "shed"] {
            cells.push(r[key].as_u64().unwrap_or(0).to_string());
        }
    }
    (header, table)
}

/// The golden metrics columns every kind shows after its own.
const GOLDEN: [&str; 6] = ["SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "REQUESTS"];

/// A table of `rows`: the columns `leading` names and `cells` fills, then the golden
/// metrics of each row.
fn golden_table(
    leading: &[&'static str],
    rows: &[Value],
    cells: impl Fn(&Value) -> Vec<String>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = [leading, &GOLDEN].concat();
    // Requests refused by policy or by a rate limit, once there are any: most meshes
    // have none, and their tables stay as they were.
    let count = |r: &Value, key: &str| r[key].as_u64().unwrap_or(0);
    let refusals = rows.iter().any(|r| count(r, "denied") + count(r, "rate_limited") > 0);
    if refusals {
        header.extend(["FORBIDDEN", "LIMITED"]);
    }
    let table = rows
        .iter()
        .map(|r| {
            let mut row = cells(r);
            row.extend([
                percent(&r["success_rate"]),
                rps(&r["rps"]),
                millis(&r["latency_ms_p50"]),
                millis(&r["latency_ms_p95"]),
                millis(&r["latency_ms_p99"]),
                count(r, "requests").to_string(),
            ]);
            if refusals {
                row.extend([count(r, "denied").to_string(), count(r, "rate_limited").to_string()]);
            }
            row
        })
        .collect();
    (header, table)
}
