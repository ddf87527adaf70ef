//! Database metrics around every store call, in one place: wrap any [`ChatStore`] in
//! [`Instrumented`] and each operation counts into `chat_database_operations_total` and times
//! into `chat_database_operation_duration_seconds`, labelled with the inner store's database.
//!
//! `status` is `error` only for failures of the database itself (unavailable, internal);
//! a `NotFound` or `Conflict` is the database answering correctly about the data.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::ids::{MessageId, RoomId, UserId};
use crate::metrics::Metrics;
use crate::store::{
    ChatStore, DeviceToken, HistoryPage, NewMessage, NewRoom, PageRequest, Platform, ReadChunk,
    RoomAccess, RoomView, StoreError, StoreResult, StoredMessage,
};

pub struct Instrumented<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S: ChatStore> Instrumented<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Instrumented { inner, metrics }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn observe<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let start = Instant::now();
        let result = call.await;
        let success = !matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Internal(_))
        );
        self.metrics
            .database_operation(self.inner.database(), operation, success, start.elapsed());
        result
    }
}

#[async_trait::async_trait]
impl<S: ChatStore> ChatStore for Instrumented<S> {
    fn database(&self) -> &'static str {
        self.inner.database()
    }

    fn read_scope(&self, viewer: UserId) -> String {
        self.inner.read_scope(viewer)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.observe("ping", self.inner.ping()).await
    }

    fn pool_connections(&self) -> Option<(u32, u32)> {
        self.inner.pool_connections()
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<RoomView> {
        self.observe("create_room", self.inner.create_room(room))
            .await
    }

    async fn get_room(&self, room: RoomId, viewer: UserId) -> StoreResult<RoomView> {
        self.observe("get_room", self.inner.get_room(room, viewer))
            .await
    }

    async fn room_access(&self, room: RoomId, user: UserId) -> StoreResult<RoomAccess> {
        self.observe("room_access", self.inner.room_access(room, user))
            .await
    }

    async fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreResult<(Vec<RoomView>, u64)> {
        self.observe("rooms_for_user", self.inner.rooms_for_user(user, page))
            .await
    }

    async fn room_ids_for_user(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        self.observe("room_ids_for_user", self.inner.room_ids_for_user(user))
            .await
    }

    async fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreResult<bool> {
        self.observe("leave_room", self.inner.leave_room(room, user, at))
            .await
    }

    async fn set_pinned(
        &self,
        room: RoomId,
        user: UserId,
        pinned: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.observe("set_pinned", self.inner.set_pinned(room, user, pinned, at))
            .await
    }

    async fn insert_message(&self, message: NewMessage) -> StoreResult<StoredMessage> {
        self.observe("insert_message", self.inner.insert_message(message))
            .await
    }

    async fn history(
        &self,
        room: RoomId,
        viewer: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        self.observe("history", self.inner.history(room, viewer, before, limit))
            .await
    }

    async fn read_chunk(
        &self,
        room: RoomId,
        reader: UserId,
        since: DateTime<Utc>,
    ) -> StoreResult<ReadChunk> {
        self.observe("read_chunk", self.inner.read_chunk(room, reader, since))
            .await
    }

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        ids: Vec<MessageId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        self.observe("mark_read", self.inner.mark_read(room, user, ids, at))
            .await
    }

    async fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.observe("react", self.inner.react(message, user, reaction, at))
            .await
    }

    async fn message_room(&self, message: MessageId) -> StoreResult<RoomId> {
        self.observe("message_room", self.inner.message_room(message))
            .await
    }

    async fn register_device(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.observe(
            "register_device",
            self.inner.register_device(user, token, platform, at),
        )
        .await
    }

    async fn delete_device(
        &self,
        user: UserId,
        token: String,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.observe("delete_device", self.inner.delete_device(user, token, at))
            .await
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceToken>> {
        self.observe("devices", self.inner.devices(user)).await
    }
}
