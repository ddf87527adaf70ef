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
//! instead of being counted and then undone by a replayed `CreateRoom`. A write whose room or
//! message is not on the secondary yet (it predates dual writes) waits for the backfill without
//! spending attempts ([`WriteOp::settlement`]), counted `status="waiting"`, not as an error.
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
//! primary, the store the write that follows must succeed on (a room still queued for it is
//! waited for, a message not there yet is looked up in the other store); `get_room`, `rooms_for_user`,
//! `history` and `room_ids_for_user` from the user's cohort. Every call that names a user notes
//! the user's cohort for the request's metrics ([`crate::api::note_cohort`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::task::TaskTracker;

use crate::api::note_cohort;
use crate::flags::{DualWrite, FlagWatcher, Flags, Side};
use crate::ids::{MessageId, RoomId, UserId};
use crate::metrics::{DualWriteOutcome, Metrics};
use crate::routing::{cohort, read_plan, write_plan};
use crate::store::instrumented::Instrumented;
use crate::store::outbox::{
    Answer, Applied, Entries, EntryRef, NewEntry, NextStep, Outbox, OutboxLog, ReplayConfig,
    Settlement, Write, WriteOp, next_step,
};
use crate::store::postgres::PgStore;
use crate::store::room_cache::{CachedStore, Role, RoomCache};
use crate::store::shadow::{Compared, Scope, Shadowed, compare_results};
use crate::store::{
    ChatStore, DeviceToken, HistoryPage, NewMessage, NewRoom, PageRequest, Platform, ReadChunk,
    RoomAccess, RoomView, StoreError, StoreFuture, StoreResult, StoredMessage,
};

mod dual_write;
mod health;
mod replay;
mod shadow_reads;

use health::*;

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
    /// How long after this instance sees the write primary change it looks, before every
    /// write, for the room's writes still queued in the other store's outbox, whatever that
    /// outbox's last count said. Past it, a count of zero taken after the period ended spares
    /// the look (a round trip to the other store per write): only an instance that still takes
    /// the other store for primary adds such writes, and every instance applies the same flags
    /// within this period. It must exceed the flags' propagation to every instance.
    pub switch_settle: Duration,
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
            switch_settle: Duration::from_secs(60),
            replay: ReplayConfig::default(),
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
    /// Last depth and dead-letter count read per outbox (kept while one cannot be read), and
    /// when the depth was asked for.
    last_depth: [AtomicI64; 2],
    depth_asked_at: [Mutex<Option<Instant>>; 2],
    /// The write primary this instance last acted on, and since when.
    primary_seen: Mutex<(Side, Instant)>,
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

/// The side serving `user` under `flags`, noted as the request's cohort.
fn noted_side(flags: &Flags, user: UserId) -> Side {
    let side = cohort(flags, user);
    note_cohort(side);
    side
}

/// A read's answer for comparison: NotFound is an answer (`Err`), other errors are not.
fn found<T>(result: StoreResult<T>) -> Option<Result<T, String>> {
    match result {
        Ok(v) => Some(Ok(v)),
        Err(StoreError::NotFound(m)) => Some(Err(m)),
        Err(_) => None,
    }
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
        cache: Option<Arc<RoomCache>>,
    ) -> Self {
        let legacy_outbox = OutboxLog::Pg(Outbox::new(legacy.pool().clone()));
        // Every write either store accepts (inline, dual, replayed) stamps the views it
        // changed; reads are cached above the router, which keys them by its read scope.
        let stamped = |store| CachedStore::wrap(store, cache.as_ref(), Role::Stamps);
        let flags_now = flags.current();
        let inner = Inner {
            legacy: stamped(Arc::new(Instrumented::new(legacy.clone(), metrics.clone()))),
            new: stamped(new),
            legacy_pg: legacy,
            outboxes: [legacy_outbox, new_outbox],
            flags,
            metrics,
            options,
            health: [Health::new(), Health::new()],
            tasks: TaskTracker::new(),
            wake: Notify::new(),
            last_depth: [AtomicI64::new(0), AtomicI64::new(0)],
            depth_asked_at: [Mutex::new(None), Mutex::new(None)],
            primary_seen: Mutex::new((write_plan(&flags_now).primary, Instant::now())),
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
        note_cohort(plan.serve);
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

    /// Notes `user`'s cohort for the request's metrics; returns the side serving them.
    fn note_user(&self, user: UserId) -> Side {
        noted_side(&self.inner.flags.current(), user)
    }

    /// A write per the write plan. A dual write runs in a tracked task of its own and answers
    /// through a channel: dropping the returned future (request timeout, client gone) does not
    /// stop it.
    async fn write<T: Answer>(&self, write: Write<T>) -> StoreResult<T> {
        let inner = &self.inner;
        let op = write.into_op();
        let name = op.name();
        let plan = write_plan(&inner.flags.current());
        let applied = match plan.secondary {
            None => op.apply(inner.store(plan.primary).as_ref()).await?,
            Some((side, mode)) => {
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
                })?
            }
        };
        Write::<T>::answer(name, applied)
    }
}

