//! The reconciler: gather observations, call [`machine::decide`], apply the decision.
//!
//! Ordering matters for safety. The status is written first with the object's resourceVersion
//! (a decision made on a stale cache is refused by the API server instead of being applied),
//! then flags, workloads and Jobs converge towards what the status says. Everything here is
//! idempotent: a crash at any point is repaired by the next reconcile.
//!
//! Over 600 lines: observe, apply and the finalizer, the reconciler's I/O, in the order it runs them.

use crate::policy::Policy;
use crate::reason::{Reason, Reasoned};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::analysis::{AlertPoll, Outcome};
use crate::backfill;
use crate::crd::Verdict;
use crate::crd::{Flags, Migration, MigrationStatus, Side, Workload, annotations};
use crate::flags::{ConfigMapStore, FlagStoreError, SsmStore, Store as FlagStore};
use crate::machine::{
    self, Commands, Decision, EventType, JobState, Note, Observations, Problem, WorkloadState,
};
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;
use crate::workloads::{DeploymentDriver, EcsDriver, Workloads};
use ficus_flags::FlagRead;

pub const FINALIZER: &str = "ficus.dev/safe-state";
const FIELD_MANAGER: &str = "ficus-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Migration has no namespace")]
    NoNamespace,
    #[error("writing Migration {what}: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("restoring the safe flag state before deletion: {0}")]
    Cleanup(String),
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Reasoned for Error {
    fn reason(&self) -> Reason {
        match self {
            Error::NoNamespace => Reason::NoNamespace,
            Error::Write { .. } => Reason::StatusWriteFailed,
            Error::Cleanup(_) => Reason::CleanupFailed,
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.reason(),
                _ => Reason::FinalizerFailed,
            },
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub aws: crate::aws::AwsConfigs,
    pub prometheus: crate::analysis::Clients,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub store: Option<Store<Migration>>,
    /// What Migrations may make the operator do; None: anything.
    pub policy: Option<Arc<Policy>>,
    /// The resourceVersions the operator's own writes returned ([`crate::own_writes`]).
    pub own_writes: OwnWrites,
}

/// Reconciles running at once. Each holds its Migration's observations and API answers; with
/// thousands of Migrations created together, an unbounded number of them is what sets the
/// operator's peak memory, not its cache.
const MAX_CONCURRENT_RECONCILES: u16 = 16;

/// How long a reconcile that found the cache behind waits at most: the watch event of the
/// write it waits for normally queues the next run well before.
const CACHE_CATCH_UP: Duration = Duration::from_secs(1);

/// Runs the controller until the returned future is dropped (shutdown or lost leadership).
pub async fn run_controller(
    client: Client,
    namespace: Option<&str>,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    aws: crate::aws::AwsDefaults,
    policy: Option<Arc<Policy>>,
) {
    let (migrations, jobs): (Api<Migration>, Api<Job>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // The cache holds every Migration without its managedFields (which manager set which
    // field: a large share of each object, never read here; an update that sends them empty
    // leaves the server's as they are).
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(migrations, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|m: &mut Migration| m.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(stream, reader)
        .with_config(ControllerConfig::default().concurrency(MAX_CONCURRENT_RECONCILES))
        .owns(
            jobs,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=ficus"),
        );
    let ctx = Arc::new(Context {
        aws: crate::aws::AwsConfigs::new(aws),
        prometheus: Default::default(),
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        store: Some(controller.store()),
        policy,
        own_writes: OwnWrites::default(),
    });
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(migration = %obj, "reconciled"),
                Err(err) => debug!(error = %err, "reconcile failed"),
            }
        })
        .await;
}

