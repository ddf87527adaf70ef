//! `chat-service backfill`: the backfill of legacy PostgreSQL data (rooms, memberships,
//! messages) into the new CQL store.
//!
//! * **Key ranges.** The room id space is split into `ranges` equal ranges (by the id's top 32
//!   bits); a range is copied room by room in id order, each room with its members and all its
//!   messages (read in chunks, keyset-paginated).
//! * **Parallel, sharded.** `workers` ranges are copied concurrently; with `--shard i/N` (or
//!   `JOB_COMPLETION_INDEX`/`FICUS_SHARD_COUNT`) only the ranges with `hash(range) % N == i`, so
//!   the N pods of an Indexed Job split the work without coordinating.
//! * **Resumable.** Progress is checkpointed per range in PostgreSQL (`backfill_checkpoint`):
//!   after each room, the last room copied. A killed run resumes after it; completed ranges are
//!   skipped. Re-copying a room is harmless (every write is an idempotent upsert by key).
//!   Checkpoints belong to one migration ([`checkpoint_key`]: the Migration's id, which the
//!   operator passes as `FICUS_MIGRATION_ID`), so a later Migration copies everything again
//!   instead of skipping the ranges an earlier one completed.
//! * **Never overwrites newer data.** Every CQL write is `USING TIMESTAMP (dual-write start - 1µs)`:
//!   anything the live dual write wrote (stamped later) wins over the backfill's copy, whatever
//!   order they arrive in.
//! * **What is copied**, per room: messages, reactions, read markers (and each member's newest
//!   read message), unread counters (set to legacy's count by adding the difference: a counter
//!   takes no write timestamp), then the memberships and the room itself.
//!
//! One file over 600 lines on purpose: ranges, checkpoints, workers, the copy and the dual-write guard are one algorithm; its unit tests are at the bottom.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::flags::Side;
use crate::ids::{MessageId, RoomId, UserId};
use crate::metrics::Metrics;
use crate::store::outbox::Outbox;
use crate::store::postgres::{PgStore, classify};
use crate::store::scylla::{
    BackfillMember, BackfillMessage, BackfillReaction, BackfillReadMarker, BackfillRoom,
    CqlBackfill,
};
use crate::store::{DeviceToken, Platform, StoreError};

/// Rooms read per query within a range.
const ROOM_CHUNK: i64 = 100;

/// Which ranges this process works on: those with `hash(range) % count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// `i/N` with `i < N`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad =
            || format!("--shard must be INDEX/COUNT with INDEX < COUNT, e.g. 0/4; got {text:?}");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// From an Indexed Job: `JOB_COMPLETION_INDEX` and `FICUS_SHARD_COUNT`; `None` unless both are set.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>, String> {
        match (
            env("JOB_COMPLETION_INDEX"),
            env(ficus_flags::job::env::SHARD_COUNT),
        ) {
            (Some(i), Some(n)) => Shard::parse(&format!("{i}/{n}")).map(Some),
            _ => Ok(None),
        }
    }

    pub fn owns(&self, range: u32) -> bool {
        self.count <= 1
            || splitmix64(u64::from(range)) % u64::from(self.count) == u64::from(self.index)
    }
}

/// A fixed, well-mixed hash (the same in every pod and every build).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The lowest room id of range `index` of `count` (ranges split the top 32 bits of the id
/// evenly), and the lowest of the next range (`None` for the last).
pub fn range_bounds(count: u32, index: u32) -> (Uuid, Option<Uuid>) {
    let lower = |i: u32| -> u128 { ((u128::from(i)) << 32).div_ceil(u128::from(count)) << 96 };
    (
        Uuid::from_u128(lower(index)),
        (index + 1 < count).then(|| Uuid::from_u128(lower(index + 1))),
    )
}

/// The range of a room id (agrees with [`range_bounds`] and the SQL in [`range_totals`]).
pub fn range_of(count: u32, id: Uuid) -> u32 {
    (((id.as_u128() >> 96) * u128::from(count)) >> 32) as u32
}

#[derive(Clone, Debug)]
pub struct BackfillConfig {
    /// Ranges copied concurrently.
    pub workers: usize,
    /// How many ranges the id space is split into (checkpoints are per range count).
    pub ranges: u32,
    pub shard: Shard,
    /// Count only: nothing is written, neither to CQL nor to the checkpoints.
    pub dry_run: bool,
    /// At most this many messages per second (over all workers).
    pub throttle: Option<u32>,
    /// When the live dual write started; the backfill stamps its writes just before it.
    pub dual_write_started_at: Option<DateTime<Utc>>,
    /// The migration the checkpoints belong to (see [`checkpoint_key`]).
    pub migration_id: Option<MigrationId>,
    /// Stop after this many ranges were taken up in this run (tests, partial runs).
    pub max_ranges: Option<usize>,
    /// Messages per read.
    pub chunk: u32,
    /// Print progress this often (none: silent).
    pub progress_every: Option<Duration>,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            workers: 4,
            ranges: 256,
            shard: Shard::default(),
            dry_run: false,
            throttle: None,
            dual_write_started_at: None,
            migration_id: None,
            max_ranges: None,
            chunk: 500,
            progress_every: None,
        }
    }
}

