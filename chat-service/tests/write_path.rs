//! The router's write path against real PostgreSQL: a dual write is not lost when its caller
//! goes away, a leave is not undone by a replayed room creation, an undecodable outbox row does
//! not stop the replay, dead letters are listed and redriven from the command line (and the
//! replayer is woken by `LISTEN/NOTIFY`, not by its slow poll), and a room name with U+0000 is a
//! 400.

mod common;

use std::process::Command;
use std::time::Duration;

use chat_service::flags::{DualWrite, Flags, Side};
use chat_service::ids::{RoomId, UserId};
use chat_service::store::outbox::WriteOp;
use chat_service::store::router::RouterOptions;
use chat_service::store::{ChatStore, NewRoom, RoomType};
use ficus_testkit::Postgres;
use sqlx::postgres::PgPool;

use common::router::{
    RouterSetup, eventually, flags, options, outbox_depth, pg_outbox, pg_store, start_router_with,
};

const BIN: &str = env!("CARGO_BIN_EXE_chat-service");

/// The router over two fresh databases of the shared PostgreSQL, and a pool on the new one.
async fn setup(test: &str, f: Flags, options: RouterOptions) -> (RouterSetup, PgPool, String) {
    let pg = Postgres::shared().expect("postgres");
    let legacy_url = pg
        .create_database(&format!("{test}_legacy"))
        .await
        .expect("db");
    let new_url = pg
        .create_database(&format!("{test}_new"))
        .await
        .expect("db");
    let new = pg_store(&new_url).await;
    let new_pool = new.pool().clone();
    let outbox = pg_outbox(&new);
    let s = start_router_with(pg_store(&legacy_url).await, new, outbox, f, options).await;
    (s, new_pool, legacy_url)
}

fn room(owner: i32, members: &[i32]) -> NewRoom {
    NewRoom {
        id: RoomId::random(),
        name: "Team".into(),
        room_type: RoomType::Group,
        created_by: UserId(owner),
        participants: std::iter::once(owner)
            .chain(members.iter().copied())
            .map(UserId)
            .collect(),
        created_at: chat_service::store::now(),
    }
}

/// Holds an exclusive lock on the `room` table of `pool`'s database until the returned transaction ends:
/// writes to it wait (a hanging store).
async fn lock_rooms(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("lock table room in access exclusive mode")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

async fn room_exists(pool: &PgPool, room: RoomId) -> bool {
    sqlx::query_scalar::<_, bool>("select exists(select 1 from room where id = $1)")
        .bind(room.0)
        .fetch_one(pool)
        .await
        .expect("room")
}

/// A caller that goes away (request timeout, client disconnect) after the primary committed does
/// not cancel the secondary write: it is made as soon as the secondary answers, not left for a
/// replay after the grace period (60 s here), and not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_going_away_after_the_primary_commit_does_not_cancel_the_secondary_write() {
    common::init();
    let mut o = options();
    o.replay.inline_grace = Duration::from_secs(60);
    o.secondary_timeout = Duration::from_secs(30);
    let (s, new_pool, _) = setup("wp_cancel", flags(Side::Legacy, DualWrite::Sync, 0, 0), o).await;
    let held = lock_rooms(&new_pool).await;
    let r = room(1, &[2]);
    let id = r.id;
    let router = s.router.clone();
    let call = tokio::spawn(async move { router.create_room(r).await });
    eventually("the primary committed", Duration::from_secs(10), || async {
        room_exists(&s.legacy_pool, id).await
    })
    .await;
    // The caller goes away while the secondary write hangs.
    call.abort();
    let _ = call.await;
    held.rollback().await.expect("unlock");
    eventually(
        "the secondary write is made although its caller went away",
        Duration::from_secs(15),
        || async { room_exists(&new_pool, id).await },
    )
    .await;
}

/// A room whose creation failed on the secondary has it queued in the outbox; a leave that
/// follows is queued behind it instead of being made directly (where it would change nothing and
/// count as done): after the replay the member who left is not a member on the secondary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leave_behind_a_queued_room_creation_is_not_undone_by_its_replay() {
    common::init();
    let mut o = options();
    o.secondary_timeout = Duration::from_millis(500);
    let (s, new_pool, _) = setup("wp_leave", flags(Side::Legacy, DualWrite::Sync, 0, 0), o).await;
    let held = lock_rooms(&new_pool).await;
    let r = room(1, &[2, 3]);
    let id = r.id;
    s.router
        .create_room(r)
        .await
        .expect("create (the secondary times out)");
    // The secondary answers pings again: the leave would be made directly if nothing held it.
    eventually(
        "the secondary is up again",
        Duration::from_secs(10),
        || async { s.router.is_up(Side::New) },
    )
    .await;
    assert!(
        s.router
            .leave_room(id, UserId(2), chat_service::store::now())
            .await
            .expect("leave"),
        "user 2 left on the primary"
    );
    held.rollback().await.expect("unlock");
    eventually("the outbox drains", Duration::from_secs(30), || async {
        outbox_depth(&s.legacy_pool).await == 0
    })
    .await;
    let on_new = s
        .new
        .get_room(id, UserId(1))
        .await
        .expect("room on the new store");
    assert_eq!(
        on_new.participants,
        vec![UserId(1), UserId(3)],
        "the member who left stays gone on the secondary"
    );
    let access = s.new.room_access(id, UserId(2)).await.expect("access");
    assert!(!access.is_member());
}

