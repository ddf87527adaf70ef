//! The backfill Job: an Indexed Job whose pods each copy shard `JOB_COMPLETION_INDEX` of
//! `FICUS_SHARD_COUNT`; then, with `validateArgs`, a one-pod validation Job. The success of the
//! last one promotes the Backfill phase; a failure of either rolls back. And the rollback Job
//! (`cutover.rollbackJob`), which copies writes made in CutOver back to the legacy store.
//!
//! Every pod gets `FICUS_MIGRATION_ID` (checkpoint key: unique per Migration object and
//! attempt); backfill and validation pods also `FICUS_DUAL_WRITE_STARTED_AT`, rollback pods
//! `FICUS_ROLLBACK_FROM` (both RFC 3339, recorded by the operator in the status).

use crate::reason::{Reason, Reasoned};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{BackfillSpec, Migration, MigrationStatus, RollbackJobSpec};
use crate::machine::JobState;
use crate::names;

/// Names of the environment variables the operator gives its Jobs (the contract with the
/// service's `backfill`, `validate` and `rollback` commands; docs/crd-reference.md).
pub use ficus_flags::job::env;

/// `<namespace>/<name>/<uid>/<attempt>`: one key per Migration object and attempt, so a later
/// Migration (even one re-created under the same name) never resumes this one's checkpoints.
pub fn migration_id(migration: &Migration, status: &MigrationStatus) -> String {
    ficus_flags::MigrationId {
        namespace: migration.namespace().unwrap_or_default(),
        name: migration.name_any(),
        uid: migration.uid(),
        attempt: u32::try_from(status.attempt + 1).unwrap_or(1),
    }
    .to_string()
}

/// The environment the operator adds to a Job's pods.
fn operator_env(
    migration: &Migration,
    status: &MigrationStatus,
    rollback: bool,
) -> Vec<serde_json::Value> {
    let mut vars =
        vec![json!({ "name": env::MIGRATION_ID, "value": migration_id(migration, status) })];
    // jiff prints RFC 3339 in UTC (`2026-01-31T12:00:00.5Z`).
    let time = |t: Option<jiff::Timestamp>| t.map(|t| t.to_string());
    let extra = if rollback {
        (env::ROLLBACK_FROM, time(status.cut_over_at))
    } else {
        (
            env::DUAL_WRITE_STARTED_AT,
            time(status.dual_write_started_at),
        )
    };
    if let (name, Some(value)) = extra {
        vars.push(json!({ "name": name, "value": value }));
    }
    vars
}

#[derive(Debug, thiserror::Error)]
#[error("Job {namespace}/{name} could not be {verb}: {source}")]
pub struct BackfillError {
    verb: &'static str,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl Reasoned for BackfillError {
    fn reason(&self) -> Reason {
        match &self.source {
            kube::Error::Api(s) if s.code == 403 => Reason::BackfillForbidden,
            // The API server refused the object itself (invalid, over a limit): retrying the
            // same request cannot help, the spec or the cluster must change.
            kube::Error::Api(s) if matches!(s.code, 400 | 422) => Reason::JobRejected,
            _ => Reason::BackfillUnavailable,
        }
    }
}

