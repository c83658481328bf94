//! The most requested paths, counted from tap events: what `tarmac top` and the
//! dashboard show. Paths are counted here, from a sample of live traffic, and never
//! become metric labels (their number is unbounded).

use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// Distinct (destination, method, path) kept; past it, new paths are not counted, so a
/// scan over random paths cannot grow memory without bound.
const MAX_ROWS: usize = 10_000;

/// Requests to one path of one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopRow {
    /// `workload/NAME` for what a proxy received, `service/NAME` (its target) for what it
    /// sent.
    pub destination: String,
    pub method: String,
    pub path: String,
    pub count: u64,
    pub successes: u64,
    pub best_ms: f64,
    pub worst_ms: f64,
    pub last_ms: f64,
}

#[derive(Debug, Default)]
pub struct TopTable {
    rows: HashMap<(String, String, String), TopRow>,
    /// Events the proxies or the relay dropped (the watcher fell behind).
    pub dropped: u64,
}

impl TopTable {
    /// Counts one tap line (an event or a `{"dropped":N}` notice).
    pub fn add_line(&mut self, line: &str) {
        let Ok(Value::Object(event)) = serde_json::from_str::<Value>(line) else { return };
        if let Some(n) = event.get("dropped").and_then(Value::as_u64) {
            self.dropped += n;
            return;
        }
        let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        let destination = match text("direction").as_str() {
            "outbound" => format!("service/{}", text("target")),
            _ => format!("workload/{}", text("workload")),
        };
        let status = event.get("status").and_then(Value::as_u64).unwrap_or(0);
        let grpc_ok = event.get("grpc_status").and_then(Value::as_u64).is_none_or(|s| s == 0);
        let success = status != 0 && status < 500 && grpc_ok;
        let ms = event.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0);
        let key = (destination, text("method"), text("path"));
        if !self.rows.contains_key(&key) && self.rows.len() >= MAX_ROWS {
            return;
        }
        let row = self.rows.entry(key.clone()).or_insert_with(|| TopRow {
            destination: key.0,
            method: key.1,
            path: key.2,
            count: 0,
            successes: 0,
            best_ms: ms,
            worst_ms: ms,
            last_ms: ms,
        });
        row.count += 1;
        row.successes += u64::from(success);
        row.best_ms = row.best_ms.min(ms);
        row.worst_ms = row.worst_ms.max(ms);
        row.last_ms = ms;
    }

    /// The `max` most requested, most first.
    pub fn top(&self, max: usize) -> Vec<TopRow> {
        let mut rows: Vec<TopRow> = self.rows.values().cloned().collect();
        rows.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| (&a.destination, &a.path).cmp(&(&b.destination, &b.path)))
        });
        rows.truncate(max);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_counted_by_destination_with_success_and_latency() {
        let mut table = TopTable::default();
        for (path, status, ms) in [("/a", 200, 3.0), ("/a", 500, 1.0), ("/b", 200, 2.0), ("/a", 200, 2.0)] {
            table.add_line(&format!(
                r#"{{"direction":"inbound","workload":"names","method":"GET","path":"{path}","status":{status},"grpc_status":null,"duration_ms":{ms}}}"#
            ));
        }
        table.add_line(r#"{"dropped":7}"#);
        let top = table.top(10);
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].path.as_str(), top[0].count, top[0].successes), ("/a", 3, 2));
        assert_eq!((top[0].best_ms, top[0].worst_ms, top[0].last_ms), (1.0, 3.0, 2.0));
        assert_eq!(top[0].destination, "workload/names");
        assert_eq!(table.dropped, 7);
    }
}
