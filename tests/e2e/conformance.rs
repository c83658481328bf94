//! The `conformance` runner over every case of the Gateway API mesh conformance set kept in
//! the repository (tests/conformance, copied from upstream with its attribution), three
//! times in a row: every case must pass every time.

use std::path::PathBuf;
use tarmac_testkit::tools::binary;

fn cases() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expect.json").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    cases
}

#[test]
fn every_upstream_case_passes_three_times_in_a_row() {
    let cases = cases();
    for run in 1..=3 {
        let output = std::process::Command::new(binary("conformance")).args(&cases).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let passed = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
        assert!(
            output.status.success() && passed == cases.len(),
            "run {run}: {passed} of {} cases passed\n{stdout}\n{}",
            cases.len(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn a_case_that_expects_something_else_fails_and_says_what_differed() {
    let cases = cases();
    let source = cases.iter().find(|c| c.ends_with("MeshTrafficSplit")).expect("the MeshTrafficSplit case");
    // A copy of the case beside a copy of the base, with one expected backend changed.
    let root = tarmac_testkit::tools::temp_dir("conformance-negative");
    let base = source.parent().unwrap().parent().unwrap().join("base");
    std::fs::create_dir_all(root.join("base")).unwrap();
    std::fs::copy(base.join("mesh-base.yaml"), root.join("base/mesh-base.yaml")).unwrap();
    let case = root.join("cases/Changed");
    std::fs::create_dir_all(&case).unwrap();
    std::fs::copy(source.join("manifests.yaml"), case.join("manifests.yaml")).unwrap();
    let expect = std::fs::read_to_string(source.join("expect.json")).unwrap();
    let changed = expect
        .replacen("\"service\": \"echo-v1\"", "\"service\": \"echo-v2\"", 1)
        .replace("\"max_time_to_consistency_s\": 30", "\"max_time_to_consistency_s\": 3");
    assert_ne!(changed, expect);
    std::fs::write(case.join("expect.json"), changed).unwrap();
    let output = std::process::Command::new(binary("conformance")).arg(&case).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.starts_with("FAIL MeshTrafficSplit: ") && stdout.contains("expected echo-v2"), "{stdout}");
}

/// The runner's own cases (crates/conformance/testdata), in the same format, for features
/// of the suite that the upstream set leaves out: consumer routes, redirect ports and 307,
/// filters on backendRefs, named rules, the Host header not choosing the route.
#[test]
fn the_runners_own_cases_pass() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/conformance/testdata/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let output = std::process::Command::new(binary("conformance")).args(&cases).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let passed = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    assert!(output.status.success() && passed == cases.len() && passed >= 3, "{stdout}");
}
