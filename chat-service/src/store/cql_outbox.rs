//! The outbox in the CQL store, used while the new store is the write primary: the durable
//! record of each pending legacy write, written to the new store **before** the primary write, so
//! that neither a crash nor a PostgreSQL outage loses a write the client was told succeeded.
//!
//! Table `outbox`, `PRIMARY KEY ((shard), room_id, id)`: a room's entries live in one partition
//! (`shard` = a hash of the room, [`SHARDS`] partitions), clustered by room then by `id` (a
//! timeuuid of the writing instance's clock), so a room's entries replay in the order they were
//! written. Entries without a room use the nil room. `outbox_dead_letter` keeps entries that
//! failed [`ReplayConfig::max_attempts`] times or whose payload cannot be decoded.
//!
//! Unlike the PostgreSQL outbox there is no row locking: several instances may replay the same
//! entry at once. That is harmless (every write is idempotent by id, and a replayed `CreateRoom`
//! on PostgreSQL is a conflict, never a second set of members); it only costs a duplicate call.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimeuuid;
use uuid::Uuid;

use crate::flags::Side;
use crate::ids::{MessageIdGenerator, RoomId};
use crate::metrics::{DualWriteOutcome, Metrics};
use crate::store::outbox::{
    Entries, EntryRef, NewEntry, NextStep, ReplayConfig, Replayed, Round, WriteOp, side_from,
};
use crate::store::scylla::{CqlConfig, classify, classify_prepare, first_row, open_session, rows};
use crate::store::{ChatStore, StoreError, StoreResult};

/// Partitions of the outbox table (a room always maps to the same one).
pub const SHARDS: i32 = 16;
/// Entries read per partition per round.
const SCAN_LIMIT: i32 = 2_000;

/// The outbox tables, created at connect (idempotent).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.outbox (
        shard int, room_id uuid, id timeuuid, target text, op text, payload text,
        attempts int, next_attempt_at bigint, created_at bigint, last_error text,
        PRIMARY KEY ((shard), room_id, id)
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.outbox_dead_letter (
        id timeuuid PRIMARY KEY, target text, room_id uuid, op text, payload text, attempts int,
        created_at bigint, last_error text, dead_at bigint
    )",
];

/// The partition of a room's entries (FNV-1a of the id bytes).
pub fn shard_of(room: Uuid) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in room.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % SHARDS as u32) as i32
}

fn micros_now() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

struct Statements {
    insert: PreparedStatement,
    delete: PreparedStatement,
    fail: PreparedStatement,
    room_entries: PreparedStatement,
    scan: PreparedStatement,
    count: PreparedStatement,
    dead_letter: PreparedStatement,
    count_dead: PreparedStatement,
}

/// A pending entry as read back.
type Row = (
    Uuid,
    CqlTimeuuid,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
);

pub struct CqlOutbox {
    session: Session,
    st: Statements,
    /// Entry ids: timeuuids with this instance's random node.
    ids: MessageIdGenerator,
}

