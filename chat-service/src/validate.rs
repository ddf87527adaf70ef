//! `chat-service validate` and `chat-service status`: how far the new (CQL) store agrees with
//! legacy PostgreSQL.
//!
//! `validate` walks every legacy room (or a shard of the rooms, as the backfill splits them) and
//! makes, per room:
//! * one **count check**: the room exists in CQL and both stores hold the same number of
//!   messages, soft-deleted included;
//! * one **members check**: the same membership rows (user, role, joined, left, pinned);
//! * one **read-marker check** per sampled member (`sample` random membership rows): as many
//!   read messages, and the same newest one;
//! * one **row check** per sampled message (`sample` random messages): sender, sealed content,
//!   type, the deleted flag and the message's reactions;
//!
//! and one **devices check** per user with a device token in either store (of the shard's users:
//! `user_id mod count == index`): the same registered tokens, platforms and times.
//!
//! A room with a failed check is checked once more after `recheck_after` (3 s), and again every
//! `recheck_after` while writes of the room are on their way to the new store, for at most
//! `settle_limit` (30 s): while the legacy outbox still holds a write of the room for the new
//! store (in flight, or waiting for a replay), or while the room's message counts move from one
//! check to the next (a write that lands between a check and the look at the outbox leaves no
//! entry behind). Validation runs while the service keeps writing, and a message, a join or a
//! read marker on its way to the new store is no drift. The last look counts: a difference
//! that holds still with nothing queued is drift, and so is one whose writes are still on
//! their way after `settle_limit`.
//!
//! Drift = failed checks / checks; the verdict passes when drift <= `max_drift` (default 0.0:
//! any mismatch fails). Unread counters are not compared: the live path counts them
//! at-most-once by design (see the CQL store), so they may legitimately be one short.
//!
//! Over 600 lines: one command's checks (rooms, members, read markers, messages, device tokens),
//! the waiting for queued writes, and the report.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::backfill::{Shard, range_of};
use crate::flags::Side;
use crate::ids::{MessageId, RoomId, UserId};
use crate::metrics::Metrics;
use crate::store::outbox::{Entries, Outbox};
use crate::store::postgres::{PgStore, classify};
use crate::store::scylla::{CqlBackfill, CqlMember};
use crate::store::{ChatStore, DeviceToken, Platform, StoreError};

/// The `type` label of validate's `chat_migration_progress_ratio` (share of rooms checked).
pub const PROGRESS_TYPE: &str = "validation";

/// A kind of mismatch (the `type` label of `chat_data_inconsistencies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mismatch {
    /// The room is not in the new store.
    MissingRoom,
    /// Another number of messages in the room.
    Count,
    /// Membership rows differ (a member missing or extra, another role, join or leave time, pin).
    Members,
    /// A member's read markers differ (how many, or the newest read message).
    ReadMarkers,
    /// A sampled message is not in the new store.
    Missing,
    Sender,
    Content,
    Type,
    Deleted,
    /// A sampled message's reactions differ.
    Reactions,
    /// A user's registered device tokens differ (a token missing or extra, another platform or
    /// registration time).
    Devices,
}

