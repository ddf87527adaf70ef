//! The outbox of the migration router and its replayer: the durable record of every secondary
//! write that has not reached its store yet, kept in the **write primary's** database: the
//! `outbox` table of the legacy PostgreSQL (migration `0002_outbox.sql`) while legacy is
//! primary, the new store's outbox while new is primary (a PostgreSQL new store's own `outbox`
//! table, or the CQL store's, [`crate::store::cql_outbox`]). [`OutboxLog`] is either.
//!
//! An entry is one write: the operation and its arguments ([`WriteOp`], serialized to
//! `payload`), so replaying it is the same idempotent call (ids and times were chosen by the
//! caller). Every dual write has one **before its primary write can commit** (a legacy send's in
//! the same transaction, [`crate::store::postgres::PgStore::insert_message_with_outbox`]; any
//! other write's just before the primary write), due only after a grace period; the router
//! deletes it once the secondary accepted the write, makes it due (with backoff) when the
//! secondary failed, was skipped or the room has earlier entries queued, and deletes it when the
//! primary write failed. A crash at any point leaves the entry and a replayer makes the write.
//!
//! # Replay
//!
//! [`Outbox::replay_round`] claims, in one transaction, the **head** (lowest id) of each
//! (target, room) whose head is due, `FOR UPDATE SKIP LOCKED`, so several instances replay at
//! once without taking the same room: while one holds a room's head locked, the others skip the
//! room. Holding the head, it replays the room's entries in id order and stops at the first one
//! that fails or is not due: a room's entries never overtake each other. A failed entry gets
//! `attempts + 1` and `next_attempt_at = now + backoff(attempts)` ([`backoff`]: exponential,
//! capped, with jitter); after `max_attempts` it moves to `outbox_dead_letter`, which unblocks
//! the room. An entry whose payload does not decode moves there at once (it can never succeed)
//! and does not stop the others. `chat-service outbox dead-letters` lists the dead letters and
//! `chat-service outbox redrive` moves them back ([`Outbox::redrive`]).
//!
//! The replayers are woken by `LISTEN/NOTIFY` (channel `chat_outbox`, a trigger of migration
//! `0004` notifies when an entry is due at once) and otherwise sleep until the earliest entry is
//! due, or at most `poll_interval` (a slow fallback).
//!
//! Over 600 lines: the PostgreSQL outbox and the `OutboxLog` over both stores' outboxes belong
//! together (the replay of one is the write of the other); unit tests at the bottom. The write
//! operations themselves are in [`crate::store::write`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::types::Json;
use uuid::Uuid;

use crate::flags::Side;
use crate::ids::RoomId;
use crate::metrics::{DualWriteOutcome, Metrics, RetryOutcome};
pub use crate::store::write::{Answer, Applied, Settlement, Write, WriteOp};
use crate::store::{ChatStore, StoreError, StoreResult};

/// How a replay that did not land is counted in `chat_retry_operations_total`.
pub fn retry_outcome(settlement: &Settlement) -> RetryOutcome {
    match settlement {
        Settlement::Landed => RetryOutcome::Success,
        Settlement::AwaitsPrerequisite(_) => RetryOutcome::Waiting,
        Settlement::Failed(_) => RetryOutcome::Error,
    }
}

/// What becomes of an outbox entry after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum NextStep {
    /// Landed: delete it.
    Delete,
    /// Try again after `delay`, with `attempts` spent.
    Retry { attempts: u32, delay: Duration },
    /// Move it to the dead-letter table with `attempts` spent, for `reason`.
    Bury { attempts: u32, reason: String },
}

