//! The inbound policy stages: authorization, then rate limits, between the client's
//! identity and the app ([`super::http`]); and authorization alone for connections that
//! are not HTTP, decided once per connection (a refused one is closed).
//!
//! The workload's policy arrives over discovery (`WatchInbound`, see
//! [`crate::discovery`]) and is compiled once per update into an [`InboundPolicy`]
//! swapped whole: requests in flight finish under the policy they started with. A port
//! whose policy refuses nothing and limits nothing costs one atomic load per request,
//! and so does a proxy without policies (no `control.workload`).
//!
//! Fail closed: a proxy that follows its policy but has not received one yet refuses
//! what a `deny` default would (reason `no_policy`), says so in its log, and answers
//! `/ready` with 503. Fail static: once received, a policy stays in force while the
//! control plane is away.

use crate::error::ProxyError;
use crate::http::handle::Meta;
use crate::metrics::Peer;
use crate::swap::Swap;
use crate::tap::DecidedBy;
use http::Request;
use http::uri::{PathAndQuery, Uri};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tarmac_policy::authz::{Authorizations, Client, Decision, Reason, RuleRef};
use tarmac_policy::limit::RateLimit;
use tarmac_proto::discovery::{self as pb, DefaultPolicy};
use tarmac_route::RouteTable;
use tokio::time::Instant;

/// The workload's inbound policy, as the proxy follows it.
#[derive(Debug)]
pub struct Policies {
    current: Swap<InboundPolicy>,
    /// The proxy serves one app whose port is its own choice (explicit mode): the app is
    /// the workload's port, whatever number it listens on.
    one_app: bool,
    /// Whether the proxy follows a policy at all, and whether it has received one.
    followed: bool,
    received: AtomicBool,
    /// Said once: requests are refused until the first policy arrives.
    said_pending: AtomicBool,
    /// The rate limits' clock.
    started: Instant,
}

/// One update's policy, per port.
#[derive(Debug)]
pub struct InboundPolicy {
    pub generation: u64,
    ports: Vec<(u16, Arc<PortPolicy>)>,
    /// Ports no Service selects: the default policy alone.
    other: Arc<PortPolicy>,
}

/// What applies on one port, compiled.
#[derive(Debug)]
pub struct PortPolicy {
    /// None: nothing is refused or audited.
    authz: Option<Authorizations>,
    limits: Vec<RateLimit>,
    /// Which rule a request takes, when a policy names a route or a rule.
    routes: Option<RouteTable<()>>,
}

/// Why an inbound policy update was refused (whole: the previous policy stays).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("port {0} is out of range")]
    Port(u32),
    #[error("port {port}: {source}")]
    Authorizations { port: u32, source: tarmac_policy::authz::CompileError },
    #[error("port {port}: its routes: {source}")]
    Routes { port: u32, source: tarmac_route::RouteError },
}

impl PortPolicy {
    fn compile(
        port: Option<&pb::InboundPort>,
        default: DefaultPolicy,
        previous: Option<&PortPolicy>,
    ) -> Result<Self, PolicyError> {
        let empty = pb::InboundPort::default();
        let port = port.unwrap_or(&empty);
        let authz = Authorizations::compile(&port.authorizations, default)
            .map_err(|source| PolicyError::Authorizations { port: port.port, source })?;
        let limits = port
            .rate_limits
            .iter()
            .map(|l| {
                let before = previous.and_then(|p| p.limits.iter().find(|b| *b.name == l.name));
                RateLimit::compile(l, before)
            })
            .collect::<Vec<_>>();
        let routed = authz.routed() || limits.iter().any(|l| l.scope.is_route());
        let routes = match routed && !port.routes.is_empty() {
            true => Some(
                RouteTable::build(&port.routes, port.port as u16, &mut |_| ())
                    .map_err(|source| PolicyError::Routes { port: port.port, source })?,
            ),
            false => None,
        };
        Ok(Self { authz: (!authz.allows_everything()).then_some(authz), limits, routes })
    }

    fn is_open(&self) -> bool {
        self.authz.is_none() && self.limits.is_empty()
    }
}

impl InboundPolicy {
    fn pending() -> Self {
        let closed = PortPolicy { authz: Some(Authorizations::pending()), limits: Vec::new(), routes: None };
        Self { generation: 0, ports: Vec::new(), other: Arc::new(closed) }
    }

    /// The policy of the app on `port`.
    fn port(&self, port: u16, one_app: bool) -> &PortPolicy {
        match self.ports.iter().find(|(p, _)| *p == port) {
            Some((_, policy)) => policy,
            None if one_app && self.ports.len() == 1 => &self.ports[0].1,
            None => &self.other,
        }
    }