impl Mismatch {
    pub const ALL: [Mismatch; 11] = [
        Mismatch::MissingRoom,
        Mismatch::Count,
        Mismatch::Members,
        Mismatch::ReadMarkers,
        Mismatch::Missing,
        Mismatch::Sender,
        Mismatch::Content,
        Mismatch::Type,
        Mismatch::Deleted,
        Mismatch::Reactions,
        Mismatch::Devices,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::MissingRoom => "missing_room",
            Mismatch::Count => "count",
            Mismatch::Members => "members",
            Mismatch::ReadMarkers => "read_markers",
            Mismatch::Missing => "missing",
            Mismatch::Sender => "sender",
            Mismatch::Content => "content",
            Mismatch::Type => "type",
            Mismatch::Deleted => "deleted",
            Mismatch::Reactions => "reactions",
            Mismatch::Devices => "devices",
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct ValidateConfig {
    /// Messages compared row by row per room (0: counts only). A sample at least the room's
    /// size compares every message of the room, both stores read in pages.
    pub sample: u32,
    /// Highest drift that still passes.
    pub max_drift: f64,
    /// Rooms checked concurrently.
    pub workers: usize,
    /// With `ranges`: only the rooms of this shard's ranges (as `backfill --shard`).
    pub shard: Shard,
    pub ranges: u32,
    /// A room that differs is checked again after this long (zero: no second look).
    pub recheck_after: std::time::Duration,
    /// How long a differing room with writes for the new store still in the outbox is checked
    /// again (every `recheck_after`) before its difference counts.
    pub settle_limit: std::time::Duration,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            sample: 20,
            max_drift: 0.0,
            workers: 8,
            shard: Shard::default(),
            ranges: 256,
            recheck_after: std::time::Duration::from_secs(3),
            settle_limit: std::time::Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidateReport {
    pub rooms: u64,
    pub legacy_messages: u64,
    pub new_messages: u64,
    /// Checks made (a count check per room, a row check per sampled message) and failed.
    pub compared: u64,
    pub mismatched: u64,
    pub mismatches: BTreeMap<Mismatch, u64>,
    /// The first few mismatches, readable.
    pub examples: Vec<String>,
    pub max_drift: f64,
    /// Users whose device tokens were compared (one check each).
    pub device_users: u64,
}

impl ValidateReport {
    /// Counts one room's (or one user's devices') checks into the report.
    fn add(&mut self, r: RoomResult) {
        self.legacy_messages += r.legacy;
        self.new_messages += r.new;
        self.compared += r.compared;
        self.mismatched += r.mismatched;
        for k in r.kinds {
            *self.mismatches.entry(k).or_default() += 1;
        }
        let room_for = EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(r.examples.into_iter().take(room_for));
    }

    pub fn drift(&self) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            self.mismatched as f64 / self.compared as f64
        }
    }

    pub fn passed(&self) -> bool {
        self.drift() <= self.max_drift
    }
}

impl fmt::Display for ValidateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "validate: {} rooms, messages legacy {} / new {}, {} users' device tokens",
            self.rooms, self.legacy_messages, self.new_messages, self.device_users
        )?;
        writeln!(
            f,
            "  checks {} mismatched {} drift {:.6} (max {})",
            self.compared,
            self.mismatched,
            self.drift(),
            self.max_drift
        )?;
        for (kind, n) in &self.mismatches {
            writeln!(f, "  mismatch {kind}: {n}")?;
        }
        for e in &self.examples {
            writeln!(f, "  e.g. {e}")?;
        }
        writeln!(
            f,
            "  verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

const EXAMPLES: usize = 20;

#[derive(Default)]
struct RoomResult {
    legacy: u64,
    new: u64,
    compared: u64,
    mismatched: u64,
    kinds: Vec<Mismatch>,
    examples: Vec<String>,
}

impl RoomResult {
    fn check(&mut self, failed: Option<(Vec<Mismatch>, String)>) {
        self.compared += 1;
        if let Some((kinds, example)) = failed {
            self.mismatched += 1;
            self.kinds.extend(kinds);
            self.examples.push(example);
        }
    }
}

/// A legacy membership row: `(role, joined_at µs, removed_at µs, pinned)` by user.
type Members = BTreeMap<i32, (String, i64, Option<i64>, bool)>;

/// The members check: every membership row, current and left, the same in both stores
/// (times to the microsecond, as both keep them), and each current member's pin.
fn compare_members(legacy: &Members, new: &[CqlMember]) -> Option<String> {
    let new: Members = new
        .iter()
        .map(|m| {
            (
                m.user_id.0,
                (
                    m.role.clone().unwrap_or_default(),
                    m.joined_at.map_or(i64::MIN, |t| t.timestamp_micros()),
                    m.removed_at.map(|t| t.timestamp_micros()),
                    m.pinned,
                ),
            )
        })
        .collect();
    let differ: Vec<String> = legacy
        .keys()
        .chain(new.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|u| legacy.get(u) != new.get(u))
        .map(|u| u.to_string())
        .collect();
    (!differ.is_empty()).then(|| format!("members {} differ", differ.join(", ")))
}

/// What the outbox said of a room's writes for the new store, looked at after a recheck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueLook {
    Queued,
    Empty,
    /// An outbox that cannot be read says nothing is on its way.
    Unreadable,
}

