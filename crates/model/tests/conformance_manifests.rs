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
        // The echo Deployments run an image's entrypoint, which local mode cannot: that is
        // the only thing refused in them; every other field is understood.
        for e in &errors {
            assert!(
                e.object.as_deref().is_some_and(|o| o.starts_with("Deployment "))
                    && e.field.as_deref() == Some("spec.template.spec.containers[0].command"),
                "{e}"
            );
        }
        routes += resources.iter().filter(|r| matches!(r.kind(), "HTTPRoute" | "GRPCRoute")).count();
    }
    assert!(routes >= 16, "only {routes} routes parsed");
}
