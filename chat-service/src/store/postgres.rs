//! The PostgreSQL store (sqlx). Schema: `chat-service/migrations/`, embedded in the binary and
//! applied by `serve` at start and by `migrate-schema`.
//!
//! Over 600 lines: every query of the PostgreSQL store, one `ChatStore` method each, with the row
//! types they read.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    ChatStore, DeviceToken, HistoryPage, NewMessage, NewRoom, PageRequest, Platform, READ_CHUNK,
    ReadChunk, Role, RoomAccess, RoomType, RoomView, StoreError, StoreResult, StoredMessage,
};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a request waits for a pooled connection before the store reports `Unavailable`:
/// short, so that a database outage turns into fast 503s and a failing `/readyz`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

/// Maps sqlx errors to what a caller can act on.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::RowNotFound => StoreError::NotFound("row".into()),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // Retry-later conditions. Class 08: connection exception; 57P01..03: shutting down
            // or starting up; 57014: statement cancelled; 53300: too many connections;
            // 40001/40P01: serialization failure, deadlock.
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("57P0")
                    || ["57014", "53300", "40001", "40P01"].contains(&code) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            Some("23505") => StoreError::Conflict(e.to_string()),
            // A referenced row disappeared under the write (the constraint text stays in logs).
            Some("23503") => StoreError::NotFound("the room or message referenced".into()),
            _ => StoreError::Internal(e.to_string()),
        },
        _ => StoreError::Internal(e.to_string()),
    }
}

#[derive(sqlx::FromRow)]
struct RoomRow {
    id: Uuid,
    name: String,
    room_type: String,
    created_at: DateTime<Utc>,
    is_pinned: bool,
    last_message_at: Option<DateTime<Utc>>,
    unread_count: i64,
    participants: Vec<i32>,
}

impl RoomRow {
    fn into_view(self) -> StoreResult<RoomView> {
        let room_type = RoomType::parse(&self.room_type).ok_or_else(|| {
            StoreError::Internal(format!(
                "room {} has unknown type {:?}",
                self.id, self.room_type
            ))
        })?;
        Ok(RoomView {
            id: RoomId(self.id),
            name: self.name,
            room_type,
            participants: self.participants.into_iter().map(UserId).collect(),
            created_at: self.created_at,
            last_message_at: self.last_message_at,
            is_pinned: self.is_pinned,
            unread_count: u64::try_from(self.unread_count).unwrap_or(0),
        })
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    room_id: Uuid,
    sender_id: i32,
    content: Vec<u8>,
    message_type: String,
    created_at: DateTime<Utc>,
}

impl From<MessageRow> for StoredMessage {
    fn from(r: MessageRow) -> Self {
        StoredMessage {
            id: MessageId(r.id),
            room_id: RoomId(r.room_id),
            sender_id: UserId(r.sender_id),
            content: r.content,
            message_type: r.message_type,
            created_at: r.created_at,
        }
    }
}

/// Columns of a [`RoomRow`]; needs `r` (room), `m` (the viewer's membership, may be null) and
/// `lm` ([`last_message_join`]).
macro_rules! room_columns {
    () => {
        "r.id, r.name, r.type as room_type, r.created_at, coalesce(m.is_pinned, false) as is_pinned, \
         lm.created_at as last_message_at, \
         coalesce((select count(*) from room_message u \
                    where u.room_id = r.id and u.sender_id <> m.user_id and u.deleted_at is null \
                      and u.created_at >= m.joined_at \
                      and not exists (select 1 from room_message_read x \
                                       where x.message_id = u.id and x.user_id = m.user_id)), 0) as unread_count, \
         array(select p.user_id from room_member p where p.room_id = r.id and p.removed_at is null order by p.user_id) as participants"
    };
}

/// The room's newest message time (one index probe on `room_message_room_created`).
macro_rules! last_message_join {
    () => {
        "left join lateral (select created_at from room_message \
           where room_id = r.id and deleted_at is null order by created_at desc, id desc limit 1) lm on true"
    };
}

/// Selects [`MessageRow`]s.
macro_rules! message_select {
    () => {
        "select id, room_id, sender_id, content, type as message_type, created_at from room_message "
    };
}

/// Read receipts for the room's messages `$3` (ids), except deleted ones and the reader's own,
/// and the reader's `last_read_at` moved up to the newest newly-read message. `$1` room,
/// `$2` reader, `$4` time.
const MARK_READ: &str = "with marked as (
       insert into room_message_read (message_id, user_id, read_at)
       select id, $2, $4 from room_message
        where room_id = $1 and deleted_at is null and sender_id <> $2 and id = any($3)
       on conflict do nothing
       returning message_id),
     newest as (
       select count(*) as n, max(rm.created_at) as at
         from marked join room_message rm on rm.id = marked.message_id),
     bump as (
       update room_member set last_read_at = greatest(last_read_at, newest.at)
         from newest
        where room_id = $1 and user_id = $2 and newest.at is not null
        returning 1)
     select n from newest";

