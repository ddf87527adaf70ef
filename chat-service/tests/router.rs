//! The migration router over two real PostgreSQL databases (legacy and "new"): dual writes,
//! the outbox and its replayer through an outage of the secondary, shadow reads, the read
//! split, cutover, writes after a switch of primary waiting for the room's queued writes, and
//! `serve --store router`.
//!
//! Over 600 lines: one binary on purpose: its tests share one PostgreSQL server (the outage
//! tests start their own secondary), and each test is one behaviour of the router.

mod common;

use std::time::Duration;

use chat_service::config::{NewStoreChoice, StoreChoice};
use chat_service::flags::{DualWrite, FlagSource, Flags, Side};
use chat_service::ids::{MessageIdGenerator, RoomId, UserId};
use chat_service::metrics::DualWriteOutcome;
use chat_service::routing::cohort;
use chat_service::store::outbox::{NewEntry, Outbox, WriteOp};
use chat_service::store::shadow::Mismatch::{Content, Count, Extra, Missing, Order};
use chat_service::store::{ChatStore, NewRoom, PageRequest, RoomType, StoreError, now};
use ficus_testkit::Postgres;
use sqlx::postgres::PgPool;

use chat_service::store::router::RouterOptions;
use common::router::{
    RouterSetup, eventually, flags, message, message_ids, new_room, options, outbox_depth,
    pg_outbox, pg_store, start_router, start_router_with,
};

/// The router over two PostgreSQL databases, and a pool on the new one for direct checks.
async fn setup(legacy_url: &str, new_url: &str, f: Flags) -> (RouterSetup, PgPool) {
    let new = pg_store(new_url).await;
    let new_pool = new.pool().clone();
    let outbox = pg_outbox(&new);
    (
        start_router(pg_store(legacy_url).await, new, outbox, f).await,
        new_pool,
    )
}

