//! Proxies for tests: in-process on port 0 (fast tier), or the real binary as a child
//! process (for signals and for tools that need a separate process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tarmac_proxy::config::{
    CertificateFiles, EndpointConfig, IdentityConfig, InboundConfig, MtlsMode, OutboundConfig, Protocol,
    ServiceConfig,
};
use tarmac_proxy::{Config, Running};

/// Starts a proxy in this process from YAML. Listen addresses may use port 0.
pub async fn start(yaml: &str) -> Running {
    start_config(Config::from_yaml(yaml, "test config").expect("valid test config")).await
}

/// Starts a proxy in this process from a configuration built in code, checked as the
/// proxy checks its file. Listen addresses may use port 0.
pub async fn start_config(config: Config) -> Running {
    init_logging();
    config.validate("test config").expect("valid test config");
    tarmac_proxy::start(config).await.expect("proxy starts")
}

/// A client-side proxy with one explicit service, and a server-side proxy in front of
/// `app`, wired together as in a mesh: mTLS between them, each with a certificate from
/// [`TestPki`]. Returns (client proxy, server proxy).
pub async fn mesh_pair(service: &str, app: SocketAddr) -> (Running, Running) {
    let pki = TestPki::get();
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = start_config(Config {
        admin: any_port,
        inbound: Some(InboundConfig {
            listen: any_port,
            app: Some(app),
            transparent: false,
            mtls: MtlsMode::Permissive,
        }),
        identity: Some(pki.identity(&pki.server)),
        ..Config::default()
    })
    .await;
    let endpoint = EndpointConfig {
        addr: server.addrs.inbound.unwrap(),
        meshed: true,
        identity: Some(pki.server.0.clone()),
    };
    let service = ServiceConfig {
        name: service.to_string(),
        listen: Some(any_port),
        addrs: Vec::new(),
        protocol: Protocol::default(),
        endpoints: vec![endpoint],
        discover: None,
    };
    let client = start_config(Config {
        admin: any_port,
        outbound: Some(OutboundConfig { transparent_listen: None, services: vec![service] }),
        identity: Some(pki.identity(&pki.client)),
        ..Config::default()
    })
    .await;
    (client, server)
}

/// A CA for the tests of this process, and certificates for a client and a server proxy
/// (SPIFFE IDs `.../sa/test-client` and `.../sa/test-server`).
pub struct TestPki {
    pub anchors: PathBuf,
    /// (SPIFFE ID, certificate file, key file)
    pub client: (String, PathBuf, PathBuf),
    pub server: (String, PathBuf, PathBuf),
}

impl TestPki {
    pub fn get() -> &'static TestPki {
        static PKI: std::sync::OnceLock<TestPki> = std::sync::OnceLock::new();
        PKI.get_or_init(|| {
            use tarmac_identity::ca::{Ca, generate_root};
            let dir = crate::tools::temp_dir("pki");
            let (root, key) = generate_root("cluster.local").unwrap();
            let ca = Ca::from_root(&root, &key.serialize_pem(), "cluster.local").unwrap();
            let anchors = dir.join("anchors.pem");
            std::fs::write(&anchors, ca.anchors_pem()).unwrap();
            let certify = |sa: &str| {
                let id = tarmac_identity::SpiffeId::new("cluster.local", "default", sa).unwrap();
                let (chain, key) = ca.issue_with_new_key(&id, Duration::from_secs(24 * 3600)).unwrap();
                let (cert_path, key_path) = (dir.join(format!("{sa}.pem")), dir.join(format!("{sa}.key")));
                std::fs::write(&cert_path, chain).unwrap();
                std::fs::write(&key_path, key).unwrap();
                (id.to_string(), cert_path, key_path)
            };
            TestPki { client: certify("test-client"), server: certify("test-server"), anchors }
        })
    }

    /// The `identity` section of a proxy presenting `own`.
    pub fn identity(&self, own: &(String, PathBuf, PathBuf)) -> IdentityConfig {
        IdentityConfig {
            trust_anchors: self.anchors.display().to_string(),
            certificate: Some(CertificateFiles {
                cert: own.1.display().to_string(),
                key: own.2.display().to_string(),
            }),
            token_fd: None,
            token_file: None,
            service_account_token: None,
        }
    }

    /// The same as YAML, for tests that write a proxy's file.
    pub fn identity_yaml(&self, own: &(String, PathBuf, PathBuf)) -> String {
        format!(
            "identity:\n  trust_anchors: \"{}\"\n  certificate: {{cert: \"{}\", key: \"{}\"}}\n",
            self.anchors.display(),
            own.1.display(),
            own.2.display()
        )
    }
}

/// A `tarmac-proxy` child process; killed on drop.
pub struct ProxyProcess {
    pub child: Child,
    pub config_path: PathBuf,
}

impl ProxyProcess {
    /// Writes `yaml` to a temporary file and starts the binary with it.
    pub fn spawn(yaml: &str) -> Self {
        Self::spawn_with_stderr(yaml, Stdio::inherit())
    }

    /// Like [`spawn`](Self::spawn), with the proxy's log written to `log`.
    pub fn spawn_logged(yaml: &str, log: &std::path::Path) -> Self {
        let file = std::fs::File::create(log).expect("create the log file");
        Self::spawn_with_stderr(yaml, Stdio::from(file))
    }

    fn spawn_with_stderr(yaml: &str, stderr: Stdio) -> Self {
        let dir = crate::tools::temp_dir("proxy");
        let config_path = dir.join("proxy.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let child = Command::new(crate::tools::binary("tarmac-proxy"))
            .arg("--config")
            .arg(&config_path)
            .env("TARMAC_PROXY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tarmac-proxy");
        Self { child, config_path }
    }

    /// Sends a signal with `kill`.
    pub fn signal(&self, sig: &str) {
        let status =
            Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for exit up to `timeout`; None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `GET /ready` on `admin` answers 200.
pub async fn wait_ready(admin: SocketAddr, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(admin)).await
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf)).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "proxy at {admin} not ready in {timeout:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Logs from in-process proxies, when `TARMAC_TEST_LOG` is set (e.g. `debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("TARMAC_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
