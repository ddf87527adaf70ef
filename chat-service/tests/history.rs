//! GetMessageHistory's cursor pagination: every message exactly once, newest first, while new
//! messages keep arriving (on PostgreSQL and on the CQL store), and with many messages at the
//! very same timestamp (PostgreSQL: only there can a backfill write equal times with unrelated ids).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chat_service::crypto::ContentCipher;
use chat_service::ids::{MessageId, MessageIdGenerator, RoomId, UserId};
use common::{Backend, Db, TestService};
use ficus_testkit::Postgres;
use serde_json::Value;
use sqlx::postgres::PgPool;

/// Pages through the whole history with `limit`; the ids in order, and each page's size.
async fn all_pages(
    svc: &TestService,
    user: i32,
    room: RoomId,
    limit: u32,
) -> (Vec<MessageId>, Vec<Value>) {
    let (mut ids, mut items, mut cursor) = (Vec::new(), Vec::new(), None);
    for _ in 0..10_000 {
        let (page, next) = svc
            .client
            .history(UserId(user), room, limit, cursor)
            .await
            .expect("history page");
        assert!(page.len() <= limit as usize);
        assert!(
            next.is_none() || page.len() == limit as usize,
            "a page with a cursor is full"
        );
        for item in page {
            ids.push(MessageId(
                item["id"].as_str().expect("id").parse().expect("uuid"),
            ));
            items.push(item);
        }
        match next {
            Some(c) => {
                assert_eq!(
                    Some(c),
                    ids.last().copied(),
                    "nextCursor is the last item's id"
                );
                cursor = Some(c);
            }
            None => return (ids, items),
        }
    }
    panic!("history never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_return_every_message_once_while_messages_keep_arriving() {
    pages_while_messages_arrive(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_pages_return_every_message_once_while_messages_keep_arriving() {
    pages_while_messages_arrive(Backend::Cql).await;
}

async fn pages_while_messages_arrive(backend: Backend) {
    common::init();
    let config =
        ficus_testkit::skip_or_fail!(common::backend_config(backend, "history_concurrent").await);
    let svc = Arc::new(common::start(config).await);
    let room: RoomId = RoomId(svc.create_group(1, &[2, 3]).await.parse().expect("uuid"));
    let room_text = room.to_string();
    for i in 0..60 {
        svc.send(1 + i % 3, &room_text, &format!("before {i}"))
            .await;
    }

    // Writers add messages the whole time the reader pages.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=3)
        .map(|user| {
            let (svc, stop, room_text) = (svc.clone(), stop.clone(), room_text.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    svc.send(user, &room_text, &format!("during {user}/{n}"))
                        .await;
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Let some concurrent messages land first, then page from "now". Messages committed before
    // paging starts must all appear; ones committed meanwhile may or may not (a write whose id
    // is older than a page already read lands behind the reader), but never twice.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let db = Db::connect(&svc.config).await;
    let before: Vec<uuid::Uuid> = db.message_ids(room.0).await;
    let (ids, items) = all_pages(&svc, 2, room, 7).await;
    stop.store(true, Ordering::Relaxed);
    let mut written_during = 0;
    for w in writers {
        written_during += w.await.expect("writer");
    }
    assert!(written_during > 0, "messages arrived while paging");

    let paged: HashSet<uuid::Uuid> = ids.iter().map(|m| m.0).collect();
    assert_eq!(paged.len(), ids.len(), "a message appeared twice");
    let missing: Vec<_> = before.iter().filter(|id| !paged.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} messages stored before paging began were skipped: {missing:?}",
        missing.len()
    );
    let after: Vec<uuid::Uuid> = db.message_ids(room.0).await;
    let table_order: Vec<uuid::Uuid> = after.into_iter().filter(|id| paged.contains(id)).collect();
    assert_eq!(
        ids.iter().map(|m| m.0).collect::<Vec<_>>(),
        table_order,
        "pages follow the store's order (PostgreSQL: (created_at, id) descending; CQL: timeuuid descending), and every item exists"
    );
    assert!(ids.len() >= before.len() && before.len() >= 60);
    let times: Vec<chrono::DateTime<chrono::Utc>> = items
        .iter()
        .map(|i| {
            i["createdAt"]
                .as_str()
                .expect("createdAt")
                .parse()
                .expect("time")
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert!(
        items.iter().any(|i| i["content"] == "before 0"),
        "oldest message reached and decrypted"
    );
}

#[tokio::test]
async fn equal_timestamps_neither_repeat_nor_skip() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let config = common::config(pg, "history_ties").await;
    let cipher = ContentCipher::new(&config.encryption_key);
    let svc = common::start(config).await;
    let room = RoomId(svc.create_group(1, &[2]).await.parse().expect("uuid"));

    // 30 messages with one created_at (as a backfill of second-resolution data could produce).
    let pool = PgPool::connect(&svc.config.database_url)
        .await
        .expect("pool");
    let at = chat_service::store::now();
    let ids = MessageIdGenerator::default();
    let mut written = HashSet::new();
    for i in 0..30 {
        let id = ids.next();
        let sealed = cipher.seal(room, id, &format!("tie {i}")).expect("seal");
        sqlx::query("insert into room_message (id, room_id, sender_id, content, type, created_at) values ($1, $2, 1, $3, 'user_message', $4)")
            .bind(id.0)
            .bind(room.0)
            .bind(sealed)
            .bind(at)
            .execute(&pool)
            .await
            .expect("insert");
        written.insert(id);
    }
    for limit in [1, 4, 7, 30, 100] {
        let (got, items) = all_pages(&svc, 2, room, limit).await;
        assert_eq!(got.len(), 30, "limit {limit}");
        assert_eq!(
            got.iter().copied().collect::<HashSet<_>>(),
            written,
            "limit {limit}"
        );
        let mut sorted = got.clone();
        sorted.sort_by_key(|id| std::cmp::Reverse(id.0));
        assert_eq!(
            got, sorted,
            "ties are ordered by id, descending (limit {limit})"
        );
        assert!(
            items
                .iter()
                .all(|i| i["content"].as_str().is_some_and(|c| c.starts_with("tie ")))
        );
    }
}

/// The CQL store directly: a message written twice is one message (and one unread count), an id
/// reused for another message is a conflict, a cursor of another room is not found, and an
/// unreachable cluster is `Unavailable`.
#[tokio::test]
async fn cql_store_is_idempotent_by_message_id() {
    use chat_service::config::StoreChoice;
    use chat_service::store::scylla::{CqlConfig, CqlStore};
    use chat_service::store::{ChatStore, NewMessage, NewRoom, RoomType, StoreError};

    common::init();
    let config =
        ficus_testkit::skip_or_fail!(common::backend_config(Backend::Cql, "cql_idempotent").await);
    let StoreChoice::Scylla(cql) = &config.store else {
        unreachable!()
    };
    let store = CqlStore::connect(cql).await.expect("connect");
    // Connecting again (a second replica) finds the schema applied.
    CqlStore::connect(cql).await.expect("connect again");
    store.ping().await.expect("ping");

    let at = chat_service::store::now();
    let room = |id| NewRoom {
        id,
        name: "r".into(),
        room_type: RoomType::Group,
        created_by: UserId(1),
        participants: vec![UserId(1), UserId(2)],
        created_at: at,
    };
    let (a, b) = (RoomId::random(), RoomId::random());
    store.create_room(room(a)).await.expect("room a");
    store.create_room(room(b)).await.expect("room b");
    let id = MessageIdGenerator::default().next();
    let message = NewMessage {
        id,
        room_id: a,
        sender_id: UserId(1),
        content: vec![1, 2, 3],
        message_type: "user_message".into(),
        created_at: id.created_at().expect("time"),
    };
    let first = store
        .insert_message(message.clone())
        .await
        .expect("first write");
    let again = store
        .insert_message(message.clone())
        .await
        .expect("retried write");
    assert_eq!(first, again);
    let page = store
        .history(a, UserId(1), None, 10)
        .await
        .expect("history");
    assert_eq!(page.items, vec![first.clone()], "one message");
    let unread: Vec<(scylla::value::Counter,)> = {
        let db = Db::connect(&config).await;
        let Db::Cql { session, keyspace } = &db else {
            unreachable!()
        };
        let cql = format!(
            "SELECT unread_count FROM {keyspace}.room_counters_by_user WHERE user_id = 2 AND room_id = ?"
        );
        session
            .query_unpaged(cql, (a.0,))
            .await
            .expect("counter")
            .into_rows_result()
            .expect("rows")
            .rows()
            .expect("type")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(
        unread.iter().map(|(c,)| c.0).collect::<Vec<_>>(),
        [1],
        "the retry did not count twice"
    );

    let other = NewMessage {
        room_id: b,
        ..message
    };
    assert!(
        matches!(
            store.insert_message(other).await,
            Err(StoreError::Conflict(_))
        ),
        "same id, another room"
    );
    assert!(
        matches!(
            store.history(b, UserId(1), Some(id), 10).await,
            Err(StoreError::NotFound(_))
        ),
        "cursor of another room"
    );
    assert!(matches!(
        store
            .message_room(MessageIdGenerator::default().next())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.message_room(id).await.expect("room"), a);

    // Nothing listens on port 1: retry later, not an internal error.
    let nowhere = CqlConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        ..cql.clone()
    };
    match CqlStore::connect(&nowhere).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
}

/// A `before` cursor that cannot be a message of the room is the caller's mistake: on the CQL
/// store an id that is not a timeuuid (it cannot key a message there) is `400`, a timeuuid that
/// is not a message of the room `404`, as on PostgreSQL, where any unknown id is `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_a_cursor_that_is_not_a_timeuuid_is_invalid_argument() {
    bad_cursors(Backend::Cql, 400, "invalid_argument").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cursor_is_not_found() {
    bad_cursors(Backend::Postgres, 404, "not_found").await;
}

async fn bad_cursors(backend: Backend, v4_status: u16, v4_code: &str) {
    common::init();
    let config =
        ficus_testkit::skip_or_fail!(common::backend_config(backend, "history_bad_cursor").await);
    let svc = common::start(config).await;
    let room = svc.create_group(1, &[2]).await;
    svc.send(1, &room, "hello").await;
    let history = |before: String| {
        let body = serde_json::json!({ "id": room, "before": before });
        let svc = &svc;
        async move { svc.raw(1, "GetMessageHistory", body).await }
    };
    common::assert_error(
        &history(uuid::Uuid::new_v4().to_string()).await,
        v4_status,
        v4_code,
    );
    common::assert_error(
        &history(MessageIdGenerator::default().next().to_string()).await,
        404,
        "not_found",
    );
    svc.stop().await;
}
