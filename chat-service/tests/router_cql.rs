//! The migration router over legacy PostgreSQL and the CQL store on a real Apache Cassandra
//! node: dual writes (sync and async) land in both stores, and a crash of the CQL node during a
//! burst of writes fails no client call, fills the outbox, and the replay after the restart
//! leaves both stores with exactly the same messages.
//!
//! A test binary of its own: it kills and restarts this binary's Cassandra node
//! ([`Cassandra::shared`] is one JVM per test binary), which would break any other CQL test
//! sharing it. The two tests take turns (a lock), so the outage never hits the other one.
//! That is also why it is over 600 lines: every router test that needs this node is here.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_service::flags::Flags;
use chat_service::flags::{DualWrite, Side};
use chat_service::ids::MessageIdGenerator;
use chat_service::metrics::DualWriteOutcome;
use chat_service::store::cql_outbox::CqlOutbox;
use chat_service::store::outbox::OutboxLog;
use chat_service::store::postgres::PgStore;
use chat_service::store::scylla::{CqlConfig, CqlStore};
use chat_service::store::{ChatStore, Platform};
use ficus_testkit::Cassandra;

use chat_service::ids::UserId;

use common::router::{
    RouterSetup, eventually, flags, fresh_pg_store, history_ids, message, new_room, outbox_depth,
    pg_store, retry_queue_size, start_router, try_history_ids,
};

/// The tests of this binary take turns on the one CQL node.
static NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Legacy: a fresh database of the harness's PostgreSQL; new: the CQL store on a fresh keyspace
/// of this binary's Cassandra node (consistency ONE: one node).
async fn setup(cassandra: &Cassandra, test: &str, dual_write: DualWrite) -> RouterSetup {
    let legacy = fresh_pg_store(&format!("{test}_legacy")).await;
    let config = cql_config(cassandra, test).await;
    start_cql_router(legacy, &config, flags(Side::Legacy, dual_write, 0, 0)).await
}

/// A fresh keyspace of this binary's Cassandra node.
async fn cql_config(cassandra: &Cassandra, test: &str) -> CqlConfig {
    CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace: cassandra.create_keyspace(test).await.expect("keyspace"),
        consistency: scylla::statement::Consistency::One,
        address_map: Default::default(),
    }
}

/// The router over `legacy` and the CQL store of `config`, with the CQL outbox.
async fn start_cql_router(legacy: PgStore, config: &CqlConfig, f: Flags) -> RouterSetup {
    let cql = CqlStore::connect(config).await.expect("CQL store");
    let outbox = CqlOutbox::connect(config).await.expect("CQL outbox");
    start_router(legacy, cql, OutboxLog::Cql(outbox), f).await
}