/// What follows a recheck that still differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterRecheck {
    /// The difference stands: it counts.
    Counts,
    /// Writes of the room are on their way: check again after `recheck_after`.
    Wait,
    /// Writes were on their way and none is left: one more check, at once, decides.
    CheckOnceMore,
}

/// The settle rule. Writes are on their way when the outbox holds one for the room, or when
/// the room's message counts moved between the two checks: a write that landed between the
/// recheck and the look at the outbox leaves no entry, and the recheck saw it half done.
fn after_recheck(queue: QueueLook, moved: bool, writes_seen: bool) -> AfterRecheck {
    match queue {
        QueueLook::Unreadable => AfterRecheck::Counts,
        QueueLook::Queued => AfterRecheck::Wait,
        QueueLook::Empty if moved => AfterRecheck::Wait,
        QueueLook::Empty if writes_seen => AfterRecheck::CheckOnceMore,
        QueueLook::Empty => AfterRecheck::Counts,
    }
}

/// [`check_room`], and again after `recheck_after` when a check failed; then again while
/// writes of the room are on their way to the new store ([`after_recheck`]), up to
/// `settle_limit`.
async fn check_room_settled(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    room: RoomId,
    config: &ValidateConfig,
) -> Result<RoomResult, StoreError> {
    let mut result = check_room(pg, cql, room, config.sample).await?;
    if result.mismatched == 0 || config.recheck_after.is_zero() {
        return Ok(result);
    }
    let outbox = Outbox::new(pg.pool().clone());
    let start = std::time::Instant::now();
    let mut writes_seen = false;
    let mut asked_due_now = false;
    loop {
        tokio::time::sleep(config.recheck_after).await;
        let previous = (result.legacy, result.new);
        result = check_room(pg, cql, room, config.sample).await?;
        if result.mismatched == 0 || start.elapsed() >= config.settle_limit {
            return Ok(result);
        }
        let queue = match outbox.has_entries(Side::New, room, Entries::Any).await {
            Ok(true) => QueueLook::Queued,
            Ok(false) => QueueLook::Empty,
            Err(e) => {
                tracing::warn!(%room, error = %e, "cannot read the outbox; the difference counts");
                QueueLook::Unreadable
            }
        };
        let moved = previous != (result.legacy, result.new);
        match after_recheck(queue, moved, writes_seen) {
            AfterRecheck::Counts => return Ok(result),
            AfterRecheck::CheckOnceMore => return check_room(pg, cql, room, config.sample).await,
            AfterRecheck::Wait => {
                tracing::debug!(%room, ?queue, moved, "room differs with writes on their way to the new store; checking again");
                if queue == QueueLook::Queued && !asked_due_now {
                    // Do not wait out their backoff: the check is waiting for them.
                    let _ = outbox.due_now(Side::New, room).await;
                    asked_due_now = true;
                }
                writes_seen = true;
            }
        }
    }
}

/// How many of a room's CQL reads one check keeps in flight.
const READS_IN_FLIGHT: usize = 16;

