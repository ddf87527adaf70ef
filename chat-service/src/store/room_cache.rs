//! The room cache: GetRoom and GetRooms answered from Redis, as the original system's room
//! cache did, without serving a view a write has made out of date, or one read from the other
//! side of a migration's split.
//!
//! How an out-of-date view is ruled out (cache-aside, with stamps on Redis's own clock):
//! * Every room and every user has a *stamp*: the Redis server time (µs) of the last write that
//!   changed a view of it. The store wrapper in [`Role::Stamps`] sets them after every write a
//!   store accepted — the API's, a dual write's second store, an outbox replay — (see
//!   [`stamps_of`]): a message or a departure stamps the room; a pin, a read marker, a room
//!   joined or left stamps the user.
//! * A cached view records the Redis time taken *before* the store was read, and the stamps it
//!   depends on: the room's and the viewer's for GetRoom; the user's and every listed room's
//!   for GetRooms (cached only when the page lists all the user's rooms, see
//!   [`cacheable_list`]). It is served only while all of them are older. A write that lands while a
//!   view is being read stamps after that time, so a view that may have missed it is never
//!   served.
//! * A stamp Redis no longer holds (evicted, expired) counts as a write now: it is set when
//!   first missed, so nothing cached before can be served.
//! * The keys of cached views carry the read scope ([`ChatStore::read_scope`]): the store, and
//!   behind the migration router the side serving the viewer and the flag generation. Once the
//!   flags move, nothing cached before is read again.
//!
//! Redis is an optimisation, never a dependency: a read Redis does not answer goes to the store
//! (`chat_cache_operations_total{operation="get",status="error"}`). A write whose stamps Redis
//! did not take (`invalidate`/`error`) keeps them pending: they are set again before this
//! instance reads the cache, and every health tick, until Redis takes them. Until then other
//! instances that still reach Redis may serve the views that write changed, at most until
//! their TTL. Batch commands (`backfill`, `rollback`) write around the cache: what they copy is
//! read through it once the flags have moved (a new scope), or after the TTL.
//!
//! Over 600 lines: the cache is one store layer, and like the others it implements every
//! `ChatStore` method (read through, or stamp what a write changed); its unit tests are at the
//! bottom.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::ids::{MessageId, RoomId, UserId};
use crate::metrics::{CacheOutcome, Metrics};
use crate::store::{
    ChatStore, DeviceToken, HistoryPage, NewMessage, NewRoom, PageRequest, Platform, ReadChunk,
    RoomAccess, RoomView, StoreResult, StoredMessage,
};

/// How long one Redis call may take before the store answers instead: a cache slower than
/// the database is worse than none.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Sets the stamps in KEYS to the server's time in µs: always (ARGV[2] = `always`, a write), or
/// only where missing (`missing`, first sight). Its time is taken when it runs, after the
/// write it stamps was accepted.
const STAMP_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
for _, key in ipairs(KEYS) do
  if ARGV[2] == 'always' then
    redis.call('SET', key, now, 'EX', ARGV[1])
  else
    redis.call('SET', key, now, 'EX', ARGV[1], 'NX')
  end
end
return now
";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The URL itself is not printed: it may hold a password.
    #[error("invalid --redis-url: {0}; expected redis://[:password@]host:port[/db]")]
    Url(#[source] redis::RedisError),
}

/// Why one cache call gave no answer (the store answers instead).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

/// A view as cached: what it is, when its read started, and the stamps it depends on.
#[derive(Serialize, Deserialize)]
struct Cached<T> {
    /// Redis time (µs) taken before the store was read.
    read_at: u64,
    stamps: Vec<String>,
    value: T,
}

/// What a lookup found.
enum Lookup<T> {
    Hit(T),
    /// Read the store; cache its answer as read at `read_at`.
    Miss {
        read_at: u64,
    },
    /// Redis did not answer: read the store, cache nothing.
    Unavailable,
}

