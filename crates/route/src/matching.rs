//! Request matching (Gateway API `HTTPRouteMatch`), compiled once per route update.
//!
//! A match is path AND method AND every header AND every query parameter. Among all the
//! matches of all the routes of a Service, the first in precedence order that holds wins:
//! an Exact path, then the longest PathPrefix, then a RegularExpression path; then a
//! method; then more header matches; then more query parameter matches; then the route's
//! order (`namespace/name`) and the rule's and match's position in it.

use crate::table::CompileError;
use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use std::borrow::Cow;
use std::cmp::Reverse;
use tarmac_proto::discovery::{self as pb, PathMatchType};

#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware: stored without its trailing `/`; `""` matches every path.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug)]
struct HeaderTest {
    name: HeaderName,
    /// Where a route table keeps this header's value while it tests a request (see
    /// [`RequestMatch::use_slots`]).
    slot: usize,
    value: ValueMatch,
    /// The [`fingerprint`] of an Exact value: in a table, a value that differs is told
    /// apart by one integer comparison (a hundred rules on one header, each wanting its
    /// own value, are a hundred of those, not a hundred string comparisons).
    exact_fingerprint: Option<u64>,
}

/// FNV-1a: a header value's fingerprint, computed once per request and name.
pub(crate) fn fingerprint(value: &str) -> u64 {
    value.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[derive(Debug)]
pub struct RequestMatch {
    pub path: PathMatch,
    method: Option<Method>,
    headers: Vec<HeaderTest>,
    query: Vec<(String, ValueMatch)>,
}

/// The value of header `name`, several values joined into one comma-separated value
/// (RFC 9110); `None` when absent or not visible ASCII.
pub(crate) fn header_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    let Some(second) = values.next() else { return Some(Cow::Borrowed(first)) };
    let mut joined = format!("{first},{second}");
    for v in values {
        joined.push(',');
        joined.push_str(v);
    }
    Some(Cow::Owned(joined))
}

/// Anchors a Gateway API regular expression so that it must match the whole value.
fn full_regex(pattern: &str) -> Result<Regex, CompileError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|source| CompileError::Regex { pattern: pattern.to_string(), source })
}

fn value_match(m: &pb::ValueMatch) -> Result<ValueMatch, CompileError> {
    Ok(if m.regex { ValueMatch::Regex(full_regex(&m.value)?) } else { ValueMatch::Exact(m.value.clone()) })
}

impl RequestMatch {
    /// Every request: what a rule without matches has.
    pub fn any() -> Self {
        Self { path: PathMatch::Prefix(String::new()), method: None, headers: Vec::new(), query: Vec::new() }
    }

