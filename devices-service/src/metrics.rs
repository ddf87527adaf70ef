//! `/metrics` (OpenMetrics text, prometheus-client).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `http_requests_total` | `service` (`devices`), `system` (`old`/`new`), `route`, `code` | requests by the caller's side of the split ([`crate::routing::System`]) and HTTP status; the HSE error-rate gate |
//! | `http_request_duration_seconds` | `service`, `system`, `route` | request latency; the HSE p99 gate |
//! | `devices_store_write_duration_seconds` | `store` (`legacy`/`new`), `path` (`primary`/`copy`/`replay`) | one batch insert into one store (the plan's write < 10 ms) |
//! | `devices_events_written_total` | `store`, `path` | events inserted |
//! | `devices_dual_write_operations_total` | `target`, `status` (`success`/`error`/`queued`/`replayed`/`dead_letter`) | shadow copies by outcome |
//! | `devices_dual_write_lag_seconds` | | primary commit → copy in the other store, inline or replayed (the plan's lag < 5 s) |
//! | `devices_outbox_pending` | | copies waiting in the outboxes |
//! | `devices_outbox_oldest_seconds` | | age of the oldest waiting copy: the lag right now |
//! | `devices_outbox_dead_letters` | | copies given up (the plan's DLQ ≈ 0) |
//! | `devices_event_drift_ratio` | `kind` (`count`/`value`) | the last hourly comparison of the two stores; the `DevicesEventDrift` alert |
//! | `devices_event_compare_runs_total` | `status` (`pass`/`fail`/`error`) | comparisons run |
//! | `devices_event_compare_buckets` | `status` (`match`/`mismatch`) | hour buckets of the last comparison |
//! | `devices_flags_generation` | | the applied flag document's generation (`analysis.appliedGenerationQuery`) |

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ficus_flags::Side;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::routing::System;

/// The API's routes, as the `route` label names them.
pub const ROUTES: [&str; 5] = ["ingest", "ingest_batch", "latest", "events", "hourly"];

/// The `service` label of the HTTP metrics: the name the Migration's gates and alert select.
pub const SERVICE: &str = "devices";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: &'static str,
    pub system: &'static str,
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub service: &'static str,
    pub system: &'static str,
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: &'static str,
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopyLabels {
    pub target: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

/// Which write of an event a store latency belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePath {
    Primary,
    Copy,
    Replay,
}

impl WritePath {
    fn as_str(self) -> &'static str {
        match self {
            WritePath::Primary => "primary",
            WritePath::Copy => "copy",
            WritePath::Replay => "replay",
        }
    }
}

/// What became of a shadow copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The other store took it inline.
    Success,
    /// The inline copy failed or timed out: queued in the outbox.
    Error,
    /// Async mode: queued for the background copy.
    Queued,
    /// The outbox replayer made it.
    Replayed,
    /// Given up after the maximum attempts: in the dead-letter table.
    DeadLetter,
}

