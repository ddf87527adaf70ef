//! Shadow reads count as drift only what the other store is expected to hold, on the router
//! over legacy PostgreSQL and the CQL store on a real Apache Cassandra node: a legacy store with
//! history from before dual-write, live writes racing the reads, and a write that reached only
//! the legacy store.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_service::flags::{DualWrite, Flags, ShadowCompare, Side};
use chat_service::ids::{MessageIdGenerator, RoomId, UserId};
use chat_service::store::cql_outbox::CqlOutbox;
use chat_service::store::outbox::OutboxLog;
use chat_service::store::scylla::{CqlConfig, CqlStore};
use chat_service::store::shadow::Mismatch::{Content, Count, Extra, Missing, Order};
use chat_service::store::{ChatStore, PageRequest};
use ficus_testkit::{Cassandra, Postgres};

use common::router::{RouterSetup, eventually, flags, message, new_room, pg_store, start_router};

/// Users 1..=4 share every room.
const MEMBERS: [i32; 3] = [2, 3, 4];

fn comparing(mode: DualWrite, compare: ShadowCompare) -> Flags {
    let mut f = flags(Side::Legacy, mode, 100, 0);
    f.values.shadow_compare_from = compare;
    f
}

/// A fresh legacy database and CQL keyspace named after `test`.
async fn stores(test: &str) -> Option<(String, CqlConfig)> {
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let cassandra = ficus_testkit::skip_or_fail!(Cassandra::shared());
    let legacy_url = pg
        .create_database(&format!("{test}_legacy"))
        .await
        .expect("db");
    let cql = CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace: cassandra.create_keyspace(test).await.expect("keyspace"),
        consistency: scylla::statement::Consistency::One,
        address_map: Default::default(),
    };
    Some((legacy_url, cql))
}

/// The router over the legacy database and the CQL keyspace, with the CQL outbox.
async fn router(legacy_url: &str, cql: &CqlConfig, f: Flags) -> RouterSetup {
    let new = CqlStore::connect(cql).await.expect("CQL store");
    let outbox = CqlOutbox::connect(cql).await.expect("CQL outbox");
    start_router(pg_store(legacy_url).await, new, OutboxLog::Cql(outbox), f).await
}

/// Reads of every kind by every member until `stop`, through the router.
async fn read_until(s: &RouterSetup, rooms: &[RoomId], stop: &AtomicBool) -> u32 {
    let mut reads = 0;
    while !stop.load(Ordering::Relaxed) {
        for (i, room) in rooms.iter().enumerate() {
            let user = UserId(1 + (i as i32 % 4));
            s.router
                .history(*room, user, None, 20)
                .await
                .expect("history");
            s.router.get_room(*room, user).await.expect("room");
            s.router
                .rooms_for_user(user, PageRequest::new(None, None))
                .await
                .expect("rooms");
            reads += 3;
        }
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_before_dual_write_and_writes_in_flight_are_not_drift_a_lost_write_is() {
    common::init();
    let ids = MessageIdGenerator::default();
    for mode in [DualWrite::Sync, DualWrite::Async] {
        let Some((legacy_url, cql)) = stores(&format!("shadow_drift_{mode}")).await else {
            return;
        };
        // History written to legacy alone, before dual-write: two rooms of 30 messages.
        let legacy = pg_store(&legacy_url).await;
        let mut old_rooms = Vec::new();
        for _ in 0..2 {
            let room = new_room(&legacy, 1, &MEMBERS).await;
            for i in 0..30 {
                legacy
                    .insert_message(message(&ids, room, 1 + i % 4, &format!("old {i}")))
                    .await
                    .expect("history");
            }
            old_rooms.push(room);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let since = jiff::Timestamp::now();
        let s = router(
            &legacy_url,
            &cql,
            comparing(mode, ShadowCompare::From(since)),
        )
        .await;

        // Live traffic: writes into the old rooms and a new one while every member reads.
        let fresh = new_room(&s.router, 1, &MEMBERS).await;
        let rooms = [old_rooms[0], old_rooms[1], fresh];
        let stop = AtomicBool::new(false);
        let writer = async {
            for i in 0..150 {
                let room = rooms[i % rooms.len()];
                let sender = 1 + (i % 4) as i32;
                s.router
                    .insert_message(message(&ids, room, sender, &format!("live {i}")))
                    .await
                    .expect("send");
            }
            stop.store(true, Ordering::Relaxed);
        };
        let (_, reads) = tokio::join!(writer, read_until(&s, &rooms, &stop));
        // Let re-reads of differing answers finish.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (compared, skipped) = (s.metrics.shadow_reads(), s.metrics.shadow_reads_skipped());
        println!(
            "{mode}: {reads} reads, {compared} compared, {skipped} skipped, {} errors, drift {}, by kind {:?}",
            s.metrics.shadow_read_errors(),
            s.metrics.shadow_drift(),
            [Missing, Extra, Content, Order, Count].map(|k| (k, s.metrics.shadow_mismatches(k)))
        );
        assert!(compared >= 20, "{mode}: {compared} reads compared");
        assert!(
            skipped >= 1,
            "{mode}: the old rooms themselves are out of scope"
        );
        assert_eq!(s.metrics.shadow_drift(), 0, "{mode}: drift on a clean run");
        assert_eq!(
            (s.metrics.shadow_read_errors(), compared + skipped),
            (0, u64::from(reads)),
            "{mode}: every read compared or skipped, none failed (a room the new store has not received is not found)"
        );

        // A live write that reached only the legacy store is drift, each read counted once.
        legacy
            .insert_message(message(&ids, old_rooms[0], 2, "legacy only"))
            .await
            .expect("send");
        for _ in 0..5 {
            s.router
                .history(old_rooms[0], UserId(1), None, 20)
                .await
                .expect("history");
        }
        eventually(
            "the lost write counted",
            Duration::from_secs(10),
            || async { s.metrics.shadow_drift() == 5 },
        )
        .await;
        assert_eq!(s.metrics.shadow_mismatches(Missing), 5);
        assert_eq!(s.metrics.shadow_mismatches(Extra), 0);
        drop(s);

        // The same stores compared without the scope: the un-copied history is a difference
        // in every read that reaches it (what a backfill must fix before `all`).
        let unscoped = router(&legacy_url, &cql, comparing(mode, ShadowCompare::All)).await;
        for _ in 0..3 {
            unscoped
                .router
                .history(old_rooms[1], UserId(1), None, 100)
                .await
                .expect("history");
        }
        eventually(
            "history counted without the scope",
            Duration::from_secs(10),
            || async { unscoped.metrics.shadow_drift() == 3 },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn before_every_instance_dual_writes_nothing_is_read_twice() {
    common::init();
    let Some((legacy_url, cql)) = stores("shadow_nothing").await else {
        return;
    };
    let s = router(
        &legacy_url,
        &cql,
        comparing(DualWrite::Sync, ShadowCompare::Nothing),
    )
    .await;
    let room = new_room(&s.router, 1, &MEMBERS).await;
    for _ in 0..10 {
        s.router
            .history(room, UserId(1), None, 20)
            .await
            .expect("history");
        s.router.get_room(room, UserId(1)).await.expect("room");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (
            s.metrics.shadow_reads(),
            s.metrics.shadow_reads_skipped(),
            s.metrics.shadow_read_errors()
        ),
        (0, 0, 0),
        "no shadow read at all"
    );
    assert!(
        s.new.get_room(room, UserId(1)).await.is_ok(),
        "writes are still dual-written"
    );
}
