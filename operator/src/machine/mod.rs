//! The phase machine: `decide(spec, status, observations, now) -> Decision`.
//!
//! Pure: no I/O, no clock. The reconciler gathers [`Observations`], calls [`decide`] and applies
//! the [`Decision`] idempotently. Everything the machine needs to resume after a restart lives in
//! `MigrationStatus`, so a new operator process continues exactly where the old one stopped.
//!
//! One file over 600 lines on purpose: `decide` and its phase handlers are one state machine over one status, read top to bottom; flags per phase and conditions are apart.

mod conditions;
mod flags;
#[cfg(test)]
mod tests;

use std::time::Duration;

use jiff::Timestamp;

use crate::crd::{
    AnalysisRun, FlagValues, Flags, GateResult, Health, MigrationSpec, MigrationStatus,
    PauseReason, PauseState, Phase, RollbackRecord, Side, SpecDuration, Transition, Verdict,
    annotations,
};
use crate::reason::{Reason, Reasoned};
use ficus_flags::FlagRead;

pub use conditions::{DEGRADED, PROGRESSING, READY};
pub use flags::{deletion_flags, desired_flags, rollback_flags};

/// How many transitions `status.history` keeps.
pub const HISTORY_LIMIT: usize = 20;
/// Longest time between reconciles of a Migration with nothing scheduled.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(300);

/// Manual commands, read from annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commands {
    pub promote: bool,
    pub abort: bool,
    pub retry: bool,
}

/// Something in the environment that blocks progress (never rollback): a missing Deployment, a
/// flag store the operator may not write, an invalid gate query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The Degraded condition's reason and the Event's.
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// The Problem an error describes: its reason and its message.
    pub fn from_error(e: &impl Reasoned) -> Self {
        Self::new(e.reason(), e.to_string())
    }
}

/// A workload as seen by its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    pub replicas: i32,
    pub ready_replicas: i32,
}

/// The backfill or validation Job of the current attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Missing,
    Running,
    Succeeded,
    Failed(String),
}

/// What the reconciler saw before deciding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    /// `metadata.generation` of the Migration.
    pub generation: i64,
    pub commands: Commands,
    /// What the flag stores hold now.
    pub flags: FlagRead,
    /// Present when the spec names workloads and they exist.
    pub legacy: Option<WorkloadState>,
    pub candidate: Option<WorkloadState>,
    /// A fresh gate evaluation, when one was due this reconcile.
    pub analysis: Option<Vec<GateResult>>,
    /// Names from `rollback.onAlerts` that are firing now.
    pub firing_alerts: Vec<String>,
    /// Why the `ALERTS` poll of this evaluation got no answer (with `rollback.onAlerts` and a
    /// Prometheus): no evidence that nothing fires, so no promotion on it.
    pub alerts_unanswered: Option<String>,
    pub backfill: Option<JobState>,
    /// The validation Job (`backfill.validateArgs`), once its name is in the status.
    pub validate: Option<JobState>,
    /// The rollback Job (`cutover.rollbackJob`), once its name is in the status.
    pub rollback_job: Option<JobState>,
    /// The lowest flag generation the services report applied, when
    /// `analysis.appliedGenerationQuery` was evaluated this reconcile and answered.
    pub reported_generation: Option<i64>,
    pub problems: Vec<Problem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A Kubernetes Event to publish on the Migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    pub reason: Reason,
    pub message: String,
    /// What the operator did, e.g. `EnterSplit2`. Events with the same reason but different
    /// actions stay separate in `kubectl describe` instead of folding into one series.
    pub action: String,
}

/// What the reconciler must do, all of it idempotent.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to write (only written when it differs from the current one).
    pub status: MigrationStatus,
    /// Flags to write to every store when they differ from what is there.
    pub flags: Option<Flags>,
    /// Desired replicas per workload.
    pub scale: Vec<(Side, i32)>,
    /// Create the backfill Job with this name when it does not exist.
    pub create_backfill_job: Option<String>,
    /// Create the validation Job with this name when it does not exist.
    pub create_validate_job: Option<String>,
    /// Create the rollback Job with this name when it does not exist.
    pub create_rollback_job: Option<String>,
    pub events: Vec<Note>,
    /// Command annotations handled by this decision, to remove.
    pub consumed: Vec<&'static str>,
    pub requeue_after: Duration,
}

/// Decides what happens next. The phases are drawn in `docs/concepts.md`; the rules are in
/// `docs/architecture.md` (phases, bake, rollback, pause, spec changes, requeue timing).
pub fn decide(
    spec: &MigrationSpec,
    current: &MigrationStatus,
    obs: &Observations,
    now: Timestamp,
) -> Decision {
    let mut m = Machine {
        spec,
        obs,
        now,
        status: current.clone(),
        problems: obs.problems.clone(),
        events: Vec::new(),
        consumed: Vec::new(),
        scale: Vec::new(),
        create_job: None,
        create_validate_job: None,
        create_rollback_job: None,
    };
    m.run();
    m.finish(current)
}

