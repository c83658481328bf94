//! What `tarmac up` runs, derived from a snapshot of the configuration: the replicas of
//! every Workload, the services each sidecar offers its app, and the environment that
//! tells the app where they are. Pure functions, so that the naming rules are tested here.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tarmac_control::store::Snapshot;
use tarmac_model::Resource;
use tarmac_model::meta::DEFAULT_NAMESPACE;
use tarmac_proxy::config::{
    Config, ControlConfig, DEFAULT_OPAQUE_PORTS, DiscoverConfig, IdentityConfig, InboundConfig, Limits,
    MtlsMode, OutboundConfig, Protocol, ServiceConfig,
};

/// One process to run, with its sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPlan {
    pub namespace: String,
    pub workload: String,
    pub replica: u32,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The program and all its arguments (`spec.command` then `spec.args`).
    pub argv: Vec<String>,
    /// `spec.port`: where the app listens in transparent mode (explicit mode picks a free one).
    pub port: u16,
    pub env: BTreeMap<String, String>,
    /// Absolute: `spec.workingDir` resolved against the configuration directory.
    pub working_dir: PathBuf,
    /// `spec.mtls`: `permissive` or `strict`, when the Workload overrides the mesh's.
    pub mtls: Option<String>,
    /// A Service selecting it declares a port opaque (`appProtocol: tcp` or `opaque`): its
    /// sidecar forwards TCP from other proxies to the app without waiting for the client
    /// to speak first, which it does only on ports declared opaque on its own side.
    pub opaque: bool,
}

/// The descriptor on which a sidecar inherits the pipe holding its one-time bootstrap
/// token (never the environment, which /proc/PID/environ shows to the same uid).
pub const TOKEN_FD: i32 = 3;

/// mTLS settings of a sidecar.
pub struct SidecarTls {
    /// The trust anchors file.
    pub anchors: PathBuf,
    pub mtls: MtlsMode,
}

impl SidecarTls {
    /// `mtls` is the Workload's `spec.mtls` or the mesh's `--mtls`: `permissive` or
    /// `strict`, as both are parsed.
    pub fn new(anchors: PathBuf, mtls: &str) -> Self {
        let mtls = if mtls == "strict" { MtlsMode::Strict } else { MtlsMode::Permissive };
        Self { anchors, mtls }
    }
}

impl ReplicaPlan {
    /// How logs and messages name it: `books-0`, or `shop/books-0` outside `default`.
    pub fn name(&self) -> String {
        if self.namespace == DEFAULT_NAMESPACE {
            format!("{}-{}", self.workload, self.replica)
        } else {
            format!("{}/{}-{}", self.namespace, self.workload, self.replica)
        }
    }
}

/// Every replica of every Workload in `snapshot`, in a stable order. `dir` is the
/// configuration directory (absolute).
pub fn replicas(snapshot: &Snapshot, dir: &Path) -> Vec<ReplicaPlan> {
    let mut out = Vec::new();
    for resource in snapshot.iter_kind("Workload") {
        let Resource::Workload(workload) = resource else { continue };
        let spec = &workload.spec;
        let working_dir = match &spec.working_dir {
            Some(sub) => dir.join(sub),
            None => dir.to_path_buf(),
        };
        let argv: Vec<String> = spec.command.iter().chain(&spec.args).cloned().collect();
        let opaque = snapshot.iter_kind("Service").any(|r| match r {
            Resource::Service(s) => {
                s.metadata.namespace == workload.metadata.namespace
                    && !s.spec.selector.is_empty()
                    && tarmac_model::meta::selector_matches(&s.spec.selector, &workload.metadata.labels)
                    && s.spec
                        .ports
                        .iter()
                        .any(|p| matches!(p.app_protocol.as_deref(), Some("tcp" | "opaque")))
            }
            _ => false,
        });
        for replica in 0..spec.replicas {
            out.push(ReplicaPlan {
                namespace: workload.metadata.namespace.clone(),
                workload: workload.metadata.name.clone(),
                replica,
                labels: workload.metadata.labels.clone(),
                service_account: spec.service_account_name.clone(),
                mtls: spec.mtls.map(|m| m.as_str().to_string()),
                argv: argv.clone(),
                port: spec.port,
                env: spec.env.clone(),
                working_dir: working_dir.clone(),
                opaque,
            });
        }
    }
    out
}

