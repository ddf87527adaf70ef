//! Table tests for [`decide`]: a row per transition, a scenario per fault.
//!
//! Every decision made here goes through [`step`], which also checks the invariants that hold
//! for *every* decision (flag generations, traffic bounds, consumed commands, ...), and every
//! reconcile of a [`Simulation`] also checks that an operator restarted from the serialized
//! status would have decided exactly the same.

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
use Phase::*;
use ficus_flags::{FlagRead, ShadowCompare};

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
            duration: "2m".into(),
            ..ShadowSpec::default()
        },
        backfill: None,
        steps: vec![10, 25, 50, 100],
        bake_time: "1m".into(),
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
    };
    AnalysisSpec {
        prometheus: Some(PrometheusSpec {
            url: "http://prometheus:9090".into(),
        }),
        interval: "15s".into(),
        failure_limit: 2,
        inconclusive_limit: 3,
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
            complete_after: Some(after.into()),
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
        },
        GateResult {
            name: "p99-latency".into(),
            verdict: Verdict::Pass,
            value: Some(0.2),
            min: None,
            max: Some(0.5),
            message: None,
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

// =============================================================================================
// 1. Normal progression without gates

#[test]
fn a_run_without_gates_walks_every_phase_baking_each_step() {
    let mut sim = simulate(spec());
    // (at, command, phase, step, traffic, flags in the store, their generation, events)
    #[rustfmt::skip]
    let rows: [(i64, Commands, Phase, Option<i32>, i32, FlagValues, i64, &[&str]); 18] = [
        (0,     nothing(), Preflight, None,    0,   fl::preflight(),  1, &["Started"]),
        // The store now holds the preflight flags: proof it is writable.
        (1,     nothing(), Shadow,    None,    0,   fl::shadow(),     2, &["PreflightPassed"]),
        (60,    nothing(), Shadow,    None,    0,   fl::shadow(),     2, &[]),
        (120,   nothing(), Shadow,    None,    0,   fl::shadow(),     2, &[]),   // shadow 2m: one second early
        (121,   nothing(), Split,     Some(1), 10,  fl::split(10),    3, &["Promoted"]),
        (180,   nothing(), Split,     Some(1), 10,  fl::split(10),    3, &[]),   // bake 1m: one second early
        (181,   nothing(), Split,     Some(2), 25,  fl::split(25),    4, &["Promoted"]),
        (240,   nothing(), Split,     Some(2), 25,  fl::split(25),    4, &[]),
        (241,   nothing(), Split,     Some(3), 50,  fl::split(50),    5, &["Promoted"]),
        (300,   nothing(), Split,     Some(3), 50,  fl::split(50),    5, &[]),
        (301,   nothing(), Split,     Some(4), 100, fl::split(100),   6, &["Promoted"]),
        (360,   nothing(), Split,     Some(4), 100, fl::split(100),   6, &[]),
        (361,   nothing(), CutOver,   None,    100, fl::cutover(),    7, &["CutOver"]),
        // No completeAfter: CutOver stays however long it lasts ...
        (421,   nothing(), CutOver,   None,    100, fl::cutover(),    7, &[]),
        (86_400, nothing(), CutOver,  None,    100, fl::cutover(),    7, &[]),
        // ... until promoted by hand.
        (86_401, promote(), Completed, None,   100, fl::completed(),  8, &["Completed"]),
        (86_402, nothing(), Completed, None,   100, fl::completed(),  8, &[]),
        (999_999, nothing(), Completed, None,  100, fl::completed(),  8, &[]),
    ];
    for (secs, commands, phase, step_, traffic, flags, generation, events) in rows {
        let before = sim.store;
        let d = sim.with(
            secs,
            Observations {
                commands: commands.clone(),
                ..Observations::default()
            },
        );
        let row = format!("at +{secs}s");
        // Without appliedGenerationQuery shadow reads compare from the document's writing (+1s).
        let flags = since(flags, 1);
        assert_eq!(sim.phase(), (phase, step_, traffic), "{row}");
        assert_eq!(d.flags, applied(generation, flags), "{row}");
        if before.is_some_and(|b| b.values == flags) {
            assert_eq!(
                before, d.flags,
                "{row}: unchanged flags are not rewritten with a new generation"
            );
        }
        assert_eq!(reasons(&d), events, "{row}");
        assert!(warnings(&d).is_empty(), "{row}: {:?}", d.events);
        let expected_consumed: &[&str] = if commands.promote {
            &[annotations::PROMOTE]
        } else {
            &[]
        };
        assert_eq!(d.consumed, expected_consumed, "{row}");
        assert_eq!(d.create_backfill_job, None, "{row}");
        assert_eq!(d.scale, vec![], "{row}");
    }

    // The history tells the same story, with the traffic after each transition.
    let history: Vec<_> = sim
        .status
        .history
        .iter()
        .map(|t| (t.from, t.to, t.traffic_percent, t.reason.as_str()))
        .collect();
    assert_eq!(
        history,
        [
            (Pending, Preflight, 0, "Started"),
            (Preflight, Shadow, 0, "PreflightPassed"),
            (Shadow, Split, 10, "Promoted"),
            (Split, Split, 25, "Promoted"),
            (Split, Split, 50, "Promoted"),
            (Split, Split, 100, "Promoted"),
            (Split, CutOver, 100, "CutOver"),
            (CutOver, Completed, 100, "Completed"),
        ]
    );
    assert_eq!(sim.status.history.last().unwrap().time, at(86_401));
    assert_eq!(condition(&sim.status, READY), ("True", "Completed"));
    assert_eq!(condition(&sim.status, PROGRESSING), ("False", "Completed"));
    assert_eq!(condition(&sim.status, DEGRADED), ("False", "AsExpected"));
}

#[test]
fn preflight_moves_to_shadow_only_once_the_store_holds_the_preflight_flags() {
    let spec = spec();
    let s = status_in(&spec, Preflight, None);
    // (what the store holds, next phase)
    let rows = [
        (None, Preflight),
        // A previous attempt's safe state is not proof that this attempt's write landed.
        (applied(3, fl::rollback()), Preflight),
        (applied(3, fl::shadow()), Preflight),
        (applied(3, fl::preflight()), Shadow),
    ];
    for (store, phase) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                flags: store.into(),
                ..seen(&s)
            },
            at(5),
        );
        assert_eq!(d.status.phase, phase, "store {store:?}");
        // An empty store gets the status's recorded request again, with its generation; a
        // store that holds anything else gets a generation above both.
        let expected = if phase == Shadow {
            applied(GEN + 1, since(fl::shadow(), 5))
        } else {
            Some(Flags {
                generation: store.map_or(GEN, |f| f.generation.max(GEN) + 1),
                values: fl::preflight(),
            })
        };
        assert_eq!(d.flags, expected, "store {store:?}");
    }
}

#[test]
fn cutover_makes_the_new_store_primary_keeping_legacy_in_sync_only_with_reverse_dual_write() {
    for (reverse, flags) in [
        (true, fl::cutover()),
        (false, fl::cutover_without_reverse()),
    ] {
        let spec = MigrationSpec {
            cutover: CutoverSpec {
                reverse_dual_write: reverse,
                ..CutoverSpec::default()
            },
            ..spec()
        };
        let s = status_in(&spec, Split, Some(4));
        let d = step(&spec, &s, &seen(&s), at(60));
        assert_eq!(
            (d.status.phase, d.status.step, d.status.traffic_percent),
            (CutOver, None, 100),
            "reverse {reverse}"
        );
        assert_eq!(d.flags, applied(GEN + 1, flags), "reverse {reverse}");
    }
}

#[test]
fn cutover_completes_after_complete_after_and_not_a_second_earlier() {
    let spec = complete_after(spec(), "5m");
    let s = status_in(&spec, CutOver, None);
    // (at, phase)
    for (secs, phase) in [
        (1, CutOver),
        (299, CutOver),
        (300, Completed),
        (301, Completed),
    ] {
        let d = step(&spec, &s, &seen(&s), at(secs));
        assert_eq!(d.status.phase, phase, "at +{secs}s");
        if phase == Completed {
            assert_eq!(d.flags, applied(GEN + 1, fl::completed()));
            assert_eq!(reasons(&d), ["Completed"]);
            assert_eq!(d.scale, vec![], "legacy is only scaled down when asked to");
        } else {
            assert_eq!(d.flags, s.applied_flags);
            assert!(d.events.is_empty());
        }
    }
}

#[test]
fn completion_scales_legacy_down_only_when_asked_and_named() {
    // (scaleDownLegacy, workloads named, scale)
    for (scale_down, named, scale) in [
        (true, true, vec![(Side::Legacy, 0)]),
        (true, false, vec![]),
        (false, true, vec![]),
    ] {
        let mut spec = complete_after(spec(), "5m");
        spec.cutover.scale_down_legacy = scale_down;
        if named {
            spec = with_workloads(spec);
        }
        let s = status_in(&spec, CutOver, None);
        let d = step(
            &spec,
            &s,
            &Observations {
                legacy: workload(3),
                candidate: workload(3),
                ..seen(&s)
            },
            at(300),
        );
        assert_eq!(d.status.phase, Completed);
        assert_eq!(
            d.scale, scale,
            "scaleDownLegacy {scale_down}, named {named}"
        );
    }
}