/// The Redis side: lookups, stores and stamps, with their metrics.
pub struct RoomCache {
    conn: ConnectionManager,
    ttl: Duration,
    metrics: Arc<Metrics>,
    stamp: redis::Script,
    /// Stamps of accepted writes Redis did not take yet (see the module docs).
    pending: std::sync::Mutex<BTreeSet<String>>,
}

/// Pending stamps kept at most; past it the oldest are dropped (their views stay cached until
/// their TTL), so an outage cannot grow memory without bound.
const MAX_PENDING: usize = 100_000;

impl RoomCache {
    /// Connects lazily: the service starts, and serves from its store, while Redis is down.
    pub fn connect(url: &str, ttl: Duration, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(CacheError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(CacheError::Url)?;
        Ok(RoomCache {
            conn,
            ttl: ttl.max(Duration::from_secs(1)),
            metrics,
            stamp: redis::Script::new(STAMP_SCRIPT),
            pending: std::sync::Mutex::new(BTreeSet::new()),
        })
    }

    /// A round trip, for the health watch; sets pending stamps once Redis answers.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        let up = self
            .call(ping.query_async::<String>(&mut conn))
            .await
            .is_ok();
        if up {
            let _ = self.flush_pending().await;
        }
        up
    }

    fn take_pending(&self) -> Vec<String> {
        match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending).into_iter().collect(),
            Err(_) => Vec::new(),
        }
    }

    fn keep_pending(&self, keys: Vec<String>) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.extend(keys);
            while pending.len() > MAX_PENDING {
                pending.pop_first();
            }
        }
    }

    /// Sets the pending stamps; on failure they stay pending.
    async fn flush_pending(&self) -> Result<(), CallError> {
        let keys = self.take_pending();
        if keys.is_empty() {
            return Ok(());
        }
        match self.run_stamp(&keys, true).await {
            Ok(()) => {
                tracing::info!(
                    stamps = keys.len(),
                    "room cache: stamps of writes made while Redis did not answer are set"
                );
                Ok(())
            }
            Err(e) => {
                self.keep_pending(keys);
                Err(e)
            }
        }
    }

    /// Stamps kept twice as long as views: a view never outlives a stamp it depends on.
    fn stamp_ttl_secs(&self) -> u64 {
        2 * self.ttl.as_secs()
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn run_stamp(&self, keys: &[String], always: bool) -> Result<(), CallError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.stamp.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation
            .arg(self.stamp_ttl_secs())
            .arg(if always { "always" } else { "missing" });
        self.call(invocation.invoke_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }

    /// After a write a store accepted: the views it changed are out of date from now on.
    async fn stamp_write(&self, keys: Vec<String>) {
        match self.run_stamp(&keys, true).await {
            Ok(()) => self.metrics.cache(CacheOutcome::Invalidated),
            Err(e) => {
                self.metrics.cache(CacheOutcome::InvalidateError);
                warn!(error = %e, stamps = keys.len(), "room cache: Redis did not take a write's stamps; kept pending until it does");
                self.keep_pending(keys);
            }
        }
    }

    /// The cached view under `key` if every stamp it depends on predates its read. `known` (at
    /// least one) are stamps the caller knows it depends on (read in the same round trip).
    async fn lookup<T: DeserializeOwned>(&self, key: &str, known: &[String]) -> Lookup<T> {
        match self.try_lookup(key, known).await {
            Ok(lookup) => lookup,
            Err(e) => {
                tracing::debug!(error = %e, "room cache: lookup failed; the store answers");
                Lookup::Unavailable
            }
        }
    }

    async fn try_lookup<T: DeserializeOwned>(
        &self,
        key: &str,
        known: &[String],
    ) -> Result<Lookup<T>, CallError> {
        // This instance's own writes are never hidden by a view cached before them.
        self.flush_pending().await?;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("TIME").cmd("MGET").arg(known);
        let (cached, (secs, micros), mut seen): (Option<String>, (u64, u64), Vec<Option<u64>>) =
            self.call(pipe.query_async(&mut conn)).await?;
        let now = secs * 1_000_000 + micros;
        let missing: Vec<String> = known
            .iter()
            .zip(&seen)
            .filter(|(_, stamp)| stamp.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            self.run_stamp(&missing, false).await?;
            return Ok(Lookup::Miss { read_at: now });
        }
        let Some(cached) = cached.and_then(|c| serde_json::from_str::<Cached<T>>(&c).ok()) else {
            return Ok(Lookup::Miss { read_at: now });
        };
        let extra: Vec<String> = cached
            .stamps
            .iter()
            .filter(|s| !known.contains(s))
            .cloned()
            .collect();
        if !extra.is_empty() {
            let more: Vec<Option<u64>> = self
                .call(redis::cmd("MGET").arg(&extra).query_async(&mut conn))
                .await?;
            seen.extend(more);
        }
        let fresh = seen.len() == known.len() + extra.len()
            && seen
                .iter()
                .all(|stamp| stamp.is_some_and(|at| at < cached.read_at));
        Ok(if fresh {
            Lookup::Hit(cached.value)
        } else {
            Lookup::Miss { read_at: now }
        })
    }

    /// Caches `value` as read at `read_at`, depending on `stamps` (set where missing first).
    async fn store<T: Serialize>(&self, key: &str, read_at: u64, stamps: Vec<String>, value: T) {
        let result = async {
            self.run_stamp(&stamps, false).await?;
            let cached = Cached {
                read_at,
                stamps,
                value,
            };
            let Ok(json) = serde_json::to_string(&cached) else {
                return Ok(());
            };
            let mut conn = self.conn.clone();
            self.call(
                redis::cmd("SET")
                    .arg(key)
                    .arg(json)
                    .arg("EX")
                    .arg(self.ttl.as_secs())
                    .query_async::<()>(&mut conn),
            )
            .await
        }
        .await;
        match result {
            Ok(()) => self.metrics.cache(CacheOutcome::Set),
            Err(e) => {
                self.metrics.cache(CacheOutcome::SetError);
                tracing::debug!(error = %e, "room cache: could not cache a view");
            }
        }
    }

    /// Answers from the cache, else from `load` (and caches its answer). `known` stamps are
    /// read with the view; `derived` adds those only the answer names, or is None for an answer
    /// that depends on more than its stamps can say (it is not cached).
    async fn read_through<T, L, D>(
        &self,
        key: String,
        known: Vec<String>,
        load: L,
        derived: D,
    ) -> StoreResult<T>
    where
        T: Serialize + DeserializeOwned + Clone,
        L: Future<Output = StoreResult<T>>,
        D: FnOnce(&T) -> Option<Vec<String>>,
    {
        match self.lookup::<T>(&key, &known).await {
            Lookup::Hit(value) => {
                self.metrics.cache(CacheOutcome::Hit);
                Ok(value)
            }
            Lookup::Miss { read_at } => {
                self.metrics.cache(CacheOutcome::Miss);
                let value = load.await?;
                if let Some(more) = derived(&value) {
                    let mut stamps = known;
                    stamps.extend(more);
                    self.store(&key, read_at, stamps, value.clone()).await;
                }
                Ok(value)
            }
            Lookup::Unavailable => {
                self.metrics.cache(CacheOutcome::GetError);
                load.await
            }
        }
    }
}

