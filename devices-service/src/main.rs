//! `devices-service`: `serve` (the API, the shadow copy, the hourly comparison), `validate`
//! (compare the stores once; exit 2 above the drift threshold), `outbox` (dead letters) and
//! `loadgen` (the plan's load generator).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use devices_service::compare::{self, CompareConfig};
use devices_service::duration;
use devices_service::flags::FlagSource;
use devices_service::loadgen::{self, LoadConfig};
use devices_service::outbox::{self, ReplayConfig};
use devices_service::serve::{self, ServeConfig};
use devices_service::store::Stores;
use devices_service::writer::WriteConfig;
use ficus_flags::Flags;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "devices-service",
    version,
    about = "Device events on the legacy and the new store, migrated by Ficus"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "DEVICES_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct StoreArgs {
    /// The legacy PostgreSQL database (table device_events).
    #[arg(long, env = "LEGACY_DATABASE_URL", hide_env_values = true)]
    legacy_database_url: String,
    /// The new store's database (device_readings, partitioned by day or a hypertable).
    #[arg(long, env = "NEW_DATABASE_URL", hide_env_values = true)]
    new_database_url: String,
    /// Connections per database.
    #[arg(long, env = "DEVICES_MAX_CONNECTIONS", default_value_t = 16)]
    max_connections: u32,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API; follow the flags; copy, replay and compare.
    Serve {
        #[command(flatten)]
        stores: StoreArgs,
        #[arg(long, env = "DEVICES_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// SSM parameter prefix of the flag document (the plan's: /hse/). Without it the
        /// service runs on the pre-migration defaults: legacy only.
        #[arg(long, env = "DEVICES_FLAGS_SSM_PREFIX")]
        flags_ssm_prefix: Option<String>,
        #[arg(long, env = "DEVICES_FLAGS_SSM_POLL_INTERVAL", default_value = "5s", value_parser = duration::parse)]
        flags_ssm_poll_interval: Duration,
        /// Longest an inline shadow copy may take before the outbox takes it over.
        #[arg(long, env = "DEVICES_COPY_TIMEOUT", default_value = "500ms", value_parser = duration::parse)]
        copy_timeout: Duration,
        /// Time between comparisons of the stores (the plan: hourly).
        #[arg(long, env = "DEVICES_COMPARE_INTERVAL", default_value = "1h", value_parser = duration::parse)]
        compare_interval: Duration,
        #[command(flatten)]
        compare: CompareArgs,
        /// Attempts of a queued copy before it becomes a dead letter.
        #[arg(long, env = "DEVICES_OUTBOX_MAX_ATTEMPTS", default_value_t = 10)]
        outbox_max_attempts: i32,
    },
    /// Compare the stores once: per-bucket counts and value sums; exit 2 above --max-drift.
    Validate {
        #[command(flatten)]
        stores: StoreArgs,
        #[command(flatten)]
        compare: CompareArgs,
        /// Start of the received-time window (RFC 3339); default: the shadow epoch recorded by
        /// the service, else --lookback ago.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        #[arg(long, default_value_t = 0.01)]
        max_drift: f64,
    },
    /// The outboxes' dead letters.
    Outbox {
        #[command(flatten)]
        stores: StoreArgs,
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Send device events at a steady rate (the plan: 200/s) and read devices back.
    Loadgen {
        /// Instance base URLs, used in turn.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        batch: usize,
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value = "60s", value_parser = duration::parse)]
        duration: Duration,
    },
}

#[derive(Args, Debug, Clone)]
struct CompareArgs {
    /// Bucket width of the comparison.
    #[arg(long, env = "DEVICES_COMPARE_BUCKET", default_value = "1h", value_parser = duration::parse)]
    compare_bucket: Duration,
    /// How far back a comparison looks.
    #[arg(long, env = "DEVICES_COMPARE_LOOKBACK", default_value = "24h", value_parser = duration::parse)]
    lookback: Duration,
    /// Events received more recently are left out (copies still on their way).
    #[arg(long, env = "DEVICES_COMPARE_SETTLE", default_value = "30s", value_parser = duration::parse)]
    settle: Duration,
}

impl CompareArgs {
    fn config(&self) -> CompareConfig {
        CompareConfig {
            bucket: self.compare_bucket,
            lookback: self.lookback,
            settle: self.settle,
            ..CompareConfig::default()
        }
    }
}