#[test]
fn history_keeps_only_the_latest_transitions() {
    let spec = spec();
    let mut s = status_in(&spec, Split, Some(1));
    s.history = (0..HISTORY_LIMIT as i64)
        .map(|i| Transition {
            time: at(i - 100),
            from: Split,
            to: Split,
            traffic_percent: 10,
            reason: format!("Old{i}"),
            message: String::new(),
        })
        .collect();
    let d = step(&spec, &s, &seen(&s), at(60));
    assert_eq!(d.status.history.len(), HISTORY_LIMIT);
    assert_eq!(
        d.status.history.first().unwrap().reason,
        "Old1",
        "the oldest transition is dropped"
    );
    let last = d.status.history.last().unwrap();
    assert_eq!(
        (
            last.from,
            last.to,
            last.traffic_percent,
            last.reason.as_str(),
            &last.time
        ),
        (Split, Split, 25, "Promoted", &at(60))
    );
}

#[test]
fn workloads_that_must_be_ready_hold_promotion_until_they_are() {
    let mut spec = with_workloads(spec());
    spec.candidate.as_mut().unwrap().require_ready = true;
    let s = status_in(&spec, Split, Some(1));
    // (candidate replicas, ready, promoted)
    for (replicas, ready, promoted) in [(3, 1, false), (0, 0, false), (3, 3, true)] {
        let obs = Observations {
            legacy: workload(3),
            candidate: Some(WorkloadState {
                replicas,
                ready_replicas: ready,
            }),
            ..seen(&s)
        };
        let d = step(&spec, &s, &obs, at(60));
        assert_eq!(
            d.status.step,
            Some(if promoted { 2 } else { 1 }),
            "candidate {ready}/{replicas} ready"
        );
    }
}

// =============================================================================================
// 2. Backfill

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

// =============================================================================================
// 3. Gates

#[test]
fn a_step_is_promoted_only_after_every_gate_passed_for_the_whole_bake() {
    // Split step 1 entered at t0; one evaluation every 15 s; bakeTime 1m.
    // (evaluations, when step 2 starts)
    let rows = [
        ("PPPPP", Some(75)), // passing since +15: promoted at +75, not at +60
        ("PPPP", None),
        ("PFPPPPP", Some(105)), // a Fail resets the streak: passing since +45
        ("PIPPPPP", Some(105)), // so does an Inconclusive
        ("PEPPPPP", Some(105)), // and an Error
        ("PPPPPPF", Some(75)),
        ("PPPPF", None), // failing at the moment the bake would end
        ("EEEEEEEEEEEE", None),
    ];
    for (seq, promoted_at) in rows {
        let (_, ds) = evaluate(&gated(), status_in(&gated(), Split, Some(1)), seq);
        let first = ds
            .iter()
            .position(|d| d.status.step == Some(2))
            .map(|i| 15 * (i as i64 + 1));
        assert_eq!(first, promoted_at, "{seq}");
        assert!(
            ds.iter().all(|d| matches!(d.status.phase, Split)),
            "{seq}: never paused nor rolled back"
        );
    }
}

#[test]
fn shadow_and_cutover_bake_on_gates_too() {
    // (phase, spec, evaluations, phase after)
    let rows = [
        (Shadow, gated(), "PPPPPPPPP", Split), // shadow 2m: passing since +15, promoted at +135
        (Shadow, gated(), "PPPPPPPP", Shadow),
        (Shadow, gated(), "PPPPFPPPP", Shadow),
        (CutOver, complete_after(gated(), "1m"), "PPPPP", Completed),
        (CutOver, complete_after(gated(), "1m"), "PPFPP", CutOver),
        (CutOver, gated(), "PPPPPPPPPP", CutOver), // no completeAfter
    ];
    for (phase, spec, seq, after) in rows {
        let (sim, _) = evaluate(&spec, status_in(&spec, phase, None), seq);
        assert_eq!(sim.status.phase, after, "{phase:?} {seq}");
    }
}

#[test]
fn consecutive_failures_roll_back_at_the_failure_limit() {
    // Split step 2; failureLimit 2, inconclusiveLimit 3.
    // (evaluations, phase after, consecutive failures, consecutive inconclusive)
    let rows = [
        ("F", Split, 1, 0),
        ("FF", RollingBack, 0, 0),
        ("FPF", Split, 1, 0), // a Pass in between resets the counter
        ("PFPFPFP", Split, 0, 0),
        ("PFF", RollingBack, 0, 0),
        ("FE", Split, 1, 0), // an Error neither counts nor clears
        ("FEEEEE", Split, 1, 0),
        ("II", Split, 0, 2),
        ("III", Paused, 0, 3),
        ("IIPII", Split, 0, 2), // a Pass in between resets the counter
        ("IIFI", Split, 1, 1),  // a Fail is evidence: resets the inconclusive counter
        ("IIFF", RollingBack, 0, 0),
        ("EEEEEEEEEE", Split, 0, 0),
    ];
    for (seq, phase, failures, inconclusive) in rows {
        let (sim, ds) = evaluate(&gated(), status_in(&gated(), Split, Some(2)), seq);
        let s = &sim.status;
        assert_eq!(s.phase, phase, "{seq}");
        if phase != RollingBack {
            assert_eq!(
                (s.consecutive_failures, s.consecutive_inconclusive),
                (failures, inconclusive),
                "{seq}"
            );
        }
        let rolled_back: Vec<_> = ds
            .iter()
            .filter(|d| d.status.phase == RollingBack)
            .collect();
        if let Some(d) = rolled_back.first() {
            assert_eq!(warnings(d), ["GateFailed"], "{seq}");
            assert!(
                d.events[0]
                    .message
                    .contains("gate error-rate = 0.05 (max 0.01) failed 2 evaluation(s) in a row"),
                "{seq}: {:?}",
                d.events
            );
            assert_eq!(d.status.healthy.as_deref(), Some("False"));
            assert_eq!(
                d.status.last_analysis.as_ref().map(|a| a.time.clone()),
                Some(at(15 * seq.len() as i64))
            );
        }
    }
}

#[test]
fn inconclusive_evidence_pauses_with_flags_unchanged_and_passing_evidence_resumes() {
    let spec = gated();
    let (mut sim, ds) = evaluate(&spec, status_in(&spec, Split, Some(2)), "III");
    let d = ds.last().unwrap();
    assert_eq!(d.status.phase, Paused);
    assert_eq!(
        d.status.paused,
        Some(PauseState {
            from: Split,
            reason: PauseReason::Inconclusive
        })
    );
    assert_eq!(
        (d.status.step, d.status.traffic_percent),
        (Some(2), 25),
        "users stay where they were"
    );
    assert_eq!(
        d.flags,
        applied(GEN, fl::split(25)),
        "flags unchanged, same generation"
    );
    assert_eq!(warnings(d), ["Inconclusive"]);
    assert_eq!(condition(&d.status, PROGRESSING), ("False", "Inconclusive"));
    assert_eq!(
        condition(&d.status, READY).0,
        "True",
        "paused is not broken"
    );
    assert_eq!(d.status.healthy.as_deref(), Some("Unknown"));

    // Still no evidence: stays paused, quietly.
    for secs in [60, 75, 90] {
        let d = sim.with(
            secs,
            Observations {
                analysis: inconclusive(),
                ..Observations::default()
            },
        );
        assert_eq!((d.status.phase, d.events.len()), (Paused, 0), "+{secs}s");
    }
    // Errors are not evidence either.
    assert_eq!(
        sim.with(
            100,
            Observations {
                analysis: error(),
                ..Observations::default()
            }
        )
        .status
        .phase,
        Paused
    );
    // Every gate passes: the same step again, baking from now.
    let d = sim.with(
        105,
        Observations {
            analysis: pass(),
            ..Observations::default()
        },
    );
    assert_eq!(sim.phase(), (Split, Some(2), 25));
    assert_eq!(reasons(&d), ["EvidenceReturned"]);
    assert_eq!(d.flags, applied(GEN, fl::split(25)));
    assert_eq!(
        (
            d.status.step_started_at.clone(),
            d.status.passing_since.clone()
        ),
        (time(105), None),
        "a fresh bake"
    );
    assert_eq!(
        (
            d.status.consecutive_failures,
            d.status.consecutive_inconclusive
        ),
        (0, 0)
    );
    assert_eq!(d.status.paused, None);
    // ... which needs the full bake of passing evaluations again.
    for secs in [120, 135, 150, 165] {
        assert_eq!(
            sim.with(
                secs,
                Observations {
                    analysis: pass(),
                    ..Observations::default()
                }
            )
            .status
            .step,
            Some(2),
            "+{secs}s"
        );
    }
    assert_eq!(
        sim.with(
            180,
            Observations {
                analysis: pass(),
                ..Observations::default()
            }
        )
        .status
        .step,
        Some(3)
    );
}

