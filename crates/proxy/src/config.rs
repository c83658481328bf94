//! The proxy's configuration: a typed structure parsed once, from YAML.
//!
//! Every field is documented here and in `docs/proxy-config.md`; unknown fields are refused
//! so that a typo never silently turns a feature off. Durations are written `500ms`, `10s`,
//! `5m` or `1h`.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use tarmac_transport::host_port::HostPort;

/// Ports whose protocols let the server speak first or are never HTTP, so protocol
/// detection is skipped: SMTP, submission, MySQL, PostgreSQL, Redis, memcached, and others
/// that would otherwise stall for the detection timeout.
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 4567, 4568, 5432, 6379, 9300, 11211];

/// The whole configuration of one proxy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Admin listener: `/metrics`, `/ready`, `/live`, `/config`. Loopback by default.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Tokio worker threads. One is the sidecar default: a proxy beside each workload
    /// should cost a fraction of a core, not a core per CPU.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Traffic to the local workload. Absent: the proxy handles no inbound traffic.
    #[serde(default)]
    pub inbound: Option<InboundConfig>,
    /// Traffic from the local workload to other services. Absent: none.
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
    /// Ports whose connections skip protocol detection and are forwarded as opaque TCP:
    /// the destination port for transparent connections, the listener port for explicit
    /// ones, the app port inbound.
    #[serde(default = "default_opaque_ports")]
    pub opaque_ports: Vec<u16>,
    /// Protection against bad or abusive input.
    #[serde(default)]
    pub limits: Limits,
    /// The control plane, for services whose endpoints are discovered. Absent: everything
    /// comes from this file (static mode).
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// The workload's identity for mTLS between proxies. Absent: no mTLS (connections to
    /// meshed endpoints are plaintext HTTP/2).
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    /// Tracing (W3C/B3 trace context, spans over OTLP) and access logs; off by default.
    /// With `control.workload` set, the control plane's Telemetry settings for the
    /// workload replace these as they change (all but `access_log_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

/// Where the proxy's certificate comes from, and what it trusts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// PEM file of the mesh's trust anchors: peers must chain to one of them.
    pub trust_anchors: String,
    /// A certificate (PEM, leaf first, then intermediates) and its PKCS#8 key, both files;
    /// for meshes without a control plane. Absent: the proxy generates a key and gets its
    /// certificate from the control plane (`control`), proving itself with a bootstrap
    /// token, and renews it at about 70 % of its life.
    #[serde(default)]
    pub certificate: Option<CertificateFiles>,
    /// Descriptor of an inherited pipe holding the one-time bootstrap token (how `tarmac up`
    /// hands it over: never in the environment, where /proc/PID/environ shows it). Read
    /// to its end at start and closed.
    #[serde(default)]
    pub token_fd: Option<i32>,
    /// Or a file holding it: readable by its owner only (mode 0600), and removed once read.
    #[serde(default)]
    pub token_file: Option<String>,
    /// On Kubernetes, instead of a bootstrap token: the projected ServiceAccount token
    /// file (for the control plane's audience). Read again at every bootstrap attempt
    /// (the kubelet rotates it) and left in place; the control plane checks it with a
    /// TokenReview and certifies the token's service account, which must be
    /// `control.namespace`/`control.service_account`.
    #[serde(default)]
    pub service_account_token: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: String,
    pub key: String,
}

/// What the inbound side does with connections that are not mesh mTLS.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Accept them, labelled `tls="false"` (clients outside the mesh keep working).
    #[default]
    Permissive,
    /// Refuse them: only other proxies of the mesh, authenticated, get through.
    Strict,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The control plane's discovery address: `IP:PORT`, or `NAME:PORT` (a Kubernetes
    /// Service's name, `tarmac-control.tarmac-system.svc:4180`), resolved at every
    /// connection.
    #[serde(deserialize_with = "host_port::de", serialize_with = "host_port::ser")]
    pub addr: HostPort,
    /// This proxy's workload, as the control plane knows it.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub workload: String,
    #[serde(default = "default_namespace")]
    pub service_account: String,
}

/// `HostPort` as its `HOST:PORT` string, with the reason a bad one is refused.
mod host_port {
    use serde::{Deserialize, Deserializer, Serializer};
    use tarmac_transport::host_port::HostPort;

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<HostPort, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }

    pub fn ser<S: Serializer>(addr: &HostPort, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }
}

fn default_namespace() -> String {
    "default".to_string()
}

