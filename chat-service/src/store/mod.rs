//! The chat store: one trait shaped around the API's queries (not around tables), so that a
//! PostgreSQL store, a ScyllaDB store with query-first tables, and a migration router that
//! writes to both can each sit behind it without the handlers changing.
//!
//! Rules every implementation keeps:
//! * The store never sees plaintext: [`NewMessage::content`] is already sealed (see `crypto`).
//! * Ids and times are chosen by the caller, so the same message written to two stores has the
//!   same id and `created_at`, and a retried write is idempotent.
//! * Membership is "has a `room_member` row without `removed_at`".
//! * Errors are typed: [`StoreError::NotFound`] for what the request named and does not exist,
//!   [`StoreError::InvalidArgument`] for a request this store can never answer (e.g. a cursor
//!   that cannot be one of its keys), [`StoreError::Unavailable`] when the database cannot be
//!   reached (retry later), and [`StoreError::Internal`] for everything that needs an operator.

pub mod cql_outbox;
pub mod devices;
pub mod health_watch;
pub mod instrumented;
pub mod outbox;
pub mod page;
pub mod postgres;
pub mod room_cache;
pub mod router;
pub mod scylla;
pub mod shadow;
pub mod write;

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, RoomId, UserId};
pub use devices::{DeviceToken, Platform};
pub use page::{HistoryPage, PageRequest};

/// Now, truncated to microseconds: PostgreSQL's `timestamptz` resolution, so a time returned
/// to a client equals the stored one.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    t.with_nanosecond(t.nanosecond() - t.nanosecond() % 1_000)
        .unwrap_or(t)
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Boxed so the trait is object safe: handlers hold an `Arc<dyn ChatStore>` and the store can be
/// chosen at start-up (one store, or a router over two).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// The request names something this store cannot hold (the caller's mistake, not the data's).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Internal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomType {
    Group,
    P2p,
}

impl RoomType {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomType::Group => "group",
            RoomType::P2p => "p2p",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "group" => Some(RoomType::Group),
            "p2p" => Some(RoomType::P2p),
            _ => None,
        }
    }
}

/// A room to create; `participants` already holds the creator, without duplicates.
#[derive(Clone, Debug)]
pub struct NewRoom {
    pub id: RoomId,
    pub name: String,
    pub room_type: RoomType,
    pub created_by: UserId,
    pub participants: Vec<UserId>,
    pub created_at: DateTime<Utc>,
}

/// A room as one of its members sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomView {
    pub id: RoomId,
    pub name: String,
    pub room_type: RoomType,
    /// Current members, ascending.
    pub participants: Vec<UserId>,
    pub created_at: DateTime<Utc>,
    pub last_message_at: Option<DateTime<Utc>>,
    /// The viewer's own pin.
    pub is_pinned: bool,
    /// Messages of others the viewer has not marked read since joining (0 for a non-member).
    /// The CQL store keeps it as a counter, at most once per message: shadow reads do not
    /// compare it.
    pub unread_count: u64,
}

/// A member's role in a room: its creator owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May remove other participants of a group (`LeaveRoom` with `participants`/`leaveAll`).
    Owner,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }

    /// The stored text; anything but `owner` (a legacy row's empty or unknown role included)
    /// grants no more than membership.
    pub fn parse(text: Option<&str>) -> Role {
        match text {
            Some("owner") => Role::Owner,
            _ => Role::Member,
        }
    }
}

/// What a user may do in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomAccess {
    pub room_type: RoomType,
    /// The user's role while a current member; None for anyone else.
    pub role: Option<Role>,
}

impl RoomAccess {
    pub fn is_member(&self) -> bool {
        self.role.is_some()
    }
}

#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub sender_id: UserId,
    /// Sealed content (`nonce || ciphertext || tag`).
    pub content: Vec<u8>,
    pub message_type: String,
    pub created_at: DateTime<Utc>,
}

/// A stored message; `content` is still sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub sender_id: UserId,
    #[serde(with = "crate::crypto::base64_bytes")]
    pub content: Vec<u8>,
    pub message_type: String,
    pub created_at: DateTime<Utc>,
}

impl From<NewMessage> for StoredMessage {
    fn from(m: NewMessage) -> Self {
        StoredMessage {
            id: m.id,
            room_id: m.room_id,
            sender_id: m.sender_id,
            content: m.content,
            message_type: m.message_type,
            created_at: m.created_at,
        }
    }
}

/// Which messages a MarkMessagesAsRead covers. Messages the reader sent are never marked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadMarker {
    /// These messages (ids of other rooms are ignored).
    Ids(Vec<MessageId>),
    /// The room's oldest [`READ_CHUNK`] messages created at or after this time. A call's cost is
    /// bounded by the chunk, not by the room: `since: 1970` on a room of years walks it one
    /// chunk per call, following [`MarkedRead::next_since`].
    Since(DateTime<Utc>),
}