/// A `since` chunk (`$1` room, `$2` since, `$3` chunk size) and one message past it, which tells
/// where the next chunk starts. Follows `room_message_room_created`: a call reads at most
/// `$3 + 1` rows, however long the room.
const READ_CHUNK_SQL: &str = "select id, created_at from room_message
      where room_id = $1 and deleted_at is null and created_at >= $2
      order by created_at, id
      limit $3 + 1";

impl PgStore {
    /// Connects a pool of at most `max_connections`; fails when the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(classify)?;
        Ok(PgStore { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        PgStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that are not applied yet (takes an advisory lock, so
    /// replicas starting together do not race).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// [`ChatStore::insert_message`] and an outbox entry (the same write for the other store) in
    /// one transaction: the message commits if and only if its entry does, so a crash after the
    /// commit never loses the secondary write (the replayer makes it). Returns the entry's id.
    pub async fn insert_message_with_outbox(
        &self,
        message: NewMessage,
        entry: &crate::store::outbox::NewEntry,
    ) -> StoreResult<(StoredMessage, i64)> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let stored = insert_message_on(&mut tx, message).await?;
        let id = crate::store::outbox::insert_entry(&mut tx, entry)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok((stored, id))
    }

    /// Registers a device token unless legacy holds a later write of it; true if it applied.
    /// (The rollback command's copy counts with it.)
    pub async fn register_device_applied(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        // Strictly later: a replay of the same registration changes nothing, and a deletion at
        // the same time wins.
        sqlx::query(
            "insert into device_token (user_id, token, platform, updated_at, deleted)
             values ($1, $2, $3, $4, false)
             on conflict (user_id, token) do update
                set platform = excluded.platform, updated_at = excluded.updated_at, deleted = false
              where device_token.updated_at < excluded.updated_at",
        )
        .bind(user)
        .bind(token)
        .bind(platform.as_str())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(classify)
        .map(|done| done.rows_affected() > 0)
    }
}

#[async_trait::async_trait]
impl ChatStore for PgStore {
    fn database(&self) -> &'static str {
        "postgres"
    }

    fn pool_connections(&self) -> Option<(u32, u32)> {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        Some((self.pool.size().saturating_sub(idle), idle))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query::<sqlx::Postgres>("select 1")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<RoomView> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query::<sqlx::Postgres>(
            "insert into room (id, name, type, created_by, created_at) values ($1, $2, $3, $4, $5)",
        )
        .bind(room.id)
        .bind(&room.name)
        .bind(room.room_type.as_str())
        .bind(room.created_by)
        .bind(room.created_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let members: Vec<i32> = room.participants.iter().map(|u| u.0).collect();
        sqlx::query::<sqlx::Postgres>(
            "insert into room_member (room_id, user_id, role, joined_at)
             select $1, u, case when u = $3 then 'owner' else 'member' end, $4 from unnest($2::int4[]) as u",
        )
        .bind(room.id)
        .bind(&members)
        .bind(room.created_by)
        .bind(room.created_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
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
            unread_count: 0,
        })
    }

    async fn get_room(&self, room: RoomId, viewer: UserId) -> StoreResult<RoomView> {
        const SQL: &str = concat!(
            "select ",
            room_columns!(),
            " from room r left join room_member m on m.room_id = r.id and m.user_id = $2 and m.removed_at is null ",
            last_message_join!(),
            " where r.id = $1"
        );
        let row = sqlx::query_as::<sqlx::Postgres, RoomRow>(SQL)
            .bind(room)
            .bind(viewer)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.ok_or_else(|| StoreError::NotFound(format!("room {room}")))?
            .into_view()
    }

    async fn room_access(&self, room: RoomId, user: UserId) -> StoreResult<RoomAccess> {
        // The inner select is null for a non-member; a member's null role is read as `member`.
        let row: Option<(String, Option<String>)> =
            sqlx::query_as::<sqlx::Postgres, (String, Option<String>)>(
                "select r.type, (select coalesce(m.role, 'member') from room_member m
                              where m.room_id = r.id and m.user_id = $2 and m.removed_at is null)
               from room r where r.id = $1",
            )
            .bind(room)
            .bind(user)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        let (room_type, role) = row.ok_or_else(|| StoreError::NotFound(format!("room {room}")))?;
        let room_type = RoomType::parse(&room_type).ok_or_else(|| {
            StoreError::Internal(format!("room {room} has unknown type {room_type:?}"))
        })?;
        Ok(RoomAccess {
            room_type,
            role: role.map(|r| Role::parse(Some(&r))),
        })
    }

