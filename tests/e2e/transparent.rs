//! `tarmac up --transparent examples/hello`: every replica in a network namespace of its
//! own. An unmodified curl inside greeter's namespace calls `names` by name and crosses
//! both sidecars over mTLS, its route applied; a call to a replica's own address is not
//! the Service (no route); and
//! nothing `up` created outlives it, even when it was SIGKILLed. And the apps it runs are
//! attacked from inside: a Workload tries to read the CA's keys, flush its interception
//! rules, enter another replica's namespace and find a bootstrap token, and cannot.
//! Needs root (fails in CI without it, like `netns`). Only one transparent `up` runs at a
//! time, so the tests take turns.

use crate::netns::can_run_privileged;
use crate::up::{Up, stop};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tarmac_testkit::metrics::sum;
use tarmac_testkit::tools::binary;

const GREETER_ID: &str = "spiffe://cluster.local/ns/default/sa/greeter";
const GREETER_NS: &str = "tarmac-default-greeter-0";

/// Held by each test for its whole run: `up --transparent` refuses to run twice at once.
pub(crate) static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    let children = started_pids(&crashed.lines());
    crashed.kill();
    // Its apps and sidecars do not outlive it: they asked for a death signal after taking
    // their own uid (a request made before the uid changes is forgotten by the kernel).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = children.iter().copied().filter(|pid| alive(*pid)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running after `up` was SIGKILLed: {alive:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// Every pid in `... started: pid N` lines (apps and sidecars).
