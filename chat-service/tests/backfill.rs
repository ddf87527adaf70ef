//! `backfill`, `validate` and `status` against a real PostgreSQL (the legacy store)
//! and the harness's shared Cassandra node (the new store): a full copy validates with zero
//! drift, a partial run resumes from its checkpoints without duplicates, a newer dual-written
//! row is never overwritten by the backfill's older copy, validate catches injected drift
//! (also through the binary's exit code) and waits for writes still queued for the new store.
//!
//! One file over 600 lines on purpose: a test binary shares one PostgreSQL and one Cassandra among these tests.

mod common;

use chat_service::backfill::{self, BackfillConfig, BackfillError, MigrationId};
use chat_service::flags::Side;
use chat_service::ids::{MessageId, MessageIdGenerator, RoomId, UserId};
use chat_service::metrics::Metrics;
use chat_service::store::outbox::{NewEntry, Outbox, WriteOp};
use chat_service::store::postgres::PgStore;
use chat_service::store::scylla::{CqlConfig, CqlStore};
use chat_service::store::{ChatStore, NewMessage, NewRoom, PageRequest, ReadMarker, RoomType, now};
use chat_service::validate::{self, Mismatch, ValidateConfig};
use ficus_testkit::{Cassandra, HarnessError, Postgres};
use uuid::Uuid;

const RANGES: u32 = 8;
const ROOMS: u32 = 8;
const PER_ROOM: usize = 40;

struct Env {
    pg: PgStore,
    cql: CqlStore,
    database_url: String,
    keyspace: String,
    contact_point: String,
}

async fn setup(name: &str) -> Result<Env, HarnessError> {
    common::init();
    let database_url = Postgres::shared()?.create_database(name).await?;
    let cassandra = Cassandra::shared()?;
    let keyspace = cassandra.create_keyspace(name).await?;
    let pg = PgStore::connect(&database_url, 10).await.expect("pg");
    pg.migrate().await.expect("migrate");
    let cql = CqlStore::connect(&CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace: keyspace.clone(),
        consistency: scylla::statement::Consistency::One,
        address_map: Default::default(),
    })
    .await
    .expect("cql");
    Ok(Env {
        pg,
        cql,
        database_url,
        keyspace,
        contact_point: cassandra.contact_point(),
    })
}

/// Drift for validate to find: `message`'s content replaced in the new store.
async fn alter_content(env: &Env, room: RoomId, message: MessageId) {
    env.cql
        .session()
        .query_unpaged(
            format!(
                "UPDATE {}.messages_by_room SET content = ? WHERE room_id = ? AND message_id = ?",
                env.keyspace
            ),
            (
                b"tampered".to_vec(),
                room.0,
                scylla::value::CqlTimeuuid::from(message.0),
            ),
        )
        .await
        .expect("alter");
}

/// Room `i` lies in key range `i` of [`RANGES`] (its top 3 bits).
fn room_id(i: u32) -> RoomId {
    RoomId(Uuid::from_u128(
        (u128::from(i) << 125) | u128::from(rand::random::<u64>()),
    ))
}

fn new_room(i: u32, id: RoomId) -> NewRoom {
    NewRoom {
        id,
        name: format!("room {i}"),
        room_type: RoomType::Group,
        created_by: UserId(1),
        participants: vec![UserId(1), UserId(2), UserId(3)],
        created_at: now(),
    }
}

/// [`ROOMS`] rooms of users 1..=3 (user 3 left room 0) with [`PER_ROOM`] messages each, in PostgreSQL.
async fn populate(pg: &PgStore) -> Vec<(RoomId, Vec<NewMessage>)> {
    let ids = MessageIdGenerator::default();
    let mut rooms = vec![];
    for i in 0..ROOMS {
        let id = room_id(i);
        pg.create_room(new_room(i, id)).await.expect("room");
        let mut messages = vec![];
        for k in 0..PER_ROOM {
            let mid = ids.next();
            let m = NewMessage {
                id: mid,
                room_id: id,
                sender_id: UserId(1 + (k % 2) as i32),
                content: (0..24).map(|_| rand::random::<u8>()).collect(),
                message_type: "user_message".into(),
                created_at: mid.created_at().expect("v1"),
            };
            pg.insert_message(m.clone()).await.expect("message");
            messages.push(m);
        }
        // Reactions (two users on every fifth message) and read markers (user 2 read the first
        // ten messages, user 3 everything since the 30th).
        for m in messages.iter().step_by(5) {
            for (user, reaction) in [(2, "👍"), (3, "🎉")] {
                assert!(
                    pg.react(m.id, UserId(user), reaction.into(), now())
                        .await
                        .expect("react")
                );
            }
        }
        let first_ten = messages[..10].iter().map(|m| m.id).collect();
        pg.mark_read(id, UserId(2), first_ten, now())
            .await
            .expect("read");
        chat_service::store::mark_read(
            pg,
            id,
            UserId(3),
            ReadMarker::Since(messages[30].created_at),
            now(),
        )
        .await
        .expect("read");
        rooms.push((id, messages));
    }
    assert!(
        pg.leave_room(rooms[0].0, UserId(3), now())
            .await
            .expect("leave")
    );
    rooms
}

fn config(dual_write_started_at: chrono::DateTime<chrono::Utc>) -> BackfillConfig {
    BackfillConfig {
        workers: 3,
        ranges: RANGES,
        dual_write_started_at: Some(dual_write_started_at),
        chunk: 16,
        ..BackfillConfig::default()
    }
}

