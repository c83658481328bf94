//! Cost curves: how a proxy's memory and idle CPU grow with its mesh, for the users who
//! will run thousands of connections or services through it.
//!
//! * Idle connections: a fresh one-hop proxy, N client connections that each carried one
//!   request and then stay open, idle (keep-alive), as an app's pool would leave them.
//! * Configured services: a fresh proxy with N services configured and no traffic. The
//!   services' virtual addresses are on loopback (127.1.x.y), and nothing is sent to them.

use super::envoy;
use super::processes::{self, STOP_GRACE};
use super::procfs;
use super::topology::{self, ProxyKind};
use bytes::Bytes;
use http::header::HOST;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tarmac_clikit::ports::free_port;
use tarmac_proxy::config::{Config, OutboundConfig, ServiceConfig};
use tarmac_transport::process::{ProcessError, Readiness, Supervised};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub const IDLE_CONNECTIONS: [usize; 4] = [1, 100, 1_000, 10_000];
pub const CONFIGURED_SERVICES: [usize; 3] = [10, 100, 1_000];
/// Connections opened at once while setting up the idle ones.
const OPEN_CONCURRENCY: usize = 64;
/// How long the proxy is left alone before its memory is read, and how long its idle CPU
/// is measured for.
const SETTLE: Duration = Duration::from_millis(500);
const IDLE_WINDOW: Duration = Duration::from_secs(2);
/// Tarmac's default connection cap is 10,000: the largest point needs a little more.
const MAX_CONNECTIONS: usize = 30_000;

/// One point of a cost curve.
#[derive(Clone, Debug, Serialize)]
pub struct CostPoint {
    pub proxy: &'static str,
    /// `idle_connections` or `configured_services`.
    pub dimension: &'static str,
    pub count: usize,
    pub rss_bytes: u64,
    /// CPU used while idle, in cores (timers, housekeeping).
    pub idle_cores: f64,
}