fn room_stamp(room: RoomId) -> String {
    format!("chat:stamp:room:{room}")
}

fn user_stamp(user: UserId) -> String {
    format!("chat:stamp:user:{user}")
}

fn room_key(scope: &str, room: RoomId, viewer: UserId) -> String {
    format!("chat:room:{scope}:{room}:{viewer}")
}

fn rooms_key(scope: &str, user: UserId, page: PageRequest) -> String {
    format!("chat:rooms:{scope}:{user}:{}:{}", page.page, page.limit)
}

/// The stamps a page of a user's rooms depends on, if it can be cached. The order of the list
/// depends on every room of the user (a message in a room not on the page can move it onto
/// the page), so a page is cached only when it lists all of them, or none (a page past the
/// end, which only a room joined or left changes: the user's stamp).
fn cacheable_list((rooms, total): &(Vec<RoomView>, u64)) -> Option<Vec<String>> {
    let listed_all = rooms.len() as u64 == *total;
    (listed_all || rooms.is_empty()).then(|| rooms.iter().map(|r| room_stamp(r.id)).collect())
}

/// What a write a store accepted changed in cached views: everyone's view of these rooms
/// (members, last message, unread counts) and these users' own views (their room lists, pins,
/// read markers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub rooms: Vec<RoomId>,
    pub users: Vec<UserId>,
}