/// One undecodable outbox row goes to the dead-letter table; the other rooms' entries are
/// replayed; the dead-letter gauge shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_outbox_row_is_dead_lettered_and_replay_goes_on() {
    common::init();
    let (s, new_pool, _) = setup(
        "wp_undecodable",
        flags(Side::Legacy, DualWrite::Sync, 0, 0),
        options(),
    )
    .await;
    let bad_room = RoomId::random();
    let bad: i64 = sqlx::query_scalar(
        "insert into outbox (target, room_id, op, payload) values ('new', $1, 'create_room', '{\"op\": \"create_room\", \"id\": 42}') returning id",
    )
    .bind(bad_room.0)
    .fetch_one(&s.legacy_pool)
    .await
    .expect("bad row");
    let good = room(5, &[6]);
    let op = WriteOp::create_room(&good);
    sqlx::query("insert into outbox (target, room_id, op, payload) values ('new', $1, $2, $3)")
        .bind(good.id.0)
        .bind(op.name())
        .bind(sqlx::types::Json(&op))
        .execute(&s.legacy_pool)
        .await
        .expect("good row");
    eventually(
        "the good entry is replayed",
        Duration::from_secs(15),
        || async { room_exists(&new_pool, good.id).await },
    )
    .await;
    let dead: Vec<(i64, Option<String>)> =
        sqlx::query_as("select id, last_error from outbox_dead_letter")
            .fetch_all(&s.legacy_pool)
            .await
            .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, bad);
    assert!(
        dead[0]
            .1
            .as_deref()
            .is_some_and(|e| e.contains("undecodable")),
        "{dead:?}"
    );
    assert_eq!(outbox_depth(&s.legacy_pool).await, 0);
    eventually(
        "chat_outbox_dead_letters 1",
        Duration::from_secs(10),
        || async {
            s.metrics
                .encode()
                .lines()
                .any(|l| l == "chat_outbox_dead_letters 1")
        },
    )
    .await;
}

fn run(args: &[&str], database_url: &str) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run chat-service");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `outbox dead-letters` lists a dead letter; `outbox redrive --id` moves it back and a running
/// replayer makes the write within seconds although its poll fallback is a minute: the trigger's
/// NOTIFY wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_and_redriven_from_the_command_line_and_replayed_at_once() {
    common::init();
    let mut o = options();
    o.replay.poll_interval = Duration::from_secs(60);
    let (s, new_pool, legacy_url) =
        setup("wp_redrive", flags(Side::Legacy, DualWrite::Sync, 0, 0), o).await;
    // Let the replayer go to sleep on its slow poll.
    eventually(
        "the replayer's first round",
        Duration::from_secs(10),
        || async { s.metrics.encode().contains("chat_outbox_dead_letters 0") },
    )
    .await;
    let r = room(7, &[8]);
    let op = WriteOp::create_room(&r);
    sqlx::query(
        "insert into outbox_dead_letter (id, target, room_id, op, payload, attempts, created_at, last_error)
         values (9001, 'new', $1, $2, $3, 10, now(), 'database unavailable: gave up')",
    )
    .bind(r.id.0)
    .bind(op.name())
    .bind(sqlx::types::Json(&op))
    .execute(&s.legacy_pool)
    .await
    .expect("dead letter");

    let (ok, out, err) = run(&["outbox", "dead-letters"], &legacy_url);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("9001\t"))
        .unwrap_or_else(|| panic!("dead letter 9001 not listed:\n{out}"));
    assert!(
        line.contains(&r.id.to_string())
            && line.contains("create_room")
            && line.contains("gave up"),
        "{line}"
    );

    let (ok, _, err) = run(&["outbox", "redrive", "--id", "123456"], &legacy_url);
    assert!(!ok, "redriving an unknown id fails");
    assert!(err.contains("no dead letter"), "{err}");
    let (ok, out, err) = run(&["outbox", "redrive", "--id", "9001"], &legacy_url);
    assert!(ok, "{err}");
    assert!(out.contains("1 dead letters moved"), "{out}");
    eventually(
        "the redriven write is replayed long before the 60 s poll",
        Duration::from_secs(10),
        || async { room_exists(&new_pool, r.id).await },
    )
    .await;
    let (ok, out, _) = run(&["outbox", "dead-letters"], &legacy_url);
    assert!(ok && !out.contains("9001\t"), "{out}");
}

