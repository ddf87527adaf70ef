//! The migration router: a [`ChatStore`] over the legacy PostgreSQL store and a new store that
//! executes the routing decision ([`crate::routing`]) of the flags in force at each call.
//!
//! # Writes
//!
//! [`write_plan`]: the primary must succeed for the call to succeed. With `dual_write = sync`
//! the secondary is written concurrently with the primary (`tokio::join!`: latency is the slower
//! store, bounded by `secondary_timeout`); with `async` it is written after the primary, in a
//! background task. **Ping-before-write**: each store has a cached health (a `ping` at most
//! every `ping_interval`, run in the background so no write waits for it; a write failing with
//! `Unavailable` or timing out marks the store down at once). A secondary that is down is not
//! called: its write is left to the outbox.
//!
//! **A durable record first.** Every dual write has a record in the outbox of the **primary's**
//! database ([`crate::store::outbox`]) before its primary write can commit: with legacy
//! PostgreSQL primary, a send's record commits in the message's own transaction
//! ([`PgStore::insert_message_with_outbox`]); every other write, and every write while the new
//! store is primary (the CQL store's outbox, [`crate::store::cql_outbox`], or a PostgreSQL new
//! store's `outbox` table), writes its record just before the primary write. The record is due
//! only after `inline_grace`; it is deleted once the secondary accepted the write, made due now
//! when the secondary was skipped or failed (with backoff), and deleted when the primary write
//! failed. A crash at any point after the primary commit leaves the record, and a replayer makes
//! the write. No write is ever held only in memory.
//!
//! **Not cancellable.** A dual write runs in a task of its own that the call awaits: a request
//! timeout or a client that goes away cannot cut off the secondary write or the record's update.
//! The tasks are tracked: [`MigrationRouter::drain`] (on SIGTERM, after in-flight requests) waits
//! for them, `async` secondary writes included.
//!
//! **Per-room order.** When the room already has entries for the secondary in the outbox that
//! failed, were skipped or queued, a new write for the room is not made directly: its record is
//! made due and the replayer makes it behind them, in order. A leave that finds no room on the
//! secondary has not landed ([`WriteOp::apply_on_secondary`]): it waits for the room's creation
//! instead of being counted and then undone by a replayed `CreateRoom`.
//!
//! With `sync`, a primary that fails while the secondary succeeded leaves the write in the
//! secondary only (the client sees the error; a retry uses a new id).
//!
//! # Reads
//!
//! [`read_plan`] with a uniform sample: the caller always gets `plan.serve`'s answer; with
//! `plan.shadow` the other store is read concurrently in a spawned task and compared after the
//! serving answer is returned (never delaying it), within the [`Scope`] of the flags'
//! `shadow_compare_from` (what the other store is expected to hold; [`crate::store::shadow`]).
//! A difference is read again after `shadow_recheck_after` and counts only if it persists.
//! Counted in `chat_shadow_reads_total`, `chat_shadow_read_drift_total`,
//! `chat_shadow_read_mismatches_total{type}` and `chat_shadow_reads_skipped_total`; a failing
//! shadow read counts in `chat_shadow_read_errors_total` and is never returned.
//!
//! `room_access` and `message_room` (authorization before a write) are read from the write
//! primary, the store the write that follows must succeed on; `get_room`, `rooms_for_user`,
//! `history` and `room_ids_for_user` from the user's cohort. Every call that names a user notes
//! the user's cohort for the request's metrics ([`crate::api::note_cohort`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::task::TaskTracker;

use crate::api::{Cohort, note_cohort, noted_user};
use crate::flags::{DualWrite, FlagWatcher, Side};
use crate::ids::{MessageId, RoomId, UserId};
use crate::metrics::{DualWriteOutcome, Metrics};
use crate::routing::{cohort, read_plan, write_plan};
use crate::store::instrumented::Instrumented;
use crate::store::outbox::{
    Applied, EntryRef, NewEntry, Outbox, OutboxLog, ReplayConfig, WriteOp, backoff,
};
use crate::store::postgres::PgStore;
use crate::store::shadow::{Compared, Scope, Shadowed, compare_results};
use crate::store::{
    ChatStore, HistoryPage, NewMessage, NewRoom, PageRequest, ReadMarker, RoomAccess, RoomView,
    StoreError, StoreFuture, StoreResult, StoredMessage,
};

