//! Gateway API durations (GEP-2257): one or more `<number><unit>` parts with units `h`,
//! `m`, `s`, `ms`, e.g. `1h`, `1h30m`, `500ms`, `0s`. Fractions and other units are not
//! part of the format and are refused.

use std::time::Duration;

/// Text that is not a Gateway API duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a duration: write e.g. `10s`, `500ms`, `1h30m`")]
pub struct InvalidDuration(pub String);

pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_string());
    if text.is_empty() || text.len() > 20 {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(invalid());
        };
        total += unit * u32::try_from(value).map_err(|_| invalid())?;
        rest = &rest[len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2m10s5ms"), Ok(Duration::from_millis(130_005)));
    }

    #[test]
    fn invalid_durations() {
        for bad in ["", "10", "1.5s", "s", "10d", "-1s", "1 s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