/// The next step of an entry that had spent `attempts` before this attempt, was written `age`
/// ago and got `settlement`. Pure; the caller draws `jitter` (uniform in 0..1).
pub fn next_step(
    settlement: &Settlement,
    attempts: u32,
    age: Duration,
    config: &ReplayConfig,
    jitter: f64,
) -> NextStep {
    match settlement {
        Settlement::Landed => NextStep::Delete,
        // Waiting costs no attempt: the backfill makes the room's entries due as soon as it
        // copied the room, and until then a retry every `backoff_cap` is cheap.
        Settlement::AwaitsPrerequisite(error) if age >= config.max_wait => NextStep::Bury {
            attempts,
            reason: format!(
                "{error} after waiting {}: run the backfill (or redrive once the data is there)",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
        },
        Settlement::AwaitsPrerequisite(_) => NextStep::Retry {
            attempts,
            delay: backoff(u32::MAX, config.backoff_base, config.backoff_cap, jitter),
        },
        Settlement::Failed(error) => {
            let attempts = attempts.saturating_add(1);
            if attempts >= config.max_attempts {
                NextStep::Bury {
                    attempts,
                    reason: error.clone(),
                }
            } else {
                NextStep::Retry {
                    attempts,
                    delay: backoff(attempts, config.backoff_base, config.backoff_cap, jitter),
                }
            }
        }
    }
}

/// Delay before attempt `attempts + 1` of an entry that has failed `attempts` (>= 1) times:
/// `base * 2^(attempts-1)` capped at `cap`, then "equal jitter": half of it fixed, half scaled
/// by `jitter` (a uniform draw in 0..1), so retries of many entries spread out but never come
/// sooner than half the schedule. Pure; the caller draws `jitter`.
pub fn backoff(attempts: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(cap);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Replayer settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayConfig {
    /// An entry that failed this many times moves to the dead-letter table.
    pub max_attempts: u32,
    /// How long an entry may wait for its room or message to reach the store (attempts that
    /// find it missing cost nothing) before it moves to the dead-letter table.
    pub max_wait: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Longest sleep between rounds that found nothing to do: the fallback when a notification
    /// is missed (the replayer otherwise sleeps until the earliest entry is due, or is woken).
    pub poll_interval: Duration,
    /// Rooms claimed per round.
    pub batch_rooms: i64,
    /// Entries replayed per room per round.
    pub per_room: usize,
    /// How far ahead an entry written with the primary write is due: the time the router has to
    /// make the secondary write inline before the replayer may take it over.
    pub inline_grace: Duration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_attempts: 10,
            max_wait: Duration::from_secs(24 * 3600),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            batch_rooms: 64,
            per_room: 200,
            inline_grace: Duration::from_secs(30),
        }
    }
}

/// An entry to write.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub target: Side,
    pub op: WriteOp,
    pub attempts: i32,
    /// Due after this delay.
    pub delay: Duration,
    pub last_error: Option<String>,
}

/// Which of a room's outbox entries a look counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// Entries that already failed, were skipped or queued (`last_error` set): a new write for
    /// the room must go behind them. The in-flight records of writes still being made inline
    /// do not count: they are deleted within the call.
    Failed,
    /// Every entry: a write the target has not received yet (in flight, or waiting for a
    /// replay).
    Any,
}

pub(crate) fn side_from(text: &str) -> Option<Side> {
    match text {
        "legacy" => Some(Side::Legacy),
        "new" => Some(Side::New),
        _ => None,
    }
}

fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        e => StoreError::Internal(e.to_string()),
    }
}

/// One due entry replayed: the secondary write made and the entry's next step decided. Both
/// outboxes replay through it; each applies [`Replayed::step`] to its own table and then calls
/// [`Replayed::record`].
#[derive(Debug)]
pub struct Replayed {
    pub step: NextStep,
    settlement: Settlement,
    side: Side,
    op: &'static str,
    spent: u32,
    age: Duration,
}

impl Replayed {
    /// Makes `op` on `store` (the `side` store) for an entry that had spent `spent` attempts
    /// and was written `age` ago.
    pub async fn attempt(
        op: &WriteOp,
        side: Side,
        store: &dyn ChatStore,
        spent: u32,
        age: Duration,
        config: &ReplayConfig,
    ) -> Self {
        let result = op.apply_on_secondary(store).await;
        let settlement = op.settlement(&result);
        let step = next_step(&settlement, spent, age, config, rand::random::<f64>());
        Self {
            step,
            settlement,
            side,
            op: op.name(),
            spent,
            age,
        }
    }

    /// Why the write did not land, for a rescheduled entry's `last_error`.
    pub fn error(&self) -> &str {
        self.settlement.error().unwrap_or_default()
    }

