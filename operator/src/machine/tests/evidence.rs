//! Evidence: cohorts, polled alerts, rollback from CutOver, back-off, Job inputs.

use super::*;

/// Gates shaped like the shipped ones: drift (any cohort), a comparison of both cohorts, and an
/// absolute check of the new cohort.
fn cohort_gates() -> MigrationSpec {
    let gate = |name: &str, cohorts: Cohorts| Gate {
        name: name.into(),
        query: format!("{name}_query"),
        max: Some(1.0),
        min: None,
        on_no_data: NoDataPolicy::Inconclusive,
        cohorts,
        samples_query: None,
        min_samples: None,
        fail_for: None,
    };
    let mut spec = gated();
    if let Some(a) = spec.analysis.as_mut() {
        a.gates = vec![
            gate("drift", Cohorts::Any),
            gate("error-delta", Cohorts::Both),
            gate("new-errors", Cohorts::New),
        ];
    }
    spec.rollback.on_alerts = vec![];
    spec
}

/// What the gates of `spec` answer at `traffic` percent on the new system when every cohort with
/// users is healthy and a cohort without users has no data (an empty result), as Prometheus
/// answers: the reconciler skips gates whose cohorts have no users (`Cohorts::served_at`).
fn healthy_answers(spec: &MigrationSpec, traffic: i32) -> Vec<GateResult> {
    use crate::analysis::{Outcome, judge};
    let gates = &spec.analysis.as_ref().expect("analysis").gates;
    gates
        .iter()
        .map(|g| {
            if !g.cohorts.served_at(traffic) {
                return GateResult {
                    name: g.name.clone(),
                    verdict: Verdict::Skipped,
                    value: None,
                    min: g.min,
                    max: g.max,
                    message: None,
                    failing_since: None,
                };
            }
            let has_data = match g.cohorts {
                Cohorts::Any => true,
                Cohorts::Legacy => traffic < 100,
                Cohorts::New => traffic > 0,
                Cohorts::Both => traffic > 0 && traffic < 100,
            };
            let outcome = Outcome::Values(if has_data { vec![0.1] } else { vec![] });
            judge(g, &outcome, None)
        })
        .collect()
}

#[test]
fn gates_on_a_cohort_without_users_are_skipped_so_a_healthy_migration_completes() {
    let spec = complete_after(cohort_gates(), "2m");
    let mut sim = simulate(spec.clone());
    let mut secs = 0;
    let mut seen_phases = vec![];
    while sim.status.phase != Completed {
        secs += 15;
        assert!(secs < 10_000, "stalled at {:?}", sim.phase());
        let traffic = sim.status.traffic_percent;
        let analysis = evaluates(sim.status.phase).then(|| healthy_answers(&spec, traffic));
        sim.with(
            secs,
            Observations {
                analysis,
                ..Observations::default()
            },
        );
        assert_ne!(sim.status.phase, Paused, "no pause on a healthy run");
        if seen_phases.last() != Some(&sim.phase()) {
            seen_phases.push(sim.phase());
        }
    }
    assert!(
        seen_phases.contains(&(Split, Some(4), 100)),
        "{seen_phases:?}"
    );
    assert!(
        seen_phases.contains(&(CutOver, None, 100)),
        "{seen_phases:?}"
    );
    let last = sim.status.last_analysis.clone().expect("evaluated");
    let verdict = |name: &str| {
        last.gates
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.verdict)
    };
    assert_eq!(
        verdict("error-delta"),
        Some(Verdict::Skipped),
        "legacy has no users in CutOver"
    );
    assert_eq!(verdict("new-errors"), Some(Verdict::Pass));
    assert_eq!(sim.status.healthy, Some(Health::True));
}

#[test]
fn a_cohort_gate_still_fails_a_regression_while_both_cohorts_have_users() {
    let spec = cohort_gates();
    let s = status_in(&spec, Split, Some(2));
    let mut answers = healthy_answers(&spec, 25);
    answers[1] = crate::analysis::judge(
        &spec.analysis.as_ref().expect("analysis").gates[1],
        &crate::analysis::Outcome::Values(vec![3.0]),
        None,
    );
    let mut sim = Simulation::from(spec, s);
    for secs in [15, 30] {
        sim.with(
            secs,
            Observations {
                analysis: Some(answers.clone()),
                ..Observations::default()
            },
        );
    }
    assert_eq!(sim.status.phase, RollingBack);
    assert_eq!(
        sim.status.last_rollback.as_ref().map(|r| r.reason.as_str()),
        Some("GateFailed")
    );
}

