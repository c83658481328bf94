//! The commands that look at a running mesh through the control plane's API: `check`,
//! `stat`, `edges`, `top`, `tap`, `routes` and `prometheus-config` (docs/observability.md).
//! Each prints a table for people, or with `-o json` what the API answered, for scripts.

pub mod authz;
pub mod check;
pub mod routes;
pub mod stat;
pub mod tap;

use serde_json::Value;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use tarmac_control::http_client::{ClientError, HttpClient};

/// Where the CLI finds the control plane's API when not told.
pub const ENV_CONTROL: &str = "TARMAC_CONTROL";

/// How long one API call may take (`top` and `tap` stream for longer).
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the control plane's API is.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {
    /// The control plane's API address (what `tarmac up` prints as `API and dashboard on ...`).
    #[arg(long, env = ENV_CONTROL, default_value_t = default_control(), value_parser = parse_control)]
    pub control: SocketAddr,
}

fn default_control() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tarmac_control::api::DEFAULT_PORT))
}

/// `127.0.0.1:4190` or `http://127.0.0.1:4190[/]`. A clap `value_parser`: its error
/// implements `std::error::Error`, which clap prints.
fn parse_control(text: &str) -> Result<SocketAddr, NotAnAddress> {
    let bare = text.trim().trim_start_matches("http://").trim_end_matches('/');
    bare.parse().map_err(|_| NotAnAddress(text.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an address such as 127.0.0.1:4190")]
pub struct NotAnAddress(String);

/// What can go wrong talking to the control plane's API, or with what it answered.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the control plane's API at {control}: {source}")]
    Unreachable {
        control: SocketAddr,
        #[source]
        source: ClientError,
    },
    #[error("the control plane at {control} answered something else than JSON: {source}")]
    NotJson {
        control: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
    /// The API answered with an error status; `what` is what it refused (`request`, `tap`).
    #[error("the control plane refused the {what}: {message}")]
    Refused { what: &'static str, message: String },
    #[error("restart of {workload} failed: {message}")]
    RestartFailed { workload: String, message: String },
    #[error("the control plane ended the tap stream (did `tarmac up` stop?)")]
    StreamEnded,
    #[error("`{0}` is not a Workload: give NAME or NAMESPACE/NAME")]
    NotAWorkload(String),
    #[error("Service {service} has no port {port}")]
    NoSuchPort { service: String, port: u16 },
    #[error(transparent)]
    Duration(#[from] tarmac_clikit::duration::DurationError),
}

impl ApiError {
    /// What to do about it, on the lines after the message.
    pub fn advice(&self) -> Option<String> {
        match self {
            Self::Unreachable { .. } => Some(format!(
                "  is `tarmac up DIR` running? It prints the API's address \
                 (`control plane: API and dashboard on ...`); pass it with --control or {ENV_CONTROL}"
            )),
            _ => None,
        }
    }

    /// The message and its advice, as the command line prints them.
    pub fn with_advice(&self) -> String {
        match self.advice() {
            Some(advice) => format!("{self}\n{advice}"),
            None => self.to_string(),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON, for scripts.
    Json,
}

impl ControlArgs {
    pub fn client(&self, timeout: Duration) -> HttpClient {
        HttpClient::new(self.control, timeout)
    }

    /// GETs `path` from the API and parses its JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, ApiError> {
        let response = self.client(API_TIMEOUT).get(path).await.map_err(|e| self.unreachable(e))?;
        let value = self.json(&response.body)?;
        if !response.status.is_success() {
            return Err(ApiError::Refused { what: "request", message: reason(&value) });
        }
        Ok(value)
    }

    pub fn unreachable(&self, source: ClientError) -> ApiError {
        ApiError::Unreachable { control: self.control, source }
    }

    pub fn json(&self, body: &[u8]) -> Result<Value, ApiError> {
        serde_json::from_slice(body).map_err(|source| ApiError::NotJson { control: self.control, source })
    }
}

/// The `error` of an API's error answer.
pub fn reason(answer: &Value) -> String {
    answer["error"].as_str().unwrap_or("no reason given").to_string()
}

/// `a=b&c=d` with values percent-encoded; empty values are left out.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else { continue };
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Prints rows as aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(header, rows));
}

pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}   ", width = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `95.00%`, or `-` without traffic.
pub fn percent(value: &Value) -> String {
    value.as_f64().map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// `12.3rps`.
pub fn rps(value: &Value) -> String {
    format!("{:.1}rps", value.as_f64().unwrap_or(0.0))
}

/// Milliseconds as `3ms`, `0.42ms` or `-`.
pub fn millis(value: &Value) -> String {
    match value.as_f64() {
        None => "-".into(),
        Some(ms) if ms >= 10.0 => format!("{ms:.0}ms"),
        Some(ms) if ms >= 1.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    }
}

/// `name`, or `namespace/name` outside `default`.
pub fn qualified(namespace: &Value, name: &Value) -> String {
    let (ns, name) = (namespace.as_str().unwrap_or(""), name.as_str().unwrap_or(""));
    if ns.is_empty() || ns == "default" { name.to_string() } else { format!("{ns}/{name}") }
}

/// Prints JSON for `-o json`.
pub fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Print a Prometheus configuration that scrapes every proxy (HTTP service discovery on the control plane).
#[derive(clap::Args, Debug)]
pub struct PrometheusConfigArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// How often Prometheus scrapes each proxy.
    #[arg(long, default_value = "10s")]
    pub scrape_interval: String,
    /// Print only the `scrape_configs` entry, to paste into an existing configuration.
    #[arg(long)]
    pub job_only: bool,
}

pub fn prometheus_config(args: &PrometheusConfigArgs) -> Result<(), ApiError> {
    tarmac_clikit::duration::parse_positive(&args.scrape_interval)?;
    let interval = &args.scrape_interval;
    let job = format!(
        "  # Every tarmac-proxy's admin /metrics, found through the control plane's HTTP service\n  \
         # discovery; each target is labelled with its namespace, workload and replica.\n  \
         - job_name: tarmac-proxies\n    scrape_interval: {interval}\n    http_sd_configs:\n      \
         - url: http://{}/api/v1/prometheus/sd\n        refresh_interval: {interval}\n",
        args.control.control
    );
    if args.job_only {
        print!("{job}");
    } else {
        print!(
            "# Prometheus configuration for a Tarmac mesh (`tarmac prometheus-config`).\n\
             global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nscrape_configs:\n{job}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_encode_what_they_must_and_skip_empty_values() {
        assert_eq!(
            query(&[
                ("target", Some("workload/greeter".into())),
                ("path", Some("/a b&c".into())),
                ("x", None)
            ]),
            "target=workload/greeter&path=/a%20b%26c"
        );
    }

    #[test]
    fn control_addresses_may_be_urls() {
        assert_eq!(parse_control("http://127.0.0.1:5000/").unwrap(), "127.0.0.1:5000".parse().unwrap());
        assert!(parse_control("localhost").unwrap_err().to_string().contains("127.0.0.1:4190"));
    }

    #[test]
    fn tables_align_columns() {
        let text = format_table(&["NAME", "RPS"], &[vec!["greeter".into(), "1.0rps".into()]]);
        assert_eq!(text, "NAME      RPS\ngreeter   1.0rps\n");
    }
}