    pub fn compile(m: &pb::RouteMatch) -> Result<Self, CompileError> {
        let path = match &m.path {
            None => PathMatch::Prefix(String::new()),
            Some(p) => match PathMatchType::try_from(p.r#type).unwrap_or(PathMatchType::Prefix) {
                PathMatchType::Exact => PathMatch::Exact(p.value.clone()),
                PathMatchType::Prefix => PathMatch::Prefix(p.value.trim_end_matches('/').to_string()),
                PathMatchType::RegularExpression => PathMatch::Regex(full_regex(&p.value)?),
            },
        };
        let method = if m.method.is_empty() {
            None
        } else {
            Some(
                Method::from_bytes(m.method.as_bytes())
                    .map_err(|_| CompileError::Method(m.method.clone()))?,
            )
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| CompileError::HeaderName(h.name.clone()))?;
                let value = value_match(h)?;
                let exact_fingerprint = match &value {
                    ValueMatch::Exact(v) => Some(fingerprint(v)),
                    ValueMatch::Regex(_) => None,
                };
                Ok(HeaderTest { name, slot: usize::MAX, value, exact_fingerprint })
            })
            .collect::<Result<_, CompileError>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), value_match(q)?)))
            .collect::<Result<_, CompileError>>()?;
        Ok(Self { path, method, headers, query })
    }

    /// Gives each header this match tests a place in `names`, adding the names not there
    /// yet: a table reads each name once per request, however many matches test it.
    pub(crate) fn use_slots(&mut self, names: &mut Vec<HeaderName>) {
        for test in &mut self.headers {
            test.slot = names.iter().position(|n| *n == test.name).unwrap_or_else(|| {
                names.push(test.name.clone());
                names.len() - 1
            });
        }
    }

    /// One Exact header test as (slot, fingerprint), for a table to try before the whole
    /// match: most requests fail most header matches, and this way they fail them in a
    /// tight loop over a few bytes per match.
    pub(crate) fn first_exact_header(&self) -> Option<(usize, u64)> {
        self.headers.iter().find_map(|t| Some((t.slot, t.exact_fingerprint?)))
    }

    /// Sorts before less specific matches (smaller is more specific).
    pub fn precedence(&self) -> impl Ord + use<> {
        let (kind, length) = match &self.path {
            PathMatch::Exact(v) => (0u8, v.len()),
            // `/` (stored as "") still counts one character.
            PathMatch::Prefix(v) => (1, v.len().max(1)),
            PathMatch::Regex(_) => (2, 0),
        };
        (kind, Reverse(length), self.method.is_none(), Reverse(self.headers.len()), Reverse(self.query.len()))
    }

    /// Whether the request matches, reading its headers.
    pub fn matches(&self, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
        self.matches_with(method, path, query, |test| {
            header_value(headers, &test.name).is_some_and(|v| test.value.matches(&v))
        })
    }

    /// Whether the request matches, given the values of the table's header names (with
    /// their [`fingerprint`]s) as [`RequestMatch::use_slots`] placed them.
    pub(crate) fn matches_read(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        values: &[Option<(Cow<'_, str>, u64)>],
    ) -> bool {
        self.matches_with(method, path, query, |test| {
            values[test.slot].as_ref().is_some_and(|(value, fingerprint)| {
                test.exact_fingerprint.is_none_or(|f| f == *fingerprint) && test.value.matches(value)
            })
        })
    }

    fn matches_with(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        header_holds: impl Fn(&HeaderTest) -> bool,
    ) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(v) => path == v,
            PathMatch::Prefix(v) => {
                path.starts_with(v.as_str()) && matches!(path.as_bytes().get(v.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.headers.iter().all(header_holds)
            && self.query.iter().all(|(name, m)| query_value(query, name).is_some_and(|v| m.matches(&v)))
    }

    /// The prefix a `ReplacePrefixMatch` replaces: the matched PathPrefix (without its
    /// trailing `/`), or nothing for other path matches.
    pub fn matched_prefix(&self) -> &str {
        match &self.path {
            PathMatch::Prefix(v) => v,
            _ => "",
        }
    }
}

/// A match as its configuration states it, for tools that show or compare route tables
/// (`tarmac routes`, the shadowed-rule check of `tarmac check`): header names lowercase,
/// header and query matches sorted, so that two equal summaries are the same condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchSummary {
    /// `Exact`, `PathPrefix` or `RegularExpression`.
    pub path_type: &'static str,
    /// The value as configured (a prefix keeps no trailing `/`, except `/` itself).
    pub path: String,
    pub method: Option<String>,
    pub headers: Vec<ValueSummary>,
    pub query_params: Vec<ValueSummary>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueSummary {
    pub name: String,
    pub value: String,
    pub regex: bool,
}

/// The pattern as configured, without the anchors [`full_regex`] added.
fn configured_pattern(r: &Regex) -> String {
    let s = r.as_str();
    s.strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(s).to_string()
}

impl ValueMatch {
    fn summary(&self, name: &str) -> ValueSummary {
        match self {
            ValueMatch::Exact(v) => ValueSummary { name: name.to_string(), value: v.clone(), regex: false },
            ValueMatch::Regex(r) => {
                ValueSummary { name: name.to_string(), value: configured_pattern(r), regex: true }
            }
        }
    }
}

impl RequestMatch {
    /// What this match requires, as configured.
    pub fn summary(&self) -> MatchSummary {
        let (path_type, path) = match &self.path {
            PathMatch::Exact(v) => ("Exact", v.clone()),
            PathMatch::Prefix(v) if v.is_empty() => ("PathPrefix", "/".to_string()),
            PathMatch::Prefix(v) => ("PathPrefix", v.clone()),
            PathMatch::Regex(r) => ("RegularExpression", configured_pattern(r)),
        };
        let mut headers: Vec<_> = self.headers.iter().map(|t| t.value.summary(t.name.as_str())).collect();
        headers.sort();
        let mut query_params: Vec<_> = self.query.iter().map(|(n, m)| m.summary(n)).collect();
        query_params.sort();
        MatchSummary {
            path_type,
            path,
            method: self.method.as_ref().map(|m| m.to_string()),
            headers,
            query_params,
        }
    }
}

/// The first value of query parameter `name`, percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(v: &str) -> RequestMatch {
        RequestMatch::compile(&pb::RouteMatch {
            path: Some(pb::PathMatch { r#type: PathMatchType::Prefix as i32, value: v.into() }),
            ..Default::default()
        })
        .unwrap()
    }

    fn get(m: &RequestMatch, path_and_query: &str) -> bool {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        m.matches(&Method::GET, path, query, &HeaderMap::new())
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        let v2 = prefix("/v2");
        assert!(get(&v2, "/v2") && get(&v2, "/v2/") && get(&v2, "/v2/example"));
        assert!(!get(&v2, "/v2example") && !get(&v2, "/foo/v2/example"));
        let slash = prefix("/v2/");
        assert!(get(&slash, "/v2") && get(&slash, "/v2/x") && !get(&slash, "/v2x"));
        let root = prefix("/");
        assert!(get(&root, "/") && get(&root, "/anything/at/all"));
    }

    #[test]
    fn headers_match_case_insensitively_by_name_and_exactly_by_value() {
        let m = RequestMatch::compile(&pb::RouteMatch {
            headers: vec![
                pb::ValueMatch { name: "Version".into(), value: "two".into(), regex: false },
                pb::ValueMatch { name: "x-build".into(), value: "[0-9]+".into(), regex: true },
            ],
            ..Default::default()
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("version", "two".parse().unwrap());
        h.insert("x-build", "123".parse().unwrap());
        assert!(m.matches(&Method::GET, "/", None, &h));
        h.insert("x-build", "12a".parse().unwrap());
        assert!(!m.matches(&Method::GET, "/", None, &h), "regexes match whole values");
        h.insert("x-build", "1".parse().unwrap());
        h.insert("version", "Two".parse().unwrap());
        assert!(!m.matches(&Method::GET, "/", None, &h), "values are case-sensitive");
    }

    #[test]
    fn query_parameters_match_exactly_and_ignore_others() {
        let m = RequestMatch::compile(&pb::RouteMatch {
            query_params: vec![pb::ValueMatch { name: "animal".into(), value: "whale".into(), regex: false }],
            ..Default::default()
        })
        .unwrap();
        assert!(get(&m, "/?animal=whale") && get(&m, "/?other=1&animal=whale"));
        assert!(get(&m, "/?animal=wh%61le"));
        assert!(!get(&m, "/?animal=whaledolphin") && !get(&m, "/?Animal=whale") && !get(&m, "/"));
    }

    #[test]
    fn methods_must_be_equal() {
        let m =
            RequestMatch::compile(&pb::RouteMatch { method: "POST".into(), ..Default::default() }).unwrap();
        assert!(m.matches(&Method::POST, "/x", None, &HeaderMap::new()));
        assert!(!m.matches(&Method::GET, "/x", None, &HeaderMap::new()));
    }

    #[test]
    fn summaries_state_the_configuration_and_compare_equal_matches() {
        let compile = |headers: Vec<(&str, &str, bool)>, path: &str| {
            RequestMatch::compile(&pb::RouteMatch {
                path: Some(pb::PathMatch { r#type: PathMatchType::Prefix as i32, value: path.into() }),
                headers: headers
                    .into_iter()
                    .map(|(n, v, regex)| pb::ValueMatch { name: n.into(), value: v.into(), regex })
                    .collect(),
                method: "POST".into(),
                ..Default::default()
            })
            .unwrap()
        };
        let a = compile(vec![("X-B", "1", false), ("x-a", "[0-9]+", true)], "/api/");
        let b = compile(vec![("x-a", "[0-9]+", true), ("x-b", "1", false)], "/api");
        assert_eq!(a.summary(), b.summary(), "header order, name case and a trailing / do not matter");
        let s = a.summary();
        assert_eq!((s.path_type, s.path.as_str(), s.method.as_deref()), ("PathPrefix", "/api", Some("POST")));
        assert_eq!(s.headers[0], ValueSummary { name: "x-a".into(), value: "[0-9]+".into(), regex: true });
        assert_eq!(RequestMatch::any().summary().path, "/");
        assert_ne!(
            a.summary(),
            compile(vec![("x-a", "[0-9]+", false), ("x-b", "1", false)], "/api").summary()
        );
    }

    #[test]
    fn invalid_regexes_are_refused_with_the_pattern() {
        let err = RequestMatch::compile(&pb::RouteMatch {
            path: Some(pb::PathMatch { r#type: PathMatchType::RegularExpression as i32, value: "/(".into() }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(&err, CompileError::Regex { pattern, .. } if pattern == "/("), "{err:?}");
        assert!(err.to_string().contains("`/(`"), "{err}");
    }
}
