//! Checks that types cannot express. Each problem names the field by its path.

use crate::Resource;
use crate::authz::{AuthorizationPolicy, DEFAULT_POLICY_ANNOTATION, DefaultPolicy, RateLimitPolicy, Source};
use crate::duration;
use crate::fault::FaultInjection;
use crate::meta::ObjectMeta;
use crate::resilience::ResiliencePolicy;
use crate::route::{
    GrpcRoute, HeaderMatch, HeaderModifier, HttpBackendRef, HttpRoute, HttpRouteFilter, ParentRef,
    PathModifier,
};
use crate::service::Service;
use crate::telemetry::Telemetry;
use crate::workload::Workload;
use std::collections::HashSet;

/// The most retries a policy may ask for: retries stay bounded even with the budget off.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// The least wait between tries: proxies take a backoff of 0 to mean the default
/// (25 ms), so a shorter one is refused rather than silently lengthened.
const MIN_BACKOFF: std::time::Duration = std::time::Duration::from_millis(1);
const BACKOFF_TOO_SHORT: &str = "must be at least 1ms (leave it out for the default, 25ms)";

/// One problem: the field's path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { field: field.into(), message: message.into() });
    }
}

pub fn validate(resource: &Resource) -> Vec<Problem> {
    let mut p = Problems::default();
    validate_meta(resource.meta(), &mut p);
    match resource {
        Resource::Namespace(_) => {}
        Resource::Service(s) => validate_service(s, &mut p),
        Resource::Workload(w) => validate_workload(w, &mut p),
        Resource::HttpRoute(r) => validate_http_route(r, &mut p),
        Resource::GrpcRoute(r) => validate_grpc_route(r, &mut p),
        Resource::FaultInjection(f) => validate_fault(f, &mut p),
        Resource::ResiliencePolicy(r) => validate_resilience(r, &mut p),
        Resource::AuthorizationPolicy(a) => validate_authorization(a, &mut p),
        Resource::RateLimitPolicy(r) => validate_rate_limit(r, &mut p),
        Resource::Telemetry(t) => validate_telemetry(t, &mut p),
    }
    if let Some(value) = resource.meta().annotations.get(DEFAULT_POLICY_ANNOTATION) {
        let field = format!("metadata.annotations.{DEFAULT_POLICY_ANNOTATION}");
        if !matches!(resource, Resource::Namespace(_) | Resource::Workload(_)) {
            p.add(field, "sets a default policy on a Namespace, a Workload or a Deployment only");
        } else if DefaultPolicy::parse(value).is_none() {
            p.add(field, format!("`{value}` is no default policy; use {}", DefaultPolicy::NAMES.join(", ")));
        }
    }
    p.0
}

/// DNS-1123 label: lowercase letters, digits and `-`, starting and ending alphanumeric.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn validate_meta(meta: &ObjectMeta, p: &mut Problems) {
    if !is_dns_label(&meta.name, 63) && !meta.name.split('.').all(|part| is_dns_label(part, 63)) {
        p.add(
            "metadata.name",
            "must be lowercase letters, digits, `-` or `.` (a DNS name), at most 253 characters",
        );
    }
    if !is_dns_label(&meta.namespace, 63) {
        p.add(
            "metadata.namespace",
            "must be lowercase letters, digits and `-` (a DNS label), at most 63 characters",
        );
    }
}

fn validate_service(s: &Service, p: &mut Problems) {
    if let Some(affinity) = s.spec.session_affinity.as_deref().filter(|a| *a != "None") {
        p.add(
            "spec.sessionAffinity",
            format!(
                "`{affinity}` is not supported: Tarmac balances every request (remove it, or write `None`)"
            ),
        );
    }
    for (field, policy) in [
        ("spec.internalTrafficPolicy", &s.spec.internal_traffic_policy),
        ("spec.externalTrafficPolicy", &s.spec.external_traffic_policy),
    ] {
        if let Some(policy) = policy.as_deref().filter(|v| !matches!(*v, "Cluster" | "Local")) {
            p.add(field, format!("`{policy}` is not a traffic policy: write `Cluster` or `Local`"));
        }
    }
    if s.spec.ports.is_empty() {
        p.add("spec.ports", "a Service needs at least one port");
    }
    let mut numbers = HashSet::new();
    let mut names = HashSet::new();
    for (i, port) in s.spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if port.port == 0 {
            p.add(format!("{at}.port"), "must be 1-65535");
        }
        if !numbers.insert(port.port) {
            p.add(format!("{at}.port"), format!("port {} is listed twice", port.port));
        }
        if let Some(name) = &port.name {
            if !names.insert(name.clone()) {
                p.add(format!("{at}.name"), format!("`{name}` is used by two ports"));
            }
        } else if s.spec.ports.len() > 1 {
            p.add(format!("{at}.name"), "ports must be named when a Service has more than one");
        }
        if port.target_number() == Some(0) {
            p.add(format!("{at}.targetPort"), "must be 1-65535 or a port name");
        }
        if let Some(proto) = &port.protocol
            && proto != "TCP"
        {
            p.add(format!("{at}.protocol"), format!("`{proto}` is not supported: Tarmac proxies TCP"));
        }
    }
}

fn validate_workload(w: &Workload, p: &mut Problems) {
    if w.spec.command.is_empty() || w.spec.command[0].is_empty() {
        p.add("spec.command", "needs the program to run, e.g. `[python3, app.py]`");
    }
    if w.spec.port == 0 {
        p.add("spec.port", "must be 1-65535");
    }
    if w.spec.replicas == 0 || w.spec.replicas > 64 {
        p.add("spec.replicas", "must be 1-64 in local mode");
    }
    for key in w.spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            p.add(format!("spec.env.{key}"), "is not a valid environment variable name");
        }
    }
    if w.metadata.labels.is_empty() {
        p.add("metadata.labels", "a Workload needs labels for Services to select it, e.g. `app: books`");
    }
}

