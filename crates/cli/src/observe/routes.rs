//! `tarmac routes SERVICE`: which route and rule each kind of request to a Service takes,
//! in the order proxies try them, for callers in a given namespace; with `--path` (and
//! `--method`, `-H`, `--query`), the rule one request takes. The control plane compiles
//! the table with the proxy's own matching code; then the routes attached to the
//! Service as configured, and any condition of theirs that needs attention.

use super::{ApiError, ControlArgs, Output, print_json, query};
use serde_json::Value;

/// Show which routes apply to a Service, with their rules.
#[derive(clap::Args, Debug)]
pub struct RoutesArgs {
    /// The Service (`NAME` or `NAMESPACE/NAME`).
    pub service: String,
    /// The Service's namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The caller: `NAMESPACE` or `NAMESPACE/WORKLOAD` (consumer routes apply only to
    /// callers in their namespace; default: the Service's namespace).
    #[arg(long, value_name = "NAMESPACE[/WORKLOAD]")]
    pub from: Option<String>,
    /// Only this port of the Service.
    #[arg(long)]
    pub port: Option<u16>,
    /// Test one request: its path (and query), e.g. `/api/books?page=2`.
    #[arg(long)]
    pub path: Option<String>,
    /// The test request's method (default GET).
    #[arg(long, requires = "path")]
    pub method: Option<String>,
    /// A header of the test request, `NAME:VALUE` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE", requires = "path")]
    pub headers: Vec<String>,
    /// A query parameter of the test request, `KEY=VALUE` (repeatable).
    #[arg(long = "query", value_name = "KEY=VALUE", requires = "path")]
    pub query: Vec<String>,
    /// `table` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub async fn routes(args: RoutesArgs) -> Result<(), ApiError> {
    let (namespace, service) = match args.service.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
        None => (args.namespace.clone(), args.service.clone()),
    };
    let mut pairs = vec![
        ("service", Some(service.clone())),
        ("namespace", namespace),
        ("from", args.from.clone()),
        ("path", args.path.clone()),
        ("method", args.method.clone()),
    ];
    pairs.extend(args.headers.iter().map(|h| ("header", Some(h.clone()))));
    pairs.extend(args.query.iter().map(|q| ("query", Some(q.clone()))));
    let mut answer = args.control.get_json(&format!("/api/v1/routes?{}", query(&pairs))).await?;
    if let Some(port) = args.port
        && let Some(ports) = answer["ports"].as_array_mut()
    {
        ports.retain(|p| p["port"].as_u64() == Some(u64::from(port)));
        if ports.is_empty() {
            return Err(ApiError::NoSuchPort { service, port });
        }
    }
    if args.output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    let ns = answer["namespace"].as_str().unwrap_or("default");
    if !answer["service_exists"].as_bool().unwrap_or(false) {
        println!("There is no Service {ns}/{service} in the configuration in force.");
        return Ok(());
    }
    let caller = answer["caller_namespace"].as_str().unwrap_or(ns);
    let whose = match answer["caller_workload"].as_str() {
        Some(w) => format!("workload {caller}/{w} (and every caller in namespace {caller})"),
        None => format!("callers in namespace {caller}"),
    };
    let which = if answer["consumer_routes"].as_bool().unwrap_or(false) {
        format!("the consumer routes of namespace {caller}")
    } else {
        format!("the producer routes of namespace {ns}")
    };
    let ports = answer["ports"].as_array().cloned().unwrap_or_default();
    if args.path.is_some() {
        for port in &ports {
            let request = &port["request"];
            println!(
                "{} to Service {ns}/{service} port {} from {whose}:",
                request["request"].as_str().unwrap_or(""),
                port["port"]
            );
            match request["entry"].as_u64() {
                Some(i) => {
                    let entry = &port["table"][i as usize];
                    println!("  takes match {} ({})", i + 1, entry["request"].as_str().unwrap_or(""));
                    println!(
                        "  → {} {} {}",
                        entry["kind"].as_str().unwrap_or(""),
                        entry["route"].as_str().unwrap_or(""),
                        rule_of(entry)
                    );
                    println!("  → {}", entry["destination"].as_str().unwrap_or(""));
                    println!("  → {}", entry["resilience"].as_str().unwrap_or(""));
                }
                None if port["table"].as_array().is_some_and(|t| !t.is_empty()) => {
                    println!("  → {}", port["otherwise"].as_str().unwrap_or(""))
                }
                None => {
                    println!("  → {}", port["otherwise"].as_str().unwrap_or(""));
                    println!("  → {}", port["unrouted"]["resilience"].as_str().unwrap_or(""));
                }
            }
            println!("  retry budget: {}", port["budget_text"].as_str().unwrap_or(""));
        }
        return Ok(());
    }
    for port in &ports {
        if port["table"].as_array().is_some_and(|t| !t.is_empty()) {
            println!(
                "Service {ns}/{service} port {} for {whose}: {which}, in the order proxies try them",
                port["port"]
            );
        } else {
            println!(
                "Service {ns}/{service} port {} for {whose}: no HTTPRoute or GRPCRoute applies",
                port["port"]
            );
        }
        let table = port["table"].as_array().cloned().unwrap_or_default();
        let width =
            table.iter().map(|e| e["request"].as_str().unwrap_or("").chars().count()).max().unwrap_or(0);
        for (i, entry) in table.iter().enumerate() {
            println!(
                "  {:>2}. {:<width$} → {} {} {} → {}",
                i + 1,
                entry["request"].as_str().unwrap_or(""),
                entry["kind"].as_str().unwrap_or(""),
                entry["route"].as_str().unwrap_or(""),
                rule_of(entry),
                entry["destination"].as_str().unwrap_or("")
            );
            println!("      {:<width$}   {}", "", entry["resilience"].as_str().unwrap_or(""));
        }
        let every = if table.is_empty() { "every request" } else { "every other request" };
        println!("   *. {every:<width$} → {}", port["otherwise"].as_str().unwrap_or(""));
        if table.is_empty() {
            println!("      {:<width$}   {}", "", port["unrouted"]["resilience"].as_str().unwrap_or(""));
        }
        println!("  retry budget of callers: {}", port["budget_text"].as_str().unwrap_or(""));
        if let Some(e) = port["error"].as_str() {
            println!("  the routes do not compile: {e}");
        }
    }
    for status in answer["conditions"].as_array().into_iter().flatten() {
        for parent in status["parents"].as_array().into_iter().flatten() {
            for c in parent["conditions"].as_array().into_iter().flatten() {
                if c["severity"] == "ok" {
                    continue;
                }
                println!(
                    "{} {} {}/{} ({}): {} {} {}: {}",
                    if c["severity"] == "error" { "×" } else { "!" },
                    status["kind"].as_str().unwrap_or(""),
                    status["namespace"].as_str().unwrap_or(""),
                    status["name"].as_str().unwrap_or(""),
                    parent["parent"].as_str().unwrap_or(""),
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    let routes = answer["routes"].as_array().cloned().unwrap_or_default();
    if routes.is_empty() {
        return Ok(());
    }
    println!();
    println!("Routes attached to Service {ns}/{service}, as configured:");
    for route in &routes {
        print!(
            "{} {}/{}",
            route["kind"].as_str().unwrap_or(""),
            route["namespace"].as_str().unwrap_or(""),
            route["name"].as_str().unwrap_or("")
        );
        let ports: Vec<String> = route["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p.as_u64().map_or("every port".into(), |p| format!("port {p}")))
            .collect();
        println!(" ({})", ports.join(", "));
        if let Some(hosts) = route["hostnames"].as_array().filter(|h| !h.is_empty()) {
            let hosts: Vec<&str> = hosts.iter().filter_map(Value::as_str).collect();
            println!("  hostnames: {}", hosts.join(", "));
        }
        for (i, rule) in route["rules"].as_array().into_iter().flatten().enumerate() {
            let name = rule["name"].as_str().map(str::to_string).unwrap_or_else(|| format!("#{i}"));
            println!("  rule {name}");
            println!("    matches:  {}", matches(rule));
            if let Some(filters) = rule["filters"].as_array().filter(|f| !f.is_empty()) {
                let kinds: Vec<&str> = filters.iter().filter_map(|f| f["type"].as_str()).collect();
                println!("    filters:  {}", kinds.join(", "));
            }
            println!("    backends: {}", backends(rule));
            for key in ["timeouts", "retry"] {
                if !rule[key].is_null() {
                    println!("    {key}: {}", rule[key]);
                }
            }
        }
    }
    Ok(())
}

/// `rule canary` or `rule #2` (unnamed rules by their index).
fn rule_of(entry: &Value) -> String {
    match entry["rule"].as_str() {
        Some(name) => format!("rule {name}"),
        None => format!("rule #{}", entry["rule_index"].as_u64().unwrap_or(0)),
    }
}

/// Each match in a few words: `PathPrefix /api, header x-canary=1, GET`.
fn matches(rule: &Value) -> String {
    let list = rule["matches"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "every request".into();
    }
    let described: Vec<String> = list
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            if let Some(path) = m.get("path").filter(|p| !p.is_null()) {
                parts.push(format!(
                    "{} {}",
                    path["type"].as_str().unwrap_or("PathPrefix"),
                    path["value"].as_str().unwrap_or("/")
                ));
            }
            for header in m["headers"].as_array().into_iter().flatten() {
                parts.push(format!(
                    "header {}={}",
                    header["name"].as_str().unwrap_or(""),
                    header["value"].as_str().unwrap_or("")
                ));
            }
            for q in m["queryParams"].as_array().into_iter().flatten() {
                parts.push(format!(
                    "query {}={}",
                    q["name"].as_str().unwrap_or(""),
                    q["value"].as_str().unwrap_or("")
                ));
            }
            match &m["method"] {
                Value::String(method) => parts.push(method.clone()),
                Value::Object(grpc) => parts.push(format!(
                    "gRPC {}/{}",
                    grpc.get("service").and_then(Value::as_str).unwrap_or("*"),
                    grpc.get("method").and_then(Value::as_str).unwrap_or("*")
                )),
                _ => {}
            }
            if parts.is_empty() { "every request".into() } else { parts.join(", ") }
        })
        .collect();
    described.join(" | ")
}

/// `ratings-v1:80 (weight 90), ratings-v2:80 (weight 10)`.
fn backends(rule: &Value) -> String {
    let list = rule["backendRefs"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "the Service itself".into();
    }
    let described: Vec<String> = list
        .iter()
        .map(|b| {
            let mut text = b["name"].as_str().unwrap_or("").to_string();
            if let Some(ns) = b["namespace"].as_str() {
                text = format!("{ns}/{text}");
            }
            if let Some(port) = b["port"].as_u64() {
                text.push_str(&format!(":{port}"));
            }
            text.push_str(&format!(" (weight {})", b["weight"].as_u64().unwrap_or(1)));
            text
        })
        .collect();
    described.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_read_in_a_few_words() {
        let rule = json!({
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-canary", "value": "1"}], "method": "GET"}],
            "backendRefs": [{"name": "ratings-v1", "port": 80, "weight": 90}, {"name": "ratings-v2", "port": 80}],
        });
        assert_eq!(matches(&rule), "PathPrefix /api, header x-canary=1, GET");
        assert_eq!(backends(&rule), "ratings-v1:80 (weight 90), ratings-v2:80 (weight 1)");
        assert_eq!(matches(&json!({})), "every request");
    }
}
