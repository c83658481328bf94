//! Reading the Prometheus text exposition format, and the arithmetic dashboards do on it:
//! how much a counter grew between two scrapes, and quantiles estimated from histogram
//! buckets the way PromQL's `histogram_quantile` estimates them.
//!
//! Used by the control plane, which scrapes every proxy for golden metrics. Only samples matter: comment lines (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`)
//! and sample timestamps are skipped, so both the classic Prometheus format and
//! OpenMetrics text (which `tarmac-proxy` serves) are read.

/// Label names and values, in the order the exposition gives them.
pub type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// True when every `(key, value)` in `matchers` is one of the sample's labels.
    pub fn has_labels(&self, matchers: &[(&str, &str)]) -> bool {
        matchers.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A line that is not a valid sample, with its 1-based line number.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: SampleError,
}

/// What is wrong with a sample line.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("`{0}` is not a metric name")]
    MetricName(String),
    #[error("`{0}` has no value")]
    NoValue(String),
    #[error("`{0}` is not a sample value")]
    Value(String),
    #[error("unexpected text after the value of `{0}`")]
    TrailingText(String),
    #[error("a label has no `=`")]
    NoEquals,
    #[error("`{0}` is not a label name")]
    LabelName(String),
    #[error("the value of label `{0}` is not quoted")]
    Unquoted(String),
    #[error("the value of label `{0}` is not terminated")]
    Unterminated(String),
    #[error("unknown escape `\\{escape}` in label `{label}`")]
    Escape { label: String, escape: char },
    #[error("expected `,` or `}}` after label `{0}`")]
    Separator(String),
}

/// All samples of one scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line).map_err(|reason| ParseError { line: i + 1, reason })?;
            samples.push(sample);
        }
        Ok(Self { samples })
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The sum of every sample named `name` that carries all of `matchers`, as PromQL's
    /// `sum(name{matchers})`; 0 when there is none (a counter never incremented is absent
    /// until first used).
    pub fn sum(&self, name: &str, matchers: &[(&str, &str)]) -> f64 {
        self.samples.iter().filter(|s| s.name == name && s.has_labels(matchers)).map(|s| s.value).sum()
    }

    /// The cumulative buckets of histogram `name` (the name without `_bucket`) over every
    /// series that carries all of `matchers`, buckets with the same bound added together,
    /// as `sum by (le) (name_bucket{matchers})`.
    pub fn histogram(&self, name: &str, matchers: &[(&str, &str)]) -> Histogram {
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<Bucket> = Vec::new();
        for sample in self.samples.iter().filter(|s| s.name == bucket_name && s.has_labels(matchers)) {
            let Some(upper_bound) = sample.label("le").and_then(parse_value) else { continue };
            match buckets.iter_mut().find(|b| b.upper_bound == upper_bound) {
                Some(bucket) => bucket.cumulative_count += sample.value,
                None => buckets.push(Bucket { upper_bound, cumulative_count: sample.value }),
            }
        }
        Histogram::new(buckets)
    }
}

/// How much a counter grew from `earlier` to `now`. A counter that went down was reset
/// (its process restarted) and has counted `now` since, as PromQL's `increase` assumes.
pub fn counter_increase(now: f64, earlier: f64) -> f64 {
    if now < earlier { now } else { now - earlier }
}

/// One histogram bucket: how many observations were at most `upper_bound`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub upper_bound: f64,
    pub cumulative_count: f64,
}

/// A histogram's cumulative buckets, ordered by bound; the last is `+Inf` when complete.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<Bucket>,
}

impl Histogram {
    /// No buckets, no observations.
    pub const EMPTY: Histogram = Histogram { buckets: Vec::new() };

    pub fn new(mut buckets: Vec<Bucket>) -> Self {
        buckets.sort_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
        Self { buckets }
    }

    /// Observations in total: the `+Inf` bucket's count.
    pub fn count(&self) -> f64 {
        self.buckets.last().filter(|b| b.upper_bound == f64::INFINITY).map_or(0.0, |b| b.cumulative_count)
    }

    /// The observations of both, bucket by bucket (`sum by (le)` of two series).
    pub fn merge(&self, other: &Histogram) -> Histogram {
        let mut buckets = self.buckets.clone();
        for b in &other.buckets {
            match buckets.iter_mut().find(|m| m.upper_bound == b.upper_bound) {
                Some(m) => m.cumulative_count += b.cumulative_count,
                None => buckets.push(*b),
            }
        }
        Histogram::new(buckets)
    }

