//! The live stack's stand-in for a kubelet: the local control plane runs no pods, so the Jobs
//! the operator creates (backfill, validation, rollback) are run here as local processes of the
//! same program, with the Job's arguments, its container environment, the Secret it names in
//! `envFrom` and, for an Indexed Job, one process per completion index with
//! `JOB_COMPLETION_INDEX`. The result is written back as the Job controller would (`Complete` or
//! `Failed`), so the operator sees exactly what it sees on a cluster. (A real kubelet runs them
//! as pods on the single-node cluster; see docs/helm.md.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// One Job the runner ran, for the report.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub name: String,
    pub args: Vec<String>,
    pub elapsed: Duration,
    /// Exit code per completion index.
    pub exit_codes: Vec<i32>,
}

/// Runs every Job that appears in `namespace` with `program`, until dropped.
pub struct JobRunner {
    task: JoinHandle<()>,
    runs: std::sync::Arc<std::sync::Mutex<Vec<JobRun>>>,
}

impl JobRunner {
    pub fn start(client: Client, namespace: &str, program: PathBuf, log_dir: PathBuf) -> JobRunner {
        let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn(run_jobs(
            client,
            namespace.to_owned(),
            program,
            log_dir,
            runs.clone(),
        ));
        JobRunner { task, runs }
    }

    /// The Jobs finished so far.
    pub fn runs(&self) -> Vec<JobRun> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_jobs(
    client: Client,
    namespace: String,
    program: PathBuf,
    log_dir: PathBuf,
    runs: std::sync::Arc<std::sync::Mutex<Vec<JobRun>>>,
) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut started = BTreeSet::new();
    loop {
        if let Ok(list) = jobs.list(&ListParams::default()).await {
            for job in list {
                let name = job.name_any();
                let finished = job
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Complete" || c.type_ == "Failed")
                    });
                if finished || !started.insert(name.clone()) {
                    continue;
                }
                let (client, namespace, secrets, program, log_dir, runs) = (
                    client.clone(),
                    namespace.clone(),
                    secrets.clone(),
                    program.clone(),
                    log_dir.clone(),
                    runs.clone(),
                );
                tokio::spawn(async move {
                    let run =
                        run_one(&client, &namespace, &secrets, &job, &program, &log_dir).await;
                    tracing::info!(job = %run.name, exit_codes = ?run.exit_codes, elapsed = ?run.elapsed, "job finished");
                    runs.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(run);
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_one(
    client: &Client,
    namespace: &str,
    secrets: &Api<Secret>,
    job: &Job,
    program: &PathBuf,
    log_dir: &std::path::Path,
) -> JobRun {
    let name = job.name_any();
    let spec = job.spec.clone().unwrap_or_default();
    let container = spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first().cloned())
        .unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for from in container.env_from.iter().flatten() {
        let Some(secret) = from.secret_ref.as_ref() else {
            continue;
        };
        if let Ok(Some(s)) = secrets.get_opt(&secret.name).await {
            for (k, v) in s.data.unwrap_or_default() {
                env.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            for (k, v) in s.string_data.unwrap_or_default() {
                env.insert(k, v);
            }
        }
    }
    for e in container.env.iter().flatten() {
        if let Some(v) = &e.value {
            env.insert(e.name.clone(), v.clone());
        }
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(1).max(1);
    let start = std::time::Instant::now();
    let pods = (0..completions).map(|index| {
        let mut cmd = Command::new(program);
        cmd.args(&args).envs(&env).kill_on_drop(true);
        if indexed {
            cmd.env("JOB_COMPLETION_INDEX", index.to_string());
        }
        // Pods have a network namespace each; processes on one host share one: a port of their own.
        if env.contains_key(ficus_operator::backfill::env::METRICS_ADDR) {
            cmd.env(ficus_operator::backfill::env::METRICS_ADDR, "127.0.0.1:0");
        }
        let log = log_dir.join(format!("job-{name}-{index}.log"));
        let name = name.clone();
        async move {
            let Ok(out) = std::fs::File::create(&log) else {
                return -1;
            };
            let Ok(err) = out.try_clone() else { return -1 };
            cmd.stdout(out).stderr(err);
            let code = match cmd.status().await {
                Ok(status) => status.code().unwrap_or(-1),
                Err(e) => {
                    tracing::warn!(%e, "job process could not start");
                    -1
                }
            };
            if code != 0 {
                // What `kubectl logs` would show of a failed pod: the reason is in its last lines.
                let tail = ficus_testkit::log_tail(&log, 30);
                println!("job {name}-{index} exited with {code}; its last lines:\n{tail}");
            }
            code
        }
    });
    let exit_codes = futures::future::join_all(pods).await;
    // Written as the Job controller would, by the same helper the operator tests use (it also
    // lists an Indexed Job's completed indexes, which the API server checks).
    let message = format!("processes exited with {exit_codes:?}");
    let outcome = if exit_codes.iter().any(|c| *c != 0) {
        Err(message.as_str())
    } else {
        Ok(())
    };
    if let Err(e) = crate::operator::finish_job(client, namespace, &name, outcome).await {
        tracing::warn!(job = %name, %e, "job status could not be written");
    }
    JobRun {
        name,
        args,
        elapsed: start.elapsed(),
        exit_codes,
    }
}
