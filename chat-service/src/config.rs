//! `serve` configuration: flags (clap) plus secrets from the environment, checked before
//! anything connects, so a bad setting fails start-up with a message that says what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::crypto::{EncryptionKey, KeyError};
use crate::flags::{FlagSource, Flags};
use crate::store::scylla::{CqlConfig, parse_consistency};

/// Which database `serve` stores chats in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// PostgreSQL (`--database-url`).
    #[default]
    Postgres,
    /// ScyllaDB, or any CQL database (`--cql-contact-points`, `--cql-keyspace`).
    Scylla,
    /// The migration router: legacy PostgreSQL (`--database-url`) and the store of
    /// `--new-store`, routed by the migration flags.
    Router,
}

/// The store `serve` runs on, with what it needs to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// PostgreSQL at [`ServeConfig::database_url`].
    Postgres,
    Scylla(CqlConfig),
    /// The migration router over legacy PostgreSQL ([`ServeConfig::database_url`]) and `new`.
    Router {
        new: NewStoreChoice,
        outbox_max_attempts: u32,
        /// How long a write's outbox record waits for the inline secondary write before a
        /// replayer may make it (after a crash, the delay until the write is repaired).
        outbox_inline_grace: Duration,
        /// How long after a change of write primary every write looks for its room's writes
        /// still queued in the other store's outbox (`RouterOptions::switch_settle`).
        switch_settle: Duration,
    },
}

/// The router's new store. Until the CQL store is in use, a second PostgreSQL works too (tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewStoreChoice {
    Postgres { database_url: String },
    Scylla(CqlConfig),
}

/// Request limits; every breach is a 4xx (or 504 for the timeout) with a Connect error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request body size; larger is `invalid_argument` (400).
    pub max_body_bytes: usize,
    /// Unary request deadline; later is `deadline_exceeded` (504). Not applied to streams.
    pub request_timeout: Duration,
    /// Event streams one user may hold open on one instance; more is `resource_exhausted` (429).
    pub max_streams_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            max_streams_per_user: 5,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub store: StoreChoice,
    /// PostgreSQL URL; empty when the store is ScyllaDB.
    pub database_url: String,
    pub database_max_connections: u32,
    pub jwt_secret: Vec<u8>,
    pub encryption_key: EncryptionKey,
    /// Retired keys (`CHAT_ENCRYPTION_KEYS_PREVIOUS`): content sealed with them is still read
    /// until `chat-service reencrypt` has moved it to `encryption_key`.
    pub previous_keys: Vec<EncryptionKey>,
    pub nats_url: Option<String>,
    /// How long NATS JetStream keeps room events for streams that reconnect.
    pub events_retention: Duration,
    /// The room cache ([`crate::store::room_cache`]); None: every read goes to the store.
    pub cache: Option<CacheConfig>,
    pub flags: FlagSource,
    pub limits: Limits,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub redis_url: String,
    /// The longest a cached view lives (an out-of-date one is never served before it, unless
    /// Redis refused the write's stamps).
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    EncryptionKey(#[from] KeyError),
    #[error(
        "CHAT_ENCRYPTION_KEYS_PREVIOUS: key {position} (of the comma-separated list) is not 32 bytes of base64: {reason}"
    )]
    PreviousKey { position: usize, reason: String },
    #[error("CHAT_JWT_SECRET is not set: set it to the HS256 secret the token issuer signs with")]
    MissingJwtSecret,
    #[error(
        "DATABASE_URL is not set (or --database-url): e.g. postgres://chat:secret@localhost:5432/chat"
    )]
    MissingDatabaseUrl,
    #[error(
        "--store scylla needs --cql-contact-points (CHAT_CQL_CONTACT_POINTS), e.g. scylla-0.scylla:9042"
    )]
    MissingCqlContactPoints,
    #[error(
        "--store router needs --new-database-url (CHAT_NEW_DATABASE_URL) with --new-store postgres"
    )]
    MissingNewDatabaseUrl,
    #[error("--new-store must be postgres or scylla")]
    NewStoreKind,
    #[error("--cql-consistency: {0}")]
    CqlConsistency(String),
    #[error(
        "--cql-address-map entry {0:?} is not broadcast=reachable with two ip:port addresses, e.g. 10.0.0.5:9042=127.0.0.1:19042"
    )]
    CqlAddressMap(String),
    #[error("--flags-configmap must be NAMESPACE/NAME, got {0:?}")]
    FlagsConfigMap(String),
    #[error("give only one of --flags-file, --flags-configmap and --flags-ssm-prefix")]
    TwoFlagSources,
}

