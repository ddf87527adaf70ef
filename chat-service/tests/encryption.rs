//! Message content is encrypted at rest (AES-256-GCM) and decrypted for members on read.

mod common;

use chat_service::crypto::{ContentCipher, EncryptionKey};
use chat_service::ids::{MessageId, RoomId};
use common::assert_error;
use ficus_testkit::Postgres;
use serde_json::json;
use sqlx::postgres::PgPool;

#[tokio::test]
async fn stored_content_is_ciphertext_and_members_read_plaintext() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let config = common::config(pg, "encryption").await;
    let key = config.encryption_key.clone();
    let svc = common::start(config.clone()).await;
    let room = svc.create_group(1, &[2]).await;
    let secret = "the launch code is 0000 — don't tell anyone";
    let sent = svc.send(1, &room, secret).await;
    let id: uuid::Uuid = sent["id"].as_str().expect("id").parse().expect("uuid");

    // In the table: 0xFC 0x01 || key id || nonce || ciphertext || tag, no trace of the text.
    let pool = PgPool::connect(&config.database_url).await.expect("pool");
    let stored: Vec<u8> = sqlx::query_scalar("select content from room_message where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(stored.len(), 6 + 12 + secret.len() + 16);
    assert_eq!(
        chat_service::crypto::ContentCipher::key_of(&stored),
        Some(chat_service::crypto::ContentCipher::new(&key).current_key()),
        "sealed with the configured key, which it names"
    );
    assert!(
        !stored.windows(6).any(|w| w == b"launch"),
        "plaintext found in room_message.content"
    );
    let as_text = String::from_utf8_lossy(&stored);
    assert!(!as_text.contains("launch"));
    // Two sends of the same text differ (fresh nonce).
    let again = svc.send(1, &room, secret).await;
    let stored_again: Vec<u8> =
        sqlx::query_scalar("select content from room_message where id = $1::uuid")
            .bind(again["id"].as_str())
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_ne!(stored[..12], stored_again[..12]);

    // The key opens it; members read plaintext; non-members get nothing.
    let room_id = RoomId(room.parse().expect("uuid"));
    assert_eq!(
        ContentCipher::new(&key)
            .open(room_id, MessageId(id), &stored)
            .expect("decrypts with the service key"),
        secret
    );
    let history = svc
        .call(2, "GetMessageHistory", json!({ "id": room }))
        .await;
    assert!(
        history["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|m| m["content"] == secret),
        "{history}"
    );
    assert_error(
        &svc.raw(3, "GetMessageHistory", json!({ "id": room })).await,
        403,
        "permission_denied",
    );
    svc.stop().await;

    // The same data under another key does not decrypt: the read fails loudly, not with garbage.
    let mut wrong = config.clone();
    wrong.encryption_key = EncryptionKey::random();
    let other = common::start(wrong).await;
    let (status, body) = other
        .raw(2, "GetMessageHistory", json!({ "id": room }))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("internal")),
        "{body}"
    );
    assert!(!body.to_string().contains("launch"));
    other.stop().await;

    // A tampered row fails authentication instead of returning altered text. It is left out of
    // the page (logged and counted) instead of failing the page: the other message is served.
    let svc = common::start(config).await;
    sqlx::query("update room_message set content = set_byte(content, 20, get_byte(content, 20) # 1) where id = $1").bind(id).execute(&pool).await.expect("tamper");
    let (status, body) = svc.raw(2, "GetMessageHistory", json!({ "id": room })).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    assert_eq!(
        items.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(),
        [again["id"].clone()],
        "only the intact message: {body}"
    );
    assert_eq!(items[0]["content"], secret);
    let (_, metrics) = svc.get("/metrics").await;
    assert!(
        metrics.contains("chat_message_decrypt_failures_total 1"),
        "{metrics}"
    );
    // Alone on its page, it is indistinguishable from a wrong key: the read fails.
    let (status, body) = svc
        .raw(
            2,
            "GetMessageHistory",
            json!({ "id": room, "limit": 1, "before": again["id"] }),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("internal")),
        "{body}"
    );
}
