//! Table tests for [`decide`]: a row per transition, a scenario per fault.
//!
//! Every decision made here goes through [`step`], which also checks the invariants that hold
//! for *every* decision (flag generations, traffic bounds, consumed commands, ...), and every
//! reconcile of a [`Simulation`] also checks that an operator restarted from the serialized
//! status would have decided exactly the same.
//!
//! Over 600 lines: the builders and runners every scenario file uses.

#![allow(clippy::type_complexity)] // table rows are tuples, one column per asserted field

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::crd::{
    AnalysisSpec, BackfillSpec, Cohorts, ConfigMapStore, CutoverSpec, DualWrite, FlagStores,
    FlagValues, Gate, MigrationSpec, NoDataPolicy, Percent, PrometheusSpec, RollbackSpec,
    ShadowSpec, Side, Workload,
};
use crate::reason::Reason;
use Phase::*;
use ficus_flags::{FlagRead, ShadowCompare};

// The scenarios, one file per concern; the builders and runners below are theirs.
mod backfill;
mod evidence;
mod gates;
mod pause;
mod problems;
mod progression;
mod requeue;
mod restart;
mod retry_and_promote;
mod rollback;
mod spec_changes;

// ---------------------------------------------------------------------------------------------
// Clock

/// The fixed start of every scenario.
fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

/// `t0 + secs`.
fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

fn time(secs: i64) -> Option<Timestamp> {
    Some(at(secs))
}

const SHORT: Duration = Duration::from_secs(1);

/// A spec duration, Go style.
fn go(text: &str) -> crate::crd::SpecDuration {
    text.parse().expect("a valid duration")
}

// ---------------------------------------------------------------------------------------------
// Spec builders

const ALERT: &str = "ChatErrorBudgetBurn";

/// Service "chat", steps [10, 25, 50, 100], bakeTime 1m, shadow 2m, no gates, no backfill.
fn spec() -> MigrationSpec {
    MigrationSpec {
        service: "chat".into(),
        legacy: None,
        candidate: None,
        flags: FlagStores {
            config_map: Some(ConfigMapStore {
                name: "chat-migration-flags".into(),
            }),
            ssm: None,
        },
        aws: None,
        shadow: ShadowSpec {
            duration: go("2m"),
            ..ShadowSpec::default()
        },
        backfill: None,
        steps: vec![10, 25, 50, 100],
        bake_time: go("1m"),
        analysis: None,
        rollback: RollbackSpec {
            automatic: true,
            on_alerts: vec![ALERT.into()],
            alert_labels: None,
        },
        cutover: CutoverSpec::default(),
        paused: false,
    }
}

/// Two gates, failureLimit 2, inconclusiveLimit 3.
fn analysis() -> AnalysisSpec {
    let gate = |name: &str, query: &str, max: f64| Gate {
        name: name.into(),
        query: query.into(),
        max: Some(max),
        min: None,
        on_no_data: NoDataPolicy::Inconclusive,
        cohorts: Default::default(),
        samples_query: None,
        min_samples: None,
        fail_for: None,
    };
    AnalysisSpec {
        prometheus: Some(PrometheusSpec {
            url: "http://prometheus:9090".into(),
        }),
        interval: go("15s"),
        failure_limit: 2,
        inconclusive_limit: 3,
        warmup: None,
        gates: vec![
            gate(
                "error-rate",
                "sum(rate(chat_requests_total{cohort=\"new\",code=~\"5..\"}[1m]))",
                0.01,
            ),
            gate(
                "p99-latency",
                "histogram_quantile(0.99, chat_request_duration_seconds_bucket)",
                0.5,
            ),
        ],
        applied_generation_query: None,
    }
}

fn gated() -> MigrationSpec {
    MigrationSpec {
        analysis: Some(analysis()),
        ..spec()
    }
}

fn with_backfill(spec: MigrationSpec) -> MigrationSpec {
    MigrationSpec {
        backfill: Some(BackfillSpec {
            image: "chat:1.0".into(),
            args: vec!["backfill".into()],
            parallelism: 4,
            secret_name: None,
            validate_args: None,
        }),
        ..spec
    }
}

fn with_validation(spec: MigrationSpec) -> MigrationSpec {
    let mut spec = with_backfill(spec);
    if let Some(b) = spec.backfill.as_mut() {
        b.validate_args = Some(vec![
            "validate".into(),
            "--max-drift".into(),
            "0.001".into(),
        ]);
    }
    spec
}

