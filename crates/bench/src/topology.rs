//! The paths a request can take to the upstream, and starting the proxies of each.

use super::ca::{Certified, EphemeralCa};
use super::envoy;
use super::nginx;
use super::processes;
use super::routing;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;
use tarmac_clikit::ports::free_port;
use tarmac_proxy::config::{
    Config, EndpointConfig, IdentityConfig, InboundConfig, Limits, MtlsMode, OutboundConfig, ServiceConfig,
};
use tarmac_transport::process::{ProcessError, Readiness, Supervised};

/// Why a route's proxies could not be started, naming the route or the file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{0} is not routed")]
    NotRouted(&'static str),
    #[error("{0} is not inbound")]
    NotInbound(&'static str),
    #[error("{0} gets its routes or policies from discovery: start it with start_routed or start_inbound")]
    FromDiscovery(&'static str),
    #[error("{0} needs a collector and a log file: start it with telemetry::start")]
    NeedsTelemetry(&'static str),
    /// A comparator's binary was not found.
    #[error("{0} is not installed")]
    NotInstalled(&'static str),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NoFreePort(#[from] tarmac_clikit::ports::NoFreePort),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Certs(#[from] super::ca::CertsError),
    #[error(transparent)]
    Routes(#[from] routing::RoutingError),
}

fn write(path: &FsPath, text: &str) -> Result<(), TopologyError> {
    std::fs::write(path, text).map_err(|source| TopologyError::Write { path: path.to_path_buf(), source })
}

/// How long a proxy has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// One way from the load generator to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Route {
    /// Straight to the upstream: the baseline.
    Direct,
    /// Through one Tarmac proxy (a client-side sidecar, endpoint not meshed).
    TarmacOneHop,
    /// Through a client-side and a server-side Tarmac proxy, plaintext between them (one
    /// multiplexed HTTP/2 connection).
    TarmacTwoHops,
    /// Through one Envoy.
    EnvoyOneHop,
    /// Through two Envoys, HTTP/2 between them as between Tarmac's.
    EnvoyTwoHops,
    /// The mesh path as it runs by default: two Tarmac proxies with mTLS between them
    /// (TLS 1.3, X25519MLKEM768, identities verified).
    TarmacTwoHopsMtls,
    /// Two Envoys with mTLS between them, as two Istio sidecars.
    EnvoyTwoHopsMtls,
    /// Through one nginx: the L7 floor.
    NginxOneHop,
    /// One Tarmac proxy following, through discovery, a Service whose HTTPRoute has one
    /// rule (`--routing`).
    TarmacOneRule,
    /// The same with an HTTPRoute of 100 rules, the request taking the last.
    TarmacManyRules,
    /// One Tarmac proxy's inbound side in front of the upstream, following its workload's
    /// inbound policy through discovery: none (`--routing`).
    TarmacInbound,
    /// The same with 100 AuthorizationPolicies and a RateLimitPolicy on its Service,
    /// the request allowed by the last policy evaluated.
    TarmacInboundPolicy,
    /// One rule again, whose backend fails every request's first try: each is retried
    /// once (`--routing`; the cost of a retried request).
    TarmacRetried,
    /// One Tarmac hop starting a trace for 10 % of the requests, its spans exported to a
    /// collector (`--telemetry`).
    TarmacTraced,
    /// One Tarmac hop writing an access log line (JSON) per request (`--telemetry`).
    TarmacAccessLog,
}

/// Which proxy a route goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Tarmac,
    Envoy,
    Nginx,
}

/// A route whose proxies run.
pub struct Running {
    pub route: Route,
    /// Where the generator sends its requests.
    pub entry: SocketAddr,
    /// Client side first.
    pub proxies: Vec<Supervised>,
}

/// The binaries the routes need.
pub struct Binaries {
    pub tarmac_proxy: PathBuf,
    pub envoy: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
}

impl Binaries {
    /// For the modes that run no comparator.
    pub fn tarmac_only(tarmac_proxy: PathBuf) -> Self {
        Self { tarmac_proxy, envoy: None, nginx: None }
    }
}

// === impl Route ===

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::TarmacOneHop => "tarmac 1 hop",
            Self::TarmacTwoHops => "tarmac 2 hops",
            Self::EnvoyOneHop => "envoy 1 hop",
            Self::EnvoyTwoHops => "envoy 2 hops",
            Self::TarmacTwoHopsMtls => "tarmac 2 hops mTLS",
            Self::EnvoyTwoHopsMtls => "envoy 2 hops mTLS",
            Self::NginxOneHop => "nginx 1 hop",
            Self::TarmacOneRule => "tarmac 1 rule",
            Self::TarmacManyRules => "tarmac 100 rules",
            Self::TarmacInbound => "tarmac inbound",
            Self::TarmacInboundPolicy => "tarmac inbound 100 policies",
            Self::TarmacRetried => "tarmac retried",
            Self::TarmacTraced => "tarmac traced 10%",
            Self::TarmacAccessLog => "tarmac access log",
        }
    }

    /// The route's name in the JSON and on the command line, e.g. `tarmac_one_hop`.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_string()).unwrap_or_default()
    }

    pub fn proxy(self) -> Option<ProxyKind> {
        match self {
            Self::Direct => None,
            Self::TarmacOneHop
            | Self::TarmacTwoHops
            | Self::TarmacTwoHopsMtls
            | Self::TarmacOneRule
            | Self::TarmacManyRules
            | Self::TarmacInbound
            | Self::TarmacInboundPolicy
            | Self::TarmacRetried
            | Self::TarmacTraced
            | Self::TarmacAccessLog => Some(ProxyKind::Tarmac),
            Self::EnvoyOneHop | Self::EnvoyTwoHops | Self::EnvoyTwoHopsMtls => Some(ProxyKind::Envoy),
            Self::NginxOneHop => Some(ProxyKind::Nginx),
        }
    }

    /// The route of `proxy` with as many hops, to compare a Tarmac route with (nginx has
    /// one hop only).
    pub fn counterpart(self, proxy: ProxyKind) -> Option<Route> {
        match (proxy, self) {
            (ProxyKind::Envoy, Self::TarmacOneHop) => Some(Self::EnvoyOneHop),
            (ProxyKind::Envoy, Self::TarmacTwoHops) => Some(Self::EnvoyTwoHops),
            (ProxyKind::Envoy, Self::TarmacTwoHopsMtls) => Some(Self::EnvoyTwoHopsMtls),
            (ProxyKind::Nginx, Self::TarmacOneHop) => Some(Self::NginxOneHop),
            _ => None,
        }
    }
}