/// `serve` flags; secrets (`CHAT_JWT_SECRET`, `CHAT_ENCRYPTION_KEY`) are read from the environment
/// only, so they never show in a process listing.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the API, /metrics, /healthz and /readyz.
    #[arg(long, env = "CHAT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The database: `postgres` (default) or `scylla` (any CQL database).
    #[arg(long, env = "CHAT_STORE", value_enum, default_value_t = StoreKind::Postgres)]
    pub store: StoreKind,
    /// PostgreSQL URL (with `--store postgres`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The CQL store (with `--store scylla`, or `--store router --new-store scylla`).
    #[command(flatten)]
    pub cql: CqlArgs,
    /// With `--store router`: the new store, `scylla` (the `--cql-*` settings) or `postgres`.
    #[arg(long, env = "CHAT_NEW_STORE", value_enum, default_value_t = StoreKind::Scylla)]
    pub new_store: StoreKind,
    /// With `--store router --new-store postgres`: the new store's PostgreSQL URL.
    #[arg(long, env = "CHAT_NEW_DATABASE_URL", hide_env_values = true)]
    pub new_database_url: Option<String>,
    /// With `--store router`: failed replays of an outbox entry before it is dead-lettered.
    #[arg(long, env = "CHAT_OUTBOX_MAX_ATTEMPTS", default_value_t = 10)]
    pub outbox_max_attempts: u32,
    /// With `--store router`: milliseconds a write's outbox record waits for the inline
    /// secondary write before a replayer may take it over (after a crash: how soon it is repaired).
    #[arg(long, env = "CHAT_OUTBOX_INLINE_GRACE_MS", default_value_t = 30_000)]
    pub outbox_inline_grace_ms: u64,
    /// With `--store router`: milliseconds after a change of write primary during which every
    /// write looks for its room's writes still queued in the other store's outbox; afterwards
    /// only while that outbox holds any. Longer than the flags take to reach every instance.
    #[arg(long, env = "CHAT_SWITCH_SETTLE_MS", default_value_t = 60_000)]
    pub switch_settle_ms: u64,
    #[arg(long, env = "CHAT_DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
    /// NATS URL for fan-out of stream events across instances (default: this instance only).
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// How long room events are kept (NATS JetStream) for streams that reconnect with
    /// Last-Event-ID: 10m, 1h, 1d.
    #[arg(long, env = "CHAT_EVENTS_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub events_retention: Duration,
    /// Redis of the room cache (GetRoom / GetRooms answered from it), e.g. redis://redis:6379
    /// (default: no cache).
    #[arg(long, env = "CHAT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The longest a cached room view lives: 30s, 5m.
    #[arg(long, env = "CHAT_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,
    /// Migration flags from a `key=value` file (watched).
    #[arg(long, env = "CHAT_FLAGS_FILE")]
    pub flags_file: Option<PathBuf>,
    /// Migration flags from a ConfigMap, NAMESPACE/NAME (watched through the Kubernetes API).
    #[arg(long, env = "CHAT_FLAGS_CONFIGMAP")]
    pub flags_configmap: Option<String>,
    /// Migration flags from AWS SSM Parameter Store: the prefix the operator writes under, e.g.
    /// /hse/chat/ (polled; credentials, region and endpoint from the AWS SDK's default chain).
    #[arg(long, env = "CHAT_FLAGS_SSM_PREFIX")]
    pub flags_ssm_prefix: Option<String>,
    /// How often the SSM flag parameters are read: 500ms, 5s, 1m.
    #[arg(long, env = "CHAT_FLAGS_SSM_POLL_INTERVAL", default_value = "5s", value_parser = crate::flags::parse_poll_interval)]
    pub flags_ssm_poll_interval: Duration,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Deadline of a unary request, in milliseconds.
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Event streams (StreamMessages) one user may hold open on one instance.
    #[arg(long, env = "CHAT_MAX_STREAMS_PER_USER", default_value_t = Limits::default().max_streams_per_user)]
    pub max_streams_per_user: usize,
}

