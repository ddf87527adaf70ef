//! The ScyllaDB store (scylla driver; any CQL database, e.g. Apache Cassandra, works too).
//!
//! Query-first tables (schema: [`SCHEMA`], applied by [`CqlStore::migrate`] at start):
//!
//! | table | key | serves |
//! |---|---|---|
//! | `messages_by_room` | `((room_id), message_id timeuuid)` DESC | history, cursor checks, read markers |
//! | `message_rooms` | `((message_id))` | message -> room (reactions), idempotency claim of a send |
//! | `rooms_by_user` | `((user_id), room_id)` | GetRooms, room ids of a stream (denormalised room) |
//! | `room_counters_by_user` | `((user_id), room_id)` | unread counters |
//! | `room_details` | `((room_id))` | the room itself, its last activity |
//! | `participants_by_room` | `((room_id), user_id)` | members (`removed_at` kept on leave) |
//! | `reactions_by_message` | `((message_id), user_id, reaction)` | reactions |
//! | `read_markers` | `((room_id, user_id), message_id)` | which messages a member has read |
//!
//! Times other than a message's (which is its timeuuid's) are `bigint` microseconds since the
//! epoch: CQL `timestamp` has only milliseconds, and rooms created within one millisecond must
//! still sort by creation as they do in PostgreSQL.
//!
//! Every statement on the request path is prepared once in [`CqlStore::connect`]; the
//! consistency level is the session's default execution profile (`LOCAL_QUORUM` unless
//! configured). Batches are only used within one partition; a send fans out to each
//! participant's `rooms_by_user` row and counter with separate (concurrent) writes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{Counter, CqlTimeuuid};
use uuid::Uuid;

use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    ChatStore, HistoryPage, NewMessage, NewRoom, PageRequest, ReadMarker, RoomAccess, RoomType,
    RoomView, StoreError, StoreFuture, StoreResult, StoredMessage,
};

/// The CQL schema, in order; entry `i` is version `i + 1`. Append only: an applied statement is
/// never edited (add a new one, e.g. `ALTER TABLE`). Every statement is idempotent
/// (`IF NOT EXISTS`), so replicas starting together may both apply one. `{ks}` is the keyspace.
pub const SCHEMA: &[&str] = &[
    // History: newest first within a room; `deleted` is a soft delete (kept as a position).
    "CREATE TABLE IF NOT EXISTS {ks}.messages_by_room (
        room_id uuid, message_id timeuuid, sender_id int, content blob, type text, deleted boolean,
        PRIMARY KEY ((room_id), message_id)
    ) WITH CLUSTERING ORDER BY (message_id DESC)",
    // Message -> room. Written first with IF NOT EXISTS: the claim that makes a send idempotent.
    "CREATE TABLE IF NOT EXISTS {ks}.message_rooms (
        message_id timeuuid PRIMARY KEY, room_id uuid, sender_id int
    )",
    // "My rooms", one partition per user, sorted in the store (pinned first, then activity).
    // Activity is a regular column, not a clustering key: a clustering key cannot be updated,
    // so moving a room up on every message would be a read-before-write delete + insert in every
    // participant's partition, and two concurrent sends would race (both read the old key, one
    // delete misses, the room shows twice). A user's room list is small enough to sort in memory.
    "CREATE TABLE IF NOT EXISTS {ks}.rooms_by_user (
        user_id int, room_id uuid, name text, type text, created_at bigint, is_pinned boolean,
        last_message_at bigint, last_message_id timeuuid, last_message_sender int,
        last_message_type text, last_message_content blob,
        PRIMARY KEY ((user_id), room_id)
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.room_counters_by_user (
        user_id int, room_id uuid, unread_count counter,
        PRIMARY KEY ((user_id), room_id)
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.room_details (
        room_id uuid PRIMARY KEY, name text, type text, created_by int, created_at bigint,
        last_message_at bigint
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.participants_by_room (
        room_id uuid, user_id int, role text, joined_at bigint, removed_at bigint,
        last_read_message_id timeuuid,
        PRIMARY KEY ((room_id), user_id)
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.reactions_by_message (
        message_id timeuuid, user_id int, reaction text, created_at bigint,
        PRIMARY KEY ((message_id), user_id, reaction)
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.read_markers (
        room_id uuid, user_id int, message_id timeuuid, read_at bigint,
        PRIMARY KEY ((room_id, user_id), message_id)
    ) WITH CLUSTERING ORDER BY (message_id DESC)",
];

const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS {ks}.schema_version (
    component text, version int, statement text, applied_at timestamp,
    PRIMARY KEY ((component), version)
) WITH CLUSTERING ORDER BY (version DESC)";
const COMPONENT: &str = "chat-service";

/// Rows per write batch (one partition each): well under the default 50 KiB batch limit.
const BATCH_ROWS: usize = 100;
/// Rows per read when scanning a range of a room's messages (read markers).
const SCAN_ROWS: i32 = 500;
/// Concurrent writes of a fan-out.
const FAN_OUT: usize = 32;

/// How to reach the CQL cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CqlConfig {
    /// `host:port` of one or more nodes (the driver discovers the rest).
    pub contact_points: Vec<String>,
    /// The keyspace: created beforehand (its replication is an operator's choice).
    pub keyspace: String,
    pub consistency: Consistency,
    /// Where to reach a node that broadcasts an address this process cannot (or should not)
    /// use directly: behind NAT, a port-forward or a proxy. Empty: the broadcast addresses.
    pub address_map: HashMap<SocketAddr, SocketAddr>,
}

/// Parses a consistency level as CQL spells it: `ONE`, `LOCAL_ONE`, `QUORUM`, `LOCAL_QUORUM`,
/// `EACH_QUORUM`, `ALL`, `TWO`, `THREE`, `ANY` (case-insensitive).
pub fn parse_consistency(text: &str) -> Result<Consistency, String> {
    Ok(
        match text.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "ANY" => Consistency::Any,
            "ONE" => Consistency::One,
            "TWO" => Consistency::Two,
            "THREE" => Consistency::Three,
            "QUORUM" => Consistency::Quorum,
            "ALL" => Consistency::All,
            "LOCAL_QUORUM" => Consistency::LocalQuorum,
            "EACH_QUORUM" => Consistency::EachQuorum,
            "LOCAL_ONE" => Consistency::LocalOne,
            other => {
                return Err(format!(
                    "unknown consistency level {other:?}: use ONE, LOCAL_ONE, QUORUM, LOCAL_QUORUM, EACH_QUORUM, ALL"
                ));
            }
        },
    )
}

fn attempt_unavailable(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::RateLimitReached { .. }
                | DbError::TruncateError
        ),
        _ => false,
    }
}

/// Connection problems, timeouts and "not enough replicas" are retry-later; the rest (bad
/// statements, type mismatches) need an operator.
pub(crate) fn classify(e: ExecutionError) -> StoreError {
    let unavailable = match &e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(a) => attempt_unavailable(a),
        ExecutionError::PrepareError(p) => prepare_unavailable(p),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

fn prepare_unavailable(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_unavailable(first_attempt),
        _ => false,
    }
}

