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
    RoomAccess, RoomView, StoreError, StoreFuture, StoredMessage,
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

    fn observe<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        call: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let start = Instant::now();
            let result = call.await;
            let success = !matches!(
                result,
                Err(StoreError::Unavailable(_) | StoreError::Internal(_))
            );
            self.metrics.database_operation(
                self.inner.database(),
                operation,
                success,
                start.elapsed(),
            );
            result
        })
    }
}

impl<S: ChatStore> ChatStore for Instrumented<S> {
    fn database(&self) -> &'static str {
        self.inner.database()
    }

    fn read_scope(&self, viewer: UserId) -> String {
        self.inner.read_scope(viewer)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.observe("ping", self.inner.ping())
    }

    fn pool_connections(&self) -> Option<(u32, u32)> {
        self.inner.pool_connections()
    }

    fn create_room(&self, room: NewRoom) -> StoreFuture<'_, RoomView> {
        self.observe("create_room", self.inner.create_room(room))
    }

    fn get_room(&self, room: RoomId, viewer: UserId) -> StoreFuture<'_, RoomView> {
        self.observe("get_room", self.inner.get_room(room, viewer))
    }

    fn room_access(&self, room: RoomId, user: UserId) -> StoreFuture<'_, RoomAccess> {
        self.observe("room_access", self.inner.room_access(room, user))
    }

    fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreFuture<'_, (Vec<RoomView>, u64)> {
        self.observe("rooms_for_user", self.inner.rooms_for_user(user, page))
    }

    fn room_ids_for_user(&self, user: UserId) -> StoreFuture<'_, Vec<RoomId>> {
        self.observe("room_ids_for_user", self.inner.room_ids_for_user(user))
    }

    fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreFuture<'_, bool> {
        self.observe("leave_room", self.inner.leave_room(room, user, at))
    }

    fn set_pinned(
        &self,
        room: RoomId,
        user: UserId,
        pinned: bool,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, bool> {
        self.observe("set_pinned", self.inner.set_pinned(room, user, pinned, at))
    }

    fn insert_message(&self, message: NewMessage) -> StoreFuture<'_, StoredMessage> {
        self.observe("insert_message", self.inner.insert_message(message))
    }

    fn history(
        &self,
        room: RoomId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreFuture<'_, HistoryPage> {
        self.observe("history", self.inner.history(room, before, limit))
    }

    fn read_chunk(
        &self,
        room: RoomId,
        reader: UserId,
        since: DateTime<Utc>,
    ) -> StoreFuture<'_, ReadChunk> {
        self.observe("read_chunk", self.inner.read_chunk(room, reader, since))
    }

    fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        ids: Vec<MessageId>,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, u64> {
        self.observe("mark_read", self.inner.mark_read(room, user, ids, at))
    }

    fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, bool> {
        self.observe("react", self.inner.react(message, user, reaction, at))
    }

    fn message_room(&self, message: MessageId) -> StoreFuture<'_, RoomId> {
        self.observe("message_room", self.inner.message_room(message))
    }

    fn register_device(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, ()> {
        self.observe(
            "register_device",
            self.inner.register_device(user, token, platform, at),
        )
    }

    fn delete_device(&self, user: UserId, token: String, at: DateTime<Utc>) -> StoreFuture<'_, ()> {
        self.observe("delete_device", self.inner.delete_device(user, token, at))
    }

    fn devices(&self, user: UserId) -> StoreFuture<'_, Vec<DeviceToken>> {
        self.observe("devices", self.inner.devices(user))
    }
}
