//! The traffic-management examples, run as a user runs them (`tarmac up examples/...`):
//! the seed's canary (`examples/canary`: 5 % of German mobile users to ratings v2,
//! everyone else v1) and fault injection (`examples/faults`: 5 % aborted with 503, 10 %
//! delayed 200 ms) as `tarmac stat` shows it. Requests go through a caller's sidecar, at
//! the `RATINGS_URL` listener its `tarmac up` line prints, since routes apply there.

use super::observe::stat;
use super::up::Up;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Requests in flight at once (one keep-alive connection each).
const CONCURRENCY: usize = 8;

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).to_str().unwrap().to_string()
}

/// Starts `tarmac up DIR --api-port 0`, waits (bounded) for `replicas` to be ready, and
/// returns it with the API's address and `caller`'s sidecar listener for `ratings`.
fn start(dir: &str, replicas: &[&str], caller: &str) -> (Up, String, SocketAddr) {
    let (up, api) = crate::observe::up_and_ready(dir, replicas);
    let line = format!("| {caller}: PORT=");
    let ratings = up.wait_for("the caller's RATINGS_URL", Duration::from_secs(10), |lines| {
        let line = lines.iter().find(|l| l.contains(&line))?;
        let (_, rest) = line.split_once(" RATINGS_URL=http://")?;
        rest.split([',', ' ']).next()?.parse().ok()
    });
    (up, api, ratings)
}

/// A keep-alive HTTP/1.1 client on one connection.
struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    /// GET `path` with `headers`: the status and the `x-sample-version` header (the ratings
    /// version that answered), or why there was no answer.
    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
            let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().unwrap();
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut request = http::Request::get(path).header("host", "ratings");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender.send_request(request.body(Empty::new()).unwrap()).await.map_err(|e| {
            self.sender = None;
            e.to_string()
        })?;
        let status = response.status().as_u16();
        let version = response
            .headers()
            .get("x-sample-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        response.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok((status, version))
    }
}

