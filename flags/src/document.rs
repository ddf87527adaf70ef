//! The document's values, its strict parse and its encoding as key/value entries.

use std::fmt;

#[cfg(feature = "serde")]
use schemars::JsonSchema;
#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// The document's keys, as the stores hold them.
pub mod keys {
    pub const GENERATION: &str = "generation";
    pub const WRITE_PRIMARY: &str = "write_primary";
    pub const DUAL_WRITE: &str = "dual_write";
    pub const SHADOW_READ_PERCENT: &str = "shadow_read_percent";
    pub const READ_SPLIT_PERCENT: &str = "read_split_percent";
    /// Optional when read (absent = `all`, as documents written before it existed mean).
    pub const SHADOW_COMPARE_FROM: &str = "shadow_compare_from";
    /// Every key a document carries, in the order they are checked.
    pub const ALL: [&str; 6] = [
        GENERATION,
        WRITE_PRIMARY,
        DUAL_WRITE,
        SHADOW_READ_PERCENT,
        READ_SPLIT_PERCENT,
        SHADOW_COMPARE_FROM,
    ];
    /// The keys a document must have.
    pub const REQUIRED: [&str; 5] = [
        GENERATION,
        WRITE_PRIMARY,
        DUAL_WRITE,
        SHADOW_READ_PERCENT,
        READ_SPLIT_PERCENT,
    ];
}

/// One of the two systems (`legacy` or `new`): e.g. the store that must accept a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize, JsonSchema))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Side {
    #[default]
    Legacy,
    New,
}

impl Side {
    /// The document value (`legacy` / `new`), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }

    /// The side that is not this one.
    pub fn other(self) -> Side {
        match self {
            Side::Legacy => Side::New,
            Side::New => Side::Legacy,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether (and how) writes also go to the store that is not primary (`off`, `sync`, `async`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize, JsonSchema))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum DualWrite {
    #[default]
    Off,
    Sync,
    Async,
}

impl DualWrite {
    /// The document value (`off` / `sync` / `async`).
    pub fn as_str(self) -> &'static str {
        match self {
            DualWrite::Off => "off",
            DualWrite::Sync => "sync",
            DualWrite::Async => "async",
        }
    }
}

impl fmt::Display for DualWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A share in 0..=100 (of reads or of users).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(Serialize, JsonSchema))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Percent(#[cfg_attr(feature = "serde", schemars(range(max = 100)))] u8);

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const ALL: Percent = Percent(100);

    /// `None` above 100.
    pub const fn new(p: u8) -> Option<Percent> {
        if p <= 100 { Some(Percent(p)) } else { None }
    }

    /// `p` limited to 0..=100 (for values the CRD already bounds).
    pub fn saturating(p: i64) -> Percent {
        Percent(u8::try_from(p.clamp(0, 100)).unwrap_or(100))
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(feature = "serde")]
impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = u8::deserialize(d)?;
        Percent::new(p).ok_or_else(|| {
            serde::de::Error::custom(format!("{p} is not a percent: expected 0 to 100"))
        })
    }
}

/// Which data a shadow read compares: what the store that is not serving is expected to hold.
///
/// A new store holds the writes made after every service instance started dual-writing, and
/// the older data only once a backfill copied it. Comparing older data before that would count
/// history as drift. Document values: `none`, `all`, or an RFC 3339 instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(into = "String", try_from = "String"))]
pub enum ShadowCompare {
    /// Compare nothing: not every instance is known to dual-write yet.
    Nothing,
    /// Compare only data created at or after this instant.
    From(jiff::Timestamp),
    /// Compare everything (the other store holds all data, e.g. after a backfill).
    #[default]
    All,
}

impl ShadowCompare {
    /// Parses a document value (`none`, `all` or an RFC 3339 instant).
    pub fn parse(raw: &str) -> Option<ShadowCompare> {
        match raw {
            "none" => Some(ShadowCompare::Nothing),
            "all" => Some(ShadowCompare::All),
            other => other.parse().ok().map(ShadowCompare::From),
        }
    }