/// onAlerts polled from a Prometheus, no gates.
fn alerts_only() -> MigrationSpec {
    let mut spec = gated();
    if let Some(a) = spec.analysis.as_mut() {
        a.gates = vec![];
    }
    spec
}

#[test]
fn unanswered_alert_polls_hold_the_bake_and_pause_instead_of_promoting() {
    let spec = alerts_only();
    let s = status_in(&spec, Split, Some(1));
    assert_eq!(
        s.passing_since, None,
        "polled alerts need evidence like gates"
    );
    let unanswered = || Observations {
        analysis: Some(vec![]),
        alerts_unanswered: Some("Prometheus unreachable: connection refused".into()),
        ..Observations::default()
    };
    let mut sim = Simulation::from(spec.clone(), s);
    // The bake (1m) is long over by the third poll; inconclusiveLimit is 3.
    for secs in [60, 75] {
        sim.with(secs, unanswered());
        assert_eq!(
            sim.phase(),
            (Split, Some(1), 10),
            "no promotion without evidence at +{secs}s"
        );
    }
    let d = sim.with(90, unanswered());
    assert_eq!(sim.status.phase, Paused);
    assert_eq!(warnings(&d), ["Inconclusive"]);
    let alerts = sim
        .status
        .last_analysis
        .as_ref()
        .and_then(|r| r.alerts.clone())
        .expect("the poll is recorded");
    assert_eq!(alerts.verdict, Verdict::Inconclusive);
    assert!(
        alerts
            .message
            .unwrap_or_default()
            .contains("connection refused")
    );

    // Answers again: resumes, bakes a full minute on answered polls, then promotes.
    let answered = || Observations {
        analysis: Some(vec![]),
        ..Observations::default()
    };
    for secs in [105, 120, 135, 150, 165] {
        sim.with(secs, answered());
        assert_eq!(sim.phase(), (Split, Some(1), 10), "+{secs}s");
    }
    sim.with(180, answered());
    assert_eq!(
        sim.phase(),
        (Split, Some(2), 25),
        "a minute of answered polls"
    );
}

fn no_reverse(rollback_job: Option<crate::crd::RollbackJobSpec>) -> MigrationSpec {
    let spec = gated();
    MigrationSpec {
        cutover: CutoverSpec {
            reverse_dual_write: false,
            rollback_job,
            ..spec.cutover.clone()
        },
        ..spec
    }
}

fn rollback_job() -> Option<crate::crd::RollbackJobSpec> {
    Some(crate::crd::RollbackJobSpec {
        image: "chat-service:1".into(),
        args: vec!["rollback".into()],
        secret_name: None,
    })
}

#[test]
fn automatic_rollback_from_cutover_is_refused_when_nothing_carries_the_writes_back() {
    let spec = no_reverse(None);
    let s = MigrationStatus {
        consecutive_failures: 1,
        cut_over_at: time(0),
        ..status_in(&spec, CutOver, None)
    };
    // (observations, phase after, Degraded reason)
    let rows = [
        (
            Observations {
                analysis: fail(),
                ..seen(&s)
            },
            CutOver,
            "RollbackRefused",
        ),
        (
            Observations {
                firing_alerts: firing(),
                ..seen(&s)
            },
            CutOver,
            "RollbackRefused",
        ),
        (
            Observations {
                commands: abort(),
                ..seen(&s)
            },
            RollingBack,
            "AsExpected",
        ),
    ];
    for (obs, phase, degraded) in rows {
        let d = step(&spec, &s, &obs, at(15));
        assert_eq!(d.status.phase, phase, "{obs:?}");
        assert_eq!(condition(&d.status, DEGRADED).1, degraded);
        if phase == CutOver {
            let message = &d
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == DEGRADED)
                .expect("Degraded")
                .message;
            assert!(
                message.contains("reverseDualWrite is false") && message.contains("rollbackJob"),
                "says why and what to do: {message}"
            );
            assert_eq!(warnings(&d), ["RollbackRefused"]);
            assert_eq!(d.flags, s.applied_flags, "the new system stays primary");
        } else {
            assert_eq!(warnings(&d), ["WritesNotCarriedBack", "Aborted"]);
        }
    }
    // With reverse dual-write the same failure rolls back as usual.
    let spec = gated();
    let s = MigrationStatus {
        consecutive_failures: 1,
        ..status_in(&spec, CutOver, None)
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            analysis: fail(),
            ..seen(&s)
        },
        at(15),
    );
    assert_eq!(d.status.phase, RollingBack);
}