async fn check_room(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    room: RoomId,
    sample: u32,
) -> Result<RoomResult, StoreError> {
    let mut r = RoomResult::default();
    // What does not depend on another read is read at once: a room costs a few round trips,
    // not one per query.
    let legacy_count = async {
        sqlx::query_scalar::<_, i64>("select count(*) from room_message where room_id = $1")
            .bind(room)
            .fetch_one(pg.pool())
            .await
            .map_err(classify)
    };
    let legacy_members = async {
        sqlx::query_as::<_, (i32, String, DateTime<Utc>, Option<DateTime<Utc>>, bool)>(
            "select user_id, role, joined_at, removed_at, is_pinned and removed_at is null
               from room_member where room_id = $1",
        )
        .bind(room)
        .fetch_all(pg.pool())
        .await
        .map_err(classify)
    };
    // Read markers of sampled members: how many, and the newest read message.
    let readers = async {
        if sample == 0 {
            return Ok(vec![]);
        }
        sqlx::query_as::<_, (i32, i64, Option<Uuid>)>(
            "select rm.user_id,
                    (select count(*) from room_message_read r join room_message m on m.id = r.message_id
                      where m.room_id = rm.room_id and r.user_id = rm.user_id),
                    (select m.id from room_message_read r join room_message m on m.id = r.message_id
                      where m.room_id = rm.room_id and r.user_id = rm.user_id
                      order by m.created_at desc, m.id desc limit 1)
               from room_member rm where rm.room_id = $1 order by random() limit $2",
        )
        .bind(room)
        .bind(i64::from(sample))
        .fetch_all(pg.pool())
        .await
        .map_err(classify)
    };
    let (legacy, exists, new, legacy_members, new_members, readers) = tokio::try_join!(
        legacy_count,
        cql.room_exists(room),
        cql.message_count(room),
        legacy_members,
        cql.members(room),
        readers
    )?;
    r.legacy = u64::try_from(legacy).unwrap_or(0);
    r.new = new;
    let count = if !exists {
        Some((
            vec![Mismatch::MissingRoom],
            format!("room {room}: missing in the new store"),
        ))
    } else if r.legacy != r.new {
        Some((
            vec![Mismatch::Count],
            format!("room {room}: {} messages legacy, {} new", r.legacy, r.new),
        ))
    } else {
        None
    };
    r.check(count);

    let legacy_members: Members = legacy_members
        .into_iter()
        .map(|(u, role, joined, removed, pinned)| {
            (
                u,
                (
                    role,
                    joined.timestamp_micros(),
                    removed.map(|t| t.timestamp_micros()),
                    pinned,
                ),
            )
        })
        .collect();
    r.check(
        compare_members(&legacy_members, &new_members)
            .map(|e| (vec![Mismatch::Members], format!("room {room}: {e}"))),
    );
    if sample == 0 {
        return Ok(r);
    }

    // A sample that covers the room compares the whole room: both stores read it in pages,
    // not message by message.
    let whole_room = r.legacy <= u64::from(sample);
    let rows = sqlx::query_as::<_, (Uuid, i32, Vec<u8>, String, bool)>(if whole_room {
        "select id, sender_id, content, type, deleted_at is not null from room_message where room_id = $1 limit $2"
    } else {
        "select id, sender_id, content, type, deleted_at is not null from room_message where room_id = $1 order by random() limit $2"
    })
    .bind(room)
    .bind(i64::from(sample))
    .fetch_all(pg.pool());
    let new_reads = futures::stream::iter(
        readers
            .iter()
            .map(|(user, _, _)| cql.read_marker_count(room, UserId(*user))),
    )
    .buffered(READS_IN_FLIGHT)
    .try_collect::<Vec<u64>>();
    let (rows, new_reads) = tokio::try_join!(async { rows.await.map_err(classify) }, new_reads)?;
    for ((user, read, newest), new_read) in readers.into_iter().zip(new_reads) {
        let user = UserId(user);
        let new_newest = new_members
            .iter()
            .find(|m| m.user_id == user)
            .and_then(|m| m.last_read);
        let newest = newest.map(MessageId);
        let differs = u64::try_from(read).unwrap_or(0) != new_read || newest != new_newest;
        r.check(differs.then(|| {
            (
                vec![Mismatch::ReadMarkers],
                format!(
                    "read markers of user {user} in room {room}: {read} legacy (newest {newest:?}), {new_read} new (newest {new_newest:?})"
                ),
            )
        }));
    }

    // The sample's reactions in one query on each side; its messages by key, several at once,
    // or the whole room's partition.
    let ids: Vec<Uuid> = rows.iter().map(|row| row.0).collect();
    let message_ids: Vec<MessageId> = ids.iter().copied().map(MessageId).collect();
    let new_messages = async {
        if whole_room {
            let mut stored = cql.room_messages(room).await?;
            return Ok(message_ids.iter().map(|id| stored.remove(id)).collect());
        }
        futures::stream::iter(message_ids.iter().map(|id| cql.message(room, *id)))
            .buffered(READS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await
    };
    let legacy_reactions = async {
        sqlx::query_as::<_, (Uuid, i32, String)>(
            "select message_id, user_id, reaction from room_message_reaction where message_id = any($1)",
        )
        .bind(&ids)
        .fetch_all(pg.pool())
        .await
        .map_err(classify)
    };
    let (legacy_reactions, new_rows, mut new_reactions) = tokio::try_join!(
        legacy_reactions,
        new_messages,
        cql.reactions_of(&message_ids)
    )?;
    let mut legacy_reactions = legacy_reactions.into_iter().fold(
        BTreeMap::<Uuid, Vec<(UserId, String)>>::new(),
        |mut by_message, (id, user, reaction)| {
            by_message
                .entry(id)
                .or_default()
                .push((UserId(user), reaction));
            by_message
        },
    );
    for ((id, sender, content, message_type, deleted), new_row) in rows.into_iter().zip(new_rows) {
        let mut legacy_reactions = legacy_reactions.remove(&id).unwrap_or_default();
        legacy_reactions.sort();
        let id = MessageId(id);
        let new_reactions = new_reactions.remove(&id).unwrap_or_default();
        let Some((new_sender, new_content, new_type, new_deleted)) = new_row else {
            r.check(Some((
                vec![Mismatch::Missing],
                format!("message {id} of room {room}: missing in the new store"),
            )));
            continue;
        };
        let mut differs = vec![];
        if new_sender.0 != sender {
            differs.push(Mismatch::Sender);
        }
        if new_content != content {
            differs.push(Mismatch::Content);
        }
        if new_type != message_type {
            differs.push(Mismatch::Type);
        }
        if new_deleted != deleted {
            differs.push(Mismatch::Deleted);
        }
        if new_reactions != legacy_reactions {
            differs.push(Mismatch::Reactions);
        }
        let example = format!(
            "message {id} of room {room}: {} differ",
            differs
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        r.check((!differs.is_empty()).then_some((differs, example)));
    }
    Ok(r)
}

/// Validates the new store against legacy PostgreSQL; sets `chat_data_inconsistencies{type}` and
/// counts the run in `chat_consistency_checks_total{status}`.
pub async fn run(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    config: &ValidateConfig,
    metrics: &Metrics,
) -> Result<ValidateReport, StoreError> {
    let rooms: Vec<Uuid> = sqlx::query_scalar("select id from room order by id")
        .fetch_all(pg.pool())
        .await
        .map_err(classify)?;
    let ranges = config.ranges.max(1);
    let rooms: Vec<RoomId> = rooms
        .into_iter()
        .filter(|id| config.shard.owns(range_of(ranges, *id)))
        .map(RoomId)
        .collect();
    let mut report = ValidateReport {
        rooms: rooms.len() as u64,
        max_drift: config.max_drift,
        ..ValidateReport::default()
    };
    // Progress and findings are published room by room: a scrape during the run sees them.
    let publish = |report: &ValidateReport, done: u64| {
        let ratio = if report.rooms == 0 {
            1.0
        } else {
            done as f64 / report.rooms as f64
        };
        metrics.migration_progress(PROGRESS_TYPE, ratio);
        for kind in Mismatch::ALL {
            metrics.data_inconsistencies(
                kind.as_str(),
                report.mismatches.get(&kind).copied().unwrap_or(0),
            );
        }
    };
    publish(&report, 0);
    let mut results = futures::stream::iter(
        rooms
            .into_iter()
            .map(|room| check_room_settled(pg, cql, room, config)),
    )
    .buffer_unordered(config.workers.max(1));
    let mut done = 0;
    while let Some(r) = results.try_next().await? {
        report.add(r);
        done += 1;
        publish(&report, done);
    }
    publish(&report, done);
    let users = device_users(pg, cql, config.shard).await?;
    report.device_users = users.len() as u64;
    let mut results = futures::stream::iter(
        users
            .into_iter()
            .map(|user| check_devices_settled(pg, cql, user, config)),
    )
    .buffer_unordered(config.workers.max(1));
    while let Some(r) = results.try_next().await? {
        report.add(r);
    }
    publish(&report, done);
    metrics.consistency_check(report.passed());
    Ok(report)
}

/// The users of this shard (`user_id mod count == index`) with a device token row in either
/// store (PostgreSQL tombstones included: the new store must not hold a deleted token).
async fn device_users(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    shard: Shard,
) -> Result<Vec<UserId>, StoreError> {
    let legacy: Vec<i32> =
        sqlx::query_scalar("select distinct user_id from device_token where mod(user_id, $1) = $2")
            .bind(i64::from(shard.count.max(1)))
            .bind(i64::from(shard.index))
            .fetch_all(pg.pool())
            .await
            .map_err(classify)?;
    let count = i64::from(shard.count.max(1));
    let mut users: std::collections::BTreeSet<i32> = legacy.into_iter().collect();
    users.extend(
        cql.device_users()
            .await?
            .into_iter()
            .map(|u| u.0)
            .filter(|u| i64::from(*u).rem_euclid(count) == i64::from(shard.index)),
    );
    Ok(users.into_iter().map(UserId).collect())
}

/// One check per user: the same registered tokens, platforms and registration times.
async fn check_devices(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    user: UserId,
) -> Result<Option<String>, StoreError> {
    // Registered tokens by token: platform and registration time (µs, as both stores keep it).
    let by_token = |devices: Vec<DeviceToken>| -> BTreeMap<String, (Platform, i64)> {
        devices
            .into_iter()
            .map(|d| (d.token, (d.platform, d.registered_at.timestamp_micros())))
            .collect()
    };
    let legacy = by_token(pg.devices(user).await?);
    let new = by_token(cql.devices(user).await?);
    let differ: Vec<&String> = legacy
        .keys()
        .chain(new.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|t| legacy.get(*t) != new.get(*t))
        .collect();
    Ok((!differ.is_empty()).then(|| {
        format!(
            "user {user}: device tokens differ ({} in legacy, {} in new; {} differ)",
            legacy.len(),
            new.len(),
            differ.len()
        )
    }))
}

/// [`check_devices`], and again every `recheck_after` up to `settle_limit` while it differs:
/// a registration or deletion may be on its way to the new store (device writes have no room,
/// so there is no per-room queue to wait on).
async fn check_devices_settled(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    user: UserId,
    config: &ValidateConfig,
) -> Result<RoomResult, StoreError> {
    let started = std::time::Instant::now();
    let mut failed = check_devices(pg, cql, user).await?;
    while failed.is_some()
        && !config.recheck_after.is_zero()
        && started.elapsed() < config.settle_limit
    {
        tokio::time::sleep(config.recheck_after).await;
        failed = check_devices(pg, cql, user).await?;
    }
    let mut result = RoomResult::default();
    result.check(failed.map(|example| (vec![Mismatch::Devices], example)));
    Ok(result)
}

/// Counts in both stores, side by side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusReport {
    pub legacy_rooms: u64,
    pub legacy_messages: u64,
    pub new_rooms: u64,
    pub new_messages: u64,
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<10} {:>14} {:>14}", "", "legacy (pg)", "new (cql)")?;
        writeln!(
            f,
            "{:<10} {:>14} {:>14}",
            "rooms", self.legacy_rooms, self.new_rooms
        )?;
        writeln!(
            f,
            "{:<10} {:>14} {:>14}",
            "messages", self.legacy_messages, self.new_messages
        )
    }
}