    /// Whether data created at `unix_millis` is compared.
    pub fn covers_millis(self, unix_millis: i64) -> bool {
        match self {
            ShadowCompare::Nothing => false,
            ShadowCompare::All => true,
            ShadowCompare::From(t) => unix_millis >= t.as_millisecond(),
        }
    }
}

impl fmt::Display for ShadowCompare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShadowCompare::Nothing => f.write_str("none"),
            ShadowCompare::All => f.write_str("all"),
            ShadowCompare::From(t) => write!(f, "{t}"),
        }
    }
}

impl From<ShadowCompare> for String {
    fn from(s: ShadowCompare) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for ShadowCompare {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ShadowCompare::parse(&s)
            .ok_or_else(|| format!("{s:?} is not `none`, `all` or an RFC 3339 instant"))
    }
}

#[cfg(feature = "serde")]
impl JsonSchema for ShadowCompare {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ShadowCompare".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`none`, `all`, or an RFC 3339 instant: the data shadow reads compare"
        })
    }
}

/// The document without its generation: what a phase asks of the services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize, JsonSchema))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct FlagValues {
    pub write_primary: Side,
    pub dual_write: DualWrite,
    pub shadow_read_percent: Percent,
    pub read_split_percent: Percent,
    /// Which data shadow reads compare.
    #[cfg_attr(feature = "serde", serde(default))]
    pub shadow_compare_from: ShadowCompare,
}

impl FlagValues {
    /// The side that serves the reads of a user in `bucket` ([`crate::bucket`]).
    pub fn cohort(&self, bucket: u8) -> Side {
        if bucket < self.read_split_percent.get() {
            Side::New
        } else {
            Side::Legacy
        }
    }
}

/// One complete flag document: its generation and values. The default is the state before any
/// migration (legacy only, nothing mirrored, nothing split).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize, JsonSchema))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct Flags {
    pub generation: i64,
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub values: FlagValues,
}

/// Why a document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("flag document has no `{key}` key")]
    MissingKey { key: &'static str },
    #[error("flag `{key}` has invalid value {value:?}: expected {expected}")]
    InvalidValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Two stores of one Migration hold different documents.
    #[error("the flag stores hold different documents (generations {generations:?})")]
    StoresDisagree { generations: Vec<Option<i64>> },
}

