//! Gates: a step is promoted only after every gate passed for the whole bake.

use super::*;

#[test]
fn a_step_is_promoted_only_after_every_gate_passed_for_the_whole_bake() {
    // Split step 1 entered at t0; one evaluation every 15 s; bakeTime 1m.
    // (evaluations, when step 2 starts)
    let rows = [
        ("PPPPP", Some(75)), // passing since +15: promoted at +75, not at +60
        ("PPPP", None),
        ("PFPPPPP", Some(105)), // a Fail resets the streak: passing since +45
        ("PIPPPPP", Some(105)), // so does an Inconclusive
        ("PEPPPPP", Some(105)), // and an Error
        ("PPPPPPF", Some(75)),
        ("PPPPF", None), // failing at the moment the bake would end
        ("EEEEEEEEEEEE", None),
    ];
    for (seq, promoted_at) in rows {
        let (_, ds) = evaluate(&gated(), status_in(&gated(), Split, Some(1)), seq);
        let first = ds
            .iter()
            .position(|d| d.status.step == Some(2))
            .map(|i| 15 * (i as i64 + 1));
        assert_eq!(first, promoted_at, "{seq}");
        assert!(
            ds.iter().all(|d| matches!(d.status.phase, Split)),
            "{seq}: never paused nor rolled back"
        );
    }
}

#[test]
fn shadow_and_cutover_bake_on_gates_too() {
    // (phase, spec, evaluations, phase after)
    let rows = [
        (Shadow, gated(), "PPPPPPPPP", Split), // shadow 2m: passing since +15, promoted at +135
        (Shadow, gated(), "PPPPPPPP", Shadow),
        (Shadow, gated(), "PPPPFPPPP", Shadow),
        (CutOver, complete_after(gated(), "1m"), "PPPPP", Completed),
        (CutOver, complete_after(gated(), "1m"), "PPFPP", CutOver),
        (CutOver, gated(), "PPPPPPPPPP", CutOver), // no completeAfter
    ];
    for (phase, spec, seq, after) in rows {
        let (sim, _) = evaluate(&spec, status_in(&spec, phase, None), seq);
        assert_eq!(sim.status.phase, after, "{phase:?} {seq}");
    }
}

#[test]
fn consecutive_failures_roll_back_at_the_failure_limit() {
    // Split step 2; failureLimit 2, inconclusiveLimit 3.
    // (evaluations, phase after, consecutive failures, consecutive inconclusive)
    let rows = [
        ("F", Split, 1, 0),
        ("FF", RollingBack, 0, 0),
        ("FPF", Split, 1, 0), // a Pass in between resets the counter
        ("PFPFPFP", Split, 0, 0),
        ("PFF", RollingBack, 0, 0),
        ("FE", Split, 1, 0), // an Error neither counts nor clears
        ("FEEEEE", Split, 1, 0),
        ("II", Split, 0, 2),
        ("III", Paused, 0, 3),
        ("IIPII", Split, 0, 2), // a Pass in between resets the counter
        ("IIFI", Split, 1, 1),  // a Fail is evidence: resets the inconclusive counter
        ("IIFF", RollingBack, 0, 0),
        ("EEEEEEEEEE", Split, 0, 0),
    ];
    for (seq, phase, failures, inconclusive) in rows {
        let (sim, ds) = evaluate(&gated(), status_in(&gated(), Split, Some(2)), seq);
        let s = &sim.status;
        assert_eq!(s.phase, phase, "{seq}");
        if phase != RollingBack {
            assert_eq!(
                (s.consecutive_failures, s.consecutive_inconclusive),
                (failures, inconclusive),
                "{seq}"
            );
        }
        let rolled_back: Vec<_> = ds
            .iter()
            .filter(|d| d.status.phase == RollingBack)
            .collect();
        if let Some(d) = rolled_back.first() {
            assert_eq!(warnings(d), ["GateFailed"], "{seq}");
            assert!(
                d.events[0]
                    .message
                    .contains("gate error-rate = 0.05 (max 0.01) failed 2 evaluation(s) in a row"),
                "{seq}: {:?}",
                d.events
            );
            assert_eq!(d.status.healthy, Some(Health::False));
            assert_eq!(
                d.status.last_analysis.as_ref().map(|a| a.time),
                Some(at(15 * seq.len() as i64))
            );
        }
    }
}

