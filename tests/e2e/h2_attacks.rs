//! HTTP/2 attacks, tested rather than assumed (issue 17): rapid reset (CVE-2023-44487), a
//! CONTINUATION flood (the CVE-2024-27316 class), and SETTINGS and PING floods that never
//! read the answers, each sent with raw frames by tests/peers/h2_flood.py against the
//! inbound and an outbound listener of a proxy process. While each runs, another client's
//! requests are served; afterwards the proxy's memory is what it was, give or take.

use std::net::SocketAddr;
use std::time::Duration;
use tarmac_testkit::echo::EchoServer;
use tarmac_testkit::proxy::{ProxyProcess, wait_ready};
use tarmac_testkit::servers::free_port;
use tarmac_testkit::tools::{http_get, peer_script};

/// Resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_leave_other_clients_served_and_memory_bounded() {
    let app = EchoServer::start("app").await;
    let (admin, inbound, outbound) = (free_port(), free_port(), free_port());
    let proxy = ProxyProcess::spawn(&format!(
        "admin: 127.0.0.1:{admin}\ninbound:\n  listen: 127.0.0.1:{inbound}\n  app: {}\noutbound:\n  services:\n  \
         - name: app\n    listen: 127.0.0.1:{outbound}\n    endpoints: [{{addr: \"{}\"}}]\n",
        app.addr, app.addr
    ));
    wait_ready(([127, 0, 0, 1], admin).into(), Duration::from_secs(10)).await;
    let pid = proxy.child.id();
    let listeners: [SocketAddr; 2] = [([127, 0, 0, 1], inbound).into(), ([127, 0, 0, 1], outbound).into()];
    // Warm up both paths before the baseline is read.
    for listener in listeners {
        assert_eq!(http_get(listener, "/warm").await.0, 200);
    }
    let before = rss_mib(pid);
    let mut results = Vec::new();
    for listener in listeners {
        for (attack, count) in
            [("rapid_reset", 20_000), ("continuation", 2_000), ("settings", 100_000), ("ping", 100_000)]
        {
            let script = peer_script("h2_flood.py");
            let port = listener.port().to_string();
            let count = count.to_string();
            let flood = tokio::task::spawn_blocking(move || {
                std::process::Command::new("python3")
                    .args([script.as_str(), "127.0.0.1", &port, attack, &count])
                    .output()
                    .expect("python3")
            });
            // Another client, served all along.
            let mut served = 0;
            while !flood.is_finished() {
                let (status, body) = http_get(listener, "/meanwhile").await;
                assert_eq!(status, 200, "{attack} on {listener}: {body}");
                served += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let out = flood.await.unwrap();
            let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(out.status.success(), "{attack}: {report} {}", String::from_utf8_lossy(&out.stderr));
            results.push(format!("{listener} {report} (other client served {served} times)"));
            assert_eq!(http_get(listener, "/after").await.0, 200, "{attack} on {listener}");
        }
    }
    let after = rss_mib(pid);
    eprintln!("{}\nRSS {before:.1} MiB before, {after:.1} MiB after", results.join("\n"));
    assert!(after < before + 64.0, "RSS grew from {before:.1} to {after:.1} MiB:\n{}", results.join("\n"));
    // The floods that must end the attacker's connection did.
    for line in &results {
        if line.contains("\"continuation\"") {
            assert!(line.contains("\"closed\": true") || !line.contains("\"goaway\": null"), "{line}");
        }
    }
}