    /// An attempt count as the outbox tables keep it (`int`, saturating).
    pub fn stored_attempts(attempts: u32) -> i32 {
        i32::try_from(attempts).unwrap_or(i32::MAX)
    }

    /// Counts (and logs) the step once the outbox has applied it to `entry`.
    pub fn record(&self, metrics: &Metrics, entry: EntryRef) {
        let (op, side, tries) = (self.op, self.side, self.spent + 1);
        match &self.step {
            NextStep::Delete => {
                metrics.dual_write(side, DualWriteOutcome::Replayed);
                metrics.dual_write_lag(op, self.age);
                metrics.retry_operation(op, RetryOutcome::Success, tries);
            }
            NextStep::Bury { attempts, reason } => {
                metrics.dual_write(side, DualWriteOutcome::DeadLetter);
                metrics.retry_operation(op, RetryOutcome::DeadLetter, tries);
                tracing::error!(?entry, target = %side, op, %reason, attempts, "outbox entry moved to the dead-letter table");
            }
            NextStep::Retry { attempts, delay } => {
                metrics.retry_operation(op, retry_outcome(&self.settlement), tries);
                tracing::debug!(?entry, target = %side, op, error = self.error(), attempts, ?delay, "outbox replay did not land; retrying later");
            }
        }
    }
}

/// Where an entry is kept: a row of a PostgreSQL `outbox` table or of the CQL outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryRef {
    Pg(i64),
    Cql { shard: i32, room: Uuid, id: Uuid },
}

/// What a replay round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Entries replayed or dead-lettered.
    pub settled: usize,
    /// The earliest entry seen that is not due yet is due in this long.
    pub next_due: Option<Duration>,
}

/// Inserts `entry` on `conn` (a transaction of the primary write, or a plain connection).
pub async fn insert_entry(conn: &mut PgConnection, entry: &NewEntry) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<sqlx::Postgres, i64>(
        "insert into outbox (target, room_id, op, payload, attempts, next_attempt_at, last_error)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7) returning id",
    )
    .bind(entry.target.as_str())
    .bind(entry.op.room().map(|r| r.0))
    .bind(entry.op.name())
    .bind(Json(&entry.op))
    .bind(entry.attempts)
    .bind(entry.delay.as_secs_f64())
    .bind(&entry.last_error)
    .fetch_one(conn)
    .await
}

/// An entry as read for replay. The payload is read as text and decoded per entry, so one
/// undecodable row cannot fail the whole batch.
#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    target: String,
    room_id: Option<Uuid>,
    payload: String,
    attempts: i32,
    created_at: DateTime<Utc>,
    due: bool,
}

/// The head (lowest id) of every (target, room) that is due, one per room; entries without a
/// room are their own group. `$1`: targets to replay (stores that are up), `$2`: rooms.
const HEADS: &str = "with heads as (
       select distinct on (target, coalesce(room_id::text, 'entry:' || id::text)) id
         from outbox where target = any($1)
        order by target, coalesce(room_id::text, 'entry:' || id::text), id)
     select o.id, o.target, o.room_id, o.payload::text as payload, o.attempts, o.created_at, true as due
       from outbox o join heads h on h.id = o.id
      where o.next_attempt_at <= now()
      order by o.id
      limit $2
      for update of o skip locked";

/// The room's next entry after `$3` (due or not: a not-due entry stops the room).
const NEXT_IN_ROOM: &str =
    "select id, target, room_id, payload::text as payload, attempts, created_at,
            next_attempt_at <= now() as due
       from outbox where target = $1 and room_id = $2 and id > $3
      order by id limit 1
      for update";

/// A dead-lettered entry, as `chat-service outbox dead-letters` lists it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub target: String,
    pub room_id: Option<Uuid>,
    pub op: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Which dead letters `redrive` moves back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redrive {
    One(i64),
    All,
}

/// The outbox tables of one PostgreSQL database (the legacy store's, or a PostgreSQL new
/// store's while it is primary).
#[derive(Clone, Debug)]
pub struct Outbox {
    pool: PgPool,
}

