//! Durations on the command line, written as in Tarmac's configuration files: a number
//! and a unit, `500ms`, `10s`, `2m`, `1h`, `1.5s`.

use std::time::Duration;

/// What is wrong with a duration, naming the text as given (trimmed). It implements
/// [`std::error::Error`], which is what clap's `value_parser` takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{text}` is not a duration; {}", EXAMPLE)]
    NotADuration { text: String },
    #[error("`{text}` has no unit; {}", EXAMPLE)]
    NoUnit { text: String },
    #[error("`{text}` has an unknown unit `{unit}`; {}", EXAMPLE)]
    UnknownUnit { text: String, unit: String },
    #[error("`{text}` is too long")]
    TooLong { text: String },
    #[error("`{text}` is zero; give a duration longer than that")]
    Zero { text: String },
}

const EXAMPLE: &str = "write e.g. `500ms`, `10s`, `2m` or `1h`";

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let unit_start = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_start);
    let value: f64 = number.parse().map_err(|_| DurationError::NotADuration { text: text.to_string() })?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(DurationError::NoUnit { text: text.to_string() }),
        _ => return Err(DurationError::UnknownUnit { text: text.to_string(), unit: unit.to_string() }),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| DurationError::TooLong { text: text.to_string() })
}

/// Like [`parse`], refusing zero: for limits such as how long to run.
pub fn parse_positive(text: &str) -> Result<Duration, DurationError> {
    let duration = parse(text)?;
    if duration.is_zero() {
        return Err(DurationError::Zero { text: text.trim().to_string() });
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
        assert!(parse("10").unwrap_err().to_string().contains("no unit"));
        assert!(parse("10sec").unwrap_err().to_string().contains("unknown unit `sec`"));
        assert!(parse("fast").unwrap_err().to_string().contains("not a duration"));
        assert!(parse("-1s").unwrap_err().to_string().contains("not a duration"));
        assert!(parse("").is_err());
        assert!(parse("1..5s").is_err());
    }

    #[test]
    fn zero_is_refused_where_a_positive_duration_is_needed() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_positive("0s"), Err(DurationError::Zero { text: "0s".into() }));
        assert_eq!(parse_positive("2m"), Ok(Duration::from_secs(120)));
    }
}