#[test]
fn a_rollback_from_cutover_runs_the_rollback_job_before_it_is_rolled_back() {
    let spec = no_reverse(rollback_job());
    let s = MigrationStatus {
        consecutive_failures: 1,
        cut_over_at: time(0),
        ..status_in(&spec, CutOver, None)
    };
    let mut sim = Simulation::from(spec, s);
    sim.with(
        15,
        Observations {
            analysis: fail(),
            ..Observations::default()
        },
    );
    assert_eq!(sim.status.phase, RollingBack);
    assert_eq!(sim.store.map(|f| f.values), Some(fl::rollback()));
    let job = |state: JobState| Observations {
        rollback_job: Some(state),
        ..Observations::default()
    };
    // (at, job, phase, job to create, Degraded reason)
    #[rustfmt::skip]
    let rows: [(i64, Option<JobState>, Phase, Option<&str>, &str); 5] = [
        (16, None,                                RollingBack, Some("chat-rollback-1"), "AsExpected"),
        (17, Some(JobState::Running),             RollingBack, None,                    "AsExpected"),
        (18, Some(JobState::Failed("exit 1".into())), RollingBack, None,                "RollbackJobFailed"),
        (19, Some(JobState::Missing),             RollingBack, Some("chat-rollback-1"), "AsExpected"),
        (20, Some(JobState::Succeeded),           RolledBack,  None,                    "AsExpected"),
    ];
    for (secs, state, phase, create, degraded) in rows {
        let d = sim.with(secs, state.clone().map_or_else(Observations::default, job));
        assert_eq!(d.status.phase, phase, "{state:?}");
        assert_eq!(d.create_rollback_job.as_deref(), create, "{state:?}");
        assert_eq!(condition(&d.status, DEGRADED).1, degraded, "{state:?}");
        if phase == RollingBack && state.is_some() {
            assert!(
                d.requeue_after >= Duration::from_secs(2),
                "no hot loop on a running Job"
            );
        }
    }
}

#[test]
fn deleting_in_cutover_keeps_the_system_that_holds_every_write_primary() {
    // (reverse dual-write, phase, new stays primary)
    for (reverse, phase, new_primary) in [
        (false, CutOver, true),
        (true, CutOver, false),
        (false, Split, false),
        (false, Completed, true),
        (true, Completed, true),
    ] {
        let spec = MigrationSpec {
            cutover: CutoverSpec {
                reverse_dual_write: reverse,
                ..CutoverSpec::default()
            },
            ..spec()
        };
        let step_ = (phase == Split).then_some(1);
        let f = deletion_flags(&spec, &status_in(&spec, phase, step_));
        assert_eq!(
            f.read_split_percent == Percent::ALL,
            new_primary,
            "reverse {reverse} in {phase}: {f:?}"
        );
        let paused = paused_in(&spec, CutOver, None, PauseReason::Manual);
        if phase == CutOver {
            assert_eq!(deletion_flags(&spec, &paused), f, "paused in CutOver alike");
        }
    }
}

#[test]
fn rolling_back_against_a_failing_flag_store_backs_off() {
    let spec = spec();
    let s = MigrationStatus {
        last_rollback: Some(RollbackRecord {
            time: at(0),
            from: Split,
            reason: "Aborted".into(),
            message: "abort".into(),
        }),
        ..status_in(&spec, RollingBack, None)
    };
    // The store still holds the Split flags: the rollback flags cannot be written.
    let throttled = Observations {
        problems: vec![Problem::new(
            Reason::FlagStoreUnavailable,
            "SSM: ThrottlingException",
        )],
        flags: applied(GEN, fl::split(10)).into(),
        ..seen(&s)
    };
    let d = step(&spec, &s, &throttled, at(0));
    assert_eq!(d.status.phase, RollingBack);
    assert!(
        d.requeue_after >= Duration::from_secs(2),
        "{:?}",
        d.requeue_after
    );
    let later = step(&spec, &d.status, &throttled, at(60));
    assert_eq!(
        later.requeue_after,
        Duration::from_secs(60),
        "grows with the problem's age"
    );
}

