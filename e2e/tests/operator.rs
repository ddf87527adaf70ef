//! The operator against a real kube-apiserver: CRD validation, the whole phase plan, manual
//! commands, restarts, leader election, deletion and bad input.
//!
//! One file over 600 lines on purpose: a test binary starts one control plane, shared by these tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ficus_e2e::operator::{
    Operator, finish_job, migration, short_lease, split_steps, test_namespace, wait_for,
    wait_for_job,
};
use ficus_operator::crd::{DualWrite, FlagValues, Flags, Migration, Percent, Phase, Side};
use ficus_testkit::{ControlPlane, repo_root};
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> anyhow::Result<Option<(&'static ControlPlane, Client, String)>> {
    test_namespace(prefix).await
}

fn flags_of(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.data.clone().unwrap_or_default()
}

/// The ConfigMap data the operator writes for this document.
fn doc(
    generation: i64,
    primary: Side,
    dual: DualWrite,
    shadow: u8,
    split: u8,
) -> BTreeMap<String, String> {
    let percent = |p| Percent::new(p).expect("a percent");
    let flags = Flags {
        generation,
        values: FlagValues {
            write_primary: primary,
            dual_write: dual,
            shadow_read_percent: percent(shadow),
            read_split_percent: percent(split),
            ..Default::default()
        },
    };
    flags
        .to_entries()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

async fn flags(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|cm| flags_of(&cm))
        .unwrap_or_default()
}