    /// The observations made since `earlier`, bucket by bucket: the histogram of one
    /// interval, from two scrapes of the same series.
    pub fn increase_since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|e| e.upper_bound == b.upper_bound)
                    .map_or(0.0, |e| e.cumulative_count);
                Bucket {
                    upper_bound: b.upper_bound,
                    cumulative_count: counter_increase(b.cumulative_count, before),
                }
            })
            .collect();
        Histogram::new(buckets)
    }

    /// Estimates the `q`-quantile (0 < q ≤ 1) as PromQL's `histogram_quantile` does: find
    /// the bucket holding the observation of rank `q × count`, and assume observations are
    /// spread evenly inside it, so interpolate linearly between its bounds. The lowest
    /// bucket starts at 0; a rank in the `+Inf` bucket reports the highest finite bound.
    /// None when there are no observations or no `+Inf` bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(q > 0.0 && q <= 1.0) || self.buckets.len() < 2 || self.count() <= 0.0 {
            return None;
        }
        // Buckets of separate scrapes or of summed series can be slightly out of step;
        // like Prometheus, treat a cumulative count that goes down as the previous one.
        let mut counts: Vec<f64> = self.buckets.iter().map(|b| b.cumulative_count).collect();
        for i in 1..counts.len() {
            counts[i] = counts[i].max(counts[i - 1]);
        }
        let total = *counts.last().expect("at least two buckets");
        let rank = q * total;
        let b = counts.iter().position(|&c| c >= rank).expect("the +Inf bucket holds every rank");
        let last = self.buckets.len() - 1;
        if b == last {
            return Some(self.buckets[last - 1].upper_bound);
        }
        let upper = self.buckets[b].upper_bound;
        if b == 0 && upper <= 0.0 {
            return Some(upper);
        }
        let (lower, below) =
            if b == 0 { (0.0, 0.0) } else { (self.buckets[b - 1].upper_bound, counts[b - 1]) };
        let in_bucket = counts[b] - below;
        Some(lower + (upper - lower) * ((rank - below) / in_bucket))
    }
}

