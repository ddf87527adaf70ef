//! Running the Ficus operator against the test control plane, and waiting on what it does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ficus_operator::crd::Migration;
use ficus_operator::run::{Config, LeaderConfig};
use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::task::JoinHandle;

use ficus_testkit::{ControlPlane, HarnessError, repo_root};

/// A Migration named `name` with `spec`, as a manifest would give it.
pub fn migration(name: &str, spec: serde_json::Value) -> Migration {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ficus.dev/v1alpha1",
        "kind": "Migration",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("a valid Migration")
}

/// The Degraded condition as (status, reason, message), once the operator has set it.
pub fn degraded(m: &Migration) -> Option<(String, String, String)> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Applies `crds/` with kubectl once per control plane and waits until it is established.
pub fn install_crds(cp: &ControlPlane) -> Result<(), HarnessError> {
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|s| s == cp.server_url()) {
        return Ok(());
    }
    let crds = repo_root().join("crds");
    let crds = crds.to_string_lossy();
    cp.kubectl_ok(&["apply", "-f", &crds])?;
    cp.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/migrations.ficus.dev",
    ])?;
    done.push(cp.server_url().to_string());
    Ok(())
}

/// Operators of this test binary whose `run()` returned an error, by the namespace they
/// watched (`None`: every namespace), so [`wait_for`] fails at once with that error instead of
/// timing out on a Migration nobody reconciles.
static STOPPED: Mutex<Vec<(Option<String>, String)>> = Mutex::new(Vec::new());

fn stopped_in(namespace: Option<&str>) -> Option<String> {
    STOPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(ns, _)| ns.is_none() || ns.as_deref() == namespace)
        .map(|(_, e)| e.clone())
}

/// An operator running in this process; dropping or [`Operator::kill`]ing it stops every
/// reconcile at once, like a killed pod.
pub struct Operator {
    task: Option<JoinHandle<()>>,
    pub identity: String,
    /// Why `run()` returned early, if it did.
    stopped: Arc<Mutex<Option<String>>>,
}

impl Operator {
    /// Watches only `namespace`; with `lease` set, takes part in leader election for it.
    pub fn start(
        client: Client,
        namespace: &str,
        identity: &str,
        lease: Option<LeaderConfig>,
    ) -> Self {
        let config = Config {
            namespace: Some(namespace.into()),
            identity: identity.into(),
            leader: lease,
            http_addr: None,
            webhook_token: None,
            aws: Default::default(),
            policy: None,
        };
        Self::spawn(client, config, None)
    }

    /// With a full configuration, e.g. a webhook token. `config.http_addr` is ignored: the
    /// HTTP endpoint, if any, serves on `listener`, bound by the caller beforehand so no other
    /// process can take its port in between (see [`Evidence`](crate::evidence::Evidence)).
    pub fn start_with(
        client: Client,
        config: Config,
        listener: Option<std::net::TcpListener>,
    ) -> Result<Self, std::io::Error> {
        let listener = listener
            .map(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .transpose()?;
        Ok(Self::spawn(client, config, listener))
    }

    fn spawn(client: Client, config: Config, listener: Option<tokio::net::TcpListener>) -> Self {
        let identity = config.identity.clone();
        let namespace = config.namespace.clone();
        let stopped = Arc::new(Mutex::new(None));
        let record = stopped.clone();
        let config_identity = identity.clone();
        let task = tokio::spawn(async move {
            let run = ficus_operator::run::run_on(client, config, listener, std::future::pending());
            if let Err(e) = run.await {
                tracing::error!(error = %e, "operator stopped");
                let why = format!("operator {} stopped: {e}", config_identity);
                STOPPED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((namespace, why.clone()));
                *record.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
        });
        Self {
            task: Some(task),
            identity,
            stopped,
        }
    }

    /// Panics if the operator's `run()` returned an error: a test waiting on the operator
    /// should fail with that error at once, not with a timeout a minute later.
    pub fn assert_running(&self) {
        if let Some(e) = self
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            panic!("{e}");
        }
    }

    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Leader election with a lease short enough for a test to wait out a failover (~15 s), and
/// long enough that a leader on a loaded 2-core machine renews in time: the leader renews every
/// `duration - grace` = 10 s and has 5 s to get the renewal through before a standby may take
/// the lease (3 s with 1 s of grace lost the lease under load and let two replicas act).
pub fn short_lease(namespace: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: namespace.into(),
        lease_name: "ficus-operator-leader".into(),
        duration_secs: 15,
        grace_secs: 5,
    }
}

/// Polls a Migration until `done` holds, returning it; fails with the last seen status, or at
/// once when an operator of this binary watching its namespace stopped with an error.
pub async fn wait_for(
    api: &Api<Migration>,
    name: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Migration) -> bool,
) -> Migration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        if let Ok(Some(m)) = api.get_opt(name).await {
            if done(&m) {
                return m;
            }
            if let Some(e) = stopped_in(m.metadata.namespace.as_deref()) {
                panic!("{e}; waiting for {what}; last status: {:#?}", m.status);
            }
            last = Some(m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}; last status: {:#?}",
        last.and_then(|m| m.status)
    );
}

