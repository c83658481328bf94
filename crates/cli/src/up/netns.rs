//! `tarmac up --transparent`: a network namespace per replica, like a pod.
//!
//! The host side is one bridge, `tarmac-br0`, at 10.211.0.1/16; every replica's namespace
//! hangs off it by a veth pair and gets an address of 10.211.0.0/16 (a block used only
//! inside namespaces `up` creates), a route to the Services' virtual IPs (10.212.0.0/16)
//! and nothing else, a hosts file naming the Services, and the interception rules of
//! `tarmac-proxy init`. Everything `up` creates is named `tarmac-...`; only one
//! transparent `up` runs at a time (a lock), so whatever such object exists when it
//! starts was left by one that crashed and is removed first.

// Unsafe: geteuid(2) (root is required), flock(2) on the lock file and kill(2) for
// processes a crashed `up` left in its namespaces; std has none of them.
#![allow(unsafe_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What every object `up` creates is named after.
pub const PREFIX: &str = "tarmac-";
const BRIDGE: &str = "tarmac-br0";
/// The host's address on the bridge: the control plane and the API listen here.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);
const HOST_PREFIX_LEN: u8 = 16;
/// Services' virtual IPs are allocated from here.
pub const VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 212, 0, 0);
const VIP_PREFIX_LEN: u8 = 16;
/// The first uid of replicas' processes: the replica with namespace index `i` runs its
/// app as `UID_BASE + 2i` and its sidecar as `UID_BASE + 2i + 1`, so that no two
/// processes of different replicas, and no app and its sidecar, share a uid (same uid
/// would let one read the other's memory, environment and descriptors through /proc).
/// 0x70000000: above the block systemd gives containers, below its dynamic users.
pub const UID_BASE: u32 = 0x7000_0000;
/// Ports of the sidecar inside every namespace (`tarmac-proxy init`'s defaults).
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
const LOCK_FILE: &str = "/run/tarmac-up-transparent.lock";

/// The `index`th address of a /16 starting at `base` (index 0 is `base` + 1).
pub fn nth_address(base: Ipv4Addr, index: u32) -> Option<Ipv4Addr> {
    let offset = index.checked_add(1)?;
    if offset >= (1 << 16) - 1 {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(base) + offset))
}

/// What keeps transparent mode from setting up the host or a replica's namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "--transparent needs root: it creates network namespaces, veth pairs and iptables \
         rules (run it with sudo, or drop --transparent for explicit mode)"
    )]
    NotRoot,
    #[error("cannot open {LOCK_FILE}: {0}")]
    Lock(#[source] std::io::Error),
    #[error("another `tarmac up --transparent` is running (it holds {LOCK_FILE}); stop it first")]
    AnotherRunning,
    #[error("cannot run `ip`: {0}")]
    RunIp(#[source] std::io::Error),
    /// `command` is the `ip` command line without `ip`.
    #[error("`ip {command}` failed: {stderr}")]
    Ip { command: String, stderr: String },
    #[error("no address left in 10.211.0.0/16 for replica number {0}")]
    NoAddress(u32),
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `tarmac-proxy init` in {namespace}: {source}")]
    RunInit {
        namespace: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`tarmac-proxy init` in {namespace} failed: {stderr}")]
    Init { namespace: String, stderr: String },
}

/// The host side of transparent mode: held for as long as `up` runs. Dropping it removes
/// every namespace, link and hosts file named `tarmac-...`.
pub struct Host {
    _lock: File,
}

impl Host {
    /// Checks for root, takes the lock, removes what a crashed `up` left and creates the bridge.
    pub fn prepare() -> Result<Self, NetnsError> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetnsError::NotRoot);
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(NetnsError::Lock)?;
        // SAFETY: flock(2) on a descriptor we own; the lock goes with the file (and with
        // the process, however it ends).
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(NetnsError::AnotherRunning);
        }
        let stale = sweep();
        if !stale.is_empty() {
            super::process::note(&format!(
                "removed what an earlier `tarmac up --transparent` left behind: {}",
                stale.join(", ")
            ));
        }
        let host = Self { _lock: lock };
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{HOST_IP}/{HOST_PREFIX_LEN}"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        Ok(host)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        sweep();
    }
}

/// Removes every `tarmac-` namespace (killing what runs in it), link and hosts file.
/// Returns what it removed.
pub fn sweep() -> Vec<String> {
    let mut removed = Vec::new();
    for name in namespaces() {
        remove_namespace(&name);
        removed.push(format!("namespace {name}"));
    }
    for link in links() {
        let _ = ip(&["link", "del", &link]);
        removed.push(format!("link {link}"));
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
                removed.push(format!("/etc/netns/{name}"));
            }
        }
    }
    removed.dedup();
    removed
}

