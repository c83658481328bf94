//! Who may call: a port's AuthorizationPolicies and the workload's default policy,
//! compiled once per update into a [`Authorizations`] that decides per request (or per
//! connection, for opaque TCP).
//!
//! The order is fixed: a DENY policy that applies and matches the client refuses; then,
//! if any ALLOW policy applies, the client must match one of them; then the default
//! decides (`allow-all`, `all-authenticated`, `deny`). `audit` decides as `deny` would,
//! and the caller lets through what it would refuse (counting and logging it).
//!
//! A policy applies to a request when it names the port (its Service, or the Service
//! port), or names the route (or the rule) whose rule the request takes. Connections
//! that are not HTTP take no rule: only port policies apply to them.

use crate::cidr::{Cidr, CidrError};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use tarmac_proto::discovery::{self as pb, DefaultPolicy};

/// What the proxy knows of a client: the SPIFFE ID its connection proved, and its address.
#[derive(Clone, Copy, Debug, Default)]
pub struct Client<'a> {
    pub identity: Option<&'a str>,
    pub addr: Option<IpAddr>,
}

/// The rule a request takes: the route's `namespace/name` and the rule's name (empty when
/// unnamed).
#[derive(Clone, Copy, Debug)]
pub struct RuleRef<'a> {
    pub route: &'a str,
    pub rule: &'a str,
}

/// Where a policy applies on its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Port,
    /// A route (`namespace/name`), or one rule of it.
    Route {
        route: String,
        rule: Option<String>,
    },
}

impl Scope {
    pub fn from_pb(scope: Option<&pb::PolicyScope>) -> Self {
        match scope {
            Some(s) if !s.route.is_empty() => {
                Scope::Route { route: s.route.clone(), rule: (!s.rule.is_empty()).then(|| s.rule.clone()) }
            }
            _ => Scope::Port,
        }
    }

    /// Whether a request taking `rule` (none: no rule, or not HTTP) is in this scope.
    pub fn applies(&self, rule: Option<RuleRef<'_>>) -> bool {
        match self {
            Scope::Port => true,
            Scope::Route { route, rule: want } => {
                rule.is_some_and(|r| r.route == route && want.as_deref().is_none_or(|w| w == r.rule))
            }
        }
    }

    pub fn is_route(&self) -> bool {
        matches!(self, Scope::Route { .. })
    }
}

/// One `from` entry: every condition it sets must hold.
#[derive(Debug)]
struct ClientMatch {
    exact: HashSet<Box<str>>,
    /// `*`-suffixed identities, without the `*`.
    prefixes: Vec<Box<str>>,
    namespaces: Vec<Box<str>>,
    authenticated: Option<bool>,
    cidrs: Vec<Cidr>,
}

impl ClientMatch {
    fn compile(m: &pb::ClientMatch) -> Result<Self, CidrError> {
        let mut exact = HashSet::new();
        let mut prefixes = Vec::new();
        for id in &m.identities {
            match id.strip_suffix('*') {
                Some(prefix) => prefixes.push(prefix.into()),
                None => {
                    exact.insert(id.as_str().into());
                }
            }
        }
        let cidrs = m.cidrs.iter().map(|c| c.parse()).collect::<Result<_, _>>()?;
        Ok(Self {
            exact,
            prefixes,
            namespaces: m.namespaces.iter().map(|n| n.as_str().into()).collect(),
            authenticated: m.authenticated,
            cidrs,
        })
    }

    fn matches(&self, client: &Client<'_>) -> bool {
        if let Some(want) = self.authenticated
            && want != client.identity.is_some()
        {
            return false;
        }
        if !(self.exact.is_empty() && self.prefixes.is_empty()) {
            let Some(id) = client.identity else { return false };
            if !self.exact.contains(id) && !self.prefixes.iter().any(|p| id.starts_with(&**p)) {
                return false;
            }
        }
        if !self.namespaces.is_empty() {
            let Some(ns) = client.identity.and_then(namespace_of) else { return false };
            if !self.namespaces.iter().any(|n| &**n == ns) {
                return false;
            }
        }
        if !self.cidrs.is_empty() {
            let Some(addr) = client.addr else { return false };
            if !self.cidrs.iter().any(|c| c.contains(addr)) {
                return false;
            }
        }
        true
    }
}