#[test]
fn failures_while_paused_still_count_towards_rollback() {
    let spec = gated();
    // (pause, failures so far, evaluation, phase after)
    let rows = [
        (PauseReason::Inconclusive, 0, fail(), Paused),
        (PauseReason::Inconclusive, 1, fail(), RollingBack),
        (PauseReason::Manual, 1, fail(), RollingBack),
        (PauseReason::Manual, 1, error(), Paused),
        (PauseReason::Manual, 1, pass(), Paused), // a manual pause waits for the human
        (PauseReason::Inconclusive, 1, pass(), Split),
    ];
    for (reason, failures, analysis, phase) in rows {
        let spec = if reason == PauseReason::Manual {
            paused(spec.clone())
        } else {
            spec.clone()
        };
        let s = MigrationStatus {
            consecutive_failures: failures,
            ..paused_in(&spec, Split, Some(3), reason)
        };
        let d = step(
            &spec,
            &s,
            &Observations {
                analysis: analysis.clone(),
                ..seen(&s)
            },
            at(30),
        );
        assert_eq!(
            d.status.phase,
            phase,
            "{reason:?} after {failures} failure(s), then {:?}",
            analysis.unwrap()[0].verdict
        );
        if phase == RollingBack {
            assert_eq!(
                d.status.last_rollback.as_ref().map(|r| r.from),
                Some(Split),
                "rolled back from the paused-from phase"
            );
        }
    }
}

#[test]
fn gate_errors_never_roll_back_promote_or_pause() {
    let spec = gated();
    let s = MigrationStatus {
        consecutive_failures: 1,
        consecutive_inconclusive: 2,
        passing_since: time(0),
        ..status_in(&spec, Split, Some(2))
    };
    for secs in [1, 60, 3600] {
        let d = step(
            &spec,
            &s,
            &Observations {
                analysis: error(),
                ..seen(&s)
            },
            at(secs),
        );
        assert_eq!(
            (d.status.phase, d.status.step),
            (Split, Some(2)),
            "+{secs}s"
        );
        assert_eq!(
            d.status.passing_since, None,
            "an error breaks the passing streak"
        );
        assert_eq!(
            (
                d.status.consecutive_failures,
                d.status.consecutive_inconclusive
            ),
            (1, 2)
        );
        assert_eq!(d.status.healthy.as_deref(), Some("Unknown"));
        assert_eq!(d.status.history, s.history, "no transition");
    }
}

#[test]
fn gates_do_not_run_before_shadow() {
    let spec = gated();
    let s = status_in(&spec, Preflight, None);
    let d = step(
        &spec,
        &s,
        &Observations {
            analysis: fail(),
            ..seen(&s)
        },
        at(5),
    );
    assert_eq!(d.status.phase, Shadow);
    assert_eq!(
        (
            d.status.consecutive_failures,
            d.status.last_analysis.clone()
        ),
        (0, None)
    );
}

#[test]
fn without_automatic_rollback_only_an_abort_rolls_back() {
    let spec = MigrationSpec {
        rollback: RollbackSpec {
            automatic: false,
            on_alerts: vec![ALERT.into()],
            alert_labels: None,
        },
        ..gated()
    };
    let s = MigrationStatus {
        consecutive_failures: 5,
        ..status_in(&spec, Split, Some(2))
    };
    // (observations, phase after)
    let rows = [
        (
            Observations {
                analysis: fail(),
                ..seen(&s)
            },
            Split,
        ),
        (
            Observations {
                firing_alerts: firing(),
                ..seen(&s)
            },
            Split,
        ),
        (
            Observations {
                analysis: fail(),
                firing_alerts: firing(),
                ..seen(&s)
            },
            Split,
        ),
        (
            Observations {
                commands: abort(),
                analysis: fail(),
                ..seen(&s)
            },
            RollingBack,
        ),
    ];
    for (obs, phase) in rows {
        let d = step(&spec, &s, &obs, at(120));
        assert_eq!(d.status.phase, phase, "{obs:?}");
    }
    // A failed backfill waits for a human too.
    let spec = with_backfill(spec);
    let s = status_in(&spec, Backfill, None);
    let d = step(
        &spec,
        &s,
        &Observations {
            backfill: Some(JobState::Failed("OOMKilled".into())),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!(
        (d.status.phase, d.create_backfill_job.clone()),
        (Backfill, None)
    );
}

// =============================================================================================
// 4. Rollback

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

#[test]
fn every_active_phase_rolls_back_on_abort_alert_or_failing_gates_and_settles() {
    let spec = with_backfill(gated());
    for (name, spec, start) in every_active_phase(&spec) {
        let from = start.paused.as_ref().map_or(start.phase, |p| p.from);
        let causes = [
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
            (
                "gates",
                Observations {
                    analysis: fail(),
                    ..Observations::default()
                },
                "GateFailed",
            ),
        ];
        for (cause, obs, reason) in causes {
            if cause == "gates" && from == Preflight {
                continue; // gates run from Shadow on (see gates_do_not_run_before_shadow)
            }
            let case = format!("{name}, {cause}");
            // One failed evaluation on record: the next one reaches failureLimit.
            let mut sim = Simulation::from(
                spec.clone(),
                MigrationStatus {
                    consecutive_failures: 1,
                    ..start.clone()
                },
            );
            let d = sim.with(30, obs);
            let s = &d.status;
            assert_eq!(
                (s.phase, s.step, s.traffic_percent),
                (RollingBack, None, 0),
                "{case}"
            );
            assert_eq!(
                d.flags,
                applied(GEN + 1, fl::rollback()),
                "{case}: legacy primary, dual-write kept on, 0/0"
            );
            assert_eq!(warnings(&d), [reason], "{case}");
            let consumed: &[&str] = if cause == "abort" {
                &[annotations::ABORT]
            } else {
                &[]
            };
            assert_eq!(d.consumed, consumed, "{case}");
            assert_eq!(s.paused, None, "{case}");
            let record = s.last_rollback.as_ref().expect("a rollback record");
            assert_eq!(
                (record.from, record.reason.as_str(), &record.time),
                (from, reason, &at(30)),
                "{case}"
            );
            assert_eq!(condition(s, READY), ("False", "RollingBack"), "{case}");
            assert_eq!(d.create_backfill_job, None, "{case}");
            assert!(
                d.requeue_after <= SHORT,
                "{case}: rolling back does not wait for a reconcile period"
            );
            let last = s.history.last().unwrap();
            assert_eq!(
                (last.from, last.to, last.traffic_percent),
                (start.phase, RollingBack, 0),
                "{case}"
            );

            // Once the store holds the safe flags: RolledBack, and there it stays.
            let d = sim.at(31);
            assert_eq!(d.status.phase, RolledBack, "{case}");
            assert_eq!(warnings(&d), ["RolledBack"], "{case}");
            assert_eq!(d.flags, applied(GEN + 1, fl::rollback()), "{case}");
            assert_eq!(
                condition(&d.status, READY),
                ("False", "RolledBack"),
                "{case}"
            );
            assert_eq!(
                condition(&d.status, PROGRESSING),
                ("False", "RolledBack"),
                "{case}"
            );
            for secs in [32, 10_000] {
                let d = sim.with(
                    secs,
                    Observations {
                        firing_alerts: firing(),
                        analysis: fail(),
                        ..Observations::default()
                    },
                );
                assert_eq!(
                    (d.status.phase, d.events.len(), d.flags),
                    (RolledBack, 0, applied(GEN + 1, fl::rollback())),
                    "{case}"
                );
                assert_eq!(d.requeue_after, IDLE_REQUEUE, "{case}");
            }
        }
    }
}

#[test]
fn rollback_waits_for_the_safe_flags_in_the_store() {
    let spec = spec();
    let s = MigrationStatus {
        last_rollback: Some(RollbackRecord {
            time: at(0),
            from: Split,
            reason: "Aborted".into(),
            message: "ficus.dev/abort annotation set".into(),
        }),
        ..status_in(&spec, RollingBack, None)
    };
    // (what the store holds, phase after)
    let rows = [
        (None, RollingBack),
        (applied(6, fl::split(25)), RollingBack),
        (applied(6, fl::preflight()), RollingBack),
        (applied(GEN, fl::rollback()), RolledBack),
    ];
    for (store, phase) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                flags: store.into(),
                ..seen(&s)
            },
            at(5),
        );
        assert_eq!(d.status.phase, phase, "store {store:?}");
        assert!(
            d.requeue_after <= SHORT,
            "store {store:?}: {:?}",
            d.requeue_after
        );
        if phase == RolledBack {
            assert!(
                d.events[0]
                    .message
                    .contains("ficus.dev/abort annotation set"),
                "{:?}",
                d.events
            );
        }
    }
}

#[test]
fn rollback_restores_the_legacy_replicas() {
    let spec = with_workloads(spec());
    // Rolling back from CutOver with legacy scaled down to 1 of its original 3.
    let start = MigrationStatus {
        legacy_replicas_before: Some(3),
        ..status_in(&spec, CutOver, None)
    };
    let mut sim = Simulation::from(spec, start);
    sim.legacy = workload(1);
    let d = sim.with(
        10,
        Observations {
            commands: abort(),
            ..Observations::default()
        },
    );
    assert_eq!(d.status.phase, RollingBack);
    assert_eq!(
        d.flags.map(|f| f.values.write_primary),
        Some(Side::Legacy),
        "legacy primary again after cutover"
    );
    assert_eq!(d.scale, [(Side::Legacy, 3)]);

    // The store holds the safe flags but legacy is still short: keep rolling back, keep scaling.
    sim.legacy = workload(1);
    let d = sim.at(11);
    assert_eq!(
        (d.status.phase, d.scale.clone()),
        (RollingBack, vec![(Side::Legacy, 3)])
    );
    // The scale applied: done.
    let d = sim.at(12);
    assert_eq!((d.status.phase, d.scale.clone()), (RolledBack, vec![]));
    // Not scaled again while RolledBack, nor when more replicas than before run.
    sim.legacy = workload(5);
    assert_eq!(sim.at(13).scale, vec![]);
}

