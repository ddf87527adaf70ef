//! The transactional outbox of the migration router, in the legacy PostgreSQL (migration
//! `0002_outbox.sql`), and its replayer.
//!
//! An entry is one secondary write that has not reached its store yet: the operation and its
//! arguments ([`WriteOp`], serialized to `payload`), so replaying it is the same idempotent call
//! (ids and times were chosen by the caller). Entries come from three places:
//!
//! * written **in the same transaction as the primary write** (legacy PostgreSQL primary,
//!   `insert_message`: [`crate::store::postgres::PgStore::insert_message_with_outbox`]) with
//!   `next_attempt_at` a grace period ahead; the router deletes it once the secondary accepted
//!   the write, or pushes it back with backoff when the secondary failed. A crash between the
//!   primary commit and the secondary write leaves the row, and the replayer makes the write
//!   after the grace period;
//! * enqueued after a secondary write failed, or was skipped because the store was down;
//! * entries that could not be enqueued (PostgreSQL itself unreachable) are held in memory by
//!   the router and flushed here when PostgreSQL answers again.
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
//! the room.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::types::Json;
use uuid::Uuid;

use crate::flags::Side;
use crate::ids::{MessageId, RoomId, UserId};
use crate::metrics::Metrics;
use crate::store::{ChatStore, NewMessage, NewRoom, ReadMarker, RoomType, StoreError, StoreResult};

/// One write of the [`ChatStore`] trait with its arguments, as stored in `outbox.payload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    CreateRoom {
        id: RoomId,
        name: String,
        room_type: RoomType,
        created_by: UserId,
        participants: Vec<UserId>,
        created_at: DateTime<Utc>,
    },
    LeaveRoom {
        room: RoomId,
        user: UserId,
        at: DateTime<Utc>,
    },
    InsertMessage {
        id: MessageId,
        room_id: RoomId,
        sender_id: UserId,
        #[serde(with = "crate::crypto::base64_bytes")]
        content: Vec<u8>,
        message_type: String,
        created_at: DateTime<Utc>,
    },
    MarkRead {
        room: RoomId,
        user: UserId,
        /// `ids` xor `since`.
        ids: Option<Vec<MessageId>>,
        since: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    React {
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
        /// The message's room when known (the ordering key).
        room: Option<RoomId>,
    },
}

/// What a write returned (the trait's writes return different types).
#[derive(Clone, Debug)]
pub enum Applied {
    Room(crate::store::RoomView),
    Message(crate::store::StoredMessage),
    Changed(bool),
    Count(u64),
}

impl WriteOp {
    pub fn create_room(room: &NewRoom) -> Self {
        WriteOp::CreateRoom {
            id: room.id,
            name: room.name.clone(),
            room_type: room.room_type,
            created_by: room.created_by,
            participants: room.participants.clone(),
            created_at: room.created_at,
        }
    }

    pub fn insert_message(m: &NewMessage) -> Self {
        WriteOp::InsertMessage {
            id: m.id,
            room_id: m.room_id,
            sender_id: m.sender_id,
            content: m.content.clone(),
            message_type: m.message_type.clone(),
            created_at: m.created_at,
        }
    }

    pub fn mark_read(room: RoomId, user: UserId, marker: &ReadMarker, at: DateTime<Utc>) -> Self {
        let (ids, since) = match marker {
            ReadMarker::Ids(ids) => (Some(ids.clone()), None),
            ReadMarker::Since(t) => (None, Some(*t)),
        };
        WriteOp::MarkRead {
            room,
            user,
            ids,
            since,
            at,
        }
    }

