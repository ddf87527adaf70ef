//! `chat-service rollback`: copies what the new CQL store holds for a time window back into the
//! legacy PostgreSQL, for a rollback from CutOver (above all with `reverseDualWrite: false`,
//! when the legacy store received no writes while the new one was primary).
//!
//! * **What is copied.** Every room of `room_details` (scanned in token order): the room itself
//!   when legacy lacks it; the memberships that started or ended in the window (a leave in the
//!   new store ends the legacy membership; a membership legacy already ended stays ended); the
//!   messages whose id time is in `[since, until)` (a range query on `messages_by_room`); the
//!   reactions of those messages; and the members' read markers of those messages.
//! * **Idempotent.** Every legacy write is an insert that ignores rows already there (or an
//!   update that only ends a membership), so running it twice, or over a window the reverse dual
//!   write already covered, changes nothing.
//! * **Resumable.** After each room the scan position (the room's token) is saved in
//!   `rollback_checkpoint` under the checkpoint key; a killed run resumes after the last room it
//!   finished. A completed key is not run again (use a new key to copy again).
//! * **Device tokens** registered in the window are copied too (a scan of every user's tokens),
//!   unless legacy holds a later write of the token.
//! * **Not copied:** unread counters (legacy computes them from read receipts), reactions made
//!   in the window to messages older than it, and device tokens deleted in the window (the new
//!   store keeps no trace of a deletion to copy).

use std::fmt;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimeuuid;
use uuid::Uuid;

use crate::ids::{MessageId, UserId};
use crate::store::postgres::{PgStore, classify};
use crate::store::scylla::{
    CqlStore, classify as cql_classify, classify_prepare, rows, timeuuid_lower_bound,
};
use crate::store::{Platform, StoreError};