    fn is_open(&self) -> bool {
        self.other.is_open() && self.ports.iter().all(|(_, p)| p.is_open())
    }
}

impl Policies {
    /// No policy followed: every client is let through, at the cost of one atomic load.
    pub fn off() -> Self {
        Self {
            current: Swap::default(),
            one_app: false,
            followed: false,
            received: AtomicBool::new(false),
            said_pending: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Followed through the control plane: closed until the first policy arrives.
    pub fn followed(one_app: bool) -> Self {
        let policies = Self { one_app, followed: true, ..Self::off() };
        policies.current.set(Some(InboundPolicy::pending()));
        policies
    }

    /// A fixed policy (tests and the benchmark), as if received.
    pub fn fixed(update: &pb::InboundUpdate, one_app: bool) -> Result<Self, PolicyError> {
        let policies = Self { one_app, followed: true, ..Self::off() };
        policies.update(update)?;
        Ok(policies)
    }

    /// False while the proxy follows a policy it has not received (`/ready` says so).
    pub fn ready(&self) -> bool {
        !self.followed || self.received.load(Ordering::Acquire)
    }

    /// Replaces the policy with `update`, compiled whole; an update that does not compile
    /// is refused whole and the previous policy stays.
    pub fn update(&self, update: &pb::InboundUpdate) -> Result<(), PolicyError> {
        let default = DefaultPolicy::try_from(update.default_policy).unwrap_or(DefaultPolicy::Deny);
        let previous = self.current.get();
        let before = |port: u16| previous.as_ref().map(|p| p.port(port, false));
        let mut ports = Vec::new();
        for port in &update.ports {
            let number = u16::try_from(port.port).map_err(|_| PolicyError::Port(port.port))?;
            ports.push((number, Arc::new(PortPolicy::compile(Some(port), default, before(number))?)));
        }
        let other = Arc::new(PortPolicy::compile(None, default, None)?);
        let policy = InboundPolicy { generation: update.generation, ports, other };
        let open = policy.is_open();
        tracing::info!(
            generation = update.generation,
            default = default.as_str_name(),
            ports = update.ports.len(),
            authorizations = update.ports.iter().map(|p| p.authorizations.len()).sum::<usize>(),
            rate_limits = update.ports.iter().map(|p| p.rate_limits.len()).sum::<usize>(),
            "inbound policy updated"
        );
        self.current.set((!open).then_some(policy));
        self.received.store(true, Ordering::Release);
        Ok(())
    }

    /// The policy in force, if it can refuse or limit anything.
    pub fn get(&self) -> Option<Arc<InboundPolicy>> {
        self.current.get()
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64 + 1
    }

    fn said_pending(&self, reason: Reason) {
        if reason == Reason::NoPolicy && !self.said_pending.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "refusing inbound traffic: this proxy's inbound policy has not arrived from the control plane yet \
                 (it refuses what a `deny` default would until it does; never less)"
            );
        }
    }

    /// The authorization and rate-limit stages for one request to the app on `app_port`:
    /// `Ok` with a would-be denial to report (audit), or the refusal. A request's path
    /// is put in canonical form when a policy depends on its rule.
    pub fn check_request<B>(
        &self,
        policy: &InboundPolicy,
        app_port: u16,
        req: &mut Request<B>,
        meta: &Meta,
        source: Option<SocketAddr>,
    ) -> Result<Option<DecidedBy>, ProxyError> {
        let port = policy.port(app_port, self.one_app);
        if port.is_open() {
            return Ok(None);
        }
        let identity = match &meta.peer {
            Peer::Authenticated(id) => Some(&**id),
            _ => None,
        };
        let client = Client { identity, addr: source.map(|s| s.ip()) };
        if port.routes.is_some() {
            canonical_path(req);
        }
        let rule = port.routes.as_ref().and_then(|table| {
            let (rule, _) = table.select(req.method(), req.uri().path(), req.uri().query(), req.headers())?;
            Some(rule)
        });
        let rule = rule.map(|r| RuleRef { route: &r.route, rule: &r.rule });
        let mut audited = None;
        if let Some(authz) = &port.authz
            && let Decision::Deny { policy, reason } = authz.decide(&client, rule)
        {
            let audit = authz.audit();
            meta.metrics.authz_denied(&policy, reason.as_str(), audit);
            self.said_pending(reason);
            if !audit {
                return Err(ProxyError::Forbidden { policy, reason: reason.as_str() });
            }
            tracing::info!(
                target = %meta.name,
                client = identity.unwrap_or("unauthenticated"),
                ?source,
                %policy,
                reason = reason.as_str(),
                path = req.uri().path(),
                "audit: the request would be refused; letting it through"
            );
            audited = Some(DecidedBy { policy, audit: true });
        }
        for limit in &port.limits {
            if !limit.scope.applies(rule) {
                continue;
            }
            if let Err(limited) = limit.check(identity, self.now()) {
                meta.metrics.rate_limited(&limit.name, limited.which.as_str());
                return Err(ProxyError::RateLimited {
                    policy: limit.name.clone(),
                    retry_after: limited.retry_after,
                });
            }
        }
        Ok(audited)
    }

