//! Route filters: header modifiers, redirects and URL rewrites, compiled once per route
//! update so that a request only copies prepared header names and values.

use crate::matching::RequestMatch;
use crate::table::{CompileError, Target};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, uri::PathAndQuery};
use std::sync::Arc;
use std::time::Duration;
use tarmac_proto::discovery::{self as pb, path_modifier, route_filter};

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: set replaces, add appends, remove
/// deletes (names are case-insensitive, as header names always are).
#[derive(Debug, Default)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), CompileError> {
    let n =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| CompileError::HeaderName(name.to_string()))?;
    let v = HeaderValue::from_str(value).map_err(|_| CompileError::HeaderValue(name.to_string()))?;
    Ok((n, v))
}

impl HeaderModifier {
    fn compile(m: &pb::HeaderModifier) -> Result<Self, CompileError> {
        Ok(Self {
            set: m.set.iter().map(|h| header(&h.name, &h.value)).collect::<Result<_, _>>()?,
            add: m.add.iter().map(|h| header(&h.name, &h.value)).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes()).map_err(|_| CompileError::HeaderName(n.clone()))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// A path change: the whole path, or the part a PathPrefix matched.
#[derive(Debug, Clone)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

impl PathModifier {
    fn compile(m: &Option<pb::PathModifier>) -> Option<Self> {
        match m.as_ref()?.modifier.as_ref()? {
            path_modifier::Modifier::ReplaceFullPath(p) => Some(PathModifier::ReplaceFullPath(p.clone())),
            path_modifier::Modifier::ReplacePrefixMatch(p) => {
                Some(PathModifier::ReplacePrefixMatch(p.clone()))
            }
        }
    }

    /// The new path for `path`, which matched `prefix` (without its trailing `/`, empty
    /// when the match was not a PathPrefix or was `/`).
    pub fn apply(&self, path: &str, prefix: &str) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplacePrefixMatch(replacement) => {
                // `path` starts with `prefix` and continues with `/` or nothing.
                let rest = path.get(prefix.len()..).unwrap_or("");
                let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
                if joined.is_empty() { "/".to_string() } else { joined }
            }
        }
    }
}

/// `RequestRedirect`: the proxy answers itself with a `Location`.
#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    hostname: Option<String>,
    port: Option<u16>,
    path: Option<PathModifier>,
    pub status: StatusCode,
}

impl Redirect {
    /// The `Location` for a request with this `scheme`, `host` (as in `Host`, maybe with a
    /// port) and path, addressed to Service port `service_port`. Ports follow the Gateway
    /// API: an explicit port; else the well-known port of a changed scheme; else the port
    /// the request was addressed to. The default port of the scheme is never written.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        service_port: u16,
        path: &str,
        query: Option<&str>,
        prefix: &str,
    ) -> String {
        let (request_host, request_port) = split_host_port(host);
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let hostname = self.hostname.as_deref().unwrap_or(request_host);
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(s)) => default_port(s),
            (None, None) => request_port.or(Some(service_port)),
        };
        let port = port.filter(|p| Some(*p) != default_port(scheme));
        let new_path = match &self.path {
            Some(m) => m.apply(path, prefix),
            None => path.to_string(),
        };
        let mut location = format!("{scheme}://{hostname}");
        if let Some(p) = port {
            location.push_str(&format!(":{p}"));
        }
        location.push_str(&new_path);
        if let Some(q) = query {
            location.push('?');
            location.push_str(q);
        }
        location
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host[:port]`, also for bracketed IPv6 literals.
pub fn split_host_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') && !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse().ok())
        }
        _ => (host, None),
    }
}

/// `URLRewrite`: the backend sees another host and/or path.
#[derive(Debug)]
pub struct Rewrite {
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

/// `RequestMirror`: a share of requests is copied to another backend.
#[derive(Debug)]
pub struct Mirror<B> {
    pub target: Target<B>,
    numerator: u32,
    denominator: u32,
}

impl<B> Mirror<B> {
    /// Draws whether this request is mirrored.
    pub fn wanted(&self) -> bool {
        self.denominator > 0 && fastrand::u32(..self.denominator) < self.numerator
    }
}

/// An allowed origin: `*`, an exact origin, or `scheme://*.suffix`.
#[derive(Debug)]
enum Origin {
    Any,
    Exact(String),
    Wildcard { scheme: String, suffix: String },
}

