//! Backfill throughput: PostgreSQL (legacy) -> CQL (the harness's Apache Cassandra node).
//! Prints one table with the settings; asserts nothing about time.
//!
//! 1. raw CQL: N prepared INSERTs into a `messages_by_room` table at concurrency C through the
//!    scylla session directly (the store's ceiling on this machine);
//! 2. `backfill::run` of a PostgreSQL database holding the same N messages across R rooms into
//!    a fresh keyspace;
//! 3. naive copy: one message read from PostgreSQL, written to CQL (`CqlBackfill::write_messages`
//!    of one message), then the next — sequentially;
//! 4. `validate::run` over the backfilled keyspace, every message compared (sample >= per-room
//!    count); the rate is `compared` checks per second;
//! 5. raw read: every message of every room read from PostgreSQL and from the CQL store (both
//!    per room, the rooms `workers` at a time as validate takes them), the ceiling validate's
//!    reads could reach; printed beside validate's messages per second.
//!
//! ```sh
//! cargo bench -p chat-service --bench backfill
//! BENCH_MESSAGES=100000 BENCH_ROOMS=200 BENCH_WORKERS=8 BENCH_CONCURRENCY=128 cargo bench -p chat-service --bench backfill
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a small smoke pass.

mod support;

use std::time::{Duration, Instant};

use chat_service::backfill::{self, BackfillConfig};
use chat_service::ids::{MessageId, MessageIdGenerator, RoomId, UserId};
use chat_service::metrics::Metrics;
use chat_service::store::postgres::PgStore;
use chat_service::store::scylla::{BackfillMessage, CqlConfig, CqlStore};
use chat_service::store::{ChatStore, NewRoom, RoomType, now};
use chat_service::validate::{self, ValidateConfig};
use chrono::{DateTime, Utc};
use ficus_testkit::{Cassandra, HarnessError, Postgres};
use futures::StreamExt;
use scylla::value::CqlTimeuuid;
use uuid::Uuid;

use support::CONTENT_BYTES;

const INSERT_BATCH: usize = 1000;

struct Settings {
    messages: usize,
    rooms: usize,
    workers: usize,
    concurrency: usize,
    chunk: u32,
}

fn main() {
    let full = support::full_run();
    let settings = Settings {
        messages: support::env_or("BENCH_MESSAGES", if full { 20_000 } else { 300 }).max(1)
            as usize,
        rooms: support::env_or("BENCH_ROOMS", if full { 50 } else { 5 }).max(1) as usize,
        workers: support::env_or("BENCH_WORKERS", 4).max(1) as usize,
        concurrency: support::env_or("BENCH_CONCURRENCY", if full { 64 } else { 8 }).max(1)
            as usize,
        chunk: support::env_or("BENCH_CHUNK", 500).max(1) as u32,
    };
    if let Err(e) = support::run(bench(&settings)) {
        // Prints SKIP for a missing PostgreSQL/Cassandra (fails on CI), panics on other errors.
        ficus_testkit::skip_or_panic(&e);
    }
}

/// One generated message (the same set is inserted raw into CQL and into PostgreSQL).
struct Message {
    id: MessageId,
    room: RoomId,
    sender: i32,
    content: Vec<u8>,
    created_at: DateTime<Utc>,
}

fn generate(settings: &Settings) -> (Vec<RoomId>, Vec<Message>) {
    let rooms: Vec<RoomId> = (0..settings.rooms)
        .map(|_| RoomId(Uuid::new_v4()))
        .collect();
    let ids = MessageIdGenerator::default();
    let messages = (0..settings.messages)
        .map(|k| {
            let id = ids.next();
            Message {
                id,
                room: rooms[k % rooms.len()],
                sender: 1 + (k % 3) as i32,
                content: (0..CONTENT_BYTES).map(|_| rand::random::<u8>()).collect(),
                created_at: id.created_at().expect("v1 id"),
            }
        })
        .collect();
    (rooms, messages)
}

struct Row {
    method: &'static str,
    count: u64,
    unit: &'static str,
    elapsed: Duration,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

async fn connect_cql(
    cassandra: &Cassandra,
    prefix: &str,
) -> Result<(CqlStore, String), HarnessError> {
    let keyspace = cassandra.create_keyspace(prefix).await?;
    let config = CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace: keyspace.clone(),
        consistency: scylla::statement::Consistency::One,
        address_map: Default::default(),
    };
    Ok((
        CqlStore::connect(&config)
            .await
            .expect("CQL store connects (schema applied)"),
        keyspace,
    ))
}

