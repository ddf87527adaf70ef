//! The CQL schema and applying it: append-only versioned statements recorded in
//! `schema_version`.

use super::*;

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
    // Push device tokens; a write is stamped with its time, so the latest write of a token wins
    // (and a deletion at the same time, as in PostgreSQL). `push_token`: `token` is a CQL
    // keyword.
    "CREATE TABLE IF NOT EXISTS {ks}.device_tokens_by_user (
        user_id int, push_token text, platform text, registered_at bigint,
        PRIMARY KEY ((user_id), push_token)
    )",
];

pub(super) const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS {ks}.schema_version (
    component text, version int, statement text, applied_at timestamp,
    PRIMARY KEY ((component), version)
) WITH CLUSTERING ORDER BY (version DESC)";
pub(super) const COMPONENT: &str = "chat-service";

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
