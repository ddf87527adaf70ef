//! Dual-write overhead: SendMessage latency through the HTTP API of an in-process chat-service
//! with `--store postgres` (the primary only) against `--store router` with `dual_write = sync`
//! and `async` (legacy primary; the new store a second PostgreSQL database of the same server),
//! at the same concurrency for the same time. Prints a table with the settings; asserts
//! nothing about time.
//!
//! ```sh
//! cargo bench -p chat-service --bench dual_write
//! BENCH_CONCURRENCY=32 BENCH_SECONDS=20 cargo bench -p chat-service --bench dual_write
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a one-second smoke pass.

use std::time::Duration;

use chat_service::client::ChatClient;
use chat_service::config::{Limits, NewStoreChoice, ServeConfig, StoreChoice};
use chat_service::crypto::EncryptionKey;
use chat_service::flags::{DualWrite, FlagSource, Flags, StoreSide};
use chat_service::ids::{RoomId, UserId};
use chat_service::loadtest::{RunReport, drive, timed};
use chat_service::serve;
use ficus_e2e::Postgres;

const JWT_SECRET: &[u8] = b"chat-service-benchmark-secret-0123456789abcdef";
const ROOMS: usize = 10;

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

#[derive(Clone, Copy)]
enum Setting {
    PrimaryOnly,
    Router(DualWrite),
}

impl Setting {
    fn label(self) -> &'static str {
        match self {
            Setting::PrimaryOnly => "postgres (primary only)",
            Setting::Router(DualWrite::Sync) => "router, dual_write=sync",
            Setting::Router(DualWrite::Async) => "router, dual_write=async",
            Setting::Router(DualWrite::Off) => "router, dual_write=off",
        }
    }
}

async fn bench(concurrency: u32, duration: Duration) {
    let pg = match Postgres::start() {
        Ok(pg) => pg,
        // Prints SKIP for a missing PostgreSQL (fails on CI), panics on other errors.
        Err(e) => return ficus_e2e::skip_or_panic(&e),
    };
    let max_connections = concurrency.max(4) * 2;
    let content = "x".repeat(64);
    let settings = [
        Setting::PrimaryOnly,
        Setting::Router(DualWrite::Sync),
        Setting::Router(DualWrite::Async),
    ];
    let mut rows: Vec<(Setting, RunReport, i64, i64)> = Vec::new();
    for (n, setting) in settings.into_iter().enumerate() {
        let legacy_url = pg
            .create_database(&format!("dual_bench_{n}_legacy"))
            .await
            .expect("database");
        let new_url = pg
            .create_database(&format!("dual_bench_{n}_new"))
            .await
            .expect("database");
        let (store, flags) = match setting {
            Setting::PrimaryOnly => (StoreChoice::Postgres, Flags::default()),
            Setting::Router(mode) => (
                StoreChoice::Router {
                    new: NewStoreChoice::Postgres {
                        database_url: new_url.clone(),
                    },
                    outbox_max_attempts: 10,
                },
                Flags {
                    generation: 1,
                    write_primary: StoreSide::Legacy,
                    dual_write: mode,
                    shadow_read_percent: 0,
                    read_split_percent: 0,
                },
            ),
        };
        let config = ServeConfig {
            store,
            listen: "127.0.0.1:0".parse().expect("addr"),
            database_url: legacy_url.clone(),
            database_max_connections: max_connections,
            jwt_secret: JWT_SECRET.to_vec(),
            encryption_key: EncryptionKey::random(),
            nats_url: None,
            flags: FlagSource::Static(flags),
            limits: Limits::default(),
        };
        let server = serve::bind(config).await.expect("chat-service starts");
        let base_url = format!("http://{}", server.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let client = ChatClient::new(&base_url, JWT_SECRET);
        let users: Vec<UserId> = (1..=concurrency as i32).map(UserId).collect();
        let mut rooms = Vec::new();
        for i in 0..ROOMS {
            rooms.push(
                client
                    .create_room(users[0], &format!("bench {i}"), "group", &users)
                    .await
                    .expect("room"),
            );
        }
        let shared = std::sync::Arc::new((client, users, rooms, content.clone()));
        let report = drive(concurrency, duration, None, Duration::ZERO, move |worker| {
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
        .await;
        // Let async secondary writes finish before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let count = |url: String| async move {
            let pool = sqlx::postgres::PgPool::connect(&url).await.expect("pool");
            sqlx::query_scalar::<_, i64>("select count(*) from room_message")
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
        };
        let (in_legacy, in_new) = (count(legacy_url).await, count(new_url).await);
        let _ = stop.send(());
        let _ = serving.await;
        rows.push((setting, report, in_legacy, in_new));
    }

    println!("chat-service dual-write overhead benchmark (SendMessage)");
    println!(
        "  PostgreSQL: private server started by the test harness (fsync=off); legacy and new are two databases of it"
    );
    println!(
        "  through HTTP on loopback, in-process server, pool of {max_connections} connections per store"
    );
    println!(
        "  concurrency {concurrency} (closed loop, no think time), {}s per setting, {ROOMS} rooms, {} byte messages",
        duration.as_secs(),
        content.len()
    );
    println!(
        "  machine: {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "{:<26} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "setting", "ok", "errors", "per s", "p50 ms", "p99 ms", "max ms", "legacy rows", "new rows"
    );
    let base = rows
        .first()
        .and_then(|(_, r, _, _)| r.ops.get("SendMessage").map(|s| s.latency));
    for (setting, report, in_legacy, in_new) in &rows {
        let Some(s) = report.ops.get("SendMessage") else {
            continue;
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let secs = report.elapsed.as_secs_f64().max(f64::EPSILON);
        println!(
            "{:<26} {:>8} {:>7} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>10}",
            setting.label(),
            s.ok,
            s.errors,
            (s.ok + s.errors) as f64 / secs,
            ms(s.latency.p50),
            ms(s.latency.p99),
            ms(s.latency.max),
            in_legacy,
            in_new
        );
        for e in &report.error_samples {
            println!("  error: {e}");
        }
    }
    if let Some(base) = base {
        println!();
        for (setting, report, _, _) in rows.iter().skip(1) {
            if let Some(s) = report.ops.get("SendMessage") {
                let ratio =
                    |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::EPSILON);
                println!(
                    "{:<26} p50 x{:.2}, p99 x{:.2} of primary only",
                    setting.label(),
                    ratio(s.latency.p50, base.p50),
                    ratio(s.latency.p99, base.p99)
                );
            }
        }
    }
}