async fn bench(settings: &Settings) -> Result<(), HarnessError> {
    let postgres = Postgres::shared()?;
    let cassandra = Cassandra::shared()?;
    let (rooms, messages) = generate(settings);
    let n = messages.len() as u64;
    let mut rows = Vec::new();

    // 1. Raw CQL insert rate at concurrency C, the scylla session directly.
    {
        let (store, keyspace) = connect_cql(cassandra, "bench_raw").await?;
        let session = store.session();
        let insert = session
            .prepare(format!("INSERT INTO {keyspace}.messages_by_room (room_id, message_id, sender_id, content, type, deleted) VALUES (?, ?, ?, ?, ?, false)"))
            .await
            .expect("prepare");
        let started = Instant::now();
        let errors = futures::stream::iter(messages.iter().map(|m| {
            let insert = &insert;
            async move {
                session
                    .execute_unpaged(
                        insert,
                        (
                            m.room.0,
                            CqlTimeuuid::from(m.id.0),
                            m.sender,
                            m.content.as_slice(),
                            "user_message",
                        ),
                    )
                    .await
                    .is_err()
            }
        }))
        .buffer_unordered(settings.concurrency)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
        let elapsed = started.elapsed();
        rows.push(Row {
            method: "raw CQL insert",
            // Only inserts that succeeded count towards the rate; failures are in the note.
            count: n - errors as u64,
            unit: "msgs",
            elapsed,
            note: format!(
                "{} in flight, prepared INSERT, {errors} errors",
                settings.concurrency
            ),
        });
    }

    // PostgreSQL: R rooms (members 1..=3) and the same N messages, batched through unnest.
    let database_url = postgres.create_database("bench_backfill").await?;
    let pg = PgStore::connect(&database_url, (settings.workers as u32 * 2).max(10))
        .await
        .expect("pg");
    pg.migrate().await.expect("migrate");
    let populate_started = Instant::now();
    for (i, room) in rooms.iter().enumerate() {
        pg.create_room(NewRoom {
            id: *room,
            name: format!("bench room {i}"),
            room_type: RoomType::Group,
            created_by: UserId(1),
            participants: vec![UserId(1), UserId(2), UserId(3)],
            created_at: messages[0].created_at - chrono::Duration::seconds(1),
        })
        .await
        .expect("room");
    }
    for batch in messages.chunks(INSERT_BATCH) {
        sqlx::query(
            "insert into room_message (id, room_id, sender_id, content, type, created_at)
             select * from unnest($1::uuid[], $2::uuid[], $3::int[], $4::bytea[], $5::varchar[], $6::timestamptz[])",
        )
        .bind(batch.iter().map(|m| m.id.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.room.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.sender).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.content.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|_| "user_message".to_string()).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.created_at).collect::<Vec<_>>())
        .execute(pg.pool())
        .await
        .expect("insert messages");
    }
    sqlx::query("analyze")
        .execute(pg.pool())
        .await
        .expect("analyze");
    let populate = populate_started.elapsed();

    // 2. backfill::run into a fresh keyspace.
    let (store, keyspace) = connect_cql(cassandra, "bench_backfill").await?;
    let cql = store
        .backfill(&keyspace)
        .await
        .expect("backfill statements");
    let metrics = Metrics::default();
    let config = BackfillConfig {
        workers: settings.workers,
        dual_write_started_at: Some(now()),
        chunk: settings.chunk,
        ..BackfillConfig::default()
    };
    let report = backfill::run(&pg, Some(&cql), &config, &metrics)
        .await
        .expect("backfill");
    rows.push(Row {
        method: "backfill::run",
        count: report.messages,
        unit: "msgs",
        elapsed: report.elapsed,
        note: format!(
            "{} workers, {} ranges, chunk {}, complete: {}",
            config.workers,
            config.ranges,
            config.chunk,
            report.complete()
        ),
    });

    // 3. Naive: read one message, write it, next.
    {
        let (naive_store, naive_keyspace) = connect_cql(cassandra, "bench_naive").await?;
        let naive = naive_store
            .backfill(&naive_keyspace)
            .await
            .expect("backfill statements");
        let ts = (now() - chrono::Duration::seconds(1)).timestamp_micros();
        let started = Instant::now();
        let mut after = Uuid::nil();
        let mut copied = 0u64;
        loop {
            let row = sqlx::query_as::<_, (Uuid, Uuid, i32, Vec<u8>, String, DateTime<Utc>, bool)>(
                "select id, room_id, sender_id, content, type, created_at, deleted_at is not null from room_message where id > $1 order by id limit 1",
            )
            .bind(after)
            .fetch_optional(pg.pool())
            .await
            .expect("read one");
            let Some((id, room, sender, content, message_type, created_at, deleted)) = row else {
                break;
            };
            let message = BackfillMessage {
                id: MessageId(id),
                sender_id: UserId(sender),
                content,
                message_type,
                created_at,
                deleted,
            };
            naive
                .write_messages(RoomId(room), std::slice::from_ref(&message), ts)
                .await
                .expect("write one");
            copied += 1;
            after = id;
        }
        let elapsed = started.elapsed();
        rows.push(Row {
            method: "naive row-at-a-time",
            count: copied,
            unit: "msgs",
            elapsed,
            note: "sequential: 1 PG read + write_messages(1) per message".into(),
        });
    }

    // 4. validate::run over the backfilled keyspace, every message compared.
    {
        let per_room = messages.len().div_ceil(rooms.len()) as u32;
        let config = ValidateConfig {
            sample: per_room,
            ..ValidateConfig::default()
        };
        let started = Instant::now();
        let verdict = validate::run(&pg, &cql, &config, &metrics)
            .await
            .expect("validate");
        let elapsed = started.elapsed();
        rows.push(Row {
            method: "validate::run",
            count: verdict.compared,
            unit: "checks",
            elapsed,
            note: format!(
                "{} workers, sample {per_room}/room, {} mismatched, passed: {}",
                config.workers,
                verdict.mismatched,
                verdict.passed()
            ),
        });
    }

    // 5. Raw read of every message from both stores, room by room, `workers` rooms at a time.
    let raw_read = {
        let workers = ValidateConfig::default().workers;
        let session = store.session();
        let select = session
            .prepare(format!("SELECT message_id, sender_id, content, type, deleted FROM {keyspace}.messages_by_room WHERE room_id = ?"))
            .await
            .expect("prepare");
        let started = Instant::now();
        let read: u64 = futures::stream::iter(rooms.iter().map(|room| {
            let (select, pool) = (&select, pg.pool());
            async move {
                let legacy = sqlx::query_as::<_, (Uuid, i32, Vec<u8>, String, Option<DateTime<Utc>>)>(
                    "select id, sender_id, content, type, deleted_at from room_message where room_id = $1",
                )
                .bind(room.0)
                .fetch_all(pool);
                let new = async {
                    let mut n = 0u64;
                    let mut rows = session
                        .execute_iter(select.clone(), (room.0,))
                        .await
                        .expect("cql read")
                        .rows_stream::<(CqlTimeuuid, i32, Vec<u8>, String, bool)>()
                        .expect("rows");
                    while let Some(row) = rows.next().await {
                        row.expect("row");
                        n += 1;
                    }
                    n
                };
                let (legacy, new) = futures::join!(legacy, new);
                (legacy.expect("pg read").len() as u64).min(new)
            }
        }))
        .buffer_unordered(workers)
        .fold(0u64, |sum, n| futures::future::ready(sum + n))
        .await;
        let elapsed = started.elapsed();
        rows.push(Row {
            method: "raw read, both stores",
            count: read,
            unit: "msgs",
            elapsed,
            note: format!(
                "{workers} rooms at a time, each room read whole from PostgreSQL and CQL"
            ),
        });
        (read, elapsed)
    };

    println!("chat-service backfill benchmark (PostgreSQL -> CQL)");
    println!(
        "  messages {} across {} rooms (3 members each), {CONTENT_BYTES}-byte random content",
        messages.len(),
        rooms.len()
    );
    println!(
        "  backfill workers {}, chunk {}; raw CQL concurrency {}",
        settings.workers, settings.chunk, settings.concurrency
    );
    println!(
        "  PostgreSQL: harness server (fsync=off), populated in {:.2}s by {INSERT_BATCH}-row unnest inserts",
        populate.as_secs_f64()
    );
    println!(
        "  CQL: harness's single Apache Cassandra 5.0 node on loopback, RF 1, consistency ONE"
    );
    println!(
        "  machine: {} CPUs, everything (PG, Cassandra JVM, bench) on the same host",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "{:<22} {:>9} {:>7} {:>9} {:>11} {:>8}  notes",
        "method", "count", "unit", "seconds", "per s", "vs raw"
    );
    let raw = rows[0].rate();
    // validate's reads against the raw read of the same messages from both stores.
    let validate_elapsed = rows
        .iter()
        .find(|r| r.method == "validate::run")
        .map(|r| r.elapsed);
    for row in &rows {
        println!(
            "{:<22} {:>9} {:>7} {:>9.3} {:>11.0} {:>7.2}x  {}",
            row.method,
            row.count,
            row.unit,
            row.elapsed.as_secs_f64(),
            row.rate(),
            row.rate() / raw.max(f64::EPSILON),
            row.note
        );
    }
    if let Some(v) = validate_elapsed {
        let (read, raw_elapsed) = raw_read;
        let validate_rate = n as f64 / v.as_secs_f64().max(f64::EPSILON);
        let raw_rate = read as f64 / raw_elapsed.as_secs_f64().max(f64::EPSILON);
        println!();
        println!(
            "validate verified {validate_rate:.0} messages/s; the raw read of both stores {raw_rate:.0} messages/s: {:.0} % of it (goal >= 50 %)",
            100.0 * validate_rate / raw_rate.max(f64::EPSILON)
        );
    }
    Ok(())
}
