//! The Grafana dashboard shipped in docs/grafana/tarmac.json: what Grafana needs to
//! import it (panels, targets, a Prometheus data source variable), and metric names the
//! proxies export. `observe::prometheus_computes_the_rates_tarmac_stat_reports` runs
//! every panel's PromQL against a real Prometheus scraping a running mesh.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

pub(crate) fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/tarmac.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One target of one panel, its expression with the dashboard's variables given values.
#[derive(Debug)]
pub(crate) struct PanelQuery {
    pub row: String,
    pub panel: String,
    pub expr: String,
}

impl PanelQuery {
    /// The golden metrics (per workload, service, route, edge): these must return data
    /// for any mesh with traffic; the others (retries, denials, ...) only when it happens.
    pub fn golden(&self) -> bool {
        self.row.starts_with("Golden metrics")
    }
}

/// The variables' values a test substitutes: every namespace, workload and service, and
/// the rate interval Grafana would compute for a short scrape interval.
const VALUES: &[(&str, &str)] =
    &[("$__rate_interval", "1m"), ("$namespace", ".*"), ("$workload", ".*"), ("$service", ".*")];

/// Every panel target's expression, variables substituted.
pub(crate) fn queries() -> Vec<PanelQuery> {
    let dashboard = dashboard();
    let mut row = String::new();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            row = panel["title"].as_str().unwrap_or_default().to_string();
            continue;
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().unwrap_or_default().to_string();
            for (name, value) in VALUES {
                expr = expr.replace(&format!("${{{}}}", &name[1..]), value).replace(name, value);
            }
            out.push(PanelQuery {
                row: row.clone(),
                panel: panel["title"].as_str().unwrap_or_default().to_string(),
                expr,
            });
        }
    }
    out
}

/// `$name` and `${name}` references in a text.
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices('$') {
        let rest = &text[at + 1..];
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

#[test]
fn the_grafana_dashboard_has_what_grafana_needs_to_import_it() {
    let dashboard = dashboard();
    for field in ["title", "uid"] {
        assert!(dashboard[field].as_str().is_some_and(|s| !s.is_empty()), "no {field}");
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    assert!(dashboard.get("id").is_none_or(Value::is_null), "an id would clash on import: leave it out");

    // A data source variable of type prometheus, which every panel and target uses.
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let datasource = variables.iter().find(|v| v["type"] == "datasource").expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let uses = format!("${{{}}}", datasource["name"].as_str().unwrap());
    let mut defined: BTreeSet<String> =
        variables.iter().map(|v| v["name"].as_str().expect("a variable's name").to_string()).collect();
    for v in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"],
            uses.as_str(),
            "variable {} queries the chosen Prometheus",
            v["name"]
        );
        assert!(v["query"]["query"].as_str().is_some_and(|q| q.starts_with("label_values(")), "{v}");
    }
    // Grafana's own.
    defined.insert("__rate_interval".into());

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_u64().expect("a numeric id")), "id of {title} is not unique");
        let grid = &panel["gridPos"];
        let (x, w, h) = (grid["x"].as_u64(), grid["w"].as_u64(), grid["h"].as_u64());
        assert!(
            matches!((x, w, h), (Some(x), Some(w), Some(h)) if x + w <= 24 && h > 0),
            "{title}: gridPos within Grafana's 24 columns: {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["type"], "timeseries", "{title}");
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(panel["datasource"]["uid"], uses.as_str(), "{title}");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).expect("targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(refs.insert(target["refId"].as_str().expect("refId")), "{title}: refIds are unique");
            let expr = target["expr"].as_str().filter(|e| !e.is_empty()).expect("expr");
            for name in variables_in(expr) {
                assert!(defined.contains(&name), "{title}: ${name} is not a variable of the dashboard");
            }
            queried += 1;
        }
    }
    assert!(queried >= 20, "{queried} queries");
    // Every row the issue asks for.
    let rows: Vec<&str> =
        panels.iter().filter(|p| p["type"] == "row").filter_map(|p| p["title"].as_str()).collect();
    for wanted in ["workload", "service", "route", "edge", "retry budget", "rate limits", "detection"] {
        assert!(rows.iter().any(|r| r.contains(wanted)), "a row about {wanted}: {rows:?}");
    }
}

#[test]
fn the_grafana_dashboard_queries_metrics_the_proxies_export() {
    // A family appears in the exposition once it has a sample: count one of each kind.
    use tarmac_proxy::metrics::{Classification, Direction, Metrics, Peer, RouteLabel};
    let metrics = std::sync::Arc::new(Metrics::new());
    let target = std::sync::Arc::new("books".to_string());
    let rule = std::sync::Arc::new("reads".to_string());
    let outbound = metrics.target(Direction::Outbound, target.clone(), Peer::Unlabelled);
    outbound.request();
    outbound.latency(0.001);
    outbound.response(RouteLabel::default(), 200, None, Classification::Success);
    outbound.route_response(&target, &rule, 200);
    outbound.route_latency(&target, &rule, 0.001);
    outbound.retry(&target, &rule, "status", true);
    outbound.retry(&target, &rule, "budget", false);
    outbound.ejection();
    outbound.error("overloaded");
    let inbound =
        metrics.target(Direction::Inbound, target, Peer::Authenticated("spiffe://x/ns/a/sa/b".into()));
    inbound.authz_denied(&"default/p".into(), "not_allowed", false);
    inbound.rate_limited(&"default/l".into(), "total");
    metrics.detected(Direction::Inbound, "http1", Some(std::time::Duration::from_micros(50)));
    let exported = metrics.encode();
    let families: BTreeSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let queries = queries();
    for q in &queries {
        for (at, _) in q.expr.match_indices("tarmac_") {
            let name: String =
                q.expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let family =
                ["_bucket", "_total"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                families.contains(family) || families.contains(name.as_str()),
                "{} / {}: {name} is not a metric the proxy exports ({families:?})",
                q.row,
                q.panel
            );
        }
        assert!(!q.expr.contains('$'), "{}: a variable left after substitution: {}", q.panel, q.expr);
    }
    assert!(queries.iter().filter(|q| q.golden()).count() >= 12);
}
