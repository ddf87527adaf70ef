//! The backfill and validate writers and readers (not on the request path).
//!
//! Just over 600 lines: every bulk statement the backfill and validate jobs make on the CQL
//! store (rooms, members, messages, reactions, read markers, device tokens), kept apart from
//! the request path's statements.

use std::collections::BTreeMap;

use super::*;

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
    /// The member's pin (`rooms_by_user`); false for a member who left.
    pub pinned: bool,
}

/// A `messages_by_room` row as `validate` compares it: `(sender, content, type, deleted)`.
pub type StoredRow = (UserId, Vec<u8>, String, bool);

/// How many messages' reactions one `IN` request reads.
const REACTIONS_PER_REQUEST: usize = 100;

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
pub(super) struct BackfillStatements {
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
    select_pin: PreparedStatement,
    count_read_markers: PreparedStatement,
    select_reactions: PreparedStatement,
    select_reactions_in: PreparedStatement,
    select_room_messages: PreparedStatement,
    insert_device: PreparedStatement,
}

/// The backfill's and validator's view of a [`CqlStore`] ([`CqlStore::backfill`]).
pub struct CqlBackfill<'a> {
    pub(super) store: &'a CqlStore,
    st: BackfillStatements,
    pub(super) keyspace: String,
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
            select_pin: p("SELECT is_pinned FROM {ks}.rooms_by_user WHERE user_id = ? AND room_id = ?").await?,
            count_read_markers: p("SELECT count(*) FROM {ks}.read_markers WHERE room_id = ? AND user_id = ?").await?,
            select_reactions: p("SELECT user_id, reaction FROM {ks}.reactions_by_message WHERE message_id = ?").await?,
            select_reactions_in: p("SELECT message_id, user_id, reaction FROM {ks}.reactions_by_message WHERE message_id IN ?").await?,
            select_room_messages: p("SELECT message_id, sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ?").await?,
            insert_device: p("INSERT INTO {ks}.device_tokens_by_user (user_id, push_token, platform, registered_at) VALUES (?, ?, ?, ?) USING TIMESTAMP ?").await?,
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

    /// Writes a user's device tokens (`device_tokens_by_user`, one unlogged batch), stamped
    /// `ts`: a registration or deletion the live path made later wins.
    pub async fn write_devices(
        &self,
        user: UserId,
        devices: &[DeviceToken],
        ts: i64,
    ) -> StoreResult<()> {
        let rows: Vec<_> = devices
            .iter()
            .map(|d| {
                (
                    user.0,
                    d.token.as_str(),
                    d.platform.as_str(),
                    micros(d.registered_at),
                    ts,
                )
            })
            .collect();
        self.store
            .batch_in_partition(&self.st.insert_device, rows)
            .await
    }

    /// Writes reactions (`reactions_by_message`, one unlogged batch per message), every cell
    /// stamped `ts`. Reactions to messages whose id is not a timeuuid cannot be keyed: skipped.
    pub async fn write_reactions(
        &self,
        reactions: &[BackfillReaction],
        ts: i64,
    ) -> StoreResult<()> {
        let rows = reactions
            .iter()
            .filter(|r| r.message_id.0.get_version_num() == 1)
            .map(|r| {
                let row = (
                    timeuuid(r.message_id),
                    r.user_id.0,
                    r.reaction.as_str(),
                    micros(r.created_at),
                    ts,
                );
                (r.message_id, row)
            });
        self.batch_per_partition(&self.st.insert_reaction, rows)
            .await
    }

    /// Writes read markers (`read_markers`, one unlogged batch per reader), every cell stamped
    /// `ts`; markers of messages whose id is not a timeuuid are skipped.
    pub async fn write_read_markers(
        &self,
        room: RoomId,
        markers: &[BackfillReadMarker],
        ts: i64,
    ) -> StoreResult<()> {
        let rows = markers
            .iter()
            .filter(|m| m.message_id.0.get_version_num() == 1)
            .map(|m| {
                let row = (
                    room.0,
                    m.user_id.0,
                    timeuuid(m.message_id),
                    micros(m.read_at),
                    ts,
                );
                (m.user_id, row)
            });
        self.batch_per_partition(&self.st.insert_read_marker, rows)
            .await
    }

    /// Writes `rows`, each with its partition key, one unlogged batch per run of rows of the same
    /// partition (the callers' rows come grouped: a message's reactions, a reader's markers),
    /// [`FAN_OUT`] partitions at once.
    async fn batch_per_partition<K: PartialEq, V>(
        &self,
        statement: &PreparedStatement,
        rows: impl Iterator<Item = (K, V)>,
    ) -> StoreResult<()>
    where
        V: scylla::serialize::row::SerializeRow,
    {
        let mut partitions: Vec<(K, Vec<V>)> = Vec::new();
        for (key, row) in rows {
            match partitions.last_mut() {
                Some((k, rows)) if *k == key => rows.push(row),
                _ => partitions.push((key, vec![row])),
            }
        }
        futures::stream::iter(
            partitions
                .into_iter()
                .map(|(_, rows)| self.store.batch_in_partition(statement, rows)),
        )
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
        futures::stream::iter(rows.into_iter().map(
            |(user, role, joined, removed, last_read)| async move {
                // A pin lives in the member's room list, which a leave deletes.
                let pinned = if removed.is_none() {
                    first_row::<(Option<bool>,)>(
                        self.store.exec(&self.st.select_pin, (user, room.0)).await?,
                    )?
                    .and_then(|(p,)| p)
                    .unwrap_or(false)
                } else {
                    false
                };
                Ok::<_, StoreError>(CqlMember {
                    user_id: UserId(user),
                    role,
                    joined_at: joined.map(from_micros).transpose()?,
                    removed_at: removed.map(from_micros).transpose()?,
                    last_read: last_read.map(message_id),
                    pinned,
                })
            },
        ))
        .buffered(FAN_OUT)
        .try_collect()
        .await
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

    /// `(user, reaction)` of each of `messages` that has any, sorted: one request per
    /// [`REACTIONS_PER_REQUEST`] messages instead of one per message.
    pub async fn reactions_of(
        &self,
        messages: &[MessageId],
    ) -> StoreResult<BTreeMap<MessageId, Vec<(UserId, String)>>> {
        let ids: Vec<CqlTimeuuid> = messages
            .iter()
            .filter(|m| m.0.get_version_num() == 1)
            .map(|m| timeuuid(*m))
            .collect();
        let mut found: BTreeMap<MessageId, Vec<(UserId, String)>> = BTreeMap::new();
        for chunk in ids.chunks(REACTIONS_PER_REQUEST) {
            let rows = rows::<(CqlTimeuuid, i32, String)>(
                self.store
                    .exec(&self.st.select_reactions_in, (chunk,))
                    .await?,
            )?;
            for (message, user, reaction) in rows {
                found
                    .entry(MessageId(Uuid::from(message)))
                    .or_default()
                    .push((UserId(user), reaction));
            }
        }
        for reactions in found.values_mut() {
            reactions.sort();
        }
        Ok(found)
    }

    /// Every message of the room as stored, `(sender, content, type, deleted)` by id: the
    /// room's partition read in pages.
    pub async fn room_messages(&self, room: RoomId) -> StoreResult<BTreeMap<MessageId, StoredRow>> {
        let mut stream = self
            .store
            .session
            .execute_iter(self.st.select_room_messages.clone(), (room.0,))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .rows_stream::<(CqlTimeuuid, i32, Vec<u8>, String, Option<bool>)>()
            .map_err(decode)?;
        let mut messages = BTreeMap::new();
        while let Some(row) = stream.next().await {
            let (id, sender, content, kind, deleted) =
                row.map_err(|e| StoreError::Unavailable(e.to_string()))?;
            messages.insert(
                MessageId(Uuid::from(id)),
                (UserId(sender), content, kind, deleted == Some(true)),
            );
        }
        Ok(messages)
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
    pub async fn message(&self, room: RoomId, id: MessageId) -> StoreResult<Option<StoredRow>> {
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

    /// A user's registered device tokens (for `validate`).
    pub async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceToken>> {
        ChatStore::devices(self.store, user).await
    }

    /// Every user with a device token in the keyspace (its partition keys; paged).
    pub async fn device_users(&self) -> StoreResult<Vec<UserId>> {
        let cql = format!(
            "SELECT DISTINCT user_id FROM {}.device_tokens_by_user",
            self.keyspace
        );
        let mut stream = self
            .store
            .session
            .query_iter(cql, &[])
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .rows_stream::<(i32,)>()
            .map_err(decode)?;
        let mut users = Vec::new();
        while let Some(row) = stream.next().await {
            let (user,) = row.map_err(|e| StoreError::Unavailable(e.to_string()))?;
            users.push(UserId(user));
        }
        Ok(users)
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
