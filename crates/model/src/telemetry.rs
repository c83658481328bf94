//! `tarmac.io/v1alpha1` Telemetry: trace sampling, the OTLP collector spans go to, and
//! access logs, for the whole mesh, a namespace, or some workloads.
//!
//! Scope follows where the object lives and whether it selects: in the mesh's root
//! namespace ([`ROOT_NAMESPACE`], `tarmac-system`) without a selector it applies to every
//! workload; in any other namespace without a selector, to that namespace's workloads;
//! with `selector.matchLabels`, to the workloads of its own namespace whose labels match.
//! Settings merge field by field, the most specific object that sets a field winning:
//! a workload's, then its namespace's, then the mesh's (and below those, `tarmac up
//! --otlp` and `--trace-sampling`). Two objects of the same level both setting a field
//! for one workload: the first by name wins, and `tarmac check` says so.

use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The namespace whose selector-less Telemetry applies to the whole mesh (as Istio's
/// root namespace does).
pub const ROOT_NAMESPACE: &str = "tarmac-system";

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Telemetry {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TelemetrySpec,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// Absent: every workload of the namespace (of the mesh, in `tarmac-system`).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub tracing: Option<Tracing>,
    #[serde(default)]
    pub access_logging: Option<AccessLogging>,
}

/// Workloads by their labels (all must match).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// Share of the requests arriving at a caller's sidecar without trace context that
    /// start a trace, 0 to 100 (a request whose caller sampled it is always traced).
    #[serde(default)]
    pub sampling_percentage: Option<f64>,
    /// `host:port` of an OTLP/gRPC collector (plaintext), as the proxies reach it.
    #[serde(default)]
    pub collector: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogging {
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `json` (default) or `common`.
    #[serde(default)]
    pub format: Option<AccessLogFormat>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Json,
    Common,
}

/// How specific an object is for a workload it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Mesh,
    Namespace,
    Workload,
}

impl Telemetry {
    /// How specifically this object applies to a workload of `namespace` with `labels`;
    /// `None` when it does not.
    pub fn applies_to(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<Level> {
        let own = &self.metadata.namespace;
        match &self.spec.selector {
            Some(selector) => (own == namespace
                && selector.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .then_some(Level::Workload),
            None if own == ROOT_NAMESPACE && namespace != ROOT_NAMESPACE => Some(Level::Mesh),
            None if own == namespace => Some(Level::Namespace),
            None => None,
        }
    }
}

/// A workload's telemetry once every object that applies is merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    pub sampling_percentage: f64,
    pub collector: Option<String>,
    /// `Some`: access logs on, in this format.
    pub access_log: Option<AccessLogFormat>,
    /// The objects that set something, most specific first (`namespace/name`).
    pub sources: Vec<String>,
}

/// Defaults below every object: what `tarmac up --otlp` and `--trace-sampling` say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshDefaults {
    pub collector: Option<String>,
    pub sampling_percentage: Option<f64>,
}

/// Merges the objects that apply to a workload of `namespace` with `labels`, field by
/// field: the most specific level that sets a field wins, and within a level the first
/// object by name.
pub fn resolve<'a>(
    objects: impl IntoIterator<Item = &'a Telemetry>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    defaults: &MeshDefaults,
) -> Resolved {
    let mut applying: Vec<(Level, &Telemetry)> =
        objects.into_iter().filter_map(|t| Some((t.applies_to(namespace, labels)?, t))).collect();
    // Most specific first; by name within a level.
    applying.sort_by(|(la, a), (lb, b)| {
        lb.cmp(la).then_with(|| {
            (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
        })
    });
    let mut sampling = None;
    let mut collector = None;
    let mut log: Option<(bool, Option<AccessLogFormat>)> = None;
    let mut sources = Vec::new();
    for (_, t) in &applying {
        let mut used = false;
        if let Some(tracing) = &t.spec.tracing {
            if sampling.is_none() && tracing.sampling_percentage.is_some() {
                sampling = tracing.sampling_percentage;
                used = true;
            }
            if collector.is_none() && tracing.collector.is_some() {
                collector = tracing.collector.clone();
                used = true;
            }
        }
        if let Some(logging) = &t.spec.access_logging {
            match &mut log {
                None => {
                    log = Some((logging.enabled.unwrap_or(true), logging.format));
                    used = true;
                }
                // A more specific object turned logs on without a format: a less specific
                // one may still choose it.
                Some((_, format @ None)) if logging.format.is_some() => {
                    *format = logging.format;
                    used = true;
                }
                Some(_) => {}
            }
        }
        if used {
            sources.push(format!("{}/{}", t.metadata.namespace, t.metadata.name));
        }
    }
    Resolved {
        sampling_percentage: sampling.or(defaults.sampling_percentage).unwrap_or(0.0),
        collector: collector.or_else(|| defaults.collector.clone()),
        access_log: log.and_then(|(on, format)| on.then(|| format.unwrap_or_default())),
        sources,
    }
}

/// Whether `text` is a collector address proxies can use: `host:port`.
pub fn valid_collector(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            !host.is_empty()
                && !host.contains('/')
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(yaml: &str) -> Telemetry {
        match crate::parse_documents("t.yaml", yaml).unwrap().remove(0) {
            crate::Resource::Telemetry(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), app.to_string())])
    }

    #[test]
    fn the_most_specific_setting_wins_field_by_field() {
        let mesh = telemetry(
            "apiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: mesh, namespace: tarmac-system}\nspec:\n  tracing: {samplingPercentage: 1, collector: \"otel:4317\"}\n  accessLogging: {enabled: true, format: common}\n",
        );
        let shop = telemetry(
            "apiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: shop, namespace: shop}\nspec:\n  tracing: {samplingPercentage: 10}\n",
        );
        let books = telemetry(
            "apiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: books, namespace: shop}\nspec:\n  selector: {matchLabels: {app: books}}\n  tracing: {samplingPercentage: 100}\n  accessLogging: {enabled: false}\n",
        );
        let all = [mesh.clone(), shop.clone(), books.clone()];
        let none = MeshDefaults::default();
        let r = resolve(&all, "shop", &labels("books"), &none);
        assert_eq!(r.sampling_percentage, 100.0);
        assert_eq!(r.collector.as_deref(), Some("otel:4317"), "the mesh's collector");
        assert_eq!(r.access_log, None, "turned off for books");
        assert_eq!(r.sources, ["shop/books", "tarmac-system/mesh"]);
        let r = resolve(&all, "shop", &labels("web"), &none);
        assert_eq!((r.sampling_percentage, r.access_log), (10.0, Some(AccessLogFormat::Common)));
        let r = resolve(&all, "default", &labels("books"), &none);
        assert_eq!(r.sampling_percentage, 1.0, "another namespace's selector does not reach here");
        let r = resolve(
            &[] as &[Telemetry],
            "default",
            &labels("web"),
            &MeshDefaults { collector: Some("127.0.0.1:4317".into()), sampling_percentage: Some(5.0) },
        );
        assert_eq!((r.sampling_percentage, r.collector.as_deref()), (5.0, Some("127.0.0.1:4317")));
        assert!(r.sources.is_empty());
    }

    #[test]
    fn collector_addresses() {
        for ok in ["otel:4317", "127.0.0.1:4317", "[::1]:4317", "otel.observability.svc.cluster.local:4317"] {
            assert!(valid_collector(ok), "{ok}");
        }
        for bad in ["otel", "otel:", ":4317", "otel:0", "otel:99999", "http://otel:4317", "a b:1"] {
            assert!(!valid_collector(bad), "{bad}");
        }
    }
}