pub(crate) fn classify_prepare(e: PrepareError) -> StoreError {
    if prepare_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

fn classify_session(e: NewSessionError) -> StoreError {
    match e {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            StoreError::Internal(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// A result that cannot be read as the expected rows: the schema and the code disagree.
fn decode(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unexpected CQL result: {e}"))
}

pub(crate) fn rows<R>(result: QueryResult) -> StoreResult<Vec<R>>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = result.into_rows_result().map_err(decode)?;
    rows.rows::<R>()
        .map_err(decode)?
        .collect::<Result<Vec<R>, _>>()
        .map_err(decode)
}

pub(crate) fn first_row<R>(result: QueryResult) -> StoreResult<Option<R>>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = result.into_rows_result().map_err(decode)?;
    rows.maybe_first_row::<R>().map_err(decode)
}

/// Whether a lightweight transaction applied (its first column is `[applied]`).
fn applied(result: QueryResult) -> StoreResult<bool> {
    let rows = result.into_rows_result().map_err(decode)?;
    let (i, _) = rows
        .column_specs()
        .get_by_name("[applied]")
        .ok_or_else(|| decode("no [applied] column"))?;
    let row: scylla::value::Row = rows.first_row().map_err(decode)?;
    match row.columns.get(i) {
        Some(Some(scylla::value::CqlValue::Boolean(b))) => Ok(*b),
        other => Err(decode(format!("[applied] is {other:?}"))),
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Internal(format!("time {us} out of range")))
}

fn timeuuid(id: MessageId) -> CqlTimeuuid {
    CqlTimeuuid::from(id.0)
}

fn message_id(t: CqlTimeuuid) -> MessageId {
    MessageId(Uuid::from(t))
}

/// The lowest timeuuid at `at` minus one millisecond: a safe lower bound for "created at or after
/// `at`" (the exact comparison is made on each id's time afterwards).
pub(crate) fn timeuuid_lower_bound(at: DateTime<Utc>) -> CqlTimeuuid {
    // 100 ns intervals between 1582-10-15 (the UUID epoch) and 1970-01-01.
    const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;
    let unix_ticks = (at.timestamp_micros() - 1_000).max(0) as u64 * 10;
    let ts = uuid::Timestamp::from_gregorian_time(unix_ticks + GREGORIAN_OFFSET, 0);
    CqlTimeuuid::from(Uuid::new_v1(ts, &[0; 6]))
}

/// The time a message's cell writes are stamped with (`USING TIMESTAMP`): the message's own
/// time, so the newest message wins in the denormalised "last message" columns whatever order
/// concurrent sends arrive in.
fn write_time(message: &NewMessage) -> i64 {
    micros(message.id.created_at().unwrap_or(message.created_at))
}

/// Statements of the request path, prepared once at connect.
struct Statements {
    ping: PreparedStatement,
    insert_room: PreparedStatement,
    insert_participant: PreparedStatement,
    insert_room_for_user: PreparedStatement,
    select_room: PreparedStatement,
    select_participants: PreparedStatement,
    select_participant: PreparedStatement,
    select_user_room: PreparedStatement,
    select_user_rooms: PreparedStatement,
    leave: PreparedStatement,
    delete_room_for_user: PreparedStatement,
    claim_message: PreparedStatement,
    insert_message: PreparedStatement,
    select_message: PreparedStatement,
    room_last_message: PreparedStatement,
    user_room_last_message: PreparedStatement,
    add_unread: PreparedStatement,
    history_first: PreparedStatement,
    history_before: PreparedStatement,
    select_message_room: PreparedStatement,
    messages_in: PreparedStatement,
    messages_since: PreparedStatement,
    messages_since_before: PreparedStatement,
    read_in: PreparedStatement,
    read_since: PreparedStatement,
    insert_read: PreparedStatement,
    last_read: PreparedStatement,
    insert_reaction: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, keyspace: &str) -> StoreResult<Self> {
        let p = |cql: &'static str| async move {
            session
                .prepare(cql.replace("{ks}", keyspace))
                .await
                .map_err(classify_prepare)
        };
        Ok(Statements {
            ping: p("SELECT release_version FROM system.local WHERE key = 'local'").await?,
            insert_room: p("INSERT INTO {ks}.room_details (room_id, name, type, created_by, created_at) VALUES (?, ?, ?, ?, ?)").await?,
            insert_participant: p("INSERT INTO {ks}.participants_by_room (room_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)").await?,
            insert_room_for_user: p("INSERT INTO {ks}.rooms_by_user (user_id, room_id, name, type, created_at, is_pinned) VALUES (?, ?, ?, ?, ?, false)").await?,
            select_room: p("SELECT name, type, created_at, last_message_at FROM {ks}.room_details WHERE room_id = ?").await?,
            select_participants: p("SELECT user_id, removed_at FROM {ks}.participants_by_room WHERE room_id = ?").await?,
            select_participant: p("SELECT removed_at FROM {ks}.participants_by_room WHERE room_id = ? AND user_id = ?").await?,
            select_user_room: p("SELECT is_pinned FROM {ks}.rooms_by_user WHERE user_id = ? AND room_id = ?").await?,
            select_user_rooms: p("SELECT room_id, name, type, created_at, is_pinned, last_message_at FROM {ks}.rooms_by_user WHERE user_id = ?").await?,
            leave: p("UPDATE {ks}.participants_by_room SET removed_at = ? WHERE room_id = ? AND user_id = ? IF removed_at = null").await?,
            delete_room_for_user: p("DELETE FROM {ks}.rooms_by_user WHERE user_id = ? AND room_id = ?").await?,
            claim_message: p("INSERT INTO {ks}.message_rooms (message_id, room_id, sender_id) VALUES (?, ?, ?) IF NOT EXISTS").await?,
            insert_message: p("INSERT INTO {ks}.messages_by_room (room_id, message_id, sender_id, content, type, deleted) VALUES (?, ?, ?, ?, ?, false)").await?,
            select_message: p("SELECT sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id = ?").await?,
            room_last_message: p("UPDATE {ks}.room_details USING TIMESTAMP ? SET last_message_at = ? WHERE room_id = ?").await?,
            user_room_last_message: p(
                "UPDATE {ks}.rooms_by_user USING TIMESTAMP ? SET last_message_at = ?, last_message_id = ?, last_message_sender = ?, \
                 last_message_type = ?, last_message_content = ? WHERE user_id = ? AND room_id = ?",
            )
            .await?,
            add_unread: p("UPDATE {ks}.room_counters_by_user SET unread_count = unread_count + ? WHERE user_id = ? AND room_id = ?").await?,
            history_first: p("SELECT message_id, sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? LIMIT ?").await?,
            history_before: p("SELECT message_id, sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id < ? LIMIT ?").await?,
            select_message_room: p("SELECT room_id FROM {ks}.message_rooms WHERE message_id = ?").await?,
            messages_in: p("SELECT message_id, sender_id, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id IN ?").await?,
            messages_since: p("SELECT message_id, sender_id, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id >= ? LIMIT ?").await?,
            messages_since_before: p("SELECT message_id, sender_id, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id >= ? AND message_id < ? LIMIT ?").await?,
            read_in: p("SELECT message_id FROM {ks}.read_markers WHERE room_id = ? AND user_id = ? AND message_id IN ?").await?,
            read_since: p("SELECT message_id FROM {ks}.read_markers WHERE room_id = ? AND user_id = ? AND message_id >= ?").await?,
            insert_read: p("INSERT INTO {ks}.read_markers (room_id, user_id, message_id, read_at) VALUES (?, ?, ?, ?)").await?,
            last_read: p("UPDATE {ks}.participants_by_room USING TIMESTAMP ? SET last_read_message_id = ? WHERE room_id = ? AND user_id = ?").await?,
            insert_reaction: p("INSERT INTO {ks}.reactions_by_message (message_id, user_id, reaction, created_at) VALUES (?, ?, ?, ?) IF NOT EXISTS").await?,
        })
    }
}

