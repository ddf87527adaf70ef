//! A crash of the chat-service process itself: the binary runs `serve --store router
//! --new-store postgres` (legacy and new on two PostgreSQL databases, `dual_write = sync` from a
//! flags file), several clients send messages concurrently, the process is SIGKILLed mid-burst
//! and started again on the same databases. Once the outbox has drained, every message whose
//! SendMessage call was acknowledged (200) is in both stores.
//!
//! The transactional outbox row of a message commits with the legacy write and is due only after
//! the inline grace period (30 s by default), so the drain after the restart takes up to that long.
//!
//! After cutover (the new store primary, `async` reverse dual write to legacy), with legacy
//! hanging (its message table locked) so that every legacy write is still pending when the
//! process stops: a SIGKILL loses none of them (their outbox records are in the new store and a
//! restarted instance replays them), and a SIGTERM drains: the process exits 0 only once each
//! pending legacy write was made or recorded in an outbox.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_service::client::ChatClient;
use chat_service::crypto::EncryptionKey;
use chat_service::flags::{DualWrite, Side};
use chat_service::ids::{RoomId, UserId};
use ficus_testkit::Postgres;
use sqlx::postgres::PgPool;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_chat-service");
const CLIENTS: usize = 8;
const ROOMS: usize = 4;

struct Service {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    base_url: String,
    log: std::path::PathBuf,
}

impl Service {
    fn spawn(&self, run: u32) -> Child {
        let log =
            std::fs::File::create(self.log.with_extension(format!("{run}.log"))).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chat-service")
    }

    fn log_text(&self, run: u32) -> String {
        std::fs::read_to_string(self.log.with_extension(format!("{run}.log"))).unwrap_or_default()
    }

