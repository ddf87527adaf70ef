//! GetMessageHistory's cursor pagination: every message exactly once, newest first, while new
//! messages keep arriving, and with many messages at the very same timestamp.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chat_service::crypto::ContentCipher;
use chat_service::ids::{MessageId, MessageIdGenerator, RoomId, UserId};
use common::TestService;
use ficus_e2e::Postgres;
use serde_json::Value;
use sqlx::postgres::PgPool;

/// Pages through the whole history with `limit`; the ids in order, and each page's size.
async fn all_pages(svc: &TestService, user: i32, room: RoomId, limit: u32) -> (Vec<MessageId>, Vec<Value>) {
    let (mut ids, mut items, mut cursor) = (Vec::new(), Vec::new(), None);
    for _ in 0..10_000 {
        let (page, next) = svc.client.history(UserId(user), room, limit, cursor).await.expect("history page");
        assert!(page.len() <= limit as usize);
        assert!(next.is_none() || page.len() == limit as usize, "a page with a cursor is full");
        for item in page {
            ids.push(MessageId(item["id"].as_str().expect("id").parse().expect("uuid")));
            items.push(item);
        }
        match next {
            Some(c) => {
                assert_eq!(Some(c), ids.last().copied(), "nextCursor is the last item's id");
                cursor = Some(c);
            }
            None => return (ids, items),
        }
    }
    panic!("history never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_return_every_message_once_while_messages_keep_arriving() {
    common::init();
    let pg = ficus_e2e::skip_or_fail!(Postgres::shared());
    let svc = Arc::new(common::start(common::config(pg, "history_concurrent").await).await);
    let room: RoomId = RoomId(svc.create_group(1, &[2, 3]).await.parse().expect("uuid"));
    let room_text = room.to_string();
    for i in 0..60 {
        svc.send(1 + i % 3, &room_text, &format!("before {i}")).await;
    }

    // Writers add messages the whole time the reader pages.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=3)
        .map(|user| {
            let (svc, stop, room_text) = (svc.clone(), stop.clone(), room_text.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    svc.send(user, &room_text, &format!("during {user}/{n}")).await;
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
    let pool = PgPool::connect(&svc.config.database_url).await.expect("pool");
    let in_room = "select id from room_message where room_id = $1 order by created_at desc, id desc";
    let before: Vec<uuid::Uuid> = sqlx::query_scalar(in_room).bind(room.0).fetch_all(&pool).await.expect("ids before");
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
    assert!(missing.is_empty(), "{} messages stored before paging began were skipped: {missing:?}", missing.len());
    let after: Vec<uuid::Uuid> = sqlx::query_scalar(in_room).bind(room.0).fetch_all(&pool).await.expect("ids after");
    let table_order: Vec<uuid::Uuid> = after.into_iter().filter(|id| paged.contains(id)).collect();
    assert_eq!(ids.iter().map(|m| m.0).collect::<Vec<_>>(), table_order, "pages follow (created_at, id) descending, and every item exists");
    assert!(ids.len() >= before.len() && before.len() >= 60);
    let times: Vec<chrono::DateTime<chrono::Utc>> = items.iter().map(|i| i["createdAt"].as_str().expect("createdAt").parse().expect("time")).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert!(items.iter().any(|i| i["content"] == "before 0"), "oldest message reached and decrypted");
}

#[tokio::test]
async fn equal_timestamps_neither_repeat_nor_skip() {
    common::init();
    let pg = ficus_e2e::skip_or_fail!(Postgres::shared());
    let config = common::config(pg, "history_ties").await;
    let cipher = ContentCipher::new(&config.encryption_key);
    let svc = common::start(config).await;
    let room = RoomId(svc.create_group(1, &[2]).await.parse().expect("uuid"));

    // 30 messages with one created_at (as a backfill of second-resolution data could produce).
    let pool = PgPool::connect(&svc.config.database_url).await.expect("pool");
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
        assert_eq!(got.iter().copied().collect::<HashSet<_>>(), written, "limit {limit}");
        let mut sorted = got.clone();
        sorted.sort_by_key(|id| std::cmp::Reverse(id.0));
        assert_eq!(got, sorted, "ties are ordered by id, descending (limit {limit})");
        assert!(items.iter().all(|i| i["content"].as_str().is_some_and(|c| c.starts_with("tie "))));
    }
}