#[derive(Subcommand, Debug)]
enum OutboxAction {
    /// Print the number of dead letters and waiting copies.
    DeadLetters,
    /// Move every dead letter back to the outbox, due now.
    Redrive,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            stores,
            listen,
            flags_ssm_prefix,
            flags_ssm_poll_interval,
            copy_timeout,
            compare_interval,
            compare,
            outbox_max_attempts,
        } => {
            let flags = match flags_ssm_prefix {
                Some(prefix) => FlagSource::Ssm {
                    prefix,
                    poll_interval: flags_ssm_poll_interval,
                },
                None => FlagSource::Static(Flags::default()),
            };
            let config = ServeConfig {
                listen,
                legacy_database_url: stores.legacy_database_url,
                new_database_url: stores.new_database_url,
                max_connections: stores.max_connections,
                flags,
                write: WriteConfig {
                    copy_timeout,
                    ..WriteConfig::default()
                },
                replay: ReplayConfig {
                    max_attempts: outbox_max_attempts,
                    ..ReplayConfig::default()
                },
                compare: compare.config(),
                compare_interval,
            };
            let server = serve::bind(config).await?;
            // Tests and scripts read the bound address from this line.
            println!("listening on {}", server.local_addr());
            server.run(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            stores,
            compare,
            since,
            max_drift,
        } => {
            let s =
                Stores::connect(&stores.legacy_database_url, &stores.new_database_url, 2).await?;
            let config = CompareConfig {
                max_drift,
                ..compare.config()
            };
            let since = match since {
                Some(t) => Some(t),
                None => devices_service::store::shadow_epoch(&s.legacy).await?,
            };
            let Some((from, to)) =
                compare::window(Utc::now(), since, config.lookback, config.settle)
            else {
                println!(
                    "nothing to compare yet: the window ends {:?} ago and starts at {since:?}",
                    config.settle
                );
                return Ok(ExitCode::SUCCESS);
            };
            let c = compare::run(&s, config.bucket, from, to).await?;
            println!("received {from} .. {to}, buckets of {:?}", config.bucket);
            println!(
                "{:<26} {:>10} {:>10} {:>14} {:>14}  ok",
                "bucket", "legacy", "new", "legacy sum", "new sum"
            );
            for b in &c.buckets {
                println!(
                    "{:<26} {:>10} {:>10} {:>14.2} {:>14.2}  {}",
                    b.start.to_rfc3339(),
                    b.legacy_count,
                    b.new_count,
                    b.legacy_sum,
                    b.new_sum,
                    if b.matches() { "yes" } else { "NO" }
                );
            }
            println!(
                "count drift {:.4} %, value drift {:.4} %, max {:.4} %",
                c.count_drift * 100.0,
                c.value_drift * 100.0,
                max_drift * 100.0
            );
            if c.drift() > max_drift {
                println!("FAIL: drift above the threshold");
                Ok(ExitCode::from(2))
            } else {
                println!("PASS");
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Outbox { stores, action } => {
            let s =
                Stores::connect(&stores.legacy_database_url, &stores.new_database_url, 2).await?;
            match action {
                OutboxAction::DeadLetters => {
                    let d = outbox::depth(&s).await?;
                    println!(
                        "dead letters: {}, waiting: {}, oldest waiting since: {:?}",
                        d.dead_letters, d.pending, d.oldest
                    );
                }
                OutboxAction::Redrive => println!(
                    "moved {} dead letters back to the outbox",
                    outbox::redrive(&s).await?
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadgen {
            targets,
            rate,
            batch,
            users,
            duration,
        } => {
            let (stop, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                tokio::time::sleep(duration).await;
                stop.send_replace(true);
            });
            let config = LoadConfig {
                targets,
                rate,
                batch,
                users,
                ..LoadConfig::default()
            };
            let r = loadgen::run(config, rx).await;
            println!(
                "{} events acknowledged in {:.1?} ({:.1} events/s), {} failed; write p50 {:?} p99 {:?}; {} reads, {} failed",
                r.acked.len(),
                r.elapsed,
                r.events_per_second(),
                r.failed_events,
                r.write_quantile(0.5),
                r.write_quantile(0.99),
                r.reads,
                r.failed_reads
            );
            Ok(if r.failed_events > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