    /// Authorization of a connection that is not HTTP (port policies only: it takes no
    /// rule); false: close it.
    pub fn admit_connection(
        &self,
        policy: &InboundPolicy,
        app_port: u16,
        meta: &Meta,
        source: Option<SocketAddr>,
    ) -> bool {
        let Some(authz) = &policy.port(app_port, self.one_app).authz else { return true };
        let identity = match &meta.peer {
            Peer::Authenticated(id) => Some(&**id),
            _ => None,
        };
        let client = Client { identity, addr: source.map(|s| s.ip()) };
        let Decision::Deny { policy, reason } = authz.decide(&client, None) else { return true };
        let audit = authz.audit();
        meta.metrics.authz_denied(&policy, reason.as_str(), audit);
        self.said_pending(reason);
        tracing::info!(
            target = %meta.name,
            client = identity.unwrap_or("unauthenticated"),
            ?source,
            %policy,
            reason = reason.as_str(),
            audit,
            "{}",
            if audit { "audit: the connection would be refused; letting it through" } else { "connection refused by policy" }
        );
        audit
    }
}

/// Puts the request's path in canonical form (see [`tarmac_route::path`]), so that the
/// rule the policy saw is the one the app serves.
fn canonical_path<B>(req: &mut Request<B>) {
    let Some(path) = tarmac_route::path::normalize(req.uri().path()) else { return };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::handle::failure;
    use crate::metrics::{Direction, Metrics};
    use std::time::Duration;

    const A: &str = "spiffe://cluster.local/ns/shop/sa/a";
    const C: &str = "spiffe://cluster.local/ns/shop/sa/c";

    fn meta(metrics: &Arc<Metrics>, peer: Peer) -> Meta {
        let name = Arc::new("127.0.0.1:8080".to_string());
        Meta {
            direction: Direction::Inbound,
            metrics: Arc::new(metrics.target(Direction::Inbound, name.clone(), peer.clone())),
            name,
            tap: Arc::default(),
            peer,
            telemetry: Arc::new(crate::telemetry::Telemetry::new(Default::default(), metrics.clone())),
        }
    }

    fn from(identities: &[&str]) -> pb::ClientMatch {
        pb::ClientMatch {
            identities: identities.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// `b` of the example: `a` may call `GET /public` (rule `public` of
    /// `shop/b-routes`), nobody may call `/admin` from outside 10/8, and the default is
    /// `default`.
    fn update(default: DefaultPolicy, limits: Vec<pb::RateLimit>) -> pb::InboundUpdate {
        let rule = |name: &str, path: &str, method: &str| pb::RouteRule {
            name: name.into(),
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch { r#type: pb::PathMatchType::Exact as i32, value: path.into() }),
                method: method.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = |rule: &str| {
            Some(pb::PolicyScope {
                route_kind: "HTTPRoute".into(),
                route: "shop/b-routes".into(),
                rule: rule.into(),
            })
        };
        pb::InboundUpdate {
            generation: 4,
            default_policy: default as i32,
            ports: vec![pb::InboundPort {
                port: 8080,
                authorizations: vec![
                    pb::Authorization {
                        name: "shop/a-public".into(),
                        deny: false,
                        from: vec![from(&[A])],
                        scope: scope("public"),
                    },
                    pb::Authorization {
                        name: "shop/admin-inside".into(),
                        deny: true,
                        from: vec![pb::ClientMatch { authenticated: Some(true), ..Default::default() }],
                        scope: scope("admin"),
                    },
                ],
                rate_limits: limits,
                routes: vec![pb::Route {
                    kind: "HTTPRoute".into(),
                    namespace: "shop".into(),
                    name: "b-routes".into(),
                    rules: vec![rule("public", "/public", "GET"), rule("admin", "/admin", "")],
                }],
                ..Default::default()
            }],
        }
    }

    fn request(method: &str, path: &str) -> Request<()> {
        Request::builder().method(method).uri(path).body(()).unwrap()
    }

    fn source() -> Option<SocketAddr> {
        Some("10.1.2.3:5555".parse().unwrap())
    }

    fn check(
        p: &Policies,
        peer: Option<&str>,
        method: &str,
        path: &str,
    ) -> (Result<Option<DecidedBy>, ProxyError>, String) {
        let metrics = Arc::new(Metrics::new());
        let peer = peer.map_or(Peer::Plaintext, |id| Peer::Authenticated(id.into()));
        let mut req = request(method, path);
        let result = p.check_request(
            &p.get().expect("a policy in force"),
            8080,
            &mut req,
            &meta(&metrics, peer),
            source(),
        );
        (result, req.uri().path().to_string())
    }

    fn refused_by(result: Result<Option<DecidedBy>, ProxyError>) -> Option<(String, &'static str)> {
        match result {
            Err(ProxyError::Forbidden { policy, reason }) => Some((policy.to_string(), reason)),
            Ok(_) => None,
            Err(e) => panic!("not a policy refusal: {e}"),
        }
    }

    #[test]
    fn a_may_call_b_only_on_get_public_and_c_nothing() {
        let p = Policies::fixed(&update(DefaultPolicy::Deny, Vec::new()), true).unwrap();
        assert!(refused_by(check(&p, Some(A), "GET", "/public").0).is_none());
        assert_eq!(
            refused_by(check(&p, Some(A), "POST", "/public").0),
            Some(("default:deny".into(), "default_deny"))
        );
        assert_eq!(
            refused_by(check(&p, Some(A), "GET", "/private").0),
            Some(("default:deny".into(), "default_deny"))
        );
        assert_eq!(
            refused_by(check(&p, Some(C), "GET", "/public").0),
            Some(("shop/a-public".into(), "not_allowed"))
        );
        assert_eq!(
            refused_by(check(&p, None, "GET", "/public").0),
            Some(("shop/a-public".into(), "not_allowed"))
        );
        assert_eq!(
            refused_by(check(&p, Some(A), "GET", "/admin").0),
            Some(("shop/admin-inside".into(), "denied"))
        );
    }

    #[test]
    fn a_path_spelt_another_way_takes_the_same_rule_and_reaches_the_app_canonical() {
        let p = Policies::fixed(&update(DefaultPolicy::AllowAll, Vec::new()), true).unwrap();
        for spelling in ["/%61dmin", "//admin", "/x/../admin", "/./admin"] {
            let (result, path) = check(&p, Some(A), "GET", spelling);
            assert_eq!(refused_by(result), Some(("shop/admin-inside".into(), "denied")), "{spelling}");
            assert_eq!(path, "/admin");
        }
        let (result, path) = check(&p, Some(A), "GET", "/%70ublic?x=1");
        assert!(refused_by(result).is_none());
        assert_eq!(path, "/public");
    }

    #[test]
    fn audit_lets_through_what_it_counts() {
        let p = Policies::fixed(&update(DefaultPolicy::Audit, Vec::new()), true).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut req = request("GET", "/public");
        let m = meta(&metrics, Peer::Authenticated(C.into()));
        let audited = p.check_request(&p.get().unwrap(), 8080, &mut req, &m, source()).unwrap().unwrap();
        assert!(audited.audit);
        assert_eq!(&*audited.policy, "shop/a-public");
        let allowed = p.check_request(
            &p.get().unwrap(),
            8080,
            &mut request("GET", "/public"),
            &meta(&metrics, Peer::Authenticated(A.into())),
            source(),
        );
        assert!(allowed.unwrap().is_none());
        let text = metrics.encode();
        assert!(
            text.contains(&format!("tarmac_authz_denied_total{{direction=\"inbound\",target=\"127.0.0.1:8080\",tls=\"true\",client_id=\"{C}\",policy=\"shop/a-public\",reason=\"not_allowed\",mode=\"audit\"}} 1")),
            "{text}"
        );
    }

    #[test]
    fn before_its_first_policy_a_proxy_refuses_and_is_not_ready() {
        let p = Policies::followed(true);
        assert!(!p.ready());
        assert_eq!(
            refused_by(check(&p, Some(A), "GET", "/public").0),
            Some(("default:none-received".into(), "no_policy"))
        );
        let metrics = Arc::new(Metrics::new());
        assert!(!p.admit_connection(
            &p.get().unwrap(),
            6379,
            &meta(&metrics, Peer::Authenticated(A.into())),
            source()
        ));
        p.update(&pb::InboundUpdate { generation: 1, ..Default::default() }).unwrap();
        assert!(p.ready());
        assert!(p.get().is_none(), "allow-all with no policies: the stage is left out");
        assert!(Policies::off().get().is_none() && Policies::off().ready());
    }

    #[test]
    fn a_bad_update_is_refused_whole() {
        let p = Policies::fixed(&update(DefaultPolicy::Deny, Vec::new()), true).unwrap();
        let mut bad = update(DefaultPolicy::AllowAll, Vec::new());
        bad.ports[0].authorizations[0].from[0].cidrs = vec!["10.0.0.0/99".into()];
        assert!(p.update(&bad).unwrap_err().to_string().contains("shop/a-public"));
        assert_eq!(p.get().unwrap().generation, 4, "the previous policy stays");
    }

    #[test]
    fn connections_that_are_not_http_are_decided_by_port_policies() {
        let mut u = update(DefaultPolicy::AllowAll, Vec::new());
        u.ports[0].authorizations.push(pb::Authorization {
            name: "shop/only-a".into(),
            from: vec![from(&[A])],
            ..Default::default()
        });
        let p = Policies::fixed(&u, true).unwrap();
        let metrics = Arc::new(Metrics::new());
        let policy = p.get().unwrap();
        assert!(p.admit_connection(&policy, 8080, &meta(&metrics, Peer::Authenticated(A.into())), source()));
        assert!(!p.admit_connection(&policy, 8080, &meta(&metrics, Peer::Authenticated(C.into())), source()));
        assert!(!p.admit_connection(&policy, 8080, &meta(&metrics, Peer::Plaintext), source()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_admits_its_rate_and_answers_429_with_retry_after() {
        let limit = pb::RateLimit {
            name: "shop/b-limit".into(),
            // A burst of 1 paces strictly: a request a nanosecond early is refused, and
            // evenly spaced arrivals lose their phase. From 2 on, the rate is kept.
            total: Some(pb::Rate { requests_per_second: 100, burst: 2 }),
            per_caller: Some(pb::Rate { requests_per_second: 40, burst: 2 }),
            ..Default::default()
        };
        let p = Policies::fixed(&update(DefaultPolicy::AllowAll, vec![limit]), true).unwrap();
        let metrics = Arc::new(Metrics::new());
        let callers: Vec<Meta> = (0..4)
            .map(|i| {
                meta(&metrics, Peer::Authenticated(format!("spiffe://cluster.local/ns/shop/sa/c{i}").into()))
            })
            .collect();
        // 300 requests a second, spread over four callers, for 3 s.
        let mut per_second = Vec::new();
        let mut last_refusal = None;
        for _ in 0..3 {
            let mut admitted = 0;
            for i in 0..300 {
                let m = &callers[i % 4];
                match p.check_request(&p.get().unwrap(), 8080, &mut request("GET", "/x"), m, source()) {
                    Ok(_) => admitted += 1,
                    Err(e) => last_refusal = Some(e),
                }
                tokio::time::advance(Duration::from_nanos(1_000_000_000 / 300)).await;
            }
            per_second.push(admitted);
        }
        assert!(per_second.iter().all(|n| (99..=102).contains(n)), "{per_second:?}");
        let refusal = last_refusal.unwrap();
        assert!(matches!(&refusal, ProxyError::RateLimited { policy, .. } if &**policy == "shop/b-limit"));
        let rsp = failure(&callers[0], &refusal, false);
        assert_eq!(rsp.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(rsp.headers()[http::header::RETRY_AFTER], "1");
        let grpc = failure(&callers[0], &refusal, true);
        assert_eq!(grpc.headers()["grpc-status"], "8");
        let forbidden = ProxyError::Forbidden { policy: "shop/a-public".into(), reason: "not_allowed" };
        assert_eq!(failure(&callers[0], &forbidden, false).status(), http::StatusCode::FORBIDDEN);
        assert_eq!(failure(&callers[0], &forbidden, true).headers()["grpc-status"], "7");
        assert!(metrics.encode().contains("tarmac_rate_limited_total{direction=\"inbound\""));
        // One caller alone gets its own 40 a second.
        let mut alone = 0;
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            alone += p
                .check_request(&p.get().unwrap(), 8080, &mut request("GET", "/x"), &callers[0], source())
                .is_ok() as u32;
        }
        assert!((39..=42).contains(&alone), "{alone}");
    }
}
