//! Flag stores: where the services read the flag document (DESIGN §3).
//!
//! Each store reads the document it holds (to learn the generation and skip no-op writes) and
//! writes a complete document. A new store kind is a new file beside `configmap.rs`.

mod configmap;
mod ssm;

pub use configmap::ConfigMapStore;
pub use ssm::{SsmStore, TRAFFIC_SPLIT_PERCENT, USE_NEW_SYSTEM};

use crate::crd::{AppliedFlags, DualWrite, FlagValues, WritePrimary};

/// Flag document keys, as the services read them.
pub mod keys {
    pub const GENERATION: &str = "generation";
    pub const WRITE_PRIMARY: &str = "write_primary";
    pub const DUAL_WRITE: &str = "dual_write";
    pub const SHADOW_READ_PERCENT: &str = "shadow_read_percent";
    pub const READ_SPLIT_PERCENT: &str = "read_split_percent";
}

#[derive(Debug, thiserror::Error)]
pub enum FlagStoreError {
    #[error("SSM flag store: {0}")]
    Aws(#[source] crate::aws::AwsError),
    #[error(
        "the operator may not {verb} ConfigMap {namespace}/{name}: grant get, create and patch on configmaps in that namespace to the operator's ServiceAccount"
    )]
    Forbidden {
        verb: &'static str,
        namespace: String,
        name: String,
    },
    #[error("flag store ConfigMap {namespace}/{name} could not be {verb}: {source}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl FlagStoreError {
    /// Condition/Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            FlagStoreError::Forbidden { .. } => "FlagStoreForbidden",
            FlagStoreError::Api { .. } => "FlagStoreUnavailable",
            FlagStoreError::Aws(e) => e.reason(),
        }
    }
}

/// The configured stores of one Migration, written together.
pub enum Store {
    ConfigMap(ConfigMapStore),
    Ssm(SsmStore),
}

impl Store {
    pub async fn read(&self) -> Result<Option<AppliedFlags>, FlagStoreError> {
        match self {
            Store::ConfigMap(s) => s.read().await,
            Store::Ssm(s) => s.read().await,
        }
    }

    pub async fn write(&self, flags: &AppliedFlags) -> Result<(), FlagStoreError> {
        match self {
            Store::ConfigMap(s) => s.write(flags).await,
            Store::Ssm(s) => s.write(flags).await,
        }
    }
}

/// What several stores hold, as one observation: their document when they agree; otherwise
/// the highest generation with values that match nothing, so every store gets rewritten with a
/// generation above all of them.
pub fn combine(docs: &[Option<AppliedFlags>]) -> Option<AppliedFlags> {
    let first = docs.first().copied().flatten();
    if docs.iter().all(|d| *d == first) {
        return first;
    }
    let generation = docs.iter().flatten().map(|d| d.generation).max()?;
    Some(AppliedFlags {
        generation,
        values: FlagValues {
            read_split_percent: -1,
            ..FlagValues::default()
        },
    })
}

/// The document as key/value strings, identical for every store.
pub fn to_entries(flags: &AppliedFlags) -> Vec<(&'static str, String)> {
    let v = &flags.values;
    vec![
        (keys::GENERATION, flags.generation.to_string()),
        (
            keys::WRITE_PRIMARY,
            match v.write_primary {
                WritePrimary::Legacy => "legacy",
                WritePrimary::New => "new",
            }
            .into(),
        ),
        (
            keys::DUAL_WRITE,
            match v.dual_write {
                DualWrite::Off => "off",
                DualWrite::Sync => "sync",
                DualWrite::Async => "async",
            }
            .into(),
        ),
        (keys::SHADOW_READ_PERCENT, v.shadow_read_percent.to_string()),
        (keys::READ_SPLIT_PERCENT, v.read_split_percent.to_string()),
    ]
}

/// Reads a document back. A document someone edited into an unreadable shape counts as its
/// generation only (values reset), so the next write repairs it with a higher generation.
pub fn from_entries(get: impl Fn(&str) -> Option<String>) -> Option<AppliedFlags> {
    let generation: i64 = get(keys::GENERATION)?.trim().parse().ok()?;
    let percent = |k| {
        get(k)
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|p| (0..=100).contains(p))
    };
    let values = (|| {
        Some(FlagValues {
            write_primary: match get(keys::WRITE_PRIMARY)?.trim() {
                "legacy" => WritePrimary::Legacy,
                "new" => WritePrimary::New,
                _ => return None,
            },
            dual_write: match get(keys::DUAL_WRITE)?.trim() {
                "off" => DualWrite::Off,
                "sync" => DualWrite::Sync,
                "async" => DualWrite::Async,
                _ => return None,
            },
            shadow_read_percent: percent(keys::SHADOW_READ_PERCENT)?,
            read_split_percent: percent(keys::READ_SPLIT_PERCENT)?,
        })
    })();
    Some(AppliedFlags {
        generation,
        // An invalid value never matches a desired document, so the operator rewrites it.
        values: values.unwrap_or(FlagValues {
            read_split_percent: -1,
            ..FlagValues::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn documents_round_trip() {
        let flags = AppliedFlags {
            generation: 7,
            values: FlagValues {
                write_primary: WritePrimary::New,
                dual_write: DualWrite::Async,
                shadow_read_percent: 10,
                read_split_percent: 100,
            },
        };
        let map: BTreeMap<_, _> = to_entries(&flags).into_iter().collect();
        assert_eq!(map["write_primary"], "new");
        assert_eq!(from_entries(|k| map.get(k).cloned()), Some(flags));
    }

    #[test]
    fn stores_that_disagree_read_as_a_document_to_rewrite_above_every_generation() {
        let a = AppliedFlags {
            generation: 3,
            values: FlagValues::default(),
        };
        let b = AppliedFlags {
            generation: 5,
            values: FlagValues::default(),
        };
        assert_eq!(combine(&[Some(a), Some(a)]), Some(a));
        assert_eq!(combine(&[None, None]), None);
        let mixed = combine(&[Some(a), Some(b)]).expect("a document");
        assert_eq!(mixed.generation, 5);
        assert_ne!(mixed.values, FlagValues::default());
        assert_eq!(combine(&[None, Some(a)]).map(|d| d.generation), Some(3));
    }

    #[test]
    fn missing_generation_reads_as_no_document_and_bad_values_force_a_rewrite() {
        assert_eq!(from_entries(|_| None), None);
        let read = from_entries(|k| (k == "generation").then(|| "4".to_string()))
            .expect("generation is readable");
        assert_eq!(read.generation, 4);
        assert_ne!(
            read.values,
            FlagValues::default(),
            "an unreadable document never equals a desired one"
        );
    }
}
