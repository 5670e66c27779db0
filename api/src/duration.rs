//! Human durations in specs (`7d`, `12h`, `1h30m`, `250ms`), as users write them in YAML.
//!
//! Kafka wants milliseconds; Kubernetes users expect Go-style units. Days and weeks are allowed
//! because retention is usually thought of in days.

use std::time::Duration;

/// The retention value that keeps records forever.
pub const INFINITE: &str = "infinite";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} is empty")]
    Empty(String),
    #[error("duration {input:?} is not of the form <number><unit>… with unit ms, s, m, h, d or w (at {rest:?})")]
    Malformed { input: String, rest: String },
    #[error("duration {0:?} is too long")]
    Overflow(String),
}

/// Parses a duration such as `7d`, `1h30m` or `250ms`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty(input.to_owned()));
    }
    let malformed = |rest: &str| DurationError::Malformed { input: input.to_owned(), rest: rest.to_owned() };
    let mut total_ms: u64 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(malformed(rest));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| DurationError::Overflow(input.to_owned()))?;
        rest = &rest[digits..];
        let (unit_ms, unit_len) = match rest.as_bytes() {
            [b'm', b's', ..] => (1, 2),
            [b's', ..] => (1_000, 1),
            [b'm', ..] => (60_000, 1),
            [b'h', ..] => (3_600_000, 1),
            [b'd', ..] => (86_400_000, 1),
            [b'w', ..] => (604_800_000, 1),
            _ => return Err(malformed(rest)),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|part| total_ms.checked_add(part))
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a retention into Kafka's `retention.ms` value: milliseconds, or `-1` for `infinite`.
pub fn retention_ms(input: &str) -> Result<i64, DurationError> {
    if input == INFINITE {
        return Ok(-1);
    }
    let millis = parse(input)?.as_millis();
    i64::try_from(millis).map_err(|_| DurationError::Overflow(input.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86_400)));
    }

    #[test]
    fn rejects_malformed_input_naming_the_bad_part() {
        assert_eq!(parse(""), Err(DurationError::Empty(String::new())));
        assert!(matches!(parse("7"), Err(DurationError::Malformed { rest, .. }) if rest.is_empty()));
        assert!(matches!(parse("7days"), Err(DurationError::Malformed { rest, .. }) if rest == "ays"));
        assert!(matches!(parse("-1d"), Err(DurationError::Malformed { .. })));
        assert!(matches!(parse("99999999999999999999d"), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn retention_maps_infinite_to_kafka_minus_one() {
        assert_eq!(retention_ms("infinite"), Ok(-1));
        assert_eq!(retention_ms("7d"), Ok(604_800_000));
    }

    #[test]
    fn patterns_agree_with_the_parser() {
        let pattern = regex_lite_match;
        for ok in ["1ms", "7d", "1h30m", "2w"] {
            assert!(pattern(patterns::DURATION.regex, ok) && parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "7", "d", "1.5h", "7 d", "-1d"] {
            assert!(!pattern(patterns::DURATION.regex, bad) && parse(bad).is_err(), "{bad}");
        }
        assert!(pattern(patterns::RETENTION.regex, "infinite"));
    }

    /// Checks a pattern the same way the apiserver's OpenAPI validation does, via the schema
    /// validator the crate already uses.
    fn regex_lite_match(pattern: &str, value: &str) -> bool {
        let schema = serde_json::json!({"type": "string", "pattern": pattern});
        crate::validation::json_schema_accepts(&schema, &serde_json::json!(value))
    }
}
