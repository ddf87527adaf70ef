//! Problems: what cannot run is Degraded, without hot loops.

use super::*;

#[test]
fn a_problem_blocks_preflight_reports_once_and_backs_off() {
    let spec = with_workloads(spec());
    let mut sim = Simulation::from(spec.clone(), status_in(&spec, Preflight, None));
    let missing = || Observations {
        problems: vec![Problem::new(
            Reason::WorkloadNotFound,
            "Deployment chat-new not found",
        )],
        ..Observations::default()
    };

    // (at, problem, phase, Degraded, events, requeue)
    #[rustfmt::skip]
    let rows: [(i64, bool, Phase, (&str, &str), &[&str], Duration); 6] = [
        (100,  true,  Preflight, ("True", "WorkloadNotFound"),  &["WorkloadNotFound"], Duration::from_secs(2)),
        (101,  true,  Preflight, ("True", "WorkloadNotFound"),  &[],                   Duration::from_secs(2)),
        (110,  true,  Preflight, ("True", "WorkloadNotFound"),  &[],                   Duration::from_secs(10)),
        (160,  true,  Preflight, ("True", "WorkloadNotFound"),  &[],                   Duration::from_secs(60)),
        (1000, true,  Preflight, ("True", "WorkloadNotFound"),  &[],                   Duration::from_secs(120)),
        (1001, false, Shadow,    ("False", "AsExpected"),       &["PreflightPassed"],  Duration::from_millis(200)),
    ];
    for (secs, problem, phase, degraded, events, requeue) in rows {
        let obs = if problem {
            missing()
        } else {
            Observations {
                legacy: workload(3),
                candidate: workload(2),
                ..Observations::default()
            }
        };
        let d = sim.with(secs, obs);
        assert_eq!(d.status.phase, phase, "+{secs}s");
        assert_eq!(condition(&d.status, DEGRADED), degraded, "+{secs}s");
        assert_eq!(reasons(&d), events, "+{secs}s");
        assert_eq!(d.requeue_after, requeue, "+{secs}s");
        if problem {
            assert_eq!(
                condition(&d.status, READY),
                ("False", "WorkloadNotFound"),
                "+{secs}s"
            );
            assert_eq!(warnings(&d), events, "+{secs}s: a problem is a Warning");
            assert_eq!(
                d.status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == DEGRADED)
                    .unwrap()
                    .last_transition_time,
                Time(at(100)),
                "+{secs}s"
            );
        }
    }
    assert_eq!(
        sim.status.legacy_replicas_before,
        Some(3),
        "legacy replicas recorded once the workloads are seen"
    );
}

#[test]
fn a_new_problem_reason_is_reported_again() {
    let spec = spec();
    let s = status_in(&spec, Preflight, None);
    let problem = |reason: Reason| Observations {
        problems: vec![Problem::new(reason, "…")],
        ..seen(&s)
    };
    let d = step(&spec, &s, &problem(Reason::WorkloadNotFound), at(1));
    let d = step(
        &spec,
        &d.status,
        &problem(Reason::FlagStoreForbidden),
        at(2),
    );
    assert_eq!(warnings(&d), ["FlagStoreForbidden"]);
}

#[test]
fn an_unwritable_flag_store_backs_off_instead_of_retrying_hot() {
    // The store never received the preflight flags because the operator may not write it.
    let spec = spec();
    let s = MigrationStatus {
        applied_flags: applied(1, fl::preflight()),
        ..status_in(&spec, Preflight, None)
    };
    let forbidden = Observations {
        flags: FlagRead::Absent,
        problems: vec![Problem::new(
            Reason::FlagStoreForbidden,
            "configmaps is forbidden",
        )],
        ..seen(&s)
    };
    let d = step(&spec, &s, &forbidden, at(0));
    let d = step(&spec, &d.status, &forbidden, at(30));
    assert_eq!(d.status.phase, Preflight);
    assert_eq!(
        d.requeue_after,
        Duration::from_secs(30),
        "backs off like any other problem"
    );
    // Nothing new to record: a reconcile that cannot read the store does not rewrite the status
    // (each rewrite would wake the controller again).
    let again = step(&spec, &d.status, &forbidden, at(60));
    assert_eq!(again.status, d.status);
}