fn validate_parent_refs(refs: &[ParentRef], p: &mut Problems) {
    if refs.is_empty() {
        p.add(
            "spec.parentRefs",
            "a mesh route attaches to a Service: add `parentRefs: [{group: \"\", kind: Service, name: ...}]`",
        );
    }
    for (i, r) in refs.iter().enumerate() {
        if !r.is_service() {
            p.add(
                format!("spec.parentRefs[{i}]"),
                format!(
                    "Tarmac implements the Gateway API mesh profile: parents are Services (`group: \"\"`, `kind: Service`), not `{}` `{}`",
                    if r.group.is_empty() { "core" } else { &r.group },
                    r.kind
                ),
            );
        }
        if r.port == Some(0) {
            p.add(format!("spec.parentRefs[{i}].port"), "must be 1-65535");
        }
    }
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A RegularExpression match must compile (the proxy anchors it to the whole value).
fn validate_regex(field: String, pattern: &str, p: &mut Problems) {
    if let Err(e) = regex::Regex::new(pattern) {
        let reason = e.to_string();
        let last = reason.lines().last().unwrap_or("invalid").trim().to_string();
        p.add(field, format!("`{pattern}` is not a valid regular expression: {last}"));
    }
}

fn validate_header_matches(at: &str, matches: &[HeaderMatch], p: &mut Problems, header: bool) {
    let mut seen = HashSet::new();
    for (i, m) in matches.iter().enumerate() {
        let f = format!("{at}[{i}]");
        if m.match_type == "RegularExpression" {
            validate_regex(format!("{f}.value"), &m.value, p);
        }
        if m.match_type != "Exact" && m.match_type != "RegularExpression" {
            p.add(
                format!("{f}.type"),
                format!("`{}` is not a match type: use Exact or RegularExpression", m.match_type),
            );
        }
        if header && !is_token(&m.name) {
            p.add(format!("{f}.name"), "is not a valid header name");
        }
        if m.name.is_empty() {
            p.add(format!("{f}.name"), "must not be empty");
        }
        let key = if header { m.name.to_ascii_lowercase() } else { m.name.clone() };
        if !seen.insert(key) {
            p.add(format!("{f}.name"), format!("`{}` is matched twice in one match", m.name));
        }
    }
}

fn validate_modifier(at: &str, m: &HeaderModifier, p: &mut Problems) {
    let mut names = HashSet::new();
    for (kind, list) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in list.iter().enumerate() {
            if !is_token(&h.name) {
                p.add(format!("{at}.{kind}[{i}].name"), "is not a valid header name");
            }
            if !names.insert(h.name.to_ascii_lowercase()) {
                p.add(format!("{at}.{kind}[{i}].name"), format!("`{}` appears twice in this filter", h.name));
            }
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        if !names.insert(name.to_ascii_lowercase()) {
            p.add(format!("{at}.remove[{i}]"), format!("`{name}` appears twice in this filter"));
        }
    }
}

fn validate_path_modifier(at: &str, m: &PathModifier, prefix_match: bool, p: &mut Problems) {
    match m.modifier_type.as_str() {
        "ReplaceFullPath" => match &m.replace_full_path {
            Some(path) if path.starts_with('/') => {}
            _ => p.add(
                format!("{at}.replaceFullPath"),
                "ReplaceFullPath needs `replaceFullPath` starting with `/`",
            ),
        },
        "ReplacePrefixMatch" => {
            match &m.replace_prefix_match {
                Some(path) if path.starts_with('/') => {}
                _ => p.add(
                    format!("{at}.replacePrefixMatch"),
                    "ReplacePrefixMatch needs `replacePrefixMatch` starting with `/`",
                ),
            }
            if !prefix_match {
                p.add(
                    format!("{at}.type"),
                    "ReplacePrefixMatch is only valid in a rule whose matches are all PathPrefix",
                );
            }
        }
        other => p.add(
            format!("{at}.type"),
            format!("`{other}` is not a path modifier: use ReplaceFullPath or ReplacePrefixMatch"),
        ),
    }
}

const HTTP_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "CORS",
    "ExtensionRef",
];
const GRPC_FILTERS: &[&str] =
    &["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"];

fn validate_filters(
    at: &str,
    filters: &[HttpRouteFilter],
    allowed: &[&str],
    prefix_match: bool,
    p: &mut Problems,
) {
    let mut kinds = HashSet::new();
    for (i, f) in filters.iter().enumerate() {
        let fat = format!("{at}[{i}]");
        if !allowed.contains(&f.filter_type.as_str()) {
            p.add(
                format!("{fat}.type"),
                format!("`{}` is not a filter here; use one of {}", f.filter_type, allowed.join(", ")),
            );
            continue;
        }
        // Each filter type's settings sit in the field named after it, and only there.
        let present: Vec<&str> = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            ("ResponseHeaderModifier", f.response_header_modifier.is_some()),
            ("RequestMirror", f.request_mirror.is_some()),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("CORS", f.cors.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if present != [f.filter_type.as_str()] {
            p.add(
                fat.clone(),
                format!(
                    "a `{}` filter needs its settings in the field of that name, and no other",
                    f.filter_type
                ),
            );
        }
        if f.filter_type != "RequestMirror"
            && f.filter_type != "ExtensionRef"
            && !kinds.insert(f.filter_type.clone())
        {
            p.add(format!("{fat}.type"), format!("`{}` may appear once per rule", f.filter_type));
        }
        if let Some(m) = &f.request_header_modifier {
            validate_modifier(&format!("{fat}.requestHeaderModifier"), m, p);
        }
        if let Some(m) = &f.response_header_modifier {
            validate_modifier(&format!("{fat}.responseHeaderModifier"), m, p);
        }
        if let Some(r) = &f.request_redirect {
            let rat = format!("{fat}.requestRedirect");
            if let Some(code) = r.status_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                p.add(format!("{rat}.statusCode"), "must be 301, 302, 303, 307 or 308");
            }
            if let Some(scheme) = &r.scheme
                && scheme != "http"
                && scheme != "https"
            {
                p.add(format!("{rat}.scheme"), "must be `http` or `https`");
            }
            if let Some(path) = &r.path {
                validate_path_modifier(&format!("{rat}.path"), path, prefix_match, p);
            }
        }
        if let Some(r) = &f.url_rewrite
            && let Some(path) = &r.path
        {
            validate_path_modifier(&format!("{fat}.urlRewrite.path"), path, prefix_match, p);
        }
        if let Some(r) = &f.extension_ref
            && (r.group != "tarmac.io" || r.kind != "FaultInjection")
        {
            p.add(
                format!("{fat}.extensionRef"),
                format!(
                    "`{}` `{}` is not an extension Tarmac knows; use `{{group: tarmac.io, kind: FaultInjection, name: ...}}`",
                    r.group, r.kind
                ),
            );
        }
        if let Some(m) = &f.request_mirror {
            if m.percent.is_some_and(|v| v > 100) {
                p.add(format!("{fat}.requestMirror.percent"), "must be 0-100");
            }
            if let Some(fr) = &m.fraction
                && (fr.denominator == 0 || fr.numerator > fr.denominator)
            {
                p.add(
                    format!("{fat}.requestMirror.fraction"),
                    "needs 0 <= numerator <= denominator and denominator > 0",
                );
            }
            if m.percent.is_some() && m.fraction.is_some() {
                p.add(format!("{fat}.requestMirror"), "set `percent` or `fraction`, not both");
            }
        }
    }
    if kinds.contains("RequestRedirect") && kinds.contains("URLRewrite") {
        p.add(at.to_string(), "RequestRedirect and URLRewrite cannot be used in the same rule");
    }
}