#[async_trait::async_trait]
impl ChatStore for MigrationRouter {
    /// The write primary's database (labels `chat_messages_sent_total`).
    fn database(&self) -> &'static str {
        self.inner
            .store(self.inner.flags.current().values.write_primary)
            .database()
    }

    fn read_scope(&self, viewer: UserId) -> String {
        let flags = self.inner.flags.current();
        let side = noted_side(&flags, viewer);
        format!("{side}-g{}", flags.generation)
    }

    /// Readiness follows the write primary only: a secondary that is down is what the outbox
    /// is for.
    async fn ping(&self) -> StoreResult<()> {
        self.inner
            .store(self.inner.flags.current().values.write_primary)
            .ping()
            .await
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<RoomView> {
        self.note_user(room.created_by);
        self.write(Write::create_room(&room)).await
    }

    async fn get_room(&self, room: RoomId, viewer: UserId) -> StoreResult<RoomView> {
        self.read(viewer, move |s| {
            Box::pin(async move { s.get_room(room, viewer).await })
        })
        .await
    }

    /// From the write primary. A room the primary does not know may have been created while
    /// the other store was primary and still be queued for this one (just after a rollback from
    /// CutOver): the lookup waits for that room's queue like a write does, then answers from
    /// the primary, or is `Unavailable` if the queue is still behind.
    async fn room_access(&self, room: RoomId, user: UserId) -> StoreResult<RoomAccess> {
        self.note_user(user);
        let inner = &self.inner;
        let plan = write_plan(&inner.flags.current());
        let primary = inner.store(plan.primary);
        match (primary.room_access(room, user).await, plan.secondary) {
            (Err(StoreError::NotFound(what)), Some((other, _))) => {
                if inner.catching_up(plan.primary, other, room).await {
                    return Err(StoreError::Unavailable(format!(
                        "room {room} is catching up: writes made while the {other} store was primary are still on their way to the {} store; retry shortly",
                        plan.primary
                    )));
                }
                match primary.room_access(room, user).await {
                    Err(StoreError::NotFound(_)) => Err(StoreError::NotFound(what)),
                    other => other,
                }
            }
            (result, _) => result,
        }
    }

    async fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreResult<(Vec<RoomView>, u64)> {
        self.read(user, move |s| {
            Box::pin(async move { s.rooms_for_user(user, page).await })
        })
        .await
    }

    async fn room_ids_for_user(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        let side = self.note_user(user);
        self.inner.store(side).room_ids_for_user(user).await
    }

    async fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreResult<bool> {
        self.note_user(user);
        self.write(Write::leave_room(room, user, at)).await
    }

    async fn set_pinned(
        &self,
        room: RoomId,
        user: UserId,
        pinned: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.note_user(user);
        self.write(Write::set_pinned(room, user, pinned, at)).await
    }

    async fn register_device(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.note_user(user);
        self.write(Write::register_device(user, token, platform, at))
            .await
    }

    async fn delete_device(
        &self,
        user: UserId,
        token: String,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.note_user(user);
        self.write(Write::delete_device(user, token, at)).await
    }

    /// From the user's cohort, like their room list; not shadow-compared (validate compares
    /// every user's tokens).
    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceToken>> {
        let side = self.note_user(user);
        self.inner.store(side).devices(user).await
    }

    async fn insert_message(&self, message: NewMessage) -> StoreResult<StoredMessage> {
        self.note_user(message.sender_id);
        self.write(Write::insert_message(&message)).await
    }

    async fn history(
        &self,
        room: RoomId,
        viewer: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        self.read(viewer, move |s| {
            Box::pin(async move { s.history(room, viewer, before, limit).await })
        })
        .await
    }

    /// From the store `reader` reads from: the ids are then written to both stores, which so
    /// mark the same messages whatever else each holds (e.g. history not backfilled yet).
    async fn read_chunk(
        &self,
        room: RoomId,
        reader: UserId,
        since: DateTime<Utc>,
    ) -> StoreResult<ReadChunk> {
        let side = self.note_user(reader);
        self.inner.store(side).read_chunk(room, reader, since).await
    }

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        ids: Vec<MessageId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        self.note_user(user);
        self.write(Write::mark_read(room, user, &ids, at)).await
    }

    async fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.note_user(user);
        self.write(Write::react(message, user, reaction, at)).await
    }

    /// From the write primary, else (while dual writes are on) from the other store: a message
    /// written while the other store was primary may still be on its way (`room_access` then
    /// waits for the room's queue).
    async fn message_room(&self, message: MessageId) -> StoreResult<RoomId> {
        let inner = &self.inner;
        let plan = write_plan(&inner.flags.current());
        match (
            inner.store(plan.primary).message_room(message).await,
            plan.secondary,
        ) {
            (Err(StoreError::NotFound(what)), Some((other, _))) => {
                match inner.store(other).message_room(message).await {
                    Ok(room) => Ok(room),
                    Err(_) => Err(StoreError::NotFound(what)),
                }
            }
            (result, _) => result,
        }
    }
}
