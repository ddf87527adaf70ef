//! Dual-write latency, PostgreSQL (legacy) → the CQL store (new): SendMessage through the HTTP
//! API of an in-process chat-service on each store alone and through the router with
//! `dual_write = sync` and `async` (legacy primary), under two loads in the same run:
//!
//! - **light**: `BENCH_LIGHT_USERS` (4) users, each waiting `BENCH_THINK_MS` (100) between
//!   sends, so the machine is not saturated (the CPU busy share of each phase is printed, and the
//!   Cassandra node's share of it: a CQL send costs the node far more than a PostgreSQL one);
//! - **saturation**: `BENCH_CONCURRENCY` (16) users with no think time.
//!
//! Then the ratios the router is held to: sync p99 against the slower store alone, async p99
//! against the primary alone. Prints; asserts nothing about time.
//!
//! ```sh
//! cargo bench -p chat-service --bench dual_write
//! BENCH_SECONDS=20 cargo bench -p chat-service --bench dual_write
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a one-second smoke pass.

mod support;

use std::time::Duration;

use chat_service::config::{NewStoreChoice, StoreChoice};
use chat_service::flags::{DualWrite, FlagValues, Flags, Side};
use chat_service::loadtest::{LatencySummary, RunReport};
use chat_service::store::scylla::CqlConfig;
use ficus_testkit::{Cassandra, Postgres};

use support::{CONTENT_BYTES, Load, ROOMS, Server};

fn main() {
    support::run(bench(Load::from_env()));
}

#[derive(Clone, Copy, PartialEq)]
enum Setting {
    Postgres,
    Cql,
    Router(DualWrite),
}

impl Setting {
    const ALL: [Setting; 4] = [
        Setting::Postgres,
        Setting::Cql,
        Setting::Router(DualWrite::Sync),
        Setting::Router(DualWrite::Async),
    ];

    fn label(self) -> &'static str {
        match self {
            Setting::Postgres => "PostgreSQL alone",
            Setting::Cql => "CQL store alone",
            Setting::Router(DualWrite::Sync) => "router, dual_write=sync",
            Setting::Router(DualWrite::Async) => "router, dual_write=async",
            Setting::Router(DualWrite::Off) => "router, dual_write=off",
        }
    }
}

/// One load shape: closed loops of `users`, each waiting `think` after every call.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    users: u32,
    think: Duration,
}

/// One measured phase.
struct Row {
    shape: &'static str,
    setting: Setting,
    report: RunReport,
    cpu_busy: f64,
    /// The Cassandra node's share of the machine's CPU time in the phase.
    cpu_cql: f64,
    in_legacy: i64,
    in_new: Option<i64>,
}

impl Row {
    fn latency(&self) -> Option<LatencySummary> {
        self.report.ops.get("SendMessage").map(|s| s.latency)
    }
}

/// CPU time (user + system) of process `pid` so far, in clock ticks, from `/proc/<pid>/stat`.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')';
    // utime and stime are the 12th and 13th of those.
    stat.rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// The machine's CPU time so far, (busy, total) in clock ticks, from `/proc/stat`.
fn cpu_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