/// The namespace of a SPIFFE ID of the form `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
pub fn namespace_of(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let rest = path.strip_prefix("ns/")?;
    let (ns, rest) = rest.split_once('/')?;
    rest.starts_with("sa/").then_some(ns)
}

/// One AuthorizationPolicy as it applies on one port.
#[derive(Debug)]
pub struct Authorization {
    /// `namespace/name`: the `policy` label of denials.
    pub name: Arc<str>,
    pub deny: bool,
    pub scope: Scope,
    from: Vec<ClientMatch>,
}

impl Authorization {
    pub fn matches(&self, client: &Client<'_>) -> bool {
        self.from.iter().any(|m| m.matches(client))
    }
}

/// Why a client was refused: the `reason` label of denials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A DENY policy matched the client.
    Denied,
    /// ALLOW policies apply, and none matched the client.
    NotAllowed,
    /// The default is `all-authenticated` and the client proved no identity.
    Unauthenticated,
    /// The default is `deny` (or `audit`) and no ALLOW policy applies.
    DefaultDeny,
    /// The proxy has not received its inbound policy yet: it refuses what `deny` would.
    NoPolicy,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Denied => "denied",
            Reason::NotAllowed => "not_allowed",
            Reason::Unauthenticated => "unauthenticated",
            Reason::DefaultDeny => "default_deny",
            Reason::NoPolicy => "no_policy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; by the ALLOW policy named, or by the default.
    Allow(Option<Arc<str>>),
    /// Refused by the policy named (`default:<mode>` for the default policy).
    Deny { policy: Arc<str>, reason: Reason },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// A port's authorization, compiled.
#[derive(Debug)]
pub struct Authorizations {
    deny: Vec<Authorization>,
    allow: Vec<Authorization>,
    default: DefaultPolicy,
    default_name: Arc<str>,
    routed: bool,
    /// Nothing received yet ([`Self::pending`]).
    pending: bool,
}

/// A policy that cannot be compiled: the whole update is refused.
#[derive(Debug, thiserror::Error)]
#[error("AuthorizationPolicy {policy}: {reason}")]
pub struct CompileError {
    pub policy: String,
    #[source]
    pub reason: CidrError,
}

impl Authorizations {
    pub fn compile(policies: &[pb::Authorization], default: DefaultPolicy) -> Result<Self, CompileError> {
        let (mut deny, mut allow) = (Vec::new(), Vec::new());
        for p in policies {
            let from = p
                .from
                .iter()
                .map(ClientMatch::compile)
                .collect::<Result<_, _>>()
                .map_err(|reason| CompileError { policy: p.name.clone(), reason })?;
            let a = Authorization {
                name: p.name.as_str().into(),
                deny: p.deny,
                scope: Scope::from_pb(p.scope.as_ref()),
                from,
            };
            if a.deny { deny.push(a) } else { allow.push(a) }
        }
        let routed = deny.iter().chain(&allow).any(|a| a.scope.is_route());
        Ok(Self { deny, allow, default, default_name: default_name(default), routed, pending: false })
    }

    /// What a proxy that has never received its policy does: refuse what `deny` would.
    pub fn pending() -> Self {
        Self {
            deny: Vec::new(),
            allow: Vec::new(),
            default: DefaultPolicy::Deny,
            default_name: "default:none-received".into(),
            routed: false,
            pending: true,
        }
    }

    /// Whether nothing is ever refused or audited: the stage can be left out.
    pub fn allows_everything(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.default == DefaultPolicy::AllowAll
    }

    /// Whether a policy names a route or a rule: only then must a request's rule be found.
    pub fn routed(&self) -> bool {
        self.routed
    }

    /// Refusals are only counted and logged (`audit`).
    pub fn audit(&self) -> bool {
        self.default == DefaultPolicy::Audit
    }

