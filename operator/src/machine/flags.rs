//! The flag document each phase asks the services to apply (the contract: the `ficus-flags`
//! crate and `docs/flag-contract.md`).

use crate::crd::{
    DualWrite, FlagValues, MigrationSpec, MigrationStatus, Percent, Phase, ShadowCompare, Side,
};

/// Flags for the phase in `status`; None where the operator leaves the stores alone (Pending).
pub fn desired_flags(spec: &MigrationSpec, status: &MigrationStatus) -> Option<FlagValues> {
    let phase = match (&status.phase, &status.paused) {
        // Paused keeps the paused phase's flags: pausing changes nothing for users.
        (Phase::Paused, Some(p)) => p.from,
        (phase, _) => *phase,
    };
    let dual: DualWrite = spec.shadow.dual_write.into();
    let sample = Percent::saturating(spec.shadow.read_sample_percent.into());
    let compare = shadow_compare(spec, status, phase);
    let legacy = |dual_write, shadow_read_percent, read_split_percent| FlagValues {
        write_primary: Side::Legacy,
        dual_write,
        shadow_read_percent,
        read_split_percent,
        shadow_compare_from: compare,
    };
    let values = match phase {
        Phase::Pending | Phase::Paused => return None,
        Phase::Preflight => legacy(DualWrite::Off, Percent::ZERO, Percent::ZERO),
        Phase::Shadow | Phase::Backfill => legacy(dual, sample, Percent::ZERO),
        Phase::Split => legacy(
            dual,
            sample,
            Percent::saturating(status.traffic_percent.into()),
        ),
        Phase::CutOver => FlagValues {
            write_primary: Side::New,
            dual_write: if spec.cutover.reverse_dual_write {
                dual
            } else {
                DualWrite::Off
            },
            shadow_read_percent: if spec.cutover.reverse_dual_write {
                sample
            } else {
                Percent::ZERO
            },
            read_split_percent: Percent::ALL,
            shadow_compare_from: compare,
        },
        Phase::Completed => FlagValues {
            write_primary: Side::New,
            dual_write: DualWrite::Off,
            shadow_read_percent: Percent::ZERO,
            read_split_percent: Percent::ALL,
            shadow_compare_from: ShadowCompare::All,
        },
        Phase::RollingBack | Phase::RolledBack => rollback_flags(spec),
    };
    // Without shadow reads the scope means nothing: keep `all` so it never changes a document.
    Some(if values.shadow_read_percent == Percent::ZERO {
        FlagValues {
            shadow_compare_from: ShadowCompare::All,
            ..values
        }
    } else {
        values
    })
}

/// Which data shadow reads compare in `phase`: what the store that is not serving holds. After
/// a backfill (the phases after Backfill, when the plan has one) that is everything; before, the
/// data created since every instance dual-writes ([`MigrationStatus::dual_write_applied_at`]),
/// and nothing until that is known. Comparing older data would count un-copied history as
/// drift.
pub fn shadow_compare(
    spec: &MigrationSpec,
    status: &MigrationStatus,
    phase: Phase,
) -> ShadowCompare {
    let backfilled = spec.backfill.is_some()
        && matches!(phase, Phase::Split | Phase::CutOver | Phase::Completed);
    match (backfilled, status.dual_write_applied_at) {
        (true, _) => ShadowCompare::All,
        (false, Some(at)) => ShadowCompare::From(at),
        (false, None) => ShadowCompare::Nothing,
    }
}

/// The last safe state: no user on the new system, legacy primary, dual-write kept on so the
/// new store stays in sync for a retry.
pub fn rollback_flags(spec: &MigrationSpec) -> FlagValues {
    FlagValues {
        write_primary: Side::Legacy,
        dual_write: spec.shadow.dual_write.into(),
        shadow_read_percent: Percent::ZERO,
        read_split_percent: Percent::ZERO,
        shadow_compare_from: ShadowCompare::All,
    }
}

/// What a deleted Migration leaves behind. The system that holds every write stays primary: a
/// completed migration, or one in CutOver whose legacy store missed the writes since cut-over
/// (no reverse dual-write), leaves the new system in charge; anything else returns to the
/// legacy system alone, since no operator will keep the new store in sync any more.
pub fn deletion_flags(spec: &MigrationSpec, status: &MigrationStatus) -> FlagValues {
    let phase = match (&status.phase, &status.paused) {
        (Phase::Paused, Some(p)) => p.from,
        (phase, _) => *phase,
    };
    let new_holds_everything =
        phase == Phase::Completed || (phase == Phase::CutOver && !spec.cutover.reverse_dual_write);
    if new_holds_everything {
        FlagValues {
            write_primary: Side::New,
            dual_write: DualWrite::Off,
            shadow_read_percent: Percent::ZERO,
            read_split_percent: Percent::ALL,
            shadow_compare_from: ShadowCompare::All,
        }
    } else {
        FlagValues {
            write_primary: Side::Legacy,
            dual_write: DualWrite::Off,
            shadow_read_percent: Percent::ZERO,
            read_split_percent: Percent::ZERO,
            shadow_compare_from: ShadowCompare::All,
        }
    }
}