#[test]
fn abort_outside_active_phases_is_consumed() {
    let spec = spec();
    // Rolling back, the store not yet safe.
    let rolling_back = MigrationStatus {
        applied_flags: applied(GEN, fl::split(50)),
        ..status_in(&spec, RollingBack, None)
    };
    // (status, warnings)
    let rows: [(MigrationStatus, &[&str]); 3] = [
        (status_in(&spec, Completed, None), &["AbortIgnored"]),
        (status_in(&spec, RolledBack, None), &[]),
        (rolling_back, &[]),
    ];
    for (s, warned) in rows {
        let phase = s.phase;
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: abort(),
                ..seen(&s)
            },
            at(5),
        );
        assert_eq!(d.consumed, [annotations::ABORT], "{phase:?}");
        assert_eq!(warnings(&d), warned, "{phase:?}");
        assert_eq!(d.status.phase, phase, "{phase:?}");
        assert_eq!(d.status.last_rollback, None, "{phase:?}");
    }
    // A completed migration keeps the new system in charge.
    let s = status_in(&spec, Completed, None);
    let d = step(
        &spec,
        &s,
        &Observations {
            commands: abort(),
            ..seen(&s)
        },
        at(5),
    );
    assert_eq!(d.flags, applied(GEN, fl::completed()));
}

#[test]
fn abort_before_the_start_rolls_back() {
    let spec = spec();
    let s = MigrationStatus {
        observed_generation: Some(1),
        ..MigrationStatus::default()
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            commands: abort(),
            ..seen(&s)
        },
        at(0),
    );
    assert_eq!(d.status.phase, RollingBack);
    assert_eq!(d.consumed, [annotations::ABORT]);
    assert_eq!(d.flags, applied(1, fl::rollback()));
}

// =============================================================================================
// 5. Retry and promote

#[test]
fn retry_after_a_rollback_starts_a_new_attempt_from_the_beginning() {
    let spec = with_backfill(spec());
    let rolled_back = MigrationStatus {
        attempt: 0,
        consecutive_failures: 2,
        backfill_job: Some("chat-backfill-1".into()),
        last_analysis: Some(AnalysisRun {
            time: at(0),
            gates: eval(Verdict::Fail),
            alerts: None,
        }),
        ..status_in(&spec, RolledBack, None)
    };
    let mut sim = Simulation::from(spec, rolled_back);
    let d = sim.with(
        10,
        Observations {
            commands: retry(),
            ..Observations::default()
        },
    );
    let s = &d.status;
    assert_eq!(
        (s.phase, s.attempt, s.step, s.traffic_percent),
        (Pending, 1, None, 0)
    );
    assert_eq!(
        (
            s.consecutive_failures,
            s.backfill_job.clone(),
            s.last_analysis.clone()
        ),
        (0, None, None)
    );
    assert_eq!(d.consumed, [annotations::RETRY]);
    assert_eq!(reasons(&d), ["Retry"]);
    assert!(d.events[0].message.contains("attempt 2"), "{:?}", d.events);
    assert_eq!(d.flags, None, "Pending leaves the stores alone");
    assert!(d.requeue_after <= SHORT);

    // (at, phase, flags in the store, events)
    #[rustfmt::skip]
    let rows: [(i64, Phase, Option<Flags>, &[&str]); 4] = [
        (11,  Preflight, applied(GEN + 1, fl::preflight()), &["Started"]),
        (12,  Shadow,    applied(GEN + 2, since(fl::shadow(), 12)), &["PreflightPassed"]),
        (131, Shadow,    applied(GEN + 2, since(fl::shadow(), 12)), &[]),
        (132, Backfill,  applied(GEN + 2, since(fl::shadow(), 12)), &["ShadowPassed"]),
    ];
    for (secs, phase, flags, events) in rows {
        let d = sim.at(secs);
        assert_eq!(
            (d.status.phase, d.flags, reasons(&d)),
            (phase, flags, events.to_vec()),
            "+{secs}s"
        );
    }
    let d = sim.with(
        133,
        Observations {
            backfill: Some(JobState::Missing),
            ..Observations::default()
        },
    );
    assert_eq!(
        d.create_backfill_job.as_deref(),
        Some("chat-backfill-2"),
        "a new Job for the new attempt"
    );
}

#[test]
fn retry_anywhere_else_is_consumed_and_ignored() {
    let spec = with_backfill(spec());
    // (status, phase after)
    let rows = [
        (
            MigrationStatus {
                observed_generation: Some(1),
                ..MigrationStatus::default()
            },
            Preflight,
        ),
        (status_in(&spec, Preflight, None), Shadow),
        (status_in(&spec, Shadow, None), Shadow),
        (status_in(&spec, Backfill, None), Backfill),
        (status_in(&spec, Split, Some(2)), Split),
        (status_in(&spec, CutOver, None), CutOver),
        (status_in(&spec, Completed, None), Completed),
        (
            paused_in(&spec, Split, Some(2), PauseReason::Inconclusive),
            Paused,
        ),
        (
            MigrationStatus {
                applied_flags: applied(GEN, fl::split(50)),
                ..status_in(&spec, RollingBack, None)
            },
            RollingBack,
        ),
    ];
    for (s, phase) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: retry(),
                backfill: Some(JobState::Running),
                ..seen(&s)
            },
            at(10),
        );
        assert_eq!(d.consumed, [annotations::RETRY], "{:?}", s.phase);
        assert_eq!(
            (d.status.phase, d.status.attempt),
            (phase, 0),
            "{:?}",
            s.phase
        );
        assert!(!reasons(&d).contains(&"Retry"), "{:?}", s.phase);
    }
}

#[test]
fn promote_skips_the_rest_of_the_bake() {
    let spec = gated();
    // (status, phase, step, traffic, flags, event) — one second into the bake, gates not passing yet.
    let rows = [
        (
            status_in(&spec, Shadow, None),
            Split,
            Some(1),
            10,
            fl::split(10),
            "Promoted",
        ),
        (
            status_in(&with_backfill(spec.clone()), Shadow, None),
            Backfill,
            None,
            0,
            fl::shadow(),
            "ShadowPassed",
        ),
        (
            status_in(&spec, Split, Some(1)),
            Split,
            Some(2),
            25,
            fl::split(25),
            "Promoted",
        ),
        (
            status_in(&spec, Split, Some(3)),
            Split,
            Some(4),
            100,
            fl::split(100),
            "Promoted",
        ),
        (
            status_in(&spec, Split, Some(4)),
            CutOver,
            None,
            100,
            fl::cutover(),
            "CutOver",
        ),
        (
            status_in(&spec, CutOver, None),
            Completed,
            None,
            100,
            fl::completed(),
            "Completed",
        ),
    ];
    for (s, phase, step_, traffic, flags, event) in rows {
        let spec = if phase == Backfill {
            with_backfill(spec.clone())
        } else {
            spec.clone()
        };
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: promote(),
                ..seen(&s)
            },
            at(1),
        );
        let case = format!("{:?} {:?}", s.phase, s.step);
        assert_eq!(
            (d.status.phase, d.status.step, d.status.traffic_percent),
            (phase, step_, traffic),
            "{case}"
        );
        assert_eq!(d.flags.map(|f| f.values), Some(flags), "{case}");
        assert_eq!(reasons(&d), [event], "{case}");
        assert!(
            d.events[0].message.contains("promoted by hand"),
            "{case}: {:?}",
            d.events
        );
        assert_eq!(d.consumed, [annotations::PROMOTE], "{case}");
    }
}

#[test]
fn promote_where_there_is_nothing_to_promote_is_consumed_with_a_warning() {
    let spec = with_backfill(spec());
    // (status, phase after)
    let rows = [
        (
            MigrationStatus {
                observed_generation: Some(1),
                ..MigrationStatus::default()
            },
            Preflight,
        ),
        (
            MigrationStatus {
                applied_flags: None,
                ..status_in(&spec, Preflight, None)
            },
            Preflight,
        ),
        (status_in(&spec, Backfill, None), Backfill),
        (
            paused_in(&spec, Split, Some(2), PauseReason::Inconclusive),
            Paused,
        ),
        (
            MigrationStatus {
                applied_flags: applied(GEN, fl::split(50)),
                ..status_in(&spec, RollingBack, None)
            },
            RollingBack,
        ),
        (status_in(&spec, RolledBack, None), RolledBack),
        (status_in(&spec, Completed, None), Completed),
    ];
    for (s, phase) in rows {
        let d = step(
            &spec,
            &s,
            &Observations {
                commands: promote(),
                backfill: Some(JobState::Running),
                ..seen(&s)
            },
            at(1),
        );
        let case = format!("{:?}", s.phase);
        assert_eq!(d.status.phase, phase, "{case}");
        assert_eq!(
            d.consumed,
            [annotations::PROMOTE],
            "{case}: consumed so it never fires in a later phase"
        );
        assert_eq!(warnings(&d), ["PromoteIgnored"], "{case}");
        assert_eq!(d.status.traffic_percent, s.traffic_percent, "{case}");
    }
}

// =============================================================================================
// 6. Pause and resume

