//! Operator metrics on `/metrics`: reconciles, errors by reason, Migrations by phase.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
    /// Reconciles by the phase the Migration was in: a final phase counts the periodic
    /// re-checks of Migrations with nothing left to do.
    pub reconciles: Family<PhaseLabels, Counter>,
    /// Status writes refused (409) because the Migration changed after it was read.
    pub status_conflicts: Counter,
    /// Reconciles that found the cache behind the operator's own last write and waited.
    pub deferred: Counter,
    pub errors: Family<ReasonLabels, Counter>,
    pub migrations: Family<PhaseLabels, Gauge>,
    pub is_leader: Gauge,
    /// Seconds a reconcile took without its Prometheus queries: the operator's own cost.
    pub reconcile_seconds: Histogram,
    /// Seconds a reconcile spent querying Prometheus (gates and alerts).
    pub analysis_seconds: Histogram,
}

/// 0.25 ms to about 16 s, each bucket 1.5 times the last: fine enough for a p99 read back.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 1.5, 28))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ficus");
        let reconciles = Family::<PhaseLabels, Counter>::default();
        let status_conflicts = Counter::default();
        let deferred = Counter::default();
        let errors = Family::<ReasonLabels, Counter>::default();
        let migrations = Family::<PhaseLabels, Gauge>::default();
        let is_leader = Gauge::default();
        let reconcile_seconds = duration_histogram();
        let analysis_seconds = duration_histogram();
        registry.register(
            "reconciles",
            "Reconciles of Migrations, by the phase the Migration was in",
            reconciles.clone(),
        );
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
        registry.register(
            "reconcile_duration_seconds",
            "Time of a reconcile that decided (deferred ones excluded), without its Prometheus queries",
            reconcile_seconds.clone(),
        );
        registry.register(
            "analysis_duration_seconds",
            "Time a reconcile spent querying Prometheus for its gates and alerts",
            analysis_seconds.clone(),
        );
        Self {
            registry,
            reconciles,
            status_conflicts,
            deferred,
            errors,
            migrations,
            is_leader,
            reconcile_seconds,
            analysis_seconds,
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

    /// Counts a reconcile of a Migration in `phase`.
    pub fn reconciling(&self, phase: Phase) {
        self.reconciles
            .get_or_create(&PhaseLabels {
                phase: phase.to_string(),
            })
            .inc();
    }

    /// Records one reconcile: `total` wall time, of which `analysis` went to Prometheus.
    pub fn reconciled(&self, total: std::time::Duration, analysis: std::time::Duration) {
        self.reconcile_seconds
            .observe(total.saturating_sub(analysis).as_secs_f64());
        self.analysis_seconds.observe(analysis.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The sample `name` of the encoded metrics.
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    }

    #[test]
    fn reconciles_are_counted_by_the_phase_they_found() {
        let metrics = Metrics::default();
        metrics.reconciling(Phase::Shadow);
        metrics.reconciling(Phase::Completed);
        metrics.reconciling(Phase::Completed);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "ficus_reconciles_total{phase=\"Completed\"}"),
            2.0
        );
        assert_eq!(
            sample(&text, "ficus_reconciles_total{phase=\"Shadow\"}"),
            1.0
        );
    }

    #[test]
    fn a_reconcile_is_timed_without_its_prometheus_queries() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(30), Duration::from_millis(20));
        metrics.reconciled(Duration::from_millis(5), Duration::ZERO);
        let text = metrics.encode();
        assert_eq!(sample(&text, "ficus_reconcile_duration_seconds_count"), 2.0);
        let own = sample(&text, "ficus_reconcile_duration_seconds_sum");
        assert!((own - 0.015).abs() < 1e-9, "own time {own}");
        let queried = sample(&text, "ficus_analysis_duration_seconds_sum");
        assert!((queried - 0.020).abs() < 1e-9, "query time {queried}");
        // 5 ms and 10 ms land in buckets apart: a quantile read back from them tells them apart.
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("ficus_reconcile_duration_seconds_bucket{le=\""))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                Some((le.parse().ok()?, count.parse().ok()?))
            })
            .collect();
        let first_holding = |n: f64| buckets.iter().find(|(_, c)| *c >= n).map(|(le, _)| *le);
        assert!(
            first_holding(1.0).is_some_and(|le| (0.005..0.010).contains(&le)),
            "{text}"
        );
        assert!(
            first_holding(2.0).is_some_and(|le| (0.010..0.016).contains(&le)),
            "{text}"
        );
    }
}
