//! Normal progression without gates: every phase in order and the flags written at each step.

use super::*;

#[test]
fn a_run_without_gates_walks_every_phase_baking_each_step() {
    let mut sim = simulate(spec());
    // (at, command, phase, step, traffic, flags in the store, their generation, events)
    #[rustfmt::skip]
    let rows: [(i64, Commands, Phase, Option<i32>, i32, FlagValues, i64, &[&str]); 18] = [
        (0,     nothing(), Preflight, None,    0,   fl::preflight(),  1, &["Started"]),
        // The store now holds the preflight flags: proof it is writable.
        (1,     nothing(), Shadow,    None,    0,   fl::shadow(),     2, &["PreflightPassed"]),
        (60,    nothing(), Shadow,    None,    0,   fl::shadow(),     2, &[]),
        (120,   nothing(), Shadow,    None,    0,   fl::shadow(),     2, &[]),   // shadow 2m: one second early
        (121,   nothing(), Split,     Some(1), 10,  fl::split(10),    3, &["Promoted"]),
        (180,   nothing(), Split,     Some(1), 10,  fl::split(10),    3, &[]),   // bake 1m: one second early
        (181,   nothing(), Split,     Some(2), 25,  fl::split(25),    4, &["Promoted"]),
        (240,   nothing(), Split,     Some(2), 25,  fl::split(25),    4, &[]),
        (241,   nothing(), Split,     Some(3), 50,  fl::split(50),    5, &["Promoted"]),
        (300,   nothing(), Split,     Some(3), 50,  fl::split(50),    5, &[]),
        (301,   nothing(), Split,     Some(4), 100, fl::split(100),   6, &["Promoted"]),
        (360,   nothing(), Split,     Some(4), 100, fl::split(100),   6, &[]),
        (361,   nothing(), CutOver,   None,    100, fl::cutover(),    7, &["CutOver"]),
        // No completeAfter: CutOver stays however long it lasts ...
        (421,   nothing(), CutOver,   None,    100, fl::cutover(),    7, &[]),
        (86_400, nothing(), CutOver,  None,    100, fl::cutover(),    7, &[]),
        // ... until promoted by hand.
        (86_401, promote(), Completed, None,   100, fl::completed(),  8, &["Completed"]),
        (86_402, nothing(), Completed, None,   100, fl::completed(),  8, &[]),
        (999_999, nothing(), Completed, None,  100, fl::completed(),  8, &[]),
    ];
    for (secs, commands, phase, step_, traffic, flags, generation, events) in rows {
        let before = sim.store;
        let d = sim.with(
            secs,
            Observations {
                commands: commands.clone(),
                ..Observations::default()
            },
        );
        let row = format!("at +{secs}s");
        // Without appliedGenerationQuery shadow reads compare from the document's writing (+1s).
        let flags = since(flags, 1);
        assert_eq!(sim.phase(), (phase, step_, traffic), "{row}");
        assert_eq!(d.flags, applied(generation, flags), "{row}");
        if before.is_some_and(|b| b.values == flags) {
            assert_eq!(
                before, d.flags,
                "{row}: unchanged flags are not rewritten with a new generation"
            );
        }
        assert_eq!(reasons(&d), events, "{row}");
        assert!(warnings(&d).is_empty(), "{row}: {:?}", d.events);
        let expected_consumed: &[&str] = if commands.promote {
            &[annotations::PROMOTE]
        } else {
            &[]
        };
        assert_eq!(d.consumed, expected_consumed, "{row}");
        assert_eq!(d.create_backfill_job, None, "{row}");
        assert_eq!(d.scale, vec![], "{row}");
    }

    // The history tells the same story, with the traffic after each transition.
    let history: Vec<_> = sim
        .status
        .history
        .iter()
        .map(|t| (t.from, t.to, t.traffic_percent, t.reason.as_str()))
        .collect();
    assert_eq!(
        history,
        [
            (Pending, Preflight, 0, "Started"),
            (Preflight, Shadow, 0, "PreflightPassed"),
            (Shadow, Split, 10, "Promoted"),
            (Split, Split, 25, "Promoted"),
            (Split, Split, 50, "Promoted"),
            (Split, Split, 100, "Promoted"),
            (Split, CutOver, 100, "CutOver"),
            (CutOver, Completed, 100, "Completed"),
        ]
    );
    assert_eq!(sim.status.history.last().unwrap().time, at(86_401));
    assert_eq!(condition(&sim.status, READY), ("True", "Completed"));
    assert_eq!(condition(&sim.status, PROGRESSING), ("False", "Completed"));
    assert_eq!(condition(&sim.status, DEGRADED), ("False", "AsExpected"));
}

#[test]
fn preflight_moves_to_shadow_only_once_the_store_holds_the_preflight_flags() {
    let spec = spec();
    let s = status_in(&spec, Preflight, None);
    // (what the store holds, next phase)
    let rows = [
        (None, Preflight),
        // A previous attempt's safe state is not proof that this attempt's write landed.
        (applied(3, fl::rollback()), Preflight),
        (applied(3, fl::shadow()), Preflight),
        (applied(3, fl::preflight()), Shadow),
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
        // An empty store gets the status's recorded request again, with its generation; a
        // store that holds anything else gets a generation above both.
        let expected = if phase == Shadow {
            applied(GEN + 1, since(fl::shadow(), 5))
        } else {
            Some(Flags {
                generation: store.map_or(GEN, |f| f.generation.max(GEN) + 1),
                values: fl::preflight(),
            })
        };
        assert_eq!(d.flags, expected, "store {store:?}");
    }
}

