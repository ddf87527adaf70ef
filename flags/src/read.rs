//! A document as the operator finds it in a store, good or not.

use crate::document::{FlagError, Flags, keys, parse_generation};

/// What a store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FlagRead {
    /// No flag key at all: nothing was ever written (or someone cleared the store).
    #[default]
    Absent,
    /// A valid document.
    Doc(Flags),
    /// The generation is readable but the values are not (a hand edit, a half-written SSM
    /// document): the next write must carry a generation above it.
    Corrupt { generation: i64, error: FlagError },
    /// Flag keys are present but not even the generation is readable.
    Unreadable { error: FlagError },
}

impl FlagRead {
    /// Classifies the entries of one store (`get` answers a key's value).
    pub fn from_entries(get: impl Fn(&str) -> Option<String>) -> FlagRead {
        if keys::ALL.iter().all(|k| get(k).is_none()) {
            return FlagRead::Absent;
        }
        match Flags::parse(&get) {
            Ok(flags) => FlagRead::Doc(flags),
            Err(error) => match parse_generation(&get) {
                Ok(generation) => FlagRead::Corrupt { generation, error },
                Err(_) => FlagRead::Unreadable { error },
            },
        }
    }

    /// Several stores of one Migration as one reading: their common reading when they agree;
    /// otherwise [`FlagRead::Corrupt`] at the highest generation any of them holds, so every
    /// store gets rewritten above all of them.
    pub fn combine(reads: Vec<FlagRead>) -> FlagRead {
        let mut iter = reads.iter();
        let Some(first) = iter.next() else {
            return FlagRead::Absent;
        };
        if iter.all(|r| r == first) {
            return first.clone();
        }
        let generations: Vec<Option<i64>> = reads.iter().map(FlagRead::generation).collect();
        match generations.iter().flatten().max() {
            Some(&generation) => FlagRead::Corrupt {
                generation,
                error: FlagError::StoresDisagree { generations },
            },
            None => FlagRead::Unreadable {
                error: FlagError::StoresDisagree { generations },
            },
        }
    }

    /// The generation the store holds, when one is readable.
    pub fn generation(&self) -> Option<i64> {
        match self {
            FlagRead::Doc(f) => Some(f.generation),
            FlagRead::Corrupt { generation, .. } => Some(*generation),
            FlagRead::Absent | FlagRead::Unreadable { .. } => None,
        }
    }

    /// The valid document, if any.
    pub fn doc(&self) -> Option<&Flags> {
        match self {
            FlagRead::Doc(f) => Some(f),
            _ => None,
        }
    }
}

/// A valid document, or nothing written yet.
impl From<Option<Flags>> for FlagRead {
    fn from(flags: Option<Flags>) -> Self {
        flags.map_or(FlagRead::Absent, FlagRead::Doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DualWrite, FlagValues, Percent, Side};
    use std::collections::BTreeMap;

    fn read(pairs: &[(&str, &str)]) -> FlagRead {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        FlagRead::from_entries(|k| map.get(k).map(|v| v.to_string()))
    }

    fn flags(generation: i64) -> Flags {
        Flags {
            generation,
            values: FlagValues {
                write_primary: Side::Legacy,
                dual_write: DualWrite::Sync,
                shadow_read_percent: Percent::new(10).expect("percent"),
                read_split_percent: Percent::new(25).expect("percent"),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_store_reads_as_absent_a_document_corrupt_or_unreadable() {
        assert_eq!(read(&[]), FlagRead::Absent);
        assert_eq!(read(&[("owner", "someone-else")]), FlagRead::Absent);
        let doc = flags(4);
        let entries = doc.to_entries();
        let pairs: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(read(&pairs), FlagRead::Doc(doc));

        let corrupt = read(&[("generation", "4"), ("write_primary", "sideways")]);
        assert!(
            matches!(
                &corrupt,
                FlagRead::Corrupt {
                    generation: 4,
                    error: FlagError::InvalidValue {
                        key: "write_primary",
                        ..
                    }
                }
            ),
            "{corrupt:?}"
        );
        let unreadable = read(&[("generation", "four"), ("write_primary", "new")]);
        assert!(
            matches!(unreadable, FlagRead::Unreadable { .. }),
            "{unreadable:?}"
        );
        assert_eq!(unreadable.generation(), None);
    }

    #[test]
    fn stores_that_disagree_read_as_corrupt_above_every_generation() {
        let (a, b) = (FlagRead::Doc(flags(3)), FlagRead::Doc(flags(5)));
        assert_eq!(FlagRead::combine(vec![a.clone(), a.clone()]), a);
        assert_eq!(FlagRead::combine(vec![]), FlagRead::Absent);
        assert_eq!(
            FlagRead::combine(vec![FlagRead::Absent, FlagRead::Absent]),
            FlagRead::Absent
        );
        let mixed = FlagRead::combine(vec![a.clone(), b]);
        assert!(
            matches!(
                mixed,
                FlagRead::Corrupt {
                    generation: 5,
                    error: FlagError::StoresDisagree { .. }
                }
            ),
            "{mixed:?}"
        );
        assert_eq!(
            FlagRead::combine(vec![FlagRead::Absent, a]).generation(),
            Some(3)
        );
    }
}