fn validate_config(sample: u32) -> ValidateConfig {
    ValidateConfig {
        sample,
        ranges: RANGES,
        ..ValidateConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_copies_everything_and_validates_with_zero_drift() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_full").await);
    let rooms = populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    let total = u64::from(ROOMS) * PER_ROOM as u64;

    // A dry run counts and writes nothing.
    let dry = backfill::run(
        &env.pg,
        None,
        &BackfillConfig {
            dry_run: true,
            ..config(now())
        },
        &metrics,
    )
    .await
    .expect("dry run");
    assert_eq!(
        (dry.total_rooms, dry.total_messages, dry.ranges_assigned),
        (u64::from(ROOMS), total, RANGES as usize)
    );
    assert_eq!(
        validate::status(&env.pg, &cql)
            .await
            .expect("status")
            .new_messages,
        0
    );
    assert!(
        backfill::run(
            &env.pg,
            Some(&cql),
            &BackfillConfig {
                dual_write_started_at: None,
                ..config(now())
            },
            &metrics
        )
        .await
        .is_err(),
        "needs the dual-write start"
    );

    let report = backfill::run(&env.pg, Some(&cql), &config(now()), &metrics)
        .await
        .expect("backfill");
    assert!(report.complete(), "{report}");
    assert_eq!(
        (report.rooms, report.messages, report.ranges_done),
        (u64::from(ROOMS), total, RANGES as usize)
    );
    assert!(
        metrics
            .encode()
            .contains(r#"chat_migration_progress_ratio{type="messages"} 1"#),
        "{}",
        metrics.encode()
    );

    let verdict = validate::run(&env.pg, &cql, &validate_config(10), &metrics)
        .await
        .expect("validate");
    assert!(verdict.passed(), "{verdict}");
    assert_eq!(
        (
            verdict.drift(),
            verdict.compared,
            verdict.legacy_messages,
            verdict.new_messages
        ),
        // Per room: count, members, the 3 members' read markers, 10 messages.
        (0.0, u64::from(ROOMS) * (2 + 3 + 10), total, total)
    );
    assert!(
        metrics
            .encode()
            .contains(r#"chat_consistency_checks_total{status="pass"} 1"#)
    );
    let status = validate::status(&env.pg, &cql).await.expect("status");
    assert_eq!(
        (
            status.legacy_rooms,
            status.new_rooms,
            status.legacy_messages,
            status.new_messages
        ),
        (u64::from(ROOMS), u64::from(ROOMS), total, total)
    );

    // The copy serves the API's queries as PostgreSQL does.
    let (pg_rooms, pg_total) = env
        .pg
        .rooms_for_user(UserId(1), PageRequest { page: 1, limit: 50 })
        .await
        .expect("pg rooms");
    let (cql_rooms, cql_total) = env
        .cql
        .rooms_for_user(UserId(1), PageRequest { page: 1, limit: 50 })
        .await
        .expect("cql rooms");
    assert_eq!((cql_total, &cql_rooms), (pg_total, &pg_rooms));
    assert_eq!(
        env.cql
            .room_ids_for_user(UserId(3))
            .await
            .expect("rooms")
            .len(),
        ROOMS as usize - 1,
        "user 3 left room 0"
    );
    let (room, _) = &rooms[1];
    let pg_history = env
        .pg
        .history(*room, UserId(1), None, 100)
        .await
        .expect("pg history");
    let cql_history = env
        .cql
        .history(*room, UserId(1), None, 100)
        .await
        .expect("cql history");
    assert_eq!(format!("{cql_history:?}"), format!("{pg_history:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_backfill_resumes_from_its_checkpoints_without_duplicates() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_resume").await);
    populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    let start = now();

    let first = backfill::run(
        &env.pg,
        Some(&cql),
        &BackfillConfig {
            max_ranges: Some(3),
            ..config(start)
        },
        &metrics,
    )
    .await
    .expect("first run");
    assert_eq!(
        (first.ranges_done, first.rooms, first.messages),
        (3, 3, 3 * PER_ROOM as u64)
    );
    assert!(!first.complete());
    let partial = validate::run(&env.pg, &cql, &validate_config(5), &metrics)
        .await
        .expect("validate");
    assert!(!partial.passed(), "{partial}");
    assert_eq!(
        partial.mismatches.get(&Mismatch::MissingRoom),
        Some(&u64::from(ROOMS - 3)),
        "{partial}"
    );

    let second = backfill::run(&env.pg, Some(&cql), &config(start), &metrics)
        .await
        .expect("second run");
    assert_eq!(
        (second.ranges_already_done, second.ranges_done, second.rooms),
        (3, RANGES as usize - 3, u64::from(ROOMS - 3)),
        "{second}"
    );
    assert!(second.complete());
    let checkpoints: i64 = sqlx::query_scalar("select count(*) from backfill_checkpoint where range_count = $1 and completed_at is not null")
        .bind(RANGES as i32)
        .fetch_one(env.pg.pool())
        .await
        .expect("checkpoints");
    assert_eq!(checkpoints, i64::from(RANGES));

    // A third run has nothing left to do.
    let third = backfill::run(&env.pg, Some(&cql), &config(start), &metrics)
        .await
        .expect("third run");
    assert_eq!(
        (third.ranges_already_done, third.rooms),
        (RANGES as usize, 0)
    );

    let verdict = validate::run(&env.pg, &cql, &validate_config(10), &metrics)
        .await
        .expect("validate");
    assert!(verdict.passed() && verdict.drift() == 0.0, "{verdict}");
    let status = validate::status(&env.pg, &cql).await.expect("status");
    assert_eq!(status.new_messages, status.legacy_messages, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backfill_never_overwrites_a_newer_dual_written_row() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_newer").await);
    let rooms = populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    // The dual write starts; the live path then writes room 0 and a newer version of one of its
    // messages to the new store.
    let dual_write_start = now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (room, messages) = &rooms[0];
    let mut live_room = new_room(0, *room);
    live_room.name = "renamed live".into();
    env.cql.create_room(live_room).await.expect("live room");
    let target = &messages[7];
    let live = NewMessage {
        content: b"newer, dual-written".to_vec(),
        ..target.clone()
    };
    env.cql.insert_message(live).await.expect("live message");

    let report = backfill::run(&env.pg, Some(&cql), &config(dual_write_start), &metrics)
        .await
        .expect("backfill");
    assert!(report.complete(), "{report}");

    let (_, content, _, _) = cql
        .message(*room, target.id)
        .await
        .expect("read")
        .expect("message");
    assert_eq!(
        content, b"newer, dual-written",
        "the backfill's older copy lost"
    );
    assert_eq!(
        env.cql.get_room(*room, UserId(1)).await.expect("room").name,
        "renamed live"
    );
    let (_, other, _, _) = cql
        .message(*room, messages[8].id)
        .await
        .expect("read")
        .expect("copied");
    assert_eq!(other, messages[8].content);

    // The divergence is exactly what validate reports: the newer message, and room 0's
    // memberships as the live write made them (joined now, user 3 not gone).
    let verdict = validate::run(&env.pg, &cql, &validate_config(1_000), &metrics)
        .await
        .expect("validate");
    assert_eq!(
        (
            verdict.mismatched,
            verdict.mismatches.get(&Mismatch::Content),
            verdict.mismatches.get(&Mismatch::Members)
        ),
        (2, Some(&1), Some(&1)),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_detects_injected_drift_and_fails() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_drift").await);
    let rooms = populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    backfill::run(&env.pg, Some(&cql), &config(now()), &metrics)
        .await
        .expect("backfill");
    assert!(
        validate::run(&env.pg, &cql, &validate_config(1_000), &metrics)
            .await
            .expect("validate")
            .passed()
    );

    // Alter a message in CQL, delete one from PostgreSQL.
    let altered: MessageId = rooms[2].1[3].id;
    alter_content(&env, rooms[2].0, altered).await;
    sqlx::query("delete from room_message where id = $1")
        .bind(rooms[5].1[0].id)
        .execute(env.pg.pool())
        .await
        .expect("delete");

    let verdict = validate::run(&env.pg, &cql, &validate_config(1_000), &metrics)
        .await
        .expect("validate");
    assert!(!verdict.passed(), "{verdict}");
    // The deleted message also takes user 2's read marker of it along (on delete cascade).
    assert_eq!(
        (
            verdict.mismatches.get(&Mismatch::Content),
            verdict.mismatches.get(&Mismatch::Count),
            verdict.mismatches.get(&Mismatch::ReadMarkers),
            verdict.mismatched
        ),
        (Some(&1), Some(&1), Some(&1), 3),
        "{verdict}"
    );
    assert!(verdict.drift() > 0.0);
    let text = metrics.encode();
    assert!(
        text.contains(r#"chat_data_inconsistencies{type="content"} 1"#)
            && text.contains(r#"chat_consistency_checks_total{status="fail"} 1"#),
        "{text}"
    );
    // A tolerance above the drift passes.
    let tolerant = validate::run(
        &env.pg,
        &cql,
        &ValidateConfig {
            max_drift: 0.5,
            ..validate_config(1_000)
        },
        &metrics,
    )
    .await
    .expect("validate");
    assert!(tolerant.passed());

    // The binary: exit 2 on drift, 0 within --max-drift.
    let exit = |max_drift: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
            .args([
                "validate",
                "--database-url",
                &env.database_url,
                "--cql-contact-points",
                &env.contact_point,
                "--cql-keyspace",
                &env.keyspace,
            ])
            .args([
                "--cql-consistency",
                "ONE",
                "--sample",
                "1000",
                "--max-drift",
                max_drift,
            ])
            .output()
            .expect("run chat-service")
    };
    let failed = exit("0");
    assert_eq!(
        failed.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    assert!(String::from_utf8_lossy(&failed.stdout).contains("verdict: FAIL"));
    assert_eq!(exit("0.5").status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoints_belong_to_their_migration() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_per_migration").await);
    populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    let start = now();
    let migration = |attempt: u32| BackfillConfig {
        migration_id: Some(MigrationId {
            namespace: "chat".into(),
            name: "chat-to-scylla".into(),
            // As the operator names an attempt of one Migration object.
            uid: Some("3f1c0b6e-2a4d-4e8f-9b7a-6c5d4e3f2a1b".into()),
            attempt,
        }),
        ..config(start)
    };
    let first = backfill::run(&env.pg, Some(&cql), &migration(1), &metrics)
        .await
        .expect("attempt 1");
    assert!(
        first.complete() && first.rooms == u64::from(ROOMS),
        "{first}"
    );

    // Another attempt (or a later Migration) copies everything again instead of skipping the
    // ranges attempt 1 completed.
    let second = backfill::run(&env.pg, Some(&cql), &migration(2), &metrics)
        .await
        .expect("attempt 2");
    assert_eq!(
        (second.ranges_already_done, second.ranges_done, second.rooms),
        (0, RANGES as usize, u64::from(ROOMS)),
        "{second}"
    );
    let keys: Vec<(String, i64)> = sqlx::query_as(
        "select migration_id, count(*) from backfill_checkpoint where completed_at is not null group by 1 order by 1",
    )
    .fetch_all(env.pg.pool())
    .await
    .expect("checkpoints");
    assert_eq!(
        keys,
        [
            (
                "chat/chat-to-scylla/3f1c0b6e-2a4d-4e8f-9b7a-6c5d4e3f2a1b/1".to_owned(),
                i64::from(RANGES)
            ),
            (
                "chat/chat-to-scylla/3f1c0b6e-2a4d-4e8f-9b7a-6c5d4e3f2a1b/2".to_owned(),
                i64::from(RANGES)
            ),
        ]
    );

    // Resuming a migration with another dual-write start is refused: its stamps would differ.
    let moved = BackfillConfig {
        dual_write_started_at: Some(start + chrono::Duration::minutes(5)),
        ..migration(2)
    };
    match backfill::run(&env.pg, Some(&cql), &moved, &metrics).await {
        Err(BackfillError::DualWriteStartChanged { recorded, .. }) => assert_eq!(recorded, start),
        other => panic!("expected DualWriteStartChanged, got {other:?}"),
    }
}

/// `chat-service migrate` as the operator's Job runs it: the dual-write start and the migration
/// id come from FICUS_DUAL_WRITE_STARTED_AT and FICUS_MIGRATION_ID; without a dual-write start it
/// refuses to run, with exit code 2 and a message saying what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_takes_its_inputs_from_the_operator_environment() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_env").await);
    populate(&env.pg).await;
    let run = |vars: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"));
        command
            .args(["migrate", "--ranges", &RANGES.to_string()])
            .args(["--database-url", &env.database_url])
            .args(["--cql-contact-points", &env.contact_point])
            .args(["--cql-keyspace", &env.keyspace, "--cql-consistency", "ONE"])
            .env_remove("FICUS_DUAL_WRITE_STARTED_AT")
            .env_remove("FICUS_MIGRATION_ID")
            .env_remove("CHAT_DUAL_WRITE_STARTED_AT");
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output().expect("run chat-service")
    };
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--dual-write-started-at")
            && stderr.contains("FICUS_DUAL_WRITE_STARTED_AT"),
        "{stderr}"
    );
    let bad = run(&[("FICUS_DUAL_WRITE_STARTED_AT", "yesterday")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("FICUS_DUAL_WRITE_STARTED_AT \"yesterday\"")
    );
    let no_room: i64 = sqlx::query_scalar("select count(*) from backfill_checkpoint")
        .fetch_one(env.pg.pool())
        .await
        .expect("checkpoints");
    assert_eq!(no_room, 0, "a refused run writes nothing");

    let ok = run(&[
        ("FICUS_DUAL_WRITE_STARTED_AT", "2030-01-31T12:00:00Z"),
        ("FICUS_MIGRATION_ID", "chat/chat-to-scylla/3"),
    ]);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>, bool)> = sqlx::query_as(
        "select distinct migration_id, dual_write_started_at, completed_at is not null from backfill_checkpoint",
    )
    .fetch_all(env.pg.pool())
    .await
    .expect("checkpoints");
    assert_eq!(
        rows,
        [(
            "chat/chat-to-scylla/3".to_owned(),
            "2030-01-31T12:00:00Z".parse().expect("time"),
            true
        )]
    );
}

/// The unread counter of `user` in `room` in the CQL store (0 when never written).
async fn cql_unread(env: &Env, room: RoomId, user: i32) -> i64 {
    let rows: Vec<(scylla::value::Counter,)> = env
        .cql
        .session()
        .query_unpaged(
            format!(
                "SELECT unread_count FROM {}.room_counters_by_user WHERE user_id = ? AND room_id = ?",
                env.keyspace
            ),
            (user, room.0),
        )
        .await
        .expect("counter")
        .into_rows_result()
        .expect("rows")
        .rows()
        .expect("type")
        .collect::<Result<_, _>>()
        .expect("rows");
    rows.first().map_or(0, |(c,)| c.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactions_read_markers_and_unread_counters_are_copied_and_validated() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_reactions").await);
    let rooms = populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    // The dual write starts; one message reaches both stores (and the new store's counters).
    let dual_write_start = now();
    let ids = MessageIdGenerator::default();
    let live_id = ids.next();
    let live = NewMessage {
        id: live_id,
        room_id: rooms[1].0,
        sender_id: UserId(1),
        content: b"sealed".to_vec(),
        message_type: "user_message".into(),
        created_at: live_id.created_at().expect("v1"),
    };
    env.pg.insert_message(live.clone()).await.expect("legacy");
    env.cql.insert_message(live).await.expect("new");
    // A pin made before the dual write: the backfill copies it.
    sqlx::query("update room_member set is_pinned = true where room_id = $1 and user_id = 3")
        .bind(rooms[1].0)
        .execute(env.pg.pool())
        .await
        .expect("pin in legacy");

    let report = backfill::run(&env.pg, Some(&cql), &config(dual_write_start), &metrics)
        .await
        .expect("backfill");
    assert!(report.complete(), "{report}");
    assert!(
        env.cql
            .get_room(rooms[1].0, UserId(3))
            .await
            .expect("room")
            .is_pinned,
        "the pin is copied"
    );
    // 8 reacted messages per room, two reactions each; user 2 read 5 messages of user 1,
    // user 3 read 10 messages.
    assert_eq!(
        (report.reactions, report.read_markers),
        (u64::from(ROOMS) * 16, u64::from(ROOMS) * 15),
        "{report}"
    );
    let (room, messages) = &rooms[1];
    assert_eq!(
        cql.reactions(messages[5].id).await.expect("reactions"),
        [(UserId(2), "👍".to_owned()), (UserId(3), "🎉".to_owned())]
    );
    assert_eq!(
        cql.read_marker_count(*room, UserId(2)).await.expect("read"),
        5
    );
    let members = cql.members(*room).await.expect("members");
    let last_read = |user: i32| {
        members
            .iter()
            .find(|m| m.user_id == UserId(user))
            .and_then(|m| m.last_read)
    };
    assert_eq!(
        last_read(2),
        Some(messages[8].id),
        "newest of user 1's first ten"
    );
    assert_eq!(last_read(3), Some(messages[39].id));
    // Unread = messages of others not read; the live message counts on top, once.
    assert_eq!(cql_unread(&env, *room, 2).await, 20 - 5 + 1);
    assert_eq!(cql_unread(&env, *room, 3).await, 40 - 10 + 1);
    assert_eq!(cql_unread(&env, *room, 1).await, 20 + 1 - 1);
    // GetRoom answers the same unread count from either store.
    for (user, unread) in [(1, 20), (2, 16), (3, 31)] {
        let legacy = env.pg.get_room(*room, UserId(user)).await.expect("legacy");
        let new = env.cql.get_room(*room, UserId(user)).await.expect("new");
        assert_eq!(
            (legacy.unread_count, new.unread_count),
            (unread, unread),
            "user {user}"
        );
    }
    // A second run of the same migration changes no counter (nothing left to copy), a re-run
    // of a new one neither (the counters already hold legacy's count).
    backfill::run(
        &env.pg,
        Some(&cql),
        &BackfillConfig {
            migration_id: Some(MigrationId::parse("chat/again/1").expect("id")),
            ..config(dual_write_start)
        },
        &metrics,
    )
    .await
    .expect("re-run");
    assert_eq!(cql_unread(&env, *room, 3).await, 40 - 10 + 1);

    let verdict = validate::run(&env.pg, &cql, &validate_config(1_000), &metrics)
        .await
        .expect("validate");
    assert!(verdict.passed() && verdict.drift() == 0.0, "{verdict}");

    // Drift validate now sees: a lost reaction, a lost read marker, a membership changed, a
    // pin lost.
    let ks = &env.keyspace;
    let session = env.cql.session();
    let reacted = rooms[4].1[10].id;
    session
        .query_unpaged(
            format!("DELETE FROM {ks}.reactions_by_message WHERE message_id = ? AND user_id = 2 AND reaction = '👍'"),
            (scylla::value::CqlTimeuuid::from(reacted.0),),
        )
        .await
        .expect("delete reaction");
    session
        .query_unpaged(
            format!(
                "DELETE FROM {ks}.read_markers WHERE room_id = ? AND user_id = 3 AND message_id = ?"
            ),
            (
                rooms[2].0.0,
                scylla::value::CqlTimeuuid::from(rooms[2].1[35].id.0),
            ),
        )
        .await
        .expect("delete read marker");
    session
        .query_unpaged(
            format!("UPDATE {ks}.participants_by_room SET role = 'owner' WHERE room_id = ? AND user_id = 2"),
            (rooms[3].0.0,),
        )
        .await
        .expect("alter member");
    session
        .query_unpaged(
            format!(
                "UPDATE {ks}.rooms_by_user SET is_pinned = false WHERE user_id = 3 AND room_id = ?"
            ),
            (rooms[1].0.0,),
        )
        .await
        .expect("unpin");
    let verdict = validate::run(&env.pg, &cql, &validate_config(1_000), &metrics)
        .await
        .expect("validate");
    assert_eq!(
        (
            verdict.mismatches.get(&Mismatch::Reactions),
            verdict.mismatches.get(&Mismatch::ReadMarkers),
            verdict.mismatches.get(&Mismatch::Members),
            verdict.mismatched,
        ),
        (Some(&1), Some(&1), Some(&2), 4),
        "{verdict}"
    );
    let text = metrics.encode();
    for kind in ["reactions", "read_markers", "members"] {
        assert!(
            text.contains(&format!(
                "chat_data_inconsistencies{{type=\"{kind}\"}} {}",
                if kind == "members" { 2 } else { 1 }
            )),
            "{kind}: {text}"
        );
    }
}

/// A message legacy holds and the new store does not yet, with its write for the new store in
/// the legacy outbox (as a dual write leaves it when the new store's copy is late).
async fn late_message(env: &Env, room: RoomId) -> (NewMessage, i64) {
    let m = half_written(env, room).await;
    let entry = Outbox::new(env.pg.pool().clone())
        .enqueue(&NewEntry {
            target: Side::New,
            op: WriteOp::insert_message(&m),
            attempts: 0,
            delay: std::time::Duration::from_secs(600),
            last_error: None,
        })
        .await
        .expect("outbox entry");
    (m, entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_waits_for_writes_still_queued_for_the_new_store_but_not_forever() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_settle").await);
    let rooms = populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    backfill::run(&env.pg, Some(&cql), &config(now()), &metrics)
        .await
        .expect("backfill");
    let settling = ValidateConfig {
        recheck_after: std::time::Duration::from_millis(500),
        settle_limit: std::time::Duration::from_secs(20),
        ..validate_config(1_000)
    };

    // The copy lands (and its entry goes) 3 s into the validation: no drift.
    let (m, entry) = late_message(&env, rooms[1].0).await;
    let validation = validate::run(&env.pg, &cql, &settling, &metrics);
    let delivery = async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        WriteOp::insert_message(&m)
            .apply(&env.cql)
            .await
            .expect("the late copy");
        Outbox::new(env.pg.pool().clone())
            .complete(entry)
            .await
            .expect("entry done");
    };
    let (verdict, ()) = tokio::join!(validation, delivery);
    let verdict = verdict.expect("validate");
    assert!(
        verdict.passed(),
        "a write on its way is no drift: {verdict}"
    );

    // A copy that never lands counts once the settle limit is over.
    late_message(&env, rooms[2].0).await;
    let verdict = validate::run(
        &env.pg,
        &cql,
        &ValidateConfig {
            settle_limit: std::time::Duration::from_secs(2),
            ..settling
        },
        &metrics,
    )
    .await
    .expect("validate");
    assert_eq!(
        verdict.mismatches.get(&Mismatch::Count),
        Some(&1),
        "a write still queued after the limit is drift: {verdict}"
    );
}

/// A message legacy holds and the new store does not, with no entry left in the outbox: what
/// a validation check sees of a dual write whose copy lands just after the check read the room
/// and before it looks at the outbox.
async fn half_written(env: &Env, room: RoomId) -> NewMessage {
    let id = MessageIdGenerator::default().next();
    let m = NewMessage {
        id,
        room_id: room,
        sender_id: UserId(2),
        content: b"landing".to_vec(),
        message_type: "user_message".into(),
        created_at: id.created_at().expect("v1"),
    };
    env.pg.insert_message(m.clone()).await.expect("legacy");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_waits_for_a_room_whose_writes_keep_landing() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_moving").await);
    let rooms = populate(&env.pg).await;
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    backfill::run(&env.pg, Some(&cql), &config(now()), &metrics)
        .await
        .expect("backfill");
    let room = rooms[1].0;
    let recheck = std::time::Duration::from_secs(2);
    let settling = ValidateConfig {
        recheck_after: recheck,
        settle_limit: std::time::Duration::from_secs(20),
        ..validate_config(1_000)
    };

    // The first check (at once) sees one message missing from the new store. It lands before
    // the recheck (2 s), which sees the next one half written; the outbox is empty both times.
    // That one lands after the recheck: the room was being written, not drifting.
    let first = half_written(&env, room).await;
    let validation = validate::run(&env.pg, &cql, &settling, &metrics);
    let writes = async {
        tokio::time::sleep(recheck / 2).await;
        WriteOp::insert_message(&first)
            .apply(&env.cql)
            .await
            .expect("the first copy");
        let second = half_written(&env, room).await;
        tokio::time::sleep(recheck).await;
        WriteOp::insert_message(&second)
            .apply(&env.cql)
            .await
            .expect("the second copy");
    };
    let (verdict, ()) = tokio::join!(validation, writes);
    let verdict = verdict.expect("validate");
    assert!(
        verdict.passed(),
        "a room whose writes land one after another is no drift: {verdict}"
    );

    // The same difference at both checks, with nothing queued, is drift, at the first recheck.
    half_written(&env, rooms[2].0).await;
    let begin = std::time::Instant::now();
    let verdict = validate::run(&env.pg, &cql, &settling, &metrics)
        .await
        .expect("validate");
    assert_eq!(
        verdict.mismatches.get(&Mismatch::Count),
        Some(&1),
        "a difference that holds still is drift: {verdict}"
    );
    println!(
        "a lost write found in {:.1}s (recheck after {recheck:?}, settle limit {:?})",
        begin.elapsed().as_secs_f64(),
        settling.settle_limit
    );
}

/// The value of `metric{type="<kind>"}` in an OpenMetrics text, if present.
fn sample(text: &str, metric: &str, kind: &str) -> Option<f64> {
    let prefix = format!("{metric}{{type=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// `backfill` and `validate` with `--metrics-addr` serve their progress and findings while they
/// run (as the operator's Jobs do, for the dashboard and the stalled/inconsistency alerts), and
/// keep serving the final values for `--metrics-linger`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_and_validate_serve_their_progress_while_they_run() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_live_metrics").await);
    let rooms = populate(&env.pg).await;
    let [port] = ficus_testkit::free_ports::<1>().expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}/metrics");
    let spawn = |command: &str, extra: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
            .args([command, "--ranges", &RANGES.to_string()])
            .args(["--database-url", &env.database_url])
            .args(["--cql-contact-points", &env.contact_point])
            .args(["--cql-keyspace", &env.keyspace, "--cql-consistency", "ONE"])
            .args(["--metrics-addr", &addr, "--metrics-linger", "3s"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run chat-service")
    };
    // Everything the endpoint answered while the process ran, in order.
    let follow = |mut child: tokio::process::Child, metric: &'static str, kind: &'static str| {
        let url = url.clone();
        async move {
            let http = reqwest::Client::new();
            let mut seen = vec![];
            loop {
                if let Ok(r) = http.get(&url).send().await
                    && let Ok(text) = r.text().await
                    && let Some(v) = sample(&text, metric, kind)
                {
                    seen.push((v, text));
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return (status, seen);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };

    // 320 messages at 80 per second: about four seconds of copying.
    let started = now().to_rfc3339();
    let backfill = spawn(
        "backfill",
        &["--dual-write-started-at", &started, "--throttle", "80"],
    );
    let (status, seen) = follow(backfill, "chat_migration_progress_ratio", "messages").await;
    assert!(status.success(), "backfill exited with {status}");
    let ratios: Vec<f64> = seen.iter().map(|(v, _)| *v).collect();
    assert!(
        ratios.iter().any(|r| *r > 0.0 && *r < 1.0),
        "progress seen between 0 and 1 while copying: {ratios:?}"
    );
    assert!(
        ratios.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {ratios:?}"
    );
    assert_eq!(
        ratios.last(),
        Some(&1.0),
        "the final value is served: {ratios:?}"
    );

    // Drift for validate to find: a message altered in the new store.
    let altered = &rooms[0].1[0];
    alter_content(&env, rooms[0].0, altered.id).await;
    let validate = spawn("validate", &["--sample", "1000"]);
    let (status, seen) = follow(validate, "chat_migration_progress_ratio", "validation").await;
    assert_eq!(status.code(), Some(2), "validate fails on the drift");
    let (last, text) = seen.last().expect("validate served its metrics");
    assert_eq!(*last, 1.0, "every room checked");
    assert_eq!(
        sample(text, "chat_data_inconsistencies", "content"),
        Some(1.0),
        "the inconsistency is served:\n{text}"
    );
}

/// The chart's rules for the migration Jobs (`ChatMigrationStalled`,
/// `ChatDataInconsistencyDetected`) on a real Prometheus scraping real `backfill` and `validate`
/// processes: silent while a backfill copies, and after it; firing while it is stuck (its
/// PostgreSQL reads blocked by a table lock, the process up and serving); silent again once it
/// goes on; silent on a validate that finds nothing, firing on one that finds drift. The rules'
/// 10-minute ranges are scaled to 15 s and `for:` dropped, nothing else changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_alerts_fire_on_a_stalled_backfill_and_on_drift_and_stay_silent_otherwise() {
    let env = ficus_testkit::skip_or_fail!(setup("backfill_job_alerts").await);
    let rooms = populate(&env.pg).await;
    let [port] = ficus_testkit::free_ports::<1>().expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let rules = std::fs::read_to_string(
        ficus_testkit::helm::chart_dir().join("files/chat-alerts.rules.yml"),
    )
    .expect("the chart's rules")
    .lines()
    .filter(|l| !l.trim_start().starts_with("for:"))
    .collect::<Vec<_>>()
    .join("\n")
    .replace("[10m]", "[15s]")
    .replace("offset 10m", "offset 15s");
    let prometheus = ficus_testkit::skip_or_fail!(ficus_testkit::Prometheus::start(
        ficus_testkit::PrometheusConfig {
            targets: vec![addr.clone()],
            rules: Some(rules),
            alertmanager: None,
            labels: Default::default(),
        }
    ));
    let firing = |alert: &'static str| {
        let prometheus = &prometheus;
        async move {
            !prometheus
                .query(&format!(
                    r#"ALERTS{{alertname="{alert}",alertstate="firing"}}"#
                ))
                .await
                .expect("ALERTS")
                .is_empty()
        }
    };
    let spawn = |command: &str, extra: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
            .args([command, "--ranges", &RANGES.to_string()])
            .args(["--database-url", &env.database_url])
            .args(["--cql-contact-points", &env.contact_point])
            .args(["--cql-keyspace", &env.keyspace, "--cql-consistency", "ONE"])
            .args(["--metrics-addr", &addr, "--metrics-linger", "8s"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run chat-service")
    };
    let progress = || async {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        sample(&text, "chat_migration_progress_ratio", "messages")
    };
    // Polls until `done` says so; whether `alert` fired on the way.
    let watch = |alert: &'static str, until: std::time::Duration| {
        let firing = &firing;
        async move {
            let start = std::time::Instant::now();
            let mut fired = false;
            while start.elapsed() < until {
                fired |= firing(alert).await;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            fired
        }
    };

    // Healthy: 320 messages at 20 per second, then the final value for the linger.
    let started = now().to_rfc3339();
    let mut backfill = spawn(
        "backfill",
        &["--dual-write-started-at", &started, "--throttle", "20"],
    );
    let start = std::time::Instant::now();
    let mut fired = false;
    while backfill.try_wait().expect("wait").is_none() {
        fired |= firing("ChatMigrationStalled").await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        !fired,
        "a backfill that copies is not stalled ({:?})",
        start.elapsed()
    );

    // Stuck: another attempt (a new checkpoint key copies everything again) whose reads are
    // blocked from the moment it has copied a little.
    let mut backfill = spawn(
        "backfill",
        &[
            "--dual-write-started-at",
            &started,
            "--throttle",
            "20",
            "--migration-id",
            "chat/chat-to-scylla/2",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if progress().await.is_some_and(|r| r > 0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill never started copying"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut lock = env.pg.pool().begin().await.expect("a transaction");
    sqlx::query("lock table room_message in access exclusive mode")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let stuck_at = progress().await;
    let start = std::time::Instant::now();
    loop {
        if firing("ChatMigrationStalled").await {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "ChatMigrationStalled never fired on a backfill stuck at {stuck_at:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    println!(
        "ChatMigrationStalled fired {:?} after the backfill stopped at {stuck_at:?}",
        start.elapsed()
    );
    lock.rollback().await.expect("unlock");
    let status = backfill.wait().await.expect("backfill");
    assert!(
        status.success(),
        "the backfill went on and finished: {status}"
    );
    assert!(
        !firing("ChatMigrationStalled").await,
        "resolved once the backfill went on"
    );

    // validate: silent when the stores agree, firing when they do not.
    let mut validate = spawn("validate", &["--sample", "1000"]);
    let quiet = !watch(
        "ChatDataInconsistencyDetected",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(
        validate.wait().await.expect("validate").success(),
        "the stores agree"
    );
    assert!(
        quiet,
        "ChatDataInconsistencyDetected fired on a clean validate"
    );
    let altered = &rooms[1].1[2];
    alter_content(&env, rooms[1].0, altered.id).await;
    let mut validate = spawn("validate", &["--sample", "1000"]);
    let fired = watch(
        "ChatDataInconsistencyDetected",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(validate.wait().await.expect("validate").code(), Some(2));
    assert!(
        fired,
        "ChatDataInconsistencyDetected fired on the drift validate found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_tokens_are_copied_by_shard_and_validated() {
    use chat_service::store::Platform;
    let env = ficus_testkit::skip_or_fail!(setup("backfill_devices").await);
    let an_hour_ago = now() - chrono::Duration::hours(1);
    // Users 1..=5 with 1..=3 tokens each, user 2's second token deleted before the migration.
    for user in 1..=5 {
        for k in 0..(user % 3 + 1) {
            env.pg
                .register_device(
                    UserId(user),
                    format!("u{user}-t{k}"),
                    Platform::ALL[k as usize % 3],
                    an_hour_ago,
                )
                .await
                .expect("register");
        }
    }
    env.pg
        .delete_device(
            UserId(2),
            "u2-t1".into(),
            an_hour_ago + chrono::Duration::seconds(1),
        )
        .await
        .expect("delete");
    // Tokens registered in legacy: user % 3 + 1 per user, minus user 2's deleted one.
    let legacy_tokens: u64 = (1..=5u64).map(|u| u % 3 + 1).sum::<u64>() - 1;
    // A deletion made through the dual write after it started (stamped later than the
    // backfill's copy): the backfill must not bring the token back.
    let dual_write_start = now();
    let late = dual_write_start + chrono::Duration::seconds(1);
    for store in [&env.pg as &dyn ChatStore, &env.cql as &dyn ChatStore] {
        store
            .delete_device(UserId(4), "u4-t0".into(), late)
            .await
            .expect("dual-written delete");
    }
    let cql = env
        .cql
        .backfill(&env.keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    let mut copied = 0;
    for index in 0..2 {
        let report = backfill::run(
            &env.pg,
            Some(&cql),
            &BackfillConfig {
                shard: backfill::Shard { index, count: 2 },
                ..config(dual_write_start)
            },
            &metrics,
        )
        .await
        .expect("backfill");
        copied += report.devices;
    }
    assert_eq!(
        copied,
        legacy_tokens - 1,
        "every registered token copied once, over both shards"
    );
    for user in 1..=5 {
        assert_eq!(
            env.cql.devices(UserId(user)).await.expect("cql devices"),
            env.pg.devices(UserId(user)).await.expect("pg devices"),
            "user {user}"
        );
    }
    assert!(
        !env.cql
            .devices(UserId(4))
            .await
            .expect("devices")
            .iter()
            .any(|d| d.token == "u4-t0"),
        "the later deletion wins over the backfill's copy"
    );
    let report = validate::run(&env.pg, &cql, &validate_config(5), &metrics)
        .await
        .expect("validate");
    assert_eq!(report.device_users, 5, "{report}");
    assert_eq!(report.mismatches.get(&Mismatch::Devices), None, "{report}");
    assert!(report.passed(), "{report}");

    // A token the new store lost, and one it holds that legacy deleted: two users differ.
    env.cql
        .delete_device(UserId(5), "u5-t2".into(), now())
        .await
        .expect("lose");
    env.cql
        .register_device(UserId(2), "u2-t1".into(), Platform::Web, now())
        .await
        .expect("resurrect");
    let report = validate::run(
        &env.pg,
        &cql,
        &ValidateConfig {
            recheck_after: std::time::Duration::ZERO,
            ..validate_config(5)
        },
        &metrics,
    )
    .await
    .expect("validate");
    assert_eq!(
        report.mismatches.get(&Mismatch::Devices),
        Some(&2),
        "{report}"
    );
    assert!(!report.passed(), "{report}");
}