pub async fn observe(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<JobState, BackfillError> {
    let api: Api<Job> = Api::namespaced(client, namespace);
    let job = api.get_opt(name).await.map_err(|source| BackfillError {
        verb: "read",
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    Ok(match job {
        None => JobState::Missing,
        Some(job) => state_of(&job),
    })
}

fn state_of(job: &Job) -> JobState {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    let holds = |t: &str| {
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if holds("Complete").is_some() {
        JobState::Succeeded
    } else if let Some(failed) = holds("Failed") {
        JobState::Failed(
            failed
                .message
                .clone()
                .unwrap_or_else(|| failed.reason.clone().unwrap_or_default()),
        )
    } else {
        JobState::Running
    }
}

pub async fn create(
    client: Client,
    migration: &Migration,
    status: &MigrationStatus,
    spec: &BackfillSpec,
    name: &str,
    runs_as: Option<&str>,
) -> Result<(), BackfillError> {
    let mut env = operator_env(migration, status, false);
    env.push(json!({ "name": env::SHARD_COUNT, "value": spec.parallelism.to_string() }));
    env.push(metrics_env());
    let job = json!({
        "completionMode": "Indexed",
        "completions": spec.parallelism,
        "parallelism": spec.parallelism,
        "backoffLimit": 3,
        "template": { "metadata": { "annotations": scrape_annotations() }, "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": runs_as,
            // The Jobs talk to databases, never to the Kubernetes API.
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "backfill",
                "image": spec.image,
                "args": spec.args,
                "env": env,
                "ports": metrics_ports(),
                "envFrom": env_from(spec.secret_name.as_deref()),
            }],
        }},
    });
    submit(client, migration, name, job).await
}

/// The validation Job: one pod running the backfill image with `args`. Exit code 2 is the
/// validator's verdict (drift above its threshold) and fails the Job at once; any other failure
/// (a database not reachable yet) is retried.
pub async fn create_validate(
    client: Client,
    migration: &Migration,
    status: &MigrationStatus,
    spec: &BackfillSpec,
    args: &[String],
    name: &str,
    runs_as: Option<&str>,
) -> Result<(), BackfillError> {
    let mut env = operator_env(migration, status, false);
    env.push(metrics_env());
    let job = json!({
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": 3,
        "podFailurePolicy": { "rules": [{
            "action": "FailJob",
            "onExitCodes": { "containerName": "validate", "operator": "In", "values": [2] },
        }]},
        "template": { "metadata": { "annotations": scrape_annotations() }, "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": runs_as,
            // The Jobs talk to databases, never to the Kubernetes API.
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "validate",
                "image": spec.image,
                "args": args,
                "env": env,
                "ports": metrics_ports(),
                "envFrom": env_from(spec.secret_name.as_deref()),
            }],
        }},
    });
    submit(client, migration, name, job).await
}

/// The rollback Job: one pod copying the writes made since `FICUS_ROLLBACK_FROM` from the new
/// store back to the legacy one; retried like the backfill.
pub async fn create_rollback(
    client: Client,
    migration: &Migration,
    status: &MigrationStatus,
    spec: &RollbackJobSpec,
    name: &str,
    runs_as: Option<&str>,
) -> Result<(), BackfillError> {
    let job = json!({
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": 3,
        "template": { "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": runs_as,
            // The Jobs talk to databases, never to the Kubernetes API.
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "rollback",
                "image": spec.image,
                "args": spec.args,
                "env": operator_env(migration, status, true),
                "envFrom": env_from(spec.secret_name.as_deref()),
            }],
        }},
    });
    submit(client, migration, name, job).await
}

/// What backfill and validation pods add for their `/metrics` (served while they run): the
/// address to serve on, the port, and the annotations a Prometheus `kubernetes_sd` pod job keys on.
fn metrics_env() -> serde_json::Value {
    json!({ "name": env::METRICS_ADDR, "value": format!("0.0.0.0:{}", ficus_flags::job::METRICS_PORT) })
}

fn metrics_ports() -> serde_json::Value {
    json!([{ "name": "metrics", "containerPort": ficus_flags::job::METRICS_PORT }])
}

fn scrape_annotations() -> serde_json::Value {
    json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": ficus_flags::job::METRICS_PORT.to_string(),
        "prometheus.io/path": "/metrics",
    })
}

/// The pods' environment from a Secret, if one is named.
fn env_from(secret_name: Option<&str>) -> serde_json::Value {
    match secret_name {
        Some(name) => json!([{ "secretRef": { "name": name } }]),
        None => json!([]),
    }
}

/// Creates Job `name` with `spec`, owned by the Migration; an existing one is left alone.
async fn submit(
    client: Client,
    migration: &Migration,
    name: &str,
    spec: serde_json::Value,
) -> Result<(), BackfillError> {
    let namespace = migration.namespace().unwrap_or_default();
    let owner = migration.controller_owner_ref(&());
    let job: Job = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            // A Migration name may have 253 characters, a label value 63.
            "labels": { "app.kubernetes.io/managed-by": "ficus", "ficus.dev/migration": names::fit(&migration.name_any(), names::LABEL_VALUE_MAX) },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": spec,
    }))
    .map_err(|e| BackfillError { verb: "built", namespace: namespace.clone(), name: name.into(), source: kube::Error::SerdeError(e) })?;
    let api: Api<Job> = Api::namespaced(client, &namespace);
    match api.create(&PostParams::default(), &job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(BackfillError {
            verb: "created",
            namespace,
            name: name.into(),
            source,
        }),
    }
}