    async fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreResult<(Vec<RoomView>, u64)> {
        const PAGE: &str = concat!(
            "select ",
            room_columns!(),
            " from room_member m join room r on r.id = m.room_id ",
            last_message_join!(),
            " where m.user_id = $1 and m.removed_at is null
              order by m.is_pinned desc, coalesce(lm.created_at, r.created_at) desc, r.id desc
              limit $2 offset $3"
        );
        const TOTAL: &str =
            "select count(*) from room_member where user_id = $1 and removed_at is null";
        let rows = sqlx::query_as::<sqlx::Postgres, RoomRow>(PAGE)
            .bind(user)
            .bind(i64::from(page.limit))
            .bind(page.offset())
            .fetch_all(&self.pool);
        let total = sqlx::query_scalar::<sqlx::Postgres, i64>(TOTAL)
            .bind(user)
            .fetch_one(&self.pool);
        let (rows, total) = tokio::try_join!(rows, total).map_err(classify)?;
        let rooms = rows
            .into_iter()
            .map(RoomRow::into_view)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((rooms, u64::try_from(total).unwrap_or(0)))
    }

    async fn room_ids_for_user(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        let ids = sqlx::query_scalar::<sqlx::Postgres, Uuid>(
            "select room_id from room_member where user_id = $1 and removed_at is null",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(ids.into_iter().map(RoomId).collect())
    }

    async fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreResult<bool> {
        let done = sqlx::query::<sqlx::Postgres>("update room_member set removed_at = $3 where room_id = $1 and user_id = $2 and removed_at is null")
            .bind(room)
            .bind(user)
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    /// True for a current member, also when an earlier or later pin makes this one moot (the
    /// latest `at` wins, whatever order pins arrive in).
    async fn set_pinned(
        &self,
        room: RoomId,
        user: UserId,
        pinned: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let member: Option<bool> = sqlx::query_scalar::<sqlx::Postgres, bool>(
            "with pin as (
                update room_member set is_pinned = $3, pinned_at = $4
                 where room_id = $1 and user_id = $2 and removed_at is null
                   and (pinned_at is null or pinned_at <= $4)
             returning 1)
             select exists(select 1 from pin)
                 or exists(select 1 from room_member where room_id = $1 and user_id = $2 and removed_at is null)",
        )
        .bind(room)
        .bind(user)
        .bind(pinned)
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(member.unwrap_or(false))
    }

    async fn insert_message(&self, message: NewMessage) -> StoreResult<StoredMessage> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        insert_message_on(&mut conn, message).await
    }