pub struct CqlStore {
    session: Session,
    st: Statements,
}

type RoomRow = (String, String, i64, Option<i64>);
type MessageRow = (CqlTimeuuid, i32, Vec<u8>, String, Option<bool>);

impl CqlStore {
    /// Connects to the cluster, uses the keyspace, applies the schema and prepares the
    /// statements. The keyspace must exist.
    pub async fn connect(config: &CqlConfig) -> StoreResult<Self> {
        let (session, keyspace) = open_session(config).await?;
        migrate(&session, &keyspace).await?;
        let st = Statements::prepare(&session, &keyspace).await?;
        Ok(CqlStore { session, st })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    async fn exec(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(classify)
    }

    /// Writes `rows` of one partition in batches of [`BATCH_ROWS`].
    async fn batch_in_partition<V>(
        &self,
        statement: &PreparedStatement,
        rows: Vec<V>,
    ) -> StoreResult<()>
    where
        V: scylla::serialize::row::SerializeRow,
    {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<V> = rows.by_ref().take(BATCH_ROWS).collect();
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in 0..chunk.len() {
                batch.append_statement(statement.clone());
            }
            self.session.batch(&batch, chunk).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn create_room_query(&self, room: NewRoom) -> StoreResult<RoomView> {
        let created = micros(room.created_at);
        let members: Vec<_> = room
            .participants
            .iter()
            .map(|u| {
                (
                    room.id.0,
                    u.0,
                    if *u == room.created_by {
                        "owner"
                    } else {
                        "member"
                    },
                    created,
                )
            })
            .collect();
        self.batch_in_partition(&self.st.insert_participant, members)
            .await?;
        let (name, room_type) = (room.name.as_str(), room.room_type.as_str());
        let users: Vec<i32> = room.participants.iter().map(|u| u.0).collect();
        futures::stream::iter(users.into_iter().map(|u| {
            self.exec(
                &self.st.insert_room_for_user,
                (u, room.id.0, name, room_type, created),
            )
        }))
        .buffer_unordered(FAN_OUT)
        .try_collect::<Vec<_>>()
        .await?;
        // Last: the room exists (room_access finds it) only once its members are written.
        self.exec(
            &self.st.insert_room,
            (
                room.id.0,
                &room.name,
                room.room_type.as_str(),
                room.created_by.0,
                created,
            ),
        )
        .await?;
        let mut participants = room.participants;
        participants.sort();
        Ok(RoomView {
            id: room.id,
            name: room.name,
            room_type: room.room_type,
            participants,
            created_at: room.created_at,
            last_message_at: None,
            is_pinned: false,
        })
    }

    /// A room's details. A row with only `last_message_at` is no room: a message for a room
    /// this store never received (created before dual-write, not backfilled yet) updates it.
    async fn room_row(&self, room: RoomId) -> StoreResult<RoomRow> {
        type Partial = (Option<String>, Option<String>, Option<i64>, Option<i64>);
        match first_row::<Partial>(self.exec(&self.st.select_room, (room.0,)).await?)? {
            Some((Some(name), Some(room_type), Some(created_at), last)) => {
                Ok((name, room_type, created_at, last))
            }
            _ => Err(StoreError::NotFound(format!("room {room}"))),
        }
    }

    /// Current members, ascending (the clustering order).
    async fn members(&self, room: RoomId) -> StoreResult<Vec<UserId>> {
        let rows =
            rows::<(i32, Option<i64>)>(self.exec(&self.st.select_participants, (room.0,)).await?)?;
        Ok(rows
            .into_iter()
            .filter(|(_, removed)| removed.is_none())
            .map(|(u, _)| UserId(u))
            .collect())
    }

    async fn get_room_query(&self, room: RoomId, viewer: UserId) -> StoreResult<RoomView> {
        let pinned = async {
            Ok(first_row::<(Option<bool>,)>(
                self.exec(&self.st.select_user_room, (viewer.0, room.0))
                    .await?,
            )?
            .and_then(|(p,)| p)
            .unwrap_or(false))
        };
        let ((name, room_type, created_at, last_message_at), participants, is_pinned) =
            tokio::try_join!(self.room_row(room), self.members(room), pinned)?;
        Ok(RoomView {
            id: room,
            name,
            room_type: parse_type(room, &room_type)?,
            participants,
            created_at: from_micros(created_at)?,
            last_message_at: last_message_at.map(from_micros).transpose()?,
            is_pinned,
        })
    }

    async fn room_access_query(&self, room: RoomId, user: UserId) -> StoreResult<RoomAccess> {
        let member = async {
            first_row::<(Option<i64>,)>(
                self.exec(&self.st.select_participant, (room.0, user.0))
                    .await?,
            )
        };
        let ((_, room_type, _, _), member) = tokio::try_join!(self.room_row(room), member)?;
        Ok(RoomAccess {
            room_type: parse_type(room, &room_type)?,
            is_member: matches!(member, Some((None,))),
        })
    }

    /// The user's rooms from `rooms_by_user`. A row without `type` is the remains of a row
    /// deleted on leave that a concurrent send's fan-out updated again: not a membership.
    async fn user_rooms(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<(Uuid, String, String, i64, bool, Option<i64>)>> {
        type Row = (
            Uuid,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<bool>,
            Option<i64>,
        );
        let rows = rows::<Row>(self.exec(&self.st.select_user_rooms, (user.0,)).await?)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, ty, created, pinned, last)| {
                Some((
                    id,
                    name.unwrap_or_default(),
                    ty?,
                    created?,
                    pinned.unwrap_or(false),
                    last,
                ))
            })
            .collect())
    }