    /// The `op` column.
    pub fn name(&self) -> &'static str {
        match self {
            WriteOp::CreateRoom { .. } => "create_room",
            WriteOp::LeaveRoom { .. } => "leave_room",
            WriteOp::InsertMessage { .. } => "insert_message",
            WriteOp::MarkRead { .. } => "mark_read",
            WriteOp::React { .. } => "react",
        }
    }

    /// The ordering key (`room_id` column).
    pub fn room(&self) -> Option<RoomId> {
        match self {
            WriteOp::CreateRoom { id, .. } => Some(*id),
            WriteOp::LeaveRoom { room, .. } | WriteOp::MarkRead { room, .. } => Some(*room),
            WriteOp::InsertMessage { room_id, .. } => Some(*room_id),
            WriteOp::React { room, .. } => *room,
        }
    }

    pub fn new_message(&self) -> Option<NewMessage> {
        match self {
            WriteOp::InsertMessage {
                id,
                room_id,
                sender_id,
                content,
                message_type,
                created_at,
            } => Some(NewMessage {
                id: *id,
                room_id: *room_id,
                sender_id: *sender_id,
                content: content.clone(),
                message_type: message_type.clone(),
                created_at: *created_at,
            }),
            _ => None,
        }
    }

    /// Makes the write on `store`.
    pub async fn apply(&self, store: &dyn ChatStore) -> StoreResult<Applied> {
        Ok(match self.clone() {
            WriteOp::CreateRoom {
                id,
                name,
                room_type,
                created_by,
                participants,
                created_at,
            } => Applied::Room(
                store
                    .create_room(NewRoom {
                        id,
                        name,
                        room_type,
                        created_by,
                        participants,
                        created_at,
                    })
                    .await?,
            ),
            WriteOp::LeaveRoom { room, user, at } => {
                Applied::Changed(store.leave_room(room, user, at).await?)
            }
            op @ WriteOp::InsertMessage { .. } => Applied::Message(
                store
                    .insert_message(op.new_message().expect("insert_message"))
                    .await?,
            ),
            WriteOp::MarkRead {
                room,
                user,
                ids,
                since,
                at,
            } => {
                let marker = match (ids, since) {
                    (Some(ids), _) => ReadMarker::Ids(ids),
                    (None, Some(t)) => ReadMarker::Since(t),
                    (None, None) => ReadMarker::Ids(Vec::new()),
                };
                Applied::Count(store.mark_read(room, user, marker, at).await?)
            }
            WriteOp::React {
                message,
                user,
                reaction,
                at,
                ..
            } => Applied::Changed(store.react(message, user, reaction, at).await?),
        })
    }

    /// Whether `result` of this write on the secondary means "the store holds the write".
    /// A `Conflict` on `create_room` is the room already being there (a replay of a write that
    /// went through, or whose answer was lost).
    pub fn landed(&self, result: &StoreResult<Applied>) -> bool {
        match result {
            Ok(_) => true,
            Err(StoreError::Conflict(_)) => matches!(self, WriteOp::CreateRoom { .. }),
            Err(_) => false,
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
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Sleep between rounds that found nothing to do.
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
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
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

fn side_from(text: &str) -> Option<Side> {
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

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    target: String,
    room_id: Option<Uuid>,
    payload: Json<WriteOp>,
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
     select o.id, o.target, o.room_id, o.payload, o.attempts, o.created_at, true as due
       from outbox o join heads h on h.id = o.id
      where o.next_attempt_at <= now()
      order by o.id
      limit $2
      for update of o skip locked";

/// The room's next entry after `$3` (due or not: a not-due entry stops the room).
const NEXT_IN_ROOM: &str =
    "select id, target, room_id, payload, attempts, created_at, next_attempt_at <= now() as due
       from outbox where target = $1 and room_id = $2 and id > $3
      order by id limit 1
      for update";

#[derive(Clone, Debug)]
pub struct Outbox {
    pool: PgPool,
}

impl Outbox {
    pub fn new(pool: PgPool) -> Self {
        Outbox { pool }
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

    /// The inline attempt of entry `id` failed: due again after `delay`.
    pub async fn retry_later(&self, id: i64, delay: Duration, error: &str) -> StoreResult<()> {
        sqlx::query::<sqlx::Postgres>(
            "update outbox set attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2), last_error = $3 where id = $1",
        )
        .bind(id)
        .bind(delay.as_secs_f64())
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
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

    /// One replay round over the stores in `up` (targets not listed are left alone, so a store
    /// that is down does not burn attempts). Returns how many entries were settled (replayed or
    /// dead-lettered).
    pub async fn replay_round(
        &self,
        up: &[(Side, Arc<dyn ChatStore>)],
        config: &ReplayConfig,
        metrics: &Metrics,
    ) -> StoreResult<usize> {
        if up.is_empty() {
            return Ok(0);
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
                let op = &row.payload.0;
                let result = op.apply(store.as_ref()).await;
                if op.landed(&result) {
                    sqlx::query::<sqlx::Postgres>("delete from outbox where id = $1")
                        .bind(row.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                    metrics.dual_write(side.as_str(), "replayed");
                    metrics
                        .dual_write_lag((Utc::now() - row.created_at).to_std().unwrap_or_default());
                    settled += 1;
                } else {
                    let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                    let attempts = u32::try_from(row.attempts).unwrap_or(0) + 1;
                    if attempts >= config.max_attempts {
                        sqlx::query::<sqlx::Postgres>(
                            "with gone as (delete from outbox where id = $1 returning *)
                             insert into outbox_dead_letter (id, target, room_id, op, payload, attempts, created_at, last_error)
                             select id, target, room_id, op, payload, attempts + 1, created_at, $2 from gone",
                        )
                        .bind(row.id)
                        .bind(&error)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                        metrics.dual_write(side.as_str(), "dead_letter");
                        tracing::error!(id = row.id, target = %side, op = op.name(), %error, attempts, "outbox entry moved to the dead-letter table");
                        settled += 1;
                    } else {
                        let delay = backoff(
                            attempts,
                            config.backoff_base,
                            config.backoff_cap,
                            rand::random::<f64>(),
                        );
                        sqlx::query::<sqlx::Postgres>(
                            "update outbox set attempts = $2, next_attempt_at = now() + make_interval(secs => $3), last_error = $4 where id = $1",
                        )
                        .bind(row.id)
                        .bind(attempts as i32)
                        .bind(delay.as_secs_f64())
                        .bind(&error)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                        tracing::debug!(id = row.id, target = %side, op = op.name(), %error, attempts, ?delay, "outbox replay failed; retrying later");
                    }
                    // The room waits for this entry (or the next round, after a dead letter).
                    break;
                }
                let Some(room) = row.room_id else { break };
                match sqlx::query_as::<sqlx::Postgres, Row>(NEXT_IN_ROOM)
                    .bind(&row.target)
                    .bind(room)
                    .bind(row.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?
                {
                    Some(next) => row = next,
                    None => break,
                }
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                &ReadMarker::Since(crate::store::now()),
                crate::store::now(),
            ),
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
    fn a_conflict_means_landed_only_for_create_room() {
        let room = WriteOp::LeaveRoom {
            room: RoomId::random(),
            user: UserId(1),
            at: crate::store::now(),
        };
        assert!(!room.landed(&Err(StoreError::Conflict("x".into()))));
        let create = WriteOp::CreateRoom {
            id: RoomId::random(),
            name: String::new(),
            room_type: RoomType::Group,
            created_by: UserId(1),
            participants: vec![UserId(1)],
            created_at: crate::store::now(),
        };
        assert!(create.landed(&Err(StoreError::Conflict("x".into()))));
        assert!(!create.landed(&Err(StoreError::Unavailable("x".into()))));
    }
}