    async fn history(
        &self,
        room: RoomId,
        _viewer: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        const FIRST: &str = concat!(
            message_select!(),
            "where room_id = $1 and deleted_at is null order by created_at desc, id desc limit $2"
        );
        // Row-value comparison: strictly older than the cursor in (created_at, id) order, so
        // equal timestamps neither repeat nor skip a message, and no OFFSET is needed.
        const BEFORE: &str = concat!(
            message_select!(),
            "where room_id = $1 and deleted_at is null and (created_at, id) < ($3, $4) order by created_at desc, id desc limit $2"
        );
        let fetch = i64::from(limit) + 1;
        let rows = match before {
            None => {
                sqlx::query_as::<sqlx::Postgres, MessageRow>(FIRST)
                    .bind(room)
                    .bind(fetch)
                    .fetch_all(&self.pool)
                    .await
            }
            Some(cursor) => {
                // The cursor's position; a deleted cursor message still marks a position.
                let at = sqlx::query_scalar::<sqlx::Postgres, DateTime<Utc>>(
                    "select created_at from room_message where id = $1 and room_id = $2",
                )
                .bind(cursor)
                .bind(room)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?
                .ok_or_else(|| {
                    StoreError::NotFound(format!(
                        "message {cursor} (the `before` cursor) in room {room}"
                    ))
                })?;
                sqlx::query_as::<sqlx::Postgres, MessageRow>(BEFORE)
                    .bind(room)
                    .bind(fetch)
                    .bind(at)
                    .bind(cursor)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(classify)?;
        Ok(HistoryPage::from_rows(
            rows.into_iter().map(Into::into).collect(),
            limit,
        ))
    }

    async fn read_chunk(
        &self,
        room: RoomId,
        _reader: UserId,
        since: DateTime<Utc>,
    ) -> StoreResult<ReadChunk> {
        let rows = sqlx::query_as::<_, (Uuid, DateTime<Utc>)>(READ_CHUNK_SQL)
            .bind(room)
            .bind(since)
            .bind(READ_CHUNK as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        let next_since = rows.get(READ_CHUNK).map(|(_, at)| *at);
        Ok(ReadChunk {
            ids: rows
                .into_iter()
                .take(READ_CHUNK)
                .map(|(id, _)| MessageId(id))
                .collect(),
            next_since,
        })
    }

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        ids: Vec<MessageId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let ids: Vec<Uuid> = ids.into_iter().map(|id| id.0).collect();
        let n = sqlx::query_scalar::<_, i64>(MARK_READ)
            .bind(room)
            .bind(user)
            .bind(ids)
            .bind(at)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = sqlx::query::<sqlx::Postgres>(
            "insert into room_message_reaction (message_id, user_id, reaction, created_at) values ($1, $2, $3, $4) on conflict do nothing",
        )
        .bind(message)
        .bind(user)
        .bind(reaction)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }

    async fn message_room(&self, message: MessageId) -> StoreResult<RoomId> {
        let room = sqlx::query_scalar::<sqlx::Postgres, Uuid>(
            "select room_id from room_message where id = $1 and deleted_at is null",
        )
        .bind(message)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        room.map(RoomId)
            .ok_or_else(|| StoreError::NotFound(format!("message {message}")))
    }

    async fn register_device(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.register_device_applied(user, token, platform, at)
            .await
            .map(drop)
    }

    async fn delete_device(
        &self,
        user: UserId,
        token: String,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        // A tombstone, so that a registration older than this deletion arriving later (an
        // outbox replay) does not bring the token back.
        sqlx::query(
            "insert into device_token (user_id, token, platform, updated_at, deleted)
             values ($1, $2, '', $3, true)
             on conflict (user_id, token) do update
                set updated_at = excluded.updated_at, deleted = true
              where device_token.updated_at <= excluded.updated_at",
        )
        .bind(user)
        .bind(token)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceToken>> {
        let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
            "select token, platform, updated_at from device_token
              where user_id = $1 and not deleted order by token collate \"C\"",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter()
            .map(|(token, platform, registered_at)| {
                Ok(DeviceToken {
                    token,
                    platform: Platform::stored(user, &platform)?,
                    registered_at,
                })
            })
            .collect()
    }
}

/// Inserts `message` unless its id is already stored (a retried or replayed write), on `conn`
/// (a pooled connection or an open transaction). The same id must mean the same message.
async fn insert_message_on(
    conn: &mut sqlx::PgConnection,
    message: NewMessage,
) -> StoreResult<StoredMessage> {
    let inserted = sqlx::query::<sqlx::Postgres>(
        "insert into room_message (id, room_id, sender_id, content, type, created_at) values ($1, $2, $3, $4, $5, $6)
         on conflict (id) do nothing",
    )
    .bind(message.id)
    .bind(message.room_id)
    .bind(message.sender_id)
    .bind(&message.content)
    .bind(&message.message_type)
    .bind(message.created_at)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    if inserted.rows_affected() == 1 {
        return Ok(message.into());
    }
    let existing: StoredMessage =
        sqlx::query_as::<sqlx::Postgres, MessageRow>(concat!(message_select!(), "where id = $1"))
            .bind(message.id)
            .fetch_one(&mut *conn)
            .await
            .map_err(classify)?
            .into();
    if existing.room_id != message.room_id || existing.sender_id != message.sender_id {
        return Err(StoreError::Conflict(format!(
            "message id {} already belongs to another message",
            message.id
        )));
    }
    Ok(existing)
}
