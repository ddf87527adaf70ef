//! `chat-service`: `serve` (the API), `migrate-schema` (apply the PostgreSQL migrations),
//! `loadtest` (the load client) and `token` (a test token, for local use).

use std::process::ExitCode;
use std::time::Duration;

use chat_service::auth::Authenticator;
use chat_service::config::ServeArgs;
use chat_service::ids::UserId;
use chat_service::loadtest::{self, LoadConfig};
use chat_service::serve;
use chat_service::store::postgres::PgStore;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "chat-service", version, about = "Chat rooms, messages and event streams (Connect-style JSON API)")]
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
    },
    /// Print a bearer token for a user, signed with CHAT_JWT_SECRET (local runs and debugging).
    Token {
        #[arg(long)]
        user: i32,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

fn jwt_secret(purpose: &str) -> Result<Vec<u8>, String> {
    std::env::var("CHAT_JWT_SECRET").map(String::into_bytes).map_err(|_| format!("CHAT_JWT_SECRET is not set: {purpose} with the service's secret"))
}

fn main() -> ExitCode {
    // kube, reqwest and async-nats together enable two rustls back-ends: choose one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,kube=warn"));
    if cli.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
            let config = args.into_config(|name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
            serve::run(config, serve::shutdown_signal()).await.map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MigrateSchema { database_url } => {
            let store = PgStore::connect(&database_url, 1).await.map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            store.migrate().await.map_err(|e| format!("migration failed: {e}"))?;
            println!("schema up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadtest { base_url, users, rooms, duration_secs, max_iterations, think_ms, first_user_id } => {
            let config = LoadConfig {
                base_url,
                jwt_secret: jwt_secret("the load client signs its tokens")?,
                users,
                rooms,
                duration: Duration::from_secs(duration_secs),
                max_iterations,
                first_user_id,
                think_time: Duration::from_millis(think_ms),
            };
            println!("loadtest: {users} virtual users, {rooms} rooms, {duration_secs}s, max iterations {max_iterations:?}, think {think_ms} ms, against {}", config.base_url);
            let report = loadtest::run(&config).await.map_err(|e| e.to_string())?;
            print!("{report}");
            Ok(if report.errors() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Token { user, ttl_secs } => {
            if user <= 0 {
                return Err("--user must be a positive user id".into());
            }
            let auth = Authenticator::new(&jwt_secret("tokens are signed")?);
            println!("{}", auth.issue(UserId(user), Duration::from_secs(ttl_secs)));
            Ok(ExitCode::SUCCESS)
        }
    }
}