#[test]
fn pausing_holds_the_phase_and_the_flags() {
    let spec = with_backfill(gated());
    for (name, _, start) in every_active_phase(&spec)
        .into_iter()
        .filter(|(_, _, s)| s.phase != Paused)
    {
        let spec = paused(spec.clone());
        let d = step(
            &spec,
            &start,
            &Observations {
                backfill: Some(JobState::Running),
                analysis: pass(),
                ..seen(&start)
            },
            at(30),
        );
        let s = &d.status;
        assert_eq!(s.phase, Paused, "{name}");
        assert_eq!(
            s.paused,
            Some(PauseState {
                from: start.phase,
                reason: PauseReason::Manual
            }),
            "{name}"
        );
        assert_eq!(
            (s.step, s.traffic_percent),
            (start.step, start.traffic_percent),
            "{name}"
        );
        assert_eq!(
            d.flags, start.applied_flags,
            "{name}: flags untouched, same generation"
        );
        assert_eq!(reasons(&d), ["Paused"], "{name}");
        assert!(warnings(&d).is_empty(), "{name}");
        assert_eq!(condition(s, PROGRESSING), ("False", "Paused"), "{name}");
        assert_eq!(d.create_backfill_job, None, "{name}");

        // Held however long, whatever the gates say.
        for secs in [31, 3600] {
            let d = step(
                &spec,
                s,
                &Observations {
                    analysis: pass(),
                    ..seen(s)
                },
                at(secs),
            );
            assert_eq!(
                (d.status.phase, d.flags, d.events.len()),
                (Paused, start.applied_flags, 0),
                "{name} +{secs}s"
            );
        }
    }
}

#[test]
fn a_migration_created_paused_changes_nothing_for_users() {
    let mut sim = simulate(paused(spec()));
    for secs in 0..10 {
        sim.at(secs);
        let dual = sim.store.map(|f| f.values.dual_write);
        assert!(
            matches!(dual, None | Some(DualWrite::Off)),
            "+{secs}s: dual-write turned on while paused ({:?})",
            sim.status.phase
        );
    }
    assert_eq!(sim.status.phase, Paused);
    assert_eq!(
        sim.status.paused,
        Some(PauseState {
            from: Preflight,
            reason: PauseReason::Manual
        })
    );

    // Unpaused: preflight again, then shadow.
    sim.spec.paused = false;
    sim.generation = 2;
    assert_eq!(sim.at(20).status.phase, Preflight);
    assert_eq!(sim.at(21).status.phase, Shadow);
}

#[test]
fn resuming_returns_to_the_same_phase_and_step_with_a_fresh_bake() {
    let spec = spec();
    // (paused from, step, traffic, flags)
    let rows = [
        (Shadow, None, 0, fl::shadow()),
        (Split, Some(2), 25, fl::split(25)),
        (Split, Some(4), 100, fl::split(100)),
        (CutOver, None, 100, fl::cutover()),
    ];
    for (from, step_, traffic, flags) in rows {
        let mut sim = Simulation::from(
            spec.clone(),
            paused_in(&spec, from, step_, PauseReason::Manual),
        );
        let d = sim.at(500);
        let s = &d.status;
        assert_eq!(
            (s.phase, s.step, s.traffic_percent, s.paused.clone()),
            (from, step_, traffic, None),
            "{from:?}"
        );
        assert_eq!(d.flags, applied(GEN, flags), "{from:?}");
        assert_eq!(reasons(&d), ["Resumed"], "{from:?}");
        assert_eq!(s.step_started_at, time(500), "{from:?}: a fresh bake");
        if from == Split {
            assert_eq!(
                sim.at(559).status.step,
                step_,
                "{from:?}: bakes again in full"
            );
            let promoted = sim.at(560).status;
            assert_ne!((promoted.phase, promoted.step), (from, step_), "{from:?}");
        }
    }
}