/// Where a service's endpoints come from when discovered.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverConfig {
    /// The Service's name; defaults to the service's `name`.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The Service port.
    pub port: u16,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Where other proxies and non-mesh clients connect.
    pub listen: SocketAddr,
    /// The application's address. Required unless `transparent`. In transparent mode a
    /// connection goes to its original destination (`SO_ORIGINAL_DST`: the app's address
    /// in this network namespace), and `app` serves only connections that were not
    /// redirected (sent straight to the inbound port: their original destination is one
    /// of this proxy's own listeners, or unknown); without `app` those are refused, counted
    /// as `tarmac_connections_refused_total{reason="no_target"}`.
    #[serde(default)]
    pub app: Option<SocketAddr>,
    /// Connections arrive redirected by iptables; their original destination is read with
    /// `SO_ORIGINAL_DST`.
    #[serde(default)]
    pub transparent: bool,
    /// `permissive` (default) also accepts plaintext from clients outside the mesh;
    /// `strict` accepts only mTLS from other proxies. Needs `identity`.
    #[serde(default)]
    pub mtls: MtlsMode,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Listener for connections redirected by iptables (transparent mode). Absent: only
    /// the explicit per-service listeners exist.
    #[serde(default)]
    pub transparent_listen: Option<SocketAddr>,
    /// Services this workload calls.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service's name, used in metrics (`target` label).
    pub name: String,
    /// Explicit mode: a local port the app connects to in order to reach this service.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Transparent mode: destination addresses (a virtual IP and port) that mean this
    /// service when the app connects to them.
    #[serde(default)]
    pub addrs: Vec<SocketAddr>,
    /// `detect` (default) sniffs each connection; `http1`, `http2` and `opaque` skip it.
    #[serde(default)]
    pub protocol: Protocol,
    /// The service's endpoints; each request goes to one of them.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Instead of `endpoints`: follow this Service through the control plane (`control`).
    /// The last endpoints received stay in use while the control plane is unreachable.
    #[serde(default)]
    pub discover: Option<DiscoverConfig>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Detect,
    Http1,
    Http2,
    Opaque,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// The endpoint is another Tarmac proxy's inbound listener: HTTP to it is carried
    /// over one multiplexed HTTP/2 connection whatever the app spoke.
    #[serde(default)]
    pub meshed: bool,
    /// The SPIFFE ID a meshed endpoint must present. With `identity` configured, the
    /// connection is mTLS and refused if the endpoint proves another identity.
    #[serde(default)]
    pub identity: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// How long protocol detection waits for a client's first bytes before closing the
    /// connection (on a port not declared opaque: see [`crate::detect::Detection`]).
    #[serde(with = "duration")]
    pub detect_timeout: Duration,
    /// Connections open at once on each side, inbound and outbound apart (so that a flood
    /// of connections from outside cannot stop the app's own calls); more are refused.
    pub max_connections: usize,
    /// Inbound connections open at once from one client address; more are refused, so
    /// that one client cannot take every inbound connection.
    pub max_connections_per_client: usize,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Opaque TCP connections idle this long in both directions are closed.
    #[serde(with = "duration")]
    pub tcp_idle_timeout: Duration,
    /// HTTP/1 client connections with no request open for this long are closed: idle
    /// keep-alive connections, and clients that take this long to send a request head.
    #[serde(with = "duration")]
    pub http_idle_timeout: Duration,
    /// Connecting to an endpoint or the app fails after this long.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// On SIGTERM, in-flight work gets this long to finish before the proxy exits.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            max_header_bytes: 64 * 1024,
            tcp_idle_timeout: Duration::from_secs(3600),
            http_idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The documented defaults, with neither side configured: a base for configurations
/// built in code (`tarmac up`, the benchmark, tests) and written out with [`Config::to_yaml`].
impl Default for Config {
    fn default() -> Self {
        Self {
            admin: default_admin(),
            workers: default_workers(),
            inbound: None,
            outbound: None,
            opaque_ports: default_opaque_ports(),
            limits: Limits::default(),
            control: None,
            identity: None,
            telemetry: None,
        }
    }
}

fn default_admin() -> SocketAddr {
    ([127, 0, 0, 1], 4191).into()
}
fn default_workers() -> usize {
    1
}
fn default_opaque_ports() -> Vec<u16> {
    DEFAULT_OPAQUE_PORTS.to_vec()
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: field `{field}`: {message}")]
    Invalid { origin: String, field: String, message: String },
}