async fn two_databases(test: &str) -> (String, String) {
    let pg = Postgres::shared().expect("postgres");
    (
        pg.create_database(&format!("{test}_legacy"))
            .await
            .expect("db"),
        pg.create_database(&format!("{test}_new"))
            .await
            .expect("db"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_write_sync_and_async_land_every_message_in_both_stores() {
    common::init();
    let ids = MessageIdGenerator::default();
    for mode in [DualWrite::Sync, DualWrite::Async] {
        let (legacy_url, new_url) = two_databases(&format!("router_dual_{mode}")).await;
        let (s, new_pool) = setup(&legacy_url, &new_url, flags(Side::Legacy, mode, 0, 0)).await;
        let room = new_room(&s.router, 1, &[2]).await;
        for i in 0..30 {
            s.router
                .insert_message(message(&ids, room, 1 + i % 2, &format!("m{i}")))
                .await
                .expect("send");
        }
        let legacy = message_ids(&s.legacy_pool).await;
        assert_eq!(
            legacy.len(),
            30,
            "{mode}: the primary has every message when the call returns"
        );
        if mode == DualWrite::Sync {
            assert_eq!(
                message_ids(&new_pool).await,
                legacy,
                "sync: the secondary too"
            );
        }
        eventually(
            &format!("{mode}: secondary holds every message"),
            Duration::from_secs(15),
            || async { message_ids(&new_pool).await == legacy },
        )
        .await;
        // The transactional outbox rows are deleted once the secondary write went through.
        eventually(
            &format!("{mode}: outbox empty"),
            Duration::from_secs(15),
            || async { outbox_depth(&s.legacy_pool).await == 0 },
        )
        .await;
        // Async secondary writes are not ordered: a message can reach the secondary before its
        // room; it then waits (not an error) and the outbox replays it. Every write lands
        // exactly once either way.
        let landed = || {
            s.metrics
                .dual_write_count(Side::New, DualWriteOutcome::Success)
                + s.metrics
                    .dual_write_count(Side::New, DualWriteOutcome::Replayed)
        };
        eventually(
            &format!("{mode}: room + 30 messages counted"),
            Duration::from_secs(15),
            || async { landed() >= 31 },
        )
        .await;
        assert_eq!(landed(), 31, "{mode}: each dual write counted once");
        assert_eq!(
            s.metrics
                .dual_write_count(Side::New, DualWriteOutcome::Error)
                + s.metrics
                    .dual_write_count(Side::New, DualWriteOutcome::Waiting),
            s.metrics
                .dual_write_count(Side::New, DualWriteOutcome::Replayed),
            "{mode}: every write that failed or waited for its room was replayed"
        );
        assert_eq!(
            s.metrics
                .dual_write_count(Side::New, DualWriteOutcome::Skipped),
            0,
            "{mode}: the secondary was never down"
        );
        if mode == DualWrite::Sync {
            assert_eq!(
                s.metrics
                    .dual_write_count(Side::New, DualWriteOutcome::Success),
                31,
                "sync writes are ordered: none needs a replay"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secondary_outage_fills_the_outbox_and_replay_drains_it() {
    common::init();
    let ids = MessageIdGenerator::default();
    let legacy_url = Postgres::shared()
        .expect("postgres")
        .create_database("router_outage_legacy")
        .await
        .expect("db");
    let secondary = Postgres::start().expect("private postgres");
    let new_url = secondary
        .create_database("router_outage_new")
        .await
        .expect("db");
    let (s, new_pool) = setup(
        &legacy_url,
        &new_url,
        flags(Side::Legacy, DualWrite::Sync, 0, 0),
    )
    .await;
    let rooms = [
        new_room(&s.router, 1, &[2]).await,
        new_room(&s.router, 3, &[4]).await,
    ];
    for i in 0..10 {
        s.router
            .insert_message(message(&ids, rooms[i % 2], 1, &format!("before {i}")))
            .await
            .expect("send before the outage");
    }

    let secondary = tokio::task::spawn_blocking(move || {
        secondary.stop();
        secondary
    })
    .await
    .expect("stop");
    let mut failed = 0;
    // Writes while the secondary is down, a room created during the outage among them.
    let outage_room = new_room(&s.router, 5, &[6]).await;
    for i in 0..60 {
        let room = [rooms[0], rooms[1], outage_room][i % 3];
        if s.router
            .insert_message(message(&ids, room, 1, &format!("during {i}")))
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 0,
        "no client call fails while the secondary is down"
    );
    assert!(!s.router.is_up(Side::New), "the secondary is marked down");
    eventually(
        "the outbox gauge shows the backlog",
        Duration::from_secs(10),
        || async {
            let text = s.metrics.encode();
            text.lines().any(|l| {
                l.starts_with("chat_retry_queue_size ")
                    && l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 61.0)
            })
        },
    )
    .await;
    assert!(
        s.metrics
            .dual_write_count(Side::New, DualWriteOutcome::Skipped)
            > 0,
        "down secondary skipped (ping-before-write)"
    );

    tokio::task::spawn_blocking(move || {
        secondary.restart().expect("restart");
        secondary
    })
    .await
    .map(|secondary| {
        // Keep the server alive for the rest of the test.
        std::mem::forget(secondary);
    })
    .expect("restart");

    eventually("the outbox drains", Duration::from_secs(60), || async {
        outbox_depth(&s.legacy_pool).await == 0
    })
    .await;
    eventually("gauge back to 0", Duration::from_secs(10), || async {
        s.metrics
            .encode()
            .lines()
            .any(|l| l == "chat_retry_queue_size 0")
    })
    .await;
    let legacy = message_ids(&s.legacy_pool).await;
    assert_eq!(legacy.len(), 70);
    assert_eq!(
        message_ids(&new_pool).await,
        legacy,
        "both stores hold exactly the same messages"
    );
    // Every replayed write counted once as a successful retry (by operation and attempt).
    let encoded = s.metrics.encode();
    let retried: f64 = encoded
        .lines()
        .filter(|l| {
            l.starts_with("chat_retry_operations_total{") && l.contains("status=\"success\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        retried as u64,
        s.metrics
            .dual_write_count(Side::New, DualWriteOutcome::Replayed),
        "{encoded}"
    );
    assert!(retried > 0.0);
    assert_eq!(
        s.router
            .outbox()
            .dead_letters()
            .await
            .expect("dead letters"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_reads_count_no_mismatch_on_a_clean_run_and_detect_an_injected_one() {
    common::init();
    let ids = MessageIdGenerator::default();
    let (legacy_url, new_url) = two_databases("router_shadow").await;
    let (s, new_pool) = setup(
        &legacy_url,
        &new_url,
        flags(Side::Legacy, DualWrite::Sync, 100, 0),
    )
    .await;
    let room = new_room(&s.router, 1, &[2]).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(
            s.router
                .insert_message(message(&ids, room, 1, &format!("m{i}")))
                .await
                .expect("send"),
        );
    }
    for _ in 0..5 {
        s.router
            .history(room, UserId(1), None, 5)
            .await
            .expect("history");
        s.router.get_room(room, UserId(1)).await.expect("room");
        s.router
            .rooms_for_user(UserId(2), PageRequest::new(None, None))
            .await
            .expect("rooms");
    }
    eventually(
        "15 shadow reads compared",
        Duration::from_secs(10),
        || async { s.metrics.shadow_reads() >= 15 },
    )
    .await;
    assert_eq!(s.metrics.shadow_drift(), 0, "drift on a clean run");
    for kind in [Missing, Extra, Content, Order, Count] {
        assert_eq!(
            s.metrics.shadow_mismatches(kind),
            0,
            "{kind:?} on a clean run"
        );
    }

    // Injected straight into the new store's tables: one message lost, one altered.
    sqlx::query::<sqlx::Postgres>("delete from room_message where id = $1")
        .bind(sent[9].id.0)
        .execute(&new_pool)
        .await
        .expect("delete");
    sqlx::query::<sqlx::Postgres>("update room_message set content = 'tampered' where id = $1")
        .bind(sent[8].id.0)
        .execute(&new_pool)
        .await
        .expect("update");
    let page = s
        .router
        .history(room, UserId(1), None, 5)
        .await
        .expect("history");
    assert_eq!(
        page.items[0].id, sent[9].id,
        "the caller gets the serving (legacy) store's answer"
    );
    eventually("mismatches counted", Duration::from_secs(10), || async {
        s.metrics.shadow_mismatches(Missing) >= 1 && s.metrics.shadow_mismatches(Content) >= 1
    })
    .await;
    assert_eq!(
        s.metrics.shadow_mismatches(Extra),
        0,
        "the page window keeps one lost message from also counting as extra"
    );
    assert_eq!(
        s.metrics.shadow_drift(),
        1,
        "one read with two kinds of difference counts once as drift"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_read_split_keeps_each_user_on_one_side() {
    common::init();
    let (legacy_url, new_url) = two_databases("router_split").await;
    let f = flags(Side::Legacy, DualWrite::Off, 0, 50);
    let (s, _new_pool) = setup(&legacy_url, &new_url, f).await;
    let on_new: Vec<i32> = (1..)
        .filter(|u| cohort(&f, UserId(*u)) == Side::New)
        .take(3)
        .collect();
    let on_legacy: Vec<i32> = (1..)
        .filter(|u| cohort(&f, UserId(*u)) == Side::Legacy)
        .take(3)
        .collect();
    // Dual write off: the room exists in legacy only, so the answer shows which store served.
    let members: Vec<i32> = on_new.iter().chain(&on_legacy).copied().collect();
    let room = new_room(&s.router, members[0], &members[1..]).await;
    for _ in 0..5 {
        for u in &on_legacy {
            assert_eq!(
                s.router
                    .get_room(room, UserId(*u))
                    .await
                    .expect("legacy cohort reads legacy")
                    .id,
                room
            );
            assert_eq!(
                s.router
                    .rooms_for_user(UserId(*u), PageRequest::new(None, None))
                    .await
                    .expect("rooms")
                    .1,
                1
            );
        }
        for u in &on_new {
            assert!(
                matches!(
                    s.router.get_room(room, UserId(*u)).await,
                    Err(StoreError::NotFound(_))
                ),
                "new cohort reads the new store"
            );
            assert_eq!(
                s.router
                    .rooms_for_user(UserId(*u), PageRequest::new(None, None))
                    .await
                    .expect("rooms")
                    .1,
                0
            );
        }
    }
    assert_eq!(
        s.metrics.shadow_reads(),
        0,
        "no shadow reads without dual write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_cutover_writes_go_to_new_and_the_reverse_dual_write_fills_legacy() {
    common::init();
    let ids = MessageIdGenerator::default();
    for mode in [DualWrite::Sync, DualWrite::Async] {
        let (legacy_url, new_url) = two_databases(&format!("router_cutover_{mode}")).await;
        let (s, new_pool) = setup(&legacy_url, &new_url, flags(Side::New, mode, 0, 100)).await;
        let room = new_room(&s.router, 1, &[2]).await;
        for i in 0..20 {
            s.router
                .insert_message(message(&ids, room, 2, &format!("m{i}")))
                .await
                .expect("send");
        }
        let new = message_ids(&new_pool).await;
        assert_eq!(new.len(), 20, "{mode}: the new store is primary");
        eventually(
            &format!("{mode}: legacy filled by the reverse dual write"),
            Duration::from_secs(15),
            || async { message_ids(&s.legacy_pool).await == new },
        )
        .await;
        // A replayed entry is deleted just after its write lands.
        eventually(
            &format!("{mode}: nothing left queued"),
            Duration::from_secs(15),
            || async { outbox_depth(&s.legacy_pool).await == 0 },
        )
        .await;
        // Counted just after the write lands (async: in the spawned task).
        // Async secondary writes are not ordered: a message can reach legacy before its room and
        // fail once; the outbox then replays it. Every write lands exactly once either way.
        let landed = || {
            s.metrics
                .dual_write_count(Side::Legacy, DualWriteOutcome::Success)
                + s.metrics
                    .dual_write_count(Side::Legacy, DualWriteOutcome::Replayed)
        };
        eventually(
            &format!("{mode}: 21 legacy dual writes counted"),
            Duration::from_secs(15),
            || async { landed() >= 21 },
        )
        .await;
        assert_eq!(landed(), 21, "{mode}: each dual write counted once");
        // A write that did not land inline failed (error), found its room missing (waiting) or
        // queued behind the room's earlier writes (queued); the outbox replays each exactly once.
        let deferred: u64 = [
            DualWriteOutcome::Error,
            DualWriteOutcome::Waiting,
            DualWriteOutcome::Queued,
            DualWriteOutcome::Skipped,
        ]
        .into_iter()
        .map(|outcome| s.metrics.dual_write_count(Side::Legacy, outcome))
        .sum();
        assert_eq!(
            deferred,
            s.metrics
                .dual_write_count(Side::Legacy, DualWriteOutcome::Replayed),
            "{mode}: every write deferred to the outbox was replayed"
        );
        if mode == DualWrite::Sync {
            assert_eq!(
                s.metrics
                    .dual_write_count(Side::Legacy, DualWriteOutcome::Success),
                21,
                "sync writes are ordered: none needs a replay"
            );
        }
        // Reads come from the new store (split 100 %).
        assert_eq!(
            s.router
                .history(room, UserId(1), None, 100)
                .await
                .expect("history")
                .items
                .len(),
            20
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_with_the_router_writes_both_databases_and_labels_requests_by_cohort() {
    common::init();
    let (legacy_url, new_url) = two_databases("router_serve").await;
    let f = flags(Side::Legacy, DualWrite::Sync, 0, 50);
    let mut config = common::config_for(
        legacy_url.clone(),
        chat_service::crypto::EncryptionKey::random(),
    );
    config.store = StoreChoice::Router {
        new: NewStoreChoice::Postgres {
            database_url: new_url.clone(),
        },
        outbox_max_attempts: 10,
        outbox_inline_grace: std::time::Duration::from_secs(30),
        switch_settle: std::time::Duration::from_secs(60),
    };
    config.flags = FlagSource::Static(f);
    let svc = common::start(config).await;
    let new_user = (1..)
        .find(|u| cohort(&f, UserId(*u)) == Side::New)
        .expect("a new-cohort user");
    let legacy_user = (1..)
        .find(|u| cohort(&f, UserId(*u)) == Side::Legacy)
        .expect("a legacy-cohort user");
    let room = svc.create_group(legacy_user, &[new_user]).await;
    svc.send(legacy_user, &room, "hello").await;
    svc.send(new_user, &room, "hi").await;
    for user in [legacy_user, new_user] {
        let reply = svc
            .call(user, "GetMessageHistory", serde_json::json!({ "id": room }))
            .await;
        assert_eq!(reply["items"].as_array().map(Vec::len), Some(2), "{reply}");
    }
    let (legacy, new) = (
        PgPool::connect(&legacy_url).await.expect("legacy"),
        PgPool::connect(&new_url).await.expect("new"),
    );
    assert_eq!(message_ids(&legacy).await.len(), 2);
    assert_eq!(message_ids(&new).await, message_ids(&legacy).await);
    let (_, metrics) = svc.get("/metrics").await;
    for cohort in ["legacy", "new"] {
        assert!(
            metrics.contains(&format!(
                "chat_requests_total{{cohort=\"{cohort}\",code=\"ok\"}}"
            )),
            "{cohort} requests counted:\n{metrics}"
        );
    }
    svc.stop().await;
}

/// After a switch of primary (here back to legacy, as after a rollback from CutOver), a write
/// made while the new store was primary may still be queued for legacy. A read marker or a
/// reaction on that message must not be acknowledged before the message is in legacy (it would
/// mark nothing and be lost when the message arrives): the room's writes are refused as
/// unavailable until the queue has drained, then they land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_wait_for_the_rooms_earlier_writes_still_queued_for_the_new_primary() {
    common::init();
    let ids = MessageIdGenerator::default();
    let (legacy_url, new_url) = two_databases("router_catch_up").await;
    let new = pg_store(&new_url).await;
    let new_outbox = Outbox::new(new.pool().clone());
    // A ping slower than 500 ms (a busy test machine) would mark the new store down, and a
    // router does not wait on the outbox of a store it believes down: this test is about the
    // wait, so the health check is lenient.
    let s = start_router_with(
        pg_store(&legacy_url).await,
        new.clone(),
        pg_outbox(&new),
        flags(Side::Legacy, DualWrite::Sync, 0, 0),
        RouterOptions {
            ping_timeout: Duration::from_secs(5),
            ..options()
        },
    )
    .await;
    let room = new_room(&s.router, 1, &[2]).await;
    // A message written while the new store was primary: in the new store, its copy for legacy
    // still queued in the new store's outbox.
    let m = message(&ids, room, 1, "sent while new was primary");
    s.new.insert_message(m.clone()).await.expect("new store");
    let entry = new_outbox
        .enqueue(&NewEntry {
            target: Side::Legacy,
            op: WriteOp::insert_message(&m),
            attempts: 1,
            delay: Duration::from_secs(600),
            last_error: Some("legacy unreachable".into()),
        })
        .await
        .expect("queued copy");

    let marked = s.router.mark_read(room, UserId(2), vec![m.id], now()).await;
    assert!(
        matches!(marked, Err(StoreError::Unavailable(_))),
        "a read marker before its message is in the primary is refused: {marked:?}"
    );
    let reacted = s.router.react(m.id, UserId(2), "👍".into(), now()).await;
    assert!(
        matches!(reacted, Err(StoreError::Unavailable(_))),
        "a reaction to a message still on its way is refused, not NotFound: {reacted:?}"
    );

    // A room created while the new store was primary, its creation still queued for legacy:
    // the authorization before a write (room_access, message_room) is not a 404 either.
    let late = NewRoom {
        id: RoomId::random(),
        name: "made while new was primary".into(),
        room_type: RoomType::Group,
        created_by: UserId(1),
        participants: vec![UserId(1), UserId(2)],
        created_at: now(),
    };
    s.new.create_room(late.clone()).await.expect("new store");
    let late_entry = new_outbox
        .enqueue(&NewEntry {
            target: Side::Legacy,
            op: WriteOp::create_room(&late),
            attempts: 1,
            delay: Duration::from_secs(600),
            last_error: Some("legacy unreachable".into()),
        })
        .await
        .expect("queued creation");
    let access = s.router.room_access(late.id, UserId(1)).await;
    assert!(
        matches!(access, Err(StoreError::Unavailable(_))),
        "a room still queued for the primary is unavailable, not unknown: {access:?}"
    );
    let late_message = message(&ids, late.id, 1, "in the late room");
    s.new
        .insert_message(late_message.clone())
        .await
        .expect("new store");
    assert_eq!(
        s.router
            .message_room(late_message.id)
            .await
            .expect("found in the other store"),
        late.id
    );
    assert!(
        matches!(
            s.router.room_access(RoomId::random(), UserId(1)).await,
            Err(StoreError::NotFound(_))
        ),
        "a room no store knows is still NotFound"
    );

    // The queued copies become due; once they landed, the room's writes go through and count.
    for e in [entry, late_entry] {
        new_outbox
            .retry_later(e, 1, Duration::ZERO, "due now")
            .await
            .expect("due");
    }
    eventually(
        "the queued creation replayed into legacy",
        Duration::from_secs(15),
        || async {
            s.router
                .room_access(late.id, UserId(2))
                .await
                .is_ok_and(|a| a.is_member())
        },
    )
    .await;
    eventually(
        "the queued copy replayed into legacy",
        Duration::from_secs(15),
        || async { message_ids(&s.legacy_pool).await.contains(&m.id.0) },
    )
    .await;
    let mut marked = Err(StoreError::Unavailable(String::new()));
    for _ in 0..50 {
        marked = s.router.mark_read(room, UserId(2), vec![m.id], now()).await;
        if marked.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        marked.expect("marked once caught up"),
        1,
        "the marker counts"
    );
}

/// A `since` marker is resolved to its chunk's ids on the store the reader reads from, and those
/// ids are what both stores mark: a new store that lacks the history (not backfilled yet) marks
/// nothing the legacy store does not, so validate finds no read-marker drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_since_marker_marks_the_same_messages_on_both_stores() {
    common::init();
    let ids = MessageIdGenerator::default();
    let (legacy_url, new_url) = two_databases("router_since_chunk").await;
    let (s, new_pool) = setup(
        &legacy_url,
        &new_url,
        flags(Side::Legacy, DualWrite::Sync, 0, 0),
    )
    .await;
    let room = new_room(&s.router, 1, &[2]).await;
    // History only legacy holds, then three messages written to both.
    for i in 0..600 {
        s.legacy
            .insert_message(message(&ids, room, 1, &format!("old {i}")))
            .await
            .expect("history");
    }
    for i in 0..3 {
        s.router
            .insert_message(message(&ids, room, 1, &format!("new {i}")))
            .await
            .expect("send");
    }
    let read_by_2 = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from room_message_read where user_id = 2")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    let epoch = chrono::DateTime::UNIX_EPOCH;
    let first = chat_service::store::mark_read(
        &s.router,
        room,
        UserId(2),
        chat_service::store::ReadMarker::Since(epoch),
        now(),
    )
    .await
    .expect("mark");
    assert_eq!(first.updated, 500);
    assert_eq!(
        (
            read_by_2(s.legacy_pool.clone()).await,
            read_by_2(new_pool.clone()).await
        ),
        (500, 0),
        "the first chunk is history the new store does not hold: it marks none of it"
    );
    let next = first.next_since.expect("a second chunk");
    let second = chat_service::store::mark_read(
        &s.router,
        room,
        UserId(2),
        chat_service::store::ReadMarker::Since(next),
        now(),
    )
    .await
    .expect("mark");
    assert_eq!((second.updated, second.next_since), (103, None));
    assert_eq!(
        (
            read_by_2(s.legacy_pool.clone()).await,
            read_by_2(new_pool.clone()).await
        ),
        (603, 3)
    );
}
