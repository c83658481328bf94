//! `tarmac routes SERVICE`: the HTTPRoutes and GRPCRoutes attached to a Service, rule by
//! rule, as the configuration in force holds them.

use super::{ControlArgs, Output, print_json, query};
use serde_json::Value;

/// Show which routes apply to a Service, with their rules.
#[derive(clap::Args, Debug)]
pub struct RoutesArgs {
    /// The Service (`NAME` or `NAMESPACE/NAME`).
    pub service: String,
    /// The Service's namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub async fn routes(args: RoutesArgs) -> Result<(), String> {
    let (namespace, service) = match args.service.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
        None => (args.namespace.clone(), args.service.clone()),
    };
    let answer = args
        .control
        .get_json(&format!(
            "/api/v1/routes?{}",
            query(&[("service", Some(service.clone())), ("namespace", namespace)])
        ))
        .await?;
    if args.output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    let ns = answer["namespace"].as_str().unwrap_or("default");
    if !answer["service_exists"].as_bool().unwrap_or(false) {
        println!("There is no Service {ns}/{service} in the configuration in force.");
    }
    let routes = answer["routes"].as_array().cloned().unwrap_or_default();
    if routes.is_empty() {
        println!(
            "No HTTPRoute or GRPCRoute is attached to Service {ns}/{service}: every request goes to its endpoints \
             (the default route)."
        );
        return Ok(());
    }
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
