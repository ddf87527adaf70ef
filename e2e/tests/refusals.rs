//! What the API server refuses, and what must not be lost, against a real kube-apiserver: a
//! refused Job is Degraded with its message and retried with a back-off (no rewriting loop),
//! names derived from a long Migration name fit Kubernetes' limits, the Jobs get the dual-write
//! start the operator recorded, and deleting a Migration in CutOver without reverse dual-write
//! leaves the new system (which holds every write) primary.

use std::collections::BTreeMap;
use std::time::Duration;

use ficus_e2e::operator::{Operator, degraded, migration, test_namespace, wait_for};
use ficus_operator::crd::{Migration, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

async fn event_reasons(client: &Client, ns: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// A Role for user `ficus-limited` with everything the operator needs; Jobs only readable
/// unless `jobs_create`.
fn role(ns: &str, jobs_create: bool) -> String {
    let jobs = if jobs_create {
        "[get, list, watch, create]"
    } else {
        "[get, list, watch]"
    };
    format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: ficus-limited, namespace: {ns} }}
rules:
  - {{ apiGroups: [ficus.dev], resources: [migrations], verbs: [get, list, watch, patch, update] }}
  - {{ apiGroups: [ficus.dev], resources: [migrations/status], verbs: [get, patch, update] }}
  - {{ apiGroups: [""], resources: [configmaps], verbs: [get, create, patch, update] }}
  - {{ apiGroups: [batch], resources: [jobs], verbs: {jobs} }}
  - {{ apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch] }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: ficus-limited, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: ficus-limited }}
subjects: [{{ kind: User, name: ficus-limited }}]
"#
    )
}

#[tokio::test]
async fn a_refused_job_is_degraded_without_a_rewrite_loop_and_long_names_fit() -> anyhow::Result<()>
{
    let Some((cp, client, ns)) = test_namespace("refused-job").await? else {
        return Ok(());
    };
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &role(&ns, false))?;
    assert!(out.success(), "{out}");
    let limited = cp.client_as("ficus-limited", &[]).await?;
    let _operator = Operator::start(limited, &ns, "limited", None);
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);

    // 120 characters: a valid object name, but not a valid label value.
    let name = format!("chat-{}", "x".repeat(115));
    let spec = json!({
        "service": "chat",
        "flags": { "configMap": { "name": "flags" } },
        "shadow": { "duration": "0s" },
        "backfill": { "image": "example.invalid/chat-service", "args": ["migrate"] },
        "steps": [10, 100],
        "bakeTime": "1h",
    });
    api.create(&PostParams::default(), &migration(&name, spec))
        .await?;

    let refused = wait_for(&api, &name, LONG, "Degraded by the refused Job", |m| {
        degraded(m).is_some_and(|d| d.0 == "True")
    })
    .await;
    let (_, reason, message) = degraded(&refused).expect("Degraded");
    assert_eq!(reason, "BackfillForbidden");
    assert!(
        message.contains("forbidden") && message.contains("chat-backfill-1"),
        "the API server's own message, naming the Job: {message}"
    );
    assert_eq!(
        refused.status.as_ref().map(|s| s.phase),
        Some(Phase::Backfill)
    );
    let ready = refused
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("False"), "not Ready while refused");

    // No rewriting loop: the object stays as it is and there is one Event for the refusal.
    let version = api.get(&name).await?.resource_version();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = api.get(&name).await?;
    assert_eq!(
        later.resource_version(),
        version,
        "a refused write does not rewrite the status in a loop: {:#?}",
        later.status.as_ref().map(|s| &s.conditions)
    );
    let reasons = event_reasons(&client, &ns).await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "BackfillForbidden").count(),
        1,
        "{reasons:?}"
    );

    // Allowed: the Job is created, its name and labels fit, and it gets the recorded inputs.
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &role(&ns, true))?;
    assert!(out.success(), "{out}");
    let recovered = wait_for(
        &api,
        &name,
        Duration::from_secs(150),
        "the Job created",
        |m| degraded(m).is_some_and(|d| d.0 == "False"),
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = jobs.get("chat-backfill-1").await?;
    let label = job
        .labels()
        .get("ficus.dev/migration")
        .cloned()
        .unwrap_or_default();
    assert!(
        !label.is_empty() && label.len() <= 63 && name.starts_with(&label[..40]),
        "the label names the Migration within 63 characters: {label}"
    );
    let env: BTreeMap<String, String> = job
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    let status = recovered.status.expect("status");
    let started = status
        .dual_write_started_at
        .expect("the dual-write start is recorded");
    assert_eq!(
        env.get("FICUS_DUAL_WRITE_STARTED_AT"),
        Some(&started.to_string())
    );
    let shadow_entry = status
        .history
        .iter()
        .find(|t| t.to == Phase::Shadow)
        .map(|t| t.time);
    assert_eq!(Some(started), shadow_entry, "recorded when Shadow began");
    let id = env.get("FICUS_MIGRATION_ID").cloned().unwrap_or_default();
    assert!(
        id.starts_with(&format!("{ns}/{name}/")) && id.ends_with("/1"),
        "{id}"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_in_cutover_without_reverse_dual_write_leaves_the_new_system_primary()
-> anyhow::Result<()> {
    let Some((_cp, client, ns)) = test_namespace("delete-cutover").await? else {
        return Ok(());
    };
    let _operator = Operator::start(client.clone(), &ns, "solo", None);
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let spec = json!({
        "service": "chat",
        "flags": { "configMap": { "name": "flags" } },
        "shadow": { "duration": "0s" },
        "steps": [100],
        "bakeTime": "0s",
        "cutover": { "reverseDualWrite": false },
    });
    api.create(&PostParams::default(), &migration("m", spec))
        .await?;
    wait_for(&api, "m", LONG, "CutOver", |m| {
        m.status.as_ref().is_some_and(|s| s.phase == Phase::CutOver)
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let flags = |cm: ConfigMap| cm.data.unwrap_or_default();
    for _ in 0..100 {
        if flags(cms.get("flags").await?)
            .get("write_primary")
            .map(String::as_str)
            == Some("new")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.delete("m", &DeleteParams::default()).await?;
    for _ in 0..200 {
        if api.get_opt("m").await?.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api.get_opt("m").await?.is_none(), "deleted");
    let left = flags(cms.get("flags").await?);
    assert_eq!(
        (
            left.get("write_primary").map(String::as_str),
            left.get("read_split_percent").map(String::as_str)
        ),
        (Some("new"), Some("100")),
        "the legacy store lacks the writes made in CutOver: the new system stays primary"
    );
    Ok(())
}