/// The Services of a snapshot with their ports, for noticing that they changed.
pub fn services(snapshot: &Snapshot) -> BTreeMap<String, Vec<u16>> {
    snapshot
        .iter_kind("Service")
        .filter_map(|r| match r {
            Resource::Service(s) => {
                Some((r.key().to_string(), s.spec.ports.iter().map(|p| p.port).collect()))
            }
            _ => None,
        })
        .collect()
}

/// A Service port that a sidecar offers its app on a local listener (explicit mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The outbound service's name in the sidecar's configuration (unique there; the
    /// `target` label of its metrics): `books`, `books.shop` in another namespace,
    /// `books:8080` for a port of a multi-port Service.
    pub proxy_name: String,
    pub service: String,
    pub namespace: String,
    pub port: u16,
    /// The environment variables whose value is `http://<listener>`.
    pub env: Vec<String>,
}

/// Upper case, and every character that cannot be in a shell variable name becomes `_`.
pub fn env_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// Every port of every Service, as seen by an app in `from_namespace`.
///
/// Variables: `<NAME>_URL` for a Service in the same namespace, `<NAME>_<NAMESPACE>_URL`
/// for one in another; for a Service with several ports, that variable is its first port
/// and each port also has `<NAME>[_<NAMESPACE>]_<PORT>_URL`.
pub fn upstreams(snapshot: &Snapshot, from_namespace: &str) -> Vec<Upstream> {
    let mut out = Vec::new();
    for resource in snapshot.iter_kind("Service") {
        let Resource::Service(service) = resource else { continue };
        let name = &service.metadata.name;
        let namespace = &service.metadata.namespace;
        let (mut proxy_base, mut env_base) = (name.clone(), env_name(name));
        if namespace != from_namespace {
            proxy_base = format!("{name}.{namespace}");
            env_base = format!("{env_base}_{}", env_name(namespace));
        }
        let multi = service.spec.ports.len() > 1;
        for (i, port) in service.spec.ports.iter().enumerate() {
            let mut env = Vec::new();
            if i == 0 {
                env.push(format!("{env_base}_URL"));
            }
            if multi {
                env.push(format!("{env_base}_{}_URL", port.port));
            }
            out.push(Upstream {
                proxy_name: if multi { format!("{proxy_base}:{}", port.port) } else { proxy_base.clone() },
                service: name.clone(),
                namespace: namespace.clone(),
                port: port.port,
                env,
            });
        }
    }
    out
}

/// The environment `tarmac up` gives an app, over the one it inherits: `spec.env`, then
/// `PORT`, `TARMAC_ADMIN`, `TARMAC_NAMESPACE`, `TARMAC_WORKLOAD`, `TARMAC_REPLICA` and one
/// URL variable per upstream, `upstreams` giving each one's URL (these win over `spec.env`).
pub fn app_env(
    replica: &ReplicaPlan,
    app: SocketAddr,
    admin: SocketAddr,
    upstreams: &[(Upstream, String)],
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = replica.env.clone();
    env.insert("PORT".into(), app.port().to_string());
    env.insert("TARMAC_ADMIN".into(), format!("http://{admin}"));
    env.insert("TARMAC_NAMESPACE".into(), replica.namespace.clone());
    env.insert("TARMAC_WORKLOAD".into(), replica.workload.clone());
    env.insert("TARMAC_REPLICA".into(), replica.replica.to_string());
    for (upstream, url) in upstreams {
        for var in &upstream.env {
            env.insert(var.clone(), url.clone());
        }
    }
    env.into_iter().collect()
}

