//! The Gateway API mesh conformance manifests (tests/conformance) parse and validate:
//! the model follows the specification, not only our own examples.

use std::path::PathBuf;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

#[test]
fn every_route_service_and_namespace_in_the_conformance_cases_is_accepted() {
    let dir = conformance_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path().join("manifests.yaml"))
        .filter(|p| p.exists())
        .collect();
    files.push(dir.join("base/mesh-base.yaml"));
    let mut routes = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.display().to_string();
        let (resources, errors) = match tarmac_model::parse_documents(&name, &text) {
            Ok(r) => (r, Vec::new()),
            Err(e) => (Vec::new(), e),
        };
        // Deployments are Kubernetes' way to run the echo pods; local mode uses Workloads.
        for e in &errors {
            assert!(e.message.contains("`apps/v1` `Deployment`"), "{e}");
        }
        routes += resources.iter().filter(|r| matches!(r.kind(), "HTTPRoute" | "GRPCRoute")).count();
    }
    assert!(routes >= 16, "only {routes} routes parsed");
}
