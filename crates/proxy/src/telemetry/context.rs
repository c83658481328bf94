//! Trace context carried by requests: W3C Trace Context (`traceparent`, `tracestate`) and
//! Zipkin's B3, single (`b3`) and multi-header (`X-B3-*`).
//!
//! Reading follows the W3C recommendation's rules: a `traceparent` that is not exactly
//! right (length, lowercase hex, an all-zero id, version `ff`, several headers) is ignored
//! as if absent, and then `tracestate` is not read either. Nothing here fails a request.
//! B3 is read only when no valid `traceparent` came; its 64-bit trace ids become 128-bit
//! ones with zeros on the left, as the B3 and W3C documents agree.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The longest `tracestate` kept on a span (the recommendation asks propagators to carry
/// at least 512 characters; a longer one still passes through untouched).
const MAX_TRACESTATE: usize = 512;
/// List members a `tracestate` may have; more and it is discarded (the recommendation).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// How the caller spelt its context, so that the proxy answers in the same words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// What a request's headers say of its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the proxy's.
    pub span_id: [u8; 8],
    /// `Some(true)`: the caller records this trace; `Some(false)`: it does not; `None`: it
    /// left the decision to those downstream (B3's deferred sampling).
    pub sampled: Option<bool>,
    /// The `tracestate` value (list members joined), when valid and short enough to keep.
    pub tracestate: Option<String>,
    pub format: Format,
    /// A B3 trace id of 64 bits, to be written back as 16 hex digits.
    pub short_trace_id: bool,
}

/// Reads the trace context of a request: W3C first, then B3 single, then B3 multi.
/// `None` when there is none, or none that is valid.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    let mut traceparents = headers.get_all(TRACEPARENT).iter();
    if let Some(first) = traceparents.next() {
        // Two `traceparent`s would be two parents: the recommendation asks to ignore both.
        if traceparents.next().is_none()
            && let Some(mut ctx) = parse_traceparent(first.as_bytes())
        {
            ctx.tracestate = tracestate(headers);
            return Some(ctx);
        }
    }
    if let Some(b3) = headers.get(B3) {
        return parse_b3_single(b3.as_bytes());
    }
    parse_b3_multi(headers)
}

/// A `traceparent` value (W3C Trace Context, level 1 and its forward-compatible rule for
/// later versions).
pub fn parse_traceparent(value: &[u8]) -> Option<Incoming> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may append fields after a dash.
    if (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let trace_id: [u8; 16] = hex_array(&value[3..35])?;
    let span_id: [u8; 8] = hex_array(&value[36..52])?;
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Incoming {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        tracestate: None,
        format: Format::W3c,
        short_trace_id: false,
    })
}

/// The `tracestate` to keep on a span: every header's members joined; `None` when there
/// is none, when it has more members than allowed, or when it is too long to keep.
fn tracestate(headers: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for value in headers.get_all(TRACESTATE) {
        let text = value.to_str().ok()?.trim();
        if text.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
    }
    let members = joined.split(',').filter(|m| !m.trim().is_empty()).count();
    let valid = joined.split(',').all(|m| m.trim().is_empty() || m.contains('='));
    (!joined.is_empty() && valid && members <= MAX_TRACESTATE_MEMBERS && joined.len() <= MAX_TRACESTATE)
        .then_some(joined)
}

/// `b3: {trace}-{span}[-{sampling}[-{parent}]]`, or a sampling state alone (`0`, `1`,
/// `d`), which carries a decision but no trace to join.
pub fn parse_b3_single(value: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = match parts.next() {
        None => None,
        Some(state) => Some(b3_sampling(state)?),
    };
    if let Some(parent) = parts.next() {
        hex_array::<8>(parent.as_bytes())?;
    }
    if parts.next().is_some() {
        return None;
    }
    let (trace_id, short) = b3_trace_id(trace)?;
    let span_id: [u8; 8] = hex_array(span.as_bytes())?;
    (span_id != [0; 8]).then_some(Incoming {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
        format: Format::B3Single,
        short_trace_id: short,
    })
}