impl Config {
    /// Reads and validates a YAML file.
    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_string(), source })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates YAML; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_saphyr::from_str(text)
            .map_err(|e| ConfigError::Parse { origin: origin.to_string(), message: e.to_string() })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The effective configuration as YAML, for `/config` and startup logs.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Checks what types cannot: consistency between fields.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field,
            message,
        };
        if self.inbound.is_none() && self.outbound.is_none() {
            return Err(invalid(
                "inbound".into(),
                "neither `inbound` nor `outbound` is set: the proxy would do nothing".into(),
            ));
        }
        if let Some(telemetry) = &self.telemetry
            && let Err((field, message)) = telemetry.validate()
        {
            return Err(invalid(field, message));
        }
        if self.workers == 0 {
            return Err(invalid("workers".into(), "must be at least 1".into()));
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(invalid("limits.max_header_bytes".into(), "must be at least 8192".into()));
        }
        if self.limits.http_idle_timeout.is_zero() {
            return Err(invalid("limits.http_idle_timeout".into(), "must be more than 0".into()));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections".into(), "must be at least 1".into()));
        }
        if self.limits.max_connections_per_client == 0 {
            return Err(invalid("limits.max_connections_per_client".into(), "must be at least 1".into()));
        }
        let own = self.listen_addrs();
        let mut seen = HashSet::new();
        for (field, addr) in &own {
            if !seen.insert(*addr) {
                return Err(invalid(field.clone(), format!("{addr} is used by two listeners")));
            }
        }
        if let Some(identity) = &self.identity
            && identity.certificate.is_none()
            && self.control.is_none()
        {
            return Err(invalid(
                "identity".into(),
                "without `identity.certificate`, the certificate comes from the control plane: set `control`"
                    .into(),
            ));
        }
        if let Some(identity) = &self.identity
            && identity.service_account_token.is_some()
        {
            let other = match (identity.token_fd, &identity.token_file, &identity.certificate) {
                (Some(_), _, _) => Some("token_fd"),
                (_, Some(_), _) => Some("token_file"),
                (_, _, Some(_)) => Some("certificate"),
                _ => None,
            };
            if let Some(other) = other {
                return Err(invalid(
                    "identity.service_account_token".into(),
                    format!(
                        "set either a ServiceAccount token (Kubernetes) or `identity.{other}`, not both: the control plane checks one kind of proof"
                    ),
                ));
            }
        }
        if let Some(inbound) = &self.inbound {
            if inbound.mtls == MtlsMode::Strict && self.identity.is_none() {
                return Err(invalid(
                    "inbound.mtls".into(),
                    "`strict` refuses everything but mTLS, which needs `identity`".into(),
                ));
            }
            if inbound.app.is_none() && !inbound.transparent {
                return Err(invalid(
                    "inbound.app".into(),
                    "required unless `inbound.transparent: true`".into(),
                ));
            }
            if let Some(app) = inbound.app
                && own.iter().any(|(_, a)| *a == app)
            {
                return Err(invalid(
                    "inbound.app".into(),
                    format!("{app} is one of this proxy's own listeners; it would loop"),
                ));
            }
        }
        if let Some(outbound) = &self.outbound {
            let mut names = HashSet::new();
            let mut addrs = HashSet::new();
            for (i, svc) in outbound.services.iter().enumerate() {
                let at = format!("outbound.services[{i}]");
                if svc.name.is_empty() {
                    return Err(invalid(format!("{at}.name"), "must not be empty".into()));
                }
                if !names.insert(svc.name.as_str()) {
                    return Err(invalid(format!("{at}.name"), format!("`{}` is listed twice", svc.name)));
                }
                if svc.listen.is_none() && svc.addrs.is_empty() {
                    return Err(invalid(
                        at.to_string(),
                        format!(
                            "service `{}` has neither `listen` nor `addrs`: nothing can reach it",
                            svc.name
                        ),
                    ));
                }
                if !svc.addrs.is_empty() && outbound.transparent_listen.is_none() {
                    return Err(invalid(format!("{at}.addrs"), "needs `outbound.transparent_listen`".into()));
                }
                for addr in &svc.addrs {
                    if !addrs.insert(*addr) {
                        return Err(invalid(
                            format!("{at}.addrs"),
                            format!("{addr} belongs to two services"),
                        ));
                    }
                }
                if let Some(discover) = &svc.discover {
                    if self.control.is_none() {
                        return Err(invalid(
                            format!("{at}.discover"),
                            "needs `control` (the control plane's address)".into(),
                        ));
                    }
                    if !svc.endpoints.is_empty() {
                        return Err(invalid(
                            format!("{at}.discover"),
                            "set `endpoints` or `discover`, not both".into(),
                        ));
                    }
                    if discover.port == 0 {
                        return Err(invalid(format!("{at}.discover.port"), "must be 1-65535".into()));
                    }
                }
                for (j, ep) in svc.endpoints.iter().enumerate() {
                    if let Some(id) = &ep.identity
                        && let Err(e) = id.parse::<tarmac_identity::SpiffeId>()
                    {
                        return Err(invalid(format!("{at}.endpoints[{j}].identity"), e.to_string()));
                    }
                    if own.iter().any(|(_, a)| reaches(*a, ep.addr)) {
                        return Err(invalid(
                            format!("{at}.endpoints[{j}].addr"),
                            format!("{} is one of this proxy's own listeners; it would loop", ep.addr),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every address this proxy listens on, with the field that names it.
    pub fn listen_addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut out = vec![("admin".to_string(), self.admin)];
        if let Some(inbound) = &self.inbound {
            out.push(("inbound.listen".into(), inbound.listen));
        }
        if let Some(outbound) = &self.outbound {
            if let Some(addr) = outbound.transparent_listen {
                out.push(("outbound.transparent_listen".into(), addr));
            }
            for (i, svc) in outbound.services.iter().enumerate() {
                if let Some(addr) = svc.listen {
                    out.push((format!("outbound.services[{i}].listen"), addr));
                }
            }
        }
        // Port 0 asks the OS for a free port: such addresses cannot collide.
        out.retain(|(_, a)| a.port() != 0);
        out
    }
}

/// Whether connecting to `dst` would land on `listener` (a wildcard listener also takes
/// loopback connections to its port).
fn reaches(listener: SocketAddr, dst: SocketAddr) -> bool {
    listener == dst
        || (listener.ip().is_unspecified()
            && listener.port() == dst.port()
            && (dst.ip().is_loopback() || dst.ip().is_unspecified()))
}

/// Durations as human strings: `250ms`, `10s`, `5m`, `1h`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Text that is not a duration of the proxy's configuration.
    #[derive(Debug, thiserror::Error)]
    pub enum DurationError {
        #[error("`{0}` is not a duration; write e.g. `500ms`, `10s`, `5m`")]
        NotANumber(String),
        #[error("`{0}` has no unit; write e.g. `500ms`, `10s`, `5m`, `1h`")]
        NoUnit(String),
    }

    pub fn parse(s: &str) -> Result<Duration, DurationError> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num.parse().map_err(|_| DurationError::NotANumber(s.to_string()))?;
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(DurationError::NoUnit(s.to_string())),
        };
        Ok(Duration::from_secs_f64(secs))
    }

    pub fn format(d: &Duration) -> String {
        let ms = d.as_millis();
        if !ms.is_multiple_of(1000) { format!("{ms}ms") } else { format!("{}s", ms / 1000) }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "admin: 127.0.0.1:4191\ninbound:\n  listen: 127.0.0.1:4143\n  app: 127.0.0.1:8080\n";
    const CLIENT: &str = r#"
admin: 127.0.0.1:4192
outbound:
  services:
    - name: books
      listen: 127.0.0.1:7001
      endpoints: [{addr: "127.0.0.1:4143", meshed: true}]   # another proxy
"#;

    #[test]
    fn the_documented_minimal_pair_parses() {
        let server = Config::from_yaml(SERVER, "server.yaml").unwrap();
        assert_eq!(server.inbound.unwrap().app, Some("127.0.0.1:8080".parse().unwrap()));
        let client = Config::from_yaml(CLIENT, "client.yaml").unwrap();
        let out = client.outbound.unwrap();
        assert_eq!(out.services[0].name, "books");
        assert!(out.services[0].endpoints[0].meshed);
        assert_eq!(client.opaque_ports, DEFAULT_OPAQUE_PORTS);
        assert_eq!(client.limits.detect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = Config::from_yaml(
            "admin: 127.0.0.1:1\ninbound:\n  listen: 127.0.0.1:2\n  app: 127.0.0.1:3\n  aplication: x\n",
            "x.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.yaml") && err.contains("aplication"), "{err}");
    }

    #[test]
    fn endpoint_on_own_listener_is_refused() {
        let yaml = "outbound:\n  services:\n  - name: a\n    listen: 127.0.0.1:7001\n    endpoints: [{addr: 127.0.0.1:7001}]\n";
        let err = Config::from_yaml(yaml, "loop.yaml").unwrap_err().to_string();
        assert!(err.contains("outbound.services[0].endpoints[0].addr") && err.contains("loop"), "{err}");
    }

    #[test]
    fn endpoint_on_own_wildcard_listener_is_refused() {
        let yaml = "inbound: {listen: 0.0.0.0:4143, app: 127.0.0.1:8080}\noutbound:\n  services:\n  - name: a\n    listen: 127.0.0.1:7001\n    endpoints: [{addr: 127.0.0.1:4143, meshed: true}]\n";
        let err = Config::from_yaml(yaml, "loop.yaml").unwrap_err().to_string();
        assert!(err.contains("endpoints[0].addr") && err.contains("loop"), "{err}");
    }

    #[test]
    fn inbound_needs_an_app_unless_transparent() {
        let err = Config::from_yaml("inbound: {listen: 127.0.0.1:4143}\n", "in.yaml").unwrap_err();
        assert!(err.to_string().contains("inbound.app"), "{err}");
        Config::from_yaml("inbound: {listen: 127.0.0.1:4143, transparent: true}\n", "in.yaml").unwrap();
    }

    /// The reference in docs/proxy-config.md sets every field; it must stay parseable.
    #[test]
    fn the_documented_reference_parses() {
        let doc = include_str!("../../../docs/proxy-config.md");
        let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let end = start + doc[start..].find("```").expect("end of block");
        let config = Config::from_yaml(&doc[start..end], "docs/proxy-config.md").unwrap();
        let out = config.outbound.unwrap();
        assert_eq!(out.services[0].endpoints.len(), 2);
        assert_eq!(config.limits.tcp_idle_timeout, Duration::from_secs(3600));
        assert_eq!(config.limits.http_idle_timeout, Duration::from_secs(30));
        let telemetry = config.telemetry.unwrap();
        assert_eq!(
            (telemetry.sampling_percent, telemetry.collector.as_deref()),
            (10.0, Some("127.0.0.1:4317"))
        );
    }

    #[test]
    fn telemetry_fields_are_checked_by_name() {
        let base = "inbound: {listen: 127.0.0.1:4143, app: 127.0.0.1:8080}\n";
        let err = Config::from_yaml(&format!("{base}telemetry: {{sampling_percent: 101}}\n"), "t.yaml")
            .unwrap_err();
        assert!(err.to_string().contains("telemetry.sampling_percent"), "{err}");
        let err =
            Config::from_yaml(&format!("{base}telemetry: {{collector: otel}}\n"), "t.yaml").unwrap_err();
        assert!(err.to_string().contains("telemetry.collector"), "{err}");
        let err =
            Config::from_yaml(&format!("{base}telemetry: {{access_log: xml}}\n"), "t.yaml").unwrap_err();
        assert!(err.to_string().contains("xml"), "{err}");
    }

    #[test]
    fn a_zero_http_idle_timeout_is_refused_by_name() {
        let yaml =
            "inbound: {listen: 127.0.0.1:4143, app: 127.0.0.1:8080}\nlimits: {http_idle_timeout: 0s}\n";
        let err = Config::from_yaml(yaml, "idle.yaml").unwrap_err().to_string();
        assert!(err.contains("idle.yaml") && err.contains("limits.http_idle_timeout"), "{err}");
        let ok = yaml.replace("0s", "2s");
        assert_eq!(
            Config::from_yaml(&ok, "idle.yaml").unwrap().limits.http_idle_timeout,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn discovered_services_need_a_control_plane() {
        let yaml =
            "outbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:7001\n    discover: {port: 80}\n";
        let err = Config::from_yaml(yaml, "d.yaml").unwrap_err().to_string();
        assert!(err.contains("outbound.services[0].discover") && err.contains("control"), "{err}");
        let ok = format!("control: {{addr: 127.0.0.1:8086, workload: web}}\n{yaml}");
        let config = Config::from_yaml(&ok, "d.yaml").unwrap();
        assert_eq!(config.outbound.unwrap().services[0].discover.as_ref().unwrap().namespace, "default");
    }

    #[test]
    fn durations_round_trip() {
        for (text, d) in [("250ms", 250), ("10s", 10_000), ("2m", 120_000), ("1h", 3_600_000)] {
            let parsed = duration::parse(text).unwrap();
            assert_eq!(parsed, Duration::from_millis(d));
            assert_eq!(duration::parse(&duration::format(&parsed)).unwrap(), parsed);
        }
        assert!(duration::parse("10").unwrap_err().to_string().contains("no unit"));
        assert!(duration::parse("fast").is_err());
    }

    /// Every section and field set away from its default: what is written is read back
    /// the same, field names as the reference gives them.
    #[test]
    fn a_serialized_config_parses_back_equal() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let config = Config {
            admin: addr(4192),
            workers: 2,
            inbound: Some(InboundConfig {
                listen: addr(4143),
                app: Some(addr(8080)),
                transparent: true,
                mtls: MtlsMode::Strict,
            }),
            outbound: Some(OutboundConfig {
                transparent_listen: Some(addr(4140)),
                services: vec![
                    ServiceConfig {
                        name: "books".into(),
                        listen: Some(addr(7001)),
                        addrs: vec!["10.96.0.7:80".parse().unwrap()],
                        protocol: Protocol::Http2,
                        endpoints: vec![EndpointConfig {
                            addr: addr(4144),
                            meshed: true,
                            identity: Some("spiffe://cluster.local/ns/default/sa/books".into()),
                        }],
                        discover: None,
                    },
                    ServiceConfig {
                        name: "authors".into(),
                        listen: Some(addr(7002)),
                        addrs: Vec::new(),
                        protocol: Protocol::Detect,
                        endpoints: Vec::new(),
                        discover: Some(DiscoverConfig {
                            service: Some("writers".into()),
                            namespace: "library".into(),
                            port: 80,
                        }),
                    },
                ],
            }),
            opaque_ports: vec![6379],
            limits: Limits {
                detect_timeout: Duration::from_millis(1500),
                max_connections: 7,
                max_connections_per_client: 3,
                max_header_bytes: 16_384,
                tcp_idle_timeout: Duration::from_secs(60),
                http_idle_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_millis(250),
                drain_timeout: Duration::from_secs(1),
            },
            control: Some(ControlConfig {
                addr: addr(4180).into(),
                namespace: "library".into(),
                workload: "web".into(),
                service_account: "web".into(),
            }),
            identity: Some(IdentityConfig {
                trust_anchors: "/ca/anchors.pem".into(),
                certificate: None,
                token_fd: Some(3),
                token_file: None,
                service_account_token: None,
            }),
            telemetry: Some(crate::telemetry::TelemetryConfig {
                service_name: Some("web".into()),
                sampling_percent: 10.0,
                collector: Some("127.0.0.1:4317".into()),
                access_log: Some(crate::telemetry::access_log::LogFormat::Common),
                access_log_path: Some("/var/log/web.log".into()),
            }),
        };
        let yaml = config.to_yaml();
        let again = Config::from_yaml(&yaml, "rendered").unwrap();
        assert_eq!(again.to_yaml(), yaml);
        for field in [
            "transparent_listen:",
            "max_connections_per_client:",
            "service_account:",
            "token_fd:",
            "access_log_path:",
        ] {
            assert!(yaml.contains(field), "{field} in\n{yaml}");
        }
        let files = CertificateFiles { cert: "/c.pem".into(), key: "/c.key".into() };
        let identity =
            IdentityConfig { certificate: Some(files), token_fd: None, ..config.identity.unwrap() };
        let certified = Config { identity: Some(identity), ..Config::from_yaml(&yaml, "rendered").unwrap() };
        let yaml = certified.to_yaml();
        assert_eq!(Config::from_yaml(&yaml, "rendered").unwrap().to_yaml(), yaml);
    }

    #[test]
    fn effective_config_renders_as_yaml_that_parses_back() {
        let client = Config::from_yaml(CLIENT, "client.yaml").unwrap();
        let again = Config::from_yaml(&client.to_yaml(), "rendered").unwrap();
        assert_eq!(again.outbound.unwrap().services[0].listen, client.outbound.unwrap().services[0].listen);
    }

    #[test]
    fn a_service_account_token_excludes_the_other_proofs() {
        let base = "inbound: {listen: 127.0.0.1:0, app: 127.0.0.1:8080}\ncontrol: {addr: 127.0.0.1:4180}\nidentity:\n  trust_anchors: /a.pem\n  service_account_token: /var/run/secrets/tarmac/token\n";
        Config::from_yaml(base, "sa.yaml").unwrap();
        for other in ["  token_fd: 3\n", "  token_file: /t\n", "  certificate: {cert: /c, key: /k}\n"] {
            let err = Config::from_yaml(&format!("{base}{other}"), "sa.yaml").unwrap_err().to_string();
            assert!(err.contains("identity.service_account_token") && err.contains("not both"), "{err}");
        }
    }
}