/// Starts the proxy of a routed route (`--routing`), following its Service through the
/// discovery server at `control`, pinned to `core` if given; waits until its route table
/// is in force.
pub async fn start_routed(
    route: Route,
    control: SocketAddr,
    binaries: &Binaries,
    core: Option<usize>,
    dir: &FsPath,
) -> Result<Running, TopologyError> {
    let (service, _) = routing::service_of(route).ok_or(TopologyError::NotRouted(route.label()))?;
    let (admin, listen) = (free_port()?, free_port()?);
    let config = routing::tarmac_routed_config(admin, listen, control, service);
    let name = route.label().replace(' ', "-");
    let proxy = start_tarmac(&name, &config, binaries, core, dir).await?;
    routing::wait_for_routes(listen, admin).await?;
    Ok(Running { route, entry: listen, proxies: vec![proxy] })
}

/// Starts the proxy of an inbound route (`--routing`): its inbound side in front of
/// `upstream`, following its workload's policy through the discovery server at
/// `control`; ready once the policy is in force.
pub async fn start_inbound(
    route: Route,
    control: SocketAddr,
    upstream: SocketAddr,
    binaries: &Binaries,
    core: Option<usize>,
    dir: &FsPath,
) -> Result<Running, TopologyError> {
    let workload = routing::inbound_of(route).ok_or(TopologyError::NotInbound(route.label()))?;
    let (admin, listen) = (free_port()?, free_port()?);
    let config = routing::tarmac_inbound_config(admin, listen, control, upstream, workload);
    let proxy = start_tarmac(&route.label().replace(' ', "-"), &config, binaries, core, dir).await?;
    Ok(Running { route, entry: listen, proxies: vec![proxy] })
}