fn validate_backend_refs(
    at: &str,
    refs: &[HttpBackendRef],
    p: &mut Problems,
    prefix_match: bool,
    grpc: bool,
) {
    for (i, b) in refs.iter().enumerate() {
        let bat = format!("{at}[{i}]");
        let kind = b.kind.as_deref().unwrap_or("Service");
        let group = b.group.as_deref().unwrap_or("");
        if kind == "Service" && group.is_empty() && b.port.is_none() {
            p.add(format!("{bat}.port"), "a Service backend needs a `port`");
        }
        if b.weight > 1_000_000 {
            p.add(format!("{bat}.weight"), "must be 0-1000000");
        }
        let allowed = if grpc { GRPC_FILTERS } else { HTTP_FILTERS };
        validate_filters(&format!("{bat}.filters"), &b.filters, allowed, prefix_match, p);
    }
}

fn validate_http_route(r: &HttpRoute, p: &mut Problems) {
    validate_parent_refs(&r.spec.parent_refs, p);
    let mut names = HashSet::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name
            && !names.insert(name.clone())
        {
            p.add(format!("{at}.name"), format!("rule name `{name}` is used twice"));
        }
        let mut all_prefix = true;
        for (j, m) in rule.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            if let Some(path) = &m.path {
                match path.match_type.as_str() {
                    "PathPrefix" | "Exact" => {
                        if !path.value.starts_with('/') {
                            p.add(format!("{mat}.path.value"), "must start with `/`");
                        }
                        if path.value.contains("//")
                            || path.value.contains("/./")
                            || path.value.contains("/../")
                        {
                            p.add(format!("{mat}.path.value"), "must not contain `//`, `/./` or `/../`");
                        }
                    }
                    "RegularExpression" => validate_regex(format!("{mat}.path.value"), &path.value, p),
                    other => p.add(
                        format!("{mat}.path.type"),
                        format!(
                            "`{other}` is not a path match type: use PathPrefix, Exact or RegularExpression"
                        ),
                    ),
                }
                all_prefix &= path.match_type == "PathPrefix";
            }
            validate_header_matches(&format!("{mat}.headers"), &m.headers, p, true);
            validate_header_matches(&format!("{mat}.queryParams"), &m.query_params, p, false);
            if let Some(method) = &m.method
                && !METHODS.contains(&method.as_str())
            {
                p.add(format!("{mat}.method"), format!("`{method}` is not one of {}", METHODS.join(", ")));
            }
        }
        validate_filters(&format!("{at}.filters"), &rule.filters, HTTP_FILTERS, all_prefix, p);
        validate_backend_refs(&format!("{at}.backendRefs"), &rule.backend_refs, p, all_prefix, false);
        if let Some(t) = &rule.timeouts {
            let request = t.request.as_deref().map(|d| (d, duration::parse(d)));
            let backend = t.backend_request.as_deref().map(|d| (d, duration::parse(d)));
            for (field, parsed) in [("request", &request), ("backendRequest", &backend)] {
                if let Some((_, Err(e))) = parsed {
                    p.add(format!("{at}.timeouts.{field}"), e.to_string());
                }
            }
            if let (Some((_, Ok(req))), Some((_, Ok(back)))) = (&request, &backend)
                && !req.is_zero()
                && back > req
            {
                p.add(format!("{at}.timeouts.backendRequest"), "must not be longer than `request`");
            }
        }
        if let Some(retry) = &rule.retry {
            if let Some(backoff) = &retry.backoff {
                match duration::parse(backoff) {
                    Err(e) => p.add(format!("{at}.retry.backoff"), e.to_string()),
                    Ok(d) if d < MIN_BACKOFF => p.add(format!("{at}.retry.backoff"), BACKOFF_TOO_SHORT),
                    Ok(_) => {}
                }
            }
            if retry.attempts.is_some_and(|n| n > MAX_RETRY_ATTEMPTS) {
                p.add(format!("{at}.retry.attempts"), format!("must be at most {MAX_RETRY_ATTEMPTS}"));
            }
            for (k, code) in retry.codes.iter().enumerate() {
                if !(400..=599).contains(code) {
                    p.add(format!("{at}.retry.codes[{k}]"), "must be an HTTP status 400-599");
                }
            }
        }
    }
}

fn validate_grpc_route(r: &GrpcRoute, p: &mut Problems) {
    validate_parent_refs(&r.spec.parent_refs, p);
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            if let Some(method) = &m.method {
                if method.match_type != "Exact" && method.match_type != "RegularExpression" {
                    p.add(format!("{mat}.method.type"), "use Exact or RegularExpression");
                }
                if method.service.is_none() && method.method.is_none() {
                    p.add(format!("{mat}.method"), "set `service`, `method` or both");
                }
                if method.match_type == "RegularExpression" {
                    for (field, value) in [("service", &method.service), ("method", &method.method)] {
                        if let Some(v) = value {
                            validate_regex(format!("{mat}.method.{field}"), v, p);
                        }
                    }
                }
            }
            validate_header_matches(&format!("{mat}.headers"), &m.headers, p, true);
        }
        validate_filters(&format!("{at}.filters"), &rule.filters, GRPC_FILTERS, false, p);
        validate_backend_refs(&format!("{at}.backendRefs"), &rule.backend_refs, p, false, true);
        for (field, given) in [("timeouts", &rule.timeouts), ("retry", &rule.retry)] {
            if given.is_some() {
                let section = match &rule.name {
                    Some(name) => format!(", sectionName: {name}"),
                    None => String::new(),
                };
                p.add(
                    format!("{at}.{field}"),
                    format!(
                        "GRPCRoute has no `{field}` (the Gateway API gives it none); set `{field}` in a \
                         tarmac.io/v1alpha1 ResiliencePolicy with targetRefs: [{{group: \
                         gateway.networking.k8s.io, kind: GRPCRoute, name: {}{section}}}]",
                        r.metadata.name
                    ),
                );
            }
        }
    }
}