impl ServeArgs {
    /// The full configuration, with secrets looked up through `env` (`std::env::var` in the
    /// binary; a map in tests).
    pub fn into_config(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServeConfig, ConfigError> {
        let encryption_key = EncryptionKey::from_base64(env("CHAT_ENCRYPTION_KEY").as_deref())?;
        let previous_keys = previous_keys(env("CHAT_ENCRYPTION_KEYS_PREVIOUS").as_deref())?;
        let jwt_secret = env("CHAT_JWT_SECRET")
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::MissingJwtSecret)?;
        if jwt_secret.len() < 32 {
            tracing::warn!(
                "CHAT_JWT_SECRET is shorter than 32 bytes; HS256 wants at least 256 bits of secret"
            );
        }
        let (store, database_url) = match self.store {
            StoreKind::Router => {
                let new = match self.new_store {
                    StoreKind::Postgres => NewStoreChoice::Postgres {
                        database_url: self
                            .new_database_url
                            .clone()
                            .filter(|u| !u.is_empty())
                            .ok_or(ConfigError::MissingNewDatabaseUrl)?,
                    },
                    StoreKind::Scylla => NewStoreChoice::Scylla(self.cql.config()?),
                    StoreKind::Router => return Err(ConfigError::NewStoreKind),
                };
                let legacy = self
                    .database_url
                    .clone()
                    .filter(|u| !u.is_empty())
                    .ok_or(ConfigError::MissingDatabaseUrl)?;
                (
                    StoreChoice::Router {
                        new,
                        outbox_max_attempts: self.outbox_max_attempts.max(1),
                        outbox_inline_grace: Duration::from_millis(self.outbox_inline_grace_ms),
                        switch_settle: Duration::from_millis(self.switch_settle_ms),
                    },
                    legacy,
                )
            }
            StoreKind::Postgres => (
                StoreChoice::Postgres,
                self.database_url
                    .filter(|u| !u.is_empty())
                    .ok_or(ConfigError::MissingDatabaseUrl)?,
            ),
            StoreKind::Scylla => (
                StoreChoice::Scylla(self.cql.config()?),
                self.database_url.unwrap_or_default(),
            ),
        };
        let flags = match (self.flags_file, self.flags_configmap, self.flags_ssm_prefix) {
            (Some(path), None, None) => FlagSource::File(path),
            (None, None, Some(prefix)) => FlagSource::Ssm {
                prefix,
                poll_interval: self.flags_ssm_poll_interval,
            },
            (None, Some(cm), None) => match cm.split_once('/') {
                Some((namespace, name))
                    if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
                {
                    FlagSource::ConfigMap {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    }
                }
                _ => return Err(ConfigError::FlagsConfigMap(cm)),
            },
            (None, None, None) => FlagSource::Static(Flags::default()),
            _ => return Err(ConfigError::TwoFlagSources),
        };
        Ok(ServeConfig {
            listen: self.listen,
            store,
            database_url,
            database_max_connections: self.database_max_connections.max(1),
            jwt_secret: jwt_secret.into_bytes(),
            encryption_key,
            previous_keys,
            nats_url: self.nats_url.filter(|u| !u.is_empty()),
            events_retention: self.events_retention.max(Duration::from_secs(1)),
            cache: self
                .redis_url
                .filter(|u| !u.is_empty())
                .map(|redis_url| CacheConfig {
                    redis_url,
                    ttl: self.cache_ttl,
                }),
            flags,
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
                max_streams_per_user: self.max_streams_per_user.max(1),
            },
        })
    }
}