/// Starts the proxies of `route` in front of `upstream`, pinned to `core` if given, and
/// waits until they are ready.
pub async fn start(
    route: Route,
    upstream: SocketAddr,
    binaries: &Binaries,
    core: Option<usize>,
    dir: &FsPath,
) -> Result<Running, TopologyError> {
    let name = route.label().replace(' ', "-");
    let mut proxies = Vec::new();
    let entry = match route {
        Route::Direct => upstream,
        Route::TarmacOneRule
        | Route::TarmacManyRules
        | Route::TarmacRetried
        | Route::TarmacInbound
        | Route::TarmacInboundPolicy => {
            return Err(TopologyError::FromDiscovery(route.label()));
        }
        Route::TarmacTraced | Route::TarmacAccessLog => {
            return Err(TopologyError::NeedsTelemetry(route.label()));
        }
        Route::TarmacOneHop => {
            let (admin, listen) = (free_port()?, free_port()?);
            let config = tarmac_client_config(admin, listen, endpoint(upstream, false));
            proxies.push(start_tarmac(&format!("{name}-client"), &config, binaries, core, dir).await?);
            listen
        }
        Route::TarmacTwoHops | Route::TarmacTwoHopsMtls => {
            let certs = match route {
                Route::TarmacTwoHopsMtls => Some(MeshCerts::create(dir)?),
                _ => None,
            };
            let (server_admin, inbound) = (free_port()?, free_port()?);
            let mut config = tarmac_server_config(server_admin, inbound, upstream);
            if let (Some(certs), Some(side)) = (&certs, config.inbound.as_mut()) {
                side.mtls = MtlsMode::Strict;
                config.identity = Some(certs.tarmac_identity(&certs.server));
            }
            let server = start_tarmac(&format!("{name}-server"), &config, binaries, core, dir).await?;
            let (client_admin, listen) = (free_port()?, free_port()?);
            let mut to_server = endpoint(inbound, true);
            to_server.identity = certs.as_ref().map(|certs| certs.server.id.clone());
            let mut config = tarmac_client_config(client_admin, listen, to_server);
            config.identity = certs.as_ref().map(|certs| certs.tarmac_identity(&certs.client));
            proxies.push(start_tarmac(&format!("{name}-client"), &config, binaries, core, dir).await?);
            proxies.push(server);
            listen
        }
        Route::EnvoyOneHop | Route::EnvoyTwoHops | Route::EnvoyTwoHopsMtls => {
            let binary = binaries.envoy.as_deref().ok_or(TopologyError::NotInstalled("Envoy"))?;
            let certs = match route {
                Route::EnvoyTwoHopsMtls => Some(MeshCerts::create(dir)?),
                _ => None,
            };
            let server_tls = certs.as_ref().map(|c| c.envoy_tls(&c.server, &c.client));
            let client_tls = certs.as_ref().map(|c| c.envoy_tls(&c.client, &c.server));
            let two_hops = route != Route::EnvoyOneHop;
            let mut next = upstream;
            if two_hops {
                let (admin, listen) = (free_port()?, free_port()?);
                let config = envoy::config(admin, listen, upstream, false, server_tls.as_ref(), None);
                proxies
                    .push(start_envoy(&format!("{name}-server"), &config, admin, binary, core, dir).await?);
                next = listen;
            }
            let (admin, listen) = (free_port()?, free_port()?);
            let config = envoy::config(admin, listen, next, two_hops, None, client_tls.as_ref());
            proxies
                .insert(0, start_envoy(&format!("{name}-client"), &config, admin, binary, core, dir).await?);
            listen
        }
        Route::NginxOneHop => {
            let binary = binaries.nginx.as_deref().ok_or(TopologyError::NotInstalled("nginx"))?;
            let listen = free_port()?;
            let config_path = dir.join(format!("{name}.conf"));
            write(&config_path, &nginx::config(listen, upstream, dir))?;
            let proxy = processes::spawn(&name, binary, &nginx::args(&config_path, dir), core, dir)?;
            proxy.wait_ready(&Readiness::Accepts(listen), READY_TIMEOUT).await?;
            proxies.push(proxy);
            listen
        }
    };
    Ok(Running { route, entry, proxies })
}

/// A CA made for one measurement, and certificates for the two sides of a hop.
struct MeshCerts {
    ca: EphemeralCa,
    client: Certified,
    server: Certified,
}

impl MeshCerts {
    fn create(dir: &FsPath) -> Result<Self, super::ca::CertsError> {
        let ca = EphemeralCa::create(dir)?;
        Ok(Self { client: ca.certify("bench-client")?, server: ca.certify("bench-server")?, ca })
    }

    /// Envoy's TLS settings for the side presenting `own` and expecting `peer`.
    fn envoy_tls<'a>(&'a self, own: &'a Certified, peer: &'a Certified) -> envoy::Tls<'a> {
        envoy::Tls { cert: &own.cert, key: &own.key, anchors: &self.ca.anchors, peer_id: &peer.id }
    }

    /// The `identity` section of a Tarmac proxy presenting `own`.
    fn tarmac_identity(&self, own: &Certified) -> IdentityConfig {
        self.ca.identity(own)
    }
}

/// What every Tarmac proxy of the benchmark shares: one worker (a sidecar's default), and
/// a short drain, so that stopping one between phases takes no longer than its requests.
pub fn tarmac_config(admin: SocketAddr) -> Config {
    Config {
        admin,
        workers: 1,
        limits: Limits { drain_timeout: Duration::from_secs(1), ..Limits::default() },
        ..Config::default()
    }
}

