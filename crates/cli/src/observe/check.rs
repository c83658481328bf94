//! `tarmac check`: is the control plane up, is the configuration valid, are the proxies
//! ready, connected and following the configuration in force, and whether every route is
//! accepted by its parent with its references resolved; advice for what is not. Exits
//! non-zero when anything is wrong, so that scripts can wait on it; shadowed route rules
//! are printed as warnings and do not fail it.

use super::{ApiError, ControlArgs, Output, print_json};
use serde_json::json;

/// Check the mesh: control plane, configuration, replicas, proxies and discovery.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// `table` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Before `tarmac install`: can this cluster, with these credentials, take Tarmac?
    /// Asks the Kubernetes API (not the control plane): version, permissions, Gateway API
    /// CRDs, admission webhooks, the control plane's namespace.
    #[arg(long)]
    pub pre: bool,
    /// With --pre: the kubeconfig (else $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", requires = "pre")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// With --pre: the namespace `tarmac install` would use.
    #[arg(long, default_value = tarmac_kube::install::DEFAULT_NAMESPACE, requires = "pre")]
    pub namespace: String,
}

/// Ok(true) when every check passed.
pub async fn check(args: CheckArgs) -> Result<bool, ApiError> {
    let report = if args.pre { pre_check(&args).await } else { control_check(&args).await };
    let ok = report["ok"].as_bool().unwrap_or(false);
    if args.output == Output::Json {
        print_json(&report);
        return Ok(ok);
    }
    print_report(&report);
    Ok(ok)
}

/// `--pre`: the cluster's API, asked by [`tarmac_kube::precheck`], in the report's shape.
async fn pre_check(args: &CheckArgs) -> serde_json::Value {
    let checks = match tarmac_kube::client(args.kubeconfig.as_deref()).await {
        Ok(client) => tarmac_kube::precheck::pre_checks(&client, &args.namespace).await,
        Err(e) => vec![tarmac_kube::precheck::Check {
            name: "Kubernetes API".into(),
            ok: false,
            detail: e.to_string(),
            hint: "give --kubeconfig, or set KUBECONFIG".into(),
        }],
    };
    let ok = checks.iter().all(|c| c.ok);
    json!({"ok": ok, "checks": checks})
}

async fn control_check(args: &CheckArgs) -> serde_json::Value {
    match args.control.get_json("/api/v1/check").await {
        Ok(report) => report,
        Err(e) => {
            let (detail, hint) = (e.to_string(), e.advice().unwrap_or_default());
            json!({
                "ok": false,
                "checks": [{
                    "name": "control plane",
                    "ok": false,
                    "detail": detail,
                    "hint": hint.trim(),
                }],
                "proxies": [],
            })
        }
    }
}

fn print_report(report: &serde_json::Value) {
    let ok = report["ok"].as_bool().unwrap_or(false);
    for check in report["checks"].as_array().into_iter().flatten() {
        let passed = check["ok"].as_bool().unwrap_or(false);
        println!(
            "{} {}: {}",
            if passed { "√" } else { "×" },
            check["name"].as_str().unwrap_or("?"),
            check["detail"].as_str().unwrap_or("")
        );
        for error in check["errors"].as_array().into_iter().flatten() {
            println!("    {}", error["text"].as_str().unwrap_or(""));
        }
        for c in check["conditions"].as_array().into_iter().flatten() {
            println!(
                "    {} {} ({}): {} {} {}: {}",
                if c["severity"] == "error" { "×" } else { "! warning:" },
                c["route"].as_str().unwrap_or(""),
                c["parent"].as_str().unwrap_or(""),
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            );
        }
        for warning in check["warnings"].as_array().into_iter().flatten() {
            println!("    ! warning: {}", warning.as_str().unwrap_or(""));
        }
        if let Some(hint) = check["hint"].as_str().filter(|h| !h.is_empty() && !passed) {
            println!("    hint: {hint}");
        }
    }
    println!();
    println!("{}", if ok { "Status check results are √" } else { "Some checks failed: see × above" });
}