#[test]
fn problems_block_progress_but_never_rollback() {
    let spec = with_workloads(with_backfill(gated()));
    let problem = vec![Problem::new(
        Reason::WorkloadNotFound,
        "Deployment chat-new not found",
    )];
    // (status, observations, phase after)
    let split = MigrationStatus {
        passing_since: time(0),
        ..status_in(&spec, Split, Some(2))
    };
    let shadow = MigrationStatus {
        passing_since: time(0),
        ..status_in(&spec, Shadow, None)
    };
    let backfill = status_in(&spec, Backfill, None);
    let rows = [
        (
            split.clone(),
            Observations {
                analysis: pass(),
                ..seen(&split)
            },
            Split,
            Some(2),
        ),
        (
            shadow.clone(),
            Observations {
                analysis: pass(),
                ..seen(&shadow)
            },
            Shadow,
            None,
        ),
        (
            backfill.clone(),
            Observations {
                backfill: Some(JobState::Succeeded),
                ..seen(&backfill)
            },
            Backfill,
            None,
        ),
    ];
    for (s, obs, phase, step_) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                problems: problem.clone(),
                ..obs
            },
            at(600),
        );
        assert_eq!(
            (d.status.phase, d.status.step),
            (phase, step_),
            "{:?}",
            s.phase
        );
        assert_eq!(d.flags, s.applied_flags, "{:?}", s.phase);
        assert_eq!(condition(&d.status, DEGRADED), ("True", "WorkloadNotFound"));
    }
}

#[test]
fn a_degraded_migration_still_rolls_back() {
    let spec = with_workloads(gated());
    let problem = vec![Problem::new(
        Reason::WorkloadNotFound,
        "Deployment chat-new not found",
    )];
    for (name, obs, reason) in [
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
    ] {
        let mut sim = Simulation::from(spec.clone(), status_in(&spec, Preflight, None));
        sim.with(
            0,
            Observations {
                problems: problem.clone(),
                ..Observations::default()
            },
        );
        let d = sim.with(
            5,
            Observations {
                problems: problem.clone(),
                ..obs
            },
        );
        assert_eq!(d.status.phase, RollingBack, "{name}");
        assert_eq!(
            warnings(&d),
            [reason],
            "{name}: the ongoing problem is not reported again"
        );
        assert!(
            d.requeue_after <= SHORT,
            "{name}: rolling back does not back off"
        );
        assert_eq!(
            sim.with(
                6,
                Observations {
                    problems: problem.clone(),
                    ..Observations::default()
                }
            )
            .status
            .phase,
            RolledBack,
            "{name}"
        );
    }
}

#[test]
fn a_refused_migration_only_says_so_once_and_keeps_its_phase() {
    let spec = gated();
    let s = status_in(&spec, Split, Some(2));
    let refused = [Problem::new(
        Reason::PolicyRefused,
        "analysis.prometheus.url \"http://x\" is not allowed by the operator's policy",
    )];
    let d = refuse(&s, &refused, at(100));
    assert_eq!(condition(&d.status, DEGRADED), ("True", "PolicyRefused"));
    assert_eq!(reasons(&d), ["PolicyRefused"]);
    assert_eq!(
        (d.status.phase, d.status.step, d.status.traffic_percent),
        (Split, Some(2), 25),
        "users stay where they were"
    );
    assert_eq!(
        (d.flags, d.scale.len(), d.create_backfill_job),
        (None, 0, None),
        "nothing to write"
    );
    // Refused again: no second Event; the Degraded condition keeps its start time.
    let again = refuse(&d.status, &refused, at(220));
    assert!(again.events.is_empty());
    assert_eq!(again.status.conditions, d.status.conditions);
}