/// The cost curves compare Tarmac with Envoy only.
/// Why a cost curve could not be measured: its proxy, or the idle connections held to it.
#[derive(Debug, thiserror::Error)]
pub enum CostsError {
    #[error("the cost curves compare Tarmac with Envoy; nginx has none")]
    NoNginxCurves,
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NoFreePort(#[from] tarmac_clikit::ports::NoFreePort),
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Its process is gone from /proc.
    #[error("{0} exited")]
    Gone(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("no answer from {addr} within 10 s")]
    NoAnswer { addr: SocketAddr },
    #[error("request to {addr}: {source}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("response from {addr}: {source}")]
    Response {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("{0}")]
    Closed(#[source] tokio::sync::AcquireError),
    #[error("opening a connection panicked: {0}")]
    Panicked(#[source] tokio::task::JoinError),
}

/// Measures every point for each proxy in `proxies`. Progress goes to stderr.
pub async fn measure(
    proxies: &[(ProxyKind, &Path)],
    upstream: SocketAddr,
    core: Option<usize>,
    dir: &Path,
) -> Result<Vec<CostPoint>, CostsError> {
    let mut points = Vec::new();
    for &(kind, binary) in proxies {
        for count in IDLE_CONNECTIONS {
            let (admin, listen) = (free_port()?, free_port()?);
            let (config_file, args) = match kind {
                ProxyKind::Tarmac => {
                    let mut config =
                        topology::tarmac_client_config(admin, listen, topology::endpoint(upstream, false));
                    config.limits.max_connections = MAX_CONNECTIONS;
                    tarmac_args(dir, "cost-connections", &config)?
                }
                ProxyKind::Envoy => envoy_args(
                    dir,
                    "cost-connections",
                    &envoy::config(admin, listen, upstream, false, None, None),
                )?,
                ProxyKind::Nginx => return Err(CostsError::NoNginxCurves),
            };
            let proxy = start(kind, binary, &args, admin, core, dir).await?;
            let connections = open_idle(listen, count).await?;
            let point = settle_and_read(&proxy, kind, "idle_connections", count).await;
            drop(connections);
            proxy.stop(STOP_GRACE).await;
            let _ = std::fs::remove_file(config_file);
            points.push(point?);
        }
        for count in CONFIGURED_SERVICES {
            let admin = free_port()?;
            let (config_file, args) = match kind {
                ProxyKind::Tarmac => {
                    tarmac_args(dir, "cost-services", &tarmac_services(admin, free_port()?, upstream, count))?
                }
                ProxyKind::Envoy => {
                    envoy_args(dir, "cost-services", &envoy_services(admin, free_port()?, upstream, count))?
                }
                ProxyKind::Nginx => return Err(CostsError::NoNginxCurves),
            };
            let proxy = start(kind, binary, &args, admin, core, dir).await?;
            let point = settle_and_read(&proxy, kind, "configured_services", count).await;
            proxy.stop(STOP_GRACE).await;
            let _ = std::fs::remove_file(config_file);
            points.push(point?);
        }
    }
    Ok(points)
}

/// What one more idle connection costs a Tarmac proxy, in KiB: the slope of its RSS from
/// the fewest to the most idle connections measured.
pub fn per_idle_connection_kib(points: &[CostPoint]) -> Option<f64> {
    let tarmac = || points.iter().filter(|p| p.proxy == "tarmac" && p.dimension == "idle_connections");
    let fewest = tarmac().min_by_key(|p| p.count)?;
    let most = tarmac().max_by_key(|p| p.count)?;
    (most.count > fewest.count).then(|| {
        (most.rss_bytes as f64 - fewest.rss_bytes as f64) / (most.count - fewest.count) as f64 / 1024.0
    })
}

fn label(kind: ProxyKind) -> &'static str {
    match kind {
        ProxyKind::Tarmac => "tarmac",
        ProxyKind::Envoy => "envoy",
        ProxyKind::Nginx => "nginx",
    }
}

fn tarmac_args(
    dir: &Path,
    name: &str,
    config: &Config,
) -> Result<(std::path::PathBuf, Vec<String>), CostsError> {
    let path = dir.join(format!("{name}-tarmac.yaml"));
    write(&path, &topology::tarmac_yaml(config))?;
    let args = vec!["--config".to_string(), path.display().to_string()];
    Ok((path, args))
}

fn write(path: &Path, text: &str) -> Result<(), CostsError> {
    std::fs::write(path, text).map_err(|source| CostsError::Write { path: path.to_path_buf(), source })
}

fn envoy_args(dir: &Path, name: &str, yaml: &str) -> Result<(std::path::PathBuf, Vec<String>), CostsError> {
    let path = dir.join(format!("{name}-envoy.yaml"));
    write(&path, yaml)?;
    let args = envoy::args(&path);
    Ok((path, args))
}

async fn start(
    kind: ProxyKind,
    binary: &Path,
    args: &[String],
    admin: SocketAddr,
    core: Option<usize>,
    dir: &Path,
) -> Result<Supervised, ProcessError> {
    let proxy = processes::spawn(&format!("{}-cost", label(kind)), binary, args, core, dir)?;
    proxy.wait_ready(&Readiness::AdminReady(admin), Duration::from_secs(30)).await?;
    Ok(proxy)
}

async fn settle_and_read(
    proxy: &Supervised,
    kind: ProxyKind,
    dimension: &'static str,
    count: usize,
) -> Result<CostPoint, CostsError> {
    tokio::time::sleep(SETTLE).await;
    let pid = proxy.pid();
    let gone = || CostsError::Gone(proxy.name().to_string());
    let before = procfs::read_process(pid).ok_or_else(gone)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = procfs::read_process(pid).ok_or_else(gone)?;
    if let Some(exit) = proxy.failure() {
        return Err(exit.into());
    }
    let point = CostPoint {
        proxy: label(kind),
        dimension,
        count,
        rss_bytes: after.rss_bytes,
        idle_cores: (after.cpu_seconds - before.cpu_seconds) / IDLE_WINDOW.as_secs_f64(),
    };
    eprintln!(
        "  cost     {:<7} {:>6} {:<20} RSS {:>6.1} MiB  idle CPU {:.3} cores",
        point.proxy,
        count,
        dimension.replace('_', " "),
        point.rss_bytes as f64 / (1024.0 * 1024.0),
        point.idle_cores
    );
    Ok(point)
}

/// An open client connection and the task driving it; dropping it closes the connection.
struct IdleConnection {
    _sender: http1::SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for IdleConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens `count` keep-alive connections to `addr`, sends one GET on each so that the proxy
/// has set up whatever a connection in use needs, and leaves them open.
async fn open_idle(addr: SocketAddr, count: usize) -> Result<Vec<IdleConnection>, CostsError> {
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut opening = JoinSet::new();
    for _ in 0..count {
        let permits = permits.clone();
        opening.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(CostsError::Closed)?;
            let stream =
                TcpStream::connect(addr).await.map_err(|source| CostsError::Connect { addr, source })?;
            let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| CostsError::Handshake { addr, source })?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let request = http::Request::get("/")
                .header(HOST, addr.to_string())
                .body(Empty::new())
                .expect("a constant request is valid");
            let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
                .await
                .map_err(|_| CostsError::NoAnswer { addr })?
                .map_err(|source| CostsError::Request { addr, source })?;
            response.into_body().collect().await.map_err(|source| CostsError::Response { addr, source })?;
            Ok::<_, CostsError>(IdleConnection { _sender: sender, driver })
        });
    }
    let mut connections = Vec::with_capacity(count);
    while let Some(opened) = opening.join_next().await {
        connections.push(opened.map_err(CostsError::Panicked)??);
    }
    Ok(connections)
}

/// A Tarmac proxy with `count` services reached through the transparent listener (no
/// port each), every one with the upstream as its endpoint.
fn tarmac_services(admin: SocketAddr, transparent: SocketAddr, upstream: SocketAddr, count: usize) -> Config {
    let services = (0..count)
        .map(|i| ServiceConfig {
            addrs: vec![SocketAddr::new(virtual_ip(i), 80)],
            endpoints: vec![topology::endpoint(upstream, false)],
            ..topology::tarmac_service(&format!("svc-{i}"), None)
        })
        .collect();
    Config {
        outbound: Some(OutboundConfig { transparent_listen: Some(transparent), services }),
        ..topology::tarmac_config(admin)
    }
}

