//! Every reason the operator writes: Event reasons, `status.history[].reason`,
//! `status.lastRollback.reason`, the Degraded condition's reason and the reason of a failed
//! reconcile. One enum, so a reason is never misspelled, and a test checks the CRD reference
//! and the architecture page list exactly these.
//!
//! (The Ready and Progressing conditions also use phase names as reasons; those are
//! [`crate::crd::Phase`].)

use std::fmt;

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// A reason, written in PascalCase as Kubernetes reasons are.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            pub const ALL: &[Reason] = &[$(Reason::$name,)*];

            /// The reason written as `text`, if it is one.
            pub fn parse(text: &str) -> Option<Reason> {
                Reason::ALL.iter().copied().find(|r| r.as_str() == text)
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    // Transitions (Events and status.history).
    /// Pending → Preflight.
    Started,
    /// Preflight → Shadow.
    PreflightPassed,
    /// Shadow → Backfill.
    ShadowPassed,
    /// Entering a Split step.
    Promoted,
    /// Split → CutOver.
    CutOver,
    /// CutOver → Completed.
    Completed,
    /// → Paused because `spec.paused` is true.
    Paused,
    /// → Paused after `inconclusiveLimit` evaluations without evidence.
    Inconclusive,
    /// Paused → the phase it paused in.
    Resumed,
    /// An inconclusive pause ends because every gate passes again.
    EvidenceReturned,
    /// A step re-mapped after a spec change.
    SpecChanged,
    /// → RollingBack because of `ficus.dev/abort`.
    Aborted,
    /// → RollingBack because an alert in `rollback.onAlerts` fires.
    AlertFiring,
    /// → RollingBack after `failureLimit` failed evaluations in a row.
    GateFailed,
    /// → RollingBack because the backfill Job failed.
    BackfillFailed,
    /// → RollingBack because the validation Job failed.
    ValidationFailed,
    /// → RollingBack because Paused has no `status.paused`.
    PauseStateLost,
    /// RollingBack → RolledBack, the safe state applied.
    RolledBack,
    /// An abort in CutOver without a way to carry the writes since cut-over back to legacy.
    WritesNotCarriedBack,
    /// Deletion held until the rollback Job succeeded.
    DeletionWaits,
    /// RolledBack → Pending because of `ficus.dev/retry`.
    Retry,
    /// `ficus.dev/promote` outside Shadow, Split and CutOver.
    PromoteIgnored,
    /// `ficus.dev/abort` on a Completed Migration.
    AbortIgnored,
    /// Deletion: the safe flags restored, the finalizer about to be removed.
    SafeStateRestored,

    // Problems: the Degraded condition's reason (and a Warning Event when it starts).
    FlagStoreForbidden,
    FlagStoreUnavailable,
    WorkloadNotFound,
    WorkloadForbidden,
    WorkloadUnavailable,
    BackfillForbidden,
    BackfillUnavailable,
    JobRejected,
    InvalidPrometheusUrl,
    PrometheusUnreachable,
    InvalidQuery,
    InvalidAlertSelector,
    RollbackRefused,
    RollbackJobFailed,
    AwsAccessDenied,
    AwsResourceNotFound,
    AwsUnavailable,
    /// The operator's policy file does not allow what the spec asks for (a Prometheus URL, an
    /// SSM prefix, an ECS service, an AWS endpoint, a Job image or Secret).
    PolicyRefused,
    /// Degraded is False.
    AsExpected,

    // A reconcile that failed (the `ficus_reconcile_errors_total{reason}` label and the Event).
    StatusWriteFailed,
    CleanupFailed,
    FinalizerFailed,
    NoNamespace,
}

/// An error that names its reason: what a Problem or a failed reconcile says went wrong.
pub trait Reasoned: std::error::Error {
    fn reason(&self) -> Reason;
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Backticked PascalCase words in the first column of the tables of `doc`'s section
    /// `heading` (up to the next heading).
    fn first_column(doc: &str, heading: &str) -> BTreeSet<String> {
        let start = doc
            .find(heading)
            .unwrap_or_else(|| panic!("no section {heading:?}"));
        let section = &doc[start + heading.len()..];
        let section = &section[..section.find("\n#").unwrap_or(section.len())];
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned))
            .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
            .collect()
    }

    #[test]
    fn the_docs_list_exactly_the_reasons_the_operator_writes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let reference =
            std::fs::read_to_string(root.join("docs/crd-reference.md")).expect("crd-reference");
        let architecture =
            std::fs::read_to_string(root.join("docs/architecture.md")).expect("architecture");
        let mut documented = first_column(&reference, "## Events");
        documented.extend(first_column(&architecture, "## Degraded and back-off"));
        documented.insert("AsExpected".into());
        let written: BTreeSet<String> = Reason::ALL.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            written.difference(&documented).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "reasons the operator writes that the docs do not list"
        );
        assert_eq!(
            documented.difference(&written).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "reasons the docs list that the operator never writes"
        );
    }
}