fn validate_fault(f: &FaultInjection, p: &mut Problems) {
    let spec = &f.spec;
    if spec.delay.is_none() && spec.abort.is_none() {
        p.add("spec", "a FaultInjection needs `delay`, `abort` or both");
    }
    if let Some(d) = &spec.delay {
        if let Err(e) = duration::parse(&d.fixed_delay) {
            p.add("spec.delay.fixedDelay", e.to_string());
        }
        if !(0.0..=100.0).contains(&d.percentage) {
            p.add("spec.delay.percentage", "must be 0-100");
        }
    }
    if let Some(a) = &spec.abort {
        if !(200..=599).contains(&a.http_status) {
            p.add("spec.abort.httpStatus", "must be an HTTP status 200-599");
        }
        if !(0.0..=100.0).contains(&a.percentage) {
            p.add("spec.abort.percentage", "must be 0-100");
        }
    }
    validate_header_matches("spec.headers", &spec.headers, p, true);
}

fn validate_resilience(r: &ResiliencePolicy, p: &mut Problems) {
    let spec = &r.spec;
    if spec.target_refs.is_empty() {
        p.add("spec.targetRefs", "needs at least one target: a Service, an HTTPRoute or a GRPCRoute");
    }
    let mut route_targets = false;
    for (i, t) in spec.target_refs.iter().enumerate() {
        let at = format!("spec.targetRefs[{i}]");
        if t.is_service() {
            if t.section_name.is_some() {
                p.add(
                    format!("{at}.sectionName"),
                    "a Service target has no sections; name an HTTPRoute or GRPCRoute rule instead",
                );
            }
        } else if t.route_kind().is_some() {
            route_targets = true;
        } else {
            p.add(
                at,
                format!(
                    "`{}` `{}` cannot be targeted; use a Service (`group: \"\"`) or an HTTPRoute or GRPCRoute (`group: gateway.networking.k8s.io`)",
                    t.group, t.kind
                ),
            );
        }
    }
    if spec.retry_budget.is_none()
        && spec.circuit_breaker.is_none()
        && spec.limits.is_none()
        && spec.retry.is_none()
        && spec.timeouts.is_none()
    {
        p.add(
            "spec",
            "a ResiliencePolicy needs `retryBudget`, `circuitBreaker`, `limits`, `retry` or `timeouts`",
        );
    }
    let duration = |field: String, value: &Option<String>, p: &mut Problems| {
        if let Some(v) = value
            && let Err(e) = duration::parse(v)
        {
            p.add(field, e.to_string());
        }
    };
    if let Some(b) = &spec.retry_budget {
        if route_targets {
            p.add(
                "spec.retryBudget",
                "applies to Service targets only: a budget is kept per Service its callers call",
            );
        }
        if let Some(ratio) = b.ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            p.add("spec.retryBudget.ratio", "must be 0 to 1 (0.2: retries add at most 20 % to the requests)");
        }
        if b.min_retries_per_second.is_some_and(|n| n > 10_000) {
            p.add("spec.retryBudget.minRetriesPerSecond", "must be at most 10000");
        }
        duration("spec.retryBudget.window".into(), &b.window, p);
        if b.window
            .as_deref()
            .and_then(|w| duration::parse(w).ok())
            .is_some_and(|w| w.is_zero() || w.as_secs() > 3600)
        {
            p.add("spec.retryBudget.window", "must be more than 0 and at most 1h");
        }
    }
    if let Some(c) = &spec.circuit_breaker {
        if route_targets {
            p.add("spec.circuitBreaker", "applies to Service targets only: endpoints belong to a Service");
        }
        duration("spec.circuitBreaker.baseEjectionTime".into(), &c.base_ejection_time, p);
        duration("spec.circuitBreaker.maxEjectionTime".into(), &c.max_ejection_time, p);
        if c.max_ejection_percent.is_some_and(|n| n > 100) {
            p.add("spec.circuitBreaker.maxEjectionPercent", "must be 0-100");
        }
    }
    if let Some(l) = &spec.limits {
        if route_targets {
            p.add(
                "spec.limits",
                "applies to Service targets only: a limit is kept per Service its callers call",
            );
        }
        if !(1..=1_000_000).contains(&l.max_in_flight) {
            p.add("spec.limits.maxInFlight", "must be 1 to 1000000");
        }
        if l.max_queued > 1_000_000 {
            p.add("spec.limits.maxQueued", "must be at most 1000000");
        }
    }
    if let Some(retry) = &spec.retry {
        if retry.attempts.is_some_and(|n| n > MAX_RETRY_ATTEMPTS) {
            p.add("spec.retry.attempts", format!("must be at most {MAX_RETRY_ATTEMPTS}"));
        }
        for (k, code) in retry.codes.iter().enumerate() {
            if !(400..=599).contains(code) {
                p.add(format!("spec.retry.codes[{k}]"), "must be an HTTP status 400-599");
            }
        }
        for (k, code) in retry.grpc_codes.iter().enumerate() {
            if crate::resilience::grpc_code(code).is_none() {
                p.add(
                    format!("spec.retry.grpcCodes[{k}]"),
                    format!("`{code}` is no gRPC status; use a name such as UNAVAILABLE or a number 0-16"),
                );
            }
        }
        duration("spec.retry.backoff".into(), &retry.backoff, p);
        if retry.backoff.as_deref().and_then(|b| duration::parse(b).ok()).is_some_and(|d| d < MIN_BACKOFF) {
            p.add("spec.retry.backoff", BACKOFF_TOO_SHORT);
        }
    }
    if let Some(t) = &spec.timeouts {
        duration("spec.timeouts.request".into(), &t.request, p);
        duration("spec.timeouts.backendRequest".into(), &t.backend_request, p);
    }
}