/// Sends `count` requests with `headers`, [`CONCURRENCY`] at a time; the answers.
async fn send(
    addr: SocketAddr,
    count: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<(u16, String)> {
    let remaining = Arc::new(Mutex::new(count));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let remaining = remaining.clone();
        tasks.spawn(async move {
            let mut client = Client::new(addr);
            let mut answers = Vec::new();
            loop {
                let id = {
                    let mut left = remaining.lock().await;
                    if *left == 0 {
                        return answers;
                    }
                    *left -= 1;
                    *left
                };
                answers.push(client.get(&format!("/ratings/{id}"), headers).await.unwrap_or_else(|e| (0, e)));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(answers) = tasks.join_next().await {
        all.extend(answers.unwrap());
    }
    all
}

/// Waits (bounded) until `addr` answers 200: the caller's sidecar knows the backends.
async fn wait_until_answering(addr: SocketAddr, headers: &'static [(&'static str, &'static str)]) {
    let mut client = Client::new(addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.get("/ratings/1", headers).await {
            Ok((200, _)) => return,
            last => {
                assert!(tokio::time::Instant::now() < deadline, "no 200 from {addr} within 30 s: {last:?}")
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const GERMAN_MOBILE: &[(&str, &str)] = &[("x-country", "DE"), ("x-device", "mobile")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_sends_five_percent_of_german_mobile_users_to_v2_and_nobody_else() {
    let (up, _api, ratings) =
        start(&example("canary"), &["ratings-v1-0", "ratings-v2-0", "client-0"], "client-0");
    let test = async {
        // Both versions known to the client's sidecar before counting: the canary's v2
        // share must not be the share of a mesh still starting.
        wait_until_answering(ratings, &[]).await;
        let v2_seen = async {
            let mut client = Client::new(ratings);
            while client.get("/", GERMAN_MOBILE).await.map(|(_, v)| v) != Ok("v2".into()) {}
        };
        tokio::time::timeout(Duration::from_secs(30), v2_seen).await.expect("ratings-v2 reachable");

        let german_mobile = send(ratings, 10_000, GERMAN_MOBILE).await;
        let failed: Vec<_> = german_mobile.iter().filter(|(status, _)| *status != 200).take(5).collect();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        let v2 = german_mobile.iter().filter(|(_, version)| version == "v2").count();
        let v1 = german_mobile.iter().filter(|(_, version)| version == "v1").count();
        assert_eq!(v1 + v2, 10_000);
        // Binomial(10,000, 5 %): mean 500, standard deviation 21.8. Within 5 standard
        // deviations (391..=609), a correct split fails this less than once in a million runs;
        // a 90/10 or 99/1 split, or none, fails it.
        assert!((391..=609).contains(&v2), "German mobile users: {v2} of 10,000 to v2, expected 500 ± 109");

        // Everyone else, 100 % v1: one header alone is not enough, nor other values.
        for headers in [
            &[("x-country", "DE"), ("x-device", "desktop")][..],
            &[("x-country", "FR"), ("x-device", "mobile")][..],
            &[("x-country", "DE")][..],
            &[][..],
        ] {
            let others = send(ratings, 250, headers).await;
            assert!(
                others.iter().all(|(status, version)| *status == 200 && version == "v1"),
                "{headers:?} must all get v1: {:?}",
                others.iter().filter(|(s, v)| *s != 200 || v != "v1").take(5).collect::<Vec<_>>()
            );
        }
    };
    if tokio::time::timeout(Duration::from_secs(240), test).await.is_err() {
        panic!("the canary test did not finish within 240 s\n{}", up.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_show_in_tarmac_stat_as_lost_success_and_latency() {
    let (up, api, ratings) = start(&example("faults"), &["ratings-0", "traffic-0"], "traffic-0");
    let test = async {
        wait_until_answering(ratings, &[]).await;
        // 2,000 requests of ours, beside the example's own 20 per second.
        let answers = send(ratings, 2_000, &[]).await;
        let aborted = answers.iter().filter(|(status, _)| *status == 503).count();
        let other_failures: Vec<_> = answers.iter().filter(|(s, _)| *s != 200 && *s != 503).take(5).collect();
        assert!(other_failures.is_empty(), "{other_failures:?}");
        // Binomial(2,000, 5 %): mean 100, standard deviation 9.7; 5 of them either side.
        assert!((51..=149).contains(&aborted), "{aborted} of 2,000 aborted, expected 100 ± 49");
        // One more telemetry reading (every 2 s) to include the last of them.
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    if tokio::time::timeout(Duration::from_secs(120), test).await.is_err() {
        panic!("the faults test did not finish within 120 s\n{}", up.output());
    }
    let (routes, edges, services) = tokio::task::spawn_blocking(move || {
        (stat(&api, "route", "1m"), stat(&api, "edge", "1m"), stat(&api, "service", "1m"))
    })
    .await
    .unwrap();
    // What the callers see, per route rule: about 5 % fewer successes.
    let flaky = routes
        .iter()
        .find(|r| r["service"] == "ratings" && r["name"] == "flaky")
        .unwrap_or_else(|| panic!("no row for the rule `flaky` of ratings: {routes:?}"));
    assert!(flaky["requests"].as_u64().unwrap() >= 2_000, "{flaky}");
    let success = flaky["success_rate"].as_f64().unwrap();
    // 5 % ± 5 standard deviations of at least 2,000 requests (± 2.4 points).
    assert!((0.926..=0.974).contains(&success), "success rate {success}: {flaky}");
    // And per edge, with latency: the 10 % of requests delayed by 200 ms make a tail; the
    // p95 falls among them, the median does not.
    let edge = edges
        .iter()
        .find(|r| r["src_workload"] == "traffic" && r["dst_service"] == "ratings")
        .unwrap_or_else(|| panic!("no edge traffic -> ratings: {edges:?}"));
    let success = edge["success_rate"].as_f64().unwrap();
    assert!((0.926..=0.974).contains(&success), "success rate {success}: {edge}");
    let p95 = edge["latency_ms_p95"].as_f64().unwrap_or_else(|| panic!("no p95: {edge}"));
    let p50 = edge["latency_ms_p50"].as_f64().unwrap_or_else(|| panic!("no p50: {edge}"));
    assert!(p95 >= 200.0, "p95 {p95} ms should include the 200 ms delay: {edge}");
    assert!(p50 < 100.0, "p50 {p50} ms should not: {edge}");
    // ratings itself never saw the aborted requests: all it answered succeeded.
    let server = services.iter().find(|r| r["name"] == "ratings").expect("a ratings row");
    assert_eq!(server["success_rate"].as_f64(), Some(1.0), "{server}");
    drop(up);
}