/// A sample value or an `le` bound: a float, `+Inf`, `-Inf` or `NaN`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Result<Sample, SampleError> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().enumerate().all(|(i, c)| is_name_char(c, i == 0)) {
        return Err(SampleError::MetricName(name.to_string()));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().ok_or_else(|| SampleError::NoValue(name.to_string()))?;
    let value = parse_value(value_text).ok_or_else(|| SampleError::Value(value_text.to_string()))?;
    // An optional timestamp may follow; anything after it is not the format.
    if fields.nth(1).is_some() {
        return Err(SampleError::TrailingText(name.to_string()));
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Parses `key="value",...}` (the opening brace already consumed); returns the labels and
/// the text after the closing brace. Values may contain `\\`, `\"` and `\n` escapes.
fn parse_labels(text: &str) -> Result<(Labels, &str), SampleError> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or(SampleError::NoEquals)?;
        let key = rest[..eq].trim();
        if key.is_empty() || !key.chars().enumerate().all(|(i, c)| is_name_char(c, i == 0) && c != ':') {
            return Err(SampleError::LabelName(key.to_string()));
        }
        rest = rest[eq + 1..].trim_start();
        rest = rest.strip_prefix('"').ok_or_else(|| SampleError::Unquoted(key.to_string()))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(SampleError::Unterminated(key.to_string())),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => return Err(SampleError::Escape { label: key.to_string(), escape: c }),
                    None => return Err(SampleError::Unterminated(key.to_string())),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = rest[end + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(SampleError::Separator(key.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(buckets: &[(f64, f64)]) -> Histogram {
        Histogram::new(
            buckets
                .iter()
                .map(|&(upper_bound, cumulative_count)| Bucket { upper_bound, cumulative_count })
                .collect(),
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn parses_names_labels_values_and_skips_comments() {
        let text = "# HELP tarmac_requests HTTP requests received.\n\
                    # TYPE tarmac_requests counter\n\
                    tarmac_requests_total{direction=\"inbound\",target=\"127.0.0.1:8080\"} 42\n\
                    process_cpu_seconds_total 0.25\n\
                    \n\
                    up{job=\"a\"} 1 1700000000000\n\
                    # EOF\n";
        let scrape = Scrape::parse(text).unwrap();
        let samples = scrape.samples();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "tarmac_requests_total");
        assert_eq!(samples[0].label("direction"), Some("inbound"));
        assert_eq!(samples[0].label("target"), Some("127.0.0.1:8080"));
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].name, "process_cpu_seconds_total");
        assert!(samples[1].labels.is_empty());
        assert_eq!(samples[2].value, 1.0, "the timestamp is not the value");
    }

    #[test]
    fn label_values_may_hold_escapes_commas_braces_and_spaces() {
        let scrape =
            Scrape::parse(r#"m{a="x \"quoted\", {braced}",b="back\\slash\nline", c = "spaced" ,} 3"#)
                .unwrap();
        let s = &scrape.samples()[0];
        assert_eq!(s.label("a"), Some("x \"quoted\", {braced}"));
        assert_eq!(s.label("b"), Some("back\\slash\nline"));
        assert_eq!(s.label("c"), Some("spaced"));
        assert_eq!(s.value, 3.0);
    }

    #[test]
    fn special_values_parse() {
        let scrape = Scrape::parse("a +Inf\nb -Inf\nc NaN\nd 1.5e-3\n").unwrap();
        let v: Vec<f64> = scrape.samples().iter().map(|s| s.value).collect();
        assert_eq!(v[0], f64::INFINITY);
        assert_eq!(v[1], f64::NEG_INFINITY);
        assert!(v[2].is_nan());
        assert_eq!(v[3], 0.0015);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line_number() {
        for bad in
            ["m{a=\"1\" 2", "m{a=1} 2", "m{a=\"1\"}", "m{a=\"1\"} x", "9m 1", "m{a=\"\\t\"} 1", "m 1 2 3"]
        {
            let err = Scrape::parse(&format!("# ok\n{bad}\n")).unwrap_err();
            assert_eq!(err.line, 2, "{bad}: {err}");
        }
    }

    #[test]
    fn sum_adds_the_series_that_match() {
        let text = "tarmac_responses_total{direction=\"inbound\",target=\"a\",status_code=\"200\",classification=\"success\"} 98\n\
                    tarmac_responses_total{direction=\"inbound\",target=\"a\",status_code=\"500\",classification=\"failure\"} 2\n\
                    tarmac_responses_total{direction=\"outbound\",target=\"a\",status_code=\"200\",classification=\"success\"} 7\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.sum("tarmac_responses_total", &[("direction", "inbound")]), 100.0);
        assert_eq!(
            scrape.sum("tarmac_responses_total", &[("direction", "inbound"), ("classification", "success")]),
            98.0
        );
        assert_eq!(scrape.sum("tarmac_responses_total", &[]), 107.0);
        assert_eq!(scrape.sum("absent_total", &[]), 0.0);
    }

    #[test]
    fn histogram_buckets_are_collected_by_bound() {
        let text = "lat_bucket{le=\"0.5\",t=\"a\"} 1\nlat_bucket{le=\"+Inf\",t=\"a\"} 4\nlat_bucket{le=\"0.1\",t=\"a\"} 0\n\
                    lat_bucket{le=\"0.1\",t=\"b\"} 5\nlat_bucket{le=\"0.5\",t=\"b\"} 5\nlat_bucket{le=\"+Inf\",t=\"b\"} 5\n\
                    lat_sum{t=\"a\"} 9\nlat_count{t=\"a\"} 4\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(
            scrape.histogram("lat", &[("t", "a")]),
            histogram(&[(0.1, 0.0), (0.5, 1.0), (f64::INFINITY, 4.0)])
        );
        assert_eq!(scrape.histogram("lat", &[]), histogram(&[(0.1, 5.0), (0.5, 6.0), (f64::INFINITY, 9.0)]));
        assert_eq!(scrape.histogram("lat", &[]).count(), 9.0);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 10 observations in (0, 1], 20 in (1, 2], 10 in (2, 4].
        let h = histogram(&[(1.0, 10.0), (2.0, 30.0), (4.0, 40.0), (f64::INFINITY, 40.0)]);
        // Rank 20 is the 10th of 20 observations in (1, 2]: halfway.
        assert!(close(h.quantile(0.5).unwrap(), 1.5));
        // Rank 10 is the last observation of the first bucket, which starts at 0.
        assert!(close(h.quantile(0.25).unwrap(), 1.0));
        // Rank 39.6 is 9.6 of 10 into (2, 4].
        assert!(close(h.quantile(0.99).unwrap(), 3.92));
        assert!(close(h.quantile(1.0).unwrap(), 4.0));
    }

    #[test]
    fn quantiles_in_the_inf_bucket_report_the_highest_finite_bound() {
        let h = histogram(&[(0.1, 1.0), (0.5, 2.0), (f64::INFINITY, 10.0)]);
        assert_eq!(h.quantile(0.99), Some(0.5));
    }

    #[test]
    fn quantiles_need_observations_and_a_valid_q() {
        assert_eq!(histogram(&[(1.0, 0.0), (f64::INFINITY, 0.0)]).quantile(0.5), None);
        assert_eq!(histogram(&[]).quantile(0.5), None);
        assert_eq!(histogram(&[(1.0, 3.0)]).quantile(0.5), None, "no +Inf bucket");
        let h = histogram(&[(1.0, 3.0), (f64::INFINITY, 3.0)]);
        assert_eq!(h.quantile(0.0), None);
        assert_eq!(h.quantile(1.5), None);
    }

    #[test]
    fn counters_increase_and_survive_resets() {
        assert_eq!(counter_increase(15.0, 10.0), 5.0);
        assert_eq!(counter_increase(10.0, 10.0), 0.0);
        assert_eq!(counter_increase(3.0, 10.0), 3.0, "a reset counts from zero");
    }

    #[test]
    fn interval_quantiles_come_from_bucket_increases() {
        // Before: 100 fast observations. After: 100 more, all in (0.01, 0.025].
        let before = histogram(&[(0.005, 100.0), (0.01, 100.0), (0.025, 100.0), (f64::INFINITY, 100.0)]);
        let after = histogram(&[(0.005, 100.0), (0.01, 100.0), (0.025, 200.0), (f64::INFINITY, 200.0)]);
        let interval = after.increase_since(&before);
        assert_eq!(interval.count(), 100.0);
        assert!(close(interval.quantile(0.5).unwrap(), 0.0175));
        // Over the whole history the median is the boundary between the two groups.
        assert!(close(after.quantile(0.5).unwrap(), 0.005));
        // A series that appeared after `before` counts from zero.
        assert_eq!(after.increase_since(&Histogram::default()), after);
    }
}