    async fn rooms_for_user_query(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreResult<(Vec<RoomView>, u64)> {
        let mut rooms = self.user_rooms(user).await?;
        let total = rooms.len() as u64;
        // Pinned first, then latest activity (last message, else creation), then id: as PostgreSQL.
        rooms.sort_by_key(|r| std::cmp::Reverse((r.4, r.5.unwrap_or(r.3), r.0)));
        let offset = usize::try_from(page.offset()).unwrap_or(usize::MAX);
        let picked: Vec<_> = rooms
            .into_iter()
            .skip(offset)
            .take(page.limit as usize)
            .collect();
        let views = futures::stream::iter(picked.into_iter().map(
            |(id, name, ty, created, is_pinned, last)| async move {
                let room = RoomId(id);
                Ok::<_, StoreError>(RoomView {
                    id: room,
                    name,
                    room_type: parse_type(room, &ty)?,
                    participants: self.members(room).await?,
                    created_at: from_micros(created)?,
                    last_message_at: last.map(from_micros).transpose()?,
                    is_pinned,
                })
            },
        ))
        .buffered(FAN_OUT)
        .try_collect::<Vec<_>>()
        .await?;
        Ok((views, total))
    }

    async fn room_ids_query(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        Ok(self
            .user_rooms(user)
            .await?
            .into_iter()
            .map(|r| RoomId(r.0))
            .collect())
    }

    async fn leave_room_query(
        &self,
        room: RoomId,
        user: UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        // The LWT's condition on a missing row would insert one: check existence first.
        match first_row::<(Option<i64>,)>(
            self.exec(&self.st.select_participant, (room.0, user.0))
                .await?,
        )? {
            Some((None,)) => {}
            _ => return Ok(false),
        }
        let left = applied(
            self.exec(&self.st.leave, (micros(at), room.0, user.0))
                .await?,
        )?;
        // Also on a retry (`left` false because an earlier attempt applied): idempotent.
        self.exec(&self.st.delete_room_for_user, (user.0, room.0))
            .await?;
        // The unread counter stays: a deleted counter cannot safely be written again.
        Ok(left)
    }

    async fn read_message(
        &self,
        room: RoomId,
        id: MessageId,
    ) -> StoreResult<Option<(i32, Vec<u8>, String, Option<bool>)>> {
        first_row(
            self.exec(&self.st.select_message, (room.0, timeuuid(id)))
                .await?,
        )
    }

    /// Idempotent by id. The claim (`message_rooms ... IF NOT EXISTS`, a lightweight
    /// transaction on the message's own partition, so concurrent sends in one room do not
    /// contend) decides whether this is the first write:
    /// * first write: the message row, then the fan-out (last-activity columns, stamped with the
    ///   message's time) and the unread counters of the other members;
    /// * a repeat (retry, replay): the existing message is returned; the message row and the
    ///   last-activity fan-out are written again (idempotent upserts, which heals a first write
    ///   that failed half-way), the counters are not (a counter increment is not idempotent).
    ///   So unread counters are at-most-once: a first write that died after the claim and
    ///   before its counter updates leaves them one short, never double.
    async fn insert_message_query(&self, message: NewMessage) -> StoreResult<StoredMessage> {
        let claim = self
            .exec(
                &self.st.claim_message,
                (timeuuid(message.id), message.room_id.0, message.sender_id.0),
            )
            .await?;
        let first = applied_claim(claim, &message)?;
        if !first
            && let Some((sender, content, message_type, _)) =
                self.read_message(message.room_id, message.id).await?
        {
            let existing = StoredMessage {
                id: message.id,
                room_id: message.room_id,
                sender_id: UserId(sender),
                content,
                message_type,
                created_at: message.created_at,
            };
            self.fan_out(
                &NewMessage {
                    content: existing.content.clone(),
                    message_type: existing.message_type.clone(),
                    ..message
                },
                false,
            )
            .await?;
            return Ok(existing);
        }
        self.exec(
            &self.st.insert_message,
            (
                message.room_id.0,
                timeuuid(message.id),
                message.sender_id.0,
                &message.content,
                &message.message_type,
            ),
        )
        .await?;
        self.fan_out(&message, first).await?;
        Ok(message.into())
    }

    /// Last activity on the room and in each member's `rooms_by_user`; with `count`, +1 unread
    /// for each member but the sender.
    async fn fan_out(&self, message: &NewMessage, count: bool) -> StoreResult<()> {
        let ts = write_time(message);
        let at = micros(message.created_at);
        let room = message.room_id.0;
        self.exec(&self.st.room_last_message, (ts, at, room))
            .await?;
        let members = self.members(message.room_id).await?;
        let id = timeuuid(message.id);
        let (sender, message_type, content) = (
            message.sender_id.0,
            message.message_type.as_str(),
            message.content.as_slice(),
        );
        let mut writes = Vec::with_capacity(members.len() * 2);
        for u in members.into_iter().map(|u| u.0) {
            writes.push(futures::future::Either::Left(self.exec(
                &self.st.user_room_last_message,
                (ts, at, id, sender, message_type, content, u, room),
            )));
            if count && u != sender {
                writes.push(futures::future::Either::Right(
                    self.exec(&self.st.add_unread, (Counter(1), u, room)),
                ));
            }
        }
        futures::stream::iter(writes)
            .buffer_unordered(FAN_OUT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    async fn history_query(
        &self,
        room: RoomId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        let mut cursor = match before {
            None => None,
            // Not a timeuuid: it can key no message here (CQL would reject the comparison).
            Some(c) if c.0.get_version_num() != 1 => {
                return Err(StoreError::InvalidArgument(format!(
                    "`before` {c} is not a message id: message ids are time-based UUIDs (version 1)"
                )));
            }
            Some(c) => {
                // The cursor must be a message of this room; a deleted one still marks a position.
                if self.read_message(room, c).await?.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "message {c} (the `before` cursor) in room {room}"
                    )));
                }
                Some(timeuuid(c))
            }
        };
        let want = limit as usize + 1;
        let mut found = Vec::with_capacity(want);
        // Soft-deleted rows are skipped, so a read may come back short: read on until `want`
        // live rows or the start of the room.
        loop {
            let fetch = i32::try_from(want - found.len()).unwrap_or(i32::MAX);
            let result = match cursor {
                None => self.exec(&self.st.history_first, (room.0, fetch)).await?,
                Some(c) => {
                    self.exec(&self.st.history_before, (room.0, c, fetch))
                        .await?
                }
            };
            let batch = rows::<MessageRow>(result)?;
            let exhausted = batch.len() < fetch as usize;
            for (id, sender, content, message_type, deleted) in batch {
                cursor = Some(id);
                if deleted == Some(true) {
                    continue;
                }
                let id = message_id(id);
                let created_at = id.created_at().ok_or_else(|| {
                    StoreError::Internal(format!("message id {id} is not a timeuuid"))
                })?;
                found.push(StoredMessage {
                    id,
                    room_id: room,
                    sender_id: UserId(sender),
                    content,
                    message_type,
                    created_at,
                });
            }
            if exhausted || found.len() >= want {
                break;
            }
        }
        Ok(HistoryPage::from_rows(found, limit))
    }

    /// Candidate messages of a read marker: `(id, sender, deleted)`.
    async fn marker_candidates(
        &self,
        room: RoomId,
        marker: &ReadMarker,
    ) -> StoreResult<Vec<(CqlTimeuuid, i32, Option<bool>)>> {
        type Row = (CqlTimeuuid, i32, Option<bool>);
        match marker {
            ReadMarker::Ids(ids) => {
                // Only time-based ids can be messages; others are ignored like ids of other rooms.
                let ids: Vec<CqlTimeuuid> = ids
                    .iter()
                    .filter(|id| id.0.get_version_num() == 1)
                    .map(|id| timeuuid(*id))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                if ids.is_empty() {
                    return Ok(vec![]);
                }
                rows::<Row>(self.exec(&self.st.messages_in, (room.0, ids)).await?)
            }
            ReadMarker::Since(since) => {
                let lower = timeuuid_lower_bound(*since);
                let mut all: Vec<Row> = Vec::new();
                let mut upper: Option<CqlTimeuuid> = None;
                loop {
                    let result = match upper {
                        None => {
                            self.exec(&self.st.messages_since, (room.0, lower, SCAN_ROWS))
                                .await?
                        }
                        Some(u) => {
                            self.exec(
                                &self.st.messages_since_before,
                                (room.0, lower, u, SCAN_ROWS),
                            )
                            .await?
                        }
                    };
                    let batch = rows::<Row>(result)?;
                    let done = batch.len() < SCAN_ROWS as usize;
                    upper = batch.last().map(|r| r.0);
                    all.extend(
                        batch
                            .into_iter()
                            .filter(|r| message_id(r.0).created_at().is_some_and(|t| t >= *since)),
                    );
                    if done {
                        return Ok(all);
                    }
                }
            }
        }
    }

    /// Read markers are written after reading which exist; two concurrent marks of the same
    /// messages by the same member may both count them (the markers themselves stay exact).
    async fn mark_read_query(
        &self,
        room: RoomId,
        user: UserId,
        marker: ReadMarker,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let candidates: Vec<CqlTimeuuid> = self
            .marker_candidates(room, &marker)
            .await?
            .into_iter()
            .filter(|(_, sender, deleted)| *sender != user.0 && *deleted != Some(true))
            .map(|r| r.0)
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let already: HashSet<CqlTimeuuid> = match &marker {
            ReadMarker::Ids(_) => rows::<(CqlTimeuuid,)>(
                self.exec(&self.st.read_in, (room.0, user.0, candidates.clone()))
                    .await?,
            )?,
            ReadMarker::Since(since) => rows::<(CqlTimeuuid,)>(
                self.exec(
                    &self.st.read_since,
                    (room.0, user.0, timeuuid_lower_bound(*since)),
                )
                .await?,
            )?,
        }
        .into_iter()
        .map(|(id,)| id)
        .collect();
        let new: Vec<CqlTimeuuid> = candidates
            .into_iter()
            .filter(|id| !already.contains(id))
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        let read_at = micros(at);
        self.batch_in_partition(
            &self.st.insert_read,
            new.iter()
                .map(|id| (room.0, user.0, *id, read_at))
                .collect(),
        )
        .await?;
        // The newest message read; stamped with its time so the newest marker wins.
        if let Some(newest) = new
            .iter()
            .map(|id| message_id(*id))
            .filter_map(|id| id.created_at().map(|t| (t, id)))
            .max()
        {
            self.exec(
                &self.st.last_read,
                (micros(newest.0), timeuuid(newest.1), room.0, user.0),
            )
            .await?;
        }
        let n = new.len() as u64;
        self.exec(&self.st.add_unread, (Counter(-(n as i64)), user.0, room.0))
            .await?;
        Ok(n)
    }

    async fn react_query(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        applied(
            self.exec(
                &self.st.insert_reaction,
                (timeuuid(message), user.0, reaction, micros(at)),
            )
            .await?,
        )
    }

    async fn message_room_query(&self, message: MessageId) -> StoreResult<RoomId> {
        let not_found = || StoreError::NotFound(format!("message {message}"));
        if message.0.get_version_num() != 1 {
            return Err(not_found());
        }
        let (room,): (Uuid,) = first_row(
            self.exec(&self.st.select_message_room, (timeuuid(message),))
                .await?,
        )?
        .ok_or_else(not_found)?;
        let room = RoomId(room);
        match self.read_message(room, message).await? {
            Some((_, _, _, deleted)) if deleted != Some(true) => Ok(room),
            _ => Err(not_found()),
        }
    }
}

