//! The backfill Job: an Indexed Job whose pods each copy shard `JOB_COMPLETION_INDEX` of
//! `FICUS_SHARD_COUNT`; then, with `validateArgs`, a one-pod validation Job. The success of the
//! last one promotes the Backfill phase; a failure of either rolls back.

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{BackfillSpec, Migration};
use crate::machine::JobState;

#[derive(Debug, thiserror::Error)]
#[error("Job {namespace}/{name} could not be {verb}: {source}")]
pub struct BackfillError {
    verb: &'static str,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl BackfillError {
    pub fn reason(&self) -> &'static str {
        match &self.source {
            kube::Error::Api(s) if s.code == 403 => "BackfillForbidden",
            _ => "BackfillUnavailable",
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
    spec: &BackfillSpec,
    name: &str,
) -> Result<(), BackfillError> {
    let job = json!({
        "completionMode": "Indexed",
        "completions": spec.parallelism,
        "parallelism": spec.parallelism,
        "backoffLimit": 3,
        "template": { "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "backfill",
                "image": spec.image,
                "args": spec.args,
                "env": [{ "name": "FICUS_SHARD_COUNT", "value": spec.parallelism.to_string() }],
                "envFrom": env_from(spec),
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
    spec: &BackfillSpec,
    args: &[String],
    name: &str,
) -> Result<(), BackfillError> {
    let job = json!({
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": 3,
        "podFailurePolicy": { "rules": [{
            "action": "FailJob",
            "onExitCodes": { "containerName": "validate", "operator": "In", "values": [2] },
        }]},
        "template": { "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "validate",
                "image": spec.image,
                "args": args,
                "envFrom": env_from(spec),
            }],
        }},
    });
    submit(client, migration, name, job).await
}

/// The pods' environment from `spec.secretName`, if any.
fn env_from(spec: &BackfillSpec) -> serde_json::Value {
    match &spec.secret_name {
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
            "labels": { "app.kubernetes.io/managed-by": "ficus", "ficus.dev/migration": migration.name_any() },
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