/// One service `name` of a client-side sidecar, on an explicit listener or not.
pub fn tarmac_service(name: &str, listen: Option<SocketAddr>) -> ServiceConfig {
    ServiceConfig {
        name: name.to_string(),
        listen,
        addrs: Vec::new(),
        protocol: Default::default(),
        endpoints: Vec::new(),
        discover: None,
    }
}

/// An endpoint: the app, or (meshed) another proxy's inbound side.
pub fn endpoint(addr: SocketAddr, meshed: bool) -> EndpointConfig {
    EndpointConfig { addr, meshed, identity: None }
}

/// A client-side sidecar: one service on an explicit listener, one endpoint.
pub fn tarmac_client_config(admin: SocketAddr, listen: SocketAddr, endpoint: EndpointConfig) -> Config {
    let service = ServiceConfig { endpoints: vec![endpoint], ..tarmac_service("upstream", Some(listen)) };
    Config {
        outbound: Some(OutboundConfig { transparent_listen: None, services: vec![service] }),
        ..tarmac_config(admin)
    }
}

/// A server-side sidecar in front of the app.
pub fn tarmac_server_config(admin: SocketAddr, listen: SocketAddr, app: SocketAddr) -> Config {
    Config { inbound: Some(tarmac_inbound(listen, app)), ..tarmac_config(admin) }
}

/// An inbound side in front of `app`, permissive.
pub fn tarmac_inbound(listen: SocketAddr, app: SocketAddr) -> InboundConfig {
    InboundConfig { listen, app: Some(app), transparent: false, mtls: MtlsMode::Permissive }
}

/// `config` as the proxy reads it from its file.
pub fn tarmac_yaml(config: &Config) -> String {
    format!("# Generated by `tarmac bench`.\n{}", config.to_yaml())
}

pub(crate) async fn start_tarmac(
    name: &str,
    config: &Config,
    binaries: &Binaries,
    core: Option<usize>,
    dir: &FsPath,
) -> Result<Supervised, TopologyError> {
    let config_path = dir.join(format!("{name}.yaml"));
    write(&config_path, &tarmac_yaml(config))?;
    let args = vec!["--config".to_string(), config_path.display().to_string()];
    let proxy = processes::spawn(name, &binaries.tarmac_proxy, &args, core, dir)?;
    proxy.wait_ready(&Readiness::AdminReady(config.admin), READY_TIMEOUT).await?;
    Ok(proxy)
}

async fn start_envoy(
    name: &str,
    yaml: &str,
    admin: SocketAddr,
    binary: &FsPath,
    core: Option<usize>,
    dir: &FsPath,
) -> Result<Supervised, TopologyError> {
    let config_path = dir.join(format!("{name}.yaml"));
    write(&config_path, yaml)?;
    let proxy = processes::spawn(name, binary, &envoy::args(&config_path), core, dir)?;
    proxy.wait_ready(&Readiness::AdminReady(admin), READY_TIMEOUT).await?;
    Ok(proxy)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What the proxy reads from the file the benchmark writes for `config`.
    pub fn accepted(config: &Config) -> Config {
        Config::from_yaml(&tarmac_yaml(config), "generated").expect("the proxy accepts it")
    }

    #[test]
    fn generated_tarmac_configurations_are_accepted_by_the_proxy() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        for meshed in [true, false] {
            let config =
                accepted(&tarmac_client_config(addr(4191), addr(7001), endpoint(addr(4143), meshed)));
            let services = config.outbound.expect("outbound").services;
            assert_eq!(services[0].endpoints[0].meshed, meshed);
            assert_eq!((config.workers, config.limits.drain_timeout), (1, Duration::from_secs(1)));
        }
        let config = accepted(&tarmac_server_config(addr(4192), addr(4143), addr(8080)));
        assert_eq!(config.inbound.expect("inbound").app, Some(addr(8080)));
    }

    #[test]
    fn every_tarmac_route_has_an_envoy_counterpart_with_as_many_hops() {
        for route in [Route::TarmacOneHop, Route::TarmacTwoHops, Route::TarmacTwoHopsMtls] {
            let envoy = route.counterpart(ProxyKind::Envoy).expect("counterpart");
            assert_eq!(envoy.label().replace("envoy", "tarmac"), route.label());
            assert_eq!(envoy.proxy(), Some(ProxyKind::Envoy));
        }
    }

    #[test]
    fn mtls_configurations_are_accepted_by_the_proxy() {
        let dir = std::env::temp_dir().join(format!("tarmac-bench-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = MeshCerts::create(&dir).unwrap();
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let server = Config {
            identity: Some(certs.tarmac_identity(&certs.server)),
            ..tarmac_server_config(addr(1), addr(2), addr(3))
        };
        let config = accepted(&server);
        assert_eq!(config.identity.unwrap().certificate.unwrap().cert, certs.server.cert);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
