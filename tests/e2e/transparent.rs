//! `tarmac up --transparent examples/hello`: every replica in a network namespace of its
//! own. An unmodified curl inside greeter's namespace calls `names` by name and crosses
//! both sidecars over mTLS, its route applied; a call to a replica's own address is not
//! the Service (no route); and
//! nothing `up` created outlives it, even when it was SIGKILLed. Needs root (fails in CI
//! without it, like `netns`). Everything is in one test: only one transparent `up` runs
//! at a time.

use crate::netns::can_run_privileged;
use crate::up::{Up, stop};
use std::process::Command;
use std::time::{Duration, Instant};
use tarmac_testkit::metrics::sum;
use tarmac_testkit::tools::binary;

const GREETER_ID: &str = "spiffe://cluster.local/ns/default/sa/greeter";
const GREETER_NS: &str = "tarmac-default-greeter-0";

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whatever `tarmac up --transparent` creates and must remove: namespaces, links, hosts files.
fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = run("ip", &["netns", "list"])
        .lines()
        .filter(|l| l.starts_with("tarmac-"))
        .map(|l| format!("namespace {l}"))
        .collect();
    found.extend(
        run("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .filter(|name| name.trim().starts_with("tarmac-"))
            .map(|name| format!("link {}", name.trim())),
    );
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        found.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("tarmac-"))
                .map(|n| format!("/etc/netns/{n}")),
        );
    }
    found
}

/// curl inside namespace `ns` (bounded); (exit success, response head and body).
fn curl_in(ns: &str, url: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-isS", "--max-time", "5", url])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

/// The namespace address of replica `who` (`names-0`), from `up`'s output.
fn address_of(up: &Up, who: &str) -> String {
    let marker = format!("| {who}: network namespace tarmac-default-{who} at ");
    up.wait_for(&format!("{who}'s namespace"), Duration::from_secs(60), |lines| {
        lines.iter().find_map(|l| {
            l.split_once(marker.as_str()).map(|(_, rest)| rest.split(',').next().unwrap().to_string())
        })
    })
}

fn wait_ready(up: &Up) {
    for who in ["greeter-0", "names-0", "names-1"] {
        up.wait_for(&format!("{who} ready"), Duration::from_secs(60), |lines| {
            lines.iter().any(|l| l.contains(&format!("| {who} ready: "))).then_some(())
        });
    }
}

/// examples/hello with an HTTPRoute on `names` that adds `x-routed-by: names-marked`.
fn hello() -> String {
    format!("{}/fixtures/transparent", env!("CARGO_MANIFEST_DIR"))
}

const ROUTED: &str = "x-routed-by: names-marked";

fn start() -> Up {
    Up::start_with(&["--transparent", &hello(), "--api-port", "0"])
}

#[test]
fn up_transparent_gives_services_names_and_virtual_ips_and_cleans_up() {
    if !can_run_privileged() {
        return;
    }
    // Without root: a clear refusal, nothing created.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary("tarmac"))
        .args(["up", "--transparent", &hello()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--transparent needs root"), "{stderr}");

    let mut up = start();
    wait_ready(&up);
    let names: Vec<String> = ["names-0", "names-1"].iter().map(|w| address_of(&up, w)).collect();
    let greeter = address_of(&up, "greeter-0");
    let hosts = std::fs::read_to_string(format!("/etc/netns/{GREETER_NS}/hosts")).unwrap();
    assert!(hosts.contains(" names.default.svc.cluster.local names\n"), "{hosts}");

    // An unmodified client calls the Service by its short and its full name.
    for url in ["http://names/", "http://names.default.svc.cluster.local/"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, body) = curl_in(GREETER_NS, url);
            if ok && body.contains("\"names\"") {
                // The route bound to the Service the connection was addressed to.
                assert!(body.contains(ROUTED), "{url}: {body}");
                break;
            }
            assert!(Instant::now() < deadline, "{url} from {GREETER_NS}: {body}\n{}", up.output());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let caller =
        run("ip", &["netns", "exec", GREETER_NS, "curl", "-s", &format!("http://{greeter}:4191/metrics")]);
    let via_service = sum(
        &caller,
        "tarmac_responses_total",
        &[("direction", "outbound"), ("target", "names"), ("status_code", "200")],
    );
    assert_eq!(via_service, 2.0, "both calls went out as the Service `names`\n{caller}");
    // The callees' sidecars received them over mTLS from greeter's identity.
    let mut mtls = 0.0;
    for (i, ip) in names.iter().enumerate() {
        let text = run(
            "ip",
            &[
                "netns",
                "exec",
                &format!("tarmac-default-names-{i}"),
                "curl",
                "-s",
                &format!("http://{ip}:4191/metrics"),
            ],
        );
        mtls += sum(
            &text,
            "tarmac_requests_total",
            &[("direction", "inbound"), ("tls", "true"), ("client_id", GREETER_ID)],
        );
    }
    assert_eq!(mtls, 2.0, "{}", up.output());

    // Straight to a replica's own address: reaches it, but not as the Service.
    let direct = format!("http://{}:8080/", names[0]);
    let (ok, body) = curl_in(GREETER_NS, &direct);
    assert!(ok && body.contains("names-0"), "{direct}: {body}");
    assert!(!body.contains(ROUTED), "the Service's route applied to {direct}: {body}");
    let caller =
        run("ip", &["netns", "exec", GREETER_NS, "curl", "-s", &format!("http://{greeter}:4191/metrics")]);
    assert_eq!(
        sum(&caller, "tarmac_responses_total", &[("direction", "outbound"), ("target", "names")]),
        via_service,
        "{caller}"
    );
    assert!(caller.contains(&format!("target=\"{}:8080\"", names[0])), "{caller}");

    // greeter calls names by name too (NAMES_URL=http://names), and a call to greeter from
    // its own namespace may be balanced to itself: its sidecar hands that to its own
    // inbound side.
    let (ok, body) = curl_in(GREETER_NS, "http://greeter/");
    assert!(ok && body.contains("greeted by greeter-0") && body.contains("names from names-"), "{body}");

    stop(&mut up);
    assert_eq!(leftovers(), Vec::<String>::new(), "after SIGTERM\n{}", up.output());
    drop(up);

    // A SIGKILLed `up` leaves its namespaces; the next `up` removes them first, and its
    // own on exit.
    let mut crashed = start();
    wait_ready(&crashed);
    crashed.kill();
    assert!(!leftovers().is_empty(), "a killed up cannot clean up; the next one must");
    let mut next = start();
    next.wait_for("the sweep of the crashed run", Duration::from_secs(30), |lines| {
        lines
            .iter()
            .any(|l| l.contains("removed what an earlier `tarmac up --transparent` left behind"))
            .then_some(())
    });
    wait_ready(&next);
    let (ok, body) = curl_in(GREETER_NS, "http://names/");
    assert!(ok && body.contains("\"names\""), "{body}\n{}", next.output());
    stop(&mut next);
    assert_eq!(leftovers(), Vec::<String>::new(), "after the second SIGTERM\n{}", next.output());
}
