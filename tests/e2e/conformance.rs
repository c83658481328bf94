//! The `conformance` runner over every case of the Gateway API mesh conformance set kept in
//! the repository (tests/conformance, copied from upstream with its attribution), three
//! times in a row: every case must pass every time; and once over the Gateway API's
//! (non-mesh) tests translated to the mesh (tests/conformance/gateway), where a case marked
//! expected to fail must fail and say so.

use std::path::PathBuf;
use tarmac_testkit::tools::binary;

fn cases() -> Vec<PathBuf> {
    cases_in("conformance/cases")
}

/// The case directories under `dir` (relative to tests/).
fn cases_in(dir: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
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

/// Runs the runner over `cases`: its stdout, and whether it exited 0.
fn run(cases: &[PathBuf]) -> (String, bool) {
    let output = std::process::Command::new(binary("conformance")).args(cases).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (stdout + &String::from_utf8_lossy(&output.stderr), output.status.success())
}

#[test]
fn the_gateway_api_tests_translated_to_the_mesh_pass_or_fail_as_marked() {
    let cases = cases_in("conformance/gateway/cases");
    let (out, ok) = run(&cases);
    let passed = out.lines().filter(|l| l.starts_with("PASS ")).count();
    let known = out.lines().filter(|l| l.starts_with("XFAIL ")).count();
    assert!(
        ok && passed + known == cases.len() && passed >= 12,
        "{passed} passed, {known} known failures\n{out}"
    );
}

/// A copy of the case `name` of `set` (tests/conformance/<set>/cases), beside a copy of its
/// base, with `edit` applied to (expect.json, manifests.yaml).
fn changed_case(set: &str, name: &str, edit: impl FnOnce(&mut String, &mut String)) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance").join(set);
    let root = tarmac_testkit::tools::temp_dir(&format!("conformance-{name}"));
    std::fs::create_dir_all(root.join("base")).unwrap();
    std::fs::copy(source.join("base/mesh-base.yaml"), root.join("base/mesh-base.yaml")).unwrap();
    let case = root.join("cases").join(name);
    std::fs::create_dir_all(&case).unwrap();
    let mut expect = std::fs::read_to_string(source.join("cases").join(name).join("expect.json")).unwrap();
    let mut manifests =
        std::fs::read_to_string(source.join("cases").join(name).join("manifests.yaml")).unwrap();
    edit(&mut expect, &mut manifests);
    std::fs::write(case.join("expect.json"), expect).unwrap();
    std::fs::write(case.join("manifests.yaml"), manifests).unwrap();
    case
}

#[test]
fn a_mirror_that_receives_nothing_fails_the_case() {
    // The same expectations, with the mirror filter gone from the route.
    let case = changed_case("gateway", "HTTPRouteBackendRequestMirror", |_, manifests| {
        let cut = manifests.find("      filters:").expect("the mirror filter");
        manifests.truncate(cut);
    });
    let (out, ok) = run(&[case]);
    assert!(
        !ok && out.contains("FAIL HTTPRouteBackendRequestMirror: ")
            && out.contains("received no copy of /mirror"),
        "{out}"
    );
}

#[test]
fn a_case_marked_expected_to_fail_is_reported_either_way() {
    let mark = |expect: &mut String| {
        *expect = expect.replacen("{", "{\"expected_failure\": \"a test of the mark\",", 1);
    };
    let passing = changed_case("gateway", "HTTPRouteBackendURLRewrite", |expect, _| mark(expect));
    let (out, ok) = run(&[passing]);
    assert!(
        !ok && out.starts_with("XPASS HTTPRouteBackendURLRewrite: ") && out.contains("a test of the mark"),
        "{out}"
    );
    let failing = changed_case("gateway", "HTTPRouteBackendURLRewrite", |expect, _| {
        mark(expect);
        *expect = expect
            .replace("/rewritten-full", "/elsewhere")
            .replace("\"max_time_to_consistency_s\": 30", "\"max_time_to_consistency_s\": 2");
    });
    let (out, ok) = run(&[failing]);
    assert!(
        ok && out.starts_with("XFAIL HTTPRouteBackendURLRewrite: ") && out.contains("expected /elsewhere"),
        "{out}"
    );
}