#[test]
fn a_gate_with_fail_for_rolls_back_only_after_failing_that_long_and_holds_promotion_meanwhile() {
    // The error-rate gate fails for 1m before it counts; failureLimit 2; one evaluation every
    // 15 s from +15; bakeTime 1m.
    let mut spec = gated();
    if let Some(a) = spec.analysis.as_mut() {
        a.gates[0].fail_for = Some(go("1m"));
    }
    // (evaluations, phase after, consecutive failures, promoted to step 2 at)
    let rows = [
        ("FFFF", Split, 0, None),  // failing since +15, 45 s at +60: nothing counts
        ("FFFFF", Split, 1, None), // 60 s at +75: the first failure that counts
        ("FFFFFF", RollingBack, 0, None), // and the second one rolls back
        ("FFFFPFFFFF", Split, 1, None), // the Pass restarts the clock at +90
        ("FFFIFFFF", Split, 0, None), // so does an Inconclusive (no evidence of failing)
        ("FFFFPPPPPP", Split, 0, Some(135)), // the held failure only delayed the bake
    ];
    for (seq, phase, failures, promoted_at) in rows {
        let (sim, ds) = evaluate(&spec, status_in(&spec, Split, Some(1)), seq);
        let promoted = ds
            .iter()
            .position(|d| d.status.step == Some(2))
            .map(|i| 15 * (i as i64 + 1));
        assert_eq!(promoted, promoted_at, "{seq}");
        assert_eq!(sim.status.phase, phase, "{seq}");
        if phase == RollingBack {
            let d = ds.last().unwrap();
            assert_eq!(warnings(d), ["GateFailed"], "{seq}");
            assert!(
                d.events[0].message.contains(&format!(
                    "gate error-rate = 0.05 (max 0.01; failing since {}, failFor 1m) failed 2 evaluation(s) in a row",
                    at(15)
                )),
                "{seq}: {:?}",
                d.events
            );
        } else {
            assert_eq!(sim.status.consecutive_failures, failures, "{seq}");
            if seq.ends_with('F') {
                assert_eq!(
                    sim.status.healthy,
                    Some(Health::False),
                    "{seq}: shown failing"
                );
            }
        }
    }
}

#[test]
fn inconclusive_evidence_pauses_with_flags_unchanged_and_passing_evidence_resumes() {
    let spec = gated();
    let (mut sim, ds) = evaluate(&spec, status_in(&spec, Split, Some(2)), "III");
    let d = ds.last().unwrap();
    assert_eq!(d.status.phase, Paused);
    assert_eq!(
        d.status.paused,
        Some(PauseState {
            from: Split,
            reason: PauseReason::Inconclusive
        })
    );
    assert_eq!(
        (d.status.step, d.status.traffic_percent),
        (Some(2), 25),
        "users stay where they were"
    );
    assert_eq!(
        d.flags,
        applied(GEN, fl::split(25)),
        "flags unchanged, same generation"
    );
    assert_eq!(warnings(d), ["Inconclusive"]);
    assert_eq!(condition(&d.status, PROGRESSING), ("False", "Inconclusive"));
    assert_eq!(
        condition(&d.status, READY).0,
        "True",
        "paused is not broken"
    );
    assert_eq!(d.status.healthy, Some(Health::Unknown));

    // Still no evidence: stays paused, quietly.
    for secs in [60, 75, 90] {
        let d = sim.with(
            secs,
            Observations {
                analysis: inconclusive(),
                ..Observations::default()
            },
        );
        assert_eq!((d.status.phase, d.events.len()), (Paused, 0), "+{secs}s");
    }
    // Errors are not evidence either.
    assert_eq!(
        sim.with(
            100,
            Observations {
                analysis: error(),
                ..Observations::default()
            }
        )
        .status
        .phase,
        Paused
    );
    // Every gate passes: the same step again, baking from now.
    let d = sim.with(
        105,
        Observations {
            analysis: pass(),
            ..Observations::default()
        },
    );
    assert_eq!(sim.phase(), (Split, Some(2), 25));
    assert_eq!(reasons(&d), ["EvidenceReturned"]);
    assert_eq!(d.flags, applied(GEN, fl::split(25)));
    assert_eq!(
        (d.status.step_started_at, d.status.passing_since),
        (time(105), None),
        "a fresh bake"
    );
    assert_eq!(
        (
            d.status.consecutive_failures,
            d.status.consecutive_inconclusive
        ),
        (0, 0)
    );
    assert_eq!(d.status.paused, None);
    // ... which needs the full bake of passing evaluations again.
    for secs in [120, 135, 150, 165] {
        assert_eq!(
            sim.with(
                secs,
                Observations {
                    analysis: pass(),
                    ..Observations::default()
                }
            )
            .status
            .step,
            Some(2),
            "+{secs}s"
        );
    }
    assert_eq!(
        sim.with(
            180,
            Observations {
                analysis: pass(),
                ..Observations::default()
            }
        )
        .status
        .step,
        Some(3)
    );
}

