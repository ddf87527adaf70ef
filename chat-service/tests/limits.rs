//! Request limits: body size, message length, page size, request timeout. Every breach is a
//! Connect error, never a plain-text or 5xx-for-bad-input response.

mod common;

use std::time::Duration;

use chat_service::ids::UserId;
use chat_service::store::page::MAX_LIMIT;
use ficus_testkit::Postgres;
use serde_json::json;
use sqlx::postgres::PgPool;

#[tokio::test]
async fn oversized_bodies_long_messages_and_big_pages() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "limits").await).await;
    let room = svc.create_group(1, &[2]).await;

    // Body limit (64 KiB): a Connect invalid_argument that names the limit.
    let big = json!({ "roomId": room, "content": "x".repeat(70 * 1024) });
    let (status, body) = svc.raw(1, "SendMessage", big).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_argument")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("65536")),
        "{body}"
    );
    // Also for a method that would otherwise ignore the body's content.
    let (status, body) = svc
        .raw(1, "GetRooms", json!({ "padding": "p".repeat(100 * 1024) }))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_argument")),
        "{body}"
    );

    // Message length cap: 4096 characters (not bytes).
    svc.send(1, &room, &"ñ".repeat(4096)).await;
    let (status, body) = svc
        .raw(
            1,
            "SendMessage",
            json!({ "roomId": room, "content": "a".repeat(4097) }),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_argument")),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("4096")),
        "{body}"
    );

    // Page size: history limits above 100 are clamped to 100.
    for i in 0..MAX_LIMIT + 5 {
        svc.send(2, &room, &format!("m{i}")).await;
    }
    let room_id = chat_service::ids::RoomId(room.parse().expect("uuid"));
    let (items, next) = svc
        .client
        .history(UserId(1), room_id, 1000, None)
        .await
        .expect("history");
    assert_eq!(items.len(), MAX_LIMIT as usize);
    assert!(next.is_some());
    let (items, _) = svc
        .client
        .history(UserId(1), room_id, 0, None)
        .await
        .expect("history");
    assert_eq!(items.len(), 20, "0 means the default page size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_over_the_deadline_is_deadline_exceeded_and_shutdown_waits_for_in_flight_requests()
 {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let mut config = common::config(pg, "timeout").await;
    config.limits.request_timeout = Duration::from_millis(500);
    let pool = PgPool::connect(&config.database_url).await.expect("pool");
    let svc = common::start(config).await;
    let room = svc.create_group(1, &[2]).await;

    // Hold the room row: inserting a message (its foreign key check) waits for the lock.
    let lock_room = || async {
        let mut tx = pool.begin().await.expect("tx");
        sqlx::query("select 1 from room where id = $1::uuid for update")
            .bind(&room)
            .execute(&mut *tx)
            .await
            .expect("lock");
        tx
    };
    let tx = lock_room().await;
    let (status, body) = svc
        .raw(
            1,
            "SendMessage",
            json!({ "roomId": room, "content": "stuck" }),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("deadline_exceeded")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("500 ms")),
        "{body}"
    );
    tx.rollback().await.expect("unlock");
    svc.send(1, &room, "unstuck").await;

    // Graceful shutdown: a request in flight when shutdown begins still completes.
    let metrics = svc.get("/metrics").await.1;
    assert!(
        metrics.contains(r#"chat_requests_total{cohort="legacy",code="deadline_exceeded"} 1"#),
        "{metrics}"
    );
    let tx = lock_room().await;
    let client = svc.client.clone();
    let room_id = chat_service::ids::RoomId(room.parse().expect("uuid"));
    let in_flight =
        tokio::spawn(async move { client.send_message(UserId(1), room_id, "in flight").await });
    // In flight = its insert waits on the room lock in PostgreSQL.
    let waiting = std::time::Instant::now();
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity");
        if blocked > 0 {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the request never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let base_url = svc.base_url.clone();
    let stopping = tokio::spawn(svc.stop());
    // Shutdown has begun once the listener refuses new connections; the request in flight
    // still holds it open.
    let addr = base_url.trim_start_matches("http://").to_owned();
    let waiting = std::time::Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "shutdown never began"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the request in flight"
    );
    tx.rollback().await.expect("unlock");
    let sent = in_flight.await.expect("task");
    assert!(sent.is_ok(), "the in-flight request completed: {sent:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes")
        .expect("task");
}

/// A request refused before its body is read (no credentials; a 60 KB body, which arrives in
/// several reads) leaves its keep-alive connection usable: the next request sent on it gets an
/// answer. (Otherwise the server closes the
/// connection over the unread bytes, and a client that already sent its next request on it
/// loses that request without an answer.)
#[tokio::test]
async fn a_refused_request_leaves_its_connection_usable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "keep_alive").await).await;
    let addr = svc.base_url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let body = format!(
        r#"{{"roomId":"{}","content":"{}"}}"#,
        uuid::Uuid::nil(),
        "x".repeat(60_000)
    );
    let request = format!(
        "POST /chat.v1.ChatService/SendMessage HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Both requests at once, as a pipelining or fast client would have them on the wire.
    conn.write_all(format!("{request}{request}").as_bytes())
        .await
        .expect("send");
    let mut answers = String::new();
    let mut buf = [0u8; 8192];
    let read_both = async {
        while answers.matches("HTTP/1.1 401").count() < 2 {
            let n = conn.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            answers.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_both).await;
    assert_eq!(
        answers.matches("HTTP/1.1 401").count(),
        2,
        "both requests answered on one connection: {answers}"
    );
    svc.stop().await;
}
