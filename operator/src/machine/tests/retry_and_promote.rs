//! Retry after a rollback, and promoting by hand.

use super::*;

#[test]
fn retry_after_a_rollback_starts_a_new_attempt_from_the_beginning() {
    let spec = with_backfill(spec());
    let rolled_back = MigrationStatus {
        attempt: 0,
        consecutive_failures: 2,
        backfill_job: Some("chat-backfill-1".into()),
        last_analysis: Some(AnalysisRun {
            time: at(0),
            gates: eval(Verdict::Fail),
            alerts: None,
        }),
        ..status_in(&spec, RolledBack, None)
    };
    let mut sim = Simulation::from(spec, rolled_back);
    let d = sim.with(
        10,
        Observations {
            commands: retry(),
            ..Observations::default()
        },
    );
    let s = &d.status;
    assert_eq!(
        (s.phase, s.attempt, s.step, s.traffic_percent),
        (Pending, 1, None, 0)
    );
    assert_eq!(
        (
            s.consecutive_failures,
            s.backfill_job.clone(),
            s.last_analysis.clone()
        ),
        (0, None, None)
    );
    assert_eq!(d.consumed, [annotations::RETRY]);
    assert_eq!(reasons(&d), ["Retry"]);
    assert!(d.events[0].message.contains("attempt 2"), "{:?}", d.events);
    assert_eq!(d.flags, None, "Pending leaves the stores alone");
    assert!(d.requeue_after <= SHORT);

    // (at, phase, flags in the store, events)
    #[rustfmt::skip]
    let rows: [(i64, Phase, Option<Flags>, &[&str]); 4] = [
        (11,  Preflight, applied(GEN + 1, fl::preflight()), &["Started"]),
        (12,  Shadow,    applied(GEN + 2, since(fl::shadow(), 12)), &["PreflightPassed"]),
        (131, Shadow,    applied(GEN + 2, since(fl::shadow(), 12)), &[]),
        (132, Backfill,  applied(GEN + 2, since(fl::shadow(), 12)), &["ShadowPassed"]),
    ];
    for (secs, phase, flags, events) in rows {
        let d = sim.at(secs);
        assert_eq!(
            (d.status.phase, d.flags, reasons(&d)),
            (phase, flags, events.to_vec()),
            "+{secs}s"
        );
    }
    let d = sim.with(
        133,
        Observations {
            backfill: Some(JobState::Missing),
            ..Observations::default()
        },
    );
    assert_eq!(
        d.create_backfill_job.as_deref(),
        Some("chat-backfill-2"),
        "a new Job for the new attempt"
    );
}

#[test]
fn retry_anywhere_else_is_consumed_and_ignored() {
    let spec = with_backfill(spec());
    // (status, phase after)
    let rows = [
        (
            MigrationStatus {
                observed_generation: Some(1),
                ..MigrationStatus::default()
            },
            Preflight,
        ),
        (status_in(&spec, Preflight, None), Shadow),
        (status_in(&spec, Shadow, None), Shadow),
        (status_in(&spec, Backfill, None), Backfill),
        (status_in(&spec, Split, Some(2)), Split),
        (status_in(&spec, CutOver, None), CutOver),
        (status_in(&spec, Completed, None), Completed),
        (
            paused_in(&spec, Split, Some(2), PauseReason::Inconclusive),
            Paused,
        ),
        (
            MigrationStatus {
                applied_flags: applied(GEN, fl::split(50)),
                ..status_in(&spec, RollingBack, None)
            },
            RollingBack,
        ),
    ];
    for (s, phase) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: retry(),
                backfill: Some(JobState::Running),
                ..seen(&s)
            },
            at(10),
        );
        assert_eq!(d.consumed, [annotations::RETRY], "{:?}", s.phase);
        assert_eq!(
            (d.status.phase, d.status.attempt),
            (phase, 0),
            "{:?}",
            s.phase
        );
        assert!(!reasons(&d).contains(&"Retry"), "{:?}", s.phase);
    }
}

#[test]
fn promote_skips_the_rest_of_the_bake() {
    let spec = gated();
    // (status, phase, step, traffic, flags, event) — one second into the bake, gates not passing yet.
    let rows = [
        (
            status_in(&spec, Shadow, None),
            Split,
            Some(1),
            10,
            fl::split(10),
            "Promoted",
        ),
        (
            status_in(&with_backfill(spec.clone()), Shadow, None),
            Backfill,
            None,
            0,
            fl::shadow(),
            "ShadowPassed",
        ),
        (
            status_in(&spec, Split, Some(1)),
            Split,
            Some(2),
            25,
            fl::split(25),
            "Promoted",
        ),
        (
            status_in(&spec, Split, Some(3)),
            Split,
            Some(4),
            100,
            fl::split(100),
            "Promoted",
        ),
        (
            status_in(&spec, Split, Some(4)),
            CutOver,
            None,
            100,
            fl::cutover(),
            "CutOver",
        ),
        (
            status_in(&spec, CutOver, None),
            Completed,
            None,
            100,
            fl::completed(),
            "Completed",
        ),
    ];
    for (s, phase, step_, traffic, flags, event) in rows {
        let spec = if phase == Backfill {
            with_backfill(spec.clone())
        } else {
            spec.clone()
        };
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: promote(),
                ..seen(&s)
            },
            at(1),
        );
        let case = format!("{:?} {:?}", s.phase, s.step);
        assert_eq!(
            (d.status.phase, d.status.step, d.status.traffic_percent),
            (phase, step_, traffic),
            "{case}"
        );
        assert_eq!(d.flags.map(|f| f.values), Some(flags), "{case}");
        assert_eq!(reasons(&d), [event], "{case}");
        assert!(
            d.events[0].message.contains("promoted by hand"),
            "{case}: {:?}",
            d.events
        );
        assert_eq!(d.consumed, [annotations::PROMOTE], "{case}");
    }
}

#[test]
fn promote_where_there_is_nothing_to_promote_is_consumed_with_a_warning() {
    let spec = with_backfill(spec());
    // (status, phase after)
    let rows = [
        (
            MigrationStatus {
                observed_generation: Some(1),
                ..MigrationStatus::default()
            },
            Preflight,
        ),
        (
            MigrationStatus {
                applied_flags: None,
                ..status_in(&spec, Preflight, None)
            },
            Preflight,
        ),
        (status_in(&spec, Backfill, None), Backfill),
        (
            paused_in(&spec, Split, Some(2), PauseReason::Inconclusive),
            Paused,
        ),
        (
            MigrationStatus {
                applied_flags: applied(GEN, fl::split(50)),
                ..status_in(&spec, RollingBack, None)
            },
            RollingBack,
        ),
        (status_in(&spec, RolledBack, None), RolledBack),
        (status_in(&spec, Completed, None), Completed),
    ];
    for (s, phase) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: promote(),
                backfill: Some(JobState::Running),
                ..seen(&s)
            },
            at(1),
        );
        let case = format!("{:?}", s.phase);
        assert_eq!(d.status.phase, phase, "{case}");
        assert_eq!(
            d.consumed,
            [annotations::PROMOTE],
            "{case}: consumed so it never fires in a later phase"
        );
        assert_eq!(warnings(&d), ["PromoteIgnored"], "{case}");
        assert_eq!(d.status.traffic_percent, s.traffic_percent, "{case}");
    }
}
