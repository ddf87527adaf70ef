//! The migration router over legacy PostgreSQL and the CQL store on a real Apache Cassandra
//! node: dual writes (sync and async) land in both stores, and a crash of the CQL node during a
//! burst of writes fails no client call, fills the outbox, and the replay after the restart
//! leaves both stores with exactly the same messages.
//!
//! A test binary of its own: it kills and restarts this binary's Cassandra node
//! ([`Cassandra::shared`] is one JVM per test binary), which would break any other CQL test
//! sharing it. The two tests take turns (a lock), so the outage never hits the other one.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_service::flags::{DualWrite, FlagSource, FlagWatcher, Flags, StoreSide};
use chat_service::ids::{MessageId, MessageIdGenerator, RoomId, UserId};
use chat_service::metrics::Metrics;
use chat_service::store::instrumented::Instrumented;
use chat_service::store::outbox::ReplayConfig;
use chat_service::store::postgres::PgStore;
use chat_service::store::router::{MigrationRouter, ReplayerHandle, RouterOptions};
use chat_service::store::scylla::{CqlConfig, CqlStore};
use chat_service::store::{ChatStore, NewMessage, NewRoom, RoomType};
use ficus_e2e::{Cassandra, Postgres};
use prometheus_client::metrics::gauge::Gauge;
use sqlx::postgres::PgPool;
use uuid::Uuid;

/// The tests of this binary take turns on the one CQL node.
static NODE: Mutex<()> = Mutex::new(());

fn options() -> RouterOptions {
    RouterOptions {
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(500),
        secondary_timeout: Duration::from_secs(2),
        memory_queue_limit: 10_000,
        replay: ReplayConfig {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            poll_interval: Duration::from_millis(50),
            inline_grace: Duration::from_secs(5),
            ..ReplayConfig::default()
        },
    }
}

struct Setup {
    router: MigrationRouter,
    metrics: Arc<Metrics>,
    legacy: Arc<dyn ChatStore>,
    new: Arc<dyn ChatStore>,
    legacy_pool: PgPool,
    _replayer: ReplayerHandle,
}

/// Legacy: a fresh database of the harness's PostgreSQL; new: the CQL store on a fresh keyspace
/// of this binary's Cassandra node (consistency ONE: one node).
async fn setup(cassandra: &Cassandra, test: &str, dual_write: DualWrite) -> Setup {
    let metrics = Arc::new(Metrics::default());
    let f = Flags {
        generation: 1,
        write_primary: StoreSide::Legacy,
        dual_write,
        shadow_read_percent: 0,
        read_split_percent: 0,
    };
    let watcher = FlagWatcher::start(FlagSource::Static(f), Gauge::default())
        .await
        .expect("flags");
    let legacy_url = Postgres::shared()
        .expect("postgres")
        .create_database(&format!("{test}_legacy"))
        .await
        .expect("db");
    let legacy = PgStore::connect(&legacy_url, 10).await.expect("connect");
    legacy.migrate().await.expect("migrate");
    let keyspace = cassandra.create_keyspace(test).await.expect("keyspace");
    let cql = CqlStore::connect(&CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace,
        consistency: scylla::statement::Consistency::One,
    })
    .await
    .expect("CQL store");
    let new: Arc<dyn ChatStore> = Arc::new(Instrumented::new(cql, metrics.clone()));
    let legacy_pool = legacy.pool().clone();
    let legacy_store: Arc<dyn ChatStore> = Arc::new(legacy.clone());
    let router = MigrationRouter::new(legacy, new.clone(), watcher, metrics.clone(), options());
    let replayer = router.start_replayer();
    Setup {
        router,
        metrics,
        legacy: legacy_store,
        new,
        legacy_pool,
        _replayer: replayer,
    }
}

async fn new_room(router: &MigrationRouter, owner: i32, member: i32) -> RoomId {
    let room = NewRoom {
        id: RoomId::random(),
        name: "Team".into(),
        room_type: RoomType::Group,
        created_by: UserId(owner),
        participants: vec![UserId(owner), UserId(member)],
        created_at: chat_service::store::now(),
    };
    router.create_room(room).await.expect("create room").id
}

fn message(ids: &MessageIdGenerator, room: RoomId, sender: i32, text: &str) -> NewMessage {
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
async fn history_ids(store: &dyn ChatStore, room: RoomId) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut before: Option<MessageId> = None;
    loop {
        let page = store.history(room, before, 100).await.expect("history");
        ids.extend(page.items.iter().map(|m| m.id.0));
        match page.next_cursor {
            Some(cursor) => before = Some(cursor),
            None => return ids,
        }
    }
}

/// The history of `room` in `store`, or `None` while the store fails.
async fn try_history_ids(store: &dyn ChatStore, room: RoomId) -> Option<Vec<Uuid>> {
    let mut ids = Vec::new();
    let mut before: Option<MessageId> = None;
    loop {
        let page = store.history(room, before, 100).await.ok()?;
        ids.extend(page.items.iter().map(|m| m.id.0));
        match page.next_cursor {
            Some(cursor) => before = Some(cursor),
            None => return Some(ids),
        }
    }
}

async fn outbox_depth(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<sqlx::Postgres, i64>("select count(*) from outbox")
        .fetch_one(pool)
        .await
        .expect("depth")
}