fn started_pids(lines: &[String]) -> Vec<u32> {
    lines
        .iter()
        .filter_map(|l| l.split_once(" started: pid "))
        .filter_map(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// The pid of the last `<who> started: pid N` line.
fn pid_of(up: &Up, who: &str) -> u32 {
    let marker = format!("| {who} started: pid ");
    up.wait_for(&format!("{who} started"), Duration::from_secs(60), |lines| {
        lines
            .iter()
            .rev()
            .find_map(|l| l.split_once(marker.as_str()))
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
    })
}

/// Running (a zombie waiting for its reaper has stopped running).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// The real uid of a process, from /proc.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What the intruder tries from inside its replica, as the app `up` runs; each line that
/// starts with `attack:` is an attack that worked.
const INTRUDER: &str = r#"
echo "whoami: uid $(id -u) gid $(id -g) groups $(id -G)"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status | tr -s '\t ' ' ' | sed 's/^/status: /'
cat "$CA_DIR/issuer.key" >/dev/null 2>&1 && echo "attack: read the issuer key"
cat "$CA_DIR/anchors.pem" >/dev/null 2>&1 && echo "attack: read the CA directory"
echo "identity dir: $(ls -A "$CA_DIR" 2>/dev/null | wc -l) entries"
for f in /tmp/tarmac-up-$PPID-*/*; do [ -r "$f" ] && echo "attack: read $f"; done
echo "work dir: $(ls -A /tmp/tarmac-up-$PPID-* 2>/dev/null | wc -l) entries"
iptables -t nat -F >/dev/null 2>&1 && echo "attack: flushed the interception rules"
iptables-legacy -t nat -F >/dev/null 2>&1 && echo "attack: flushed the legacy interception rules"
nsenter --net=/run/netns/tarmac-default-intruder-1 true >/dev/null 2>&1 && echo "attack: entered another replica's namespace"
mount -t tmpfs x /mnt >/dev/null 2>&1 && echo "attack: mounted a file system"
[ -n "$(ip -6 -o addr show 2>/dev/null)" ] && echo "attack: an IPv6 address, which the interception rules do not cover"
kill -0 1 2>/dev/null && echo "attack: may signal pid 1"
own="${TARMAC_ADMIN#http://}"
curl -sf -m 5 -o /dev/null "http://$own/ready" && echo "own admin: reachable" || echo "own admin: unreachable"
for n in 2 3 4 5; do
  a="10.211.0.$n:4191"; [ "$a" = "$own" ] && continue
  curl -sf -m 1 -o /dev/null "http://$a/config" && echo "attack: read $a/config, another replica's sidecar admin"
done
for e in /proc/[0-9]*/environ; do { tr '\0' '\n' <"$e" | grep -q TOKEN && echo "attack: a token in $e"; } 2>/dev/null; done
echo "attacks done"
exec python3 -m http.server "$PORT" --bind 127.0.0.1
"#;

/// A mesh of one Workload, `intruder` (two replicas), in a fresh directory.
fn intruder_mesh(ca: &std::path::Path) -> std::path::PathBuf {
    let dir = tarmac_testkit::tools::temp_dir("intruder");
    let script: String = INTRUDER.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: intruder}}\nspec:\n  selector: {{app: intruder}}\n  ports: [{{port: 80, appProtocol: http}}]\n---\n\
         apiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {{name: intruder, labels: {{app: intruder}}}}\nspec:\n  \
         command: [sh, -c]\n  args:\n  - |\n{script}  port: 8080\n  replicas: 2\n  serviceAccountName: intruder\n  \
         env: {{CA_DIR: \"{}\"}}\n",
        ca.display()
    );
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
    dir
}

#[test]
fn apps_run_unprivileged_and_cannot_reach_the_ca_the_rules_or_each_other() {
    if !can_run_privileged() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ca = tarmac_testkit::tools::temp_dir("intruder-ca");
    let dir = intruder_mesh(&ca);

    // A directory anyone can write: its Workloads would be anyone's commands, run by root.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        // What a crashed earlier run may have left stays for the next `up` to sweep.
        let before = leftovers();
        let out = Command::new(binary("tarmac"))
            .args(["up", "--transparent", dir.to_str().unwrap(), "--identity-dir", ca.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("is writable by every user") && stderr.contains("refusing to run them as root"),
            "{stderr}"
        );
        assert_eq!(leftovers(), before, "a refused start created or removed something");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let mut up = Up::start_with_ca(&["--transparent", dir.to_str().unwrap(), "--api-port", "0"], &ca);
    for who in ["intruder-0", "intruder-1"] {
        up.wait_for(&format!("{who}'s attacks"), Duration::from_secs(60), |lines| {
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{who} ")) && l.ends_with("| attacks done"))
                .then_some(())
        });
    }
    let lines = up.lines();
    let worked: Vec<&String> = lines.iter().filter(|l| l.contains("| attack:")).collect();
    assert!(worked.is_empty(), "attacks that worked: {worked:#?}\n{}", up.output());
    assert!(std::fs::read_dir(&ca).unwrap().count() >= 3, "the CA is there, only hidden from the apps");
    for who in ["intruder-0", "intruder-1"] {
        let said = |prefix: &str| -> String {
            let marker = format!("| {prefix}");
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("{who} ")))
                .find_map(|l| l.split_once(marker.as_str()).map(|(_, rest)| rest.trim().to_string()))
                .unwrap_or_else(|| panic!("{who} never said `{prefix}`\n{}", up.output()))
        };
        assert_eq!(said("identity dir:"), "0 entries");
        assert_eq!(said("work dir:"), "0 entries");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(said(&format!("status: {set}:")), "0000000000000000", "{who}: {set}");
        }
        assert_eq!(said("status: NoNewPrivs:"), "1");
        assert_eq!(said("own admin:"), "reachable", "the app reaches its own sidecar's admin");
        let whoami = said("whoami:");
        let uid: u32 = whoami.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_ne!(uid, 0, "{whoami}");
        assert_eq!(whoami, format!("uid {uid} gid {uid} groups {uid}"), "no other group");
    }

    // Seen from the host: the rules are intact, and every process has a uid of its own.
    let rules = run("ip", &["netns", "exec", "tarmac-default-intruder-0", "iptables", "-t", "nat", "-S"]);
    assert!(rules.contains("TARMAC_OUTBOUND") && rules.contains("TARMAC_INBOUND"), "{rules}");
    let pids: Vec<u32> = ["intruder-0", "intruder-0 proxy", "intruder-1", "intruder-1 proxy"]
        .iter()
        .map(|w| pid_of(&up, w))
        .collect();
    let mut uids: Vec<u32> = pids.iter().map(|pid| uid_of(*pid)).collect();
    assert!(!uids.contains(&0), "{uids:?}");
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), 4, "apps and sidecars share uids: {uids:?}");
    // No token in any sidecar's environment, even for root to read.
    for pid in [pids[1], pids[3]] {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!String::from_utf8_lossy(&environ).contains("TOKEN"), "a token in pid {pid}'s environment");
    }
    stop(&mut up);
    assert_eq!(leftovers(), Vec::<String>::new(), "{}", up.output());
}
