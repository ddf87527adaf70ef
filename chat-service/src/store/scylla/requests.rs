//! The request path: connecting, and each `ChatStore` call as CQL statements.
//!
//! Over 600 lines: one method per `ChatStore` call of the request path.

use super::*;

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

    pub(super) async fn exec(
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
    pub(super) async fn batch_in_partition<V>(
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

    /// The user's unread counter for the room; 0 when never written. A counter below 0 (a
    /// decrement whose increment was lost: counters are at most once) reads as 0.
    pub(super) async fn unread_count(&self, room: RoomId, user: UserId) -> StoreResult<u64> {
        let row = first_row::<(Option<scylla::value::Counter>,)>(
            self.exec(&self.st.select_unread, (user.0, room.0)).await?,
        )?;
        let count = row.and_then(|(c,)| c).map_or(0, |c| c.0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// A room's details. A row with only `last_message_at` is no room: a message for a room
    /// this store never received (created before dual-write, not backfilled yet) updates it.
    pub(super) async fn room_row(&self, room: RoomId) -> StoreResult<RoomRow> {
        type Partial = (Option<String>, Option<String>, Option<i64>, Option<i64>);
        match first_row::<Partial>(self.exec(&self.st.select_room, (room.0,)).await?)? {
            Some((Some(name), Some(room_type), Some(created_at), last)) => {
                Ok((name, room_type, created_at, last))
            }
            _ => Err(StoreError::NotFound(format!("room {room}"))),
        }
    }

    /// Current members, ascending (the clustering order).
    pub(super) async fn members(&self, room: RoomId) -> StoreResult<Vec<UserId>> {
        let rows =
            rows::<(i32, Option<i64>)>(self.exec(&self.st.select_participants, (room.0,)).await?)?;
        Ok(rows
            .into_iter()
            .filter(|(_, removed)| removed.is_none())
            .map(|(u, _)| UserId(u))
            .collect())
    }

    /// The user's rooms from `rooms_by_user`. A row without `type` is the remains of a row
    /// deleted on leave that a concurrent send's fan-out updated again: not a membership.
    pub(super) async fn user_rooms(
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

    /// Whether `user` has a membership row in `room` without a leave time.
    async fn is_current_member(&self, room: RoomId, user: UserId) -> StoreResult<bool> {
        Ok(matches!(
            first_row::<(Option<i64>,)>(
                self.exec(&self.st.select_participant, (room.0, user.0))
                    .await?,
            )?,
            Some((None,))
        ))
    }

    pub(super) async fn read_message(
        &self,
        room: RoomId,
        id: MessageId,
    ) -> StoreResult<Option<(i32, Vec<u8>, String, Option<bool>)>> {
        first_row(
            self.exec(&self.st.select_message, (room.0, timeuuid(id)))
                .await?,
        )
    }

    /// Last activity on the room and in each member's `rooms_by_user`; with `count`, +1 unread
    /// for each member but the sender.
    pub(super) async fn fan_out(&self, message: &NewMessage, count: bool) -> StoreResult<()> {
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
}

/// Whether the claim applied; if not, that the existing claim is this message's.
pub(super) fn applied_claim(result: QueryResult, message: &NewMessage) -> StoreResult<bool> {
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

#[async_trait::async_trait]
impl ChatStore for CqlStore {
    fn database(&self) -> &'static str {
        "scylladb"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.exec(&self.st.ping, ()).await?;
        Ok(())
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<RoomView> {
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
            unread_count: 0,
        })
    }

    async fn get_room(&self, room: RoomId, viewer: UserId) -> StoreResult<RoomView> {
        let pinned = async {
            Ok(first_row::<(Option<bool>,)>(
                self.exec(&self.st.select_user_room, (viewer.0, room.0))
                    .await?,
            )?
            .and_then(|(p,)| p)
            .unwrap_or(false))
        };
        let ((name, room_type, created_at, last_message_at), participants, is_pinned, unread) = tokio::try_join!(
            self.room_row(room),
            self.members(room),
            pinned,
            self.unread_count(room, viewer)
        )?;
        // A non-member's counter (kept after leaving) is not theirs to see.
        let unread_count = if participants.contains(&viewer) {
            unread
        } else {
            0
        };
        Ok(RoomView {
            id: room,
            name,
            room_type: parse_type(room, &room_type)?,
            participants,
            created_at: from_micros(created_at)?,
            last_message_at: last_message_at.map(from_micros).transpose()?,
            is_pinned,
            unread_count,
        })
    }

    async fn room_access(&self, room: RoomId, user: UserId) -> StoreResult<RoomAccess> {
        let member = async {
            first_row::<(Option<i64>, Option<String>)>(
                self.exec(&self.st.select_participant_role, (room.0, user.0))
                    .await?,
            )
        };
        let ((_, room_type, _, _), member) = tokio::try_join!(self.room_row(room), member)?;
        Ok(RoomAccess {
            room_type: parse_type(room, &room_type)?,
            role: match member {
                Some((None, role)) => Some(Role::parse(role.as_deref())),
                _ => None,
            },
        })
    }

    async fn rooms_for_user(
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
                let (participants, unread_count) =
                    tokio::try_join!(self.members(room), self.unread_count(room, user))?;
                Ok::<_, StoreError>(RoomView {
                    id: room,
                    name,
                    room_type: parse_type(room, &ty)?,
                    participants,
                    created_at: from_micros(created)?,
                    last_message_at: last.map(from_micros).transpose()?,
                    is_pinned,
                    unread_count,
                })
            },
        ))
        .buffered(FAN_OUT)
        .try_collect::<Vec<_>>()
        .await?;
        Ok((views, total))
    }

    async fn room_ids_for_user(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        Ok(self
            .user_rooms(user)
            .await?
            .into_iter()
            .map(|r| RoomId(r.0))
            .collect())
    }

    async fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreResult<bool> {
        // The LWT's condition on a missing row would insert one: check existence first.
        if !self.is_current_member(room, user).await? {
            return Ok(false);
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

    /// Only for a current member: an update on a room the user left would create a row of the
    /// user's room list holding nothing but the pin (such a row is never listed: no type).
    async fn set_pinned(
        &self,
        room: RoomId,
        user: UserId,
        pinned: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        if !self.is_current_member(room, user).await? {
            return Ok(false);
        }
        self.exec(&self.st.set_pinned, (micros(at), pinned, user.0, room.0))
            .await?;
        Ok(true)
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
    async fn insert_message(&self, message: NewMessage) -> StoreResult<StoredMessage> {
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

    async fn history(
        &self,
        room: RoomId,
        _viewer: UserId,
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

    /// The messages a `since` marker covers: oldest first from `since`, deleted ones left out
    /// (PostgreSQL's index leaves them out too), pages read until the chunk and one message past
    /// it are found or the room ends.
    async fn read_chunk(
        &self,
        room: RoomId,
        _reader: UserId,
        since: DateTime<Utc>,
    ) -> StoreResult<ReadChunk> {
        type Row = (CqlTimeuuid, i32, Option<bool>);
        let mut found: Vec<MessageId> = Vec::new();
        let mut after: Option<CqlTimeuuid> = None;
        loop {
            let result = match after {
                None => {
                    let lower = timeuuid_lower_bound(since);
                    self.exec(&self.st.messages_from, (room.0, lower, SCAN_ROWS))
                        .await?
                }
                Some(a) => {
                    self.exec(&self.st.messages_after, (room.0, a, SCAN_ROWS))
                        .await?
                }
            };
            let batch = rows::<Row>(result)?;
            let done = batch.len() < SCAN_ROWS as usize;
            after = batch.last().map(|r| r.0);
            found.extend(
                batch
                    .into_iter()
                    .filter(|(_, _, deleted)| *deleted != Some(true))
                    .map(|(id, _, _)| message_id(id))
                    .filter(|id| id.created_at().is_some_and(|t| t >= since)),
            );
            if done || found.len() > READ_CHUNK {
                break;
            }
        }
        let next_since = found.get(READ_CHUNK).and_then(|id| id.created_at());
        found.truncate(READ_CHUNK);
        Ok(ReadChunk {
            ids: found,
            next_since,
        })
    }

    /// Read markers are written after reading which exist; two concurrent marks of the same
    /// messages by the same member may both count them (the markers themselves stay exact).
    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        ids: Vec<MessageId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        type Row = (CqlTimeuuid, i32, Option<bool>);
        // Only time-based ids can be messages; others are ignored like ids of other rooms.
        let ids: Vec<CqlTimeuuid> = ids
            .iter()
            .filter(|id| id.0.get_version_num() == 1)
            .map(|id| timeuuid(*id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let candidates: Vec<CqlTimeuuid> =
            rows::<Row>(self.exec(&self.st.messages_in, (room.0, ids)).await?)?
                .into_iter()
                .filter(|(_, sender, deleted)| *sender != user.0 && *deleted != Some(true))
                .map(|r| r.0)
                .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let already: HashSet<CqlTimeuuid> = rows::<(CqlTimeuuid,)>(
            self.exec(&self.st.read_in, (room.0, user.0, candidates.clone()))
                .await?,
        )?
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

    async fn react(
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

    async fn message_room(&self, message: MessageId) -> StoreResult<RoomId> {
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

    async fn register_device(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let us = micros(at);
        self.exec(
            &self.st.register_device,
            (user.0, token, platform.as_str(), us, us),
        )
        .await?;
        Ok(())
    }

    async fn delete_device(
        &self,
        user: UserId,
        token: String,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.exec(&self.st.delete_device, (micros(at), user.0, token))
            .await?;
        Ok(())
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceToken>> {
        let found: Vec<(String, String, i64)> =
            rows(self.exec(&self.st.select_devices, (user.0,)).await?)?;
        found
            .into_iter()
            .map(|(token, platform, registered_at)| {
                Ok(DeviceToken {
                    platform: Platform::stored(user, &platform)?,
                    token,
                    registered_at: from_micros(registered_at)?,
                })
            })
            .collect()
    }
}