/// A Migration the operator's policy refuses: only the Degraded condition changes (with its
/// Warning Event when it starts). Nothing is observed or written, the phase stays, and the
/// reconcile is retried slowly: a spec edit wakes it anyway.
pub fn refuse(current: &MigrationStatus, problems: &[Problem], now: Timestamp) -> Decision {
    let mut status = current.clone();
    let events = conditions::update(&mut status, current, problems, now)
        .into_iter()
        .collect();
    Decision {
        status,
        flags: None,
        scale: Vec::new(),
        create_backfill_job: None,
        create_validate_job: None,
        create_rollback_job: None,
        events,
        consumed: Vec::new(),
        requeue_after: Duration::from_secs(120),
    }
}

struct Machine<'a> {
    spec: &'a MigrationSpec,
    obs: &'a Observations,
    now: Timestamp,
    status: MigrationStatus,
    /// Observed problems plus those the recorded analysis shows (an invalid gate query).
    problems: Vec<Problem>,
    events: Vec<Note>,
    consumed: Vec<&'static str>,
    scale: Vec<(Side, i32)>,
    create_job: Option<String>,
    create_validate_job: Option<String>,
    create_rollback_job: Option<String>,
}

impl Machine<'_> {
    fn run(&mut self) {
        self.apply_spec_change();
        self.record_analysis();
        self.note_dual_write_applied();
        self.problems.extend(analysis_problems(&self.status));

        let phase = self.status.phase;
        let cmd = &self.obs.commands;

        // Rollback wins over everything else, from every active phase.
        if let Some((reason, message)) = self.rollback_cause() {
            return self.roll_back(reason, &message);
        }
        if cmd.abort && !phase.is_active() {
            self.consumed.push(annotations::ABORT);
            if phase == Phase::Completed {
                self.note(
                    EventType::Warning,
                    Reason::AbortIgnored,
                    "the migration is complete; there is nothing to roll back",
                );
            }
        }
        if cmd.promote {
            // Consumed everywhere so a stale promote never fires in a later phase.
            self.consumed.push(annotations::PROMOTE);
            if !matches!(phase, Phase::Shadow | Phase::Split | Phase::CutOver) {
                self.note(
                    EventType::Warning,
                    Reason::PromoteIgnored,
                    format!("nothing to promote in phase {phase}"),
                );
            }
        }
        if cmd.retry {
            self.consumed.push(annotations::RETRY);
            if phase == Phase::RolledBack {
                return self.retry();
            }
        }

        match phase {
            Phase::Pending => self.transition(
                Phase::Preflight,
                Reason::Started,
                "checking flag stores and workloads",
            ),
            Phase::Preflight => self.preflight(),
            Phase::Shadow | Phase::Backfill | Phase::Split | Phase::CutOver => self.active(),
            Phase::Paused => self.paused(),
            Phase::RollingBack => self.rolling_back(),
            Phase::Completed => self.retire_legacy(),
            Phase::RolledBack => {}
        }
    }

    /// A spec edit during Split re-maps the step: keep the largest step not above the current
    /// traffic so traffic never grows without evidence, and bake again.
    fn apply_spec_change(&mut self) {
        let generation = self.obs.generation;
        let changed = self
            .status
            .observed_generation
            .is_some_and(|g| g != generation);
        self.status.observed_generation = Some(generation);
        if !changed {
            return;
        }
        let in_split = self.status.phase == Phase::Split
            || self
                .status
                .paused
                .as_ref()
                .is_some_and(|p| p.from == Phase::Split);
        let Some(step) = self.status.step.filter(|_| in_split) else {
            return;
        };
        let traffic = self.status.traffic_percent;
        let steps = &self.spec.steps;
        // Every new step above the current traffic: hold it as step 0 ("before step 1") and
        // bake there; promotion then goes to the first step.
        let (new_step, new_traffic) = match steps.iter().rposition(|&s| s <= traffic) {
            Some(index) => (index as i32 + 1, steps[index]),
            None => (0, traffic),
        };
        if new_step == step && new_traffic == traffic {
            return;
        }
        let from = self.status.phase;
        self.status.step = Some(new_step);
        self.status.traffic_percent = new_traffic;
        self.restart_bake();
        self.push_history(
            from,
            from,
            Reason::SpecChanged,
            format!(
                "steps changed: now step {new_step}/{} at {new_traffic}%",
                steps.len()
            ),
        );
        self.note(
            EventType::Normal,
            Reason::SpecChanged,
            format!(
                "steps changed: continuing at step {new_step}/{} ({new_traffic}%), bake restarted",
                steps.len()
            ),
        );
    }

    /// Folds a fresh evaluation into the counters and the passing streak.
    fn record_analysis(&mut self) {
        if let Some(generation) = self.obs.reported_generation {
            self.status.reported_generation = Some(generation);
        }
        let Some(gates) = &self.obs.analysis else {
            return;
        };
        if !evaluates(self.status.phase) {
            return;
        }
        // The alert poll is evidence like a gate: unanswered, it is Inconclusive.
        let alerts = self.polls_alerts().then(|| GateResult {
            name: "ALERTS".into(),
            verdict: if self.obs.alerts_unanswered.is_some() {
                Verdict::Inconclusive
            } else {
                Verdict::Pass
            },
            value: None,
            min: None,
            max: None,
            message: self
                .obs
                .alerts_unanswered
                .as_ref()
                .map(|why| format!("rollback.onAlerts could not be polled: {why}")),
            failing_since: None,
        });
        let gates = self.failing_since(gates);
        let any = |v: Verdict| gates.iter().chain(alerts.iter()).any(|g| g.verdict == v);
        let counted_failure = gates.iter().any(|g| self.failure_counts(g));
        self.status.last_analysis = Some(AnalysisRun {
            time: self.now,
            gates: gates.clone(),
            alerts: alerts.clone(),
        });
        if any(Verdict::Error) {
            self.status.passing_since = None;
        } else if counted_failure {
            self.status.consecutive_failures += 1;
            self.status.consecutive_inconclusive = 0;
            self.status.passing_since = None;
        } else if any(Verdict::Inconclusive) {
            // No evidence is expected while the windows fill after a phase or step began.
            if !self.warming_up() {
                self.status.consecutive_inconclusive += 1;
            }
            self.status.passing_since = None;
        } else if any(Verdict::Fail) {
            // Failing for less than the gate's `failFor`: promotion waits, nothing counts yet.
            self.status.consecutive_failures = 0;
            self.status.consecutive_inconclusive = 0;
            self.status.passing_since = None;
        } else {
            self.status.consecutive_failures = 0;
            self.status.consecutive_inconclusive = 0;
            self.status.passing_since.get_or_insert(self.now);
        }
    }

    /// `gates` with `failing_since` set on each failing one: carried from the previous
    /// evaluation when the gate failed there too, else now.
    fn failing_since(&self, gates: &[GateResult]) -> Vec<GateResult> {
        let previous = self.status.last_analysis.as_ref();
        gates
            .iter()
            .map(|g| {
                let mut g = g.clone();
                g.failing_since = (g.verdict == Verdict::Fail).then(|| {
                    previous
                        .and_then(|run| run.gates.iter().find(|p| p.name == g.name))
                        .filter(|p| p.verdict == Verdict::Fail)
                        .and_then(|p| p.failing_since)
                        .unwrap_or(self.now)
                });
                g
            })
            .collect()
    }

    /// A failure that counts towards `failureLimit`: the gate has no `failFor`, or has failed
    /// in every evaluation for at least that long.
    fn failure_counts(&self, result: &GateResult) -> bool {
        if result.verdict != Verdict::Fail {
            return false;
        }
        match (self.fail_for(&result.name), result.failing_since) {
            (Some(fail_for), Some(since)) => elapsed(self.now, since) >= fail_for.get(),
            _ => true,
        }
    }

    fn fail_for(&self, gate: &str) -> Option<&SpecDuration> {
        self.spec
            .analysis
            .as_ref()?
            .gates
            .iter()
            .find(|g| g.name == gate)?
            .fail_for
            .as_ref()
    }

    /// Within `analysis.warmup` of the start of the current phase or step.
    fn warming_up(&self) -> bool {
        let end = || {
            let warmup = self.spec.analysis.as_ref()?.warmup.as_ref()?.get();
            let started = self
                .status
                .step_started_at
                .or(self.status.phase_started_at)?;
            started
                .checked_add(jiff::SignedDuration::try_from(warmup).ok()?)
                .ok()
        };
        end().is_some_and(|end| self.now < end)
    }

    fn rollback_cause(&mut self) -> Option<(Reason, String)> {
        let phase = self.status.phase;
        if !phase.is_active() && phase != Phase::Pending {
            return None;
        }
        if self.obs.commands.abort {
            self.consumed.push(annotations::ABORT);
            return Some((
                Reason::Aborted,
                format!("{} annotation set", annotations::ABORT),
            ));
        }
        if !self.spec.rollback.automatic || !phase.is_active() {
            return None;
        }
        let limit = self
            .spec
            .analysis
            .as_ref()
            .map_or(i32::MAX, |a| a.failure_limit);
        let cause = if let Some(alert) = self.obs.firing_alerts.first() {
            Some((Reason::AlertFiring, format!("alert {alert} is firing")))
        } else if self.status.consecutive_failures >= limit {
            let failing = self.failing_gates();
            Some((
                Reason::GateFailed,
                format!("{failing} failed {limit} evaluation(s) in a row"),
            ))
        } else {
            None
        };
        if let Some((_, message)) = &cause
            && self.rollback_would_lose_writes()
        {
            // Automatic rollback would turn legacy primary again without the writes made
            // since cut-over: refused, and said so (Degraded, Warning Event), until a human
            // decides.
            let since = self
                .status
                .cut_over_at
                .map_or_else(|| "cut-over".to_string(), |t| t.to_string());
            self.problems.push(Problem::new(
                Reason::RollbackRefused,
                format!(
                    "{message}, but rolling back from CutOver would lose every write made since {since}: cutover.reverseDualWrite is false and no cutover.rollbackJob copies those writes back to the legacy store. The Migration stays in CutOver (the new system primary). Fix the new system, or set cutover.rollbackJob, or roll back anyway with the ficus.dev/abort annotation after copying the writes yourself"
                ),
            ));
            return None;
        }
        if cause.is_some() {
            return cause;
        }
        if self.current_phase() == Phase::Backfill {
            for (job, reason, what) in [
                (&self.obs.backfill, Reason::BackfillFailed, "backfill"),
                (&self.obs.validate, Reason::ValidationFailed, "validation"),
            ] {
                if let Some(JobState::Failed(msg)) = job {
                    return Some((reason, format!("{what} job failed: {msg}")));
                }
            }
        }
        None
    }

    fn failing_gates(&self) -> String {
        let Some(run) = &self.status.last_analysis else {
            return "a gate".into();
        };
        let parts: Vec<String> = run
            .gates
            .iter()
            .filter(|g| self.failure_counts(g))
            .map(|g| {
                let value = g
                    .value
                    .map_or_else(|| "no data".to_string(), |v| format!("{v}"));
                let range = match (g.min, g.max) {
                    (Some(lo), Some(hi)) => format!("{lo}..{hi}"),
                    (None, Some(hi)) => format!("max {hi}"),
                    (Some(lo), None) => format!("min {lo}"),
                    (None, None) => String::new(),
                };
                match (self.fail_for(&g.name), g.failing_since) {
                    (Some(fail_for), Some(since)) => format!(
                        "gate {} = {value} ({range}; failing since {since}, failFor {})",
                        g.name,
                        fail_for.as_str()
                    ),
                    _ => format!("gate {} = {value} ({range})", g.name),
                }
            })
            .collect();
        if parts.is_empty() {
            "a gate".into()
        } else {
            parts.join(", ")
        }
    }

    /// Records when every service instance is known to dual-write: from then on each write is
    /// in both stores, so shadow reads may compare data created since ([`desired_flags`] puts
    /// it in `shadow_compare_from`). With `appliedGenerationQuery` it is the first reconcile
    /// that sees the services report a dual-writing document; without it the operator cannot
    /// tell, and [`Machine::transition`] takes the moment it writes that document.
    fn note_dual_write_applied(&mut self) {
        if self.status.dual_write_applied_at.is_some()
            || !matches!(
                self.current_phase(),
                Phase::Shadow | Phase::Backfill | Phase::Split | Phase::CutOver
            )
        {
            return;
        }
        let dual_writing = self
            .status
            .applied_flags
            .is_some_and(|f| f.values.dual_write != crate::crd::DualWrite::Off);
        if dual_writing && self.flags_applied() {
            self.status.dual_write_applied_at = Some(self.now);
        }
    }

    /// The phase whose plan is in force (the paused-from phase while Paused).
    fn current_phase(&self) -> Phase {
        match (&self.status.phase, &self.status.paused) {
            (Phase::Paused, Some(p)) => p.from,
            (phase, _) => *phase,
        }
    }

    fn roll_back(&mut self, reason: Reason, message: &str) {
        let from = self.current_phase();
        if self.rollback_would_lose_writes() {
            self.note(
                EventType::Warning,
                Reason::WritesNotCarriedBack,
                "rolling back from CutOver without reverse dual-write or a rollback Job: the legacy store lacks the writes made since cut-over",
            );
        }
        self.status.last_rollback = Some(RollbackRecord {
            time: self.now,
            from,
            reason: reason.into(),
            message: message.into(),
        });
        self.status.paused = None;
        self.status.step = None;
        self.status.traffic_percent = 0;
        self.transition(Phase::RollingBack, reason, message);
        self.restore_legacy();
    }

    /// Completed with `cutover.scaleDownLegacy`: the legacy workload is held at 0 replicas,
    /// asked again whenever it is seen above 0. The status records Completed before the scale
    /// call is made, so a crash or a refused call in between must not leave legacy running.
    fn retire_legacy(&mut self) {
        if self.spec.cutover.scale_down_legacy
            && self.spec.legacy.is_some()
            && self.obs.legacy.is_none_or(|l| l.replicas > 0)
        {
            self.scale.push((Side::Legacy, 0));
        }
    }

    fn restore_legacy(&mut self) {
        if let (Some(before), Some(legacy)) = (self.status.legacy_replicas_before, self.obs.legacy)
            && legacy.replicas < before
        {
            self.scale.push((Side::Legacy, before));
        }
    }

    fn rolling_back(&mut self) {
        self.restore_legacy();
        let flags_safe = self
            .obs
            .flags
            .doc()
            .is_some_and(|f| f.values == rollback_flags(self.spec));
        let legacy_back = match (self.status.legacy_replicas_before, self.obs.legacy) {
            (Some(before), Some(legacy)) => legacy.replicas >= before,
            _ => true,
        };
        if flags_safe && legacy_back && self.writes_carried_back() {
            let message = self
                .status
                .last_rollback
                .as_ref()
                .map_or_else(String::new, |r| r.message.clone());
            self.transition(
                Phase::RolledBack,
                Reason::RolledBack,
                &format!("safe state applied (0% new, legacy primary): {message}"),
            );
        }
    }

    fn retry(&mut self) {
        self.status.attempt += 1;
        self.status.backfill_job = None;
        self.status.validate_job = None;
        self.status.rollback_job = None;
        self.status.dual_write_started_at = None;
        self.status.dual_write_applied_at = None;
        self.status.cut_over_at = None;
        self.status.consecutive_failures = 0;
        self.status.consecutive_inconclusive = 0;
        self.status.last_analysis = None;
        self.transition(
            Phase::Pending,
            Reason::Retry,
            &format!(
                "{} annotation set: starting attempt {}",
                annotations::RETRY,
                self.status.attempt + 1
            ),
        );
    }

    fn preflight(&mut self) {
        if self.spec.paused {
            self.status.paused = Some(PauseState {
                from: Phase::Preflight,
                reason: PauseReason::Manual,
            });
            return self.transition(Phase::Paused, Reason::Paused, "spec.paused is true");
        }
        if !self.problems.is_empty() {
            return;
        }
        if self.status.legacy_replicas_before.is_none() {
            self.status.legacy_replicas_before = self.obs.legacy.map(|l| l.replicas);
        }
        // The stores must hold the preflight flags: proof that they are writable.
        let written = self
            .obs
            .flags
            .doc()
            .is_some_and(|f| Some(f.values) == desired_flags(self.spec, &self.status));
        if written {
            self.transition(
                Phase::Shadow,
                Reason::PreflightPassed,
                "flag stores writable, workloads present; shadow traffic starts",
            );
        }
    }

    fn paused(&mut self) {
        let Some(pause) = self.status.paused.clone() else {
            // A Paused phase without its record cannot resume anywhere sensible.
            return self.roll_back(Reason::PauseStateLost, "paused without a phase to resume");
        };
        match pause.reason {
            PauseReason::Manual if !self.spec.paused => {
                self.resume(pause.from, Reason::Resumed, "spec.paused is false")
            }
            PauseReason::Inconclusive if self.spec.paused => {
                self.status.paused = Some(PauseState {
                    from: pause.from,
                    reason: PauseReason::Manual,
                });
            }
            PauseReason::Inconclusive if self.status.passing_since.is_some() => self.resume(
                pause.from,
                Reason::EvidenceReturned,
                "every gate passes again",
            ),
            _ => {}
        }
    }

    fn resume(&mut self, to: Phase, reason: Reason, message: &str) {
        self.status.paused = None;
        self.transition(to, reason, message);
    }

    /// Shadow, Backfill, Split and CutOver: bake, then promote.
    fn active(&mut self) {
        let phase = self.status.phase;
        if self.spec.paused {
            self.status.paused = Some(PauseState {
                from: phase,
                reason: PauseReason::Manual,
            });
            return self.transition(Phase::Paused, Reason::Paused, "spec.paused is true");
        }
        let limit = self
            .spec
            .analysis
            .as_ref()
            .map_or(i32::MAX, |a| a.inconclusive_limit);
        if self.status.consecutive_inconclusive >= limit {
            self.status.paused = Some(PauseState {
                from: phase,
                reason: PauseReason::Inconclusive,
            });
            return self.transition(Phase::Paused, Reason::Inconclusive, &format!("{limit} evaluation(s) in a row without evidence; waiting for the gates to answer"));
        }
        if phase == Phase::Backfill {
            return self.backfill();
        }
        let promote = self.obs.commands.promote;
        if !self.problems.is_empty() {
            return;
        }
        if !(promote || self.baked()) {
            return;
        }
        let how = if promote {
            "promoted by hand"
        } else {
            "every gate passed for the bake time"
        };
        self.promote(how);
    }

    /// The backfill Job, then (with `validateArgs`) the validation Job; each is created when
    /// missing, and the phase ends when the last one succeeded.
    fn backfill(&mut self) {
        let attempt = self.status.attempt + 1;
        let name = crate::names::job_name(&self.spec.service, "backfill", attempt);
        let state = self.obs.backfill.as_ref();
        if !job_succeeded(
            state,
            name,
            &mut self.status.backfill_job,
            &mut self.create_job,
        ) {
            return;
        }
        let validates = self
            .spec
            .backfill
            .as_ref()
            .is_some_and(|b| b.validate_args.is_some());
        if validates {
            let name = crate::names::job_name(&self.spec.service, "validate", attempt);
            let state = self.obs.validate.as_ref();
            let (record, create) = (&mut self.status.validate_job, &mut self.create_validate_job);
            if !job_succeeded(state, name, record, create) {
                return;
            }
        }
        if self.problems.is_empty() && self.workloads_ready() {
            self.promote(if validates {
                "backfill and validation jobs succeeded"
            } else {
                "backfill job succeeded"
            })
        }
    }

    /// The next phase in the plan after the current one.
    fn promote(&mut self, how: &str) {
        let steps = &self.spec.steps;
        match self.status.phase {
            Phase::Shadow if self.spec.backfill.is_some() => {
                self.transition(Phase::Backfill, Reason::ShadowPassed, how)
            }
            Phase::Shadow | Phase::Backfill => self.enter_step(1, how),
            Phase::Split => match self.status.step {
                Some(s) if (s as usize) < steps.len() => self.enter_step(s + 1, how),
                _ => self.transition(
                    Phase::CutOver,
                    Reason::CutOver,
                    &format!("{how}; the new system becomes primary"),
                ),
            },
            Phase::CutOver => {
                self.transition(
                    Phase::Completed,
                    Reason::Completed,
                    &format!("{how}; the new system serves alone"),
                );
                self.retire_legacy();
            }
            _ => {}
        }
    }

    fn enter_step(&mut self, step: i32, how: &str) {
        let traffic = self.spec.steps.get(step as usize - 1).copied().unwrap_or(0);
        let from = self.status.phase;
        self.status.step = Some(step);
        self.status.traffic_percent = traffic;
        self.restart_bake();
        if from != Phase::Split {
            self.status.phase = Phase::Split;
            self.status.phase_started_at = Some(self.now);
        }
        let message = format!(
            "step {step}/{}: {traffic}% of users on the new system ({how})",
            self.spec.steps.len()
        );
        self.push_history(from, Phase::Split, Reason::Promoted, message.clone());
        self.note(EventType::Normal, Reason::Promoted, message);
    }

    /// Has the current phase baked long enough with passing gates?
    fn baked(&self) -> bool {
        let Some(needed) = self.bake_duration() else {
            return false;
        };
        let Some(started) = &self.status.step_started_at else {
            return false;
        };
        if elapsed(self.now, *started) < needed {
            return false;
        }
        if self.needs_evidence() {
            match &self.status.passing_since {
                Some(since) if elapsed(self.now, *since) >= needed => {}
                _ => return false,
            }
        }
        self.flags_applied() && self.workloads_ready()
    }

    /// With `appliedGenerationQuery`: have the services reported the generation written last?
    fn flags_applied(&self) -> bool {
        if !self.checks_applied_generation() {
            return true;
        }
        let written = self.status.applied_flags.as_ref().map(|f| f.generation);
        matches!((self.status.reported_generation, written), (Some(seen), Some(want)) if seen >= want)
    }

    fn checks_applied_generation(&self) -> bool {
        self.spec
            .analysis
            .as_ref()
            .is_some_and(|a| a.applied_generation_query.is_some())
    }

    fn workloads_ready(&self) -> bool {
        let ready = |w: &Option<crate::crd::Workload>, s: Option<WorkloadState>| match w {
            Some(w) if w.require_ready => s.is_some_and(|s| s.ready_replicas >= s.replicas.max(1)),
            _ => true,
        };
        ready(&self.spec.legacy, self.obs.legacy) && ready(&self.spec.candidate, self.obs.candidate)
    }

    /// How long the current phase must bake; None = only a manual promote moves on.
    fn bake_duration(&self) -> Option<Duration> {
        match self.status.phase {
            Phase::Shadow => Some(self.spec.shadow.duration.get()),
            Phase::Split => Some(self.spec.bake_time.get()),
            Phase::CutOver => self.spec.cutover.complete_after.as_ref().map(|d| d.get()),
            _ => None,
        }
    }

    fn has_gates(&self) -> bool {
        self.spec
            .analysis
            .as_ref()
            .is_some_and(|a| !a.gates.is_empty())
    }

    /// Alerts polled from Prometheus: `rollback.onAlerts` with `analysis.prometheus`.
    fn polls_alerts(&self) -> bool {
        polls_alerts(self.spec)
    }

    /// Whether a bake needs evaluations that answered: gates, or polled alerts (an unreachable
    /// Prometheus then holds the bake instead of letting it pass on silence).
    fn needs_evidence(&self) -> bool {
        self.has_gates() || self.polls_alerts()
    }

    /// In CutOver (or paused there) without reverse dual-write or a rollback Job, the legacy
    /// store lacks the writes made since cut-over: going back to it would lose them.
    fn rollback_would_lose_writes(&self) -> bool {
        let cutover = &self.spec.cutover;
        self.current_phase() == Phase::CutOver
            && !cutover.reverse_dual_write
            && cutover.rollback_job.is_none()
    }

    /// RollingBack from CutOver with a rollback Job: has it copied the writes made since
    /// cut-over back to the legacy store? Created once the rollback flags are in the stores
    /// (and, with `appliedGenerationQuery`, applied), so no new write misses legacy while it
    /// runs. Always true for every other rollback.
    fn writes_carried_back(&mut self) -> bool {
        let from_cutover = self
            .status
            .last_rollback
            .as_ref()
            .is_some_and(|r| r.from == Phase::CutOver);
        let cutover = &self.spec.cutover;
        if !from_cutover || cutover.reverse_dual_write || cutover.rollback_job.is_none() {
            return true;
        }
        if !self.flags_applied() {
            return false;
        }
        let name = crate::names::job_name(&self.spec.service, "rollback", self.status.attempt + 1);
        if let Some(JobState::Failed(why)) = &self.obs.rollback_job {
            let since = self
                .status
                .cut_over_at
                .map_or_else(|| "cut-over".to_string(), |t| t.to_string());
            self.problems.push(Problem::new(
                Reason::RollbackJobFailed,
                format!(
                    "rollback Job {name} failed: {why}. The legacy store lacks writes made since {since}: fix the cause and delete the Job to run it again, or copy them by hand"
                ),
            ));
            return false;
        }
        job_succeeded(
            self.obs.rollback_job.as_ref(),
            name,
            &mut self.status.rollback_job,
            &mut self.create_rollback_job,
        )
    }

    fn restart_bake(&mut self) {
        self.status.step_started_at = Some(self.now);
        self.status.passing_since = if self.needs_evidence() {
            None
        } else {
            Some(self.now)
        };
        self.status.consecutive_failures = 0;
        self.status.consecutive_inconclusive = 0;
    }

    fn transition(&mut self, to: Phase, reason: Reason, message: &str) {
        let from = self.status.phase;
        self.status.phase = to;
        self.status.phase_started_at = Some(self.now);
        // Recorded at the decision, before the flags are written: never later than the first
        // dual-written row (the backfill stamps its copies just before it), nor than the first
        // write that reaches only the new store.
        match to {
            Phase::Shadow if self.status.dual_write_started_at.is_none() => {
                self.status.dual_write_started_at = Some(self.now);
                // Without `appliedGenerationQuery` nothing will ever show the services applied
                // the document: take the moment it is written.
                if !self.checks_applied_generation() {
                    self.status.dual_write_applied_at.get_or_insert(self.now);
                }
            }
            Phase::CutOver if self.status.cut_over_at.is_none() => {
                self.status.cut_over_at = Some(self.now)
            }
            _ => {}
        }
        match to {
            Phase::Pending | Phase::Preflight | Phase::Shadow | Phase::Backfill => {
                self.status.step = None;
                self.status.traffic_percent = 0;
            }
            Phase::CutOver | Phase::Completed => {
                self.status.step = None;
                self.status.traffic_percent = 100;
            }
            _ => {}
        }
        if to != Phase::Paused {
            self.restart_bake();
        }
        let type_ = match to {
            Phase::RollingBack | Phase::RolledBack => EventType::Warning,
            Phase::Paused if reason == Reason::Inconclusive => EventType::Warning,
            _ => EventType::Normal,
        };
        self.push_history(from, to, reason, message.to_string());
        self.note(type_, reason, format!("{from} -> {to}: {message}"));
    }

    fn push_history(&mut self, from: Phase, to: Phase, reason: Reason, message: String) {
        let h = &mut self.status.history;
        h.push(Transition {
            time: self.now,
            from,
            to,
            traffic_percent: self.status.traffic_percent,
            reason: reason.into(),
            message,
        });
        if h.len() > HISTORY_LIMIT {
            h.drain(..h.len() - HISTORY_LIMIT);
        }
    }

    fn note(&mut self, type_: EventType, reason: Reason, message: impl Into<String>) {
        let action = match (self.status.phase, self.status.step) {
            (Phase::Split, Some(step)) => format!("EnterSplit{step}"),
            (phase, _) => format!("Enter{phase}"),
        };
        self.events.push(Note {
            type_,
            reason,
            message: message.into(),
            action,
        });
    }

    fn finish(mut self, previous: &MigrationStatus) -> Decision {
        let flags = desired_flags(self.spec, &self.status)
            .map(|values| next_document(&self.obs.flags, self.status.applied_flags, values));
        if let Some(f) = flags {
            self.status.applied_flags = Some(f);
        }
        self.status.healthy = Some(self.healthy());
        let degraded_note =
            conditions::update(&mut self.status, previous, &self.problems, self.now);
        if let Some(note) = degraded_note {
            self.events.push(note);
        }
        let requeue_after = self.requeue_after(previous, flags);
        self.consumed.sort_unstable();
        self.consumed.dedup();
        Decision {
            status: self.status,
            flags,
            scale: self.scale,
            create_backfill_job: self.create_job,
            create_validate_job: self.create_validate_job,
            create_rollback_job: self.create_rollback_job,
            events: self.events,
            consumed: self.consumed,
            requeue_after,
        }
    }

    fn healthy(&self) -> Health {
        if !self.obs.firing_alerts.is_empty() {
            return Health::False;
        }
        let verdicts = |run: &AnalysisRun| {
            run.gates
                .iter()
                .chain(run.alerts.iter())
                .map(|g| g.verdict)
                .collect::<Vec<_>>()
        };
        match &self.status.last_analysis {
            _ if !self.needs_evidence() => Health::True,
            None => Health::Unknown,
            Some(run) if verdicts(run).contains(&Verdict::Fail) => Health::False,
            Some(run)
                if verdicts(run)
                    .iter()
                    .all(|v| matches!(v, Verdict::Pass | Verdict::Skipped)) =>
            {
                Health::True
            }
            Some(_) => Health::Unknown,
        }
    }

    /// The next moment something can change on its own.
    fn requeue_after(&self, previous: &MigrationStatus, flags: Option<Flags>) -> Duration {
        // Transitions continue at once (also those that change no flag, e.g. Shadow -> Backfill):
        // the status write triggers the next reconcile anyway, this is the fallback.
        let transitioned = self.status.phase != previous.phase || self.status.step != previous.step;
        if transitioned {
            return Duration::from_millis(200);
        }
        // A problem backs off in every phase, RollingBack included: a flag store that keeps
        // refusing (throttled, forbidden) is not asked again five times a second.
        if !self.problems.is_empty() {
            // Back off without stored state: wait about as long as the problem has lasted. Also
            // when flags are still to be written: the problem may be that they cannot be.
            let since = conditions::degraded_since(&self.status)
                .map_or(Duration::ZERO, |t| elapsed(self.now, t));
            return since.clamp(Duration::from_secs(2), Duration::from_secs(120));
        }
        if self.status.phase == Phase::RollingBack && self.status.rollback_job.is_some() {
            // Waiting on the rollback Job: its changes wake the reconciler (owned Jobs).
            return Duration::from_secs(5);
        }
        if matches!(self.status.phase, Phase::RollingBack | Phase::Pending) {
            return Duration::from_millis(200);
        }
        if flags.as_ref() != self.obs.flags.doc() {
            return Duration::from_millis(200);
        }
        let mut next = IDLE_REQUEUE;
        if let (Some(bake), Some(started)) = (self.bake_duration(), &self.status.step_started_at) {
            let left = bake.saturating_sub(elapsed(self.now, *started));
            next = next.min(left.max(Duration::from_millis(100)));
        }
        if let Some(due) = next_analysis_in(self.spec, &self.status, self.now) {
            next = next.min(due.max(Duration::from_millis(100)));
        }
        next
    }
}

