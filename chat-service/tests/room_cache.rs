//! The room cache on a real Redis: repeated GetRoom / GetRooms are answered without the store,
//! a write is seen by the next read, reads go on while Redis is down and writes made then are
//! not hidden once it is back; and behind the migration router, a view cached from one side of
//! the split is never served once the flags move the user to the other.
//! (Every API suite also runs with the cache: `tests/api.rs`, `*_cached`.)

mod common;

use std::time::{Duration, Instant};

use chat_service::config::{NewStoreChoice, StoreChoice};
use chat_service::flags::{DualWrite, FlagSource, Side};
use common::{Backend, TestService};
use serde_json::{Value, json};

/// `name{labels} value` in the service's /metrics text (0 when absent).
async fn metric(svc: &TestService, series: &str) -> f64 {
    let (status, text) = svc.get("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

fn store_reads(database: &str, operation: &str) -> String {
    format!(
        r#"chat_database_operations_total{{database="{database}",operation="{operation}",status="success"}}"#
    )
}

const HITS: &str = r#"chat_cache_operations_total{operation="get",status="hit"}"#;
const GET_ERRORS: &str = r#"chat_cache_operations_total{operation="get",status="error"}"#;
const INVALIDATE_ERRORS: &str =
    r#"chat_cache_operations_total{operation="invalidate",status="error"}"#;

async fn cached(backend: Backend, test: &str) -> Option<TestService> {
    common::init();
    let config = match common::backend_config(backend, test).await {
        Ok(config) => config,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    match common::start_cached(config).await {
        Ok(svc) => Some(svc),
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            None
        }
    }
}

fn item<'a>(list: &'a Value, room: &str) -> &'a Value {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r["id"] == json!(room))
        .expect("the room is listed")
}

async fn repeated_reads_skip_the_store_and_a_write_is_seen_by_the_next_read(backend: Backend) {
    let Some(svc) = cached(backend, "cache_hits").await else {
        return;
    };
    let database = match backend {
        Backend::Postgres => "postgres",
        Backend::Cql => "scylla",
    };
    let room = svc.create_group(1, &[2]).await;
    let first = svc.call(1, "GetRooms", json!({})).await;
    let listed = metric(&svc, &store_reads(database, "rooms_for_user")).await;
    let got_room = svc.call(1, "GetRoom", json!({ "id": room })).await;
    let fetched = metric(&svc, &store_reads(database, "get_room")).await;
    for _ in 0..5 {
        assert_eq!(svc.call(1, "GetRooms", json!({})).await, first);
        assert_eq!(
            svc.call(1, "GetRoom", json!({ "id": room })).await,
            got_room
        );
    }
    assert_eq!(
        (
            metric(&svc, &store_reads(database, "rooms_for_user")).await,
            metric(&svc, &store_reads(database, "get_room")).await,
        ),
        (listed, fetched),
        "ten repeated reads, none of them by the store"
    );
    assert!(metric(&svc, HITS).await >= 10.0);

    // A message by the other member: user 1's list and room show it at once.
    let sent = svc.send(2, &room, "hello").await;
    let list = svc.call(1, "GetRooms", json!({})).await;
    assert_eq!(item(&list, &room)["unreadCount"], 1);
    assert_eq!(item(&list, &room)["lastMessageAt"], sent["createdAt"]);
    assert_eq!(
        svc.call(1, "GetRoom", json!({ "id": room })).await["room"]["unreadCount"],
        1
    );
    // Reading, pinning and leaving: each seen by the next read.
    svc.call(
        1,
        "MarkMessagesAsRead",
        json!({ "roomId": room, "messageIds": [sent["id"]] }),
    )
    .await;
    assert_eq!(
        item(&svc.call(1, "GetRooms", json!({})).await, &room)["unreadCount"],
        0
    );
    svc.call(1, "PinRoom", json!({ "id": room })).await;
    assert_eq!(
        svc.call(1, "GetRoom", json!({ "id": room })).await["room"]["isPinned"],
        true
    );
    svc.call(2, "LeaveRoom", json!({ "id": room })).await;
    assert_eq!(
        svc.call(1, "GetRoom", json!({ "id": room })).await["room"]["participants"],
        json!([1])
    );
    svc.stop().await;
}