/// Whether the claim applied; if not, that the existing claim is this message's.
fn applied_claim(result: QueryResult, message: &NewMessage) -> StoreResult<bool> {
    let rows = result.into_rows_result().map_err(decode)?;
    let specs = rows.column_specs();
    let col = |name: &str| specs.get_by_name(name).map(|(i, _)| i);
    let row: scylla::value::Row = rows.first_row().map_err(decode)?;
    let get = |i: Option<usize>| i.and_then(|i| row.columns.get(i).cloned().flatten());
    use scylla::value::CqlValue;
    match get(col("[applied]")) {
        Some(CqlValue::Boolean(true)) => Ok(true),
        Some(CqlValue::Boolean(false)) => {
            let room = match get(col("room_id")) {
                Some(CqlValue::Uuid(u)) => Some(u),
                _ => None,
            };
            let sender = match get(col("sender_id")) {
                Some(CqlValue::Int(s)) => Some(s),
                _ => None,
            };
            if room != Some(message.room_id.0) || sender != Some(message.sender_id.0) {
                return Err(StoreError::Conflict(format!(
                    "message id {} already belongs to another message",
                    message.id
                )));
            }
            Ok(false)
        }
        other => Err(decode(format!("[applied] is {other:?}"))),
    }
}

/// A session on the cluster of `config`, with its keyspace checked to exist; returns the
/// keyspace as tables are qualified with it (lowercase).
pub(crate) async fn open_session(config: &CqlConfig) -> StoreResult<(Session, String)> {
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency)
        .request_timeout(Some(Duration::from_secs(5)))
        .build();
    let mut builder = SessionBuilder::new();
    if !config.address_map.is_empty() {
        builder = builder.address_translator(Arc::new(AddressMap(config.address_map.clone())));
    }
    let session = builder
        .known_nodes(&config.contact_points)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(classify_session)?;
    // Table names are qualified with the keyspace (no `USE`: prepared statements and a
    // session keyspace are ambiguous, and Cassandra warns about it on every prepare).
    let keyspace = config.keyspace.to_ascii_lowercase();
    if keyspace.is_empty()
        || keyspace.len() > 48
        || !keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
        || !keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(StoreError::Internal(format!(
            "CQL keyspace {:?} is not a valid unquoted name (a letter, then letters, digits, _; at most 48)",
            config.keyspace
        )));
    }
    let found = session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (&keyspace,),
        )
        .await
        .map_err(classify)?;
    if first_row::<(String,)>(found)?.is_none() {
        return Err(StoreError::Internal(format!(
            "CQL keyspace {keyspace:?} does not exist: create it first (its replication is a deployment choice)"
        )));
    }
    Ok((session, keyspace))
}