/// Router settings.
#[derive(Clone, Copy, Debug)]
pub struct RouterOptions {
    /// A store's cached health is refreshed (one `ping`) at most this often.
    pub ping_interval: Duration,
    /// A ping slower than this marks the store down.
    pub ping_timeout: Duration,
    /// A secondary write slower than this counts as failed (and goes to the outbox), so a
    /// hanging secondary cannot hold a `sync` caller.
    pub secondary_timeout: Duration,
    /// A shadow read that differs is read and compared again after this long, and counts as
    /// drift only if it still differs (a write may still be on its way to one store).
    pub shadow_recheck_after: Duration,
    pub replay: ReplayConfig,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(1),
            secondary_timeout: Duration::from_secs(2),
            // Beyond the longest inline secondary write (`secondary_timeout`).
            shadow_recheck_after: Duration::from_secs(3),
            replay: ReplayConfig::default(),
        }
    }
}

/// A store's cached health.
struct Health {
    up: AtomicBool,
    probing: AtomicBool,
    checked: Mutex<Option<Instant>>,
}

impl Health {
    fn new() -> Self {
        Health {
            up: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            checked: Mutex::new(None),
        }
    }
}

struct Inner {
    legacy: Arc<dyn ChatStore>,
    new: Arc<dyn ChatStore>,
    /// The legacy store itself: its transactional insert and the outbox's database.
    legacy_pg: PgStore,
    /// The outbox in each store's database, by [`side_index`]: the records of the writes made
    /// while that store is primary.
    outboxes: [OutboxLog; 2],
    flags: FlagWatcher,
    metrics: Arc<Metrics>,
    options: RouterOptions,
    health: [Health; 2],
    /// Dual writes in flight and `async` secondary writes: what a drain waits for.
    tasks: TaskTracker,
    /// Wakes the replayer (an entry of this instance became due now).
    wake: Notify,
    /// Last depth and dead-letter count read per outbox (kept while one cannot be read).
    last_depth: [AtomicI64; 2],
    last_dead: [AtomicI64; 2],
    /// Re-reads of differing shadow reads in progress (at most [`MAX_RECHECKS`]).
    rechecks: Semaphore,
}

/// See the module docs.
#[derive(Clone)]
pub struct MigrationRouter {
    inner: Arc<Inner>,
}

/// Stops the replayer (and its notification listeners) when dropped.
pub struct ReplayerHandle(Vec<tokio::task::JoinHandle<()>>);