/// Policy targets: a Service (or one of its ports, by name), or an HTTPRoute or GRPCRoute
/// (or one of its rules, by name), in the policy's namespace.
fn validate_policy_targets(kind: &str, targets: &[crate::resilience::PolicyTargetRef], p: &mut Problems) {
    if targets.is_empty() {
        p.add(
            "spec.targetRefs",
            format!("{kind} needs at least one target: a Service, an HTTPRoute or a GRPCRoute"),
        );
    }
    for (i, t) in targets.iter().enumerate() {
        if !t.is_service() && t.route_kind().is_none() {
            p.add(
                format!("spec.targetRefs[{i}]"),
                format!(
                    "`{}` `{}` cannot be targeted; use a Service (`group: \"\"`) or an HTTPRoute or GRPCRoute (`group: gateway.networking.k8s.io`)",
                    t.group, t.kind
                ),
            );
        }
        if t.name.is_empty() {
            p.add(format!("spec.targetRefs[{i}].name"), "must not be empty");
        }
        if t.section_name.as_deref() == Some("") {
            p.add(
                format!("spec.targetRefs[{i}].sectionName"),
                "must name a Service port or a route rule, or be left out",
            );
        }
    }
}

/// SPIFFE IDs, exact or a prefix ending in `*`, and service accounts (`name`, `namespace/name`).
fn validate_identities(at: &str, identities: &[String], service_accounts: &[String], p: &mut Problems) {
    for (k, id) in identities.iter().enumerate() {
        let field = format!("{at}.identities[{k}]");
        match id.strip_suffix('*') {
            Some(prefix) if !prefix.starts_with("spiffe://") => p.add(
                field,
                format!("`{id}` is no SPIFFE ID prefix: write e.g. `spiffe://cluster.local/ns/shop/*`"),
            ),
            Some(prefix) if prefix.contains('*') => p.add(field, "`*` may only end an identity"),
            Some(_) => {}
            None => {
                let path = id.strip_prefix("spiffe://").and_then(|rest| rest.split_once('/'));
                if !path.is_some_and(|(domain, path)| !domain.is_empty() && !path.is_empty())
                    || id.chars().any(|c| c.is_whitespace())
                {
                    p.add(
                        field,
                        format!("`{id}` is no SPIFFE ID: write e.g. `spiffe://cluster.local/ns/shop/sa/web`"),
                    );
                }
            }
        }
    }
    for (k, sa) in service_accounts.iter().enumerate() {
        let (ns, name) = crate::authz::service_account(sa, "default");
        if !is_dns_label(&ns, 63) || name.split('.').any(|part| !is_dns_label(part, 63)) {
            p.add(
                format!("{at}.serviceAccounts[{k}]"),
                format!("`{sa}` is no service account: write `name` (in the policy's namespace) or `namespace/name`"),
            );
        }
    }
}

fn validate_source(at: &str, s: &Source, p: &mut Problems) {
    if s.is_empty() {
        p.add(
            at.to_string(),
            "an empty entry would match every client: name identities, serviceAccounts, namespaces or cidrs, or set `authenticated: true` or `unauthenticated: true`",
        );
    }
    validate_identities(at, &s.identities, &s.service_accounts, p);
    for (k, ns) in s.namespaces.iter().enumerate() {
        if !is_dns_label(ns, 63) {
            p.add(format!("{at}.namespaces[{k}]"), format!("`{ns}` is no namespace name"));
        }
    }
    for (k, cidr) in s.cidrs.iter().enumerate() {
        if let Err(e) = cidr.parse::<tarmac_policy::Cidr>() {
            p.add(format!("{at}.cidrs[{k}]"), e.to_string());
        }
    }
    if s.authenticated == Some(false) {
        p.add(format!("{at}.authenticated"), "`false` is not a client set: write `unauthenticated: true`");
    }
    if s.unauthenticated == Some(false) {
        p.add(format!("{at}.unauthenticated"), "`false` is not a client set: write `authenticated: true`");
    }
    if s.unauthenticated == Some(true) && s.needs_identity() {
        p.add(
            at.to_string(),
            "`unauthenticated: true` with identities, service accounts, namespaces or `authenticated` matches no client: put them in entries of their own",
        );
    }
}

fn validate_authorization(a: &AuthorizationPolicy, p: &mut Problems) {
    validate_policy_targets("an AuthorizationPolicy", &a.spec.target_refs, p);
    if a.spec.from.is_empty() {
        p.add(
            "spec.from",
            "needs at least one entry: the clients the policy allows or denies (e.g. `- serviceAccounts: [web]`)",
        );
    }
    for (i, s) in a.spec.from.iter().enumerate() {
        validate_source(&format!("spec.from[{i}]"), s, p);
    }
}

/// The most requests per second a limit may name.
pub const MAX_RATE: u32 = 10_000_000;

fn validate_rate(at: &str, rps: u32, burst: Option<u32>, p: &mut Problems) {
    if !(1..=MAX_RATE).contains(&rps) {
        p.add(format!("{at}.requestsPerSecond"), format!("must be 1 to {MAX_RATE}"));
    }
    if burst.is_some_and(|b| !(1..=MAX_RATE).contains(&b)) {
        p.add(format!("{at}.burst"), format!("must be 1 to {MAX_RATE}"));
    }
}

fn validate_telemetry(t: &Telemetry, p: &mut Problems) {
    let spec = &t.spec;
    if spec.tracing.is_none() && spec.access_logging.is_none() {
        p.add("spec", "a Telemetry needs `tracing` or `accessLogging`");
    }
    if let Some(selector) = &spec.selector
        && selector.match_labels.is_empty()
    {
        p.add(
            "spec.selector.matchLabels",
            "selects nothing when empty: name labels, or leave `selector` out for the whole namespace",
        );
    }
    if let Some(tracing) = &spec.tracing {
        if let Some(pct) = tracing.sampling_percentage
            && !(pct.is_finite() && (0.0..=100.0).contains(&pct))
        {
            p.add(
                "spec.tracing.samplingPercentage",
                "must be 0 to 100 (10: one request in ten starts a trace)",
            );
        }
        if let Some(collector) = &tracing.collector
            && !crate::telemetry::valid_collector(collector)
        {
            p.add(
                "spec.tracing.collector",
                format!(
                    "`{collector}` is not host:port (an OTLP/gRPC collector, e.g. `otel-collector:4317`)"
                ),
            );
        }
        if tracing.sampling_percentage.is_none() && tracing.collector.is_none() {
            p.add("spec.tracing", "sets nothing: give `samplingPercentage`, `collector` or both");
        }
    }
}