/// How often `chat_migration_progress_ratio{type="messages"}` is brought up to date.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// `FICUS_DUAL_WRITE_STARTED_AT`: when the operator started the dual write (RFC 3339).
pub const ENV_DUAL_WRITE_STARTED_AT: &str = ficus_flags::job::env::DUAL_WRITE_STARTED_AT;
/// `FICUS_MIGRATION_ID`: `<namespace>/<name>/<attempt>` of the Migration the Job belongs to.
pub const ENV_MIGRATION_ID: &str = ficus_flags::job::env::MIGRATION_ID;

pub use ficus_flags::MigrationId;

/// The key of a run's checkpoints: the migration id; without one, the dual-write start (a
/// later migration has a later one), so checkpoints never carry over from one migration to
/// the next. `None` (a dry run without either): no checkpoint is read.
pub fn checkpoint_key(
    migration: Option<&MigrationId>,
    dual_write_started_at: Option<DateTime<Utc>>,
) -> Option<String> {
    match (migration, dual_write_started_at) {
        (Some(m), _) => Some(m.to_string()),
        (None, Some(t)) => Some(format!(
            "dual-write:{}",
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )),
        (None, None) => None,
    }
}

/// Where an input came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(name) => write!(f, "--{name}"),
            Source::Env(name) => f.write_str(name),
        }
    }
}

/// The backfill's inputs from its flags, else the environment the operator sets on its Jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillInputs {
    pub dual_write_started_at: Option<DateTime<Utc>>,
    pub migration_id: Option<MigrationId>,
}