/// How many messages one `since` marker covers (any sender; deleted messages are not counted).
pub const READ_CHUNK: usize = 500;

/// The messages a `since` marker covers, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadChunk {
    pub ids: Vec<MessageId>,
    /// Where the next chunk starts (the creation time of the first message left out), when the
    /// range holds more than one chunk.
    pub next_since: Option<DateTime<Utc>>,
}

/// What a MarkMessagesAsRead did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkedRead {
    /// Messages newly marked read.
    pub updated: u64,
    /// See [`ReadChunk::next_since`].
    pub next_since: Option<DateTime<Utc>>,
}

/// Marks what `marker` covers read by `user`. A `since` marker is resolved to its chunk's ids
/// first, so that every store a write reaches (dual writes, outbox replays) marks the same
/// messages, whatever else it holds.
pub async fn mark_read(
    store: &dyn ChatStore,
    room: RoomId,
    user: UserId,
    marker: ReadMarker,
    at: DateTime<Utc>,
) -> StoreResult<MarkedRead> {
    let (ids, next_since) = match marker {
        ReadMarker::Ids(ids) => (ids, None),
        ReadMarker::Since(since) => {
            let chunk = store.read_chunk(room, user, since).await?;
            (chunk.ids, chunk.next_since)
        }
    };
    let updated = if ids.is_empty() {
        0
    } else {
        store.mark_read(room, user, ids, at).await?
    };
    Ok(MarkedRead {
        updated,
        next_since,
    })
}

#[async_trait::async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// The `database` label of this store's metrics, e.g. `postgres`.
    fn database(&self) -> &'static str;

    /// Which data `viewer`'s reads are served from, as a cache key part: a cached answer is
    /// only ever served to a read of the same scope. One store's is its name; the migration
    /// router's names the side serving the viewer and the flag generation (and notes the
    /// viewer's cohort for the request's metrics, as a read it serves would).
    fn read_scope(&self, viewer: UserId) -> String {
        let _ = viewer;
        self.database().to_string()
    }

    /// Cheap round trip for readiness.
    async fn ping(&self) -> StoreResult<()>;

    /// Connections of the store's pool: `(in use, idle)`, where the store keeps a pool it can
    /// count (PostgreSQL); `None` otherwise.
    fn pool_connections(&self) -> Option<(u32, u32)> {
        None
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<RoomView>;

    /// The room with its current members, as `viewer` sees it. NotFound if no such room.
    async fn get_room(&self, room: RoomId, viewer: UserId) -> StoreResult<RoomView>;

    /// The room's type and whether `user` is a current member. NotFound if no such room.
    async fn room_access(&self, room: RoomId, user: UserId) -> StoreResult<RoomAccess>;

    /// A page of the user's rooms, pinned first, then by latest activity (last message, else
    /// creation), and the user's total number of rooms.
    async fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreResult<(Vec<RoomView>, u64)>;

    /// Every room the user is a member of (for event streams).
    async fn room_ids_for_user(&self, user: UserId) -> StoreResult<Vec<RoomId>>;

    /// Ends the user's membership; false if they were not a member.
    async fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreResult<bool>;

    /// Pins the room at the top of the user's room list, or unpins it; false if the user is not
    /// a member. Setting the state the room already has is not an error.
    async fn set_pinned(
        &self,
        room: RoomId,
        user: UserId,
        pinned: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Stores a message. Idempotent by id: writing the same message again returns the stored one.
    async fn insert_message(&self, message: NewMessage) -> StoreResult<StoredMessage>;

    /// Up to `limit` messages of the room older than `before` (a message id of this room;
    /// NotFound otherwise), newest first, ordered by `(created_at, id)` descending, as read for
    /// `viewer` (the router serves them from the viewer's cohort; a store answers every viewer
    /// alike: access is the handler's check).
    async fn history(
        &self,
        room: RoomId,
        viewer: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<HistoryPage>;

    /// The messages a `since` marker of `reader` covers (see [`ReadMarker::Since`]).
    async fn read_chunk(
        &self,
        room: RoomId,
        reader: UserId,
        since: DateTime<Utc>,
    ) -> StoreResult<ReadChunk>;

    /// Marks these messages of the room read by `user` (ids of other rooms, deleted messages and
    /// the user's own are skipped); returns how many were newly marked.
    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        ids: Vec<MessageId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Adds `user`'s `reaction` to a message; false if it was already there.
    async fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// The room a (not deleted) message belongs to. NotFound if no such message.
    async fn message_room(&self, message: MessageId) -> StoreResult<RoomId>;

    /// Registers (or registers again, with a new platform) a push device token of `user`,
    /// unless the store holds a later write of that token (see [`devices`]).
    async fn register_device(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Deletes a device token of `user` (a token never registered is not an error), unless the
    /// store holds a later write of it.
    async fn delete_device(
        &self,
        user: UserId,
        token: String,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// The user's registered device tokens, by token.
    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceToken>>;
}