/// Envoy with `count` clusters, each routed to by a virtual host of its own.
fn envoy_services(admin: SocketAddr, listen: SocketAddr, upstream: SocketAddr, count: usize) -> String {
    let mut yaml = format!(
        "admin:\n  address: {{socket_address: {{address: \"{}\", port_value: {}}}}}\nstatic_resources:\n  listeners:\n  \
         - name: bench\n    address: {{socket_address: {{address: \"{}\", port_value: {}}}}}\n    filter_chains:\n    \
         - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          \
         stat_prefix: bench\n          route_config:\n            virtual_hosts:\n",
        admin.ip(),
        admin.port(),
        listen.ip(),
        listen.port()
    );
    for i in 0..count {
        let _ = writeln!(
            yaml,
            "            - {{name: svc-{i}, domains: [\"svc-{i}\"], routes: [{{match: {{prefix: \"/\"}}, route: {{cluster: svc-{i}}}}}]}}"
        );
    }
    yaml.push_str(
        "          http_filters:\n          - name: envoy.filters.http.router\n            typed_config:\n              \
         \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n  clusters:\n",
    );
    for i in 0..count {
        let _ = writeln!(
            yaml,
            "  - {{name: svc-{i}, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: svc-{i}, endpoints: \
             [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}}}]}}]}}}}",
            upstream.ip(),
            upstream.port()
        );
    }
    yaml
}

/// The virtual address of service `i`: on loopback, so that no address outside this
/// machine appears anywhere.
fn virtual_ip(i: usize) -> std::net::IpAddr {
    let (high, low) = (u8::try_from(i / 250).expect("at most 64,000 services"), (i % 250 + 1) as u8);
    std::net::Ipv4Addr::new(127, 1, high, low).into()
}

/// The cost curves as a table: one row per point, Tarmac and Envoy side by side.
pub fn table(points: &[CostPoint]) -> String {
    let mut out = "cost curves: resident memory and idle CPU of one proxy\n".to_string();
    let _ = writeln!(
        out,
        "  {:<22} {:>14} {:>13} {:>16} {:>15}",
        "", "tarmac RSS MiB", "envoy RSS MiB", "tarmac idle CPU", "envoy idle CPU"
    );
    let find = |proxy: &str, dimension: &str, count: usize| {
        points.iter().find(|p| p.proxy == proxy && p.dimension == dimension && p.count == count)
    };
    let rows = IDLE_CONNECTIONS
        .iter()
        .map(|&c| ("idle_connections", c))
        .chain(CONFIGURED_SERVICES.iter().map(|&c| ("configured_services", c)));
    for (dimension, count) in rows {
        let (tarmac, envoy) = (find("tarmac", dimension, count), find("envoy", dimension, count));
        let rss = |p: Option<&CostPoint>| {
            p.map_or("-".to_string(), |p| format!("{:.1}", p.rss_bytes as f64 / 1048576.0))
        };
        let cpu =
            |p: Option<&CostPoint>| p.map_or("-".to_string(), |p| format!("{:.1} %", p.idle_cores * 100.0));
        let _ = writeln!(
            out,
            "  {:<22} {:>14} {:>13} {:>16} {:>15}",
            format!("{count} {}", dimension.replace('_', " ")),
            rss(tarmac),
            rss(envoy),
            cpu(tarmac),
            cpu(envoy)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_configurations_hold_every_service_on_loopback() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let config = topology::tests::accepted(&tarmac_services(addr(4191), addr(4140), addr(8080), 1000));
        let services = config.outbound.expect("outbound").services;
        assert_eq!(services.len(), 1000);
        assert!(services.iter().all(|s| s.addrs.iter().all(|a| a.ip().is_loopback())));
        assert_eq!(virtual_ip(999).to_string(), "127.1.3.250");

        let envoy = envoy_services(addr(9901), addr(10000), addr(8080), 3);
        assert_eq!(envoy.matches("domains: [\"svc-").count(), 3);
        assert_eq!(envoy.matches("cluster_name: svc-").count(), 3);
    }

    #[test]
    fn memory_per_idle_connection_is_the_slope_of_tarmac_s_curve() {
        let point = |proxy, count, mib: u64| CostPoint {
            proxy,
            dimension: "idle_connections",
            count,
            rss_bytes: mib << 20,
            idle_cores: 0.0,
        };
        let points = [
            point("tarmac", 1, 7),
            point("tarmac", 10_001, 107),
            point("envoy", 1, 64),
            point("envoy", 10_001, 900),
        ];
        let kib = per_idle_connection_kib(&points).unwrap();
        assert!((kib - 10.24).abs() < 0.01, "{kib}");
        assert_eq!(per_idle_connection_kib(&points[2..]), None);
    }
}