/// The sidecar's `tarmac-proxy` configuration (docs/proxy-config.md), as its file holds
/// it. In explicit mode each upstream's address is the sidecar's listener for it; with
/// `transparent` it is the Service's virtual IP and port, which the app's redirected
/// connections are addressed to.
#[allow(clippy::too_many_arguments)]
pub fn sidecar_yaml(
    replica: &ReplicaPlan,
    control: SocketAddr,
    admin: SocketAddr,
    inbound: SocketAddr,
    app: SocketAddr,
    upstreams: &[(Upstream, SocketAddr)],
    tls: Option<&SidecarTls>,
    transparent: bool,
) -> String {
    let services = upstreams
        .iter()
        .map(|(upstream, addr)| ServiceConfig {
            name: upstream.proxy_name.clone(),
            listen: (!transparent).then_some(*addr),
            addrs: if transparent { vec![*addr] } else { Vec::new() },
            protocol: Protocol::default(),
            endpoints: Vec::new(),
            discover: Some(DiscoverConfig {
                service: Some(upstream.service.clone()),
                namespace: upstream.namespace.clone(),
                port: upstream.port,
            }),
        })
        .collect::<Vec<_>>();
    let transparent_listen =
        transparent.then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, super::netns::OUTBOUND_PORT)));
    let outbound =
        (transparent || !services.is_empty()).then_some(OutboundConfig { transparent_listen, services });
    let mut opaque_ports = DEFAULT_OPAQUE_PORTS.to_vec();
    if replica.opaque {
        opaque_ports.push(app.port());
    }
    let config = Config {
        admin,
        control: Some(ControlConfig {
            addr: control.into(),
            namespace: replica.namespace.clone(),
            workload: replica.workload.clone(),
            service_account: replica.service_account.clone(),
        }),
        inbound: Some(InboundConfig {
            listen: inbound,
            app: Some(app),
            transparent: false,
            mtls: tls.map_or(MtlsMode::Permissive, |tls| tls.mtls),
        }),
        identity: tls.map(|tls| IdentityConfig {
            trust_anchors: tls.anchors.display().to_string(),
            certificate: None,
            token_fd: Some(TOKEN_FD),
            token_file: None,
            service_account_token: None,
        }),
        outbound,
        opaque_ports,
        limits: Limits { drain_timeout: Duration::from_secs(3), ..Limits::default() },
        ..Config::default()
    };
    format!("# The sidecar of {} in `tarmac up`.\n{}", replica.name(), config.to_yaml())
}

/// A virtual IP for every Service (transparent mode), in the order of their keys.
pub fn virtual_ips(snapshot: &Snapshot) -> BTreeMap<(String, String), Ipv4Addr> {
    let mut keys: Vec<(String, String)> = snapshot
        .iter_kind("Service")
        .filter_map(|r| match r {
            Resource::Service(s) => Some((s.metadata.namespace.clone(), s.metadata.name.clone())),
            _ => None,
        })
        .collect();
    keys.sort();
    keys.into_iter()
        .enumerate()
        .filter_map(|(i, key)| {
            let vip = super::netns::nth_address(super::netns::VIP_BASE, u32::try_from(i).ok()?)?;
            Some((key, vip))
        })
        .collect()
}

/// The hosts file of a workload namespace in `from_namespace`: every Service as
/// `svc.ns` and `svc.ns.svc.cluster.local`, and as `svc` alone in its own namespace.
pub fn hosts_file(vips: &BTreeMap<(String, String), Ipv4Addr>, from_namespace: &str) -> String {
    use std::fmt::Write as _;
    let mut hosts = String::from(
        "# Written by `tarmac up --transparent`: the mesh's Services.\n127.0.0.1 localhost\n::1 localhost\n",
    );
    for ((namespace, name), vip) in vips {
        let _ = write!(hosts, "{vip} {name}.{namespace} {name}.{namespace}.svc.cluster.local");
        if namespace == from_namespace {
            let _ = write!(hosts, " {name}");
        }
        hosts.push('\n');
    }
    hosts
}