/// Names of the `tarmac-` network namespaces.
pub fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(String::from)
        .collect()
}

/// Names of the host's `tarmac-` links (the bridge and the host ends of veth pairs).
pub fn links() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_string())
        .filter(|name| name.starts_with(PREFIX))
        .collect()
}

fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill(2) has no memory-safety preconditions; these are processes
                // inside a namespace this program created.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    let _ = ip(&["netns", "del", name]);
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip").args(args).output().map_err(NetnsError::RunIp)?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// One replica's network namespace; removed (with what still runs in it) when dropped.
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
    pub addr: Ipv4Addr,
    /// The uid its app runs as.
    pub app_uid: u32,
    /// The uid its sidecar runs as; the interception rules leave its connections alone.
    pub proxy_uid: u32,
    host_link: String,
    confinement: std::sync::Arc<Confinement>,
}

/// Who runs in a replica's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    App,
    Proxy,
}

/// How processes are started in the namespaces: through `tarmac sandbox`, with what each
/// role must not see hidden.
#[derive(Clone, Debug, Default)]
pub struct Confinement {
    /// This executable, which provides `tarmac sandbox`.
    pub tarmac: PathBuf,
    /// The CA's directory and the sidecars' configurations.
    pub hidden_from_app: Vec<PathBuf>,
    /// The CA's directory.
    pub hidden_from_proxy: Vec<PathBuf>,
}

impl Namespace {
    /// Creates namespace `name` with the `index`th address, its hosts file and its
    /// interception rules (written by `proxy_binary init`).
    pub fn create(
        name: String,
        index: u32,
        app_port: u16,
        hosts: &str,
        proxy_binary: &Path,
        confinement: std::sync::Arc<Confinement>,
    ) -> Result<Self, NetnsError> {
        let addr = index
            .checked_add(1)
            .and_then(|i| nth_address(Ipv4Addr::new(10, 211, 0, 0), i))
            .ok_or(NetnsError::NoAddress(index))?;
        // nth_address caps the index far below where these could overflow.
        let app_uid = UID_BASE + 2 * index;
        let proxy_uid = app_uid + 1;
        let (host_link, inner_link) = (format!("{PREFIX}h{index}"), format!("{PREFIX}n{index}"));
        remove_namespace(&name);
        let _ = ip(&["link", "del", &host_link]);
        ip(&["netns", "add", &name])?;
        let namespace = Self { name, addr, app_uid, proxy_uid, host_link, confinement };
        namespace.setup(&inner_link, app_port, hosts, proxy_binary)?;
        Ok(namespace)
    }