pub async fn reconcile(mig: Arc<Migration>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ctx.own_writes.behind(&mig) {
        ctx.metrics.deferred.inc();
        debug!(migration = %mig.name_any(), "the cache is behind this operator's last write; waiting for it");
        return Ok(Action::requeue(CACHE_CATCH_UP));
    }
    ctx.metrics
        .reconciling(mig.status.as_ref().map(|s| s.phase).unwrap_or_default());
    let ns = mig.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Migration> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, mig, |event| async {
        match event {
            FinalizerEvent::Apply(m) => apply(&m, &ctx).await,
            FinalizerEvent::Cleanup(m) => cleanup(&m, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if let Some(store) = &ctx.store {
        ctx.metrics.set_phases(
            store
                .state()
                .iter()
                .map(|m| m.status.as_ref().map(|s| s.phase).unwrap_or_default()),
        );
    }
    result
}

pub fn error_policy(mig: Arc<Migration>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(migration = %mig.name_any(), error = %err, "reconcile failed; retrying in 5s");
    ctx.metrics.error(err.reason().as_str());
    Action::requeue(Duration::from_secs(5))
}

/// The parts of the world a Migration touches.
struct Targets<'a> {
    mig: &'a Migration,
    ns: String,
    stores: Vec<FlagStore>,
    workloads: Workloads,
}

impl<'a> Targets<'a> {
    async fn new(mig: &'a Migration, ctx: &Context) -> Result<Self, Error> {
        let ns = mig.namespace().ok_or(Error::NoNamespace)?;
        let name = mig.name_any();
        let spec = &mig.spec;
        let uses_ecs = [&spec.legacy, &spec.candidate]
            .iter()
            .any(|w| w.as_ref().is_some_and(|w| w.ecs.is_some()));
        let aws = if spec.flags.ssm.is_some() || uses_ecs {
            Some(ctx.aws.config(spec.aws.as_ref()).await)
        } else {
            None
        };
        let mut stores = Vec::new();
        if let Some(cm) = &spec.flags.config_map {
            stores.push(FlagStore::ConfigMap(Box::new(ConfigMapStore::new(
                ctx.client.clone(),
                &ns,
                &cm.name,
                &name,
            ))));
        }
        if let (Some(ssm), Some(aws)) = (&spec.flags.ssm, &aws) {
            stores.push(FlagStore::Ssm(SsmStore::new(aws, ssm)));
        }
        let workloads = Workloads {
            deployments: DeploymentDriver::new(ctx.client.clone(), &ns),
            ecs: aws.as_ref().filter(|_| uses_ecs).map(EcsDriver::new),
        };
        Ok(Self {
            mig,
            ns,
            stores,
            workloads,
        })
    }

    /// The document every store holds (see [`FlagRead::combine`] when they disagree).
    async fn read_flags(&self) -> Result<FlagRead, FlagStoreError> {
        let mut docs = Vec::with_capacity(self.stores.len());
        for store in &self.stores {
            docs.push(store.read().await?);
        }
        Ok(FlagRead::combine(docs))
    }

    async fn write_flags(&self, flags: &Flags) -> Result<(), FlagStoreError> {
        for store in &self.stores {
            store.write(flags).await?;
        }
        Ok(())
    }

    fn workload(&self, side: Side) -> Option<&Workload> {
        match side {
            Side::Legacy => self.mig.spec.legacy.as_ref(),
            Side::New => self.mig.spec.candidate.as_ref(),
        }
    }
}

fn commands(mig: &Migration) -> Commands {
    let has = |k: &str| mig.annotations().contains_key(k);
    Commands {
        promote: has(annotations::PROMOTE),
        abort: has(annotations::ABORT),
        retry: has(annotations::RETRY),
    }
}

/// Everything `decide` needs. Never fails: what cannot be observed becomes a [`Problem`].
async fn observe(
    t: &Targets<'_>,
    status: &MigrationStatus,
    ctx: &Context,
    now: Timestamp,
    analysis: &mut Duration,
) -> (Observations, bool) {
    let mut obs = Observations {
        generation: t.mig.metadata.generation.unwrap_or(0),
        commands: commands(t.mig),
        ..Default::default()
    };
    let flags_readable = match t.read_flags().await {
        Ok(flags) => {
            obs.flags = flags;
            true
        }
        Err(e) => {
            obs.problems.push(Problem::from_error(&e));
            false
        }
    };
    for side in [Side::Legacy, Side::New] {
        let Some(workload) = t.workload(side) else {
            continue;
        };
        let field = if side == Side::Legacy {
            "legacy"
        } else {
            "candidate"
        };
        match t.workloads.observe(field, workload).await {
            Ok(state) => *slot(&mut obs, side) = Some(state),
            Err(e) => obs.problems.push(Problem::from_error(&e)),
        }
    }
    for (job, slot) in [
        (&status.backfill_job, &mut obs.backfill),
        (&status.validate_job, &mut obs.validate),
        (&status.rollback_job, &mut obs.rollback_job),
    ] {
        if let Some(job) = job {
            *slot = Some(
                match backfill::observe(ctx.client.clone(), &t.ns, job).await {
                    Ok(state) => state,
                    Err(e) => {
                        obs.problems.push(Problem::from_error(&e));
                        JobState::Running
                    }
                },
            );
        }
    }
    let analysing = Instant::now();
    analyse(t, status, ctx, now, &mut obs).await;
    *analysis += analysing.elapsed();
    (obs, flags_readable)
}

/// Gates and alerts: a Preflight check that Prometheus answers and every query parses, then one
/// batch per analysis interval. Pushed alerts (webhook) are read from the annotation.
async fn analyse(
    t: &Targets<'_>,
    status: &MigrationStatus,
    ctx: &Context,
    now: Timestamp,
    obs: &mut Observations,
) {
    let spec = &t.mig.spec;
    let pushed = t
        .mig
        .annotations()
        .get(annotations::FIRING_ALERTS)
        .map(String::as_str)
        .unwrap_or("");
    obs.firing_alerts = pushed
        .split(',')
        .map(str::trim)
        // An empty name (from an empty annotation) is never an alert, whatever onAlerts says.
        .filter(|a| !a.is_empty() && spec.rollback.on_alerts.iter().any(|n| n == a))
        .map(String::from)
        .collect();

    let Some((analysis, url)) = spec
        .analysis
        .as_ref()
        .and_then(|a| Some((a, &a.prometheus.as_ref()?.url)))
    else {
        return;
    };
    let interval = analysis.interval.get();
    let timeout = (interval / 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let prometheus = match ctx.prometheus.get(url, timeout) {
        Ok(p) => p,
        Err(message) => {
            return obs
                .problems
                .push(Problem::new(Reason::InvalidPrometheusUrl, message));
        }
    };
    if status.phase == crate::crd::Phase::Preflight {
        // Reachability first, from the typed outcome of one query: gate answers say nothing
        // about the server when it does not answer.
        if let Outcome::Unreachable(message) = prometheus.query("vector(1)").await {
            obs.problems.push(Problem::new(
                Reason::PrometheusUnreachable,
                format!("{url}: {message}"),
            ));
            return;
        }
        if let Some(query) = &analysis.applied_generation_query
            && let Outcome::Invalid(message) = prometheus.query(query).await
        {
            obs.problems.push(invalid_generation_query(&message));
        }
        // Every query is checked here, also those of gates skipped at 0 % (cohorts).
        let results = prometheus.evaluate(&analysis.gates, 50).await;
        obs.problems.extend(
            results
                .iter()
                .filter(|r| r.verdict == Verdict::Error)
                .map(|r| {
                    Problem::new(
                        Reason::InvalidQuery,
                        format!(
                            "gate {}: {}",
                            r.name,
                            r.message.as_deref().unwrap_or_default()
                        ),
                    )
                }),
        );
        return;
    }
    if machine::next_analysis_in(spec, status, now) != Some(Duration::ZERO) {
        return;
    }
    let selector = spec.alert_selector();
    let reported = async {
        match &analysis.applied_generation_query {
            Some(query) => Some(prometheus.query(query).await),
            None => None,
        }
    };
    let (gates, alerts, reported) = futures::join!(
        prometheus.evaluate(&analysis.gates, status.traffic_percent),
        prometheus.firing(&spec.rollback.on_alerts, &selector, &t.ns),
        reported
    );
    // The lowest instance counts; no answer (no instance scraped yet) confirms nothing.
    obs.reported_generation = match reported {
        Some(Outcome::Values(values)) => values
            .into_iter()
            .filter(|v| v.is_finite())
            .map(|v| v as i64)
            .min(),
        Some(Outcome::Invalid(message)) => {
            obs.problems.push(invalid_generation_query(&message));
            None
        }
        Some(Outcome::Unreachable(_)) | None => None,
    };
    // Recorded even without gates: its time schedules the next alert poll.
    obs.analysis = Some(gates);
    match alerts {
        AlertPoll::Firing(firing) => obs.firing_alerts.extend(firing),
        // Missing evidence: no rollback on it, and no promotion either (the machine counts it
        // as an inconclusive evaluation).
        AlertPoll::Unreachable(message) => {
            debug!(migration = %t.mig.name_any(), error = %message, "alert poll failed");
            obs.alerts_unanswered = Some(format!("Prometheus unreachable: {message}"));
        }
        AlertPoll::Invalid(message) => {
            obs.alerts_unanswered = Some(message.clone());
            obs.problems
                .push(Problem::new(Reason::InvalidAlertSelector, message));
        }
    }
    obs.firing_alerts.sort();
    obs.firing_alerts.dedup();
}

/// Prometheus rejected `analysis.appliedGenerationQuery`: a spec problem, shown as Degraded.
fn invalid_generation_query(message: &str) -> Problem {
    Problem::new(
        Reason::InvalidQuery,
        format!("analysis.appliedGenerationQuery: {message}"),
    )
}

fn slot(obs: &mut Observations, side: Side) -> &mut Option<WorkloadState> {
    match side {
        Side::Legacy => &mut obs.legacy,
        Side::New => &mut obs.candidate,
    }
}

/// What the operator's policy refuses in `mig`, as the Degraded problem; None when allowed.
fn refused(mig: &Migration, ctx: &Context) -> Option<Problem> {
    let policy = ctx.policy.as_ref()?;
    let refusals = policy.check(&mig.namespace().unwrap_or_default(), &mig.spec);
    if refusals.is_empty() {
        return None;
    }
    let message: Vec<String> = refusals.iter().map(ToString::to_string).collect();
    Some(Problem::new(Reason::PolicyRefused, message.join("; ")))
}

/// Decides and applies, recording the time it took (see [`Metrics::reconciled`]).
async fn apply(mig: &Migration, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let mut analysis = Duration::ZERO;
    let result = decide_and_apply(mig, ctx, &mut analysis).await;
    ctx.metrics.reconciled(started.elapsed(), analysis);
    result
}

async fn decide_and_apply(
    mig: &Migration,
    ctx: &Context,
    analysis: &mut Duration,
) -> Result<Action, Error> {
    // Before anything is observed: observing already calls Prometheus, SSM and ECS.
    if let Some(problem) = refused(mig, ctx) {
        warn!(migration = %mig.name_any(), "{}", problem.message);
        let current = mig.status.clone().unwrap_or_default();
        let decision = machine::refuse(&current, &[problem], Timestamp::now());
        write_status(mig, &current, &decision.status, ctx).await?;
        publish(mig, &decision.events, ctx).await;
        return Ok(Action::requeue(decision.requeue_after));
    }
    let t = Targets::new(mig, ctx).await?;
    let current = mig.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let (mut obs, flags_readable) = observe(&t, &current, ctx, now, analysis).await;
    // A write refused in an earlier reconcile stands until a reconcile's writes all succeed.
    // Without this the next reconcile (which observes no problem) would clear Degraded, be
    // refused again and set it: two status writes per round, each waking the next round.
    let carried = carried_problem(&current, &obs.problems);
    obs.problems.extend(carried.clone());
    let mut decision = machine::decide(&mig.spec, &current, &obs, now);

    // A promote is removed before it takes effect: losing one to a crash is safe, applying it
    // twice would skip a step. Abort and retry are idempotent and removed afterwards.
    let mut latest = mig.clone();
    if decision.consumed.contains(&annotations::PROMOTE) {
        latest = remove_annotations(mig, &[annotations::PROMOTE], ctx).await?;
    }

    let Some(mut latest) = write_status(&latest, &current, &decision.status, ctx).await? else {
        return Ok(Action::requeue(Duration::from_millis(500)));
    };

    // Converge the world on the recorded decision; a failure is a Problem, decided again so the
    // status shows it (Degraded) and progression stops until it is fixed.
    let converged = converge(&t, &obs, &decision, flags_readable, ctx).await;
    // Decided again either way when the problems change: with the new refusal, or without the
    // carried one now that every write went through.
    obs.problems.retain(|p| Some(p) != carried.as_ref());
    if let Err(problem) = &converged {
        warn!(migration = %mig.name_any(), reason = %problem.reason, "{}", problem.message);
        obs.problems.push(problem.clone());
    }
    if converged.is_err() || carried.is_some() {
        obs.flags = if flags_readable {
            t.read_flags().await.unwrap_or(obs.flags.clone())
        } else {
            obs.flags.clone()
        };
        let recorded = decision.status.clone();
        let retried = machine::decide(
            &mig.spec,
            &recorded,
            &Observations {
                commands: Commands::default(),
                ..obs
            },
            now,
        );
        decision.events.extend(retried.events);
        decision.requeue_after = retried.requeue_after;
        if let Some(updated) = write_status(&latest, &recorded, &retried.status, ctx).await? {
            latest = updated;
        }
    }

    let after: Vec<&str> = decision
        .consumed
        .iter()
        .copied()
        .filter(|a| *a != annotations::PROMOTE)
        .collect();
    if !after.is_empty() {
        remove_annotations(&latest, &after, ctx).await?;
    }
    publish(mig, &decision.events, ctx).await;
    Ok(Action::requeue(
        decision.requeue_after + jitter(mig, decision.requeue_after),
    ))
}

/// The problem the status shows as Degraded, unless this reconcile observed it again itself.
fn carried_problem(status: &MigrationStatus, observed: &[Problem]) -> Option<Problem> {
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == machine::DEGRADED && c.status == "True")?;
    // A reason this operator does not know (written by another version) is not carried.
    let problem = Problem::new(Reason::parse(&degraded.reason)?, degraded.message.clone());
    (!observed.iter().any(|p| p.reason == problem.reason)).then_some(problem)
}

async fn converge(
    t: &Targets<'_>,
    obs: &Observations,
    decision: &Decision,
    flags_readable: bool,
    ctx: &Context,
) -> Result<(), Problem> {
    if let Some(flags) = &decision.flags
        && flags_readable
        && obs.flags.doc() != Some(flags)
    {
        t.write_flags(flags)
            .await
            .map_err(|e| Problem::from_error(&e))?;
        info!(migration = %t.mig.name_any(), generation = flags.generation, values = ?flags.values, "flags written");
    }
    for (side, replicas) in &decision.scale {
        if let Some(workload) = t.workload(*side) {
            t.workloads
                .scale(workload, *replicas)
                .await
                .map_err(|e| Problem::from_error(&e))?;
            info!(migration = %t.mig.name_any(), workload = %workload.describe(), replicas, "scaled");
        }
    }
    let status = &decision.status;
    let runs_as = ctx
        .policy
        .as_ref()
        .and_then(|p| p.job_service_account.as_deref());
    if let (Some(name), Some(spec)) = (&decision.create_backfill_job, &t.mig.spec.backfill) {
        backfill::create(ctx.client.clone(), t.mig, status, spec, name, runs_as)
            .await
            .map_err(|e| Problem::from_error(&e))?;
    }
    if let (Some(name), Some(spec)) = (&decision.create_validate_job, &t.mig.spec.backfill)
        && let Some(args) = &spec.validate_args
    {
        backfill::create_validate(ctx.client.clone(), t.mig, status, spec, args, name, runs_as)
            .await
            .map_err(|e| Problem::from_error(&e))?;
    }
    if let (Some(name), Some(spec)) = (
        &decision.create_rollback_job,
        &t.mig.spec.cutover.rollback_job,
    ) {
        backfill::create_rollback(ctx.client.clone(), t.mig, status, spec, name, runs_as)
            .await
            .map_err(|e| Problem::from_error(&e))?;
    }
    Ok(())
}

/// Replaces the status when it changed. `None` when the object moved on since it was read
/// (409): the decision was made on stale data and is dropped; a fresh reconcile follows.
async fn write_status(
    mig: &Migration,
    current: &MigrationStatus,
    next: &MigrationStatus,
    ctx: &Context,
) -> Result<Option<Migration>, Error> {
    if current == next {
        return Ok(Some(mig.clone()));
    }
    let api: Api<Migration> =
        Api::namespaced(ctx.client.clone(), &mig.namespace().unwrap_or_default());
    let mut obj = mig.clone();
    obj.status = Some(next.clone());
    match api
        .replace_status(
            &mig.name_any(),
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &obj,
        )
        .await
    {
        Ok(updated) => {
            ctx.own_writes.record(&updated);
            Ok(Some(updated))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            ctx.metrics.status_conflicts.inc();
            debug!(migration = %mig.name_any(), "status changed since read; deciding again");
            Ok(None)
        }
        Err(source) => Err(Error::Write {
            what: "status",
            source,
        }),
    }
}

async fn remove_annotations(
    mig: &Migration,
    keys: &[&str],
    ctx: &Context,
) -> Result<Migration, Error> {
    let api: Api<Migration> =
        Api::namespaced(ctx.client.clone(), &mig.namespace().unwrap_or_default());
    let nulls: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| (k.to_string(), serde_json::Value::Null))
        .collect();
    let patch = json!({ "metadata": { "annotations": nulls } });
    let updated = api
        .patch(
            &mig.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| Error::Write {
            what: "annotations",
            source,
        })?;
    ctx.own_writes.record(&updated);
    Ok(updated)
}

async fn publish(mig: &Migration, notes: &[Note], ctx: &Context) {
    let reference = mig.object_ref(&());
    for note in notes {
        let event = KubeEvent {
            type_: match note.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: note.reason.to_string(),
            note: Some(truncate(&note.message, 1000)),
            action: note.action.clone(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(migration = %mig.name_any(), error = %e, "could not publish event");
        }
    }
}

/// Up to 10 % of the wait, fixed per Migration: many Migrations on one interval spread their
/// queries instead of hitting Prometheus at the same instant.
fn jitter(mig: &Migration, wait: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mig.metadata.uid.hash(&mut h);
    let tenth = wait.as_millis() as u64 / 10;
    Duration::from_millis(if tenth == 0 { 0 } else { h.finish() % tenth })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Deletion: put the flags (and a scaled-down legacy workload) back into the safe state before
/// the finalizer lets the object go. A store that cannot be written keeps the object: removing
/// the finalizer by hand is the user's explicit choice to leave the flags as they are.
async fn cleanup(mig: &Migration, ctx: &Context) -> Result<Action, Error> {
    // A refused Migration was never acted on (or the policy now forbids touching what it
    // named): let it go without calling anything.
    if let Some(problem) = refused(mig, ctx) {
        warn!(migration = %mig.name_any(), "deleted without restoring flags: {}", problem.message);
        return Ok(Action::await_change());
    }
    let t = Targets::new(mig, ctx).await?;
    let status = mig.status.clone().unwrap_or_default();
    let safe = machine::deletion_flags(&mig.spec, &status);
    // A rollback Job still copying the writes made in CutOver back to legacy: letting the
    // object go now would leave legacy primary without them.
    if let Some(job) = &status.rollback_job
        && status.phase == crate::crd::Phase::RollingBack
        && backfill::observe(ctx.client.clone(), &t.ns, job).await.ok() != Some(JobState::Succeeded)
    {
        let message = format!(
            "deletion waits for the rollback Job {job}: it copies the writes made in CutOver back to the legacy store, and deleting now would lose them. Remove the finalizer {FINALIZER} by hand to accept that"
        );
        publish(
            mig,
            &[Note {
                type_: EventType::Warning,
                reason: Reason::DeletionWaits,
                message: message.clone(),
                action: "Finalize".into(),
            }],
            ctx,
        )
        .await;
        return Err(Error::Cleanup(message));
    }
    let current = t
        .read_flags()
        .await
        .map_err(|e| Error::Cleanup(e.to_string()))?;
    // An empty store is already safe: services without a document run legacy only.
    let next = machine::next_document(&current, status.applied_flags, safe);
    if current != FlagRead::Absent && current.doc() != Some(&next) {
        t.write_flags(&next)
            .await
            .map_err(|e| Error::Cleanup(e.to_string()))?;
    }
    if status.phase != crate::crd::Phase::Completed
        && let (Some(before), Some(legacy)) = (status.legacy_replicas_before, &mig.spec.legacy)
        && let Ok(state) = t.workloads.observe("legacy", legacy).await
        && state.replicas < before
    {
        t.workloads
            .scale(legacy, before)
            .await
            .map_err(|e| Error::Cleanup(e.to_string()))?;
    }
    let note = Note {
        type_: EventType::Normal,
        reason: Reason::SafeStateRestored,
        message: format!(
            "deleting: flags left at write_primary={:?}, read_split_percent={}",
            safe.write_primary, safe.read_split_percent
        ),
        action: "Finalize".into(),
    };
    publish(mig, &[note], ctx).await;
    ctx.own_writes.forget(mig);
    info!(migration = %mig.name_any(), "safe state restored before deletion");
    Ok(Action::await_change())
}
