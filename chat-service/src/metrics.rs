//! `/metrics` (OpenMetrics text, prometheus-client). Names are those of the original system, so
//! its dashboards and alerts keep working (also listed in `docs/chat-api.md`, "Metrics and
//! health"):
//!
//! | metric | labels |
//! |---|---|
//! | `chat_database_operations_total` | `database`, `operation`, `status` (`success`/`error`) |
//! | `chat_database_operation_duration_seconds` | `database`, `operation` |
//! | `chat_messages_sent_total` | `room_type`, `database` |
//! | `chat_requests_total` | `cohort` (`legacy`/`new`), `code` (`ok` or the Connect error code) |
//! | `chat_request_duration_seconds` | `cohort` |
//! | `chat_flags_generation` | (the applied flag document's generation) |
//! | `chat_message_decrypt_failures_total` | (stored messages left out of a history page: they did not decrypt) |
//! | `chat_dual_write_operations_total` | `target` (`legacy`/`new`), `status` ([`DualWriteOutcome`]: `success`/`error`/`skipped`/`queued`/`replayed`/`dead_letter`) |
//! | `chat_dual_write_lag_seconds` | (primary write done -> secondary write done, inline or replayed) |
//! | `chat_retry_queue_size` | (outbox depth: entries in the outboxes of both stores, in-flight records included) |
//! | `chat_outbox_dead_letters` | (entries in the outboxes' dead-letter tables: writes that need an operator) |
//! | `chat_shadow_reads_total` | (shadow reads compared: their scope held data to compare) |
//! | `chat_shadow_read_drift_total` | (compared shadow reads that still differed when read again: each counts once) |
//! | `chat_shadow_read_mismatches_total` | `type` (`missing`/`extra`/`content`/`order`/`count`): the kinds of difference of the reads counted as drift |
//! | `chat_shadow_reads_skipped_total` | (shadow reads not compared: nothing in them the other store is expected to hold yet, or too many re-reads at once) |
//! | `chat_shadow_read_errors_total` | (shadow reads that failed; never returned to callers) |
//! | `chat_migration_progress_ratio` | `type` (`messages`: share of the backfill's messages copied; `validation`: share of the rooms `validate` checked) |
//! | `chat_migration_errors_total` | `type`, `error_type` (rows the backfill could not copy) |
//! | `chat_data_inconsistencies` | `type` (mismatches `validate` found so far, by kind) |
//!
//! `backfill` and `validate` serve these while they run with `--metrics-addr`
//! ([`crate::metrics_endpoint`]).
//! | `chat_consistency_checks_total` | `status` (`pass`/`fail`: `validate` runs by verdict) |
//! | `chat_cache_operations_total` | `operation` (`get`/`set`/`invalidate`), `status` (`hit`/`miss`/`ok`/`error`): the room cache ([`crate::store::room_cache`]) |
//! | `chat_cache_up` | (1 while the room cache's Redis answers its ping; absent without a cache) |
//!
//! Over 600 lines: one registry whose every metric is named, described and recorded here, so a
//! dashboard's name is found in one file; the label types and their tests sit beside them.

use std::time::Duration;

use crate::flags::Side;
use crate::store::shadow::{Compared, Mismatch};

/// What became of one secondary (dual) write: the `status` of `chat_dual_write_operations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DualWriteOutcome {
    /// The secondary accepted the write inline.
    Success,
    /// The inline write failed; the outbox retries it.
    Error,
    /// The secondary was down: not called, left to the outbox.
    Skipped,
    /// The room had earlier writes waiting in the outbox: queued behind them, in order.
    Queued,
    /// The replayer made the write.
    Replayed,
    /// The room or message the write refers to is not on the secondary yet (it predates dual
    /// writes; the backfill brings it): left to the outbox, waiting without spending attempts.
    Waiting,
    /// Given up after the maximum attempts, or undecodable: moved to the dead-letter table.
    DeadLetter,
}

