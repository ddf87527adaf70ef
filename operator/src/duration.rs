//! Go-style durations (`30s`, `5m`, `1h30m`, `250ms`) as written in Migration specs.
//!
//! The CRD rejects anything that does not match [`DURATION_PATTERN`], so a parse failure here
//! means an object that bypassed validation; callers still get a typed error, never a panic.

use std::time::Duration;

/// The CEL-compatible pattern the CRD enforces on every duration field.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: use a number with a unit (ms, s, m, h), e.g. 30s, 5m or 1h30m"
)]
pub struct DurationError {
    input: String,
}

/// Parses `1h30m`, `45s`, `250ms`: one or more number+unit pairs.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    let mut total = Duration::ZERO;
    let mut rest = input;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return Err(err());
        };
        rest = &rest[len..];
        let part = unit
            .checked_mul(u32::try_from(value).map_err(|_| err())?)
            .ok_or_else(err)?;
        total = total.checked_add(part).ok_or_else(err)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m500ms"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_the_crd_pattern_rejects() {
        for bad in ["", "5", "m", "5 m", "5min", "1.5h", "-1s", "1d", "5m "] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