impl Origin {
    fn parse(pattern: &str) -> Self {
        if pattern == "*" {
            return Origin::Any;
        }
        match pattern.split_once("://*") {
            Some((scheme, suffix)) => {
                Origin::Wildcard { scheme: format!("{scheme}://"), suffix: suffix.to_ascii_lowercase() }
            }
            None => Origin::Exact(pattern.to_ascii_lowercase()),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        match self {
            Origin::Any => true,
            Origin::Exact(o) => *o == origin,
            Origin::Wildcard { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str())),
        }
    }
}

/// The `CORS` filter: answers preflights from allowed origins itself and adds the CORS
/// response headers to their other requests.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<Origin>,
    credentials: bool,
    methods: Vec<String>,
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

const ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;

impl Cors {
    fn compile(c: &pb::Cors) -> Result<Self, CompileError> {
        let expose = if c.expose_headers.is_empty() {
            None
        } else {
            Some(
                HeaderValue::from_str(&c.expose_headers.join(", "))
                    .map_err(|_| CompileError::CorsExposeHeaders)?,
            )
        };
        Ok(Self {
            origins: c.allow_origins.iter().map(|o| Origin::parse(o)).collect(),
            credentials: c.allow_credentials,
            methods: c.allow_methods.clone(),
            headers: c.allow_headers.clone(),
            expose,
            max_age: HeaderValue::from(if c.max_age == 0 { 5 } else { c.max_age }),
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        origin.to_str().is_ok_and(|text| self.origins.iter().any(|o| o.allows(text)))
    }

    /// The request's `Origin` when it is allowed.
    fn allowed_origin<'a>(&self, request: &'a HeaderMap) -> Option<&'a HeaderValue> {
        request.get(header::ORIGIN).filter(|origin| self.allows(origin))
    }