async fn bench(load: Load) {
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        // Prints SKIP for a missing PostgreSQL (fails on CI), panics on other errors.
        Err(e) => return ficus_testkit::skip_or_panic(&e),
    };
    let cassandra = match Cassandra::shared() {
        Ok(c) => c,
        Err(e) => return ficus_testkit::skip_or_panic(&e),
    };
    let full = support::full_run();
    let shapes = [
        Shape {
            name: "light",
            users: support::env_or("BENCH_LIGHT_USERS", 4) as u32,
            think: Duration::from_millis(support::env_or("BENCH_THINK_MS", 100)),
        },
        Shape {
            name: "saturation",
            users: load.concurrency,
            think: Duration::ZERO,
        },
    ];
    let max_connections = load.max_connections();
    let mut rows: Vec<Row> = Vec::new();
    let mut n = 0;
    for shape in shapes {
        for setting in Setting::ALL {
            n += 1;
            let legacy_url = pg
                .create_database(&format!("dual_bench_{n}"))
                .await
                .expect("database");
            let keyspace = cassandra
                .create_keyspace(&format!("dual_bench_{n}"))
                .await
                .expect("keyspace");
            let cql = CqlConfig {
                contact_points: vec![cassandra.contact_point()],
                keyspace: keyspace.clone(),
                consistency: scylla::statement::Consistency::One,
                address_map: Default::default(),
            };
            let (store, flags) = match setting {
                Setting::Postgres => (StoreChoice::Postgres, Flags::default()),
                Setting::Cql => (StoreChoice::Scylla(cql.clone()), Flags::default()),
                Setting::Router(mode) => (
                    StoreChoice::Router {
                        new: NewStoreChoice::Scylla(cql.clone()),
                        outbox_max_attempts: 10,
                        outbox_inline_grace: Duration::from_secs(30),
                        // Steady state: long after the last change of primary, so a write does
                        // not look for writes queued in the other outbox.
                        switch_settle: Duration::ZERO,
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
            let server = Server::start(config, shape.users).await;
            // A short warm-up: prepared statements, pools, the CQL driver's first requests.
            if full {
                let warm = Load {
                    concurrency: shape.users,
                    duration: Duration::from_secs(2),
                };
                server.send_messages(warm, shape.think).await;
            }
            let cql_pid = cassandra.server().pid();
            // The shape's users, not the saturation concurrency: the light load is its users.
            let phase = Load {
                concurrency: shape.users,
                duration: load.duration,
            };
            let (before, cql_before) = (cpu_ticks(), process_ticks(cql_pid));
            let report = server.send_messages(phase, shape.think).await;
            let (after, cql_after) = (cpu_ticks(), process_ticks(cql_pid));
            let total = (after.1.saturating_sub(before.1)).max(1) as f64;
            let cpu_busy = (after.0.saturating_sub(before.0)) as f64 / total;
            // /proc/stat counts every CPU's ticks; a process's ticks are per CPU too.
            let cpu_cql = cql_after.saturating_sub(cql_before) as f64 / total;
            // Async copies may still be running: count once the new store has caught up or
            // stopped growing for a second.
            let in_legacy = if setting == Setting::Cql {
                0
            } else {
                support::stored_messages(&legacy_url).await
            };
            let in_new = match setting {
                Setting::Postgres => None,
                Setting::Cql | Setting::Router(_) => {
                    let target = if setting == Setting::Cql {
                        i64::MAX
                    } else {
                        in_legacy
                    };
                    Some(support::cql_messages_settled(&cql, target).await)
                }
            };
            server.stop().await;
            rows.push(Row {
                shape: shape.name,
                setting,
                report,
                cpu_busy,
                cpu_cql,
                in_legacy,
                in_new,
            });
        }
    }

    println!("chat-service dual-write latency benchmark (SendMessage), PostgreSQL -> CQL store");
    println!(
        "  PostgreSQL: private server (fsync=off); CQL store: one Cassandra node (RF 1, consistency ONE); both on this host"
    );
    println!(
        "  through HTTP on loopback, in-process server, pool of {max_connections} connections per store, {ROOMS} rooms, {CONTENT_BYTES} byte messages, {}s per phase after a 2 s warm-up",
        load.duration.as_secs()
    );
    for s in shapes {
        println!(
            "  load {}: {} users, think {} ms",
            s.name,
            s.users,
            s.think.as_millis()
        );
    }
    println!("  {}", support::machine());
    println!();
    println!(
        "{:<11} {:<26} {:>7} {:>6} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "load",
        "setting",
        "ok",
        "errors",
        "per s",
        "cpu",
        "cql cpu",
        "p50 ms",
        "p99 ms",
        "max ms",
        "legacy",
        "new"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for row in &rows {
        let Some(s) = row.report.ops.get("SendMessage") else {
            continue;
        };
        let secs = row.report.elapsed.as_secs_f64().max(f64::EPSILON);
        println!(
            "{:<11} {:<26} {:>7} {:>6} {:>7.0} {:>5.0}% {:>7.0}% {:>8.2} {:>8.2} {:>8.2} {:>8} {:>8}",
            row.shape,
            row.setting.label(),
            s.ok,
            s.errors,
            (s.ok + s.errors) as f64 / secs,
            row.cpu_busy * 100.0,
            row.cpu_cql * 100.0,
            ms(s.latency.p50),
            ms(s.latency.p99),
            ms(s.latency.max),
            if row.setting == Setting::Cql {
                "-".to_owned()
            } else {
                row.in_legacy.to_string()
            },
            row.in_new.map_or("-".to_owned(), |n| n.to_string())
        );
        for e in &row.report.error_samples {
            println!("  error: {e}");
        }
    }
    println!();
    for s in shapes {
        let p99 = |setting: Setting| {
            rows.iter()
                .find(|r| r.shape == s.name && r.setting == setting)
                .and_then(Row::latency)
                .map(|l| l.p99.as_secs_f64())
        };
        let (Some(pg), Some(cql), Some(sync), Some(asy)) = (
            p99(Setting::Postgres),
            p99(Setting::Cql),
            p99(Setting::Router(DualWrite::Sync)),
            p99(Setting::Router(DualWrite::Async)),
        ) else {
            continue;
        };
        let slower = pg.max(cql);
        println!(
            "{:<11} sync p99 = {:.2}x max(p99 PostgreSQL, p99 CQL) (goal <= 1.10); async p99 = {:.2}x p99 PostgreSQL alone (goal <= 1.05)",
            s.name,
            sync / slower.max(f64::EPSILON),
            asy / pg.max(f64::EPSILON)
        );
    }
}