    fn setup(
        &self,
        inner_link: &str,
        app_port: u16,
        hosts: &str,
        proxy_binary: &Path,
    ) -> Result<(), NetnsError> {
        let name = self.name.as_str();
        ip(&["link", "add", &self.host_link, "type", "veth", "peer", "name", inner_link])?;
        ip(&["link", "set", &self.host_link, "master", BRIDGE, "up"])?;
        ip(&["link", "set", inner_link, "netns", name])?;
        ip(&["-n", name, "link", "set", inner_link, "name", "eth0"])?;
        ip(&["-n", name, "addr", "add", &format!("{}/{HOST_PREFIX_LEN}", self.addr), "dev", "eth0"])?;
        // The interception rules are IPv4 only, and so is everything the mesh addresses; an
        // IPv6 link-local address on eth0 would let an app reach a peer's app directly,
        // past both sidecars (and past a strict workload's mTLS). So no IPv6 at all.
        if Path::new("/proc/sys/net/ipv6").exists() {
            let sysctl = |key: &str| ip(&["netns", "exec", name, "sysctl", "-qw", &format!("{key}=1")]);
            for key in [
                "net.ipv6.conf.all.disable_ipv6",
                "net.ipv6.conf.default.disable_ipv6",
                "net.ipv6.conf.eth0.disable_ipv6",
            ] {
                sysctl(key)?;
            }
        }
        ip(&["-n", name, "link", "set", "eth0", "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        // Virtual IPs are on no wire: the route only lets the app's connect() get as far
        // as the interception rules. No default route: nothing else is reachable.
        ip(&["-n", name, "route", "add", &format!("{VIP_BASE}/{VIP_PREFIX_LEN}"), "dev", "eth0"])?;
        let etc = Path::new("/etc/netns").join(name);
        if let Err(source) = std::fs::create_dir_all(&etc) {
            return Err(NetnsError::CreateDir { path: etc, source });
        }
        let hosts_file = etc.join("hosts");
        if let Err(source) = std::fs::write(&hosts_file, hosts) {
            return Err(NetnsError::Write { path: hosts_file, source });
        }
        let out = Command::new("ip")
            .args(["netns", "exec", name])
            .arg(proxy_binary)
            .args(["init", "--proxy-uid", &self.proxy_uid.to_string()])
            .args([
                "--inbound-port",
                &INBOUND_PORT.to_string(),
                "--outbound-port",
                &OUTBOUND_PORT.to_string(),
            ])
            .args(["--skip-inbound-ports", &ADMIN_PORT.to_string()])
            .output()
            .map_err(|source| NetnsError::RunInit { namespace: name.to_string(), source })?;
        if !out.status.success() {
            return Err(NetnsError::Init {
                namespace: name.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // The app runs unprivileged but may be written for a port below 1024 (`spec.port:
        // 80`): in its own namespace that is no privilege over anyone else.
        ip(&["netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"])?;
        // A replica of a Service calling that Service may be sent to itself: its sidecar
        // then connects to its own address, which leaves over loopback, unredirected, and
        // would miss an app bound to 127.0.0.1. Hand it to its own inbound side instead.
        let hairpin = format!(
            "iptables -t nat -I OUTPUT 1 -p tcp -d {} --dport {app_port} -m owner --uid-owner {} \
             -j REDIRECT --to-ports {INBOUND_PORT}",
            self.addr, self.proxy_uid
        );
        // The sidecar's admin listener (metrics, config, tap) is for the control plane and
        // the tools on the host, which reach it from the bridge address, and for the app
        // beside it; other replicas' apps must not read its tap or configuration.
        let admin = ADMIN_PORT;
        let rules = [
            format!("iptables -A INPUT -p tcp --dport {admin} -i lo -j ACCEPT"),
            format!("iptables -A INPUT -p tcp --dport {admin} -s {HOST_IP} -j ACCEPT"),
            format!("iptables -A INPUT -p tcp --dport {admin} -j REJECT --reject-with tcp-reset"),
        ];
        for rule in std::iter::once(&hairpin).chain(&rules) {
            let mut all = vec!["netns", "exec", name];
            all.extend(rule.split_whitespace());
            ip(&all)?;
        }
        Ok(())
    }

    /// `program` run inside the namespace by `tarmac sandbox`: as the app's or the
    /// sidecar's uid, without capabilities, with `no_new_privs`, and with what that role
    /// must not see hidden.
    pub fn command(&self, program: &Path, role: Role) -> tokio::process::Command {
        let confinement = &self.confinement;
        let (uid, hidden) = match role {
            Role::App => (self.app_uid, &confinement.hidden_from_app),
            Role::Proxy => (self.proxy_uid, &confinement.hidden_from_proxy),
        };
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(&confinement.tarmac).args([
            "sandbox",
            "--uid",
            &uid.to_string(),
        ]);
        for dir in hidden {
            command.arg("--hide").arg(dir);
        }
        command.arg("--").arg(program);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        remove_namespace(&self.name);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}

/// The namespace name of a replica: `tarmac-NAMESPACE-WORKLOAD-REPLICA`.
pub fn namespace_name(namespace: &str, workload: &str, replica: u32) -> String {
    format!("{PREFIX}{namespace}-{workload}-{replica}")
}

/// True when the process `pid` (or anything in its network namespace) listens on TCP
/// `port`: read from its own view of the network, since the host cannot connect there
/// without going through the sidecar.
pub fn listens(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|file| {
        let path: PathBuf = format!("/proc/{pid}/net/{file}").into();
        std::fs::read_to_string(path).is_ok_and(|table| {
            table.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                fields.len() > 3
                    && fields[3] == "0A"
                    && fields[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(port)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_inside_their_block() {
        assert_eq!(nth_address(Ipv4Addr::new(10, 211, 0, 0), 1), Some(Ipv4Addr::new(10, 211, 0, 2)));
        assert_eq!(nth_address(VIP_BASE, 0), Some(Ipv4Addr::new(10, 212, 0, 1)));
        assert_eq!(nth_address(VIP_BASE, 300), Some(Ipv4Addr::new(10, 212, 1, 45)));
        assert_eq!(nth_address(VIP_BASE, 65_533), Some(Ipv4Addr::new(10, 212, 255, 254)));
        assert_eq!(nth_address(VIP_BASE, 65_534), None, "the broadcast address is never used");
    }
}