impl CqlOutbox {
    /// Connects (its own session), creates the outbox tables if needed and prepares statements.
    pub async fn connect(config: &CqlConfig) -> StoreResult<Arc<Self>> {
        let (session, keyspace) = open_session(config).await?;
        for cql in SCHEMA {
            session
                .query_unpaged(cql.replace("{ks}", &keyspace), &[])
                .await
                .map_err(classify)?;
        }
        let p = |cql: &'static str| {
            let cql = cql.replace("{ks}", &keyspace);
            let session = &session;
            async move { session.prepare(cql).await.map_err(classify_prepare) }
        };
        let st = Statements {
            insert: p("INSERT INTO {ks}.outbox (shard, room_id, id, target, op, payload, attempts, next_attempt_at, created_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)").await?,
            delete: p("DELETE FROM {ks}.outbox WHERE shard = ? AND room_id = ? AND id = ?").await?,
            // IF EXISTS: an update must never resurrect an entry the replayer already deleted.
            fail: p("UPDATE {ks}.outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE shard = ? AND room_id = ? AND id = ? IF EXISTS").await?,
            room_entries: p("SELECT target, last_error FROM {ks}.outbox WHERE shard = ? AND room_id = ?").await?,
            scan: p("SELECT room_id, id, target, payload, attempts, next_attempt_at, created_at FROM {ks}.outbox WHERE shard = ? LIMIT ?").await?,
            count: p("SELECT count(*) FROM {ks}.outbox WHERE shard = ?").await?,
            dead_letter: p("INSERT INTO {ks}.outbox_dead_letter (id, target, room_id, op, payload, attempts, created_at, last_error, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)").await?,
            count_dead: p("SELECT count(*) FROM {ks}.outbox_dead_letter").await?,
        };
        Ok(Arc::new(CqlOutbox {
            session,
            st,
            ids: MessageIdGenerator::default(),
        }))
    }

    async fn exec(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<scylla::response::query_result::QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(classify)
    }

    pub async fn enqueue(&self, entry: &NewEntry) -> StoreResult<EntryRef> {
        let room = entry.op.room().map(|r| r.0).unwrap_or(Uuid::nil());
        let shard = shard_of(room);
        let id = self.ids.next().0;
        let payload = serde_json::to_string(&entry.op)
            .map_err(|e| StoreError::Internal(format!("outbox entry does not serialize: {e}")))?;
        let now = micros_now();
        self.exec(
            &self.st.insert,
            (
                shard,
                room,
                CqlTimeuuid::from(id),
                entry.target.as_str(),
                entry.op.name(),
                payload,
                entry.attempts,
                now + micros(entry.delay),
                now,
                entry.last_error.as_deref(),
            ),
        )
        .await?;
        Ok(EntryRef::Cql { shard, room, id })
    }

    pub async fn complete(&self, shard: i32, room: Uuid, id: Uuid) -> StoreResult<()> {
        self.exec(&self.st.delete, (shard, room, CqlTimeuuid::from(id)))
            .await?;
        Ok(())
    }

    /// The entry's write failed (or was skipped): due again after `delay`, `attempts` so far.
    pub async fn retry_later(
        &self,
        (shard, room, id): (i32, Uuid, Uuid),
        attempts: i32,
        delay: Duration,
        error: &str,
    ) -> StoreResult<()> {
        self.exec(
            &self.st.fail,
            (
                attempts,
                micros_now() + micros(delay),
                error,
                shard,
                room,
                CqlTimeuuid::from(id),
            ),
        )
        .await?;
        Ok(())
    }

    /// Whether `room` has `which` entries for `target` (dead letters never count).
    pub async fn has_entries(
        &self,
        target: Side,
        room: RoomId,
        which: Entries,
    ) -> StoreResult<bool> {
        let found = rows::<(Option<String>, Option<String>)>(
            self.exec(&self.st.room_entries, (shard_of(room.0), room.0))
                .await?,
        )?;
        Ok(found.iter().any(|(t, error)| {
            t.as_deref() == Some(target.as_str()) && (which == Entries::Any || error.is_some())
        }))
    }

    pub async fn depth(&self) -> StoreResult<i64> {
        let mut total = 0;
        for shard in 0..SHARDS {
            let (n,): (i64,) =
                first_row(self.exec(&self.st.count, (shard,)).await?)?.unwrap_or((0,));
            total += n;
        }
        Ok(total)
    }

    pub async fn dead_letters(&self) -> StoreResult<i64> {
        let (n,): (i64,) = first_row(self.exec(&self.st.count_dead, ()).await?)?.unwrap_or((0,));
        Ok(n)
    }

    async fn bury(&self, shard: i32, row: &Row, attempts: i32, error: &str) -> StoreResult<()> {
        let (room, id, target, payload, _, _, created) = row;
        let op = payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        self.exec(
            &self.st.dead_letter,
            (
                *id,
                target.as_deref().unwrap_or(""),
                *room,
                op,
                payload.as_deref().unwrap_or(""),
                attempts,
                created.unwrap_or(0),
                error,
                micros_now(),
            ),
        )
        .await?;
        self.exec(&self.st.delete, (shard, *room, *id)).await?;
        Ok(())
    }

    /// One replay round over every partition: each room's entries in order, stopping at the
    /// first that is not due or fails. An entry whose payload does not decode goes to the
    /// dead-letter table at once (it can never succeed) and does not hold its room back.
    pub async fn replay_round(
        &self,
        up: &[(Side, Arc<dyn ChatStore>)],
        config: &ReplayConfig,
        metrics: &Metrics,
    ) -> StoreResult<Round> {
        let mut round = Round::default();
        let now = micros_now();
        for shard in 0..SHARDS {
            let entries = rows::<Row>(self.exec(&self.st.scan, (shard, SCAN_LIMIT)).await?)?;
            let mut blocked: Option<Uuid> = None;
            for row in &entries {
                let (room, id, target, payload, attempts, next, created) = row;
                if blocked == Some(*room) {
                    continue;
                }
                let attempts = attempts.unwrap_or(0);
                let op = match payload.as_deref().map(serde_json::from_str::<WriteOp>) {
                    Some(Ok(op)) => op,
                    Some(Err(e)) => {
                        let error = format!("undecodable payload: {e}");
                        self.bury(shard, row, attempts, &error).await?;
                        tracing::error!(id = %Uuid::from(*id), %error, "CQL outbox entry moved to the dead-letter table");
                        metrics.dual_write(Side::Legacy, DualWriteOutcome::DeadLetter);
                        round.settled += 1;
                        continue;
                    }
                    None => {
                        self.bury(shard, row, attempts, "entry without payload")
                            .await?;
                        metrics.dual_write(Side::Legacy, DualWriteOutcome::DeadLetter);
                        round.settled += 1;
                        continue;
                    }
                };
                let next = next.unwrap_or(0);
                if next > now {
                    let wait = Duration::from_micros(u64::try_from(next - now).unwrap_or(0));
                    round.next_due = Some(round.next_due.map_or(wait, |d: Duration| d.min(wait)));
                    blocked = Some(*room);
                    continue;
                }
                let Some(side) = target.as_deref().and_then(side_from) else {
                    self.bury(shard, row, attempts, "unknown target").await?;
                    round.settled += 1;
                    continue;
                };
                let Some((_, store)) = up.iter().find(|(s, _)| *s == side) else {
                    blocked = Some(*room);
                    continue;
                };
                let age =
                    Duration::from_micros(u64::try_from(now - created.unwrap_or(now)).unwrap_or(0));
                let spent = u32::try_from(attempts).unwrap_or(0);
                let replayed =
                    Replayed::attempt(&op, side, store.as_ref(), spent, age, config).await;
                let entry = EntryRef::Cql {
                    shard,
                    room: *room,
                    id: Uuid::from(*id),
                };
                match &replayed.step {
                    NextStep::Delete => {
                        self.exec(&self.st.delete, (shard, *room, *id)).await?;
                    }
                    NextStep::Bury { attempts, reason } => {
                        self.bury(shard, row, Replayed::stored_attempts(*attempts), reason)
                            .await?;
                    }
                    NextStep::Retry { attempts, delay } => {
                        let attempts = Replayed::stored_attempts(*attempts);
                        self.retry_later(
                            (shard, *room, Uuid::from(*id)),
                            attempts,
                            *delay,
                            replayed.error(),
                        )
                        .await?;
                        round.next_due = Some(round.next_due.map_or(*delay, |d| d.min(*delay)));
                    }
                }
                replayed.record(metrics, entry);
                if replayed.step == NextStep::Delete {
                    round.settled += 1;
                    continue;
                }
                round.settled += usize::from(matches!(replayed.step, NextStep::Bury { .. }));
                // The room waits for this entry.
                blocked = Some(*room);
            }
        }
        Ok(round)
    }
}
