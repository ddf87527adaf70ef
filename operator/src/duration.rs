//! Go-style durations (`30s`, `5m`, `1h30m`, `250ms`) as written in Migration specs.
//!
//! Every duration field of the CRD is a [`SpecDuration`]: one schema (a string of at most 32
//! characters and one CEL rule with [`DURATION_PATTERN`]) instead of a rule copied per field, and
//! parsed once when the object is read, so no caller falls back to a default on a bad value.
//! The API server rejects what does not match; an object that bypassed validation fails to
//! deserialize with the [`DurationError`] below, like any other malformed field.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

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

/// A duration field of a Migration spec: the text as written (kept, so the object reads back
/// as the user wrote it) and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpecDuration {
    text: String,
    value: Duration,
}

impl SpecDuration {
    pub fn get(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for SpecDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, DurationError> {
        Ok(SpecDuration {
            value: parse(text)?,
            text: text.to_owned(),
        })
    }
}

impl TryFrom<String> for SpecDuration {
    type Error = DurationError;

    fn try_from(text: String) -> Result<Self, DurationError> {
        text.parse()
    }
}

impl From<SpecDuration> for String {
    fn from(d: SpecDuration) -> String {
        d.text
    }
}

/// Written Go style (`1h30m`, `1m500ms`, `0s`), to the millisecond.
impl From<Duration> for SpecDuration {
    fn from(d: Duration) -> SpecDuration {
        let ms = d.as_millis();
        let parts = [
            (ms / 3_600_000, "h"),
            (ms / 60_000 % 60, "m"),
            (ms / 1_000 % 60, "s"),
            (ms % 1_000, "ms"),
        ];
        let mut text: String = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, unit)| format!("{n}{unit}"))
            .collect();
        if text.is_empty() {
            text = "0s".into();
        }
        SpecDuration {
            text,
            value: Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)),
        }
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonSchema for SpecDuration {
    fn schema_name() -> Cow<'static, str> {
        "SpecDuration".into()
    }

    // Inlined into each field: the CRD's structural schema has no references.
    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{DURATION_PATTERN}')"),
                "message": "must be a duration such as 30s, 5m or 1h30m (a number and ms, s, m or h, repeated)",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_duration_reads_back_as_written_and_refuses_what_the_crd_refuses() {
        let d: SpecDuration = serde_json::from_str(r#""1h30m""#).expect("valid");
        assert_eq!(d.get(), Duration::from_secs(5400));
        assert_eq!(serde_json::to_string(&d).expect("json"), r#""1h30m""#);
        let err =
            serde_json::from_str::<SpecDuration>(r#""5 minutes""#).expect_err("not a duration");
        assert!(err.to_string().contains("5 minutes"), "{err}");
    }

    #[test]
    fn a_duration_is_written_go_style() {
        for (d, text) in [
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_millis(60_500), "1m500ms"),
            (Duration::from_secs(15), "15s"),
            (Duration::ZERO, "0s"),
        ] {
            let spec = SpecDuration::from(d);
            assert_eq!((spec.as_str(), spec.get()), (text, d));
            assert_eq!(parse(text), Ok(d), "{text} reads back");
        }
    }

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