/// The flags once `key` holds `value`: a decision is recorded in status before the stores are
/// written, so a test that saw the status waits for the flags.
async fn flags_when(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) -> BTreeMap<String, String> {
    for _ in 0..600 {
        let f = flags(client, ns, name).await;
        if f.get(key).map(String::as_str) == Some(value) {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "flag {key} never became {value:?}: {:?}",
        flags(client, ns, name).await
    );
}

fn phase(m: &Migration) -> Phase {
    m.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn condition(m: &Migration, type_: &str) -> Option<(String, String)> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn annotate(api: &Api<Migration>, name: &str, key: &str) -> anyhow::Result<()> {
    let patch = json!({ "metadata": { "annotations": { key: "true" } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events
        .list(&ListParams::default())
        .await
        .expect("events list");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn crd_and_examples_apply_and_invalid_manifests_are_rejected_with_readable_messages()
-> anyhow::Result<()> {
    let Some((cp, _client, ns)) = setup("validation").await? else {
        return Ok(());
    };
    let examples = repo_root().join("examples");
    let out = cp.kubectl(&["apply", "-f", &examples.to_string_lossy()])?;
    assert!(out.success(), "every example applies: {out}");

    let mut checked = 0;
    let mut dir: Vec<_> =
        std::fs::read_dir(repo_root().join("e2e/invalid"))?.collect::<Result<_, _>>()?;
    dir.sort_by_key(|e| e.path());
    for entry in dir {
        let path = entry.path();
        let text = std::fs::read_to_string(&path)?;
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an '# expect: <message>' line", path.display()));
        let out = cp.kubectl(&["apply", "-n", &ns, "-f", &path.to_string_lossy()])?;
        assert!(
            !out.success(),
            "{} must be rejected, but was accepted: {out}",
            path.display()
        );
        assert!(
            out.stderr.contains(expect),
            "{}: expected the message {expect:?}, got: {}",
            path.display(),
            out.stderr
        );
        checked += 1;
    }
    assert!(
        checked >= 8,
        "at least 8 invalid manifests, found {checked}"
    );
    Ok(())
}

#[tokio::test]
async fn migration_without_gates_runs_every_phase_and_writes_flags_at_each_step()
-> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("progress").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    // Record every version of the flag ConfigMap the operator writes.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<BTreeMap<String, String>>::new()));
    let recorder = {
        let seen = seen.clone();
        let stream = watcher(
            cms,
            watcher::Config::default().fields("metadata.name=flags"),
        )
        .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(cm)) = stream.try_next().await {
                let doc = flags_of(&cm);
                let mut seen = seen.lock().expect("lock");
                if seen.last() != Some(&doc) {
                    seen.push(doc);
                }
            }
        })
    };
    let _operator = Operator::start(client.clone(), &ns, "solo", None);
    let m = migration(
        "plan",
        json!({
            "service": "chat",
            "flags": { "configMap": { "name": "flags" } },
            "shadow": { "duration": "1s", "readSamplePercent": 20 },
            "steps": [10, 50, 100],
            "bakeTime": "1s",
            "cutover": { "reverseDualWrite": true, "completeAfter": "1s" },
        }),
    );
    api.create(&PostParams::default(), &m).await?;
    let done = wait_for(&api, "plan", LONG, "Completed", |m| {
        phase(m) == Phase::Completed
    })
    .await;
    // The watch may deliver the last flag document after the status says Completed: wait for
    // it (the Completed flags: new primary, dual-write off) rather than for a fixed time.
    let last = doc(7, Side::New, DualWrite::Off, 0, 100);
    let waiting = Instant::now();
    while seen.lock().expect("lock").last() != Some(&last) {
        assert!(
            waiting.elapsed() < LONG,
            "the Completed flags never reached the watch: {:?}",
            seen.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    recorder.abort();

    let status = done.status.clone().expect("status");
    let path: Vec<(Phase, Phase, i32)> = status
        .history
        .iter()
        .map(|t| (t.from, t.to, t.traffic_percent))
        .collect();
    assert_eq!(
        path,
        vec![
            (Phase::Pending, Phase::Preflight, 0),
            (Phase::Preflight, Phase::Shadow, 0),
            (Phase::Shadow, Phase::Split, 10),
            (Phase::Split, Phase::Split, 50),
            (Phase::Split, Phase::Split, 100),
            (Phase::Split, Phase::CutOver, 100),
            (Phase::CutOver, Phase::Completed, 100),
        ]
    );
    // Each step baked at least its bake time.
    for pair in status.history.windows(2).skip(1) {
        let baked = pair[1].time.duration_since(pair[0].time);
        assert!(
            baked >= jiff::SignedDuration::from_millis(1000),
            "{} -> {} after only {baked:?}",
            pair[0].to,
            pair[1].to
        );
    }
    let seen = seen.lock().expect("lock").clone();
    // Without appliedGenerationQuery or a backfill, shadow reads compare what was written from
    // the moment the dual-writing document was written on.
    let applied = status.dual_write_applied_at.expect("dual write applied");
    assert_eq!(status.dual_write_started_at, Some(applied));
    let since = |mut d: BTreeMap<String, String>| {
        d.insert(
            "shadow_compare_from".into(),
            ficus_operator::crd::ShadowCompare::From(applied).to_string(),
        );
        d
    };
    assert_eq!(
        seen,
        vec![
            doc(1, Side::Legacy, DualWrite::Off, 0, 0),
            since(doc(2, Side::Legacy, DualWrite::Sync, 20, 0)),
            since(doc(3, Side::Legacy, DualWrite::Sync, 20, 10)),
            since(doc(4, Side::Legacy, DualWrite::Sync, 20, 50)),
            since(doc(5, Side::Legacy, DualWrite::Sync, 20, 100)),
            since(doc(6, Side::New, DualWrite::Sync, 20, 100)),
            doc(7, Side::New, DualWrite::Off, 0, 100),
        ],
        "the flag ConfigMap at every step"
    );
    assert_eq!(status.observed_generation, done.metadata.generation);
    assert_eq!(
        condition(&done, "Ready"),
        Some(("True".into(), "Completed".into()))
    );
    assert_eq!(
        condition(&done, "Progressing"),
        Some(("False".into(), "Completed".into()))
    );
    assert_eq!(
        condition(&done, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == done.metadata.generation)
    );
    let reasons = event_reasons(&client, &ns, "plan").await;
    for expected in [
        "Started",
        "PreflightPassed",
        "Promoted",
        "CutOver",
        "Completed",
    ] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "event {expected} recorded; got {reasons:?}"
        );
    }
    Ok(())
}

fn held_spec(bake: &str) -> serde_json::Value {
    json!({
        "service": "chat",
        "flags": { "configMap": { "name": "flags" } },
        "shadow": { "duration": "0s", "readSamplePercent": 10 },
        "steps": [10, 50, 100],
        "bakeTime": bake,
    })
}

#[tokio::test]
async fn abort_rolls_back_to_the_safe_state_and_retry_starts_again() -> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("abort").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let _operator = Operator::start(client.clone(), &ns, "solo", None);
    api.create(&PostParams::default(), &migration("m", held_spec("1h")))
        .await?;
    wait_for(&api, "m", LONG, "step 1", |m| {
        m.status.as_ref().is_some_and(|s| s.step == Some(1))
    })
    .await;
    flags_when(&client, &ns, "flags", "read_split_percent", "10").await;

    annotate(&api, "m", "ficus.dev/abort").await?;
    let rolled = wait_for(&api, "m", LONG, "RolledBack", |m| {
        phase(m) == Phase::RolledBack
    })
    .await;
    // RolledBack is only reached once the store holds the safe flags.
    let f = flags(&client, &ns, "flags").await;
    assert_eq!(
        (
            f["write_primary"].as_str(),
            f["read_split_percent"].as_str(),
            f["dual_write"].as_str()
        ),
        ("legacy", "0", "sync")
    );
    assert_eq!(
        rolled
            .status
            .as_ref()
            .and_then(|s| s.last_rollback.as_ref())
            .map(|r| r.reason.as_str()),
        Some("Aborted")
    );
    assert_eq!(
        condition(&rolled, "Ready"),
        Some(("False".into(), "RolledBack".into()))
    );
    let rolled = wait_for(&api, "m", LONG, "abort annotation removed", |m| {
        !m.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("ficus.dev/abort"))
    })
    .await;
    assert_eq!(
        phase(&rolled),
        Phase::RolledBack,
        "stays rolled back until retried"
    );

    annotate(&api, "m", "ficus.dev/retry").await?;
    let again = wait_for(&api, "m", LONG, "step 1 again", |m| {
        m.status
            .as_ref()
            .is_some_and(|s| s.step == Some(1) && s.attempt == 1)
    })
    .await;
    flags_when(&client, &ns, "flags", "read_split_percent", "10").await;
    let reasons = event_reasons(&client, &ns, "m").await;
    assert!(
        reasons.iter().any(|r| r == "Aborted") && reasons.iter().any(|r| r == "Retry"),
        "{reasons:?}"
    );
    assert!(
        !again
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ficus.dev/retry")
    );
    Ok(())
}

