//! Live tap: a stream of request events for whoever is watching.
//!
//! Nothing is built while nobody watches: the request path checks one atomic. Events go
//! through a bounded broadcast channel; a watcher too slow to keep up loses events (and is
//! told how many), it never slows traffic down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Events buffered per watcher before it starts losing them.
const BUFFER: usize = 1024;

#[derive(Debug)]
pub struct Tap {
    tx: broadcast::Sender<Arc<TapEvent>>,
    watchers: AtomicUsize,
}

impl Default for Tap {
    fn default() -> Self {
        Self { tx: broadcast::channel(BUFFER).0, watchers: AtomicUsize::new(0) }
    }
}

/// The policy that refused a request, or would have (`audit`): carried on its response
/// (an extension) to its tap event.
#[derive(Clone, Debug)]
pub struct DecidedBy {
    pub policy: Arc<str>,
    /// Refused in audit mode: counted and logged, let through.
    pub audit: bool,
}

/// What is known of a request when it starts, kept only while someone watches.
#[derive(Debug)]
pub struct TapStart {
    pub method: String,
    pub authority: String,
    pub path: String,
    pub source: Option<SocketAddr>,
    /// The client's verified SPIFFE ID (inbound mTLS).
    pub client_id: Option<Arc<str>>,
    pub started: Instant,
    /// The policy that refused the request (or would have: audit), set at its response.
    pub policy: Option<DecidedBy>,
    /// The trace this request's span belongs to, when it is traced.
    pub trace_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TapEvent {
    pub timestamp_ms: u64,
    pub direction: &'static str,
    pub target: Arc<String>,
    pub source: Option<SocketAddr>,
    pub client_id: Option<Arc<str>>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub duration_ms: f64,
    /// The policy that refused it; `audit`: would have, and let it through.
    pub policy: Option<Arc<str>>,
    pub audit: bool,
    /// 32 hex digits; absent when the request is not traced.
    pub trace_id: Option<String>,
}

impl Tap {
    pub fn is_watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    pub fn publish(&self, event: TapEvent) {
        // No receiver is not an error: the last watcher may have just left.
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn watch(self: &Arc<Self>) -> TapWatch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        TapWatch { rx: self.tx.subscribe(), tap: self.clone() }
    }
}

/// One watcher; leaving (drop) stops event building once no one else watches.
#[derive(Debug)]
pub struct TapWatch {
    pub rx: broadcast::Receiver<Arc<TapEvent>>,
    tap: Arc<Tap>,
}

impl Drop for TapWatch {
    fn drop(&mut self) {
        self.tap.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TapStart {
    pub fn finish(
        self,
        direction: &'static str,
        target: Arc<String>,
        status: u16,
        grpc_status: Option<u32>,
    ) -> TapEvent {
        TapEvent {
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            direction,
            target,
            source: self.source,
            client_id: self.client_id,
            method: self.method,
            authority: self.authority,
            path: self.path,
            status,
            grpc_status,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            audit: self.policy.as_ref().is_some_and(|p| p.audit),
            policy: self.policy.map(|p| p.policy),
            trace_id: self.trace_id,
        }
    }
}

impl TapEvent {
    /// One line of JSON.
    pub fn to_json(&self) -> String {
        let source = self.source.map(|s| format!("\"{s}\"")).unwrap_or_else(|| "null".into());
        let grpc = self.grpc_status.map(|s| s.to_string()).unwrap_or_else(|| "null".into());
        let client_id = self.client_id.as_deref().map(json_string).unwrap_or_else(|| "null".into());
        // Only requests a policy refused (or would have) say which.
        let policy = match &self.policy {
            Some(p) => format!(",\"policy\":{},\"audit\":{}", json_string(p), self.audit),
            None => String::new(),
        };
        // Only traced requests name their trace.
        let trace = match &self.trace_id {
            Some(id) => format!(",\"trace_id\":{}", json_string(id)),
            None => String::new(),
        };
        format!(
            "{{\"ts_ms\":{},\"direction\":\"{}\",\"target\":{},\"source\":{source},\"client_id\":{client_id},\"method\":{},\"authority\":{},\"path\":{},\"status\":{},\"grpc_status\":{grpc},\"duration_ms\":{:.3}{policy}{trace}}}\n",
            self.timestamp_ms,
            self.direction,
            json_string(&self.target),
            json_string(&self.method),
            json_string(&self.authority),
            json_string(&self.path),
            self.status,
            self.duration_ms
        )
    }
}

/// A JSON string literal (RFC 8259 escaping).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_what_it_must() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[tokio::test]
    async fn only_watched_taps_build_events_and_watchers_can_leave() {
        let tap = Arc::new(Tap::default());
        assert!(!tap.is_watched());
        let mut w = tap.watch();
        assert!(tap.is_watched());
        let start = TapStart {
            method: "GET".into(),
            authority: "books".into(),
            path: "/x".into(),
            source: None,
            client_id: None,
            started: Instant::now(),
            policy: None,
            trace_id: None,
        };
        tap.publish(start.finish("outbound", Arc::new("books".into()), 200, None));
        let e = w.rx.recv().await.unwrap();
        assert!(e.to_json().contains("\"path\":\"/x\""));
        drop(w);
        assert!(!tap.is_watched());
    }

    #[test]
    fn only_traced_requests_name_their_trace() {
        let start = |trace_id: Option<&str>| TapStart {
            method: "GET".into(),
            authority: "books".into(),
            path: "/".into(),
            source: None,
            client_id: None,
            started: Instant::now(),
            policy: None,
            trace_id: trace_id.map(Into::into),
        };
        let traced = start(Some("4bf92f3577b34da6a3ce929d0e0e4736")).finish(
            "outbound",
            Arc::new("b".into()),
            200,
            None,
        );
        let json: &str = &traced.to_json();
        assert!(json.contains(",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}"), "{json}");
        let untraced = start(None).finish("outbound", Arc::new("b".into()), 200, None).to_json();
        assert!(!untraced.contains("trace_id"), "{untraced}");
    }

    #[tokio::test]
    async fn a_slow_watcher_loses_events_instead_of_blocking() {
        let tap = Arc::new(Tap::default());
        let mut w = tap.watch();
        for _ in 0..BUFFER + 10 {
            let start = TapStart {
                method: "GET".into(),
                authority: String::new(),
                path: "/".into(),
                source: None,
                client_id: None,
                started: Instant::now(),
                policy: None,
                trace_id: None,
            };
            tap.publish(start.finish("inbound", Arc::new("app".into()), 200, None));
        }
        assert!(matches!(w.rx.recv().await, Err(broadcast::error::RecvError::Lagged(10))));
    }
}