fn retry_queue_size(metrics: &Metrics) -> Option<f64> {
    metrics.encode().lines().find_map(|l| {
        l.strip_prefix("chat_retry_queue_size ")
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
}

/// Polls `check` until it holds, or panics after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node() -> Option<&'static Cassandra> {
    match Cassandra::shared() {
        Ok(c) => Some(c),
        Err(e) => {
            ficus_e2e::skip_or_panic(&e);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_write_sync_and_async_land_every_message_in_postgres_and_cql() {
    common::init();
    let _turn = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cassandra) = node() else { return };
    let ids = MessageIdGenerator::default();
    for mode in [DualWrite::Sync, DualWrite::Async] {
        let s = setup(cassandra, &format!("router_cql_dual_{mode}"), mode).await;
        let rooms = [
            new_room(&s.router, 1, 2).await,
            new_room(&s.router, 3, 4).await,
        ];
        for i in 0..40 {
            s.router
                .insert_message(message(
                    &ids,
                    rooms[i % 2],
                    1 + (i % 2) as i32 * 2,
                    &format!("m{i}"),
                ))
                .await
                .expect("send");
        }
        for room in rooms {
            let legacy = history_ids(s.legacy.as_ref(), room).await;
            assert_eq!(
                legacy.len(),
                20,
                "{mode}: the primary has every message when the call returns"
            );
            if mode == DualWrite::Sync {
                assert_eq!(
                    history_ids(s.new.as_ref(), room).await,
                    legacy,
                    "sync: CQL too, when the call returns"
                );
            }
            eventually(
                &format!("{mode}: CQL holds every message of the room"),
                Duration::from_secs(20),
                || async { try_history_ids(s.new.as_ref(), room).await.as_ref() == Some(&legacy) },
            )
            .await;
        }
        eventually(
            &format!("{mode}: outbox empty"),
            Duration::from_secs(20),
            || async { outbox_depth(&s.legacy_pool).await == 0 },
        )
        .await;
        assert_eq!(
            s.router
                .outbox()
                .dead_letters()
                .await
                .expect("dead letters"),
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cql_node_crash_during_a_burst_fails_no_call_and_the_replay_converges() {
    common::init();
    let _turn = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cassandra) = node() else { return };
    let ids = Arc::new(MessageIdGenerator::default());
    let s = setup(cassandra, "router_cql_crash", DualWrite::Sync).await;
    let rooms = [
        new_room(&s.router, 1, 2).await,
        new_room(&s.router, 3, 4).await,
        new_room(&s.router, 5, 6).await,
    ];
    for i in 0..15 {
        s.router
            .insert_message(message(&ids, rooms[i % 3], 1, &format!("before {i}")))
            .await
            .expect("send before the crash");
    }
    // The outbox row of a write the secondary accepted is deleted just after the call returns.
    eventually(
        "outbox empty before the crash",
        Duration::from_secs(20),
        || async { outbox_depth(&s.legacy_pool).await == 0 },
    )
    .await;

    // A burst from 6 concurrent writers; the node is killed once it is under way.
    const WRITERS: usize = 6;
    const PER_WRITER: usize = 40;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (router, ids) = (s.router.clone(), ids.clone());
        writers.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0..PER_WRITER {
                let room = rooms[(w + i) % 3];
                if let Err(e) = router
                    .insert_message(message(&ids, room, 1, &format!("burst {w}/{i}")))
                    .await
                {
                    eprintln!("writer {w} call {i}: {e}");
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    tokio::task::spawn_blocking(move || cassandra.stop())
        .await
        .expect("stop");
    let mut failed = 0;
    for w in writers {
        failed += w.await.expect("writer");
    }
    assert_eq!(failed, 0, "no client call fails while the CQL node is down");
    assert!(
        !s.router.is_up(StoreSide::New),
        "the CQL store is marked down"
    );
    let depth = outbox_depth(&s.legacy_pool).await;
    assert!(depth > 0, "the outbox holds the writes CQL missed");
    eventually(
        "chat_retry_queue_size shows the backlog",
        Duration::from_secs(10),
        || async { retry_queue_size(&s.metrics).is_some_and(|v| v > 0.0) },
    )
    .await;
    assert!(
        s.metrics.dual_write_count("new", "skipped") + s.metrics.dual_write_count("new", "error")
            > 0
    );

    tokio::task::spawn_blocking(move || cassandra.restart())
        .await
        .expect("join")
        .expect("restart");

    eventually("the outbox drains", Duration::from_secs(120), || async {
        outbox_depth(&s.legacy_pool).await == 0 && s.router.pending_in_memory() == 0
    })
    .await;
    eventually(
        "chat_retry_queue_size back to 0",
        Duration::from_secs(10),
        || async { retry_queue_size(&s.metrics) == Some(0.0) },
    )
    .await;
    let mut total = 0;
    for room in rooms {
        let legacy = history_ids(s.legacy.as_ref(), room).await;
        total += legacy.len();
        let new = history_ids(s.new.as_ref(), room).await;
        assert_eq!(
            new, legacy,
            "room {room:?}: both stores hold exactly the same messages"
        );
    }
    assert_eq!(
        total,
        15 + WRITERS * PER_WRITER,
        "every acknowledged message is in the primary"
    );
    assert_eq!(
        s.router
            .outbox()
            .dead_letters()
            .await
            .expect("dead letters"),
        0
    );
    println!("outbox depth after the burst: {depth}; {total} messages in both stores");
}
