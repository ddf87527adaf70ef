//! The migration routing decision: which store serves a read, which must accept a write, what
//! is shadowed or dual-written. A pure function of (flags, user, operation) — the router that
//! executes it does the I/O.

use crate::flags::{DualWrite, Flags, StoreSide};
use crate::ids::UserId;

/// The user's stable bucket in 0..100: FNV-1a of the decimal user id. Fixed forever (changing
/// it would move users between stores mid-migration), identical on every instance.
pub fn bucket(user: UserId) -> u8 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = user
        .0
        .to_string()
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % 100) as u8
}

/// The side a user's reads come from. Users enter the new cohort in bucket order, so raising
/// the percent only ever moves users legacy -> new (and lowering it, back).
pub fn cohort(flags: &Flags, user: UserId) -> StoreSide {
    if bucket(user) < flags.read_split_percent {
        StoreSide::New
    } else {
        StoreSide::Legacy
    }
}

fn other(side: StoreSide) -> StoreSide {
    match side {
        StoreSide::Legacy => StoreSide::New,
        StoreSide::New => StoreSide::Legacy,
    }
}

/// How one read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// The store whose answer the caller gets.
    pub serve: StoreSide,
    /// Also read this store and compare (never returned to the caller).
    pub shadow: Option<StoreSide>,
}

/// `sample` is a uniform draw in 0..100 made by the caller, so this stays deterministic.
pub fn read_plan(flags: &Flags, user: UserId, sample: u8) -> ReadPlan {
    let serve = cohort(flags, user);
    // Shadowing a store that receives no writes would only measure its staleness.
    let both_written = flags.dual_write != DualWrite::Off;
    let shadow = (both_written && sample < flags.shadow_read_percent).then(|| other(serve));
    ReadPlan { serve, shadow }
}

/// How one write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// Must succeed for the call to succeed.
    pub primary: StoreSide,
    /// Also written: in parallel before answering (`Sync`) or after (`Async`). A failed or
    /// skipped secondary write goes to the outbox.
    pub secondary: Option<(StoreSide, DualWrite)>,
}

pub fn write_plan(flags: &Flags) -> WritePlan {
    let primary = flags.write_primary;
    let secondary = match flags.dual_write {
        DualWrite::Off => None,
        mode => Some((other(primary), mode)),
    };
    WritePlan { primary, secondary }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(write_primary: StoreSide, dual_write: DualWrite, shadow: u8, split: u8) -> Flags {
        Flags {
            generation: 1,
            write_primary,
            dual_write,
            shadow_read_percent: shadow,
            read_split_percent: split,
        }
    }

    #[test]
    fn buckets_are_stable_and_spread_over_the_whole_range() {
        assert_eq!(bucket(UserId(42)), bucket(UserId(42)));
        let mut counts = [0u32; 10];
        for user in 0..10_000 {
            counts[usize::from(bucket(UserId(user)) / 10)] += 1;
        }
        for (decile, n) in counts.iter().enumerate() {
            assert!(
                (800..1200).contains(n),
                "decile {decile} has {n} of 10000 users"
            );
        }
    }

    #[test]
    fn a_user_stays_on_one_side_and_only_moves_to_new_as_the_split_grows() {
        for user in 0..2_000 {
            let mut was_new = false;
            for split in [0, 10, 25, 50, 100] {
                let side = cohort(
                    &flags(StoreSide::Legacy, DualWrite::Sync, 0, split),
                    UserId(user),
                );
                assert_eq!(
                    side,
                    cohort(
                        &flags(StoreSide::Legacy, DualWrite::Sync, 0, split),
                        UserId(user)
                    ),
                    "sticky"
                );
                if was_new {
                    assert_eq!(
                        side,
                        StoreSide::New,
                        "user {user} went back to legacy at {split}%"
                    );
                }
                was_new = side == StoreSide::New;
            }
            assert!(was_new, "at 100 % everyone is on the new store");
        }
        assert!((0..1000).all(|u| cohort(
            &flags(StoreSide::Legacy, DualWrite::Off, 0, 0),
            UserId(u)
        ) == StoreSide::Legacy));
    }

    #[test]
    fn the_split_share_matches_the_percent() {
        let on_new = (0..10_000)
            .filter(|u| {
                cohort(
                    &flags(StoreSide::Legacy, DualWrite::Sync, 0, 25),
                    UserId(*u),
                ) == StoreSide::New
            })
            .count();
        assert!(
            (2_300..2_700).contains(&on_new),
            "{on_new} of 10000 users at 25 %"
        );
    }

    #[test]
    fn shadow_reads_sample_the_other_store_only_while_both_are_written() {
        let f = flags(StoreSide::Legacy, DualWrite::Sync, 10, 0);
        let user = (0..)
            .map(UserId)
            .find(|u| cohort(&f, *u) == StoreSide::Legacy)
            .expect("a legacy user");
        assert_eq!(
            read_plan(&f, user, 9),
            ReadPlan {
                serve: StoreSide::Legacy,
                shadow: Some(StoreSide::New)
            }
        );
        assert_eq!(
            read_plan(&f, user, 10),
            ReadPlan {
                serve: StoreSide::Legacy,
                shadow: None
            }
        );
        let off = flags(StoreSide::Legacy, DualWrite::Off, 100, 0);
        assert_eq!(
            read_plan(&off, user, 0).shadow,
            None,
            "no dual write, no shadow"
        );
        let cutover = flags(StoreSide::New, DualWrite::Sync, 100, 100);
        assert_eq!(
            read_plan(&cutover, user, 0),
            ReadPlan {
                serve: StoreSide::New,
                shadow: Some(StoreSide::Legacy)
            }
        );
    }

    #[test]
    fn writes_go_to_the_primary_and_the_other_store_per_dual_write() {
        let cases = [
            (
                StoreSide::Legacy,
                DualWrite::Off,
                WritePlan {
                    primary: StoreSide::Legacy,
                    secondary: None,
                },
            ),
            (
                StoreSide::Legacy,
                DualWrite::Sync,
                WritePlan {
                    primary: StoreSide::Legacy,
                    secondary: Some((StoreSide::New, DualWrite::Sync)),
                },
            ),
            (
                StoreSide::Legacy,
                DualWrite::Async,
                WritePlan {
                    primary: StoreSide::Legacy,
                    secondary: Some((StoreSide::New, DualWrite::Async)),
                },
            ),
            (
                StoreSide::New,
                DualWrite::Sync,
                WritePlan {
                    primary: StoreSide::New,
                    secondary: Some((StoreSide::Legacy, DualWrite::Sync)),
                },
            ),
            (
                StoreSide::New,
                DualWrite::Off,
                WritePlan {
                    primary: StoreSide::New,
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
