//! `chat-service`: `serve` (the API), `migrate-schema` (apply the PostgreSQL migrations),
//! `backfill` (copy legacy PostgreSQL into the CQL store; `migrate` is kept as an alias),
//! `validate` and `status` (compare the stores), `rollback` (copy the new store's writes of a
//! time window back into legacy), `outbox` (the router's dead letters), `loadtest` (the load
//! client) and `token` (a test token, for local use).
//!
//! Over 600 lines: the command line of every subcommand and the code that runs it, one `match`
//! arm each.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chat_service::auth::Authenticator;
use chat_service::backfill::{self, BackfillConfig, BackfillInputs, Shard};
use chat_service::config::{
    BatchMetricsArgs, CqlArgs, MigrationStoreArgs, ServeArgs, previous_keys,
};
use chat_service::crypto::{ContentCipher, EncryptionKey};
use chat_service::ids::UserId;
use chat_service::loadtest::{self, DEFAULT_THRESHOLDS, LoadConfig, Ramp, Threshold};
use chat_service::metrics::Metrics;
use chat_service::metrics_endpoint::MetricsEndpoint;
use chat_service::reencrypt;
use chat_service::rollback;
use chat_service::serve;
use chat_service::store::outbox::{Outbox, Redrive};
use chat_service::store::postgres::PgStore;
use chat_service::store::scylla::CqlStore;
use chat_service::validate::{self, ValidateConfig};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "chat-service",
    version,
    about = "Chat rooms, messages and event streams (Connect-style JSON API)"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "CHAT_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API. Secrets come from the environment: CHAT_JWT_SECRET (HS256 secret) and
    /// CHAT_ENCRYPTION_KEY (base64 of 32 bytes: `openssl rand -base64 32`).
    Serve(ServeArgs),
    /// Apply the PostgreSQL schema migrations and exit (`serve` applies them too).
    MigrateSchema {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Backfill legacy PostgreSQL (rooms, members, messages) into the CQL store: key ranges,
    /// parallel workers, resumable checkpoints (table backfill_checkpoint), writes stamped just
    /// before --dual-write-started-at so live dual-written rows are never overwritten.
    #[command(visible_alias = "migrate")]
    Backfill {
        #[command(flatten)]
        stores: MigrationStoreArgs,
        /// When the dual write started (RFC 3339); default: FICUS_DUAL_WRITE_STARTED_AT, which
        /// the Ficus operator sets on its Jobs. Required unless --dry-run (exit code 2 without).
        #[arg(long)]
        dual_write_started_at: Option<String>,
        /// The migration the checkpoints belong to, <namespace>/<name>/<attempt>; default:
        /// FICUS_MIGRATION_ID, else the dual-write start (a later migration starts over).
        #[arg(long)]
        migration_id: Option<String>,
        /// Ranges copied concurrently.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Key ranges the room id space is split into (checkpoints belong to this number).
        #[arg(long, default_value_t = 256)]
        ranges: u32,
        /// Only count what would be copied.
        #[arg(long)]
        dry_run: bool,
        /// At most this many messages per second (all workers together).
        #[arg(long)]
        throttle: Option<u32>,
        /// INDEX/COUNT: only the ranges with hash(range) % COUNT == INDEX (default: from
        /// JOB_COMPLETION_INDEX and FICUS_SHARD_COUNT when both are set, else everything).
        #[arg(long)]
        shard: Option<String>,
        /// Stop after taking up this many ranges (a partial run; the next run resumes).
        #[arg(long)]
        max_ranges: Option<usize>,
        #[command(flatten)]
        metrics: BatchMetricsArgs,
    },
    /// Compare the stores: per-room message counts and a sampled row-by-row compare. Prints a
    /// report and the drift (mismatched / compared checks); exits 2 when drift > --max-drift.
    Validate {
        #[command(flatten)]
        stores: MigrationStoreArgs,
        /// Messages per room compared row by row (0: counts only).
        #[arg(long, default_value_t = 20)]
        sample: u32,
        /// Highest drift that passes; 0.0 (the default): any mismatch fails.
        #[arg(long, default_value_t = 0.0)]
        max_drift: f64,
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// INDEX/COUNT: only the rooms of this shard's ranges (as `backfill --shard`, same --ranges).
        #[arg(long)]
        shard: Option<String>,
        #[arg(long, default_value_t = 256)]
        ranges: u32,
        #[command(flatten)]
        metrics: BatchMetricsArgs,
    },
    /// Copy what the new CQL store holds for a time window back into legacy PostgreSQL (rooms,
    /// memberships started or ended in it, messages, their reactions and read markers), for a
    /// rollback from CutOver. Idempotent; resumable (table rollback_checkpoint). Exit codes: 0
    /// copied (or already complete), 1 failed (run again to resume), 2 bad arguments.
    Rollback {
        #[command(flatten)]
        stores: MigrationStoreArgs,
        /// Start of the window (RFC 3339): when the new store started taking writes the legacy
        /// store may lack (the dual write's start is always early enough).
        #[arg(long, env = "FICUS_DUAL_WRITE_STARTED_AT")]
        since: String,
        /// End of the window, exclusive (RFC 3339); default: now.
        #[arg(long)]
        until: Option<String>,
        /// The checkpoint key (default: FICUS_MIGRATION_ID, else the window).
        #[arg(long, env = "FICUS_MIGRATION_ID")]
        checkpoint_key: Option<String>,
        /// Stop after this many rooms (a partial run; the next run resumes).
        #[arg(long)]
        max_rooms: Option<u64>,
    },
    /// The migration router's outbox: dead letters (writes given up) and their redrive.
    Outbox {
        /// The PostgreSQL database whose outbox to use (the legacy store's, or a PostgreSQL new
        /// store's).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
        database_url: Option<String>,
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Room and message counts of both stores, side by side.
    Status {
        #[command(flatten)]
        stores: MigrationStoreArgs,
    },
    /// After a key rotation: seal every stored message content again with the current key
    /// (CHAT_ENCRYPTION_KEY), opening it with the key it names (CHAT_ENCRYPTION_KEYS_PREVIOUS),
    /// in PostgreSQL and, with --cql-contact-points, the CQL store. Idempotent; safe while the
    /// service runs. Exit 0 when nothing stale is left, 2 when some content opened with no key.
    Reencrypt {
        /// The legacy PostgreSQL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The CQL store too (during or after a migration); left out: PostgreSQL only.
        #[command(flatten)]
        cql: CqlArgs,
    },
    /// Run the load test against a running service (CHAT_JWT_SECRET: the service's secret).
    /// Exits 1 if any call failed.
    Loadtest {
        #[arg(long, env = "CHAT_BASE_URL", default_value = "http://127.0.0.1:8080")]
        base_url: String,
        /// Virtual users (all concurrent).
        #[arg(long, default_value_t = 50)]
        users: u32,
        #[arg(long, default_value_t = 10)]
        rooms: u32,
        #[arg(long, default_value_t = 30)]
        duration_secs: u64,
        /// Stop after this many iterations in total.
        #[arg(long)]
        max_iterations: Option<u64>,
        /// Pause of each virtual user between iterations (k6's `sleep(1)` is 1000).
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
        /// First virtual user id (the users are consecutive ids).
        #[arg(long, default_value_t = 1_000_000)]
        first_user_id: i32,
        /// k6's stages instead of --users/--duration-secs: DURATION:TARGET pairs, e.g. the
        /// original test's 2m:10,5m:50,2m:100,5m:100,2m:0 (users ramp linearly from 0).
        #[arg(long)]
        stages: Option<Ramp>,
        /// A pass/fail criterion as k6 writes it, repeatable: http_req_duration:p(95)<500,
        /// message_duration:p(95)<200 (SendMessage), errors:rate<0.1; avg, min, max, med and
        /// p(N) for durations (ms). Without any, the original test's three. A failed threshold
        /// exits with code 99.
        #[arg(long = "threshold")]
        thresholds: Vec<Threshold>,
    },
    /// Print a bearer token for a user, signed with CHAT_JWT_SECRET (local runs and debugging).
    Token {
        #[arg(long)]
        user: i32,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Subcommand, Debug)]
enum OutboxCommand {
    /// List the dead letters, oldest first (id, target, room, operation, attempts, times, last
    /// error).
    DeadLetters {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Move dead letters back into the outbox, due at once (the replayers are notified). Use
    /// after fixing what made them fail.
    Redrive {
        /// One dead letter, by id.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

fn rfc3339(flag: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{flag} {text:?}: {e} (RFC 3339, e.g. 2025-01-31T12:00:00Z)"))
}

fn jwt_secret(purpose: &str) -> Result<Vec<u8>, String> {
    std::env::var("CHAT_JWT_SECRET")
        .map(String::into_bytes)
        .map_err(|_| format!("CHAT_JWT_SECRET is not set: {purpose} with the service's secret"))
}

/// `--shard`, else the Indexed Job's environment, else everything.
fn shard_of(flag: Option<String>) -> Result<Shard, String> {
    match flag {
        Some(s) => Shard::parse(&s),
        None => Ok(Shard::from_env(|k| std::env::var(k).ok())?.unwrap_or_default()),
    }
}

async fn connect_cql(stores: &MigrationStoreArgs) -> Result<CqlStore, String> {
    let config = stores.cql.config().map_err(|e| e.to_string())?;
    CqlStore::connect(&config)
        .await
        .map_err(|e| format!("cannot connect to the CQL store: {e}"))
}

/// Starts `/metrics` for a batch command when `--metrics-addr` asks for it.
async fn serve_metrics(
    args: &BatchMetricsArgs,
    metrics: &Arc<Metrics>,
) -> Result<Option<MetricsEndpoint>, String> {
    let Some(addr) = args.metrics_addr else {
        return Ok(None);
    };
    match MetricsEndpoint::start(addr, metrics.clone()).await {
        Ok(endpoint) => Ok(Some(endpoint)),
        Err(e) => {
            tracing::warn!(error = %e, "going on without /metrics");
            Ok(None)
        }
    }
}

/// The end of a batch command's metrics: the file written, the endpoint kept up for the linger.
async fn finish_metrics(
    args: BatchMetricsArgs,
    metrics: &Metrics,
    endpoint: Option<MetricsEndpoint>,
) -> Result<(), String> {
    if let Some(p) = &args.metrics_file {
        std::fs::write(p, metrics.encode())
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(endpoint) = endpoint {
        endpoint.finish(args.metrics_linger).await;
    }
    Ok(())
}

fn main() -> ExitCode {
    // kube, reqwest and async-nats together enable two rustls back-ends: choose one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,kube=warn"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-service: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("chat-service: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Serve(args) => {
            let config = args
                .into_config(|name| std::env::var(name).ok())
                .map_err(|e| e.to_string())?;
            serve::run(config, serve::shutdown_signal())
                .await
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MigrateSchema { database_url } => {
            let store = PgStore::connect(&database_url, 1)
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            store
                .migrate()
                .await
                .map_err(|e| format!("migration failed: {e}"))?;
            println!("schema up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill {
            stores,
            dual_write_started_at,
            migration_id,
            workers,
            ranges,
            dry_run,
            throttle,
            shard,
            max_ranges,
            metrics: metrics_args,
        } => {
            // Refused before anything connects; exit code 2, like any usage error.
            let inputs =
                match BackfillInputs::resolve(dual_write_started_at, migration_id, dry_run, |k| {
                    std::env::var(k).ok()
                }) {
                    Ok(inputs) => inputs,
                    Err(e) => {
                        eprintln!("chat-service migrate: {e}");
                        return Ok(ExitCode::from(2));
                    }
                };
            let config = BackfillConfig {
                workers,
                ranges,
                shard: shard_of(shard)?,
                dry_run,
                throttle,
                dual_write_started_at: inputs.dual_write_started_at,
                migration_id: inputs.migration_id,
                max_ranges,
                progress_every: Some(Duration::from_secs(5)),
                ..BackfillConfig::default()
            };
            let metrics = Arc::new(Metrics::default());
            let endpoint = serve_metrics(&metrics_args, &metrics).await?;
            let pg = PgStore::connect(&stores.database_url, (workers as u32 + 2).max(4))
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            let report = if dry_run {
                backfill::run(&pg, None, &config, &metrics).await
            } else {
                let cql = connect_cql(&stores).await?;
                let backfill = cql
                    .backfill(&stores.cql.keyspace)
                    .await
                    .map_err(|e| e.to_string())?;
                backfill::run(&pg, Some(&backfill), &config, &metrics).await
            }
            .map_err(|e| e.to_string())?;
            print!("{report}");
            finish_metrics(metrics_args, &metrics, endpoint).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            stores,
            sample,
            max_drift,
            workers,
            shard,
            ranges,
            metrics: metrics_args,
        } => {
            if !(0.0..=1.0).contains(&max_drift) {
                return Err(format!("--max-drift must be within 0..=1, got {max_drift}"));
            }
            let config = ValidateConfig {
                sample,
                max_drift,
                workers,
                shard: shard_of(shard)?,
                ranges,
                ..ValidateConfig::default()
            };
            let metrics = Arc::new(Metrics::default());
            let endpoint = serve_metrics(&metrics_args, &metrics).await?;
            let pg = PgStore::connect(&stores.database_url, (workers as u32 + 2).max(4))
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            let cql = connect_cql(&stores).await?;
            let backfill = cql
                .backfill(&stores.cql.keyspace)
                .await
                .map_err(|e| e.to_string())?;
            let report = validate::run(&pg, &backfill, &config, &metrics)
                .await
                .map_err(|e| e.to_string())?;
            print!("{report}");
            finish_metrics(metrics_args, &metrics, endpoint).await?;
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Rollback {
            stores,
            since,
            until,
            checkpoint_key,
            max_rooms,
        } => {
            // Bad arguments exit 2 (as clap's own usage errors): retrying cannot help.
            let window = rfc3339("--since", &since).and_then(|since| {
                let until = until.map(|u| rfc3339("--until", &u)).transpose()?;
                match until {
                    Some(u) if u <= since => {
                        Err(rollback::RollbackError::EmptyWindow { since, until: u }.to_string())
                    }
                    _ => Ok((since, until)),
                }
            });
            let (since, until) = match window {
                Ok(w) => w,
                Err(message) => {
                    eprintln!("chat-service: {message}");
                    return Ok(ExitCode::from(2));
                }
            };
            let config = rollback::RollbackConfig {
                since,
                until,
                checkpoint_key: checkpoint_key
                    .filter(|k| !k.is_empty())
                    .unwrap_or_else(|| rollback::default_checkpoint_key(since, until)),
                max_rooms,
            };
            let pg = PgStore::connect(&stores.database_url, 4)
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            pg.migrate()
                .await
                .map_err(|e| format!("cannot apply the PostgreSQL migrations: {e}"))?;
            let cql = connect_cql(&stores).await?;
            let report = rollback::run(&pg, &cql, &stores.cql.keyspace, &config)
                .await
                .map_err(|e| e.to_string())?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox {
            database_url,
            command,
        } => {
            let url = database_url.ok_or(
                "DATABASE_URL (or --database-url) is not set: the database whose outbox to use",
            )?;
            let pg = PgStore::connect(&url, 2)
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            let outbox = Outbox::new(pg.pool().clone());
            match command {
                OutboxCommand::DeadLetters { limit } => {
                    let letters = outbox
                        .list_dead_letters(limit)
                        .await
                        .map_err(|e| format!("cannot read the dead letters: {e}"))?;
                    println!("id\ttarget\troom\top\tattempts\tcreated_at\tdead_at\tlast_error");
                    for d in &letters {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            d.id,
                            d.target,
                            d.room_id
                                .map(|r| r.to_string())
                                .unwrap_or_else(|| "-".into()),
                            d.op,
                            d.attempts,
                            d.created_at.to_rfc3339(),
                            d.dead_at.to_rfc3339(),
                            d.last_error.as_deref().unwrap_or("").replace('\n', " ")
                        );
                    }
                    eprintln!("{} dead letters", letters.len());
                }
                OutboxCommand::Redrive { id, all } => {
                    let which = match (id, all) {
                        (_, true) => Redrive::All,
                        (Some(id), false) => Redrive::One(id),
                        (None, false) => return Err("give --id N or --all".into()),
                    };
                    let moved = outbox
                        .redrive(which)
                        .await
                        .map_err(|e| format!("cannot redrive: {e}"))?;
                    println!("{moved} dead letters moved back to the outbox");
                    if moved == 0 && matches!(which, Redrive::One(_)) {
                        return Err(format!("no dead letter {which:?}"));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reencrypt { database_url, cql } => {
            let current =
                EncryptionKey::from_base64(std::env::var("CHAT_ENCRYPTION_KEY").ok().as_deref())
                    .map_err(|e| e.to_string())?;
            let previous = previous_keys(
                std::env::var("CHAT_ENCRYPTION_KEYS_PREVIOUS")
                    .ok()
                    .as_deref(),
            )
            .map_err(|e| e.to_string())?;
            let cipher = ContentCipher::with_previous(&current, &previous);
            let pg = PgStore::connect(&database_url, 4)
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            let store = if cql.contact_points.is_empty() {
                None
            } else {
                let config = cql.config().map_err(|e| e.to_string())?;
                Some(
                    CqlStore::connect(&config)
                        .await
                        .map_err(|e| format!("cannot connect to the CQL store: {e}"))?,
                )
            };
            let backfill = match &store {
                Some(store) => Some(
                    store
                        .backfill(&cql.keyspace)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let report = reencrypt::run(&pg, backfill.as_ref(), &cipher)
                .await
                .map_err(|e| e.to_string())?;
            print!("{report}");
            Ok(if report.unreadable() == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "chat-service reencrypt: {} stored contents open with no configured key; keep the previous keys until they are found (see the log)",
                    report.unreadable()
                );
                ExitCode::from(2)
            })
        }
        Command::Status { stores } => {
            let pg = PgStore::connect(&stores.database_url, 2)
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            let cql = connect_cql(&stores).await?;
            let backfill = cql
                .backfill(&stores.cql.keyspace)
                .await
                .map_err(|e| e.to_string())?;
            print!(
                "{}",
                validate::status(&pg, &backfill)
                    .await
                    .map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadtest {
            base_url,
            users,
            rooms,
            duration_secs,
            max_iterations,
            think_ms,
            first_user_id,
            stages,
            thresholds,
        } => {
            let thresholds = if thresholds.is_empty() {
                DEFAULT_THRESHOLDS
                    .iter()
                    .map(|t| t.parse())
                    .collect::<Result<Vec<Threshold>, _>>()
                    .map_err(|e| e.to_string())?
            } else {
                thresholds
            };
            let config = LoadConfig {
                base_url,
                jwt_secret: jwt_secret("the load client signs its tokens")?,
                users,
                rooms,
                duration: Duration::from_secs(duration_secs),
                max_iterations,
                first_user_id,
                think_time: Duration::from_millis(think_ms),
                stages,
            };
            println!(
                "loadtest: virtual users {}, {rooms} rooms, max iterations {max_iterations:?}, think {think_ms} ms, against {}",
                config.ramp(),
                config.base_url
            );
            let report = loadtest::run(&config).await.map_err(|e| e.to_string())?;
            print!("{report}");
            println!("peak virtual users: {}", report.peak_users);
            let verdicts = report.check(&thresholds);
            for verdict in &verdicts {
                println!("threshold {verdict}");
            }
            Ok(if verdicts.iter().all(|v| v.passed) {
                ExitCode::SUCCESS
            } else {
                // k6's exit code for failed thresholds.
                ExitCode::from(99)
            })
        }
        Command::Token { user, ttl_secs } => {
            if user <= 0 {
                return Err("--user must be a positive user id".into());
            }
            let auth = Authenticator::new(&jwt_secret("tokens are signed")?);
            println!(
                "{}",
                auth.issue(UserId(user), Duration::from_secs(ttl_secs))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