    fn allow_origin(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        let any = self.origins.iter().any(|o| matches!(o, Origin::Any));
        if any && !self.credentials {
            out.insert(ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            out.insert(ALLOW_ORIGIN, origin.clone());
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }

    /// For a preflight (`OPTIONS` with `Access-Control-Request-Method`), the headers of
    /// the answer the proxy gives itself (none when the origin is not allowed).
    pub fn preflight(&self, method: &Method, request: &HeaderMap) -> Option<HeaderMap> {
        if method != Method::OPTIONS || !request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let mut out = HeaderMap::new();
        let Some(origin) = self.allowed_origin(request) else { return Some(out) };
        self.allow_origin(origin, &mut out);
        let echo = |list: &[String], asked: header::HeaderName| -> Option<HeaderValue> {
            if list.iter().any(|m| m == "*") {
                request.get(asked).cloned()
            } else if list.is_empty() {
                None
            } else {
                HeaderValue::from_str(&list.join(", ")).ok()
            }
        };
        if let Some(v) = echo(&self.methods, header::ACCESS_CONTROL_REQUEST_METHOD) {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = echo(&self.headers, header::ACCESS_CONTROL_REQUEST_HEADERS) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        // Browsers read exposed headers from the actual response, but the Gateway API
        // (and its CORS conformance test) has the preflight name them too.
        if let Some(expose) = &self.expose {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(out)
    }

    /// Adds the CORS headers to the response of a request from `origin`, when allowed.
    pub fn decorate(&self, origin: &HeaderValue, response: &mut HeaderMap) {
        if !self.allows(origin) {
            return;
        }
        self.allow_origin(origin, response);
        if let Some(expose) = &self.expose {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// A FaultInjection (an `ExtensionRef` filter): delays and aborts for a share of the
/// requests that carry its headers.
#[derive(Debug)]
pub struct Fault {
    /// The reference names no FaultInjection: requests get 500, the filter is not skipped.
    pub unresolved: bool,
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(StatusCode, u32)>,
    only: RequestMatch,
}

/// Shares are in millionths.
fn draw(per_million: u32) -> bool {
    per_million > 0 && fastrand::u32(..1_000_000) < per_million
}

impl Fault {
    fn compile(f: &pb::Fault) -> Result<Self, CompileError> {
        let abort = match f.abort_status {
            0 => None,
            code => Some((
                StatusCode::from_u16(code as u16).map_err(|_| CompileError::FaultStatus(code))?,
                f.abort_per_million,
            )),
        };
        Ok(Self {
            unresolved: f.unresolved,
            delay: (f.delay_ms > 0).then(|| (Duration::from_millis(f.delay_ms), f.delay_per_million)),
            abort,
            only: RequestMatch::compile(&pb::RouteMatch {
                headers: f.headers.clone(),
                ..Default::default()
            })?,
        })
    }

    /// Whether this request is delayed (and for how long), and whether it is aborted
    /// (with which status), drawn independently.
    pub fn draw(&self, method: &Method, headers: &HeaderMap) -> (Option<Duration>, Option<StatusCode>) {
        if !self.only.matches(method, "/", None, headers) {
            return (None, None);
        }
        let delay = self.delay.filter(|(_, share)| draw(*share)).map(|(d, _)| d);
        let abort = self.abort.filter(|(_, share)| draw(*share)).map(|(s, _)| s);
        (delay, abort)
    }
}

/// The filters of a rule or of a backendRef, as ordered steps: the request's, then the
/// response's. A filter that is not configured is not in the list and costs nothing.
#[derive(Debug)]
pub struct Filters<B> {
    /// In the order they apply (see [`RequestFilter::order`]), whatever the order written.
    pub request: Vec<RequestFilter<B>>,
    /// Header modifiers, then CORS headers.
    pub response: Vec<ResponseFilter>,
}

/// One step of a request's way through a rule (or backendRef).
#[derive(Debug)]
pub enum RequestFilter<B> {
    /// Answers CORS preflights itself; for other requests, keeps their `Origin` for the
    /// response's CORS headers.
    Cors(Arc<Cors>),
    Fault(Fault),
    /// Answers with a `Location` itself.
    Redirect(Redirect),
    Headers(HeaderModifier),
    Rewrite(Rewrite),
    Mirror(Mirror<B>),
}

impl<B> RequestFilter<B> {
    /// Answers come before changes (a preflight or a fault is not rewritten first), and
    /// mirrors come last so that the copy is the request the backend gets.
    fn order(&self) -> u8 {
        match self {
            RequestFilter::Cors(_) => 0,
            RequestFilter::Fault(_) => 1,
            RequestFilter::Redirect(_) => 2,
            RequestFilter::Headers(_) => 3,
            RequestFilter::Rewrite(_) => 4,
            RequestFilter::Mirror(_) => 5,
        }
    }
}

#[derive(Debug)]
pub enum ResponseFilter {
    Headers(HeaderModifier),
    /// Adds the CORS headers for the request's `Origin`, when allowed.
    Cors(Arc<Cors>),
}

impl<B> Default for Filters<B> {
    fn default() -> Self {
        Self { request: Vec::new(), response: Vec::new() }
    }
}

impl<B> Filters<B> {
    /// Whether a redirect answers requests here (no backend is needed).
    pub fn redirects(&self) -> bool {
        self.request.iter().any(|f| matches!(f, RequestFilter::Redirect(_)))
    }

    /// Compiles `filters`; `resolve` gives mirrors their backend.
    pub fn compile(
        filters: &[pb::RouteFilter],
        resolve: &mut dyn FnMut(&pb::RouteBackend) -> Target<B>,
    ) -> Result<Self, CompileError> {
        let mut out = Filters::default();
        let mut response_headers = None;
        let mut cors = None;
        for f in filters {
            let step = match &f.filter {
                Some(route_filter::Filter::RequestHeaderModifier(m)) => {
                    RequestFilter::Headers(HeaderModifier::compile(m)?)
                }
                Some(route_filter::Filter::ResponseHeaderModifier(m)) => {
                    response_headers = Some(HeaderModifier::compile(m)?);
                    continue;
                }
                Some(route_filter::Filter::RequestRedirect(r)) => {
                    let status = match r.status_code {
                        0 => StatusCode::FOUND,
                        code @ (301 | 302 | 303 | 307 | 308) => {
                            StatusCode::from_u16(code as u16).expect("a redirect status")
                        }
                        other => {
                            return Err(CompileError::RedirectStatus(other));
                        }
                    };
                    RequestFilter::Redirect(Redirect {
                        scheme: (!r.scheme.is_empty()).then(|| r.scheme.clone()),
                        hostname: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
                        port: u16::try_from(r.port).ok().filter(|p| *p != 0),
                        path: PathModifier::compile(&r.path),
                        status,
                    })
                }
                Some(route_filter::Filter::UrlRewrite(r)) => {
                    let hostname = if r.hostname.is_empty() {
                        None
                    } else {
                        Some(
                            HeaderValue::from_str(&r.hostname)
                                .map_err(|_| CompileError::RewriteHostname(r.hostname.clone()))?,
                        )
                    };
                    RequestFilter::Rewrite(Rewrite { hostname, path: PathModifier::compile(&r.path) })
                }
                Some(route_filter::Filter::RequestMirror(m)) => {
                    let target = m.backend.as_ref().map_or(Target::Missing, &mut *resolve);
                    RequestFilter::Mirror(Mirror {
                        target,
                        numerator: m.numerator,
                        denominator: m.denominator,
                    })
                }
                Some(route_filter::Filter::Cors(c)) => {
                    let c = Arc::new(Cors::compile(c)?);
                    cors = Some(c.clone());
                    RequestFilter::Cors(c)
                }
                Some(route_filter::Filter::Fault(f)) => RequestFilter::Fault(Fault::compile(f)?),
                None => continue,
            };
            out.request.push(step);
        }
        // Stable: mirrors keep their written order.
        out.request.sort_by_key(RequestFilter::order);
        out.response.extend(response_headers.map(ResponseFilter::Headers));
        out.response.extend(cors.map(ResponseFilter::Cors));
        Ok(out)
    }
}

/// A rewrite or redirect whose result is no request target (the request's own query
/// joined to a configured path): the request fails, the route stays.
#[derive(Debug, thiserror::Error)]
#[error("rewritten path `{text}`: {source}")]
pub struct RewrittenPathError {
    pub text: String,
    source: http::uri::InvalidUri,
}

/// `path` with `query` appended, as a request target.
pub fn path_and_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, RewrittenPathError> {
    let text = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    PathAndQuery::try_from(text.as_str()).map_err(|source| RewrittenPathError { text, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(
        scheme: Option<&str>,
        hostname: Option<&str>,
        port: Option<u16>,
        path: Option<PathModifier>,
    ) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_string),
            hostname: hostname.map(str::to_string),
            port,
            path,
            status: StatusCode::FOUND,
        }
    }

    #[test]
    fn replace_prefix_match_follows_the_specification_table() {
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/anything", "", "/base", "/base/anything"),
        ];
        for (path, prefix, replacement, want) in cases {
            let got = PathModifier::ReplacePrefixMatch(replacement.into()).apply(path, prefix);
            assert_eq!(got, want, "{path} with prefix {prefix} replaced by {replacement}");
        }
        assert_eq!(PathModifier::ReplaceFullPath("/one".into()).apply("/full/two", "/full"), "/one");
    }

    #[test]
    fn redirect_ports_follow_the_scheme_rules() {
        // Only a hostname: the port the request was addressed to stays, unless it is 80.
        let r = redirect(None, Some("example.org"), None, None);
        assert_eq!(r.location("http", "echo", 80, "/a", None, ""), "http://example.org/a");
        assert_eq!(r.location("http", "echo:8080", 8080, "/a", None, ""), "http://example.org:8080/a");
        assert_eq!(r.location("http", "echo", 8080, "/a", Some("q=1"), ""), "http://example.org:8080/a?q=1");
        // A scheme change goes to that scheme's well-known port, which is not written.
        let r = redirect(Some("https"), None, None, None);
        assert_eq!(r.location("http", "echo:8080", 8080, "/s", None, ""), "https://echo/s");
        // An explicit port is written unless it is the scheme's default.
        let r = redirect(None, None, Some(8083), None);
        assert_eq!(r.location("http", "echo", 80, "/p", None, ""), "http://echo:8083/p");
        let r = redirect(Some("https"), None, Some(443), None);
        assert_eq!(r.location("http", "echo", 80, "/p", None, ""), "https://echo/p");
        let r = redirect(None, None, None, Some(PathModifier::ReplacePrefixMatch("/new".into())));
        assert_eq!(r.location("http", "echo", 80, "/old/x", None, "/old"), "http://echo/new/x");
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let m = HeaderModifier::compile(&pb::HeaderModifier {
            set: vec![pb::HeaderValue { name: "X-Set".into(), value: "s".into() }],
            add: vec![pb::HeaderValue { name: "X-Add".into(), value: "added".into() }],
            remove: vec!["X-Remove".into()],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.append("x-set", "old1".parse().unwrap());
        h.append("x-set", "old2".parse().unwrap());
        h.insert("x-add", "orig".parse().unwrap());
        h.insert("x-remove", "r".parse().unwrap());
        m.apply(&mut h);
        assert_eq!(h.get_all("x-set").iter().collect::<Vec<_>>(), ["s"]);
        assert_eq!(h.get_all("x-add").iter().collect::<Vec<_>>(), ["orig", "added"]);
        assert!(h.get("x-remove").is_none());
    }

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::compile(&pb::Cors {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_credentials: credentials,
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec!["x-total".into()],
            max_age: 0,
        })
        .unwrap()
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn cors_answers_preflights_from_allowed_origins() {
        let c = cors(&["https://*.example.com", "http://app.test"], true);
        let pre = request(&[
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-a, x-b"),
        ]);
        let out = c.preflight(&Method::OPTIONS, &pre).unwrap();
        assert_eq!(out[ALLOW_ORIGIN], "https://shop.example.com");
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-a, x-b");
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(out[header::ACCESS_CONTROL_MAX_AGE], "5");
        assert_eq!(out[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-total", "the preflight names them too");
        let stranger =
            request(&[("origin", "https://example.com.evil"), ("access-control-request-method", "GET")]);
        assert!(c.preflight(&Method::OPTIONS, &stranger).unwrap().is_empty());
        assert!(c.preflight(&Method::GET, &pre).is_none(), "only OPTIONS is a preflight");
        let mut rsp = HeaderMap::new();
        c.decorate(&HeaderValue::from_static("http://app.test"), &mut rsp);
        assert_eq!(rsp[ALLOW_ORIGIN], "http://app.test");
        assert_eq!(rsp[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
        let mut rsp = HeaderMap::new();
        cors(&["*"], false).decorate(&HeaderValue::from_static("http://any.where"), &mut rsp);
        assert_eq!(rsp[ALLOW_ORIGIN], "*");
    }

    #[test]
    fn faults_hit_their_share_of_matching_requests() {
        let f = Fault::compile(&pb::Fault {
            delay_ms: 200,
            delay_per_million: 100_000,
            abort_status: 503,
            abort_per_million: 50_000,
            headers: vec![pb::ValueMatch { name: "x-chaos".into(), value: "on".into(), regex: false }],
            ..Default::default()
        })
        .unwrap();
        let chaos = request(&[("x-chaos", "on")]);
        let (mut delayed, mut aborted) = (0, 0);
        for _ in 0..20_000 {
            let (d, a) = f.draw(&Method::GET, &chaos);
            delayed += usize::from(d == Some(Duration::from_millis(200)));
            aborted += usize::from(a == Some(StatusCode::SERVICE_UNAVAILABLE));
        }
        // 10 % and 5 % of 20000: 2000 ± 42 and 1000 ± 31 (one standard deviation).
        assert!((1750..=2250).contains(&delayed) && (800..=1200).contains(&aborted), "{delayed} {aborted}");
        assert_eq!(f.draw(&Method::GET, &HeaderMap::new()), (None, None), "only requests with the headers");
    }

    #[test]
    fn host_and_port_split_also_for_ipv6() {
        assert_eq!(split_host_port("echo:8080"), ("echo", Some(8080)));
        assert_eq!(split_host_port("echo"), ("echo", None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
    }
}