#[test]
fn dual_write_start_and_cut_over_are_recorded_and_a_retry_forgets_them() {
    let mut sim = simulate(spec());
    let mut secs = 0;
    while sim.status.phase != CutOver {
        secs += 10;
        sim.at(secs);
        assert!(secs < 5_000);
        if sim.status.phase == Shadow && sim.status.dual_write_started_at.is_none() {
            panic!("Shadow without a recorded dual-write start");
        }
    }
    let shadow_entry = sim
        .status
        .history
        .iter()
        .find(|t| t.to == Shadow)
        .map(|t| t.time);
    assert_eq!(sim.status.dual_write_started_at, shadow_entry);
    assert_eq!(sim.status.cut_over_at, sim.status.phase_started_at);
    sim.with(
        secs + 1,
        Observations {
            commands: abort(),
            ..Observations::default()
        },
    );
    sim.at(secs + 2);
    assert_eq!(sim.status.phase, RolledBack);
    sim.with(
        secs + 3,
        Observations {
            commands: retry(),
            ..Observations::default()
        },
    );
    assert_eq!(
        (sim.status.dual_write_started_at, sim.status.cut_over_at),
        (None, None)
    );
}

#[test]
fn job_names_fit_a_label_value_whatever_the_service_name() {
    let service = "s".repeat(63);
    let spec = MigrationSpec {
        service: service.clone(),
        ..with_validation(spec())
    };
    let s = status_in(&spec, Backfill, None);
    let d = step(&spec, &s, &seen(&s), at(1));
    let name = d.create_backfill_job.expect("a backfill Job");
    assert!(name.len() <= 63 && name.ends_with("-backfill-1"), "{name}");
    let s = MigrationStatus {
        backfill_job: Some(name),
        ..d.status
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            backfill: Some(JobState::Succeeded),
            ..seen(&s)
        },
        at(2),
    );
    let name = d.create_validate_job.expect("a validation Job");
    assert!(name.len() <= 63 && name.ends_with("-validate-1"), "{name}");
}

#[test]
fn shadow_reads_compare_only_what_the_new_store_holds() {
    // With appliedGenerationQuery: nothing until every instance reports the dual-writing
    // document, then the data written since that moment, then everything once backfilled.
    let mut sim = simulate(checking_generation(with_backfill(spec())));
    sim.at(0);
    let entered = sim.at(1);
    assert_eq!(entered.status.phase, Shadow);
    let first = entered.flags.expect("the Shadow document");
    assert_eq!(first.values.dual_write, DualWrite::Sync);
    assert_eq!(first.values.shadow_compare_from, ShadowCompare::Nothing);
    let reported = |generation| Observations {
        reported_generation: Some(generation),
        ..Observations::default()
    };
    // An instance still on the Preflight document: some writes may miss the new store.
    let d = sim.with(20, reported(first.generation - 1));
    assert_eq!(
        d.flags,
        Some(first),
        "unchanged while not every instance dual-writes"
    );
    let d = sim.with(30, reported(first.generation));
    let second = d.flags.expect("a document");
    assert_eq!(sim.status.dual_write_applied_at, time(30));
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(
        second.values,
        fl::compare(first.values, ShadowCompare::From(at(30)))
    );
    // Later reports change nothing.
    let d = sim.with(40, reported(second.generation));
    assert_eq!(d.flags, Some(second));
    assert_eq!(sim.status.dual_write_applied_at, time(30));

    // Without a backfill the new store never holds the older data: Split keeps the scope.
    let spec = checking_generation(spec());
    let s = status_in(&spec, Split, Some(2));
    assert_eq!(
        desired_flags(&spec, &s).map(|f| f.shadow_compare_from),
        Some(ShadowCompare::From(t0()))
    );
    // After a backfill it holds everything; Backfill itself does not yet.
    let spec = with_backfill(spec);
    for (phase, step_, compare) in [
        (Backfill, None, ShadowCompare::From(t0())),
        (Split, Some(1), ShadowCompare::All),
        (CutOver, None, ShadowCompare::All),
    ] {
        let s = status_in(&spec, phase, step_);
        assert_eq!(
            desired_flags(&spec, &s).map(|f| f.shadow_compare_from),
            Some(compare),
            "{phase:?}"
        );
    }
    // A retry starts over: nothing compared until the new attempt's dual write is seen.
    let s = MigrationStatus {
        dual_write_applied_at: time(30),
        ..status_in(&spec, RolledBack, None)
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            commands: retry(),
            ..seen(&s)
        },
        at(100),
    );
    assert_eq!(d.status.dual_write_applied_at, None);
}