#[tokio::test]
async fn restarted_operator_resumes_from_status_without_skipping_or_repeating_a_step()
-> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("restart").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    const BAKE: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);
    let mut first = Operator::start(client.clone(), &ns, "first", None);
    api.create(&PostParams::default(), &migration("m", held_spec("5s")))
        .await?;
    wait_for(&api, "m", LONG, "step 1", |m| {
        m.status.as_ref().is_some_and(|s| s.step == Some(1))
    })
    .await;
    first.kill();

    // While no operator runs, nothing moves, even past the bake time (this wait is the
    // behaviour under test, not synchronisation).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let idle = api.get("m").await?;
    assert_eq!(idle.status.as_ref().and_then(|s| s.step), Some(1));

    let restarted = jiff::Timestamp::now();
    let _second = Operator::start(client.clone(), &ns, "second", None);
    let done = wait_for(&api, "m", LONG, "CutOver", |m| phase(m) == Phase::CutOver).await;
    let steps = split_steps(&done);
    assert_eq!(steps, vec![10, 50, 100], "every step exactly once");
    // The bake served before the restart counts: step 2 follows the restart at once, where an
    // operator that started the bake over would wait a full bake after it.
    let split_at: Vec<jiff::Timestamp> = done
        .status
        .iter()
        .flat_map(|s| &s.history)
        .filter(|t| t.to == Phase::Split)
        .map(|t| t.time)
        .collect();
    let after_restart = split_at[1].duration_since(restarted);
    assert!(
        after_restart < BAKE,
        "step 2 came {after_restart:?} after the restart: the bake started over"
    );
    // The new operator does bake step 2 in full.
    assert!(split_at[2].duration_since(split_at[1]) >= BAKE);
    Ok(())
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over() -> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("leader").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut a = Operator::start(client.clone(), &ns, "replica-a", Some(short_lease(&ns)));
    // Let a take the lease before b exists, so the leader is known.
    let holder = || async {
        leases
            .get_opt("ficus-operator-leader")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
    };
    for _ in 0..100 {
        if holder().await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holder().await.as_deref(), Some("replica-a"));
    let _b = Operator::start(client.clone(), &ns, "replica-b", Some(short_lease(&ns)));
    api.create(&PostParams::default(), &migration("m", held_spec("2s")))
        .await?;
    wait_for(&api, "m", LONG, "step 2", |m| {
        m.status.as_ref().is_some_and(|s| s.step == Some(2))
    })
    .await;

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let instances = |list: Vec<Event>| {
        list.into_iter()
            .filter_map(|e| e.reporting_instance)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let acting = instances(events.list(&ListParams::default()).await?.items);
    assert_eq!(
        acting,
        ["replica-a".to_string()].into(),
        "only the leader records Events"
    );

    a.kill();
    let done = wait_for(&api, "m", LONG, "CutOver after failover", |m| {
        phase(m) == Phase::CutOver
    })
    .await;
    assert_eq!(holder().await.as_deref(), Some("replica-b"));
    let acting = instances(events.list(&ListParams::default()).await?.items);
    assert!(
        acting.contains("replica-b"),
        "the standby acts after taking over: {acting:?}"
    );
    let steps = split_steps(&done);
    assert_eq!(
        steps,
        vec![10, 50, 100],
        "no step repeated across the failover"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_migration_restores_the_safe_flags_before_it_disappears() -> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("delete").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let _operator = Operator::start(client.clone(), &ns, "solo", None);
    api.create(&PostParams::default(), &migration("m", held_spec("1h")))
        .await?;
    let running = wait_for(&api, "m", LONG, "step 1", |m| {
        m.status.as_ref().is_some_and(|s| s.step == Some(1))
    })
    .await;
    assert!(
        running
            .finalizers()
            .iter()
            .any(|f| f == "ficus.dev/safe-state")
    );
    let before: i64 =
        flags_when(&client, &ns, "flags", "read_split_percent", "10").await["generation"]
            .parse()?;

    api.delete("m", &DeleteParams::default()).await?;
    for _ in 0..200 {
        if api.get_opt("m").await?.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        api.get_opt("m").await?.is_none(),
        "the Migration is gone once the safe state is restored"
    );
    assert_eq!(
        flags(&client, &ns, "flags").await,
        doc(before + 1, Side::Legacy, DualWrite::Off, 0, 0)
    );
    Ok(())
}

/// The chart's pre-delete hook (`ficus-operator delete-migrations`): it deletes the release's
/// Migrations only, waits while the running operator writes their safe flags, and without an
/// operator fails with a message that says so instead of waiting forever.
#[tokio::test]
async fn the_uninstall_hook_deletes_the_releases_migrations_after_their_safe_flags()
-> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("uninstall").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let labelled = |name: &str, release: &str, flags: &str| {
        let mut spec = held_spec("1h");
        spec["flags"] = json!({ "configMap": { "name": flags } });
        let mut m = migration(name, spec);
        m.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/instance".to_owned(),
            release.to_owned(),
        )]));
        m
    };
    let operator = Operator::start(client.clone(), &ns, "solo", None);
    api.create(
        &PostParams::default(),
        &labelled("ours", "ficus", "flags-ours"),
    )
    .await?;
    api.create(
        &PostParams::default(),
        &labelled("theirs", "other", "flags-theirs"),
    )
    .await?;
    for name in ["ours", "theirs"] {
        wait_for(&api, name, LONG, "step 1", |m| {
            m.status.as_ref().is_some_and(|s| s.step == Some(1))
        })
        .await;
    }
    let before: i64 =
        flags_when(&client, &ns, "flags-ours", "read_split_percent", "10").await["generation"]
            .parse()?;

    let deleted = ficus_operator::uninstall::delete_migrations(
        client.clone(),
        &ns,
        "app.kubernetes.io/instance=ficus",
        LONG,
    )
    .await?;
    assert_eq!(deleted, ["ours"]);
    assert!(api.get_opt("ours").await?.is_none());
    assert_eq!(
        flags(&client, &ns, "flags-ours").await,
        doc(before + 1, Side::Legacy, DualWrite::Off, 0, 0),
        "safe flags written before the Migration went"
    );
    assert!(
        api.get_opt("theirs").await?.is_some(),
        "another release's Migration stays"
    );

    // No operator: the finalizer stays, and the hook says why after its timeout.
    drop(operator);
    let err = ficus_operator::uninstall::delete_migrations(
        client.clone(),
        &ns,
        "app.kubernetes.io/instance=other",
        Duration::from_secs(3),
    )
    .await
    .expect_err("nobody removes the finalizer");
    let text = err.to_string();
    assert!(
        text.contains(&format!("Migration {ns}/theirs is still there"))
            && text.contains("only a running operator removes it"),
        "{text}"
    );
    Ok(())
}

