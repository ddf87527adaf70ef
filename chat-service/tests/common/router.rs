//! The migration router under test, shared by `router.rs` (PostgreSQL → PostgreSQL) and
//! `router_cql.rs` (PostgreSQL → CQL): the router with fast test timings over a fresh legacy
//! database, and helpers to write through it and look into both stores.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chat_service::flags::{DualWrite, FlagSource, FlagWatcher, Flags, Side};
use chat_service::ids::{MessageId, MessageIdGenerator, RoomId, UserId};
use chat_service::metrics::Metrics;
use chat_service::store::instrumented::Instrumented;
use chat_service::store::outbox::{Outbox, OutboxLog, ReplayConfig};
use chat_service::store::postgres::PgStore;
use chat_service::store::router::{MigrationRouter, ReplayerHandle, RouterOptions};
use chat_service::store::{ChatStore, NewMessage, NewRoom, RoomType};
use ficus_testkit::Postgres;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::postgres::PgPool;
use uuid::Uuid;

/// Generation 1 of a flag document.
pub fn flags(write_primary: Side, dual_write: DualWrite, shadow: u8, split: u8) -> Flags {
    super::flag_doc(1, write_primary, dual_write, shadow, split)
}

/// Production timings scaled down so outages and replays play out in seconds.
pub fn options() -> RouterOptions {
    RouterOptions {
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(500),
        secondary_timeout: Duration::from_secs(2),
        shadow_recheck_after: Duration::from_millis(500),
        switch_settle: Duration::from_secs(60),
        replay: ReplayConfig {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            poll_interval: Duration::from_millis(50),
            inline_grace: Duration::from_secs(5),
            ..ReplayConfig::default()
        },
    }
}

/// A router with its replayer running, and direct handles on both of its stores.
pub struct RouterSetup {
    pub router: MigrationRouter,
    pub metrics: Arc<Metrics>,
    /// The legacy database (it also holds the outbox).
    pub legacy_pool: PgPool,
    pub legacy: Arc<dyn ChatStore>,
    /// The new store, instrumented like in `serve` (its operations show in `metrics`).
    pub new: Arc<dyn ChatStore>,
    _replayer: ReplayerHandle,
}

/// A migrated PostgreSQL store on `url`.
pub async fn pg_store(url: &str) -> PgStore {
    let pg = PgStore::connect(url, 10).await.expect("connect");
    pg.migrate().await.expect("migrate");
    pg
}

/// The outbox of a PostgreSQL store's database.
pub fn pg_outbox(store: &PgStore) -> OutboxLog {
    OutboxLog::Pg(Outbox::new(store.pool().clone()))
}

/// A fresh database `<name>` of the harness's shared PostgreSQL, as a migrated store.
pub async fn fresh_pg_store(name: &str) -> PgStore {
    let url = Postgres::shared()
        .expect("postgres")
        .create_database(name)
        .await
        .expect("db");
    pg_store(&url).await
}

/// The router over `legacy` and `new` (with the outbox in `new`'s database) with static flags
/// `f`, its replayer started.
pub async fn start_router(
    legacy: PgStore,
    new: impl ChatStore + 'static,
    new_outbox: OutboxLog,
    f: Flags,
) -> RouterSetup {
    start_router_with(legacy, new, new_outbox, f, options()).await
}

/// [`start_router`] with other router options.
pub async fn start_router_with(
    legacy: PgStore,
    new: impl ChatStore + 'static,
    new_outbox: OutboxLog,
    f: Flags,
    options: RouterOptions,
) -> RouterSetup {
    let metrics = Arc::new(Metrics::default());
    let watcher = FlagWatcher::start(FlagSource::Static(f), Gauge::default())
        .await
        .expect("flags");
    let legacy_pool = legacy.pool().clone();
    let legacy_store: Arc<dyn ChatStore> = Arc::new(legacy.clone());
    let new: Arc<dyn ChatStore> = Arc::new(Instrumented::new(new, metrics.clone()));
    let router = MigrationRouter::new(
        legacy,
        new.clone(),
        new_outbox,
        watcher,
        metrics.clone(),
        options,
        None,
    );
    let replayer = router.start_replayer();
    RouterSetup {
        router,
        metrics,
        legacy_pool,
        legacy: legacy_store,
        new,
        _replayer: replayer,
    }
}

/// A group room of `owner` and `members`, created through `store` (usually the router).
pub async fn new_room(store: &dyn ChatStore, owner: i32, members: &[i32]) -> RoomId {
    let mut participants: Vec<UserId> = std::iter::once(owner)
        .chain(members.iter().copied())
        .map(UserId)
        .collect();
    participants.dedup();
    let room = NewRoom {
        id: RoomId::random(),
        name: "Team".into(),
        room_type: RoomType::Group,
        created_by: UserId(owner),
        participants,
        created_at: chat_service::store::now(),
    };
    store.create_room(room).await.expect("create room").id
}

pub fn message(ids: &MessageIdGenerator, room: RoomId, sender: i32, text: &str) -> NewMessage {
    let id = ids.next();
    NewMessage {
        id,
        room_id: room,
        sender_id: UserId(sender),
        content: text.as_bytes().to_vec(),
        message_type: "user_message".into(),
        created_at: id.created_at().expect("v1"),
    }
}

/// Every message id of `room` in `store`, newest first (the store's own `history`, paged).
pub async fn history_ids(store: &dyn ChatStore, room: RoomId) -> Vec<Uuid> {
    try_history_ids(store, room).await.expect("history")
}

/// The history of `room` in `store`, or `None` while the store fails.
pub async fn try_history_ids(store: &dyn ChatStore, room: RoomId) -> Option<Vec<Uuid>> {
    let mut ids = Vec::new();
    let mut before: Option<MessageId> = None;
    loop {
        let page = store.history(room, UserId(1), before, 100).await.ok()?;
        ids.extend(page.items.iter().map(|m| m.id.0));
        match page.next_cursor {
            Some(cursor) => before = Some(cursor),
            None => return Some(ids),
        }
    }
}

/// Every message id in a PostgreSQL database, ascending.
pub async fn message_ids(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar::<sqlx::Postgres, Uuid>("select id from room_message order by id")
        .fetch_all(pool)
        .await
        .expect("ids")
}

/// Rows in the outbox of the legacy database.
pub async fn outbox_depth(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<sqlx::Postgres, i64>("select count(*) from outbox")
        .fetch_one(pool)
        .await
        .expect("depth")
}

/// `chat_retry_queue_size` as exported on `/metrics`.
pub fn retry_queue_size(metrics: &Metrics) -> Option<f64> {
    metrics.encode().lines().find_map(|l| {
        l.strip_prefix("chat_retry_queue_size ")
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
}

/// Polls `check` until it holds, or panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
