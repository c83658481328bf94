//! Route matching on a table with every kind of match, for any method, path, query and
//! header: never a panic, and a path in canonical form is canonical for good.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tarmac_proto::discovery as pb;
use tarmac_route::RouteTable;

fn table() -> &'static RouteTable<()> {
    static TABLE: OnceLock<RouteTable<()>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let path = |kind: pb::PathMatchType, value: &str| {
            Some(pb::PathMatch { r#type: kind as i32, value: value.into() })
        };
        let value = |name: &str, value: &str, regex: bool| pb::ValueMatch {
            name: name.into(),
            value: value.into(),
            regex,
        };
        let rule = |name: &str, m: pb::RouteMatch| pb::RouteRule {
            name: name.into(),
            matches: vec![m],
            backends: vec![pb::RouteBackend {
                service: name.into(),
                namespace: "ns".into(),
                port: 80,
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = |path, headers, query_params, method: &str| pb::RouteMatch {
            path,
            headers,
            query_params,
            method: method.into(),
        };
        let rules = vec![
            rule("prefix", m(path(pb::PathMatchType::Prefix, "/admin"), vec![], vec![], "")),
            rule("exact", m(path(pb::PathMatchType::Exact, "/a/b"), vec![], vec![], "POST")),
            rule("regex", m(path(pb::PathMatchType::RegularExpression, "/r[0-9]+/.*"), vec![], vec![], "")),
            rule(
                "header",
                m(None, vec![value("x-v", "2", false), value("x-re", "^a.*z$", true)], vec![], ""),
            ),
            rule("query", m(None, vec![], vec![value("q", "1", false)], "GET")),
        ];
        let route = pb::Route { kind: "HTTPRoute".into(), namespace: "ns".into(), name: "r".into(), rules };
        RouteTable::build(&[route], 80, &mut |_| ()).expect("the table compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(4, '\n');
    let (method, target, header) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let canonical = tarmac_route::path::normalize(path);
    if let Some(c) = &canonical {
        assert_eq!(tarmac_route::path::normalize(c), None, "{path:?} became {c:?}, which is not canonical");
    }
    let path = canonical.as_deref().unwrap_or(path);
    let mut headers = http::HeaderMap::new();
    if let Some((name, value)) = header.split_once(':')
        && let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value.trim()))
    {
        headers.append(name, value);
    }
    let _ = table().select(&method, path, query, &headers);
});
