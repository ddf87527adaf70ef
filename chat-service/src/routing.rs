//! The migration routing decision: which store serves a read, which must accept a write, what
//! is shadowed or dual-written. A pure function of (flags, user, operation) — the router that
//! executes it does the I/O.

use crate::flags::{DualWrite, Flags, ShadowCompare, Side};
use crate::ids::UserId;

/// The user's stable bucket in 0..100 (the contract's [`ficus_flags::bucket`] of the decimal
/// user id): identical on every instance and in every service of the migration.
pub fn bucket(user: UserId) -> u8 {
    ficus_flags::bucket(&user.0.to_string())
}

/// The side a user's reads come from. Users enter the new cohort in bucket order, so raising
/// the percent only ever moves users legacy -> new (and lowering it, back).
pub fn cohort(flags: &Flags, user: UserId) -> Side {
    flags.values.cohort(bucket(user))
}

/// How one read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// The store whose answer the caller gets.
    pub serve: Side,
    /// Also read this store and compare (never returned to the caller).
    pub shadow: Option<Side>,
}

/// `sample` is a uniform draw in 0..100 made by the caller, so this stays deterministic.
pub fn read_plan(flags: &Flags, user: UserId, sample: u8) -> ReadPlan {
    let serve = cohort(flags, user);
    // Shadowing a store that receives no writes would only measure its staleness.
    let both_written = flags.values.dual_write != DualWrite::Off;
    // Nothing to compare yet (not every instance is known to dual-write): no extra read.
    let comparable = flags.values.shadow_compare_from != ShadowCompare::Nothing;
    let shadow = (both_written && comparable && sample < flags.values.shadow_read_percent.get())
        .then(|| serve.other());
    ReadPlan { serve, shadow }
}

/// How one write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// Must succeed for the call to succeed.
    pub primary: Side,
    /// Also written: in parallel before answering (`Sync`) or after (`Async`). A failed or
    /// skipped secondary write goes to the outbox.
    pub secondary: Option<(Side, DualWrite)>,
}

pub fn write_plan(flags: &Flags) -> WritePlan {
    let primary = flags.values.write_primary;
    let secondary = match flags.values.dual_write {
        DualWrite::Off => None,
        mode => Some((primary.other(), mode)),
    };
    WritePlan { primary, secondary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{FlagValues, Percent};

    fn flags(write_primary: Side, dual_write: DualWrite, shadow: u8, split: u8) -> Flags {
        Flags {
            generation: 1,
            values: FlagValues {
                write_primary,
                dual_write,
                shadow_read_percent: Percent::new(shadow).expect("percent"),
                read_split_percent: Percent::new(split).expect("percent"),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_user_stays_on_one_side_and_only_moves_to_new_as_the_split_grows() {
        for user in 0..2_000 {
            let mut was_new = false;
            for split in [0, 10, 25, 50, 100] {
                let side = cohort(
                    &flags(Side::Legacy, DualWrite::Sync, 0, split),
                    UserId(user),
                );
                assert_eq!(
                    side,
                    cohort(
                        &flags(Side::Legacy, DualWrite::Sync, 0, split),
                        UserId(user)
                    ),
                    "sticky"
                );
                if was_new {
                    assert_eq!(
                        side,
                        Side::New,
                        "user {user} went back to legacy at {split}%"
                    );
                }
                was_new = side == Side::New;
            }
            assert!(was_new, "at 100 % everyone is on the new store");
        }
        assert!((0..1000).all(
            |u| cohort(&flags(Side::Legacy, DualWrite::Off, 0, 0), UserId(u)) == Side::Legacy
        ));
    }

    #[test]
    fn the_split_share_matches_the_percent() {
        let on_new = (0..10_000)
            .filter(|u| {
                cohort(&flags(Side::Legacy, DualWrite::Sync, 0, 25), UserId(*u)) == Side::New
            })
            .count();
        assert!(
            (2_300..2_700).contains(&on_new),
            "{on_new} of 10000 users at 25 %"
        );
    }

    #[test]
    fn shadow_reads_sample_the_other_store_only_while_both_are_written() {
        let f = flags(Side::Legacy, DualWrite::Sync, 10, 0);
        let user = (0..)
            .map(UserId)
            .find(|u| cohort(&f, *u) == Side::Legacy)
            .expect("a legacy user");
        assert_eq!(
            read_plan(&f, user, 9),
            ReadPlan {
                serve: Side::Legacy,
                shadow: Some(Side::New)
            }
        );
        assert_eq!(
            read_plan(&f, user, 10),
            ReadPlan {
                serve: Side::Legacy,
                shadow: None
            }
        );
        let off = flags(Side::Legacy, DualWrite::Off, 100, 0);
        assert_eq!(
            read_plan(&off, user, 0).shadow,
            None,
            "no dual write, no shadow"
        );
        let cutover = flags(Side::New, DualWrite::Sync, 100, 100);
        assert_eq!(
            read_plan(&cutover, user, 0),
            ReadPlan {
                serve: Side::New,
                shadow: Some(Side::Legacy)
            }
        );
        let mut unknown = flags(Side::Legacy, DualWrite::Sync, 100, 0);
        unknown.values.shadow_compare_from = ShadowCompare::Nothing;
        assert_eq!(
            read_plan(&unknown, user, 0).shadow,
            None,
            "nothing to compare yet, no shadow read"
        );
    }

    #[test]
    fn writes_go_to_the_primary_and_the_other_store_per_dual_write() {
        let cases = [
            (
                Side::Legacy,
                DualWrite::Off,
                WritePlan {
                    primary: Side::Legacy,
                    secondary: None,
                },
            ),
            (
                Side::Legacy,
                DualWrite::Sync,
                WritePlan {
                    primary: Side::Legacy,
                    secondary: Some((Side::New, DualWrite::Sync)),
                },
            ),
            (
                Side::Legacy,
                DualWrite::Async,
                WritePlan {
                    primary: Side::Legacy,
                    secondary: Some((Side::New, DualWrite::Async)),
                },
            ),
            (
                Side::New,
                DualWrite::Sync,
                WritePlan {
                    primary: Side::New,
                    secondary: Some((Side::Legacy, DualWrite::Sync)),
                },
            ),
            (
                Side::New,
                DualWrite::Off,
                WritePlan {
                    primary: Side::New,
                    secondary: None,
                },
            ),
        ];
        for (primary, dual, plan) in cases {
            assert_eq!(
                write_plan(&flags(primary, dual, 0, 0)),
                plan,
                "{primary:?} {dual:?}"
            );
        }
    }
}