/// The stamps a write sets, as Redis keys, deduplicated.
pub fn stamps_of(touched: &Touched) -> Vec<String> {
    let keys: BTreeSet<String> = touched
        .rooms
        .iter()
        .map(|r| room_stamp(*r))
        .chain(touched.users.iter().map(|u| user_stamp(*u)))
        .collect();
    keys.into_iter().collect()
}

/// Which part a [`Cached`] wrapper plays around its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Answers GetRoom / GetRooms from the cache (above the migration router: the router's
    /// read scope keys them).
    Reads,
    /// Stamps what every accepted write changed (around each store behind the router, so a
    /// dual write's second store and an outbox replay stamp too).
    Stamps,
    /// Both, around a single store.
    Both,
}

/// A store with the room cache in the given [`Role`].
pub struct CachedStore {
    inner: Arc<dyn ChatStore>,
    cache: Arc<RoomCache>,
    role: Role,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn ChatStore>, cache: Arc<RoomCache>, role: Role) -> Self {
        CachedStore { inner, cache, role }
    }

    /// `store` with the cache in `role`, or `store` itself without a cache.
    pub fn wrap(
        store: Arc<dyn ChatStore>,
        cache: Option<&Arc<RoomCache>>,
        role: Role,
    ) -> Arc<dyn ChatStore> {
        match cache {
            Some(cache) => Arc::new(CachedStore::new(store, cache.clone(), role)),
            None => store,
        }
    }

    fn reads(&self) -> bool {
        matches!(self.role, Role::Reads | Role::Both)
    }

    /// Runs a write; once the store accepted it, stamps what it changed.
    async fn write<T>(
        &self,
        call: impl Future<Output = StoreResult<T>>,
        touched: Touched,
    ) -> StoreResult<T> {
        let result = call.await?;
        if self.role != Role::Reads {
            self.cache.stamp_write(stamps_of(&touched)).await;
        }
        Ok(result)
    }
}