use kube::ResourceExt;

#[tokio::test]
async fn unrunnable_migrations_are_degraded_without_hot_loops_and_others_keep_running()
-> anyhow::Result<()> {
    let Some((cp, client, ns)) = setup("degraded").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);

    // The operator runs as a ServiceAccount that may do everything it needs except touch
    // ConfigMaps named "forbidden-flags".
    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: ficus-limited, namespace: {ns} }}
rules:
  - {{ apiGroups: [ficus.dev], resources: [migrations], verbs: [get, list, watch, patch, update] }}
  - {{ apiGroups: [ficus.dev], resources: [migrations/status], verbs: [get, patch, update] }}
  - {{ apiGroups: [""], resources: [configmaps], resourceNames: [flags-a, flags-b], verbs: [get, create, patch] }}
  - {{ apiGroups: [apps], resources: [deployments], verbs: [get, list, watch] }}
  - {{ apiGroups: [batch], resources: [jobs], verbs: [get, list, watch, create] }}
  - {{ apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch] }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: ficus-limited, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: ficus-limited }}
subjects: [{{ kind: User, name: ficus-limited }}]
"#
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &rbac)?;
    assert!(out.success(), "{out}");
    let limited = cp.client_as("ficus-limited", &[]).await?;
    let _operator = Operator::start(limited, &ns, "limited", None);

    let spec = |flags: &str| {
        let mut s = held_spec("1h");
        s["flags"]["configMap"]["name"] = json!(flags);
        s
    };
    let mut unknown_deployment = spec("flags-a");
    unknown_deployment["legacy"] = json!({ "deployment": "chat-legacy" });
    unknown_deployment["candidate"] = json!({ "deployment": "chat-v2" });
    api.create(
        &PostParams::default(),
        &migration("no-permission", spec("forbidden-flags")),
    )
    .await?;
    api.create(
        &PostParams::default(),
        &migration("no-deployment", unknown_deployment),
    )
    .await?;
    api.create(
        &PostParams::default(),
        &migration("healthy", spec("flags-b")),
    )
    .await?;

    let forbidden = wait_for(&api, "no-permission", LONG, "Degraded", |m| {
        condition(m, "Degraded").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        condition(&forbidden, "Degraded").map(|c| c.1),
        Some("FlagStoreForbidden".into())
    );
    assert_eq!(
        phase(&forbidden),
        Phase::Preflight,
        "no progress without a writable flag store"
    );
    let missing = wait_for(&api, "no-deployment", LONG, "Degraded", |m| {
        condition(m, "Degraded").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        condition(&missing, "Degraded").map(|c| c.1),
        Some("WorkloadNotFound".into())
    );
    let message = missing
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("chat-legacy"),
        "the message names the Deployment: {message}"
    );
    wait_for(
        &api,
        "healthy",
        LONG,
        "the healthy Migration at step 1",
        |m| m.status.as_ref().is_some_and(|s| s.step == Some(1)),
    )
    .await;

    // No hot loop: over 5 s the degraded objects barely change and get one Event per problem.
    let versions = |m: &Migration| m.resource_version().unwrap_or_default();
    let (v1, v2) = (
        versions(&api.get("no-permission").await?),
        versions(&api.get("no-deployment").await?),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        versions(&api.get("no-permission").await?),
        v1,
        "a degraded Migration is not rewritten in a loop"
    );
    assert_eq!(versions(&api.get("no-deployment").await?), v2);
    for (name, reason) in [
        ("no-permission", "FlagStoreForbidden"),
        ("no-deployment", "WorkloadNotFound"),
    ] {
        let reasons = event_reasons(&client, &ns, name).await;
        assert_eq!(
            reasons.iter().filter(|r| *r == reason).count(),
            1,
            "{name}: one {reason} Event, got {reasons:?}"
        );
    }

    // Fixing the cause lets it continue.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for name in ["chat-legacy", "chat-v2"] {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": name } },
                "template": { "metadata": { "labels": { "app": name } }, "spec": { "containers": [{ "name": "c", "image": "chat:1" }] } },
            },
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
    }
    let fixed = wait_for(
        &api,
        "no-deployment",
        LONG,
        "step 1 once the Deployments exist",
        |m| m.status.as_ref().is_some_and(|s| s.step == Some(1)),
    )
    .await;
    assert_eq!(
        condition(&fixed, "Degraded").map(|c| c.0),
        Some("False".into())
    );
    assert_eq!(fixed.status.and_then(|s| s.legacy_replicas_before), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_failed_validation_job_rolls_back_and_a_retry_validates_again() -> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("validate").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let _operator = Operator::start(client.clone(), &ns, "solo", None);
    let mut spec = held_spec("1h");
    spec["backfill"] = json!({
        "image": "example.invalid/chat-service",
        "args": ["backfill"],
        "validateArgs": ["validate", "--max-drift", "0.001"],
        "secretName": "chat-secrets",
    });
    api.create(&PostParams::default(), &migration("m", spec))
        .await?;

    wait_for_job(&client, &ns, "chat-backfill-1", LONG).await;
    finish_job(&client, &ns, "chat-backfill-1", Ok(())).await?;
    let validate = wait_for_job(&client, &ns, "chat-validate-1", LONG).await;
    let pod = validate
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let container = &pod.spec.as_ref().expect("pod spec").containers[0];
    assert_eq!(
        (container.image.as_deref(), container.args.clone()),
        (
            Some("example.invalid/chat-service"),
            Some(vec![
                "validate".into(),
                "--max-drift".into(),
                "0.001".into()
            ])
        )
    );
    let secret_of = |c: &k8s_openapi::api::core::v1::Container| {
        c.env_from
            .iter()
            .flatten()
            .filter_map(|e| e.secret_ref.as_ref().map(|r| r.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        secret_of(container),
        ["chat-secrets"],
        "validation pods get the database settings"
    );
    let backfill = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &ns)
        .get("chat-backfill-1")
        .await?;
    let backfill_pod = backfill.spec.map(|s| s.template).unwrap_or_default();
    assert_eq!(
        secret_of(&backfill_pod.spec.expect("pod spec").containers[0]),
        ["chat-secrets"],
        "backfill pods too"
    );
    let rule = validate
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
        .map(|p| p.rules[0].clone())
        .expect("a pod failure policy");
    assert_eq!(rule.action, "FailJob");
    assert_eq!(
        rule.on_exit_codes.map(|c| c.values),
        Some(vec![2]),
        "the validator's drift verdict fails the Job at once"
    );
    assert_eq!(
        phase(&api.get("m").await?),
        Phase::Backfill,
        "no traffic before the validation passed"
    );

    let verdict = "Container validate for pod chat-validate-1-x failed with exit code 2";
    finish_job(&client, &ns, "chat-validate-1", Err(verdict)).await?;
    let rolled = wait_for(&api, "m", LONG, "RolledBack", |m| {
        phase(m) == Phase::RolledBack
    })
    .await;
    let last = rolled
        .status
        .and_then(|s| s.last_rollback)
        .expect("a rollback record");
    assert_eq!(
        (last.from, last.reason.as_str()),
        (Phase::Backfill, "ValidationFailed")
    );
    // The operator's own framing around the Job's message (which this test wrote): it knows
    // which Job failed.
    assert_eq!(last.message, format!("validation job failed: {verdict}"));
    // Backfill never sends users to the new system, so the flags were safe before the rollback
    // too; what the rollback owes is to keep them so and keep dual writes on for a retry.
    assert_eq!(
        flags(&client, &ns, "flags").await,
        doc(
            flags(&client, &ns, "flags").await["generation"].parse()?,
            Side::Legacy,
            DualWrite::Sync,
            0,
            0
        ),
        "the rolled-back flags"
    );

    annotate(&api, "m", "ficus.dev/retry").await?;
    wait_for_job(&client, &ns, "chat-backfill-2", LONG).await;
    finish_job(&client, &ns, "chat-backfill-2", Ok(())).await?;
    wait_for_job(&client, &ns, "chat-validate-2", LONG).await;
    finish_job(&client, &ns, "chat-validate-2", Ok(())).await?;
    wait_for(&api, "m", LONG, "step 1 after the validation passed", |m| {
        m.status.as_ref().is_some_and(|s| s.step == Some(1))
    })
    .await;
    flags_when(&client, &ns, "flags", "read_split_percent", "10").await;
    Ok(())
}

/// `kubectl ficus <args>` against the test control plane, as the plugin binary runs it.
async fn kubectl_ficus(
    client: &Client,
    ns: &str,
    args: &[&str],
) -> Result<String, ficus_operator::cli::CliError> {
    use clap::Parser;
    let cli =
        ficus_operator::cli::Cli::parse_from(["kubectl-ficus", "-n", ns].iter().chain(args.iter()));
    ficus_operator::cli::run(client.clone(), "default", cli).await
}

#[tokio::test]
async fn kubectl_ficus_drives_a_migration_and_says_what_happened() -> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("plugin").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &migration("m", held_spec("1h")))
        .await?;

    // No operator yet: the command is set, and the plugin says nobody handled it.
    let err = kubectl_ficus(&client, &ns, &["promote", "m", "--wait", "1"])
        .await
        .expect_err("nobody handles it");
    assert!(
        err.to_string()
            .contains("the operator has not handled it within 1s"),
        "{err}"
    );
    let missing = kubectl_ficus(&client, &ns, &["abort", "nope"])
        .await
        .expect_err("unknown Migration");
    assert_eq!(
        missing.to_string(),
        format!("migration nope not found in namespace {ns}")
    );

    let _operator = Operator::start(client.clone(), &ns, "solo", None);
    wait_for(&api, "m", LONG, "step 1", |m| {
        m.status.as_ref().is_some_and(|s| s.step == Some(1))
    })
    .await;
    // The stale promote set above was consumed on the way (in Pending: ignored).
    let out = kubectl_ficus(&client, &ns, &["promote", "m"]).await?;
    assert_eq!(
        out,
        format!("promote: {ns}/m Split step 1/3 (10%) -> Split step 2/3 (50%)\n")
    );
    let table = kubectl_ficus(&client, &ns, &["status"]).await?;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("m ")
            && l.contains("Split")
            && l.contains("2/3")
            && l.contains("50%")),
        "{table}"
    );

    let out = kubectl_ficus(&client, &ns, &["pause", "m"]).await?;
    assert!(out.contains("Split step 2/3 (50%) -> Paused"), "{out}");
    let out = kubectl_ficus(&client, &ns, &["resume", "m"]).await?;
    assert!(
        out.contains("Paused step 2/3 (50%) -> Split step 2/3 (50%)"),
        "{out}"
    );

    let out = kubectl_ficus(&client, &ns, &["abort", "m"]).await?;
    assert!(
        out.contains("-> RolledBack (0%)") || out.contains("-> RollingBack (0%)"),
        "{out}"
    );
    wait_for(&api, "m", LONG, "RolledBack", |m| {
        phase(m) == Phase::RolledBack
    })
    .await;
    let status = kubectl_ficus(&client, &ns, &["status", "m"]).await?;
    assert!(
        status.contains("rolled back from Split (Aborted)"),
        "{status}"
    );
    let out = kubectl_ficus(&client, &ns, &["retry", "m"]).await?;
    assert!(out.contains("RolledBack (0%) -> "), "{out}");
    Ok(())
}