impl Flags {
    /// Reads a document strictly: every key present and valid (values are trimmed; keys and
    /// values are case-sensitive, as the operator writes them). The error names the first bad
    /// key and its value.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Flags, FlagError> {
        let generation = parse_generation(&get)?;
        let value = |key: &'static str| get(key).ok_or(FlagError::MissingKey { key });
        let raw = value(keys::WRITE_PRIMARY)?;
        let write_primary = match raw.trim() {
            "legacy" => Side::Legacy,
            "new" => Side::New,
            _ => return Err(invalid(keys::WRITE_PRIMARY, &raw, "`legacy` or `new`")),
        };
        let raw = value(keys::DUAL_WRITE)?;
        let dual_write = match raw.trim() {
            "off" => DualWrite::Off,
            "sync" => DualWrite::Sync,
            "async" => DualWrite::Async,
            _ => return Err(invalid(keys::DUAL_WRITE, &raw, "`off`, `sync` or `async`")),
        };
        let percent = |key: &'static str| -> Result<Percent, FlagError> {
            let raw = value(key)?;
            parse_unsigned(raw.trim())
                .and_then(|p| u8::try_from(p).ok())
                .and_then(Percent::new)
                .ok_or_else(|| invalid(key, &raw, "an integer from 0 to 100"))
        };
        let shadow_compare_from = match get(keys::SHADOW_COMPARE_FROM) {
            None => ShadowCompare::All,
            Some(raw) => ShadowCompare::parse(raw.trim()).ok_or_else(|| {
                invalid(
                    keys::SHADOW_COMPARE_FROM,
                    &raw,
                    "`none`, `all` or an RFC 3339 instant",
                )
            })?,
        };
        Ok(Flags {
            generation,
            values: FlagValues {
                write_primary,
                dual_write,
                shadow_read_percent: percent(keys::SHADOW_READ_PERCENT)?,
                read_split_percent: percent(keys::READ_SPLIT_PERCENT)?,
                shadow_compare_from,
            },
        })
    }

    /// The document as key/value pairs, in [`keys::ALL`] order (the format [`Flags::parse`]
    /// reads).
    pub fn to_entries(&self) -> [(&'static str, String); 6] {
        let v = &self.values;
        [
            (keys::GENERATION, self.generation.to_string()),
            (keys::WRITE_PRIMARY, v.write_primary.as_str().to_owned()),
            (keys::DUAL_WRITE, v.dual_write.as_str().to_owned()),
            (keys::SHADOW_READ_PERCENT, v.shadow_read_percent.to_string()),
            (keys::READ_SPLIT_PERCENT, v.read_split_percent.to_string()),
            (keys::SHADOW_COMPARE_FROM, v.shadow_compare_from.to_string()),
        ]
    }

    /// The document as a file of `key=value` lines (the services' file source).
    pub fn to_file_text(&self) -> String {
        self.to_entries()
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// The checks [`Flags::parse`] makes that the types alone do not.
    pub fn validate(&self) -> Result<(), FlagError> {
        if self.generation < 0 {
            return Err(invalid(
                keys::GENERATION,
                &self.generation.to_string(),
                "a non-negative integer",
            ));
        }
        Ok(())
    }
}

/// The generation alone, so a document with bad values still tells how far it got.
pub(crate) fn parse_generation(get: impl Fn(&str) -> Option<String>) -> Result<i64, FlagError> {
    let raw = get(keys::GENERATION).ok_or(FlagError::MissingKey {
        key: keys::GENERATION,
    })?;
    parse_unsigned(raw.trim())
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| invalid(keys::GENERATION, &raw, "a non-negative integer"))
}

fn invalid(key: &'static str, raw: &str, expected: &'static str) -> FlagError {
    FlagError::InvalidValue {
        key,
        value: raw.to_owned(),
        expected,
    }
}