impl CopyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyOutcome::Success => "success",
            CopyOutcome::Error => "error",
            CopyOutcome::Queued => "queued",
            CopyOutcome::Replayed => "replayed",
            CopyOutcome::DeadLetter => "dead_letter",
        }
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.25 ms .. ~5 s in steps of ×1.5: fine enough that a p99 ratio of 1.5 is more than one
/// bucket apart.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 1.5, 25))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<LatencyLabels>,
    store_write: Histograms<StoreLabels>,
    events_written: Family<StoreLabels, Counter>,
    copies: Family<CopyLabels, Counter>,
    copy_lag: Histogram,
    pub outbox_pending: Gauge,
    pub outbox_oldest_seconds: Gauge<f64, AtomicU64>,
    pub outbox_dead_letters: Gauge,
    drift: Family<KindLabels, Gauge<f64, AtomicU64>>,
    compare_runs: Family<StatusLabels, Counter>,
    compare_buckets: Family<StatusLabels, Gauge>,
    pub flags_generation: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            store_write: Family::new_with_constructor(latency_histogram),
            events_written: Family::default(),
            copies: Family::default(),
            copy_lag: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            outbox_pending: Gauge::default(),
            outbox_oldest_seconds: Gauge::default(),
            outbox_dead_letters: Gauge::default(),
            drift: Family::default(),
            compare_runs: Family::default(),
            compare_buckets: Family::default(),
            flags_generation: Gauge::default(),
            registry: Registry::default(),
        };
        // prometheus-client adds `_total` to counters.
        r.register(
            "http_requests",
            "HTTP requests by the caller's system (old/new) and status",
            m.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency by the caller's system",
            m.request_duration.clone(),
        );
        r.register(
            "devices_store_write_duration_seconds",
            "One batch insert into one store",
            m.store_write.clone(),
        );
        r.register(
            "devices_events_written",
            "Events inserted, by store and write path",
            m.events_written.clone(),
        );
        r.register(
            "devices_dual_write_operations",
            "Shadow copies by target store and outcome",
            m.copies.clone(),
        );
        r.register(
            "devices_dual_write_lag_seconds",
            "Primary commit to copy in the other store",
            m.copy_lag.clone(),
        );
        r.register(
            "devices_outbox_pending",
            "Copies waiting in the outboxes",
            m.outbox_pending.clone(),
        );
        r.register(
            "devices_outbox_oldest_seconds",
            "Age of the oldest waiting copy",
            m.outbox_oldest_seconds.clone(),
        );
        r.register(
            "devices_outbox_dead_letters",
            "Copies given up: each needs an operator (devices-service outbox redrive)",
            m.outbox_dead_letters.clone(),
        );
        r.register(
            "devices_event_drift_ratio",
            "Drift between the stores' hourly event counts and values, last comparison",
            m.drift.clone(),
        );
        r.register(
            "devices_event_compare_runs",
            "Comparisons of the stores by verdict",
            m.compare_runs.clone(),
        );
        r.register(
            "devices_event_compare_buckets",
            "Hour buckets of the last comparison, matching or not",
            m.compare_buckets.clone(),
        );
        r.register(
            "devices_flags_generation",
            "Generation of the flag document in force",
            m.flags_generation.clone(),
        );
        // Every system's error series exist from the start at 0: a gate's `rate(..{code=~"5.."})`
        // then reads 0 errors instead of no data while a system serves nobody (Shadow).
        for system in [System::Old, System::New] {
            for route in ROUTES {
                for code in [500, 503] {
                    let _ = m.requests.get_or_create(&RequestLabels {
                        service: SERVICE,
                        system: system.as_str(),
                        route,
                        code,
                    });
                }
            }
        }
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    pub fn request(&self, system: System, route: &'static str, code: u16, elapsed: Duration) {
        let system = system.as_str();
        self.requests
            .get_or_create(&RequestLabels {
                service: SERVICE,
                system,
                route,
                code,
            })
            .inc();
        self.request_duration
            .get_or_create(&LatencyLabels {
                service: SERVICE,
                system,
                route,
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn store_write(&self, store: Side, path: WritePath, events: usize, elapsed: Duration) {
        let labels = StoreLabels {
            store: store.as_str(),
            path: path.as_str(),
        };
        self.store_write
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.events_written
            .get_or_create(&labels)
            .inc_by(events as u64);
    }

    pub fn copy(&self, target: Side, outcome: CopyOutcome) {
        self.copies
            .get_or_create(&CopyLabels {
                target: target.as_str(),
                status: outcome.as_str(),
            })
            .inc();
    }

    pub fn copies(&self, target: Side, outcome: CopyOutcome) -> u64 {
        self.copies
            .get_or_create(&CopyLabels {
                target: target.as_str(),
                status: outcome.as_str(),
            })
            .get()
    }

    pub fn copy_lag(&self, lag: Duration) {
        self.copy_lag.observe(lag.as_secs_f64());
    }

    pub fn drift(&self, count: f64, value: f64) {
        self.drift
            .get_or_create(&KindLabels { kind: "count" })
            .set(count);
        self.drift
            .get_or_create(&KindLabels { kind: "value" })
            .set(value);
    }

    pub fn compare_run(&self, status: &'static str, matching: usize, mismatching: usize) {
        self.compare_runs
            .get_or_create(&StatusLabels { status })
            .inc();
        if status != "error" {
            let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
            self.compare_buckets
                .get_or_create(&StatusLabels { status: "match" })
                .set(n(matching));
            self.compare_buckets
                .get_or_create(&StatusLabels { status: "mismatch" })
                .set(n(mismatching));
        }
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
    use super::*;

    #[test]
    fn the_gates_series_are_named_as_the_migration_queries_them() {
        let m = Metrics::default();
        m.request(System::New, "ingest", 503, Duration::from_millis(2));
        m.request(System::Old, "latest", 200, Duration::from_millis(1));
        m.drift(0.02, 0.0);
        m.flags_generation.set(3);
        let text = m.encode();
        for line in [
            r#"http_requests_total{service="devices",system="new",route="ingest",code="503"} 1"#,
            r#"http_request_duration_seconds_count{service="devices",system="old",route="latest"} 1"#,
            r#"devices_event_drift_ratio{kind="count"} 0.02"#,
            "devices_flags_generation 3",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
