//! Encryption key rotation through the migration router, on both stores (legacy PostgreSQL
//! primary, the CQL store written in sync and serving half the users): messages written under
//! key A stay readable once B is the current key and A a previous one; `chat-service reencrypt`
//! moves every stored content (PostgreSQL messages, CQL messages and the rooms lists' previews)
//! to B, is idempotent, and afterwards B alone reads everything.

mod common;

use std::time::Duration;

use chat_service::config::{NewStoreChoice, ServeConfig, StoreChoice};
use chat_service::crypto::{ContentCipher, EncryptionKey};
use chat_service::flags::{DualWrite, FlagSource, Side};
use chat_service::ids::UserId;
use chat_service::routing::cohort;
use chat_service::store::scylla::CqlConfig;
use ficus_testkit::{Cassandra, Postgres};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_chat-service");

/// Every message content of `room` as `user` reads it (all pages).
async fn history(svc: &common::TestService, user: i32, room: &str) -> Vec<String> {
    let mut out = vec![];
    let mut before = Value::Null;
    loop {
        let page = svc
            .call(
                user,
                "GetMessageHistory",
                json!({ "id": room, "limit": 100, "before": before }),
            )
            .await;
        for item in page["items"].as_array().expect("items") {
            out.push(item["content"].as_str().expect("content").to_owned());
        }
        before = page["pagination"]["nextCursor"].clone();
        if before.is_null() {
            out.reverse();
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_keys_keep_history_readable_and_reencrypt_moves_both_stores_to_the_new_key() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let cassandra = ficus_testkit::skip_or_fail!(Cassandra::shared());
    let legacy_url = pg.create_database("key_rotation").await.expect("database");
    let keyspace = cassandra
        .create_keyspace("key_rotation")
        .await
        .expect("keyspace");
    let cql = CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace: keyspace.clone(),
        consistency: scylla::statement::Consistency::One,
        address_map: Default::default(),
    };
    let flags = common::flag_doc(1, Side::Legacy, DualWrite::Sync, 0, 50);
    let config = |current: &EncryptionKey, previous: &[EncryptionKey]| -> ServeConfig {
        let mut config = common::config_for(legacy_url.clone(), current.clone());
        config.previous_keys = previous.to_vec();
        config.store = StoreChoice::Router {
            new: NewStoreChoice::Scylla(cql.clone()),
            outbox_max_attempts: 10,
            outbox_inline_grace: Duration::from_secs(30),
            switch_settle: Duration::from_secs(60),
        };
        config.flags = FlagSource::Static(flags);
        config
    };
    // One reader per side of the split: between them, both stores are read.
    let reader = |side| {
        (10..)
            .find(|u| cohort(&flags, UserId(*u)) == side)
            .expect("a user on each side")
    };
    let (on_legacy, on_new) = (reader(Side::Legacy), reader(Side::New));
    let (a, b) = (EncryptionKey::random(), EncryptionKey::random());

    // Written under A.
    let svc = common::start(config(&a, &[])).await;
    let room = svc.create_group(on_legacy, &[on_new]).await;
    let mut sent = vec![];
    for i in 0..30 {
        let text = format!("under A {i} ✉");
        svc.send(if i % 2 == 0 { on_legacy } else { on_new }, &room, &text)
            .await;
        sent.push(text);
    }
    // A room whose last message (the rooms lists' preview) stays one sealed with A.
    let quiet = svc.create_group(on_new, &[on_legacy]).await;
    let mut quiet_sent = vec![];
    for i in 0..5 {
        let text = format!("quiet {i}");
        svc.send(on_new, &quiet, &text).await;
        quiet_sent.push(text);
    }
    svc.stop().await;

    // B current, A previous: the old history reads; new messages are sealed with B.
    let svc = common::start(config(&b, std::slice::from_ref(&a))).await;
    for i in 0..10 {
        let text = format!("under B {i}");
        svc.send(on_new, &room, &text).await;
        sent.push(text);
    }
    for user in [on_legacy, on_new] {
        assert_eq!(history(&svc, user, &room).await, sent, "user {user}");
    }
    svc.stop().await;

    // reencrypt, twice: the second run finds nothing stale.
    let run = || {
        let out = std::process::Command::new(BIN)
            .arg("reencrypt")
            .args(["--database-url", &legacy_url])
            .args(["--cql-contact-points", &cassandra.contact_point()])
            .args(["--cql-keyspace", &keyspace, "--cql-consistency", "ONE"])
            .env("CHAT_ENCRYPTION_KEY", b.to_base64())
            .env("CHAT_ENCRYPTION_KEYS_PREVIOUS", a.to_base64())
            .output()
            .expect("run chat-service reencrypt");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let resealed = |report: &str, what: &str| -> u64 {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line in\n{report}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "resealed")
            .expect("resealed");
        words[at + 1].parse().expect("a count")
    };
    let first = run();
    println!("{first}");
    assert_eq!(resealed(&first, "postgres messages"), 35, "{first}");
    assert_eq!(resealed(&first, "cql messages"), 35, "{first}");
    assert_eq!(
        resealed(&first, "cql room previews"),
        2,
        "the quiet room's previews (one per member); the other room's last message is B's: {first}"
    );
    let second = run();
    for what in ["postgres messages", "cql messages", "cql room previews"] {
        assert_eq!(resealed(&second, what), 0, "{what}: {second}");
    }

    // B alone reads everything, from both stores; nothing is left out as undecryptable.
    let svc = common::start(config(&b, &[])).await;
    for user in [on_legacy, on_new] {
        assert_eq!(history(&svc, user, &room).await, sent, "user {user}");
        assert_eq!(history(&svc, user, &quiet).await, quiet_sent, "user {user}");
    }
    let (_, metrics) = svc.get("/metrics").await;
    assert!(
        metrics.contains("chat_message_decrypt_failures_total 0"),
        "{metrics}"
    );
    svc.stop().await;

    // The CQL previews are under B too (not shown by the API; read directly).
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(cassandra.contact_point())
        .build()
        .await
        .expect("cql session");
    let rows = session
        .query_unpaged(
            format!("SELECT last_message_content FROM {keyspace}.rooms_by_user"),
            &[],
        )
        .await
        .expect("previews")
        .into_rows_result()
        .expect("rows");
    let current = ContentCipher::new(&b).current_key();
    let mut previews = 0;
    for row in rows.rows::<(Option<Vec<u8>>,)>().expect("typed rows") {
        let (content,) = row.expect("row");
        let content = content.expect("a preview");
        assert_eq!(ContentCipher::key_of(&content), Some(current));
        previews += 1;
    }
    assert_eq!(previews, 4, "one preview per member and room");
}