impl Drop for ReplayerHandle {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Differing shadow reads re-read at once; beyond this a differing read is not counted, so
/// real drift cannot multiply the reads the stores serve without bound.
const MAX_RECHECKS: usize = 64;

/// Rooms whose outbox entries a differing read checks (a page of rooms shows up to 50).
const MAX_PENDING_CHECKS: usize = 50;

/// The `LISTEN/NOTIFY` channel of the outbox trigger (migration `0004`).
const NOTIFY_CHANNEL: &str = "chat_outbox";
/// The shortest pause between replay rounds that settled nothing (an entry due now may be
/// locked by another instance).
const MIN_REPLAY_PAUSE: Duration = Duration::from_millis(50);

fn side_index(side: Side) -> usize {
    match side {
        Side::Legacy => 0,
        Side::New => 1,
    }
}

fn as_cohort(side: Side) -> Cohort {
    match side {
        Side::Legacy => Cohort::Legacy,
        Side::New => Cohort::New,
    }
}

/// A read's answer for comparison: NotFound is an answer (`Err`), other errors are not.
fn found<T>(result: StoreResult<T>) -> Option<Result<T, String>> {
    match result {
        Ok(v) => Some(Ok(v)),
        Err(StoreError::NotFound(m)) => Some(Err(m)),
        Err(_) => None,
    }
}

fn internal(what: &str) -> StoreError {
    StoreError::Internal(format!("migration router: unexpected result of {what}"))
}

impl MigrationRouter {
    /// `legacy` is wrapped in [`Instrumented`] here; pass `new` already instrumented.
    /// `new_outbox` is the outbox in the new store's database (the CQL store's, or the `outbox`
    /// table of a PostgreSQL new store): where the records of writes go while new is primary.
    pub fn new(
        legacy: PgStore,
        new: Arc<dyn ChatStore>,
        new_outbox: OutboxLog,
        flags: FlagWatcher,
        metrics: Arc<Metrics>,
        options: RouterOptions,
    ) -> Self {
        let legacy_outbox = OutboxLog::Pg(Outbox::new(legacy.pool().clone()));
        let inner = Inner {
            legacy: Arc::new(Instrumented::new(legacy.clone(), metrics.clone())),
            new,
            legacy_pg: legacy,
            outboxes: [legacy_outbox, new_outbox],
            flags,
            metrics,
            options,
            health: [Health::new(), Health::new()],
            tasks: TaskTracker::new(),
            wake: Notify::new(),
            last_depth: [AtomicI64::new(0), AtomicI64::new(0)],
            last_dead: [AtomicI64::new(0), AtomicI64::new(0)],
            rechecks: Semaphore::new(MAX_RECHECKS),
        };
        MigrationRouter {
            inner: Arc::new(inner),
        }
    }

    /// The legacy PostgreSQL outbox.
    pub fn outbox(&self) -> Outbox {
        Outbox::new(self.inner.legacy_pg.pool().clone())
    }

    /// The outbox of the new store's database.
    pub fn new_outbox(&self) -> &OutboxLog {
        &self.inner.outboxes[1]
    }

    /// Dual writes (and `async` secondary writes) still running.
    pub fn in_flight(&self) -> usize {
        self.inner.tasks.len()
    }

    /// Starts the outbox replayer (one per instance; several instances replay together), woken
    /// by `LISTEN/NOTIFY` on each PostgreSQL outbox, by this instance's own writes, and by its
    /// timer (the earliest entry not due yet, or `poll_interval`, the slow fallback).
    pub fn start_replayer(&self) -> ReplayerHandle {
        let mut tasks = vec![tokio::spawn(self.inner.clone().replay_loop())];
        for log in &self.inner.outboxes {
            if let OutboxLog::Pg(outbox) = log {
                tasks.push(tokio::spawn(
                    self.inner.clone().listen(outbox.pool().clone()),
                ));
            }
        }
        ReplayerHandle(tasks)
    }

    /// Waits (at most `timeout`) for the dual writes in flight and the `async` secondary writes
    /// to finish. Call after the server stopped taking requests. Returns whether all finished;
    /// those that did not still have their outbox record, which a replayer makes later.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let tasks = &self.inner.tasks;
        tasks.close();
        let pending = tasks.len();
        let done = tokio::time::timeout(timeout, tasks.wait()).await.is_ok();
        if done {
            tracing::info!(pending, "dual writes drained");
        } else {
            tracing::warn!(
                left = tasks.len(),
                ?timeout,
                "dual writes still running at the end of the drain; their outbox records remain and are replayed"
            );
        }
        done
    }

    /// The store's cached health (refreshing it in the background when stale).
    pub fn is_up(&self, side: Side) -> bool {
        self.inner.is_up(side)
    }

