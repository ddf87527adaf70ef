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

use std::time::Duration;

use chat_service::client::ChatClient;
use chat_service::config::{Limits, ServeConfig};
use chat_service::crypto::EncryptionKey;
use chat_service::flags::{FlagSource, Flags};
use chat_service::ids::{RoomId, UserId};
use chat_service::loadtest::{drive, timed};
use chat_service::serve;
use ficus_e2e::Postgres;

const JWT_SECRET: &[u8] = b"chat-service-benchmark-secret-0123456789abcdef";
const ROOMS: usize = 10;
const HISTORY_PAGE: u32 = 20;
const FIRST_USER: i32 = 1;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    ficus_e2e::init();
    let full = std::env::args().any(|a| a == "--bench");
    let concurrency = env_or("BENCH_CONCURRENCY", if full { 16 } else { 2 }) as u32;
    let seconds = env_or("BENCH_SECONDS", if full { 10 } else { 1 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench(
        concurrency.max(1),
        Duration::from_secs(seconds.max(1)),
    ));
}

async fn bench(concurrency: u32, duration: Duration) {
    // Keep the private server alive for the whole run.
    let (database_url, origin, _server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, "DATABASE_URL", None),
        Err(_) => {
            let pg = match Postgres::start() {
                Ok(pg) => pg,
                // Prints SKIP for a missing PostgreSQL (fails on CI), panics on other errors.
                Err(e) => return ficus_e2e::skip_or_panic(&e),
            };
            let url = pg.create_database("chat_bench").await.expect("database");
            (
                url,
                "private server started by the test harness (fsync=off)",
                Some(pg),
            )
        }
    };
    let config = ServeConfig {
        store: chat_service::config::StoreChoice::Postgres,
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: database_url.clone(),
        database_max_connections: concurrency.max(4) * 2,
        jwt_secret: JWT_SECRET.to_vec(),
        encryption_key: EncryptionKey::random(),
        nats_url: None,
        flags: FlagSource::Static(Flags::default()),
        limits: Limits::default(),
    };
    let max_connections = config.database_max_connections;
    let server = serve::bind(config).await.expect("chat-service starts");
    let base_url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let pool = sqlx::postgres::PgPool::connect(&database_url)
        .await
        .expect("pool");
    let version: String = sqlx::query_scalar("show server_version")
        .fetch_one(&pool)
        .await
        .expect("version");

    let client = ChatClient::new(&base_url, JWT_SECRET);
    let users: Vec<UserId> = (0..concurrency as i32)
        .map(|i| UserId(FIRST_USER + i))
        .collect();
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        rooms.push(
            client
                .create_room(users[0], &format!("bench {i}"), "group", &users)
                .await
                .expect("room"),
        );
    }
    let content = "x".repeat(64);

    println!("chat-service benchmark");
    println!("  PostgreSQL {version}: {origin}");
    println!(
        "  through HTTP on loopback, in-process server, pool of {max_connections} connections"
    );
    println!(
        "  concurrency {concurrency} (closed loop, no think time), {}s per phase, {ROOMS} rooms, {} byte messages, history page {HISTORY_PAGE}",
        duration.as_secs(),
        content.len()
    );
    println!(
        "  machine: {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let shared = std::sync::Arc::new((client, users, rooms, content));
    let send = {
        let shared = shared.clone();
        drive(concurrency, duration, None, Duration::ZERO, move |worker| {
            let shared = shared.clone();
            async move {
                let (client, users, rooms, content) = &*shared;
                let room: RoomId = rooms[worker as usize % rooms.len()];
                vec![
                    timed(
                        "SendMessage",
                        client.send_message(users[worker as usize], room, content),
                    )
                    .await
                    .0,
                ]
            }
        })
        .await
    };
    println!("\n[SendMessage]\n{send}");

    let history = drive(concurrency, duration, None, Duration::ZERO, move |worker| {
        let shared = shared.clone();
        async move {
            let (client, users, rooms, _) = &*shared;
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
    })
    .await;
    println!("[GetMessageHistory]\n{history}");
    let stored: i64 = sqlx::query_scalar("select count(*) from room_message")
        .fetch_one(&pool)
        .await
        .expect("count");
    println!("messages stored: {stored}");

    let _ = stop.send(());
    let _ = serving.await;
}