/// The URL an app in transparent mode reaches an upstream at: by name (`names`, or
/// `books.shop` in another namespace), with the port unless it is 80.
pub fn url_by_name(upstream: &Upstream, from_namespace: &str) -> String {
    let host = match upstream.namespace == from_namespace {
        true => upstream.service.clone(),
        false => format!("{}.{}", upstream.service, upstream.namespace),
    };
    match upstream.port {
        80 => format!("http://{host}"),
        port => format!("http://{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
apiVersion: v1
kind: Service
metadata: {name: names}
spec: {selector: {app: names}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: book-store, namespace: shop}
spec: {selector: {app: books}, ports: [{name: http, port: 80}, {name: grpc, port: 9090}]}
---
apiVersion: tarmac.io/v1alpha1
kind: Workload
metadata: {name: greeter, labels: {app: greeter}}
spec: {command: [python3, greeter.py], args: [-v], port: 8080, replicas: 2, workingDir: apps, env: {GREETING: hi, PORT: '1'}}
";

    fn snapshot() -> Snapshot {
        let objects = tarmac_model::parse_documents("t.yaml", CONFIG)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Snapshot { generation: 1, objects }
    }

    #[test]
    fn every_replica_of_every_workload_runs_from_its_working_dir() {
        let plans = replicas(&snapshot(), Path::new("/conf"));
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[1].name(), "greeter-1");
        assert_eq!(plans[0].argv, ["python3", "greeter.py", "-v"]);
        assert_eq!(plans[0].working_dir, Path::new("/conf/apps"));
        assert_eq!(plans[0].service_account, "default");
    }

    #[test]
    fn urls_are_named_after_services_their_namespace_and_port() {
        let ups = upstreams(&snapshot(), "default");
        let summary: Vec<(&str, Vec<&str>)> =
            ups.iter().map(|u| (u.proxy_name.as_str(), u.env.iter().map(String::as_str).collect())).collect();
        assert_eq!(
            summary,
            [
                ("names", vec!["NAMES_URL"]),
                ("book-store.shop:80", vec!["BOOK_STORE_SHOP_URL", "BOOK_STORE_SHOP_80_URL"]),
                ("book-store.shop:9090", vec!["BOOK_STORE_SHOP_9090_URL"]),
            ]
        );
        let from_shop = upstreams(&snapshot(), "shop");
        assert_eq!(from_shop[0].env, ["NAMES_DEFAULT_URL"]);
        assert_eq!(from_shop[1].env, ["BOOK_STORE_URL", "BOOK_STORE_80_URL"]);
    }

    #[test]
    fn the_app_learns_its_port_admin_and_upstreams() {
        let plan = &replicas(&snapshot(), Path::new("/conf"))[0];
        let ups: Vec<(Upstream, SocketAddr)> = upstreams(&snapshot(), "default")
            .into_iter()
            .zip([7001, 7002, 7003])
            .map(|(u, p)| (u, SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let urls: Vec<(Upstream, String)> =
            ups.into_iter().map(|(u, a)| (u, format!("http://{a}"))).collect();
        let env: BTreeMap<String, String> =
            app_env(plan, "127.0.0.1:8080".parse().unwrap(), "127.0.0.1:4191".parse().unwrap(), &urls)
                .into_iter()
                .collect();
        assert_eq!(env["PORT"], "8080", "tarmac's PORT wins over spec.env");
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["TARMAC_ADMIN"], "http://127.0.0.1:4191");
        assert_eq!(env["NAMES_URL"], "http://127.0.0.1:7001");
        assert_eq!(env["BOOK_STORE_SHOP_9090_URL"], "http://127.0.0.1:7003");
        assert_eq!(env["TARMAC_REPLICA"], "0");
    }

    #[test]
    fn the_proxy_accepts_the_sidecar_configuration() {
        let plan = &replicas(&snapshot(), Path::new("/conf"))[0];
        let ups: Vec<(Upstream, SocketAddr)> = upstreams(&snapshot(), "default")
            .into_iter()
            .zip([7001, 7002, 7003])
            .map(|(u, p)| (u, SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let tls = SidecarTls::new("/tmp/x/trust-anchors.pem".into(), "strict");
        let yaml = sidecar_yaml(plan, a(8086), a(4191), a(4143), a(8080), &ups, Some(&tls), false);
        let config =
            tarmac_proxy::Config::from_yaml(&yaml, "generated").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(config.outbound.as_ref().map(|o| o.services.len()), Some(3), "{yaml}");
        assert_eq!(
            config.identity.as_ref().map(|i| i.trust_anchors.as_str()),
            Some("/tmp/x/trust-anchors.pem")
        );
        assert_eq!(config.inbound.as_ref().map(|i| i.mtls), Some(tarmac_proxy::config::MtlsMode::Strict));
        let control = config.control.expect("control");
        assert_eq!(control.workload, "greeter");
    }

    #[test]
    fn a_workload_behind_an_opaque_service_port_has_its_app_port_declared_opaque() {
        let config = "apiVersion: v1\nkind: Service\nmetadata: {name: banner}\nspec: {selector: {app: banner}, ports: [{port: 2525, appProtocol: tcp}]}\n---\napiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: banner, labels: {app: banner}}\nspec: {command: [banner], port: 2525}\n---\napiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: web, labels: {app: web}}\nspec: {command: [web], port: 8080}\n";
        let objects = tarmac_model::parse_documents("t.yaml", config)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let plans = replicas(&Snapshot { generation: 1, objects }, Path::new("/conf"));
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let opaque_ports = |plan: &ReplicaPlan| {
            let yaml = sidecar_yaml(plan, a(8086), a(4191), a(4143), a(41234), &[], None, false);
            tarmac_proxy::Config::from_yaml(&yaml, "generated").unwrap().opaque_ports
        };
        let (banner, web) = (plans.iter().find(|p| p.workload == "banner").unwrap(), &plans[1]);
        assert_eq!(web.workload, "web");
        assert!(opaque_ports(banner).contains(&41234), "the app's own port, wherever it listens");
        assert!(opaque_ports(banner).contains(&3306), "and the defaults still");
        assert_eq!(opaque_ports(web), tarmac_proxy::config::DEFAULT_OPAQUE_PORTS);
    }

    #[test]
    fn transparent_sidecars_map_virtual_ips_to_services_and_namespaces_resolve_them() {
        let snapshot = snapshot();
        let vips = virtual_ips(&snapshot);
        let names = vips[&("default".to_string(), "names".to_string())];
        let store = vips[&("shop".to_string(), "book-store".to_string())];
        assert_ne!(names, store);
        let hosts = hosts_file(&vips, "default");
        assert!(
            hosts.contains(&format!("{names} names.default names.default.svc.cluster.local names\n")),
            "{hosts}"
        );
        assert!(
            hosts.contains(&format!("{store} book-store.shop book-store.shop.svc.cluster.local\n")),
            "only the caller's own namespace resolves bare names: {hosts}"
        );
        let plan = &replicas(&snapshot, Path::new("/conf"))[0];
        let ups: Vec<(Upstream, SocketAddr)> = upstreams(&snapshot, "default")
            .into_iter()
            .map(|u| {
                let vip = vips[&(u.namespace.clone(), u.service.clone())];
                let port = u.port;
                (u, SocketAddr::from((vip, port)))
            })
            .collect();
        assert_eq!(url_by_name(&ups[0].0, "default"), "http://names");
        assert_eq!(url_by_name(&ups[2].0, "default"), "http://book-store.shop:9090");
        let a = |ip: [u8; 4], p: u16| SocketAddr::from((ip, p));
        let yaml = sidecar_yaml(
            plan,
            a([10, 211, 0, 1], 8086),
            a([10, 211, 0, 2], 4191),
            a([0, 0, 0, 0], 4143),
            a([127, 0, 0, 1], 8080),
            &ups,
            None,
            true,
        );
        let config =
            tarmac_proxy::Config::from_yaml(&yaml, "generated").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let outbound = config.outbound.expect("outbound");
        assert!(outbound.transparent_listen.is_some());
        assert_eq!(outbound.services[0].addrs, [SocketAddr::from((names, 80))], "{yaml}");
        assert!(outbound.services[0].listen.is_none() && outbound.services[0].discover.is_some());
    }
}
