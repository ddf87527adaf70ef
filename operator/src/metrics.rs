//! Operator metrics on `/metrics`: reconciles, errors by reason, Migrations by phase.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::crd::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    /// Status writes refused (409) because the Migration changed after it was read.
    pub status_conflicts: Counter,
    /// Reconciles that found the cache behind the operator's own last write and waited.
    pub deferred: Counter,
    pub errors: Family<ReasonLabels, Counter>,
    pub migrations: Family<PhaseLabels, Gauge>,
    pub is_leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ficus");
        let reconciles = Counter::default();
        let status_conflicts = Counter::default();
        let deferred = Counter::default();
        let errors = Family::<ReasonLabels, Counter>::default();
        let migrations = Family::<PhaseLabels, Gauge>::default();
        let is_leader = Gauge::default();
        registry.register("reconciles", "Reconciles of Migrations", reconciles.clone());
        registry.register(
            "status_conflicts",
            "Status writes refused because the Migration changed since it was read (decided again)",
            status_conflicts.clone(),
        );
        registry.register(
            "reconciles_deferred",
            "Reconciles that found the cache behind the operator's own last write of the Migration and waited for it instead of deciding",
            deferred.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            errors.clone(),
        );
        registry.register("migrations", "Migrations by phase", migrations.clone());
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            is_leader.clone(),
        );
        Self {
            registry,
            reconciles,
            status_conflicts,
            deferred,
            errors,
            migrations,
            is_leader,
        }
    }
}

impl Metrics {
    /// Sets the per-phase gauge from the phases of every known Migration.
    pub fn set_phases(&self, phases: impl Iterator<Item = Phase>) {
        let mut counts = [0i64; Phase::ALL.len()];
        for phase in phases {
            if let Some(i) = Phase::ALL.iter().position(|p| *p == phase) {
                counts[i] += 1;
            }
        }
        for (phase, count) in Phase::ALL.iter().zip(counts) {
            self.migrations
                .get_or_create(&PhaseLabels {
                    phase: phase.to_string(),
                })
                .set(count);
        }
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
