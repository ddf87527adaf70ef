//! The write operations of the [`ChatStore`] trait as values: [`WriteOp`] (an operation with
//! its arguments, what an outbox entry records and a replay makes again), [`Write`] (an
//! operation paired with the type its caller gets back) and [`Settlement`] (what one attempt of
//! a write on a secondary store means for its outbox entry).

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    ChatStore, NewMessage, NewRoom, Platform, ReadMarker, RoomType, RoomView, StoreError,
    StoreResult, StoredMessage,
};

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
    SetPinned {
        room: RoomId,
        user: UserId,
        pinned: bool,
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
    /// No ordering key: each store keeps the latest write of a token, in any arrival order.
    RegisterDevice {
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    },
    DeleteDevice {
        user: UserId,
        token: String,
        at: DateTime<Utc>,
    },
}

/// What a write returned (the trait's writes return different types).
#[derive(Clone, Debug)]
pub enum Applied {
    Room(RoomView),
    Message(StoredMessage),
    Changed(bool),
    Count(u64),
}

/// A write and the type its caller gets back: the router makes the write through its
/// [`WriteOp`] (what the outbox records and replays) and answers with a `T`. Built only by the
/// constructors below, each pairing an operation with the answer the trait gives for it.
#[derive(Clone, Debug)]
pub struct Write<T> {
    op: WriteOp,
    answer: PhantomData<fn() -> T>,
}

/// A write's answer, taken from what the store returned for its operation.
pub trait Answer: Sized {
    fn from_applied(applied: Applied) -> Option<Self>;
}

impl Answer for RoomView {
    fn from_applied(applied: Applied) -> Option<Self> {
        match applied {
            Applied::Room(room) => Some(room),
            _ => None,
        }
    }
}

impl Answer for StoredMessage {
    fn from_applied(applied: Applied) -> Option<Self> {
        match applied {
            Applied::Message(message) => Some(message),
            _ => None,
        }
    }
}

impl Answer for bool {
    fn from_applied(applied: Applied) -> Option<Self> {
        match applied {
            Applied::Changed(changed) => Some(changed),
            _ => None,
        }
    }
}

impl Answer for u64 {
    fn from_applied(applied: Applied) -> Option<Self> {
        match applied {
            Applied::Count(count) => Some(count),
            _ => None,
        }
    }
}

/// Device writes answer nothing.
impl Answer for () {
    fn from_applied(_: Applied) -> Option<Self> {
        Some(())
    }
}

impl<T> Write<T> {
    fn new(op: WriteOp) -> Self {
        Write {
            op,
            answer: PhantomData,
        }
    }

    pub fn into_op(self) -> WriteOp {
        self.op
    }
}

impl<T: Answer> Write<T> {
    /// The caller's answer from what the first store returned for the write `op` (its name).
    pub fn answer(op: &'static str, applied: Applied) -> StoreResult<T> {
        T::from_applied(applied).ok_or_else(|| {
            StoreError::Internal(format!(
                "{op} returned the answer of another write (a bug in the store)"
            ))
        })
    }
}

impl Write<RoomView> {
    pub fn create_room(room: &NewRoom) -> Self {
        Self::new(WriteOp::create_room(room))
    }
}

impl Write<StoredMessage> {
    pub fn insert_message(message: &NewMessage) -> Self {
        Self::new(WriteOp::insert_message(message))
    }
}

impl Write<u64> {
    pub fn mark_read(room: RoomId, user: UserId, ids: &[MessageId], at: DateTime<Utc>) -> Self {
        Self::new(WriteOp::mark_read(room, user, ids, at))
    }
}

impl Write<bool> {
    pub fn leave_room(room: RoomId, user: UserId, at: DateTime<Utc>) -> Self {
        Self::new(WriteOp::LeaveRoom { room, user, at })
    }

    pub fn set_pinned(room: RoomId, user: UserId, pinned: bool, at: DateTime<Utc>) -> Self {
        Self::new(WriteOp::SetPinned {
            room,
            user,
            pinned,
            at,
        })
    }

    pub fn react(message: MessageId, user: UserId, reaction: String, at: DateTime<Utc>) -> Self {
        Self::new(WriteOp::React {
            message,
            user,
            reaction,
            at,
            room: None,
        })
    }
}

impl Write<()> {
    pub fn register_device(
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new(WriteOp::RegisterDevice {
            user,
            token,
            platform,
            at,
        })
    }

    pub fn delete_device(user: UserId, token: String, at: DateTime<Utc>) -> Self {
        Self::new(WriteOp::DeleteDevice { user, token, at })
    }
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