/// The document to write for `values`, given what the stores hold and what the status last
/// asked for. The generation only ever rises: a store that already holds `values` keeps its
/// generation; a changed, corrupt or unreadable document gets one above every generation seen,
/// so services (which ignore lower generations) apply it.
pub fn next_document(read: &FlagRead, recorded: Option<Flags>, values: FlagValues) -> Flags {
    let recorded_generation = recorded.map(|a| a.generation);
    let above = |seen: Option<i64>| Flags {
        generation: seen.max(recorded_generation).map_or(1, |g| g + 1),
        values,
    };
    match read {
        FlagRead::Doc(cur) if cur.values == values => *cur,
        FlagRead::Doc(cur) => above(Some(cur.generation)),
        FlagRead::Corrupt { generation, .. } => above(Some(*generation)),
        FlagRead::Unreadable { .. } => above(None),
        // Store empty: what the status already asked for stands (no new generation per
        // reconcile); otherwise continue after it, never going back.
        FlagRead::Absent => match recorded {
            Some(a) if a.values == values => a,
            _ => above(None),
        },
    }
}

/// Alerts polled from Prometheus: `rollback.onAlerts` with `analysis.prometheus`.
pub fn polls_alerts(spec: &MigrationSpec) -> bool {
    !spec.rollback.on_alerts.is_empty()
        && spec
            .analysis
            .as_ref()
            .is_some_and(|a| a.prometheus.is_some())
}

