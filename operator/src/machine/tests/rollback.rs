//! Rollback: failing gates, firing alerts and abort, from every phase.

use super::*;

#[test]
fn every_active_phase_rolls_back_on_abort_alert_or_failing_gates_and_settles() {
    let spec = with_backfill(gated());
    for (name, spec, start) in every_active_phase(&spec) {
        let from = start.paused.as_ref().map_or(start.phase, |p| p.from);
        let causes = [
            (
                "abort",
                Observations {
                    commands: abort(),
                    ..Observations::default()
                },
                "Aborted",
            ),
            (
                "alert",
                Observations {
                    firing_alerts: firing(),
                    ..Observations::default()
                },
                "AlertFiring",
            ),
            (
                "gates",
                Observations {
                    analysis: fail(),
                    ..Observations::default()
                },
                "GateFailed",
            ),
        ];
        for (cause, obs, reason) in causes {
            if cause == "gates" && from == Preflight {
                continue; // gates run from Shadow on (see gates_do_not_run_before_shadow)
            }
            let case = format!("{name}, {cause}");
            // One failed evaluation on record: the next one reaches failureLimit.
            let mut sim = Simulation::from(
                spec.clone(),
                MigrationStatus {
                    consecutive_failures: 1,
                    ..start.clone()
                },
            );
            let d = sim.with(30, obs);
            let s = &d.status;
            assert_eq!(
                (s.phase, s.step, s.traffic_percent),
                (RollingBack, None, 0),
                "{case}"
            );
            assert_eq!(
                d.flags,
                applied(GEN + 1, fl::rollback()),
                "{case}: legacy primary, dual-write kept on, 0/0"
            );
            assert_eq!(warnings(&d), [reason], "{case}");
            let consumed: &[&str] = if cause == "abort" {
                &[annotations::ABORT]
            } else {
                &[]
            };
            assert_eq!(d.consumed, consumed, "{case}");
            assert_eq!(s.paused, None, "{case}");
            let record = s.last_rollback.as_ref().expect("a rollback record");
            assert_eq!(
                (record.from, record.reason.as_str(), &record.time),
                (from, reason, &at(30)),
                "{case}"
            );
            assert_eq!(condition(s, READY), ("False", "RollingBack"), "{case}");
            assert_eq!(d.create_backfill_job, None, "{case}");
            assert!(
                d.requeue_after <= SHORT,
                "{case}: rolling back does not wait for a reconcile period"
            );
            let last = s.history.last().unwrap();
            assert_eq!(
                (last.from, last.to, last.traffic_percent),
                (start.phase, RollingBack, 0),
                "{case}"
            );

            // Once the store holds the safe flags: RolledBack, and there it stays.
            let d = sim.at(31);
            assert_eq!(d.status.phase, RolledBack, "{case}");
            assert_eq!(warnings(&d), ["RolledBack"], "{case}");
            assert_eq!(d.flags, applied(GEN + 1, fl::rollback()), "{case}");
            assert_eq!(
                condition(&d.status, READY),
                ("False", "RolledBack"),
                "{case}"
            );
            assert_eq!(
                condition(&d.status, PROGRESSING),
                ("False", "RolledBack"),
                "{case}"
            );
            for secs in [32, 10_000] {
                let d = sim.with(
                    secs,
                    Observations {
                        firing_alerts: firing(),
                        analysis: fail(),
                        ..Observations::default()
                    },
                );
                assert_eq!(
                    (d.status.phase, d.events.len(), d.flags),
                    (RolledBack, 0, applied(GEN + 1, fl::rollback())),
                    "{case}"
                );
                assert_eq!(d.requeue_after, IDLE_REQUEUE, "{case}");
            }
        }
    }
}