    pub fn mark_read(room: RoomId, user: UserId, ids: &[MessageId], at: DateTime<Utc>) -> Self {
        WriteOp::MarkRead {
            room,
            user,
            ids: Some(ids.to_vec()),
            since: None,
            at,
        }
    }

    /// The `op` column.
    pub fn name(&self) -> &'static str {
        match self {
            WriteOp::CreateRoom { .. } => "create_room",
            WriteOp::LeaveRoom { .. } => "leave_room",
            WriteOp::SetPinned { .. } => "set_pinned",
            WriteOp::InsertMessage { .. } => "insert_message",
            WriteOp::MarkRead { .. } => "mark_read",
            WriteOp::React { .. } => "react",
            WriteOp::RegisterDevice { .. } => "register_device",
            WriteOp::DeleteDevice { .. } => "delete_device",
        }
    }

    /// The ordering key (`room_id` column).
    pub fn room(&self) -> Option<RoomId> {
        match self {
            WriteOp::CreateRoom { id, .. } => Some(*id),
            WriteOp::LeaveRoom { room, .. }
            | WriteOp::SetPinned { room, .. }
            | WriteOp::MarkRead { room, .. } => Some(*room),
            WriteOp::InsertMessage { room_id, .. } => Some(*room_id),
            WriteOp::React { room, .. } => *room,
            WriteOp::RegisterDevice { .. } | WriteOp::DeleteDevice { .. } => None,
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
            WriteOp::SetPinned {
                room,
                user,
                pinned,
                at,
            } => Applied::Changed(store.set_pinned(room, user, pinned, at).await?),
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
                    // Recorded before `since` markers were resolved to their chunk's ids.
                    (None, Some(t)) => ReadMarker::Since(t),
                    (None, None) => ReadMarker::Ids(Vec::new()),
                };
                Applied::Count(
                    crate::store::mark_read(store, room, user, marker, at)
                        .await?
                        .updated,
                )
            }
            WriteOp::React {
                message,
                user,
                reaction,
                at,
                ..
            } => Applied::Changed(store.react(message, user, reaction, at).await?),
            WriteOp::RegisterDevice {
                user,
                token,
                platform,
                at,
            } => {
                store.register_device(user, token, platform, at).await?;
                Applied::Changed(true)
            }
            WriteOp::DeleteDevice { user, token, at } => {
                store.delete_device(user, token, at).await?;
                Applied::Changed(true)
            }
        })
    }

    /// [`WriteOp::apply`] as a secondary write (inline or replayed). A leave or a pin that
    /// changes nothing because the store does not have the room yet has **not** landed: counted
    /// as done, the room's creation still on its way would bring the member back (or unpinned).
    /// It fails with `NotFound` and waits in the outbox behind the creation.
    pub async fn apply_on_secondary(&self, store: &dyn ChatStore) -> StoreResult<Applied> {
        let applied = self.apply(store).await?;
        let member_write = match self {
            WriteOp::LeaveRoom { room, user, .. } | WriteOp::SetPinned { room, user, .. } => {
                Some((*room, *user))
            }
            _ => None,
        };
        if let (Some((room, user)), Applied::Changed(false)) = (member_write, &applied) {
            match store.room_access(room, user).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => {
                    return Err(StoreError::NotFound(format!(
                        "room {room} (its creation has not reached this store; the {} of user {user} waits for it)",
                        self.name()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(applied)
    }

    /// What `result` of this write on a secondary means for its outbox entry. A `Conflict` on
    /// `create_room` is the room already being there (a replay of a write that went through, or
    /// whose answer was lost). `NotFound` on any other write is its room (or message) not there
    /// yet: created before dual writes began, the backfill brings it, and the write waits.
    pub fn settlement(&self, result: &StoreResult<Applied>) -> Settlement {
        let create = matches!(self, WriteOp::CreateRoom { .. });
        match result {
            Ok(_) => Settlement::Landed,
            Err(StoreError::Conflict(_)) if create => Settlement::Landed,
            Err(StoreError::NotFound(what)) if !create => {
                Settlement::AwaitsPrerequisite(format!("{what} not found"))
            }
            Err(e) => Settlement::Failed(e.to_string()),
        }
    }
}

/// What one attempt of a secondary write means for its outbox entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    /// The store holds the write: the entry is done.
    Landed,
    /// The room or message the write refers to is not on the store yet: the entry waits for it
    /// without spending attempts (see [`ReplayConfig::max_wait`]).
    AwaitsPrerequisite(String),
    /// The write failed: the entry spends an attempt.
    Failed(String),
}

impl Settlement {
    /// Why the write did not land (None when it did).
    pub fn error(&self) -> Option<&str> {
        match self {
            Settlement::Landed => None,
            Settlement::AwaitsPrerequisite(e) | Settlement::Failed(e) => Some(e),
        }
    }
}
