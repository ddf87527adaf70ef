//! The binary: start-up errors are clear, `migrate-schema` applies the schema, `backfill` is
//! also reachable under its earlier name `migrate`.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use chat_service::crypto::EncryptionKey;
use ficus_testkit::Postgres;

const BIN: &str = env!("CARGO_BIN_EXE_chat-service");

/// Runs the binary with a clean environment plus `env`; fails the test if it hangs.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn chat-service");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("chat-service exits in time")
        .expect("output")
}

#[test]
fn a_missing_or_short_encryption_key_is_a_clear_start_up_error() {
    // No database is needed: the key is checked before anything connects.
    let base = [
        ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        ("CHAT_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];
    let short = EncryptionKey::from_bytes([7; 32]).to_base64()[..24].to_owned();
    for (case, key) in [
        ("missing", None),
        ("empty", Some("")),
        ("short", Some(short.as_str())),
        ("not base64", Some("%%%")),
    ] {
        let mut env = base.to_vec();
        if let Some(k) = key {
            env.push(("CHAT_ENCRYPTION_KEY", k));
        }
        let out = run(&["serve", "--listen", "127.0.0.1:0"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: started without a valid key");
        assert!(
            stderr.contains("CHAT_ENCRYPTION_KEY") && stderr.contains("openssl rand -base64 32"),
            "{case}: {stderr}"
        );
    }
}

#[test]
fn a_missing_jwt_secret_is_a_clear_start_up_error() {
    let key = EncryptionKey::random().to_base64();
    let out = run(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ("CHAT_ENCRYPTION_KEY", &key),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHAT_JWT_SECRET"));
}

#[test]
fn backfill_is_the_command_and_migrate_still_runs_it() {
    // No database is needed: the missing dual-write start is refused before anything connects.
    let env = [("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")];
    for name in ["backfill", "migrate"] {
        let out = run(&[name, "--cql-contact-points", "127.0.0.1:1"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: ran without --dual-write-started-at"
        );
        assert!(
            stderr.contains("no dual-write start: pass --dual-write-started-at"),
            "{name}: {stderr}"
        );
    }
    let help = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("backfill") && l.contains("[alias: migrate]")),
        "{help}"
    );
}

#[tokio::test]
async fn migrate_schema_creates_the_tables_and_indexes() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let url = pg
        .create_database("migrate_schema")
        .await
        .expect("database");
    for _ in 0..2 {
        let out = tokio::task::spawn_blocking({
            let url = url.clone();
            move || run(&["migrate-schema"], &[("DATABASE_URL", &url)])
        })
        .await
        .expect("run");
        assert!(
            out.status.success(),
            "migrate-schema (idempotent): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pool = sqlx::postgres::PgPool::connect(&url).await.expect("pool");
    let indexes: Vec<String> = sqlx::query_scalar(
        "select indexdef from pg_indexes where schemaname = 'public' order by indexname",
    )
    .fetch_all(&pool)
    .await
    .expect("indexes");
    let has = |needle: &str| indexes.iter().any(|i| i.contains(needle));
    assert!(
        has("ON public.room_member USING btree (user_id, room_id) WHERE (removed_at IS NULL)"),
        "{indexes:#?}"
    );
    assert!(
        has(
            "ON public.room_message USING btree (room_id, created_at DESC, id DESC) WHERE (deleted_at IS NULL)"
        ),
        "{indexes:#?}"
    );
    for table in [
        "room",
        "room_member",
        "room_message",
        "room_message_reaction",
        "room_message_read",
    ] {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from information_schema.tables where table_name = $1",
        )
        .bind(table)
        .fetch_one(&pool)
        .await
        .expect("table");
        assert_eq!(n, 1, "table {table}");
    }
}

#[test]
fn token_prints_a_token_the_service_accepts() {
    let secret = "0123456789abcdef0123456789abcdef";
    let out = run(&["token", "--user", "7"], &[("CHAT_JWT_SECRET", secret)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let auth = chat_service::auth::Authenticator::new(secret.as_bytes());
    assert_eq!(auth.verify(&token), Ok(chat_service::ids::UserId(7)));
    assert!(
        !run(&["token", "--user", "7"], &[]).status.success(),
        "no secret, no token"
    );
}
