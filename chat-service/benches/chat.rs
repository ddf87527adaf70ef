//! SendMessage and GetMessageHistory throughput and latency, at a fixed concurrency for a fixed
//! time, through the HTTP API of an in-process chat-service on PostgreSQL. Prints figures and
//! the settings; asserts nothing about time.
//!
//! ```sh
//! cargo bench -p chat-service --bench chat                      # private PostgreSQL (harness)
//! DATABASE_URL=postgres://... cargo bench -p chat-service --bench chat
//! BENCH_CONCURRENCY=32 BENCH_SECONDS=20 cargo bench -p chat-service --bench chat
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a one-second smoke pass.

mod support;

use std::time::Duration;

use chat_service::config::StoreChoice;
use chat_service::flags::Flags;
use chat_service::ids::RoomId;
use chat_service::loadtest::{drive, timed};
use ficus_testkit::Postgres;

use support::{CONTENT_BYTES, Load, ROOMS, Server};

const HISTORY_PAGE: u32 = 20;

fn main() {
    support::run(bench(Load::from_env()));
}

async fn bench(load: Load) {
    // Keep the private server alive for the whole run.
    let (database_url, origin, _server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, "DATABASE_URL", None),
        Err(_) => {
            let pg = match Postgres::start() {
                Ok(pg) => pg,
                // Prints SKIP for a missing PostgreSQL (fails on CI), panics on other errors.
                Err(e) => return ficus_testkit::skip_or_panic(&e),
            };
            let url = pg.create_database("chat_bench").await.expect("database");
            (
                url,
                "private server started by the test harness (fsync=off)",
                Some(pg),
            )
        }
    };
    let max_connections = load.max_connections();
    let config = support::config(
        database_url.clone(),
        StoreChoice::Postgres,
        Flags::default(),
        max_connections,
    );
    let server = Server::start(config, load.concurrency).await;
    let pool = sqlx::postgres::PgPool::connect(&database_url)
        .await
        .expect("pool");
    let version: String = sqlx::query_scalar("show server_version")
        .fetch_one(&pool)
        .await
        .expect("version");

    println!("chat-service benchmark");
    println!("  PostgreSQL {version}: {origin}");
    println!(
        "  through HTTP on loopback, in-process server, pool of {max_connections} connections"
    );
    println!(
        "  concurrency {} (closed loop, no think time), {}s per phase, {ROOMS} rooms, {CONTENT_BYTES} byte messages, history page {HISTORY_PAGE}",
        load.concurrency,
        load.duration.as_secs(),
    );
    println!("  {}", support::machine());

    let send = server.send_messages(load, Duration::ZERO).await;
    println!("\n[SendMessage]\n{send}");

    let shared = std::sync::Arc::new((
        server.client.clone(),
        server.users.clone(),
        server.rooms.clone(),
    ));
    let history = drive(
        load.concurrency,
        load.duration,
        None,
        Duration::ZERO,
        move |worker| {
            let shared = shared.clone();
            async move {
                let (client, users, rooms) = &*shared;
                let room: RoomId = rooms[worker as usize % rooms.len()];
                vec![
                    timed(
                        "GetMessageHistory",
                        client.history(users[worker as usize], room, HISTORY_PAGE, None),
                    )
                    .await
                    .0,
                ]
            }
        },
    )
    .await;
    println!("[GetMessageHistory]\n{history}");
    println!(
        "messages stored: {}",
        support::stored_messages(&database_url).await
    );
    server.stop().await;
}