impl DualWriteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DualWriteOutcome::Success => "success",
            DualWriteOutcome::Error => "error",
            DualWriteOutcome::Skipped => "skipped",
            DualWriteOutcome::Queued => "queued",
            DualWriteOutcome::Replayed => "replayed",
            DualWriteOutcome::Waiting => "waiting",
            DualWriteOutcome::DeadLetter => "dead_letter",
        }
    }
}

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbOpLabels {
    pub database: &'static str,
    pub operation: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub database: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SentLabels {
    pub room_type: &'static str,
    pub database: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub cohort: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CohortLabels {
    pub cohort: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DualWriteLabels {
    pub target: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MismatchLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationErrorLabels {
    pub r#type: &'static str,
    pub error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub operation: &'static str,
    pub status: &'static str,
    /// `1`..`9`, then `10+`: the attempt this replay was.
    pub attempt: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabels {
    pub database: &'static str,
    /// The store's part: `legacy` or `new` behind the migration router, `single` otherwise.
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub database: &'static str,
    pub role: &'static str,
    /// `active` (in use) or `idle`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub operation: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client_type: &'static str,
}

/// The outcome of one outbox replay (`status` of `chat_retry_operations_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The write landed.
    Success,
    /// It failed; retried later.
    Error,
    /// What it refers to is not there yet; retried later without spending an attempt.
    Waiting,
    /// Given up: moved to the dead-letter table.
    DeadLetter,
}

impl RetryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Success => "success",
            RetryOutcome::Error => "error",
            RetryOutcome::Waiting => "waiting",
            RetryOutcome::DeadLetter => "dead_letter",
        }
    }
}

/// The `attempt` label: bounded, so a write retried for days adds no series.
fn attempt_label(attempt: u32) -> &'static str {
    const LABELS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10+"];
    LABELS[(attempt.max(1) as usize - 1).min(LABELS.len() - 1)]
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn lag_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// 0.5 ms .. ~12.6 s in steps of 1.5x: a loopback query is well under a millisecond, a stuck
/// one hits the timeout. The step bounds the error of a quantile read from the buckets: with
/// doubling buckets, a p99 a few requests past a bound jumped from its top to its middle (31.8
/// to 49 ms), and the p99-ratio gate read 1.56 between two cohorts with the same latency.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 1.5, 26))
}

pub struct Metrics {
    registry: Registry,
    db_operations: Family<DbOpLabels, Counter>,
    db_duration: Histograms<DbLabels>,
    messages_sent: Family<SentLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<CohortLabels>,
    /// Handed to the flag watcher, which sets it to the applied generation.
    pub flags_generation: Gauge,
    decrypt_failures: Counter,
    dual_writes: Family<DualWriteLabels, Counter>,
    dual_write_lag: Histograms<OperationLabels>,
    retry_operations: Family<RetryLabels, Counter>,
    database_up: Family<DatabaseLabels, Gauge>,
    database_connections: Family<ConnectionLabels, Gauge>,
    active_connections: Family<ClientLabels, Gauge>,
    /// Outbox depth, set by the replayer.
    pub retry_queue_size: Gauge,
    /// Dead letters in the outboxes, set by the replayer.
    pub outbox_dead_letters: Gauge,
    shadow_reads: Counter,
    shadow_drift: Counter,
    shadow_skipped: Counter,
    shadow_mismatches: Family<MismatchLabels, Counter>,
    shadow_errors: Counter,
    migration_progress: Family<MismatchLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    migration_errors: Family<MigrationErrorLabels, Counter>,
    data_inconsistencies: Family<MismatchLabels, Gauge>,
    consistency_checks: Family<StatusLabels, Counter>,
    cache_operations: Family<CacheLabels, Counter>,
    cache_up: Gauge,
}

/// One room-cache operation's outcome: the `operation` and `status` of
/// `chat_cache_operations_total`, as the original system named them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// A read answered from the cache.
    Hit,
    /// A read the store answered (nothing cached, or what was cached is out of date).
    Miss,
    /// A read Redis did not answer: the store answered.
    GetError,
    /// An answer cached.
    Set,
    SetError,
    /// A write's views marked out of date.
    Invalidated,
    /// A write whose views Redis did not mark out of date: they stay cached until their TTL.
    InvalidateError,
}