/// A CQL database: where it is and how to read and write it.
#[derive(clap::Args, Debug, Clone)]
pub struct CqlArgs {
    /// CQL nodes to connect to first, `host:port`, comma-separated.
    #[arg(
        long = "cql-contact-points",
        env = "CHAT_CQL_CONTACT_POINTS",
        value_delimiter = ','
    )]
    pub contact_points: Vec<String>,
    /// CQL keyspace (created beforehand; the service creates its tables in it).
    #[arg(
        long = "cql-keyspace",
        env = "CHAT_CQL_KEYSPACE",
        default_value = "chat"
    )]
    pub keyspace: String,
    /// CQL consistency level of reads and writes: LOCAL_QUORUM, QUORUM, LOCAL_ONE, ONE, ...
    #[arg(
        long = "cql-consistency",
        env = "CHAT_CQL_CONSISTENCY",
        default_value = "LOCAL_QUORUM"
    )]
    pub consistency: String,
    /// Address translation, `broadcast=reachable` pairs (`ip:port`), comma-separated: the driver
    /// connects to each node at the address the node broadcasts (`rpc_address`), so a node
    /// behind NAT, a port-forward or a proxy needs its reachable address here.
    #[arg(
        long = "cql-address-map",
        env = "CHAT_CQL_ADDRESS_MAP",
        value_delimiter = ','
    )]
    pub address_map: Vec<String>,
}

impl CqlArgs {
    /// The store's connection settings; at least one contact point and a known consistency.
    pub fn config(&self) -> Result<CqlConfig, ConfigError> {
        let contact_points: Vec<String> = self
            .contact_points
            .iter()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if contact_points.is_empty() {
            return Err(ConfigError::MissingCqlContactPoints);
        }
        let consistency =
            parse_consistency(&self.consistency).map_err(ConfigError::CqlConsistency)?;
        let address_map = self
            .address_map
            .iter()
            .map(|pair| parse_address_pair(pair.trim()))
            .collect::<Result<_, _>>()?;
        Ok(CqlConfig {
            contact_points,
            keyspace: self.keyspace.clone(),
            consistency,
            address_map,
        })
    }
}

/// `CHAT_ENCRYPTION_KEYS_PREVIOUS`: base64 keys separated by commas (unset or blank: none).
pub fn previous_keys(text: Option<&str>) -> Result<Vec<EncryptionKey>, ConfigError> {
    text.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .enumerate()
        .map(|(i, k)| {
            EncryptionKey::from_base64(Some(k)).map_err(|e| ConfigError::PreviousKey {
                position: i + 1,
                reason: match e {
                    KeyError::WrongLength(n) => format!("it decodes to {n} bytes"),
                    KeyError::NotBase64(why) => format!("not base64 ({why})"),
                    KeyError::Missing => "empty".to_owned(),
                },
            })
        })
        .collect()
}

/// One `broadcast=reachable` pair of `--cql-address-map`.
fn parse_address_pair(pair: &str) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let bad = || ConfigError::CqlAddressMap(pair.to_owned());
    let (from, to) = pair.split_once('=').ok_or_else(bad)?;
    Ok((
        from.trim().parse().map_err(|_| bad())?,
        to.trim().parse().map_err(|_| bad())?,
    ))
}

/// Both stores, for `backfill`, `validate` and `status`.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrationStoreArgs {
    /// The legacy PostgreSQL (also holds the backfill checkpoints).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The new store.
    #[command(flatten)]
    pub cql: CqlArgs,
}