#[test]
fn rollback_waits_for_the_safe_flags_in_the_store() {
    let spec = spec();
    let s = MigrationStatus {
        last_rollback: Some(RollbackRecord {
            time: at(0),
            from: Split,
            reason: "Aborted".into(),
            message: "ficus.dev/abort annotation set".into(),
        }),
        ..status_in(&spec, RollingBack, None)
    };
    // (what the store holds, phase after)
    let rows = [
        (None, RollingBack),
        (applied(6, fl::split(25)), RollingBack),
        (applied(6, fl::preflight()), RollingBack),
        (applied(GEN, fl::rollback()), RolledBack),
    ];
    for (store, phase) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                flags: store.into(),
                ..seen(&s)
            },
            at(5),
        );
        assert_eq!(d.status.phase, phase, "store {store:?}");
        assert!(
            d.requeue_after <= SHORT,
            "store {store:?}: {:?}",
            d.requeue_after
        );
        if phase == RolledBack {
            assert!(
                d.events[0]
                    .message
                    .contains("ficus.dev/abort annotation set"),
                "{:?}",
                d.events
            );
        }
    }
}

#[test]
fn rollback_restores_the_legacy_replicas() {
    let spec = with_workloads(spec());
    // Rolling back from CutOver with legacy scaled down to 1 of its original 3.
    let start = MigrationStatus {
        legacy_replicas_before: Some(3),
        ..status_in(&spec, CutOver, None)
    };
    let mut sim = Simulation::from(spec, start);
    sim.legacy = workload(1);
    let d = sim.with(
        10,
        Observations {
            commands: abort(),
            ..Observations::default()
        },
    );
    assert_eq!(d.status.phase, RollingBack);
    assert_eq!(
        d.flags.map(|f| f.values.write_primary),
        Some(Side::Legacy),
        "legacy primary again after cutover"
    );
    assert_eq!(d.scale, [(Side::Legacy, 3)]);

    // The store holds the safe flags but legacy is still short: keep rolling back, keep scaling.
    sim.legacy = workload(1);
    let d = sim.at(11);
    assert_eq!(
        (d.status.phase, d.scale.clone()),
        (RollingBack, vec![(Side::Legacy, 3)])
    );
    // The scale applied: done.
    let d = sim.at(12);
    assert_eq!((d.status.phase, d.scale.clone()), (RolledBack, vec![]));
    // Not scaled again while RolledBack, nor when more replicas than before run.
    sim.legacy = workload(5);
    assert_eq!(sim.at(13).scale, vec![]);
}

#[test]
fn abort_outside_active_phases_is_consumed() {
    let spec = spec();
    // Rolling back, the store not yet safe.
    let rolling_back = MigrationStatus {
        applied_flags: applied(GEN, fl::split(50)),
        ..status_in(&spec, RollingBack, None)
    };
    // (status, warnings)
    let rows: [(MigrationStatus, &[&str]); 3] = [
        (status_in(&spec, Completed, None), &["AbortIgnored"]),
        (status_in(&spec, RolledBack, None), &[]),
        (rolling_back, &[]),
    ];
    for (s, warned) in rows {
        let phase = s.phase;
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: abort(),
                ..seen(&s)
            },
            at(5),
        );
        assert_eq!(d.consumed, [annotations::ABORT], "{phase:?}");
        assert_eq!(warnings(&d), warned, "{phase:?}");
        assert_eq!(d.status.phase, phase, "{phase:?}");
        assert_eq!(d.status.last_rollback, None, "{phase:?}");
    }
    // A completed migration keeps the new system in charge.
    let s = status_in(&spec, Completed, None);
    let d = step(
        &spec,
        &s,
        &Observations {
            commands: abort(),
            ..seen(&s)
        },
        at(5),
    );
    assert_eq!(d.flags, applied(GEN, fl::completed()));
}

#[test]
fn abort_before_the_start_rolls_back() {
    let spec = spec();
    let s = MigrationStatus {
        observed_generation: Some(1),
        ..MigrationStatus::default()
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            commands: abort(),
            ..seen(&s)
        },
        at(0),
    );
    assert_eq!(d.status.phase, RollingBack);
    assert_eq!(d.consumed, [annotations::ABORT]);
    assert_eq!(d.flags, applied(1, fl::rollback()));
}