impl CacheOutcome {
    fn labels(self) -> CacheLabels {
        let (operation, status) = match self {
            CacheOutcome::Hit => ("get", "hit"),
            CacheOutcome::Miss => ("get", "miss"),
            CacheOutcome::GetError => ("get", "error"),
            CacheOutcome::Set => ("set", "ok"),
            CacheOutcome::SetError => ("set", "error"),
            CacheOutcome::Invalidated => ("invalidate", "ok"),
            CacheOutcome::InvalidateError => ("invalidate", "error"),
        };
        CacheLabels { operation, status }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let db_operations = Family::<DbOpLabels, Counter>::default();
        let db_duration: Histograms<DbLabels> = Family::new_with_constructor(latency_histogram);
        let messages_sent = Family::<SentLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: Histograms<CohortLabels> =
            Family::new_with_constructor(latency_histogram);
        let flags_generation = Gauge::default();
        let decrypt_failures = Counter::default();
        // prometheus-client adds the `_total` suffix to counters.
        registry.register(
            "chat_database_operations",
            "Store operations by database, operation and outcome",
            db_operations.clone(),
        );
        registry.register(
            "chat_database_operation_duration_seconds",
            "Store operation latency",
            db_duration.clone(),
        );
        // The same histogram under the name the original system's dashboards and alerts use
        // (encoded twice at scrape time; observed once).
        registry.register(
            "chat_query_duration_seconds",
            "Store operation latency (the same as chat_database_operation_duration_seconds)",
            db_duration.clone(),
        );
        registry.register(
            "chat_messages_sent",
            "Messages stored, by room type and database",
            messages_sent.clone(),
        );
        registry.register(
            "chat_requests",
            "API requests by cohort and Connect code (ok on success)",
            requests.clone(),
        );
        registry.register(
            "chat_request_duration_seconds",
            "API request latency by cohort",
            request_duration.clone(),
        );
        registry.register(
            "chat_flags_generation",
            "Generation of the migration flag document in force",
            flags_generation.clone(),
        );
        registry.register(
            "chat_message_decrypt_failures",
            "Stored messages that did not decrypt (altered, or another key) and were left out of a history page",
            decrypt_failures.clone(),
        );
        let dual_writes = Family::<DualWriteLabels, Counter>::default();
        let dual_write_lag: Histograms<OperationLabels> =
            Family::new_with_constructor(lag_histogram);
        let retry_operations = Family::<RetryLabels, Counter>::default();
        let database_up = Family::<DatabaseLabels, Gauge>::default();
        let database_connections = Family::<ConnectionLabels, Gauge>::default();
        let active_connections = Family::<ClientLabels, Gauge>::default();
        // At 0 from the start: "no open streams" is a value, not a missing series.
        let _ = active_connections.get_or_create(&ClientLabels { client_type: "sse" });
        registry.register(
            "chat_retry_operations",
            "Outbox replays by operation, outcome and attempt",
            retry_operations.clone(),
        );
        registry.register(
            "chat_database_up",
            "Whether the store answered its last health ping (1) or not (0)",
            database_up.clone(),
        );
        registry.register(
            "chat_database_connections",
            "Connections of the store's pool, by state (PostgreSQL stores)",
            database_connections.clone(),
        );
        registry.register(
            "chat_active_connections",
            "Open event streams (StreamMessages), by client type",
            active_connections.clone(),
        );
        let retry_queue_size = Gauge::default();
        let outbox_dead_letters = Gauge::default();
        let shadow_reads = Counter::default();
        let shadow_drift = Counter::default();
        let shadow_skipped = Counter::default();
        let shadow_mismatches = Family::<MismatchLabels, Counter>::default();
        // Every kind exported from the start (at 0): a dashboard or alert that selects one
        // finds a series on healthy traffic too.
        for kind in Mismatch::ALL {
            let _ = shadow_mismatches.get_or_create(&MismatchLabels {
                r#type: kind.as_str(),
            });
        }
        let shadow_errors = Counter::default();
        registry.register(
            "chat_dual_write_operations",
            "Secondary (dual) writes by target store and outcome",
            dual_writes.clone(),
        );
        registry.register(
            "chat_dual_write_lag_seconds",
            "Delay between the primary write and the secondary write, by operation",
            dual_write_lag.clone(),
        );
        registry.register(
            "chat_retry_queue_size",
            "Secondary writes waiting in the outbox",
            retry_queue_size.clone(),
        );
        registry.register(
            "chat_outbox_dead_letters",
            "Secondary writes given up (dead-letter tables): each needs an operator (chat-service outbox dead-letters / redrive)",
            outbox_dead_letters.clone(),
        );
        registry.register(
            "chat_shadow_reads",
            "Reads also made on the other store and compared",
            shadow_reads.clone(),
        );
        registry.register(
            "chat_shadow_read_drift",
            "Compared shadow reads that differed, and still differed when read again (each read counts once)",
            shadow_drift.clone(),
        );
        registry.register(
            "chat_shadow_reads_skipped",
            "Shadow reads not compared: nothing in them the other store is expected to hold yet, or too many re-reads at once",
            shadow_skipped.clone(),
        );
        registry.register(
            "chat_shadow_read_mismatches",
            "Shadow reads counted as drift, by kind of difference",
            shadow_mismatches.clone(),
        );
        registry.register(
            "chat_shadow_read_errors",
            "Shadow reads that failed (never returned to callers)",
            shadow_errors.clone(),
        );
        let migration_progress =
            Family::<MismatchLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let migration_errors = Family::<MigrationErrorLabels, Counter>::default();
        let data_inconsistencies = Family::<MismatchLabels, Gauge>::default();
        let consistency_checks = Family::<StatusLabels, Counter>::default();
        registry.register(
            "chat_migration_progress_ratio",
            "Share of the backfill's rows copied (0..1), by type",
            migration_progress.clone(),
        );
        registry.register(
            "chat_migration_errors",
            "Rows the backfill could not copy, by type and error",
            migration_errors.clone(),
        );
        registry.register(
            "chat_data_inconsistencies",
            "Mismatches between the stores found by the last validation, by kind",
            data_inconsistencies.clone(),
        );
        registry.register(
            "chat_consistency_checks",
            "Validation runs by verdict (pass/fail)",
            consistency_checks.clone(),
        );
        let cache_operations = Family::<CacheLabels, Counter>::default();
        registry.register(
            "chat_cache_operations",
            "Room cache operations by operation (get/set/invalidate) and status (hit/miss/ok/error)",
            cache_operations.clone(),
        );
        let cache_up = Gauge::default();
        Metrics {
            cache_operations,
            cache_up,
            migration_progress,
            migration_errors,
            data_inconsistencies,
            consistency_checks,
            registry,
            db_operations,
            db_duration,
            messages_sent,
            requests,
            request_duration,
            flags_generation,
            decrypt_failures,
            dual_writes,
            dual_write_lag,
            retry_operations,
            database_up,
            database_connections,
            active_connections,
            retry_queue_size,
            outbox_dead_letters,
            shadow_reads,
            shadow_drift,
            shadow_skipped,
            shadow_mismatches,
            shadow_errors,
        }
    }
}