fn parse_type(room: RoomId, text: &str) -> StoreResult<RoomType> {
    RoomType::parse(text)
        .ok_or_else(|| StoreError::Internal(format!("room {room} has unknown type {text:?}")))
}

/// Applies the statements of [`SCHEMA`] not yet recorded in `schema_version`, in order, in
/// `keyspace` (each statement's `{ks}`).
pub async fn migrate(session: &Session, keyspace: &str) -> StoreResult<()> {
    let ks = |cql: &str| cql.replace("{ks}", keyspace);
    session
        .query_unpaged(ks(SCHEMA_VERSION_TABLE), &[])
        .await
        .map_err(classify)?;
    let applied = session
        .query_unpaged(
            ks("SELECT version FROM {ks}.schema_version WHERE component = ? LIMIT 1"),
            (COMPONENT,),
        )
        .await
        .map_err(classify)?;
    let current = first_row::<(i32,)>(applied)?.map(|(v,)| v).unwrap_or(0);
    for (i, cql) in SCHEMA
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        session
            .query_unpaged(ks(cql), &[])
            .await
            .map_err(classify)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        session
            .query_unpaged(
                ks("INSERT INTO {ks}.schema_version (component, version, statement, applied_at) VALUES (?, ?, ?, toTimestamp(now()))"),
                (COMPONENT, version, ks(cql)),
            )
            .await
            .map_err(classify)?;
        tracing::info!(version, "applied CQL schema statement");
    }
    Ok(())
}

impl ChatStore for CqlStore {
    fn database(&self) -> &'static str {
        "scylladb"
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.exec(&self.st.ping, ()).await?;
            Ok(())
        })
    }

    fn create_room(&self, room: NewRoom) -> StoreFuture<'_, RoomView> {
        Box::pin(self.create_room_query(room))
    }

    fn get_room(&self, room: RoomId, viewer: UserId) -> StoreFuture<'_, RoomView> {
        Box::pin(self.get_room_query(room, viewer))
    }

    fn room_access(&self, room: RoomId, user: UserId) -> StoreFuture<'_, RoomAccess> {
        Box::pin(self.room_access_query(room, user))
    }

    fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreFuture<'_, (Vec<RoomView>, u64)> {
        Box::pin(self.rooms_for_user_query(user, page))
    }

    fn room_ids_for_user(&self, user: UserId) -> StoreFuture<'_, Vec<RoomId>> {
        Box::pin(self.room_ids_query(user))
    }

    fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreFuture<'_, bool> {
        Box::pin(self.leave_room_query(room, user, at))
    }

    fn insert_message(&self, message: NewMessage) -> StoreFuture<'_, StoredMessage> {
        Box::pin(self.insert_message_query(message))
    }

    fn history(
        &self,
        room: RoomId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreFuture<'_, HistoryPage> {
        Box::pin(self.history_query(room, before, limit))
    }

    fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        marker: ReadMarker,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, u64> {
        Box::pin(self.mark_read_query(room, user, marker, at))
    }

    fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.react_query(message, user, reaction, at))
    }

    fn message_room(&self, message: MessageId) -> StoreFuture<'_, RoomId> {
        Box::pin(self.message_room_query(message))
    }
}

/// A legacy room as the backfill copies it: the room and every membership row (current and left).
#[derive(Clone, Debug)]
pub struct BackfillRoom {
    pub id: RoomId,
    pub name: String,
    pub room_type: String,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    pub members: Vec<BackfillMember>,
}

#[derive(Clone, Debug)]
pub struct BackfillMember {
    pub user_id: UserId,
    pub role: String,
    pub is_pinned: bool,
    pub joined_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// A legacy reaction as the backfill copies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillReaction {
    pub message_id: MessageId,
    pub user_id: UserId,
    pub reaction: String,
    pub created_at: DateTime<Utc>,
}

/// A legacy read marker (one message read by one member) as the backfill copies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillReadMarker {
    pub message_id: MessageId,
    pub user_id: UserId,
    pub read_at: DateTime<Utc>,
}

/// A `participants_by_room` row as `validate` reads it. Columns are optional: a live write
/// (a leave, a read marker) may have made a partial row before the backfill filled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CqlMember {
    pub user_id: UserId,
    pub role: Option<String>,
    pub joined_at: Option<DateTime<Utc>>,
    pub removed_at: Option<DateTime<Utc>>,
    /// The newest message the member has read.
    pub last_read: Option<MessageId>,
}

/// A legacy message as the backfill copies it (`content` sealed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillMessage {
    pub id: MessageId,
    pub sender_id: UserId,
    pub content: Vec<u8>,
    pub message_type: String,
    pub created_at: DateTime<Utc>,
    pub deleted: bool,
}

/// Statements of the backfill (`chat-service backfill`) and of `validate`/`status`: separate from
/// the request path's. Every write is `USING TIMESTAMP ?`, stamped by the caller with a time
/// older than the start of the dual write, so a row (or cell) the live path wrote wins.
struct BackfillStatements {
    insert_message: PreparedStatement,
    insert_message_room: PreparedStatement,
    insert_participant: PreparedStatement,
    insert_room_for_user: PreparedStatement,
    insert_room: PreparedStatement,
    count_room_messages: PreparedStatement,
    select_message: PreparedStatement,
    select_room: PreparedStatement,
    insert_reaction: PreparedStatement,
    insert_read_marker: PreparedStatement,
    set_last_read: PreparedStatement,
    select_unread: PreparedStatement,
    add_unread: PreparedStatement,
    select_members: PreparedStatement,
    count_read_markers: PreparedStatement,
    select_reactions: PreparedStatement,
}

/// The backfill's and validator's view of a [`CqlStore`] ([`CqlStore::backfill`]).
pub struct CqlBackfill<'a> {
    store: &'a CqlStore,
    st: BackfillStatements,
    keyspace: String,
}