fn with_workloads(spec: MigrationSpec) -> MigrationSpec {
    MigrationSpec {
        legacy: Some(Workload {
            deployment: Some("chat-legacy".into()),
            ecs: None,
            require_ready: false,
        }),
        candidate: Some(Workload {
            deployment: Some("chat-new".into()),
            ecs: None,
            require_ready: false,
        }),
        ..spec
    }
}

fn paused(spec: MigrationSpec) -> MigrationSpec {
    MigrationSpec {
        paused: true,
        ..spec
    }
}

fn complete_after(spec: MigrationSpec, after: &str) -> MigrationSpec {
    MigrationSpec {
        cutover: CutoverSpec {
            complete_after: Some(go(after)),
            ..spec.cutover
        },
        ..spec
    }
}

// ---------------------------------------------------------------------------------------------
// Flag documents (docs/flag-contract.md)

mod fl {
    use crate::crd::{DualWrite, FlagValues, Percent, ShadowCompare, Side};

    /// Shadow reads compare what was written since t0, when every instance dual-writes (as in
    /// [`super::status_in`]); phases without shadow reads compare `all`. Tests of other
    /// moments use [`compare`].
    fn doc(
        write_primary: Side,
        dual_write: DualWrite,
        shadow_read_percent: i32,
        read_split_percent: i32,
    ) -> FlagValues {
        FlagValues {
            write_primary,
            dual_write,
            shadow_read_percent: Percent::saturating(shadow_read_percent.into()),
            read_split_percent: Percent::saturating(read_split_percent.into()),
            shadow_compare_from: if shadow_read_percent > 0 {
                ShadowCompare::From(super::t0())
            } else {
                ShadowCompare::All
            },
        }
    }
    /// `values` comparing `compare`.
    pub fn compare(values: FlagValues, compare: ShadowCompare) -> FlagValues {
        FlagValues {
            shadow_compare_from: compare,
            ..values
        }
    }
    pub fn preflight() -> FlagValues {
        doc(Side::Legacy, DualWrite::Off, 0, 0)
    }
    pub fn shadow() -> FlagValues {
        doc(Side::Legacy, DualWrite::Sync, 10, 0)
    }
    pub fn split(percent: i32) -> FlagValues {
        doc(Side::Legacy, DualWrite::Sync, 10, percent)
    }
    pub fn cutover() -> FlagValues {
        doc(Side::New, DualWrite::Sync, 10, 100)
    }
    pub fn cutover_without_reverse() -> FlagValues {
        doc(Side::New, DualWrite::Off, 0, 100)
    }
    pub fn completed() -> FlagValues {
        doc(Side::New, DualWrite::Off, 0, 100)
    }
    pub fn rollback() -> FlagValues {
        doc(Side::Legacy, DualWrite::Sync, 0, 0)
    }
}

/// `values` with shadow reads comparing data since `t0 + secs` (when they shadow at all).
fn since(values: FlagValues, secs: i64) -> FlagValues {
    if values.shadow_read_percent == Percent::ZERO {
        values
    } else {
        fl::compare(values, ShadowCompare::From(at(secs)))
    }
}

/// The generation every [`status_in`] status has applied.
const GEN: i64 = 7;

fn applied(generation: i64, values: FlagValues) -> Option<Flags> {
    Some(Flags { generation, values })
}

// ---------------------------------------------------------------------------------------------
// Status builders

/// A status settled in `phase` (at `step`) since t0: the bake started at t0, the store holds
/// the phase's flags at generation [`GEN`], spec generation 1 observed. Without gates the
/// passing streak starts with the bake, as the machine does.
fn status_in(spec: &MigrationSpec, phase: Phase, step: Option<i32>) -> MigrationStatus {
    let traffic_percent = match phase {
        Split => spec.steps[step.expect("Split needs a step") as usize - 1],
        CutOver | Completed => 100,
        _ => 0,
    };
    let gates = spec.analysis.as_ref().is_some_and(|a| !a.gates.is_empty()) || polls_alerts(spec);
    let mut status = MigrationStatus {
        phase,
        step,
        traffic_percent,
        phase_started_at: time(0),
        step_started_at: time(0),
        passing_since: if gates { None } else { time(0) },
        observed_generation: Some(1),
        dual_write_started_at: (!matches!(phase, Pending | Preflight)).then(t0),
        dual_write_applied_at: (!matches!(phase, Pending | Preflight)).then(t0),
        ..MigrationStatus::default()
    };
    status.applied_flags = desired_flags(spec, &status).map(|values| Flags {
        generation: GEN,
        values,
    });
    status
}