#[test]
fn failures_while_paused_still_count_towards_rollback() {
    let spec = gated();
    // (pause, failures so far, evaluation, phase after)
    let rows = [
        (PauseReason::Inconclusive, 0, fail(), Paused),
        (PauseReason::Inconclusive, 1, fail(), RollingBack),
        (PauseReason::Manual, 1, fail(), RollingBack),
        (PauseReason::Manual, 1, error(), Paused),
        (PauseReason::Manual, 1, pass(), Paused), // a manual pause waits for the human
        (PauseReason::Inconclusive, 1, pass(), Split),
    ];
    for (reason, failures, analysis, phase) in rows {
        let spec = if reason == PauseReason::Manual {
            paused(spec.clone())
        } else {
            spec.clone()
        };
        let s = MigrationStatus {
            consecutive_failures: failures,
            ..paused_in(&spec, Split, Some(3), reason)
        };
        let d = step(
            &spec,
            &s,
            &Observations {
                analysis: analysis.clone(),
                ..seen(&s)
            },
            at(30),
        );
        assert_eq!(
            d.status.phase,
            phase,
            "{reason:?} after {failures} failure(s), then {:?}",
            analysis.unwrap()[0].verdict
        );
        if phase == RollingBack {
            assert_eq!(
                d.status.last_rollback.as_ref().map(|r| r.from),
                Some(Split),
                "rolled back from the paused-from phase"
            );
        }
    }
}

#[test]
fn gate_errors_never_roll_back_promote_or_pause() {
    let spec = gated();
    let s = MigrationStatus {
        consecutive_failures: 1,
        consecutive_inconclusive: 2,
        passing_since: time(0),
        ..status_in(&spec, Split, Some(2))
    };
    for secs in [1, 60, 3600] {
        let d = step(
            &spec,
            &s,
            &Observations {
                analysis: error(),
                ..seen(&s)
            },
            at(secs),
        );
        assert_eq!(
            (d.status.phase, d.status.step),
            (Split, Some(2)),
            "+{secs}s"
        );
        assert_eq!(
            d.status.passing_since, None,
            "an error breaks the passing streak"
        );
        assert_eq!(
            (
                d.status.consecutive_failures,
                d.status.consecutive_inconclusive
            ),
            (1, 2)
        );
        assert_eq!(d.status.healthy, Some(Health::Unknown));
        assert_eq!(d.status.history, s.history, "no transition");
    }
}

#[test]
fn gates_do_not_run_before_shadow() {
    let spec = gated();
    let s = status_in(&spec, Preflight, None);
    let d = step(
        &spec,
        &s,
        &Observations {
            analysis: fail(),
            ..seen(&s)
        },
        at(5),
    );
    assert_eq!(d.status.phase, Shadow);
    assert_eq!(
        (
            d.status.consecutive_failures,
            d.status.last_analysis.clone()
        ),
        (0, None)
    );
}

#[test]
fn without_automatic_rollback_only_an_abort_rolls_back() {
    let spec = MigrationSpec {
        rollback: RollbackSpec {
            automatic: false,
            on_alerts: vec![ALERT.into()],
            alert_labels: None,
        },
        ..gated()
    };
    let s = MigrationStatus {
        consecutive_failures: 5,
        ..status_in(&spec, Split, Some(2))
    };
    // (observations, phase after)
    let rows = [
        (
            Observations {
                analysis: fail(),
                ..seen(&s)
            },
            Split,
        ),
        (
            Observations {
                firing_alerts: firing(),
                ..seen(&s)
            },
            Split,
        ),
        (
            Observations {
                analysis: fail(),
                firing_alerts: firing(),
                ..seen(&s)
            },
            Split,
        ),
        (
            Observations {
                commands: abort(),
                analysis: fail(),
                ..seen(&s)
            },
            RollingBack,
        ),
    ];
    for (obs, phase) in rows {
        let d = step(&spec, &s, &obs, at(120));
        assert_eq!(d.status.phase, phase, "{obs:?}");
    }
    // A failed backfill waits for a human too.
    let spec = with_backfill(spec);
    let s = status_in(&spec, Backfill, None);
    let d = step(
        &spec,
        &s,
        &Observations {
            backfill: Some(JobState::Failed("OOMKilled".into())),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!(
        (d.status.phase, d.create_backfill_job.clone()),
        (Backfill, None)
    );
}

#[test]
fn no_evidence_during_the_warmup_of_a_step_does_not_pause() {
    let mut spec = gated();
    if let Some(a) = spec.analysis.as_mut() {
        a.warmup = Some(go("1m"));
    }
    // Step 2 entered at t0; evaluations at +15 .. +90, none with evidence; inconclusiveLimit 3.
    let (_, ds) = evaluate(&spec, status_in(&spec, Split, Some(2)), "IIIIII");
    let phases: Vec<Phase> = ds.iter().map(|d| d.status.phase).collect();
    assert_eq!(
        phases,
        [Split, Split, Split, Split, Split, Paused],
        "+15, +30, +45 are within the minute's warm-up; +60, +75, +90 count"
    );
    assert!(
        ds.iter().all(|d| d.status.passing_since.is_none()),
        "no evidence never counts as passing, warm-up or not"
    );
    // Without a warm-up the same evidence pauses at the third evaluation.
    let (_, ds) = evaluate(&gated(), status_in(&gated(), Split, Some(2)), "III");
    assert_eq!(ds.last().map(|d| d.status.phase), Some(Paused));
}
