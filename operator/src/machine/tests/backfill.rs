//! Backfill: the Job, its outcome and the comparison scope it opens.

use super::*;

#[test]
fn backfill_runs_its_job_between_shadow_and_the_first_step() {
    let mut sim = Simulation::from(
        with_backfill(spec()),
        status_in(&with_backfill(spec()), Shadow, None),
    );
    let job = |state: JobState| Observations {
        backfill: Some(state),
        ..Observations::default()
    };

    // Shadow baked: Backfill, flags unchanged (still legacy primary, dual-write, no users).
    let d = sim.at(120);
    assert_eq!(sim.phase(), (Backfill, None, 0));
    assert_eq!(reasons(&d), ["ShadowPassed"]);
    assert_eq!(d.flags, applied(GEN, fl::shadow()));

    // (at, job, phase, job to create, events)
    #[rustfmt::skip]
    let rows: [(i64, JobState, Phase, Option<&str>, &[&str]); 5] = [
        (121,   JobState::Missing,   Backfill, Some("chat-backfill-1"), &[]),
        (122,   JobState::Running,   Backfill, None,                    &[]),
        (5_000, JobState::Running,   Backfill, None,                    &[]),   // no bake: waits as long as it runs
        (5_001, JobState::Succeeded, Split,    None,                    &["Promoted"]),
        (5_002, JobState::Succeeded, Split,    None,                    &[]),
    ];
    for (secs, state, phase, create, events) in rows {
        let d = sim.with(secs, job(state.clone()));
        assert_eq!(d.status.phase, phase, "{state:?} at +{secs}s");
        assert_eq!(
            d.create_backfill_job.as_deref(),
            create,
            "{state:?} at +{secs}s"
        );
        assert_eq!(reasons(&d), events, "{state:?} at +{secs}s");
    }
    assert_eq!(sim.status.backfill_job.as_deref(), Some("chat-backfill-1"));
    assert_eq!(sim.phase(), (Split, Some(1), 10));
    assert_eq!(
        sim.store,
        applied(GEN + 1, fl::compare(fl::split(10), ShadowCompare::All)),
        "after the backfill shadow reads compare everything"
    );
    assert_eq!(
        sim.status.step_started_at,
        time(5_001),
        "the first step bakes from its own start"
    );
}

#[test]
fn a_failed_backfill_rolls_back() {
    let spec = with_backfill(spec());
    let mut s = status_in(&spec, Backfill, None);
    s.backfill_job = Some("chat-backfill-1".into());
    let d = step(
        &spec,
        &s,
        &Observations {
            backfill: Some(JobState::Failed("drift 3.2% > 0.1%".into())),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!((d.status.phase, d.status.traffic_percent), (RollingBack, 0));
    assert_eq!(warnings(&d), ["BackfillFailed"]);
    assert!(d.events[0].message.contains("drift 3.2%"), "{:?}", d.events);
    assert_eq!(
        d.status
            .last_rollback
            .as_ref()
            .map(|r| (r.from, r.reason.as_str())),
        Some((Backfill, "BackfillFailed"))
    );
    assert_eq!(d.create_backfill_job, None, "a failed job is not recreated");
}

#[test]
fn with_validate_args_the_validation_job_runs_after_the_backfill_and_gates_the_phase() {
    let spec = with_validation(spec());
    let s = MigrationStatus {
        backfill_job: Some("chat-backfill-1".into()),
        ..status_in(&spec, Backfill, None)
    };
    let obs = |backfill: JobState, validate: Option<JobState>| Observations {
        backfill: Some(backfill),
        validate,
        ..seen(&s)
    };
    // (backfill, validate, phase, backfill job to create, validation job to create, events)
    #[rustfmt::skip]
    let rows: [(JobState, Option<JobState>, Phase, Option<&str>, Option<&str>, &[&str]); 7] = [
        (JobState::Running,   None,                      Backfill, None, None,                     &[]),
        (JobState::Missing,   None,                      Backfill, Some("chat-backfill-1"), None,  &[]),
        (JobState::Succeeded, None,                      Backfill, None, Some("chat-validate-1"),  &[]),
        (JobState::Succeeded, Some(JobState::Missing),   Backfill, None, Some("chat-validate-1"),  &[]),
        (JobState::Succeeded, Some(JobState::Running),   Backfill, None, None,                     &[]),
        (JobState::Succeeded, Some(JobState::Succeeded), Split,    None, None,                     &["Promoted"]),
        (JobState::Succeeded, Some(JobState::Failed("drift 2.1% above 0.1%".into())), RollingBack, None, None, &["ValidationFailed"]),
    ];
    for (backfill, validate, phase, create_backfill, create_validate, events) in rows {
        let row = format!("backfill {backfill:?}, validate {validate:?}");
        let d = step(&spec, &s, &obs(backfill, validate), at(30));
        assert_eq!(d.status.phase, phase, "{row}");
        assert_eq!(d.create_backfill_job.as_deref(), create_backfill, "{row}");
        assert_eq!(d.create_validate_job.as_deref(), create_validate, "{row}");
        assert_eq!(reasons(&d), events, "{row}");
        if create_validate.is_some() {
            assert_eq!(d.status.validate_job.as_deref(), create_validate, "{row}");
        }
    }

    // The rollback says why, with the validator's message.
    let d = step(
        &spec,
        &s,
        &obs(
            JobState::Succeeded,
            Some(JobState::Failed("drift 2.1% above 0.1%".into())),
        ),
        at(30),
    );
    assert!(d.events[0].message.contains("drift 2.1%"), "{:?}", d.events);
    assert_eq!(
        d.status
            .last_rollback
            .as_ref()
            .map(|r| (r.from, r.reason.as_str())),
        Some((Backfill, "ValidationFailed"))
    );
}

#[test]
fn a_retry_runs_backfill_and_validation_again_under_new_names() {
    let spec = with_validation(spec());
    let s = MigrationStatus {
        backfill_job: Some("chat-backfill-1".into()),
        validate_job: Some("chat-validate-1".into()),
        ..status_in(&spec, RolledBack, None)
    };
    let mut obs = seen(&s);
    obs.commands.retry = true;
    let d = step(&spec, &s, &obs, at(30));
    assert_eq!(d.status.attempt, 1);
    assert_eq!(
        (d.status.backfill_job.clone(), d.status.validate_job.clone()),
        (None, None),
        "the next attempt starts without the old Jobs"
    );
    let s = MigrationStatus {
        attempt: 1,
        backfill_job: Some("chat-backfill-2".into()),
        ..status_in(&spec, Backfill, None)
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            backfill: Some(JobState::Succeeded),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!(d.create_validate_job.as_deref(), Some("chat-validate-2"));
}

#[test]
fn backfill_jobs_are_named_per_attempt() {
    let spec = with_backfill(spec());
    for (attempt, name) in [
        (0, "chat-backfill-1"),
        (1, "chat-backfill-2"),
        (4, "chat-backfill-5"),
    ] {
        let s = MigrationStatus {
            attempt,
            ..status_in(&spec, Backfill, None)
        };
        for job in [None, Some(JobState::Missing)] {
            let d = step(
                &spec,
                &s,
                &Observations {
                    backfill: job.clone(),
                    ..seen(&s)
                },
                at(1),
            );
            assert_eq!(
                d.create_backfill_job.as_deref(),
                Some(name),
                "attempt {attempt}, job {job:?}"
            );
            assert_eq!(d.status.backfill_job.as_deref(), Some(name));
        }
    }
}
