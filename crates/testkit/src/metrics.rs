//! Reading Prometheus text from a proxy's admin listener.

use std::net::SocketAddr;

/// Fetches `/metrics` with a plain HTTP/1.1 client.
pub async fn scrape(admin: SocketAddr) -> String {
    crate::tools::http_get(admin, "/metrics").await.1
}

/// Sums the samples of `name` whose labels include every `key="value"` in `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if all { value.parse::<f64>().ok() } else { None }
        })
        .sum()
}

/// Scrapes until `sum(name, labels)` equals `want` (connections close asynchronously), up
/// to 10 s; returns the last scrape for further checks, or panics with it.
pub async fn wait_for(admin: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = scrape(admin).await;
        if sum(&text, name, labels) == want {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{name}{labels:?} never reached {want}:\n{text}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