/// The traffic percent of every Split step `m` entered, in order (from `status.history`).
pub fn split_steps(m: &Migration) -> Vec<i32> {
    m.status
        .iter()
        .flat_map(|s| &s.history)
        .filter(|t| t.to == ficus_operator::crd::Phase::Split)
        .map(|t| t.traffic_percent)
        .collect()
}

/// The shared control plane with the CRDs installed, an admin client and a fresh namespace.
/// `None` (after a SKIP line) when the control plane is missing outside CI; under CI a missing
/// component panics.
pub async fn test_namespace(
    prefix: &str,
) -> anyhow::Result<Option<(&'static ControlPlane, Client, String)>> {
    ficus_testkit::init();
    let cp = match ControlPlane::shared() {
        Ok(cp) => cp,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return Ok(None);
        }
    };
    install_crds(cp)?;
    let client = cp.client().await?;
    let ns = ficus_testkit::unique_namespace(prefix);
    ficus_testkit::create_namespace(&client, &ns).await?;
    Ok(Some((cp, client, ns)))
}

/// Waits until Job `name` exists in `ns` (the operator creates it) and returns it.
pub async fn wait_for_job(client: &Client, ns: &str, name: &str, timeout: Duration) -> Job {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        if let Ok(Some(job)) = jobs.get_opt(name).await {
            return job;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for Job {ns}/{name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends Job `name` the way the Job controller would (there is no controller-manager here):
/// `Ok(())` completes it, `Err(message)` fails it with that message.
pub async fn finish_job(
    client: &Client,
    ns: &str,
    name: &str,
    outcome: Result<(), &str>,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now().to_string();
    let condition = |type_: &str, reason: &str, message: &str| {
        serde_json::json!({
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now,
        })
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let spec = jobs.get(name).await?.spec.unwrap_or_default();
    let completions = spec.completions.unwrap_or(1);
    // The API server checks the status against the spec: an Indexed Job lists its indexes.
    let indexes = (spec.completion_mode.as_deref() == Some("Indexed"))
        .then(|| format!("0-{}", completions - 1).replace("0-0", "0"));
    let status = match outcome {
        Ok(()) => serde_json::json!({
            "startTime": now,
            "completionTime": now,
            "succeeded": completions,
            "completedIndexes": indexes,
            "conditions": [
                condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ],
        }),
        Err(message) => serde_json::json!({
            "startTime": now,
            "failed": 1,
            "conditions": [
                condition("FailureTarget", "PodFailurePolicy", message),
                condition("Failed", "PodFailurePolicy", message),
            ],
        }),
    };
    jobs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}