#[test]
fn a_manual_pause_overrides_an_inconclusive_one() {
    let spec = paused(gated());
    let s = paused_in(&spec, Split, Some(2), PauseReason::Inconclusive);
    let d = step(
        &spec,
        &s,
        &Observations {
            analysis: pass(),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!(
        d.status.phase, Paused,
        "passing gates do not resume a manual pause"
    );
    assert_eq!(
        d.status.paused,
        Some(PauseState {
            from: Split,
            reason: PauseReason::Manual
        })
    );
    // Unpausing then resumes.
    let spec = gated();
    let d = step(&spec, &d.status, &seen(&d.status), at(40));
    assert_eq!((d.status.phase, d.status.step), (Split, Some(2)));
}

#[test]
fn a_paused_phase_without_its_record_rolls_back() {
    let spec = spec();
    let s = MigrationStatus {
        paused: None,
        ..paused_in(&spec, Split, Some(2), PauseReason::Manual)
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            flags: applied(GEN, fl::split(25)).into(),
            ..seen(&s)
        },
        at(30),
    );
    assert_eq!(d.status.phase, RollingBack);
    assert_eq!(warnings(&d), ["PauseStateLost"]);
}

// =============================================================================================
// 7. Spec changes mid-step

#[test]
fn changed_steps_remap_the_current_step_without_raising_traffic() {
    // Split step 2 (25%) since t0, 50 s into the bake; the spec changes (generation 2) at +50.
    // (new steps, step after, traffic after, bake restarted)
    let rows: [(&[i32], i32, i32, bool); 6] = [
        (&[10, 50, 100], 1, 10, true), // 25% is gone: back to the largest step below it
        (&[10, 20, 25, 100], 3, 25, true), // same traffic, new index
        (&[10, 25, 75, 100], 2, 25, false), // nothing to remap
        (&[5, 25, 100], 2, 25, false),
        (&[25, 50], 1, 25, true),
        (&[10, 20], 2, 20, true), // every step below 25%: the highest one
    ];
    for (steps, step_after, traffic, restarted) in rows {
        let old = spec();
        let spec = MigrationSpec {
            steps: steps.to_vec(),
            ..spec()
        };
        let s = status_in(&old, Split, Some(2));
        let d = step(
            &spec,
            &s,
            &Observations {
                generation: 2,
                ..seen(&s)
            },
            at(50),
        );
        let case = format!("{steps:?}");
        let st = &d.status;
        assert_eq!(
            (st.phase, st.step, st.traffic_percent),
            (Split, Some(step_after), traffic),
            "{case}"
        );
        assert_eq!(st.observed_generation, Some(2), "{case}");
        assert_eq!(
            d.flags.map(|f| f.values),
            Some(fl::split(traffic)),
            "{case}"
        );
        if restarted {
            assert_eq!(reasons(&d), ["SpecChanged"], "{case}");
            assert_eq!(st.step_started_at, time(50), "{case}: bake restarted");
            let last = st.history.last().unwrap();
            assert_eq!(
                (last.reason.as_str(), last.traffic_percent),
                ("SpecChanged", traffic),
                "{case}"
            );
        } else {
            assert!(d.events.is_empty(), "{case}");
            assert_eq!(st.step_started_at, time(0), "{case}: bake continues");
        }
        // The bake (1m) counts from the restart.
        let next = step(
            &spec,
            st,
            &Observations {
                generation: 2,
                ..seen(st)
            },
            at(60),
        );
        let expected = if restarted {
            step_after
        } else {
            step_after + 1
        };
        assert_eq!(
            (next.status.phase, next.status.step),
            (Split, Some(expected)),
            "{case} at +60"
        );
    }
}

#[test]
fn changed_steps_all_above_the_current_traffic_hold_it_as_step_zero_then_bake_into_step_one() {
    let old = spec();
    let spec = MigrationSpec {
        steps: vec![30, 60, 100],
        ..spec()
    };
    let s = status_in(&old, Split, Some(2)); // 25%
    let d = step(
        &spec,
        &s,
        &Observations {
            generation: 2,
            ..seen(&s)
        },
        at(50),
    );
    assert_eq!(
        (d.status.step, d.status.traffic_percent),
        (Some(0), 25),
        "traffic is never raised by a spec edit"
    );
    assert_eq!(reasons(&d), ["SpecChanged"]);
    let st = &d.status;
    let early = step(
        &spec,
        st,
        &Observations {
            generation: 2,
            ..seen(st)
        },
        at(109),
    );
    assert_eq!(early.status.step, Some(0), "the bake restarted at the edit");
    let next = step(
        &spec,
        st,
        &Observations {
            generation: 2,
            ..seen(st)
        },
        at(110),
    );
    assert_eq!(
        (next.status.step, next.status.traffic_percent),
        (Some(1), 30)
    );
}

#[test]
fn changed_steps_while_paused_in_split_remap_too() {
    let old = spec();
    let spec = MigrationSpec {
        steps: vec![10, 50, 100],
        ..paused(spec())
    };
    let s = paused_in(&old, Split, Some(2), PauseReason::Manual);
    let d = step(
        &spec,
        &s,
        &Observations {
            generation: 2,
            ..seen(&s)
        },
        at(50),
    );
    assert_eq!(
        (d.status.phase, d.status.step, d.status.traffic_percent),
        (Paused, Some(1), 10)
    );
    assert_eq!(
        d.flags,
        applied(GEN + 1, fl::split(10)),
        "traffic lowered at once, even while paused"
    );
    assert_eq!(reasons(&d), ["SpecChanged"]);
}

#[test]
fn a_spec_change_outside_split_only_records_the_generation() {
    let old = spec();
    let spec = MigrationSpec {
        steps: vec![50, 100],
        bake_time: "2m".into(),
        ..spec()
    };
    for phase in [Preflight, Shadow, CutOver, Completed, RolledBack] {
        let s = status_in(&old, phase, None);
        let d = step(
            &spec,
            &s,
            &Observations {
                generation: 3,
                ..seen(&s)
            },
            at(10),
        );
        assert_eq!(d.status.observed_generation, Some(3), "{phase:?}");
        assert!(!reasons(&d).contains(&"SpecChanged"), "{phase:?}");
    }
    // A longer bakeTime applies to the running bake.
    let s = status_in(&old, Split, Some(2));
    let spec = MigrationSpec {
        bake_time: "2m".into(),
        ..old
    };
    assert_eq!(
        step(
            &spec,
            &s,
            &Observations {
                generation: 2,
                ..seen(&s)
            },
            at(60)
        )
        .status
        .step,
        Some(2)
    );
    assert_eq!(
        step(
            &spec,
            &s,
            &Observations {
                generation: 2,
                ..seen(&s)
            },
            at(120)
        )
        .status
        .step,
        Some(3)
    );
}

// =============================================================================================
// 8. Resume after an operator restart

#[test]
fn a_restarted_operator_continues_mid_step_without_skipping_or_repeating() {
    let spec = gated();
    // Mid-step: Split step 2, one failure on record, a last analysis.
    let mut sim = Simulation::from(spec.clone(), status_in(&spec, Split, Some(2)));
    sim.with(
        15,
        Observations {
            analysis: pass(),
            ..Observations::default()
        },
    );
    sim.with(
        30,
        Observations {
            analysis: pass(),
            ..Observations::default()
        },
    );
    sim.with(
        45,
        Observations {
            analysis: fail(),
            ..Observations::default()
        },
    );
    assert_eq!(
        (sim.status.consecutive_failures, sim.status.step),
        (1, Some(2))
    );

    // A second operator starts from the status as stored in the API server.
    let mut restarted = Simulation::from(spec.clone(), roundtrip(&sim.status));
    assert_eq!(
        (&restarted.status, restarted.store),
        (&sim.status, sim.store)
    );

    let mut steps_seen = vec![];
    for secs in (60..=400).step_by(15) {
        let obs = Observations {
            analysis: pass(),
            ..Observations::default()
        };
        let a = sim.with(secs, obs.clone());
        let b = restarted.with(secs, obs);
        assert_eq!(a, b, "+{secs}s");
        if steps_seen.last() != Some(&(a.status.phase, a.status.step)) {
            steps_seen.push((a.status.phase, a.status.step));
        }
    }
    assert_eq!(
        steps_seen,
        [
            (Split, Some(2)),
            (Split, Some(3)),
            (Split, Some(4)),
            (CutOver, None)
        ],
        "each step once, in order"
    );
}

// =============================================================================================
// 9. Problems

#[test]
fn a_problem_blocks_preflight_reports_once_and_backs_off() {
    let spec = with_workloads(spec());
    let mut sim = Simulation::from(spec.clone(), status_in(&spec, Preflight, None));
    let missing = || Observations {
        problems: vec![Problem::new(
            "WorkloadNotFound",
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
    let problem = |reason: &str| Observations {
        problems: vec![Problem::new(reason, "…")],
        ..seen(&s)
    };
    let d = step(&spec, &s, &problem("WorkloadNotFound"), at(1));
    let d = step(&spec, &d.status, &problem("FlagStoreForbidden"), at(2));
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
            "FlagStoreForbidden",
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
        "WorkloadNotFound",
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
        "WorkloadNotFound",
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

// =============================================================================================
// 10. Requeue

#[test]
fn requeue_waits_for_the_rest_of_the_bake() {
    // (spec, status, at, requeue)
    let rows = [
        (
            spec(),
            status_in(&spec(), Shadow, None),
            30,
            Duration::from_secs(90),
        ),
        (
            spec(),
            status_in(&spec(), Split, Some(1)),
            20,
            Duration::from_secs(40),
        ),
        (
            spec(),
            status_in(&spec(), Split, Some(3)),
            59,
            Duration::from_secs(1),
        ),
        (
            complete_after(spec(), "10m"),
            status_in(&spec(), CutOver, None),
            400,
            Duration::from_secs(200),
        ),
        (
            complete_after(spec(), "1h"),
            status_in(&spec(), CutOver, None),
            0,
            IDLE_REQUEUE,
        ),
        (spec(), status_in(&spec(), CutOver, None), 100, IDLE_REQUEUE),
        (
            spec(),
            status_in(&spec(), Completed, None),
            100,
            IDLE_REQUEUE,
        ),
        (
            spec(),
            status_in(&spec(), RolledBack, None),
            100,
            IDLE_REQUEUE,
        ),
        (
            paused(spec()),
            paused_in(&spec(), Split, Some(2), PauseReason::Manual),
            100,
            IDLE_REQUEUE,
        ),
    ];
    for (spec, s, secs, requeue) in rows {
        let d = step(&spec, &s, &seen(&s), at(secs));
        assert_eq!(d.status.phase, s.phase, "{:?} +{secs}s", s.phase);
        assert_eq!(d.requeue_after, requeue, "{:?} +{secs}s", s.phase);
    }
}

#[test]
fn requeue_is_short_right_after_every_transition() {
    let spec = with_backfill(spec());
    // (name, spec, status, observations, phase after)
    let split = status_in(&spec, Split, Some(2));
    let shadow = status_in(&spec, Shadow, None);
    let backfill = status_in(&spec, Backfill, None);
    let cutover = status_in(&spec, CutOver, None);
    let paused_split = paused_in(&spec, Split, Some(2), PauseReason::Manual);
    let pending = MigrationStatus {
        observed_generation: Some(1),
        ..MigrationStatus::default()
    };
    let rows = [
        (
            "start",
            spec.clone(),
            pending.clone(),
            seen(&pending),
            Preflight,
        ),
        (
            "preflight passed",
            spec.clone(),
            status_in(&spec, Preflight, None),
            seen(&status_in(&spec, Preflight, None)),
            Shadow,
        ),
        (
            "shadow passed",
            spec.clone(),
            shadow.clone(),
            seen(&shadow),
            Backfill,
        ),
        (
            "backfill done",
            spec.clone(),
            backfill.clone(),
            Observations {
                backfill: Some(JobState::Succeeded),
                ..seen(&backfill)
            },
            Split,
        ),
        ("step", spec.clone(), split.clone(), seen(&split), Split),
        (
            "cutover",
            spec.clone(),
            status_in(&spec, Split, Some(4)),
            seen(&status_in(&spec, Split, Some(4))),
            CutOver,
        ),
        (
            "paused",
            paused(spec.clone()),
            split.clone(),
            seen(&split),
            Paused,
        ),
        (
            "resumed",
            spec.clone(),
            paused_split.clone(),
            seen(&paused_split),
            Split,
        ),
        (
            "abort",
            spec.clone(),
            split.clone(),
            Observations {
                commands: abort(),
                ..seen(&split)
            },
            RollingBack,
        ),
        (
            "retry",
            spec.clone(),
            status_in(&spec, RolledBack, None),
            Observations {
                commands: retry(),
                ..seen(&status_in(&spec, RolledBack, None))
            },
            Pending,
        ),
        (
            "complete",
            spec.clone(),
            cutover.clone(),
            Observations {
                commands: promote(),
                ..seen(&cutover)
            },
            Completed,
        ),
    ];
    for (name, spec, s, obs, phase) in rows {
        let d = step(&spec, &s, &obs, at(600));
        assert_eq!(d.status.phase, phase, "{name}");
        assert!(
            d.requeue_after <= SHORT,
            "{name}: requeue {:?} after {:?} -> {phase:?}",
            d.requeue_after,
            s.phase
        );
    }
}

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

#[test]
fn with_an_applied_generation_query_a_step_is_promoted_only_once_every_instance_runs_its_flags() {
    let spec = checking_generation(spec());
    // Split step 1 baked long ago (bakeTime 1m), flags generation GEN written.
    let s = status_in(&spec, Split, Some(1));
    // (generation reported now, generation recorded before, promoted?)
    #[rustfmt::skip]
    let rows: [(Option<i64>, Option<i64>, bool); 7] = [
        (None,          None,          false), // no instance answered yet: nothing confirmed
        (Some(GEN - 1), None,          false), // an instance still runs the previous flags
        (Some(GEN - 1), Some(GEN),     false), // the fresh answer wins over the recorded one
        (Some(GEN),     None,          true),
        (Some(GEN + 1), None,          true),  // ahead (another writer) still includes ours
        (None,          Some(GEN),     true),  // no fresh answer: the recorded one stands
        (None,          Some(GEN - 1), false),
    ];
    for (reported, recorded, promoted) in rows {
        let row = format!("reported {reported:?}, recorded {recorded:?}");
        let s = MigrationStatus {
            reported_generation: recorded,
            ..s.clone()
        };
        let d = step(
            &spec,
            &s,
            &Observations {
                reported_generation: reported,
                ..seen(&s)
            },
            at(600),
        );
        let expected = if promoted { Some(2) } else { Some(1) };
        assert_eq!(d.status.step, expected, "{row}");
        assert_eq!(
            d.status.reported_generation,
            reported.or(recorded),
            "{row}: the last answer is kept in status"
        );
        if !promoted && d.status.reported_generation.is_some() {
            let progressing = d
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == "Progressing")
                .expect("Progressing");
            assert!(
                progressing.message.contains(&format!(
                    "waiting for every instance to apply flag generation {GEN}"
                )),
                "{row}: {}",
                progressing.message
            );
        }
    }

    // Without the query the reported generation plays no part.
    let plain = super::tests::spec();
    let s = status_in(&plain, Split, Some(1));
    let d = step(
        &plain,
        &s,
        &Observations {
            reported_generation: Some(1),
            ..seen(&s)
        },
        at(600),
    );
    assert_eq!(d.status.step, Some(2));
}

#[test]
fn the_applied_generation_query_alone_schedules_analysis() {
    let spec = checking_generation(spec());
    assert!(spec.analysis.as_ref().is_some_and(|a| a.gates.is_empty()));
    let s = status_in(&spec, Split, Some(1));
    assert_eq!(next_analysis_in(&spec, &s, at(0)), Some(Duration::ZERO));
    assert_eq!(
        next_analysis_in(&super::tests::spec(), &s, at(0)),
        None,
        "no analysis section"
    );
}

// =============================================================================================
// Evidence: cohorts, polled alerts, rollback from CutOver, back-off, Job inputs

/// Gates shaped like the shipped ones: drift (any cohort), a comparison of both cohorts, and an
/// absolute check of the new cohort.
fn cohort_gates() -> MigrationSpec {
    let gate = |name: &str, cohorts: Cohorts| Gate {
        name: name.into(),
        query: format!("{name}_query"),
        max: Some(1.0),
        min: None,
        on_no_data: NoDataPolicy::Inconclusive,
        cohorts,
        samples_query: None,
        min_samples: None,
    };
    let mut spec = gated();
    if let Some(a) = spec.analysis.as_mut() {
        a.gates = vec![
            gate("drift", Cohorts::Any),
            gate("error-delta", Cohorts::Both),
            gate("new-errors", Cohorts::New),
        ];
    }
    spec.rollback.on_alerts = vec![];
    spec
}

/// What the gates of `spec` answer at `traffic` percent on the new system when every cohort with
/// users is healthy and a cohort without users has no data (an empty result), as Prometheus
/// answers: the reconciler skips gates whose cohorts have no users (`Cohorts::served_at`).
fn healthy_answers(spec: &MigrationSpec, traffic: i32) -> Vec<GateResult> {
    use crate::analysis::{Outcome, judge};
    let gates = &spec.analysis.as_ref().expect("analysis").gates;
    gates
        .iter()
        .map(|g| {
            if !g.cohorts.served_at(traffic) {
                return GateResult {
                    name: g.name.clone(),
                    verdict: Verdict::Skipped,
                    value: None,
                    min: g.min,
                    max: g.max,
                    message: None,
                };
            }
            let has_data = match g.cohorts {
                Cohorts::Any => true,
                Cohorts::Legacy => traffic < 100,
                Cohorts::New => traffic > 0,
                Cohorts::Both => traffic > 0 && traffic < 100,
            };
            let outcome = Outcome::Values(if has_data { vec![0.1] } else { vec![] });
            judge(g, &outcome, None)
        })
        .collect()
}

#[test]
fn gates_on_a_cohort_without_users_are_skipped_so_a_healthy_migration_completes() {
    let spec = complete_after(cohort_gates(), "2m");
    let mut sim = simulate(spec.clone());
    let mut secs = 0;
    let mut seen_phases = vec![];
    while sim.status.phase != Completed {
        secs += 15;
        assert!(secs < 10_000, "stalled at {:?}", sim.phase());
        let traffic = sim.status.traffic_percent;
        let analysis = evaluates(sim.status.phase).then(|| healthy_answers(&spec, traffic));
        sim.with(
            secs,
            Observations {
                analysis,
                ..Observations::default()
            },
        );
        assert_ne!(sim.status.phase, Paused, "no pause on a healthy run");
        if seen_phases.last() != Some(&sim.phase()) {
            seen_phases.push(sim.phase());
        }
    }
    assert!(
        seen_phases.contains(&(Split, Some(4), 100)),
        "{seen_phases:?}"
    );
    assert!(
        seen_phases.contains(&(CutOver, None, 100)),
        "{seen_phases:?}"
    );
    let last = sim.status.last_analysis.clone().expect("evaluated");
    let verdict = |name: &str| {
        last.gates
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.verdict)
    };
    assert_eq!(
        verdict("error-delta"),
        Some(Verdict::Skipped),
        "legacy has no users in CutOver"
    );
    assert_eq!(verdict("new-errors"), Some(Verdict::Pass));
    assert_eq!(sim.status.healthy.as_deref(), Some("True"));
}

#[test]
fn a_cohort_gate_still_fails_a_regression_while_both_cohorts_have_users() {
    let spec = cohort_gates();
    let s = status_in(&spec, Split, Some(2));
    let mut answers = healthy_answers(&spec, 25);
    answers[1] = crate::analysis::judge(
        &spec.analysis.as_ref().expect("analysis").gates[1],
        &crate::analysis::Outcome::Values(vec![3.0]),
        None,
    );
    let mut sim = Simulation::from(spec, s);
    for secs in [15, 30] {
        sim.with(
            secs,
            Observations {
                analysis: Some(answers.clone()),
                ..Observations::default()
            },
        );
    }
    assert_eq!(sim.status.phase, RollingBack);
    assert_eq!(
        sim.status.last_rollback.as_ref().map(|r| r.reason.as_str()),
        Some("GateFailed")
    );
}

/// onAlerts polled from a Prometheus, no gates.
fn alerts_only() -> MigrationSpec {
    let mut spec = gated();
    if let Some(a) = spec.analysis.as_mut() {
        a.gates = vec![];
    }
    spec
}

#[test]
fn unanswered_alert_polls_hold_the_bake_and_pause_instead_of_promoting() {
    let spec = alerts_only();
    let s = status_in(&spec, Split, Some(1));
    assert_eq!(
        s.passing_since, None,
        "polled alerts need evidence like gates"
    );
    let unanswered = || Observations {
        analysis: Some(vec![]),
        alerts_unanswered: Some("Prometheus unreachable: connection refused".into()),
        ..Observations::default()
    };
    let mut sim = Simulation::from(spec.clone(), s);
    // The bake (1m) is long over by the third poll; inconclusiveLimit is 3.
    for secs in [60, 75] {
        sim.with(secs, unanswered());
        assert_eq!(
            sim.phase(),
            (Split, Some(1), 10),
            "no promotion without evidence at +{secs}s"
        );
    }
    let d = sim.with(90, unanswered());
    assert_eq!(sim.status.phase, Paused);
    assert_eq!(warnings(&d), ["Inconclusive"]);
    let alerts = sim
        .status
        .last_analysis
        .as_ref()
        .and_then(|r| r.alerts.clone())
        .expect("the poll is recorded");
    assert_eq!(alerts.verdict, Verdict::Inconclusive);
    assert!(
        alerts
            .message
            .unwrap_or_default()
            .contains("connection refused")
    );

    // Answers again: resumes, bakes a full minute on answered polls, then promotes.
    let answered = || Observations {
        analysis: Some(vec![]),
        ..Observations::default()
    };
    for secs in [105, 120, 135, 150, 165] {
        sim.with(secs, answered());
        assert_eq!(sim.phase(), (Split, Some(1), 10), "+{secs}s");
    }
    sim.with(180, answered());
    assert_eq!(
        sim.phase(),
        (Split, Some(2), 25),
        "a minute of answered polls"
    );
}

fn no_reverse(rollback_job: Option<crate::crd::RollbackJobSpec>) -> MigrationSpec {
    let spec = gated();
    MigrationSpec {
        cutover: CutoverSpec {
            reverse_dual_write: false,
            rollback_job,
            ..spec.cutover.clone()
        },
        ..spec
    }
}

fn rollback_job() -> Option<crate::crd::RollbackJobSpec> {
    Some(crate::crd::RollbackJobSpec {
        image: "chat-service:1".into(),
        args: vec!["rollback".into()],
        secret_name: None,
    })
}

#[test]
fn automatic_rollback_from_cutover_is_refused_when_nothing_carries_the_writes_back() {
    let spec = no_reverse(None);
    let s = MigrationStatus {
        consecutive_failures: 1,
        cut_over_at: time(0),
        ..status_in(&spec, CutOver, None)
    };
    // (observations, phase after, Degraded reason)
    let rows = [
        (
            Observations {
                analysis: fail(),
                ..seen(&s)
            },
            CutOver,
            "RollbackRefused",
        ),
        (
            Observations {
                firing_alerts: firing(),
                ..seen(&s)
            },
            CutOver,
            "RollbackRefused",
        ),
        (
            Observations {
                commands: abort(),
                ..seen(&s)
            },
            RollingBack,
            "AsExpected",
        ),
    ];
    for (obs, phase, degraded) in rows {
        let d = step(&spec, &s, &obs, at(15));
        assert_eq!(d.status.phase, phase, "{obs:?}");
        assert_eq!(condition(&d.status, DEGRADED).1, degraded);
        if phase == CutOver {
            let message = &d
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == DEGRADED)
                .expect("Degraded")
                .message;
            assert!(
                message.contains("reverseDualWrite is false") && message.contains("rollbackJob"),
                "says why and what to do: {message}"
            );
            assert_eq!(warnings(&d), ["RollbackRefused"]);
            assert_eq!(d.flags, s.applied_flags, "the new system stays primary");
        } else {
            assert_eq!(warnings(&d), ["WritesNotCarriedBack", "Aborted"]);
        }
    }
    // With reverse dual-write the same failure rolls back as usual.
    let spec = gated();
    let s = MigrationStatus {
        consecutive_failures: 1,
        ..status_in(&spec, CutOver, None)
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            analysis: fail(),
            ..seen(&s)
        },
        at(15),
    );
    assert_eq!(d.status.phase, RollingBack);
}

#[test]
fn a_rollback_from_cutover_runs_the_rollback_job_before_it_is_rolled_back() {
    let spec = no_reverse(rollback_job());
    let s = MigrationStatus {
        consecutive_failures: 1,
        cut_over_at: time(0),
        ..status_in(&spec, CutOver, None)
    };
    let mut sim = Simulation::from(spec, s);
    sim.with(
        15,
        Observations {
            analysis: fail(),
            ..Observations::default()
        },
    );
    assert_eq!(sim.status.phase, RollingBack);
    assert_eq!(sim.store.map(|f| f.values), Some(fl::rollback()));
    let job = |state: JobState| Observations {
        rollback_job: Some(state),
        ..Observations::default()
    };
    // (at, job, phase, job to create, Degraded reason)
    #[rustfmt::skip]
    let rows: [(i64, Option<JobState>, Phase, Option<&str>, &str); 5] = [
        (16, None,                                RollingBack, Some("chat-rollback-1"), "AsExpected"),
        (17, Some(JobState::Running),             RollingBack, None,                    "AsExpected"),
        (18, Some(JobState::Failed("exit 1".into())), RollingBack, None,                "RollbackJobFailed"),
        (19, Some(JobState::Missing),             RollingBack, Some("chat-rollback-1"), "AsExpected"),
        (20, Some(JobState::Succeeded),           RolledBack,  None,                    "AsExpected"),
    ];
    for (secs, state, phase, create, degraded) in rows {
        let d = sim.with(secs, state.clone().map_or_else(Observations::default, job));
        assert_eq!(d.status.phase, phase, "{state:?}");
        assert_eq!(d.create_rollback_job.as_deref(), create, "{state:?}");
        assert_eq!(condition(&d.status, DEGRADED).1, degraded, "{state:?}");
        if phase == RollingBack && state.is_some() {
            assert!(
                d.requeue_after >= Duration::from_secs(2),
                "no hot loop on a running Job"
            );
        }
    }
}

#[test]
fn deleting_in_cutover_keeps_the_system_that_holds_every_write_primary() {
    // (reverse dual-write, phase, new stays primary)
    for (reverse, phase, new_primary) in [
        (false, CutOver, true),
        (true, CutOver, false),
        (false, Split, false),
        (false, Completed, true),
        (true, Completed, true),
    ] {
        let spec = MigrationSpec {
            cutover: CutoverSpec {
                reverse_dual_write: reverse,
                ..CutoverSpec::default()
            },
            ..spec()
        };
        let step_ = (phase == Split).then_some(1);
        let f = deletion_flags(&spec, &status_in(&spec, phase, step_));
        assert_eq!(
            f.read_split_percent == Percent::ALL,
            new_primary,
            "reverse {reverse} in {phase}: {f:?}"
        );
        let paused = paused_in(&spec, CutOver, None, PauseReason::Manual);
        if phase == CutOver {
            assert_eq!(deletion_flags(&spec, &paused), f, "paused in CutOver alike");
        }
    }
}

#[test]
fn rolling_back_against_a_failing_flag_store_backs_off() {
    let spec = spec();
    let s = MigrationStatus {
        last_rollback: Some(RollbackRecord {
            time: at(0),
            from: Split,
            reason: "Aborted".into(),
            message: "abort".into(),
        }),
        ..status_in(&spec, RollingBack, None)
    };
    // The store still holds the Split flags: the rollback flags cannot be written.
    let throttled = Observations {
        problems: vec![Problem::new(
            "FlagStoreUnavailable",
            "SSM: ThrottlingException",
        )],
        flags: applied(GEN, fl::split(10)).into(),
        ..seen(&s)
    };
    let d = step(&spec, &s, &throttled, at(0));
    assert_eq!(d.status.phase, RollingBack);
    assert!(
        d.requeue_after >= Duration::from_secs(2),
        "{:?}",
        d.requeue_after
    );
    let later = step(&spec, &d.status, &throttled, at(60));
    assert_eq!(
        later.requeue_after,
        Duration::from_secs(60),
        "grows with the problem's age"
    );
}

#[test]
fn dual_write_start_and_cut_over_are_recorded_and_a_retry_forgets_them() {
    let mut sim = simulate(spec());
    let mut secs = 0;
    while sim.status.phase != CutOver {
        secs += 10;
        sim.at(secs);
        assert!(secs < 5_000);
        if sim.status.phase == Shadow && sim.status.dual_write_started_at.is_none() {
            panic!("Shadow without a recorded dual-write start");
        }
    }
    let shadow_entry = sim
        .status
        .history
        .iter()
        .find(|t| t.to == Shadow)
        .map(|t| t.time);
    assert_eq!(sim.status.dual_write_started_at, shadow_entry);
    assert_eq!(sim.status.cut_over_at, sim.status.phase_started_at);
    sim.with(
        secs + 1,
        Observations {
            commands: abort(),
            ..Observations::default()
        },
    );
    sim.at(secs + 2);
    assert_eq!(sim.status.phase, RolledBack);
    sim.with(
        secs + 3,
        Observations {
            commands: retry(),
            ..Observations::default()
        },
    );
    assert_eq!(
        (sim.status.dual_write_started_at, sim.status.cut_over_at),
        (None, None)
    );
}

#[test]
fn job_names_fit_a_label_value_whatever_the_service_name() {
    let service = "s".repeat(63);
    let spec = MigrationSpec {
        service: service.clone(),
        ..with_validation(spec())
    };
    let s = status_in(&spec, Backfill, None);
    let d = step(&spec, &s, &seen(&s), at(1));
    let name = d.create_backfill_job.expect("a backfill Job");
    assert!(name.len() <= 63 && name.ends_with("-backfill-1"), "{name}");
    let s = MigrationStatus {
        backfill_job: Some(name),
        ..d.status
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            backfill: Some(JobState::Succeeded),
            ..seen(&s)
        },
        at(2),
    );
    let name = d.create_validate_job.expect("a validation Job");
    assert!(name.len() <= 63 && name.ends_with("-validate-1"), "{name}");
}