impl Metrics {
    pub fn database_operation(
        &self,
        database: &'static str,
        operation: &'static str,
        success: bool,
        elapsed: Duration,
    ) {
        let status = if success { "success" } else { "error" };
        self.db_operations
            .get_or_create(&DbOpLabels {
                database,
                operation,
                status,
            })
            .inc();
        self.db_duration
            .get_or_create(&DbLabels {
                database,
                operation,
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn message_sent(&self, room_type: &'static str, database: &'static str) {
        self.messages_sent
            .get_or_create(&SentLabels {
                room_type,
                database,
            })
            .inc();
    }

    pub fn request(&self, cohort: &'static str, code: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { cohort, code })
            .inc();
        self.request_duration
            .get_or_create(&CohortLabels { cohort })
            .observe(elapsed.as_secs_f64());
    }

    pub fn message_decrypt_failure(&self) {
        self.decrypt_failures.inc();
    }

    pub fn dual_write(&self, target: Side, outcome: DualWriteOutcome) {
        self.dual_writes
            .get_or_create(&DualWriteLabels {
                target: target.as_str(),
                status: outcome.as_str(),
            })
            .inc();
    }

    pub fn dual_write_count(&self, target: Side, outcome: DualWriteOutcome) -> u64 {
        self.dual_writes
            .get_or_create(&DualWriteLabels {
                target: target.as_str(),
                status: outcome.as_str(),
            })
            .get()
    }

    pub fn dual_write_lag(&self, operation: &'static str, lag: Duration) {
        self.dual_write_lag
            .get_or_create(&OperationLabels { operation })
            .observe(lag.as_secs_f64());
    }

    /// One outbox replay of `operation`, its `attempt`-th (1-based).
    pub fn retry_operation(&self, operation: &'static str, outcome: RetryOutcome, attempt: u32) {
        self.retry_operations
            .get_or_create(&RetryLabels {
                operation,
                status: outcome.as_str(),
                attempt: attempt_label(attempt),
            })
            .inc();
    }

    pub fn cache(&self, outcome: CacheOutcome) {
        self.cache_operations.get_or_create(&outcome.labels()).inc();
    }

    /// The metrics of a service with a room cache: `chat_cache_up` too (a service without one
    /// does not export it, so the cache-down alert never fires for it).
    pub fn with_cache() -> Self {
        let mut metrics = Self::default();
        metrics.registry.register(
            "chat_cache_up",
            "1 while the room cache's Redis answers its ping",
            metrics.cache_up.clone(),
        );
        metrics
    }

    /// Set by the health watch from the cache's ping.
    pub fn cache_up(&self, up: bool) {
        self.cache_up.set(i64::from(up));
    }

    /// The answer to a store's health ping.
    pub fn database_up(&self, database: &'static str, role: &'static str, up: bool) {
        self.database_up
            .get_or_create(&DatabaseLabels { database, role })
            .set(i64::from(up));
    }

    /// A store's pool: connections in use and idle.
    pub fn database_connections(
        &self,
        database: &'static str,
        role: &'static str,
        active: u32,
        idle: u32,
    ) {
        for (state, n) in [("active", active), ("idle", idle)] {
            self.database_connections
                .get_or_create(&ConnectionLabels {
                    database,
                    role,
                    state,
                })
                .set(i64::from(n));
        }
    }

    /// `chat_active_connections{client_type="sse"}`, for the stream slots to keep.
    pub fn stream_gauge(&self) -> Gauge {
        self.active_connections
            .get_or_create(&ClientLabels { client_type: "sse" })
            .clone()
    }

    /// Counts one shadow read by its outcome.
    pub fn shadow_read(&self, outcome: &Compared) {
        match outcome {
            Compared::Skipped => {
                self.shadow_skipped.inc();
            }
            Compared::Same => {
                self.shadow_reads.inc();
            }
            Compared::Differs(kinds) => {
                self.shadow_reads.inc();
                self.shadow_drift.inc();
                for kind in kinds {
                    self.shadow_mismatches
                        .get_or_create(&MismatchLabels {
                            r#type: kind.as_str(),
                        })
                        .inc();
                }
            }
        };
    }

    pub fn shadow_read_error(&self) {
        self.shadow_errors.inc();
    }

    pub fn shadow_reads(&self) -> u64 {
        self.shadow_reads.get()
    }

    pub fn shadow_mismatches(&self, kind: Mismatch) -> u64 {
        self.shadow_mismatches
            .get_or_create(&MismatchLabels {
                r#type: kind.as_str(),
            })
            .get()
    }

    pub fn shadow_read_errors(&self) -> u64 {
        self.shadow_errors.get()
    }

    pub fn shadow_drift(&self) -> u64 {
        self.shadow_drift.get()
    }

    pub fn shadow_reads_skipped(&self) -> u64 {
        self.shadow_skipped.get()
    }

    pub fn migration_progress(&self, kind: &'static str, ratio: f64) {
        self.migration_progress
            .get_or_create(&MismatchLabels { r#type: kind })
            .set(ratio);
    }

    pub fn migration_error(&self, kind: &'static str, error_type: &'static str) {
        self.migration_errors
            .get_or_create(&MigrationErrorLabels {
                r#type: kind,
                error_type,
            })
            .inc();
    }

    pub fn data_inconsistencies(&self, kind: &'static str, n: u64) {
        self.data_inconsistencies
            .get_or_create(&MismatchLabels { r#type: kind })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn consistency_check(&self, passed: bool) {
        self.consistency_checks
            .get_or_create(&StatusLabels {
                status: if passed { "pass" } else { "fail" },
            })
            .inc();
    }

    /// The `/metrics` answer: the OpenMetrics text with its content type (the API's and the
    /// batch commands' endpoints).
    pub fn response(&self) -> impl axum::response::IntoResponse + use<> {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            self.encode(),
        )
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
    fn names_match_the_original_system() {
        let m = Metrics::default();
        m.database_operation("postgres", "insert_message", true, Duration::from_millis(2));
        m.message_sent("group", "postgres");
        m.request("legacy", "ok", Duration::from_millis(3));
        m.flags_generation.set(4);
        let text = m.encode();
        for line in [
            r#"chat_database_operations_total{database="postgres",operation="insert_message",status="success"} 1"#,
            r#"chat_database_operation_duration_seconds_count{database="postgres",operation="insert_message"} 1"#,
            r#"chat_messages_sent_total{room_type="group",database="postgres"} 1"#,
            r#"chat_requests_total{cohort="legacy",code="ok"} 1"#,
            r#"chat_request_duration_seconds_count{cohort="legacy"} 1"#,
            "chat_flags_generation 4",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