/// Rooms read per scan query.
const ROOM_PAGE: i32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("reading the new (CQL) store failed: {0}; run the command again to resume")]
    Cql(#[source] StoreError),
    #[error("writing the legacy PostgreSQL store failed: {0}; run the command again to resume")]
    Legacy(#[source] StoreError),
    #[error("--until ({until}) must be later than --since ({since})")]
    EmptyWindow {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

#[derive(Clone, Debug)]
pub struct RollbackConfig {
    pub since: DateTime<Utc>,
    /// Exclusive; `None`: up to now (at the start of the run).
    pub until: Option<DateTime<Utc>>,
    /// The `rollback_checkpoint` key (the migration's id when the operator runs it).
    pub checkpoint_key: String,
    /// Stop after this many rooms (a partial run; the next run resumes).
    pub max_rooms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollbackReport {
    pub rooms_scanned: u64,
    pub rooms_created: u64,
    pub memberships_updated: u64,
    pub messages_copied: u64,
    pub reactions_copied: u64,
    pub read_markers_copied: u64,
    /// Device tokens registered in the window that legacy lacked (or held an older write of).
    pub devices_copied: u64,
    /// The checkpoint says the window was copied completely.
    pub complete: bool,
    /// Already complete before this run: nothing was read.
    pub already_complete: bool,
}

impl fmt::Display for RollbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rollback: {} rooms scanned, {} rooms created, {} memberships updated, {} messages, {} reactions, {} read markers, {} device tokens copied into legacy",
            self.rooms_scanned,
            self.rooms_created,
            self.memberships_updated,
            self.messages_copied,
            self.reactions_copied,
            self.read_markers_copied,
            self.devices_copied
        )?;
        if self.already_complete {
            writeln!(
                f,
                "rollback: this checkpoint key was already complete; nothing to do"
            )
        } else if self.complete {
            writeln!(f, "rollback: complete")
        } else {
            writeln!(f, "rollback: partial (run again to resume)")
        }
    }
}

/// The checkpoint key when none is given: the window itself.
pub fn default_checkpoint_key(since: DateTime<Utc>, until: Option<DateTime<Utc>>) -> String {
    match until {
        Some(u) => format!("{}..{}", since.to_rfc3339(), u.to_rfc3339()),
        None => format!("{}..", since.to_rfc3339()),
    }
}

/// The exclusive upper timeuuid bound of the window (one millisecond after `until`, filtered
/// exactly on each id's time afterwards).
fn upper_bound(until: DateTime<Utc>) -> CqlTimeuuid {
    timeuuid_lower_bound(until + chrono::Duration::milliseconds(2))
}

struct Statements {
    rooms_first: PreparedStatement,
    rooms_after: PreparedStatement,
    participants: PreparedStatement,
    messages: PreparedStatement,
    reactions: PreparedStatement,
    read_markers: PreparedStatement,
}

type RoomScanRow = (
    Uuid,
    i64,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i64>,
);
type MemberRow = (i32, Option<String>, Option<i64>, Option<i64>);
type MessageRow = (
    CqlTimeuuid,
    Option<i32>,
    Option<Vec<u8>>,
    Option<String>,
    Option<bool>,
);

fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

/// Runs (or resumes) the copy.
pub async fn run(
    legacy: &PgStore,
    cql: &CqlStore,
    keyspace: &str,
    config: &RollbackConfig,
) -> Result<RollbackReport, RollbackError> {
    let until = config.until.unwrap_or_else(Utc::now);
    if until <= config.since {
        return Err(RollbackError::EmptyWindow {
            since: config.since,
            until,
        });
    }
    let ks = keyspace.to_ascii_lowercase();
    let session = cql.session();
    let p = |text: &'static str| {
        let text = text.replace("{ks}", &ks);
        async move { session.prepare(text).await.map_err(classify_prepare) }
    };
    let st = Statements {
        rooms_first: p("SELECT room_id, token(room_id), name, type, created_by, created_at FROM {ks}.room_details LIMIT ?").await.map_err(RollbackError::Cql)?,
        rooms_after: p("SELECT room_id, token(room_id), name, type, created_by, created_at FROM {ks}.room_details WHERE token(room_id) > ? LIMIT ?").await.map_err(RollbackError::Cql)?,
        participants: p("SELECT user_id, role, joined_at, removed_at FROM {ks}.participants_by_room WHERE room_id = ?").await.map_err(RollbackError::Cql)?,
        messages: p("SELECT message_id, sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id >= ? AND message_id < ?").await.map_err(RollbackError::Cql)?,
        reactions: p("SELECT user_id, reaction, created_at FROM {ks}.reactions_by_message WHERE message_id = ?").await.map_err(RollbackError::Cql)?,
        read_markers: p("SELECT message_id, read_at FROM {ks}.read_markers WHERE room_id = ? AND user_id = ? AND message_id >= ? AND message_id < ?").await.map_err(RollbackError::Cql)?,
    };
    let pool = legacy.pool();
    let mut report = RollbackReport::default();
    let checkpoint: Option<(Option<i64>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "select last_token, completed_at from rollback_checkpoint where checkpoint_key = $1",
    )
    .bind(&config.checkpoint_key)
    .fetch_optional(pool)
    .await
    .map_err(|e| RollbackError::Legacy(classify(e)))?;
    if let Some((_, Some(_))) = checkpoint {
        report.complete = true;
        report.already_complete = true;
        return Ok(report);
    }
    let mut last_token = checkpoint.and_then(|(t, _)| t);
    sqlx::query(
        "insert into rollback_checkpoint (checkpoint_key, since, until) values ($1, $2, $3) on conflict (checkpoint_key) do nothing",
    )
    .bind(&config.checkpoint_key)
    .bind(config.since)
    .bind(until)
    .execute(pool)
    .await
    .map_err(|e| RollbackError::Legacy(classify(e)))?;
    let (lower, upper) = (timeuuid_lower_bound(config.since), upper_bound(until));
    let started = Instant::now();
    loop {
        let page = match last_token {
            None => session.execute_unpaged(&st.rooms_first, (ROOM_PAGE,)).await,
            Some(t) => {
                session
                    .execute_unpaged(&st.rooms_after, (t, ROOM_PAGE))
                    .await
            }
        }
        .map_err(|e| RollbackError::Cql(cql_classify(e)))?;
        let rooms = rows::<RoomScanRow>(page).map_err(RollbackError::Cql)?;
        if rooms.is_empty() {
            break;
        }
        for room in rooms {
            if config.max_rooms.is_some_and(|m| report.rooms_scanned >= m) {
                tracing::info!(
                    rooms = report.rooms_scanned,
                    "rollback: stopping early (--max-rooms)"
                );
                return Ok(report);
            }
            copy_room(
                pool,
                session,
                &st,
                &room,
                config.since,
                until,
                (lower, upper),
                &mut report,
            )
            .await?;
            last_token = Some(room.1);
            report.rooms_scanned += 1;
            sqlx::query(
                "update rollback_checkpoint set last_token = $2, rooms_done = rooms_done + 1, updated_at = now() where checkpoint_key = $1",
            )
            .bind(&config.checkpoint_key)
            .bind(room.1)
            .execute(pool)
            .await
            .map_err(|e| RollbackError::Legacy(classify(e)))?;
        }
    }
    report.devices_copied = copy_devices(legacy, session, &ks, config.since, until).await?;
    sqlx::query("update rollback_checkpoint set completed_at = now(), updated_at = now() where checkpoint_key = $1")
        .bind(&config.checkpoint_key)
        .execute(pool)
        .await
        .map_err(|e| RollbackError::Legacy(classify(e)))?;
    report.complete = true;
    tracing::info!(elapsed = ?started.elapsed(), ?report, "rollback copy complete");
    Ok(report)
}