/// `X-B3-TraceId`, `X-B3-SpanId`, and the decision in `X-B3-Sampled` (`1`, `0`, or the
/// old `true`/`false`) or `X-B3-Flags: 1` (debug, which means sampled).
pub fn parse_b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let (trace_id, short) = b3_trace_id(text(&B3_TRACE_ID)?)?;
    let span_id: [u8; 8] = hex_array(text(&B3_SPAN_ID)?.as_bytes())?;
    if span_id == [0; 8] {
        return None;
    }
    let sampled = if text(&B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        match text(&B3_SAMPLED) {
            None => None,
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            Some(_) => return None,
        }
    };
    Some(Incoming {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
        format: Format::B3Multi,
        short_trace_id: short,
    })
}

fn b3_sampling(state: &str) -> Option<bool> {
    match state {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// A B3 trace id: 32 or 16 lowercase hex digits, not all zero.
fn b3_trace_id(text: &str) -> Option<([u8; 16], bool)> {
    let id = match text.len() {
        32 => hex_array::<16>(text.as_bytes())?,
        16 => {
            let low: [u8; 8] = hex_array(text.as_bytes())?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some((id, text.len() == 16))
}

/// What the proxy writes on a request it forwards within a sampled trace: `traceparent`
/// naming the proxy's span as parent, and, for a caller that spoke B3, B3 headers saying
/// the same (so that B3-only apps downstream keep their trace).
pub fn inject(headers: &mut HeaderMap, trace_id: &[u8; 16], span_id: &[u8; 8], incoming: Option<&Incoming>) {
    headers.insert(TRACEPARENT, header_value(&traceparent(trace_id, span_id)));
    let Some(incoming) = incoming else {
        // A trace the proxy started: whatever state came with no valid parent goes.
        headers.remove(TRACESTATE);
        return;
    };
    let trace = if incoming.short_trace_id { hex(&trace_id[8..]) } else { hex(trace_id) };
    match incoming.format {
        Format::W3c => {}
        Format::B3Single => {
            let value = format!("{trace}-{}-1-{}", hex(span_id), hex(&incoming.span_id));
            headers.insert(B3, header_value(&value));
        }
        Format::B3Multi => {
            headers.insert(B3_TRACE_ID, header_value(&trace));
            headers.insert(B3_SPAN_ID, header_value(&hex(span_id)));
            headers.insert(B3_PARENT_SPAN_ID, header_value(&hex(&incoming.span_id)));
            if headers.get(B3_FLAGS).is_none() {
                headers.insert(B3_SAMPLED, HeaderValue::from_static("1"));
            }
        }
    }
}

/// `00-{trace}-{span}-01`: version 00, sampled.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> String {
    format!("00-{}-{}-01", hex(trace_id), hex(span_id))
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("hex digits and dashes are a valid header value")
}

/// Lowercase hex, as both formats write ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Lowercase hex only: both specifications forbid uppercase, and W3C asks that a value
/// with it be ignored.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn hex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    // The recommendation's own example.
    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_recommendations_example_reads() {
        let ctx = extract(&headers(&[
            ("traceparent", EXAMPLE),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ]))
        .unwrap();
        assert_eq!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&ctx.span_id), "00f067aa0ba902b7");
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(ctx.format, Format::W3c);
        assert_eq!(ctx.tracestate.as_deref(), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        // Not sampled: the caller's decision is kept.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(parse_traceparent(unsampled.as_bytes()).unwrap().sampled, Some(false));
    }

    #[test]
    fn tracestate_headers_join_and_bad_ones_are_dropped() {
        let ctx = extract(&headers(&[
            ("traceparent", EXAMPLE),
            ("tracestate", "rojo=1"),
            ("tracestate", "congo=2"),
        ]))
        .unwrap();
        assert_eq!(ctx.tracestate.as_deref(), Some("rojo=1,congo=2"));
        let many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        let ctx = extract(&headers(&[("traceparent", EXAMPLE), ("tracestate", &many)])).unwrap();
        assert_eq!(ctx.tracestate, None, "more than 32 members are discarded, the parent kept");
        let ctx = extract(&headers(&[("traceparent", EXAMPLE), ("tracestate", "no-equals")])).unwrap();
        assert_eq!(ctx.tracestate, None);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            // All-zero trace id and parent id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff is invalid.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version 00 with something after it.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Short fields, wrong separators, not hex.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
            "00",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        // A later version may carry more fields after a dash, but not glued on.
        assert!(
            parse_traceparent(
                b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
            )
            .is_some()
        );
        assert_eq!(parse_traceparent(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01what"), None);
        // Two traceparents: both ignored, and so is tracestate.
        let two = headers(&[("traceparent", EXAMPLE), ("traceparent", EXAMPLE), ("tracestate", "a=b")]);
        assert_eq!(extract(&two), None);
        // An invalid traceparent does not hide a valid B3 context.
        let ctx = extract(&headers(&[
            ("traceparent", "garbage"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]))
        .unwrap();
        assert_eq!(ctx.format, Format::B3Single);
    }

    #[test]
    fn b3_single_header() {
        // The B3 document's examples.
        let ctx =
            parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        assert_eq!(hex(&ctx.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(hex(&ctx.span_id), "e457b5a2e4d86bd1");
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(
            parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d").unwrap().sampled,
            Some(true)
        );
        assert_eq!(
            parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0").unwrap().sampled,
            Some(false)
        );
        // Deferred: no decision.
        assert_eq!(
            parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap().sampled,
            None
        );
        // 64-bit trace ids are padded on the left.
        let short = parse_b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7-1").unwrap();
        assert_eq!(hex(&short.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert!(short.short_trace_id);
        // A decision alone joins no trace; malformed values are ignored.
        for bad in [
            "0",
            "1",
            "d",
            "x-y",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "80f198ee56343ba864fe8b2a57d3eff7-E457B5A2E4D86BD1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
        ] {
            assert_eq!(parse_b3_single(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_headers() {
        let h = headers(&[
            ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("X-B3-SpanId", "e457b5a2e4d86bd1"),
            ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
            ("X-B3-Sampled", "1"),
        ]);
        let ctx = extract(&h).unwrap();
        assert_eq!((ctx.format, ctx.sampled), (Format::B3Multi, Some(true)));
        assert_eq!(hex(&ctx.span_id), "e457b5a2e4d86bd1");
        let debug = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(extract(&debug).unwrap().sampled, Some(true));
        let off = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]);
        assert_eq!(extract(&off).unwrap().sampled, Some(false));
        let bad = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "yes"),
        ]);
        assert_eq!(extract(&bad), None);
        assert_eq!(extract(&headers(&[("x-b3-traceid", "a3ce929d0e0e4736")])), None);
    }

    #[test]
    fn the_proxy_names_its_span_as_the_next_parent_in_the_callers_format() {
        let own = [0x11; 8];
        let w3c = extract(&headers(&[("traceparent", EXAMPLE)])).unwrap();
        let mut h = headers(&[("traceparent", EXAMPLE), ("tracestate", "rojo=1")]);
        inject(&mut h, &w3c.trace_id, &own, Some(&w3c));
        assert_eq!(h["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01");
        assert_eq!(h["tracestate"], "rojo=1", "the caller's state travels on");

        let mut h = headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")]);
        let b3 = extract(&h).unwrap();
        inject(&mut h, &b3.trace_id, &own, Some(&b3));
        assert_eq!(h["b3"], "a3ce929d0e0e4736-1111111111111111-1-00f067aa0ba902b7");
        assert_eq!(h["traceparent"], "00-0000000000000000a3ce929d0e0e4736-1111111111111111-01");

        let mut h = headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ]);
        let multi = extract(&h).unwrap();
        inject(&mut h, &multi.trace_id, &own, Some(&multi));
        assert_eq!(h["x-b3-spanid"], "1111111111111111");
        assert_eq!(h["x-b3-parentspanid"], "e457b5a2e4d86bd1");
        assert_eq!(h["x-b3-sampled"], "1");

        // A new trace drops a state that came without a valid parent.
        let mut h = headers(&[("traceparent", "bogus"), ("tracestate", "rojo=1")]);
        inject(&mut h, &[0x22; 16], &own, None);
        assert_eq!(h["traceparent"], "00-22222222222222222222222222222222-1111111111111111-01");
        assert!(h.get("tracestate").is_none());
    }
}