/// A room name with U+0000 is refused with 400 and a message saying why (PostgreSQL cannot
/// store it; it used to be a 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_name_with_nul_is_a_400() {
    common::init();
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        Err(e) => return ficus_testkit::skip_or_panic(&e),
    };
    let service = common::start(common::config(pg, "wp_nul_name").await).await;
    let result = service
        .raw(
            1,
            "CreateRoom",
            serde_json::json!({ "name": "a\u{0000}b", "type": "group", "participants": [2] }),
        )
        .await;
    common::assert_error(&result, 400, "invalid_argument");
    assert!(
        result.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("U+0000")),
        "{}",
        result.1
    );
    service.stop().await;
}

/// A write queued for a room the new store does not have yet waits with backoff; once the room
/// is there (the backfill copied it), `due_now` makes that room's entries due at once and the
/// replayer, woken by NOTIFY, makes them within seconds. Another room's entries keep their time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn due_now_replays_a_rooms_waiting_writes_at_once_and_no_others() {
    common::init();
    let (s, _new_pool, _) = setup(
        "wp_due_now",
        flags(Side::Legacy, DualWrite::Sync, 0, 0),
        options(),
    )
    .await;
    let outbox = s.router.outbox();
    let (a, b) = (room(1, &[2]), room(3, &[4]));
    for r in [&a, &b] {
        s.new
            .create_room(r.clone())
            .await
            .expect("room on the new store");
        s.legacy
            .create_room(r.clone())
            .await
            .expect("room on legacy");
        outbox
            .enqueue(&chat_service::store::outbox::NewEntry {
                target: Side::New,
                op: WriteOp::SetPinned {
                    room: r.id,
                    user: r.created_by,
                    pinned: true,
                    at: chat_service::store::now(),
                },
                attempts: 3,
                delay: Duration::from_secs(600),
                last_error: Some("room not there yet".into()),
            })
            .await
            .expect("queued pin");
    }
    assert_eq!(outbox.due_now(Side::New, a.id).await.expect("due now"), 1);
    eventually("room a's pin replayed", Duration::from_secs(10), || async {
        s.new
            .get_room(a.id, UserId(1))
            .await
            .is_ok_and(|r| r.is_pinned)
    })
    .await;
    assert!(
        outbox
            .has_entries(Side::New, b.id, chat_service::store::outbox::Entries::Any)
            .await
            .expect("look"),
        "room b's entry still waits for its time"
    );
    assert!(
        !s.new
            .get_room(b.id, UserId(3))
            .await
            .expect("room b")
            .is_pinned
    );
}

/// A leave on a room that predates dual writes (on legacy only, the backfill not there yet)
/// waits for the room without spending attempts: with `max_attempts` 2 and a 50 ms backoff it
/// outlives many replay rounds without being dead-lettered, and lands once the room is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_waiting_for_its_room_spends_no_attempts_and_lands_after_the_backfill() {
    common::init();
    let mut o = options();
    o.replay.max_attempts = 2;
    o.replay.backoff_cap = Duration::from_millis(100);
    let (s, new_pool, _) = setup(
        "wp_awaits_room",
        flags(Side::Legacy, DualWrite::Sync, 0, 0),
        o,
    )
    .await;
    let history = room(1, &[2, 3]);
    s.legacy
        .create_room(history.clone())
        .await
        .expect("room on legacy, before dual writes");
    let left = s
        .router
        .leave_room(history.id, UserId(2), chat_service::store::now())
        .await
        .expect("the leave is acknowledged (legacy is primary)");
    assert!(left);
    // Dozens of replay rounds at 100 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outbox = s.router.outbox();
    assert_eq!(
        outbox.dead_letters().await.expect("dead letters"),
        0,
        "a write waiting for its room is not given up"
    );
    assert!(
        outbox
            .has_entries(
                Side::New,
                history.id,
                chat_service::store::outbox::Entries::Any
            )
            .await
            .expect("look"),
        "the leave still waits in the outbox"
    );
    let attempts: i32 = sqlx::query_scalar("select attempts from outbox where room_id = $1")
        .bind(history.id.0)
        .fetch_one(&s.legacy_pool)
        .await
        .expect("the entry");
    assert_eq!(attempts, 0, "waiting costs no attempts");
    assert_eq!(
        s.metrics
            .dual_write_count(Side::New, chat_service::metrics::DualWriteOutcome::Error),
        0,
        "waiting is not counted as a failed dual write"
    );
    // The backfill copies the room as it was before the leave would be (a stale copy is the
    // worst case) and makes its waiting writes due.
    s.new
        .create_room(history.clone())
        .await
        .expect("the backfill's copy");
    outbox
        .due_now(Side::New, history.id)
        .await
        .expect("due now");
    eventually("the leave landed on the new store", Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, bool>(
            "select not exists(select 1 from room_member where room_id = $1 and user_id = 2 and removed_at is null)",
        )
        .bind(history.id.0)
        .fetch_one(&new_pool)
        .await
        .unwrap_or(false)
    })
    .await;
}