impl Outbox {
    pub fn new(pool: PgPool) -> Self {
        Outbox { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn enqueue(&self, entry: &NewEntry) -> StoreResult<i64> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        insert_entry(&mut conn, entry).await.map_err(db)
    }

    /// The secondary write of entry `id` went through.
    pub async fn complete(&self, id: i64) -> StoreResult<()> {
        sqlx::query::<sqlx::Postgres>("delete from outbox where id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The inline attempt of entry `id` failed (or was not made): due again after `delay`.
    pub async fn retry_later(
        &self,
        id: i64,
        spent: i32,
        delay: Duration,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query::<sqlx::Postgres>(
            "update outbox set attempts = attempts + $4, next_attempt_at = now() + make_interval(secs => $2), last_error = $3 where id = $1",
        )
        .bind(id)
        .bind(delay.as_secs_f64())
        .bind(error)
        .bind(spent)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Makes `room`'s entries for `target` due now (the trigger wakes the replayers): what they
    /// waited for has just arrived (the backfill copied the room a queued leave or pin waits
    /// for), so they need not sit out their backoff. Returns how many were moved.
    pub async fn due_now(&self, target: Side, room: RoomId) -> StoreResult<u64> {
        let done = sqlx::query::<sqlx::Postgres>(
            "update outbox set next_attempt_at = now() where target = $1 and room_id = $2 and next_attempt_at > now()",
        )
        .bind(target.as_str())
        .bind(room.0)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    /// Whether `room` has `which` entries for `target`. Dead letters never count: nothing will
    /// bring them.
    pub async fn has_entries(
        &self,
        target: Side,
        room: RoomId,
        which: Entries,
    ) -> StoreResult<bool> {
        sqlx::query_scalar::<sqlx::Postgres, bool>(
            "select exists(select 1 from outbox where target = $1 and room_id = $2 and ($3 or last_error is not null))",
        )
        .bind(target.as_str())
        .bind(room.0)
        .bind(which == Entries::Any)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    /// Rows waiting (the `chat_retry_queue_size` gauge).
    pub async fn depth(&self) -> StoreResult<i64> {
        sqlx::query_scalar::<sqlx::Postgres, i64>("select count(*) from outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    pub async fn dead_letters(&self) -> StoreResult<i64> {
        sqlx::query_scalar::<sqlx::Postgres, i64>("select count(*) from outbox_dead_letter")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    /// The dead letters, oldest first.
    pub async fn list_dead_letters(&self, limit: i64) -> StoreResult<Vec<DeadLetter>> {
        sqlx::query_as::<sqlx::Postgres, DeadLetter>(
            "select id, target, room_id, op, attempts, created_at, dead_at, last_error
               from outbox_dead_letter order by id limit $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    /// Moves dead letters back into the outbox, due now with no attempts (new ids: behind what
    /// their room has pending). Returns how many moved. The replayers are woken by the
    /// `outbox_notify` trigger.
    pub async fn redrive(&self, which: Redrive) -> StoreResult<u64> {
        let (id, all) = match which {
            Redrive::One(id) => (id, false),
            Redrive::All => (0, true),
        };
        let moved = sqlx::query::<sqlx::Postgres>(
            "with moved as (delete from outbox_dead_letter where $2 or id = $1 returning *)
             insert into outbox (target, room_id, op, payload, attempts, next_attempt_at, created_at, last_error)
             select target, room_id, op, payload, 0, now(), created_at, 'redriven: ' || coalesce(last_error, '')
               from moved order by id",
        )
        .bind(id)
        .bind(all)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(moved.rows_affected())
    }

    /// Time until the earliest entry for `targets` is due (zero when one is due now).
    pub async fn next_due(&self, targets: &[Side]) -> StoreResult<Option<Duration>> {
        let targets: Vec<&str> = targets.iter().map(|s| s.as_str()).collect();
        let secs = sqlx::query_scalar::<sqlx::Postgres, Option<f64>>(
            "select extract(epoch from min(next_attempt_at) - now())::float8 from outbox where target = any($1)",
        )
        .bind(&targets)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    async fn bury(tx: &mut PgConnection, id: i64, attempts: i32, error: &str) -> StoreResult<()> {
        sqlx::query::<sqlx::Postgres>(
            "with gone as (delete from outbox where id = $1 returning *)
             insert into outbox_dead_letter (id, target, room_id, op, payload, attempts, created_at, last_error)
             select id, target, room_id, op, payload, $3, created_at, $2 from gone",
        )
        .bind(id)
        .bind(error)
        .bind(attempts)
        .execute(tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// One replay round over the stores in `up` (targets not listed are left alone, so a store
    /// that is down does not burn attempts). An entry whose payload does not decode (written by
    /// another version, or altered by hand) can never succeed: it goes to the dead-letter table
    /// at once and its room goes on.
    pub async fn replay_round(
        &self,
        up: &[(Side, Arc<dyn ChatStore>)],
        config: &ReplayConfig,
        metrics: &Metrics,
    ) -> StoreResult<Round> {
        if up.is_empty() {
            return Ok(Round::default());
        }
        let targets: Vec<&str> = up.iter().map(|(s, _)| s.as_str()).collect();
        let mut tx = self.pool.begin().await.map_err(db)?;
        let heads = sqlx::query_as::<sqlx::Postgres, Row>(HEADS)
            .bind(&targets)
            .bind(config.batch_rooms)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let mut settled = 0;
        for head in heads {
            let mut row = head;
            for _ in 0..config.per_room {
                if !row.due {
                    break;
                }
                let Some(side) = side_from(&row.target) else {
                    break;
                };
                let Some((_, store)) = up.iter().find(|(s, _)| *s == side) else {
                    break;
                };
                let op = match serde_json::from_str::<WriteOp>(&row.payload) {
                    Ok(op) => op,
                    Err(e) => {
                        let error = format!("undecodable payload: {e}");
                        Self::bury(&mut tx, row.id, row.attempts, &error).await?;
                        metrics.dual_write(side, DualWriteOutcome::DeadLetter);
                        tracing::error!(id = row.id, target = %side, %error, "outbox entry moved to the dead-letter table");
                        settled += 1;
                        match next_in_room(&mut tx, &row).await? {
                            Some(next) => {
                                row = next;
                                continue;
                            }
                            None => break,
                        }
                    }
                };
                let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
                let spent = u32::try_from(row.attempts).unwrap_or(0);
                let replayed =
                    Replayed::attempt(&op, side, store.as_ref(), spent, age, config).await;
                match &replayed.step {
                    NextStep::Delete => {
                        sqlx::query::<sqlx::Postgres>("delete from outbox where id = $1")
                            .bind(row.id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db)?;
                    }
                    NextStep::Bury { attempts, reason } => {
                        let attempts = Replayed::stored_attempts(*attempts);
                        Self::bury(&mut tx, row.id, attempts, reason).await?;
                    }
                    NextStep::Retry { attempts, delay } => {
                        sqlx::query::<sqlx::Postgres>(
                            "update outbox set attempts = $2, next_attempt_at = now() + make_interval(secs => $3), last_error = $4 where id = $1",
                        )
                        .bind(row.id)
                        .bind(Replayed::stored_attempts(*attempts))
                        .bind(delay.as_secs_f64())
                        .bind(replayed.error())
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                    }
                }
                replayed.record(metrics, EntryRef::Pg(row.id));
                if replayed.step != NextStep::Delete {
                    // The room waits: for this entry's retry, or for the next round after a
                    // burial.
                    settled += usize::from(matches!(replayed.step, NextStep::Bury { .. }));
                    break;
                }
                settled += 1;
                match next_in_room(&mut tx, &row).await? {
                    Some(next) => row = next,
                    None => break,
                }
            }
        }
        tx.commit().await.map_err(db)?;
        let due: Vec<Side> = up.iter().map(|(s, _)| *s).collect();
        Ok(Round {
            settled,
            next_due: self.next_due(&due).await?,
        })
    }
}

/// The entry after `row` in its room, locked (none for entries without a room).
async fn next_in_room(tx: &mut PgConnection, row: &Row) -> StoreResult<Option<Row>> {
    let Some(room) = row.room_id else {
        return Ok(None);
    };
    sqlx::query_as::<sqlx::Postgres, Row>(NEXT_IN_ROOM)
        .bind(&row.target)
        .bind(room)
        .bind(row.id)
        .fetch_optional(tx)
        .await
        .map_err(db)
}

/// The outbox in the write primary's database: the durable record of pending secondary writes.
#[derive(Clone)]
pub enum OutboxLog {
    /// A PostgreSQL `outbox` table (legacy, or a PostgreSQL new store).
    Pg(Outbox),
    /// The CQL store's outbox (a CQL new store).
    Cql(Arc<crate::store::cql_outbox::CqlOutbox>),
}

impl OutboxLog {
    pub async fn enqueue(&self, entry: &NewEntry) -> StoreResult<EntryRef> {
        match self {
            OutboxLog::Pg(o) => o.enqueue(entry).await.map(EntryRef::Pg),
            OutboxLog::Cql(o) => o.enqueue(entry).await,
        }
    }

    pub async fn complete(&self, entry: EntryRef) -> StoreResult<()> {
        match (self, entry) {
            (OutboxLog::Pg(o), EntryRef::Pg(id)) => o.complete(id).await,
            (OutboxLog::Cql(o), EntryRef::Cql { shard, room, id }) => {
                o.complete(shard, room, id).await
            }
            _ => Err(mismatch(entry)),
        }
    }

    /// The inline write failed, was skipped or queued: the replayer takes it after `delay`.
    /// Makes an entry due after `delay`, `spent` (0 or 1) more attempts spent. Only an entry
    /// written by this request is retried this way, so a CQL entry had spent none before.
    pub async fn retry_later(
        &self,
        entry: EntryRef,
        spent: i32,
        delay: Duration,
        error: &str,
    ) -> StoreResult<()> {
        match (self, entry) {
            (OutboxLog::Pg(o), EntryRef::Pg(id)) => o.retry_later(id, spent, delay, error).await,
            (OutboxLog::Cql(o), EntryRef::Cql { shard, room, id }) => {
                o.retry_later((shard, room, id), spent, delay, error).await
            }
            _ => Err(mismatch(entry)),
        }
    }

    pub async fn has_entries(
        &self,
        target: Side,
        room: RoomId,
        which: Entries,
    ) -> StoreResult<bool> {
        match self {
            OutboxLog::Pg(o) => o.has_entries(target, room, which).await,
            OutboxLog::Cql(o) => o.has_entries(target, room, which).await,
        }
    }

    pub async fn replay_round(
        &self,
        up: &[(Side, Arc<dyn ChatStore>)],
        config: &ReplayConfig,
        metrics: &Metrics,
    ) -> StoreResult<Round> {
        match self {
            OutboxLog::Pg(o) => o.replay_round(up, config, metrics).await,
            OutboxLog::Cql(o) => o.replay_round(up, config, metrics).await,
        }
    }

    pub async fn depth(&self) -> StoreResult<i64> {
        match self {
            OutboxLog::Pg(o) => o.depth().await,
            OutboxLog::Cql(o) => o.depth().await,
        }
    }

    pub async fn dead_letters(&self) -> StoreResult<i64> {
        match self {
            OutboxLog::Pg(o) => o.dead_letters().await,
            OutboxLog::Cql(o) => o.dead_letters().await,
        }
    }
}

fn mismatch(entry: EntryRef) -> StoreError {
    StoreError::Internal(format!("outbox entry {entry:?} belongs to another outbox"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, UserId};
    use crate::store::RoomType;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(2, base, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, base, cap, 1.0), Duration::from_secs(4));
        assert_eq!(
            backoff(8, base, cap, 1.0),
            Duration::from_secs(60),
            "capped"
        );
        assert_eq!(
            backoff(1000, base, cap, 0.5),
            Duration::from_secs(45),
            "no overflow"
        );
        for attempts in 1..20 {
            let lo = backoff(attempts, base, cap, 0.0);
            let hi = backoff(attempts, base, cap, 1.0);
            assert!(
                lo <= hi && hi <= cap && lo * 2 == hi,
                "{attempts}: {lo:?}..{hi:?}"
            );
            assert!(backoff(attempts, base, cap, 2.0) == hi, "jitter is clamped");
        }
    }

    #[test]
    fn ops_round_trip_through_json_with_their_ordering_key() {
        let room = RoomId::random();
        let ops = [
            WriteOp::InsertMessage {
                id: MessageId(Uuid::new_v4()),
                room_id: room,
                sender_id: UserId(3),
                content: vec![0, 1, 255],
                message_type: "user_message".into(),
                created_at: crate::store::now(),
            },
            WriteOp::mark_read(
                room,
                UserId(4),
                &[MessageId(Uuid::new_v4())],
                crate::store::now(),
            ),
            WriteOp::MarkRead {
                room,
                user: UserId(4),
                ids: None,
                since: Some(crate::store::now()),
                at: crate::store::now(),
            },
            WriteOp::React {
                message: MessageId(Uuid::new_v4()),
                user: UserId(1),
                reaction: "+1".into(),
                at: crate::store::now(),
                room: None,
            },
        ];
        for op in ops {
            let json = serde_json::to_value(&op).expect("serialize");
            assert_eq!(json["op"], op.name());
            assert_eq!(
                serde_json::from_value::<WriteOp>(json).expect("deserialize"),
                op
            );
        }
        assert_eq!(
            WriteOp::LeaveRoom {
                room,
                user: UserId(1),
                at: crate::store::now()
            }
            .room(),
            Some(room)
        );
    }

    #[test]
    fn a_conflict_lands_only_a_create_room_and_not_found_waits_for_everything_else() {
        let leave = WriteOp::LeaveRoom {
            room: RoomId::random(),
            user: UserId(1),
            at: crate::store::now(),
        };
        let create = WriteOp::CreateRoom {
            id: RoomId::random(),
            name: String::new(),
            room_type: RoomType::Group,
            created_by: UserId(1),
            participants: vec![UserId(1)],
            created_at: crate::store::now(),
        };
        let conflict = Err(StoreError::Conflict("x".into()));
        let missing = Err(StoreError::NotFound("room r".into()));
        let down = Err(StoreError::Unavailable("x".into()));
        assert!(matches!(leave.settlement(&conflict), Settlement::Failed(_)));
        assert_eq!(create.settlement(&conflict), Settlement::Landed);
        assert!(matches!(create.settlement(&down), Settlement::Failed(_)));
        assert_eq!(
            leave.settlement(&missing),
            Settlement::AwaitsPrerequisite("room r not found".into())
        );
        assert!(matches!(create.settlement(&missing), Settlement::Failed(_)));
    }

    #[test]
    fn waiting_for_a_room_spends_no_attempt_until_max_wait_and_failures_are_buried_at_max_attempts()
    {
        let config = ReplayConfig {
            max_attempts: 3,
            max_wait: Duration::from_secs(3600),
            ..ReplayConfig::default()
        };
        let minute = Duration::from_secs(60);
        let waiting = Settlement::AwaitsPrerequisite("room r not found".into());
        let failed = Settlement::Failed("database unavailable".into());
        // (settlement, attempts spent before, age) -> next step
        let cases = [
            (&Settlement::Landed, 2, minute, NextStep::Delete),
            (
                &waiting,
                2,
                minute,
                NextStep::Retry {
                    attempts: 2,
                    delay: config.backoff_cap,
                },
            ),
            (
                &waiting,
                9,
                minute * 59,
                NextStep::Retry {
                    attempts: 9,
                    delay: config.backoff_cap,
                },
            ),
            (
                &failed,
                1,
                minute,
                NextStep::Retry {
                    attempts: 2,
                    delay: Duration::from_secs(1),
                },
            ),
            (
                &failed,
                2,
                minute,
                NextStep::Bury {
                    attempts: 3,
                    reason: "database unavailable".into(),
                },
            ),
        ];
        for (settlement, spent, age, expected) in cases {
            assert_eq!(
                next_step(settlement, spent, age, &config, 1.0),
                expected,
                "{settlement:?} after {spent} attempts, {age:?} old"
            );
        }
        match next_step(&waiting, 0, minute * 61, &config, 1.0) {
            NextStep::Bury { attempts, reason } => {
                assert_eq!(attempts, 0);
                assert!(
                    reason.starts_with("room r not found after waiting 1h 1m: run the backfill"),
                    "{reason}"
                );
            }
            other => panic!("a write that waited past max_wait is buried, not {other:?}"),
        }
    }
}