/// Paused since t0, from `from` (at `step`). An inconclusive pause follows evaluations that
/// broke the passing streak.
fn paused_in(
    spec: &MigrationSpec,
    from: Phase,
    step: Option<i32>,
    reason: PauseReason,
) -> MigrationStatus {
    let mut status = status_in(spec, from, step);
    status.phase = Paused;
    status.paused = Some(PauseState { from, reason });
    if reason == PauseReason::Inconclusive {
        status.passing_since = None;
    }
    status
}

// ---------------------------------------------------------------------------------------------
// Observation builders

/// What the reconciler sees when nothing happened: the spec generation the status observed and
/// the flags the status applied, in the store.
fn seen(status: &MigrationStatus) -> Observations {
    Observations {
        generation: status.observed_generation.unwrap_or(1),
        flags: status.applied_flags.into(),
        ..Observations::default()
    }
}

fn nothing() -> Commands {
    Commands::default()
}
fn abort() -> Commands {
    Commands {
        abort: true,
        ..Commands::default()
    }
}
fn promote() -> Commands {
    Commands {
        promote: true,
        ..Commands::default()
    }
}
fn retry() -> Commands {
    Commands {
        retry: true,
        ..Commands::default()
    }
}

fn firing() -> Vec<String> {
    vec![ALERT.into()]
}

/// One evaluation of both gates; the error-rate gate gets `verdict`, the latency gate passes.
fn eval(verdict: Verdict) -> Vec<GateResult> {
    let value = match verdict {
        Verdict::Pass => Some(0.001),
        Verdict::Fail => Some(0.05),
        Verdict::Inconclusive | Verdict::Error | Verdict::Skipped => None,
    };
    vec![
        GateResult {
            name: "error-rate".into(),
            verdict,
            value,
            min: None,
            max: Some(0.01),
            message: None,
            failing_since: None,
        },
        GateResult {
            name: "p99-latency".into(),
            verdict: Verdict::Pass,
            value: Some(0.2),
            min: None,
            max: Some(0.5),
            message: None,
            failing_since: None,
        },
    ]
}
fn pass() -> Option<Vec<GateResult>> {
    Some(eval(Verdict::Pass))
}
fn fail() -> Option<Vec<GateResult>> {
    Some(eval(Verdict::Fail))
}
fn inconclusive() -> Option<Vec<GateResult>> {
    Some(eval(Verdict::Inconclusive))
}
fn error() -> Option<Vec<GateResult>> {
    Some(eval(Verdict::Error))
}

/// `"PFIE"` -> Pass, Fail, Inconclusive, Error.
fn verdicts(seq: &str) -> Vec<Verdict> {
    seq.chars()
        .map(|c| match c {
            'P' => Verdict::Pass,
            'F' => Verdict::Fail,
            'I' => Verdict::Inconclusive,
            'E' => Verdict::Error,
            other => panic!("unknown verdict {other:?}"),
        })
        .collect()
}

