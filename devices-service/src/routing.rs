//! Where a request goes, decided from the flags in force and nothing else (no I/O): the write
//! plan (primary store, shadow copy and how), the side that serves a user's reads, and the
//! `system` label the request is counted under.

use ficus_flags::{DualWrite, FlagValues, Percent, Side, bucket};

use crate::model::OwnerId;

/// The HSE plan's name for a side: `old` (legacy) or `new`, the `system` label of the HTTP
/// metrics the plan's gates query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum System {
    Old,
    New,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Old => "old",
            System::New => "new",
        }
    }
}

impl From<Side> for System {
    fn from(side: Side) -> System {
        match side {
            Side::Legacy => System::Old,
            Side::New => System::New,
        }
    }
}

/// How the shadow copy of a write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// In parallel with the primary write; the request waits for both (a failed copy is queued
    /// in the outbox in the primary's transaction).
    Sync,
    /// After the primary write commits with its outbox entry; the request does not wait.
    Async,
}

/// Where one write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// The store that must accept the write for the request to succeed.
    pub primary: Side,
    /// The other store and how it gets its copy, when dual writes are on.
    pub copy: Option<(Side, CopyMode)>,
}

pub fn write_plan(flags: &FlagValues) -> WritePlan {
    let primary = flags.write_primary;
    let copy = match flags.dual_write {
        DualWrite::Off => None,
        DualWrite::Sync => Some((primary.other(), CopyMode::Sync)),
        DualWrite::Async => Some((primary.other(), CopyMode::Async)),
    };
    WritePlan { primary, copy }
}

/// The side whose store serves `owner`'s reads (and whose `system` their requests count
/// under): the contract's cohort of the user's stable bucket, the same hash chat-service
/// uses, so a user is on the same side in both services.
pub fn user_side(flags: &FlagValues, owner: &OwnerId) -> Side {
    flags.cohort(bucket(owner.as_str()))
}

/// Whether the stores are both being written, so comparing them means something.
pub fn comparing(flags: &FlagValues) -> bool {
    flags.dual_write != DualWrite::Off
}

/// The HSE plan's own parameters, as read beside the document: `traffic-split-percent` and
/// `use-new-system`. The operator writes them equal to the document; a person following the
/// plan's runbook may set them by hand to take users off the new system at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanParameters {
    /// `None`: absent or unreadable.
    pub traffic_split_percent: Option<Percent>,
    pub use_new_system: Option<bool>,
}

impl PlanParameters {
    /// Parses the two values as SSM holds them; an unreadable value is no override (it can only
    /// ever lower the split, so ignoring it never moves users onto the new system).
    pub fn parse(split: Option<&str>, use_new: Option<&str>) -> PlanParameters {
        PlanParameters {
            traffic_split_percent: split
                .and_then(|s| s.trim().parse::<u8>().ok())
                .and_then(Percent::new),
            use_new_system: use_new.and_then(|s| match s.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            }),
        }
    }
}

/// The flags a request follows: the document, with its read split lowered to the plan's
/// `traffic-split-percent` when that is lower, and to 0 when `use-new-system` is `false`. The
/// plan's parameters only ever take users off the new system; raising them above the
/// document does nothing (only the operator moves users forward).
pub fn effective(doc: FlagValues, plan: PlanParameters) -> FlagValues {
    let mut split = doc.read_split_percent;
    if let Some(p) = plan.traffic_split_percent {
        split = split.min(p);
    }
    if plan.use_new_system == Some(false) {
        split = Percent::ZERO;
    }
    FlagValues {
        read_split_percent: split,
        ..doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(primary: Side, dual: DualWrite, split: u8) -> FlagValues {
        FlagValues {
            write_primary: primary,
            dual_write: dual,
            shadow_read_percent: Percent::ZERO,
            read_split_percent: Percent::new(split).expect("percent"),
            ..Default::default()
        }
    }

    #[test]
    fn write_plans() {
        use CopyMode::*;
        use DualWrite as D;
        use Side::*;
        let table = [
            (
                Legacy,
                D::Off,
                WritePlan {
                    primary: Legacy,
                    copy: None,
                },
            ),
            (
                Legacy,
                D::Sync,
                WritePlan {
                    primary: Legacy,
                    copy: Some((New, Sync)),
                },
            ),
            (
                Legacy,
                D::Async,
                WritePlan {
                    primary: Legacy,
                    copy: Some((New, Async)),
                },
            ),
            (
                New,
                D::Sync,
                WritePlan {
                    primary: New,
                    copy: Some((Legacy, Sync)),
                },
            ),
            (
                New,
                D::Async,
                WritePlan {
                    primary: New,
                    copy: Some((Legacy, Async)),
                },
            ),
            (
                New,
                D::Off,
                WritePlan {
                    primary: New,
                    copy: None,
                },
            ),
        ];
        for (primary, dual, want) in table {
            assert_eq!(
                write_plan(&values(primary, dual, 0)),
                want,
                "{primary} {dual}"
            );
        }
    }

    #[test]
    fn users_follow_their_bucket_and_only_move_forward() {
        // Pinned buckets (ficus-flags): "1" → 68, "2" → 1, "42" → 91.
        let owner = |s: &str| OwnerId::try_from(s).expect("owner");
        let table = [
            ("2", 0, Side::Legacy),
            ("2", 2, Side::New),
            ("1", 50, Side::Legacy),
            ("1", 69, Side::New),
            ("42", 91, Side::Legacy),
            ("42", 100, Side::New),
        ];
        for (user, split, want) in table {
            let v = values(Side::Legacy, DualWrite::Sync, split);
            assert_eq!(
                user_side(&v, &owner(user)),
                want,
                "user {user} at {split} %"
            );
        }
    }

    #[test]
    fn the_plans_parameters_only_lower_the_split() {
        let doc = values(Side::Legacy, DualWrite::Sync, 50);
        let p = |split: Option<&str>, on: Option<&str>| PlanParameters::parse(split, on);
        let table = [
            (p(Some("50"), Some("true")), 50),
            (p(None, None), 50),
            (p(Some("0"), Some("true")), 0),
            (p(Some("10"), None), 10),
            (p(Some("100"), Some("true")), 50),
            (p(Some("50"), Some("false")), 0),
            (p(Some("lots"), Some("maybe")), 50),
            (p(Some("150"), None), 50),
        ];
        for (plan, want) in table {
            assert_eq!(
                effective(doc, plan).read_split_percent.get(),
                want,
                "{plan:?}"
            );
            assert_eq!(effective(doc, plan).write_primary, Side::Legacy);
        }
    }

    #[test]
    fn comparison_runs_while_both_stores_are_written() {
        assert!(!comparing(&values(Side::Legacy, DualWrite::Off, 0)));
        assert!(comparing(&values(Side::Legacy, DualWrite::Sync, 0)));
        assert!(comparing(&values(Side::New, DualWrite::Async, 100)));
        assert!(!comparing(&values(Side::New, DualWrite::Off, 100)));
    }
}
