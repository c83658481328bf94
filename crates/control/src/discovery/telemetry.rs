//! A workload's telemetry as its own proxy applies it: the Telemetry objects that apply to
//! it merged field by field (`tarmac_model::telemetry::resolve`: the workload's, then its
//! namespace's, then the mesh's), over the mesh's defaults (`tarmac up --otlp`), and the
//! `service.name` its spans carry.

use crate::registry::Instance;
use crate::store::Snapshot;
use std::collections::BTreeMap;
use tarmac_model::Resource;
use tarmac_model::meta::selector_matches;
use tarmac_model::telemetry::{self, AccessLogFormat, MeshDefaults};
use tarmac_proto::discovery::{self as pb, ProxyIdentity, TelemetryUpdate};

/// The telemetry of the workload `proxy` names.
pub fn compute(
    snapshot: &Snapshot,
    instances: &[Instance],
    defaults: &MeshDefaults,
    proxy: &ProxyIdentity,
) -> TelemetryUpdate {
    let namespace = super::namespace_of(proxy);
    let labels = super::labels_of(snapshot, instances, namespace, &proxy.workload);
    let objects = snapshot.iter_kind("Telemetry").filter_map(|r| match r {
        Resource::Telemetry(t) => Some(t),
        _ => None,
    });
    let resolved = telemetry::resolve(objects, namespace, &labels, defaults);
    TelemetryUpdate {
        generation: snapshot.generation,
        service_name: service_name(snapshot, namespace, &proxy.workload, &labels),
        sampling_percent: resolved.sampling_percentage,
        collector: resolved.collector.unwrap_or_default(),
        access_log: resolved.access_log.map(|format| pb::AccessLog {
            format: match format {
                AccessLogFormat::Json => pb::AccessLogFormat::Json,
                AccessLogFormat::Common => pb::AccessLogFormat::Common,
            } as i32,
        }),
        sources: resolved.sources,
    }
}

/// The first Service (by name) of the namespace that selects the workload; else the
/// workload's own name.
fn service_name(
    snapshot: &Snapshot,
    namespace: &str,
    workload: &str,
    labels: &BTreeMap<String, String>,
) -> String {
    snapshot
        .iter_kind_in("Service", namespace)
        .filter_map(|r| match r {
            Resource::Service(s)
                if s.metadata.namespace == namespace
                    && !s.spec.selector.is_empty()
                    && selector_matches(&s.spec.selector, labels) =>
            {
                Some(s.metadata.name.clone())
            }
            _ => None,
        })
        .min()
        .unwrap_or_else(|| workload.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        let objects = tarmac_model::parse_documents("t.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 3, objects }
    }

    const MESH: &str = "\
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata: {name: books-v1, labels: {app: books}}
spec: {command: [x], port: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: books}
spec: {selector: {app: books}, ports: [{port: 80}]}
---
apiVersion: tarmac.io/v1alpha1
kind: Telemetry
metadata: {name: mesh, namespace: tarmac-system}
spec:
  tracing: {collector: \"127.0.0.1:4317\", samplingPercentage: 10}
---
apiVersion: tarmac.io/v1alpha1
kind: Telemetry
metadata: {name: books-logs}
spec:
  selector: {matchLabels: {app: books}}
  accessLogging: {format: common}
";

    fn proxy(workload: &str) -> ProxyIdentity {
        ProxyIdentity { namespace: "default".into(), workload: workload.into(), service_account: "x".into() }
    }

    #[test]
    fn a_workload_gets_its_merged_settings_and_its_services_name() {
        let s = snapshot(MESH);
        let update = compute(&s, &[], &MeshDefaults::default(), &proxy("books-v1"));
        assert_eq!(update.service_name, "books");
        assert_eq!(update.collector, "127.0.0.1:4317");
        assert_eq!(update.sampling_percent, 10.0);
        assert_eq!(update.access_log.map(|a| a.format), Some(pb::AccessLogFormat::Common as i32));
        assert_eq!(update.sources, ["default/books-logs", "tarmac-system/mesh"]);
        // A workload no Service selects is known by its own name, and logs nothing.
        let other = compute(&s, &[], &MeshDefaults::default(), &proxy("web"));
        assert_eq!(other.service_name, "web");
        assert_eq!(other.access_log, None);
        assert_eq!(other.collector, "127.0.0.1:4317");
    }

    #[test]
    fn with_no_telemetry_everything_is_off_unless_the_mesh_says() {
        let s = snapshot(
            "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec: {selector: {app: books}, ports: [{port: 80}]}\n",
        );
        let off = compute(&s, &[], &MeshDefaults::default(), &proxy("web"));
        assert_eq!((off.collector.as_str(), off.sampling_percent, off.access_log), ("", 0.0, None));
        let defaults =
            MeshDefaults { collector: Some("127.0.0.1:4317".into()), sampling_percentage: Some(100.0) };
        let on = compute(&s, &[], &defaults, &proxy("web"));
        assert_eq!((on.collector.as_str(), on.sampling_percent), ("127.0.0.1:4317", 100.0));
    }
}