/// Copies the device tokens registered in the window (a full scan of `device_tokens_by_user`,
/// paged) into legacy, each applied only if legacy holds no later write of the token. Not
/// checkpointed: the copy is idempotent, and a scan of every user's tokens is short next to the
/// rooms'.
async fn copy_devices(
    legacy: &PgStore,
    session: &scylla::client::session::Session,
    ks: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<u64, RollbackError> {
    let mut stream = session
        .query_iter(
            format!(
                "SELECT user_id, push_token, platform, registered_at FROM {ks}.device_tokens_by_user"
            ),
            &[],
        )
        .await
        .map_err(|e| RollbackError::Cql(StoreError::Unavailable(e.to_string())))?
        .rows_stream::<(i32, String, String, i64)>()
        .map_err(|e| RollbackError::Cql(StoreError::Internal(e.to_string())))?;
    let mut copied = 0;
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| RollbackError::Cql(StoreError::Unavailable(e.to_string())))?
    {
        let (user, token, platform, registered_at) = row;
        let Some(at) = from_micros(registered_at).filter(|t| *t >= since && *t < until) else {
            continue;
        };
        let platform = Platform::stored(UserId(user), &platform).map_err(RollbackError::Cql)?;
        if legacy
            .register_device_applied(UserId(user), token, platform, at)
            .await
            .map_err(RollbackError::Legacy)?
        {
            copied += 1;
        }
    }
    Ok(copied)
}

