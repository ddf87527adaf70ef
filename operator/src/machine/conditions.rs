//! Ready / Progressing / Degraded, with transition times that only move when a status flips.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{EventType, Note, Problem};
use crate::crd::{MigrationStatus, PauseReason, Phase};
use crate::reason::Reason;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// Rewrites the three conditions from the new status; returns an Event when Degraded starts or
/// its reason changes (not on every reconcile, so a stuck Migration does not spam Events).
pub fn update(
    status: &mut MigrationStatus,
    previous: &MigrationStatus,
    problems: &[Problem],
    now: Timestamp,
) -> Option<Note> {
    let generation = status.observed_generation;
    let phase = status.phase;
    let (progressing, p_reason, p_message) = match phase {
        Phase::Paused => {
            let why = match status.paused.as_ref().map(|p| p.reason) {
                Some(PauseReason::Inconclusive) => "Inconclusive",
                _ => "Paused",
            };
            (
                false,
                why.to_string(),
                format!(
                    "paused in {}",
                    status.paused.as_ref().map_or(phase, |p| p.from)
                ),
            )
        }
        Phase::Completed | Phase::RolledBack => {
            (false, phase.to_string(), format!("migration is {phase}"))
        }
        _ => (true, phase.to_string(), progress_message(status)),
    };
    let (degraded, d_reason, d_message) = match problems.first() {
        Some(p) => (true, p.reason, p.message.clone()),
        None => (false, Reason::AsExpected, "no problems found".to_string()),
    };
    let (ready, r_reason, r_message) = if degraded {
        (false, d_reason.to_string(), d_message.clone())
    } else {
        match phase {
            Phase::RollingBack | Phase::RolledBack => {
                let why = status
                    .last_rollback
                    .as_ref()
                    .map_or_else(|| "rolled back".into(), |r| r.message.clone());
                (false, phase.to_string(), why)
            }
            _ => (true, phase.to_string(), p_message.clone()),
        }
    };
    let was_degraded =
        find(&previous.conditions, DEGRADED).map(|c| (c.status == "True", c.reason.clone()));
    let mut next = Vec::with_capacity(3);
    for (type_, ok, reason, message) in [
        (READY, ready, r_reason, r_message),
        (PROGRESSING, progressing, p_reason, p_message),
        (DEGRADED, degraded, d_reason.to_string(), d_message.clone()),
    ] {
        let value = if ok { "True" } else { "False" };
        let since = match find(&previous.conditions, type_) {
            Some(c) if c.status == value => c.last_transition_time.clone(),
            _ => Time(now),
        };
        next.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time: since,
        });
    }
    status.conditions = next;
    let starts = degraded && was_degraded != Some((true, d_reason.to_string()));
    starts.then(|| Note {
        type_: EventType::Warning,
        reason: d_reason,
        message: d_message,
        action: "Observe".into(),
    })
}

/// When the Degraded condition last turned True.
pub fn degraded_since(status: &MigrationStatus) -> Option<Timestamp> {
    find(&status.conditions, DEGRADED)
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.0)
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn progress_message(status: &MigrationStatus) -> String {
    let written = status.applied_flags.as_ref().map(|f| f.generation);
    if let (Some(seen), Some(want)) = (status.reported_generation, written)
        && seen < want
    {
        return format!(
            "in {} at {}% on the new system; waiting for every instance to apply flag generation {want} (lowest reported: {seen})",
            status.phase, status.traffic_percent
        );
    }
    match (status.phase, status.step) {
        (Phase::Split, Some(step)) => format!(
            "step {step} at {}% on the new system",
            status.traffic_percent
        ),
        (phase, _) => format!(
            "in {phase} at {}% on the new system",
            status.traffic_percent
        ),
    }
}