impl BackfillInputs {
    /// A flag wins over its environment variable; without `dry_run` a dual-write start is
    /// required. Empty values count as unset.
    pub fn resolve(
        dual_write_started_at: Option<String>,
        migration_id: Option<String>,
        dry_run: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BackfillInputs, InputError> {
        let pick = |flag: Option<String>, flag_name: &'static str, env_name: &'static str| {
            flag.filter(|v| !v.trim().is_empty())
                .map(|v| (v, Source::Flag(flag_name)))
                .or_else(|| {
                    env(env_name)
                        .filter(|v| !v.trim().is_empty())
                        .map(|v| (v, Source::Env(env_name)))
                })
        };
        let start = pick(
            dual_write_started_at,
            "dual-write-started-at",
            ENV_DUAL_WRITE_STARTED_AT,
        )
        .map(|(v, source)| {
            // Microseconds, as both stores keep it (PostgreSQL timestamps, CQL write
            // timestamps): a start given in nanoseconds must match its recorded checkpoint.
            DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
                .map_err(|e| InputError::BadDualWriteStart {
                    origin: source,
                    value: v.clone(),
                    reason: e.to_string(),
                })
        })
        .transpose()?;
        if start.is_none() && !dry_run {
            return Err(InputError::MissingDualWriteStart);
        }
        let migration_id = pick(migration_id, "migration-id", ENV_MIGRATION_ID)
            .map(|(v, source)| {
                MigrationId::parse(&v).map_err(|e| InputError::BadMigrationId {
                    origin: source,
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        Ok(BackfillInputs {
            dual_write_started_at: start,
            migration_id,
        })
    }
}

/// The backfill was started with inputs it cannot run with; nothing was read or written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error(
        "no dual-write start: pass --dual-write-started-at or set FICUS_DUAL_WRITE_STARTED_AT (RFC 3339, e.g. 2025-01-31T12:00:00Z, when the dual write began; the Ficus operator sets it on its backfill Jobs). The backfill stamps every write just before it, so a live dual-written row always wins"
    )]
    MissingDualWriteStart,
    #[error("{origin} {value:?} is not an RFC 3339 time ({reason}), e.g. 2025-01-31T12:00:00Z")]
    BadDualWriteStart {
        origin: Source,
        value: String,
        reason: String,
    },
    #[error("{origin}: {reason}")]
    BadMigrationId { origin: Source, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(
        "migration {migration:?} was backfilled with dual-write start {recorded}, this run has {given}: resume it with {recorded}, or start over with another --migration-id (a different stamp would let older copies win over live writes, or lose to stale ones)"
    )]
    DualWriteStartChanged {
        migration: String,
        recorded: DateTime<Utc>,
        given: DateTime<Utc>,
    },
    #[error("the backfill needs the new (CQL) store unless --dry-run")]
    MissingNewStore,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("PostgreSQL schema migration failed: {0}")]
    Migrate(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackfillReport {
    pub dry_run: bool,
    pub ranges_assigned: usize,
    /// Completed by an earlier run (skipped).
    pub ranges_already_done: usize,
    /// Completed by this run.
    pub ranges_done: usize,
    /// Rooms and messages in the assigned ranges (PostgreSQL, soft-deleted messages included).
    pub total_rooms: u64,
    pub total_messages: u64,
    /// Copied by this run.
    pub rooms: u64,
    pub messages: u64,
    /// Reactions and read markers copied by this run (of timeuuid messages only).
    pub reactions: u64,
    pub read_markers: u64,
    /// Registered device tokens copied by this run (of the users this shard owns).
    pub devices: u64,
    /// Messages whose id is not a timeuuid (cannot be keyed in CQL), not copied.
    pub skipped_messages: Vec<MessageId>,
    pub elapsed: Duration,
}

impl BackfillReport {
    /// Every assigned range is completed.
    pub fn complete(&self) -> bool {
        !self.dry_run && self.ranges_already_done + self.ranges_done == self.ranges_assigned
    }
}

impl fmt::Display for BackfillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        if self.dry_run {
            writeln!(
                f,
                "backfill (dry run): {} ranges assigned ({} already completed)",
                self.ranges_assigned, self.ranges_already_done
            )?;
            return writeln!(
                f,
                "  to copy: {} rooms, {} messages",
                self.total_rooms, self.total_messages
            );
        }
        writeln!(
            f,
            "backfill: ranges {} done now + {} earlier of {} assigned",
            self.ranges_done, self.ranges_already_done, self.ranges_assigned
        )?;
        writeln!(
            f,
            "  rooms copied {} (of {}), messages copied {} (of {}), {:.0} msg/s",
            self.rooms,
            self.total_rooms,
            self.messages,
            self.total_messages,
            self.messages as f64 / secs
        )?;
        writeln!(
            f,
            "  reactions copied {}, read markers copied {}, device tokens copied {}",
            self.reactions, self.read_markers, self.devices
        )?;
        if !self.skipped_messages.is_empty() {
            writeln!(
                f,
                "  {} messages not copied (id is not a timeuuid), e.g. {}",
                self.skipped_messages.len(),
                self.skipped_messages[0]
            )?;
        }
        Ok(())
    }
}

/// Rooms and messages per range (one grouped scan of each table).
async fn range_totals(
    pg: &PgStore,
    ranges: u32,
) -> Result<(HashMap<u32, u64>, HashMap<u32, u64>), StoreError> {
    // The range of an id: (top 32 bits * ranges) >> 32, as `range_of`.
    const ROOMS: &str = "select (((('x' || substr(replace(id::text, '-', ''), 1, 8))::bit(32)::bigint * $1) >> 32)::int4) as r, count(*) from room group by 1";
    const MESSAGES: &str = "select (((('x' || substr(replace(room_id::text, '-', ''), 1, 8))::bit(32)::bigint * $1) >> 32)::int4) as r, count(*) from room_message group by 1";
    let collect = |rows: Vec<(i32, i64)>| {
        rows.into_iter()
            .map(|(r, n)| (r as u32, n as u64))
            .collect::<HashMap<_, _>>()
    };
    let rooms = sqlx::query_as::<_, (i32, i64)>(ROOMS)
        .bind(i64::from(ranges))
        .fetch_all(pg.pool())
        .await
        .map_err(classify)?;
    let messages = sqlx::query_as::<_, (i32, i64)>(MESSAGES)
        .bind(i64::from(ranges))
        .fetch_all(pg.pool())
        .await
        .map_err(classify)?;
    Ok((collect(rooms), collect(messages)))
}

struct Checkpoint {
    last_room_id: Option<Uuid>,
    messages_done: u64,
    completed: bool,
    dual_write_started_at: Option<DateTime<Utc>>,
}

/// The checkpoints of migration `key` for `ranges` ranges.
async fn checkpoints(
    pg: &PgStore,
    key: &str,
    ranges: u32,
) -> Result<HashMap<u32, Checkpoint>, StoreError> {
    let rows = sqlx::query_as::<_, (i32, Option<Uuid>, i64, bool, Option<DateTime<Utc>>)>(
        "select range_index, last_room_id, messages_done, completed_at is not null, dual_write_started_at
           from backfill_checkpoint where migration_id = $1 and range_count = $2",
    )
    .bind(key)
    .bind(ranges as i32)
    .fetch_all(pg.pool())
    .await
    .map_err(classify)?;
    Ok(rows
        .into_iter()
        .map(|(r, last, m, c, start)| {
            (
                r as u32,
                Checkpoint {
                    last_room_id: last,
                    messages_done: m as u64,
                    completed: c,
                    dual_write_started_at: start,
                },
            )
        })
        .collect())
}

/// A shared rate limit: the n-th message is not written before `start + n / rate`.
struct Throttle {
    start: Instant,
    rate: f64,
    taken: AtomicU64,
}

impl Throttle {
    async fn take(&self, n: u64) {
        let total = self.taken.fetch_add(n, Ordering::Relaxed) + n;
        let due = self.start + Duration::from_secs_f64(total as f64 / self.rate);
        tokio::time::sleep_until(due.into()).await;
    }
}

struct Run<'a> {
    pg: &'a PgStore,
    cql: &'a CqlBackfill<'a>,
    config: &'a BackfillConfig,
    metrics: &'a Metrics,
    /// The migration the checkpoints belong to.
    key: String,
    dual_write_start: DateTime<Utc>,
    ts: i64,
    queue: Mutex<VecDeque<(u32, Option<Uuid>)>>,
    taken: AtomicUsize,
    ranges_done: AtomicUsize,
    rooms: AtomicU64,
    messages: AtomicU64,
    reactions: AtomicU64,
    read_markers: AtomicU64,
    skipped: Mutex<Vec<MessageId>>,
    throttle: Option<Throttle>,
}

