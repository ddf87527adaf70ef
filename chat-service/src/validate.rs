//! `chat-service validate` and `chat-service status`: how far the new (CQL) store agrees with
//! legacy PostgreSQL.
//!
//! `validate` walks every legacy room (or a shard of the rooms, as the backfill splits them) and
//! makes one **count check** per room (the room exists in CQL and both stores hold the same
//! number of messages, soft-deleted included) and one **row check** per sampled message
//! (`sample` random messages per room, compared on id, sender, sealed content, type and the
//! deleted flag). Drift = failed checks / checks; the verdict passes when drift <= `max_drift`
//! (default 0.0: any mismatch fails).

use std::collections::BTreeMap;
use std::fmt;

use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::backfill::{Shard, range_of};
use crate::ids::{MessageId, RoomId};
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::postgres::{PgStore, classify};
use crate::store::scylla::CqlBackfill;

/// Kinds of mismatch (the `type` label of `chat_data_inconsistencies`).
pub const MISMATCH_TYPES: &[&str] = &[
    "missing_room",
    "count",
    "missing",
    "sender",
    "content",
    "type",
    "deleted",
];

#[derive(Clone, Debug)]
pub struct ValidateConfig {
    /// Messages compared row by row per room (0: counts only).
    pub sample: u32,
    /// Highest drift that still passes.
    pub max_drift: f64,
    /// Rooms checked concurrently.
    pub workers: usize,
    /// With `ranges`: only the rooms of this shard's ranges (as `backfill --shard`).
    pub shard: Shard,
    pub ranges: u32,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            sample: 20,
            max_drift: 0.0,
            workers: 8,
            shard: Shard::default(),
            ranges: 256,
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
    pub mismatches: BTreeMap<&'static str, u64>,
    /// The first few mismatches, readable.
    pub examples: Vec<String>,
    pub max_drift: f64,
}

impl ValidateReport {
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
            "validate: {} rooms, messages legacy {} / new {}",
            self.rooms, self.legacy_messages, self.new_messages
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
    kinds: Vec<&'static str>,
    examples: Vec<String>,
}

async fn check_room(
    pg: &PgStore,
    cql: &CqlBackfill<'_>,
    room: RoomId,
    sample: u32,
) -> Result<RoomResult, StoreError> {
    let mut r = RoomResult::default();
    let legacy: i64 = sqlx::query_scalar("select count(*) from room_message where room_id = $1")
        .bind(room)
        .fetch_one(pg.pool())
        .await
        .map_err(classify)?;
    r.legacy = legacy as u64;
    let (exists, new) = tokio::try_join!(cql.room_exists(room), cql.message_count(room))?;
    r.new = new;
    r.compared += 1;
    if !exists {
        r.mismatched += 1;
        r.kinds.push("missing_room");
        r.examples
            .push(format!("room {room}: missing in the new store"));
    } else if r.legacy != r.new {
        r.mismatched += 1;
        r.kinds.push("count");
        r.examples.push(format!(
            "room {room}: {} messages legacy, {} new",
            r.legacy, r.new
        ));
    }
    if sample == 0 {
        return Ok(r);
    }
    let rows = sqlx::query_as::<_, (Uuid, i32, Vec<u8>, String, bool)>(
        "select id, sender_id, content, type, deleted_at is not null from room_message where room_id = $1 order by random() limit $2",
    )
    .bind(room)
    .bind(i64::from(sample))
    .fetch_all(pg.pool())
    .await
    .map_err(classify)?;
    for (id, sender, content, message_type, deleted) in rows {
        let id = MessageId(id);
        r.compared += 1;
        let Some((new_sender, new_content, new_type, new_deleted)) = cql.message(room, id).await?
        else {
            r.mismatched += 1;
            r.kinds.push("missing");
            r.examples.push(format!(
                "message {id} of room {room}: missing in the new store"
            ));
            continue;
        };
        let mut differs = vec![];
        if new_sender.0 != sender {
            differs.push("sender");
        }
        if new_content != content {
            differs.push("content");
        }
        if new_type != message_type {
            differs.push("type");
        }
        if new_deleted != deleted {
            differs.push("deleted");
        }
        if !differs.is_empty() {
            r.mismatched += 1;
            r.examples.push(format!(
                "message {id} of room {room}: {} differ",
                differs.join(", ")
            ));
            r.kinds.extend(differs);
        }
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
    let mut results = futures::stream::iter(
        rooms
            .into_iter()
            .map(|room| check_room(pg, cql, room, config.sample)),
    )
    .buffer_unordered(config.workers.max(1));
    while let Some(r) = results.try_next().await? {
        report.legacy_messages += r.legacy;
        report.new_messages += r.new;
        report.compared += r.compared;
        report.mismatched += r.mismatched;
        for k in r.kinds {
            *report.mismatches.entry(k).or_default() += 1;
        }
        let room_for = EXAMPLES.saturating_sub(report.examples.len());
        report
            .examples
            .extend(r.examples.into_iter().take(room_for));
    }
    for kind in MISMATCH_TYPES {
        metrics.data_inconsistencies(kind, report.mismatches.get(kind).copied().unwrap_or(0));
    }
    metrics.consistency_check(report.passed());
    Ok(report)
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