    pub fn default_policy(&self) -> DefaultPolicy {
        self.default
    }

    /// The decision for `client` on a request taking `rule` (none for a connection that is
    /// not HTTP, or a request no rule takes).
    pub fn decide(&self, client: &Client<'_>, rule: Option<RuleRef<'_>>) -> Decision {
        for p in &self.deny {
            if p.scope.applies(rule) && p.matches(client) {
                return Decision::Deny { policy: p.name.clone(), reason: Reason::Denied };
            }
        }
        let mut applied = None;
        for p in &self.allow {
            if p.scope.applies(rule) {
                if p.matches(client) {
                    return Decision::Allow(Some(p.name.clone()));
                }
                applied.get_or_insert(&p.name);
            }
        }
        if let Some(policy) = applied {
            return Decision::Deny { policy: policy.clone(), reason: Reason::NotAllowed };
        }
        let reason = match self.default {
            DefaultPolicy::AllowAll => return Decision::Allow(None),
            DefaultPolicy::AllAuthenticated if client.identity.is_some() => return Decision::Allow(None),
            DefaultPolicy::AllAuthenticated => Reason::Unauthenticated,
            _ if self.pending => Reason::NoPolicy,
            DefaultPolicy::Deny | DefaultPolicy::Audit => Reason::DefaultDeny,
        };
        Decision::Deny { policy: self.default_name.clone(), reason }
    }

    /// Every policy, DENY first, for tools.
    pub fn policies(&self) -> impl Iterator<Item = &Authorization> {
        self.deny.iter().chain(&self.allow)
    }
}