fn workload(replicas: i32) -> Option<WorkloadState> {
    Some(WorkloadState {
        replicas,
        ready_replicas: replicas,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading decisions

fn reasons(d: &Decision) -> Vec<&str> {
    d.events.iter().map(|e| e.reason.as_str()).collect()
}

fn warnings(d: &Decision) -> Vec<&str> {
    d.events
        .iter()
        .filter(|e| e.type_ == EventType::Warning)
        .map(|e| e.reason.as_str())
        .collect()
}

/// (status, reason) of a condition.
fn condition<'a>(status: &'a MigrationStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str())
}

fn roundtrip(status: &MigrationStatus) -> MigrationStatus {
    let json = serde_json::to_string(status).expect("status serializes");
    serde_json::from_str(&json).expect("status deserializes")
}

// ---------------------------------------------------------------------------------------------
// Running the machine

/// [`decide`], plus the invariants every decision must keep.
#[track_caller]
fn step(
    spec: &MigrationSpec,
    status: &MigrationStatus,
    obs: &Observations,
    now: Timestamp,
) -> Decision {
    let d = decide(spec, status, obs, now);
    let next = &d.status;
    let ctx = format!("{:?} -> {:?} at {now}", status.phase, next.phase);

    // Flags: exactly what the new status asks for, and the generation moves by one per change.
    let desired = desired_flags(spec, next);
    assert_eq!(
        d.flags.map(|f| f.values),
        desired,
        "{ctx}: flags are the desired flags of the new status"
    );
    if let Some(f) = d.flags {
        assert_eq!(
            next.applied_flags,
            Some(f),
            "{ctx}: status records the flags it asks for"
        );
        let recorded = status.applied_flags.map(|a| a.generation);
        match &obs.flags {
            FlagRead::Doc(cur) if cur.values == f.values => {
                assert_eq!(f, *cur, "{ctx}: unchanged flags keep their generation")
            }
            FlagRead::Doc(Flags { generation, .. }) | FlagRead::Corrupt { generation, .. } => {
                assert_eq!(
                    f.generation,
                    (*generation).max(recorded.unwrap_or(0)) + 1,
                    "{ctx}: changed flags bump the generation by one above every generation seen"
                )
            }
            FlagRead::Absent | FlagRead::Unreadable { .. } => match status.applied_flags {
                // Store empty: the same request stands, so repeated reconciles write nothing
                // new (no status churn, no hot loop).
                Some(a) if a.values == f.values && obs.flags == FlagRead::Absent => {
                    assert_eq!(f, a, "{ctx}: the recorded request stands")
                }
                a => assert!(
                    f.generation > a.map_or(0, |a| a.generation),
                    "{ctx}: generation never goes back"
                ),
            },
        }
    }
    if matches!(next.phase, RollingBack | RolledBack) {
        assert_eq!(
            d.flags.map(|f| f.values),
            Some(rollback_flags(spec)),
            "{ctx}: rolling back means the safe flags"
        );
    }

    // Traffic: only where the phase allows it, and it never grows without a promotion.
    let steps = &spec.steps;
    match (next.phase, next.paused.as_ref().map(|p| p.from)) {
        (Split, _) | (Paused, Some(Split)) => {
            let s = next.step.expect("a step in Split");
            assert!(
                s as usize <= steps.len(),
                "{ctx}: step {s} within {steps:?}"
            );
            if s == 0 {
                // Held below the first step after a spec edit raised every step.
                assert!(
                    next.traffic_percent < steps[0],
                    "{ctx}: step 0 holds traffic below the first step"
                );
            } else {
                assert_eq!(
                    next.traffic_percent,
                    steps[s as usize - 1],
                    "{ctx}: traffic is the step's percent"
                );
            }
        }
        (CutOver | Completed, _) | (Paused, Some(CutOver)) => {
            assert_eq!(next.traffic_percent, 100, "{ctx}")
        }
        _ => assert_eq!(
            next.traffic_percent, 0,
            "{ctx}: no user on the new system in {:?}",
            next.phase
        ),
    }
    if next.traffic_percent > status.traffic_percent {
        let promoted = reasons(&d)
            .iter()
            .any(|r| matches!(*r, "Promoted" | "CutOver"));
        assert!(
            promoted,
            "{ctx}: traffic grew {}% -> {}% without a promotion: {:?}",
            status.traffic_percent, next.traffic_percent, d.events
        );
    }

    // Commands: only what was set is consumed; an abort is always consumed.
    let set = [
        (obs.commands.abort, annotations::ABORT),
        (obs.commands.promote, annotations::PROMOTE),
        (obs.commands.retry, annotations::RETRY),
    ];
    for c in &d.consumed {
        assert!(
            set.iter().any(|(on, name)| *on && name == c),
            "{ctx}: consumed {c} which was not set"
        );
    }
    if obs.commands.abort {
        assert!(
            d.consumed.contains(&annotations::ABORT),
            "{ctx}: abort consumed"
        );
    }

    assert!(
        next.history.len() <= HISTORY_LIMIT,
        "{ctx}: history bounded"
    );
    assert_eq!(
        next.observed_generation,
        Some(obs.generation),
        "{ctx}: observed generation"
    );
    assert_eq!(
        next.conditions.len(),
        3,
        "{ctx}: Ready, Progressing, Degraded"
    );
    assert!(
        next.conditions
            .iter()
            .all(|c| c.observed_generation == Some(obs.generation)),
        "{ctx}"
    );
    assert!(
        !d.requeue_after.is_zero() && d.requeue_after <= IDLE_REQUEUE,
        "{ctx}: requeue {:?}",
        d.requeue_after
    );
    d
}

/// A reconciler in a box: it observes the store it wrote, applies every decision (status,
/// flags, legacy scale) and, on every reconcile, also checks that an operator restarted from the
/// serialized status decides the same.
struct Simulation {
    spec: MigrationSpec,
    status: MigrationStatus,
    /// The flag store.
    store: Option<Flags>,
    legacy: Option<WorkloadState>,
    generation: i64,
}

fn simulate(spec: MigrationSpec) -> Simulation {
    Simulation {
        spec,
        status: MigrationStatus::default(),
        store: None,
        legacy: None,
        generation: 1,
    }
}

impl Simulation {
    /// Starts from a status as if the store held its applied flags.
    fn from(spec: MigrationSpec, status: MigrationStatus) -> Self {
        let generation = status.observed_generation.unwrap_or(1);
        Self {
            store: status.applied_flags,
            spec,
            status,
            legacy: None,
            generation,
        }
    }

    /// A reconcile at `t0 + secs` that observes nothing special.
    fn at(&mut self, secs: i64) -> Decision {
        self.with(secs, Observations::default())
    }

    /// A reconcile at `t0 + secs` that also observes `extra` (commands, gates, alerts, jobs,
    /// problems); generation, flags and the legacy workload come from the simulation.
    fn with(&mut self, secs: i64, extra: Observations) -> Decision {
        let obs = Observations {
            generation: self.generation,
            flags: self.store.into(),
            legacy: self.legacy.or(extra.legacy),
            ..extra
        };
        let d = step(&self.spec, &self.status, &obs, at(secs));
        let restarted = roundtrip(&self.status);
        assert_eq!(restarted, self.status, "status survives serialization");
        assert_eq!(
            decide(&self.spec, &restarted, &obs, at(secs)),
            d,
            "a restarted operator decides the same at +{secs}s"
        );
        self.apply(&d);
        d
    }

    fn apply(&mut self, d: &Decision) {
        self.status = d.status.clone();
        if let Some(flags) = d.flags {
            self.store = Some(flags);
        }
        for &(side, replicas) in &d.scale {
            if side == Side::Legacy {
                self.legacy = workload(replicas);
            }
        }
    }

    fn phase(&self) -> (Phase, Option<i32>, i32) {
        (
            self.status.phase,
            self.status.step,
            self.status.traffic_percent,
        )
    }
}

/// Feeds one gate evaluation per 15 s (at +15, +30, ...) from `start`; returns the decisions.
fn evaluate(
    spec: &MigrationSpec,
    start: MigrationStatus,
    seq: &str,
) -> (Simulation, Vec<Decision>) {
    let mut sim = Simulation::from(spec.clone(), start);
    let decisions = verdicts(seq)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            sim.with(
                15 * (i as i64 + 1),
                Observations {
                    analysis: Some(eval(v)),
                    ..Observations::default()
                },
            )
        })
        .collect();
    (sim, decisions)
}

