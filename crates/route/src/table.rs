use crate::filters::Filters;
use crate::matching::{self, RequestMatch};
use crate::policy::{Retry, RetryError};
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;
use tarmac_proto::discovery as pb;

/// Where a backendRef sends requests.
///
/// `B` is what the user of the table keeps for a Service port: the proxy its backend (a
/// balancer over endpoints), a tool nothing at all.
#[derive(Debug)]
pub enum Target<B> {
    /// A rule without backendRefs: the Service the route is attached to.
    Parent,
    /// A Service port that exists.
    Service(B),
    /// The backendRef names no existing Service port: its share of requests gets 500.
    Missing,
}

#[derive(Debug)]
pub struct Backend<B> {
    /// `namespace/name:port`, for errors and logs.
    pub name: Arc<String>,
    pub weight: u32,
    pub target: Target<B>,
    pub filters: Filters<B>,
}

#[derive(Debug)]
pub struct Rule<B> {
    /// The route (`namespace/name`) and the rule's name (empty when unnamed): the `route`
    /// and `rule` labels of the route metrics, bounded by configuration.
    pub route: Arc<String>,
    pub rule: Arc<String>,
    /// The rule's name, absent when unnamed (the `route` label of response metrics).
    pub name: Option<Arc<str>>,
    pub filters: Filters<B>,
    pub backends: Vec<Backend<B>>,
    total_weight: u64,
    pub request_timeout: Option<Duration>,
    /// Per try, retries included.
    pub backend_timeout: Option<Duration>,
    /// Absent: only requests that never left the proxy are retried.
    pub retry: Option<Retry>,
}

impl<B> Rule<B> {
    /// Picks a backend by weight with a fresh draw for every request; `None` when every
    /// weight is 0. A rule without backendRefs goes to the parent Service.
    pub fn pick(&self) -> Option<&Backend<B>> {
        if self.total_weight == 0 {
            return None;
        }
        let mut draw = fastrand::u64(..self.total_weight);
        for backend in &self.backends {
            let w = u64::from(backend.weight);
            if draw < w {
                return Some(backend);
            }
            draw -= w;
        }
        None
    }
}

/// The compiled routes of one Service port.
#[derive(Debug)]
pub struct RouteTable<B> {
    /// Every match of every rule, most specific first; the first that holds wins.
    entries: Vec<(RequestMatch, usize)>,
    /// The header names the matches test, each read and fingerprinted once per request:
    /// a hundred rules on one header cost one lookup and, for the values that differ, a
    /// hundred integer comparisons.
    header_names: Vec<HeaderName>,
    /// Per entry, an Exact header test tried first ([`RequestMatch::first_exact_header`]).
    prechecks: Vec<Option<(usize, u64)>>,
    pub rules: Vec<Rule<B>>,
    /// The Service port requests were addressed to (redirects keep it).
    pub service_port: u16,
}

/// A route that does not compile: the whole update is refused.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {route} rule {rule}: {reason}")]
pub struct RouteError {
    pub kind: String,
    /// `namespace/name`.
    pub route: String,
    pub rule: usize,
    #[source]
    pub reason: CompileError,
}

/// Why one match, filter or retry of a rule does not compile. Discovery sends what the
/// model validated, so these mean a control plane and proxy that disagree (or a bug):
/// the update is refused and the last good table stays.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("invalid regular expression `{pattern}`: {source}")]
    Regex { pattern: String, source: regex::Error },
    #[error("invalid method `{0}`")]
    Method(String),
    #[error("invalid header name `{0}`")]
    HeaderName(String),
    #[error("invalid value for header `{0}`")]
    HeaderValue(String),
    #[error("invalid CORS exposeHeaders")]
    CorsExposeHeaders,
    #[error("fault status {0} is not a status")]
    FaultStatus(u32),
    #[error("redirect status {0} is not 301, 302, 303, 307 or 308")]
    RedirectStatus(u32),
    #[error("invalid rewrite hostname `{0}`")]
    RewriteHostname(String),
    #[error(transparent)]
    Retry(#[from] RetryError),
}

