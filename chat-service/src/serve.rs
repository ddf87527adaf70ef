//! Start-up and shutdown of `serve`: flags, store (migrations applied), event bus, HTTP.
//!
//! [`bind`] does everything that can fail at start and returns a [`Server`] bound to its port
//! (tests bind `127.0.0.1:0` and read [`Server::local_addr`]); [`Server::run`] serves until the
//! shutdown future completes, then stops accepting, ends open event streams and waits for
//! in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::api::stream_slots::StreamSlots;
use crate::api::{self, App};
use crate::auth::Authenticator;
use crate::config::{NewStoreChoice, ServeConfig, StoreChoice};
use crate::crypto::ContentCipher;
use crate::events::{EventBus, EventBusError};
use crate::flags::{FlagError, FlagWatcher};
use crate::ids::MessageIdGenerator;
use crate::metrics::Metrics;
use crate::store::cql_outbox::CqlOutbox;
use crate::store::instrumented::Instrumented;
use crate::store::outbox::{Outbox, OutboxLog};
use crate::store::postgres::PgStore;
use crate::store::room_cache::{CacheError, CachedStore, Role, RoomCache};
use crate::store::router::{MigrationRouter, RouterOptions};
use crate::store::scylla::CqlStore;
use crate::store::{ChatStore, StoreError, health_watch};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("migration flags: {0}")]
    Flags(#[from] FlagError),
    #[error("cannot connect to PostgreSQL (DATABASE_URL): {0}")]
    Database(#[from] StoreError),
    #[error(
        "cannot connect to the CQL store (--cql-contact-points, --cql-keyspace) or apply its schema: {0}"
    )]
    Cql(#[source] StoreError),
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Events(#[from] EventBusError),
    #[error("room cache: {0}")]
    Cache(#[source] CacheError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: axum::Router,
    stopping: watch::Sender<bool>,
    // Keeps the flag watcher following its source while the server runs.
    _flags: FlagWatcher,
    // The migration router's outbox replayer (with `--store router`), stopped with the server.
    replayer: Option<crate::store::router::ReplayerHandle>,
    // The migration router, drained after the last request.
    migration_router: Option<MigrationRouter>,
    // Pings the stores for `chat_database_up` while the server runs.
    _health: tokio_util::task::AbortOnDropHandle<()>,
}

/// How long a shutdown waits for the migration router's dual writes after the last request:
/// each is bounded by the secondary timeout, so this is only reached when a store hangs. Below
/// Kubernetes' default grace period (30 s), so the pod is not killed mid-drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects, migrates and binds; nothing is served yet.
pub async fn bind(config: ServeConfig) -> Result<Server, ServeError> {
    let metrics = Arc::new(match config.cache {
        Some(_) => Metrics::with_cache(),
        None => Metrics::default(),
    });
    let cache = match &config.cache {
        Some(c) => Some(Arc::new(
            RoomCache::connect(&c.redis_url, c.ttl, metrics.clone()).map_err(ServeError::Cache)?,
        )),
        None => None,
    };
    let flags = FlagWatcher::start(config.flags.clone(), metrics.flags_generation.clone()).await?;
    let mut replayer = None;
    let mut migration_router = None;
    // Each store (its pings show as `ping` operations, like the readiness probe's).
    let mut watched: Vec<(health_watch::Role, Arc<dyn ChatStore>)> = vec![];
    let store: Arc<dyn ChatStore> = match &config.store {
        StoreChoice::Postgres => {
            let pg =
                PgStore::connect(&config.database_url, config.database_max_connections).await?;
            pg.migrate().await?;
            let store: Arc<dyn ChatStore> = Arc::new(Instrumented::new(pg, metrics.clone()));
            watched.push(("single", store.clone()));
            CachedStore::wrap(store, cache.as_ref(), Role::Both)
        }
        StoreChoice::Scylla(cql) => {
            let cql = CqlStore::connect(cql).await.map_err(ServeError::Cql)?;
            let store: Arc<dyn ChatStore> = Arc::new(Instrumented::new(cql, metrics.clone()));
            watched.push(("single", store.clone()));
            CachedStore::wrap(store, cache.as_ref(), Role::Both)
        }
        StoreChoice::Router {
            new,
            outbox_max_attempts,
            outbox_inline_grace,
            switch_settle,
        } => {
            let legacy =
                PgStore::connect(&config.database_url, config.database_max_connections).await?;
            legacy.migrate().await?;
            watched.push((
                "legacy",
                Arc::new(Instrumented::new(legacy.clone(), metrics.clone())),
            ));
            // The new store and the outbox in its database (the records of writes made while it
            // is primary).
            let (new, new_outbox): (Arc<dyn ChatStore>, OutboxLog) = match new {
                NewStoreChoice::Postgres { database_url } => {
                    let pg =
                        PgStore::connect(database_url, config.database_max_connections).await?;
                    pg.migrate().await?;
                    let outbox = OutboxLog::Pg(Outbox::new(pg.pool().clone()));
                    let store: Arc<dyn ChatStore> =
                        Arc::new(Instrumented::new(pg, metrics.clone()));
                    watched.push(("new", store.clone()));
                    (store, outbox)
                }
                NewStoreChoice::Scylla(cql) => {
                    let store: Arc<dyn ChatStore> = Arc::new(Instrumented::new(
                        CqlStore::connect(cql).await.map_err(ServeError::Cql)?,
                        metrics.clone(),
                    ));
                    watched.push(("new", store.clone()));
                    (
                        store,
                        OutboxLog::Cql(CqlOutbox::connect(cql).await.map_err(ServeError::Cql)?),
                    )
                }
            };
            let mut options = RouterOptions::default();
            options.replay.max_attempts = *outbox_max_attempts;
            options.replay.inline_grace = *outbox_inline_grace;
            options.switch_settle = *switch_settle;
            let router = MigrationRouter::new(
                legacy,
                new,
                new_outbox,
                flags.clone(),
                metrics.clone(),
                options,
                cache.clone(),
            );
            replayer = Some(router.start_replayer());
            migration_router = Some(router.clone());
            CachedStore::wrap(Arc::new(router), cache.as_ref(), Role::Reads)
        }
    };
    let events = match &config.nats_url {
        Some(url) => EventBus::nats(url, config.events_retention).await?,
        None => EventBus::local(),
    };
    let (stopping, shutdown) = watch::channel(false);
    let stream_gauge = metrics.stream_gauge();
    let app = Arc::new(App {
        store,
        cache: cache.clone(),
        auth: Authenticator::new(&config.jwt_secret),
        cipher: ContentCipher::with_previous(&config.encryption_key, &config.previous_keys),
        events,
        metrics,
        stream_slots: StreamSlots::new(config.limits.max_streams_per_user, stream_gauge),
        limits: config.limits,
        message_ids: MessageIdGenerator::default(),
        shutdown,
    });
    let router = api::router(app.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    info!(addr = %local_addr, store = app.store.database(), events = app.events.transport(), flags = ?flags.current(), "chat-service ready");
    Ok(Server {
        listener,
        local_addr,
        router,
        stopping,
        _flags: flags,
        replayer,
        migration_router,
        _health: health_watch::spawn(watched, cache, app.metrics.clone()),
    })
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then drains: no new connections, open streams end,
    /// in-flight requests finish (each bounded by the request timeout), then the migration
    /// router's dual writes still running (`async` secondary writes, outbox records) finish,
    /// and only then the replayer stops.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let stopping = self.stopping;
        let (replayer, migration_router) = (self.replayer, self.migration_router);
        let drain = async move {
            shutdown.await;
            info!("shutting down: finishing in-flight requests");
            let _ = stopping.send(true);
        };
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(drain)
            .await
            .map_err(ServeError::Http)?;
        if let Some(router) = migration_router {
            info!(
                in_flight = router.in_flight(),
                "draining the migration router's dual writes"
            );
            router.drain(DRAIN_TIMEOUT).await;
        }
        drop(replayer);
        info!("stopped");
        Ok(())
    }
}

/// [`bind`] then [`Server::run`].
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    bind(config).await?.run(shutdown).await
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or SIGINT (a terminal).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // Without a SIGTERM handler only Ctrl-C stops the server.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
