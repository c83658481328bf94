//! `appProtocol: tcp` and `opaque` on a Service port, end to end: `tarmac up
//! tests/fixtures/opaque` (redis-server and a server-speaks-first banner service, on ports
//! Tarmac has no default for), then real clients through one replica's sidecar to the
//! other's. The caller's sidecar must skip protocol detection for them, as the Service
//! says: the banner arrives before the client sends anything (detection would hold it for
//! its 10 s timeout), and redis-cli's commands work across both sidecars.

use crate::up::{Up, get_ok, replica_addr, stop};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tarmac_testkit::metrics::sum;

fn ready(up: &Up, replica: &str) {
    up.wait_for(&format!("{replica} ready"), Duration::from_secs(60), |lines| {
        lines.iter().any(|l| l.contains(&format!("| {replica} ready: "))).then_some(())
    });
}

fn redis_cli(listener: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &listener.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli (run scripts/setup-test-deps.sh)");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn opaque_and_tcp_app_protocols_skip_detection_across_the_mesh() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/opaque");
    let mut up = Up::start_with(&[dir.to_str().unwrap()]);
    ready(&up, "cache-0");
    ready(&up, "banner-0");
    // The banner app's sidecar calls cache; the cache app's sidecar calls banner.
    let (banner_admin, cache_listener) =
        (replica_addr(&up, "banner-0", "admin "), replica_addr(&up, "banner-0", "CACHE_URL=http://"));
    let (cache_admin, banner_listener) =
        (replica_addr(&up, "cache-0", "admin "), replica_addr(&up, "cache-0", "BANNER_URL=http://"));

    // appProtocol: tcp, a server that speaks first. Retried until discovery has sent the
    // endpoint (before that the sidecar has nowhere to send the connection).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let banner = loop {
        let attempt = || -> Result<(String, String), String> {
            let stream = TcpStream::connect(banner_listener).map_err(|e| e.to_string())?;
            // Well under the 10 s detection timeout a detected connection would wait.
            stream.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).map_err(|e| format!("no banner: {e}"))?;
            (&stream).write_all(b"HELO mesh\r\n").map_err(|e| e.to_string())?;
            let mut echo = String::new();
            reader.read_line(&mut echo).map_err(|e| format!("no echo: {e}"))?;
            Ok((first, echo))
        };
        match attempt() {
            Ok(answer) if !answer.0.is_empty() => break answer,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "banner through the mesh: {other:?}\n{}",
                    up.output()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(banner, ("220 banner-0 ready\r\n".to_string(), "HELO mesh\r\n".to_string()));

    // appProtocol: opaque, redis.
    assert_eq!(redis_cli(cache_listener, &["SET", "tarmac", "opaque"]), "OK");
    assert_eq!(redis_cli(cache_listener, &["GET", "tarmac"]), "opaque");

    // The callers' sidecars skipped detection (the Service said what follows); none timed
    // out waiting for a client's first bytes; and the connections crossed over mTLS.
    for (admin, target) in [(cache_admin, "banner"), (banner_admin, "cache")] {
        let m = get_ok(admin, "/metrics");
        let skipped =
            sum(&m, "tarmac_protocol_detect_total", &[("direction", "outbound"), ("result", "skipped")]);
        assert!(skipped >= 1.0, "{target}: {m}");
        assert_eq!(sum(&m, "tarmac_protocol_detect_total", &[("result", "timeout")]), 0.0, "{target}: {m}");
        assert!(sum(&m, "tarmac_tcp_read_bytes_total", &[("target", target)]) > 0.0, "{target}: {m}");
        let tls = sum(&m, "tarmac_tls_handshakes_total", &[("direction", "outbound"), ("result", "ok")]);
        assert!(tls >= 1.0, "{target}: {m}");
    }
    stop(&mut up);
}