/// Where `backfill` and `validate` report their metrics: served while they run, and/or
/// written to a file at the end.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BatchMetricsArgs {
    /// Serve `/metrics` here while running (e.g. `0.0.0.0:9464`), for Prometheus to follow the
    /// progress and findings as they happen. An address that cannot be bound is logged and the
    /// work goes on without it: metrics never stop a backfill.
    #[arg(long, env = "FICUS_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Keep serving `/metrics` this long after the work ends (e.g. `30s`), so that a scrape
    /// sees the final values.
    #[arg(long, env = "FICUS_METRICS_LINGER", default_value = "0s", value_parser = humantime::parse_duration)]
    pub metrics_linger: Duration,
    /// Write the metrics (OpenMetrics text) here at the end, e.g. for a textfile collector.
    #[arg(long)]
    pub metrics_file: Option<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["serve", "--database-url", "postgres://localhost/chat"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("args").serve
    }

    fn env(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn secrets() -> Vec<(&'static str, String)> {
        vec![
            ("CHAT_ENCRYPTION_KEY", EncryptionKey::random().to_base64()),
            ("CHAT_JWT_SECRET", "s".repeat(32)),
        ]
    }

    #[test]
    fn defaults() {
        let config = args(&[]).into_config(env(&secrets())).expect("config");
        assert_eq!(config.limits, Limits::default());
        assert!(matches!(config.flags, FlagSource::Static(f) if f == Flags::default()));
        assert_eq!(config.nats_url, None);
        assert_eq!(config.store, StoreChoice::Postgres);
    }

    #[test]
    fn scylla_store() {
        let cli = |extra: &[&str]| {
            let mut argv = vec!["serve", "--store", "scylla"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).expect("args").serve
        };
        assert!(matches!(
            cli(&[]).into_config(env(&secrets())),
            Err(ConfigError::MissingCqlContactPoints)
        ));
        let config = cli(&["--cql-contact-points", "a:9042,b:9042"])
            .into_config(env(&secrets()))
            .expect("config");
        let StoreChoice::Scylla(cql) = config.store else {
            panic!("scylla")
        };
        assert_eq!(cql.contact_points, ["a:9042", "b:9042"]);
        assert_eq!(
            (cql.keyspace.as_str(), cql.consistency),
            ("chat", scylla::statement::Consistency::LocalQuorum)
        );
        let config = cli(&[
            "--cql-contact-points",
            "a:9042",
            "--cql-keyspace",
            "ks",
            "--cql-consistency",
            "local_one",
        ])
        .into_config(env(&secrets()))
        .expect("config");
        assert!(
            matches!(config.store, StoreChoice::Scylla(CqlConfig { ref keyspace, consistency: scylla::statement::Consistency::LocalOne, .. }) if keyspace == "ks")
        );
        assert!(matches!(
            cli(&[
                "--cql-contact-points",
                "a:9042",
                "--cql-consistency",
                "most"
            ])
            .into_config(env(&secrets())),
            Err(ConfigError::CqlConsistency(_))
        ));
    }

    #[test]
    fn cql_address_maps_are_pairs_of_socket_addresses() {
        let cli = |extra: &[&str]| {
            let mut argv = vec!["serve", "--store", "scylla"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).expect("args").serve
        };
        let config = cli(&[
            "--cql-contact-points",
            "127.0.0.1:19042",
            "--cql-address-map",
            "127.0.0.1:9042=127.0.0.1:19042, 10.0.0.2:9042=127.0.0.1:19043",
        ])
        .into_config(env(&secrets()))
        .expect("config");
        let StoreChoice::Scylla(cql) = config.store else {
            panic!("a CQL store")
        };
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(cql.address_map.len(), 2);
        assert_eq!(
            cql.address_map[&at("127.0.0.1:9042")],
            at("127.0.0.1:19042")
        );
        for bad in [
            "127.0.0.1:9042",
            "host:9042=127.0.0.1:1",
            "127.0.0.1:9042=:",
        ] {
            let err = cli(&["--cql-contact-points", "a:9042", "--cql-address-map", bad])
                .into_config(env(&secrets()))
                .expect_err(bad);
            assert!(
                matches!(err, ConfigError::CqlAddressMap(ref p) if p == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn previous_keys_are_a_comma_separated_list_and_a_bad_one_is_named_by_position() {
        let (a, b) = (EncryptionKey::random(), EncryptionKey::random());
        assert_eq!(previous_keys(None).expect("none").len(), 0);
        assert_eq!(previous_keys(Some(" ")).expect("blank").len(), 0);
        let two = format!("{}, {} ,", a.to_base64(), b.to_base64());
        assert_eq!(previous_keys(Some(&two)).expect("two").len(), 2);
        let bad = format!("{},c2hvcnQ=", a.to_base64());
        let err = previous_keys(Some(&bad)).expect_err("a short key");
        let text = err.to_string();
        assert!(
            text.contains("CHAT_ENCRYPTION_KEYS_PREVIOUS")
                && text.contains("key 2")
                && text.contains("5 bytes"),
            "{text}"
        );
    }

    #[test]
    fn the_encryption_key_is_checked_first() {
        let err = args(&[]).into_config(env(&[])).expect_err("no key");
        assert!(
            matches!(err, ConfigError::EncryptionKey(KeyError::Missing)),
            "{err}"
        );
        let short = vec![
            ("CHAT_ENCRYPTION_KEY", "c2hvcnQ=".to_owned()),
            ("CHAT_JWT_SECRET", "x".repeat(32)),
        ];
        let err = args(&[]).into_config(env(&short)).expect_err("short key");
        assert!(
            err.to_string().contains("CHAT_ENCRYPTION_KEY")
                && err.to_string().contains("openssl rand -base64 32"),
            "{err}"
        );
    }

    #[test]
    fn jwt_secret_and_database_url_are_required() {
        let only_key = vec![("CHAT_ENCRYPTION_KEY", EncryptionKey::random().to_base64())];
        assert!(matches!(
            args(&[]).into_config(env(&only_key)),
            Err(ConfigError::MissingJwtSecret)
        ));
        let no_db = Cli::try_parse_from(["serve"]).expect("args").serve;
        assert!(matches!(
            no_db.into_config(env(&secrets())),
            Err(ConfigError::MissingDatabaseUrl)
        ));
    }

    #[test]
    fn flag_sources() {
        let config = args(&["--flags-configmap", "chat/chat-migration-flags"])
            .into_config(env(&secrets()))
            .expect("config");
        assert!(
            matches!(config.flags, FlagSource::ConfigMap { ref namespace, ref name } if namespace == "chat" && name == "chat-migration-flags")
        );
        let config = args(&["--flags-file", "/etc/chat/flags"])
            .into_config(env(&secrets()))
            .expect("config");
        assert!(
            matches!(config.flags, FlagSource::File(ref p) if p == std::path::Path::new("/etc/chat/flags"))
        );
        for bad in ["chat", "/name", "ns/", "a/b/c"] {
            assert!(
                matches!(
                    args(&["--flags-configmap", bad]).into_config(env(&secrets())),
                    Err(ConfigError::FlagsConfigMap(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            args(&["--flags-file", "f", "--flags-configmap", "a/b"]).into_config(env(&secrets())),
            Err(ConfigError::TwoFlagSources)
        ));
        let config = args(&["--flags-ssm-prefix", "/hse/chat/"])
            .into_config(env(&secrets()))
            .expect("config");
        assert!(
            matches!(config.flags, FlagSource::Ssm { ref prefix, poll_interval } if prefix == "/hse/chat/" && poll_interval == Duration::from_secs(5))
        );
        let config = args(&[
            "--flags-ssm-prefix",
            "/hse/chat/",
            "--flags-ssm-poll-interval",
            "500ms",
        ])
        .into_config(env(&secrets()))
        .expect("config");
        assert!(
            matches!(config.flags, FlagSource::Ssm { poll_interval, .. } if poll_interval == Duration::from_millis(500))
        );
        assert!(matches!(
            args(&["--flags-file", "f", "--flags-ssm-prefix", "/p/"]).into_config(env(&secrets())),
            Err(ConfigError::TwoFlagSources)
        ));
    }
}
