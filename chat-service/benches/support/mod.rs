//! What the chat-service benchmarks share: settings from the environment (a one-second smoke
//! pass under `cargo test --benches`, the real run under `cargo bench`), an in-process server,
//! and the SendMessage load.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chat_service::client::ChatClient;
use chat_service::config::{Limits, ServeConfig, StoreChoice};
use chat_service::crypto::EncryptionKey;
use chat_service::flags::{FlagSource, Flags};
use chat_service::ids::{RoomId, UserId};
use chat_service::loadtest::{RunReport, drive, timed};
use chat_service::serve;
use chat_service::store::scylla::{CqlConfig, CqlStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const JWT_SECRET: &[u8] = b"chat-service-benchmark-secret-0123456789abcdef";
/// Rooms the load spreads over.
pub const ROOMS: usize = 10;
/// Message content length, in bytes.
pub const CONTENT_BYTES: usize = 64;

/// `$name` as a number, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// True under `cargo bench` (which passes `--bench`); false for the smoke pass of
/// `cargo test --benches`.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Closed-loop load settings: `BENCH_CONCURRENCY` workers for `BENCH_SECONDS` per phase.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub concurrency: u32,
    pub duration: Duration,
}

impl Load {
    pub fn from_env() -> Self {
        let full = full_run();
        let concurrency = env_or("BENCH_CONCURRENCY", if full { 16 } else { 2 }).max(1);
        let seconds = env_or("BENCH_SECONDS", if full { 10 } else { 1 }).max(1);
        Load {
            concurrency: u32::try_from(concurrency).unwrap_or(u32::MAX),
            duration: Duration::from_secs(seconds),
        }
    }

    /// Database connections per store: enough that the pool is not what is measured.
    pub fn max_connections(&self) -> u32 {
        self.concurrency.max(4) * 2
    }
}

/// Initialises the harness and runs `bench` on a multi-threaded runtime.
pub fn run<F: Future>(bench: F) -> F::Output {
    ficus_testkit::init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench)
}

/// A server config on `database_url` with `store` and static `flags`, no NATS.
pub fn config(
    database_url: String,
    store: StoreChoice,
    flags: Flags,
    max_connections: u32,
) -> ServeConfig {
    ServeConfig {
        store,
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url,
        database_max_connections: max_connections,
        jwt_secret: JWT_SECRET.to_vec(),
        encryption_key: EncryptionKey::random(),
        previous_keys: vec![],
        nats_url: None,
        events_retention: std::time::Duration::from_secs(3600),
        cache: None,
        flags: FlagSource::Static(flags),
        limits: Limits::default(),
    }
}

/// An in-process chat-service on a loopback port, with `concurrency` users sharing [`ROOMS`]
/// rooms.
pub struct Server {
    pub client: ChatClient,
    pub users: Vec<UserId>,
    pub rooms: Vec<RoomId>,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), serve::ServeError>>,
}

impl Server {
    pub async fn start(config: ServeConfig, users: u32) -> Self {
        let server = serve::bind(config).await.expect("chat-service starts");
        let base_url = format!("http://{}", server.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let client = ChatClient::new(&base_url, JWT_SECRET);
        let users: Vec<UserId> = (1..=users.max(1) as i32).map(UserId).collect();
        let mut rooms = Vec::new();
        for i in 0..ROOMS {
            rooms.push(
                client
                    .create_room(users[0], &format!("bench {i}"), "group", &users)
                    .await
                    .expect("room"),
            );
        }
        Server {
            client,
            users,
            rooms,
            stop,
            serving,
        }
    }

    /// Worker `i` sends messages as user `i` to room `i mod ROOMS` for the load's duration,
    /// waiting `think` after each.
    pub async fn send_messages(&self, load: Load, think: Duration) -> RunReport {
        let content = "x".repeat(CONTENT_BYTES);
        let shared = Arc::new((self.client.clone(), self.users.clone(), self.rooms.clone()));
        drive(
            load.concurrency,
            load.duration,
            None,
            think,
            move |worker| {
                let shared = shared.clone();
                let content = content.clone();
                async move {
                    let (client, users, rooms) = &*shared;
                    let room = rooms[worker as usize % rooms.len()];
                    let user = users[worker as usize % users.len()];
                    vec![
                        timed("SendMessage", client.send_message(user, room, &content))
                            .await
                            .0,
                    ]
                }
            },
        )
        .await
    }

    /// Stops gracefully (in-flight requests finish).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
    }
}

/// `machine: N CPUs`, for the settings block of a report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("machine: {cpus} CPUs")
}

/// Rows in `room_message` of the database at `url` (0 if it cannot be read).
pub async fn stored_messages(url: &str) -> i64 {
    let Ok(pool) = sqlx::postgres::PgPool::connect(url).await else {
        return 0;
    };
    sqlx::query_scalar::<_, i64>("select count(*) from room_message")
        .fetch_one(&pool)
        .await
        .unwrap_or(0)
}

/// Messages in the CQL store of `config` once it holds `target` or has stopped growing for a
/// second (async copies may still be landing), counted over `messages_by_room`.
pub async fn cql_messages_settled(config: &CqlConfig, target: i64) -> i64 {
    let Ok(store) = CqlStore::connect(config).await else {
        return 0;
    };
    let query = format!("SELECT count(*) FROM {}.messages_by_room", config.keyspace);
    let count = || async {
        store
            .session()
            .query_unpaged(query.as_str(), ())
            .await
            .ok()
            .and_then(|r| r.into_rows_result().ok())
            .and_then(|r| r.single_row::<(i64,)>().ok())
            .map_or(0, |(n,)| n)
    };
    let mut seen = count().await;
    let mut last_growth = std::time::Instant::now();
    while seen < target && last_growth.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count().await;
        if now > seen {
            last_growth = std::time::Instant::now();
        }
        seen = now;
    }
    seen
}