#[async_trait::async_trait]
impl ChatStore for CachedStore {
    fn database(&self) -> &'static str {
        self.inner.database()
    }

    fn read_scope(&self, viewer: UserId) -> String {
        self.inner.read_scope(viewer)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    fn pool_connections(&self) -> Option<(u32, u32)> {
        self.inner.pool_connections()
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<RoomView> {
        let touched = Touched {
            rooms: vec![room.id],
            users: room.participants.clone(),
        };
        self.write(self.inner.create_room(room), touched).await
    }

    async fn get_room(&self, room: RoomId, viewer: UserId) -> StoreResult<RoomView> {
        if !self.reads() {
            return self.inner.get_room(room, viewer).await;
        }
        let scope = self.inner.read_scope(viewer);
        self.cache
            .read_through(
                room_key(&scope, room, viewer),
                vec![room_stamp(room), user_stamp(viewer)],
                self.inner.get_room(room, viewer),
                |_| Some(Vec::new()),
            )
            .await
    }

    async fn room_access(&self, room: RoomId, user: UserId) -> StoreResult<RoomAccess> {
        self.inner.room_access(room, user).await
    }

    async fn rooms_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> StoreResult<(Vec<RoomView>, u64)> {
        if !self.reads() {
            return self.inner.rooms_for_user(user, page).await;
        }
        let scope = self.inner.read_scope(user);
        self.cache
            .read_through(
                rooms_key(&scope, user, page),
                vec![user_stamp(user)],
                self.inner.rooms_for_user(user, page),
                cacheable_list,
            )
            .await
    }

    async fn room_ids_for_user(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        self.inner.room_ids_for_user(user).await
    }

    async fn leave_room(&self, room: RoomId, user: UserId, at: DateTime<Utc>) -> StoreResult<bool> {
        let touched = Touched {
            rooms: vec![room],
            users: vec![user],
        };
        self.write(self.inner.leave_room(room, user, at), touched)
            .await
    }

    async fn set_pinned(
        &self,
        room: RoomId,
        user: UserId,
        pinned: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let touched = Touched {
            users: vec![user],
            ..Touched::default()
        };
        self.write(self.inner.set_pinned(room, user, pinned, at), touched)
            .await
    }

    async fn insert_message(&self, message: NewMessage) -> StoreResult<StoredMessage> {
        // The room's last message and its members' unread counts.
        let touched = Touched {
            rooms: vec![message.room_id],
            ..Touched::default()
        };
        self.write(self.inner.insert_message(message), touched)
            .await
    }

    async fn history(
        &self,
        room: RoomId,
        viewer: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        self.inner.history(room, viewer, before, limit).await
    }

    async fn read_chunk(
        &self,
        room: RoomId,
        reader: UserId,
        since: DateTime<Utc>,
    ) -> StoreResult<ReadChunk> {
        self.inner.read_chunk(room, reader, since).await
    }

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        ids: Vec<MessageId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        // The reader's unread count.
        let touched = Touched {
            users: vec![user],
            ..Touched::default()
        };
        self.write(self.inner.mark_read(room, user, ids, at), touched)
            .await
    }

    async fn react(
        &self,
        message: MessageId,
        user: UserId,
        reaction: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.inner.react(message, user, reaction, at).await
    }

    async fn message_room(&self, message: MessageId) -> StoreResult<RoomId> {
        self.inner.message_room(message).await
    }

    async fn register_device(
        &self,
        user: UserId,
        token: String,
        platform: Platform,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner.register_device(user, token, platform, at).await
    }

    async fn delete_device(
        &self,
        user: UserId,
        token: String,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner.delete_device(user, token, at).await
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceToken>> {
        self.inner.devices(user).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_stamps_each_room_and_user_once() {
        let room = RoomId(uuid::Uuid::nil());
        let touched = Touched {
            rooms: vec![room, room],
            users: vec![UserId(7), UserId(3), UserId(7)],
        };
        assert_eq!(
            stamps_of(&touched),
            vec![
                format!("chat:stamp:room:{room}"),
                "chat:stamp:user:3".to_string(),
                "chat:stamp:user:7".to_string(),
            ]
        );
    }

    #[test]
    fn views_of_different_scopes_and_pages_never_share_a_key() {
        let room = RoomId(uuid::Uuid::nil());
        assert_ne!(
            room_key("legacy-g3", room, UserId(1)),
            room_key("new-g3", room, UserId(1))
        );
        assert_ne!(
            room_key("new-g3", room, UserId(1)),
            room_key("new-g4", room, UserId(1))
        );
        let page = |page, limit| PageRequest { page, limit };
        assert_ne!(
            rooms_key("postgres", UserId(1), page(1, 20)),
            rooms_key("postgres", UserId(1), page(2, 20))
        );
        assert_ne!(
            rooms_key("postgres", UserId(1), page(1, 20)),
            rooms_key("postgres", UserId(1), page(1, 50))
        );
    }
}
