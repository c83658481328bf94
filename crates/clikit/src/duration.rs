//! Durations on the command line, written as in Tarmac's configuration files: a number
//! and a unit, `500ms`, `10s`, `2m`, `1h`, `1.5s`.

use std::time::Duration;

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let unit_start = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_start);
    let example = "write e.g. `500ms`, `10s`, `2m` or `1h`";
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration; {example}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("`{text}` has no unit; {example}")),
        _ => return Err(format!("`{text}` has an unknown unit `{unit}`; {example}")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is too long"))
}

/// Like [`parse`], refusing zero: for limits such as how long to run.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    let duration = parse(text)?;
    if duration.is_zero() {
        return Err(format!("`{}` is zero; give a duration longer than that", text.trim()));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_fractions() {
        for (text, millis) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1.5s", 1_500),
            (" 3s ", 3_000),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(millis)), "{text}");
        }
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("10sec").unwrap_err().contains("unknown unit `sec`"));
        assert!(parse("fast").unwrap_err().contains("not a duration"));
        assert!(parse("-1s").unwrap_err().contains("not a duration"));
        assert!(parse("").is_err());
        assert!(parse("1..5s").is_err());
    }

    #[test]
    fn zero_is_refused_where_a_positive_duration_is_needed() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert!(parse_positive("0s").unwrap_err().contains("zero"));
        assert_eq!(parse_positive("2m"), Ok(Duration::from_secs(120)));
    }
}
