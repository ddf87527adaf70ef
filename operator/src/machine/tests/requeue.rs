//! When the next reconcile is due.

use super::*;

#[test]
fn requeue_waits_for_the_rest_of_the_bake() {
    // (spec, status, at, requeue)
    let rows = [
        (
            spec(),
            status_in(&spec(), Shadow, None),
            30,
            Duration::from_secs(90),
        ),
        (
            spec(),
            status_in(&spec(), Split, Some(1)),
            20,
            Duration::from_secs(40),
        ),
        (
            spec(),
            status_in(&spec(), Split, Some(3)),
            59,
            Duration::from_secs(1),
        ),
        (
            complete_after(spec(), "10m"),
            status_in(&spec(), CutOver, None),
            400,
            Duration::from_secs(200),
        ),
        (
            complete_after(spec(), "1h"),
            status_in(&spec(), CutOver, None),
            0,
            IDLE_REQUEUE,
        ),
        (spec(), status_in(&spec(), CutOver, None), 100, IDLE_REQUEUE),
        (
            spec(),
            status_in(&spec(), Completed, None),
            100,
            IDLE_REQUEUE,
        ),
        (
            spec(),
            status_in(&spec(), RolledBack, None),
            100,
            IDLE_REQUEUE,
        ),
        (
            paused(spec()),
            paused_in(&spec(), Split, Some(2), PauseReason::Manual),
            100,
            IDLE_REQUEUE,
        ),
    ];
    for (spec, s, secs, requeue) in rows {
        let d = step(&spec, &s, &seen(&s), at(secs));
        assert_eq!(d.status.phase, s.phase, "{:?} +{secs}s", s.phase);
        assert_eq!(d.requeue_after, requeue, "{:?} +{secs}s", s.phase);
    }
}

#[test]
fn requeue_is_short_right_after_every_transition() {
    let spec = with_backfill(spec());
    // (name, spec, status, observations, phase after)
    let split = status_in(&spec, Split, Some(2));
    let shadow = status_in(&spec, Shadow, None);
    let backfill = status_in(&spec, Backfill, None);
    let cutover = status_in(&spec, CutOver, None);
    let paused_split = paused_in(&spec, Split, Some(2), PauseReason::Manual);
    let pending = MigrationStatus {
        observed_generation: Some(1),
        ..MigrationStatus::default()
    };
    let rows = [
        (
            "start",
            spec.clone(),
            pending.clone(),
            seen(&pending),
            Preflight,
        ),
        (
            "preflight passed",
            spec.clone(),
            status_in(&spec, Preflight, None),
            seen(&status_in(&spec, Preflight, None)),
            Shadow,
        ),
        (
            "shadow passed",
            spec.clone(),
            shadow.clone(),
            seen(&shadow),
            Backfill,
        ),
        (
            "backfill done",
            spec.clone(),
            backfill.clone(),
            Observations {
                backfill: Some(JobState::Succeeded),
                ..seen(&backfill)
            },
            Split,
        ),
        ("step", spec.clone(), split.clone(), seen(&split), Split),
        (
            "cutover",
            spec.clone(),
            status_in(&spec, Split, Some(4)),
            seen(&status_in(&spec, Split, Some(4))),
            CutOver,
        ),
        (
            "paused",
            paused(spec.clone()),
            split.clone(),
            seen(&split),
            Paused,
        ),
        (
            "resumed",
            spec.clone(),
            paused_split.clone(),
            seen(&paused_split),
            Split,
        ),
        (
            "abort",
            spec.clone(),
            split.clone(),
            Observations {
                commands: abort(),
                ..seen(&split)
            },
            RollingBack,
        ),
        (
            "retry",
            spec.clone(),
            status_in(&spec, RolledBack, None),
            Observations {
                commands: retry(),
                ..seen(&status_in(&spec, RolledBack, None))
            },
            Pending,
        ),
        (
            "complete",
            spec.clone(),
            cutover.clone(),
            Observations {
                commands: promote(),
                ..seen(&cutover)
            },
            Completed,
        ),
    ];
    for (name, spec, s, obs, phase) in rows {
        let d = step(&spec, &s, &obs, at(600));
        assert_eq!(d.status.phase, phase, "{name}");
        assert!(
            d.requeue_after <= SHORT,
            "{name}: requeue {:?} after {:?} -> {phase:?}",
            d.requeue_after,
            s.phase
        );
    }
}

#[test]
fn with_an_applied_generation_query_a_step_is_promoted_only_once_every_instance_runs_its_flags() {
    let spec = checking_generation(spec());
    // Split step 1 baked long ago (bakeTime 1m), flags generation GEN written.
    let s = status_in(&spec, Split, Some(1));
    // (generation reported now, generation recorded before, promoted?)
    #[rustfmt::skip]
    let rows: [(Option<i64>, Option<i64>, bool); 7] = [
        (None,          None,          false), // no instance answered yet: nothing confirmed
        (Some(GEN - 1), None,          false), // an instance still runs the previous flags
        (Some(GEN - 1), Some(GEN),     false), // the fresh answer wins over the recorded one
        (Some(GEN),     None,          true),
        (Some(GEN + 1), None,          true),  // ahead (another writer) still includes ours
        (None,          Some(GEN),     true),  // no fresh answer: the recorded one stands
        (None,          Some(GEN - 1), false),
    ];
    for (reported, recorded, promoted) in rows {
        let row = format!("reported {reported:?}, recorded {recorded:?}");
        let s = MigrationStatus {
            reported_generation: recorded,
            ..s.clone()
        };
        let d = step(
            &spec,
            &s,
            &Observations {
                reported_generation: reported,
                ..seen(&s)
            },
            at(600),
        );
        let expected = if promoted { Some(2) } else { Some(1) };
        assert_eq!(d.status.step, expected, "{row}");
        assert_eq!(
            d.status.reported_generation,
            reported.or(recorded),
            "{row}: the last answer is kept in status"
        );
        if !promoted && d.status.reported_generation.is_some() {
            let progressing = d
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == "Progressing")
                .expect("Progressing");
            assert!(
                progressing.message.contains(&format!(
                    "waiting for every instance to apply flag generation {GEN}"
                )),
                "{row}: {}",
                progressing.message
            );
        }
    }

    // Without the query the reported generation plays no part.
    let plain = super::tests::spec();
    let s = status_in(&plain, Split, Some(1));
    let d = step(
        &plain,
        &s,
        &Observations {
            reported_generation: Some(1),
            ..seen(&s)
        },
        at(600),
    );
    assert_eq!(d.status.step, Some(2));
}

#[test]
fn the_applied_generation_query_alone_schedules_analysis() {
    let spec = checking_generation(spec());
    assert!(spec.analysis.as_ref().is_some_and(|a| a.gates.is_empty()));
    let s = status_in(&spec, Split, Some(1));
    assert_eq!(next_analysis_in(&spec, &s, at(0)), Some(Duration::ZERO));
    assert_eq!(
        next_analysis_in(&super::tests::spec(), &s, at(0)),
        None,
        "no analysis section"
    );
}
