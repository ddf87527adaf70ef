//! Outbox replay: how soon the writes a store missed reach it once it is back.
//!
//! An in-process chat-service with `--store router` over two PostgreSQL databases (legacy
//! primary, `dual_write = sync`). The new store's database refuses connections (its sessions
//! are ended), `BENCH_OUTBOX_WRITES` (2,000) messages are sent and acknowledged meanwhile (each
//! leaves an outbox record), then the database accepts connections again. Printed: from that
//! moment to the first replayed write and to an empty outbox, the drain rate, and whether the
//! new store holds every message. Prints; asserts nothing about time.
//!
//! ```sh
//! cargo bench -p chat-service --bench outbox_replay
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a small smoke pass.

mod support;

use std::time::{Duration, Instant};

use chat_service::config::{NewStoreChoice, StoreChoice};
use chat_service::flags::{DualWrite, FlagValues, Flags, Side};
use ficus_testkit::Postgres;
use sqlx::postgres::PgPool;

use support::{Server, env_or};

/// Senders at once while the new store is away.
const SENDERS: usize = 8;

fn main() {
    support::run(bench());
}

async fn outbox_depth(legacy: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("select count(*) from outbox")
        .fetch_one(legacy)
        .await
        .unwrap_or(-1)
}

/// Turns connections to `database` off (ending its sessions) or back on.
async fn set_reachable(admin: &PgPool, database: &str, reachable: bool) {
    let statements = if reachable {
        vec![format!(
            "alter database \"{database}\" allow_connections true"
        )]
    } else {
        vec![
            format!("alter database \"{database}\" allow_connections false"),
            format!(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{database}'"
            ),
        ]
    };
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(admin)
            .await
            .expect("the admin statement runs");
    }
}

async fn bench() {
    let full = support::full_run();
    let writes = env_or("BENCH_OUTBOX_WRITES", if full { 2_000 } else { 40 }) as usize;
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return;
        }
    };
    let legacy_url = pg
        .create_database("outbox_bench_legacy")
        .await
        .expect("legacy database");
    let new_url = pg
        .create_database("outbox_bench_new")
        .await
        .expect("new database");
    let new_name = new_url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    let flags = Flags {
        generation: 1,
        values: FlagValues {
            write_primary: Side::Legacy,
            dual_write: DualWrite::Sync,
            ..Default::default()
        },
    };
    let store = StoreChoice::Router {
        new: NewStoreChoice::Postgres {
            database_url: new_url.clone(),
        },
        // Nothing dead-letters during the outage: every write is replayed.
        outbox_max_attempts: 1_000,
        outbox_inline_grace: Duration::from_secs(30),
        switch_settle: Duration::from_secs(60),
    };
    let server = Server::start(
        support::config(legacy_url.clone(), store, flags, 32),
        SENDERS as u32,
    )
    .await;
    let legacy = PgPool::connect(&legacy_url).await.expect("legacy pool");

    // The new store goes away; every send is still acknowledged (legacy primary).
    set_reachable(&legacy, &new_name, false).await;
    let away = Instant::now();
    let content = "x".repeat(support::CONTENT_BYTES);
    let mut acked = 0usize;
    for batch in (0..writes).collect::<Vec<_>>().chunks(SENDERS) {
        let sends = batch.iter().map(|i| {
            let user = server.users[i % server.users.len()];
            let room = server.rooms[i % server.rooms.len()];
            server.client.send_message(user, room, &content)
        });
        acked += futures::future::join_all(sends)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count();
    }
    let sent_in = away.elapsed();
    let queued = outbox_depth(&legacy).await;

    // Back: from here to the first replay and to an empty outbox.
    set_reachable(&legacy, &new_name, true).await;
    let back = Instant::now();
    let mut first_replay = None;
    let drained = loop {
        let depth = outbox_depth(&legacy).await;
        if first_replay.is_none() && depth >= 0 && depth < queued {
            first_replay = Some(back.elapsed());
        }
        if depth == 0 {
            break Some(back.elapsed());
        }
        if back.elapsed() > Duration::from_secs(300) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let in_legacy = support::stored_messages(&legacy_url).await;
    let in_new = support::stored_messages(&new_url).await;
    server.stop().await;

    println!(
        "outbox replay: router over two PostgreSQL databases, legacy primary, dual_write=sync"
    );
    println!("{}", support::machine());
    println!(
        "new store away: {acked} of {writes} sends acknowledged in {:.1} s ({SENDERS} at a time); {queued} outbox records",
        sent_in.as_secs_f64()
    );
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "never (300 s)".into())
    };
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| store back → first write replayed | {} |",
        ms(first_replay)
    );
    println!("| store back → outbox empty | {} |", ms(drained));
    if let Some(d) = drained {
        println!(
            "| drain rate | {:.0} writes/s |",
            queued as f64 / d.as_secs_f64().max(1e-3)
        );
    }
    println!(
        "| messages: legacy / new after the drain | {in_legacy} / {in_new}{} |",
        if in_legacy == in_new {
            ""
        } else {
            " (MISSING in new)"
        }
    );
}
