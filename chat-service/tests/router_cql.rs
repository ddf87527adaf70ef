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

use chat_service::flags::{DualWrite, Side};
use chat_service::ids::MessageIdGenerator;
use chat_service::store::ChatStore;
use chat_service::store::scylla::{CqlConfig, CqlStore};
use ficus_testkit::Cassandra;

use common::router::{
    RouterSetup, eventually, flags, fresh_pg_store, history_ids, message, new_room, outbox_depth,
    retry_queue_size, start_router, try_history_ids,
};

/// The tests of this binary take turns on the one CQL node.
static NODE: Mutex<()> = Mutex::new(());

/// Legacy: a fresh database of the harness's PostgreSQL; new: the CQL store on a fresh keyspace
/// of this binary's Cassandra node (consistency ONE: one node).
async fn setup(cassandra: &Cassandra, test: &str, dual_write: DualWrite) -> RouterSetup {
    let legacy = fresh_pg_store(&format!("{test}_legacy")).await;
    let keyspace = cassandra.create_keyspace(test).await.expect("keyspace");
    let cql = CqlStore::connect(&CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace,
        consistency: scylla::statement::Consistency::One,
    })
    .await
    .expect("CQL store");
    start_router(legacy, cql, flags(Side::Legacy, dual_write, 0, 0)).await
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
    let _turn = NODE.lock().unwrap_or_else(|e| e.into_inner());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cql_node_crash_during_a_burst_fails_no_call_and_the_replay_converges() {
    common::init();
    let _turn = NODE.lock().unwrap_or_else(|e| e.into_inner());
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