#[tokio::test]
async fn postgres_repeated_reads_skip_the_store_and_a_write_is_seen_by_the_next_read() {
    repeated_reads_skip_the_store_and_a_write_is_seen_by_the_next_read(Backend::Postgres).await;
}

#[tokio::test]
async fn cql_repeated_reads_skip_the_store_and_a_write_is_seen_by_the_next_read() {
    repeated_reads_skip_the_store_and_a_write_is_seen_by_the_next_read(Backend::Cql).await;
}

/// A page of a user's rooms is ordered by every room's activity: a message in a room that is
/// not on the page moves it onto the page at once (a partial page is never served from the
/// cache), and a page that lists all of them is cached.
#[tokio::test]
async fn a_message_in_a_room_off_the_page_moves_it_onto_the_page() {
    let Some(svc) = cached(Backend::Postgres, "cache_pages").await else {
        return;
    };
    let a = svc.create_group(1, &[2]).await;
    let b = svc.create_group(1, &[2]).await;
    let c = svc.create_group(1, &[2]).await;
    let page = |limit: u32| {
        let svc = &svc;
        async move {
            let list = svc
                .call(1, "GetRooms", json!({ "page": 1, "limit": limit }))
                .await;
            list["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|r| r["id"].as_str().expect("id").to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(2).await, [c.clone(), b.clone()]);
    assert_eq!(page(2).await, [c.clone(), b.clone()]);
    svc.send(2, &a, "bump").await;
    assert_eq!(
        page(2).await,
        [a.clone(), c.clone()],
        "room a moved onto the page"
    );
    // The whole list is cached: a second read is a hit, and a message still reorders it.
    let hits = metric(&svc, HITS).await;
    assert_eq!(page(20).await, [a.clone(), c.clone(), b.clone()]);
    assert_eq!(page(20).await, [a.clone(), c.clone(), b.clone()]);
    assert!(metric(&svc, HITS).await > hits);
    svc.send(2, &b, "bump").await;
    assert_eq!(page(20).await, [b, a, c]);
    svc.stop().await;
}

/// Polls `series` until `want` holds (the health watch runs every 5 s).
async fn until_metric(svc: &TestService, series: &str, want: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(svc, series).await;
        if want(value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Redis stops: reads and writes go on from the store, readiness stays up and says so,
/// `chat_cache_up` turns 0. Redis back (empty, as after a restart without persistence): the
/// writes made meanwhile are all seen, and reads are cached again.
#[tokio::test]
async fn reads_go_on_while_redis_is_down_and_nothing_written_meanwhile_is_hidden() {
    let Some(svc) = cached(Backend::Postgres, "cache_down").await else {
        return;
    };
    let redis = svc.redis.as_ref().expect("the cache's Redis");
    let room = svc.create_group(1, &[2]).await;
    let before = svc.call(1, "GetRooms", json!({})).await;
    assert_eq!(svc.call(1, "GetRooms", json!({})).await, before);
    assert_eq!(until_metric(&svc, "chat_cache_up", |v| v == 1.0).await, 1.0);

    redis.stop();
    let sent = svc.send(2, &room, "while the cache is away").await;
    let list = svc.call(1, "GetRooms", json!({})).await;
    assert_eq!(item(&list, &room)["unreadCount"], 1);
    assert!(metric(&svc, GET_ERRORS).await >= 1.0);
    assert!(metric(&svc, INVALIDATE_ERRORS).await >= 1.0);
    let (status, body) = svc.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("room cache"), "{body}");
    assert_eq!(until_metric(&svc, "chat_cache_up", |v| v == 0.0).await, 0.0);

    redis.restart().expect("Redis restarts");
    assert_eq!(until_metric(&svc, "chat_cache_up", |v| v == 1.0).await, 1.0);
    let hits = metric(&svc, HITS).await;
    let mut list = Value::Null;
    for _ in 0..3 {
        list = svc.call(1, "GetRooms", json!({})).await;
        assert_eq!(item(&list, &room)["lastMessageAt"], sent["createdAt"]);
    }
    assert_eq!(item(&list, &room)["unreadCount"], 1);
    assert!(
        metric(&svc, HITS).await > hits,
        "reads are cached again once Redis is back"
    );
    svc.stop().await;
}

/// Behind the migration router (PostgreSQL -> PostgreSQL, flags from a watched file): a view
/// cached while the user read from legacy is not served once the split moves them to new, nor
/// the other way back; the new store's answer is what the user gets.
#[tokio::test]
async fn behind_the_router_a_view_from_one_side_is_never_served_after_the_flags_move() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(ficus_testkit::Postgres::shared());
    let mut config = common::config(pg, "cache_router_legacy").await;
    let new_url = pg
        .create_database("cache_router_new")
        .await
        .expect("new database");
    let dir = ficus_testkit::temp_dir().expect("temp dir");
    let flags_path = dir.path().join("flags");
    let write_flags = |generation: i64, split: u8| {
        let flags = common::flag_doc(generation, Side::Legacy, DualWrite::Sync, 0, split);
        let tmp = dir.path().join("flags.tmp");
        std::fs::write(&tmp, flags.to_file_text()).expect("write flags");
        std::fs::rename(&tmp, &flags_path).expect("replace flags");
    };
    write_flags(1, 0);
    config.store = StoreChoice::Router {
        new: NewStoreChoice::Postgres {
            database_url: new_url.clone(),
        },
        outbox_max_attempts: 10,
        outbox_inline_grace: Duration::from_secs(30),
        switch_settle: Duration::from_secs(60),
    };
    config.flags = FlagSource::File(flags_path.clone());
    let svc = ficus_testkit::skip_or_fail!(common::start_cached(config).await);

    let room = svc.create_group(1, &[2]).await;
    let name = |view: &Value| view["room"]["name"].clone();
    let legacy_view = svc.call(1, "GetRoom", json!({ "id": room })).await;
    assert_eq!(
        svc.call(1, "GetRoom", json!({ "id": room })).await,
        legacy_view
    );
    // The new store holds the room under another name (as if it had drifted): only a read
    // served by the new store can show it.
    let new_db = sqlx::PgPool::connect(&new_url).await.expect("new pool");
    sqlx::query("UPDATE room SET name = 'as the new store has it' WHERE id = $1::uuid")
        .bind(&room)
        .execute(&new_db)
        .await
        .expect("rename in the new store");
    assert_eq!(
        name(&svc.call(1, "GetRoom", json!({ "id": room })).await),
        name(&legacy_view),
        "still on legacy: the cached legacy view"
    );

    let move_to = |generation: i64, split: u8| {
        write_flags(generation, split);
        let svc = &svc;
        async move {
            let applied =
                until_metric(svc, "chat_flags_generation", |g| g == generation as f64).await;
            assert_eq!(applied, generation as f64, "the service applied the flags");
        }
    };
    move_to(2, 100).await;
    assert_eq!(
        name(&svc.call(1, "GetRoom", json!({ "id": room })).await),
        json!("as the new store has it"),
        "on new: the new store's view, not the one cached from legacy"
    );
    move_to(3, 0).await;
    assert_eq!(
        name(&svc.call(1, "GetRoom", json!({ "id": room })).await),
        name(&legacy_view),
        "back on legacy: legacy's view, not the one cached from new"
    );
    svc.stop().await;
}