fn validate_rate_limit(r: &RateLimitPolicy, p: &mut Problems) {
    let spec = &r.spec;
    validate_policy_targets("a RateLimitPolicy", &spec.target_refs, p);
    if spec.total.is_none() && spec.per_caller.is_none() && spec.overrides.is_empty() {
        p.add("spec", "a RateLimitPolicy needs `total`, `perCaller` or `overrides`");
    }
    if let Some(t) = &spec.total {
        validate_rate("spec.total", t.requests_per_second, t.burst, p);
    }
    if let Some(c) = &spec.per_caller {
        validate_rate("spec.perCaller", c.requests_per_second, c.burst, p);
    }
    for (i, o) in spec.overrides.iter().enumerate() {
        let at = format!("spec.overrides[{i}]");
        validate_rate(&at, o.requests_per_second, o.burst, p);
        if o.identities.is_empty() && o.service_accounts.is_empty() {
            p.add(at.clone(), "an override names its clients: `identities` or `serviceAccounts`");
        }
        if o.identities.iter().any(|id| id.ends_with('*')) {
            p.add(
                format!("{at}.identities"),
                "overrides name exact identities: each gets a limit of its own",
            );
        }
        validate_identities(&at, &o.identities, &o.service_accounts, p);
    }
}

#[cfg(test)]
mod tests {
    use crate::parse::parse_documents;