impl Run<'_> {
    async fn worker(&self) -> Result<(), BackfillError> {
        loop {
            if let Some(max) = self.config.max_ranges
                && self.taken.fetch_add(1, Ordering::SeqCst) >= max
            {
                return Ok(());
            }
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some((range, after)) = next else {
                return Ok(());
            };
            self.range(range, after).await?;
            self.ranges_done.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn range(&self, range: u32, mut after: Option<Uuid>) -> Result<(), BackfillError> {
        let (lower, upper) = range_bounds(self.config.ranges, range);
        let pool = self.pg.pool();
        sqlx::query("insert into backfill_checkpoint (migration_id, range_count, range_index, dual_write_started_at) values ($1, $2, $3, $4) on conflict do nothing")
            .bind(&self.key)
            .bind(self.config.ranges as i32)
            .bind(range as i32)
            .bind(self.dual_write_start)
            .execute(pool)
            .await
            .map_err(classify)?;
        loop {
            let rooms = sqlx::query_as::<_, (Uuid, String, String, i32, DateTime<Utc>)>(
                "select id, name, type, created_by, created_at from room
                  where id >= $1 and ($2::uuid is null or id < $2) and ($3::uuid is null or id > $3)
                  order by id limit $4",
            )
            .bind(lower)
            .bind(upper)
            .bind(after)
            .bind(ROOM_CHUNK)
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            let n = rooms.len();
            for (id, name, room_type, created_by, created_at) in rooms {
                let copied = self
                    .room(BackfillRoom {
                        id: RoomId(id),
                        name,
                        room_type,
                        created_by: UserId(created_by),
                        created_at,
                        members: vec![],
                    })
                    .await?;
                sqlx::query(
                    "update backfill_checkpoint set last_room_id = $3, rooms_done = rooms_done + 1, messages_done = messages_done + $4, updated_at = now()
                      where migration_id = $5 and range_count = $1 and range_index = $2",
                )
                .bind(self.config.ranges as i32)
                .bind(range as i32)
                .bind(id)
                .bind(copied as i64)
                .bind(&self.key)
                .execute(pool)
                .await
                .map_err(classify)?;
                self.rooms.fetch_add(1, Ordering::Relaxed);
                after = Some(id);
            }
            if n < ROOM_CHUNK as usize {
                break;
            }
        }
        sqlx::query("update backfill_checkpoint set completed_at = now(), updated_at = now() where migration_id = $3 and range_count = $1 and range_index = $2")
            .bind(self.config.ranges as i32)
            .bind(range as i32)
            .bind(&self.key)
            .execute(pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Copies one room: its messages, then the room and its members. Returns the messages copied.
    async fn room(&self, mut room: BackfillRoom) -> Result<u64, BackfillError> {
        let pool = self.pg.pool();
        room.members = sqlx::query_as::<_, (i32, String, bool, DateTime<Utc>, Option<DateTime<Utc>>)>(
            "select user_id, role, is_pinned, joined_at, removed_at from room_member where room_id = $1 order by user_id",
        )
        .bind(room.id)
        .fetch_all(pool)
        .await
        .map_err(classify)?
        .into_iter()
        .map(|(u, role, is_pinned, joined_at, removed_at)| BackfillMember { user_id: UserId(u), role, is_pinned, joined_at, removed_at })
        .collect();
        let mut cursor: Option<(DateTime<Utc>, Uuid)> = None;
        let mut last: Option<BackfillMessage> = None;
        let mut copied = 0u64;
        loop {
            let rows = sqlx::query_as::<_, (Uuid, i32, Vec<u8>, String, DateTime<Utc>, bool)>(
                "select id, sender_id, content, type, created_at, deleted_at is not null from room_message
                  where room_id = $1 and ($2::timestamptz is null or (created_at, id) > ($2, $3))
                  order by created_at, id limit $4",
            )
            .bind(room.id)
            .bind(cursor.map(|c| c.0))
            .bind(cursor.map(|c| c.1))
            .bind(i64::from(self.config.chunk.max(1)))
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            let n = rows.len();
            if n == 0 {
                break;
            }
            let messages: Vec<BackfillMessage> = rows
                .into_iter()
                .map(
                    |(id, sender, content, message_type, created_at, deleted)| BackfillMessage {
                        id: MessageId(id),
                        sender_id: UserId(sender),
                        content,
                        message_type,
                        created_at,
                        deleted,
                    },
                )
                .collect();
            if let Some(t) = &self.throttle {
                t.take(n as u64).await;
            }
            let skipped = self.cql.write_messages(room.id, &messages, self.ts).await?;
            for _ in &skipped {
                self.metrics.migration_error("messages", "not_timeuuid");
            }
            copied += (n - skipped.len()) as u64;
            self.messages
                .fetch_add((n - skipped.len()) as u64, Ordering::Relaxed);
            let newest = messages.last().map(|m| (m.created_at, m.id.0));
            if let Some(l) = messages
                .into_iter()
                .rev()
                .find(|m| !m.deleted && !skipped.contains(&m.id))
            {
                last = Some(l);
            }
            self.skipped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(skipped);
            cursor = newest;
            if n < self.config.chunk.max(1) as usize {
                break;
            }
        }
        self.reactions(room.id).await?;
        self.read_markers(room.id).await?;
        self.unread_counters(room.id).await?;
        // Last: `room_details` makes the room exist for the new store's readers.
        self.cql.write_room(&room, last.as_ref(), self.ts).await?;
        // Live writes that reached the new store before its room (a leave or a pin on a room
        // created before the dual write) wait in the outbox behind the room's creation, with
        // backoff; the room is there now. Best effort: they are replayed later anyway.
        if let Err(e) = Outbox::new(self.pg.pool().clone())
            .due_now(Side::New, room.id)
            .await
        {
            tracing::warn!(room = %room.id, error = %e, "could not make the room's queued writes due now");
        }
        Ok(copied)
    }

    /// Copies the reactions to the room's messages, in keyset-paginated chunks.
    async fn reactions(&self, room: RoomId) -> Result<(), BackfillError> {
        let mut after: Option<(Uuid, i32, String)> = None;
        loop {
            let rows = sqlx::query_as::<_, (Uuid, i32, String, DateTime<Utc>)>(
                "select r.message_id, r.user_id, r.reaction, r.created_at
                   from room_message_reaction r join room_message m on m.id = r.message_id
                  where m.room_id = $1 and ($2::uuid is null or (r.message_id, r.user_id, r.reaction) > ($2, $3, $4))
                  order by r.message_id, r.user_id, r.reaction limit $5",
            )
            .bind(room)
            .bind(after.as_ref().map(|a| a.0))
            .bind(after.as_ref().map(|a| a.1))
            .bind(after.as_ref().map(|a| a.2.clone()))
            .bind(i64::from(self.config.chunk.max(1)))
            .fetch_all(self.pg.pool())
            .await
            .map_err(classify)?;
            let n = rows.len();
            after = rows.last().map(|(m, u, r, _)| (*m, *u, r.clone()));
            let reactions: Vec<BackfillReaction> = rows
                .into_iter()
                .map(|(m, u, reaction, created_at)| BackfillReaction {
                    message_id: MessageId(m),
                    user_id: UserId(u),
                    reaction,
                    created_at,
                })
                .collect();
            self.cql.write_reactions(&reactions, self.ts).await?;
            self.reactions.fetch_add(n as u64, Ordering::Relaxed);
            if n < self.config.chunk.max(1) as usize {
                return Ok(());
            }
        }
    }

    /// Copies the room's read markers (by reader, in chunks), then each member's newest read
    /// message.
    async fn read_markers(&self, room: RoomId) -> Result<(), BackfillError> {
        let pool = self.pg.pool();
        let mut after: Option<(i32, Uuid)> = None;
        loop {
            let rows = sqlx::query_as::<_, (i32, Uuid, DateTime<Utc>)>(
                "select r.user_id, r.message_id, r.read_at
                   from room_message_read r join room_message m on m.id = r.message_id
                  where m.room_id = $1 and ($2::int4 is null or (r.user_id, r.message_id) > ($2, $3))
                  order by r.user_id, r.message_id limit $4",
            )
            .bind(room)
            .bind(after.map(|a| a.0))
            .bind(after.map(|a| a.1))
            .bind(i64::from(self.config.chunk.max(1)))
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            let n = rows.len();
            after = rows.last().map(|(u, m, _)| (*u, *m));
            let markers: Vec<BackfillReadMarker> = rows
                .into_iter()
                .map(|(u, m, read_at)| BackfillReadMarker {
                    message_id: MessageId(m),
                    user_id: UserId(u),
                    read_at,
                })
                .collect();
            self.cql.write_read_markers(room, &markers, self.ts).await?;
            self.read_markers.fetch_add(n as u64, Ordering::Relaxed);
            if n < self.config.chunk.max(1) as usize {
                break;
            }
        }
        let newest = sqlx::query_as::<_, (i32, Uuid)>(
            "select distinct on (r.user_id) r.user_id, m.id
               from room_message_read r join room_message m on m.id = r.message_id
              where m.room_id = $1
              order by r.user_id, m.created_at desc, m.id desc",
        )
        .bind(room)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
        for (user, message) in newest {
            self.cql
                .write_last_read(room, UserId(user), MessageId(message))
                .await?;
        }
        Ok(())
    }

    /// Sets each current member's unread counter to legacy's count: the messages of others,
    /// sent since the member joined, not deleted and not read. A counter takes no write
    /// timestamp and can only be added to, so the difference to what the new store counts now
    /// (the live dual write's increments) is added; a re-run adds nothing. A message or read
    /// marker that lands between the two reads can leave one member's counter one off.
    async fn unread_counters(&self, room: RoomId) -> Result<(), BackfillError> {
        let legacy = sqlx::query_as::<_, (i32, i64)>(
            "select rm.user_id, (select count(*) from room_message m
                                  where m.room_id = rm.room_id and m.sender_id <> rm.user_id
                                    and m.deleted_at is null and m.created_at >= rm.joined_at
                                    and not exists (select 1 from room_message_read r
                                                     where r.message_id = m.id and r.user_id = rm.user_id))
               from room_member rm where rm.room_id = $1 and rm.removed_at is null",
        )
        .bind(room)
        .fetch_all(self.pg.pool())
        .await
        .map_err(classify)?;
        for (user, unread) in legacy {
            let user = UserId(user);
            let delta = unread_delta(unread, self.cql.unread(room, user).await?);
            if delta != 0 {
                self.cql.add_unread(room, user, delta).await?;
            }
        }
        Ok(())
    }
}

/// What to add to a counter holding `current` so it holds `legacy`.
fn unread_delta(legacy: i64, current: i64) -> i64 {
    legacy.saturating_sub(current)
}

/// Runs the backfill (or, with `dry_run`, counts what it would copy). Applies the PostgreSQL
/// schema migrations first (the checkpoint table). `cql` may be `None` only for a dry run.
pub async fn run(
    pg: &PgStore,
    cql: Option<&CqlBackfill<'_>>,
    config: &BackfillConfig,
    metrics: &Metrics,
) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    if config.ranges == 0 || config.ranges > 65_536 {
        return Err(BackfillError::Config(format!(
            "--ranges must be 1..=65536, got {}",
            config.ranges
        )));
    }
    if config.shard.count == 0 || config.shard.index >= config.shard.count {
        return Err(BackfillError::Config(format!(
            "bad shard {}/{}",
            config.shard.index, config.shard.count
        )));
    }
    pg.migrate()
        .await
        .map_err(|e| BackfillError::Migrate(e.to_string()))?;
    let assigned: Vec<u32> = (0..config.ranges)
        .filter(|r| config.shard.owns(*r))
        .collect();
    let (room_totals, message_totals) = range_totals(pg, config.ranges).await?;
    let key = checkpoint_key(config.migration_id.as_ref(), config.dual_write_started_at);
    let done = match &key {
        Some(key) => checkpoints(pg, key, config.ranges).await?,
        None => HashMap::new(),
    };
    if let Some(given) = config.dual_write_started_at
        && let Some(recorded) = done
            .values()
            .filter_map(|c| c.dual_write_started_at)
            .find(|t| *t != given)
    {
        return Err(BackfillError::DualWriteStartChanged {
            migration: key.clone().unwrap_or_default(),
            recorded,
            given,
        });
    }
    let mut report = BackfillReport {
        dry_run: config.dry_run,
        ranges_assigned: assigned.len(),
        total_rooms: assigned
            .iter()
            .map(|r| room_totals.get(r).copied().unwrap_or(0))
            .sum(),
        total_messages: assigned
            .iter()
            .map(|r| message_totals.get(r).copied().unwrap_or(0))
            .sum(),
        ..BackfillReport::default()
    };
    let mut queue = VecDeque::new();
    let mut earlier_messages = 0u64;
    for r in &assigned {
        match done.get(r) {
            Some(c) if c.completed => {
                report.ranges_already_done += 1;
                earlier_messages += c.messages_done;
            }
            Some(c) => {
                earlier_messages += c.messages_done;
                queue.push_back((*r, c.last_room_id));
            }
            None => queue.push_back((*r, None)),
        }
    }
    if config.dry_run {
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    let cql = cql.ok_or(BackfillError::MissingNewStore)?;
    let dual_write_start = config
        .dual_write_started_at
        .ok_or(InputError::MissingDualWriteStart)?;
    let run = Run {
        pg,
        cql,
        config,
        metrics,
        key: key.unwrap_or_default(),
        dual_write_start,
        ts: dual_write_start.timestamp_micros() - 1,
        queue: Mutex::new(queue),
        taken: AtomicUsize::new(0),
        ranges_done: AtomicUsize::new(0),
        rooms: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        reactions: AtomicU64::new(0),
        read_markers: AtomicU64::new(0),
        skipped: Mutex::new(vec![]),
        throttle: config.throttle.filter(|t| *t > 0).map(|t| Throttle {
            start: Instant::now(),
            rate: f64::from(t),
            taken: AtomicU64::new(0),
        }),
    };
    let total = report.total_messages.max(1) as f64;
    // The gauge follows the copy every second (a scrape during the run sees it move); the
    // progress line is printed every `progress_every`.
    let progress = |print: bool| {
        let (rooms, messages) = (
            run.rooms.load(Ordering::Relaxed),
            run.messages.load(Ordering::Relaxed),
        );
        let ratio = ((earlier_messages + messages) as f64 / total).min(1.0);
        metrics.migration_progress("messages", ratio);
        if config.progress_every.is_some() && print {
            let rate = messages as f64 / started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "backfill: rooms {rooms}/{}, messages {}/{} ({:.1}%), {rate:.0} msg/s, ranges {} done",
                report.total_rooms,
                earlier_messages + messages,
                report.total_messages,
                ratio * 100.0,
                report.ranges_already_done + run.ranges_done.load(Ordering::Relaxed)
            );
        }
    };
    let workers = futures::future::try_join_all((0..config.workers.max(1)).map(|_| run.worker()));
    tokio::pin!(workers);
    let mut tick =
        tokio::time::interval(config.progress_every.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    let mut gauge = tokio::time::interval(GAUGE_EVERY);
    loop {
        tokio::select! {
            result = &mut workers => { result?; break; }
            _ = tick.tick() => progress(true),
            _ = gauge.tick() => progress(false),
        }
    }
    progress(false);
    report.devices = copy_devices(pg, cql, config.shard, run.ts).await?;
    report.ranges_done = run.ranges_done.load(Ordering::SeqCst);
    report.rooms = run.rooms.load(Ordering::SeqCst);
    report.messages = run.messages.load(Ordering::SeqCst);
    report.reactions = run.reactions.load(Ordering::SeqCst);
    report.read_markers = run.read_markers.load(Ordering::SeqCst);
    report.skipped_messages =
        std::mem::take(&mut *run.skipped.lock().unwrap_or_else(|e| e.into_inner()));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Users whose device tokens one query reads.
const DEVICE_USER_CHUNK: i64 = 500;

/// Copies the registered device tokens of the users this shard owns (`user_id mod count ==
/// index`), user by user, stamped `ts`. Not checkpointed: a user's tokens are a handful of rows,
/// and copying them again is harmless.
async fn copy_devices(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    shard: Shard,
    ts: i64,
) -> Result<u64, BackfillError> {
    let mut after: Option<i32> = None;
    let mut copied = 0u64;
    loop {
        let rows = sqlx::query_as::<_, (i32, String, String, DateTime<Utc>)>(
            "select user_id, token, platform, updated_at from device_token
              where not deleted and mod(user_id, $1) = $2
                and user_id in (select distinct user_id from device_token
                                 where not deleted and mod(user_id, $1) = $2
                                   and ($3::int4 is null or user_id > $3)
                                 order by user_id limit $4)
              order by user_id, token",
        )
        .bind(i64::from(shard.count))
        .bind(i64::from(shard.index))
        .bind(after)
        .bind(DEVICE_USER_CHUNK)
        .fetch_all(pg.pool())
        .await
        .map_err(classify)?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = Some(last);
        let mut by_user: Vec<(UserId, Vec<DeviceToken>)> = Vec::new();
        for (user, token, platform, registered_at) in rows {
            let device = DeviceToken {
                token,
                platform: Platform::stored(UserId(user), &platform)?,
                registered_at,
            };
            match by_user.last_mut() {
                Some((u, devices)) if u.0 == user => devices.push(device),
                _ => by_user.push((UserId(user), vec![device])),
            }
        }
        for (user, devices) in &by_user {
            cql.write_devices(*user, devices, ts).await?;
            copied += devices.len() as u64;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_id_space_and_agree_with_range_of() {
        for count in [1u32, 3, 7, 8, 256, 1000] {
            let mut prev_upper = Some(Uuid::nil());
            for i in 0..count {
                let (lower, upper) = range_bounds(count, i);
                assert_eq!(Some(lower), prev_upper, "contiguous");
                assert_eq!(range_of(count, lower), i);
                if let Some(u) = upper {
                    assert_eq!(range_of(count, Uuid::from_u128(u.as_u128() - 1)), i);
                }
                prev_upper = upper;
            }
            assert_eq!(prev_upper, None);
            assert_eq!(range_of(count, Uuid::max()), count - 1);
        }
    }

    #[test]
    fn shards_split_the_ranges() {
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        assert!(
            Shard::parse("4/4").is_err()
                && Shard::parse("x").is_err()
                && Shard::parse("0/0").is_err()
        );
        let shards: Vec<Shard> = (0..4).map(|i| Shard { index: i, count: 4 }).collect();
        for r in 0..256 {
            assert_eq!(shards.iter().filter(|s| s.owns(r)).count(), 1);
        }
        assert!(
            shards
                .iter()
                .all(|s| (0..256).filter(|r| s.owns(*r)).count() > 30),
            "roughly even"
        );
        let env = |k: &str| match k {
            "JOB_COMPLETION_INDEX" => Some("2".to_owned()),
            "FICUS_SHARD_COUNT" => Some("3".to_owned()),
            _ => None,
        };
        assert_eq!(Shard::from_env(env), Ok(Some(Shard { index: 2, count: 3 })));
        assert_eq!(Shard::from_env(|_| None), Ok(None));
    }

    #[test]
    fn inputs_come_from_the_flags_else_the_operator_environment() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let id = MigrationId::parse("ns/m/1").expect("id");
        let env = |k: &str| match k {
            ENV_DUAL_WRITE_STARTED_AT => Some("2025-01-31T12:00:00Z".to_owned()),
            ENV_MIGRATION_ID => Some("ns/m/1".to_owned()),
            _ => None,
        };
        let none = |_: &str| None;
        let flag = |v: &str| Some(v.to_owned());
        // (start flag, id flag, dry run, env, result)
        type Env = fn(&str) -> Option<String>;
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            Option<String>,
            Option<String>,
            bool,
            Env,
            Result<BackfillInputs, InputError>,
        )> = vec![
            (
                None,
                None,
                false,
                env,
                Ok(BackfillInputs {
                    dual_write_started_at: Some(t("2025-01-31T12:00:00Z")),
                    migration_id: Some(id.clone()),
                }),
            ),
            (
                flag("2025-02-01T00:00:00+01:00"),
                flag("ns/m/2"),
                false,
                env,
                Ok(BackfillInputs {
                    dual_write_started_at: Some(t("2025-01-31T23:00:00Z")),
                    migration_id: Some(MigrationId {
                        attempt: 2,
                        ..id.clone()
                    }),
                }),
            ),
            (
                None,
                None,
                false,
                none,
                Err(InputError::MissingDualWriteStart),
            ),
            (
                flag(" "),
                None,
                false,
                none,
                Err(InputError::MissingDualWriteStart),
            ),
            (
                None,
                None,
                true,
                none,
                Ok(BackfillInputs {
                    dual_write_started_at: None,
                    migration_id: None,
                }),
            ),
            (
                flag("yesterday"),
                None,
                false,
                env,
                Err(InputError::BadDualWriteStart {
                    origin: Source::Flag("dual-write-started-at"),
                    value: "yesterday".into(),
                    reason: "premature end of input".into(),
                }),
            ),
            (
                None,
                flag("m/1"),
                false,
                env,
                Err(InputError::BadMigrationId {
                    origin: Source::Flag("migration-id"),
                    reason: MigrationId::parse("m/1").expect_err("bad").to_string(),
                }),
            ),
        ];
        for (start, migration, dry_run, env, expected) in cases {
            assert_eq!(
                BackfillInputs::resolve(start.clone(), migration.clone(), dry_run, env),
                expected,
                "{start:?} {migration:?} dry run {dry_run}"
            );
        }
        assert!(
            InputError::MissingDualWriteStart
                .to_string()
                .contains("FICUS_DUAL_WRITE_STARTED_AT")
        );
        // The operator's nanoseconds are cut to the microseconds a checkpoint records, so
        // every pod of a Job, and every retry, agrees with the checkpoints already written.
        let nanos =
            BackfillInputs::resolve(flag("2026-11-29T23:17:56.721682915Z"), None, false, none)
                .expect("valid");
        assert_eq!(
            nanos.dual_write_started_at,
            Some(t("2026-11-29T23:17:56.721682Z"))
        );
    }

    #[test]
    fn checkpoints_are_keyed_by_migration_else_by_dual_write_start() {
        let id = MigrationId::parse("ns/m/1").expect("id");
        let start = "2025-01-31T12:00:00Z".parse::<DateTime<Utc>>().ok();
        assert_eq!(checkpoint_key(Some(&id), start), Some("ns/m/1".into()));
        assert_eq!(
            checkpoint_key(None, start),
            Some("dual-write:2025-01-31T12:00:00Z".into())
        );
        assert_eq!(checkpoint_key(None, None), None);
    }

    #[test]
    fn unread_counters_move_to_the_legacy_count() {
        // (legacy, counter now, delta)
        for (legacy, current, delta) in [(5, 0, 5), (5, 2, 3), (5, 5, 0), (1, 3, -2), (0, 0, 0)] {
            assert_eq!(unread_delta(legacy, current), delta, "{legacy} {current}");
            assert_eq!(current + unread_delta(legacy, current), legacy);
        }
    }
}