impl CqlStore {
    /// Prepares the backfill/validate statements (not on the request path).
    pub async fn backfill(&self, keyspace: &str) -> StoreResult<CqlBackfill<'_>> {
        let keyspace = keyspace.to_ascii_lowercase();
        let session = &self.session;
        let ks = keyspace.as_str();
        let p = |cql: &'static str| async move {
            session
                .prepare(cql.replace("{ks}", ks))
                .await
                .map_err(classify_prepare)
        };
        let st = BackfillStatements {
            insert_message: p("INSERT INTO {ks}.messages_by_room (room_id, message_id, sender_id, content, type, deleted) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            insert_message_room: p("INSERT INTO {ks}.message_rooms (message_id, room_id, sender_id) VALUES (?, ?, ?) USING TIMESTAMP ?").await?,
            insert_participant: p("INSERT INTO {ks}.participants_by_room (room_id, user_id, role, joined_at, removed_at) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            insert_room_for_user: p(
                "INSERT INTO {ks}.rooms_by_user (user_id, room_id, name, type, created_at, is_pinned, last_message_at, last_message_id, last_message_sender, \
                 last_message_type, last_message_content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            insert_room: p("INSERT INTO {ks}.room_details (room_id, name, type, created_by, created_at, last_message_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            count_room_messages: p("SELECT count(*) FROM {ks}.messages_by_room WHERE room_id = ?").await?,
            select_message: p("SELECT sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id = ?").await?,
            select_room: p("SELECT room_id FROM {ks}.room_details WHERE room_id = ?").await?,
            insert_reaction: p("INSERT INTO {ks}.reactions_by_message (message_id, user_id, reaction, created_at) VALUES (?, ?, ?, ?) USING TIMESTAMP ?").await?,
            insert_read_marker: p("INSERT INTO {ks}.read_markers (room_id, user_id, message_id, read_at) VALUES (?, ?, ?, ?) USING TIMESTAMP ?").await?,
            // Stamped with the message's time, as on the live path: the newest marker wins.
            set_last_read: p("UPDATE {ks}.participants_by_room USING TIMESTAMP ? SET last_read_message_id = ? WHERE room_id = ? AND user_id = ?").await?,
            select_unread: p("SELECT unread_count FROM {ks}.room_counters_by_user WHERE user_id = ? AND room_id = ?").await?,
            add_unread: p("UPDATE {ks}.room_counters_by_user SET unread_count = unread_count + ? WHERE user_id = ? AND room_id = ?").await?,
            select_members: p("SELECT user_id, role, joined_at, removed_at, last_read_message_id FROM {ks}.participants_by_room WHERE room_id = ?").await?,
            count_read_markers: p("SELECT count(*) FROM {ks}.read_markers WHERE room_id = ? AND user_id = ?").await?,
            select_reactions: p("SELECT user_id, reaction FROM {ks}.reactions_by_message WHERE message_id = ?").await?,
        };
        Ok(CqlBackfill {
            store: self,
            st,
            keyspace,
        })
    }
}

impl CqlBackfill<'_> {
    /// Writes one chunk of a room's messages (`messages_by_room` in unlogged single-partition
    /// batches, then `message_rooms`), every cell stamped `ts` (µs). Messages whose id is not a
    /// timeuuid cannot be keyed in CQL: they are returned, not written.
    pub async fn write_messages(
        &self,
        room: RoomId,
        messages: &[BackfillMessage],
        ts: i64,
    ) -> StoreResult<Vec<MessageId>> {
        let (ok, bad): (Vec<&BackfillMessage>, Vec<&BackfillMessage>) =
            messages.iter().partition(|m| m.id.0.get_version_num() == 1);
        let rows: Vec<_> = ok
            .iter()
            .map(|m| {
                (
                    room.0,
                    timeuuid(m.id),
                    m.sender_id.0,
                    m.content.as_slice(),
                    m.message_type.as_str(),
                    m.deleted,
                    ts,
                )
            })
            .collect();
        self.store
            .batch_in_partition(&self.st.insert_message, rows)
            .await?;
        futures::stream::iter(ok.iter().map(|m| {
            self.store.exec(
                &self.st.insert_message_room,
                (timeuuid(m.id), room.0, m.sender_id.0, ts),
            )
        }))
        .buffer_unordered(FAN_OUT)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(bad.into_iter().map(|m| m.id).collect())
    }

    /// Writes the room after its messages: memberships, each current member's `rooms_by_user`
    /// row (with the newest live message, if any), then `room_details` (last, as on the live
    /// path: the room exists for `room_access` once the rest is there). Every cell stamped `ts`.
    /// Unread counters are not written (a counter cannot carry a write timestamp).
    pub async fn write_room(
        &self,
        room: &BackfillRoom,
        last: Option<&BackfillMessage>,
        ts: i64,
    ) -> StoreResult<()> {
        let members: Vec<_> = room
            .members
            .iter()
            .map(|m| {
                (
                    room.id.0,
                    m.user_id.0,
                    m.role.as_str(),
                    micros(m.joined_at),
                    m.removed_at.map(micros),
                    ts,
                )
            })
            .collect();
        self.store
            .batch_in_partition(&self.st.insert_participant, members)
            .await?;
        let created = micros(room.created_at);
        let last_at = last.map(|m| micros(m.created_at));
        let current = room.members.iter().filter(|m| m.removed_at.is_none());
        futures::stream::iter(current.map(|m| {
            let values = (
                m.user_id.0,
                room.id.0,
                room.name.as_str(),
                room.room_type.as_str(),
                created,
                m.is_pinned,
                last_at,
                last.map(|l| timeuuid(l.id)),
                last.map(|l| l.sender_id.0),
                last.map(|l| l.message_type.as_str()),
                last.map(|l| l.content.as_slice()),
                ts,
            );
            self.store.exec(&self.st.insert_room_for_user, values)
        }))
        .buffer_unordered(FAN_OUT)
        .try_collect::<Vec<_>>()
        .await?;
        self.store
            .exec(
                &self.st.insert_room,
                (
                    room.id.0,
                    room.name.as_str(),
                    room.room_type.as_str(),
                    room.created_by.0,
                    created,
                    last_at,
                    ts,
                ),
            )
            .await?;
        Ok(())
    }

    /// Writes reactions (`reactions_by_message`, one unlogged batch per message), every cell
    /// stamped `ts`. Reactions to messages whose id is not a timeuuid cannot be keyed: skipped.
    pub async fn write_reactions(
        &self,
        reactions: &[BackfillReaction],
        ts: i64,
    ) -> StoreResult<()> {
        let mut by_message: Vec<(MessageId, Vec<_>)> = Vec::new();
        for r in reactions
            .iter()
            .filter(|r| r.message_id.0.get_version_num() == 1)
        {
            let row = (
                timeuuid(r.message_id),
                r.user_id.0,
                r.reaction.as_str(),
                micros(r.created_at),
                ts,
            );
            match by_message.last_mut() {
                Some((m, rows)) if *m == r.message_id => rows.push(row),
                _ => by_message.push((r.message_id, vec![row])),
            }
        }
        futures::stream::iter(by_message.into_iter().map(|(_, rows)| {
            self.store
                .batch_in_partition(&self.st.insert_reaction, rows)
        }))
        .buffer_unordered(FAN_OUT)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(())
    }

    /// Writes read markers (`read_markers`, one unlogged batch per reader), every cell stamped
    /// `ts`; markers of messages whose id is not a timeuuid are skipped.
    pub async fn write_read_markers(
        &self,
        room: RoomId,
        markers: &[BackfillReadMarker],
        ts: i64,
    ) -> StoreResult<()> {
        let mut by_user: Vec<(UserId, Vec<_>)> = Vec::new();
        for m in markers
            .iter()
            .filter(|m| m.message_id.0.get_version_num() == 1)
        {
            let row = (
                room.0,
                m.user_id.0,
                timeuuid(m.message_id),
                micros(m.read_at),
                ts,
            );
            match by_user.last_mut() {
                Some((u, rows)) if *u == m.user_id => rows.push(row),
                _ => by_user.push((m.user_id, vec![row])),
            }
        }
        futures::stream::iter(by_user.into_iter().map(|(_, rows)| {
            self.store
                .batch_in_partition(&self.st.insert_read_marker, rows)
        }))
        .buffer_unordered(FAN_OUT)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(())
    }

    /// The newest message `user` has read in `room`, stamped with that message's time (as the
    /// live path does), so a newer live marker wins whatever the order.
    pub async fn write_last_read(
        &self,
        room: RoomId,
        user: UserId,
        message: MessageId,
    ) -> StoreResult<()> {
        let Some(at) = message.created_at() else {
            return Ok(());
        };
        self.store
            .exec(
                &self.st.set_last_read,
                (micros(at), timeuuid(message), room.0, user.0),
            )
            .await?;
        Ok(())
    }

    /// The member's unread counter (0 when never written).
    pub async fn unread(&self, room: RoomId, user: UserId) -> StoreResult<i64> {
        Ok(first_row::<(Option<Counter>,)>(
            self.store
                .exec(&self.st.select_unread, (user.0, room.0))
                .await?,
        )?
        .and_then(|(c,)| c)
        .map_or(0, |c| c.0))
    }

    /// Moves the member's unread counter by `delta` (a counter can only be added to).
    pub async fn add_unread(&self, room: RoomId, user: UserId, delta: i64) -> StoreResult<()> {
        self.store
            .exec(&self.st.add_unread, (Counter(delta), user.0, room.0))
            .await?;
        Ok(())
    }

    /// Every membership row of the room (current and left), by user.
    pub async fn members(&self, room: RoomId) -> StoreResult<Vec<CqlMember>> {
        type Row = (
            i32,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<CqlTimeuuid>,
        );
        let rows = rows::<Row>(self.store.exec(&self.st.select_members, (room.0,)).await?)?;
        rows.into_iter()
            .map(|(user, role, joined, removed, last_read)| {
                Ok(CqlMember {
                    user_id: UserId(user),
                    role,
                    joined_at: joined.map(from_micros).transpose()?,
                    removed_at: removed.map(from_micros).transpose()?,
                    last_read: last_read.map(message_id),
                })
            })
            .collect()
    }

    /// Read markers of `user` in `room`.
    pub async fn read_marker_count(&self, room: RoomId, user: UserId) -> StoreResult<u64> {
        let (n,): (i64,) = first_row(
            self.store
                .exec(&self.st.count_read_markers, (room.0, user.0))
                .await?,
        )?
        .unwrap_or((0,));
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `(user, reaction)` of a message, sorted.
    pub async fn reactions(&self, message: MessageId) -> StoreResult<Vec<(UserId, String)>> {
        if message.0.get_version_num() != 1 {
            return Ok(vec![]);
        }
        let mut found: Vec<(UserId, String)> = rows::<(i32, String)>(
            self.store
                .exec(&self.st.select_reactions, (timeuuid(message),))
                .await?,
        )?
        .into_iter()
        .map(|(u, r)| (UserId(u), r))
        .collect();
        found.sort();
        Ok(found)
    }

    /// Rows of the room's `messages_by_room` partition (soft-deleted included).
    pub async fn message_count(&self, room: RoomId) -> StoreResult<u64> {
        let (n,): (i64,) = first_row(
            self.store
                .exec(&self.st.count_room_messages, (room.0,))
                .await?,
        )?
        .unwrap_or((0,));
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One message as stored: `(sender, content, type, deleted)`.
    pub async fn message(
        &self,
        room: RoomId,
        id: MessageId,
    ) -> StoreResult<Option<(UserId, Vec<u8>, String, bool)>> {
        if id.0.get_version_num() != 1 {
            return Ok(None);
        }
        let row: Option<(i32, Vec<u8>, String, Option<bool>)> = first_row(
            self.store
                .exec(&self.st.select_message, (room.0, timeuuid(id)))
                .await?,
        )?;
        Ok(row.map(|(s, c, t, d)| (UserId(s), c, t, d == Some(true))))
    }

    pub async fn room_exists(&self, room: RoomId) -> StoreResult<bool> {
        Ok(
            first_row::<(Uuid,)>(self.store.exec(&self.st.select_room, (room.0,)).await?)?
                .is_some(),
        )
    }

    /// Rooms (`room_details`) and messages (`messages_by_room`) in the keyspace: full scans
    /// (paged), for `status` on modest tables; use `validate` per room on large ones.
    pub async fn table_counts(&self) -> StoreResult<(u64, u64)> {
        let mut counts = [0u64; 2];
        for (i, table) in ["room_details", "messages_by_room"].iter().enumerate() {
            let cql = format!("SELECT room_id FROM {}.{table}", self.keyspace);
            let mut stream = self
                .store
                .session
                .query_iter(cql, &[])
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .rows_stream::<(Uuid,)>()
                .map_err(decode)?;
            while let Some(row) = stream.next().await {
                row.map_err(|e| StoreError::Unavailable(e.to_string()))?;
                counts[i] += 1;
            }
        }
        Ok((counts[0], counts[1]))
    }
}

/// `--cql-address-map`: listed broadcast addresses are replaced, any other is used as it is
/// (the driver's own map refuses unlisted addresses, which breaks a node whose broadcast
/// address is already reachable).
#[derive(Debug)]
struct AddressMap(HashMap<SocketAddr, SocketAddr>);

#[async_trait::async_trait]
impl scylla::policies::address_translator::AddressTranslator for AddressMap {
    async fn translate_address(
        &self,
        peer: &scylla::policies::address_translator::UntranslatedPeer,
    ) -> Result<SocketAddr, scylla::errors::TranslationError> {
        let addr = peer.untranslated_address();
        Ok(self.0.get(&addr).copied().unwrap_or(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageIdGenerator;

    #[test]
    fn consistency_levels_parse() {
        assert_eq!(
            parse_consistency("local_quorum"),
            Ok(Consistency::LocalQuorum)
        );
        assert_eq!(parse_consistency("LOCAL_ONE"), Ok(Consistency::LocalOne));
        assert_eq!(parse_consistency("One"), Ok(Consistency::One));
        assert!(parse_consistency("most").is_err());
    }

    #[test]
    fn lower_bound_is_below_every_id_at_or_after_the_time() {
        let ids = MessageIdGenerator::default();
        let id = ids.next();
        let at = id.created_at().expect("time");
        let bound = timeuuid_lower_bound(at);
        assert!(bound < timeuuid(id), "CQL timeuuid order");
        let bound_time = message_id(bound).created_at().expect("time");
        assert!(bound_time < at && at - bound_time <= chrono::Duration::milliseconds(2));
    }
}