#[test]
fn shadow_reads_compare_only_what_the_new_store_holds() {
    // With appliedGenerationQuery: nothing until every instance reports the dual-writing
    // document, then the data written since that moment, then everything once backfilled.
    let mut sim = simulate(checking_generation(with_backfill(spec())));
    sim.at(0);
    let entered = sim.at(1);
    assert_eq!(entered.status.phase, Shadow);
    let first = entered.flags.expect("the Shadow document");
    assert_eq!(first.values.dual_write, DualWrite::Sync);
    assert_eq!(first.values.shadow_compare_from, ShadowCompare::Nothing);
    let reported = |generation| Observations {
        reported_generation: Some(generation),
        ..Observations::default()
    };
    // An instance still on the Preflight document: some writes may miss the new store.
    let d = sim.with(20, reported(first.generation - 1));
    assert_eq!(
        d.flags,
        Some(first),
        "unchanged while not every instance dual-writes"
    );
    let d = sim.with(30, reported(first.generation));
    let second = d.flags.expect("a document");
    assert_eq!(sim.status.dual_write_applied_at, time(30));
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(
        second.values,
        fl::compare(first.values, ShadowCompare::From(at(30)))
    );
    // Later reports change nothing.
    let d = sim.with(40, reported(second.generation));
    assert_eq!(d.flags, Some(second));
    assert_eq!(sim.status.dual_write_applied_at, time(30));

    // Without a backfill the new store never holds the older data: Split keeps the scope.
    let spec = checking_generation(spec());
    let s = status_in(&spec, Split, Some(2));
    assert_eq!(
        desired_flags(&spec, &s).map(|f| f.shadow_compare_from),
        Some(ShadowCompare::From(t0()))
    );
    // After a backfill it holds everything; Backfill itself does not yet.
    let spec = with_backfill(spec);
    for (phase, step_, compare) in [
        (Backfill, None, ShadowCompare::From(t0())),
        (Split, Some(1), ShadowCompare::All),
        (CutOver, None, ShadowCompare::All),
    ] {
        let s = status_in(&spec, phase, step_);
        assert_eq!(
            desired_flags(&spec, &s).map(|f| f.shadow_compare_from),
            Some(compare),
            "{phase:?}"
        );
    }
    // A retry starts over: nothing compared until the new attempt's dual write is seen.
    let s = MigrationStatus {
        dual_write_applied_at: time(30),
        ..status_in(&spec, RolledBack, None)
    };
    let d = step(
        &spec,
        &s,
        &Observations {
            commands: retry(),
            ..seen(&s)
        },
        at(100),
    );
    assert_eq!(d.status.dual_write_applied_at, None);
}