fn node() -> Option<&'static Cassandra> {
    match Cassandra::shared() {
        Ok(c) => Some(c),
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_write_sync_and_async_land_every_message_in_postgres_and_cql() {
    common::init();
    let _turn = NODE.lock().await;
    let Some(cassandra) = node() else { return };
    let ids = MessageIdGenerator::default();
    for mode in [DualWrite::Sync, DualWrite::Async] {
        let s = setup(cassandra, &format!("router_cql_dual_{mode}"), mode).await;
        let rooms = [
            new_room(&s.router, 1, &[2]).await,
            new_room(&s.router, 3, &[4]).await,
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

/// A pin through the router lands in both stores; in each store the pin with the latest time
/// wins whatever order pins arrive in (a replayed pin, a replayed room creation), so two stores
/// given the same pins in different orders agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pins_land_in_both_stores_and_the_latest_pin_wins_in_any_order() {
    common::init();
    let _turn = NODE.lock().await;
    let Some(cassandra) = node() else { return };
    let s = setup(cassandra, "router_cql_pins", DualWrite::Sync).await;
    let pinned = async |store: &dyn ChatStore, room| {
        store
            .get_room(room, UserId(1))
            .await
            .expect("room")
            .is_pinned
    };
    let room = new_room(&s.router, 1, &[2]).await;
    let now = chat_service::store::now;
    assert!(
        s.router
            .set_pinned(room, UserId(1), true, now())
            .await
            .expect("pin")
    );
    assert!(pinned(s.legacy.as_ref(), room).await, "legacy pinned");
    assert!(pinned(s.new.as_ref(), room).await, "CQL pinned");
    assert!(
        !pinned_for(s.new.as_ref(), room, 2).await,
        "a pin is the caller's alone"
    );

    // An unpin older than the pin, arriving later (a replay): no effect in either store.
    let an_hour_ago = now() - chrono::Duration::hours(1);
    for store in [s.legacy.as_ref(), s.new.as_ref()] {
        assert!(
            store
                .set_pinned(room, UserId(1), false, an_hour_ago)
                .await
                .expect("late unpin")
        );
        assert!(
            pinned(store, room).await,
            "{}: the later pin stays",
            store.database()
        );
    }
    assert!(
        s.router
            .set_pinned(room, UserId(1), false, now())
            .await
            .expect("unpin")
    );
    assert!(!pinned(s.legacy.as_ref(), room).await);
    assert!(!pinned(s.new.as_ref(), room).await);

    // A room created on the CQL store after the pin was made (a creation replayed from the
    // outbox is written later than the pin that follows it): the creation does not unpin.
    let late = new_room(s.new.as_ref(), 1, &[2]).await;
    assert!(
        s.new
            .set_pinned(late, UserId(1), true, an_hour_ago)
            .await
            .expect("pin")
    );
    assert!(pinned(s.new.as_ref(), late).await);

    // Not a member: false, nothing written.
    assert!(
        !s.router
            .set_pinned(room, UserId(9), true, now())
            .await
            .expect("pin by a non-member")
    );
}

/// The (token, platform) pairs a store holds for `user`.
async fn tokens_of(store: &dyn ChatStore, user: i32) -> Vec<(String, Platform)> {
    store
        .devices(UserId(user))
        .await
        .expect("devices")
        .into_iter()
        .map(|d| (d.token, d.platform))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_tokens_land_in_both_stores_and_the_latest_write_wins_in_any_order() {
    common::init();
    let _turn = NODE.lock().await;
    let Some(cassandra) = node() else { return };
    let s = setup(cassandra, "router_cql_devices", DualWrite::Sync).await;
    let now = chat_service::store::now;
    for (token, platform) in [("a", Platform::Ios), ("b", Platform::Web)] {
        s.router
            .register_device(UserId(1), token.into(), platform, now())
            .await
            .expect("register");
    }
    let both = vec![
        ("a".to_owned(), Platform::Ios),
        ("b".to_owned(), Platform::Web),
    ];
    assert_eq!(tokens_of(s.legacy.as_ref(), 1).await, both, "legacy");
    assert_eq!(tokens_of(s.new.as_ref(), 1).await, both, "CQL");
    let deleted_at = now();
    s.router
        .delete_device(UserId(1), "a".into(), deleted_at)
        .await
        .expect("delete");
    // A registration older than the deletion, arriving later (an outbox replay): it does not
    // bring the token back in either store; neither does one at the deletion's very time.
    let older = deleted_at - chrono::Duration::seconds(5);
    for store in [s.legacy.as_ref(), s.new.as_ref()] {
        for at in [older, deleted_at] {
            store
                .register_device(UserId(1), "a".into(), Platform::Android, at)
                .await
                .expect("late register");
        }
        assert_eq!(
            tokens_of(store, 1).await,
            vec![("b".to_owned(), Platform::Web)],
            "{}: the later deletion stays",
            store.database()
        );
        // And a deletion older than a registration does not remove it.
        store
            .delete_device(UserId(1), "b".into(), older)
            .await
            .expect("late delete");
        assert_eq!(tokens_of(store, 1).await.len(), 1, "{}", store.database());
    }
    // A later registration after the deletion brings it back, in both.
    s.router
        .register_device(UserId(1), "a".into(), Platform::Android, now())
        .await
        .expect("register again");
    let expected = vec![
        ("a".to_owned(), Platform::Android),
        ("b".to_owned(), Platform::Web),
    ];
    assert_eq!(tokens_of(s.legacy.as_ref(), 1).await, expected);
    assert_eq!(tokens_of(s.new.as_ref(), 1).await, expected);
}

async fn pinned_for(store: &dyn ChatStore, room: chat_service::ids::RoomId, user: i32) -> bool {
    store
        .get_room(room, UserId(user))
        .await
        .expect("room")
        .is_pinned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cql_node_crash_during_a_burst_fails_no_call_and_the_replay_converges() {
    common::init();
    let _turn = NODE.lock().await;
    let Some(cassandra) = node() else { return };
    let ids = Arc::new(MessageIdGenerator::default());
    let s = setup(cassandra, "router_cql_crash", DualWrite::Sync).await;
    let rooms = [
        new_room(&s.router, 1, &[2]).await,
        new_room(&s.router, 3, &[4]).await,
        new_room(&s.router, 5, &[6]).await,
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
    assert!(!s.router.is_up(Side::New), "the CQL store is marked down");
    let depth = outbox_depth(&s.legacy_pool).await;
    assert!(depth > 0, "the outbox holds the writes CQL missed");
    eventually(
        "chat_retry_queue_size shows the backlog",
        Duration::from_secs(10),
        || async { retry_queue_size(&s.metrics).is_some_and(|v| v > 0.0) },
    )
    .await;
    assert!(
        s.metrics
            .dual_write_count(Side::New, DualWriteOutcome::Skipped)
            + s.metrics
                .dual_write_count(Side::New, DualWriteOutcome::Error)
            > 0
    );

    tokio::task::spawn_blocking(move || cassandra.restart())
        .await
        .expect("join")
        .expect("restart");

    eventually("the outbox drains", Duration::from_secs(120), || async {
        outbox_depth(&s.legacy_pool).await == 0
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

/// After cutover on the CQL store (`sync` reverse dual write), legacy PostgreSQL goes down: every
/// call still succeeds, and each pending legacy write is recorded in the CQL store's outbox, not
/// in memory. The router is then dropped without a drain (a crash); a router started afresh on
/// the same stores replays every one of them into legacy once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_cutover_legacy_writes_wait_in_the_cql_outbox_across_a_crash() {
    common::init();
    let _turn = NODE.lock().await;
    let Some(cassandra) = node() else { return };
    let ids = MessageIdGenerator::default();
    let legacy_server = ficus_testkit::Postgres::start().expect("private postgres");
    let legacy_url = legacy_server
        .create_database("cql_cutover_legacy")
        .await
        .expect("db");
    let config = cql_config(cassandra, "cql_cutover").await;
    let f = flags(Side::New, DualWrite::Sync, 0, 100);
    let s = start_cql_router(pg_store(&legacy_url).await, &config, f).await;
    let room = new_room(&s.router, 1, &[2]).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            s.router
                .insert_message(message(&ids, room, 1, &format!("before {i}")))
                .await
                .expect("send")
                .id
                .0,
        );
    }
    let legacy_server = tokio::task::spawn_blocking(move || {
        legacy_server.stop();
        legacy_server
    })
    .await
    .expect("stop legacy");
    for i in 0..20 {
        sent.push(
            s.router
                .insert_message(message(&ids, room, 2, &format!("legacy down {i}")))
                .await
                .expect("no call fails while legacy is down")
                .id
                .0,
        );
    }
    let outbox = s.router.new_outbox().clone();
    eventually(
        "every pending legacy write is recorded in the CQL outbox",
        Duration::from_secs(20),
        || async { outbox.depth().await.is_ok_and(|d| d >= 20) },
    )
    .await;
    // A crash: the router and its replayer are gone, nothing was drained.
    drop(s);
    let legacy_server = tokio::task::spawn_blocking(move || {
        legacy_server.restart().expect("restart legacy");
        legacy_server
    })
    .await
    .expect("restart");
    let s = start_cql_router(pg_store(&legacy_url).await, &config, f).await;
    eventually(
        "the CQL outbox drains into legacy",
        Duration::from_secs(60),
        || async { s.router.new_outbox().depth().await.is_ok_and(|d| d == 0) },
    )
    .await;
    let mut in_legacy = history_ids(s.legacy.as_ref(), room).await;
    in_legacy.sort();
    sent.sort();
    assert_eq!(in_legacy, sent, "legacy holds every acknowledged message");
    drop(legacy_server);
}

/// With `reverseDualWrite: false` legacy gets nothing while the new store is primary; `chat-service
/// rollback --since` copies the window back: rooms, messages, leaves. A partial run resumes; a
/// completed key is not run again; another key over the same window changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_copies_the_new_stores_writes_back_into_legacy_idempotently_and_resumably() {
    common::init();
    let _turn = NODE.lock().await;
    let Some(cassandra) = node() else { return };
    let ids = MessageIdGenerator::default();
    let legacy = fresh_pg_store("cql_rollback_legacy").await;
    let legacy_url = legacy_database_url(&legacy).await;
    let config = cql_config(cassandra, "cql_rollback").await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let s = start_cql_router(legacy, &config, flags(Side::New, DualWrite::Off, 0, 100)).await;
    let mut rooms = Vec::new();
    let mut sent = Vec::new();
    for r in 0..3 {
        let room = new_room(&s.router, 1, &[2, 3]).await;
        for i in 0..4 {
            sent.push(
                s.router
                    .insert_message(message(
                        &ids,
                        room,
                        1 + i % 2,
                        &format!("room {r} message {i}"),
                    ))
                    .await
                    .expect("send")
                    .id
                    .0,
            );
        }
        rooms.push(room);
    }
    assert!(
        s.router
            .leave_room(rooms[0], UserId(3), chat_service::store::now())
            .await
            .expect("leave")
    );
    s.router
        .register_device(
            UserId(1),
            "made-in-cutover".into(),
            Platform::Android,
            chat_service::store::now(),
        )
        .await
        .expect("register");
    let count = |sql: &'static str| {
        let pool = s.legacy_pool.clone();
        async move {
            sqlx::query_scalar::<sqlx::Postgres, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    assert_eq!(
        count("select count(*) from room_message").await,
        0,
        "nothing reached legacy (no reverse dual write)"
    );

    let run = |extra: &[&str]| {
        let mut args = vec![
            "rollback".to_owned(),
            "--since".into(),
            since.to_rfc3339(),
            "--cql-contact-points".into(),
            config.contact_points[0].clone(),
            "--cql-keyspace".into(),
            config.keyspace.clone(),
            "--cql-consistency".into(),
            "ONE".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
            .args(&args)
            .env("DATABASE_URL", &legacy_url)
            .env("FICUS_MIGRATION_ID", "chat-migration-1")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run rollback");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&["--max-rooms", "1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("partial"), "{out}");
    assert_eq!(count("select count(*) from room").await, 1, "{out}");
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("complete"), "{out}");

    let mut in_legacy: Vec<uuid::Uuid> = Vec::new();
    for room in &rooms {
        in_legacy.extend(history_ids(s.legacy.as_ref(), *room).await);
    }
    in_legacy.sort();
    sent.sort();
    assert_eq!(in_legacy, sent, "every message of the window is in legacy");
    let left = s
        .legacy
        .get_room(rooms[0], UserId(1))
        .await
        .expect("room in legacy");
    assert_eq!(
        left.participants,
        vec![UserId(1), UserId(2)],
        "the leave reached legacy"
    );
    let kept = s
        .legacy
        .get_room(rooms[1], UserId(1))
        .await
        .expect("room in legacy");
    assert_eq!(kept.participants, vec![UserId(1), UserId(2), UserId(3)]);
    let devices = s.legacy.devices(UserId(1)).await.expect("devices");
    assert_eq!(
        devices
            .iter()
            .map(|d| (d.token.as_str(), d.platform))
            .collect::<Vec<_>>(),
        vec![("made-in-cutover", Platform::Android)],
        "the device token registered in the window reached legacy"
    );

    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already complete"), "{out}");
    let (code, out) = run(&["--checkpoint-key", "again"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("0 rooms created, 0 memberships updated, 0 messages")
            && out.contains("0 device tokens"),
        "an idempotent copy: {out}"
    );
    assert_eq!(
        count("select count(*) from room_message").await,
        sent.len() as i64
    );

    let (code, out) = run(&[
        "--until",
        &(since - chrono::Duration::seconds(5)).to_rfc3339(),
    ]);
    assert_eq!(code, Some(2), "an empty window is a usage error: {out}");
}

/// The URL of a store's database (the harness's shared server, the pool's database name).
async fn legacy_database_url(store: &PgStore) -> String {
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(store.pool())
        .await
        .expect("database name");
    ficus_testkit::Postgres::shared()
        .expect("postgres")
        .database_url(&name)
}
