//! Spec changes in the middle of a step.

use super::*;

#[test]
fn changed_steps_remap_the_current_step_without_raising_traffic() {
    // Split step 2 (25%) since t0, 50 s into the bake; the spec changes (generation 2) at +50.
    // (new steps, step after, traffic after, bake restarted)
    let rows: [(&[i32], i32, i32, bool); 6] = [
        (&[10, 50, 100], 1, 10, true), // 25% is gone: back to the largest step below it
        (&[10, 20, 25, 100], 3, 25, true), // same traffic, new index
        (&[10, 25, 75, 100], 2, 25, false), // nothing to remap
        (&[5, 25, 100], 2, 25, false),
        (&[25, 50], 1, 25, true),
        (&[10, 20], 2, 20, true), // every step below 25%: the highest one
    ];
    for (steps, step_after, traffic, restarted) in rows {
        let old = spec();
        let spec = MigrationSpec {
            steps: steps.to_vec(),
            ..spec()
        };
        let s = status_in(&old, Split, Some(2));
        let d = step(
            &spec,
            &s,
            &Observations {
                generation: 2,
                ..seen(&s)
            },
            at(50),
        );
        let case = format!("{steps:?}");
        let st = &d.status;
        assert_eq!(
            (st.phase, st.step, st.traffic_percent),
            (Split, Some(step_after), traffic),
            "{case}"
        );
        assert_eq!(st.observed_generation, Some(2), "{case}");
        assert_eq!(
            d.flags.map(|f| f.values),
            Some(fl::split(traffic)),
            "{case}"
        );
        if restarted {
            assert_eq!(reasons(&d), ["SpecChanged"], "{case}");
            assert_eq!(st.step_started_at, time(50), "{case}: bake restarted");
            let last = st.history.last().unwrap();
            assert_eq!(
                (last.reason.as_str(), last.traffic_percent),
                ("SpecChanged", traffic),
                "{case}"
            );
        } else {
            assert!(d.events.is_empty(), "{case}");
            assert_eq!(st.step_started_at, time(0), "{case}: bake continues");
        }
        // The bake (1m) counts from the restart.
        let next = step(
            &spec,
            st,
            &Observations {
                generation: 2,
                ..seen(st)
            },
            at(60),
        );
        let expected = if restarted {
            step_after
        } else {
            step_after + 1
        };
        assert_eq!(
            (next.status.phase, next.status.step),
            (Split, Some(expected)),
            "{case} at +60"
        );
    }
}

#[test]
fn changed_steps_all_above_the_current_traffic_hold_it_as_step_zero_then_bake_into_step_one() {
    let old = spec();
    let spec = MigrationSpec {
        steps: vec![30, 60, 100],
        ..spec()
    };
    let s = status_in(&old, Split, Some(2)); // 25%
    let d = step(
        &spec,
        &s,
        &Observations {
            generation: 2,
            ..seen(&s)
        },
        at(50),
    );
    assert_eq!(
        (d.status.step, d.status.traffic_percent),
        (Some(0), 25),
        "traffic is never raised by a spec edit"
    );
    assert_eq!(reasons(&d), ["SpecChanged"]);
    let st = &d.status;
    let early = step(
        &spec,
        st,
        &Observations {
            generation: 2,
            ..seen(st)
        },
        at(109),
    );
    assert_eq!(early.status.step, Some(0), "the bake restarted at the edit");
    let next = step(
        &spec,
        st,
        &Observations {
            generation: 2,
            ..seen(st)
        },
        at(110),
    );
    assert_eq!(
        (next.status.step, next.status.traffic_percent),
        (Some(1), 30)
    );
}

#[test]
fn changed_steps_while_paused_in_split_remap_too() {
    let old = spec();
    let spec = MigrationSpec {
        steps: vec![10, 50, 100],
        ..paused(spec())
    };
    let s = paused_in(&old, Split, Some(2), PauseReason::Manual);
    let d = step(
        &spec,
        &s,
        &Observations {
            generation: 2,
            ..seen(&s)
        },
        at(50),
    );
    assert_eq!(
        (d.status.phase, d.status.step, d.status.traffic_percent),
        (Paused, Some(1), 10)
    );
    assert_eq!(
        d.flags,
        applied(GEN + 1, fl::split(10)),
        "traffic lowered at once, even while paused"
    );
    assert_eq!(reasons(&d), ["SpecChanged"]);
}

#[test]
fn a_spec_change_outside_split_only_records_the_generation() {
    let old = spec();
    let spec = MigrationSpec {
        steps: vec![50, 100],
        bake_time: go("2m"),
        ..spec()
    };
    for phase in [Preflight, Shadow, CutOver, Completed, RolledBack] {
        let s = status_in(&old, phase, None);
        let d = step(
            &spec,
            &s,
            &Observations {
                generation: 3,
                ..seen(&s)
            },
            at(10),
        );
        assert_eq!(d.status.observed_generation, Some(3), "{phase:?}");
        assert!(!reasons(&d).contains(&"SpecChanged"), "{phase:?}");
    }
    // A longer bakeTime applies to the running bake.
    let s = status_in(&old, Split, Some(2));
    let spec = MigrationSpec {
        bake_time: go("2m"),
        ..old
    };
    assert_eq!(
        step(
            &spec,
            &s,
            &Observations {
                generation: 2,
                ..seen(&s)
            },
            at(60)
        )
        .status
        .step,
        Some(2)
    );
    assert_eq!(
        step(
            &spec,
            &s,
            &Observations {
                generation: 2,
                ..seen(&s)
            },
            at(120)
        )
        .status
        .step,
        Some(3)
    );
}