    /// Waits for `/readyz`; panics (with the process's log) if it exits or does not get ready.
    async fn wait_ready(&self, child: &mut Child, run: u32) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("chat-service exited ({status}):\n{}", self.log_text(run));
            }
            if let Ok(r) = http
                .get(format!("{}/readyz", self.base_url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chat-service not ready within 60 s:\n{}",
                self.log_text(run)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn all_message_ids(pool: &PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar::<sqlx::Postgres, Uuid>("select id from room_message")
        .fetch_all(pool)
        .await
        .expect("ids")
        .into_iter()
        .collect()
}

async fn outbox_depth(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<sqlx::Postgres, i64>("select count(*) from outbox")
        .fetch_one(pool)
        .await
        .expect("depth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_burst_loses_no_acknowledged_message_in_either_store() {
    common::init();
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        Err(e) => return ficus_testkit::skip_or_panic(&e),
    };
    let legacy_url = pg.create_database("crash_legacy").await.expect("db");
    let new_url = pg.create_database("crash_new").await.expect("db");
    let dir = std::env::temp_dir().join(format!("chat-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let flags_file = dir.join("flags");
    std::fs::write(
        &flags_file,
        common::flag_doc(1, Side::Legacy, DualWrite::Sync, 0, 0).to_file_text(),
    )
    .expect("flags file");
    let port = free_port();
    let service = Service {
        args: vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--store".into(),
            "router".into(),
            "--new-store".into(),
            "postgres".into(),
            "--new-database-url".into(),
            new_url.clone(),
            "--flags-file".into(),
            flags_file.display().to_string(),
        ],
        env: vec![
            ("DATABASE_URL", legacy_url.clone()),
            (
                "CHAT_JWT_SECRET",
                String::from_utf8(common::JWT_SECRET.to_vec()).expect("utf8"),
            ),
            // The same key across the restart: the content stays readable.
            ("CHAT_ENCRYPTION_KEY", EncryptionKey::random().to_base64()),
        ],
        base_url: format!("http://127.0.0.1:{port}"),
        log: dir.join("chat-service"),
    };

    let mut child = service.spawn(1);
    service.wait_ready(&mut child, 1).await;
    let client = Arc::new(ChatClient::new(&service.base_url, common::JWT_SECRET));
    let users: Vec<UserId> = (1..=CLIENTS as i32).map(UserId).collect();
    let mut rooms: Vec<RoomId> = Vec::new();
    for i in 0..ROOMS {
        rooms.push(
            client
                .create_room(users[0], &format!("crash {i}"), "group", &users)
                .await
                .expect("room"),
        );
    }
    let rooms = Arc::new(rooms);
    let legacy = PgPool::connect(&legacy_url).await.expect("legacy pool");
    let new = PgPool::connect(&new_url).await.expect("new pool");

    // The burst and the kill, again (on a restarted process) until the kill cut a write off:
    // a kill that happens to land between writes would not exercise the replay this test is
    // about. Every attempt's acknowledged writes are checked at the end.
    let (mut acked, mut failed) = (Vec::new(), 0);
    let mut run = 1;
    let (cut_off, depth_after_kill) = loop {
        // The burst: CLIENTS closed loops until told to stop; each keeps the ids acknowledged.
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..CLIENTS {
            let (client, rooms, stop, user) =
                (client.clone(), rooms.clone(), stop.clone(), users[w]);
            workers.push(tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), 0u64);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .send_message(
                            user,
                            rooms[(w + i) % rooms.len()],
                            &format!("client {w} message {i}"),
                        )
                        .await
                    {
                        Ok(id) => acked.push(id.0),
                        Err(_) => failed += 1,
                    }
                    i += 1;
                }
                (acked, failed)
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        let before = acked.len();
        for w in workers {
            let (a, f) = w.await.expect("worker");
            acked.extend(a);
            failed += f;
        }
        assert!(
            acked.len() - before >= 20,
            "the burst was under way when the process was killed ({} acknowledged)",
            acked.len() - before
        );
        // What the crash cut off: messages legacy committed whose new-store write is still only
        // an outbox record (nothing runs on these databases now).
        let cut_off = recorded_for(&legacy, "new").await;
        let depth = outbox_depth(&legacy).await;
        if !cut_off.is_empty() {
            break (cut_off, depth);
        }
        println!("kill {run} cut no write off (outbox depth {depth}): again");
        assert!(run < 5, "5 kills mid-burst cut no write off");
        run += 1;
        child = service.spawn(run);
        service.wait_ready(&mut child, run).await;
    };
    // A record may also belong to a write that reached the new store just before the kill
    // (the record is deleted after the write): replay makes it again, idempotently.
    let new_before = all_message_ids(&new).await;
    let missing_from_new = cut_off.iter().filter(|id| !new_before.contains(id)).count();
    println!(
        "outbox after the kill: {} records, {missing_from_new} of them not in the new store yet",
        cut_off.len()
    );

    // Restart on the same databases; the replayer makes the secondary writes the crash cut off.
    let restart = run + 1;
    let mut child = service.spawn(restart);
    service.wait_ready(&mut child, restart).await;
    let after = client
        .send_message(users[0], rooms[0], "after the restart")
        .await
        .expect("send after the restart");
    acked.push(after.0);

    let deadline = Instant::now() + Duration::from_secs(90);
    while outbox_depth(&legacy).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox did not drain within 90 s after the restart:\n{}",
            service.log_text(restart)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_in = deadline - Duration::from_secs(90);
    let in_legacy = all_message_ids(&legacy).await;
    let in_new = all_message_ids(&new).await;
    let missing_legacy: Vec<&Uuid> = acked.iter().filter(|id| !in_legacy.contains(id)).collect();
    let missing_new: Vec<&Uuid> = acked.iter().filter(|id| !in_new.contains(id)).collect();
    println!(
        "{} acknowledged, {failed} failed calls (killed mid-burst); {} cut off by the kill (outbox depth {depth_after_kill}), drained {:.1}s after; legacy {} / new {} messages",
        acked.len(),
        cut_off.len(),
        drained_in.elapsed().as_secs_f64(),
        in_legacy.len(),
        in_new.len()
    );
    assert!(
        missing_legacy.is_empty(),
        "acknowledged messages missing from legacy: {missing_legacy:?}"
    );
    assert!(
        missing_new.is_empty(),
        "acknowledged messages missing from the new store: {missing_new:?}"
    );
    let not_replayed: Vec<&Uuid> = cut_off.iter().filter(|id| !in_new.contains(id)).collect();
    assert!(
        not_replayed.is_empty(),
        "writes cut off by the kill never replayed to the new store: {not_replayed:?}"
    );
    // Every message legacy committed (acknowledged or in flight at the kill) reaches the new
    // store too: its outbox row commits with the legacy write.
    let legacy_only: Vec<&Uuid> = in_legacy.difference(&in_new).collect();
    assert!(
        legacy_only.is_empty(),
        "{} messages committed in legacy never reached the new store: {legacy_only:?}",
        legacy_only.len()
    );
    // The reverse can happen and is not a loss: with `sync` the secondary write runs
    // concurrently with the primary's, so a kill between the two commits leaves a message the
    // client never had acknowledged in the new store only (`validate` reports those).
    let new_only: Vec<&Uuid> = in_new.difference(&in_legacy).collect();
    assert!(
        new_only.iter().all(|id| !acked.contains(id)),
        "an acknowledged message is missing from legacy"
    );
    println!(
        "unacknowledged messages in the new store only (in flight at the kill): {}",
        new_only.len()
    );

    child.kill().expect("stop");
    child.wait().expect("reap");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A chat-service binary over two fresh databases with the new store primary and the `async`
/// reverse dual write, a 1 s grace period for outbox records.
async fn after_cutover(test: &str) -> (Service, String, String, std::path::PathBuf) {
    let pg = Postgres::shared().expect("postgres");
    let legacy_url = pg
        .create_database(&format!("{test}_legacy"))
        .await
        .expect("db");
    let new_url = pg
        .create_database(&format!("{test}_new"))
        .await
        .expect("db");
    let dir = std::env::temp_dir().join(format!("chat-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let flags_file = dir.join("flags");
    std::fs::write(
        &flags_file,
        common::flag_doc(1, Side::New, DualWrite::Async, 0, 100).to_file_text(),
    )
    .expect("flags file");
    let port = free_port();
    let service = Service {
        args: vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--store".into(),
            "router".into(),
            "--new-store".into(),
            "postgres".into(),
            "--new-database-url".into(),
            new_url.clone(),
            "--flags-file".into(),
            flags_file.display().to_string(),
            "--outbox-inline-grace-ms".into(),
            "1000".into(),
        ],
        env: vec![
            ("DATABASE_URL", legacy_url.clone()),
            (
                "CHAT_JWT_SECRET",
                String::from_utf8(common::JWT_SECRET.to_vec()).expect("utf8"),
            ),
            ("CHAT_ENCRYPTION_KEY", EncryptionKey::random().to_base64()),
        ],
        base_url: format!("http://127.0.0.1:{port}"),
        log: dir.join("chat-service"),
    };
    (service, legacy_url, new_url, dir)
}

/// Holds legacy's message table locked against writes (reads go on) until the transaction ends.
async fn hang_legacy_messages(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("lock table room_message in exclusive mode")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

/// A burst of concurrent sends; returns the acknowledged ids.
async fn burst(client: &Arc<ChatClient>, room: RoomId, n: usize) -> Vec<Uuid> {
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send_message(
                        UserId(1 + (i % 2) as i32),
                        room,
                        &format!("after cutover {i}"),
                    )
                    .await
            })
        })
        .collect();
    let mut acked = Vec::new();
    for s in sends {
        acked.push(s.await.expect("send task").expect("send acknowledged").0);
    }
    acked
}

/// Message ids the outbox of `pool`'s database holds for legacy.
async fn recorded_for_legacy(pool: &PgPool) -> HashSet<Uuid> {
    recorded_for(pool, "legacy").await
}

/// Message ids the outbox of `pool`'s database holds for `target` (`legacy` or `new`).
async fn recorded_for(pool: &PgPool, target: &str) -> HashSet<Uuid> {
    sqlx::query_scalar::<sqlx::Postgres, String>(
        "select payload->>'id' from outbox where target = $1 and op = 'insert_message'",
    )
    .bind(target)
    .fetch_all(pool)
    .await
    .expect("outbox")
    .into_iter()
    .filter_map(|id| id.parse().ok())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_cutover_loses_no_acknowledged_reverse_write() {
    common::init();
    if let Err(e) = Postgres::shared() {
        return ficus_testkit::skip_or_panic(&e);
    }
    let (service, legacy_url, _new_url, dir) = after_cutover("crash_cutover_kill").await;
    let mut child = service.spawn(1);
    service.wait_ready(&mut child, 1).await;
    let client = Arc::new(ChatClient::new(&service.base_url, common::JWT_SECRET));
    let room = client
        .create_room(UserId(1), "after cutover", "group", &[UserId(1), UserId(2)])
        .await
        .expect("room");
    let legacy = PgPool::connect(&legacy_url).await.expect("legacy pool");
    eventually_room_in_legacy(&legacy, room).await;

    let held = hang_legacy_messages(&legacy).await;
    let acked = burst(&client, room, 24).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    held.rollback().await.expect("unlock");

    let mut child = service.spawn(2);
    service.wait_ready(&mut child, 2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let in_legacy = all_message_ids(&legacy).await;
        let missing: Vec<&Uuid> = acked.iter().filter(|id| !in_legacy.contains(id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged messages never reached legacy after the kill:\n{}",
            missing.len(),
            acked.len(),
            service.log_text(2)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.kill().expect("stop");
    child.wait().expect("reap");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_after_cutover_drains_every_pending_reverse_write_before_exiting() {
    common::init();
    if let Err(e) = Postgres::shared() {
        return ficus_testkit::skip_or_panic(&e);
    }
    let (service, legacy_url, new_url, dir) = after_cutover("crash_cutover_term").await;
    let mut child = service.spawn(1);
    service.wait_ready(&mut child, 1).await;
    let client = Arc::new(ChatClient::new(&service.base_url, common::JWT_SECRET));
    let room = client
        .create_room(UserId(1), "after cutover", "group", &[UserId(1), UserId(2)])
        .await
        .expect("room");
    let legacy = PgPool::connect(&legacy_url).await.expect("legacy pool");
    let new = PgPool::connect(&new_url).await.expect("new pool");
    eventually_room_in_legacy(&legacy, room).await;

    let held = hang_legacy_messages(&legacy).await;
    let acked = burst(&client, room, 24).await;
    let pid = child.id().to_string();
    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("wait task");
    assert!(
        status.success(),
        "SIGTERM is a clean stop ({status}):\n{}",
        service.log_text(1)
    );
    // Exited while legacy still hangs: each pending write must be in legacy or in an outbox.
    let in_legacy = all_message_ids(&legacy).await;
    let mut recorded = recorded_for_legacy(&new).await;
    recorded.extend(recorded_for_legacy(&legacy).await);
    let lost: Vec<&Uuid> = acked
        .iter()
        .filter(|id| !in_legacy.contains(id) && !recorded.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages neither in legacy nor recorded in an outbox after SIGTERM:\n{}",
        lost.len(),
        acked.len(),
        service.log_text(1)
    );
    held.rollback().await.expect("unlock");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn eventually_room_in_legacy(legacy: &PgPool, room: RoomId) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sqlx::query_scalar::<sqlx::Postgres, bool>(
        "select exists(select 1 from room where id = $1)",
    )
    .bind(room.0)
    .fetch_one(legacy)
    .await
    .expect("room")
    {
        assert!(Instant::now() < deadline, "the room never reached legacy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