    /// Serves a read per the read plan and shadows it when the plan says so: the other store
    /// is read concurrently and compared after the caller has its answer (see
    /// [`Inner::compare_shadow`]).
    fn read<T, F>(&self, user: UserId, call: F) -> StoreFuture<'_, T>
    where
        T: Shadowed,
        F: Fn(Arc<dyn ChatStore>) -> StoreFuture<'static, T> + Send + Sync + 'static,
    {
        let flags = self.inner.flags.current();
        let plan = read_plan(&flags, user, rand::random_range(0..100u8));
        note_cohort(as_cohort(plan.serve), Some(user));
        let served = call(self.inner.store(plan.serve).clone());
        let Some(side) = plan.shadow else {
            return served;
        };
        let scope = Scope {
            compare: flags.values.shadow_compare_from,
            until: Utc::now(),
        };
        let shadow = tokio::spawn(call(self.inner.store(side).clone()));
        let inner = self.inner.clone();
        Box::pin(async move {
            let result = served.await;
            let copy = match &result {
                Ok(v) => Ok(v.clone()),
                Err(StoreError::NotFound(m)) => Err(m.clone()),
                // Nothing to compare against.
                Err(_) => {
                    shadow.abort();
                    return result;
                }
            };
            tokio::spawn(async move {
                let other = match shadow.await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(StoreError::NotFound(m))) => Err(m),
                    Ok(Err(e)) => {
                        let read = std::any::type_name::<T>();
                        tracing::debug!(shadow = %side, read, error = %e, "shadow read failed");
                        inner.metrics.shadow_read_error();
                        return;
                    }
                    Err(_) => {
                        inner.metrics.shadow_read_error();
                        return;
                    }
                };
                let first = compare_results(&copy, &other, &scope);
                inner
                    .compare_shadow(first, plan.serve, side, Arc::new(call), scope)
                    .await;
            });
            result
        })
    }

    fn note_user(&self, user: UserId) {
        note_cohort(
            as_cohort(cohort(&self.inner.flags.current(), user)),
            Some(user),
        );
    }

    /// A write per the write plan. A dual write runs in a tracked task of its own and answers
    /// through a channel: dropping the returned future (request timeout, client gone) does not
    /// stop it.
    fn write(
        &self,
        op: WriteOp,
    ) -> impl std::future::Future<Output = StoreResult<Applied>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let plan = write_plan(&inner.flags.current());
            let Some((side, mode)) = plan.secondary else {
                return op.apply(inner.store(plan.primary).as_ref()).await;
            };
            let (answer, answered) = oneshot::channel();
            inner.tasks.spawn(
                inner
                    .clone()
                    .dual_write(plan.primary, side, mode, op, answer),
            );
            answered.await.unwrap_or_else(|_| {
                Err(StoreError::Internal(
                    "the dual write task ended without an answer".into(),
                ))
            })
        }
    }
}

/// Why a secondary write was not made directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deferral {
    /// The secondary is down (cached health).
    Down,
    /// The room has earlier entries for the secondary waiting in the outbox.
    BehindQueue,
}

impl Deferral {
    fn outcome(self) -> DualWriteOutcome {
        match self {
            Deferral::Down => DualWriteOutcome::Skipped,
            Deferral::BehindQueue => DualWriteOutcome::Queued,
        }
    }

    fn reason(self, side: Side) -> String {
        match self {
            Deferral::Down => format!("skipped: {side} store down"),
            Deferral::BehindQueue => "queued behind earlier outbox entries of the room".to_owned(),
        }
    }
}

impl Inner {
    /// Whether the outbox holds a write for `target` in a room either answer shows (the
    /// outbox in the other store's database: where the writes of its primary wait). A failed
    /// check answers yes: not counting is the safe side of a measurement.
    async fn write_pending<T: Shadowed>(
        &self,
        target: Side,
        a: &Result<T, String>,
        b: &Result<T, String>,
    ) -> bool {
        let mut rooms: Vec<RoomId> = [a, b]
            .into_iter()
            .flat_map(|r| r.as_ref().map(Shadowed::rooms).unwrap_or_default())
            .collect();
        rooms.sort_unstable_by_key(|r| r.0);
        rooms.dedup();
        let log = &self.outboxes[side_index(target.other())];
        for room in rooms.into_iter().take(MAX_PENDING_CHECKS) {
            if log.has_pending(target, room).await.unwrap_or(true) {
                return true;
            }
        }
        false
    }

