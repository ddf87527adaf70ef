//! Pause and resume.

use super::*;

#[test]
fn pausing_holds_the_phase_and_the_flags() {
    let spec = with_backfill(gated());
    for (name, _, start) in every_active_phase(&spec)
        .into_iter()
        .filter(|(_, _, s)| s.phase != Paused)
    {
        let spec = paused(spec.clone());
        let d = step(
            &spec,
            &start,
            &Observations {
                backfill: Some(JobState::Running),
                analysis: pass(),
                ..seen(&start)
            },
            at(30),
        );
        let s = &d.status;
        assert_eq!(s.phase, Paused, "{name}");
        assert_eq!(
            s.paused,
            Some(PauseState {
                from: start.phase,
                reason: PauseReason::Manual
            }),
            "{name}"
        );
        assert_eq!(
            (s.step, s.traffic_percent),
            (start.step, start.traffic_percent),
            "{name}"
        );
        assert_eq!(
            d.flags, start.applied_flags,
            "{name}: flags untouched, same generation"
        );
        assert_eq!(reasons(&d), ["Paused"], "{name}");
        assert!(warnings(&d).is_empty(), "{name}");
        assert_eq!(condition(s, PROGRESSING), ("False", "Paused"), "{name}");
        assert_eq!(d.create_backfill_job, None, "{name}");

        // Held however long, whatever the gates say.
        for secs in [31, 3600] {
            let d = step(
                &spec,
                s,
                &Observations {
                    analysis: pass(),
                    ..seen(s)
                },
                at(secs),
            );
            assert_eq!(
                (d.status.phase, d.flags, d.events.len()),
                (Paused, start.applied_flags, 0),
                "{name} +{secs}s"
            );
        }
    }
}

#[test]
fn a_migration_created_paused_changes_nothing_for_users() {
    let mut sim = simulate(paused(spec()));
    for secs in 0..10 {
        sim.at(secs);
        let dual = sim.store.map(|f| f.values.dual_write);
        assert!(
            matches!(dual, None | Some(DualWrite::Off)),
            "+{secs}s: dual-write turned on while paused ({:?})",
            sim.status.phase
        );
    }
    assert_eq!(sim.status.phase, Paused);
    assert_eq!(
        sim.status.paused,
        Some(PauseState {
            from: Preflight,
            reason: PauseReason::Manual
        })
    );

    // Unpaused: preflight again, then shadow.
    sim.spec.paused = false;
    sim.generation = 2;
    assert_eq!(sim.at(20).status.phase, Preflight);
    assert_eq!(sim.at(21).status.phase, Shadow);
}

#[test]
fn resuming_returns_to_the_same_phase_and_step_with_a_fresh_bake() {
    let spec = spec();
    // (paused from, step, traffic, flags)
    let rows = [
        (Shadow, None, 0, fl::shadow()),
        (Split, Some(2), 25, fl::split(25)),
        (Split, Some(4), 100, fl::split(100)),
        (CutOver, None, 100, fl::cutover()),
    ];
    for (from, step_, traffic, flags) in rows {
        let mut sim = Simulation::from(
            spec.clone(),
            paused_in(&spec, from, step_, PauseReason::Manual),
        );
        let d = sim.at(500);
        let s = &d.status;
        assert_eq!(
            (s.phase, s.step, s.traffic_percent, s.paused.clone()),
            (from, step_, traffic, None),
            "{from:?}"
        );
        assert_eq!(d.flags, applied(GEN, flags), "{from:?}");
        assert_eq!(reasons(&d), ["Resumed"], "{from:?}");
        assert_eq!(s.step_started_at, time(500), "{from:?}: a fresh bake");
        if from == Split {
            assert_eq!(
                sim.at(559).status.step,
                step_,
                "{from:?}: bakes again in full"
            );
            let promoted = sim.at(560).status;
            assert_ne!((promoted.phase, promoted.step), (from, step_), "{from:?}");
        }
    }
}

#[test]
fn a_manual_pause_overrides_an_inconclusive_one() {
    let spec = paused(gated());
    let s = paused_in(&spec, Split, Some(2), PauseReason::Inconclusive);
    let d = step(
        &spec,
        &s,
        &Observations {
            analysis: pass(),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!(
        d.status.phase, Paused,
        "passing gates do not resume a manual pause"
    );
    assert_eq!(
        d.status.paused,
        Some(PauseState {
            from: Split,
            reason: PauseReason::Manual
        })
    );
    // Unpausing then resumes.
    let spec = gated();
    let d = step(&spec, &d.status, &seen(&d.status), at(40));
    assert_eq!((d.status.phase, d.status.step), (Split, Some(2)));
}

#[test]
fn a_paused_phase_without_its_record_rolls_back() {
    let spec = spec();
    let s = MigrationStatus {
        paused: None,
        ..paused_in(&spec, Split, Some(2), PauseReason::Manual)
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            flags: applied(GEN, fl::split(25)).into(),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!(d.status.phase, RollingBack);
    assert_eq!(warnings(&d), ["PauseStateLost"]);
}