const PARENT_WEIGHT: u32 = 1;

impl<B> RouteTable<B> {
    /// Compiles `routes` (in the order discovery sent them). `resolve` gives each
    /// backendRef (and mirror) that names an existing Service port what its user keeps for
    /// it. A route that does not compile refuses the whole update.
    pub fn build(
        routes: &[pb::Route],
        service_port: u16,
        resolve: &mut dyn FnMut(&pb::RouteBackend) -> B,
    ) -> Result<Self, RouteError> {
        let mut entries = Vec::new();
        let mut rules = Vec::new();
        let mut target =
            |b: &pb::RouteBackend| if b.exists { Target::Service(resolve(b)) } else { Target::Missing };
        for route in routes {
            let route_name = Arc::new(format!("{}/{}", route.namespace, route.name));
            for (rule_index, rule) in route.rules.iter().enumerate() {
                let at = |reason: CompileError| RouteError {
                    kind: route.kind.clone(),
                    route: route_name.to_string(),
                    rule: rule_index,
                    reason,
                };
                let index = rules.len();
                if rule.matches.is_empty() {
                    entries.push((RequestMatch::any(), index));
                }
                for m in &rule.matches {
                    entries.push((RequestMatch::compile(m).map_err(at)?, index));
                }
                let mut backends = Vec::new();
                for b in &rule.backends {
                    backends.push(Backend {
                        name: Arc::new(format!("{}/{}:{}", b.namespace, b.service, b.port)),
                        weight: b.weight,
                        target: target(b),
                        filters: Filters::compile(&b.filters, &mut target).map_err(at)?,
                    });
                }
                let filters = Filters::compile(&rule.filters, &mut target).map_err(at)?;
                if backends.is_empty() && !filters.redirects() {
                    backends.push(Backend {
                        name: Arc::new("parent".to_string()),
                        weight: PARENT_WEIGHT,
                        target: Target::Parent,
                        filters: Filters::default(),
                    });
                }
                let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
                rules.push(Rule {
                    route: route_name.clone(),
                    rule: Arc::new(rule.name.clone()),
                    name: (!rule.name.is_empty()).then(|| Arc::from(rule.name.as_str())),
                    filters,
                    total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
                    backends,
                    request_timeout: millis(rule.request_timeout_ms),
                    backend_timeout: millis(rule.backend_request_timeout_ms),
                    retry: rule.retry.as_ref().map(Retry::compile).transpose().map_err(|e| at(e.into()))?,
                });
            }
        }
        // Stable: equal precedence keeps route order, then rule and match order.
        entries.sort_by_cached_key(|(m, _)| m.precedence());
        let mut header_names = Vec::new();
        for (m, _) in &mut entries {
            m.use_slots(&mut header_names);
        }
        let prechecks = entries.iter().map(|(m, _)| m.first_exact_header()).collect();
        Ok(Self { entries, header_names, prechecks, rules, service_port })
    }

    /// The rule a request takes, with the match that selected it.
    pub fn select(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Option<(&Rule<B>, &RequestMatch)> {
        let values: Vec<_> = self
            .header_names
            .iter()
            .map(|name| {
                let value = matching::header_value(headers, name)?;
                let fingerprint = matching::fingerprint(&value);
                Some((value, fingerprint))
            })
            .collect();
        self.entries
            .iter()
            .zip(&self.prechecks)
            .find(|((m, _), precheck)| {
                precheck.is_none_or(|(slot, want)| values[slot].as_ref().is_some_and(|(_, got)| *got == want))
                    && m.matches_read(method, path, query, &values)
            })
            .map(|((m, rule), _)| (&self.rules[*rule], m))
    }
}

/// For tools (`tarmac routes`, `tarmac check`): the table as the proxy evaluates it.
impl<B> RouteTable<B> {
    /// Every match with the index of its rule in [`RouteTable::rules`], in the order
    /// [`RouteTable::select`] tries them.
    pub fn entries(&self) -> impl Iterator<Item = (&RequestMatch, usize)> {
        self.entries.iter().map(|(m, rule)| (m, *rule))
    }

