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

mod support;

use std::time::Duration;

use chat_service::config::{NewStoreChoice, StoreChoice};
use chat_service::flags::{DualWrite, FlagValues, Flags, Side};
use chat_service::loadtest::RunReport;
use ficus_testkit::Postgres;

use support::{CONTENT_BYTES, Load, ROOMS, Server};

fn main() {
    support::run(bench(Load::from_env()));
}

#[derive(Clone, Copy, PartialEq)]
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

async fn bench(load: Load) {
    let pg = match Postgres::start() {
        Ok(pg) => pg,
        // Prints SKIP for a missing PostgreSQL (fails on CI), panics on other errors.
        Err(e) => return ficus_testkit::skip_or_panic(&e),
    };
    let max_connections = load.max_connections();
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
                    outbox_inline_grace: std::time::Duration::from_secs(30),
                    // Steady state: long after the last change of primary, so a write does not look
                    // for writes queued in the other outbox (empty here) once it was counted.
                    switch_settle: std::time::Duration::ZERO,
                },
                Flags {
                    generation: 1,
                    values: FlagValues {
                        write_primary: Side::Legacy,
                        dual_write: mode,
                        ..FlagValues::default()
                    },
                },
            ),
        };
        let config = support::config(legacy_url.clone(), store, flags, max_connections);
        let server = Server::start(config, load.concurrency).await;
        let report = server.send_messages(load).await;
        // Async secondary writes may still be running: count once the new store has caught up
        // with legacy, or has stopped growing for a second (a write lost or refused), whichever
        // comes first. The table reports what is there.
        let in_legacy = support::stored_messages(&legacy_url).await;
        let mut in_new = support::stored_messages(&new_url).await;
        if setting != Setting::PrimaryOnly {
            let mut last_growth = std::time::Instant::now();
            while in_new < in_legacy && last_growth.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = support::stored_messages(&new_url).await;
                if now > in_new {
                    last_growth = std::time::Instant::now();
                }
                in_new = now;
            }
        }
        server.stop().await;
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
        "  concurrency {} (closed loop, no think time), {}s per setting, {ROOMS} rooms, {CONTENT_BYTES} byte messages",
        load.concurrency,
        load.duration.as_secs(),
    );
    println!("  {}", support::machine());
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