/// The harness half of "fail fast": an operator whose `run()` returns an error (here, a lease
/// name the API server refuses) makes a test waiting on its Migration fail with that error,
/// not with a timeout once the wait runs out.
#[tokio::test]
async fn a_test_waiting_on_a_stopped_operator_fails_with_its_error() -> anyhow::Result<()> {
    let Some((_cp, client, ns)) = setup("stopped").await? else {
        return Ok(());
    };
    let mut lease = short_lease(&ns);
    lease.lease_name = "Not A Valid Name".into();
    let _operator = Operator::start(client.clone(), &ns, "broken", Some(lease));
    let api: Api<Migration> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &migration("m", held_spec("1h")))
        .await?;
    let start = Instant::now();
    let wait = tokio::spawn(async move {
        wait_for(&api, "m", LONG, "Completed", |m| {
            phase(m) == Phase::Completed
        })
        .await
    });
    let Err(e) = wait.await else {
        panic!("nobody reconciles this Migration, yet it completed");
    };
    let message = e
        .into_panic()
        .downcast::<String>()
        .map(|m| *m)
        .unwrap_or_default();
    assert!(
        message.contains("operator broken stopped") && message.contains("Not A Valid Name"),
        "the wait names the operator and its error: {message}"
    );
    assert!(
        start.elapsed() < LONG / 2,
        "failed at once ({:?}), not at the end of the wait",
        start.elapsed()
    );
    Ok(())
}