pub async fn status(pg: &PgStore, cql: &CqlBackfill<'_>) -> Result<StatusReport, StoreError> {
    let (rooms, messages): (i64, i64) =
        sqlx::query_as("select (select count(*) from room), (select count(*) from room_message)")
            .fetch_one(pg.pool())
            .await
            .map_err(classify)?;
    let (new_rooms, new_messages) = cql.table_counts().await?;
    Ok(StatusReport {
        legacy_rooms: rooms as u64,
        legacy_messages: messages as u64,
        new_rooms,
        new_messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_counts_only_when_nothing_is_on_its_way() {
        use AfterRecheck::*;
        use QueueLook::*;
        // (outbox, counts moved, writes seen before) -> what follows
        let table = [
            ((Queued, false, false), Wait),
            ((Queued, false, true), Wait),
            ((Queued, true, false), Wait),
            ((Queued, true, true), Wait),
            // A write landed between the recheck and the look: its entry is gone, but the
            // counts moved.
            ((Empty, true, false), Wait),
            ((Empty, true, true), Wait),
            // The queue emptied after writes were seen: the last of them may have landed
            // after the recheck read the room.
            ((Empty, false, true), CheckOnceMore),
            // The same difference twice, nothing queued, nothing seen: drift.
            ((Empty, false, false), Counts),
            ((Unreadable, false, false), Counts),
            ((Unreadable, false, true), Counts),
            ((Unreadable, true, false), Counts),
            ((Unreadable, true, true), Counts),
        ];
        for ((queue, moved, seen), expected) in table {
            assert_eq!(
                after_recheck(queue, moved, seen),
                expected,
                "outbox {queue:?}, moved {moved}, writes seen {seen}"
            );
        }
    }
}