/// Digits only: `str::parse` would also take `+5`, which the operator never writes.
fn parse_unsigned(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn doc(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn sample() -> Flags {
        Flags {
            generation: 9,
            values: FlagValues {
                write_primary: Side::New,
                dual_write: DualWrite::Async,
                shadow_read_percent: Percent::new(5).expect("percent"),
                read_split_percent: Percent::ALL,
                shadow_compare_from: ShadowCompare::From(
                    "2026-01-31T12:00:00.250Z".parse().expect("instant"),
                ),
            },
        }
    }

    #[test]
    fn shadow_compare_reads_its_three_forms_and_defaults_to_all() {
        let at: jiff::Timestamp = "2026-01-31T12:00:00Z".parse().expect("instant");
        for (raw, want) in [
            ("none", ShadowCompare::Nothing),
            ("all", ShadowCompare::All),
            ("2026-01-31T12:00:00Z", ShadowCompare::From(at)),
        ] {
            assert_eq!(ShadowCompare::parse(raw), Some(want));
            assert_eq!(ShadowCompare::parse(&want.to_string()), Some(want));
        }
        for bad in ["", "All", "yesterday", "2026-01-31"] {
            assert_eq!(ShadowCompare::parse(bad), None, "{bad:?}");
        }
        let ms = at.as_millisecond();
        assert!(ShadowCompare::From(at).covers_millis(ms));
        assert!(!ShadowCompare::From(at).covers_millis(ms - 1));
        assert!(!ShadowCompare::Nothing.covers_millis(ms));
        assert!(ShadowCompare::All.covers_millis(i64::MIN));
        // A document written before the key existed compares everything, as it did.
        let old = [
            ("generation", "1"),
            ("write_primary", "legacy"),
            ("dual_write", "sync"),
            ("shadow_read_percent", "10"),
            ("read_split_percent", "0"),
        ];
        let flags = Flags::parse(doc(&old)).expect("valid without the optional key");
        assert_eq!(flags.values.shadow_compare_from, ShadowCompare::All);
        let mut bad = old.to_vec();
        bad.push(("shadow_compare_from", "soon"));
        assert!(matches!(
            Flags::parse(doc(&bad)),
            Err(FlagError::InvalidValue {
                key: "shadow_compare_from",
                ..
            })
        ));
    }

    #[test]
    fn entries_round_trip() {
        let flags = sample();
        let map: BTreeMap<String, String> = flags
            .to_entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(map["write_primary"], "new");
        assert_eq!(map["dual_write"], "async");
        assert_eq!(Flags::parse(|k| map.get(k).cloned()), Ok(flags));
    }

    #[test]
    fn file_text_is_one_line_per_key() {
        assert_eq!(
            sample().to_file_text(),
            "generation=9\nwrite_primary=new\ndual_write=async\nshadow_read_percent=5\nread_split_percent=100\nshadow_compare_from=2026-01-31T12:00:00.25Z\n"
        );
    }

    #[test]
    fn values_are_trimmed_but_case_sensitive() {
        let base = [
            ("generation", " 3\n"),
            ("write_primary", "new "),
            ("dual_write", "\tsync"),
            ("shadow_read_percent", "0"),
            ("read_split_percent", "100\n"),
        ];
        let flags = Flags::parse(doc(&base)).expect("trimmed values are valid");
        assert_eq!(flags.generation, 3);
        assert_eq!(flags.values.write_primary, Side::New);
        assert_eq!(flags.values.dual_write, DualWrite::Sync);
        let mut upper = base;
        upper[1] = ("write_primary", "New");
        assert!(matches!(
            Flags::parse(doc(&upper)),
            Err(FlagError::InvalidValue {
                key: "write_primary",
                ..
            })
        ));
    }

    #[test]
    fn every_bad_value_names_its_key() {
        let good = [
            ("generation", "3"),
            ("write_primary", "legacy"),
            ("dual_write", "off"),
            ("shadow_read_percent", "0"),
            ("read_split_percent", "0"),
        ];
        for (i, bad) in ["-1", "primary", "on", "101", "+5"].iter().enumerate() {
            let mut pairs = good;
            pairs[i].1 = bad;
            match Flags::parse(doc(&pairs)) {
                Err(FlagError::InvalidValue { key, value, .. }) => {
                    assert_eq!((key, value.as_str()), (good[i].0, *bad));
                }
                other => panic!("{bad:?} for {}: {other:?}", good[i].0),
            }
            let missing: Vec<_> = good
                .iter()
                .filter(|(k, _)| *k != good[i].0)
                .copied()
                .collect();
            assert_eq!(
                Flags::parse(doc(&missing)),
                Err(FlagError::MissingKey { key: good[i].0 })
            );
        }
    }

    #[test]
    fn percents_stay_in_range() {
        assert_eq!(Percent::new(101), None);
        assert_eq!(Percent::saturating(-3), Percent::ZERO);
        assert_eq!(Percent::saturating(250), Percent::ALL);
        assert_eq!(Percent::saturating(25).get(), 25);
    }

    #[test]
    fn the_new_cohort_grows_with_the_split_and_never_shrinks() {
        for bucket in 0..100u8 {
            let mut was_new = false;
            for split in [0, 10, 25, 50, 100] {
                let v = FlagValues {
                    read_split_percent: Percent::new(split).expect("percent"),
                    ..FlagValues::default()
                };
                let is_new = v.cohort(bucket) == Side::New;
                assert!(is_new || !was_new, "bucket {bucket} left new at {split}%");
                was_new = is_new;
            }
            assert!(was_new, "bucket {bucket} is new at 100%");
        }
    }
}