    /// The position in [`RouteTable::entries`] of the match a request takes, found by
    /// [`RouteTable::select`] itself.
    pub fn select_entry(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Option<usize> {
        let (_, taken) = self.select(method, path, query, headers)?;
        self.entries.iter().position(|(m, _)| std::ptr::eq(m, taken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};
    use pb::PathMatchType;
    use std::collections::HashMap;

    fn path(kind: PathMatchType, value: &str) -> Option<pb::PathMatch> {
        Some(pb::PathMatch { r#type: kind as i32, value: value.into() })
    }

    fn header(name: &str, value: &str) -> pb::ValueMatch {
        pb::ValueMatch { name: name.into(), value: value.into(), regex: false }
    }

    fn rule(name: &str, matches: Vec<pb::RouteMatch>) -> pb::RouteRule {
        pb::RouteRule {
            name: name.into(),
            matches,
            backends: vec![pb::RouteBackend {
                service: name.into(),
                namespace: "ns".into(),
                port: 80,
                weight: 1,
                exists: false,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn table(routes: Vec<pb::Route>) -> RouteTable<()> {
        RouteTable::build(&routes, 80, &mut |_| ()).unwrap()
    }

    fn route(name: &str, rules: Vec<pb::RouteRule>) -> pb::Route {
        pb::Route { kind: "HTTPRoute".into(), namespace: "ns".into(), name: name.into(), rules }
    }

    fn taken(t: &RouteTable<()>, target: &str, headers: &[(&str, &str)]) -> Option<String> {
        let (p, q) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        t.select(&Method::GET, p, q, &h).map(|(r, _)| r.rule.to_string())
    }

    #[test]
    fn precedence_follows_the_specification() {
        let m = |p: Option<pb::PathMatch>, headers: Vec<pb::ValueMatch>, query: Vec<pb::ValueMatch>| {
            pb::RouteMatch { path: p, headers, query_params: query, method: String::new() }
        };
        let t = table(vec![route(
            "r",
            vec![
                rule("root", vec![m(path(PathMatchType::Prefix, "/"), vec![], vec![])]),
                rule("header", vec![m(None, vec![header("version", "two")], vec![])]),
                rule("two-headers", vec![m(None, vec![header("version", "two"), header("x", "y")], vec![])]),
                rule("query", vec![m(None, vec![], vec![header("animal", "whale")])]),
                rule("v2", vec![m(path(PathMatchType::Prefix, "/v2"), vec![], vec![])]),
                rule("exact", vec![m(path(PathMatchType::Exact, "/v2/exact"), vec![], vec![])]),
                rule("regex", vec![m(path(PathMatchType::RegularExpression, "/re.*"), vec![], vec![])]),
            ],
        )]);
        assert_eq!(taken(&t, "/v2/exact", &[]).as_deref(), Some("exact"));
        assert_eq!(
            taken(&t, "/v2/other", &[("version", "two")]).as_deref(),
            Some("v2"),
            "longer prefix first"
        );
        assert_eq!(taken(&t, "/", &[("version", "two")]).as_deref(), Some("header"), "a header beats bare /");
        assert_eq!(taken(&t, "/", &[("version", "two"), ("x", "y")]).as_deref(), Some("two-headers"));
        assert_eq!(taken(&t, "/?animal=whale", &[("version", "two")]).as_deref(), Some("header"));
        assert_eq!(taken(&t, "/?animal=whale", &[]).as_deref(), Some("query"));
        assert_eq!(taken(&t, "/v2example", &[]).as_deref(), Some("root"));
        assert_eq!(taken(&t, "/regex", &[]).as_deref(), Some("root"), "any prefix beats a regex");
    }

    #[test]
    fn header_matches_read_their_own_header_among_many() {
        let m = |name: &str, value: &str| pb::RouteMatch {
            headers: vec![header(name, value)],
            ..Default::default()
        };
        for names in [3, 65] {
            let rules =
                (0..names).map(|i| rule(&format!("h{i}"), vec![m(&format!("x-h{i}"), "yes")])).collect();
            let t = table(vec![route("r", rules)]);
            for i in [0, names - 1] {
                let name = format!("x-h{i}");
                assert_eq!(taken(&t, "/", &[(&name, "yes")]), Some(format!("h{i}")), "{names} names");
                assert_eq!(taken(&t, "/", &[(&name, "no")]), None, "{names} names");
            }
            assert_eq!(taken(&t, "/", &[]), None);
        }
        // Rules testing one name share its value; several values are one joined value.
        let t =
            table(vec![route("r", vec![rule("a", vec![m("x-v", "a")]), rule("ab", vec![m("x-v", "a,b")])])]);
        assert_eq!(taken(&t, "/", &[("x-v", "a")]).as_deref(), Some("a"));
        let mut h = HeaderMap::new();
        h.append("x-v", "a".parse().unwrap());
        h.append("x-v", "b".parse().unwrap());
        assert_eq!(
            t.select(&Method::GET, "/", None, &h).map(|(r, _)| r.rule.to_string()).as_deref(),
            Some("ab")
        );
        // A regular expression before an Exact value in one match: the table tries the
        // Exact one first, and both must hold.
        let both = pb::RouteMatch {
            headers: vec![
                pb::ValueMatch { name: "x-build".into(), value: "[0-9]+".into(), regex: true },
                header("x-env", "prod"),
            ],
            ..Default::default()
        };
        let t = table(vec![route("r", vec![rule("both", vec![both])])]);
        assert_eq!(taken(&t, "/", &[("x-build", "12"), ("x-env", "prod")]).as_deref(), Some("both"));
        assert_eq!(taken(&t, "/", &[("x-build", "1a"), ("x-env", "prod")]), None, "the regex still applies");
        assert_eq!(taken(&t, "/", &[("x-build", "12"), ("x-env", "prodx")]), None);
        assert_eq!(taken(&t, "/", &[("x-env", "prod")]), None);
    }

    #[test]
    fn ties_go_to_the_earlier_route_then_the_earlier_rule_and_no_match_is_none() {
        let m = |v: &str| pb::RouteMatch { path: path(PathMatchType::Prefix, v), ..Default::default() };
        let t = table(vec![
            route("a", vec![rule("a1", vec![m("/x")]), rule("a2", vec![m("/x")])]),
            route("b", vec![rule("b1", vec![m("/x")]), rule("b2", vec![m("/y")])]),
        ]);
        assert_eq!(taken(&t, "/x", &[]).as_deref(), Some("a1"));
        assert_eq!(taken(&t, "/y/z", &[]).as_deref(), Some("b2"));
        assert_eq!(taken(&t, "/z", &[]), None);
    }

    #[test]
    fn weights_choose_per_request_and_zero_gets_nothing() {
        let backend = |name: &str, weight| pb::RouteBackend {
            service: name.into(),
            namespace: "ns".into(),
            port: 80,
            weight,
            exists: name != "missing",
            ..Default::default()
        };
        let t = table(vec![route(
            "w",
            vec![pb::RouteRule {
                backends: vec![backend("a", 70), backend("b", 30), backend("missing", 0)],
                ..Default::default()
            }],
        )]);
        let rule = &t.rules[0];
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            *counts.entry(rule.pick().unwrap().name.to_string()).or_insert(0) += 1;
        }
        assert!(!counts.contains_key("ns/missing:80"));
        let a = counts["ns/a:80"] as f64 / 10_000.0;
        assert!((a - 0.7).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn a_rule_without_backends_goes_to_the_parent_and_all_zero_weights_to_none() {
        let t = table(vec![route(
            "p",
            vec![
                pb::RouteRule { name: "parent".into(), ..Default::default() },
                pb::RouteRule {
                    name: "zero".into(),
                    backends: vec![pb::RouteBackend { weight: 0, exists: true, ..Default::default() }],
                    ..Default::default()
                },
            ],
        )]);
        assert!(matches!(t.rules[0].pick().unwrap().target, Target::Parent));
        assert!(t.rules[1].pick().is_none());
    }
}