    fn errors(yaml: &str) -> Vec<String> {
        match parse_documents("t.yaml", yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: canary}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: recommendations, port: 80}]\n";

    #[test]
    fn the_seed_canary_is_valid() {
        let yaml = format!(
            "{ROUTE}  rules:\n  - matches:\n    - headers: [{{name: x-user-country, value: DE}}, {{name: x-device, value: mobile}}]\n    backendRefs:\n    - {{name: recommendations-v1, port: 80, weight: 95}}\n    - {{name: recommendations-v2, port: 80, weight: 5}}\n  - backendRefs: [{{name: recommendations-v1, port: 80}}]\n"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
    }

    #[test]
    fn route_problems_name_their_field() {
        let yaml = format!(
            "{ROUTE}  rules:\n  - matches: [{{path: {{type: PathPrefix, value: v2}}}}, {{method: FETCH}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {{statusCode: 305}}\n    backendRefs: [{{name: b}}]\n    timeouts: {{request: 1s, backendRequest: 2s}}\n"
        );
        let e = errors(&yaml).join("\n");
        for needle in [
            "t.yaml:1: HTTPRoute default/canary: field `spec.rules[0].matches[0].path.value`: must start with `/`",
            "field `spec.rules[0].matches[1].method`",
            "field `spec.rules[0].filters[0].requestRedirect.statusCode`: must be 301, 302, 303, 307 or 308",
            "field `spec.rules[0].backendRefs[0].port`",
            "field `spec.rules[0].timeouts.backendRequest`: must not be longer",
        ] {
            assert!(e.contains(needle), "missing {needle} in\n{e}");
        }
    }

    #[test]
    fn grpc_route_timeouts_and_retries_are_refused_with_where_they_go() {
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: rpc}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - name: reads\n    timeouts: {request: 1s}\n  - retry: {attempts: 2}\n";
        let e = errors(yaml).join("\n");
        for needle in [
            "t.yaml:1: GRPCRoute default/rpc: field `spec.rules[0].timeouts`: GRPCRoute has no `timeouts`",
            "ResiliencePolicy with targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: rpc, sectionName: reads}]",
            "field `spec.rules[1].retry`: GRPCRoute has no `retry`",
            "kind: GRPCRoute, name: rpc}]",
        ] {
            assert!(e.contains(needle), "missing {needle} in\n{e}");
        }
    }

    #[test]
    fn filter_settings_must_match_the_type() {
        let yaml = format!(
            "{ROUTE}  rules:\n  - filters:\n    - type: RequestHeaderModifier\n      responseHeaderModifier: {{set: [{{name: a, value: b}}]}}\n"
        );
        assert!(errors(&yaml).join("\n").contains("spec.rules[0].filters[0]"));
    }

    #[test]
    fn gateway_parents_are_refused_in_the_mesh_profile() {
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: my-gateway}]\n";
        assert!(errors(yaml).join("\n").contains("mesh profile"));
    }

    #[test]
    fn service_and_workload_checks() {
        let e = errors("apiVersion: v1\nkind: Service\nmetadata: {name: Books}\nspec:\n  ports: [{port: 80}, {port: 80, protocol: UDP}]\n").join("\n");
        assert!(
            e.contains("metadata.name")
                && e.contains("listed twice")
                && e.contains("UDP")
                && e.contains("must be named"),
            "{e}"
        );
        let e = errors("apiVersion: tarmac.io/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {command: [], port: 0, replicas: 0}\n").join("\n");
        assert!(
            e.contains("spec.command")
                && e.contains("spec.port")
                && e.contains("spec.replicas")
                && e.contains("metadata.labels"),
            "{e}"
        );
    }

    #[test]
    fn fault_injections_are_checked_and_referenced_by_extension_ref() {
        let e = errors("apiVersion: tarmac.io/v1alpha1\nkind: FaultInjection\nmetadata: {name: f}\nspec:\n  delay: {fixedDelay: soon, percentage: 120}\n  abort: {httpStatus: 99}\n").join("\n");
        assert!(
            e.contains("spec.delay.fixedDelay")
                && e.contains("field `spec.delay.percentage`: must be 0-100")
                && e.contains("spec.abort.httpStatus"),
            "{e}"
        );
        assert!(
            errors("apiVersion: tarmac.io/v1alpha1\nkind: FaultInjection\nmetadata: {name: f}\nspec: {}\n")
                .join("")
                .contains("needs `delay`, `abort`")
        );
        let ok = "apiVersion: tarmac.io/v1alpha1\nkind: FaultInjection\nmetadata: {name: f}\nspec:\n  abort: {httpStatus: 503, percentage: 5}\n  delay: {fixedDelay: 200ms, percentage: 10}\n  headers: [{name: x-chaos, value: 'on'}]\n";
        assert_eq!(errors(ok), Vec::<String>::new());
        let yaml = format!(
            "{ROUTE}  rules:\n  - filters:\n    - type: ExtensionRef\n      extensionRef: {{group: example.com, kind: Thing, name: x}}\n"
        );
        assert!(errors(&yaml).join("").contains("spec.rules[0].filters[0].extensionRef"));
    }

    #[test]
    fn regular_expressions_must_compile() {
        let yaml = format!(
            "{ROUTE}  rules:\n  - matches:\n    - path: {{type: RegularExpression, value: '/v[0-9'}}\n      headers: [{{type: RegularExpression, name: x, value: 'a(b'}}]\n"
        );
        let e = errors(&yaml).join("\n");
        assert!(
            e.contains(
                "field `spec.rules[0].matches[0].path.value`: `/v[0-9` is not a valid regular expression"
            ) && e.contains("field `spec.rules[0].matches[0].headers[0].value`"),
            "{e}"
        );
    }

    #[test]
    fn replace_prefix_match_needs_prefix_matches() {
        let yaml = format!(
            "{ROUTE}  rules:\n  - matches: [{{path: {{type: Exact, value: /a}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /b}}}}\n"
        );
        assert!(errors(&yaml).join("\n").contains("only valid in a rule whose matches are all PathPrefix"));
    }

    #[test]
    fn resilience_policies_are_checked_by_target_and_field() {
        let head = "apiVersion: tarmac.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p}\nspec:\n";
        let ok = format!(
            "{head}  targetRefs: [{{group: \"\", kind: Service, name: logging}}]\n  retryBudget: {{ratio: 0.1, minRetriesPerSecond: 5, window: 10s}}\n  circuitBreaker: {{consecutiveFailures: 5, baseEjectionTime: 2s, maxEjectionPercent: 30}}\n  limits: {{maxInFlight: 10, maxQueued: 5}}\n  retry: {{codes: [503], grpcCodes: [UNAVAILABLE, '8'], attempts: 3, backoff: 50ms}}\n  timeouts: {{request: 10s, backendRequest: 2s}}\n"
        );
        assert_eq!(errors(&ok), Vec::<String>::new());
        let bad = format!(
            "{head}  targetRefs: [{{group: gateway.networking.k8s.io, kind: GRPCRoute, name: r, sectionName: reads}}, {{group: apps, kind: Deployment, name: d}}]\n  retryBudget: {{ratio: 1.5, window: forever}}\n  retry: {{codes: [200], grpcCodes: [SOMETIMES], attempts: 11}}\n"
        );
        let e = errors(&bad).join("\n");
        for field in [
            "spec.targetRefs[1]",
            "field `spec.retryBudget`: applies to Service targets only",
            "spec.retryBudget.ratio",
            "spec.retryBudget.window",
            "spec.retry.codes[0]",
            "spec.retry.grpcCodes[0]",
            "field `spec.retry.attempts`: must be at most 10",
        ] {
            assert!(e.contains(field), "{field} missing from:\n{e}");
        }
        let typo = format!(
            "{head}  targetRefs: [{{group: \"\", kind: Service, name: s}}]\n  retryBudjet: {{ratio: 0.1}}\n"
        );
        assert!(errors(&typo).join("").contains("retryBudjet"), "a misspelt field is refused");
        let empty = format!("{head}  targetRefs: [{{group: \"\", kind: Service, name: s}}]\n");
        assert!(errors(&empty).join("").contains("needs `retryBudget`"));
        // A backoff of 0 would silently become the proxies' default: refused.
        let zero = format!(
            "{head}  targetRefs: [{{group: \"\", kind: Service, name: s}}]\n  retry: {{codes: [503], backoff: 0s}}\n"
        );
        assert!(
            errors(&zero).join("").contains("spec.retry.backoff`: must be at least 1ms"),
            "{:?}",
            errors(&zero)
        );
        let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: s, port: 80}]\n  rules:\n  - retry: {codes: [503], backoff: 0ms}\n";
        assert!(
            errors(route).join("").contains("spec.rules[0].retry.backoff`: must be at least 1ms"),
            "{:?}",
            errors(route)
        );
    }

    const AUTHZ: &str = "apiVersion: tarmac.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: books-from-web, namespace: shop}\nspec:\n";

    #[test]
    fn the_documented_authorization_policy_is_valid() {
        let yaml = format!(
            "{AUTHZ}  targetRefs: [{{group: \"\", kind: Service, name: books}}]\n  action: ALLOW\n  from:\n  - serviceAccounts: [web, ops/admin]\n  - identities: ['spiffe://cluster.local/ns/batch/*']\n  - namespaces: [shop]\n    cidrs: [10.0.0.0/8, '::1']\n  - unauthenticated: true\n    cidrs: [192.168.0.0/16]\n  - authenticated: true\n"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
        let resources = parse_documents("t.yaml", &yaml).unwrap();
        let crate::Resource::AuthorizationPolicy(a) = &resources[0] else { panic!() };
        assert_eq!(a.spec.action, crate::authz::Action::Allow);
        assert_eq!(resources[0].key().to_string(), "AuthorizationPolicy shop/books-from-web");
    }

    #[test]
    fn authorization_problems_name_their_field() {
        let yaml = format!(
            "{AUTHZ}  targetRefs: [{{group: apps, kind: Deployment, name: d}}]\n  action: DENY\n  from:\n  - {{}}\n  - cidrs: [10.0.0.0/33]\n  - identities: [web, 'spiffe://x/*/y*']\n  - unauthenticated: true\n    serviceAccounts: [web]\n  - authenticated: false\n"
        );
        let e = errors(&yaml).join("\n");
        for needle in [
            "AuthorizationPolicy shop/books-from-web: field `spec.targetRefs[0]`",
            "field `spec.from[0]`: an empty entry would match every client",
            "field `spec.from[1].cidrs[0]`: `10.0.0.0/33` is not an address range",
            "field `spec.from[2].identities[0]`: `web` is no SPIFFE ID",
            "field `spec.from[2].identities[1]`: `*` may only end",
            "field `spec.from[3]`: `unauthenticated: true` with",
            "field `spec.from[4].authenticated`",
        ] {
            assert!(e.contains(needle), "missing {needle} in\n{e}");
        }
        let typo = format!(
            "{AUTHZ}  targetRefs: [{{group: \"\", kind: Service, name: b}}]\n  from: [{{serviceAcounts: [web]}}]\n"
        );
        let e = errors(&typo).join("");
        assert!(
            e.contains("t.yaml:")
                && e.contains("AuthorizationPolicy shop/books-from-web")
                && e.contains("serviceAcounts"),
            "{e}"
        );
        let action = format!(
            "{AUTHZ}  targetRefs: [{{group: \"\", kind: Service, name: b}}]\n  action: AUDIT\n  from: [{{authenticated: true}}]\n"
        );
        assert!(errors(&action).join("").contains("AUDIT"), "unknown actions are refused");
        let no_from = format!("{AUTHZ}  targetRefs: [{{group: \"\", kind: Service, name: b}}]\n  from: []\n");
        assert!(errors(&no_from).join("").contains("field `spec.from`: needs at least one entry"));
    }

    #[test]
    fn rate_limit_policies_are_checked_by_field() {
        let head = "apiVersion: tarmac.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: books}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: books, sectionName: reads}]\n";
        let ok = format!(
            "{head}  total: {{requestsPerSecond: 100}}\n  perCaller: {{requestsPerSecond: 10, burst: 5}}\n  overrides:\n  - {{requestsPerSecond: 50, serviceAccounts: [batch]}}\n"
        );
        assert_eq!(errors(&ok), Vec::<String>::new());
        let bad = format!(
            "{head}  total: {{requestsPerSecond: 0}}\n  perCaller: {{requestsPerSecond: 10, burst: 0}}\n  overrides:\n  - {{requestsPerSecond: 5}}\n  - {{requestsPerSecond: 5, identities: ['spiffe://td/ns/a/*']}}\n"
        );
        let e = errors(&bad).join("\n");
        for needle in [
            "field `spec.total.requestsPerSecond`: must be 1 to",
            "field `spec.perCaller.burst`",
            "field `spec.overrides[0]`: an override names its clients",
            "field `spec.overrides[1].identities`: overrides name exact identities",
        ] {
            assert!(e.contains(needle), "missing {needle} in\n{e}");
        }
        let empty = format!("{head}  overrides: []\n");
        assert!(errors(&empty).join("").contains("needs `total`, `perCaller` or `overrides`"));
    }

    #[test]
    fn default_policy_annotations_are_checked_where_they_belong() {
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {tarmac.io/default-policy: deny}}\n";
        assert_eq!(errors(ns), Vec::<String>::new());
        let e = errors(&ns.replace("deny}", "closed}")).join("");
        assert!(
            e.contains("field `metadata.annotations.tarmac.io/default-policy`: `closed` is no default policy; use allow-all, all-authenticated, deny, audit"),
            "{e}"
        );
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s, annotations: {tarmac.io/default-policy: deny}}\nspec: {ports: [{port: 80}]}\n";
        assert!(errors(svc).join("").contains("on a Namespace, a Workload or a Deployment only"));
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b, annotations: {tarmac.io/default-policy: audit}}\nspec:\n  selector: {matchLabels: {app: b}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: b, command: [b], ports: [{containerPort: 80}]}]}\n";
        let resources = parse_documents("d.yaml", deployment).unwrap();
        assert_eq!(
            crate::authz::DefaultPolicy::of(resources[0].meta()),
            Some(crate::authz::DefaultPolicy::Audit)
        );
        let on_template = deployment.replace(
            "metadata: {labels: {app: b}}",
            "metadata: {labels: {app: b}, annotations: {tarmac.io/default-policy: deny}}",
        );
        let resources = parse_documents("d.yaml", &on_template).unwrap();
        assert_eq!(
            crate::authz::DefaultPolicy::of(resources[0].meta()),
            Some(crate::authz::DefaultPolicy::Deny),
            "the pod template's wins"
        );
        let bad = deployment.replace("audit}", "open}");
        assert!(errors(&bad).join("").contains("`open` is no default policy"));
    }

    /// Every YAML example of docs/policy.md is what users copy: each must load as written.
    #[test]
    fn the_policy_documentation_examples_load() {
        let doc = include_str!("../../../docs/policy.md");
        let blocks: Vec<&str> =
            doc.split("```yaml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        assert!(blocks.len() >= 5, "{} examples", blocks.len());
        for block in blocks {
            let loaded = parse_documents("docs/policy.md", block);
            assert!(loaded.is_ok(), "{block}\n{:?}", loaded.err());
        }
    }

    #[test]
    fn telemetry_problems_name_their_field() {
        let head = "apiVersion: tarmac.io/v1alpha1\nkind: Telemetry\nmetadata: {name: traces, namespace: shop}\nspec:\n";
        let ok = format!(
            "{head}  selector: {{matchLabels: {{app: books}}}}\n  tracing: {{samplingPercentage: 10, collector: \"otel:4317\"}}\n  accessLogging: {{enabled: true, format: common}}\n"
        );
        assert_eq!(errors(&ok), Vec::<String>::new());
        let bad = format!(
            "{head}  selector: {{matchLabels: {{}}}}\n  tracing: {{samplingPercentage: 150, collector: \"http://otel\"}}\n"
        );
        let e = errors(&bad).join("\n");
        for needle in [
            "Telemetry shop/traces: field `spec.tracing.samplingPercentage`: must be 0 to 100",
            "field `spec.tracing.collector`: `http://otel` is not host:port",
            "field `spec.selector.matchLabels`: selects nothing",
        ] {
            assert!(e.contains(needle), "missing {needle} in\n{e}");
        }
        let empty = errors(&format!("{head}  tracing: {{}}\n")).join("\n");
        assert!(empty.contains("field `spec.tracing`: sets nothing"), "{empty}");
        assert!(
            errors(&format!("{head}  selector: {{matchLabels: {{a: b}}}}\n"))
                .join("")
                .contains("needs `tracing` or `accessLogging`")
        );
        let format = errors(&format!("{head}  accessLogging: {{format: xml}}\n")).join("");
        assert!(
            format.contains("t.yaml:") && format.contains("Telemetry shop/traces") && format.contains("xml"),
            "{format}"
        );
        let typo = errors(&format!("{head}  tracing: {{samplingPercent: 10}}\n")).join("");
        assert!(typo.contains("samplingPercent"), "{typo}");
    }
}