#[test]
fn cutover_makes_the_new_store_primary_keeping_legacy_in_sync_only_with_reverse_dual_write() {
    for (reverse, flags) in [
        (true, fl::cutover()),
        (false, fl::cutover_without_reverse()),
    ] {
        let spec = MigrationSpec {
            cutover: CutoverSpec {
                reverse_dual_write: reverse,
                ..CutoverSpec::default()
            },
            ..spec()
        };
        let s = status_in(&spec, Split, Some(4));
        let d = step(&spec, &s, &seen(&s), at(60));
        assert_eq!(
            (d.status.phase, d.status.step, d.status.traffic_percent),
            (CutOver, None, 100),
            "reverse {reverse}"
        );
        assert_eq!(d.flags, applied(GEN + 1, flags), "reverse {reverse}");
    }
}

#[test]
fn cutover_completes_after_complete_after_and_not_a_second_earlier() {
    let spec = complete_after(spec(), "5m");
    let s = status_in(&spec, CutOver, None);
    // (at, phase)
    for (secs, phase) in [
        (1, CutOver),
        (299, CutOver),
        (300, Completed),
        (301, Completed),
    ] {
        let d = step(&spec, &s, &seen(&s), at(secs));
        assert_eq!(d.status.phase, phase, "at +{secs}s");
        if phase == Completed {
            assert_eq!(d.flags, applied(GEN + 1, fl::completed()));
            assert_eq!(reasons(&d), ["Completed"]);
            assert_eq!(d.scale, vec![], "legacy is only scaled down when asked to");
        } else {
            assert_eq!(d.flags, s.applied_flags);
            assert!(d.events.is_empty());
        }
    }
}

#[test]
fn completion_scales_legacy_down_only_when_asked_and_named() {
    // (scaleDownLegacy, workloads named, scale)
    for (scale_down, named, scale) in [
        (true, true, vec![(Side::Legacy, 0)]),
        (true, false, vec![]),
        (false, true, vec![]),
    ] {
        let mut spec = complete_after(spec(), "5m");
        spec.cutover.scale_down_legacy = scale_down;
        if named {
            spec = with_workloads(spec);
        }
        let s = status_in(&spec, CutOver, None);
        let d = step(
            &spec,
            &s,
            &Observations {
                legacy: workload(3),
                candidate: workload(3),
                ..seen(&s)
            },
            at(300),
        );
        assert_eq!(d.status.phase, Completed);
        assert_eq!(
            d.scale, scale,
            "scaleDownLegacy {scale_down}, named {named}"
        );
    }
}

#[test]
fn a_completed_migration_holds_legacy_at_zero_until_scale_down_is_turned_off() {
    // A crash (or a refused call) after Completed was recorded, before the scale call, leaves
    // legacy running: the next reconcile scales it down; once at 0 nothing more is asked.
    // (scaleDownLegacy, legacy replicas seen, scale)
    for (scale_down, replicas, scale) in [
        (true, 3, vec![(Side::Legacy, 0)]),
        (true, 0, vec![]),
        (false, 3, vec![]),
    ] {
        let mut spec = with_workloads(complete_after(spec(), "5m"));
        spec.cutover.scale_down_legacy = scale_down;
        let s = status_in(&spec, Completed, None);
        let d = step(
            &spec,
            &s,
            &Observations {
                legacy: workload(replicas),
                candidate: workload(3),
                ..seen(&s)
            },
            at(600),
        );
        assert_eq!(d.status.phase, Completed);
        assert_eq!(
            d.scale, scale,
            "scaleDownLegacy {scale_down}, legacy at {replicas}"
        );
    }
}

#[test]
fn history_keeps_only_the_latest_transitions() {
    let spec = spec();
    let mut s = status_in(&spec, Split, Some(1));
    s.history = (0..HISTORY_LIMIT as i64)
        .map(|i| Transition {
            time: at(i - 100),
            from: Split,
            to: Split,
            traffic_percent: 10,
            reason: format!("Old{i}"),
            message: String::new(),
        })
        .collect();
    let d = step(&spec, &s, &seen(&s), at(60));
    assert_eq!(d.status.history.len(), HISTORY_LIMIT);
    assert_eq!(
        d.status.history.first().unwrap().reason,
        "Old1",
        "the oldest transition is dropped"
    );
    let last = d.status.history.last().unwrap();
    assert_eq!(
        (
            last.from,
            last.to,
            last.traffic_percent,
            last.reason.as_str(),
            &last.time
        ),
        (Split, Split, 25, "Promoted", &at(60))
    );
}

#[test]
fn workloads_that_must_be_ready_hold_promotion_until_they_are() {
    let mut spec = with_workloads(spec());
    spec.candidate.as_mut().unwrap().require_ready = true;
    let s = status_in(&spec, Split, Some(1));
    // (candidate replicas, ready, promoted)
    for (replicas, ready, promoted) in [(3, 1, false), (0, 0, false), (3, 3, true)] {
        let obs = Observations {
            legacy: workload(3),
            candidate: Some(WorkloadState {
                replicas,
                ready_replicas: ready,
            }),
            ..seen(&s)
        };
        let d = step(&spec, &s, &obs, at(60));
        assert_eq!(
            d.status.step,
            Some(if promoted { 2 } else { 1 }),
            "candidate {ready}/{replicas} ready"
        );
    }
}