/// Phases in which gates and polled alerts are evaluated on the analysis interval.
pub fn evaluates(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Shadow | Phase::Backfill | Phase::Split | Phase::CutOver | Phase::Paused
    )
}

/// Time until the next gate/alert evaluation is due (zero: due now); None when the Migration
/// has nothing to evaluate in its phase.
pub fn next_analysis_in(
    spec: &MigrationSpec,
    status: &MigrationStatus,
    now: Timestamp,
) -> Option<Duration> {
    let analysis = spec.analysis.as_ref()?;
    analysis.prometheus.as_ref()?;
    let nothing_to_ask = analysis.gates.is_empty()
        && spec.rollback.on_alerts.is_empty()
        && analysis.applied_generation_query.is_none();
    if nothing_to_ask || !evaluates(status.phase) {
        return None;
    }
    let interval = analysis.interval.get();
    Some(match &status.last_analysis {
        Some(run) => interval.saturating_sub(elapsed(now, run.time)),
        None => Duration::ZERO,
    })
}

/// Whether a Job of the Backfill phase succeeded. A missing one is recorded in `record` and
/// asked for in `create` (named `name`); a running or failed one is waited on (a failure rolls
/// back through `rollback_cause`).
fn job_succeeded(
    state: Option<&JobState>,
    name: String,
    record: &mut Option<String>,
    create: &mut Option<String>,
) -> bool {
    match state {
        Some(JobState::Succeeded) => true,
        Some(JobState::Missing) | None => {
            *record = Some(name.clone());
            *create = Some(name);
            false
        }
        Some(JobState::Running | JobState::Failed(_)) => false,
    }
}

/// A gate whose query Prometheus rejects is a spec problem: shown as Degraded, never a rollback.
fn analysis_problems(status: &MigrationStatus) -> Vec<Problem> {
    let Some(run) = status
        .last_analysis
        .as_ref()
        .filter(|_| evaluates(status.phase))
    else {
        return Vec::new();
    };
    run.gates
        .iter()
        .filter(|g| g.verdict == Verdict::Error)
        .map(|g| {
            Problem::new(
                Reason::InvalidQuery,
                format!(
                    "gate {}: {}",
                    g.name,
                    g.message.as_deref().unwrap_or("invalid query")
                ),
            )
        })
        .collect()
}

/// Time from `earlier` to `now`, zero when the clock went backwards.
pub fn elapsed(now: Timestamp, earlier: Timestamp) -> Duration {
    let ms = now
        .as_millisecond()
        .saturating_sub(earlier.as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
