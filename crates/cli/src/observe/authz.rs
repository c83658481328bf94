//! `tarmac authz SERVICE`: who may call a Service, port by port and workload by workload,
//! under which policy, and how often: what each selected workload's sidecar is sent
//! (docs/policy.md). Like `linkerd viz authz`, from the configuration in force.

use super::{ApiError, ControlArgs, Output, print_json, query};

/// Show who may call a Service, and under which AuthorizationPolicy or default.
#[derive(clap::Args, Debug)]
pub struct AuthzArgs {
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

pub async fn authz(args: AuthzArgs) -> Result<(), ApiError> {
    let (namespace, service) = match args.service.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
        None => (args.namespace.clone(), args.service.clone()),
    };
    let answer = args
        .control
        .get_json(&format!(
            "/api/v1/authz?{}",
            query(&[("service", Some(service)), ("namespace", namespace)])
        ))
        .await?;
    if args.output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    let name = answer["service"].as_str().unwrap_or("?");
    for port in answer["ports"].as_array().into_iter().flatten() {
        let label = match port["name"].as_str() {
            Some(n) => format!("{} ({n})", port["port"]),
            None => port["port"].to_string(),
        };
        let workloads = port["workloads"].as_array().cloned().unwrap_or_default();
        if workloads.is_empty() {
            println!("Service {name} port {label}: selects no workload; nobody is served");
            continue;
        }
        for w in &workloads {
            let default = w["default_policy"].as_str().unwrap_or("allow-all");
            println!(
                "Service {name} port {label} → workload {} port {}: default policy {default}",
                w["workload"].as_str().unwrap_or("?"),
                w["target_port"]
            );
            let authorizations = w["authorizations"].as_array().cloned().unwrap_or_default();
            let rows: Vec<[String; 4]> = authorizations
                .iter()
                .map(|a| {
                    [
                        a["policy"].as_str().unwrap_or("").to_string(),
                        a["action"].as_str().unwrap_or("").to_string(),
                        a["applies_to"].as_str().unwrap_or("").to_string(),
                        a["from"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|f| f.as_str())
                            .collect::<Vec<_>>()
                            .join("; or "),
                    ]
                })
                .chain(std::iter::once([
                    format!("default:{default}"),
                    match default {
                        "allow-all" => "ALLOW".into(),
                        "all-authenticated" => "ALLOW".into(),
                        "audit" => "AUDIT".into(),
                        _ => "DENY".into(),
                    },
                    "what no ALLOW policy above applies to".into(),
                    match default {
                        "allow-all" => "every client".into(),
                        "all-authenticated" => "authenticated clients (mesh identities)".into(),
                        "audit" => "every client; what `deny` would refuse is counted and logged".into(),
                        _ => "nobody".into(),
                    },
                ]))
                .collect();
            print_table(&["POLICY", "ACTION", "APPLIES TO", "CLIENTS"], &rows);
            let limits = w["rate_limits"].as_array().cloned().unwrap_or_default();
            if !limits.is_empty() {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
                let rows: Vec<[String; 4]> = limits
                    .iter()
                    .map(|l| {
                        let overrides = l["overrides"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|o| {
                                format!(
                                    "{} for {}",
                                    text(&o["rate"]),
                                    o["identities"]
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .filter_map(|i| i.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            })
                            .collect::<Vec<_>>();
                        let per_caller = match overrides.is_empty() {
                            true => text(&l["per_caller"]),
                            false => format!("{}; {}", text(&l["per_caller"]), overrides.join("; ")),
                        };
                        [text(&l["policy"]), text(&l["applies_to"]), text(&l["total"]), per_caller]
                    })
                    .collect();
                print_table(&["RATE LIMIT", "APPLIES TO", "TOTAL", "PER CALLER"], &rows);
            }
            println!();
        }
    }
    Ok(())
}

fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