#[allow(clippy::too_many_arguments)]
async fn copy_room(
    pool: &sqlx::PgPool,
    session: &scylla::client::session::Session,
    st: &Statements,
    room: &RoomScanRow,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    (lower, upper): (CqlTimeuuid, CqlTimeuuid),
    report: &mut RollbackReport,
) -> Result<(), RollbackError> {
    let cql = |e| RollbackError::Cql(cql_classify(e));
    let pg = |e| RollbackError::Legacy(classify(e));
    let (room_id, _, name, room_type, created_by, created_at) = room;
    let in_window = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t >= since && t < until);
    let members = rows::<MemberRow>(
        session
            .execute_unpaged(&st.participants, (*room_id,))
            .await
            .map_err(cql)?,
    )
    .map_err(RollbackError::Cql)?;
    let mut tx = pool.begin().await.map_err(pg)?;
    let (Some(room_type), Some(created_by), Some(created)) = (
        room_type.as_deref(),
        *created_by,
        created_at.and_then(from_micros),
    ) else {
        // A partly written room (its creation never finished): nothing a client was told about.
        return Ok(());
    };
    let created_room = sqlx::query(
        "insert into room (id, name, type, created_by, created_at) values ($1, $2, $3, $4, $5) on conflict (id) do nothing",
    )
    .bind(room_id)
    .bind(name.as_deref().unwrap_or(""))
    .bind(room_type)
    .bind(created_by)
    .bind(created)
    .execute(&mut *tx)
    .await
    .map_err(pg)?
    .rows_affected();
    report.rooms_created += created_room;
    for (user, role, joined, removed) in &members {
        let (joined, removed) = (joined.and_then(from_micros), removed.and_then(from_micros));
        if created_room == 0 && !in_window(joined) && !in_window(removed) {
            continue;
        }
        let Some(joined) = joined else { continue };
        let changed = sqlx::query(
            "insert into room_member (room_id, user_id, role, joined_at, removed_at) values ($1, $2, $3, $4, $5)
             on conflict (room_id, user_id) do update set removed_at = excluded.removed_at
               where room_member.removed_at is null and excluded.removed_at is not null",
        )
        .bind(room_id)
        .bind(user)
        .bind(match role.as_deref() {
            Some("owner") => "owner",
            _ => "member",
        })
        .bind(joined)
        .bind(removed)
        .execute(&mut *tx)
        .await
        .map_err(pg)?
        .rows_affected();
        report.memberships_updated += changed;
    }
    // Messages of the window, in pages of the driver.
    let mut messages = session
        .execute_iter(st.messages.clone(), (*room_id, lower, upper))
        .await
        .map_err(|e| RollbackError::Cql(StoreError::Unavailable(e.to_string())))?
        .rows_stream::<MessageRow>()
        .map_err(|e| RollbackError::Cql(StoreError::Internal(e.to_string())))?;
    let mut copied: Vec<CqlTimeuuid> = Vec::new();
    while let Some((id, sender, content, message_type, deleted)) = messages
        .try_next()
        .await
        .map_err(|e| RollbackError::Cql(StoreError::Unavailable(e.to_string())))?
    {
        let Some(at) = MessageId(Uuid::from(id)).created_at() else {
            continue;
        };
        if at < since || at >= until {
            continue;
        }
        let (Some(sender), Some(content)) = (sender, content) else {
            continue;
        };
        let inserted = sqlx::query(
            "insert into room_message (id, room_id, sender_id, content, type, created_at, deleted_at) values ($1, $2, $3, $4, $5, $6, $7)
             on conflict (id) do nothing",
        )
        .bind(Uuid::from(id))
        .bind(room_id)
        .bind(sender)
        .bind(content)
        .bind(message_type.unwrap_or_else(|| "user_message".into()))
        .bind(at)
        .bind(deleted.unwrap_or(false).then_some(at))
        .execute(&mut *tx)
        .await
        .map_err(pg)?
        .rows_affected();
        report.messages_copied += inserted;
        copied.push(id);
    }
    for id in &copied {
        let reactions = rows::<(i32, String, Option<i64>)>(
            session
                .execute_unpaged(&st.reactions, (*id,))
                .await
                .map_err(cql)?,
        )
        .map_err(RollbackError::Cql)?;
        for (user, reaction, at) in reactions {
            let at = at.and_then(from_micros).unwrap_or(until);
            report.reactions_copied += sqlx::query(
                "insert into room_message_reaction (message_id, user_id, reaction, created_at) values ($1, $2, $3, $4) on conflict do nothing",
            )
            .bind(Uuid::from(*id))
            .bind(user)
            .bind(reaction)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(pg)?
            .rows_affected();
        }
    }
    if !copied.is_empty() {
        for (user, ..) in &members {
            let marks = rows::<(CqlTimeuuid, Option<i64>)>(
                session
                    .execute_unpaged(&st.read_markers, (*room_id, *user, lower, upper))
                    .await
                    .map_err(cql)?,
            )
            .map_err(RollbackError::Cql)?;
            for (message, at) in marks {
                let at = at.and_then(from_micros).unwrap_or(until);
                report.read_markers_copied += sqlx::query(
                    "insert into room_message_read (message_id, user_id, read_at) select $1, $2, $3
                      where exists (select 1 from room_message where id = $1) on conflict do nothing",
                )
                .bind(Uuid::from(message))
                .bind(user)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(pg)?
                .rows_affected();
            }
        }
    }
    tx.commit().await.map_err(pg)?;
    Ok(())
}