    /// Counts one shadow read. A difference is checked again before it counts: after
    /// `shadow_recheck_after` both stores are read once more and compared within the same
    /// scope, so a write still on its way to one store (an `async` secondary write, a `sync`
    /// one that raced the read, a membership change) is not drift, and one that persists is,
    /// unless the outbox still holds a write for the shadowed store in one of the rooms.
    async fn compare_shadow<T, F>(
        &self,
        first: Compared,
        serve: Side,
        shadow: Side,
        call: Arc<F>,
        scope: Scope,
    ) where
        T: Shadowed,
        F: Fn(Arc<dyn ChatStore>) -> StoreFuture<'static, T> + Send + Sync + 'static,
    {
        let verdict = match first {
            Compared::Differs(_) => {
                let Ok(_permit) = self.rechecks.try_acquire() else {
                    self.metrics.shadow_read(&Compared::Skipped);
                    return;
                };
                tokio::time::sleep(self.options.shadow_recheck_after).await;
                let (a, b) = tokio::join!(
                    call(self.store(serve).clone()),
                    call(self.store(shadow).clone())
                );
                let (a, b) = match (found(a), found(b)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => {
                        self.metrics.shadow_read_error();
                        return;
                    }
                };
                match compare_results(&a, &b, &scope) {
                    Compared::Differs(kinds) => {
                        if self.write_pending(shadow, &a, &b).await {
                            // Still on its way (the outbox holds it): lag, not drift.
                            Compared::Skipped
                        } else {
                            Compared::Differs(kinds)
                        }
                    }
                    verdict => verdict,
                }
            }
            verdict => verdict,
        };
        if let Compared::Differs(kinds) = &verdict {
            let read = std::any::type_name::<T>();
            tracing::debug!(serve = %serve, shadow = %shadow, read, ?kinds, "shadow read differs");
        }
        self.metrics.shadow_read(&verdict);
    }

    fn store(&self, side: Side) -> &Arc<dyn ChatStore> {
        match side {
            Side::Legacy => &self.legacy,
            Side::New => &self.new,
        }
    }

