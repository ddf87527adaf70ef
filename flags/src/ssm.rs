//! The document in AWS SSM Parameter Store: one parameter per key under a prefix
//! (`/hse/chat/generation`, `/hse/chat/write_primary`, ...), plus the migration plan's own two
//! names, which restate the split for tools that read only them.

use crate::document::{Flags, keys};

/// `<prefix>traffic-split-percent`: the same value as `read_split_percent`.
pub const TRAFFIC_SPLIT_PERCENT: &str = "traffic-split-percent";
/// `<prefix>use-new-system`: `true` while any user is on the new system.
pub const USE_NEW_SYSTEM: &str = "use-new-system";

/// A prefix that is not a parameter path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "SSM flag prefix {0:?} must be a parameter path that starts and ends with '/', with segments of A-Z a-z 0-9 _ . - (e.g. /hse/chat/)"
)]
pub struct PrefixError(pub String);

/// Checks `prefix`: a parameter path that starts and ends with `/`, segments of
/// `A-Za-z0-9_.-` (e.g. `/hse/chat/`). The operator's CRD enforces the same rule.
pub fn check_prefix(prefix: &str) -> Result<(), PrefixError> {
    let valid = prefix.len() >= 3
        && prefix.starts_with('/')
        && prefix.ends_with('/')
        && prefix[1..prefix.len() - 1].split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        });
    if valid {
        Ok(())
    } else {
        Err(PrefixError(prefix.to_owned()))
    }
}

/// Every parameter the operator writes, `generation` last: a reader that sees the new
/// generation sees the values that go with it.
pub fn parameters(flags: &Flags) -> Vec<(&'static str, String)> {
    let split = flags.values.read_split_percent;
    let mut entries: Vec<(&'static str, String)> = flags
        .to_entries()
        .into_iter()
        .filter(|(k, _)| *k != keys::GENERATION)
        .collect();
    entries.push((TRAFFIC_SPLIT_PERCENT, split.to_string()));
    entries.push((USE_NEW_SYSTEM, (split.get() > 0).to_string()));
    entries.push((keys::GENERATION, flags.generation.to_string()));
    entries
}

/// The full names of the document's six parameters (what a service reads).
pub fn document_names(prefix: &str) -> Vec<String> {
    keys::ALL.iter().map(|k| format!("{prefix}{k}")).collect()
}

/// The full names of every parameter the operator writes.
pub fn all_names(prefix: &str) -> Vec<String> {
    parameters(&Flags::default())
        .iter()
        .map(|(k, _)| format!("{prefix}{k}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DualWrite, FlagValues, Percent, Side};
    use std::collections::BTreeMap;

    #[test]
    fn the_plans_parameters_mirror_the_split_and_generation_comes_last() {
        let flags = Flags {
            generation: 4,
            values: FlagValues {
                write_primary: Side::Legacy,
                dual_write: DualWrite::Sync,
                shadow_read_percent: Percent::new(10).expect("percent"),
                read_split_percent: Percent::new(25).expect("percent"),
                ..Default::default()
            },
        };
        let p = parameters(&flags);
        assert_eq!(p.last(), Some(&("generation", "4".to_string())));
        let map: BTreeMap<_, _> = p.into_iter().collect();
        assert_eq!(map[TRAFFIC_SPLIT_PERCENT], "25");
        assert_eq!(map[USE_NEW_SYSTEM], "true");
        let safe = Flags {
            generation: 5,
            values: FlagValues {
                read_split_percent: Percent::ZERO,
                ..flags.values
            },
        };
        assert_eq!(
            parameters(&safe).into_iter().collect::<BTreeMap<_, _>>()[USE_NEW_SYSTEM],
            "false"
        );
        assert_eq!(
            all_names("/hse/chat/").len(),
            8,
            "six keys and two derived names"
        );
        assert_eq!(document_names("/p/")[0], "/p/generation");
    }

    #[test]
    fn prefixes_are_parameter_paths() {
        for ok in ["/hse/", "/hse/chat/", "/a.b/c_d-1/"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "//",
            "hse/",
            "/hse",
            "/hse//chat/",
            "/h se/",
            "/hse/*/",
        ] {
            let err = check_prefix(bad).expect_err(bad);
            assert!(err.to_string().contains("/hse/chat/"), "{err}");
        }
    }
}