// ---------------------------------------------------------------------------------------------
// Shared by several scenario files

fn checking_generation(spec: MigrationSpec) -> MigrationSpec {
    let mut analysis = spec.analysis.clone().unwrap_or_else(analysis);
    analysis.gates.clear();
    analysis.applied_generation_query = Some("min(chat_flags_generation)".into());
    // No polled alerts either: the generation alone decides here.
    MigrationSpec {
        analysis: Some(analysis),
        rollback: RollbackSpec {
            on_alerts: vec![],
            ..spec.rollback.clone()
        },
        ..spec
    }
}

/// Every active phase, as a settled status, with a spec that has gates and a backfill.
fn every_active_phase(spec: &MigrationSpec) -> Vec<(String, MigrationSpec, MigrationStatus)> {
    let mut rows = vec![
        (
            "Preflight".to_string(),
            spec.clone(),
            status_in(spec, Preflight, None),
        ),
        (
            "Shadow".to_string(),
            spec.clone(),
            status_in(spec, Shadow, None),
        ),
        (
            "Backfill".to_string(),
            spec.clone(),
            MigrationStatus {
                backfill_job: Some("chat-backfill-1".into()),
                ..status_in(spec, Backfill, None)
            },
        ),
    ];
    for i in 1..=spec.steps.len() as i32 {
        rows.push((
            format!("Split step {i}"),
            spec.clone(),
            status_in(spec, Split, Some(i)),
        ));
    }
    rows.push((
        "CutOver".into(),
        spec.clone(),
        status_in(spec, CutOver, None),
    ));
    rows.push((
        "Paused (manual) in Split step 2".into(),
        paused(spec.clone()),
        paused_in(spec, Split, Some(2), PauseReason::Manual),
    ));
    rows.push((
        "Paused (manual) in CutOver".into(),
        paused(spec.clone()),
        paused_in(spec, CutOver, None, PauseReason::Manual),
    ));
    rows.push((
        "Paused (inconclusive) in Shadow".into(),
        spec.clone(),
        paused_in(spec, Shadow, None, PauseReason::Inconclusive),
    ));
    rows
}