    fn is_up(self: &Arc<Self>, side: Side) -> bool {
        let health = &self.health[side_index(side)];
        let stale = {
            let checked = health.checked.lock().unwrap_or_else(|e| e.into_inner());
            checked.is_none_or(|t| t.elapsed() >= self.options.ping_interval)
        };
        if stale && !health.probing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                let store = this.store(side).clone();
                let up = matches!(
                    tokio::time::timeout(this.options.ping_timeout, store.ping()).await,
                    Ok(Ok(()))
                );
                let health = &this.health[side_index(side)];
                *health.checked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                if health.up.swap(up, Ordering::AcqRel) != up {
                    tracing::warn!(store = %side, up, "store health changed");
                }
                health.probing.store(false, Ordering::Release);
            });
        }
        health.up.load(Ordering::Acquire)
    }

    /// A write failed for lack of the store: down until a ping says otherwise.
    fn mark_down(&self, side: Side) {
        let health = &self.health[side_index(side)];
        if health.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(store = %side, "store marked down after a failed write");
        }
        *health.checked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// One dual write, from its outbox record to the record's settlement. The caller is answered
    /// through `answer` as soon as the outcome is known (after the primary, with `sync` also the
    /// secondary); what follows (the `async` secondary write, the record's update) runs on.
    async fn dual_write(
        self: Arc<Self>,
        primary: Side,
        side: Side,
        mode: DualWrite,
        mut op: WriteOp,
        answer: oneshot::Sender<StoreResult<Applied>>,
    ) {
        let log = &self.outboxes[side_index(primary)];
        if let WriteOp::React {
            message,
            room: room @ None,
            ..
        } = &mut op
        {
            // The ordering key, from the store that has the message.
            *room = self.store(primary).message_room(*message).await.ok();
        }
        let secondary_up = self.is_up(side);
        // A failing check counts as "queued": the replayer then makes the write, in order.
        let behind_queue = match op.room() {
            Some(room) => log.has_queued(side, room).await.unwrap_or(true),
            None => false,
        };
        let deferral = if !secondary_up {
            Some(Deferral::Down)
        } else if behind_queue {
            Some(Deferral::BehindQueue)
        } else {
            None
        };
        // Legacy-primary sends record in their own transaction; everything else records first.
        let record = if primary == Side::Legacy && op.new_message().is_some() {
            None
        } else {
            match log
                .enqueue(&NewEntry {
                    target: side,
                    op: op.clone(),
                    attempts: 0,
                    delay: self.options.replay.inline_grace,
                    last_error: None,
                })
                .await
            {
                Ok(entry) => Some(entry),
                Err(e) => {
                    let _ = answer.send(Err(StoreError::Unavailable(format!(
                        "cannot record the write in the {primary} store's outbox before making it: {e}"
                    ))));
                    return;
                }
            }
        };
        let direct_sync = mode == DualWrite::Sync && deferral.is_none();
        let (first, second) = if direct_sync {
            let secondary = self.store(side).clone();
            let (first, second) = tokio::join!(
                self.primary_write(primary, side, &op, record),
                self.secondary_write(secondary.as_ref(), &op)
            );
            (first, Some(second))
        } else {
            (self.primary_write(primary, side, &op, record).await, None)
        };
        let (applied, entry) = match first {
            Ok(done) => done,
            Err(e) => {
                if matches!(second, Some(Ok(_))) {
                    tracing::warn!(op = op.name(), store = %side, error = %e, "primary write failed after the secondary accepted it");
                }
                let _ = answer.send(Err(e));
                // The write did not happen: its record must not be replayed.
                if let Some(entry) = record
                    && let Err(e) = log.complete(entry).await
                {
                    tracing::warn!(?entry, error = %e, "record of a failed write not deleted; its replay may add the write to the secondary");
                }
                return;
            }
        };
        let _ = answer.send(Ok(applied));
        if let Some(result) = second {
            self.settle(log, side, &op, entry, result, Duration::ZERO)
                .await;
            return;
        }
        if let Some(deferral) = deferral {
            self.metrics.dual_write(side, deferral.outcome());
            // Due now; the replayer makes it in the room's order.
            if let Err(e) = log
                .retry_later(entry, Duration::ZERO, &deferral.reason(side))
                .await
            {
                tracing::warn!(?entry, error = %e, "outbox record not made due; it is replayed after the grace period");
            }
            self.wake.notify_one();
            return;
        }
        let start = Instant::now();
        let secondary = self.store(side).clone();
        let result = self.secondary_write(secondary.as_ref(), &op).await;
        self.settle(log, side, &op, entry, result, start.elapsed())
            .await;
    }

    /// The primary write. With legacy PostgreSQL primary, a send without a `record` commits its
    /// outbox entry for `secondary` in the same transaction; otherwise the record exists already.
    async fn primary_write(
        &self,
        primary: Side,
        secondary: Side,
        op: &WriteOp,
        record: Option<EntryRef>,
    ) -> StoreResult<(Applied, EntryRef)> {
        let message = match (record, primary, op.new_message()) {
            (Some(entry), _, _) => {
                return Ok((op.apply(self.store(primary).as_ref()).await?, entry));
            }
            (None, Side::Legacy, Some(message)) => message,
            (None, ..) => {
                return Err(StoreError::Internal(format!(
                    "{} on {primary} primary without an outbox record",
                    op.name()
                )));
            }
        };
        let entry = NewEntry {
            target: secondary,
            op: op.clone(),
            attempts: 0,
            delay: self.options.replay.inline_grace,
            last_error: None,
        };
        let start = Instant::now();
        let result = self
            .legacy_pg
            .insert_message_with_outbox(message, &entry)
            .await;
        let success = !matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Internal(_))
        );
        self.metrics.database_operation(
            self.legacy_pg.database(),
            "insert_message",
            success,
            start.elapsed(),
        );
        let (stored, id) = result?;
        Ok((Applied::Message(stored), EntryRef::Pg(id)))
    }

    async fn secondary_write(&self, store: &dyn ChatStore, op: &WriteOp) -> StoreResult<Applied> {
        match tokio::time::timeout(self.options.secondary_timeout, op.apply_on_secondary(store))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.options.secondary_timeout
            ))),
        }
    }

    /// Records the secondary write's outcome on its outbox record: deleted when it landed, due
    /// again after a backoff when it failed.
    async fn settle(
        &self,
        log: &OutboxLog,
        side: Side,
        op: &WriteOp,
        entry: EntryRef,
        result: StoreResult<Applied>,
        lag: Duration,
    ) {
        if op.landed(&result) {
            self.metrics.dual_write(side, DualWriteOutcome::Success);
            self.metrics.dual_write_lag(lag);
            if let Err(e) = log.complete(entry).await {
                tracing::warn!(?entry, error = %e, "outbox record not deleted; it will be replayed (idempotent)");
            }
            return;
        }
        if matches!(result, Err(StoreError::Unavailable(_))) {
            self.mark_down(side);
        }
        let error = result.err().map(|e| e.to_string()).unwrap_or_default();
        self.metrics.dual_write(side, DualWriteOutcome::Error);
        tracing::debug!(op = op.name(), store = %side, %error, "secondary write failed; left to the outbox");
        let r = &self.options.replay;
        let delay = backoff(1, r.backoff_base, r.backoff_cap, rand::random::<f64>());
        if let Err(e) = log.retry_later(entry, delay, &error).await {
            tracing::warn!(?entry, error = %e, "outbox record not updated; it is replayed after the grace period");
        }
    }

    /// Relays the outbox trigger's notifications of one PostgreSQL database to the replayer;
    /// reconnects after a failure (the replayer's timer covers the gap).
    async fn listen(self: Arc<Self>, pool: sqlx::PgPool) {
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match listener.await {
                Ok(mut listener) => loop {
                    match listener.recv().await {
                        Ok(_) => self.wake.notify_one(),
                        Err(e) => {
                            tracing::debug!(error = %e, "outbox notifications interrupted");
                            break;
                        }
                    }
                },
                Err(e) => tracing::debug!(error = %e, "cannot listen for outbox notifications"),
            }
            tokio::time::sleep(
                self.options
                    .replay
                    .poll_interval
                    .min(Duration::from_secs(1)),
            )
            .await;
        }
    }

    async fn replay_loop(self: Arc<Self>) {
        loop {
            let up: Vec<(Side, Arc<dyn ChatStore>)> = [Side::Legacy, Side::New]
                .into_iter()
                .filter(|s| self.is_up(*s))
                .map(|s| (s, self.store(s).clone()))
                .collect();
            let mut settled = 0;
            let mut next_due: Option<Duration> = None;
            let sum = |a: &[AtomicI64; 2]| a.iter().map(|v| v.load(Ordering::Relaxed)).sum::<i64>();
            for (log, side) in self.outboxes.iter().zip([Side::Legacy, Side::New]) {
                // An outbox lives in its store's database: while that is down, keep its last
                // figures instead of waiting on it.
                if !up.iter().any(|(s, _)| *s == side) {
                    continue;
                }
                let i = side_index(side);
                match log
                    .replay_round(&up, &self.options.replay, &self.metrics)
                    .await
                {
                    Ok(round) => {
                        settled += round.settled;
                        next_due = match (next_due, round.next_due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(e) => tracing::debug!(error = %e, "outbox replay round failed"),
                }
                if let Ok(depth) = log.depth().await {
                    self.last_depth[i].store(depth, Ordering::Relaxed);
                }
                if let Ok(dead) = log.dead_letters().await {
                    self.last_dead[i].store(dead, Ordering::Relaxed);
                }
                self.metrics.retry_queue_size.set(sum(&self.last_depth));
                self.metrics.outbox_dead_letters.set(sum(&self.last_dead));
            }
            if settled > 0 {
                continue;
            }
            let pause = next_due.unwrap_or(self.options.replay.poll_interval).clamp(
                MIN_REPLAY_PAUSE,
                self.options.replay.poll_interval.max(MIN_REPLAY_PAUSE),
            );
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

impl ChatStore for MigrationRouter {
    /// The write primary's database (labels `chat_messages_sent_total`).
    fn database(&self) -> &'static str {
        self.inner
            .store(self.inner.flags.current().values.write_primary)
            .database()
    }

    /// Readiness follows the write primary only: a secondary that is down is what the outbox
    /// is for.
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner
            .store(self.inner.flags.current().values.write_primary)
            .ping()
    }

    fn create_room(&self, room: NewRoom) -> StoreFuture<'_, RoomView> {
        self.note_user(room.created_by);
        let write = self.write(WriteOp::create_room(&room));
        Box::pin(async move {
            match write.await? {
                Applied::Room(r) => Ok(r),
                _ => Err(internal("create_room")),
            }
        })
    }

    fn get_room(&self, room: RoomId, viewer: UserId) -> StoreFuture<'_, RoomView> {
        self.read(viewer, move |s| {
            Box::pin(async move { s.get_room(room, viewer).await })
        })
    }

    fn room_access(&self, room: RoomId, user: UserId) -> StoreFuture<'_, RoomAccess> {
        self.note_user(user);
        self.inner
            .store(self.inner.flags.current().values.write_primary)
            .room_access(room, user)
    }

    fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreFuture<'_, (Vec<RoomView>, u64)> {
        self.read(user, move |s| {
            Box::pin(async move { s.rooms_for_user(user, page).await })
        })
    }

    fn room_ids_for_user(&self, user: UserId) -> StoreFuture<'_, Vec<RoomId>> {
        let side = cohort(&self.inner.flags.current(), user);
        note_cohort(as_cohort(side), Some(user));
        self.inner.store(side).room_ids_for_user(user)
    }

    fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreFuture<'_, bool> {
        self.note_user(user);
        let write = self.write(WriteOp::LeaveRoom { room, user, at });
        Box::pin(async move {
            match write.await? {
                Applied::Changed(b) => Ok(b),
                _ => Err(internal("leave_room")),
            }
        })
    }

    fn insert_message(&self, message: NewMessage) -> StoreFuture<'_, StoredMessage> {
        self.note_user(message.sender_id);
        let write = self.write(WriteOp::insert_message(&message));
        Box::pin(async move {
            match write.await? {
                Applied::Message(m) => Ok(m),
                _ => Err(internal("insert_message")),
            }
        })
    }

    /// The trait names no user here: the user is the one the request noted before (the
    /// handler's `room_access`), read back from the request scope; outside a request, `UserId(0)`
    /// (a fixed bucket).
    fn history(
        &self,
        room: RoomId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreFuture<'_, HistoryPage> {
        let user = noted_user().unwrap_or(UserId(0));
        self.read(user, move |s| {
            Box::pin(async move { s.history(room, before, limit).await })
        })
    }

    fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        marker: ReadMarker,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, u64> {
        self.note_user(user);
        let write = self.write(WriteOp::mark_read(room, user, &marker, at));
        Box::pin(async move {
            match write.await? {
                Applied::Count(n) => Ok(n),
                _ => Err(internal("mark_read")),
            }
        })
    }

    fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, bool> {
        self.note_user(user);
        let write = self.write(WriteOp::React {
            message,
            user,
            reaction,
            at,
            room: None,
        });
        Box::pin(async move {
            match write.await? {
                Applied::Changed(b) => Ok(b),
                _ => Err(internal("react")),
            }
        })
    }

    fn message_room(&self, message: MessageId) -> StoreFuture<'_, RoomId> {
        self.inner
            .store(self.inner.flags.current().values.write_primary)
            .message_room(message)
    }
}