fn default_name(default: DefaultPolicy) -> Arc<str> {
    let mode = match default {
        DefaultPolicy::AllowAll => "allow-all",
        DefaultPolicy::AllAuthenticated => "all-authenticated",
        DefaultPolicy::Deny => "deny",
        DefaultPolicy::Audit => "audit",
    };
    format!("default:{mode}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";

    fn from(identities: &[&str]) -> pb::ClientMatch {
        pb::ClientMatch {
            identities: identities.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn policy(
        name: &str,
        deny: bool,
        from: Vec<pb::ClientMatch>,
        scope: Option<(&str, &str)>,
    ) -> pb::Authorization {
        pb::Authorization {
            name: name.into(),
            deny,
            from,
            scope: scope.map(|(route, rule)| pb::PolicyScope {
                route_kind: "HTTPRoute".into(),
                route: route.into(),
                rule: rule.into(),
            }),
        }
    }

    fn client(identity: Option<&str>) -> Client<'_> {
        Client { identity, addr: Some("10.0.0.7".parse().unwrap()) }
    }

    #[test]
    fn deny_comes_first_and_an_allow_policy_refuses_what_it_does_not_allow() {
        let a = Authorizations::compile(
            &[
                policy("shop/from-web", false, vec![from(&["spiffe://cluster.local/ns/shop/*"])], None),
                policy("shop/not-web", true, vec![from(&[WEB])], Some(("shop/books", "writes"))),
            ],
            DefaultPolicy::AllowAll,
        )
        .unwrap();
        let writes = Some(RuleRef { route: "shop/books", rule: "writes" });
        let reads = Some(RuleRef { route: "shop/books", rule: "reads" });
        assert_eq!(a.decide(&client(Some(WEB)), reads), Decision::Allow(Some("shop/from-web".into())));
        assert_eq!(
            a.decide(&client(Some(WEB)), writes),
            Decision::Deny { policy: "shop/not-web".into(), reason: Reason::Denied }
        );
        assert_eq!(
            a.decide(&client(Some(ADMIN)), reads),
            Decision::Deny { policy: "shop/from-web".into(), reason: Reason::NotAllowed }
        );
        assert_eq!(
            a.decide(&client(None), None),
            Decision::Deny { policy: "shop/from-web".into(), reason: Reason::NotAllowed }
        );
        assert!(a.routed());
    }

    #[test]
    fn the_default_decides_where_no_allow_policy_applies() {
        let rule_only = [policy("shop/public", false, vec![from(&[WEB])], Some(("shop/b", "public")))];
        let public = Some(RuleRef { route: "shop/b", rule: "public" });
        let other = Some(RuleRef { route: "shop/b", rule: "" });
        for (default, admin_elsewhere, anonymous) in [
            (DefaultPolicy::AllowAll, true, true),
            (DefaultPolicy::AllAuthenticated, true, false),
            (DefaultPolicy::Deny, false, false),
            (DefaultPolicy::Audit, false, false),
        ] {
            let a = Authorizations::compile(&rule_only, default).unwrap();
            assert!(a.decide(&client(Some(WEB)), public).is_allowed());
            assert!(!a.decide(&client(Some(ADMIN)), public).is_allowed(), "{default:?}");
            assert_eq!(a.decide(&client(Some(ADMIN)), other).is_allowed(), admin_elsewhere, "{default:?}");
            assert_eq!(a.decide(&client(None), None).is_allowed(), anonymous, "{default:?}");
            assert_eq!(a.audit(), default == DefaultPolicy::Audit);
        }
        let deny = Authorizations::compile(&[], DefaultPolicy::Deny).unwrap();
        assert_eq!(
            deny.decide(&client(Some(WEB)), None),
            Decision::Deny { policy: "default:deny".into(), reason: Reason::DefaultDeny }
        );
        let pending = Authorizations::pending();
        assert_eq!(
            pending.decide(&client(Some(WEB)), None),
            Decision::Deny { policy: "default:none-received".into(), reason: Reason::NoPolicy }
        );
        assert!(Authorizations::compile(&[], DefaultPolicy::AllowAll).unwrap().allows_everything());
    }

    #[test]
    fn sources_and_together_and_or_within() {
        let entry = pb::ClientMatch {
            namespaces: vec!["shop".into(), "ops".into()],
            cidrs: vec!["10.0.0.0/24".into()],
            ..Default::default()
        };
        let unauthenticated = pb::ClientMatch {
            authenticated: Some(false),
            cidrs: vec!["192.168.0.0/16".into()],
            ..Default::default()
        };
        let a = Authorizations::compile(
            &[policy("p/p", false, vec![entry, unauthenticated], None)],
            DefaultPolicy::AllowAll,
        )
        .unwrap();
        assert!(a.decide(&client(Some(WEB)), None).is_allowed());
        assert!(a.decide(&client(Some(ADMIN)), None).is_allowed());
        let far = Client { identity: Some(WEB), addr: Some("10.0.1.1".parse().unwrap()) };
        assert!(!a.decide(&far, None).is_allowed(), "both the namespace and the range must hold");
        let other_ns = Client { identity: Some("spiffe://cluster.local/ns/x/sa/web"), ..client(None) };
        assert!(!a.decide(&other_ns, None).is_allowed());
        let lan = Client { identity: None, addr: Some("192.168.3.4".parse().unwrap()) };
        assert!(a.decide(&lan, None).is_allowed());
        let lan_meshed = Client { identity: Some(WEB), addr: Some("192.168.3.4".parse().unwrap()) };
        assert!(!a.decide(&lan_meshed, None).is_allowed(), "`authenticated: false` refuses mesh clients");
    }

    #[test]
    fn a_bad_range_refuses_the_update_by_policy() {
        let bad = pb::ClientMatch { cidrs: vec!["10.0.0.0/40".into()], ..Default::default() };
        let e = Authorizations::compile(&[policy("shop/lan", false, vec![bad], None)], DefaultPolicy::Deny)
            .unwrap_err();
        assert!(e.to_string().contains("shop/lan") && e.to_string().contains("10.0.0.0/40"), "{e}");
    }

    #[test]
    fn namespaces_are_read_from_spiffe_ids() {
        assert_eq!(namespace_of(WEB), Some("shop"));
        assert_eq!(namespace_of("spiffe://td/ns/a/b"), None);
        assert_eq!(namespace_of("spiffe://td/x/ns/a/sa/b"), None);
    }
}
